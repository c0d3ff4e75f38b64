# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action downloads: run the downloads module on the host and show its progress meanwhile.

Documentation: plugins/modules/downloads.py. Ansible prints a task's result only when it ends,
and pulls take minutes, so with ``state: present`` (outside check mode) the module is started
the way ``async:`` starts one (``_execute_module(wrap_async=True)``: Ansible's async_wrapper
runs it detached on the host) with a ``progress_file`` in a remote temporary directory of its
own. Every ``POLL_S`` seconds the action asks ``ansible.legacy.async_status`` whether the job
ended and reads the progress file's new lines with one ``tail -c +<offset>``; it prints at most
one line per item every ``SHOW_EVERY_S`` seconds, and always the line that ends an item. The
module's own result (a failure included) is the task's result. ``state: planned`` and check
mode run the module directly.

The host sends back only what the module returns and its progress lines; neither holds the
token of ``hf_token_file``, which the module reads on the host and masks.
"""

from __future__ import annotations

import copy
import json
import shlex
import time

from ansible import constants as C
from ansible.plugins.action import ActionBase

from ansible_collections.gpufleet.inference.plugins.module_utils import _downloads
from ansible_collections.gpufleet.inference.plugins.modules.downloads import ARGUMENT_SPEC

POLL_S = 2.0
SHOW_EVERY_S = 5.0
# Beyond the module's own timeout: the async wrapper's limit, then the controller's patience.
GRACE_S = 120
PROGRESS_NAME = "progress.jsonl"
ASYNC_KEYS = ("ansible_job_id", "started", "finished", "results_file", "stdout",
              "stdout_lines", "stderr", "stderr_lines")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(argument_spec=copy.deepcopy(ARGUMENT_SPEC))
        try:
            # A plan's downloads become items here: the host gets only what it fetches.
            self._task.args = _downloads.expand(
                {k: v for k, v in self._task.args.items() if v is not None})
        except ValueError as exc:
            self._remove_tmp_path(self._connection._shell.tmpdir)
            return dict(result, failed=True, changed=False, msg="downloads: %s" % exc)
        if args["state"] == "planned" or self._task.check_mode:
            try:
                result.update(self._execute_module(module_args=dict(self._task.args),
                                                   task_vars=task_vars))
            finally:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        result.update(self._run_async(args, task_vars))
        return result

    # ---- the job on the host -----------------------------------------------------------

    def _run_async(self, args, task_vars):
        host = task_vars.get("inventory_hostname") or "host"
        # A directory of its own for the progress file: the async wrapper removes the module's
        # directory when the module ends, before the last lines are read.
        progress_dir = self._make_tmp_path()
        progress_file = self._connection._shell.join_path(progress_dir, PROGRESS_NAME)
        self._connection._shell.tmpdir = None
        module_args = dict(self._task.args, progress_file=progress_file)
        saved_async = self._task.async_val
        self._task.async_val = args["timeout"] + GRACE_S  # the async wrapper's time limit
        try:
            started = self._execute_module(module_args=module_args, task_vars=task_vars,
                                           wrap_async=True)
        finally:
            self._task.async_val = saved_async
            # The module's directory is the wrapper's to remove; the polls use the progress
            # directory, which this action removes.
            self._connection._shell.tmpdir = progress_dir
            self._cleanup_remote_tmp = True
        jid = started.get("ansible_job_id")
        try:
            if started.get("failed") or not jid:
                return dict(started, failed=True,
                            msg=started.get("msg") or "the downloads job did not start")
            return self._follow(jid, progress_file, host, args["timeout"] + 2 * GRACE_S,
                                task_vars)
        finally:
            if not C.DEFAULT_KEEP_REMOTE_FILES:
                self._remove_tmp_path(progress_dir, force=True)

    def _async_dir(self):
        return self._remote_expand_user(self.get_shell_option("async_dir",
                                                              default="~/.ansible_async"))

    def _follow(self, jid, progress_file, host, patience, task_vars):
        """Poll the job until it ends; show progress; the module's result."""
        async_dir = self._async_dir()
        status_args = {"jid": jid, "_async_dir": async_dir}
        reader = ProgressReader(host, self._display.display)
        give_up = time.monotonic() + patience
        try:
            while True:
                status = self._execute_module(module_name="ansible.legacy.async_status",
                                              module_args=dict(status_args),
                                              task_vars=task_vars)
                reader.feed(self._read_new(progress_file, reader.offset))
                if status.get("finished") or status.get("failed"):
                    break
                if time.monotonic() > give_up:
                    return {"failed": True, "changed": True,
                            "msg": "the downloads job %s did not end within %d seconds"
                            % (jid, patience)}
                time.sleep(POLL_S)
        finally:
            self._execute_module(module_name="ansible.legacy.async_status",
                                 module_args=dict(status_args, mode="cleanup"),
                                 task_vars=task_vars)
        return {key: value for key, value in status.items() if key not in ASYNC_KEYS}

    def _read_new(self, path, offset):
        """The progress file's bytes from ``offset`` on (empty while it does not exist)."""
        command = "tail -c +%d %s 2>/dev/null || true" % (offset + 1, shlex.quote(path))
        answer = self._low_level_execute_command(command, sudoable=True)
        return answer.get("stdout") or ""


class ProgressReader:
    """Turns progress lines into displayed lines: per item at most one every SHOW_EVERY_S
    seconds (the newest), and always the one that ends it."""

    def __init__(self, host, display, clock=time.monotonic):
        self.host = host
        self.display = display
        self.clock = clock
        self.offset = 0
        self.shown = {}

    def feed(self, text):
        complete = text[:text.rfind("\n") + 1]
        self.offset += len(complete.encode("utf-8"))
        latest = {}
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or not event.get("text"):
                continue
            item = event.get("item")
            if event.get("final"):
                latest.pop(item, None)
                self.show(item, event["text"])
            else:
                latest[item] = event["text"]
        now = self.clock()
        for item, said in latest.items():
            if now - self.shown.get(item, -1e9) >= SHOW_EVERY_S:
                self.show(item, said)

    def show(self, item, text):
        self.shown[item] = self.clock()
        self.display("%s: %s" % (self.host, text))
