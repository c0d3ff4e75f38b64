# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a collection playbook against localhost with extra vars, and read its recap."""

from __future__ import annotations

import json
import re
import subprocess

from .conftest import BIN, REPO, ansible_env

RECAP_RE = re.compile(r"^localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                      r"failed=(\d+)", re.M)


def gpu(index, total=24576, free=None, driver="590.48.01"):
    """A hand-written GPU fact (ansible_facts.gpus shape)."""
    return {"index": index, "uuid": "GPU-%04d" % index, "name": "GPU%d" % index,
            "vendor": "nvidia", "memory_total_mib": total, "memory_used_mib": 0,
            "memory_free_mib": total if free is None else free, "compute_capability": "8.6",
            "processes": [], "mig_devices": [], "healthy": True, "driver_version": driver}


def run_playbook(playbook, tmp_path, extra_vars, check=False, diff=False, verbosity=0,
                 env=None):
    """Run ``playbooks/<playbook>`` on localhost; returns (rc, output, recap dict)."""
    vars_file = tmp_path / ("vars-%s.json" % playbook.replace("/", "_"))
    vars_file.write_text(json.dumps(extra_vars))
    command = [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventory/localhost.yml"),
               str(REPO / "playbooks" / playbook), "-e", "@%s" % vars_file]
    if check:
        command.append("--check")
    if diff:
        command.append("--diff")
    if verbosity:
        command.append("-" + "v" * verbosity)
    proc = subprocess.run(command, capture_output=True, text=True, check=False,
                          env=ansible_env(**(env or {})), cwd=str(REPO), timeout=300)
    output = proc.stdout + proc.stderr
    match = RECAP_RE.search(proc.stdout)
    recap = None
    if match:
        recap = dict(zip(("ok", "changed", "unreachable", "failed"),
                         (int(g) for g in match.groups())))
    return proc.returncode, output, recap
