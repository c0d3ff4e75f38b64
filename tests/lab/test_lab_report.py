# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/report.yml on lab-ws and lab-cpu (and a host that is gone): the HTML page, the
text table and each host's gpufleet.prom, checked against the lab inventory."""

from __future__ import annotations

import html
import os
import re
import subprocess

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1024 * 1024


def _inventory_gpus(host):
    with open(os.path.join(ROOT, "inventory", "lab", "hosts.yml"), encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    return inventory["all"]["children"]["lab"]["hosts"][host]["lab_gpus"]


def _section(page, host):
    match = re.search(r'<section class="host" data-host="%s".*?</section>' % re.escape(host),
                      page, re.S)
    assert match, "no section for %s in the page" % host
    return match.group(0)


def test_report_of_lab_ws_and_lab_cpu(lab, tmp_path):
    # A host whose container does not exist: unreachable, listed, and the run still succeeds.
    gone = tmp_path / "gone.yml"
    gone.write_text("all:\n  hosts:\n    lab-report-gone:\n"
                    "      ansible_connection: community.docker.docker\n")
    page_path = tmp_path / "fleet.html"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"),
         "-i", os.path.join(ROOT, "inventory", "lab"), "-i", str(gone),
         os.path.join(ROOT, "playbooks", "report.yml"),
         "--limit", "lab-ws,lab-cpu,lab-report-gone", "-e", "report_html_path=%s" % page_path],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    page = page_path.read_text()

    ws = _section(page, "lab-ws")
    expected = _inventory_gpus("lab-ws")
    assert [g["name"] for g in expected] == ["NVIDIA RTX A5500", "NVIDIA RTX A400"]
    bars = re.findall(r'<div class="vram-bar" data-host="lab-ws" data-gpu="(\d+)"', ws)
    assert bars == ["0", "1"]
    for index, gpu in enumerate(expected):
        assert "GPU %d: %s" % (index, gpu["name"]) in ws
        assert html.escape(gpu["uuid"]) in ws
        assert "total %d MiB" % gpu["memory_mib"] in ws
    cpu = _section(page, "lab-cpu")
    assert "no GPU" in cpu and "vram-bar" not in cpu
    gone_section = _section(page, "lab-report-gone")
    assert 'data-status="unreachable"' in gone_section

    # The terminal table: one line per host, the GPUs under lab-ws.
    assert re.search(r"lab-ws\s+ok\s+", out)
    assert re.search(r"lab-report-gone\s+unreachable\s+UNREACHABLE", out)
    assert "GPU 0 NVIDIA RTX A5500" in out and "of 24564 MiB" in out
    assert "GPU 1 NVIDIA RTX A400" in out and "of 4094 MiB" in out

    # Each reachable host's textfile-collector file parses, with the inventory's totals.
    text = lab["lab-ws"].sh("cat /var/lib/node_exporter/textfile_collector/gpufleet.prom").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    totals = {s.labels["name"]: s.value
              for s in families["gpufleet_gpu_memory_total_bytes"].samples}
    assert totals == {g["name"]: g["memory_mib"] * MIB for g in expected}
    assert families["gpufleet_last_apply_info"].type == "gauge"
    text = lab["lab-cpu"].sh("cat /var/lib/node_exporter/textfile_collector/gpufleet.prom").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "gpufleet_gpu_memory_total_bytes" not in families
    assert families["gpufleet_profile_info"].samples[0].labels["profile"] == "cpu"
