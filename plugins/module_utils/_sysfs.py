# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: reading AMD and Intel GPUs from sysfs.

Not a public API: the leading underscore says so. Needs no vendor tool: reads
``<root>/sys/class/drm/cardN/device`` (the ``cardN`` entries only, not the
``cardN-DP-1`` connectors). Standard library only; Python 3.8 syntax.

- AMD (vendor 0x1002, amdgpu): ``mem_info_vram_total`` / ``mem_info_vram_used`` in
  bytes, ``gpu_busy_percent``, ``product_name`` and ``unique_id`` where the board
  has them, temperature and power cap from ``hwmon``.
- Intel (vendor 0x8086): i915/xe expose no memory size here. The integrated GPU
  (always at PCI 0000:00:02.0) shares system memory and is a display GPU, not an
  inference GPU: it is left out with a warning unless ``include_integrated``; then it
  has ``memory_kind: unified`` with the system memory as its size, and a warning. A
  discrete Intel GPU keeps ``memory_kind: dedicated`` with its size null, and a warning.
- NVIDIA (vendor 0x10de) is skipped: the NVML and nvidia-smi backends own it and
  nouveau exposes no memory figures. Other vendors (a BMC's VGA, virtio) are not
  compute GPUs and are skipped too.

``index`` counts each vendor's cards in DRM card order (the driver's probe order) from 0:
the vendor-local number ROCR_VISIBLE_DEVICES and ZE_AFFINITY_MASK mean, as amd-smi and
rocm-smi number AMD GPUs. Never the DRM card number itself: a server's BMC VGA or an
iGPU takes ``card0`` and would shift every AMD GPU by one.
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_facts import (
    read_meminfo_mib,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    fill_free,
    new_gpu,
    normalize_pci_bus_id,
    parse_int,
    parse_number,
    to_mib,
)

AMD = "0x1002"
INTEL = "0x8086"
NVIDIA = "0x10de"
INTEL_IGPU_BUS_ID = "0000:00:02.0"

_CARD_RE = re.compile(r"^card(\d+)\Z")
_PCI_RE = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\Z")


def _read(path):
    """A sysfs attribute's stripped text, or None when absent or unreadable."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _pci_bus_id(device):
    name = os.path.basename(os.path.realpath(device))
    if _PCI_RE.match(name):
        return normalize_pci_bus_id(name)
    for line in (_read(os.path.join(device, "uevent")) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key == "PCI_SLOT_NAME":
            return normalize_pci_bus_id(value)
    return None


def _hwmon(device, attribute):
    """The first hwmon*/attribute of a device, as text."""
    base = os.path.join(device, "hwmon")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return None
    for name in names:
        value = _read(os.path.join(base, name, attribute))
        if value is not None:
            return value
    return None


def _scaled(value, divisor, what):
    number = parse_number(value, what)
    return None if number is None else number / divisor


def _amd_gpu(index, device, what):
    temperature = _scaled(_hwmon(device, "temp1_input"), 1000.0, "%s temp1_input" % what)
    power_cap = _scaled(_hwmon(device, "power1_cap"), 1000000.0, "%s power1_cap" % what)
    return new_gpu(
        index=index,
        uuid=_read(os.path.join(device, "unique_id")) or None,
        name=_read(os.path.join(device, "product_name")) or None,
        vendor="amd",
        pci_bus_id=_pci_bus_id(device),
        memory_total_mib=to_mib(_read(os.path.join(device, "mem_info_vram_total")),
                                default_unit="B", what="%s mem_info_vram_total" % what),
        memory_used_mib=to_mib(_read(os.path.join(device, "mem_info_vram_used")),
                               default_unit="B", what="%s mem_info_vram_used" % what),
        temperature_c=None if temperature is None else round(temperature),
        power_limit_w=power_cap,
        utilization_pct=parse_int(_read(os.path.join(device, "gpu_busy_percent")),
                                  "%s gpu_busy_percent" % what),
    )


def _intel_gpu(index, card, device, system_memory_mib, warnings):
    pci_bus_id = _pci_bus_id(device)
    gpu = new_gpu(index=index, vendor="intel", pci_bus_id=pci_bus_id)
    label = "Intel GPU card%d (%s)" % (card, pci_bus_id)
    if pci_bus_id == INTEL_IGPU_BUS_ID:
        gpu["memory_kind"] = "unified"
        gpu["memory_total_mib"] = system_memory_mib
        if system_memory_mib is None:
            warnings.append("%s is integrated (unified memory) and the system memory is "
                            "unknown: memory_total_mib is null" % label)
        else:
            warnings.append("%s is integrated (unified memory): memory_total_mib is the system "
                            "memory, %d MiB, shared with the host" % (label, system_memory_mib))
    else:
        warnings.append("%s is discrete and sysfs does not expose its memory: "
                        "memory_total_mib is null" % label)
    return gpu


def collect_sysfs(root="/", system_memory_mib=None, include_integrated=False):
    """Read AMD and Intel GPUs from ``<root>/sys/class/drm``.

    ``system_memory_mib`` sizes unified-memory GPUs; when None it is read from
    ``<root>/proc/meminfo``. The Intel integrated GPU is left out (with a warning naming
    it) unless ``include_integrated``. Returns None when ``<root>/sys/class/drm`` does not
    exist (no DRM on this host), else ``{"gpus", "driver_version",
    "cuda_driver_version": None, "warnings"}``. Raises ValueError naming the card
    and the attribute when an attribute holds something other than a number.
    """
    drm = os.path.join(root, "sys", "class", "drm")
    if not os.path.isdir(drm):
        return None
    cards = []
    for name in os.listdir(drm):
        match = _CARD_RE.match(name)
        if match:
            cards.append((int(match.group(1)), name))
    warnings = []
    gpus = []
    intel_memory = system_memory_mib
    counted = {AMD: 0, INTEL: 0}
    for card, name in sorted(cards):
        device = os.path.join(drm, name, "device")
        vendor = (_read(os.path.join(device, "vendor")) or "").lower()
        what = "sysfs %s" % name
        if vendor == AMD:
            gpus.append(fill_free(_amd_gpu(counted[AMD], device, what)))
            counted[AMD] += 1
        elif vendor == INTEL:
            if not include_integrated and _pci_bus_id(device) == INTEL_IGPU_BUS_ID:
                warnings.append(
                    "Intel GPU %s (%s) is integrated and shares the host's memory: not counted "
                    "as an inference GPU (include_integrated=true counts it)"
                    % (name, INTEL_IGPU_BUS_ID))
                continue
            if intel_memory is None:
                intel_memory = read_meminfo_mib(os.path.join(root, "proc", "meminfo"))
            gpus.append(_intel_gpu(counted[INTEL], card, device, intel_memory, warnings))
            counted[INTEL] += 1
    driver_version = None
    if any(gpu["vendor"] == "amd" for gpu in gpus):
        driver_version = _read(os.path.join(root, "sys", "module", "amdgpu", "version")) or None
        for gpu in gpus:
            if gpu["vendor"] == "amd":
                gpu["driver_version"] = driver_version
    return {"gpus": gpus, "driver_version": driver_version, "cuda_driver_version": None,
            "warnings": warnings}
