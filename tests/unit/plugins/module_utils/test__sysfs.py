# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading AMD and Intel GPUs from a fake sysfs tree built in tmp_path.

The trees copy the layout of a real /sys (class/drm/cardN/device a symlink into
devices/pci..., connectors cardN-DP-1 beside the cards); the numbers are made up.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import GPU_KEYS
from ansible_collections.gpufleet.inference.plugins.module_utils._sysfs import collect_sysfs

GIB = 1024 ** 3


def add_card(root, number, vendor, bus_id, files=None, link=True, connectors=("DP-1",)):
    """cardN with its PCI device; ``link=False`` makes device a plain directory that
    only names its slot in uevent (as under some container runtimes)."""
    drm = root / "sys" / "class" / "drm"
    drm.mkdir(parents=True, exist_ok=True)
    card = drm / ("card%d" % number)
    card.mkdir()
    if link:
        device = root / "sys" / "devices" / "pci0000:00" / bus_id
        device.mkdir(parents=True)
        os.symlink(os.path.relpath(device, card), card / "device")
    else:
        device = card / "device"
        device.mkdir()
    (device / "vendor").write_text(vendor + "\n")
    (device / "uevent").write_text("DRIVER=x\nPCI_SLOT_NAME=%s\n" % bus_id)
    for name, value in (files or {}).items():
        path = device / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("%s\n" % value)
    for connector in connectors:
        (drm / ("card%d-%s" % (number, connector))).mkdir()
    return device


def meminfo(root, kib):
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "meminfo").write_text("MemTotal:       %d kB\nMemFree:  1 kB\n" % kib)


AMD_FILES = {
    "mem_info_vram_total": 16 * GIB,
    "mem_info_vram_used": 1536 * 1024 * 1024,
    "gpu_busy_percent": 37,
    "product_name": "AMD Radeon RX 7800 XT",
    "unique_id": "7e1c0f1a2b3c4d5e",
    "hwmon/hwmon3/temp1_input": 45000,
    "hwmon/hwmon3/power1_cap": 263000000,
}


def test_reads_amd_and_intel_and_skips_nvidia_and_connectors(tmp_path):
    add_card(tmp_path, 0, "0x8086", "0000:00:02.0", link=False)
    add_card(tmp_path, 1, "0x1002", "0000:03:00.0", AMD_FILES)
    add_card(tmp_path, 2, "0x10de", "0000:41:00.0", {"mem_info_vram_total": 1})
    add_card(tmp_path, 3, "0x1a03", "0000:05:00.0")  # a BMC's VGA: not a compute GPU
    (tmp_path / "sys" / "class" / "drm" / "renderD128").mkdir()
    meminfo(tmp_path, 32 * 1024 * 1024)
    (tmp_path / "sys" / "module" / "amdgpu").mkdir(parents=True)
    (tmp_path / "sys" / "module" / "amdgpu" / "version").write_text("6.10.5\n")

    result = collect_sysfs(root=str(tmp_path), include_integrated=True)

    intel, amd = result["gpus"]
    assert all(tuple(gpu) == GPU_KEYS for gpu in result["gpus"])
    assert {key: amd[key] for key in (
        "index", "vendor", "pci_bus_id", "name", "uuid", "memory_total_mib",
        "memory_used_mib", "memory_free_mib", "memory_kind", "utilization_pct",
        "temperature_c", "power_limit_w", "driver_version")} == dict(
        index=0, vendor="amd", pci_bus_id="0000:03:00.0", name="AMD Radeon RX 7800 XT",
        uuid="7e1c0f1a2b3c4d5e", memory_total_mib=16384, memory_used_mib=1536,
        memory_free_mib=14848, memory_kind="dedicated", utilization_pct=37, temperature_c=45,
        power_limit_w=263.0, driver_version="6.10.5")
    assert {key: intel[key] for key in (
        "index", "vendor", "pci_bus_id", "memory_kind", "memory_total_mib", "memory_used_mib",
        "name")} == dict(index=0, vendor="intel", pci_bus_id="0000:00:02.0",
                         memory_kind="unified", memory_total_mib=32768, memory_used_mib=None,
                         name=None)
    assert result["driver_version"] == "6.10.5"
    assert result["warnings"] == [
        "Intel GPU card0 (0000:00:02.0) is integrated (unified memory): memory_total_mib is "
        "the system memory, 32768 MiB, shared with the host"]


@pytest.mark.parametrize(("bus_id", "system", "kind", "total", "warning"), [
    ("0000:00:02.0", 64000, "unified", 64000,
     "is integrated (unified memory): memory_total_mib is the system memory, 64000 MiB, "
     "shared with the host"),
    ("0000:00:02.0", None, "unified", None, "is integrated (unified memory) and the system "
                                            "memory is unknown: memory_total_mib is null"),
    ("0000:03:00.0", 64000, "dedicated", None, "is discrete and sysfs does not expose its "
                                               "memory: memory_total_mib is null"),
])
def test_intel_memory(tmp_path, bus_id, system, kind, total, warning):
    add_card(tmp_path, 0, "0x8086", bus_id)
    result = collect_sysfs(root=str(tmp_path), system_memory_mib=system, include_integrated=True)
    [gpu] = result["gpus"]
    assert (gpu["memory_kind"], gpu["memory_total_mib"]) == (kind, total)
    assert result["warnings"] == ["Intel GPU card0 (%s) %s" % (bus_id, warning)]


