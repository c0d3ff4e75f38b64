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
- a Quadlet .container with AddDevice= becomes a systemd service that runs the container.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import _dual_boxes

HOST = "lab-podman"
UUIDS = ["GPU-d0a1e2f3-0000-4000-8000-309000000010", "GPU-d0a1e2f3-0000-4000-8000-309000000011"]
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


def test_a_quadlet_container_runs_as_a_systemd_service(podman):
    podman.sh("mkdir -p /etc/containers/systemd && cat > /etc/containers/systemd/probe.container",
              input=("[Container]\nImage=%s\nContainerName=probe\nAddDevice=nvidia.com/gpu=%s\n"
                     "Pull=never\n" % (IMAGE, UUIDS[0])))
    try:
        podman.sh("systemctl daemon-reload && systemctl start probe.service")
        state = podman.sh("systemctl show -p ActiveState --value probe.service").stdout.strip()
        assert state == "active"
        inside = podman_sh(podman, "podman exec probe python3 -c '%s'"
                           % NVML_IN_CONTAINER).stdout
        assert json.loads(inside) == [UUIDS[0]]
    finally:
        podman.sh("systemctl stop probe.service; rm -f /etc/containers/systemd/probe.container; "
                  "systemctl daemon-reload", check=False)
