# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for nvidia-smi (not NVIDIA's): reads the simulated driver through the real
nvidia-ml-py on the stand-in libnvidia-ml.so.1, so it shows what our facts see.

  nvidia-smi                                   a short table
  nvidia-smi -L                                GPU 0: NAME (UUID: GPU-...)
  nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free \
             --format=csv[,noheader][,nounits]
"""

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
    if "-L" in argv:
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
