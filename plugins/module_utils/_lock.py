# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: a per-host lock, so that two runs never write to
the same host at once (the module and role ``host_lock``).

Not a public API: the leading underscore says so. Pure logic: the filesystem (an object with
the methods of ``LocalFs``), the clock and the sleep are injected, so tests drive every race
with a fake filesystem and a scripted clock, without sleeping.

Vocabulary:

- lock: a directory (default ``/run/gpufleet/lock``, in ``/run`` so a reboot clears it),
  created with one ``mkdir``, which is atomic: of two runs, exactly one creates it.
- owner: one line of text that names the run (the role writes JSON: controller, pid of
  ``ansible-playbook``, play, start time), in the lock's ``owner`` file. It is written to
  ``owner.tmp`` and renamed, so it appears whole or not at all.
- age: whole seconds since the lock directory's mtime. Renaming the owner file into the
  directory sets that mtime, so the age counts from when the lock was taken.
- stale: a lock whose age is at least ``stale_after_s``, left over by a run that died. It is
  moved aside (one rename: of two runs breaking it, one wins), checked to be the stale lock
  (same mtime; else a third run took the lock meanwhile and it is put back), then removed.

The clock is the wall clock (``time.time``), the one the directory's mtime is on.

Rejected alternatives: ``flock``/``fcntl`` locks live only as long as the process that holds
them, and each task of a playbook is a process of its own; a lock file made with ``O_EXCL``
would do, but a directory also holds the owner file, written atomically inside it.
"""

from __future__ import annotations

import os
import posixpath
import shutil

# mkdir failing this often while no lock is there is an error of mkdir itself (permissions, a
# read-only or full filesystem), not a race with a run that released the lock just then.
MKDIR_TRIES = 3
NO_OWNER = "(no owner file yet)"


class LocalFs:
    """The host's filesystem, as ``acquire`` and ``release`` use it; every failure is OSError."""

    def makedirs(self, path):
        os.makedirs(path, exist_ok=True)

    def mkdir(self, path):
        os.mkdir(path, 0o700)

    def isdir(self, path):
        return os.path.isdir(path)

    def read(self, path):
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def write(self, path, text):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    def rename(self, src, dst):
        os.rename(src, dst)

    def mtime(self, path):
        return os.stat(path).st_mtime

    def rmtree(self, path):
        shutil.rmtree(path)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(path, timeout_s, delay_s, stale_after_s):
    """ValueError naming the first bad setting and its value."""
    if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
        raise ValueError("path must be an absolute path other than /, without a trailing /; "
                         "got: %r" % (path,))
    for name, value, least in (("timeout", timeout_s, 0), ("delay", delay_s, 1),
                               ("stale_after", stale_after_s, 1)):
        if not _is_int(value) or value < least:
            raise ValueError("%s must be an integer %s; got: %r"
                             % (name, ">= 0" if least == 0 else "> 0", value))


def check_owner(owner):
    if not isinstance(owner, str) or not owner.strip() or "\n" in owner.rstrip("\n"):
        raise ValueError("owner must be one non-empty line of text; got: %r" % (owner,))
    return owner.rstrip("\n")


def _read_owner(fs, lock):
    """The owner line of a lock, or None when there is no owner file (yet) or it is unreadable."""
    try:
        return fs.read(posixpath.join(lock, "owner")).rstrip("\n")
    except OSError:
        return None


def _one_line(text):
    return " ".join(text.split("\n")).strip()


def held_message(path, owner, age, timeout_s, stale_after_s, break_error=None):
    """The failure text of a lock another run held past the timeout."""
    text = ("the lock %s is held by another run (owner %s, taken %d s ago) and was not released "
            "within host_lock_timeout=%s s; nothing was changed on this host. Run again once "
            "that run has finished. If it is no longer running (no such pid on its controller), "
            "remove the stale lock on the host (rm -rf %s); it is broken by itself once older "
            "than host_lock_stale_after=%s s."
            % (path, _one_line(owner) if owner is not None else NO_OWNER, age, timeout_s, path,
               stale_after_s))
    if break_error:
        text += " Breaking it as stale failed: %s" % break_error
    return text


def _result(acquired, reason=None, broken=None, held_by_this_run=False, owner=None, age_s=None):
    return dict(acquired=acquired, held_by_this_run=held_by_this_run, broken=broken,
                reason=reason, owner=owner, age_s=age_s)


def _remove(fs, path):
    """Remove a directory tree if it is there, as well as one can (clean-up after a failure)."""
    try:
        fs.rmtree(path)
    except OSError:
        pass


