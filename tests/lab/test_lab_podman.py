# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's Podman host proves itself: lab-podman (two RTX 3090, Debian trixie's Podman 5
with Quadlet) gives containers their GPUs as CDI devices, as a host with the NVIDIA
Container Toolkit's generated spec does.

- /etc/cdi/nvidia.yaml has the shape `nvidia-ctk cdi generate` writes: kind nvidia.com/gpu, a
  device per GPU by index and by UUID, and `all`;
- `podman run --device nvidia.com/gpu=<uuid>` gives the container that GPU's device node and
  /dev/nvidiactl only; NVML inside sees exactly that GPU, renumbered 0; the driver library is
  the spec's mount with its soname link;
- memory a process of the container holds shows on the host's NVML under the host pid;
- an unknown CDI device fails the start with Podman's own error;
- compose.podman-gpu.yml runs with podman-compose, each service with its CDI GPU;
- site.yml with gpufleet_runtime podman: each dual-GPU mode as Quadlet units with CDI GPUs,
  verified; a re-run changes nothing; a failed verify rolls back byte for byte; a reboot
  brings the units back.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml
from conftest import _dual_boxes
from dual import HEALTH, apply, broken_vllm_catalog, modes

HOST = "lab-podman"
UUIDS = ["GPU-d0a1e2f3-0000-4000-8000-309000000010", "GPU-d0a1e2f3-0000-4000-8000-309000000011"]
MODES = modes(*UUIDS)
IMAGE = "registry.lab:5000/ollama/ollama:latest"
NVML_IN_CONTAINER = (
    "import json, pynvml; pynvml.nvmlInit(); "
    "hs = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]; "
    "print(json.dumps([pynvml.nvmlDeviceGetUUID(h) for h in hs]))")

HOST_PROCESSES = (
    "import json, pynvml\npynvml.nvmlInit()\nout = []\n"
    "for i in range(pynvml.nvmlDeviceGetCount()):\n"
    "    h = pynvml.nvmlDeviceGetHandleByIndex(i)\n"
    "    out += [[pynvml.nvmlDeviceGetUUID(h), p.pid, p.usedGpuMemory // 2**20]\n"
    "            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]\n"
    "print(json.dumps(out))\n")


@pytest.fixture(scope="module")
def podman():
    for hosts in _dual_boxes((HOST,)):
        host = hosts[HOST]
        assert podman_sh(host, "podman pull -q %s >/dev/null && echo ok" % IMAGE).stdout == "ok\n"
        yield host
        podman_sh(host, "podman rm -af -t 1 >/dev/null 2>&1; true", check=False)


def podman_sh(host, script, check=True):
    # The lab machine's cgroup v1 makes Podman 5 warn on every call; the warning is not ours.
    return host.sh("export PODMAN_IGNORE_CGROUPSV1_WARNING=1\n" + script, check=check)


