# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""site.yml on lab-multi: 8x A100 80 GB, NVLink pairs 0-1, 2-3, 4-5, 6-7, two NUMA nodes.

`auto` picks multi-gpu; the default catalog runs the dual-GPU stack on GPUs 0 and 1 and one
Ollama replica on every spare GPU; a tensor-parallel vLLM (`gpus: 2`) added to the catalog is
placed first on an empty NVLink pair. Every GPU ends up holding an engine's memory; the vLLM's
two workers (VLLM::Worker_TP) sit on its two GPUs inside its container, which was given exactly
those two; a second run changes nothing.
"""

from __future__ import annotations

import copy
import os
import re

import pytest
import yaml
from conftest import ROOT, _dual_boxes
from dual import apply, gpu_processes, inspect, wait_process

HOST = "lab-multi"
UUID = ["GPU-a100a5c2-8e3d-4f1a-b2c3-a1000000000%d" % i for i in range(8)]
TP = {
    "description": "vLLM across two GPUs (tensor parallel)",
    "engine": "vllm", "image": "vllm/vllm-openai:latest",
    "model": "Qwen/Qwen2.5-1.5B-Instruct", "gpus": 2, "vram_budget_mib": 20480,
    "ports": [{"host": 8001, "container": 8000}], "health": {"path": "/health", "port": 8000},
    "profiles": ["multi-gpu"], "modes": ["vllm"],
}
# Where each service runs: the pins of the default catalog, the NVLink pair the TP vLLM takes
# (the first empty one), one Ollama replica on each GPU left.
EXPECTED = {
    "ollama": [UUID[0]], "vision": [UUID[0]], "vllm": [UUID[1]], "vllm_tp": UUID[2:4],
    "ollama_spare_gpu4": [UUID[4]], "ollama_spare_gpu5": [UUID[5]],
    "ollama_spare_gpu6": [UUID[6]], "ollama_spare_gpu7": [UUID[7]], "docling": [],
}


@pytest.fixture(scope="module")
def multi():
    yield from _dual_boxes((HOST,))


def catalog():
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        result = copy.deepcopy(yaml.safe_load(handle)["services_catalog"])
    result["vllm_tp"] = TP
    return result


def test_every_gpu_serves_and_a_tp_vllm_spans_an_nvlink_pair(multi, tmp_path):
    host = multi[HOST]
    extra = {"dual_gpu_mode": "vllm", "services_catalog": catalog()}
    rc, out, recap = apply(tmp_path, HOST, extra, playbook="site.yml")
    assert rc == 0 and recap[HOST][2] == 0, out
    assert "Profile: multi-gpu (recommended: multi-gpu, 8 GPU(s))" in out, out
    assert "%s: HEALTHY" % HOST in out, out
    assert "vllm_tp: GPU 2, 3" in out, out
    assert not re.search(r"GPU [0-9, ]+ idle", out), out

    running = set(host.sh("docker ps --format '{{.Names}}'").stdout.split())
    assert running == {"gpufleet-%s-1" % name for name in EXPECTED}, running
    for name, uuids in EXPECTED.items():
        requests = inspect(host, "gpufleet-%s-1" % name)["HostConfig"]["DeviceRequests"] or []
        assert [r["DeviceIDs"] for r in requests] == ([uuids] if uuids else []), (name, requests)
    command = inspect(host, "gpufleet-vllm_tp-1")["Config"]["Cmd"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2", command

    # Every GPU holds an engine: the replicas' runners once a model is asked for.
    for k, gpu in enumerate(range(4, 8)):
        status, payload = host.http("http://127.0.0.1:%d/api/generate" % (11436 + k),
                                    body={"model": "llama3.2:3b"})
        assert status == 200, (gpu, payload)
        wait_process(host, UUID[gpu], "ollama.py runner")
    procs = gpu_processes(host)
    assert all(procs[uuid] for uuid in UUID), procs
    # The TP vLLM's memory is held by its workers, one on each of its GPUs, none elsewhere.
    for uuid in UUID[2:4]:
        assert len(procs[uuid]) == 1 and "VLLM::Worker_TP" in procs[uuid][0], procs
    assert not any("Worker_TP" in name for uuid in UUID[:2] + UUID[4:] for name in procs[uuid])
    status, payload = host.http("http://127.0.0.1:8001/v1/models")
    assert status == 200 and payload["data"][0]["id"] == TP["model"], payload

    rc, again, recap = apply(tmp_path, HOST, extra, playbook="site.yml")
    assert rc == 0 and recap[HOST][1:] == (0, 0), again
