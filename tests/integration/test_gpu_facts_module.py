# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts run for real by ansible: stand-in NVML library, stand-in tools, no GPU at all."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.nvml_standin import NvmlState, build_standin

from .conftest import REPO, run_module

STAND_IN_BIN = REPO / "tests" / "stand_ins" / "bin"
BARE_PATH = "/usr/bin:/bin"  # no vendor tool on it

A5500 = {"name": "NVIDIA RTX A5500", "uuid": "GPU-a5500000-0000-0000-0000-000000000000",
         "pci_bus_id": "00000000:01:00.0", "memory_total_mib": 24564,
         "memory_reserved_mib": 330, "memory_used_mib": 19304, "compute_capability": "8.6",
         "power_limit_mw": 230000, "temperature_c": 45, "utilization_gpu": 12}
A400 = {"name": "NVIDIA RTX A400", "uuid": "GPU-a4000000-0000-0000-0000-000000000000",
        "pci_bus_id": "00000000:02:00.0", "memory_total_mib": 4094,
        "memory_reserved_mib": 65, "memory_used_mib": 329, "compute_capability": "8.6",
        "power_limit_mw": 50000, "temperature_c": 38, "utilization_gpu": 0}


@pytest.fixture(scope="module")
def standin_lib(tmp_path_factory):
    return build_standin(tmp_path_factory.mktemp("nvml"))


@pytest.fixture
def nvml_env(tmp_path, standin_lib):
    """Environment in which the module's NVML backend loads the stand-in."""
    state = NvmlState(tmp_path / "nvml.state")
    env = {"PATH": BARE_PATH, "GPUFLEET_NVML_STATE": state.path,
           "LD_LIBRARY_PATH": os.path.dirname(standin_lib)}
    return state, env


def _facts(result):
    return result["ansible_facts"]["gpus"], result["ansible_facts"]["gpu_summary"]


def test_no_gpu_returns_empty_list_and_cpu(tmp_path):
    rc, result = run_module("gpufleet.inference.gpu_facts", "sysfs_root=%s" % tmp_path,
                            env={"PATH": BARE_PATH, "LD_LIBRARY_PATH": str(tmp_path)})
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert gpus == []
    assert summary["recommended_profile"] == "cpu"
    assert summary["backend"] is None
    assert summary["warnings"][0].startswith("No GPU found: no GPU driver, library or tool")
    assert result["changed"] is False
    assert "[WARNING]: No GPU found" in result["_stderr"]


def test_no_gpu_fails_when_asked(tmp_path):
    rc, result = run_module("gpufleet.inference.gpu_facts",
                            "fail_on_missing=true sysfs_root=%s" % tmp_path,
                            env={"PATH": BARE_PATH, "LD_LIBRARY_PATH": str(tmp_path)})
    assert rc != 0
    assert result["msg"].startswith("No GPU backend is available on this host (nvml: ")


def test_a5500_and_a400_match_exactly_and_follow_used_memory(nvml_env):
    state, env = nvml_env
    state.write_gpus([A5500, A400], drain_delay=0)
    rc, result = run_module("gpufleet.inference.gpu_facts", env=env)
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert [(g["index"], g["name"], g["memory_total_mib"], g["memory_used_mib"],
             g["memory_free_mib"], g["memory_reserved_mib"], g["compute_capability"],
             g["pci_bus_id"], g["power_limit_w"], g["temperature_c"], g["utilization_pct"],
             g["uuid"], g["vendor"], g["memory_kind"], g["healthy"], g["driver_version"],
             g["cuda_driver_version"]) for g in gpus] == [
        (0, "NVIDIA RTX A5500", 24564, 19304, 4930, 330, "8.6", "0000:01:00.0", 230.0, 45, 12,
         A5500["uuid"], "nvidia", "dedicated", True, "590.48.01", "13.1"),
        (1, "NVIDIA RTX A400", 4094, 329, 3700, 65, "8.6", "0000:02:00.0", 50.0, 38, 0,
         A400["uuid"], "nvidia", "dedicated", True, "590.48.01", "13.1"),
    ]
    assert summary["backend"] == "nvml"
    assert summary["recommended_profile"] == "dual-gpu"
    assert summary["total_memory_mib"] == 24564 + 4094

    # A process takes 2000 MiB on GPU 1 between the two calls: the second call sees it.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        state.register(1, sleeper.pid, 2000, name="ollama")
        rc, result = run_module("gpufleet.inference.gpu_facts", env=env)
    finally:
        sleeper.kill()
        sleeper.wait()
    gpus, summary = _facts(result)
    assert rc == 0
    assert gpus[1]["memory_used_mib"] == 2329
    assert gpus[1]["memory_free_mib"] == 1700
    assert {"pid": sleeper.pid, "name": "ollama", "used_memory_mib": 2000} in gpus[1]["processes"]
    assert gpus[0]["memory_used_mib"] == 19304


