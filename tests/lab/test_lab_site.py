# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""site.yml from the repository root on the lab's dual box and a CPU box, lab-edge.

`ansible-playbook site.yml -e dual_gpu_mode=<mode>` converges lab-dual in each seed-000 mode
(preflight summary, placement, compose apply and verify, health table, router config); a second
run changes nothing; the mode is remembered in the host's .env. lab-edge converges in the runs
of the first mode (profile cpu, whatever the mode: the other modes' runs leave it out).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml
from conftest import ROOT
from dual import GPU1, MODES, PROJECT, apply, assert_compose_state, clear_systemd, inspect

SITE = "site.yml"
LIMIT = "lab-dual,lab-edge"
# Planted in the router's keys: it may appear only in the 0600 files that hold keys.
SECRET = "sk-gpufleet-planted-7d1c2f9a"
# A per-service secret (services_secret_environment), with a '$' and a space kept as written.
SERVICE_SECRET = "svc-planted$9e4b 1a"
HF_TOKEN = "hf_plantedLabSite0a1b2c"


def host_json(host, path):
    return json.loads(host.sh("cat %s" % path).stdout)


def run_site(tmp_path, extra, *args, limit=LIMIT):
    """site.yml on the boxes of limit at once; asserts it succeeded; returns (output, recap)."""
    rc, out, recap = apply(tmp_path, limit, extra, *args, playbook=SITE)
    assert rc == 0, out
    assert set(recap) == set(limit.split(",")), out
    return out, recap


@pytest.mark.parametrize("mode", ["vllm", "ollama", "mixed"])
def test_site_converges_the_dual_and_the_cpu_box(dual_lab, tmp_path, mode):
    """First run, then (vllm, mixed) a second one that changes nothing (in mixed without -e,
    the mode comes from the host's .env; then check mode). The vllm run plants a router
    key."""
    dual, cpu = dual_lab["lab-dual"], dual_lab["lab-edge"]
    limit = LIMIT if mode == "vllm" else "lab-dual"
    hosts = limit.split(",")
    clear_systemd(dual)
    extra = {"dual_gpu_mode": mode}
    if mode == "vllm":
        extra["router_api_keys"] = {"ollama": SECRET}
        extra["services_secret_environment"] = {"ollama": {"LAB_SERVICE_TOKEN": SERVICE_SECRET}}
        # The user's own token in the project .env: kept, never shown by --diff.
        dual.sh("mkdir -p /opt/gpufleet && touch /opt/gpufleet/.env && "
                "sed -i '/^HF_TOKEN=/d' /opt/gpufleet/.env && "
                "echo HF_TOKEN=%s >> /opt/gpufleet/.env" % HF_TOKEN)
    out, recap = run_site(tmp_path, extra, *(("-v", "--diff") if mode == "vllm" else ()),
                          limit=limit)
    assert_first_run(out, dual, mode)
    if mode == "vllm":
        assert_secret_kept(out, dual)
        assert_verify_knows_the_engine_by_its_cgroup(dual, tmp_path)
    if mode != "ollama":  # a re-run changes nothing (vllm: with -e; mixed: the .env's mode)
        again, recap = run_site(tmp_path, {} if mode == "mixed" else extra, limit=limit)
        assert [recap[name][1] for name in hosts] == [0] * len(hosts), again
    if mode == "mixed":
        assert "DUAL_GPU_MODE=mixed" in again
        again, recap = run_site(tmp_path, extra, "--check", limit=limit)
        assert [recap[name][1] for name in hosts] == [0] * len(hosts), again
        assert_vllm_loaded_before_ollama(dual)
    assert_compose_state(dual, MODES[mode])
    if "lab-edge" in hosts:
        assert_cpu_box(cpu, out)


def assert_first_run(out, host, mode):
    # Preflight: one summary block with the download total of this profile and mode.
    assert "Profile: dual-gpu (recommended: dual-gpu, 2 GPU(s)), DUAL_GPU_MODE=%s" % mode in out
    block = out[out.index("Preflight lab-dual"):]
    total = re.search(r"Total: (.+) to fetch \((\d+) of (\d+) already present\)", block)
    assert total, out
    # vLLM's image and weights are fetched only in the modes that run it.
    assert bool(re.search(r"image\s+\S*vllm/vllm-openai", block)) == (mode != "ollama"), block
    assert bool(re.search(r"huggingface\s+Qwen/Qwen2.5-1.5B-Instruct", block)) == (
        mode != "ollama"), block
    # Health: the table of every service of the plan, all healthy.
    assert "lab-dual: HEALTHY" in out, out
    for name in MODES[mode]:
        assert re.search(r"\b%s\s+\S+\s+healthy\b" % name, out), (name, out)
    env = host.sh("cat %s/.env" % PROJECT).stdout
    assert "DUAL_GPU_MODE=%s" % mode in env
    assert "COMPOSE_PROFILES=dual-gpu,dual-gpu-%s" % mode in env
    record = host_json(host, "/etc/gpufleet/apply.json")
    assert record["result"] == "ok" and record["runtime"] == "compose"
    assert record["services"] == sorted(MODES[mode]), record
    # Router: seed 000's llm.yaml follows the mode (vllm_research only where vLLM runs).
    text = json.dumps(yaml.safe_load(host.sh("cat /opt/gpufleet/config/llm.yaml").stdout))
    assert ("vllm_research" in text) == (mode != "ollama"), text
    assert ("ollama_research" in text) == (mode != "vllm"), text


VERIFY_PROBE = """
docker rm -f gpufleet-probe-1 >/dev/null 2>&1
docker run -d --name gpufleet-probe-1 --label com.docker.compose.project=gpufleet \
  --label com.docker.compose.service=probe --gpus '"device=%s"' --entrypoint sleep \
  registry.lab:5000/vllm/vllm-openai:latest 600 >/dev/null
""" % GPU1


def assert_verify_knows_the_engine_by_its_cgroup(host, tmp_path):
    """vLLM holds GPU 1 under its real process title (VLLM::EngineCore, cut to 15 characters by
    the kernel), and the apply's verify found it there by its cgroup. A container of the project
    that was given GPU 1 but holds nothing on it fails the same verify, which names vLLM's
    process as another container's: a name or "some process on that GPU" would have passed."""
    procs = json.loads(host.py(NVML_NAMES))
    assert "VLLM::EngineCor" in procs[GPU1], procs
    host.sh(VERIFY_PROBE)
    try:
        check = {"runtime": "compose", "timeout": 5, "services": [
            {"name": "probe", "project": "gpufleet", "service": "probe", "device_id": GPU1,
             "gpu_index": 1}]}
        rc, out = ansible_module(tmp_path, "lab-dual", "gpufleet.inference.service_verify", check)
        assert rc != 0, out
        vllm_id = host.sh("docker inspect -f '{{.Id}}' gpufleet-vllm-1").stdout.strip()
        assert re.search(r"GPU detected is not GPU used: no process of probe \(container \w+\) "
                         r"holds memory on GPU 1 \(%s\); processes there: pid \d+ "
                         r"VLLM::EngineCor \d+ MiB \(container %s\)" % (GPU1, vllm_id[:12]),
                         out), out
    finally:
        host.sh("docker rm -f gpufleet-probe-1 >/dev/null 2>&1")


# Process names as NVML (the real pynvml) gives them, by GPU UUID.
NVML_NAMES = """
import json, pynvml
pynvml.nvmlInit()
out = {}
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    names = [pynvml.nvmlSystemGetProcessName(p.pid)
             for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
    out[pynvml.nvmlDeviceGetUUID(h)] = [n.decode() if isinstance(n, bytes) else n for n in names]
print(json.dumps(out))
"""


def ansible_module(tmp_path, host, module, args):
    """One module run with `ansible` on a lab host; returns (rc, output)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible"), "-i",
         os.path.join(ROOT, "inventory", "lab"), host, "-m", module, "-a", json.dumps(args)],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def assert_secret_kept(out, host):
    """The planted key is in no output (-v --diff) and only in files of mode 0600/0640."""
    for secret in (SECRET, SERVICE_SECRET, HF_TOKEN):
        assert secret not in out
    assert "HF_TOKEN=(hidden)" in out
    assert "HF_TOKEN=%s" % HF_TOKEN in host.sh("cat /opt/gpufleet/.env").stdout
    holders = host.sh("grep -rlF %s /opt/gpufleet /etc/gpufleet /etc/systemd/system || true"
                      % SECRET).stdout.split()
    assert holders, "the key was written nowhere"
    for path in holders:
        mode = host.sh("stat -c %%a %s" % path).stdout.strip()
        assert mode in ("600", "640"), (path, mode)
    # The service's secret: in its container as written, on disk only in its 0600 file.
    env = inspect(host, "gpufleet-ollama-1")["Config"]["Env"]
    assert "LAB_SERVICE_TOKEN=%s" % SERVICE_SECRET in env, env
    # (written dotenv-quoted there, '$' escaped: look for the part before it)
    holders = host.sh("grep -rlF svc-planted /opt/gpufleet | grep -v /.gpufleet-previous/"
                      " || true").stdout.split()
    assert holders == ["/opt/gpufleet/secrets/ollama.env"], holders
    assert host.sh("stat -c %a /opt/gpufleet/secrets/ollama.env").stdout.strip() == "600"


def assert_vllm_loaded_before_ollama(host):
    """Mixed: Ollama next to vLLM keeps its model (no unload in vLLM's profiling window), and
    vLLM finished profiling before Ollama loaded on GPU 1 (docker's own log timestamps)."""
    info = json.loads(host.sh("docker inspect gpufleet-ollama_research-1").stdout)[0]
    assert "OLLAMA_KEEP_ALIVE=-1" in info["Config"]["Env"], info["Config"]["Env"]
    vllm_ready = first_log_stamp(host, "gpufleet-vllm-1", "Application startup complete")
    ollama_loaded = first_log_stamp(host, "gpufleet-ollama_research-1", "loaded model")
    assert vllm_ready < ollama_loaded, (vllm_ready, ollama_loaded)


def first_log_stamp(host, container, needle):
    """RFC 3339 time (docker logs -t) of the first log line of container holding needle."""
    lines = host.sh("docker logs -t %s 2>&1" % container).stdout.splitlines()
    stamps = [line.split()[0] for line in lines if needle in line]
    assert stamps, (container, needle, lines[-20:])
    return stamps[0]


def assert_cpu_box(host, out):
    assert "Profile: cpu (recommended: cpu, 0 GPU(s))" in out, out
    assert "lab-edge: HEALTHY" in out, out
    running = set(host.sh("docker ps --format '{{.Names}}'").stdout.split())
    assert running == {"gpufleet-ollama-1", "gpufleet-docling-1"}
    status, payload = host.http("http://127.0.0.1:11434/api/ps")
    assert status == 200, payload
    assert [(m["name"], m["size_vram"]) for m in payload["models"]] == [("llama3.2:3b", 0)]
