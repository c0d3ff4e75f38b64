# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend choice, fallbacks and the summary of gpu_facts (pure logic, readers injected)."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_facts import (
    BackendError,
    BackendUnavailable,
    gather,
    no_gpu_reason,
    read_meminfo_mib,
    summarize,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    new_gpu,
    new_mig_device,
)


def _gpu(vendor, index, total=1000, free=800, healthy=True):
    return new_gpu(index=index, vendor=vendor, uuid="%s-%d" % (vendor, index),
                   memory_total_mib=total, memory_used_mib=total - free,
                   memory_free_mib=free, healthy=healthy,
                   errors=[] if healthy else ["GPU is lost"])


def _answers(*gpus, driver="590.48.01"):
    return lambda: {"gpus": list(gpus), "driver_version": driver,
                    "cuda_driver_version": "13.1", "warnings": []}


def _absent(reason="not installed"):
    def reader():
        raise BackendUnavailable(reason)
    return reader


def _broken(name, reason):
    def reader():
        raise BackendError(name, reason)
    return reader


ALL_ABSENT = {name: _absent() for name in ("nvml", "nvidia-smi", "amd-smi", "rocm-smi", "sysfs")}


@pytest.mark.parametrize(("count", "profile"), [
    (0, "cpu"), (1, "single-gpu"), (2, "dual-gpu"), (3, "multi-gpu"), (8, "multi-gpu"),
])
def test_summary_recommends_the_plan_vocabulary(count, profile):
    """_plan.recommend_profile of the healthy GPUs: a lost GPU does not count."""
    gpus = [_gpu("nvidia", i) for i in range(count)] + [_gpu("nvidia", count, healthy=False)]
    assert summarize(gpus, ["nvml"], "590.48.01", [])["recommended_profile"] == profile


@pytest.mark.parametrize(
    ("overrides", "answered", "vendors"),
    [
        # NVML answers: nvidia-smi is never asked.
        ({"nvml": _answers(_gpu("nvidia", 0))}, ["nvml"], ["nvidia"]),
        # No NVML library: nvidia-smi answers.
        ({"nvidia-smi": _answers(_gpu("nvidia", 0))}, ["nvidia-smi"], ["nvidia"]),
        # AMD through rocm-smi when amd-smi is absent.
        ({"rocm-smi": _answers(_gpu("amd", 0))}, ["rocm-smi"], ["amd"]),
        # NVIDIA through NVML and an Intel iGPU through sysfs on the same host.
        ({"nvml": _answers(_gpu("nvidia", 0)), "sysfs": _answers(_gpu("intel", 0))},
         ["nvml", "sysfs"], ["intel", "nvidia"]),
        # sysfs answers with AMD only: the Intel family finds nothing more.
        ({"sysfs": _answers(_gpu("amd", 0))}, ["sysfs"], ["amd"]),
    ],
)
def test_auto_picks_first_backend_per_vendor(overrides, answered, vendors):
    readers = dict(ALL_ABSENT, **overrides)
    result = gather("auto", readers)
    assert result["answered"] == answered
    assert sorted({gpu["vendor"] for gpu in result["gpus"]}) == vendors


def test_auto_does_not_call_later_backends_once_one_answered():
    calls = []

    def nvml():
        calls.append("nvml")
        return _answers(_gpu("nvidia", 0))()

    def smi():
        calls.append("nvidia-smi")
        raise AssertionError("nvidia-smi must not run when NVML answered")

    gather("auto", dict(ALL_ABSENT, nvml=nvml, **{"nvidia-smi": smi}))
    assert calls == ["nvml"]


def test_auto_falls_back_after_an_error_and_says_so():
    readers = dict(ALL_ABSENT, nvml=_broken("nvml", "NVMLError_Unknown: Unknown Error"),
                   **{"nvidia-smi": _answers(_gpu("nvidia", 0))})
    result = gather("auto", readers)
    assert result["answered"] == ["nvidia-smi"]
    assert result["warnings"] == ["nvml: NVMLError_Unknown: Unknown Error; used nvidia-smi instead"]


