# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A switch in seconds on lab-spark2 (a GB10 clone): engines with `sleep: true` are parked.

chat <-> ingestion with vLLM and Ollama marked `sleep: true`: from the second switch on vLLM's
container is the same one (woken, not started: no memory profiling), asleep at level 2 while
in chat with its memory freed; Ollama's models are unloaded in ingestion; a reboot in chat
brings back Ollama and not the sleeping vLLM (restart policy no); the next switch starts vLLM
cold. The switch downtimes of the sleep path are printed; bench/switch.py --sleep compares them
with the stop/start path in one run.

Only lab-spark2 is used (started and removed by this module's fixture). The tests run in file
order and share the host's state.
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
from conftest import Host, _docker_host, set_drain_delay

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "lab")
HOST = "lab-spark2"
DRAIN = 0.5  # seconds the driver still counts freed memory (the bench's judged drain)
VLLM_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
OLLAMA_MODEL = "qwen2.5:7b"
# The stand-in's own timings (lab/README.md, "Sleep mode and unloading"), in vLLM's environment:
# containers do not see the host's standin.env.
VLLM_ENV = {
    "GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "0.5",
    "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0.5",
    "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "6",
    "GPUFLEET_STANDIN_VLLM_SLEEP_SECONDS": "0.05",
    "GPUFLEET_STANDIN_VLLM_OFFLOAD_MIB_PER_S": "10240",
    "GPUFLEET_STANDIN_VLLM_RELOAD_MIB_PER_S": "4096",
}
# What the stand-in vLLM keeps asleep (GPUFLEET_STANDIN_VLLM_SLEEP_KEEP_MIB's default).
KEPT_MIB = 512
MANAGED = {"services_placement_options": {"managed_processes": ["ollama*", "*vllm*", "vision*"]}}
RECAP = re.compile(
    r"^%s\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)" % HOST, re.M
)
COUNTED_MIB = """
import json, os, sys
sys.path.insert(0, "/opt/gpufleet-lab/servers")
os.environ["GPUFLEET_NVML_STATE"] = "/etc/gpufleet-nvml/state"
import gpuview
pids = {int(p) for p in sys.argv[1:]}
regs = gpuview.View().regs
print(json.dumps([sum(r["mib"] for r in regs), sum(r["mib"] for r in regs if r["pid"] in pids)]))
"""
# Inside the host, every PROBE_S: is chat served (Ollama has its model loaded: a chat answers
# without a load) and is ingestion served (vLLM healthy and awake, Docling healthy)?
PROBE_S = 0.2
PROBE = r"""
import json, sys, time, urllib.error, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=0.5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except Exception:
        return None, ""
def models(body):
    try:
        return [m.get("name") for m in json.loads(body).get("models") or []]
    except ValueError:
        return []
out = open(sys.argv[1], "a", buffering=1)
while True:
    t = time.time()
    status, body = get("http://127.0.0.1:11434/api/ps")
    chat = status == 200 and sys.argv[2] in models(body)
    status, body = get("http://127.0.0.1:8000/is_sleeping")
    awake = status == 404 or (status == 200 and json.loads(body).get("is_sleeping") is False)
    ingestion = (awake and get("http://127.0.0.1:8000/health")[0] == 200
                 and get("http://127.0.0.1:5001/health")[0] == 200)
    out.write("%.3f %d %d\n" % (t, chat, ingestion))
    time.sleep(max(0.0, PROBE_S - (time.time() - t)))
""".replace("PROBE_S", repr(PROBE_S))
MODE_COLUMN = {"chat": 1, "ingestion": 2}
# Downtimes measured, printed at the end of the module.
DOWNTIMES = {}


def lab_py(*args):
    return subprocess.run(
        [sys.executable, os.path.join(LAB, "lab.py"), *args, "--hosts", HOST],
        check=False, capture_output=True, text=True, timeout=600,
    )


def pids(host, service):
    out = host.sh("docker top gpufleet-%s-1 -eo pid | tail -n +2" % service, check=False)
    return out.stdout.split()


def counted_mib(host, service=None):
    """MiB the simulated driver counts now: [all, those of ``service``'s processes]."""
    return json.loads(host.py(COUNTED_MIB, *(pids(host, service) if service else [])))


def services(host):
    """Compose services of the project that run now."""
    out = host.sh(
        "docker ps --filter label=com.docker.compose.project=gpufleet "
        "--format '{{.Label \"com.docker.compose.service\"}}'"
    ).stdout
    return sorted(out.split())


def inspect(host, service, template):
    return host.sh("docker inspect -f '%s' gpufleet-%s-1" % (template, service)).stdout.strip()


