# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/apply.yml on the lab's dual box and CPU box: apply, verify, idempotence, rollback.

Its own session fixture starts lab-dual and lab-cpu (never lab-ws or lab-spark, which other
tests use). Every case asserts real state: the containers' DeviceRequests, Ollama's /api/ps,
the instances' environment, the processes NVML reports on each GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import LAB, ROOT, Host, _docker_host

HOSTS = ("lab-dual", "lab-cpu")
GPU0 = "GPU-d0a1e2f3-0000-4000-8000-309000000000"
GPU1 = "GPU-d0a1e2f3-0000-4000-8000-309000000001"
PROJECT = "/opt/gpufleet"
PROJECT_FILES = ("compose.yml", "compose.gpu.yml", "compose.podman-gpu.yml", ".env",
                 "gpu-assignments.yml")
# The stand-in runners and sidecars are named like this in NVML (the real Ollama is
# /usr/bin/ollama): the placement must count them as ours, or a second run re-places.
MANAGED = {"services_placement_options": {
    "managed_processes": ["ollama*", "*vllm*", "vision*"]}}
# Which services run, and on which GPU, in each dual-gpu mode (seed 000).
MODES = {
    "ollama": {"ollama": GPU0, "vision": GPU0, "ollama_research": GPU1, "docling": None},
    "vllm": {"ollama": GPU0, "vision": GPU0, "vllm": GPU1, "docling": None},
    "mixed": {"ollama": GPU0, "vision": GPU0, "ollama_research": GPU1, "vllm": GPU1,
              "docling": None},
}
HEALTH = {"ollama": 11434, "ollama_research": 11435, "vllm": 8000, "vision": 8002,
          "docling": 5001}
_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                    r"failed=(\d+)", re.MULTILINE)


@pytest.fixture(scope="session")
def apply_lab(tmp_path_factory):
    """Start lab-dual and lab-cpu, yield {name: Host}; remove them afterwards."""
    os.environ["DOCKER_HOST"] = _docker_host()
    hosts = ",".join(HOSTS)
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), "up", "--hosts", hosts],
                          check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, "lab up failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    sys.stderr.write("lab up (%s) in %.1f s\n" % (hosts, time.time() - t0))
    dual = Host("lab-dual")
    # The catalog's vision image is gpufleet/vision; the lab ships it as gpufleet-lab/vision.
    dual.sh("docker tag gpufleet-lab/vision:latest gpufleet/vision:latest")
    for host in (dual, Host("lab-cpu")):
        host.sh(LAB_SYSTEMD_PATH)
    yield {name: Host(name) for name in HOSTS}
    if os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), "down", "--hosts", hosts],
                       check=False, capture_output=True, timeout=300)


# What a real GPU box has and the lab host lacks, for the hardened units (systemd path): the
# `render` group, and write access for the `video` group to where the stand-in driver counts
# VRAM (a real driver needs /dev/nvidia*, which ProtectSystem=strict leaves alone).
LAB_SYSTEMD_PATH = """
groupadd -f -r render
chgrp video /run/gpufleet-nvml/procs && chmod 1775 /run/gpufleet-nvml/procs
for unit in ollama vllm; do
  mkdir -p /etc/systemd/system/$unit@.service.d
  printf '[Service]\\nReadWritePaths=/run/gpufleet-nvml/procs\\n' \\
    > /etc/systemd/system/$unit@.service.d/gpufleet-lab.conf
done
"""


def apply(tmp_path, limit, extra, *args):
    """Run playbooks/apply.yml; returns (rc, output, {host: (ok, changed, failed)})."""
    extra_file = tmp_path / ("vars-%d.json" % time.monotonic_ns())
    extra_file.write_text(json.dumps(dict(MANAGED, **extra)))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="1")
    t0 = time.time()
    proc = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i",
         os.path.join(ROOT, "inventory", "lab"), os.path.join(ROOT, "playbooks", "apply.yml"),
         "--limit", limit, "-e", "@%s" % extra_file, *args],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=600)
    sys.stderr.write("apply %s %s %s: %.1f s\n" % (limit, extra, args, time.time() - t0))
    out = proc.stdout + proc.stderr
    recap = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(5)))
             for m in _RECAP.finditer(out)}
    return proc.returncode, out, recap


def converge(tmp_path, limit, extra):
    """Apply, then apply again and in check mode: both must change nothing."""
    rc, out, recap = apply(tmp_path, limit, extra)
    assert rc == 0, out
    rc, out, recap = apply(tmp_path, limit, extra)
    assert rc == 0, out
    assert recap[limit][1] == 0, "second run changed something:\n" + out
    rc, out, recap = apply(tmp_path, limit, extra, "--check")
    assert rc == 0, out
    assert recap[limit][1] == 0, "check mode after a converged run would change:\n" + out


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
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
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
            HEALTH[name], "api/version" if name.startswith("ollama") else "health"))
        assert status == 200, (name, payload)
    for name, uuid in expected.items():
        if name.startswith("ollama"):
            # A no-op when verify loaded it; after a rollback the model loads here.
            status, payload = host.http("http://127.0.0.1:%d/api/generate" % HEALTH[name],
                                        body={"model": "llama3.2:3b"})
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