def test_auto_fails_when_every_present_backend_of_a_family_failed():
    readers = dict(ALL_ABSENT, **{"nvidia-smi": _broken("nvidia-smi", "not XML")})
    with pytest.raises(BackendError, match=r"nvidia-smi: not XML") as err:
        gather("auto", readers)
    assert err.value.backend == "nvidia-smi"


def test_auto_with_nothing_present_returns_no_gpus():
    result = gather("auto", dict(ALL_ABSENT))
    assert result["gpus"] == []
    assert result["answered"] == []
    assert [t["outcome"] for t in result["tried"]] == ["unavailable"] * 5


def test_explicit_backend_error_names_it():
    readers = dict(ALL_ABSENT, **{"rocm-smi": _broken("rocm-smi", "no JSON in output")})
    with pytest.raises(BackendError, match=r"^rocm-smi: no JSON in output$"):
        gather("rocm-smi", readers)


def test_explicit_backend_unavailable_warns():
    result = gather("amd-smi", dict(ALL_ABSENT))
    assert result["gpus"] == []
    assert result["warnings"] == [
        "backend amd-smi is not available on this host (not installed); no GPUs reported"]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"backend must be one of .*; got: 'cuda'"):
        gather("cuda", dict(ALL_ABSENT))


def test_summary_counts_healthy_gpus_for_profile_and_memory():
    gpus = [_gpu("nvidia", 0, total=24564, free=24000),
            _gpu("nvidia", 1, total=4094, free=4000, healthy=False)]
    summary = summarize(gpus, ["nvml"], "590.48.01", [])
    assert summary == {
        "count": 2,
        "healthy_count": 1,
        "vendors": ["nvidia"],
        "total_memory_mib": 24564,
        "free_memory_mib": 24000,
        "backend": "nvml",
        "driver_version": "590.48.01",
        "recommended_profile": "single-gpu",
        "warnings": ["GPU 1 (nvidia-1) is unhealthy: GPU is lost"],
    }


def test_summary_without_gpus_recommends_cpu():
    summary = summarize([], [], None, ["No GPU found"])
    assert summary["recommended_profile"] == "cpu"
    assert summary["backend"] is None
    assert summary["total_memory_mib"] == 0
    assert summary["warnings"] == ["No GPU found"]


@pytest.mark.parametrize("text, want", [
    ("MemTotal:       131072000 kB\nMemFree: 1 kB\n", 128000),
    ("MemTotal: 131072000 kB\nMemAvailable: 65536000 kB\n", 128000),
    ("MemFree: 1 kB\n", None),
    ("MemTotal: lots\n", None),
])
def test_read_meminfo(tmp_path, text, want):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(text)
    assert read_meminfo_mib(str(meminfo)) == want
    assert read_meminfo_mib(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("rc", "output", "reason"),
    [
        (6, "No devices were found\n", "No devices were found"),
        (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.\n",
         "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
         "Make sure that the latest NVIDIA driver is installed and running."),
        (2, "WARNING: x\nERROR:root:Driver not initialized (amdgpu not found in modules)\n",
         "ERROR:root:Driver not initialized (amdgpu not found in modules)"),
        (0, "No devices were found\n", None),
        (1, "Segmentation fault\n", None),
    ],
)
def test_no_gpu_reason(rc, output, reason):
    assert no_gpu_reason(rc, output) == reason


# --------------------------------------------------------------------------- identities


def _at(gpu, **changes):
    gpu.update(changes)
    return gpu


