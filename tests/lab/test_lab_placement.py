# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The example playbook places seed 001's services on a lab host's real (simulated) GPU facts."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

A5500 = "GPU-5a1c0d3e-1a2b-4c3d-8e9f-a55000000000"
A400 = "GPU-5a1c0d3e-1a2b-4c3d-8e9f-a40000000001"


def _playbook(limit, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i",
         os.path.join(ROOT, "inventory", "lab"), os.path.join(ROOT, "playbooks",
                                                              "place_example.yml"),
         "--limit", limit, *extra],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=300)


def test_seed001_services_on_lab_ws(lab):
    proc = _playbook("lab-ws")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # The LLM and the latency-critical detector on the 24 GB A5500, the rest on the 4 GB A400,
    # selected by UUID; the enrichment budget cut to what the A400 can give (seed 001).
    assert "ai-llm  0  22221  {'CUDA_VISIBLE_DEVICES': '%s'}" % A5500 in out
    assert "ai-yolo26  0  650  {'CUDA_VISIBLE_DEVICES': '%s'}" % A5500 in out
    assert "ai-enrichment  1  3492  {'CUDA_VISIBLE_DEVICES': '%s'}" % A400 in out
    assert '"vram_budget": 3.4' in out
    assert "changed=0" in out


def test_cpu_host_gets_every_service_unplaced_with_a_warning(lab):
    proc = _playbook("lab-cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No GPU found" in proc.stdout + proc.stderr
