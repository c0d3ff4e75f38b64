# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nvidia-smi reader against what a real H200 printed, and NVML's view of the same moment.

tests/fixtures/real-gpu/nvidia-h200__580.159.04/ was written by tests/real_gpu/check.py on a
machine with one NVIDIA H200 (driver 580.159.04, CUDA 13.0) while a PyTorch process held
8 GiB on it: capture.txt is every command the nvidia-smi reader ran and its output, facts.json
the gpu_facts module's results there (NVML and nvidia-smi backends, idle / held / after).
Every expected value below was read from those files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _nvidia_smi

REAL = Path(__file__).resolve().parents[3] / "fixtures" / "real-gpu" / "nvidia-h200__580.159.04"
UUID = "GPU-dd674e5e-6751-dd9d-a3ca-8d21e7c70213"
HOLDER = (558, "/opt/torch/.venv/bin/python3", 8802)
IDENTITY = ("index", "uuid", "name", "vendor", "pci_bus_id", "memory_total_mib",
            "compute_capability", "driver_version", "cuda_driver_version", "mig_mode",
            "memory_kind", "power_limit_w", "healthy")


def sections():
    """{command: output} of capture.txt ('# $ <command>' then the output)."""
    found, command, body = {}, None, []
    for line in (REAL / "capture.txt").read_text().split("\n"):
        if line.startswith("# $ "):
            if command is not None:
                found[command] = "\n".join(body).strip("\n") + "\n"
            command, body = line[4:], []
        else:
            body.append(line)
    found[command] = "\n".join(body).strip("\n") + "\n"
    return found


def replay(argv):
    output = sections().get(" ".join(argv))
    assert output is not None, "the H200 capture holds no %r" % " ".join(argv)
    return 0, output, ""


@pytest.fixture(scope="module")
def recorded():
    return json.loads((REAL / "facts.json").read_text())


def test_the_reader_reads_the_real_h200():
    result = _nvidia_smi.collect(replay)
    assert result["warnings"] == []
    assert (result["driver_version"], result["cuda_driver_version"]) == ("580.159.04", "13.0")
    [gpu] = result["gpus"]
    assert {key: gpu[key] for key in IDENTITY} == {
        "index": 0, "uuid": UUID, "name": "NVIDIA H200", "vendor": "nvidia",
        "pci_bus_id": "0000:00:06.0", "memory_total_mib": 143771, "compute_capability": "9.0",
        "driver_version": "580.159.04", "cuda_driver_version": "13.0", "mig_mode": "disabled",
        "memory_kind": "dedicated", "power_limit_w": 700.0, "healthy": True}
    # fb_memory_usage: total 143771 = reserved 616 + used 8811 + free 134344 (+ rounding)
    assert (gpu["memory_reserved_mib"], gpu["memory_used_mib"], gpu["memory_free_mib"]) == (
        616, 8811, 134346)
    assert [(p["pid"], p["name"], p["used_memory_mib"]) for p in gpu["processes"]] == [HOLDER]
    assert gpu["mig_devices"] == [] and gpu["errors"] == []


def test_the_compute_apps_csv_of_the_real_h200():
    command = ("nvidia-smi --query-compute-apps=%s --format=csv"
               % ",".join(_nvidia_smi.APPS_FIELDS))
    rows = _nvidia_smi.parse_query_apps_csv(sections()[command])
    by_gpu = _nvidia_smi.processes_from_apps_rows(rows)
    assert [(p["pid"], p["name"], p["used_memory_mib"]) for p in by_gpu[UUID]] == [HOLDER]


def test_nvidia_smi_and_nvml_agreed_on_the_real_h200(recorded):
    """The same GPU through both backends, on the machine, at the same moment."""
    for tag in ("idle", "held", "after"):
        nvml = recorded[tag]["nvml"]["ansible_facts"]["gpus"]
        smi = recorded[tag]["nvidia-smi"]["ansible_facts"]["gpus"]
        assert len(nvml) == len(smi) == 1, tag
        assert {k: nvml[0][k] for k in IDENTITY} == {k: smi[0][k] for k in IDENTITY}, tag
        for key in ("memory_used_mib", "memory_reserved_mib", "memory_free_mib"):
            # NVML's bytes floor to MiB; nvidia-smi rounds
            assert abs(nvml[0][key] - smi[0][key]) <= 1, (tag, key, nvml[0][key], smi[0][key])
        assert [p["pid"] for p in nvml[0]["processes"]] == [p["pid"] for p in smi[0]["processes"]]
    assert recorded["held"]["auto"]["ansible_facts"]["gpu_summary"][
        "backend"] == "nvml"


def test_todays_reader_still_returns_what_the_module_returned_there(recorded):
    """The module's nvidia-smi result on the H200 is what collect() makes of the capture now."""
    [there] = recorded["held"]["nvidia-smi"]["ansible_facts"]["gpus"]
    [here] = _nvidia_smi.collect(replay)["gpus"]
    volatile = ("temperature_c", "utilization_pct")  # read a second apart
    # vendor_index came after that run; the reader leaves it to gpu_facts' merge of vendors.
    assert here.pop("vendor_index") is None
    assert {k: v for k, v in here.items() if k not in volatile} == {
        k: v for k, v in there.items() if k not in volatile}


def test_the_held_process_is_counted_in_used_memory(recorded):
    nvml = {tag: recorded[tag]["nvml"]["ansible_facts"]["gpus"][0]
            for tag in ("idle", "held", "after")}
    assert nvml["idle"]["processes"] == nvml["after"]["processes"] == []
    assert nvml["idle"]["memory_used_mib"] == nvml["after"]["memory_used_mib"] == 0
    assert nvml["held"]["memory_used_mib"] >= HOLDER[2]