@pytest.mark.parametrize(("nvidia", "amd", "intel", "indexes", "vendor_indexes"), [
    # NVIDIA keeps its own numbers (what CUDA_VISIBLE_DEVICES means); AMD and Intel follow.
    ([0, 1], [0, 1], [0], [0, 1, 2, 3, 4], [0, 1, 0, 1, 0]),
    ([0], [0, 1], [], [0, 1, 2], [0, 0, 1]),
    # No collision: nobody is renumbered.
    ([0], [], [], [0], [0]),
    ([], [0, 1], [], [0, 1], [0, 1]),
    ([0, 1], [2], [], [0, 1, 2], [0, 1, 2]),
    # A lost GPU has no index and none is made up for it; it is listed last.
    ([0, None], [0], [], [0, 1, None], [0, 0, None]),
], ids=["nvidia2-amd2-intel1", "nvidia1-amd2", "nvidia-only", "amd-only", "no-collision",
        "lost-nvidia"])
def test_indexes_are_unique_across_vendors(nvidia, amd, intel, indexes, vendor_indexes):
    def family(vendor, numbers):
        return [_at(_gpu(vendor, n if n is not None else 9), index=n,
                    healthy=n is not None, errors=[] if n is not None else ["GPU is lost"])
                for n in numbers]

    readers = dict(ALL_ABSENT, nvml=_answers(*family("nvidia", nvidia)),
                   **{"amd-smi": _answers(*family("amd", amd)),
                      "sysfs": _answers(*family("intel", intel))})
    result = gather("auto", readers)
    assert [g["index"] for g in result["gpus"]] == indexes
    assert [g["vendor_index"] for g in result["gpus"]] == vendor_indexes


def test_renumbered_gpus_are_named_in_a_warning():
    readers = dict(ALL_ABSENT, nvml=_answers(_gpu("nvidia", 0)),
                   **{"amd-smi": _answers(_gpu("amd", 0))})
    result = gather("auto", readers)
    assert result["warnings"] == [
        "amd GPUs are numbered after the nvidia GPUs so that indexes are unique on this host: "
        "index 0 -> 1; vendor_index keeps amd's own numbers"]


def test_two_gpus_of_one_vendor_with_one_index_cannot_be_told_apart():
    readers = dict(ALL_ABSENT, nvml=_answers(_gpu("nvidia", 0), _gpu("nvidia", 1),
                                             _at(_gpu("nvidia", 1), uuid="GPU-dup")))
    result = gather("auto", readers)
    assert [(g["index"], g["vendor_index"], g["healthy"]) for g in result["gpus"]] == [
        (0, 0, True), (1, 1, True), (None, 1, False)]
    assert result["gpus"][2]["errors"] == [
        "the backend gave this GPU index 1, as it gave GPU 1 (nvidia-1): it cannot be told "
        "apart, so it has no index"]


def test_sysfs_answering_two_families_is_named_once():
    readers = dict(ALL_ABSENT, sysfs=lambda: {
        "gpus": [_gpu("amd", 0), _gpu("intel", 0)], "driver_version": None,
        "cuda_driver_version": None, "warnings": ["one sysfs warning"]})
    result = gather("auto", readers)
    assert result["answered"] == ["sysfs"]
    assert result["warnings"][0] == "one sysfs warning"
    assert result["warnings"].count("one sysfs warning") == 1
    assert [g["index"] for g in result["gpus"]] == [0, 1]


def test_sysfs_warnings_are_kept_when_it_skipped_every_gpu():
    readers = dict(ALL_ABSENT, sysfs=lambda: {
        "gpus": [], "driver_version": None, "cuda_driver_version": None,
        "warnings": ["Intel GPU card0 (0000:00:02.0) is integrated: not counted"]})
    result = gather("auto", readers)
    assert result["answered"] == []
    assert result["warnings"] == ["Intel GPU card0 (0000:00:02.0) is integrated: not counted"]


# --------------------------------------------------------------------------- lost GPUs