def test_cdi_spec_is_shaped_as_nvidia_ctk_writes_it(podman):
    spec = yaml.safe_load(podman.sh("cat /etc/cdi/nvidia.yaml").stdout)
    assert (spec["cdiVersion"], spec["kind"]) == ("0.5.0", "nvidia.com/gpu")
    names = [d["name"] for d in spec["devices"]]
    assert names == ["0", UUIDS[0], "1", UUIDS[1], "all"]
    nodes = {d["name"]: [n["path"] for n in d["containerEdits"]["deviceNodes"]]
             for d in spec["devices"]}
    assert nodes[UUIDS[1]] == nodes["1"] == ["/dev/nvidia1"]
    assert nodes["all"] == ["/dev/nvidia0", "/dev/nvidia1"]
    edits = spec["containerEdits"]
    assert edits["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert [h["args"][1] for h in edits["hooks"]] == ["create-symlinks", "update-ldcache"]
    assert {h["hookName"] for h in edits["hooks"]} == {"createContainer"}
    # The device nodes exist on the host, with the NVIDIA major.
    out = podman.sh("stat -c '%n %t %T' /dev/nvidia0 /dev/nvidia1 /dev/nvidiactl").stdout
    assert out.split("\n")[:3] == ["/dev/nvidia0 c3 0", "/dev/nvidia1 c3 1",
                                   "/dev/nvidiactl c3 ff"]


def test_a_cdi_gpu_is_the_only_gpu_the_container_sees(podman):
    podman_sh(podman, "podman rm -f t1 >/dev/null 2>&1; podman run -d --name t1 "
                      "--device nvidia.com/gpu=%s %s >/dev/null" % (UUIDS[1], IMAGE))
    inside = podman_sh(podman, "podman exec t1 python3 -c '%s'" % NVML_IN_CONTAINER).stdout
    assert json.loads(inside) == [UUIDS[1]]
    nodes = podman_sh(podman, "podman exec t1 sh -c 'ls /dev/nvidia*'").stdout.split()
    assert nodes == ["/dev/nvidia1", "/dev/nvidiactl"]
    link = podman_sh(podman, "podman exec t1 readlink "
                             "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").stdout.strip()
    assert link == "libnvidia-ml.so.590.48.01"
    devices = json.loads(podman_sh(podman, "podman inspect t1 --format "
                                           "'{{json .HostConfig.Devices}}'").stdout)
    assert sorted(d["PathOnHost"] for d in devices) == ["/dev/nvidia1", "/dev/nvidiactl"]


def test_container_vram_shows_on_the_host_under_the_host_pid(podman):
    # The vision sidecar stand-in holds what GPUFLEET_STANDIN_VISION_VRAM_MIB says.
    podman_sh(podman, "podman rm -f t2 >/dev/null 2>&1; podman run -d --name t2 --entrypoint "
                      "/usr/bin/vision-server -e GPUFLEET_STANDIN_VISION_VRAM_MIB=1024 "
                      "-e GPUFLEET_STANDIN_SIDECAR_STARTUP_SECONDS=0 --device nvidia.com/gpu=0 "
                      "%s --port 18002 >/dev/null" % IMAGE)
    pid = int(podman_sh(podman, "podman inspect t2 --format '{{.State.Pid}}'").stdout)
    held = []
    for _attempt in range(50):
        held = json.loads(podman.py(HOST_PROCESSES))
        if held:
            break
        podman.sh("sleep 0.2")
    assert held == [[UUIDS[0], pid, 1024]], (pid, held)


def test_an_unknown_cdi_device_fails_the_start_with_podmans_error(podman):
    proc = podman_sh(podman, "podman run --rm --device nvidia.com/gpu=GPU-nope %s true 2>&1"
                     % IMAGE, check=False)
    assert proc.returncode != 0
    assert "unresolvable CDI devices nvidia.com/gpu=GPU-nope" in proc.stdout, proc.stdout


# What README's "Podman" section tells users of podman-compose to run in the project directory.
PODMAN_COMPOSE = ("cd /opt/gpufleet && set -a && . ./.env && set +a && podman-compose "
                  "$(printf -- '--profile %%s ' $(echo $COMPOSE_PROFILES | tr , ' ')) %s")


def test_compose_podman_gpu_yml_gives_podman_compose_the_cdi_gpus(podman, tmp_path):
    """compose_runtime podman renders compose.podman-gpu.yml; Debian's podman-compose (1.3)
    runs it: it reads COMPOSE_FILE from the environment only (not from .env, as Docker Compose
    does) and COMPOSE_PROFILES not at all (--profile per profile). Each GPU service gets its
    CDI GPU."""
    rc, out, _recap = apply(tmp_path, HOST, {
        "gpufleet_runtime": "compose", "compose_runtime": "podman", "compose_apply": False,
        "dual_gpu_mode": "vllm"})
    assert rc == 0, out
    env = podman.sh("cat /opt/gpufleet/.env").stdout
    assert "COMPOSE_FILE=compose.yml:compose.podman-gpu.yml" in env, env
    try:
        config = yaml.safe_load(podman_sh(podman, PODMAN_COMPOSE % "config").stdout)
        assert {name: svc.get("devices") for name, svc in config["services"].items()} == {
            name: ["nvidia.com/gpu=%s" % gpu] if gpu else None
            for name, gpu in MODES["vllm"].items()}, config
        # One service is started for real (the others would only repeat it).
        podman_sh(podman, PODMAN_COMPOSE % "up -d vision >/dev/null 2>&1")
        devices = json.loads(podman_sh(podman, "podman inspect gpufleet_vision_1 --format "
                                               "'{{json .HostConfig.Devices}}'").stdout)
        assert sorted(d["PathOnHost"] for d in devices) == ["/dev/nvidia0", "/dev/nvidiactl"]
        inside = podman_sh(podman, "podman exec gpufleet_vision_1 python3 -c '%s'"
                           % NVML_IN_CONTAINER).stdout
        assert json.loads(inside) == [UUIDS[0]]
    finally:
        podman_sh(podman, PODMAN_COMPOSE % "down -t 1 >/dev/null 2>&1" + "; rm -rf /opt/gpufleet",
                  check=False)


# ---- site.yml with gpufleet_runtime: podman (inventory/lab) ---------------------------------

UNITS_DIR = "/etc/containers/systemd"
ENV_DIR = "/etc/gpufleet/podman"
# The Quadlet files and the containers' environment files (not the backups, `*~`).
PODMAN_FILES = ("$(find %s %s -maxdepth 1 -type f -name '*gpufleet*' ! -name '*~' -o "
                "-maxdepth 1 -type f -name '*.env' ! -name '*~' | sort)" % (UNITS_DIR, ENV_DIR))
UNIT_GPU = {"ollama": UUIDS[0], "vision": UUIDS[0], "ollama_research": UUIDS[1],
            "vllm": UUIDS[1], "docling": None}


def running_units(host):
    out = host.sh("systemctl list-units --plain --no-legend --state=running 'gpufleet-*'").stdout
    return {line.split()[0] for line in out.splitlines()} - {
        "gpufleet-nvml-relay.service"}  # the lab's own


def assert_mode(host, services, processes=True):
    """Each service of the mode runs as its Quadlet unit, its container with exactly the device
    node of its planned GPU, and (for the engines, ``processes``: once the verify loaded their
    models) its process holds memory there under the service's cgroup; nothing else of ours
    runs."""
    assert running_units(host) == {"gpufleet-%s.service" % s for s in services}, services
    minors = {UUIDS[0]: "/dev/nvidia0", UUIDS[1]: "/dev/nvidia1"}
    held = json.loads(host.py(HOST_PROCESSES))
    for name in services:
        nodes = podman_sh(host, "podman exec gpufleet-%s sh -c 'ls /dev/nvidia[0-9]* "
                                "2>/dev/null; true'" % name).stdout.split()
        gpu = UNIT_GPU[name]
        assert nodes == ([minors[gpu]] if gpu else []), (name, nodes)
        if gpu is None or not processes:
            continue
        units = {host.sh("ps -o unit= -p %d" % pid).stdout.strip()
                 for uuid, pid, _mib in held if uuid == gpu}
        assert "gpufleet-%s.service" % name in units, (name, held, units)


def test_site_runs_the_modes_as_quadlet_units_rolls_back_and_comes_back_after_a_reboot(
        podman, tmp_path):
    """gpufleet_runtime podman (the host's inventory): site.yml writes a Quadlet .container
    per service with its GPU as a CDI device, starts them through systemd and verifies them
    (dual-GPU mode vllm, then ollama; mixed places as they do, unit tests); a re-run changes
    nothing; a mode switch stops the services that leave and waits for their GPU memory; a
    service that fails its verify rolls the files back byte for byte and the last good
    services run again; after a reboot the units come back by themselves, healthy."""
    podman_sh(podman, "podman rm -af -t 1 >/dev/null 2>&1; true")
    rc, out, recap = apply(tmp_path, HOST, {"dual_gpu_mode": "vllm"}, playbook="site.yml")
    assert rc == 0, out
    assert_mode(podman, MODES["vllm"])
    unit = podman.sh("cat %s/gpufleet-vllm.container" % UNITS_DIR).stdout
    assert "AddDevice=nvidia.com/gpu=%s" % UUIDS[1] in unit, unit
    assert "Image=registry.lab:5000/vllm/vllm-openai:" in unit, unit
    # Quadlet's units are generated: started by their [Install] section, never enabled.
    assert podman.sh("systemctl is-enabled gpufleet-vllm.service", check=False
                     ).stdout.strip() == "generated"

    rc, out, recap = apply(tmp_path, HOST, {"dual_gpu_mode": "vllm"}, playbook="site.yml")
    assert rc == 0 and recap[HOST][1] == 0, out  # a re-run changes nothing

    rc, out, recap = apply(tmp_path, HOST, {"dual_gpu_mode": "ollama"}, playbook="site.yml")
    assert rc == 0, out
    assert_mode(podman, MODES["ollama"])
    drained = re.search(r"Wait until their GPU memory has drained\] \*+\n(\S+): \[%s\]"
                        % HOST, out)
    assert drained and drained.group(1) == "ok", out  # vllm left
    assert podman.sh("cd %s && ls gpufleet*" % UNITS_DIR).stdout.split() == [
        "gpufleet-%s.container" % s for s in sorted(MODES["ollama"])] + ["gpufleet.network"]

    before = podman.sh("sha256sum %s" % PODMAN_FILES).stdout
    assert ENV_DIR + "/ollama.env" in before and "gpufleet.network" in before, before
    rc, out, recap = apply(tmp_path, HOST, {
        "gpufleet_runtime": "podman", "services_dual_gpu_mode": "vllm",
        "services_catalog": broken_vllm_catalog(), "systemd_units_verify_timeout": 15})
    assert rc != 0, out
    assert re.search(r"systemd_units: .*vllm.*; rolled back to the last good files and instances "
                     r"\(gpufleet-docling.service, gpufleet-ollama.service, "
                     r"gpufleet-ollama_research.service, gpufleet-vision.service\)", out), out
    assert podman.sh("sha256sum %s" % PODMAN_FILES).stdout == before
    assert_mode(podman, MODES["ollama"], processes=False)  # restarted: no model loaded yet

    reboot_host(podman)
    for name in MODES["ollama"]:
        podman.wait_http("http://127.0.0.1:%d/%s" % (
            HEALTH[name], "health" if name == "docling" else "api/version"), timeout=60)
    assert_mode(podman, MODES["ollama"], processes=False)


def reboot_host(host, timeout=120.0):
    """Restart the host's container (the outer engine): its systemd boots again."""
    subprocess.run(["docker", "restart", host.name], check=True, capture_output=True, timeout=180)
    deadline = time.time() + timeout
    while host.sh("systemctl is-system-running --wait >/dev/null 2>&1; echo up",
                  check=False).stdout.strip() != "up":
        assert time.time() < deadline, "%s did not come back" % host.name
        time.sleep(1)
