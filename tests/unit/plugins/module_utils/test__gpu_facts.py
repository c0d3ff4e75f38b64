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
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import new_gpu


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
