# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host lock: a fake filesystem, a scripted clock and scripted other runs, no sleeps; then the
real filesystem once."""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
import time

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _lock

LOCK = "/run/gpufleet/lock"
OWNER = LOCK + "/owner"
ASIDE = LOCK + ".stale.7"
START = 1_000_000.0
OURS = json.dumps({"controller": "ops1", "pid": 4524, "play": "Apply",
                   "started": "2026-11-22T14:20:03Z"})
THEIRS = json.dumps({"controller": "ops2", "pid": 99, "play": "Switch",
                     "started": "2026-11-22T13:00:00Z"})
THIRD = json.dumps({"controller": "ops3", "pid": 5, "play": "Apply",
                    "started": "2026-11-22T14:20:04Z"})


def oserror(code, path=LOCK):
    return OSError(code, os.strerror(code), path)


class Fake:
    """A filesystem in two dicts and a clock advanced only by sleep().

    ``events``: [(t, action)], each action run once by the first sleep that reaches ``t``
    (another run acting while this one waits). ``hooks``: {op: [action]}, each run once, just
    before a call of ``op`` (another run acting between two steps of this one). ``fail``:
    {op: exception or [exception or None, ...]} raised by the calls of ``op``.
    """

    def __init__(self, events=(), hooks=None, fail=None):
        self.now = START
        self.dirs = {"/": 0.0, "/run": 0.0}  # path -> mtime
        self.files = {}  # path -> text
        self.events = sorted(events, key=lambda event: event[0])
        self.hooks = {op: list(actions) for op, actions in (hooks or {}).items()}
        self.fail = {op: list(f) if isinstance(f, list) else f for op, f in (fail or {}).items()}
        self.calls = []
        self.slept = []

    # -- clock ---------------------------------------------------------------------------
    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        while self.events and self.events[0][0] <= self.now - START:
            self.events.pop(0)[1](self)

    # -- the other runs ------------------------------------------------------------------
    def lock(self, owner, age=0, path=LOCK):
        """A lock taken ``age`` seconds ago (no owner file when ``owner`` is None)."""
        self.dirs[path] = self.now - age
        if owner is not None:
            self.files[path + "/owner"] = owner + "\n"

    def drop(self, path=LOCK):
        for name in [p for p in self.dirs if p == path or p.startswith(path + "/")]:
            del self.dirs[name]
        for name in [p for p in self.files if p.startswith(path + "/")]:
            del self.files[name]

    # -- the filesystem ------------------------------------------------------------------
    def _call(self, op, *args):
        self.calls.append((op, *args))
        if self.hooks.get(op):
            self.hooks[op].pop(0)(self)
        failure = self.fail.get(op)
        if isinstance(failure, list):
            failure = failure.pop(0) if failure else None
        if failure is not None:
            raise failure

    def makedirs(self, path):
        self._call("makedirs", path)
        while path not in self.dirs:
            self.dirs[path] = self.now
            path = posixpath.dirname(path)

    def mkdir(self, path):
        self._call("mkdir", path)
        if path in self.dirs:
            raise oserror(errno.EEXIST, path)
        if posixpath.dirname(path) not in self.dirs:
            raise oserror(errno.ENOENT, path)
        self.dirs[path] = self.now

    def isdir(self, path):
        self._call("isdir", path)
        return path in self.dirs

    def read(self, path):
        self._call("read", path)
        if path not in self.files:
            raise oserror(errno.ENOENT, path)
        return self.files[path]

    def write(self, path, text):
        self._call("write", path)
        if posixpath.dirname(path) not in self.dirs:
            raise oserror(errno.ENOENT, path)
        self.files[path] = text
        self.dirs[posixpath.dirname(path)] = self.now

    def rename(self, src, dst):
        self._call("rename", src, dst)
        if src in self.files:
            self.files[dst] = self.files.pop(src)
            self.dirs[posixpath.dirname(dst)] = self.now
            return
        if src not in self.dirs:
            raise oserror(errno.ENOENT, src)
        if any(p.startswith(dst + "/") for p in self.files):
            raise oserror(errno.ENOTEMPTY, dst)
        mtime = self.dirs[src]
        files = {dst + p[len(src):]: text for p, text in self.files.items()
                 if p.startswith(src + "/")}
        self.drop(src)
        self.dirs[dst] = mtime
        self.files.update(files)

    def mtime(self, path):
        self._call("mtime", path)
        if path not in self.dirs:
            raise oserror(errno.ENOENT, path)
        return self.dirs[path]

    def rmtree(self, path):
        self._call("rmtree", path)
        if path not in self.dirs:
            raise oserror(errno.ENOENT, path)
        self.drop(path)

    # -- what is left --------------------------------------------------------------------
    def tree(self):
        """The lock's directory and files, as {name: owner text or 'dir'}."""
        left = {p: "dir" for p in self.dirs if p.startswith(LOCK)}
        left.update({p: text.rstrip("\n") for p, text in self.files.items()})
        return left


