# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seed 003 on lab-spark: the modes of the one catalog on a unified-memory box.

The naive switch (stop Ollama, start vLLM at once) crashes vLLM in its memory profiling;
playbooks/switch_mode.yml (site.yml with inference_mode) removes the leaving services and
waits for the drain, and does not; the dual-GPU kind of mode (ollama) and the exclusive ones
(chat, ingestion) run in one compose project on one host; a reboot brings back exactly the
recorded mode; the router config and the app env file follow the mode; a drain that never
ends and a vLLM that crashes roll back to the previous mode; status.yml warns on services of
two modes at once; health.yml's exit status.

Only lab-spark is used (started and removed by this module's fixture). The tests run in
file order and share the host's state: each one leaves the host in chat mode.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import HF_ENDPOINT, Host, _docker_host, set_drain_delay

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "lab")
HOST = "lab-spark"
PROJECT = "/opt/gpufleet"

DRAIN = 4.0  # seconds the driver still counts freed memory (a realistic GB10 teardown)
# vLLM timings: snapshot 0.5 s after start, then weights, then a 6 s profiling window, so
# that a drain of DRAIN seconds that began just before the start ends inside the window.
# The stand-in servers in containers read their timings from the environment (the host's
# /etc/gpufleet-lab/standin.env is not visible inside containers), so they go to compose.
# The switch test: a GB10 teardown of several seconds. NVML's sum of live processes drops at
# once; only MemAvailable (the relay's meminfo) shows the drain.
LONG_DRAIN = 8.0
# The naive script's test: the drain must outlast `compose stop` + `compose up` (x seconds after
# Ollama exited: 1-5 s on a loaded machine, more under make test's four workers; a 6 s drain was
# over before vLLM started in one CI run) and end inside vLLM's profiling, which its stand-in
# stretches there to 15 s (a big model profiles longer): x+1 .. x+16 s holds 12 s for any x up to
# 11 s.
NAIVE_DRAIN = 12.0
# A wait blind to the teardown starts the next engine about SETTLE seconds after the stop (plus
# Ansible's and Compose's own time); one that follows the teardown starts it LONG_DRAIN seconds
# or more after the stopped containers exited. Measured on the engine's clock (docker inspect),
# not by the playbook's drain_s, which starts only when Ansible reaches the wait task: under load
# that came 4-5 s after the containers exited and drain_s fell short of any fixed bound.
VLLM_ENV = {
    "GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "0.5",
    "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0.5",
    "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "6",
}
NAIVE_VLLM_ENV = dict(VLLM_ENV, GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS="15")
# A small model: its weights (about 1 GiB) are less than what Ollama's qwen2.5:7b frees
# (about 4.9 GiB), so free memory grows while vLLM profiles, as in the seed.
VLLM_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
VLLM_COMMAND = [VLLM_MODEL, "--gpu-memory-utilization", "0.5"]
PROFILING = re.compile(
    r"AssertionError: Error in memory profiling\. Initial free memory (\d+\.\d+) GiB, "
    r"current free memory (\d+\.\d+) GiB\."
)
# The stand-in runners are named like this in NVML: the placement counts them as ours.
MANAGED = {"services_placement_options": {"managed_processes": ["ollama*", "*vllm*", "vision*"]}}
RECAP = re.compile(
    r"^%s\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)" % HOST, re.M
)

COUNTED_MIB = """
import os, sys
sys.path.insert(0, "/opt/gpufleet-lab/servers")
os.environ["GPUFLEET_NVML_STATE"] = "/etc/gpufleet-nvml/state"
import gpuview
print(sum(r["mib"] for r in gpuview.View().regs))
"""


def lab_py(*args):
    return subprocess.run(
        [sys.executable, os.path.join(LAB, "lab.py"), *args, "--hosts", HOST],
        check=False, capture_output=True, text=True, timeout=600,
    )


def set_standin_env(host, env):
    """The host's stand-in settings (host processes), replaced atomically."""
    text = "".join("%s=%s\n" % kv for kv in sorted(env.items()))
    host.sh("f=/etc/gpufleet-lab/standin.env; cat > $f.tmp; mv $f.tmp $f", input=text)


