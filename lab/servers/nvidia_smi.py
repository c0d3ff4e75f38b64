# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for nvidia-smi (not NVIDIA's): reads the simulated driver through the real
nvidia-ml-py on the stand-in libnvidia-ml.so.1, so it shows what our facts see.

  nvidia-smi                                   a short table
  nvidia-smi -L                                GPU 0: NAME (UUID: GPU-...)
  nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free \
             --format=csv[,noheader][,nounits]
  nvidia-smi topo -m                           the GPU matrix (NV#, PIX, PXB, PHB, NODE, SYS)
"""

import os
import sys

try:
    import pynvml
except ImportError:
    sys.stderr.write("NVIDIA-SMI has failed because nvidia-ml-py is not installed (lab stand-in)\n")
    sys.exit(9)

FIELDS = {
    "index": lambda i, h: str(i),
    "uuid": lambda i, h: pynvml.nvmlDeviceGetUUID(h),
    "name": lambda i, h: pynvml.nvmlDeviceGetName(h),
    "memory.total": lambda i, h: mem(h, "total"),
    "memory.used": lambda i, h: mem(h, "used"),
    "memory.free": lambda i, h: mem(h, "free"),
    "driver_version": lambda i, h: pynvml.nvmlSystemGetDriverVersion(),
    "persistence_mode": lambda i, h: persistence(h),
}


def persistence(handle):
    try:
        return "Enabled" if pynvml.nvmlDeviceGetPersistenceMode(handle) else "Disabled"
    except pynvml.NVMLError:
        return "[N/A]"


def mem(handle, key):
    try:
        return str(getattr(pynvml.nvmlDeviceGetMemoryInfo(handle), key) // (1024 * 1024))
    except pynvml.NVMLError_NotSupported:
        return "[N/A]"


# nvmlGpuTopologyLevel_t -> the matrix's words (INTERNAL and SINGLE: PIX, MULTIPLE: PXB).
TOPO_WORDS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
TOPO_LEGEND = "\n".join([
    "",
    "Legend:",
    "",
    "  X    = Self",
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes"
    " (e.g., QPI/UPI)",
    "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges"
    " within a NUMA node",
    "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)",
    "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host"
    " Bridge)",
    "  PIX  = Connection traversing at most a single PCIe bridge",
    "  NV#  = Connection traversing a bonded set of # NVLinks",
])


def nvlinks(handle, bus_ids):
    """({peer index: active links}, links to NVSwitches), as NVML tells them."""
    peers, switch = {}, 0
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            active = pynvml.nvmlDeviceGetNvLinkState(handle, link)
        except pynvml.NVMLError_NotSupported:
            break
        except pynvml.NVMLError_InvalidArgument:
            continue
        if not active:
            continue
        remote = pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId
        remote = remote.decode() if isinstance(remote, bytes) else remote
        if remote in bus_ids:
            peers[bus_ids[remote]] = peers.get(bus_ids[remote], 0) + 1
        elif pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link) == 2:
            switch += 1
    return peers, switch


def numa_nodes():
    """The NUMA node of each GPU, from the simulated driver's state (NUMA Affinity)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpuview  # noqa: PLC0415  (beside this file in the lab image)

    try:
        return [gpu.get("numa_node", "0") for gpu in
                gpuview.parse_state(gpuview.state_path())["gpus"]]
    except (OSError, ValueError):
        return []


def topo_matrix(handles):
    """`nvidia-smi topo -m` as the 590 driver prints it: tabs, an underlined header line."""
    bus_ids = {}
    for i, h in handles:
        bus = pynvml.nvmlDeviceGetPciInfo(h).busId
        bus_ids[bus.decode() if isinstance(bus, bytes) else bus] = i
    links = {i: nvlinks(h, bus_ids) for i, h in handles}
    nodes = numa_nodes()
    names = ["GPU%d" % i for i, _h in handles]
    print("\t\x1b[4m%s\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m" % "\t".join(names))
    for i, h in handles:
        cells = []
        for j, other in handles:
            count = links[i][0].get(j) or (
                min(links[i][1], links[j][1]) if links[i][1] and links[j][1] else 0)
            if i == j:
                cells.append(" X ")
            elif count:
                cells.append("NV%d" % count)
            else:
                cells.append(TOPO_WORDS[pynvml.nvmlDeviceGetTopologyCommonAncestor(h, other)])
        node = nodes[i] if i < len(nodes) else "N/A"
        print("GPU%d\t%s\tN/A\t%s\t\tN/A" % (i, "\t".join(cells), node))
    print(TOPO_LEGEND)


def main(argv):
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        sys.stderr.write(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. (%s)\n"
            % exc
        )
        return 9
    handles = [
        (i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())
    ]
    query = [a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")]
    if argv[:2] == ["topo", "-m"]:
        topo_matrix(handles)
    elif "-L" in argv:
        for i, h in handles:
            print(
                "GPU %d: %s (UUID: %s)"
                % (i, pynvml.nvmlDeviceGetName(h), pynvml.nvmlDeviceGetUUID(h))
            )
    elif query:
        fmt = ",".join(a.split("=", 1)[1] for a in argv if a.startswith("--format="))
        keys = [k.strip() for k in query[0].split(",")]
        unknown = [k for k in keys if k not in FIELDS]
        if unknown:  # what the real tool says (and its exit status)
            print('Field "%s" is not a valid field to query.' % unknown[0])
            return 2
        if "noheader" not in fmt:
            print(
                ", ".join(
                    k + ("" if "nounits" in fmt or not k.startswith("memory") else " [MiB]")
                    for k in keys
                )
            )
        for i, h in handles:
            vals = [FIELDS[k](i, h) for k in keys]
            if "nounits" not in fmt:
                vals = [
                    v + " MiB" if k.startswith("memory") and v[0].isdigit() else v
                    for k, v in zip(keys, vals)
                ]
            print(", ".join(vals))
    else:
        print(
            "NVIDIA-SMI (lab stand-in)   Driver Version: %s" % pynvml.nvmlSystemGetDriverVersion()
        )
        for i, h in handles:
            print(
                "| %d  %-28s | %8s MiB / %8s MiB | %s"
                % (
                    i,
                    pynvml.nvmlDeviceGetName(h),
                    mem(h, "used"),
                    mem(h, "total"),
                    pynvml.nvmlDeviceGetUUID(h),
                )
            )
        for i, h in handles:
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                print(
                    "| GPU %d  PID %-8d %8d MiB"
                    % (i, p.pid, (p.usedGpuMemory or 0) // (1024 * 1024))
                )
    pynvml.nvmlShutdown()
    return 0


sys.exit(main(sys.argv[1:]))