def started_at(host, service):
    text = inspect(host, service, "{{.State.StartedAt}}")
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text)
    assert match, text
    stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp() + float(match.group(2) or 0)


def reboot(host):
    """Restart the host's container: systemd and its Docker engine start again, as at a boot."""
    subprocess.run(["docker", "restart", HOST], check=True, capture_output=True, timeout=180)
    deadline = time.time() + 120
    while host.sh("docker info >/dev/null 2>&1 && echo up", check=False).stdout.strip() != "up":
        assert time.time() < deadline, "the engine of %s did not come back" % HOST
        time.sleep(1)


def playbook(*extra):
    """(rc, output, recap, started, ended) of one site.yml run against lab-spark2."""
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        "-i", os.path.join(ROOT, "inventory", "lab"),
        os.path.join(ROOT, "playbooks", "site.yml"), "--limit", HOST, *extra,
        # The health role judges vLLM's VRAM by its catalog budget, the placement gives it a
        # larger share on this unified-memory box (not what this module tests; reported).
        "-e", json.dumps({"health_fail_when_unhealthy": False}),
    ]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True,
                          timeout=900)
    ended = time.time()
    out = proc.stdout + proc.stderr
    sys.stderr.write("site.yml %s: rc %d in %.1f s\n" % (" ".join(extra), proc.returncode,
                                                         ended - started))
    match = RECAP.search(out)
    assert match, "no PLAY RECAP for %s:\n%s" % (HOST, out)
    recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))
    return proc.returncode, out, recap, started, ended


def switch(host, mode, extra, path=None, key=None):
    """Switch to ``mode``; with ``key``, note the downtime: first probe serving ``mode`` less
    the last probe before it still serving the other mode."""
    rc, out, recap, started, ended = playbook("-e", "inference_mode=%s" % mode, "-e", extra)
    assert rc == 0 and recap["failed"] == 0, out
    if key:
        time.sleep(2 * PROBE_S + 0.3)
        DOWNTIMES[key] = downtime(host, mode, started, ended)
    return out, recap


def downtime(host, mode, start, end):
    rows = [line.split() for line in host.sh("cat /root/sleep-probe.log").stdout.splitlines()]
    rows = [(float(r[0]), r[MODE_COLUMN["chat"]] == "1", r[MODE_COLUMN["ingestion"]] == "1")
            for r in rows if len(r) == 3 and start <= float(r[0]) <= end + 1.0]
    new = MODE_COLUMN[mode]
    old = 3 - new
    came = next(i for i, row in enumerate(rows) if row[new])
    last_old = max((row[0] for row in rows[:came] if row[old]), default=start)
    return round(rows[came][0] - last_old, 2)


def catalog_vars(path, sleep):
    """-e @file: the default catalog, a small vLLM model with the stand-in's timings, Ollama's
    qwen2.5:7b; vllm and ollama with `sleep: <sleep>`."""
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    models = "/srv/gpufleet/models/ollama"
    for entry in catalog.values():
        for volume in entry.get("volumes") or []:
            volume["source"] = volume["source"].replace("{{ services_models_dir }}", models)
    catalog["vllm"].update(model=VLLM_MODEL, environment=VLLM_ENV, sleep=sleep)
    catalog["ollama"].update(model=OLLAMA_MODEL, sleep=sleep)
    catalog["ollama"]["environment"]["DEFAULT_OLLAMA_MODEL"] = OLLAMA_MODEL
    path.write_text(json.dumps({"services_catalog": catalog, **MANAGED}))
    return "@%s" % path


@pytest.fixture(scope="module")
def spark2():
    """lab-spark2, fresh, with a DRAIN-second drain delay and the prober; removed at the end."""
    os.environ["DOCKER_HOST"] = _docker_host()
    lab_py("down")
    proc = lab_py("up")
    assert proc.returncode == 0, "lab up failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    host = Host(HOST)
    set_drain_delay(host, DRAIN)
    host.sh("cat > /root/sleep-probe.py", input=PROBE)
    host.sh("nohup python3 /root/sleep-probe.py /root/sleep-probe.log %s >/dev/null 2>&1 &"
            % OLLAMA_MODEL)
    yield host
    sys.stderr.write("switch downtimes (s), %s, drain %g s: %s\n"
                     % (HOST, DRAIN, json.dumps(DOWNTIMES, sort_keys=True)))
    if os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        lab_py("down")


@pytest.fixture(scope="module")
def sleep_vars(tmp_path_factory):
    return catalog_vars(tmp_path_factory.mktemp("sleep") / "vars.json", True)


