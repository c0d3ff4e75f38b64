# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the one shape of a GPU fact.

Not a public API: the leading underscore says so. Every backend (NVML, nvidia-smi,
amd-smi, rocm-smi, sysfs) returns a list of dicts built with :func:`new_gpu`, so
everything downstream (summary, placement, rendering) sees the same keys. Unknown
values are ``None``, never ``0`` or ``"N/A"``.
"""

from __future__ import annotations

import re

GPU_KEYS = (
    "index",
    "vendor_index",
    "uuid",
    "name",
    "vendor",
    "pci_bus_id",
    "memory_total_mib",
    "memory_used_mib",
    "memory_free_mib",
    "memory_reserved_mib",
    "memory_kind",
    "compute_capability",
    "driver_version",
    "cuda_driver_version",
    "mig_mode",
    "mig_devices",
    "power_limit_w",
    "temperature_c",
    "utilization_pct",
    "processes",
    "healthy",
    "errors",
)

MIG_DEVICE_KEYS = (
    "index",
    "uuid",
    "name",
    "gpu_instance_id",
    "compute_instance_id",
    "memory_total_mib",
    "memory_used_mib",
    "memory_free_mib",
)

PROCESS_KEYS = ("pid", "name", "used_memory_mib")

VENDORS = ("nvidia", "amd", "intel")
MEMORY_KINDS = ("dedicated", "unified")

# Parts built around memory shared with the host (no memory of their own to report): NVIDIA
# GB10 (DGX Spark and its OEM versions) and the Jetson modules (Orin, Xavier, Thor; older
# drivers print "Tegra"). Only these are given the host's memory when the tool reports none;
# a discrete GPU whose size reads N/A stays dedicated with an unknown size.
_KNOWN_UNIFIED_RE = re.compile(r"\b(?:GB10|Orin|Xavier|Thor|Tegra|Jetson)\b", re.IGNORECASE)

# Values the vendor tools print where they have nothing to say.
_UNKNOWN_MARKERS = frozenset(
    {
        "",
        "n/a",
        "[n/a]",
        "[not supported]",
        "not supported",
        "[unknown error]",
        "unknown",
        "[insufficient permissions]",
        "insufficient permissions",
        "[requested functionality has been deprecated]",
        "requested functionality has been deprecated",
        "[gpu is lost]",
        "[requires root]",
        "requires root",
        "none",
        "-",
    }
)

# A number as the tools print it: '81559', '-3.5', '1.8446744073709552e+19' (JSON floats).
_NUMBER_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([A-Za-z%/]*)\s*\Z")

# Multipliers to MiB for the units the tools print.
_TO_MIB = {
    "": None,  # caller decides
    "b": 1.0 / (1024 * 1024),
    "kib": 1.0 / 1024,
    "kb": 1.0 / 1024,
    "mib": 1.0,
    "mb": 1.0,
    "gib": 1024.0,
    "gb": 1024.0,
    "tib": 1024.0 * 1024,
}


def is_known_unified(name):
    """True when ``name`` is a part known to share the host's memory (GB10, Jetson)."""
    return bool(name) and _KNOWN_UNIFIED_RE.search(str(name)) is not None


def new_gpu(**values):
    """Return a GPU fact with every key present; unknown keys raise ValueError."""
    unknown = sorted(set(values) - set(GPU_KEYS))
    if unknown:
        raise ValueError("unknown GPU fact key(s): %s" % ", ".join(unknown))
    gpu = dict.fromkeys(GPU_KEYS)
    gpu["processes"] = []
    gpu["mig_devices"] = []
    gpu["errors"] = []
    gpu["healthy"] = True
    gpu["memory_kind"] = "dedicated"
    gpu.update(values)
    return gpu


def new_mig_device(**values):
    unknown = sorted(set(values) - set(MIG_DEVICE_KEYS))
    if unknown:
        raise ValueError("unknown MIG device key(s): %s" % ", ".join(unknown))
    dev = dict.fromkeys(MIG_DEVICE_KEYS)
    dev.update(values)
    return dev


