# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role host_lock: while a run waits for a lock another run holds, the controller shows who
holds it and how long this run has waited; the outcome is the one without progress.

Real ansible-playbook runs on localhost (test_host_lock.py's playbook). The other run's lock
is removed when its first progress line appears, so nothing depends on timing: without the
lines the run waits its whole timeout and fails.
"""

from __future__ import annotations

import json
import shutil

from .test_host_lock import FOREIGN, _foreign_lock, _run, _start

HELD = ("localhost: host lock held by other-controller pid 424242 since 2026-01-02T03:04:05Z "
        "(play Someone else's play): waited ")


def test_a_wait_shows_who_holds_the_lock_then_takes_it_once_released(tmp_path):
    lock = _foreign_lock(tmp_path)
    proc = _start(tmp_path, "A", host_lock_timeout=60)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(HELD) and lock.exists():
            assert line.rstrip().endswith(" s of 60 s"), line
            shutil.rmtree(lock)
    output = "".join(lines)
    assert proc.wait(timeout=120) == 0, output
    assert not lock.exists(), output
    assert "localhost: took the host lock after " in output
    assert (tmp_path / "out").read_text() == "start A\nend A\n"
    # Taking and releasing the lock are no changes; the shell task is the one.
    assert "changed=1 " in output
    assert not (tmp_path / "run/lock").exists()


def test_a_lock_held_past_the_timeout_shows_the_wait_and_fails_as_before(tmp_path):
    lock = _foreign_lock(tmp_path)
    rc, output = _run(tmp_path, "A", host_lock_timeout=3)
    assert rc == 2, output
    assert HELD + "0 s of 3 s" in output
    assert "the lock %s is held by another run" % lock in output
    assert "host_lock_timeout=3 s; nothing was changed" in output
    assert "took the host lock" not in output
    assert not (tmp_path / "out").exists()
    assert json.loads((lock / "owner").read_text()) == FOREIGN


def test_a_free_lock_is_taken_without_a_line(tmp_path):
    rc, output = _run(tmp_path, "A", host_lock_timeout=60)
    assert rc == 0, output
    assert "host lock held by" not in output and "took the host lock" not in output
    assert (tmp_path / "out").read_text() == "start A\nend A\n"