@pytest.mark.parametrize(("gpu", "healthy", "errors"), [
    # What nvidia-smi gives for a GPU that fell off the bus: kept, no index, its errors.
    (new_gpu(vendor="nvidia", pci_bus_id="0000:3b:00.0", healthy=False,
             errors=["nvidia-smi cannot open the GPU 0000:3b:00.0: GPU is lost"]),
     False, ["nvidia-smi cannot open the GPU 0000:3b:00.0: GPU is lost"]),
    # A GPU said to be healthy but without an index cannot be addressed: unhealthy, and why.
    (new_gpu(vendor="nvidia", uuid="GPU-x", pci_bus_id="0000:3b:00.0"),
     False, ["nvidia-smi reported no index for this GPU; it cannot be addressed"]),
    # Unhealthy without a word: the errors list says so instead of staying empty.
    (new_gpu(index=1, vendor="nvidia", uuid="GPU-y", healthy=False),
     False, ["nvidia-smi marked this GPU unhealthy without saying why"]),
], ids=["lost", "healthy-without-index", "unhealthy-without-errors"])
def test_a_gpu_without_an_index_is_unhealthy_and_says_why(gpu, healthy, errors):
    readers = dict(ALL_ABSENT, **{"nvidia-smi": _answers(_gpu("nvidia", 0), gpu)})
    result = gather("auto", readers)
    first, second = result["gpus"]
    assert (first["index"], first["healthy"]) == (0, True)
    assert (second["healthy"], second["errors"]) == (healthy, errors)


@pytest.mark.parametrize(("gpu", "warning"), [
    (new_gpu(vendor="nvidia", pci_bus_id="0000:3b:00.0", healthy=False,
             errors=["nvidia-smi cannot open the GPU 0000:3b:00.0: GPU is lost"]),
     "GPU 0000:3b:00.0 (no index) is unhealthy: nvidia-smi cannot open the GPU "
     "0000:3b:00.0: GPU is lost"),
    (new_gpu(vendor="nvidia", uuid="GPU-z", pci_bus_id="0000:3b:00.0", healthy=False,
             errors=["GPU is lost"]),
     "GPU GPU-z (no index, 0000:3b:00.0) is unhealthy: GPU is lost"),
])
def test_summary_names_a_lost_gpu_by_bus_id_or_uuid(gpu, warning):
    summary = summarize([_gpu("nvidia", 0), gpu], ["nvidia-smi"], "590.48.01", [])
    assert summary["warnings"] == [warning]
    assert (summary["count"], summary["healthy_count"]) == (2, 1)
    assert summary["recommended_profile"] == "single-gpu"


# --------------------------------------------------------------------------- value ranges

SENTINEL_MIB = (2 ** 64 - 1) // (1024 * 1024)


@pytest.mark.parametrize(("values", "expected", "warning"), [
    (dict(memory_used_mib=-5, memory_free_mib=None),
     dict(memory_used_mib=None, memory_free_mib=None),
     "GPU 0 (nvidia-0) memory_used_mib is out of range (-5): read as unknown"),
    (dict(memory_used_mib=100, memory_free_mib=-1),
     dict(memory_used_mib=100, memory_free_mib=900),
     "GPU 0 (nvidia-0) memory_free_mib is out of range (-1): read as unknown"),
    (dict(memory_total_mib=SENTINEL_MIB, memory_used_mib=100, memory_free_mib=None),
     dict(memory_total_mib=None, memory_used_mib=100, memory_free_mib=None),
     "GPU 0 (nvidia-0) memory_total_mib reads %d, the tools' 2^64-1 'not available' value: "
     "read as unknown" % SENTINEL_MIB),
    # 2^64-1 bytes through a float (1.8446744073709552e19 B) rounds up by one MiB.
    (dict(memory_used_mib=SENTINEL_MIB + 1, memory_free_mib=500),
     dict(memory_used_mib=None, memory_free_mib=500),
     "GPU 0 (nvidia-0) memory_used_mib reads %d, the tools' 2^64-1 'not available' value: "
     "read as unknown" % (SENTINEL_MIB + 1)),
    # free > total: total and used agree, so free is worked out from them.
    (dict(memory_used_mib=200, memory_free_mib=5000),
     dict(memory_used_mib=200, memory_free_mib=800),
     "GPU 0 (nvidia-0) memory_free_mib 5000 is more than memory_total_mib 1000: "
     "free read as total - used"),
    # free > total and used unknown: nothing to trust it against.
    (dict(memory_used_mib=None, memory_free_mib=5000),
     dict(memory_used_mib=None, memory_free_mib=None),
     "GPU 0 (nvidia-0) memory_free_mib 5000 is more than memory_total_mib 1000: "
     "read as unknown"),
    (dict(memory_used_mib=1200, memory_free_mib=None),
     dict(memory_used_mib=None, memory_free_mib=None),
     "GPU 0 (nvidia-0) memory_used_mib 1200 is more than memory_total_mib 1000: "
     "read as unknown"),
    (dict(utilization_pct=4294967295), dict(utilization_pct=None),
     "GPU 0 (nvidia-0) utilization_pct is out of range (4294967295): read as unknown"),
    (dict(temperature_c=-274), dict(temperature_c=None),
     "GPU 0 (nvidia-0) temperature_c is out of range (-274): read as unknown"),
    (dict(power_limit_w=-1.0), dict(power_limit_w=None),
     "GPU 0 (nvidia-0) power_limit_w is out of range (-1.0): read as unknown"),
], ids=["negative-used", "negative-free", "sentinel-total", "sentinel-float-used",
        "free-over-total-used-known", "free-over-total-used-unknown", "used-over-total",
        "utilization", "temperature", "power"])
