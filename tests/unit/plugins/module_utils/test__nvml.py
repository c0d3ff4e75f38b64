# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NVML backend, run through the real nvidia-ml-py against the stand-in libnvidia-ml.so.1.

The stand-in (lab/nvml) is built with gcc for the session; its state file says what the
"driver" reports, and is read again on every NVML call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    new_gpu,
    new_mig_device,
    new_process,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._nvml import (
    NvmlError,
    NvmlUnavailable,
    cuda_version_text,
    read_gpus,
)

SYMBOLS = (Path(__file__).resolve().parents[3] / "fixtures"
           / "libnvidia-ml-590.48.01-exported-nvml-symbols.txt")

A5500 = {
    "name": "NVIDIA RTX A5500",
    "uuid": "GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60",
    "pci_bus_id": "00000000:01:00.0",
    "memory_total_mib": 24564,
    "memory_reserved_mib": 309,
    "memory_used_mib": 5,
    "compute_capability": "8.6",
    "power_limit_mw": 230000,
    "temperature_c": 45,
    "utilization_gpu": 3,
}
A400 = {
    "name": "NVIDIA RTX A400",
    "uuid": "GPU-7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
    "pci_bus_id": "00000000:2B:00.0",
    "memory_total_mib": 4094,
    "memory_reserved_mib": 207,
    "memory_used_mib": 1,
    "compute_capability": "8.6",
    "power_limit_mw": 50000,
    "temperature_c": 38,
    "utilization_gpu": 0,
}
H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-5e0a4a4c-7f3e-2b6a-c0de-0123456789ab",
    "pci_bus_id": "00000000:1B:00.0",
    "memory_total_mib": 81559,
    "memory_reserved_mib": 553,
    "memory_used_mib": 0,
    "compute_capability": "9.0",
    "power_limit_mw": 700000,
    "temperature_c": 33,
    "utilization_gpu": 0,
}
GB10 = {
    "name": "NVIDIA GB10",
    "uuid": "GPU-a1b2c3d4-0000-1111-2222-333344445555",
    "pci_bus_id": "0000000F:01:00.0",
    "compute_capability": "12.1",
    "temperature_c": 41,
    "utilization_gpu": 7,
    "unified": 1,
}
COMMON = {"driver_version": "590.48.01", "cuda_driver_version": "13.1", "vendor": "nvidia"}
EXPECTED_A5500 = new_gpu(
    index=0, name="NVIDIA RTX A5500", uuid=A5500["uuid"], pci_bus_id="0000:01:00.0",
    memory_total_mib=24564, memory_reserved_mib=309, memory_used_mib=5,
    memory_free_mib=24564 - 309 - 5, compute_capability="8.6", power_limit_w=230.0,
    temperature_c=45, utilization_pct=3, **COMMON,
)
EXPECTED_A400 = new_gpu(
    index=1, name="NVIDIA RTX A400", uuid=A400["uuid"], pci_bus_id="0000:2b:00.0",
    memory_total_mib=4094, memory_reserved_mib=207, memory_used_mib=1,
    memory_free_mib=4094 - 207 - 1, compute_capability="8.6", power_limit_w=50.0,
    temperature_c=38, utilization_pct=0, **COMMON,
)


@pytest.fixture
def nvml(nvml_lib, use_nvml_lib):
    """pynvml bound to the standard stand-in build."""
    return use_nvml_lib(nvml_lib())


def _with(gpu, **changes):
    """A copy of a state GPU or an expected fact with some keys changed."""
    return {**gpu, **changes}


def _without(gpu, *keys):
    return {key: value for key, value in gpu.items() if key not in keys}


def test_exported_symbols_are_all_in_the_real_driver(nvml_lib):
    real = set(SYMBOLS.read_text(encoding="utf-8").split())
    for flags in [(), ("-DOMIT_nvmlDeviceGetCount_v2",)]:
        out = subprocess.run(["nm", "-D", "--defined-only", nvml_lib(*flags)],
                             capture_output=True, text=True, check=True).stdout
        exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
        assert "nvmlInitWithFlags" in exported
        assert exported - real == set(), "exported but not in the 590.48.01 driver"