def test_switch_parks_and_wakes_the_same_vllm(spark2, sleep_vars):
    switch(spark2, "chat", sleep_vars)
    assert services(spark2) == ["ollama"]
    switch(spark2, "ingestion", sleep_vars)  # vLLM's first start: cold
    assert services(spark2) == ["docling", "ollama", "vllm"]  # Ollama parked, not removed
    assert spark2.http("http://127.0.0.1:11434/api/ps")[1]["models"] == []
    assert inspect(spark2, "ollama", "{{.HostConfig.RestartPolicy.Name}}") == "no"
    vllm_id = inspect(spark2, "vllm", "{{.Id}}")
    vllm_started = started_at(spark2, "vllm")
    held = counted_mib(spark2, "vllm")[1]
    assert held > 4 * KEPT_MIB, held

    # check mode: says what it would do, does nothing
    rc, out, recap, _started, _ended = playbook("-e", "inference_mode=chat", "-e", sleep_vars,
                                                "--check")
    assert rc == 0 and recap["failed"] == 0, out
    assert "would put to sleep: vllm; would set the restart policy of: vllm (no)" in out, out
    assert "would wake: ollama; would set the restart policy of: ollama (unless-stopped)" in out
    # Ollama is woken, not created; vLLM parked, not removed
    assert "would (re)create: none; would remove: docling" in out, out
    assert spark2.http("http://127.0.0.1:8000/is_sleeping")[1] == {"is_sleeping": False}
    assert inspect(spark2, "vllm", "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"

    out, _recap = switch(spark2, "chat", sleep_vars, key="sleep ingestion->chat")
    assert services(spark2) == ["ollama", "vllm"]  # vLLM parked, Docling removed
    assert spark2.http("http://127.0.0.1:8000/is_sleeping")[1] == {"is_sleeping": True}
    assert counted_mib(spark2, "vllm")[1] <= KEPT_MIB  # the rest is freed
    assert inspect(spark2, "vllm", "{{.HostConfig.RestartPolicy.Name}}") == "no"
    assert inspect(spark2, "ollama", "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"
    assert OLLAMA_MODEL in [m["name"] for m in
                            spark2.http("http://127.0.0.1:11434/api/ps")[1]["models"]], out
    status, body = spark2.http("http://127.0.0.1:11434/api/generate",
                               {"model": OLLAMA_MODEL, "prompt": "hi", "stream": False})
    assert status == 200 and body["done"], body

    switch(spark2, "ingestion", sleep_vars, key="sleep chat->ingestion")
    assert inspect(spark2, "vllm", "{{.Id}}") == vllm_id
    assert started_at(spark2, "vllm") == vllm_started  # woken, not started
    assert spark2.http("http://127.0.0.1:8000/is_sleeping")[1] == {"is_sleeping": False}
    models = spark2.http("http://127.0.0.1:8000/v1/models")[1]
    assert [m["id"] for m in models["data"]] == [VLLM_MODEL]
    status, body = spark2.http("http://127.0.0.1:8000/v1/completions",
                               {"model": VLLM_MODEL, "prompt": "hi", "max_tokens": 4})
    assert status == 200 and "!!!!" not in json.dumps(body), body  # weights reloaded
    assert inspect(spark2, "vllm", "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"
    log = spark2.sh("docker logs gpufleet-vllm-1 2>&1").stdout
    assert "Error in memory profiling" not in log, log

    _out, recap = switch(spark2, "ingestion", sleep_vars)
    assert recap["changed"] == 0, _out


def test_reboot_in_chat_brings_back_ollama_not_the_sleeping_vllm(spark2, sleep_vars):
    switch(spark2, "chat", sleep_vars)  # (a re-run changing nothing: the test above)
    reboot(spark2)
    spark2.wait_http("http://127.0.0.1:11434/api/version", timeout=60)
    time.sleep(3)  # what the engine would restart, it has restarted by now
    assert services(spark2) == ["ollama"]
    assert inspect(spark2, "vllm", "{{.State.Running}}") == "false"
    spark2.sh("nohup python3 /root/sleep-probe.py /root/sleep-probe.log %s >/dev/null 2>&1 &"
              % OLLAMA_MODEL)
    before = started_at(spark2, "vllm")
    switch(spark2, "ingestion", sleep_vars)  # cold: the container starts again
    assert started_at(spark2, "vllm") > before
    assert spark2.http("http://127.0.0.1:8000/is_sleeping")[1] == {"is_sleeping": False}
    assert inspect(spark2, "vllm", "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"
    log = spark2.sh("docker logs gpufleet-vllm-1 2>&1").stdout
    assert "Error in memory profiling" not in log, log
    out, recap = switch(spark2, "ingestion", sleep_vars)
    assert recap["changed"] == 0, out
