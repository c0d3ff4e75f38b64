# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab proves itself: hosts, simulated driver, stand-in servers, GPU containers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import HF_ENDPOINT, REGISTRY, lab_image, set_drain_delay

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "lab")

STANDIN = lab_image("gpufleet-lab/standin:latest")
DRAIN = 1.0  # inventory/lab/group_vars/lab.yml lab_drain_delay
HOLD_DRAIN = 5.0  # the drain of the process that test_process_on_gpu1_... stops
GPU1_UUID = "GPU-5a1c0d3e-1a2b-4c3d-8e9f-a40000000001"


def unit(host, name, env, command):
    """Start a transient systemd unit (a real unit: systemd runs it, with its Environment)."""
    props = " ".join("--property=Environment=%s=%s" % kv for kv in env.items())
    host.sh(
        "systemctl stop %s 2>/dev/null || true; systemctl reset-failed %s 2>/dev/null || true; "
        "systemd-run --quiet --unit %s %s %s" % (name, name, name, props, command)
    )


def stop(host, name):
    host.sh(
        "systemctl stop %s 2>/dev/null || true; systemctl reset-failed %s 2>/dev/null || true"
        % (name, name)
    )


# --- hosts ---------------------------------------------------------------------------------------


def test_hosts_run_systemd_their_own_engine_and_hostname(lab):
    """Each host's engine pulls the stand-in images from the lab registry (a host starts with
    none, as a new real one does)."""
    images = [lab_image("ollama/ollama:latest"), lab_image("vllm/vllm-openai:latest")]
    for name, host in lab.items():
        out = host.sh(
            "hostname; systemctl is-system-running; docker info -f '{{.ServerVersion}} {{.CgroupDriver}}'; "  # noqa: E501
            "docker info -f '{{json .RegistryConfig.IndexConfigs}}'; "
            "for i in %s; do docker pull -q $i >/dev/null; done; "
            "docker image inspect -f '{{.Id}}' %s >/dev/null && echo images"
            % (" ".join(images), " ".join(images)),
            timeout=300,
        ).stdout.split("\n")
        assert out[0] == name
        assert out[1] == "running"
        assert out[2].endswith(" systemd")
        assert json.loads(out[3])[REGISTRY]["Secure"] is False
        assert out[4] == "images"


def test_gpu_host_has_driver_and_hook_cpu_host_has_neither(ws, cpu):
    assert ws.sh("nvidia-smi -L").stdout.splitlines() == [
        "GPU 0: NVIDIA RTX A5500 (UUID: GPU-5a1c0d3e-1a2b-4c3d-8e9f-a55000000000)",
        "GPU 1: NVIDIA RTX A400 (UUID: %s)" % GPU1_UUID,
    ]
    err = cpu.py(
        "import pynvml\ntry:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError as e:\n    print(type(e).__name__)\n"  # noqa: E501
    )
    assert err.strip() == "NVMLError_LibraryNotFound"
    run = cpu.sh("docker run --rm --gpus all %s true" % STANDIN, check=False, timeout=300)
    assert run.returncode != 0
    assert re.search(
        r'could not select device driver ".*" with capabilities: \[\[gpu\]\]', run.stderr
    ), run.stderr


def test_lab_status_reports_the_hosts(lab):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(LAB, "lab.py"),
            "status",
            "--json",
            "--hosts",
            "lab-ws,lab-cpu",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {row["host"]: row for row in json.loads(out)}
    assert rows["lab-ws"]["state"] == "running"
    assert rows["lab-ws"]["hook"] == "yes"
    assert [g.split(",")[1].strip() for g in rows["lab-ws"]["gpus"]] == [
        "NVIDIA RTX A5500",
        "NVIDIA RTX A400",
    ]
    assert rows["lab-cpu"]["gpus"] == [] and rows["lab-cpu"]["hook"] == "no"


# --- the simulated driver -------------------------------------------------------------------------


def test_process_on_gpu1_raises_used_memory_then_frees_it_after_drain(ws):
    before = ws.used_mib()
    # A drain longer than the lab's 1 s for this one process: on a loaded machine `systemctl
    # stop` and the read after it can take longer than 1 s, and the read must fall in the delay.
    set_drain_delay(ws, HOLD_DRAIN)
    try:
        stopping, stopped, freed_at = _hold_and_stop(ws, before)
    finally:
        set_drain_delay(ws, DRAIN)
    assert freed_at - stopping >= HOLD_DRAIN * 0.95, (stopping, stopped, freed_at)
    assert freed_at - stopped <= HOLD_DRAIN + 3.0, (stopping, stopped, freed_at)


