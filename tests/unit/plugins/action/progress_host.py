# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fake host of the progress actions' tests (downloads, host_lock, service_verify).

The host is faked at the level of ActionBase's calls (_execute_module,
_low_level_execute_command, the temporary directories); the progress file is a real file that a
fake job writes while the action polls, read with the real ``tail`` command the action sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from unittest.mock import MagicMock


class Host:
    """Direct runs answer ``direct`` in order; a detached run answers ``start`` when given (a
    job that did not start), else writes ``lines`` to its progress file and ends with
    ``final``."""

    def __init__(self, tmp_path, direct=(), final=None, lines=(), start=None):
        self.tmp_path = tmp_path
        self.direct = list(direct)
        self.final = final
        self.lines = list(lines)
        self.start = start
        self.calls = []
        self.removed = []
        self.result = None
        self.async_val_seen = None
        self.job = None

    def execute_module(self, action, module_name=None, module_args=None, task_vars=None,
                       wrap_async=False, **_kwargs):
        self.calls.append((module_name, dict(module_args or {}), wrap_async))
        if module_name == "ansible.legacy.async_status":
            if module_args.get("mode") == "cleanup":
                return {"erased": "/root/.ansible_async/j1"}
            if self.result is None:
                return {"started": True, "finished": False, "ansible_job_id": "j1"}
            return dict(self.result, finished=True, ansible_job_id="j1")
        if not wrap_async:
            return dict(self.direct.pop(0))
        self.async_val_seen = action._task.async_val
        if self.start is not None:
            return self.start
        assert self.final is not None, "a detached run where none was expected"
        self.job = threading.Thread(target=self.run_job, args=(module_args["progress_file"],))
        self.job.start()
        return {"started": True, "finished": False, "ansible_job_id": "j1",
                "results_file": "/root/.ansible_async/j1", "changed": False}

    def run_job(self, path):
        for line in self.lines:
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")
            time.sleep(0.02)
        self.result = dict(self.final)

    def make_tmp_path(self, action):
        path = self.tmp_path / ("ansible-tmp-%d" % len(self.calls))
        path.mkdir(exist_ok=True)
        action._connection._shell.tmpdir = str(path)
        return str(path)

    @staticmethod
    def low_level(cmd, sudoable=True, **_kwargs):
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def kinds(self):
        """'direct', 'detached' and 'status' per call, in order."""
        return ["status" if name else "detached" if wrap else "direct"
                for name, _args, wrap in self.calls]


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
    action._make_tmp_path = lambda *a: host.make_tmp_path(action)
    action._low_level_execute_command = host.low_level
    action._remove_tmp_path = lambda path, force=False: host.removed.append((path, force))
    action._remote_expand_user = lambda path, sudoable=True: path.replace("~", "/root")
    action.get_shell_option = lambda name, default=None: default
    shown = []
    action._display = MagicMock()
    action._display.display.side_effect = shown.append
    return action, shown
