# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the tests on the lab's dual box and CPU box (the dual_lab fixture).

Running a playbook there, converging, and reading back the real state: the containers'
DeviceRequests, Ollama's /api/ps, the processes NVML reports on each GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import yaml
from conftest import ROOT

HOSTS = ("lab-dual", "lab-edge")
GPU0 = "GPU-d0a1e2f3-0000-4000-8000-309000000000"
GPU1 = "GPU-d0a1e2f3-0000-4000-8000-309000000001"
# lab-dual2, the same box again (the apply tests run there, beside the site tests).
DUAL2_GPU0 = "GPU-d0a1e2f3-0000-4000-8000-309000000010"
DUAL2_GPU1 = "GPU-d0a1e2f3-0000-4000-8000-309000000011"
# lab-dual3, once more (the first-run and installed-collection tests start it empty).
DUAL3_GPU0 = "GPU-d0a1e2f3-0000-4000-8000-309000000020"
DUAL3_GPU1 = "GPU-d0a1e2f3-0000-4000-8000-309000000021"
PROJECT = "/opt/gpufleet"
PROJECT_FILES = ("compose.yml", "compose.gpu.yml", "compose.podman-gpu.yml", ".env",
                 "gpu-assignments.yml")
# The stand-in runners and sidecars are named like this in NVML (the real Ollama is
# /usr/bin/ollama): the placement must count them as ours, or a second run re-places.
MANAGED = {"services_placement_options": {
    "managed_processes": ["ollama*", "*vllm*", "vision*"]}}


def modes(gpu0, gpu1):
    """Which services run, and on which GPU, in each dual-gpu mode (seed 000)."""
    return {
        "ollama": {"ollama": gpu0, "vision": gpu0, "ollama_research": gpu1, "docling": None},
        "vllm": {"ollama": gpu0, "vision": gpu0, "vllm": gpu1, "docling": None},
        "mixed": {"ollama": gpu0, "vision": gpu0, "ollama_research": gpu1, "vllm": gpu1,
                  "docling": None},
    }


MODES = modes(GPU0, GPU1)
# The Ollama servers of the default catalog and the model each loads (vision: moondream2).
OLLAMA_MODEL = {"ollama": "llama3.2:3b", "ollama_research": "llama3.2:3b",
                "vision": "moondream:latest"}
HEALTH = {"ollama": 11434, "ollama_research": 11435, "vllm": 8000, "vision": 8002,
          "docling": 5001}
_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                    r"failed=(\d+)", re.MULTILINE)


def apply(tmp_path, limit, extra, *args, playbook="playbooks/apply.yml"):
    """Run a playbook (apply.yml unless said) on the lab inventory from the repository root.

    Returns (rc, output, {host: (ok, changed, failed)}). ``extra`` goes in as a vars file.
    """
    extra_file = tmp_path / ("vars-%d.json" % time.monotonic_ns())
    extra_file.write_text(json.dumps(dict(MANAGED, **extra)))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_NOCOLOR="1")
    t0 = time.time()
    proc = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i",
         os.path.join(ROOT, "inventory", "lab"), playbook,
         "--limit", limit, "-e", "@%s" % extra_file, *args],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=600)
    sys.stderr.write("%s %s %s %s: %.1f s\n" % (playbook, limit, extra, args, time.time() - t0))
    out = proc.stdout + proc.stderr
    recap = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(5)))
             for m in _RECAP.finditer(out)}
    return proc.returncode, out, recap


def converge(tmp_path, limit, extra, *args, playbook="playbooks/apply.yml", check=True):
    """Apply, then apply again (and in check mode): those must change nothing.

    Returns the output of the first run.
    """
    rc, first, recap = apply(tmp_path, limit, extra, *args, playbook=playbook)
    assert rc == 0, first
    rc, out, recap = apply(tmp_path, limit, extra, *args, playbook=playbook)
    assert rc == 0, out
    assert recap[limit][1] == 0, "second run changed something:\n" + out
    if check:
        rc, out, recap = apply(tmp_path, limit, extra, "--check", *args, playbook=playbook)
        assert rc == 0, out
        assert recap[limit][1] == 0, "check mode after a converged run would change:\n" + out
    return first


def broken_vllm_catalog():
    """The default catalog with a vLLM that cannot start: two-way tensor parallelism on the
    one GPU it is given."""
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    catalog["vllm"]["command"] = ["--tensor-parallel-size", "2"]
    return catalog


