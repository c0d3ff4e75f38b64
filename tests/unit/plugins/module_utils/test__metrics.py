# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The textfile-collector metrics, read back with prometheus_client's own exposition parser."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.gpufleet.inference.plugins.module_utils import _metrics

FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "report" / "fleet.json"
HOSTS = json.loads(FIXTURE.read_text())["hosts"]
MIB = 1024 * 1024
A5500 = "GPU-5a1c0d3e-1a2b-4c3d-8e9f-a55000000000"


def host(i):
    return copy.deepcopy(HOSTS[i])


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(family):
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_every_family_has_help_and_type_and_parses():
    text = _metrics.textfile(host(0))
    parsed = families(text)
    assert sorted(parsed) == sorted(name for name, _help in _metrics.FAMILIES)
    for name, help_text in _metrics.FAMILIES:
        assert parsed[name].type == "gauge"
        assert parsed[name].documentation == help_text
        assert "# HELP %s %s\n# TYPE %s gauge\n" % (name, help_text, name) in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_gpu_memory():
    parsed = families(_metrics.textfile(host(0)))
    labels = (("gpu", "0"), ("name", "NVIDIA RTX A5500"), ("uuid", A5500))
    assert values(parsed["gpufleet_gpu_memory_total_bytes"])[labels] == 24564 * MIB
    assert values(parsed["gpufleet_gpu_memory_used_bytes"])[labels] == (24564 - 19705) * MIB
    assert values(parsed["gpufleet_gpu_memory_free_bytes"])[labels] == 19705 * MIB
    assert values(parsed["gpufleet_gpu_memory_managed_bytes"])[labels] == 4300 * MIB
    assert values(parsed["gpufleet_gpu_healthy"])[labels] == 1
    assert len(parsed["gpufleet_gpu_memory_total_bytes"].samples) == 2


def test_services():
    parsed = families(_metrics.textfile(host(0)))
    research = (("engine", "ollama"), ("gpu", "1"), ("service", "ollama_research"))
    assert values(parsed["gpufleet_service_vram_budget_bytes"])[research] == 2963 * MIB
    assert values(parsed["gpufleet_service_vram_used_bytes"])[research] == 3100 * MIB
    assert values(parsed["gpufleet_service_healthy"])[research] == 0
    docling = (("engine", "other"), ("gpu", "none"), ("service", "docling"))
    assert values(parsed["gpufleet_service_healthy"])[docling] == 1
    assert docling not in values(parsed["gpufleet_service_vram_budget_bytes"])
    assert values(parsed["gpufleet_host_healthy"]) == {(): 0}


def test_mode_switch_and_apply():
    parsed = families(_metrics.textfile(host(0)))
    assert values(parsed["gpufleet_mode_info"]) == {(("mode", "chat"), ("outcome", "switched")): 1}
    assert values(parsed["gpufleet_profile_info"]) == {
        (("dual_gpu_mode", "ollama"), ("profile", "dual-gpu")): 1}
    assert values(parsed["gpufleet_last_switch_duration_seconds"]) == {(): 7.42}
    assert values(parsed["gpufleet_last_switch_drain_seconds"]) == {(): 3.1}
    # 2026-11-22T08:40:12.512345+00:00
    assert values(parsed["gpufleet_last_switch_timestamp_seconds"]) == {(): 1795336812.512345}
    assert values(parsed["gpufleet_last_apply_success"]) == {(): 1}
    assert values(parsed["gpufleet_last_apply_timestamp_seconds"]) == {(): 1795336860.25}
    assert values(parsed["gpufleet_last_apply_info"]) == {
        (("result", "ok"), ("runtime", "compose")): 1}


@pytest.mark.parametrize("record, success, info", [
    (None, None, (("result", "unknown"), ("runtime", ""))),
    ({"result": "rolled_back", "finished_at": "2026-11-22T08:41:00Z", "runtime": "systemd"}, 0,
     (("result", "rolled_back"), ("runtime", "systemd"))),
    ({"result": "failed", "finished_at": None, "runtime": "compose"}, 0,
     (("result", "failed"), ("runtime", "compose"))),
])
def test_apply_results(record, success, info):
    entry = host(1)
    entry["apply"] = record
    parsed = families(_metrics.textfile(entry))
    assert values(parsed["gpufleet_last_apply_info"]) == {info: 1}
    if success is None:
        assert "gpufleet_last_apply_success" not in parsed
    else:
        assert values(parsed["gpufleet_last_apply_success"]) == {(): success}
    if record and record["finished_at"]:
        assert values(parsed["gpufleet_last_apply_timestamp_seconds"]) == {(): 1795336860.0}
    else:
        assert "gpufleet_last_apply_timestamp_seconds" not in parsed


def test_cpu_host_has_no_gpu_and_no_mode_families():
    parsed = families(_metrics.textfile(host(1)))
    assert "gpufleet_gpu_memory_total_bytes" not in parsed
    assert "gpufleet_mode_info" not in parsed
    assert "gpufleet_last_switch_duration_seconds" not in parsed
    assert values(parsed["gpufleet_profile_info"]) == {
        (("dual_gpu_mode", ""), ("profile", "cpu")): 1}


def test_label_values_are_escaped():
    entry = host(0)
    nasty = 'RTX "A5500"\\ line1\nline2'
    entry["gpus"][0]["name"] = nasty
    text = _metrics.textfile(entry)
    assert 'name="RTX \\"A5500\\"\\\\ line1\\nline2"' in text
    parsed = families(text)
    names = {s.labels["name"] for s in parsed["gpufleet_gpu_memory_total_bytes"].samples}
    assert names == {nasty, "NVIDIA RTX A400"}
    assert _metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


@pytest.mark.parametrize("index, message", [
    (2, "host lab-dual is failed: nothing to export"),
    (3, "host lab-gone is unreachable: nothing to export"),
])
def test_hosts_that_were_not_read_have_no_metrics(index, message):
    with pytest.raises(ValueError) as err:
        _metrics.textfile(host(index))
    assert str(err.value) == message


def test_bad_time_names_the_field():
    entry = host(0)
    entry["apply"]["finished_at"] = "yesterday"
    with pytest.raises(ValueError) as err:
        _metrics.textfile(entry)
    assert str(err.value) == "apply.finished_at must be an ISO-8601 time; got: 'yesterday'"
