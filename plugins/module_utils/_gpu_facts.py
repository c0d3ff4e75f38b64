# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: choosing a backend and summarising GPUs.

Not a public API: the leading underscore says so. Pure logic: the readers that talk to
NVML, nvidia-smi, amd-smi, rocm-smi or sysfs are injected, so this file decides the
order, the fallbacks and the summary without touching a machine.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils._common import parse_meminfo
from ansible_collections.gpufleet.inference.plugins.module_utils._plan import recommend_profile

BACKENDS = ("auto", "nvml", "nvidia-smi", "amd-smi", "rocm-smi", "sysfs")

# auto: per vendor family, the first backend that answers wins.
AUTO_FAMILIES = (
    ("nvidia", ("nvml", "nvidia-smi")),
    ("amd", ("amd-smi", "rocm-smi", "sysfs")),
    ("intel", ("sysfs",)),
)

# What the vendor tools print when there is no driver or no GPU to read: not a fault of the tool,
# the same outcome as a missing library (nvidia-smi exits 9 and 6 with these).
_NO_GPU_MARKERS = (
    "No devices were found",
    "couldn't communicate with the NVIDIA driver",
    "Driver not initialized",
    "amdgpu not found in modules",
)


def no_gpu_reason(rc, output):
    """The tool's own words when a failed call means "no driver / no GPU here", else None."""
    if rc == 0:
        return None
    for line in output.splitlines():
        if any(marker in line for marker in _NO_GPU_MARKERS):
            return line.strip()
    return None


class BackendUnavailable(Exception):
    """The backend's library or tool is not on this host (a normal outcome on CPU hosts)."""


class BackendError(Exception):
    """The backend is there but failed: garbage output, a hang, an error exit."""

    def __init__(self, backend, message):
        super().__init__("%s: %s" % (backend, message))
        self.backend = backend


def _of_vendor(result, vendor):
    return [gpu for gpu in result.get("gpus", []) if gpu.get("vendor") == vendor]


def _merge(collected, name, result, gpus):
    collected["gpus"].extend(gpus)
    collected["answered"].append(name)
    collected["warnings"].extend(result.get("warnings") or [])
    for key in ("driver_version", "cuda_driver_version"):
        if collected[key] is None and result.get(key):
            collected[key] = result[key]


def gather(backend, readers):
    """Read GPUs with one backend, or with ``auto`` by vendor family.

    ``readers`` maps a backend name to a callable taking no argument and returning
    ``{"gpus": [...], "driver_version", "cuda_driver_version", "warnings"}``; it raises
    BackendUnavailable when its library or tool is absent and BackendError when it
    failed. Returns ``{"gpus", "answered", "tried", "warnings", "driver_version",
    "cuda_driver_version"}``. Raises BackendError when the chosen backend failed,
    or, under ``auto``, when every backend of a vendor family that is present failed.
    """
    if backend not in BACKENDS:
        raise ValueError("backend must be one of %s; got: %r" % (", ".join(BACKENDS), backend))
    collected = {
        "gpus": [],
        "answered": [],
        "tried": [],
        "warnings": [],
        "driver_version": None,
        "cuda_driver_version": None,
    }
    cache = {}

    def call(name):
        if name not in cache:
            try:
                cache[name] = ("ok", readers[name]())
            except BackendUnavailable as exc:
                cache[name] = ("unavailable", str(exc))
            except BackendError as exc:
                cache[name] = ("error", str(exc))
            collected["tried"].append({"backend": name, "outcome": cache[name][0],
                                       "detail": None if cache[name][0] == "ok"
                                       else cache[name][1]})
        return cache[name]

    if backend != "auto":
        outcome, value = call(backend)
        if outcome == "error":
            raise BackendError(backend, value.split(": ", 1)[-1])
        if outcome == "unavailable":
            collected["warnings"].append(
                "backend %s is not available on this host (%s); no GPUs reported"
                % (backend, value)
            )
        else:
            _merge(collected, backend, value, value.get("gpus", []))
        return collected

    for vendor, names in AUTO_FAMILIES:
        errors = []
        for name in names:
            outcome, value = call(name)
            if outcome == "unavailable":
                continue
            if outcome == "error":
                errors.append(value)
                continue
            gpus = _of_vendor(value, vendor)
            if name == "sysfs" and not gpus:
                continue
            if errors:
                collected["warnings"].extend(
                    "%s; used %s instead" % (err, name) for err in errors
                )
                errors = []
            _merge(collected, name, value, gpus)
            break
        if errors:
            raise BackendError(errors[0].split(": ", 1)[0], "; ".join(errors))
    return collected


def summarize(gpus, backend, driver_version, warnings):
    """The ``gpu_summary`` fact: counts, memory, vendors and the recommended profile.

    Memory totals count healthy GPUs whose size is known; the profile counts healthy
    GPUs only, so a lost GPU does not make a dual-gpu host of a single-gpu one.
    """
    healthy = [gpu for gpu in gpus if gpu.get("healthy")]
    total = sum(gpu["memory_total_mib"] for gpu in healthy
                if gpu.get("memory_total_mib") is not None)
    free = sum(gpu["memory_free_mib"] for gpu in healthy
               if gpu.get("memory_free_mib") is not None)
    summary_warnings = list(warnings)
    for gpu in gpus:
        if not gpu.get("healthy"):
            summary_warnings.append(
                "GPU %s (%s) is unhealthy: %s"
                % (gpu.get("index"), gpu.get("uuid") or gpu.get("pci_bus_id") or "identity unknown",
                   "; ".join(gpu.get("errors") or ["no detail"]))
            )
    return {
        "count": len(gpus),
        "healthy_count": len(healthy),
        "vendors": sorted({gpu["vendor"] for gpu in gpus if gpu.get("vendor")}),
        "total_memory_mib": total,
        "free_memory_mib": free,
        "backend": "+".join(backend) if backend else None,
        "driver_version": driver_version,
        "recommended_profile": recommend_profile(len(healthy)),
        "warnings": summary_warnings,
    }


def read_meminfo_mib(path="/proc/meminfo"):
    """MemTotal of a Linux host in MiB, or None when it cannot be read."""
    try:
        with open(path) as handle:
            return parse_meminfo(handle.read(), path, need=("MemTotal",))["total_mib"]
    except (OSError, ValueError):
        return None