def test_check_mode_reads_the_same(nvml_env):
    state, env = nvml_env
    state.write_gpus([A5500])
    rc, result = run_module("gpufleet.inference.gpu_facts", env=env, check=True)
    assert rc == 0
    assert result["ansible_facts"]["gpus"][0]["memory_used_mib"] == 19304
    assert result["changed"] is False


def test_one_lost_gpu_keeps_the_other(nvml_env):
    state, env = nvml_env
    state.write_gpus([A5500, dict(A400, lost=1)])
    rc, result = run_module("gpufleet.inference.gpu_facts", env=env)
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert gpus[0]["healthy"] is True and gpus[0]["memory_total_mib"] == 24564
    assert gpus[1]["healthy"] is False
    assert "GPU is lost" in gpus[1]["errors"][0]
    assert summary["recommended_profile"] == "single-gpu"
    assert any("is unhealthy" in w for w in summary["warnings"])


def test_unified_memory_box(nvml_env, tmp_path):
    state, env = nvml_env
    state.write_gpus([{"name": "NVIDIA GB10", "uuid": "GPU-gb100000-0000-0000-0000-000000000000",
                       "pci_bus_id": "0000000F:01:00.0", "compute_capability": "12.1",
                       "unified": 1}])
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       134217728 kB\n")
    rc, result = run_module("gpufleet.inference.gpu_facts", "sysfs_root=%s" % tmp_path, env=env)
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert gpus[0]["memory_kind"] == "unified"
    assert gpus[0]["memory_total_mib"] == 131072
    assert any("unified" in w for w in summary["warnings"])


def test_driver_not_loaded_is_no_gpu_with_warning(nvml_env):
    state, env = nvml_env
    env = dict(env, GPUFLEET_NVML_STATE=state.path + ".absent")
    rc, result = run_module("gpufleet.inference.gpu_facts", env=env)
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert gpus == []
    assert summary["backends_tried"][0]["backend"] == "nvml"
    assert summary["backends_tried"][0]["outcome"] == "unavailable"
    assert "Driver Not Loaded" in summary["backends_tried"][0]["detail"]


def test_explicit_nvml_without_the_library_names_it(tmp_path):
    rc, result = run_module("gpufleet.inference.gpu_facts", "backend=nvml",
                            python="/usr/bin/python3", env={"PATH": BARE_PATH})
    assert rc != 0
    assert "Failed to import the required Python library (nvidia-ml-py)" in result["msg"]


@pytest.mark.parametrize(("args", "message"), [
    ("backend=cuda", "value of backend must be one of: auto, nvml, nvidia-smi, amd-smi, "
                     "rocm-smi, sysfs, got: cuda"),
    ("timeout=0", "timeout must be >= 1 second; got: 0"),
    ("timeout=soon", "argument 'timeout' is of type str and we were unable to convert to int"),
])
def test_bad_options_name_the_field(args, message):
    rc, result = run_module("gpufleet.inference.gpu_facts", args, env={"PATH": BARE_PATH})
    assert rc != 0
    assert message in result["msg"]


# ---- the same module through the stand-in vendor tools (real captured outputs) -----------

FIXTURES = REPO / "tests" / "fixtures"
H100 = FIXTURES / "nvidia-smi-captures" / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt"
T4_XML = FIXTURES / "nvidia-smi-xml" / "telegraf-tesla-t4.xml"


