# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""amd-smi and rocm-smi parsers and collectors, against real captured outputs.

Expected values were read from the fixture files named. The only real amd-smi
capture is ``static``; ``list``, ``metric`` and ``process`` answers below are
hand-written in the shapes amd-smi documents, and say so.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _amd_smi
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import GPU_KEYS
from tests.support.stand_in_tools import pick, stand_in_run

TESTS = Path(__file__).resolve().parents[3]
FIXTURES = TESTS / "fixtures"
MI210_STATIC = FIXTURES / "amd-smi-json" / "device-metrics-exporter-mi210-static.json"
ROCM = FIXTURES / "rocm-smi-json"


# --------------------------------------------------------------------------- amd-smi static

MI210 = dict(index=0, name="AMD Instinct MI210", vendor="amd", memory_total_mib=65520,
             power_limit_w=300.0, driver_version="6.14.0-24-generic", memory_kind="dedicated",
             uuid=None, pci_bus_id=None, memory_used_mib=None, healthy=True)


def _mi210():
    return json.loads(MI210_STATIC.read_text())


def _shape_list():
    return json.dumps(_mi210()["gpu_data"])


def _shape_single_dict_plain_size():
    entry = copy.deepcopy(_mi210()["gpu_data"][0])
    entry["vram"]["size"] = "65520 MB"
    return json.dumps(entry)


def _shape_plain_number():
    entry = copy.deepcopy(_mi210()["gpu_data"][0])
    entry["vram"]["size"] = 65520
    return json.dumps([entry])


STATIC_SHAPES = {
    "gpu_data-wrapper (the capture)": MI210_STATIC.read_text,
    "list": _shape_list,
    "one dict, size as text": _shape_single_dict_plain_size,
    "list, size as a number": _shape_plain_number,
    "warnings before the JSON": lambda: (
        "WARNING: User is missing the following required groups: render, video.\n"
        "[amd-smi] initialising\n" + MI210_STATIC.read_text()),
}


@pytest.mark.parametrize("shape", sorted(STATIC_SHAPES))
def test_parse_amd_smi_static_every_shape(shape):
    result = _amd_smi.parse_amd_smi_static(STATIC_SHAPES[shape]())
    [gpu] = result["gpus"]
    assert tuple(gpu) == GPU_KEYS
    assert pick(gpu, MI210) == MI210, shape
    assert result["driver_version"] == "6.14.0-24-generic"
    assert result["cuda_driver_version"] is None


def test_amd_driver_version_keeps_a_real_version():
    assert _amd_smi.amd_driver_version("6.10.5") == "6.10.5"
    assert _amd_smi.amd_driver_version("N/A") is None


# Hand-written in amd-smi's documented shapes (no capture of these subcommands exists).
AMD_LIST = [{"gpu": 0, "bdf": "0000:c1:00.0", "uuid": "b4ff740f-0000-1000-80de-55b0b6b9d26e",
             "kfd_id": 54208, "node_id": 2, "partition_id": 0}]
AMD_METRIC = {"gpu_data": [{
    "gpu": 0,
    "usage": {"gfx_activity": {"value": 7, "unit": "%"}, "umc_activity": {"value": 0, "unit": "%"}},
    "temperature": {"edge": "N/A", "hotspot": {"value": 38, "unit": "C"}},
    "mem_usage": {"total_vram": {"value": 65520, "unit": "MB"},
                  "used_vram": {"value": 8202, "unit": "MB"},
                  "free_vram": {"value": 57318, "unit": "MB"}},
}]}
AMD_PROCESS = [{"gpu": 0, "process_list": [
    {"process_info": {"name": "python3", "pid": 4242,
                      "memory_usage": {"gtt_mem": {"value": 2097152, "unit": "B"},
                                       "cpu_mem": {"value": 0, "unit": "B"},
                                       "vram_mem": {"value": 8589934592, "unit": "B"}},
                      "mem_usage": {"value": 8589934592, "unit": "B"}}},
    "No running processes detected",
]}]


def test_collect_amd_smi_static_only_through_the_stand_in():
    run = stand_in_run(GPUFLEET_FIXTURE_AMD_SMI_STATIC=MI210_STATIC)
    result = _amd_smi.collect_amd_smi(run, system_memory_mib=1)
    [gpu] = result["gpus"]
    assert pick(gpu, MI210) == MI210
    assert [argv[1] for argv in run.calls] == ["static", "list", "metric", "process"]
    assert [w.split(" exited ")[0] for w in result["warnings"]] == [
        "amd-smi list --json",
        "amd-smi metric --usage --mem-usage --temperature --json",
        "amd-smi process --json"]
    assert result["warnings"][0].endswith("bus ids and UUIDs unknown")