def test_soname_is_found_through_ld_library_path(nvml_lib, nvml_state):
    nvml_state.write_gpus([A5500])
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(nvml_lib()))
    code = ("import pynvml; pynvml.nvmlInit(); "
            "print(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "NVIDIA RTX A5500\n"), result.stderr


def test_workstation_with_two_gpus(nvml, nvml_state):
    nvml_state.write_gpus([A5500, A400])
    assert read_gpus(nvml) == {
        "gpus": [EXPECTED_A5500, EXPECTED_A400],
        "driver_version": "590.48.01",
        "cuda_driver_version": "13.1",
        "warnings": [],
    }


def test_second_call_sees_the_new_state(nvml, nvml_state):
    nvml_state.write_gpus([A5500, A400])
    first = read_gpus(nvml)["gpus"]
    nvml_state.write_gpus([_with(A5500, memory_used_mib=12000,
                                 process="4242 11990 /usr/bin/python3 -m vllm"), A400])
    second = read_gpus(nvml)["gpus"]
    assert first == [EXPECTED_A5500, EXPECTED_A400]
    assert second == [
        _with(EXPECTED_A5500, memory_used_mib=12000, memory_free_mib=24564 - 309 - 12000,
              processes=[new_process(4242, "/usr/bin/python3 -m vllm", 11990)]),
        EXPECTED_A400,
    ]


def test_process_memory_not_available_is_none(nvml, nvml_state):
    nvml_state.write_gpus([_with(A400, process=["77 - ollama", "78 300 vllm"])])
    gpu = read_gpus(nvml)["gpus"][0]
    assert gpu["processes"] == [new_process(77, "ollama", None), new_process(78, "vllm", 300)]


def test_registered_process_holds_memory_until_the_drain_delay_after_it_died(
        nvml, nvml_state):
    nvml_state.write_gpus([A5500, A400], drain_delay=0.3)
    child = subprocess.Popen(["sleep", "60"])
    try:
        registration = nvml_state.register(1, child.pid, 2048, name="vllm-serve")
        alive = read_gpus(nvml)["gpus"]
    finally:
        child.kill()
        child.wait()
    draining = read_gpus(nvml)["gpus"]
    with open(registration, encoding="utf-8") as handle:
        recorded = handle.read()
    time.sleep(0.4)
    drained = read_gpus(nvml)["gpus"]

    assert alive == [EXPECTED_A5500, _with(
        EXPECTED_A400, memory_used_mib=1 + 2048, memory_free_mib=4094 - 207 - 1 - 2048,
        processes=[new_process(child.pid, "vllm-serve", 2048)])]
    # Dead: no longer listed, its memory still held for drain_delay.
    assert draining == [EXPECTED_A5500, _with(
        EXPECTED_A400, memory_used_mib=1 + 2048, memory_free_mib=4094 - 207 - 1 - 2048)]
    assert recorded.startswith("2048\nname vllm-serve\ndead_since ")
    assert drained == [EXPECTED_A5500, EXPECTED_A400]


@pytest.mark.parametrize(
    ("released_ago", "counted"),
    [
        pytest.param(None, True, id="alive-not-released"),
        pytest.param(0.0, True, id="released-just-now-still-draining"),
        pytest.param(5.0, False, id="released-before-the-drain-delay"),
    ],
)
def test_registered_process_release(nvml, nvml_state, released_ago, counted):
    nvml_state.write_gpus([A400], drain_delay=1)
    extra = {} if released_ago is None else {"released_at": "%.3f" % (time.time() - released_ago)}
    nvml_state.register(0, os.getpid(), 1000, **extra)
    gpu = read_gpus(nvml)["gpus"][0]
    assert gpu["memory_used_mib"] == (1001 if counted else 1)
    assert [p["pid"] for p in gpu["processes"]] == ([os.getpid()] if counted else [])


@pytest.mark.parametrize(
    ("second_gpu", "expected_second"),
    [
        pytest.param(
            _with(A400, lost=1),
            new_gpu(index=1, healthy=False, errors=[
                "nvmlDeviceGetHandleByIndex failed: GPU is lost (NVML error 15)"], **COMMON),
            id="lost-before-the-handle",
        ),
        pytest.param(
            _with(A400, fail="nvmlDeviceGetTemperature 15"),
            _with(EXPECTED_A400, temperature_c=None, utilization_pct=None, healthy=False,
                  errors=["nvmlDeviceGetTemperature failed: GPU is lost (NVML error 15)"]),
            id="lost-while-reading",
        ),
        pytest.param(
            _with(A400, fail="nvmlDeviceGetUtilizationRates 999"),
            _with(EXPECTED_A400, utilization_pct=None, healthy=False, errors=[
                "nvmlDeviceGetUtilizationRates failed: Unknown Error (NVML error 999)"]),
            id="one-call-fails",
        ),
        pytest.param(
            _without(A400, "power_limit_mw"),
            _with(EXPECTED_A400, power_limit_w=None),
            id="not-supported-is-unknown-not-unhealthy",
        ),
    ],
)
def test_one_failing_gpu_leaves_the_other_intact(nvml, nvml_state, second_gpu,
                                                 expected_second):
    nvml_state.write_gpus([A5500, second_gpu])
    result = read_gpus(nvml)
    assert result["gpus"] == [EXPECTED_A5500, expected_second]
    assert result["warnings"] == []


@pytest.mark.parametrize(
    ("system_memory_mib", "expected"),
    [
        pytest.param(131072, (131072, 131072 - 20480, "system memory (MemTotal 131072 MiB)"),
                     id="memtotal-known"),
        pytest.param(None, (None, None,
                            "system memory, which could not be read, so the total is unknown"),
                     id="memtotal-unknown"),
    ],
)
def test_unified_memory_gb10(nvml, nvml_state, system_memory_mib, expected):
    total, free, source = expected
    nvml_state.write_gpus([_with(GB10, process="5150 20480 /usr/bin/python3")],
                          cuda_driver_version=13000)
    result = read_gpus(nvml, system_memory_mib=system_memory_mib)
    assert result["gpus"] == [new_gpu(
        index=0, name="NVIDIA GB10", uuid=GB10["uuid"], pci_bus_id="000f:01:00.0",
        memory_kind="unified", memory_total_mib=total, memory_used_mib=20480,
        memory_free_mib=free, compute_capability="12.1", temperature_c=41, utilization_pct=7,
        processes=[new_process(5150, "/usr/bin/python3", 20480)],
        vendor="nvidia", driver_version="590.48.01", cuda_driver_version="13.0",
    )]
    assert result["warnings"] == [
        "GPU 0 (NVIDIA GB10): NVML reports no memory size (memory is unified with the "
        "system); sizes come from %s and used memory from the GPU's processes" % source
    ]


def test_discrete_gpu_without_memory_info_is_not_unified(nvml, nvml_state):
    # An RTX A5500 whose driver answers NOT_SUPPORTED for its memory (the stand-in's GB10
    # switch): a 24 GB card must not be given the host's 60 GB.
    nvml_state.write_gpus([_with(_without(A5500, "memory_total_mib", "memory_reserved_mib",
                                          "memory_used_mib"), unified=1)])
    result = read_gpus(nvml, system_memory_mib=61440)
    [gpu] = result["gpus"]
    assert (gpu["memory_kind"], gpu["memory_total_mib"], gpu["memory_used_mib"],
            gpu["memory_free_mib"], gpu["healthy"]) == ("dedicated", None, None, None, True)
    assert result["warnings"] == [
        "GPU 0 (NVIDIA RTX A5500): NVML reports no memory size and it is not a part known to "
        "share the host's memory: memory_total_mib is null"]


def test_mig_enabled_h100(nvml, nvml_state):
    nvml_state.write_gpus([
        _with(H100, mig_mode=1, mig_device=[
            "1 0 40192 3 MIG-11111111-2222-3333-4444-555555555555 "
            "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
            "2 0 20096 0 MIG-66666666-7777-8888-9999-000000000000 "
            "NVIDIA H100 80GB HBM3 MIG 2g.20gb",
        ]),
        _with(H100, uuid="GPU-00000000-0000-0000-0000-000000000001",
              pci_bus_id="00000000:2A:00.0", mig_mode=0),
    ])
    first, second = read_gpus(nvml)["gpus"]
    assert first["mig_mode"] == "enabled"
    assert first["mig_devices"] == [
        new_mig_device(index=0, uuid="MIG-11111111-2222-3333-4444-555555555555",
                       name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", gpu_instance_id=1,
                       compute_instance_id=0, memory_total_mib=40192, memory_used_mib=3,
                       memory_free_mib=40189),
        new_mig_device(index=1, uuid="MIG-66666666-7777-8888-9999-000000000000",
                       name="NVIDIA H100 80GB HBM3 MIG 2g.20gb", gpu_instance_id=2,
                       compute_instance_id=0, memory_total_mib=20096, memory_used_mib=0,
                       memory_free_mib=20096),
    ]
    assert (first["healthy"], first["errors"], first["memory_total_mib"]) == (True, [], 81559)
    assert (second["mig_mode"], second["mig_devices"], second["pci_bus_id"]) == (
        "disabled", [], "0000:2a:00.0")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(((), "driver_version 590.48.01\nfail nvmlInitWithFlags 9\n",
                      "nvmlInit failed: Driver Not Loaded (NVML error 9)"),
                     id="driver-not-loaded"),
        pytest.param(((), None, "nvmlInit failed: Driver Not Loaded (NVML error 9)"),
                     id="no-state-no-driver"),
        pytest.param((("-DOMIT_nvmlDeviceGetCount_v2",), "gpu\nname X\n",
                      "nvmlDeviceGetCount failed: Function Not Found (NVML error 13): "
                      "the NVML library is older than nvidia-ml-py"),
                     id="missing-nvmlDeviceGetCount_v2"),
        pytest.param((("-DOMIT_nvmlDeviceGetComputeRunningProcesses_v3",), "gpu\nname X\n",
                      "the NVML library is older than nvidia-ml-py: "
                      "nvmlDeviceGetComputeRunningProcesses: Unversioned function called"),
                     id="missing-nvmlDeviceGetComputeRunningProcesses_v3"),
    ],
)
def test_nvml_unavailable(nvml_lib, use_nvml_lib, nvml_state, monkeypatch, case):
    flags, state, message = case
    pynvml = use_nvml_lib(nvml_lib(*flags))
    if state is None:
        monkeypatch.delenv("GPUFLEET_NVML_STATE")
    else:
        nvml_state.write(state)
    with pytest.raises(NvmlUnavailable) as caught:
        read_gpus(pynvml)
    assert str(caught.value).startswith(message)