def _hold_and_stop(ws, before):
    """A unit holding 1000 MiB on GPU 1, stopped: (stopping, stopped, freed_at) stamps."""
    unit(
        ws,
        "lab-test-holder",
        {
            "CUDA_VISIBLE_DEVICES": "1",
            "GPUFLEET_STANDIN_VISION_VRAM_MIB": "1000",
            "GPUFLEET_STANDIN_SIDECAR_STARTUP_SECONDS": "0",
        },
        "/usr/local/bin/vision-server --port 18002",
    )
    try:
        during, _when = ws.wait_used(1, lambda used: used == before[1] + 1000)
        assert during[0] == before[0], "GPU 0 must not move: %s -> %s" % (before, during)
        pids = json.loads(
            ws.py(
                "import json, pynvml\npynvml.nvmlInit()\nh = pynvml.nvmlDeviceGetHandleByIndex(1)\n"
                "print(json.dumps([[p.pid, p.usedGpuMemory // 2**20] for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]))"  # noqa: E501
            )
        )
        main_pid = int(ws.sh("systemctl show -p MainPID --value lab-test-holder").stdout)
        assert [main_pid, 1000] in pids
    finally:
        # The process dies inside stop(), which can take a while on a loaded machine: the
        # drain delay counts from a moment between these two stamps.
        stopping = time.time()
        stop(ws, "lab-test-holder")
    stopped = time.time()
    assert ws.used_mib()[1] == before[1] + 1000, "memory must stay used during the drain delay"
    _used, freed_at = ws.wait_used(1, lambda used: used == before[1], timeout=HOLD_DRAIN + 15)
    return stopping, stopped, freed_at


# --- stand-in servers -----------------------------------------------------------------------------


def fresh_models(host, name):
    """An empty OLLAMA_MODELS for the server ``name`` (a new host's Ollama has no model)."""
    path = "/var/tmp/%s-models" % name
    host.sh("rm -rf %s" % path)
    return path


def test_ollama_unit_pinned_to_gpu1_loads_and_unloads_with_keep_alive(ws):
    unit(
        ws,
        "lab-test-ollama",
        {"CUDA_VISIBLE_DEVICES": "1", "OLLAMA_HOST": "127.0.0.1:11435",
         "OLLAMA_MODELS": fresh_models(ws, "lab-test-ollama")},
        "/usr/local/bin/ollama serve",
    )
    try:
        env = ws.sh("systemctl show -p Environment --value lab-test-ollama").stdout
        assert "CUDA_VISIBLE_DEVICES=1" in env
        base = ws.used_mib()
        ws.wait_http("http://127.0.0.1:11435/api/version")
        status, info = ws.http("http://127.0.0.1:11435/api/standin")
        assert [g["uuid"] for g in info["gpus"]] == [GPU1_UUID]
        status, body = ws.http(
            "http://127.0.0.1:11435/api/generate",
            {"model": "llama3.2:3b", "prompt": "hi", "stream": False},
        )
        assert (status, body) == (404, {"error": "model 'llama3.2:3b' not found"})
        ws.pull_model("http://127.0.0.1:11435", "llama3.2:3b")
        status, tags = ws.http("http://127.0.0.1:11435/api/tags")
        assert "llama3.2:3b" in [m["name"] for m in tags["models"]]
        status, body = ws.http(
            "http://127.0.0.1:11435/api/generate",
            {"model": "llama3.2:3b", "prompt": "hi", "stream": False, "keep_alive": "2s"},
        )
        assert status == 200 and body["done"] and GPU1_UUID in body["response"]
        status, ps = ws.http("http://127.0.0.1:11435/api/ps")
        (model,) = ps["models"]
        assert model["name"] == "llama3.2:3b" and model["size_vram"] == model["size"] > 0
        loaded = ws.used_mib()
        assert loaded[1] == base[1] + model["size_vram"] // 2**20 and loaded[0] == base[0]
        # keep_alive 2s: unloaded, then the driver frees the memory after its drain delay
        deadline = time.time() + 10
        while ws.http("http://127.0.0.1:11435/api/ps")[1]["models"]:
            assert time.time() < deadline, "keep_alive did not unload the model"
            time.sleep(0.2)
        ws.wait_used(1, lambda used: used == base[1])
        status, body = ws.http(
            "http://127.0.0.1:11435/api/generate",
            {"model": "nope:1b", "prompt": "x", "stream": False},
        )
        assert status == 404 and "not found" in body["error"]
    finally:
        stop(ws, "lab-test-ollama")


