# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: every NVIDIA GPU of a host, read through NVML.

Not a public API: the leading underscore says so. The caller passes the ``pynvml`` module
(nvidia-ml-py) in, so this file imports nothing outside the standard library and works
with old bindings (bytes results) and new ones (str) alike. One GPU that fails (lost,
an error from one call) comes back with ``healthy: False`` and its errors; the others are
read as usual.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    is_known_unified,
    new_gpu,
    new_mig_device,
    new_process,
    normalize_pci_bus_id,
)

# NVML return codes (nvml.h; stable across driver releases).
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_DEVICE_TYPE_SWITCH = 2
# nvmlGpuTopologyLevel_t (nvml.h): how far apart two GPUs are on PCIe, as a link of the
# ``topology`` fact. INTERNAL (two GPUs on one board), SINGLE (one PCIe switch, nvidia-smi
# PIX) and MULTIPLE (several switches below one host bridge, PXB) are all "pcie_switch".
TOPOLOGY_LEVELS = {
    0: "pcie_switch",
    10: "pcie_switch",
    20: "pcie_switch",
    30: "host_bridge",
    40: "numa",
    50: "system",
}
# NVML_NVLINK_MAX_LINKS of bindings too old to carry it (18 before Hopper's bindings).
_NVLINK_MAX_LINKS = 18

# Codes that mean "this GPU or driver has no such value", not "the GPU is failing".
_ABSENT = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND)

_MIB = 1024 * 1024
_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long


class NvmlUnavailable(Exception):
    """NVML cannot be used here: no library, no driver loaded, or a library older than
    the bindings. A normal outcome on hosts without NVIDIA GPUs; the caller falls back."""


class NvmlError(Exception):
    """NVML is there but a call about the whole system failed (not one GPU's call)."""


