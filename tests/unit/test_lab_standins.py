# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's stand-in engines show in NVML by their engine's process title (their
/proc/<pid>/comm, 15 characters), never by a friendly name they register.

Real vLLM titles its engine core ``VLLM::EngineCore`` (prefix VLLM_PROCESS_NAME_PREFIX; vLLM
PRs 21445, 22205), which the kernel's comm cuts to ``VLLM::EngineCor``; Ollama's GPU memory is
held by its runner, a subprocess running the ollama binary. The stand-ins run here on the
stand-in NVML library, no lab host needed (lab/README.md, "What the driver shows of them").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._nvml import read_gpus

SERVERS = Path(__file__).resolve().parents[2] / "lab" / "servers"
GPU = {"name": "NVIDIA RTX A5500", "uuid": "GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60",
       "pci_bus_id": "00000000:01:00.0", "memory_total_mib": 24564, "memory_reserved_mib": 309,
       "memory_used_mib": 5, "compute_capability": "8.6"}
QUICK = {"GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "0", "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0",
         "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "0", "GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS": "0"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def standin(nvml_state, tmp_path):
    """Start a stand-in server on the stand-in driver; stopped (by its pid) afterwards."""
    nvml_state.write_gpus([GPU])
    started = []

    def start(argv, **env):
        full = {k: v for k, v in os.environ.items()
                if k not in ("CUDA_VISIBLE_DEVICES", "VLLM_PROCESS_NAME_PREFIX")}
        full.update(QUICK, GPUFLEET_NVML_STATE=nvml_state.path, HOME=str(tmp_path), **env)
        proc = subprocess.Popen([str(SERVERS / argv[0]), *argv[1:]], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url, proc, body=None, timeout=20.0):
    deadline = time.time() + timeout
    data = None if body is None else json.dumps(body).encode()
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data),
                                        timeout=5) as answer:
                return json.loads(answer.read() or b"null")
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "%s did not answer" % url
            time.sleep(0.1)


def comm(pid):
    with open("/proc/%d/comm" % pid, encoding="utf-8") as handle:
        return handle.read().strip()


@pytest.mark.parametrize(("prefix", "shown"), [
    pytest.param(None, "VLLM::EngineCor", id="default-prefix"),
    pytest.param("gpufleet", "gpufleet::Engin", id="VLLM_PROCESS_NAME_PREFIX"),
])
def test_vllm_standin_shows_as_its_engine_core(standin, nvml_lib, use_nvml_lib, prefix, shown):
    port = free_port()
    env = {"VLLM_PROCESS_NAME_PREFIX": prefix} if prefix else {}
    proc = standin(["vllm", "serve", "facebook/opt-125m", "--port", str(port),
                    "--gpu-memory-utilization", "0.5"], **env)
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    pynvml = use_nvml_lib(nvml_lib())
    processes = read_gpus(pynvml)["gpus"][0]["processes"]
    assert [(p["pid"], p["name"]) for p in processes] == [(proc.pid, shown)]
    assert comm(proc.pid) == shown
    assert "vllm" not in shown  # a name match on "vllm" finds the real engine no more


def test_ollama_standin_memory_is_held_by_a_runner_named_ollama(
        standin, nvml_lib, use_nvml_lib):
    port = free_port()
    proc = standin(["ollama", "serve"], OLLAMA_HOST="127.0.0.1:%d" % port)
    base = "http://127.0.0.1:%d" % port
    wait_http(base + "/api/version", proc)
    wait_http(base + "/api/generate", proc, body={"model": "llama3.2:3b"})
    pynvml = use_nvml_lib(nvml_lib())
    processes = read_gpus(pynvml)["gpus"][0]["processes"]
    assert [p["name"] for p in processes] == ["ollama"]
    runner = processes[0]["pid"]
    assert runner != proc.pid and comm(proc.pid) == "ollama"
    with open("/proc/%d/status" % runner, encoding="utf-8") as handle:
        assert "PPid:\t%d\n" % proc.pid in handle.read()  # the server's subprocess