def test_ollama_without_gpu_says_low_vram_mode_and_runs_on_cpu(cpu):
    """Seed 004: the server starts but sees no GPU."""
    unit(cpu, "lab-test-ollama",
         {"OLLAMA_HOST": "127.0.0.1:11434", "OLLAMA_MODELS": fresh_models(cpu, "lab-test-ollama")},
         "/usr/local/bin/ollama serve")
    try:
        cpu.wait_http("http://127.0.0.1:11434/api/version")
        cpu.pull_model("http://127.0.0.1:11434", "llama3.2:3b")
        status, body = cpu.http(
            "http://127.0.0.1:11434/api/generate",
            {"model": "llama3.2:3b", "prompt": "hi", "stream": False},
        )
        assert status == 200 and body["response"].endswith("on cpu to: hi")
        (model,) = cpu.http("http://127.0.0.1:11434/api/ps")[1]["models"]
        assert model["size_vram"] == 0 and model["size"] > 0
        log = cpu.sh("journalctl -u lab-test-ollama --no-pager -o cat").stdout
        assert 'msg="no compatible GPUs were discovered"' in log
        assert 'msg="entering low vram mode"' in log
    finally:
        stop(cpu, "lab-test-ollama")


VLLM = "/usr/local/bin/vllm serve Qwen/Qwen2.5-0.5B-Instruct --port {port} --gpu-memory-utilization {util}"  # noqa: E501
PROFILING = re.compile(
    r"AssertionError: Error in memory profiling\. Initial free memory (\d+\.\d+) GiB, "
    r"current free memory (\d+\.\d+) GiB\. This happens when other processes sharing the same "
    r"container release GPU memory while vLLM is profiling during initialization\."
)


def test_vllm_starts_serves_and_holds_its_share(ws):
    base = ws.used_mib()
    unit(ws, "lab-test-vllm", {"CUDA_VISIBLE_DEVICES": "0", "HF_ENDPOINT": HF_ENDPOINT},
         VLLM.format(port=8011, util=0.5))
    try:
        assert ws.http("http://127.0.0.1:8011/health", timeout=2)[0] == 0, (
            "the port opens only after startup"
        )
        ws.wait_http("http://127.0.0.1:8011/health")
        models = ws.http("http://127.0.0.1:8011/v1/models")[1]
        assert [m["id"] for m in models["data"]] == ["Qwen/Qwen2.5-0.5B-Instruct"]
        status, body = ws.http(
            "http://127.0.0.1:8011/v1/chat/completions",
            {"model": "Qwen/Qwen2.5-0.5B-Instruct", "messages": [{"role": "user", "content": "x"}]},
        )
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
        assert ws.used_mib()[0] == base[0] + int(24564 * 0.5)
    finally:
        stop(ws, "lab-test-vllm")


def test_vllm_refuses_when_free_memory_is_below_its_utilization(ws):
    unit(
        ws,
        "lab-test-cotenant",
        {
            "CUDA_VISIBLE_DEVICES": "0",
            "GPUFLEET_STANDIN_VISION_VRAM_MIB": "8000",
            "GPUFLEET_STANDIN_SIDECAR_STARTUP_SECONDS": "0",
        },
        "/usr/local/bin/vision-server --port 18003",
    )
    try:
        ws.wait_http("http://127.0.0.1:18003/health")
        run = ws.sh(
            "CUDA_VISIBLE_DEVICES=0 GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS=0 HF_ENDPOINT=%s "
            % HF_ENDPOINT
            + VLLM.format(port=8012, util=0.9),
            check=False,
        )
        assert run.returncode == 1
        assert re.search(
            r"ValueError: Free memory on device \(\d+\.\d+/23\.99 GiB\) on startup is less than desired "  # noqa: E501
            r"GPU memory utilization \(0\.9, 21\.59 GiB\)",
            run.stderr,
        ), run.stderr
    finally:
        stop(ws, "lab-test-cotenant")


