# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for amd-smi (not AMD's): answers from the lab's simulated AMD driver.

  amd-smi static  [--json]   one entry a GPU, in the newest shape ({"gpu_data": [...]}) with the
                             keys and units of a real MI210 capture (asic, bus, vbios, limit,
                             driver, board, ras, vram, ...)
  amd-smi list    [--json]   gpu, bdf, uuid, kfd_id, node_id, partition_id
  amd-smi metric  [options] --json   usage, temperature, mem_usage (MB)
  amd-smi process [--json]   per GPU the processes holding VRAM there (bytes), or
                             "No running processes detected"

State: the host's AMD state file ($GPUFLEET_AMD_STATE, default /etc/gpufleet-amd/state,
written by lab/lab.py; the format of lab/nvml/README.md plus AMD keys) and its process
directory, read with the same rules as the stand-in NVML (lab/servers/gpuview.py): used
memory is the static use plus every registration that still counts. A process's name is its
/proc/<pid>/comm, as the stand-in NVML reports it. Without the state file amd-smi fails as
it does on a host without the amdgpu driver. Only --json output is produced (the collection
reads nothing else); the text tables exit 2 saying so.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpuview

STATE = "/etc/gpufleet-amd/state"
MIB = 1 << 20
# What amd-smi prints when the amdgpu driver is not loaded (amdsmi_init fails), on stdout.
NO_DRIVER = ("ERROR:root:Unable to initialize amdsmi_interface: AMDSMI_STATUS_DRIVER_NOT_LOADED "
             "- Driver not loaded\namdgpu not found in modules\n")
COMMANDS = ("static", "list", "metric", "process")


def state_path():
    return os.environ.get("GPUFLEET_AMD_STATE") or STATE


def read_state(path=None):
    """(globals, [gpu dict with index, lines..., used_mib, regs]) of the AMD state."""
    path = path or state_path()
    state = gpuview.parse_state(path)
    glob = state["globals"]
    drain = float(gpuview._num(glob.get("drain_delay"), 0))
    regs = gpuview.registrations(glob["procs_dir"], drain)
    gpus = []
    for gpu in state["gpus"]:
        mine = [r for r in regs if r["gpu"] == gpu["index"]]
        used = int(gpuview._num(gpu.get("memory_used_mib"), 0)) + sum(r["mib"] for r in mine)
        gpus.append(dict(gpu, used_mib=used, regs=mine))
    return glob, gpus


def _vu(value, unit):
    return {"value": value, "unit": unit}


def _num(gpu, key, default=0):
    return gpuview._num(gpu.get(key), default)


def static_entry(glob, gpu):
    """One GPU of ``amd-smi static --json``: the key tree and units of the real MI210 capture
    (ROCm/device-metrics-exporter pkg/testrunner/utils_test.go), values from the lab state."""
    power = int(_num(gpu, "power_limit_w", 300))
    return {
        "gpu": gpu["index"],
        "asic": {
            "market_name": gpu.get("name", "AMD Instinct MI210"),
            "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
            "subvendor_id": "0x1002",
            "device_id": gpu.get("asic_device_id", "0x740f"),
            "subsystem_id": gpu.get("subsystem_id", "0x0c34"),
            "rev_id": "0x02",
            "oam_id": "N/A",
            "num_compute_units": int(_num(gpu, "compute_units", 104)),
            "target_graphics_version": gpu.get("gfx_target", "gfx90a"),
        },
        "bus": {
            "max_pcie_width": 16,
            "max_pcie_speed": _vu(16, "GT/s"),
            "pcie_interface_version": "Gen 4",
            "slot_type": gpu.get("slot_type", "OAM"),
        },
        "vbios": {"name": gpu.get("vbios", "N/A")},
        "limit": {
            "max_power": _vu(power, "W"),
            "min_power": _vu(0, "W"),
            "socket_power": _vu(power, "W"),
            "slowdown_edge_temperature": _vu(99, "C"),
            "slowdown_hotspot_temperature": _vu(100, "C"),
            "slowdown_vram_temperature": _vu(94, "C"),
            "shutdown_edge_temperature": _vu(99, "C"),
            "shutdown_hotspot_temperature": _vu(105, "C"),
            "shutdown_vram_temperature": _vu(99, "C"),
        },
        "driver": {"name": "amdgpu", "version": glob.get("driver_version", "N/A")},
        "board": {
            "model_number": "N/A",
            "product_serial": "0",
            "fru_id": "N/A",
            "product_name": "N/A",
            "manufacturer_name": "N/A",
        },
        "ras": {
            "eeprom_version": "0x10000",
            "bad_page_threshold": 655,
            "parity_schema": "DISABLED",
            "single_bit_schema": "DISABLED",
            "double_bit_schema": "DISABLED",
            "poison_schema": "ENABLED",
            "ecc_block_state": {"UMC": "ENABLED", "GFX": "ENABLED"},
        },
        "soc_pstate": "N/A",
        "xgmi_plpd": "N/A",
        "process_isolation": "Disabled",
        "numa": {"node": int(_num(gpu, "numa_node", 0)),
                 "affinity": int(_num(gpu, "numa_node", 0))},
        "vram": {
            "type": gpu.get("vram_type", "HBM"),
            "vendor": "N/A",
            "size": _vu(int(_num(gpu, "memory_total_mib")), "MB"),
            "bit_width": 4096,
            "max_bandwidth": _vu("N/A", "GB/s"),
        },
        "cache_info": [],
        "clock": "N/A",
    }