def counted_mib(host):
    """MiB the simulated driver counts as used now (live and still-draining registrations)."""
    return int(host.py(COUNTED_MIB))


def wait_counted(host, predicate, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        value = counted_mib(host)
        if predicate(value):
            return value
        assert time.time() < deadline, "%s: counted MiB never matched; last %s" % (HOST, value)
        time.sleep(0.2)


def services(host):
    """Compose services of the project that run now."""
    out = host.sh(
        "docker ps --filter label=com.docker.compose.project=gpufleet "
        "--format '{{.Label \"com.docker.compose.service\"}}'"
    ).stdout
    return sorted(out.split())


def running(host, container):
    state = host.sh("docker inspect -f '{{.State.Running}}' %s" % container).stdout
    return state.strip() == "true"


def _docker_time(host, container, field):
    """State.StartedAt / State.FinishedAt of a container, in seconds since the epoch."""
    text = host.sh("docker inspect -f '{{.State.%s}}' %s" % (field, container)).stdout.strip()
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text)
    assert match, "%s %s: %r" % (container, field, text)
    stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp() + float(match.group(2) or 0)


def start_gap(host, stopped, started, since):
    """Seconds between the last of `stopped` exiting (a removed container: the engine's die
    event since `since`, epoch seconds) and `started` starting (compose services)."""
    exited = []
    for svc in stopped:
        text = host.sh(
            "docker events --since %d --until $(date +%%s) --filter event=die --filter "
            "label=com.docker.compose.service=%s --format '{{.TimeNano}}'" % (int(since), svc)
        ).stdout.split()
        assert text, "no die event of %s since %d" % (svc, since)
        exited.append(int(text[-1]) / 1e9)
    return _docker_time(host, "gpufleet-%s-1" % started, "StartedAt") - max(exited)


def reboot(host):
    """Restart the host's container: systemd and its Docker engine start again, as at a boot."""
    subprocess.run(["docker", "restart", HOST], check=True, capture_output=True, timeout=180)
    deadline = time.time() + 120
    while host.sh("docker info >/dev/null 2>&1 && echo up", check=False).stdout.strip() != "up":
        assert time.time() < deadline, "the engine of %s did not come back" % HOST
        time.sleep(1)


def dotenv(host, path):
    """KEY=value lines of an env file on the host."""
    lines = host.sh("cat %s" % path).stdout.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def llm_yaml(host):
    return yaml.safe_load(host.sh("cat /opt/gpufleet/config/llm.yaml").stdout)


def playbook(name, *extra):
    """(rc, output, recap) of one playbook run against lab-spark."""
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        "-i", os.path.join(ROOT, "inventory", "lab"),
        os.path.join(ROOT, "playbooks", name), "--limit", HOST, *extra,
    ]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    sys.stderr.write("%s %s: rc %d in %.1f s\n" % (name, " ".join(extra), proc.returncode,
                                                   time.time() - t0))
    match = RECAP.search(out)
    assert match, "no PLAY RECAP for %s:\n%s" % (HOST, out)
    recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))
    return proc.returncode, out, recap


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """lab-spark, fresh, with a DRAIN-second drain delay; removed at the end."""
    os.environ["DOCKER_HOST"] = _docker_host()
    lab_py("down")
    proc = lab_py("up")
    assert proc.returncode == 0, "lab up failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    host = Host(HOST)
    set_drain_delay(host, DRAIN)
    set_standin_env(host, VLLM_ENV)
    yield host
    if os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        lab_py("down")


@pytest.fixture(scope="module")
def switch_vars(tmp_path_factory):
    """-e @file: the default catalog with the vLLM timings in vLLM's environment and a small
    model, and Ollama's qwen2.5:7b (it holds more than vLLM's weights: free memory grows
    while vLLM profiles, as in the seed)."""
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    models = "/srv/gpufleet/models/ollama"
    for entry in catalog.values():
        for volume in entry.get("volumes") or []:
            volume["source"] = volume["source"].replace("{{ services_models_dir }}", models)
    catalog["vllm"].update(model=VLLM_MODEL, environment=VLLM_ENV)
    catalog["ollama"].update(model="qwen2.5:7b")
    catalog["ollama"]["environment"]["DEFAULT_OLLAMA_MODEL"] = "qwen2.5:7b"
    path = tmp_path_factory.mktemp("switch") / "vars.json"
    path.write_text(json.dumps({"services_catalog": catalog, **MANAGED}))
    return "@%s" % path


