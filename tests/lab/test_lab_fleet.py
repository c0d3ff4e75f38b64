# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet rollout of site.yml on five generated lab hosts (lab-fleet-01..05).

The inventory is the lab itself (lab/lab.py as a script inventory) plus inventory/fleet (a
one-Ollama catalog for the group, lab-fleet-01's own port as a host variable). The default
batches are one canary, then 25 %, then the rest ([01], [02], [03..05]), and
max_fail_percentage 0. Two faults:
- a host lost mid-rollout (its container stopped while the canary converges) fails as its batch
  starts, the rollout stops there, and the outcome table says which host changed;
- a canary whose service cannot start (no such entrypoint) is rolled back and the rollout stops
  after it; a host whose GPUs differ from its inventory is reported before anything changes on
  it.
Every host the rollout did not reach is checked to be untouched: no project, no container.
Then the same broken service on one host of a rollout that tolerates a failure
(gpufleet_max_fail_percentage 50, batches [1, 100%]): that host fails (a first apply has
nothing to roll back to), every other host converges and serves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import LAB, ROOT, Host, _docker_host

FLEET = ["lab-fleet-%02d" % i for i in range(1, 6)]
PROJECT = "/opt/gpufleet"
CANARY_PORT = 11500  # inventory/fleet/host_vars/lab-fleet-01.yml
# A service that cannot start: its container's entrypoint does not exist, so `docker compose up`
# fails after the files changed (an image that is not in the registry no longer gets that far:
# the preflight's download plan fails the host before anything changes).
NO_SUCH_ENTRYPOINT = "/usr/local/bin/no-such-server"
_ROW = re.compile(r"^(lab-fleet-\d\d) +(changed|unchanged|failed|unreachable|rolled back|"
                  r"not reached) +(\d+) *(.*)$", re.MULTILINE)


def lab(*args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), *args],
                          capture_output=True, text=True, check=False, timeout=timeout)
    assert proc.returncode == 0, "lab.py %s failed:\n%s\n%s" % (args, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture(scope="module")
def fleet():
    """lab-fleet-01..05, fresh; removed afterwards (unless GPUFLEET_LAB_KEEP=1)."""
    os.environ["DOCKER_HOST"] = _docker_host()
    t0 = time.time()
    lab("up", "--fleet", str(len(FLEET)), "--recreate")
    sys.stderr.write("lab up (fleet of %d) in %.1f s\n" % (len(FLEET), time.time() - t0))
    yield {name: Host(name) for name in FLEET}
    if os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        lab("down", "--fleet", str(len(FLEET)))


def ansible_env():
    path = os.path.join(ROOT, ".venv", "bin")
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS="8",
                ANSIBLE_CALLBACKS_ENABLED="gpufleet.inference.fleet_outcome",
                PATH=path + os.pathsep + os.environ["PATH"])


def rollout(tmp_path, host_vars=None, on_line=None, hosts=FLEET, extra_vars=None):
    """site.yml over lab_fleet; returns (rc, output, {host: (outcome, changed, note)}).

    ``hosts``: the hosts the outcome table must list (the running ones: the lab's inventory
    has no stopped host).

    ``host_vars`` ({host: vars}) go into an extra inventory source given last, so they beat
    inventory/fleet's; ``extra_vars`` go on the command line (-e, as JSON); ``on_line`` sees
    every output line as it comes.
    """
    inv = tmp_path / ("inv-%d" % time.monotonic_ns())
    (inv / "host_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  children:\n    lab_fleet: {}\n")
    for host, hvars in (host_vars or {}).items():
        (inv / "host_vars" / ("%s.yml" % host)).write_text(yaml.safe_dump(hvars))
    cmd = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"),
           "-i", os.path.join(ROOT, "lab", "lab.py"),
           "-i", os.path.join(ROOT, "inventory", "fleet"),
           "-i", str(inv), "site.yml", "--limit", "lab_fleet"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if on_line:
            on_line(line)
    rc = proc.wait(timeout=600)
    sys.stderr.write("fleet rollout: rc %d in %.1f s\n" % (rc, time.time() - t0))
    out = "".join(lines)
    (inv / "rollout.log").write_text(out)
    sys.stderr.write("output: %s\n" % (inv / "rollout.log"))
    assert out.count("FLEET OUTCOME") == 1, out[-3000:]
    table = out.split("FLEET OUTCOME", 1)[1]
    rows = {m.group(1): (m.group(2), int(m.group(3)), m.group(4)) for m in _ROW.finditer(table)}
    assert sorted(rows) == sorted(hosts), table
    return rc, out, rows