def _tool_env(tmp_path, tools=("nvidia-smi", "amd-smi", "rocm-smi"), **extra):
    """PATH with only the given stand-in tools, as on a host with that vendor's tools.

    No NVML library can load (empty LD_LIBRARY_PATH dir, no state file).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        (bin_dir / tool).symlink_to(STAND_IN_BIN / tool)
    env = {"PATH": "%s:%s" % (bin_dir, BARE_PATH), "LD_LIBRARY_PATH": str(tmp_path)}
    env.update(extra)
    return env


def test_auto_falls_back_to_nvidia_smi_on_a_real_h100_capture(tmp_path):
    rc, result = run_module("gpufleet.inference.gpu_facts", "sysfs_root=%s" % tmp_path,
                            env=_tool_env(tmp_path, ("nvidia-smi",),
                                          GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE=H100))
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert summary["backend"] == "nvidia-smi"
    assert [t["outcome"] for t in summary["backends_tried"]][:2] == ["unavailable", "ok"]
    assert len(gpus) == 1
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpus[0]["memory_total_mib"] == 81559
    assert gpus[0]["compute_capability"] == "9.0"
    assert summary["recommended_profile"] == "single-gpu"


def test_hung_nvidia_smi_is_stopped_after_timeout(tmp_path):
    rc, result = run_module(
        "gpufleet.inference.gpu_facts", "backend=nvidia-smi timeout=2",
        env=_tool_env(tmp_path, GPUFLEET_FIXTURE_NVIDIA_SMI_XML=T4_XML,
                      GPUFLEET_STANDIN_HANG="30"), timeout=60)
    assert rc != 0
    assert result["msg"].startswith("Reading GPUs failed: nvidia-smi: nvidia-smi ")
    assert "did not answer within 2 seconds and was stopped" in result["msg"]


def test_garbage_output_fails_naming_the_backend(tmp_path):
    rc, result = run_module(
        "gpufleet.inference.gpu_facts", "backend=nvidia-smi",
        env=_tool_env(tmp_path, GPUFLEET_STANDIN_GARBAGE="Segmentation fault (core dumped)"))
    assert rc != 0
    assert result["msg"].startswith("Reading GPUs failed: nvidia-smi: ")
    assert result["backend"] == "nvidia-smi"


def test_amd_gpus_through_rocm_smi(tmp_path):
    rocm = FIXTURES / "rocm-smi-json" / "telegraf-mi100_rocm571.json"
    rc, result = run_module("gpufleet.inference.gpu_facts", "backend=rocm-smi",
                            env=_tool_env(tmp_path, GPUFLEET_FIXTURE_ROCM_SMI_JSON=rocm))
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert summary["vendors"] == ["amd"]
    assert summary["backend"] == "rocm-smi"
    assert all(gpu["vendor"] == "amd" and gpu["memory_total_mib"] for gpu in gpus)


def test_driver_without_devices_is_no_gpu_not_a_failure(tmp_path):
    rc, result = run_module("gpufleet.inference.gpu_facts", "sysfs_root=%s" % tmp_path,
                            env=_tool_env(tmp_path, ("nvidia-smi",),
                                          GPUFLEET_STANDIN_FAIL="6:No devices were found"))
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert gpus == []
    assert summary["recommended_profile"] == "cpu"
    assert summary["backends_tried"][1] == {
        "backend": "nvidia-smi", "outcome": "unavailable",
        "detail": "nvidia-smi: No devices were found"}


def test_nvidia_smi_without_a_driver_is_no_gpu(tmp_path):
    message = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
               "Make sure that the latest NVIDIA driver is installed and running.")
    rc, result = run_module("gpufleet.inference.gpu_facts", "sysfs_root=%s" % tmp_path,
                            env=_tool_env(tmp_path, ("nvidia-smi",),
                                          GPUFLEET_STANDIN_FAIL="9:" + message))
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert gpus == [] and summary["recommended_profile"] == "cpu"
    assert summary["backends_tried"][1]["detail"] == "nvidia-smi: " + message


def _intel_igpu_tree(root):
    """A sysfs tree with the CPU's Intel GPU as card0 and 64 GiB of host memory."""
    device = root / "sys" / "devices" / "pci0000:00" / "0000:00:02.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x8086\n")
    card = root / "sys" / "class" / "drm" / "card0"
    card.mkdir(parents=True)
    (card / "device").symlink_to(device)
    (root / "proc").mkdir()
    (root / "proc" / "meminfo").write_text("MemTotal:       67108864 kB\n")


@pytest.mark.parametrize(("option", "expected", "profile"), [
    ("", [(0, 0, "nvidia", "dedicated")], "single-gpu"),
    ("include_integrated=true", [(0, 0, "nvidia", "dedicated"), (1, 0, "intel", "unified")],
     "dual-gpu"),
], ids=["default", "opted-in"])
def test_nvidia_workstation_with_an_intel_igpu(nvml_env, tmp_path, option, expected, profile):
    state, env = nvml_env
    state.write_gpus([A5500])
    _intel_igpu_tree(tmp_path)
    rc, result = run_module("gpufleet.inference.gpu_facts",
                            "sysfs_root=%s %s" % (tmp_path, option), env=env)
    assert rc == 0, result
    gpus, summary = _facts(result)
    assert [(g["index"], g["vendor_index"], g["vendor"], g["memory_kind"]) for g in gpus] == \
        expected
    assert summary["recommended_profile"] == profile
    if not option:
        assert "Intel GPU card0 (0000:00:02.0) is integrated and shares the host's memory: not " \
            "counted as an inference GPU (include_integrated=true counts it)" in summary["warnings"]