NAIVE = """
name: naive
services:
  ollama:
    image: registry.lab:5000/ollama/ollama:latest
    ports: ["127.0.0.1:11500:11434"]
    deploy: &gpu
      resources:
        reservations:
          devices: [{driver: nvidia, device_ids: ["0"], capabilities: [gpu]}]
  vllm:
    image: registry.lab:5000/vllm/vllm-openai:latest
    command: %s
    ports: ["127.0.0.1:8100:8000"]
    environment: %s
    deploy: *gpu
""" % (json.dumps(VLLM_COMMAND), json.dumps(dict(NAIVE_VLLM_ENV, HF_ENDPOINT=HF_ENDPOINT)))


def test_naive_stop_then_start_crashes_vllm_in_memory_profiling(spark):
    """Seed 003's old script without its sleep: vLLM profiles while Ollama's memory drains."""
    spark.sh("mkdir -p /srv/naive && cat > /srv/naive/compose.yml", input=NAIVE)
    # NAIVE_DRAIN, not DRAIN: `compose stop` + `compose up` can take seconds on a loaded
    # machine, and the drain must still be on when vLLM takes its snapshot.
    set_drain_delay(spark, NAIVE_DRAIN)
    try:
        # The script's user pulled the images, the model and the weights beforehand.
        spark.sh("cd /srv/naive && docker compose pull -q && docker compose up -d ollama")
        spark.wait_http("http://127.0.0.1:11500/api/version")
        spark.pull_model("http://127.0.0.1:11500", "qwen2.5:7b")
        status, body = spark.http("http://127.0.0.1:11500/api/generate",
                                  {"model": "qwen2.5:7b", "keep_alive": -1})
        assert status == 200, body
        held = wait_counted(spark, lambda mib: mib > 1000)
        spark.sh("cd /srv/naive && docker compose stop ollama && docker compose up -d vllm")
        assert counted_mib(spark) >= held, "Ollama's memory must still drain when vLLM starts"
        deadline = time.time() + 40
        while running(spark, "naive-vllm-1"):
            assert time.time() < deadline, "vLLM should have crashed in memory profiling"
            time.sleep(0.3)
        code = spark.sh("docker inspect -f '{{.State.ExitCode}}' naive-vllm-1").stdout.strip()
        log = spark.sh("docker logs naive-vllm-1 2>&1").stdout
        match = PROFILING.search(log)
        assert code != "0" and match, log
        assert float(match.group(2)) > float(match.group(1))
        assert spark.http("http://127.0.0.1:8100/health", timeout=2)[0] != 200
    finally:
        spark.sh("cd /srv/naive && docker compose down -t 5", check=False)
        set_drain_delay(spark, DRAIN)
    wait_counted(spark, lambda mib: mib == 0)