def test_no_library_is_unavailable(use_nvml_lib, monkeypatch, tmp_path):
    import pynvml  # noqa: PLC0415
    missing = str(tmp_path / "nowhere" / "libnvidia-ml.so.1")
    real_cdll = pynvml.CDLL
    monkeypatch.setattr(pynvml, "CDLL", lambda name: real_cdll(missing))
    pynvml.nvmlLib = None
    with pytest.raises(NvmlUnavailable) as caught:
        read_gpus(pynvml)
    assert str(caught.value) == (
        "nvmlInit failed: NVML Shared Library Not Found (NVML error 12)")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        pytest.param("fail nvmlDeviceGetCount_v2 4\ngpu\n",
                     "nvmlDeviceGetCount failed: Insufficient Permissions (NVML error 4)",
                     id="count-no-permission"),
        pytest.param("drain_delay soon\n", "nvmlInit failed: Unknown Error (NVML error 999)",
                     id="bad-state-file"),
    ],
)
def test_system_call_failure_is_an_error(nvml, nvml_state, state, message):
    nvml_state.write(state)
    with pytest.raises(NvmlError) as caught:
        read_gpus(nvml)
    assert str(caught.value) == message


def test_driver_and_cuda_version_failures_are_warnings(nvml, nvml_state):
    nvml_state.write_gpus([A400], fail=["nvmlSystemGetDriverVersion 999",
                                        "nvmlSystemGetCudaDriverVersion_v2 3",
                                        "nvmlSystemGetCudaDriverVersion 3"])
    result = read_gpus(nvml)
    assert (result["driver_version"], result["cuda_driver_version"]) == (None, None)
    assert result["warnings"] == [
        "nvmlSystemGetDriverVersion failed: Unknown Error (NVML error 999)",
        "nvmlSystemGetCudaDriverVersion failed: Not Supported (NVML error 3)",
    ]
    assert result["gpus"] == [_with(EXPECTED_A400, index=0, driver_version=None,
                                    cuda_driver_version=None)]