def inspect(host, container):
    return json.loads(host.sh("docker inspect %s" % container).stdout)[0]


def gpu_processes(host):
    """{GPU UUID: [process names holding memory]} as NVML (the real pynvml) reports them."""
    out = host.py(PROCS)
    return json.loads(out)


PROCS = """
import json, pynvml
pynvml.nvmlInit()
out = {}
for i in range(pynvml.nvmlDeviceGetCount()):
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
    except pynvml.NVMLError_GpuIsLost:  # a GPU off the bus holds nothing we can see
        continue
    names = []
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
        with open('/proc/%d/cmdline' % proc.pid) as handle:
            names.append(handle.read().replace('\\0', ' ').strip())
    out[pynvml.nvmlDeviceGetUUID(h)] = names
print(json.dumps(out))
"""


def sha256s(host):
    script = "cd %s && sha256sum %s" % (PROJECT, " ".join(PROJECT_FILES))
    return dict(reversed(line.split()) for line in host.sh(script).stdout.splitlines())


def clear_compose(host):
    """Remove the compose project's containers (the systemd instances use the same ports)."""
    host.sh("docker ps -aq --filter label=com.docker.compose.project=gpufleet"
            " | xargs -r docker rm -f >/dev/null")


def clear_systemd(host):
    """Stop the systemd instances (the compose services use the same ports)."""
    host.sh("for unit in $(systemctl list-units --all --plain --no-legend 'ollama@*' 'vllm@*'"
            " | awk '{print $1}'); do systemctl disable --now $unit 2>/dev/null; done")


def assert_compose_state(host, expected):
    """Containers with the expected device requests, healthy, the GPU really used."""
    running = set(host.sh("docker ps --format '{{.Names}}'").stdout.split())
    assert running == {"gpufleet-%s-1" % name for name in expected}, running
    for name, uuid in expected.items():
        info = inspect(host, "gpufleet-%s-1" % name)
        requests = info["HostConfig"]["DeviceRequests"] or []
        assert [r["DeviceIDs"] for r in requests] == ([[uuid]] if uuid else []), (name, requests)
        if uuid:
            assert requests[0]["Driver"] == "nvidia"
        status, payload = host.http("http://127.0.0.1:%d/%s" % (
            HEALTH[name], "api/version" if name in OLLAMA_MODEL else "health"))
        assert status == 200, (name, payload)
    for name, uuid in expected.items():
        if name in OLLAMA_MODEL:
            # A no-op when verify loaded it; after a rollback the model loads here.
            status, payload = host.http("http://127.0.0.1:%d/api/generate" % HEALTH[name],
                                        body={"model": OLLAMA_MODEL[name]})
            assert status == 200, payload
            status, payload = host.http("http://127.0.0.1:%d/api/ps" % HEALTH[name])
            models = payload["models"]
            assert len(models) == 1 and models[0]["size_vram"] == models[0]["size"], payload
            wait_process(host, uuid, "ollama.py runner")
        elif name == "vllm":
            wait_process(host, uuid, "vllm")


def wait_process(host, uuid, needle, timeout=15.0):
    """NVML's processes once one on GPU uuid matches (the relay syncs a new one in 0.1 s)."""
    deadline = time.time() + timeout
    while True:
        procs = gpu_processes(host)
        if any(needle in p for p in procs[uuid]):
            return procs
        assert time.time() < deadline, (uuid, needle, procs)
        time.sleep(0.2)


def reboot(host, timeout=120.0):
    """Restart the host's container: systemd and its Docker engine start again, as at a boot
    (the outer engine: DOCKER_HOST, set by the lab fixtures)."""
    subprocess.run(["docker", "restart", host.name], check=True, capture_output=True, timeout=180)
    deadline = time.time() + timeout
    while host.sh("systemctl is-system-running --wait >/dev/null 2>&1; docker info >/dev/null"
                  " 2>&1 && echo up", check=False).stdout.strip() != "up":
        assert time.time() < deadline, "%s did not come back" % host.name
        time.sleep(1)


def active_units(host):
    units = host.sh("systemctl list-units --plain --no-legend --state=active"
                    " 'ollama@*' 'vllm@*'").stdout.split()
    return {unit for unit in units if unit.endswith(".service")}