def assert_untouched(host):
    """Nothing of ours on the host: no project directory, no apply record, no container."""
    out = host.sh("ls -A %s /etc/gpufleet 2>/dev/null | wc -l; docker ps -aq | wc -l" % PROJECT)
    assert out.stdout.split() == ["0", "0"], (host.name, out.stdout)


def assert_canary_serves(host):
    """The canary's Ollama answers on its host-specific port with its model on the GPU."""
    names = host.sh("docker ps --format '{{.Names}}'").stdout.split()
    assert names == ["gpufleet-ollama-1"], names
    status, payload = host.http("http://127.0.0.1:%d/api/generate" % CANARY_PORT,
                                body={"model": "llama3.2:3b"})
    assert status == 200, payload
    status, payload = host.http("http://127.0.0.1:%d/api/ps" % CANARY_PORT)
    models = payload["models"]
    assert [(m["name"], m["size_vram"] == m["size"]) for m in models] == [("llama3.2:3b", True)]
    # The group default (11434) is not what this host publishes: the host variable won.
    assert host.http("http://127.0.0.1:11434/api/version", timeout=3)[0] == 0


def test_the_lab_is_a_script_inventory_with_gpu_groups(fleet):
    proc = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-inventory"),
                           "-i", os.path.join(ROOT, "lab", "lab.py"),
                           "-i", os.path.join(ROOT, "inventory", "fleet"), "--list"],
                          capture_output=True, text=True, check=True, env=ansible_env(), cwd=ROOT)
    inv = json.loads(proc.stdout)
    assert inv["lab_fleet"]["hosts"] == FLEET
    # A group per GPU model (the other lab hosts running meanwhile are in them too)
    by_model = {group: [h for h in inv[group]["hosts"] if h in FLEET] for group in inv
                if group.startswith("gpu_")}
    assert {group: hosts for group, hosts in by_model.items() if hosts} == {
        "gpu_l4": ["lab-fleet-01"], "gpu_geforce_rtx_4090": ["lab-fleet-02"],
        "gpu_a10": ["lab-fleet-03"], "gpu_none": ["lab-fleet-04"], "gpu_tesla_t4": ["lab-fleet-05"]}
    hostvars = inv["_meta"]["hostvars"]
    assert hostvars["lab-fleet-02"]["gpufleet_expected_gpus"] == {
        "count": 1, "names": ["NVIDIA GeForce RTX 4090"], "min_memory_mib": 24564}
    # Host variables beat group variables: the canary's catalog, the group's for the others.
    assert hostvars["lab-fleet-01"]["services_catalog"]["ollama"]["ports"][0]["host"] == 11500
    assert hostvars["lab-fleet-02"]["services_catalog"]["ollama"]["ports"][0]["host"] == 11434
    assert hostvars["lab-fleet-02"]["ansible_connection"] == "community.docker.docker"
    one = subprocess.run([os.path.join(LAB, "lab.py"), "--host", "lab-fleet-04"],
                         capture_output=True, text=True, check=True, env=ansible_env())
    assert json.loads(one.stdout)["lab_gpus"] == []


def test_a_host_lost_mid_rollout_stops_it_and_the_table_says_who_changed(fleet, tmp_path):
    lost = fleet["lab-fleet-03"]
    stopped = threading.Event()

    def stop_when_the_canary_starts(line):
        # The canary's batch has begun: lose a host of the next batch meanwhile.
        if line.startswith("PLAY [Preflight, place") and not stopped.is_set():
            stopped.set()
            subprocess.run(["docker", "stop", "-t", "5", lost.name], check=True,
                           capture_output=True, timeout=60)

    rc, out, rows = rollout(tmp_path, on_line=stop_when_the_canary_starts)
    assert stopped.is_set(), out[-3000:]
    assert rc != 0, out[-3000:]
    # The canary and the 25 % batch converged; the last batch stopped at its lost host, and
    # the hosts beside it in that batch were not reached.
    assert rows["lab-fleet-01"][:1] == rows["lab-fleet-02"][:1] == ("changed",), rows
    assert rows["lab-fleet-03"][0] in ("failed", "unreachable"), rows
    assert rows["lab-fleet-03"][2].startswith("Reach the host") or \
        rows["lab-fleet-03"][2].startswith("Fail a host"), rows
    for name in FLEET[3:]:
        assert rows[name] == ("not reached", 0, "rollout stopped before this host"), rows
        assert_untouched(fleet[name])
    assert_canary_serves(fleet["lab-fleet-01"])
    for name in FLEET[:2]:
        record = json.loads(fleet[name].sh("cat /etc/gpufleet/apply.json").stdout)
        assert record["result"] == "ok", (name, record)