def test_collect_amd_smi_merges_list_metric_and_process(tmp_path):
    paths = {}
    for name, data in (("LIST", AMD_LIST), ("METRIC", AMD_METRIC), ("PROCESS", AMD_PROCESS)):
        paths["GPUFLEET_FIXTURE_AMD_SMI_" + name] = tmp_path / ("hand-written-%s.json" % name)
        paths["GPUFLEET_FIXTURE_AMD_SMI_" + name].write_text(json.dumps(data))
    result = _amd_smi.collect_amd_smi(
        stand_in_run(GPUFLEET_FIXTURE_AMD_SMI_STATIC=MI210_STATIC, **paths))
    [gpu] = result["gpus"]
    assert result["warnings"] == []
    assert pick(gpu, ("index", "name", "pci_bus_id", "uuid", "memory_total_mib",
                      "memory_used_mib", "memory_free_mib", "temperature_c",
                      "utilization_pct", "power_limit_w")) == dict(
        index=0, name="AMD Instinct MI210", pci_bus_id="0000:c1:00.0",
        uuid="b4ff740f-0000-1000-80de-55b0b6b9d26e", memory_total_mib=65520,
        memory_used_mib=8202, memory_free_mib=57318, temperature_c=38, utilization_pct=7,
        power_limit_w=300.0)
    assert gpu["processes"] == [{"pid": 4242, "name": "python3", "used_memory_mib": 8192}]


@pytest.mark.parametrize(("env", "message"), [
    (dict(GPUFLEET_STANDIN_GARBAGE="Segmentation fault (core dumped)"),
     r"^amd-smi static --json: no JSON in the output \(line 1: 'Segmentation fault "),
    (dict(GPUFLEET_STANDIN_GARBAGE='[1, 2]'),
     r"^amd-smi static --json: expected a GPU object, a list of them or \{\"gpu_data\""),
    (dict(GPUFLEET_STANDIN_GARBAGE='[{"asic": {}}]'),
     r'^amd-smi static --json: entry 0 has no "gpu" number; keys: asic$'),
    (dict(GPUFLEET_STANDIN_FAIL="2:ERROR:root:Unable to detect any GPU devices"),
     r"^amd-smi static --json exited 2: ERROR:root:Unable to detect any GPU devices$"),
], ids=["not-json", "wrong-shape", "no-gpu-number", "exit-2"])
def test_collect_amd_smi_raises_naming_the_command(env, message):
    with pytest.raises(ValueError, match=message):
        _amd_smi.collect_amd_smi(stand_in_run(GPUFLEET_FIXTURE_AMD_SMI_STATIC=MI210_STATIC,
                                              **env))


def test_collect_amd_smi_leaves_a_hang_to_the_runner():
    run = stand_in_run(timeout=1, GPUFLEET_STANDIN_HANG=30,
                       GPUFLEET_FIXTURE_AMD_SMI_STATIC=MI210_STATIC)
    with pytest.raises(subprocess.TimeoutExpired):
        _amd_smi.collect_amd_smi(run)


def test_metric_garbage_value_names_the_gpu_and_field():
    bad = copy.deepcopy(AMD_METRIC)
    bad["gpu_data"][0]["mem_usage"]["used_vram"] = {"value": "lots", "unit": "MB"}
    with pytest.raises(ValueError, match=r"amd-smi metric --json gpu 0 mem_usage.used_vram is "
                                         r"not a memory amount; got: 'lots MB'"):
        _amd_smi.parse_amd_smi_metric(json.dumps(bad))


# --------------------------------------------------------------------------- rocm-smi

_MI100 = dict(name="Arcturus GL-XL [Instinct MI100]", uuid=None, memory_total_mib=32752,
              memory_used_mib=6, memory_free_mib=32746, power_limit_w=290.0,
              utilization_pct=0, driver_version="6.2.4")