def test_vllm_crashes_when_a_cotenant_frees_memory_while_it_profiles(ws):
    """Seed 003: Ollama unloads while vLLM profiles; vLLM dies with its real assertion."""
    unit(
        ws,
        "lab-test-ollama0",
        {"CUDA_VISIBLE_DEVICES": "0", "OLLAMA_HOST": "127.0.0.1:11440",
         "OLLAMA_MODELS": fresh_models(ws, "lab-test-ollama0")},
        "/usr/local/bin/ollama serve",
    )
    try:
        ws.wait_http("http://127.0.0.1:11440/api/version")
        ws.pull_model("http://127.0.0.1:11440", "qwen2.5:7b")
        status, _body = ws.http(
            "http://127.0.0.1:11440/api/generate", {"model": "qwen2.5:7b", "keep_alive": -1}
        )
        assert status == 200
        env = {
            "CUDA_VISIBLE_DEVICES": "0",
            "HF_ENDPOINT": HF_ENDPOINT,
            "GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "0",
            "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0.2",
            "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "3",
        }
        unit(ws, "lab-test-vllm", env, VLLM.format(port=8013, util=0.5))
        time.sleep(0.8)  # vLLM has its snapshot and is loading / profiling
        status, body = ws.http(
            "http://127.0.0.1:11440/api/generate", {"model": "qwen2.5:7b", "keep_alive": 0}
        )
        assert body["done_reason"] == "unload"
        deadline = time.time() + 20
        while ws.sh("systemctl is-active lab-test-vllm", check=False).stdout.strip() in (
            "active",
            "activating",
        ):
            assert time.time() < deadline, "vLLM should have crashed"
            time.sleep(0.2)
        result = ws.sh("systemctl show -p Result --value lab-test-vllm").stdout.strip()
        log = ws.sh("journalctl -u lab-test-vllm --no-pager -o cat").stdout
        match = PROFILING.search(log)
        assert result == "exit-code" and match, log
        assert float(match.group(2)) > float(match.group(1))
    finally:
        stop(ws, "lab-test-vllm")
        stop(ws, "lab-test-ollama0")


# --- GPU containers through the host's engine -----------------------------------------------------

COMPOSE = """
services:
  research:
    image: %s
    ports: ["11436:11434"]
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ['1']
              capabilities: [gpu]
  docling:
    image: %s
    ports: ["5001:5001"]
""" % (lab_image("ollama/ollama:latest"), lab_image("quay.io/docling-project/docling-serve:latest"))


def test_compose_service_with_device_ids_1_sees_only_gpu1(ws):
    ws.sh("mkdir -p /srv/labtest && cat > /srv/labtest/compose.yml", input=COMPOSE)
    base = ws.used_mib()
    try:
        ws.sh("cd /srv/labtest && docker compose up -d --quiet-pull", timeout=300)
        environ = ws.sh("docker exec labtest-research-1 cat /proc/1/environ").stdout.split("\0")
        assert "NVIDIA_VISIBLE_DEVICES=1" in environ
        requests = json.loads(
            ws.sh(
                "docker inspect -f '{{json .HostConfig.DeviceRequests}}' labtest-research-1"
            ).stdout
        )
        assert requests[0]["Driver"] == "nvidia" and requests[0]["DeviceIDs"] == ["1"]
        # Inside: one GPU, renumbered 0, the host's GPU 1 (real pynvml, stand-in NVML).
        assert ws.sh("docker exec labtest-research-1 nvidia-smi -L").stdout.splitlines() == [
            "GPU 0: NVIDIA RTX A400 (UUID: %s)" % GPU1_UUID
        ]
        no_gpu = ws.sh("docker exec labtest-docling-1 cat /proc/1/environ").stdout
        assert "NVIDIA_VISIBLE_DEVICES" not in no_gpu
        # The container's VRAM is seen by the host's NVML on GPU 1 (and nowhere else).
        ws.wait_http("http://127.0.0.1:11436/api/version")
        ws.pull_model("http://127.0.0.1:11436", "qwen2.5:1.5b")
        status, body = ws.http(
            "http://127.0.0.1:11436/api/generate",
            {"model": "qwen2.5:1.5b", "prompt": "hi", "stream": False},
        )
        assert status == 200 and GPU1_UUID in body["response"]
        size = ws.http("http://127.0.0.1:11436/api/ps")[1]["models"][0]["size_vram"] // 2**20
        used, _when = ws.wait_used(1, lambda u: u == base[1] + size)
        assert used[0] == base[0]
        ws.wait_http("http://127.0.0.1:5001/health")
    finally:
        ws.sh("cd /srv/labtest && docker compose down -t 5", check=False)
    ws.wait_used(1, lambda u: u == base[1])  # the container is gone: freed after the drain


def test_unknown_device_fails_like_the_real_toolkit(ws):
    run = ws.sh(
        "docker run --rm --gpus '\"device=7\"' %s true" % STANDIN, check=False, timeout=300
    )
    assert run.returncode != 0
    assert "unknown device" in run.stderr


@pytest.mark.parametrize(
    "spec, expected", [("all", 2), ("0", 1), ("GPU-5a1c0d3e-1a2b-4c3d-8e9f-a40000000001", 1)]
)
def test_gpus_flag_gives_the_container_those_gpus(ws, spec, expected):
    out = ws.sh(
        "docker run --rm --gpus '\"device=%s\"' %s nvidia-smi -L" % (spec, STANDIN)
        if spec != "all"
        else "docker run --rm --gpus all %s nvidia-smi -L" % STANDIN,
        timeout=300,
    ).stdout
    assert len(out.splitlines()) == expected
