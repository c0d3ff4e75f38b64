# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment built for real and run the way AWX runs a job, on lab-cpu.

`lab/ee.py all --host lab-cpu` (`make lab-ee` runs it on lab-edge): the EE's base image made with
mmdebstrap (kept while its package list is the same), `ansible-builder build` of
execution-environment.yml on it, offline; then `ansible-runner run --process-isolation` runs
site.yml in the image twice, reaching the host through the lab engine's socket. The first run
converges the host, the second changes nothing; the services run there. The image is what the
EE file asks for, with nothing of the offline build left in it; a job that fails on the host
fails the command, with the recap's counts.

lab-cpu is a host of the lab-ws group too (the `lab` fixture): this module belongs to that group
(tests/conftest.py LAB_MODULE_GROUPS), runs before its other modules (file order) and stops
lab-cpu afterwards only if it started it, so they start from a new box.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import LAB, ROOT, Host, _docker_host

HOST = "lab-cpu"
IMAGE = "gpufleet-ee-inference:lab"
RUNNER = os.path.join(ROOT, ".build", "ee", "runner")
_RUN_LINE = re.compile(r"^lab/ee\.py: (site-\d) in (\S+): %s ok=(\d+) changed=(\d+) failed=(\d+) "
                       r"unreachable=(\d+)" % HOST, re.MULTILINE)


def ee(*args, timeout=900):
    proc = subprocess.run([sys.executable, os.path.join(LAB, "ee.py"), *args],
                          capture_output=True, text=True, check=False, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def in_image(script):
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", IMAGE, "sh", "-ec",
                           script], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def built_and_run():
    """`lab/ee.py all`: returns its output; lab-cpu is stopped afterwards if it was not up."""
    os.environ["DOCKER_HOST"] = _docker_host()
    was_up = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", HOST],
                            capture_output=True, text=True, check=False).stdout.strip() == "true"
    rc, out = ee("all", "--host", HOST)
    sys.stderr.write("".join(line + "\n" for line in out.splitlines()
                             if line.startswith("lab/ee.py: ")))
    yield rc, out
    if not was_up and os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), "down", "--hosts", HOST],
                       check=False, capture_output=True, timeout=300)


def test_the_ee_converges_the_host_as_an_awx_job(built_and_run):
    rc, out = built_and_run
    assert rc == 0, out
    runs = {m.group(1): m.groups()[1:] for m in _RUN_LINE.finditer(out)}
    assert set(runs) == {"site-1", "site-2"}, out
    for image, ok, _changed, failed, unreachable in runs.values():
        assert (image, failed, unreachable) == (IMAGE, "0", "0"), out
        assert int(ok) > 0, out
    assert runs["site-2"][2] == "0", "the second run in the EE changed something:\n" + out
    # The recap of ansible-playbook inside the EE, and the collection's callback table.
    assert re.search(r"^%s\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0" % HOST, out,
                     re.MULTILINE), out
    assert "FLEET OUTCOME" in out

    # The job ran in the EE container, as ansible-runner starts it, with only the socket.
    with open(os.path.join(RUNNER, "artifacts", "site-2", "command"), encoding="utf-8") as h:
        command = json.load(h)["command"]
    assert command[:2] == ["docker", "run"] and IMAGE in command, command
    assert "--network=none" in command, command
    playbook = command[command.index(IMAGE) + 1:]
    assert playbook[:3] == ["ansible-playbook", "-i", "/runner/inventory"], command
    assert playbook[-1] == "site.yml", command
    with open(os.path.join(RUNNER, "project", "site.yml"), encoding="utf-8") as h:
        assert yaml.safe_load(h)[0]["ansible.builtin.import_playbook"] == "gpufleet.inference.site"

    # What site.yml set up on the CPU box: the Ollama and docling services, running.
    names = Host(HOST).sh("docker ps --format '{{.Names}} {{.State}}'").stdout.split("\n")
    assert {"gpufleet-ollama-1 running", "gpufleet-docling-1 running"} <= set(names), names


def test_the_image_is_the_ee_file(built_and_run):
    rc, out = built_and_run
    assert rc == 0, out
    with open(os.path.join(ROOT, "execution-environment.yml"), encoding="utf-8") as handle:
        deps = yaml.safe_load(handle)["dependencies"]
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        version = yaml.safe_load(handle)["version"]
    pins = [line.split("#")[0].strip().lower()
            for line in open(os.path.join(ROOT, deps["python"]), encoding="utf-8")
            if line.split("#")[0].strip()]
    report = in_image("""
        python3 -m pip freeze --all 2>/dev/null
        ansible-galaxy collection list --format json 2>/dev/null
        echo "pip.conf=$(test -e /etc/pip.conf && echo yes || echo no)"
        echo "user=$(id -u)"
        command -v ps
        command -v ssh
    """)
    freeze = {line.lower() for line in report.splitlines() if "==" in line}
    assert deps["ansible_core"]["package_pip"].lower() in freeze, report
    assert deps["ansible_runner"]["package_pip"].lower() in freeze, report
    for pin in pins:
        assert pin.replace("_", "-") in {f.replace("_", "-") for f in freeze}, (pin, report)
    installed = json.loads(report[report.index("{"):report.index("pip.conf=")])
    found = {}
    for colls in installed.values():
        found.update({name: data["version"] for name, data in colls.items()})
    assert found["gpufleet.inference"] == version, found
    assert {"community.docker", "ansible.posix"} <= set(found), found
    # The offline build's wheelhouse is gone; the EE runs as AWX expects (uid 1000); the
    # controller-side tools of ee/bindep.txt are there.
    assert "pip.conf=no" in report and "user=1000" in report, report
    assert "/usr/bin/ps" in report and "/usr/bin/ssh" in report, report


def test_a_job_that_fails_on_the_host_fails_the_command(built_and_run):
    """gpufleet_serial=0 is refused by site.yml's first play: ansible-runner's rc and the
    recap's failed count make lab/ee.py fail, and it says so."""
    assert built_and_run[0] == 0, built_and_run[1]
    rc, out = ee("run", "--host", HOST, "--runs", "1", "--extra-vars",
                 json.dumps({"gpufleet_serial": 0}), timeout=300)
    assert rc == 1, out
    assert re.search(r"^%s\s+: ok=0\s+changed=0\s+unreachable=0\s+failed=1" % HOST, out,
                     re.MULTILINE), out
    assert re.search(r"lab/ee\.py: FAILED: the run site-1 in %s failed: ansible-runner rc 2, "
                     r"status 'failed', %s: \{'ok': 0, 'changed': 0, 'failures': 1" % (IMAGE, HOST),
                     out), out