class _OldBindings(types.ModuleType):
    """pynvml as old nvidia-ml-py releases behave: bytes for text, no nvmlMemory_v2."""

    def __init__(self, pynvml):
        super().__init__("old_pynvml")
        self._pynvml = pynvml

    def __getattr__(self, name):
        if name in ("nvmlMemory_v2", "NVMLLibraryMismatchError"):
            raise AttributeError(name)
        value = getattr(self._pynvml, name)
        if not callable(value) or isinstance(value, type):
            return value

        def call(*args, **kwargs):
            result = value(*args, **kwargs)
            return result.encode() if isinstance(result, str) else result

        return call


def test_old_bindings_bytes_and_memory_v1(nvml, nvml_state):
    nvml_state.write_gpus([A5500, A400])
    result = read_gpus(_OldBindings(nvml))
    # v1 memory: reserved is not reported apart and counts as used.
    assert result["gpus"] == [
        _with(EXPECTED_A5500, memory_reserved_mib=None, memory_used_mib=309 + 5),
        _with(EXPECTED_A400, memory_reserved_mib=None, memory_used_mib=207 + 1),
    ]


@pytest.mark.parametrize(
    ("version", "text"),
    [(13010, "13.1"), (12040, "12.4"), (13000, "13.0"), (11080, "11.8"), (None, None)],
)
def test_cuda_version_text(version, text):
    assert cuda_version_text(version) == text


def test_cuda_version_text_rejects_zero():
    with pytest.raises(ValueError, match=r"^cuda_driver_version must be > 0; got: 0$"):
        cuda_version_text(0)