@pytest.mark.parametrize(("cards", "include", "expected", "warnings"), [
    # An NVIDIA workstation with the CPU's Intel GPU: the iGPU is not an inference GPU.
    ([(0, "0x8086", "0000:00:02.0"), (1, "0x10de", "0000:01:00.0")], False, [], [
        "Intel GPU card0 (0000:00:02.0) is integrated and shares the host's memory: not "
        "counted as an inference GPU (include_integrated=true counts it)"]),
    ([(1, "0x8086", "0000:00:02.0"), (0, "0x10de", "0000:01:00.0")], False, [], [
        "Intel GPU card1 (0000:00:02.0) is integrated and shares the host's memory: not "
        "counted as an inference GPU (include_integrated=true counts it)"]),
    # Opted in: it is counted, numbered among the Intel GPUs.
    ([(1, "0x8086", "0000:00:02.0"), (0, "0x10de", "0000:01:00.0")], True,
     [("intel", 0, "unified")], [
         "Intel GPU card1 (0000:00:02.0) is integrated (unified memory): memory_total_mib is "
         "the system memory, 64000 MiB, shared with the host"]),
    # A discrete Intel GPU (Arc) is counted whatever the option says.
    ([(0, "0x8086", "0000:00:02.0"), (1, "0x8086", "0000:03:00.0")], False,
     [("intel", 0, "dedicated")], [
         "Intel GPU card0 (0000:00:02.0) is integrated and shares the host's memory: not "
         "counted as an inference GPU (include_integrated=true counts it)",
         "Intel GPU card1 (0000:03:00.0) is discrete and sysfs does not expose its memory: "
         "memory_total_mib is null"]),
], ids=["igpu-card0", "igpu-card1", "igpu-opted-in", "arc-beside-igpu"])
def test_integrated_gpu_is_left_out_unless_asked(tmp_path, cards, include, expected, warnings):
    for number, vendor, bus_id in cards:
        add_card(tmp_path, number, vendor, bus_id)
    result = collect_sysfs(root=str(tmp_path), system_memory_mib=64000,
                           include_integrated=include)
    assert [(g["vendor"], g["index"], g["memory_kind"]) for g in result["gpus"]] == expected
    assert result["warnings"] == warnings


def test_index_counts_each_vendors_cards_not_drm_card_numbers(tmp_path):
    # A server: the BMC's VGA is card0, the AMD GPUs card1 and card2 (ROCm's 0 and 1).
    add_card(tmp_path, 0, "0x1a03", "0000:02:00.0")
    add_card(tmp_path, 1, "0x1002", "0000:c1:00.0", {"mem_info_vram_total": 64 * GIB})
    add_card(tmp_path, 2, "0x1002", "0000:c2:00.0", {"mem_info_vram_total": 64 * GIB})
    add_card(tmp_path, 10, "0x1002", "0000:c3:00.0", {"mem_info_vram_total": 64 * GIB})
    result = collect_sysfs(root=str(tmp_path))
    assert [(g["index"], g["pci_bus_id"]) for g in result["gpus"]] == [
        (0, "0000:c1:00.0"), (1, "0000:c2:00.0"), (2, "0000:c3:00.0")]


def test_system_memory_argument_wins_over_meminfo(tmp_path):
    add_card(tmp_path, 0, "0x8086", "0000:00:02.0")
    meminfo(tmp_path, 1024 * 1024)
    [gpu] = collect_sysfs(root=str(tmp_path), system_memory_mib=2048,
                          include_integrated=True)["gpus"]
    assert gpu["memory_total_mib"] == 2048


def test_amd_without_optional_files_reports_none_never_zero(tmp_path):
    add_card(tmp_path, 4, "0x1002", "0000:c1:00.0",
             {"mem_info_vram_total": 64 * GIB}, link=False)
    [gpu] = collect_sysfs(root=str(tmp_path))["gpus"]
    assert (gpu["index"], gpu["pci_bus_id"], gpu["memory_total_mib"]) == (
        0, "0000:c1:00.0", 65536)
    for key in ("memory_used_mib", "memory_free_mib", "utilization_pct", "temperature_c",
                "power_limit_w", "name", "uuid", "driver_version"):
        assert gpu[key] is None, "%s; got: %r" % (key, gpu[key])


def test_no_drm_directory_means_no_backend(tmp_path):
    assert collect_sysfs(root=str(tmp_path)) is None


def test_drm_without_gpus_is_an_empty_answer(tmp_path):
    add_card(tmp_path, 0, "0x10de", "0000:41:00.0")
    assert collect_sysfs(root=str(tmp_path)) == {
        "gpus": [], "driver_version": None, "cuda_driver_version": None, "warnings": []}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("mem_info_vram_total", "lots",
     r"^sysfs card0 mem_info_vram_total is not a memory amount; got: 'lots'$"),
    ("gpu_busy_percent", "busy", r"^sysfs card0 gpu_busy_percent is not a number; got: 'busy'$"),
    ("hwmon/hwmon0/temp1_input", "hot",
     r"^sysfs card0 temp1_input is not a number; got: 'hot'$"),
])
def test_garbage_attribute_names_card_and_attribute(tmp_path, name, value, message):
    add_card(tmp_path, 0, "0x1002", "0000:03:00.0", {name: value})
    with pytest.raises(ValueError, match=message):
        collect_sysfs(root=str(tmp_path))