ROCM_CASES = {
    # file: (driver version, [(index, pci bus id, temperature, other values)])
    "telegraf-mi100_rocm571.json": ("6.2.4", [
        (0, "0000:1e:00.0", 31, _MI100), (1, "0000:22:00.0", 30, _MI100),
        (2, "0000:3f:00.0", 31, _MI100), (3, "0000:43:00.0", 33, _MI100),
        (4, "0000:46:00.0", 32, _MI100), (5, "0000:49:00.0", 33, _MI100)]),
    "telegraf-rx6700xt_rocm612.json": ("6.3.6", [
        (0, "0000:07:00.0", 45, dict(
            name="Navi 22 [Radeon RX 6700/6700 XT / 6800M]", uuid=None,
            memory_total_mib=12272,  # 12868124672 B
            memory_used_mib=1499,  # 1572745216 B
            memory_free_mib=10773, power_limit_w=211.0, utilization_pct=0,
            driver_version="6.3.6"))]),
    "telegraf-vega-20-WKS-GL-XE.json": ("5.9.17", [
        (0, "0000:63:00.0", 36, dict(
            name="Radeon Instinct MI50 32GB", uuid="0x2f048617326b1ea",
            memory_total_mib=32752,  # 34342961152 B
            memory_used_mib=10,  # 10850304 B
            memory_free_mib=32742, power_limit_w=225.0, utilization_pct=0,
            driver_version="5.9.17"))]),
}


def check_rocm(name, result):
    driver, cards = ROCM_CASES[name]
    assert result["driver_version"] == driver
    assert len(result["gpus"]) == len(cards), name
    for gpu, (index, bus, temperature, values) in zip(result["gpus"], cards):
        assert tuple(gpu) == GPU_KEYS
        where = "%s card%d" % (name, index)
        assert (gpu["index"], gpu["pci_bus_id"], gpu["temperature_c"]) == (
            index, bus, temperature), where
        assert pick(gpu, values) == values, where
        assert (gpu["vendor"], gpu["memory_kind"], gpu["healthy"]) == ("amd", "dedicated", True)


@pytest.mark.parametrize("name", sorted(ROCM_CASES))
def test_parse_rocm_smi_every_fixture(name):
    check_rocm(name, _amd_smi.parse_rocm_smi((ROCM / name).read_text()))


@pytest.mark.parametrize("name", sorted(ROCM_CASES))
def test_collect_rocm_smi_every_fixture_through_the_stand_in(name):
    run = stand_in_run(GPUFLEET_FIXTURE_ROCM_SMI_JSON=ROCM / name)
    result = _amd_smi.collect_rocm_smi(run)
    check_rocm(name, result)
    assert run.calls == [list(_amd_smi.ROCM_SMI)]


def test_rocm_smi_processes_without_a_gpu_are_a_warning():
    result = _amd_smi.parse_rocm_smi((ROCM / "telegraf-mi100_rocm571.json").read_text())
    assert result["warnings"] == [
        "rocm-smi lists processes without their GPU (104225 mlir-cpu-runner); "
        "processes are not attributed"]
    assert all(gpu["processes"] == [] for gpu in result["gpus"])


def test_rocm_smi_warning_lines_before_the_json_are_skipped():
    preamble = ("WARNING: AMD GPU device(s) is/are in a low-power state. "
                "Check power control/runtime_status")
    run = stand_in_run(GPUFLEET_FIXTURE_ROCM_SMI_JSON=ROCM / "telegraf-rx6700xt_rocm612.json",
                       GPUFLEET_STANDIN_PREAMBLE=preamble)
    check_rocm("telegraf-rx6700xt_rocm612.json", _amd_smi.collect_rocm_smi(run))


@pytest.mark.parametrize(("env", "message"), [
    (dict(GPUFLEET_STANDIN_GARBAGE="ERROR: No AMD GPUs specified"),
     r"^rocm-smi --json: no JSON in the output \(line 1: 'ERROR: No AMD GPUs specified'\)$"),
    (dict(GPUFLEET_STANDIN_GARBAGE='{"system": {"Driver version": "6.2.4"}}'),
     r"^rocm-smi --json: no cardN entries; keys: system$"),
    (dict(GPUFLEET_STANDIN_GARBAGE="[]"),
     r"^rocm-smi --json: expected an object with cardN keys; got a list$"),
    (dict(GPUFLEET_STANDIN_GARBAGE='{"card0": {"VRAM Total Memory (B)": "many"}}'),
     r"^rocm-smi --json card0 VRAM Total Memory \(B\) is not a memory amount; got: 'many'$"),
    (dict(GPUFLEET_STANDIN_FAIL="1:rocm-smi: command failed"),
     r"^rocm-smi --json exited 1: rocm-smi: command failed$"),
], ids=["not-json", "no-cards", "a-list", "bad-number", "exit-1"])
def test_collect_rocm_smi_raises_naming_the_backend(env, message):
    with pytest.raises(ValueError, match=message):
        _amd_smi.collect_rocm_smi(stand_in_run(
            GPUFLEET_FIXTURE_ROCM_SMI_JSON=ROCM / "telegraf-rx6700xt_rocm612.json", **env))


