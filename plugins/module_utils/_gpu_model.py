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
        "[gpu is lost]",
        "[requires root]",
        "none",
        "-",
    }
)

_NUMBER_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z%/]*)\s*$")

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
