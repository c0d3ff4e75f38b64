# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet_outcome callback on five local hosts: batches, a failure, a stop, a rollback.

The hosts are local connections (no containers), so Ansible's own serial batches,
max_fail_percentage and rescue run for real in a few seconds; the lab test
(tests/lab/test_lab_fleet.py) runs site.yml itself on eight lab hosts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import BIN, REPO, ansible_env

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
PLAYBOOK = """
- name: Roll out
  hosts: fleet
  gather_facts: false
  serial: "{{ batches | default([1, 2, '100%']) }}"
  max_fail_percentage: "{{ max_fail | default(0) }}"
  tasks:
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: inventory_hostname in changes | default(['h1'])
    - name: Apply
      block:
        - name: Break where asked
          ansible.builtin.fail:
            msg: "broken on {{ inventory_hostname }}"
          when: inventory_hostname in broken | default([])
      rescue:
        - name: Report a rollback
          ansible.builtin.set_stats:
            data: {gpufleet_outcome: rolled_back}
            per_host: true
            aggregate: false
          when: inventory_hostname in rolled_back | default([])
        - name: Fail again
          ansible.builtin.fail:
            msg: "{{ ansible_failed_result.msg }}"
"""
_ROW = re.compile(r"^(h\d) +(changed|unchanged|failed|unreachable|rolled back|not reached)"
                  r" +(\d+) *(.*)$", re.MULTILINE)


def run(tmp_path, extra="{}", serial=True, env=None):
    (tmp_path / "hosts.yml").write_text(
        "fleet:\n  hosts:\n%s  vars:\n    ansible_connection: local\n"
        "    ansible_python_interpreter: %s\n"
        % ("".join("    %s:\n" % h for h in HOSTS), sys.executable))
    text = PLAYBOOK if serial else PLAYBOOK.replace("  serial:", "  # serial:")
    (tmp_path / "play.yml").write_text(text)
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
         str(tmp_path / "play.yml"), "-e", extra],
        capture_output=True, text=True, check=False, cwd=str(REPO), timeout=120,
        env=ansible_env(ANSIBLE_CALLBACKS_ENABLED="gpufleet.inference.fleet_outcome",
                        ANSIBLE_CALLBACK_RESULT_FORMAT="yaml", **(env or {})))
    out = proc.stdout + proc.stderr
    rows = {m.group(1): (m.group(2), int(m.group(3)), m.group(4)) for m in _ROW.finditer(out)}
    return proc.returncode, out, rows


def test_a_failure_in_a_batch_stops_the_rollout_and_every_host_is_in_the_table(tmp_path):
    rc, out, rows = run(tmp_path, '{"broken": ["h3"]}')
    assert rc == 2, out
    assert out.count("FLEET OUTCOME") == 1, out
    assert rows == {
        "h1": ("changed", 1, ""),
        # h2 shared the batch with h3: stopped by max_fail_percentage before its changes.
        "h2": ("not reached", 0, "rollout stopped before this host"),
        "h3": ("failed", 0, "Fail again: broken on h3"),
        "h4": ("not reached", 0, "rollout stopped before this host"),
        "h5": ("not reached", 0, "rollout stopped before this host"),
    }, out
    assert out.rstrip().endswith("1 changed, 1 failed, 3 not reached"), out


def test_a_rolled_back_host_and_a_tolerated_failure(tmp_path):
    """max_fail_percentage 50: one failure out of two goes on; a rollback is reported as such."""
    rc, out, rows = run(tmp_path, '{"broken": ["h3"], "rolled_back": ["h3"], "max_fail": 50,'
                                  ' "changes": ["h1", "h2", "h5"]}')
    assert rc == 2, out
    assert rows == {"h1": ("changed", 1, ""), "h2": ("changed", 1, ""),
                    "h3": ("rolled back", 0, "Fail again: broken on h3"),
                    "h4": ("unchanged", 0, ""), "h5": ("changed", 1, "")}, out