def _take(fs, path, owner, broken):
    """Write the owner file into the lock just created; on failure remove the lock again."""
    temp = posixpath.join(path, "owner.tmp")
    try:
        fs.write(temp, owner + "\n")
        fs.rename(temp, posixpath.join(path, "owner"))
    except OSError as exc:
        _remove(fs, path)
        return _result(False, broken=broken, reason=(
            "could not write the owner file of the lock %s (the lock was removed again): %s"
            % (path, exc)))
    return _result(True, broken=broken, owner=owner)


def _break(fs, path, since, age, aside):
    """Move a stale lock aside and remove it: (description of what was broken or None, error)."""
    # Left over by a process that had our pid and died while breaking a lock.
    _remove(fs, aside)
    try:
        fs.rename(path, aside)
    except OSError as exc:
        # Another run broke (or released) it first; or it cannot be moved at all.
        return None, (None if not fs.isdir(path) else str(exc))
    try:
        moved, error = fs.mtime(aside), None
    except OSError as exc:
        moved, error = None, "the lock moved to %s cannot be checked: %s" % (aside, exc)
    if moved != since:
        # Not the stale lock (a third run took the lock between our look and our move), or not
        # known to be: put it back.
        try:
            fs.rename(aside, path)
        except OSError:
            _remove(fs, aside)
        return None, error
    owner = _read_owner(fs, aside)
    description = "a stale lock (%d s old), owner: %s" % (
        age, _one_line(owner) if owner is not None else "unknown")
    _remove(fs, aside)
    return description, None


def acquire(fs, path, owner, clock, sleep, timeout_s=600, delay_s=2, stale_after_s=3600,
            tag=None):
    """Take the lock at ``path`` for ``owner``; the outcome (never raises on a held lock).

    Returns ``acquired`` (bool), ``held_by_this_run`` (the owner file already was ours),
    ``broken`` (the description of a stale lock broken on the way, or None), ``reason`` (why
    it was not acquired, or None), ``owner`` and ``age_s`` (of the lock held by another run, on
    a timeout). ``tag`` names the aside path of a stale lock (``<path>.stale.<tag>``; the pid by
    default). ValueError for bad settings.
    """
    check_settings(path, timeout_s, delay_s, stale_after_s)
    owner = check_owner(owner)
    aside = "%s.stale.%s" % (path, os.getpid() if tag is None else tag)
    deadline = clock() + timeout_s
    parent = posixpath.dirname(path)
    try:
        fs.makedirs(parent)
    except OSError as exc:
        return _result(False, reason="could not create the parent directory %s of the lock %s: %s"
                       % (parent, path, exc))
    broken = None
    failures = 0
    while True:
        try:
            fs.mkdir(path)
        except OSError as exc:
            error = exc
        else:
            return _take(fs, path, owner, broken)
        if not fs.isdir(path):
            # Not there: released just now, or mkdir itself fails.
            failures += 1
            if failures >= MKDIR_TRIES:
                return _result(False, broken=broken, reason="could not create the lock %s: %s"
                               % (path, error))
            continue
        current = _read_owner(fs, path)
        if current == owner:
            return _result(True, broken=broken, held_by_this_run=True, owner=owner)
        now = clock()
        try:
            since = fs.mtime(path)
        except OSError:
            since = now
        age = max(0, int(now - since))
        break_error = None
        if age >= stale_after_s:
            description, break_error = _break(fs, path, since, age, aside)
            broken = description or broken
            if break_error is None:
                continue
        if now >= deadline:
            return _result(False, broken=broken, owner=current, age_s=age, reason=held_message(
                path, current, age, timeout_s, stale_after_s, break_error))
        sleep(delay_s)


def release(fs, path, owner):
    """Remove the lock at ``path`` when its owner file is exactly ``owner``; else leave it.

    Returns ``released`` (bool), ``failed`` (bool: our lock could not be removed) and ``msg``.
    """
    check_settings(path, 0, 1, 1)
    owner = check_owner(owner)
    current = _read_owner(fs, path)
    if current != owner:
        if not fs.isdir(path):
            msg = "no lock at %s: nothing to release" % path
        else:
            msg = "the lock %s is not held by this run (owner %s): left alone" % (
                path, _one_line(current) if current is not None else NO_OWNER)
        return dict(released=False, failed=False, msg=msg)
    try:
        fs.rmtree(path)
    except OSError as exc:
        return dict(released=False, failed=True,
                    msg="could not remove the lock %s: %s" % (path, exc))
    return dict(released=True, failed=False, msg="released the lock %s" % path)
