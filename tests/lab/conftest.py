# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the lab tests: the simulated hosts they need, started once per session.

The hosts come from inventory/lab through lab/lab.py (engine and images as lab/README.md
says); they are removed at the end unless GPUFLEET_LAB_KEEP=1. Nothing here is skipped:
without a Docker engine and mmdebstrap the session fails, as it should in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "lab")
HOSTS = ("lab-ws", "lab-cpu")
# What a lab host fetches from (lab/README.md, "Registry and hub"): it starts with no image and
# no Ollama model, as a new real host does.
REGISTRY = "registry.lab:5000"
HF_ENDPOINT = "http://hub.lab:8080"


def lab_image(ref):
    """The lab registry's name of an image: the mirror that services_image_mirrors names for
    docker.io and quay.io (inventory/lab/group_vars/lab.yml), so the engine pulls it there."""
    return "%s/%s" % (REGISTRY, ref)


def _docker_host():
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    out = subprocess.run(
        [os.path.join(LAB, "engine.sh"), "ensure"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


class Host:
    """One simulated host: run shell or Python inside it."""

    def __init__(self, name):
        self.name = name

    def sh(self, script, check=True, timeout=120, input=None):
        proc = subprocess.run(
            ["docker", "exec", "-i", self.name, "sh", "-ec", script],
            input=input,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                "%s: script failed (rc %d)\n%s\nstdout: %s\nstderr: %s"
                % (self.name, proc.returncode, script, proc.stdout, proc.stderr)
            )
        return proc

    def py(self, code, *args, timeout=120):
        proc = subprocess.run(
            ["docker", "exec", "-i", self.name, "python3", "-", *args],
            input=code,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                "%s: python failed (rc %d)\n%s" % (self.name, proc.returncode, proc.stderr)
            )
        return proc.stdout

    def used_mib(self):
        """Used MiB per GPU as the real nvidia-ml-py reads them from the stand-in NVML."""
        return json.loads(self.py(USED_MIB))

    def wait_used(self, gpu, predicate, timeout=15.0):
        deadline = time.time() + timeout
        while True:
            used = self.used_mib()
            if predicate(used[gpu]):
                return used, time.time()
            if time.time() > deadline:
                raise AssertionError(
                    "%s GPU %d used MiB never matched; last: %s" % (self.name, gpu, used)
                )
            time.sleep(0.1)

    def http(self, url, body=None, timeout=30):
        """(status, parsed JSON or text) of an HTTP call made inside the host."""
        out = self.py(
            HTTP,
            url,
            json.dumps(body) if body is not None else "",
            str(timeout),
            timeout=timeout + 10,
        )
        status, _sep, text = out.partition("\n")
        try:
            return int(status), json.loads(text)
        except ValueError:
            return int(status), text

    def pull_image(self, ref, timeout=300):
        """``docker pull`` the lab registry's copy of ``ref``; returns the name pulled."""
        name = lab_image(ref)
        self.sh("docker pull -q %s >/dev/null" % name, timeout=timeout)
        return name

    def pull_model(self, url, model, timeout=120):
        """Pull ``model`` (``llama3.2:3b``) into the Ollama server at ``url`` as a host without
        registry.ollama.ai does: ``/api/pull`` from the lab registry (plain HTTP, hence
        ``insecure``), then ``/api/copy`` to the plain name."""
        source = "%s/library/%s" % (REGISTRY, model)
        status, body = self.http(url + "/api/pull",
                                 {"model": source, "insecure": True, "stream": False},
                                 timeout=timeout)
        assert (status, body) == (200, {"status": "success"}), (self.name, model, status, body)
        status, body = self.http(url + "/api/copy", {"source": source, "destination": model})
        assert status == 200, (self.name, model, status, body)

    def wait_http(self, url, timeout=30.0):
        deadline = time.time() + timeout
        while True:
            status, payload = self.http(url, timeout=5)
            if status == 200:
                return payload
            if time.time() > deadline:
                raise AssertionError(
                    "%s: %s never answered 200 (last %s %s)" % (self.name, url, status, payload)
                )
            time.sleep(0.2)


def set_drain_delay(host, seconds):
    """Rewrite the host's NVML state drain_delay line (lab/nvml/README.md) through a temp file
    and a rename: a process that ends from now on holds its memory ``seconds`` longer."""
    host.sh(
        "s=/etc/gpufleet-nvml/state; sed 's/^drain_delay .*/drain_delay %s/' $s > $s.tmp; "
        "mv $s.tmp $s; grep -qx 'drain_delay %s' $s" % (seconds, seconds)
    )


USED_MIB = """
import json, pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    out.append(pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).used // 2**20)
print(json.dumps(out))
"""

HTTP = """
import sys, urllib.request, urllib.error
url, body, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
req = urllib.request.Request(url, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=timeout) as answer:
        print(answer.status); print(answer.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code); print(exc.read().decode())
except (urllib.error.URLError, ConnectionError, OSError) as exc:
    print(0); print(exc)
"""


@pytest.fixture(scope="session")
def lab():
    """Start lab-ws and lab-cpu (parallel), yield {name: Host}, remove them afterwards."""
    os.environ["DOCKER_HOST"] = _docker_host()
    cmd = [sys.executable, os.path.join(LAB, "lab.py"), "up", "--hosts", ",".join(HOSTS)]
    t0 = time.time()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, "lab up failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    sys.stderr.write("lab up (%s) in %.1f s\n" % (", ".join(HOSTS), time.time() - t0))
    yield {name: Host(name) for name in HOSTS}
    if os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        subprocess.run(
            [sys.executable, os.path.join(LAB, "lab.py"), "down", "--hosts", ",".join(HOSTS)],
            check=False,
            capture_output=True,
            timeout=300,
        )


@pytest.fixture()
def ws(lab):
    """lab-ws with nothing on its GPUs: what earlier tests held has drained."""
    host = lab["lab-ws"]
    host.wait_used(0, lambda used: used == 0)
    host.wait_used(1, lambda used: used == 0)
    return host


@pytest.fixture()
def cpu(lab):
    return lab["lab-cpu"]


DUAL_HOSTS = ("lab-dual", "lab-edge")


def _dual_boxes(names):
    """Start the hosts ``names`` (the first a dual-GPU box), yield {name: Host}, remove them."""
    os.environ["DOCKER_HOST"] = _docker_host()
    hosts = ",".join(names)
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), "up", "--hosts", hosts],
                          check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, "lab up failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    sys.stderr.write("lab up (%s) in %.1f s\n" % (hosts, time.time() - t0))
    yield {name: Host(name) for name in names}
    if os.environ.get("GPUFLEET_LAB_KEEP") != "1":
        subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), "down", "--hosts", hosts],
                       check=False, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def dual_lab():
    """lab-dual and lab-edge (a CPU box), for the tests of site.yml (never lab-ws or lab-spark,
    which other tests use)."""
    yield from _dual_boxes(DUAL_HOSTS)


@pytest.fixture(scope="session")
def dual2_lab():
    """lab-dual2 (2x RTX 3090, like lab-dual), for the tests of apply.yml: they run beside
    the site tests."""
    yield from _dual_boxes(("lab-dual2",))


@pytest.fixture(scope="session")
def dual3_lab():
    """lab-dual3 (2x RTX 3090), for the first-run and installed-collection tests: they recreate
    it empty, beside the apply tests on lab-dual2 (one group of hosts is one worker's queue: two
    short queues end sooner than one long one)."""
    yield from _dual_boxes(("lab-dual3",))


def lab_py(*args):
    """Run lab/lab.py with ``args``; it must succeed."""
    proc = subprocess.run([sys.executable, os.path.join(LAB, "lab.py"), *args],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def empty_dual3(dual3_lab):
    """lab-dual3 as a host that never had anything, once per test module: recreated, its
    engine empty (no image, no model, no unit)."""
    lab_py("down", "--hosts", "lab-dual3")
    lab_py("up", "--hosts", "lab-dual3")
    host = dual3_lab["lab-dual3"]
    assert host.sh("docker image ls -q").stdout.split() == []
    return host
