# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/apply.yml on the lab's second dual box (lab-dual2): the systemd path, rollbacks,
a GPU lost.

The compose path of each dual-GPU mode is converged by site.yml (test_lab_site.py). Every case
asserts real state: the containers' DeviceRequests, Ollama's /api/ps, the instances'
environment, the processes NVML reports on each GPU.
"""

from __future__ import annotations

import json
import re

import pytest
from dual import (
    DUAL2_GPU0,
    DUAL2_GPU1,
    HEALTH,
    active_units,
    apply,
    assert_compose_state,
    broken_vllm_catalog,
    clear_compose,
    clear_systemd,
    converge,
    gpu_processes,
    modes,
    reboot,
    sha256s,
)

BOX = "lab-dual2"
GPU0, GPU1 = DUAL2_GPU0, DUAL2_GPU1
MODES = modes(GPU0, GPU1)


def test_compose_rollback_restores_files_and_services(dual2_lab, tmp_path):
    """site.yml: the broken vLLM fails verify; the files come back byte for byte, the previous
    services run again, the apply record says rolled_back, health and router do not run."""
    host = dual2_lab[BOX]
    clear_systemd(host)
    rc, out, recap = apply(tmp_path, BOX, {"dual_gpu_mode": "ollama"}, playbook="site.yml")
    assert rc == 0, out
    before = sha256s(host)
    rc, out, recap = apply(tmp_path, BOX, {
        "dual_gpu_mode": "vllm", "services_catalog": broken_vllm_catalog(),
        "compose_verify_timeout": 15}, playbook="site.yml")
    assert rc != 0, out
    assert recap[BOX][2] == 1, out
    assert re.search(r"compose: Verify the services: vllm: .*"
                     r"rolled back to the previous files and services "
                     r"\(docling, ollama, ollama_research, vision\)", out), out
    assert "gpufleet.inference.health :" not in out and "gpufleet.inference.router :" not in out
    assert sha256s(host) == before
    assert_compose_state(host, MODES["ollama"])
    record = json.loads(host.sh("cat /etc/gpufleet/apply.json").stdout)
    assert record["result"] == "rolled_back", record


def test_assigned_gpu_lost_at_apply_time_falls_back_with_a_warning(dual2_lab, tmp_path):
    """GPU 1 falls off the bus before the run of a host set to dual-gpu: ollama_research (pinned
    to GPU 1) goes to GPU 0 with a warning and really runs there (seed 001's runtime fallback).
    With profile auto the host would be single-gpu, which runs no ollama_research."""
    host = dual2_lab[BOX]
    clear_systemd(host)
    host.sh(LOSE_GPU1)
    try:
        rc, out, _recap = apply(tmp_path, BOX, {"services_dual_gpu_mode": "ollama",
                                                "services_profile": "dual-gpu"})
        assert rc == 0, out
        assert re.search(r"WARNING\]: .*ollama_research.*GPU 1", out), out
        assert_compose_state(host, dict(MODES["ollama"], ollama_research=GPU0))
    finally:
        host.sh(FIND_GPU1)


# The stand-in driver's state (lab/nvml/README.md): GPU 1 answers GPU_IS_LOST, as after an Xid 79.
LOSE_GPU1 = """
f=/etc/gpufleet-nvml/state
awk '{print} $1=="uuid" && $2=="%s" {print "lost 1"}' $f > $f.tmp && mv $f.tmp $f
grep -q '^lost 1' $f
""" % GPU1
FIND_GPU1 = """
f=/etc/gpufleet-nvml/state
grep -v '^lost 1$' $f > $f.tmp && mv $f.tmp $f
"""


@pytest.mark.parametrize("mode", ["ollama", "vllm", "mixed"])
def test_systemd_dual_gpu_mode(dual2_lab, tmp_path, mode):
    host = dual2_lab[BOX]
    clear_compose(host)
    extra = {"gpufleet_runtime": "systemd", "services_dual_gpu_mode": mode}
    if mode == "mixed":  # a re-run and check mode change nothing (once is enough)
        converge(tmp_path, BOX, extra)
    else:
        rc, out, _recap = apply(tmp_path, BOX, extra)
        assert rc == 0, out
    # Every inference engine is an instance; the vision sidecar is an Ollama server too.
    expected = {name: uuid for name, uuid in MODES[mode].items()
                if name in ("ollama", "ollama_research", "vision", "vllm")}
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


def test_systemd_modes_switch_with_the_drain_and_survive_a_reboot(dual2_lab, tmp_path):
    """gpufleet_runtime systemd, modes of the one catalog: instances outside the mode are
    stopped and disabled first and their GPU memory drains before the mode's instances start;
    the host records its mode, and a reboot brings back the mode's instances only."""
    host = dual2_lab[BOX]
    clear_compose(host)
    clear_systemd(host)
    systemd = {"gpufleet_runtime": "systemd"}
    rc, out, _recap = apply(tmp_path, BOX, dict(systemd, inference_mode="chat"),
                            playbook="site.yml")
    assert rc == 0, out
    assert active_units(host) == {"ollama@ollama.service"}
    rc, out, _recap = apply(tmp_path, BOX, dict(systemd, inference_mode="ingestion"),
                            playbook="site.yml")
    assert rc == 0, out
    drained = re.search(r"Wait until their GPU memory has drained\] \*+\n(\S+): \[%s\]" % BOX, out)
    assert drained and drained.group(1) == "ok", out
    assert active_units(host) == {"vllm@vllm.service"}
    assert host.sh("systemctl is-enabled ollama@ollama.service", check=False).stdout.strip() \
        == "disabled"
    env = host.sh("cat /opt/gpufleet/.env").stdout.splitlines()
    assert "INFERENCE_MODE=ingestion" in env, env  # what a run without a mode converges
    reboot(host)
    host.wait_http("http://127.0.0.1:%d/health" % HEALTH["vllm"], timeout=60)
    assert active_units(host) == {"vllm@vllm.service"}
    clear_systemd(host)


# The units and the instances' environment files (not the timestamped backups, `*~`, that a
# rewrite leaves beside them).
SYSTEMD_FILES = "/etc/systemd/system/ollama@.service /etc/systemd/system/vllm@.service " \
    "$(find /etc/gpufleet/instances -maxdepth 1 -type f ! -name '*~' | sort)"


def test_systemd_rollback_restores_units_and_instances(dual2_lab, tmp_path):
    host = dual2_lab[BOX]
    clear_compose(host)
    systemd = {"gpufleet_runtime": "systemd", "services_dual_gpu_mode": "ollama"}
    rc, out, recap = apply(tmp_path, BOX, systemd)
    assert rc == 0, out
    before = host.sh("sha256sum %s" % SYSTEMD_FILES).stdout
    rc, out, recap = apply(tmp_path, BOX, dict(
        systemd, services_dual_gpu_mode="vllm", services_catalog=broken_vllm_catalog(),
        systemd_units_verify_timeout=15))
    assert rc != 0, out
    assert recap[BOX][2] == 1, out
    assert re.search(r"systemd_units: .*vllm.*; rolled back to the last good files and instances "
                     r"\(ollama@ollama.service, ollama@ollama_research.service, "
                     r"ollama@vision.service\)", out), out
    assert host.sh("sha256sum %s" % SYSTEMD_FILES).stdout == before
    active = host.sh("systemctl list-units --plain --no-legend --state=active 'ollama@*' 'vllm@*'"
                     ).stdout.split()
    assert {u for u in active if u.endswith(".service")} == {
        "ollama@ollama.service", "ollama@ollama_research.service",
        "ollama@vision.service"}, active
    for name in ("ollama", "ollama_research", "vision"):
        status, payload = host.http("http://127.0.0.1:%d/api/version" % HEALTH[name])
        assert status == 200, (name, payload)


def wipe(host):
    """Nothing of ours on the host: no containers, project, records, lock or models."""
    clear_systemd(host)
    clear_compose(host)
    host.sh("rm -rf /opt/gpufleet /etc/gpufleet /run/gpufleet /srv/gpufleet")


NOTHING_WRITTEN = ("ls -d /opt/gpufleet /etc/gpufleet /run/gpufleet /srv/gpufleet"
                   " 2>/dev/null || true")


def project_containers(host):
    return host.sh("docker ps -a --filter label=com.docker.compose.project=gpufleet"
                   " --format '{{.Names}}'").stdout.split()


def test_check_mode_on_a_fresh_host_then_a_failed_first_apply(dual2_lab, tmp_path):
    """site.yml --check --diff on a host that never had anything of ours shows the files and
    services it would create and writes nothing (no project, record or lock). Then a real first
    apply whose vLLM cannot start fails with vLLM's own words, and leaves no file and no
    container behind (there is nothing to roll back to)."""
    host = dual2_lab[BOX]
    wipe(host)
    rc, out, recap = apply(tmp_path, BOX, {"dual_gpu_mode": "vllm"}, "--check", "--diff",
                           playbook="site.yml")
    assert rc == 0 and recap[BOX][2] == 0, out
    assert "+++ after: /opt/gpufleet/compose.yml" in out, out
    assert "+DUAL_GPU_MODE=vllm" in out, out
    assert re.search(r"would \(re\)create: [a-z_, ]*vllm", out), out
    assert host.sh(NOTHING_WRITTEN).stdout.split() == []
    assert project_containers(host) == []

    rc, out, recap = apply(tmp_path, BOX, {
        "dual_gpu_mode": "vllm", "services_catalog": broken_vllm_catalog(),
        "compose_verify_timeout": 30}, playbook="site.yml")
    assert rc != 0 and recap[BOX][2] == 1, out
    assert "World size (2) is larger than the number of available GPUs (1)" in out, out
    assert "first apply: no previous files to roll back to" in out, out
    assert "NoneType" not in out, out
    left = host.sh("ls -A /opt/gpufleet").stdout.split()
    assert not set(left) & {"compose.yml", "compose.gpu.yml", ".env", "gpu-assignments.yml"}, left
    assert project_containers(host) == []
    record = json.loads(host.sh("cat /etc/gpufleet/apply.json").stdout)
    assert record["result"] == "failed", record


def test_check_mode_after_a_mode_change_shows_the_diff_and_writes_nothing(dual2_lab, tmp_path):
    host = dual2_lab[BOX]
    clear_systemd(host)
    rc, out, recap = apply(tmp_path, BOX, {"dual_gpu_mode": "ollama"}, playbook="site.yml")
    assert rc == 0, out
    before, running = sha256s(host), project_containers(host)
    rc, out, recap = apply(tmp_path, BOX, {"dual_gpu_mode": "vllm"}, "--check", "--diff",
                           playbook="site.yml")
    assert rc == 0 and recap[BOX][2] == 0 and recap[BOX][1] > 0, out
    assert "-DUAL_GPU_MODE=ollama" in out and "+DUAL_GPU_MODE=vllm" in out, out
    assert re.search(r"would \(re\)create: [a-z_, ]*vllm", out), out
    assert "would remove: ollama_research" in out, out
    assert sha256s(host) == before
    assert project_containers(host) == running
    assert_compose_state(host, MODES["ollama"])