def test_modes_switch_with_the_drain_and_survive_a_reboot(spark, switch_vars):
    """One compose project: the dual-GPU kind (ollama: Ollama, vision, Docling on the one GPU)
    and the exclusive kind (chat, ingestion). A GB10 teardown longer than the drain wait's
    steady interval: the wait must follow MemAvailable, not NVML."""
    rc, out, recap = playbook("site.yml", "-e", switch_vars)
    assert rc == 0 and recap["failed"] == 0, out
    assert services(spark) == ["docling", "ollama", "vision"]
    assert dotenv(spark, "/opt/gpufleet/.env")["INFERENCE_MODE"] == "ollama"

    rc, out, recap = playbook("switch_mode.yml", "-e", "inference_mode=chat", "-e", switch_vars)
    assert rc == 0 and recap["failed"] == 0, out
    assert services(spark) == ["ollama"]
    held = wait_counted(spark, lambda mib: mib > 1000)  # the verify loaded the model
    # what /proc/meminfo shows on a GB10: the unified memory less what the driver counts
    meminfo = dict(line.split(":") for line in
                   spark.sh("cat /run/gpufleet-nvml/meminfo").stdout.splitlines())
    assert meminfo["MemTotal"].split() == [str(124610 * 1024), "kB"], meminfo
    assert meminfo["MemAvailable"].split() == [str((124610 - held) * 1024), "kB"], meminfo
    env = dotenv(spark, "/etc/gpufleet/inference.env")
    assert (env["INFERENCE_MODE"], env["OLLAMA_ENABLED"], env["VLLM_ENABLED"]) == (
        "chat", "true", "false"), env

    set_drain_delay(spark, LONG_DRAIN)
    try:
        began = time.time() - 5
        rc, out, recap = playbook("switch_mode.yml", "-e", "inference_mode=ingestion",
                                  "-e", switch_vars)
        assert rc == 0 and recap["failed"] == 0 and recap["changed"] > 0, out
        assert services(spark) == ["docling", "vllm"]
        models = spark.http("http://127.0.0.1:8000/v1/models")[1]
        assert [m["id"] for m in models["data"]] == [VLLM_MODEL]
        log = spark.sh("docker logs gpufleet-vllm-1 2>&1").stdout
        assert "Error in memory profiling" not in log, log
        assert "Application startup complete." in log, log
        # vLLM started only after the driver's teardown of Ollama's memory
        gap = start_gap(spark, ["ollama"], "vllm", began)
        assert gap >= LONG_DRAIN, gap
        env = dotenv(spark, "/etc/gpufleet/inference.env")
        assert (env["INFERENCE_MODE"], env["INFERENCE_MODE_EXCLUSIVE"], env["OLLAMA_ENABLED"],
                env["VLLM_ENABLED"], env["VLLM_BASE_URL"]) == (
            "ingestion", "true", "false", "true", "http://127.0.0.1:8000/v1"), env
        assert env["LLM_FALLBACK_ENABLED"] == "false", env
        assert "ollama" not in json.dumps(llm_yaml(spark)), llm_yaml(spark)
        assert dotenv(spark, "/opt/gpufleet/.env")["INFERENCE_MODE"] == "ingestion"

        # A reboot: the engine restarts the containers it had running, nothing else.
        reboot(spark)
        spark.wait_http("http://127.0.0.1:8000/health", timeout=60)
        assert services(spark) == ["docling", "vllm"]
        rc, out, recap = playbook("site.yml", "-e", switch_vars)
        assert rc == 0 and recap["failed"] == 0 and recap["changed"] == 0, out

        began = time.time() - 5
        rc, out, recap = playbook("switch_mode.yml", "-e", "inference_mode=chat",
                                  "-e", switch_vars)
        assert rc == 0 and recap["failed"] == 0, out
        assert services(spark) == ["ollama"]
        gap = start_gap(spark, ["vllm"], "ollama", began)
        assert gap >= LONG_DRAIN, gap
        assert "ollama" in json.dumps(llm_yaml(spark))
    finally:
        set_drain_delay(spark, DRAIN)
        if services(spark) != ["ollama"]:  # leave chat mode for the next tests, even on failure
            playbook("switch_mode.yml", "-e", "inference_mode=chat", "-e", switch_vars)
    rc, out, recap = playbook("switch_mode.yml", "-e", "inference_mode=chat", "-e", switch_vars)
    assert rc == 0 and recap["changed"] == 0 and recap["failed"] == 0, out


def test_status_and_the_report_judge_the_host_by_its_mode(spark, switch_vars, tmp_path):
    """chat runs no vLLM and no Docling, on purpose: the report says healthy, in mode chat;
    status names the mode, and warns when a service of another mode runs beside it."""
    assert services(spark) == ["ollama"]
    page = tmp_path / "fleet.html"
    rc, out, recap = playbook("report.yml", "-e", switch_vars,
                              "-e", "report_html_path=%s" % page)
    assert rc == 0 and recap["failed"] == 0, out
    assert re.search(r"lab-spark\s+ok\s+healthy\s+chat \(exclusive\)", out), out
    assert "chat (exclusive)" in page.read_text()
    rc, out, recap = playbook("status.yml", "-e", switch_vars)
    assert rc == 0 and recap["failed"] == 0, out
    assert "lab-spark: mode chat (exclusive)" in out and "CONFLICT" not in out, out
    spark.sh("cd %s && docker compose --profile ingestion up -d docling" % PROJECT)
    try:
        assert services(spark) == ["docling", "ollama"]
        rc, out, recap = playbook("status.yml", "-e", switch_vars)
        assert rc == 0 and recap["failed"] == 0, out
        assert "CONFLICT, not in mode chat but running: docling" in out, out
        rc, out, recap = playbook("status.yml", "-e", switch_vars,
                                  "-e", "status_fail_on_conflict=true")
        assert rc != 0 and recap["failed"] == 1, out
    finally:
        spark.sh("cd %s && docker compose --profile ingestion rm -sf docling" % PROJECT)
    assert services(spark) == ["ollama"]