def test_a_broken_canary_is_rolled_back_and_a_wrong_gpu_host_is_left_alone(fleet, tmp_path):
    """Runs after the test above: 01 and 02 hold their converged services, 03 is down."""
    running = [name for name in FLEET if name != "lab-fleet-03"]
    canary = fleet["lab-fleet-01"]
    broken = yaml.safe_load(open(os.path.join(ROOT, "inventory", "fleet", "host_vars",
                                              "lab-fleet-01.yml"), encoding="utf-8"))
    broken["services_catalog"]["ollama"]["entrypoint"] = [NO_SUCH_ENTRYPOINT]
    rc, out, rows = rollout(tmp_path, host_vars={
        "lab-fleet-01": broken,
        "lab-fleet-05": {"gpufleet_expected_gpus": {"count": 1, "name": "NVIDIA H100*"}},
    }, hosts=running)
    assert rc != 0, out[-3000:]
    assert rows["lab-fleet-01"][0] == "rolled back", rows
    assert rows["lab-fleet-05"][0] == "failed", rows
    assert "expected name 'NVIDIA H100*'" in out, out[-3000:]
    for name in ["lab-fleet-02", "lab-fleet-04"]:
        assert rows[name] == ("not reached", 0, "rollout stopped before this host"), rows
    for name in FLEET[3:]:
        assert_untouched(fleet[name])
    # The canary serves what it served before the broken change.
    assert_canary_serves(canary)
    assert NO_SUCH_ENTRYPOINT not in canary.sh("cat %s/compose.yml" % PROJECT).stdout
    record = json.loads(canary.sh("cat /etc/gpufleet/apply.json").stdout)
    assert record["result"] == "rolled_back", record


def test_a_tolerated_failure_does_not_stop_the_rollout(fleet, tmp_path):
    """Runs after the tests above: 01 and 02 serve, 03 is down, 04 and 05 are untouched."""
    running = [name for name in FLEET if name != "lab-fleet-03"]
    rc, out, rows = rollout(tmp_path, host_vars={
        "lab-fleet-05": {"services_catalog": {"ollama": dict(
            yaml.safe_load(open(os.path.join(ROOT, "inventory", "fleet", "group_vars",
                                             "lab_fleet.yml"), encoding="utf-8"))
            ["services_catalog"]["ollama"], entrypoint=[NO_SUCH_ENTRYPOINT])}},
    }, hosts=running, extra_vars={"gpufleet_serial": [1, "100%"],
                                  "gpufleet_max_fail_percentage": 50})
    # One failed host makes the play's result a failure, but the batch went on.
    assert rc != 0, out[-3000:]
    # The canary's services were already right; only its apply record goes back to ok.
    assert rows["lab-fleet-01"][:2] == ("changed", 1), rows
    # 02 converged in the first rollout and its record says ok: nothing to change. 04 is new.
    assert rows["lab-fleet-02"][:2] == ("unchanged", 0), rows
    assert rows["lab-fleet-04"][0] == "changed", rows
    # A first apply has nothing to roll back to: the host fails and says why.
    assert rows["lab-fleet-05"][0] == "failed", rows
    assert "first apply" in out, out[-3000:]
    for name in ["lab-fleet-01", "lab-fleet-02", "lab-fleet-04"]:
        host = fleet[name]
        names = host.sh("docker ps --format '{{.Names}}'").stdout.split()
        assert names == ["gpufleet-ollama-1"], (name, names)
        port = CANARY_PORT if name == "lab-fleet-01" else 11434
        status, payload = host.http("http://127.0.0.1:%d/api/generate" % port,
                                    body={"model": "llama3.2:3b"})
        assert status == 200, (name, payload)
        record = json.loads(host.sh("cat /etc/gpufleet/apply.json").stdout)
        assert record["result"] == "ok", (name, record)
    # The failed host runs nothing, and its apply record says failed.
    failed = fleet["lab-fleet-05"]
    assert failed.sh("docker ps -q").stdout.split() == []
    record = json.loads(failed.sh("cat /etc/gpufleet/apply.json").stdout)
    assert record["result"] == "failed", record