def held(owner, age, timeout=10, stale_after=3600, also=""):
    return ("the lock %s is held by another run (owner %s, taken %d s ago) and was not "
            "released within host_lock_timeout=%d s; nothing was changed on this host. Run "
            "again once that run has finished. If it is no longer running (no such pid on its "
            "controller), remove the stale lock on the host (rm -rf %s); it is broken by itself "
            "once older than host_lock_stale_after=%d s.%s"
            % (LOCK, owner, age, timeout, LOCK, stale_after, also))


def stale_retaken(fake):
    """Between this run's look at the stale lock and its move: another run broke it and took
    the lock afresh."""
    fake.drop()
    fake.lock(THIRD)


OURS_TAKEN = {LOCK: "dir", OWNER: OURS}

CASES = [
    # id, setup(fake), Fake(...) kwargs, acquire kwargs,
    # expected result (subset), expected sleeps, expected files left
    ("free_parent_missing", None, {}, {},
     dict(acquired=True, held_by_this_run=False, broken=None, reason=None), [], OURS_TAKEN),
    ("held_by_us", lambda f: f.lock(OURS, age=50), {}, {},
     dict(acquired=True, held_by_this_run=True, broken=None, reason=None), [], OURS_TAKEN),
    ("held_by_another_until_timeout", lambda f: f.lock(THEIRS, age=31), {}, {},
     dict(acquired=False, broken=None, owner=THEIRS, age_s=41, reason=held(THEIRS, 41)),
     [2] * 5, {LOCK: "dir", OWNER: THEIRS}),
    ("timeout_0_tries_once", lambda f: f.lock(THEIRS, age=3), {}, dict(timeout_s=0),
     dict(acquired=False, reason=held(THEIRS, 3, timeout=0)), [], {LOCK: "dir", OWNER: THEIRS}),
    ("held_without_owner_file_yet", lambda f: f.lock(None), {}, dict(timeout_s=1, delay_s=1),
     dict(acquired=False, owner=None, reason=held("(no owner file yet)", 1, timeout=1)),
     [1], {LOCK: "dir"}),
    ("released_meanwhile", lambda f: f.lock(THEIRS, age=31),
     dict(events=[(4, lambda f: f.drop())]), {},
     dict(acquired=True, held_by_this_run=False, broken=None), [2, 2], OURS_TAKEN),
    ("stale_broken", lambda f: f.lock(THEIRS, age=4000), {}, dict(timeout_s=0),
     dict(acquired=True, broken="a stale lock (4000 s old), owner: %s" % THEIRS), [],
     OURS_TAKEN),
    ("stale_without_owner_broken", lambda f: f.lock(None, age=4000), {}, {},
     dict(acquired=True, broken="a stale lock (4000 s old), owner: unknown"), [], OURS_TAKEN),
    ("becomes_stale_while_waiting", lambda f: f.lock(THEIRS, age=55), {},
     dict(stale_after_s=60, timeout_s=30, delay_s=2),
     dict(acquired=True, broken="a stale lock (61 s old), owner: %s" % THEIRS), [2] * 3,
     OURS_TAKEN),
    # Another run broke the stale lock and took it afresh between our look and our move: what
    # we moved is not the stale lock, so it is put back, and this run waits for it.
    ("stale_break_race_retaken", lambda f: f.lock(THEIRS, age=4000),
     dict(hooks={"rename": [stale_retaken]}), dict(timeout_s=4),
     dict(acquired=False, broken=None, owner=THIRD, reason=held(THIRD, 4, timeout=4)),
     [2, 2], {LOCK: "dir", OWNER: THIRD}),
    # Another run broke it first and took nothing: our move fails, the next mkdir wins.
    ("stale_break_race_lost", lambda f: f.lock(THEIRS, age=4000),
     dict(hooks={"rename": [lambda f: f.drop()]}), {},
     dict(acquired=True, broken=None), [], OURS_TAKEN),
    ("stale_cannot_be_moved", lambda f: f.lock(THEIRS, age=4000),
     dict(fail={"rename": oserror(errno.EACCES, LOCK)}), dict(timeout_s=2),
     dict(acquired=False, broken=None, reason=held(
         THEIRS, 4002, timeout=2, also=" Breaking it as stale failed: [Errno 13] Permission "
         "denied: '%s'" % LOCK)), [2], {LOCK: "dir", OWNER: THEIRS}),
    # What was moved aside cannot be checked: put back, and waited for (no busy loop).
    ("stale_moved_but_unchecked", lambda f: f.lock(THEIRS, age=4000),
     dict(fail={"mtime": [None, oserror(errno.EACCES, ASIDE)] * 2}), dict(timeout_s=2),
     dict(acquired=False, broken=None, reason=held(
         THEIRS, 4002, timeout=2, also=" Breaking it as stale failed: the lock moved to %s "
         "cannot be checked: [Errno 13] Permission denied: '%s'" % (ASIDE, ASIDE))),
     [2], {LOCK: "dir", OWNER: THEIRS}),
    ("mkdir_failing", None, dict(fail={"mkdir": oserror(errno.EACCES)}), {},
     dict(acquired=False, reason="could not create the lock %s: [Errno 13] Permission denied: "
          "'%s'" % (LOCK, LOCK)), [], {}),
    # Not there when mkdir said it was: released just then; the next try takes it.
    ("mkdir_race_with_a_release", None,
     dict(fail={"mkdir": [oserror(errno.EEXIST), oserror(errno.EEXIST), None]}), {},
     dict(acquired=True), [], OURS_TAKEN),
    ("parent_cannot_be_created", None, dict(fail={"makedirs": oserror(errno.EROFS, "/run")}), {},
     dict(acquired=False, reason="could not create the parent directory /run/gpufleet of the "
          "lock %s: [Errno 30] Read-only file system: '/run'" % LOCK), [], {}),
    ("owner_write_failing_cleans_up", None,
     dict(fail={"write": oserror(errno.ENOSPC, LOCK + "/owner.tmp")}), {},
     dict(acquired=False, reason="could not write the owner file of the lock %s (the lock was "
          "removed again): [Errno 28] No space left on device: '%s/owner.tmp'" % (LOCK, LOCK)),
     [], {}),
    ("owner_rename_failing_cleans_up", None, dict(fail={"rename": oserror(errno.EIO, OWNER)}),
     {}, dict(acquired=False, reason="could not write the owner file of the lock %s (the lock "
              "was removed again): [Errno 5] Input/output error: '%s'" % (LOCK, OWNER)), [], {}),
]


