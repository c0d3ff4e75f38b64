# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role host_lock: a run waits for, or fails clearly on, a lock another run holds; a stale lock
is broken; two real concurrent runs never interleave their writes; a check run takes no lock and
writes nothing; the playbooks take the lock and release it in an always section.

The runs are real ansible-playbook processes on localhost against a lock in tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from .conftest import BIN, REPO, ansible_env, run_module

# A tiny playbook: under the lock, append "start <run>" and "end <run>" with a nap in between.
PLAYBOOK = """\
- name: Append under the host lock
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Work under the lock
      block:
        - name: Take the lock
          ansible.builtin.import_role:
            name: gpufleet.inference.host_lock
          when: use_lock | default(true) | bool
        - name: Append start, nap, append end
          ansible.builtin.shell: >-
            echo "start {{ run }}" >> {{ out }}; sleep {{ nap | default(0) }};
            echo "end {{ run }}" >> {{ out }}
          changed_when: true
      always:
        - name: Release the lock
          ansible.builtin.import_role:
            name: gpufleet.inference.host_lock
            tasks_from: release
          when: use_lock | default(true) | bool
"""

FOREIGN = {"controller": "other-controller", "pid": 424242, "play": "Someone else's play",
           "started": "2026-01-02T03:04:05Z"}


def _start(tmp_path, run, *options, **extra):
    playbook = tmp_path / "lock.yml"
    playbook.write_text(PLAYBOOK)
    extra = dict({"host_lock_path": str(tmp_path / "run/lock"), "out": str(tmp_path / "out"),
                  "run": run, "host_lock_delay": 1}, **extra)
    command = [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventory/localhost.yml"),
               str(playbook), "-e", json.dumps(extra), *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ansible_env(), cwd=str(REPO))


def _run(tmp_path, run, *options, **extra):
    proc = _start(tmp_path, run, *options, **extra)
    output = proc.communicate(timeout=120)[0]
    return proc.returncode, output


def _foreign_lock(tmp_path, age=0):
    lock = tmp_path / "run/lock"
    lock.mkdir(parents=True)
    (lock / "owner").write_text(json.dumps(FOREIGN) + "\n")
    if age:
        then = time.time() - age
        os.utime(lock, (then, then))
    return lock


def test_lock_held_by_another_run_waits_then_fails_and_writes_nothing(tmp_path):
    lock = _foreign_lock(tmp_path)
    began = time.monotonic()
    rc, output = _run(tmp_path, "A", host_lock_timeout=2)
    assert rc == 2, output
    assert time.monotonic() - began >= 2
    # The module fails; Ansible names the host.
    assert "fatal: [localhost]: FAILED!" in output
    assert "the lock %s is held by another run" % lock in output
    for value in ("other-controller", "424242", "Someone else's play", "2026-01-02T03:04:05Z",
                  "host_lock_timeout=2 s; nothing was changed", "rm -rf %s" % lock):
        assert value in output, value
    assert not (tmp_path / "out").exists()
    # The release in the always section left the other run's lock alone.
    assert json.loads((lock / "owner").read_text()) == FOREIGN


def test_stale_lock_is_broken_with_a_warning(tmp_path):
    lock = _foreign_lock(tmp_path, age=120)
    rc, output = _run(tmp_path, "A", host_lock_timeout=0, host_lock_stale_after=60)
    assert rc == 0, output
    assert "WARNING: localhost: broke a stale lock (12" in output
    assert "other-controller" in output
    assert (tmp_path / "out").read_text() == "start A\nend A\n"
    assert not lock.exists()
    assert [p.name for p in lock.parent.iterdir()] == []


def test_a_fresh_lock_is_not_taken_as_stale(tmp_path):
    lock = _foreign_lock(tmp_path, age=30)
    rc, output = _run(tmp_path, "A", host_lock_timeout=0, host_lock_stale_after=60)
    assert rc == 2, output
    assert "is held by another run" in output
    assert json.loads((lock / "owner").read_text()) == FOREIGN


def test_a_check_run_takes_no_lock_and_writes_nothing(tmp_path):
    rc, output = _run(tmp_path, "A", "--check", "-v")
    assert rc == 0, output
    assert "a check run takes no lock" in output
    assert "changed=0" in output
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "out").exists()


