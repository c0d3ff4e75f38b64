# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk that fills up while the compose project is rendered: the run fails naming the disk
problem and the previous files stay byte for byte, with no backup, temporary or half-written file
next to them.

The project lives on a real 256 KiB tmpfs (mounting needs root, as on CI), rendered by the
services and compose roles on localhost (hand-written GPU facts, compose_apply false), then
filled to all but one page and rendered again for another dual-GPU mode.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
import yaml

from .render_support import DUAL_GPUS, run_playbook

PLAYBOOK = """---
- name: Render the compose project
  hosts: all
  gather_facts: false
  roles:
    - gpufleet.inference.services
    - gpufleet.inference.compose
"""

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/proj, unmounted afterwards."""
    mount = tmp_path / "proj"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)],
                   check=True, capture_output=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, capture_output=True)


def _scenario(tmp_path, project):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"box": {
        "ansible_connection": "local",
        "services_gather_gpu_facts": False,
        "services_gpus": DUAL_GPUS,
        "services_profile": "dual-gpu",
        "services_dual_gpu_mode": "vllm",
        "services_models_dir": str(tmp_path / "models"),
        "compose_project_dir": str(project),
        "compose_apply": False,
        "compose_verify": False,
    }}}}))
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK)
    return playbook, inventory


def _sums(directory, leave_out=("filler",)):
    """{name: sha256} of every entry of directory (a directory would show as None)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in directory.iterdir() if p.name not in leave_out}


def _fill(directory, leave_free):
    """Fill directory's file system up to its last page, then free leave_free bytes."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * PAGE)
        except OSError as error:
            assert error.errno == 28, error
    if leave_free:
        os.truncate(filler, filler.stat().st_size - leave_free)
    stats = os.statvfs(directory)
    assert stats.f_bavail * stats.f_frsize == leave_free
    return filler


def test_disk_full_while_rendering_keeps_the_previous_files(tmp_path, small_disk):
    playbook, inventory = _scenario(tmp_path, small_disk)
    rc, output = run_playbook(playbook, inventory)
    assert rc == 0, output
    before = _sums(small_disk)
    assert {"compose.yml", "compose.gpu.yml", ".env", "gpu-assignments.yml"} <= set(before)

    # One page left: the first backup is made whole, the next one fails empty, no new file fits.
    filler = _fill(small_disk, PAGE)
    # Another dual-GPU mode: compose.gpu.yml and .env must change.
    rc, output = run_playbook(playbook, inventory, "-e", "services_dual_gpu_mode=mixed")
    assert rc == 2, output
    assert "No space left on device" in output
    assert _sums(small_disk) == before

    # The same run with room on the disk does write new files, and keeps the old ones as the
    # last good set (no backups beside them).
    filler.unlink()
    rc, output = run_playbook(playbook, inventory, "-e", "services_dual_gpu_mode=mixed")
    assert rc == 0, output
    after = _sums(small_disk)
    assert after["compose.gpu.yml"] != before["compose.gpu.yml"]
    assert after[".env"] != before[".env"]
    assert not [name for name in after if name.endswith("~") or ".gpufleet-tmp" in name], after
    snapshot = _sums(small_disk / ".gpufleet-previous", leave_out=("manifest.json",))
    assert {name: before[name] for name in snapshot} == snapshot
    assert {"compose.gpu.yml", ".env"} <= set(snapshot)