def test_out_of_range_values_become_unknown_with_a_warning(values, expected, warning):
    gpu = _at(_gpu("nvidia", 0, total=1000, free=800), **values)
    result = gather("nvml", dict(ALL_ABSENT, nvml=_answers(gpu)))
    [got] = result["gpus"]
    assert {key: got[key] for key in expected} == expected
    assert result["warnings"] == [warning]


def test_out_of_range_process_and_mig_memory_become_unknown():
    gpu = _gpu("nvidia", 0, total=81559, free=80000)
    gpu["processes"] = [{"pid": 7, "name": "python3", "used_memory_mib": SENTINEL_MIB}]
    gpu["mig_devices"] = [new_mig_device(index=0, memory_total_mib=-3, memory_used_mib=1)]
    result = gather("nvml", dict(ALL_ABSENT, nvml=_answers(gpu)))
    [got] = result["gpus"]
    assert got["processes"][0]["used_memory_mib"] is None
    assert got["mig_devices"][0]["memory_total_mib"] is None
    assert result["warnings"] == [
        "GPU 0 (nvidia-0) process 7 used_memory_mib reads %d, the tools' 2^64-1 "
        "'not available' value: read as unknown" % SENTINEL_MIB,
        "GPU 0 (nvidia-0) MIG device 0 memory_total_mib is out of range (-3): read as unknown"]


# --------------------------------------------------------------------------- MIG devices


@pytest.mark.parametrize(("mig", "kept", "warnings"), [
    ([(0, "MIG-a"), (1, "MIG-b")], ["MIG-a", "MIG-b"], []),
    ([(0, "MIG-a"), (0, "MIG-b")], ["MIG-a"],
     ["GPU 0 (nvidia-0) MIG device MIG-b has index 0, as MIG device MIG-a does: left out"]),
    ([(None, "MIG-a"), (1, "MIG-b")], ["MIG-b"],
     ["GPU 0 (nvidia-0) MIG device MIG-a has no index: left out"]),
    ([(None, None)], [],
     ["GPU 0 (nvidia-0) MIG device (no uuid) has no index: left out"]),
], ids=["distinct", "duplicate", "null", "null-without-uuid"])
def test_mig_devices_with_duplicate_or_null_index_are_left_out(mig, kept, warnings):
    gpu = _gpu("nvidia", 0)
    gpu["mig_mode"] = "enabled"
    gpu["mig_devices"] = [new_mig_device(index=i, uuid=u) for i, u in mig]
    result = gather("nvml", dict(ALL_ABSENT, nvml=_answers(gpu)))
    assert [d["uuid"] for d in result["gpus"][0]["mig_devices"]] == kept
    assert result["warnings"] == warnings