def test_a_check_run_neither_waits_for_nor_touches_a_held_lock(tmp_path):
    lock = _foreign_lock(tmp_path)
    began = time.monotonic()
    rc, output = _run(tmp_path, "A", "--check", host_lock_timeout=30)
    assert rc == 0, output
    assert time.monotonic() - began < 30
    assert json.loads((lock / "owner").read_text()) == FOREIGN
    assert sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == ["lock"]


# Every check is in tests/unit/plugins/module_utils/test__lock.py; these show the module's path.
BAD_INPUT = [
    ("path=/", "path must be an absolute path other than /, without a trailing /; got: '/'"),
    ("timeout=-1", "timeout must be an integer >= 0; got: -1"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUT, ids=[bad for bad, _message in BAD_INPUT])
def test_the_module_names_a_bad_field_and_its_value(bad, message):
    rc, result = run_module("gpufleet.inference.host_lock", "owner=x %s" % bad)
    assert rc == 2 and result["msg"] == "host_lock: " + message, result


def test_the_module_changes_nothing_and_releases_only_its_own_lock(tmp_path):
    lock = tmp_path / "run/lock"
    take = "path=%s owner=run-A timeout=0" % lock
    for args, expected in [
            (take, dict(acquired=True, broken=None, released=False)),
            (take, dict(acquired=True, broken=None, released=False)),
            ("path=%s owner=run-B state=absent" % lock, dict(released=False)),
            ("path=%s owner=run-A state=absent" % lock, dict(released=True))]:
        rc, result = run_module("gpufleet.inference.host_lock", args)
        assert rc == 0 and result["changed"] is False, result
        assert {key: result[key] for key in expected} == expected, (args, result)
    assert [p.name for p in lock.parent.iterdir()] == []
    unmade = tmp_path / "check/lock"
    rc, result = run_module("gpufleet.inference.host_lock", "path=%s owner=run-A" % unmade,
                            check=True)
    assert rc == 0 and result["check_mode"] is True and result["acquired"] is False, result
    assert "a check run takes no lock" in result["msg"]
    assert not unmade.parent.exists()


def _concurrent(tmp_path, use_lock, nap=2):
    runs = [_start(tmp_path, run, nap=nap, use_lock=use_lock) for run in ("A", "B")]
    outputs = [proc.communicate(timeout=120)[0] for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], outputs
    return (tmp_path / "out").read_text().splitlines()


def test_two_concurrent_runs_never_interleave(tmp_path):
    lines = _concurrent(tmp_path, use_lock=True)
    assert sorted(lines) == ["end A", "end B", "start A", "start B"]
    first = lines[0].split()[1]
    second = "B" if first == "A" else "A"
    assert lines == ["start " + first, "end " + first, "start " + second, "end " + second]
    assert not (tmp_path / "run/lock").exists()


def test_without_the_lock_the_same_runs_interleave(tmp_path):
    """The control case: the check above can fail. A longer nap: under load the two
    ansible-playbook processes can start seconds apart (one CI run saw a 2 s nap end first)."""
    lines = _concurrent(tmp_path, use_lock=False, nap=8)
    assert [line.split()[0] for line in lines] == ["start", "start", "end", "end"]


def _lock_steps(play):
    """(name of the block that takes the lock, whether its always section releases it)."""
    for section in ("pre_tasks", "tasks"):
        for block in play.get(section, []):
            steps = [t.get("ansible.builtin.import_role", {}) for t in block.get("block", [])]
            if {"name": "gpufleet.inference.host_lock"} in steps:
                releases = [t.get("ansible.builtin.import_role", {}).get("tasks_from")
                            for t in block.get("always", [])]
                return steps.index({"name": "gpufleet.inference.host_lock"}), "release" in releases
    return None, False


def test_playbooks_take_the_lock_first_and_release_it_always():
    for name in ("site.yml", "apply.yml"):
        plays = yaml.safe_load((REPO / "playbooks" / name).read_text())
        writing = plays[-1]
        assert _lock_steps(writing) == (0, True), name
    # switch_mode.yml is site.yml with a mode: it checks the mode, then imports site.yml
    switch = yaml.safe_load((REPO / "playbooks/switch_mode.yml").read_text())
    assert switch[-1] == {"name": "Converge the hosts in that mode",
                          "ansible.builtin.import_playbook": "site.yml"}
    site = yaml.safe_load((REPO / "playbooks/site.yml").read_text())
    # The GPU expectations play only reads; the rollout play locks after its ping gate.
    assert _lock_steps(site[0]) == (None, False)
    assert [t["name"] for t in site[1]["pre_tasks"]][-1].startswith("Fail a host that cannot")
