# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""site.yml on the lab's AMD box (2x MI210) and its mixed box (RTX 4090 + Radeon PRO W7900).

One converge of both hosts together (dual-gpu, mode mixed), then a second run that changes
nothing. Services on an AMD GPU run the ROCm image with /dev/kfd, /dev/dri and the plan's
ROCR_VISIBLE_DEVICES and no device request; on the mixed box the NVIDIA GPU's services get
NVIDIA device requests; amd-smi lists each AMD engine's process on its GPU.
"""

from __future__ import annotations

import json

import pytest
from conftest import _dual_boxes
from dual import apply

LIMIT = "lab-amd,lab-mixed"
ROCM = {"ollama": "registry.lab:5000/ollama/ollama:rocm",
        "vllm": "registry.lab:5000/vllm/vllm-openai-rocm:latest"}
CUDA = {"ollama": "registry.lab:5000/ollama/ollama:latest"}
# Where each GPU service runs in mode mixed: (engine, vendor, ROCR_VISIBLE_DEVICES or NVIDIA id).
# With the default services_visible_devices_by (uuid), an NVIDIA GPU is named by its UUID and an
# AMD GPU by ROCm's own number (amd-smi's UUID is not the form ROCR_VISIBLE_DEVICES takes).
RTX4090 = "GPU-4090a1b2-0000-4000-8000-409000000000"
WHERE = {
    "lab-amd": {"ollama": ("ollama", "amd", "0"), "vision": ("ollama", "amd", "0"),
                "ollama_research": ("ollama", "amd", "1"), "vllm": ("vllm", "amd", "1")},
    "lab-mixed": {"ollama": ("ollama", "nvidia", RTX4090), "vision": ("ollama", "nvidia", RTX4090),
                  "ollama_research": ("ollama", "amd", "0"), "vllm": ("vllm", "amd", "0")},
}


@pytest.fixture(scope="module")
def amd_lab():
    yield from _dual_boxes(("lab-amd", "lab-mixed"))


def test_site_converges_the_amd_and_the_mixed_box(amd_lab, tmp_path):
    rc, out, recap = apply(tmp_path, LIMIT, {"dual_gpu_mode": "mixed"}, playbook="site.yml")
    assert rc == 0, out
    assert "lab-amd: HEALTHY" in out and "lab-mixed: HEALTHY" in out, out
    for name, host in amd_lab.items():
        assert_containers(host, WHERE[name])
        assert_amd_smi_sees_the_engines(host, WHERE[name])
    rc, again, recap = apply(tmp_path, LIMIT, {"dual_gpu_mode": "mixed"}, playbook="site.yml")
    assert rc == 0, again
    assert [recap[name][1] for name in ("lab-amd", "lab-mixed")] == [0, 0], again


def inspect(host, service):
    return json.loads(host.sh("docker inspect gpufleet-%s-1" % service).stdout)[0]


def assert_containers(host, where):
    for service, (engine, vendor, device) in where.items():
        info = inspect(host, service)
        devices = [d["PathOnHost"] for d in info["HostConfig"]["Devices"] or []]
        env = [e for e in info["Config"]["Env"] if e.startswith("ROCR_VISIBLE_DEVICES=")]
        requests = info["HostConfig"]["DeviceRequests"] or []
        if vendor == "amd":
            assert info["Config"]["Image"] == ROCM[engine], (host.name, service)
            assert devices == ["/dev/kfd", "/dev/dri"], (host.name, service)
            assert env == ["ROCR_VISIBLE_DEVICES=%s" % device], (host.name, service)
            assert requests == [], (host.name, service)
        else:
            assert info["Config"]["Image"] == CUDA[engine], (host.name, service)
            assert devices == [] and env == [], (host.name, service)
            assert [(r["Driver"], r["DeviceIDs"]) for r in requests] == [("nvidia", [device])]


def assert_amd_smi_sees_the_engines(host, where):
    """amd-smi's processes on each AMD GPU: the vLLM engine core of the service placed there,
    found by its pid's cgroup (the container's id), as the verify finds it."""
    listed = json.loads(host.sh("amd-smi process --json").stdout)
    by_gpu = {entry["gpu"]: [p["process_info"] for p in entry["process_list"]
                             if isinstance(p["process_info"], dict)] for entry in listed}
    _engine, _vendor, device = where["vllm"]
    vllm_id = inspect(host, "vllm")["Id"]
    mine = [p for p in by_gpu[int(device)] if vllm_id in host.sh(
        "cat /proc/%d/cgroup" % p["pid"]).stdout]
    assert [p["name"] for p in mine] == ["VLLM::EngineCor"], by_gpu
    assert mine[0]["memory_usage"]["vram_mem"]["value"] > 0
