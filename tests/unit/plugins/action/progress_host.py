# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fake host of the progress actions' tests (downloads, host_lock, service_verify).

The host is faked at the level of ActionBase's calls (_execute_module,
_low_level_execute_command); the progress file is a real file that the fake module writes while
the action polls, read (and at the end removed) by the real shell command the action sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from unittest.mock import MagicMock


class Host:
    """Direct runs answer ``direct`` in order; a run with a progress file answers ``start``
    when given (a module that failed at once), else writes ``lines`` to its progress file, as
    the module does while the action polls, and ends with ``final``."""

    def __init__(self, tmp_path, direct=(), final=None, lines=(), start=None):
        self.tmp_path = tmp_path
        self.async_dir = str(tmp_path / "async")
        self.direct = list(direct)
        self.final = final
        self.lines = list(lines)
        self.start = start
        self.calls = []
        self.removed = []
        self.progress_file = None

    def execute_module(self, action, module_name=None, module_args=None, task_vars=None,
                       wrap_async=False, **_kwargs):
        assert not wrap_async and module_name is None, (module_name, wrap_async)
        self.calls.append(dict(module_args or {}))
        if "progress_file" not in module_args:
            return dict(self.direct.pop(0))
        if self.start is not None:
            return self.start
        assert self.final is not None, "a run with progress where none was expected"
        self.progress_file = module_args["progress_file"]
        os.makedirs(os.path.dirname(self.progress_file), exist_ok=True)
        for line in self.lines:
            with open(self.progress_file, "a") as out:
                out.write(json.dumps(line) + "\n")
            time.sleep(0.02)
        return dict(self.final)

    @staticmethod
    def low_level(cmd, sudoable=True, **_kwargs):
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def kinds(self):
        """'direct' or 'progress' (a run with a progress file) per module run, in order."""
        return ["progress" if "progress_file" in args else "direct" for args in self.calls]


def make_action(plugin, host, check_mode=False, **args):
    """The action of ``plugin`` (a module of plugins/action) on ``host``, with the task's
    ``args``; returns (action, the lines it displays)."""
    task = MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = check_mode
    task.action = "gpufleet.inference.%s" % plugin.__name__.rsplit(".", 1)[-1]
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path = os.path.join
    action = plugin.ActionModule(task, connection, play_context=MagicMock(), loader=None,
                                 templar=None, shared_loader_obj=None)
    action._execute_module = lambda **kw: host.execute_module(action, **kw)
    action._low_level_execute_command = host.low_level
    action._remove_tmp_path = lambda path, force=False: host.removed.append((path, force))
    action.get_shell_option = lambda name, default=None: (
        host.async_dir if name == "async_dir" else default)
    shown = []
    action._display = MagicMock()
    action._display.display.side_effect = shown.append
    return action, shown