def _text(value):
    """NVML strings: str from current bindings, bytes from old ones; '' -> None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _describe(exc):
    code = getattr(exc, "value", None)
    try:
        message = str(exc)
    except Exception:  # str() of an NVMLError calls into the library again
        message = "NVML error"
    return "%s (NVML error %s)" % (message, code)


def cuda_version_text(version):
    """NVML's CUDA driver version integer (13010) -> '13.1'; None stays None."""
    if version is None:
        return None
    if version <= 0:
        raise ValueError("cuda_driver_version must be > 0; got: %r" % version)
    return "%d.%d" % (version // 1000, (version % 1000) // 10)


def _bytes_to_mib(value):
    return None if value is None else int(value) // _MIB


def _mismatch_error(pynvml):
    """The bindings' 'library too old' exception (not an NVMLError); () when they lack it."""
    return getattr(pynvml, "NVMLLibraryMismatchError", ())


class _Calls:
    """Calls into pynvml for one GPU, collecting its errors instead of raising them."""

    def __init__(self, pynvml, label=""):
        self.pynvml = pynvml
        self.label = label
        self.errors = []
        self.lost = False

    def attempt(self, function, *args, absent=_ABSENT, **kwargs):
        """(value, None) on success, (None, NVML error code) on an NVMLError.

        Errors whose code is in ``absent`` mean "no such value here" and are not recorded;
        after GPU_IS_LOST nothing more is asked of the GPU.
        """
        if self.lost:
            return None, NVML_ERROR_GPU_IS_LOST
        try:
            return getattr(self.pynvml, function)(*args, **kwargs), None
        except _mismatch_error(self.pynvml) as exc:
            raise NvmlUnavailable(
                "the NVML library is older than nvidia-ml-py: %s: %s" % (function, exc)
            ) from exc
        except self.pynvml.NVMLError as exc:
            if exc.value == NVML_ERROR_GPU_IS_LOST:
                self.lost = True
            if exc.value not in absent:
                self.errors.append("%s%s failed: %s" % (self.label, function, _describe(exc)))
            return None, exc.value

    def get(self, function, *args, **kwargs):
        """The value, or None (the error, unless the value is simply absent, is recorded)."""
        return self.attempt(function, *args, **kwargs)[0]


def _read_memory(calls, handle):
    """((total, reserved, used, free) in MiB or None, NVML error code or None)."""
    version = getattr(calls.pynvml, "nvmlMemory_v2", None)
    if version is not None:
        # A driver older than the v2 struct answers one of these: read v1 instead.
        older = (NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        info, code = calls.attempt("nvmlDeviceGetMemoryInfo", handle, version=version,
                                   absent=(*_ABSENT, *older))
        if info is not None:
            values = (info.total, info.reserved, info.used, info.free)
            return tuple(_bytes_to_mib(value) for value in values), None
        if code not in older:
            return None, code
    info, code = calls.attempt("nvmlDeviceGetMemoryInfo", handle)
    if info is None:
        return None, code
    # v1 counts reserved memory as used; the two cannot be told apart.
    return (_bytes_to_mib(info.total), None, _bytes_to_mib(info.used),
            _bytes_to_mib(info.free)), None


def _read_processes(calls, handle):
    pynvml = calls.pynvml
    infos = calls.get("nvmlDeviceGetComputeRunningProcesses", handle)
    if infos is None:
        return None
    processes = []
    for info in infos:
        name = None
        try:
            name = _text(pynvml.nvmlSystemGetProcessName(info.pid))
        except pynvml.NVMLError:
            pass  # the process ended meanwhile, or its name is not ours to read
        used = getattr(info, "usedGpuMemory", None)
        if used is not None and used >= _NOT_AVAILABLE:
            used = None  # old bindings hand NVML_VALUE_NOT_AVAILABLE through
        processes.append(new_process(int(info.pid), name, _bytes_to_mib(used)))
    return processes


def _read_mig_devices(calls, handle):
    count = calls.get("nvmlDeviceGetMaxMigDeviceCount", handle)
    devices = []
    for index in range(count or 0):
        # Indexes without a MIG device answer NOT_FOUND.
        mig = calls.get("nvmlDeviceGetMigDeviceHandleByIndex", handle, index,
                        absent=(*_ABSENT, NVML_ERROR_NOT_FOUND))
        if mig is None:
            continue
        mig_calls = _Calls(calls.pynvml, "MIG device %d: " % index)
        memory = _read_memory(mig_calls, mig)[0] or (None, None, None, None)
        devices.append(new_mig_device(
            index=index,
            uuid=_text(mig_calls.get("nvmlDeviceGetUUID", mig)),
            name=_text(mig_calls.get("nvmlDeviceGetName", mig)),
            gpu_instance_id=mig_calls.get("nvmlDeviceGetGpuInstanceId", mig),
            compute_instance_id=mig_calls.get("nvmlDeviceGetComputeInstanceId", mig),
            memory_total_mib=memory[0],
            memory_used_mib=memory[2],
            memory_free_mib=memory[3],
        ))
        calls.errors.extend(mig_calls.errors)
    return devices


def _read_gpu(pynvml, index, system_memory_mib, warnings):
    """(the GPU's facts, its NVML handle or None)."""
    calls = _Calls(pynvml)
    gpu = new_gpu(index=index, vendor="nvidia")
    handle = calls.get("nvmlDeviceGetHandleByIndex", index)
    if handle is None:
        gpu.update(healthy=False, errors=calls.errors)
        return gpu, None

    gpu["name"] = _text(calls.get("nvmlDeviceGetName", handle))
    gpu["uuid"] = _text(calls.get("nvmlDeviceGetUUID", handle))
    pci = calls.get("nvmlDeviceGetPciInfo_v3", handle)
    if pci is not None:
        try:
            gpu["pci_bus_id"] = normalize_pci_bus_id(_text(pci.busId))
        except ValueError as exc:
            calls.errors.append("nvmlDeviceGetPciInfo_v3 returned a bad busId: %s" % exc)
    capability = calls.get("nvmlDeviceGetCudaComputeCapability", handle)
    if capability is not None:
        gpu["compute_capability"] = "%d.%d" % tuple(capability)

    memory, memory_code = _read_memory(calls, handle)
    if memory is not None:
        total, reserved, used, free = memory
        gpu.update(memory_total_mib=total, memory_reserved_mib=reserved,
                   memory_used_mib=used, memory_free_mib=free)

    limit, code = calls.attempt("nvmlDeviceGetEnforcedPowerLimit", handle)
    if limit is None and code in _ABSENT:
        limit = calls.get("nvmlDeviceGetPowerManagementLimit", handle)
    gpu["power_limit_w"] = None if limit is None else limit / 1000.0
    gpu["temperature_c"] = calls.get("nvmlDeviceGetTemperature", handle, NVML_TEMPERATURE_GPU)
    rates = calls.get("nvmlDeviceGetUtilizationRates", handle)
    gpu["utilization_pct"] = None if rates is None else int(rates.gpu)

    mode = calls.get("nvmlDeviceGetMigMode", handle)
    if mode is not None:
        enabled = mode[0] == NVML_DEVICE_MIG_ENABLE
        gpu["mig_mode"] = "enabled" if enabled else "disabled"
        if enabled:
            gpu["mig_devices"] = _read_mig_devices(calls, handle)

    processes = _read_processes(calls, handle)
    gpu["processes"] = processes or []

    if memory_code == NVML_ERROR_NOT_SUPPORTED:
        if is_known_unified(gpu["name"]):
            _unified(gpu, processes, system_memory_mib, warnings)
        else:
            warnings.append(
                "GPU %d (%s): NVML reports no memory size and it is not a part known to share "
                "the host's memory: memory_total_mib is null"
                % (index, gpu["name"] or gpu["uuid"] or "unknown"))

    gpu["errors"] = calls.errors
    gpu["healthy"] = not calls.errors
    return gpu, (None if calls.lost else handle)


def _unified(gpu, processes, system_memory_mib, warnings):
    """Fill memory from system memory for a GPU known to share it (DGX Spark / GB10, Jetson;
    see ``is_known_unified``). Any other GPU without a memory size keeps it unknown."""
    used = None
    if processes is not None:
        used = sum(p["used_memory_mib"] for p in processes if p["used_memory_mib"] is not None)
    free = None
    if system_memory_mib is not None and used is not None:
        free = max(system_memory_mib - used, 0)
    gpu.update(memory_kind="unified", memory_total_mib=system_memory_mib,
               memory_used_mib=used, memory_free_mib=free)
    where = "system memory (MemTotal %s MiB)" % system_memory_mib
    if system_memory_mib is None:
        where = "system memory, which could not be read, so the total is unknown"
    warnings.append(
        "GPU %d (%s): NVML reports no memory size (memory is unified with the system); "
        "sizes come from %s and used memory from the GPU's processes"
        % (gpu["index"], gpu["name"] or gpu["uuid"] or "unknown", where)
    )


class _TopologyError(Exception):
    """A topology call failed: the GPUs it was about get ``topology: null``."""


def _topology_call(pynvml, function, *args):
    """The value of one topology call; _TopologyError (never NvmlUnavailable) on a failure."""
    call = getattr(pynvml, function, None)
    if call is None:
        raise _TopologyError("nvidia-ml-py has no %s" % function)
    try:
        return call(*args)
    except _mismatch_error(pynvml) as exc:
        raise _TopologyError("%s: the NVML library is older than nvidia-ml-py: %s"
                             % (function, exc)) from None
    except pynvml.NVMLError as exc:
        raise _TopologyError("%s failed: %s" % (function, _describe(exc))) from None


def _nvlinks(pynvml, handle, by_bus):
    """({peer GPU index: active NVLinks to it}, active NVLinks to NVSwitches) of one GPU.

    NVML answers NOT_SUPPORTED for every link of a GPU without NVLink, and INVALID_ARGUMENT
    for a link number the GPU does not have (nvml.h). An active link leads to the GPU whose
    PCI bus id ``nvmlDeviceGetNvLinkRemotePciInfo_v2`` gives, or to an NVSwitch (HGX/DGX
    boards: every GPU reaches every other through the switches); a remote end that is neither
    (a GPU this process cannot see, as in a container) is left out.
    """
    peers = {}
    switch_links = 0
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", _NVLINK_MAX_LINKS)):
        try:
            state = pynvml.nvmlDeviceGetNvLinkState(handle, link)
        except pynvml.NVMLError as exc:
            if exc.value == NVML_ERROR_NOT_SUPPORTED:
                break  # no NVLink on this GPU
            if exc.value == NVML_ERROR_INVALID_ARGUMENT:
                continue  # no such link on this GPU
            raise _TopologyError("nvmlDeviceGetNvLinkState(link %d) failed: %s"
                                 % (link, _describe(exc))) from None
        if state != NVML_FEATURE_ENABLED:
            continue
        pci = _topology_call(pynvml, "nvmlDeviceGetNvLinkRemotePciInfo", handle, link)
        try:
            peer = by_bus.get(normalize_pci_bus_id(_text(pci.busId)))
        except ValueError as exc:
            raise _TopologyError("nvmlDeviceGetNvLinkRemotePciInfo_v2(link %d) returned a bad "
                                 "busId: %s" % (link, exc)) from None
        if peer is not None:
            peers[peer] = peers.get(peer, 0) + 1
            continue
        try:
            kind = _topology_call(pynvml, "nvmlDeviceGetNvLinkRemoteDeviceType", handle, link)
        except _TopologyError:
            continue  # an old driver: the remote end stays unknown, so it is not counted
        if kind == NVML_NVLINK_DEVICE_TYPE_SWITCH:
            switch_links += 1
    return peers, switch_links


def read_topology(pynvml, gpus, handles, warnings):
    """``{GPU index: topology}``: each GPU's links to the other GPUs, sorted by peer index.

    A link is ``{"index", "uuid", "link", "nvlink_count"}`` (see ``TOPOLOGY_LEVELS``): NVLink
    when the two share active NVLinks (directly, or both through NVSwitches), else the PCIe
    level of ``nvmlDeviceGetTopologyCommonAncestor``. ``[]`` for a host's only GPU. A GPU
    whose topology call fails gets ``None`` and one warning; the module does not fail. A GPU
    without a handle (lost) has ``None`` and is nobody's peer; MIG devices are never peers.
    """
    result = {gpu["index"]: None for gpu in gpus}
    usable = [(gpu, handle) for gpu, handle in zip(gpus, handles) if handle is not None]
    if len(gpus) == 1 and usable:
        result[gpus[0]["index"]] = []
        return result
    by_bus = {gpu["pci_bus_id"]: gpu["index"] for gpu, _handle in usable if gpu["pci_bus_id"]}
    failed = {}
    links = {}
    for gpu, handle in usable:
        try:
            links[gpu["index"]] = _nvlinks(pynvml, handle, by_bus)
        except _TopologyError as exc:
            failed.setdefault(gpu["index"], str(exc))
    levels = {}
    for at, (gpu, handle) in enumerate(usable):
        for peer, peer_handle in usable[at + 1:]:
            pair = (gpu["index"], peer["index"])
            try:
                level = _topology_call(pynvml, "nvmlDeviceGetTopologyCommonAncestor",
                                       handle, peer_handle)
                if level not in TOPOLOGY_LEVELS:
                    raise _TopologyError("nvmlDeviceGetTopologyCommonAncestor returned the "
                                         "unknown level %r" % (level,))
            except _TopologyError as exc:
                text = "%s (with GPU %s)" % (exc, peer["index"])
                failed.setdefault(pair[0], text)
                failed.setdefault(pair[1], "%s (with GPU %s)" % (exc, gpu["index"]))
                continue
            levels[pair] = levels[pair[::-1]] = TOPOLOGY_LEVELS[level]
    for gpu, _handle in usable:
        index = gpu["index"]
        if index in failed:
            warnings.append("GPU %s (%s): topology is null, NVML could not tell the links to "
                            "the other GPUs: %s"
                            % (index, gpu["name"] or gpu["uuid"] or "unknown", failed[index]))
            continue
        peers, switch_links = links[index]
        topology = []
        for peer, _peer_handle in usable:
            if peer is gpu:
                continue
            count = peers.get(peer["index"])
            peer_switch = links.get(peer["index"], ({}, 0))[1]
            if not count and switch_links and peer_switch:
                count = min(switch_links, peer_switch)
            topology.append({
                "index": peer["index"],
                "uuid": peer["uuid"],
                "link": "nvlink" if count else levels[(index, peer["index"])],
                "nvlink_count": count or None,
            })
        result[index] = sorted(topology, key=lambda entry: entry["index"])
    return result


def _system_call(pynvml, function, *args):
    try:
        return getattr(pynvml, function)(*args)
    except _mismatch_error(pynvml) as exc:
        raise NvmlUnavailable(
            "the NVML library is older than nvidia-ml-py: %s: %s" % (function, exc)
        ) from exc
    except pynvml.NVMLError as exc:
        if exc.value in (NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED):
            raise NvmlUnavailable("%s failed: %s" % (function, _describe(exc))) from exc
        if exc.value == NVML_ERROR_FUNCTION_NOT_FOUND:
            raise NvmlUnavailable(
                "%s failed: %s: the NVML library is older than nvidia-ml-py"
                % (function, _describe(exc))
            ) from exc
        raise NvmlError("%s failed: %s" % (function, _describe(exc))) from exc


def _optional_system_value(pynvml, functions, warnings):
    """The first of ``functions`` that answers; a warning naming the last error if none."""
    last = None
    for function in functions:
        call = getattr(pynvml, function, None)
        if call is None:
            continue  # old bindings without this function
        try:
            return call()
        except pynvml.NVMLError as exc:
            last = "%s failed: %s" % (function, _describe(exc))
    if last is not None:
        warnings.append(last)
    return None


def read_gpus(pynvml, system_memory_mib=None, topology=False):
    """Every GPU NVML sees, as :func:`new_gpu` facts.

    ``system_memory_mib`` (MemTotal) sizes unified-memory GPUs, whose NVML has no memory
    size. Raises NvmlUnavailable when NVML cannot be used on this host and NvmlError when
    a call about the whole system fails; per-GPU failures stay in that GPU's ``errors``.
    ``topology=True`` adds ``"topology": {GPU index: [links] or None}`` to the result
    (:func:`read_topology`).
    """
    warnings = []
    _system_call(pynvml, "nvmlInit")
    try:
        driver = _text(_optional_system_value(pynvml, ["nvmlSystemGetDriverVersion"], warnings))
        cuda = _optional_system_value(
            pynvml,
            ["nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"],
            warnings,
        )
        cuda = cuda_version_text(cuda) if cuda else None
        count = _system_call(pynvml, "nvmlDeviceGetCount")
        gpus = []
        handles = []
        for index in range(count):
            gpu, handle = _read_gpu(pynvml, index, system_memory_mib, warnings)
            gpu.update(driver_version=driver, cuda_driver_version=cuda)
            gpus.append(gpu)
            handles.append(handle)
        links = read_topology(pynvml, gpus, handles, warnings) if topology else None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass  # nothing left to release that the caller could act on
    result = dict(gpus=gpus, driver_version=driver, cuda_driver_version=cuda, warnings=warnings)
    if topology:
        result["topology"] = links
    return result
