# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private plugin_utils of gpufleet.inference: run a module on the host and show the progress
it writes while it runs, for the action plugins of modules that wait long (downloads, host_lock,
service_verify).

Not a public API: the leading underscore says so. Ansible prints a task's result only when it
ends, and these waits last minutes. ``ProgressAction.run_with_progress`` runs the module as a
plain task does (``_execute_module``, pipelined where the connection allows) in a thread of
the action, with a ``progress_file`` on the host (in the async directory, ``~/.ansible_async``
by default; the module creates it). Every ``poll_s`` seconds while the module runs it reads the
file's new lines with one ``tail -c +<offset>``; when the module has ended it reads the rest and
removes the file in one command. ``ProgressReader`` prints at most one line per item every
``SHOW_EVERY_S`` seconds, and always an item's first line and the line that ends it. A module
that ends before the first poll costs its own run and that one read: Ansible's ``async:``
(a temporary directory, the module copied over, the async wrapper, one ``async_status`` run
per poll and one to clean up) cost ten runs of a command on the host. The module's own result
(a failure included) is the task's result. ``run_directly`` runs the module as a plain task
does (check mode, paths that do not wait).

A progress line is one JSON object: ``item`` (what it is about: an index, a service's name),
``text`` (what is shown, after the host's name) and ``final`` (the item is done); other keys
are ignored here.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
import uuid

from ansible import constants as C
from ansible.plugins.action import ActionBase

POLL_S = 2.0
SHOW_EVERY_S = 5.0
# Beyond the module's own time limit: the controller's patience for a module that did not end.
GRACE_S = 120


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
        """The module's result, run with a ``progress_file`` whose lines are shown meanwhile.

        ``job_s``: the module's longest run (its own time limit, with a margin); ``what``: the
        job's name in the failure of this loop ("the downloads job"); ``poll_s``: seconds
        between two reads of the progress file (``POLL_S`` by default); ``patience_s``: how long
        the controller waits for the module (``job_s + GRACE_S`` by default).
        """
        host = task_vars.get("inventory_hostname") or "host"
        progress_file = self._progress_path()
        outcome = {}

        def job():
            try:
                outcome["result"] = self._execute_module(
                    module_args=dict(module_args, progress_file=progress_file),
                    task_vars=task_vars)
            except BaseException as exc:  # raised again in the action's own thread
                outcome["error"] = exc

        worker = threading.Thread(target=job, name="gpufleet-progress-job", daemon=True)
        worker.start()
        reader = ProgressReader(host, self._display.display)
        patience = job_s + GRACE_S if patience_s is None else patience_s
        give_up = time.monotonic() + patience
        poll = POLL_S if poll_s is None else poll_s
        try:
            while True:
                worker.join(poll)
                if not worker.is_alive():
                    break
                if time.monotonic() > give_up:
                    return {"failed": True, "changed": True,
                            "msg": "%s did not end within %d seconds" % (what, patience)}
                reader.feed(self._read_new(progress_file, reader.offset))
        finally:
            reader.feed(self._read_new(progress_file, reader.offset,
                                       remove=not C.DEFAULT_KEEP_REMOTE_FILES))
            self._remove_tmp_path(self._connection._shell.tmpdir)
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        # As a direct run shows it: the progress file is this loop's, not the task's.
        module_args = (result.get("invocation") or {}).get("module_args")
        if isinstance(module_args, dict) and module_args.get("progress_file"):
            module_args["progress_file"] = None
        return result

    def _progress_path(self):
        """A new file name in the host's async directory (``~`` is the host's own home)."""
        async_dir = self.get_shell_option("async_dir", default="~/.ansible_async")
        return self._connection._shell.join_path(
            async_dir, "gpufleet-progress-%s.jsonl" % uuid.uuid4().hex)

    def _read_new(self, path, offset, remove=False):
        """The progress file's bytes from ``offset`` on (empty while it does not exist); with
        ``remove`` the file is removed in the same command."""
        if path.startswith("~/"):  # expanded by the host's shell, as the module expands it
            quoted = "~/" + shlex.quote(path[2:])
        else:
            quoted = shlex.quote(path)
        command = "tail -c +%d %s 2>/dev/null || true" % (offset + 1, quoted)
        if remove:
            command += "; rm -f %s" % quoted
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