def new_process(pid, name=None, used_memory_mib=None):
    return {"pid": pid, "name": name, "used_memory_mib": used_memory_mib}


def is_unknown(value):
    """True for None and for the placeholders tools print instead of a value."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in _UNKNOWN_MARKERS
    return False


def clean_text(value):
    """A stripped string, or None for the tools' unknown markers."""
    if is_unknown(value):
        return None
    text = str(value).strip()
    return text or None


def parse_number(value, what="value"):
    """Parse '230.00 W', '45 C', '12 %', '81559 MiB' -> float (unit dropped).

    Returns None for unknown markers. Raises ValueError naming ``what`` for text
    that is neither a number nor an unknown marker.
    """
    if is_unknown(value):
        return None
    if isinstance(value, bool):
        raise ValueError("%s is not a number; got: %r" % (what, value))
    if isinstance(value, (int, float)):
        return float(value)
    match = _NUMBER_RE.match(str(value))
    if not match:
        raise ValueError("%s is not a number; got: %r" % (what, value))
    return float(match.group(1))


def parse_int(value, what="value"):
    number = parse_number(value, what)
    return None if number is None else round(number)


def to_mib(value, default_unit="MiB", what="memory"):
    """Parse a memory amount with an optional unit into whole MiB (int).

    ``default_unit`` applies when the text carries no unit (e.g. rocm-smi bytes).
    """
    if is_unknown(value):
        return None
    if isinstance(value, bool):
        raise ValueError("%s is not a memory amount; got: %r" % (what, value))
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _NUMBER_RE.match(str(value))
        if not match:
            raise ValueError("%s is not a memory amount; got: %r" % (what, value))
        number, unit = float(match.group(1)), match.group(2)
    unit = (unit or default_unit).lower()
    if unit not in _TO_MIB or _TO_MIB[unit] is None:
        raise ValueError("%s has an unknown unit %r; got: %r" % (what, unit, value))
    return int(number * _TO_MIB[unit])


def normalize_pci_bus_id(value):
    """'00000000:01:00.0' / '0000:01:00.0' / '01:00.0' -> '0000:01:00.0' (lower case).

    The canonical Linux form (as in /sys/bus/pci/devices), the same for every vendor.
    """
    text = clean_text(value)
    if text is None:
        return None
    match = re.match(
        r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$", text
    )
    if not match:
        raise ValueError("pci_bus_id is not a PCI address; got: %r" % value)
    domain, bus, device, function = match.groups()
    domain = int(domain or "0", 16)
    return "%04x:%02x:%02x.%s" % (domain, int(bus, 16), int(device, 16), function)


def first_line(text, limit=120):
    """The first non-blank line of a tool's output, cut to ``limit``: for error messages."""
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return "(no output)"


def fill_free(gpu):
    """Derive free from total - used - reserved when the tool did not report it."""
    total, used = gpu.get("memory_total_mib"), gpu.get("memory_used_mib")
    if gpu.get("memory_free_mib") is None and total is not None and used is not None:
        gpu["memory_free_mib"] = max(total - used - (gpu.get("memory_reserved_mib") or 0), 0)
    return gpu


# --------------------------------------------------------------------------- plausible values

# NVML_VALUE_NOT_AVAILABLE (2^64-1) in bytes, as whole MiB. Through a float it reads one more
# (1.8446744073709552e19 B is 2^64 B), so everything from here up is the sentinel.
NOT_AVAILABLE_MIB = (2**64 - 1) // (1024 * 1024)
# More than a pebibyte of memory on one GPU is no reading, whatever the tool meant.
MAX_MEMORY_MIB = 1024 * 1024 * 1024
MEMORY_KEYS = ("memory_total_mib", "memory_used_mib", "memory_free_mib", "memory_reserved_mib")
# Inclusive bounds of the other numbers; outside them a value is a sentinel or garbage.
VALUE_RANGES = {
    "utilization_pct": (0, 100),
    "temperature_c": (-100, 250),
    "power_limit_w": (0, 100000),
}