def test_a_clean_run_and_the_table_only_after_rollouts(tmp_path):
    rc, out, rows = run(tmp_path)
    assert rc == 0, out
    assert [rows[h][0] for h in HOSTS] == ["changed"] + ["unchanged"] * 4, out
    rc, out, rows = run(tmp_path, serial=False)
    assert rc == 0 and "FLEET OUTCOME" not in out, out
    rc, out, rows = run(tmp_path, serial=False, env={"GPUFLEET_OUTCOME_ALWAYS": "1"})
    assert rc == 0 and out.count("FLEET OUTCOME") == 1 and len(rows) == 5, out


SERIAL_RULE = "gpufleet_serial must be a count, a percentage like '25%' or a list of them"
FAIL_RULE = "gpufleet_max_fail_percentage must be a number 0-100"


@pytest.mark.parametrize("extra, rule, shown", [
    ({"gpufleet_serial": "x%"}, SERIAL_RULE, "gpufleet_serial=x%"),
    ({"gpufleet_serial": [1, "25 %"]}, SERIAL_RULE, "gpufleet_serial=[1, '25 %']"),
    ({"gpufleet_max_fail_percentage": 150}, FAIL_RULE, "gpufleet_max_fail_percentage=150"),
    ({"gpufleet_max_fail_percentage": "some"}, FAIL_RULE, "gpufleet_max_fail_percentage=some"),
])
def test_site_refuses_bad_rollout_settings_before_any_host(tmp_path, extra, rule, shown):
    """site.yml checks its play keywords first (a bad serial would crash Ansible itself)."""
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventory" / "localhost.yml"),
         str(REPO / "site.yml"), "-e", json.dumps(extra)],
        capture_output=True, text=True, check=False, cwd=str(REPO), timeout=120,
        env=ansible_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert rule in out, out
    assert shown in out, out
    assert "PLAY [Preflight, place" not in out, out


def test_the_fleet_inventory_example_host_variables_beat_group_defaults():
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(REPO / "inventory" / "examples" / "fleet"),
         "--list"], capture_output=True, text=True, check=True, cwd=str(REPO),
        env=ansible_env())
    inv = json.loads(proc.stdout)
    hostvars = inv["_meta"]["hostvars"]
    modes = {h: hostvars[h]["dual_gpu_mode"] for h in ("infer-01", "infer-02", "infer-03")}
    assert modes == {"infer-01": "ollama", "infer-02": "vllm", "infer-03": "ollama"}
    assert hostvars["infer-01"]["gpufleet_expected_gpus"]["name"] == "NVIDIA GeForce RTX 3090"
    assert hostvars["infer-03"]["gpufleet_expected_gpus"]["names"][1] == "NVIDIA RTX A4000"
    pins = {h: hostvars[h]["services_catalog"]["ollama"]["gpu"] for h in ("edge-01", "edge-02")}
    assert pins == {"edge-01": 0, "edge-02": "GPU-4c1d0000-0000-4000-8000-000000000032"}
    # The constructed source groups the hosts by the GPU models they declare.
    assert inv["gpu_NVIDIA_GeForce_RTX_3090"]["hosts"] == ["infer-01", "infer-02", "infer-03"]
    assert inv["gpu_NVIDIA_RTX_A4000"]["hosts"] == ["infer-03"]
    assert inv["gpu_NVIDIA_L4"]["hosts"] == ["edge-01", "edge-02"]
    assert "gpufleet_expected_gpus" not in hostvars["cpu-01"]


def test_every_host_failing_before_the_serial_play_still_gets_the_table(tmp_path):
    """No serial play ever started (a check before the rollout failed everywhere)."""
    rc, out, rows = run(tmp_path, '{"broken": ["h1", "h2", "h3", "h4", "h5"]}', serial=False)
    assert rc == 2, out
    assert out.count("FLEET OUTCOME") == 1, out
    assert {h: rows[h][0] for h in HOSTS} == dict.fromkeys(HOSTS, "failed"), out
