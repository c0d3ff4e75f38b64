# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab inventory becomes a driver state that the real nvidia-ml-py reads as intended."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "lab")

# lab/lab.py under a name of its own (a plain "import lab" could find the tests/lab folder).
_spec = importlib.util.spec_from_file_location("gpufleet_lab_cli", os.path.join(LAB, "lab.py"))
lab_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab_cli)

PROBE = """
import json, pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
    except pynvml.NVMLError as exc:
        out.append({"error": type(exc).__name__})
        continue
    gpu = {"name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
           "cc": list(pynvml.nvmlDeviceGetCudaComputeCapability(h))}
    try:
        gpu["total"] = pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20
    except pynvml.NVMLError_NotSupported:
        gpu["total"] = None
    try:
        gpu["mig"] = pynvml.nvmlDeviceGetMigMode(h)[0]
    except pynvml.NVMLError_NotSupported:
        gpu["mig"] = None
    out.append(gpu)
print(json.dumps(out))
"""

EXTRA = {
    "lab_gpus": [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "memory_mib": 81559,
            "uuid": "GPU-h100",
            "compute_capability": "9.0",
            "mig_mode": True,
            "mig_devices": [
                {
                    "gi": 1,
                    "ci": 0,
                    "memory_mib": 40192,
                    "uuid": "MIG-a",
                    "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                }
            ],
        },
        {
            "name": "NVIDIA A10",
            "memory_mib": 23028,
            "uuid": "GPU-a10",
            "compute_capability": "8.6",
            "lost": True,
        },
    ],
}


@pytest.fixture(scope="module")
def libdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("nvml")
    subprocess.run(["sh", os.path.join(LAB, "nvml", "build.sh"), str(out)], check=True)
    return str(out)


def read(libdir, tmp_path, host, hvars):
    state = tmp_path / "state"
    state.write_text(lab_cli.state_text(host, hvars))
    env = dict(os.environ, GPUFLEET_NVML_STATE=str(state), LD_LIBRARY_PATH=libdir)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize(
    "host", ["lab-ws", "lab-dual", "lab-dual2", "lab-dual3", "lab-spark", "lab-cpu", "lab-edge",
             "lab-multi", "lab-amd", "lab-mixed"])
def test_default_lab_hosts_read_back_through_pynvml(libdir, tmp_path, host):
    hvars = lab_cli.load_inventory(os.path.join(ROOT, "inventory", "lab"))[host]
    gpus = read(libdir, tmp_path, host, hvars)
    # NVML lists the NVIDIA GPUs; an AMD one is amd-smi's (its own state file).
    nvidia = [g for g in hvars["lab_gpus"] if g.get("vendor", "nvidia") == "nvidia"]
    assert [g["uuid"] for g in gpus] == [g["uuid"] for g in nvidia]
    for seen, want in zip(gpus, nvidia):
        assert seen["name"] == want["name"]
        assert seen["cc"] == [int(x) for x in want["compute_capability"].split(".")]
        assert seen["total"] == (None if want.get("unified") else want["memory_mib"])
    assert hvars["ansible_connection"] == "community.docker.docker"


def test_mig_and_lost_gpus_of_an_inventory_entry(libdir, tmp_path):
    gpus = read(libdir, tmp_path, "lab-h100", EXTRA)
    assert gpus[0]["mig"] == 1 and gpus[0]["total"] == 81559
    assert gpus[1] == {"error": "NVMLError_GpuIsLost"}


def test_a_gpu_without_its_required_keys_is_refused():
    with pytest.raises(lab_cli.LabError, match=r"lab-x: lab_gpus\[0\]\.uuid is required"):
        lab_cli.state_text(
            "lab-x", {"lab_gpus": [{"name": "x", "memory_mib": 1, "compute_capability": "8.0"}]}
        )
