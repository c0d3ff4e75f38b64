# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private plugin_utils of gpufleet.inference: run a module detached on the host and show the
progress it writes, for the action plugins of modules that wait long (downloads, host_lock,
service_verify).

Not a public API: the leading underscore says so. Ansible prints a task's result only when it
ends, and these waits last minutes. ``ProgressAction.run_with_progress`` starts the module the
way ``async:`` starts one (``_execute_module(wrap_async=True)``: Ansible's async_wrapper runs it
detached on the host) with a ``progress_file`` in a remote temporary directory of its own.
Every ``poll_s`` seconds it asks ``ansible.legacy.async_status`` whether the job ended and reads
the progress file's new lines with one ``tail -c +<offset>``; ``ProgressReader`` prints at most
one line per item every ``SHOW_EVERY_S`` seconds, and always the line that ends an item. The
module's own result (a failure included) is the task's result, without the async keys.
``run_directly`` runs the module as a plain task does (check mode, paths that do not wait).

A progress line is one JSON object: ``item`` (what it is about: an index, a service's name),
``text`` (what is shown, after the host's name) and ``final`` (the item is done); other keys
are ignored here.
"""

from __future__ import annotations

import json
import shlex
import time

from ansible import constants as C
from ansible.plugins.action import ActionBase

POLL_S = 2.0
SHOW_EVERY_S = 5.0
# Beyond the module's own time limit: the controller's patience for a job that did not end.
GRACE_S = 120
PROGRESS_NAME = "progress.jsonl"
ASYNC_KEYS = ("ansible_job_id", "started", "finished", "results_file", "stdout",
              "stdout_lines", "stderr", "stderr_lines")


def number_option(value, kind=float):
    """A task's numeric option (``timeout``) as the module will read it, converted with
    ``kind`` (int or float), or None when it is not one: the module then says why."""
    if isinstance(value, bool):
        return None
    try:
        return kind(str(value).strip())
    except (TypeError, ValueError):
        return None


class ProgressAction(ActionBase):
    """An action that runs its own module (``self._task.action``), directly or detached."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run_directly(self, task_vars, module_args=None):
        """The module's result, run as a plain task runs it (no progress)."""
        try:
            return self._execute_module(
                module_args=dict(self._task.args if module_args is None else module_args),
                task_vars=task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def run_with_progress(self, task_vars, module_args, job_s, what, poll_s=None,
                          patience_s=None):
        """The module's result, run detached with a ``progress_file`` whose lines are shown.

        ``job_s``: the async wrapper's time limit (the module's longest run, with a margin);
        ``what``: the job's name in the failures of this loop ("the downloads job");
        ``poll_s``: seconds between two polls (``POLL_S`` by default); ``patience_s``: how
        long the controller polls (``job_s + GRACE_S`` by default).
        """
        host = task_vars.get("inventory_hostname") or "host"
        # A directory of its own for the progress file: the async wrapper removes the module's
        # directory when the module ends, before the last lines are read.
        progress_dir = self._make_tmp_path()
        progress_file = self._connection._shell.join_path(progress_dir, PROGRESS_NAME)
        self._connection._shell.tmpdir = None
        saved_async = self._task.async_val
        self._task.async_val = int(job_s)  # the async wrapper's time limit
        try:
            started = self._execute_module(module_args=dict(module_args,
                                                            progress_file=progress_file),
                                           task_vars=task_vars, wrap_async=True)
        finally:
            self._task.async_val = saved_async
            # The module's directory is the wrapper's to remove; the polls use the progress
            # directory, which this action removes.
            self._connection._shell.tmpdir = progress_dir
            self._cleanup_remote_tmp = True
        jid = started.get("ansible_job_id")
        try:
            if started.get("failed") or not jid:
                return dict(started, failed=True, msg=started.get("msg")
                            or "%s did not start" % what)
            patience = job_s + GRACE_S if patience_s is None else patience_s
            return self._follow(jid, progress_file, host, patience, what,
                                POLL_S if poll_s is None else poll_s, task_vars)
        finally:
            if not C.DEFAULT_KEEP_REMOTE_FILES:
                self._remove_tmp_path(progress_dir, force=True)

    def _async_dir(self):
        return self._remote_expand_user(self.get_shell_option("async_dir",
                                                              default="~/.ansible_async"))

    def _follow(self, jid, progress_file, host, patience, what, poll_s, task_vars):
        """Poll the job until it ends; show progress; the module's result."""
        status_args = {"jid": jid, "_async_dir": self._async_dir()}
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
                            "msg": "%s %s did not end within %d seconds" % (what, jid, patience)}
                time.sleep(poll_s)
        finally:
            self._execute_module(module_name="ansible.legacy.async_status",
                                 module_args=dict(status_args, mode="cleanup"),
                                 task_vars=task_vars)
        result = {key: value for key, value in status.items() if key not in ASYNC_KEYS}
        # As a direct run shows it: the progress file is this loop's, not the task's.
        module_args = (result.get("invocation") or {}).get("module_args")
        if isinstance(module_args, dict) and module_args.get("progress_file"):
            module_args["progress_file"] = None
        return result

    def _read_new(self, path, offset):
        """The progress file's bytes from ``offset`` on (empty while it does not exist)."""
        command = "tail -c +%d %s 2>/dev/null || true" % (offset + 1, shlex.quote(path))
        answer = self._low_level_execute_command(command, sudoable=True)
        return answer.get("stdout") or ""


class ProgressReader:
    """Turns progress lines into displayed lines: per item always the first (what starts) and
    the one that ends it, between them at most one every SHOW_EVERY_S seconds (the newest)."""

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
            elif item not in self.shown:
                self.show(item, event["text"])  # what starts, even when it ends by the next poll
            else:
                latest[item] = event["text"]
        now = self.clock()
        for item, said in latest.items():
            if now - self.shown.get(item, -1e9) >= SHOW_EVERY_S:
                self.show(item, said)

    def show(self, item, text):
        self.shown[item] = self.clock()
        self.display("%s: %s" % (self.host, text))