def test_switch_mode_needs_a_mode(spark):
    rc, out, _recap = playbook("switch_mode.yml")
    assert rc != 0 and "inference_mode is required" in out, out
    assert services(spark) == ["ollama"]


def test_drain_that_never_ends_fails_and_restores_chat(spark, switch_vars):
    """The driver does not give back what the stopped Ollama held (a teardown that never ends):
    the drain wait follows the removed containers' own pids and the memory, so it fails at its
    timeout and chat is restored."""
    assert services(spark) == ["ollama"]
    set_drain_delay(spark, 900)
    try:
        rc, out, recap = playbook(
            "switch_mode.yml", "-e", "inference_mode=ingestion", "-e", switch_vars,
            "-e", "compose_drain_timeout=8")
        assert rc != 0 and recap["failed"] == 1, out
        assert "GPU memory did not drain within 8.0 s" in out, out
        assert re.search(r"rolled back to the previous files and services \(ollama\)", out), out
        assert services(spark) == ["ollama"]
        assert "models" in spark.wait_http("http://127.0.0.1:11434/api/tags", timeout=5)
        assert dotenv(spark, "/opt/gpufleet/.env")["INFERENCE_MODE"] == "chat"
    finally:
        set_drain_delay(spark, DRAIN)


def test_a_vllm_that_crashes_at_start_is_rolled_back_at_once(spark, switch_vars, tmp_path):
    """vLLM exits during start-up (here: two GPUs asked of a one-GPU box, vLLM's own error): the
    verify sees the container exit and the rollback starts then, not after the verify timeout
    of polling a dead endpoint."""
    assert services(spark) == ["ollama"]
    with open(switch_vars[1:], encoding="utf-8") as handle:
        crashing = json.load(handle)
    crashing["services_catalog"]["vllm"]["command"] = ["--tensor-parallel-size", "2"]
    crashing["compose_verify_timeout"] = 300
    path = tmp_path / "crashing.json"
    path.write_text(json.dumps(crashing))
    rc, out, recap = playbook("switch_mode.yml", "-e", "inference_mode=ingestion",
                              "-e", "@%s" % path)
    assert rc != 0 and recap["failed"] == 1, out
    seen = re.search(r"vllm: its container (?:exited with code 1|crashed and [^;]*) after "
                     r"([\d.]+) s, before http://127\.0\.0\.1:8000/health answered; last log "
                     r"lines: .*World size \(2\) is larger than the number of available GPUs "
                     r"\(1\)", out)
    assert seen, out
    assert float(seen.group(1)) < 60, "the crash must end the wait long before its 300 s"
    assert re.search(r"rolled back to the previous files and services \(ollama\)", out), out
    assert services(spark) == ["ollama"]
    assert dotenv(spark, "/opt/gpufleet/.env")["INFERENCE_MODE"] == "chat"


def test_health_exit_status_follows_the_services(spark, switch_vars):
    rc, out, recap = playbook("health.yml", "-e", switch_vars)
    assert rc == 0 and recap["failed"] == 0, out
    assert "lab-spark: HEALTHY" in out, out
    assert re.search(r"ollama\s+ollama\s+healthy\s+\d+", out), out
    spark.sh("cd %s && docker compose stop ollama" % PROJECT)
    try:
        rc, out, recap = playbook("health.yml", "-e", switch_vars)
        assert rc != 0 and recap["failed"] == 1, out
        assert "lab-spark: UNHEALTHY" in out, out
        assert re.search(r"ollama\s+ollama\s+UNHEALTHY", out), out
        assert "unhealthy on lab-spark: ollama" in out, out
    finally:
        spark.sh("cd %s && docker compose start ollama" % PROJECT)