@pytest.mark.parametrize("value", ["N/A", "", "[N/A]"])
def test_rocm_smi_unknown_values_are_none_never_zero(value):
    text = json.dumps({"card3": {"VRAM Total Memory (B)": value, "GPU use (%)": value,
                                 "Temperature (Sensor edge) (C)": value, "PCI Bus": value}})
    [gpu] = _amd_smi.parse_rocm_smi(text)["gpus"]
    assert gpu["index"] == 3
    for key in ("memory_total_mib", "utilization_pct", "temperature_c", "pci_bus_id"):
        assert gpu[key] is None, "%s for %r; got: %r" % (key, value, gpu[key])


# --------------------------------------------------------------------------- where the JSON is


def _four_gpus():
    """The MI210 capture as a host with four of them (gpu 0..3), as amd-smi prints it."""
    data = _mi210()
    entry = data["gpu_data"][0]
    data["gpu_data"] = [dict(copy.deepcopy(entry), gpu=n) for n in range(4)]
    return json.dumps(data, indent=4)


@pytest.mark.parametrize(("text", "message"), [
    # Cut in the middle of the second GPU: it used to parse as one GPU (the first inner '{').
    (lambda: _four_gpus()[: len(_four_gpus()) // 3],
     r"^amd-smi static --json: the output is not valid JSON: .* \(line \d+, column \d+\)$"),
    (lambda: _four_gpus()[:-2],
     r"^amd-smi static --json: the output is not valid JSON: .* \(line \d+, column \d+\)$"),
    # Text after the document: not ours to guess at.
    (lambda: _four_gpus() + "\nERROR: GPU[2] lost during the query\n",
     r"^amd-smi static --json: the output is not valid JSON: text after the JSON document "
     r"\(line \d+: 'ERROR: GPU\[2\] lost during the query'\)$"),
], ids=["cut-in-the-middle", "cut-at-the-end", "text-after"])
def test_truncated_or_trailing_json_is_an_error_not_fewer_gpus(text, message):
    with pytest.raises(ValueError, match=message):
        _amd_smi.parse_amd_smi_static(text())


def test_four_gpus_parse_as_four():
    assert [g["index"] for g in _amd_smi.parse_amd_smi_static(_four_gpus())["gpus"]] == [
        0, 1, 2, 3]


@pytest.mark.parametrize("preamble", [
    "WARNING: GPU[0]\t: Unable to get the memory partition: not supported\n",
    "WARNING: GPU[0] [1] render node missing\nWARNING: {kfd} not loaded\n",
], ids=["gpu-bracket", "brackets-and-braces"])
def test_warning_lines_with_brackets_before_the_json_are_skipped(preamble):
    result = _amd_smi.parse_amd_smi_static(preamble + MI210_STATIC.read_text())
    [gpu] = result["gpus"]
    assert pick(gpu, MI210) == MI210


# --------------------------------------------------------------------------- optional answers


@pytest.mark.parametrize(("name", "answer", "warning"), [
    ("METRIC", "Segmentation fault (core dumped)\n",
     "amd-smi metric --json: no JSON in the output (line 1: 'Segmentation fault (core "
     "dumped)'); used memory, temperature and utilization unknown"),
    ("METRIC", json.dumps({"gpu_data": [{"gpu": 0, "mem_usage": {
        "used_vram": {"value": "lots", "unit": "MB"}}}]}),
     "amd-smi metric --json gpu 0 mem_usage.used_vram is not a memory amount; got: 'lots MB'; "
     "used memory, temperature and utilization unknown"),
    ("PROCESS", '[{"gpu": 0, "process_list": [{"process_info": {"pid": "x"}}]}]',
     "amd-smi process --json pid x is not a number; got: 'x'; processes unknown"),
    ("LIST", '{"gpu": 0, "bdf": "slot 3"}',
     "amd-smi list --json: pci_bus_id is not a PCI address; got: 'slot 3'; bus ids and UUIDs "
     "unknown"),
], ids=["metric-garbage", "metric-bad-value", "process-bad-pid", "list-bad-bdf"])
def test_a_failing_optional_subcommand_leaves_its_values_null(tmp_path, name, answer, warning):
    path = tmp_path / ("hand-written-%s.json" % name)
    path.write_text(answer)
    env = {"GPUFLEET_FIXTURE_AMD_SMI_" + name: path}
    result = _amd_smi.collect_amd_smi(stand_in_run(GPUFLEET_FIXTURE_AMD_SMI_STATIC=MI210_STATIC,
                                                   **env))
    [gpu] = result["gpus"]
    assert pick(gpu, MI210) == MI210
    assert warning in result["warnings"], result["warnings"]