def gpu_label(gpu):
    """How messages name a GPU: ``GPU 0 (NVIDIA RTX A5500)``; a GPU without an index by its
    UUID or PCI bus id: ``GPU 0000:3b:00.0 (no index)``."""
    if gpu.get("index") is not None:
        return "GPU %s (%s)" % (gpu["index"], gpu.get("name") or gpu.get("uuid")
                                or gpu.get("pci_bus_id") or "identity unknown")
    uuid, bus = gpu.get("uuid"), gpu.get("pci_bus_id")
    if uuid and bus:
        return "GPU %s (no index, %s)" % (uuid, bus)
    return "GPU %s (no index)" % (uuid or bus or "of unknown identity")


def _plausible(value, low, high, what, warnings):
    """``value`` when it is None or within [low, high], else None with a warning."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if high == MAX_MEMORY_MIB and value >= NOT_AVAILABLE_MIB:
        warnings.append("%s reads %s, the tools' 2^64-1 'not available' value: read as unknown"
                        % (what, value))
        return None
    if value < low or value > high:
        warnings.append("%s is out of range (%s): read as unknown" % (what, value))
        return None
    return value


def _plausible_memory(owner, keys, label, warnings):
    for key in keys:
        owner[key] = _plausible(owner.get(key), 0, MAX_MEMORY_MIB,
                                "%s %s" % (label, key), warnings)


def check_values(gpu, warnings):
    """Make a GPU fact's numbers plausible, in place; each value dropped is named in a warning.

    Negative sizes, the 2^64-1 "not available" sentinel (also through a float), a percentage
    over 100 and the like become None. ``memory_free_mib`` over ``memory_total_mib`` is worked
    out again from total and used when those agree, else None; ``memory_used_mib`` over the
    total becomes None. The same for each process's and MIG device's memory. MIG devices
    without an index, or with an index another MIG device of the GPU has, are left out.
    """
    label = gpu_label(gpu)
    _plausible_memory(gpu, MEMORY_KEYS, label, warnings)
    for key, (low, high) in VALUE_RANGES.items():
        gpu[key] = _plausible(gpu.get(key), low, high, "%s %s" % (label, key), warnings)
    total, used, free = (gpu.get("memory_total_mib"), gpu.get("memory_used_mib"),
                         gpu.get("memory_free_mib"))
    if total is not None and used is not None and used > total:
        warnings.append("%s memory_used_mib %s is more than memory_total_mib %s: read as unknown"
                        % (label, used, total))
        gpu["memory_used_mib"] = used = None
    if total is not None and free is not None and free > total:
        if used is None:
            warnings.append("%s memory_free_mib %s is more than memory_total_mib %s: "
                            "read as unknown" % (label, free, total))
        else:
            warnings.append("%s memory_free_mib %s is more than memory_total_mib %s: "
                            "free read as total - used" % (label, free, total))
        gpu["memory_free_mib"] = None
    fill_free(gpu)
    for process in gpu.get("processes") or []:
        process["used_memory_mib"] = _plausible(
            process.get("used_memory_mib"), 0, MAX_MEMORY_MIB,
            "%s process %s used_memory_mib" % (label, process.get("pid")), warnings)
    kept = {}
    for device in gpu.get("mig_devices") or []:
        name = device.get("uuid") or device.get("name") or "(no uuid)"
        index = device.get("index")
        if index is None:
            warnings.append("%s MIG device %s has no index: left out" % (label, name))
            continue
        if index in kept:
            other = kept[index]
            warnings.append("%s MIG device %s has index %s, as MIG device %s does: left out"
                            % (label, name, index,
                               other.get("uuid") or other.get("name") or "(no uuid)"))
            continue
        kept[index] = device
        _plausible_memory(device, ("memory_total_mib", "memory_used_mib", "memory_free_mib"),
                          "%s MIG device %s" % (label, index), warnings)
    if gpu.get("mig_devices"):
        gpu["mig_devices"] = list(kept.values())
    return gpu
