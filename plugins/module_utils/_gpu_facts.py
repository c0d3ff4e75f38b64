# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: choosing a backend and summarising GPUs.

Not a public API: the leading underscore says so. Pure logic: the readers that talk to
NVML, nvidia-smi, amd-smi, rocm-smi or sysfs are injected, so this file decides the
order, the fallbacks and the summary without touching a machine.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    parse_meminfo,
    recommend_profile,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    VENDORS,
    check_values,
    gpu_label,
)

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
    """Add one backend's GPUs (of one vendor family); its name and warnings only once.

    Each GPU gains ``topology``: its links to the other GPUs from the backend's
    ``{"topology": {index: [...] or None}}`` (NVML, nvidia-smi), else None (not read).
    """
    topology = result.get("topology") or {}
    for gpu in gpus:
        _check_health(gpu, name)
        check_values(gpu, collected["warnings"])
        gpu["topology"] = topology.get(gpu["index"]) if gpu.get("index") is not None else None
    collected["gpus"].extend(gpus)
    if name not in collected["answered"]:
        collected["answered"].append(name)
        collected["warnings"].extend(result.get("warnings") or [])
    for key in ("driver_version", "cuda_driver_version"):
        if collected[key] is None and result.get(key):
            collected[key] = result[key]


def _check_health(gpu, backend):
    """A GPU without an index cannot be addressed: it is unhealthy, and an unhealthy GPU says
    why (``errors`` is never empty when ``healthy`` is false)."""
    if gpu.get("index") is None and gpu.get("healthy"):
        gpu["healthy"] = False
        gpu["errors"] = [*(gpu.get("errors") or []),
                         "%s reported no index for this GPU; it cannot be addressed" % backend]
    if not gpu.get("healthy") and not gpu.get("errors"):
        gpu["errors"] = ["%s marked this GPU unhealthy without saying why" % backend]


def assign_indexes(gpus, warnings):
    """Make ``index`` unique on the host; ``vendor_index`` keeps each vendor's own number.

    Each vendor numbers its GPUs from 0 (CUDA, ROCm and Level Zero each count their own), so
    an NVIDIA GPU 0 and an AMD GPU 0 would share an index. NVIDIA's numbers are kept (what
    CUDA_VISIBLE_DEVICES means); a later vendor (in VENDORS order) whose numbers collide with
    those already taken is numbered after them, in its own order, and a warning says so. Two
    GPUs of one vendor with the same number cannot be told apart: the later one loses its
    index and becomes unhealthy. GPUs without an index (lost ones) keep none. Sorts ``gpus``
    by index, GPUs without one last.
    """
    for gpu in gpus:
        gpu["vendor_index"] = gpu.get("index")
    order = list(VENDORS) + sorted({str(gpu.get("vendor")) for gpu in gpus} - set(VENDORS))
    taken = set()
    earlier = []
    for vendor in order:
        family = [gpu for gpu in gpus if str(gpu.get("vendor")) == vendor
                  and gpu.get("index") is not None]
        if not family:
            continue
        seen = {}
        for gpu in family:
            first = seen.setdefault(gpu["index"], gpu)
            if first is not gpu:
                gpu["errors"] = [*(gpu.get("errors") or []),
                                 "the backend gave this GPU index %s, as it gave %s: it cannot "
                                 "be told apart, so it has no index"
                                 % (gpu["index"], gpu_label(first))]
                gpu.update(index=None, healthy=False)
        family = sorted(seen.values(), key=lambda gpu: gpu["index"])
        if taken & set(seen):
            start = max(taken) + 1
            moves = []
            for offset, gpu in enumerate(family):
                moves.append("%s -> %s" % (gpu["index"], start + offset))
                gpu["index"] = start + offset
            warnings.append(
                "%s GPUs are numbered after the %s GPUs so that indexes are unique on this "
                "host: index %s; vendor_index keeps %s's own numbers"
                % (vendor, " and ".join(earlier), ", ".join(moves), vendor))
        taken.update(gpu["index"] for gpu in family)
        earlier.append(vendor)
    gpus.sort(key=lambda gpu: (gpu.get("index") is None, gpu.get("index") or 0))
    return gpus


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
        assign_indexes(collected["gpus"], collected["warnings"])
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
    for name, (outcome, value) in cache.items():
        if outcome == "ok" and name not in collected["answered"]:
            # sysfs found only GPUs it left out (an integrated GPU): say which.
            collected["warnings"].extend(value.get("warnings") or [])
    assign_indexes(collected["gpus"], collected["warnings"])
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
            summary_warnings.append("%s is unhealthy: %s" % (
                gpu_label(dict(gpu, name=None)), "; ".join(gpu.get("errors") or ["no detail"])))
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