@pytest.mark.parametrize("setup, fake_kwargs, kwargs, expected, slept, left",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_acquire(setup, fake_kwargs, kwargs, expected, slept, left):
    fake = Fake(**fake_kwargs)
    if setup:
        setup(fake)
    kwargs = dict(dict(timeout_s=10, delay_s=2, stale_after_s=3600, tag=7), **kwargs)
    result = _lock.acquire(fake, LOCK, OURS, fake.clock, fake.sleep, **kwargs)
    assert {key: result[key] for key in expected} == expected
    assert fake.slept == slept
    assert fake.tree() == left


def test_held_by_us_writes_nothing():
    fake = Fake()
    fake.lock(OURS, age=50)
    _lock.acquire(fake, LOCK, OURS, fake.clock, fake.sleep, tag=7)
    assert [call[0] for call in fake.calls if call[0] in ("write", "rename", "rmtree")] == []


def test_owner_file_is_written_whole_then_renamed():
    fake = Fake()
    _lock.acquire(fake, LOCK, OURS, fake.clock, fake.sleep, tag=7)
    assert fake.calls[-2:] == [("write", LOCK + "/owner.tmp"),
                               ("rename", LOCK + "/owner.tmp", OWNER)]


def test_mkdir_failing_tries_three_times_without_sleeping():
    fake = Fake(fail={"mkdir": oserror(errno.EACCES)})
    _lock.acquire(fake, LOCK, OURS, fake.clock, fake.sleep, tag=7)
    assert [call[0] for call in fake.calls].count("mkdir") == _lock.MKDIR_TRIES == 3


def test_stale_lock_is_moved_aside_before_it_is_removed():
    fake = Fake()
    fake.lock(THEIRS, age=4000)
    _lock.acquire(fake, LOCK, OURS, fake.clock, fake.sleep, tag=7)
    moves = [call for call in fake.calls if call[0] in ("rename", "rmtree")]
    assert moves[:3] == [("rmtree", ASIDE), ("rename", LOCK, ASIDE), ("rmtree", ASIDE)]


RELEASES = [
    # id, setup, fail, released, failed, msg, left
    ("ours", lambda f: f.lock(OURS), None, True, False, "released the lock %s" % LOCK, {}),
    ("not_ours", lambda f: f.lock(THEIRS), None, False, False,
     "the lock %s is not held by this run (owner %s): left alone" % (LOCK, THEIRS),
     {LOCK: "dir", OWNER: THEIRS}),
    ("no_owner_file_yet", lambda f: f.lock(None), None, False, False,
     "the lock %s is not held by this run (owner (no owner file yet)): left alone" % LOCK,
     {LOCK: "dir"}),
    ("absent", None, None, False, False, "no lock at %s: nothing to release" % LOCK, {}),
    ("ours_cannot_be_removed", lambda f: f.lock(OURS), oserror(errno.EACCES), False, True,
     "could not remove the lock %s: [Errno 13] Permission denied: '%s'" % (LOCK, LOCK),
     OURS_TAKEN),
]


@pytest.mark.parametrize("setup, fail, released, failed, msg, left",
                         [c[1:] for c in RELEASES], ids=[c[0] for c in RELEASES])
def test_release(setup, fail, released, failed, msg, left):
    fake = Fake(fail={"rmtree": fail} if fail else None)
    if setup:
        setup(fake)
    result = _lock.release(fake, LOCK, OURS)
    assert result == dict(released=released, failed=failed, msg=msg)
    assert fake.tree() == left


BAD = [
    ("relative", dict(path="run/lock"),
     "path must be an absolute path other than /, without a trailing /; got: 'run/lock'"),
    ("root", dict(path="/"),
     "path must be an absolute path other than /, without a trailing /; got: '/'"),
    ("trailing_slash", dict(path="/run/lock/"),
     "path must be an absolute path other than /, without a trailing /; got: '/run/lock/'"),
    ("timeout_negative", dict(timeout_s=-1), "timeout must be an integer >= 0; got: -1"),
    ("timeout_bool", dict(timeout_s=True), "timeout must be an integer >= 0; got: True"),
    ("delay_zero", dict(delay_s=0), "delay must be an integer > 0; got: 0"),
    ("stale_after_zero", dict(stale_after_s=0), "stale_after must be an integer > 0; got: 0"),
    ("owner_empty", dict(owner=" "), "owner must be one non-empty line of text; got: ' '"),
    ("owner_two_lines", dict(owner="a\nb"),
     "owner must be one non-empty line of text; got: 'a\\nb'"),
]


@pytest.mark.parametrize("bad, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_settings(bad, message):
    fake = Fake()
    kwargs = dict(dict(path=LOCK, owner=OURS), **bad)
    with pytest.raises(ValueError) as caught:
        _lock.acquire(fake, kwargs.pop("path"), kwargs.pop("owner"), fake.clock, fake.sleep,
                      **kwargs)
    assert str(caught.value) == message
    assert fake.calls == []


def test_release_checks_its_input():
    with pytest.raises(ValueError, match=r"^path must be an absolute path"):
        _lock.release(Fake(), "lock", OURS)


def test_real_filesystem(tmp_path):
    fs = _lock.LocalFs()
    lock = str(tmp_path / "run/gpufleet/lock")

    def take(owner, **kwargs):
        return _lock.acquire(fs, lock, owner, time.time, pytest.fail, timeout_s=0, **kwargs)

    assert take(OURS)["acquired"]
    assert stat.S_IMODE(os.stat(lock).st_mode) & 0o077 == 0
    assert (tmp_path / "run/gpufleet/lock/owner").read_text() == OURS + "\n"
    assert take(OURS)["held_by_this_run"]
    assert not take(THEIRS)["acquired"]
    then = time.time() - 120
    os.utime(lock, (then, then))
    result = take(THEIRS, stale_after_s=60)
    assert result["broken"] == "a stale lock (120 s old), owner: %s" % OURS
    assert sorted(os.listdir(tmp_path / "run/gpufleet")) == ["lock"]
    assert _lock.release(fs, lock, OURS)["released"] is False
    assert _lock.release(fs, lock, THEIRS)["released"] is True
    assert os.listdir(tmp_path / "run/gpufleet") == []