def list_entry(gpu):
    return {
        "gpu": gpu["index"],
        "bdf": gpu.get("pci_bus_id", "N/A"),
        "uuid": gpu.get("smi_uuid", "N/A"),
        "kfd_id": int(_num(gpu, "kfd_id", 0)),
        "node_id": int(_num(gpu, "node_id", gpu["index"] + 1)),
        "partition_id": 0,
    }


def metric_entry(gpu):
    total = int(_num(gpu, "memory_total_mib"))
    used = min(total, gpu["used_mib"] + int(_num(gpu, "memory_reserved_mib")))
    busy = 100 if gpu["regs"] else 0
    return {
        "gpu": gpu["index"],
        "usage": {"gfx_activity": _vu(busy, "%"), "umc_activity": _vu(0, "%"),
                  "mm_activity": "N/A"},
        "temperature": {"edge": _vu(int(_num(gpu, "temperature_c", 40)), "C"),
                        "hotspot": _vu(int(_num(gpu, "temperature_c", 40)) + 5, "C"),
                        "mem": _vu(int(_num(gpu, "temperature_c", 40)) + 2, "C")},
        "mem_usage": {"total_vram": _vu(total, "MB"), "used_vram": _vu(used, "MB"),
                      "free_vram": _vu(total - used, "MB"),
                      "total_visible_vram": _vu(total, "MB"),
                      "used_visible_vram": _vu(used, "MB"),
                      "free_visible_vram": _vu(total - used, "MB"),
                      "total_gtt": _vu(0, "MB"), "used_gtt": _vu(0, "MB"),
                      "free_gtt": _vu(0, "MB")},
    }


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip() or "N/A"
    except OSError:
        return "N/A"


def process_entry(gpu):
    listed = []
    for reg in sorted(gpu["regs"], key=lambda r: r["pid"]):
        if not reg["alive"]:
            continue  # KFD lists live processes; a draining one shows only in used_vram
        vram = reg["mib"] * MIB
        listed.append({"process_info": {
            "name": reg.get("name") or comm(reg["pid"]),
            "pid": reg["pid"],
            "memory_usage": {"gtt_mem": _vu(0, "B"), "cpu_mem": _vu(0, "B"),
                             "vram_mem": _vu(vram, "B")},
            "mem_usage": _vu(vram, "B"),
            "usage": {"gfx": _vu(0, "ns"), "enc": _vu(0, "ns")},
        }})
    if not listed:
        listed = [{"process_info": "No running processes detected"}]
    return {"gpu": gpu["index"], "process_list": listed}


def answer(command, glob, gpus):
    if command == "static":
        return {"gpu_data": [static_entry(glob, gpu) for gpu in gpus]}
    if command == "list":
        return [list_entry(gpu) for gpu in gpus]
    if command == "metric":
        return {"gpu_data": [metric_entry(gpu) for gpu in gpus]}
    return [process_entry(gpu) for gpu in gpus]


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        sys.stdout.write("usage: amd-smi {%s} ... --json (lab stand-in)\n" % ",".join(COMMANDS))
        return 2
    if "--json" not in argv:
        sys.stdout.write("amd-smi (lab stand-in): only --json output is produced\n")
        return 2
    path = state_path()
    if not os.path.exists(path):
        sys.stdout.write(NO_DRIVER)
        return 1
    glob, gpus = read_state(path)
    sys.stdout.write(json.dumps(answer(argv[0], glob, gpus), indent=4) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