@pytest.mark.parametrize("mode", ["ollama", "vllm"])
def test_compose_dual_gpu_mode(apply_lab, tmp_path, mode):
    host = apply_lab["lab-dual"]
    clear_systemd(host)
    converge(tmp_path, "lab-dual", {"services_dual_gpu_mode": mode})
    assert_compose_state(host, MODES[mode])
    env = host.sh("cat %s/.env" % PROJECT).stdout
    assert "COMPOSE_PROFILES=dual-gpu,dual-gpu-%s" % mode in env


def test_compose_dual_gpu_mixed(apply_lab, tmp_path):
    host = apply_lab["lab-dual"]
    clear_systemd(host)
    converge(tmp_path, "lab-dual", {"services_dual_gpu_mode": "mixed"})
    assert_compose_state(host, MODES["mixed"])


def test_compose_cpu_profile(apply_lab, tmp_path):
    host = apply_lab["lab-cpu"]
    converge(tmp_path, "lab-cpu", {"services_profile": "cpu"})
    running = set(host.sh("docker ps --format '{{.Names}}'").stdout.split())
    assert running == {"gpufleet-ollama-1", "gpufleet-docling-1"}
    assert not inspect(host, "gpufleet-ollama-1")["HostConfig"]["DeviceRequests"]
    status, payload = host.http("http://127.0.0.1:11434/api/ps")
    assert status == 200
    assert [(m["name"], m["size_vram"]) for m in payload["models"]] == [("llama3.2:3b", 0)]
    status, payload = host.http("http://127.0.0.1:11434/api/standin")
    assert payload["mode"] == "cpu", payload


def test_compose_rollback_restores_files_and_services(apply_lab, tmp_path):
    host = apply_lab["lab-dual"]
    clear_systemd(host)
    rc, out, recap = apply(tmp_path, "lab-dual", {"services_dual_gpu_mode": "ollama"})
    assert rc == 0, out
    before = sha256s(host)
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    # A vLLM that cannot start: two-way tensor parallelism on the one GPU it is given.
    catalog["vllm"]["command"] = ["--tensor-parallel-size", "2"]
    rc, out, recap = apply(tmp_path, "lab-dual", {
        "services_dual_gpu_mode": "vllm", "services_catalog": catalog,
        "compose_verify_timeout": 15})
    assert rc != 0, out
    assert recap["lab-dual"][2] == 1, out
    assert re.search(r"compose: Wait for the health endpoint of each service: vllm: .*"
                     r"rolled back to the previous files and services "
                     r"\(docling, ollama, ollama_research, vision\)", out), out
    assert sha256s(host) == before
    assert_compose_state(host, MODES["ollama"])


def clear_compose(host):
    """Remove the compose project's containers (the systemd instances use the same ports)."""
    host.sh("docker ps -aq --filter label=com.docker.compose.project=gpufleet"
            " | xargs -r docker rm -f >/dev/null")


@pytest.mark.parametrize("mode", ["ollama", "vllm"])
def test_systemd_dual_gpu_mode(apply_lab, tmp_path, mode):
    host = apply_lab["lab-dual"]
    clear_compose(host)
    converge(tmp_path, "lab-dual", {"gpufleet_runtime": "systemd",
                                    "services_dual_gpu_mode": mode})
    expected = {name: uuid for name, uuid in MODES[mode].items()
                if name in ("ollama", "ollama_research", "vllm")}
    units = host.sh("systemctl list-units --plain --no-legend --state=active"
                    " 'ollama@*' 'vllm@*'").stdout.split()
    wanted = {"%s@%s.service" % ("vllm" if name == "vllm" else "ollama", name)
              for name in expected}
    assert wanted == {unit for unit in units if unit.endswith(".service")}
    procs = gpu_processes(host)
    for name, uuid in expected.items():
        unit = "%s@%s.service" % ("vllm" if name == "vllm" else "ollama", name)
        show = host.sh("systemctl show -p ActiveState -p MainPID %s" % unit).stdout
        assert "ActiveState=active" in show, show
        pid = re.search(r"MainPID=(\d+)", show).group(1)
        environ = host.sh("tr '\\0' '\\n' < /proc/%s/environ" % pid).stdout.split()
        assert "CUDA_VISIBLE_DEVICES=%s" % uuid in environ, (unit, environ)
        if name == "vllm":
            assert any("vllm" in p for p in procs[uuid]), (name, procs)
            continue
        status, payload = host.http("http://127.0.0.1:%d/api/ps" % HEALTH[name])
        assert status == 200, payload
        models = payload["models"]
        assert len(models) == 1 and models[0]["size_vram"] == models[0]["size"], payload
        assert any("ollama.py runner" in p for p in procs[uuid]), (name, procs)
