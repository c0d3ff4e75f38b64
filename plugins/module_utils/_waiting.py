# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what a long wait says while it waits (the
modules host_lock and service_verify).

Not a public API: the leading underscore says so. No AnsibleModule: the modules hand their
``progress_file`` (set by their action plugins, plugin_utils/_progress.py, which show the lines
on the controller), the clock and the sleep to the classes here, and the waits of
``_lock.acquire`` and ``_verify.verify`` run unchanged: ``LockWait.sleep`` and
``ServiceWatch.sleep`` are the sleeps they are given, ``ServiceWatch`` also wraps the readers
``_verify.verify`` is given and notes what they read. The texts are pure functions.

Vocabulary
  event   one JSON line of the progress file: ``item`` (what it is about: ``lock``, a
          service's name), ``text`` (shown after the host's name) and ``final`` (the item's
          wait is over; always shown).
  state   what a text says without its seconds: an event is written when its item's state
          changes, else at most every ``EVERY_S`` seconds.

Quiet when nothing waits: a lock that is free, a service that answers at its first request,
write nothing; a final line is written only for an item that was said to wait.
"""

from __future__ import annotations

import json
import posixpath
from urllib.parse import urlsplit

from ansible_collections.gpufleet.inference.plugins.module_utils import _verify
from ansible_collections.gpufleet.inference.plugins.module_utils._progress_file import (
    append as append_line,
)

# At most this often per item while its state stays (the controller shows one line in 5 s:
# the newest it read, so the module writes more often than that).
EVERY_S = 2.0
# A body's summary in a line: its first line, cut to this many characters.
SAID_CHARS = 60
NO_OWNER = "(no owner file yet)"
# Keys of a JSON answer that say why a service is not ready, in the order tried.
_REASON_KEYS = ("error", "detail", "message", "status")


class ProgressFile:
    """Appends events to ``path`` as JSON lines (none when ``path`` is None): per item when its
    state changes, else at most every ``every_s`` seconds; a final event always."""

    def __init__(self, path, clock, every_s=EVERY_S, append=append_line):
        self.path = path
        self.clock = clock
        self.every_s = every_s
        self.append = append
        self._last = {}

    def said(self, item):
        """Whether an event of ``item`` was written."""
        return item in self._last

    def emit(self, item, state, text, final=False):
        now = self.clock()
        last = self._last.get(item)
        if not final and last is not None and last[1] == state and now - last[0] < self.every_s:
            return
        self._last[item] = (now, state)
        if not self.path:
            return
        event = {"item": item, "text": text, "final": final}
        try:
            self.append(self.path, json.dumps(event))
        except OSError:
            self.path = None  # progress is a courtesy: a file that cannot be written ends it


def _seconds(value):
    return "%g" % value


# ---- the host lock ----------------------------------------------------------------------

def owner_text(owner):
    """Who holds a lock, from its owner line (the role's JSON, or any line of text)."""
    if owner is None:
        return NO_OWNER
    owner = " ".join(owner.split())
    try:
        data = json.loads(owner)
    except ValueError:
        return owner
    if not isinstance(data, dict) or not data.get("controller"):
        return owner
    text = str(data["controller"])
    if data.get("pid") not in (None, ""):
        text += " pid %s" % data["pid"]
    if data.get("started"):
        text += " since %s" % data["started"]
    if data.get("play"):
        text += " (play %s)" % data["play"]
    return text


def lock_line(owner, waited_s, timeout_s):
    """(state, text) of a wait for a lock ``owner`` holds."""
    holder = owner_text(owner)
    return holder, "host lock held by %s: waited %d s of %s s" % (
        holder, waited_s, _seconds(timeout_s))


def lock_taken_line(waited_s):
    return "took the host lock after %d s" % waited_s


def read_owner(fs, path):
    """The owner line of the lock at ``path`` (``fs`` as _lock's), or None."""
    try:
        return fs.read(posixpath.join(path, "owner"))
    except OSError:
        return None


class LockWait:
    """The sleep given to ``_lock.acquire``: before each sleep (the lock is held by another
    run) writes who holds it and how long this run waited."""

    ITEM = "lock"

    def __init__(self, fs, path, timeout_s, progress, clock, sleep):
        self.fs = fs
        self.path = path
        self.timeout_s = timeout_s
        self.progress = progress
        self.clock = clock
        self._sleep = sleep
        self.start = clock()

    def sleep(self, seconds):
        state, text = lock_line(read_owner(self.fs, self.path), self.clock() - self.start,
                                self.timeout_s)
        self.progress.emit(self.ITEM, state, text)
        self._sleep(seconds)

    def taken(self):
        """After the lock was taken: a final line when the wait was said."""
        if self.progress.said(self.ITEM):
            text = lock_taken_line(self.clock() - self.start)
            self.progress.emit(self.ITEM, text, text, final=True)


# ---- the services' health wait ----------------------------------------------------------

def summary(text):
    """A short summary of an answer's body (or of why there was none)."""
    text = (text or "").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in _REASON_KEYS:
            if isinstance(body.get(key), (str, int, float)) and str(body[key]).strip():
                text = str(body[key]).strip()
                break
    first = text.splitlines()[0].strip() if text else ""
    return first if len(first) <= SAID_CHARS else first[:SAID_CHARS - 3] + "..."


def service_line(name, url, status, text, state, waited_s, timeout_s):
    """(state, text) of a service whose ``url`` did not answer 200 yet: its answer
    (``status``, None for none, and ``text``) and its container's or unit's ``state``."""
    path = urlsplit(url).path or "/"
    why = summary(text)
    if status is None:
        answer = "%s no answer%s" % (path, " (%s)" % why if why else "")
    else:
        answer = "%s %d%s" % (path, status, " (%s)" % why if why else "")
    parts = [answer] + ([state] if state else [])
    return (", ".join(parts),
            "%s: %s, %d s of %s s" % (name, ", ".join(parts), waited_s, _seconds(timeout_s)))


def healthy_line(name, url, waited_s):
    return "%s: %s 200 after %d s" % (name, urlsplit(url).path or "/", waited_s)


def loading_line(name, model):
    return "%s: loading model %s" % (name, model)


def container_state(container):
    """A container (``_verify.parse_inspect``'s) in a few words."""
    if container is None:
        return "no container"
    text = "container %s" % (container.get("status") or "unknown")
    if container.get("restart_count"):
        text += " (%d restarts)" % container["restart_count"]
    return text


def unit_state(unit, shown):
    """A unit (``_verify.parse_show``'s) in a few words."""
    return "unit %s %s (%s)" % (unit, shown.get("active") or "unknown", shown.get("sub") or "?")


class ServiceWatch:
    """The readers and the sleep given to ``_verify.verify``: the readers are passed through
    (what they return is unchanged), noting each service's last answer to its url and its
    container or unit; before each sleep a line per service that answered, but not 200."""

    def __init__(self, runtime, services, readers, progress, clock, sleep, timeout_s,
                 load_models=True):
        self.readers = readers
        self.progress = progress
        self.clock = clock
        self._sleep = sleep
        self.timeout_s = timeout_s
        self.start = clock()
        try:
            checks = _verify.check_services(runtime, services, load_models)
        except ValueError:
            checks = []  # verify says what is wrong; there is nothing to show
        self.checks = checks
        self.answers = {}
        self.states = {}
        self.healthy = set()
        self._project = None

    def __getattr__(self, name):
        return getattr(self.readers, name)

    def _waited(self):
        return self.clock() - self.start

    def http(self, method, url, body, timeout):
        if method == "POST" and url.endswith("/api/generate") and isinstance(body, dict):
            for check in self.checks:
                if check["url"] and url.startswith(_base(check["url"]) + "/"):
                    text = loading_line(check["name"], body.get("model"))
                    self.progress.emit(check["name"] + " model", text, text)
        status, text = self.readers.http(method, url, body, timeout)
        if method == "GET":
            for check in self.checks:
                if check["url"] != url or check["name"] in self.healthy:
                    continue
                self.answers[check["name"]] = (status, text)
                if status == 200:
                    self.healthy.add(check["name"])
                    if self.progress.said(check["name"]):
                        line = healthy_line(check["name"], url, self._waited())
                        self.progress.emit(check["name"], line, line, final=True)
        return status, text

    def ps(self, project):
        text = self.readers.ps(project)
        self._project = project
        if not (text or "").strip():  # no container: verify does not inspect
            self._note_containers(project, [])
        return text

    def inspect(self, ids):
        text = self.readers.inspect(ids)
        try:
            containers = _verify.parse_inspect(text)
        except ValueError:
            return text
        self._note_containers(self._project, containers)
        return text

    def _note_containers(self, project, containers):
        for check in self.checks:
            if check["project"] != project or project is None:
                continue
            mine = [c for c in containers if c["project"] == check["project"]
                    and c["service"] == check["service"] and not c["oneoff"]]
            running = [c for c in mine if c["running"]]
            self.states[check["name"]] = container_state((running or mine or [None])[0])

    def show(self, unit):
        text = self.readers.show(unit)
        shown = _verify.parse_show(text)
        for check in self.checks:
            if check["unit"] == unit:
                self.states[check["name"]] = unit_state(unit, shown)
        return text

    def sleep(self, seconds):
        waited = self._waited()
        if waited < self.timeout_s:  # later sleeps are the GPU check's, not the health wait's
            for check in self.checks:
                name = check["name"]
                if name in self.answers and name not in self.healthy:
                    status, text = self.answers[name]
                    state, line = service_line(name, check["url"], status, text,
                                               self.states.get(name), waited, self.timeout_s)
                    self.progress.emit(name, state, line)
        self._sleep(seconds)


def _base(url):
    parts = urlsplit(url)
    return "%s://%s" % (parts.scheme, parts.netloc)
