#!/usr/bin/env python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulated GPU lab: start, show and remove its hosts (lab/README.md).

  lab/lab.py up     [--inventory inventory/lab] [--hosts a,b]   start (or refresh) hosts, and
                                                   the lab network, registry and hub before them
  lab/lab.py status [--inventory inventory/lab]                 registry, hub, one line a host
  lab/lab.py down   [--hosts a,b] [--all]                        stop and remove hosts (--all:
                                                   the registry, hub and network too)
  lab/lab.py services [--json]                                   registry and hub addresses
  lab/lab.py image                                               build the images only
  lab/lab.py write-state HOST                                    rewrite a host's driver state
  lab/lab.py up|down|status --fleet N      the generated fleet lab-fleet-01..N (beside the rest)
  lab/lab.py inventory [--host H]          the running lab hosts as Ansible inventory JSON
  ansible-playbook -i lab/lab.py ...       the same, as a script inventory (--list / --host)

Each host is a container of the image lab/image/build.sh makes, named like the inventory
host and labelled org.gpufleet.lab=<host>; only containers, volumes and networks with that
label are ever touched. The hosts start with no image at all, on the internal network
gpufleet-lab, where the lab registry (registry.lab:5000: the stand-in images under the real
names, the Ollama models) and the lab Hugging Face hub (hub.lab:8080) answer; what they hold
is lab/content.yml. The Docker engine is the one lab/engine.sh chooses (DOCKER_HOST).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.parse

import yaml

LAB = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(LAB)
LABEL = "org.gpufleet.lab"
STATE = "/etc/gpufleet-nvml/state"
HOST_PROCS = "/run/gpufleet-nvml/procs"
RUN_FLAGS = [
    # systemd as PID 1 and an inner Docker engine without --privileged (lab/README.md).
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--cgroupns",
    "host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp",
    "--stop-signal",
    "SIGRTMIN+3",
]


class LabError(Exception):
    pass


def docker(*args, check=True, input=None, capture=True, timeout=300):
    proc = subprocess.run(
        ["docker", *args], input=input, check=False, capture_output=capture, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise LabError(
            "docker %s failed (rc %d): %s"
            % (
                " ".join(args[:3]),
                proc.returncode,
                (proc.stderr or b"").decode(errors="replace").strip(),
            )
        )
    return proc


def dexec(host, script, input=None, check=True, timeout=120):
    return docker(
        "exec", "-i", host, "sh", "-ec", script, input=input, check=check, timeout=timeout
    )


# --- inventory ---------------------------------------------------------------------------------


def _merge_group_vars(inv_dir, group, into):
    for ext in (".yml", ".yaml"):
        path = os.path.join(inv_dir, "group_vars", group + ext)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                for key, value in (yaml.safe_load(handle) or {}).items():
                    into.setdefault(key, value)


def load_inventory(inv_dir):
    """{host: vars} of every host of the lab inventory (host vars over group vars)."""
    with open(os.path.join(inv_dir, "hosts.yml"), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    hosts = {}

    def walk(name, group, parents):
        for host, hvars in (group.get("hosts") or {}).items():
            merged = dict(hvars or {})
            for g in [name, *parents]:
                _merge_group_vars(inv_dir, g, merged)
            _merge_group_vars(inv_dir, "all", merged)
            hosts[host] = merged
        for child, sub in (group.get("children") or {}).items():
            walk(child, sub or {}, [name, *parents])

    for name, group in data.items():
        walk(name, group or {}, [])
    return hosts


def state_text(host, hvars):
    """The stand-in NVML state file of one host (lab/nvml/README.md)."""
    lines = [
        "# written by lab/lab.py from the lab inventory: host %s" % host,
        "driver_version %s" % hvars.get("lab_driver_version", "590.48.01"),
        "cuda_driver_version %s" % hvars.get("lab_cuda_driver_version", 13010),
        "drain_delay %s" % float(hvars.get("lab_drain_delay", 1.0)),
        "procs_dir %s" % HOST_PROCS,
    ]
    for i, gpu in enumerate(nvidia_gpus(hvars)):
        for key in ("name", "memory_mib", "uuid", "compute_capability"):
            if key not in gpu:
                raise LabError("%s: lab_gpus[%d].%s is required" % (host, i, key))
        lines += [
            "gpu",
            "name %s" % gpu["name"],
            "uuid %s" % gpu["uuid"],
            "pci_bus_id %s" % gpu.get("pci_bus_id", "00000000:%02X:00.0" % (i + 1)),
            "memory_total_mib %d" % int(gpu["memory_mib"]),
            "memory_reserved_mib %d" % int(gpu.get("memory_reserved_mib", 0)),
            "memory_used_mib %d" % int(gpu.get("memory_used_mib", 0)),
            "compute_capability %s" % gpu["compute_capability"],
            "temperature_c %d" % int(gpu.get("temperature_c", 40)),
            "utilization_gpu 0",
            "utilization_memory 0",
        ]
        if "power_limit_mw" in gpu:
            lines.append("power_limit_mw %d" % int(gpu["power_limit_mw"]))
        if gpu.get("unified"):
            lines.append("unified 1")
        if gpu.get("lost"):
            lines.append("lost 1")
        if "mig_mode" in gpu:
            lines.append("mig_mode %d" % (1 if gpu["mig_mode"] else 0))
        for mig in gpu.get("mig_devices") or []:
            lines.append(
                "mig_device %d %d %d %d %s %s"
                % (
                    mig["gi"],
                    mig["ci"],
                    mig["memory_mib"],
                    mig.get("used_mib", 0),
                    mig["uuid"],
                    mig["name"],
                )
            )
        lines += topology_lines(host, nvidia_gpus(hvars), i)
    return "\n".join(lines) + "\n"


NVLINK_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS of the 590 driver's nvml.h


def _lab_int(host, i, key, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LabError("%s: lab_gpus[%d].%s must be an integer %d-%d; got: %r"
                       % (host, i, key, low, high, value))
    return value


def topology_lines(host, gpus, i):
    """The topology lines of NVIDIA GPU ``i``'s state (lab/nvml/README.md): numa_node,
    host_bridge, pcie_switch, nvlink_ports as given; ``nvlink: [{peer, links}]`` as ``nvlink
    <peer's bus id> <links>``, ``peer`` being the NVML index (the position among the host's
    NVIDIA ``lab_gpus``). NVLinks must be listed on both GPUs with the same count."""
    gpu = gpus[i]
    lines = ["numa_node %d" % _lab_int(host, i, "numa_node", gpu.get("numa_node", 0), 0, 255)]
    for key in ("host_bridge", "pcie_switch", "nvlink_ports"):
        if key in gpu:
            high = NVLINK_MAX_LINKS if key == "nvlink_ports" else 9999
            lines.append("%s %d" % (key, _lab_int(host, i, key, gpu[key], 0, high)))
    total = 0
    for k, link in enumerate(gpu.get("nvlink") or []):
        at = "nvlink[%d]" % k
        if not isinstance(link, dict) or set(link) != {"peer", "links"}:
            raise LabError("%s: lab_gpus[%d].%s must be {peer, links}; got: %r"
                           % (host, i, at, link))
        peer = _lab_int(host, i, at + ".peer", link["peer"], 0, len(gpus) - 1)
        links = _lab_int(host, i, at + ".links", link["links"], 1, NVLINK_MAX_LINKS)
        if peer == i:
            raise LabError("%s: lab_gpus[%d].%s.peer is the GPU itself" % (host, i, at))
        back = [other["links"] for other in gpus[peer].get("nvlink") or []
                if isinstance(other, dict) and other.get("peer") == i]
        if back != [links]:
            raise LabError("%s: lab_gpus[%d].%s: %d NVLinks to GPU %d, but lab_gpus[%d] lists "
                           "%s back (NVLinks connect both ends)"
                           % (host, i, at, links, peer, peer, back or "none"))
        total += links
        bus = gpus[peer].get("pci_bus_id", "00000000:%02X:00.0" % (peer + 1))
        lines.append("nvlink %s %d" % (bus, links))
    if total > gpu.get("nvlink_ports", NVLINK_MAX_LINKS):
        raise LabError("%s: lab_gpus[%d] has %d NVLinks, more than its nvlink_ports %s"
                       % (host, i, total, gpu.get("nvlink_ports", NVLINK_MAX_LINKS)))
    return lines


# --- the simulated AMD driver (lab/servers/amd_smi.py, gpuview.py) ------------------------------

AMD_STATE = "/etc/gpufleet-amd/state"
AMD_PROCS = "/run/gpufleet-amd/procs"
AMD_REQUIRED = ("name", "memory_mib", "uuid", "unique_id", "pci_bus_id")
# The kernel string amd-smi shows as driver.version for the in-tree amdgpu driver (the MI210
# capture's, shortened).
AMD_DRIVER = "Linuxversion6.14.0-24-generic(buildd@lab)#24~24.04.3-UbuntuSMPPREEMPT_DYNAMIC"


# An AMD host's inner engine gives its containers the DRM and KFD nodes: the host's own device
# cgroup (cgroup v1 nests the inner containers under it) must allow those majors.
AMD_RUN_FLAGS = ["--device-cgroup-rule", "c 226:* rwm", "--device-cgroup-rule", "c 235:* rwm"]
# A Podman host (lab_engine: podman): its NVIDIA device nodes (major 195) are given to the
# containers through CDI, and netavark sets its bridge's sysctls on the host as root may on a
# real one (Docker's /proc/sys is read-only otherwise).
PODMAN_RUN_FLAGS = ["--device-cgroup-rule", "c 195:* rwm", "--security-opt",
                    "systempaths=unconfined"]


def engine_of(hvars):
    """The host's container engine: docker (the default) or podman (lab_engine)."""
    engine = hvars.get("lab_engine", "docker")
    if engine not in ("docker", "podman"):
        raise LabError("lab_engine must be docker or podman; got: %r" % (engine,))
    return engine


def nvidia_gpus(hvars):
    """The lab_gpus NVML sees (vendor nvidia, the default)."""
    return [g for g in hvars.get("lab_gpus") or [] if g.get("vendor", "nvidia") == "nvidia"]


def amd_gpus(hvars):
    return [g for g in hvars.get("lab_gpus") or [] if g.get("vendor") == "amd"]


def amd_state_text(host, hvars):
    """The simulated AMD driver's state of one host (the NVML state format, vendor amd): each
    GPU with its amd-smi UUID (smi_uuid), its ROCm UUID (uuid: GPU-<unique_id>, what
    rocminfo prints and ROCR_VISIBLE_DEVICES accepts) and its render node's minor."""
    lines = [
        "# written by lab/lab.py from the lab inventory: host %s (AMD GPUs)" % host,
        "vendor amd",
        "driver_version %s" % hvars.get("lab_amd_driver_version", AMD_DRIVER),
        "drain_delay %s" % float(hvars.get("lab_drain_delay", 1.0)),
        "procs_dir %s" % AMD_PROCS,
    ]
    for i, gpu in enumerate(amd_gpus(hvars)):
        for key in AMD_REQUIRED:
            if key not in gpu:
                raise LabError("%s: lab_gpus[amd %d].%s is required" % (host, i, key))
        lines += [
            "gpu",
            "name %s" % gpu["name"],
            "uuid GPU-%s" % gpu["unique_id"],
            "smi_uuid %s" % gpu["uuid"],
            "pci_bus_id %s" % gpu["pci_bus_id"],
            "memory_total_mib %d" % int(gpu["memory_mib"]),
            "memory_reserved_mib %d" % int(gpu.get("memory_reserved_mib", 0)),
            "memory_used_mib %d" % int(gpu.get("memory_used_mib", 0)),
            "render_minor %d" % (128 + i),
            "card %d" % i,
            "kfd_id %d" % int(gpu.get("kfd_id", 1000 + i)),
            "node_id %d" % (i + 1),
            "asic_device_id %s" % gpu.get("device_id", "0x740f"),
            "gfx_target %s" % gpu.get("gfx_target", "gfx90a"),
            "compute_units %d" % int(gpu.get("compute_units", 104)),
            "power_limit_w %d" % int(gpu.get("power_limit_w", 300)),
            "slot_type %s" % gpu.get("slot_type", "OAM"),
            "vram_type %s" % gpu.get("vram_type", "HBM"),
            "temperature_c %d" % int(gpu.get("temperature_c", 40)),
        ]
    return "\n".join(lines) + "\n"


# The device nodes a container is given: a ROCm container /dev/kfd and /dev/dri/card<n>,
# renderD<128+n>; a CDI container (Podman hosts) /dev/nvidia<n> and /dev/nvidiactl. Character
# devices with the real majors (226 for DRM, 195 for NVIDIA; /dev/kfd's is dynamic, 235 here):
# the engine maps them into containers; nothing opens them. Made from a tmpfiles.d file, now
# and at each boot (gpufleet-lab-devices.service: the host's /dev is new at each start), as a
# driver makes them.
DEVICES_CONF = "/etc/tmpfiles.d/gpufleet-lab-devices.conf"


def device_nodes_text(nvidia_count, amd_count):
    """The tmpfiles.d lines of the device nodes (empty: none)."""
    lines = []
    if amd_count:
        lines += ["d /dev/dri 0755 root root -", "c /dev/kfd 0666 root render - 235:0"]
        for i in range(amd_count):
            lines += ["c /dev/dri/card%d 0660 root video - 226:%d" % (i, i),
                      "c /dev/dri/renderD%d 0666 root render - 226:%d" % (128 + i, 128 + i)]
    if nvidia_count:
        lines += ["c /dev/nvidia%d 0666 root root - 195:%d" % (i, i) for i in range(nvidia_count)]
        lines.append("c /dev/nvidiactl 0666 root root - 195:255")
    return "".join(line + "\n" for line in lines)


AMD_NODES = """
mkdir -p %s && chgrp video %s && chmod 1775 %s
ln -sf /opt/gpufleet-lab/servers/amd-smi /usr/local/bin/amd-smi
"""


# --- CDI (Podman hosts) ---------------------------------------------------------------------

CDI_SPEC = "/etc/cdi/nvidia.yaml"
NVIDIA_LIB_DIR = "/usr/lib/x86_64-linux-gnu"
STANDIN_NVML = "/opt/gpufleet-lab/nvml/libnvidia-ml.so.1"
CDI_HOOK = "/usr/bin/nvidia-cdi-hook"


def cdi_spec_text(hvars):
    """The CDI spec of a Podman host's NVIDIA GPUs, as `nvidia-ctk cdi generate` writes it
    (kind nvidia.com/gpu; one device per GPU by index and by UUID, and ``all``; the device
    nodes /dev/nvidia<index>; the driver library bound read-only with its soname link made by
    nvidia-cdi-hook create-symlinks; update-ldcache), pointing at the stand-in library and
    hook (lab/hook/cdi_hook.py). MIG devices are not described (no Podman host has them)."""
    version = hvars.get("lab_driver_version", "590.48.01")
    library = "%s/libnvidia-ml.so.%s" % (NVIDIA_LIB_DIR, version)

    def device(name, indexes):
        return {"name": name, "containerEdits": {
            "deviceNodes": [{"path": "/dev/nvidia%d" % i} for i in indexes]}}

    gpus = nvidia_gpus(hvars)
    devices = []
    for i, gpu in enumerate(gpus):
        devices += [device(str(i), [i]), device(gpu["uuid"], [i])]
    devices.append(device("all", range(len(gpus))))
    spec = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [{"path": "/dev/nvidiactl"}],
            "hooks": [
                {"hookName": "createContainer", "path": CDI_HOOK,
                 "args": ["nvidia-cdi-hook", "create-symlinks", "--link",
                          "libnvidia-ml.so.%s::%s/libnvidia-ml.so.1" % (version, NVIDIA_LIB_DIR)]},
                {"hookName": "createContainer", "path": CDI_HOOK,
                 "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", NVIDIA_LIB_DIR]},
            ],
            "mounts": [{"hostPath": STANDIN_NVML, "containerPath": library,
                        "options": ["ro", "nosuid", "nodev", "bind"]}],
        },
    }
    return "---\n" + yaml.safe_dump(spec, sort_keys=False)


def standin_env(hvars):
    timings = hvars.get("lab_timings") or {}
    return "".join("%s=%s\n" % (k, v) for k, v in sorted(timings.items()))


# --- the generated fleet (lab.py up --fleet N) -----------------------------------------------

FLEET_PREFIX = "lab-fleet-"
FLEET_GROUP = "lab_fleet"
# Small boxes as a fleet has them, cycled over lab-fleet-01..N: (GPU name, MiB as nvidia-smi
# reports it, compute capability), or None for a CPU box.
FLEET_BOXES = (
    ("NVIDIA L4", 23034, "8.9"),
    ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
    ("NVIDIA A10", 23028, "8.6"),
    None,
    ("Tesla T4", 15360, "7.5"),
    ("NVIDIA RTX A4000", 16376, "8.6"),
    ("NVIDIA L4", 23034, "8.9"),
    ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
)
FLEET_MAX = 64


def fleet_name(index):
    return "%s%02d" % (FLEET_PREFIX, index)


def fleet_host_vars(name):
    """The lab_gpus of a generated fleet host, from its number (the same on every call)."""
    suffix = name[len(FLEET_PREFIX):] if name.startswith(FLEET_PREFIX) else ""
    if not suffix.isdigit() or not 1 <= int(suffix) <= FLEET_MAX:
        raise LabError("not a fleet host name (%s01..%02d): %s" % (FLEET_PREFIX, FLEET_MAX, name))
    index = int(suffix)
    box = FLEET_BOXES[(index - 1) % len(FLEET_BOXES)]
    if box is None:
        return {"lab_gpus": []}
    gpu_name, memory_mib, capability = box
    return {"lab_gpus": [{
        "name": gpu_name,
        "memory_mib": memory_mib,
        "uuid": "GPU-f1ee7000-0000-4000-8000-%012d" % index,
        "compute_capability": capability,
        "pci_bus_id": "00000000:01:00.0",
        "memory_reserved_mib": 256,
    }]}


def fleet_hosts(inv_dir, count):
    """{host: vars} of lab-fleet-01..count, with the lab group's variables like every lab host."""
    if not 1 <= count <= FLEET_MAX:
        raise LabError("--fleet must be 1-%d; got: %d" % (FLEET_MAX, count))
    hosts = {}
    for index in range(1, count + 1):
        merged = fleet_host_vars(fleet_name(index))
        for group in ("lab", "all"):
            _merge_group_vars(inv_dir, group, merged)
        hosts[fleet_name(index)] = merged
    return hosts


def _group_vars(inv_dir, group):
    merged = {}
    _merge_group_vars(inv_dir, group, merged)
    return merged


def _gpu_group(gpu_name):
    """gpu_<model>, the group of that GPU's hosts.

    NVIDIA GeForce RTX 4090 -> gpu_geforce_rtx_4090.
    """
    slug = "".join(c if c.isalnum() else "_" for c in gpu_name.lower()).strip("_")
    while "__" in slug:
        slug = slug.replace("__", "_")
    if slug.startswith("nvidia_"):
        slug = slug[len("nvidia_"):]
    return "gpu_" + slug


def expected_gpus(lab_gpus):
    """What a lab host declares (gpufleet_expected_gpus): the GPUs the lab gave it."""
    return {
        "count": len(lab_gpus),
        "names": [gpu["name"] for gpu in lab_gpus],
        "min_memory_mib": min((int(gpu["memory_mib"]) for gpu in lab_gpus), default=0),
    }


def inventory_json(inv_dir, running):
    """Ansible's script-inventory JSON (--list) of the running lab hosts.

    Groups: lab (every host, with inventory/lab/group_vars/lab.yml), lab_fleet (the generated
    hosts), gpu_<model> for each GPU model and gpu_none for hosts without a GPU. Host
    variables: lab_gpus and gpufleet_expected_gpus (what the lab gave the host).
    """
    static = load_inventory(inv_dir)
    groups = {"lab": [], FLEET_GROUP: []}
    hostvars = {}
    for host in sorted(running):
        if host in static:
            lab_gpus = static[host].get("lab_gpus") or []
        elif host.startswith(FLEET_PREFIX):
            lab_gpus = fleet_host_vars(host)["lab_gpus"]
            groups[FLEET_GROUP].append(host)
        else:
            continue  # a lab container this inventory does not describe
        groups["lab"].append(host)
        hostvars[host] = {"lab_gpus": lab_gpus, "gpufleet_expected_gpus": expected_gpus(lab_gpus)}
        for group in sorted({_gpu_group(gpu["name"]) for gpu in lab_gpus} or {"gpu_none"}):
            groups.setdefault(group, []).append(host)
    # Ansible adds the hosts in the order it meets them: the lab group, sorted, comes first, so
    # that serial batches (the canary first) follow the host names.
    out = {"_meta": {"hostvars": hostvars}}
    for group in ["lab", FLEET_GROUP, *sorted(set(groups) - {"lab", FLEET_GROUP})]:
        out[group] = {"hosts": groups[group]}
    out["lab"]["vars"] = dict(_group_vars(inv_dir, "all"), **_group_vars(inv_dir, "lab"))
    return out


def running_lab_hosts():
    proc = docker("ps", "--filter", "label=%s" % LABEL, "--format", "{{.Names}}")
    return sorted(set(proc.stdout.decode().split()) - set(SERVICES))


# --- the lab's registry and Hugging Face hub (lab/content.yml) -----------------------------

CONTENT = os.path.join(LAB, "content.yml")
BUILD = os.environ.get("GPUFLEET_LAB_BUILD") or os.path.join(ROOT, ".build", "lab")
NETWORK = "gpufleet-lab"  # internal: the hosts, the registry and the hub; no way out
# Only for the ports published on the engine's 127.0.0.1 (Docker publishes no port of a
# container that is on internal networks alone): the registry and the hub, never a host.
PUBLISH_NETWORK = "gpufleet-lab-publish"
# A fixed subnet outside the pools a host's inner engine takes its networks from
# (172.17-31.x, 192.168.x), so that a compose network in a host never shadows the registry.
SUBNET = os.environ.get("GPUFLEET_LAB_SUBNET", "10.213.0.0/24")
REGISTRY = "gpufleet-lab-registry"
REGISTRY_ALIAS = "registry.lab"
REGISTRY_PORT = 5000
REGISTRY_DATA = "/var/lib/docker-registry"  # the storage root in lab/image/registry/config.yml
# In the registry container, outside its storage: one empty file per blob a test cut on purpose.
CUT_DIR = "/tmp/gpufleet-lab-cut"
HUB = "gpufleet-lab-hub"
HUB_ALIAS = "hub.lab"
HUB_CDN_ALIAS = "cdn-lfs.lab"  # where the hub redirects LFS downloads (hf_hub.py CDN_NAMES)
HUB_PORT = 8080
HUB_ROOT = "/srv/hub"
HUB_STORAGE = "/srv/registry"  # the registry's volume, read-only, in the hub container
SERVICES = (REGISTRY, HUB)
CONTENT_LABEL = "org.gpufleet.lab.content"
# The stand-in images, pushed to the registry under the real images' names (build.sh key).
REGISTRY_IMAGES = {
    "ollama/ollama:latest": "STANDIN_ollama",
    "vllm/vllm-openai:latest": "STANDIN_vllm",
    # The ROCm builds (AMD GPUs): the same stand-ins, which find AMD GPUs through /dev/kfd.
    "ollama/ollama:rocm": "STANDIN_ollama",
    "vllm/vllm-openai-rocm:latest": "STANDIN_vllm",
    "quay.io/docling-project/docling-serve:latest": "STANDIN_docling-serve",
    "gpufleet-lab/standin:latest": "STANDIN_IMAGE",
}
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
MIB = 1 << 20


def storage_url():
    """Where the registry redirects blob downloads: the hub (hf_hub.py --storage) at a fixed
    address of the lab network, which this machine's engine reaches too (docker push HEADs a
    blob and follows the redirect)."""
    last = ipaddress.ip_network(SUBNET).broadcast_address - 1
    return "http://%s:%d" % (last, HUB_PORT)


def load_content(path=CONTENT):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def filler(seed, size):
    """``size`` deterministic bytes (the same on every machine and run)."""
    return hashlib.shake_256(seed.encode()).digest(size)


def _sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# GGUF file types (llama.cpp's llama_ftype) of the quantizations content.yml uses.
GGUF_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8,
                   "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def gguf_header(architecture, name, file_type, context_length):
    """A GGUF v3 header (magic, version, no tensors, a few metadata keys)."""

    def text(value):
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    keys = [
        ("general.architecture", 8, text(architecture)),
        ("general.name", 8, text(name)),
        ("general.file_type", 4, struct.pack("<I", file_type)),
        ("%s.context_length" % architecture, 4, struct.pack("<I", context_length)),
        ("general.description", 8, text("gpufleet lab stand-in: filler, not weights")),
    ]
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(keys))
    for key, kind, value in keys:
        out += text(key) + struct.pack("<I", kind) + value
    return out


def ollama_model(spec, content):
    """(manifest bytes, [(media type, blob bytes)]) of one model of content.yml, as Ollama's
    registry stores it (ollama/ollama server/images.go: ManifestV2, Layer;
    types/model/config.go: ConfigV2 with the model_* fields and architecture, os, rootfs)."""
    name = spec["name"]
    family = spec["family"]
    quant = spec["quantization"]
    model = gguf_header(family, name, GGUF_FILE_TYPES.get(quant, 15),
                        int(spec.get("context_length", 4096)))
    model += filler("ollama model " + name, int(float(spec["size_mib"]) * MIB) - len(model))
    layers = [("application/vnd.ollama.image.model", model)]
    families = [family]
    if spec.get("projector_mib"):
        projector = gguf_header("clip", name + " projector", 1, 0)
        projector += filler("ollama projector " + name,
                            int(float(spec["projector_mib"]) * MIB) - len(projector))
        layers.append(("application/vnd.ollama.image.projector", projector))
        families.append("clip")
    layers += [
        ("application/vnd.ollama.image.template",
         content["ollama_templates"][spec["template"]].encode()),
        ("application/vnd.ollama.image.license",
         content["licenses"][spec["license"]].encode()),
        ("application/vnd.ollama.image.params", _canonical(spec.get("params") or {})),
    ]
    config = _canonical({
        "model_format": "gguf",
        "model_family": family,
        "model_families": families,
        "model_type": spec["parameter_size"],
        "file_type": quant,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [_sha256(data) for _t, data in layers]},
    })
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": IMAGE_CONFIG, "digest": _sha256(config), "size": len(config)},
        "layers": [{"mediaType": media, "digest": _sha256(data), "size": len(data)}
                   for media, data in layers],
    })
    return manifest, [(IMAGE_CONFIG, config), *layers]


def ollama_repository(name):
    """llama3.2:3b -> ("library/llama3.2", "3b"), as Ollama names a model in its registry."""
    model, _sep, tag = name.partition(":")
    return ("library/" + model if "/" not in model else model), (tag or "latest")


# --- Hugging Face repositories ---


def _bytes_to_unicode():
    """GPT-2's byte-level alphabet: each byte as a printable character (a tokenizer's vocab)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tokenizer_json(tokenizer):
    """A tiny but valid byte-level BPE tokenizer.json with the family's special tokens."""
    first = int(tokenizer["first_special_id"])
    added = [{"id": first + i, "content": tok, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, tok in enumerate(tokenizer["special"])]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": {c: i for i, c in enumerate(_bytes_to_unicode())}, "merges": []},
    }


def safetensors_file(name, size, hidden, dtype):
    """A valid safetensors file of about ``size`` bytes: one 2-D tensor of filler values."""
    rows = max(1, size // (2 * hidden))
    header = {"__metadata__": {"format": "pt"},
              "model.embed_tokens.weight": {"dtype": dtype, "shape": [rows, hidden],
                                            "data_offsets": [0, rows * hidden * 2]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + filler("safetensors " + name, rows * hidden * 2)


# The Hub's default .gitattributes: what a new repository stores with Git LFS.
GITATTRIBUTES = "".join(
    "%s filter=lfs diff=lfs merge=lfs -text\n" % p
    for p in ("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5",
              "*.joblib", "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz",
              "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth",
              "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite",
              "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*")
)


def hf_repo_files(spec, content):
    """{path: bytes} of one repository of content.yml."""
    config = spec["config"]
    tokenizer = content["hf_tokenizers"][spec["tokenizer"]]
    dtype = {"float16": "F16", "float32": "F32"}.get(config.get("torch_dtype"), "BF16")

    def pretty(obj):
        return (json.dumps(obj, indent=2) + "\n").encode()

    readme = (
        "---\nlicense: %s\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
        "# %s\n\ngpufleet lab stand-in of https://huggingface.co/%s: the real config.json, "
        "filler weights.\n" % (spec.get("license", "other"), spec["id"].split("/")[-1], spec["id"])
    )
    return {
        ".gitattributes": GITATTRIBUTES.encode(),
        "README.md": readme.encode(),
        "config.json": pretty(config),
        "generation_config.json": pretty(spec.get("generation_config") or {}),
        "tokenizer.json": pretty(tokenizer_json(tokenizer)),
        "tokenizer_config.json": pretty(tokenizer["config"]),
        "model.safetensors": safetensors_file(
            spec["id"], int(float(spec["weights_mib"]) * MIB), int(config["hidden_size"]), dtype
        ),
    }


# Bump when hf_repo_files or write_hub_tree changes what they write (the tree is regenerated).
HUB_TREE_RECIPE = 1


def hub_spec(content):
    """The part of content.yml the hub serves (its hash names the generated tree)."""
    keys = ("hf_repos", "hf_tokenizers", "hf_tokens", "licenses")
    return {k: content.get(k) for k in keys}


def write_hub_tree(content, build=BUILD):
    """Generate the hub's --root from content.yml (once per content): returns (path, hash)."""
    spec = hub_spec(content)
    with open(os.path.join(LAB, "servers", "hf_hub.py"), "rb") as handle:
        server = handle.read()
    digest = hashlib.sha256(
        _canonical([HUB_TREE_RECIPE, spec]) + hashlib.sha256(server).digest()
    ).hexdigest()[:16]
    root = os.path.join(build, "hub-" + digest)
    if os.path.isdir(root):
        return root, digest
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    repos = {}
    for repo in spec["hf_repos"] or []:
        repos[repo["id"]] = {"gated": repo.get("gated", False),
                             "tags": ["transformers", "safetensors", repo["config"]["model_type"],
                                      "text-generation"]}
        for path, data in hf_repo_files(repo, content).items():
            full = os.path.join(tmp, "files", repo["id"], path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as handle:
                handle.write(data)
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "hub.json"), "w", encoding="utf-8") as handle:
        json.dump({"repos": repos, "tokens": spec["hf_tokens"] or {}}, handle, indent=2)
    os.rename(tmp, root)
    for old in os.listdir(build):
        if old.startswith("hub-") and old != os.path.basename(root):
            shutil.rmtree(os.path.join(build, old), ignore_errors=True)
    return root, digest


# --- talking to the registry (the distribution HTTP API v2) ---


def http_call(base, method, path, body=None, headers=None, timeout=30):
    """(status, headers, body) of one request to http://127.0.0.1:<port>; never raises on
    an HTTP status."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        data = answer.read()
        return answer.status, answer.headers, data
    finally:
        conn.close()


def registry_manifest(base, repo, tag):
    """(digest, manifest dict) of repo:tag in the registry, or (None, None)."""
    status, headers, body = http_call(base, "GET", "/v2/%s/manifests/%s" % (repo, tag),
                                      headers={"Accept": MANIFEST_V2})
    if status != 200:
        return None, None
    return headers.get("Docker-Content-Digest"), json.loads(body)


def registry_has_blob(base, repo, digest):
    # 307: there, and served from the storage (the redirect middleware).
    return http_call(base, "HEAD", "/v2/%s/blobs/%s" % (repo, digest))[0] in (200, 307)


def registry_upload(base, repo, data):
    """Upload one blob (POST then a monolithic PUT ?digest=), unless it is there."""
    digest = _sha256(data)
    if registry_has_blob(base, repo, digest):
        return False
    status, headers, body = http_call(base, "POST", "/v2/%s/blobs/uploads/" % repo)
    if status != 202:
        raise LabError("registry: starting an upload to %s failed (%d): %s"
                       % (repo, status, body[:200]))
    location = urllib.parse.urlsplit(headers["Location"])
    path = "%s?%s" % (location.path, location.query) if location.query else location.path
    path += ("&" if "?" in path else "?") + "digest=" + urllib.parse.quote(digest)
    status, _headers, body = http_call(base, "PUT", path, body=data, headers={
        "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    if status != 201:
        raise LabError("registry: uploading %s to %s failed (%d): %s"
                       % (digest, repo, status, body[:200]))
    return True


def push_model(base, spec, content, cut=frozenset()):
    """Push one Ollama model (all its tags); True when something was missing. A model with a
    blob in ``cut`` (cut_blobs) is left as it is."""
    manifest, blobs = ollama_model(spec, content)
    if cut & {_sha256(data) for _media, data in blobs}:
        return False
    want = _sha256(manifest)
    changed = False
    for name in [spec["name"], *(spec.get("also") or [])]:
        repo, tag = ollama_repository(name)
        digest, _old = registry_manifest(base, repo, tag)
        if digest == want and all(registry_has_blob(base, repo, _sha256(d)) for _m, d in blobs):
            continue
        for _media, data in blobs:
            registry_upload(base, repo, data)
        status, _headers, body = http_call(base, "PUT", "/v2/%s/manifests/%s" % (repo, tag),
                                           body=manifest, headers={"Content-Type": MANIFEST_V2})
        if status != 201:
            raise LabError("registry: pushing the manifest of %s failed (%d): %s"
                           % (name, status, body[:300]))
        changed = True
    return changed


def push_image(base, port, name, local):
    """Push a stand-in image built on the lab engine as ``name`` (repository:tag), unless the
    registry has that tag at this content (same config digest = image id, every layer)."""
    repo, _sep, tag = name.rpartition(":")
    image_id = docker("image", "inspect", "-f", "{{.Id}}", local).stdout.decode().strip()
    _digest, manifest = registry_manifest(base, repo, tag)
    if (
        manifest
        and manifest.get("config", {}).get("digest") == image_id
        and all(registry_has_blob(base, repo, layer["digest"]) for layer in manifest["layers"])
    ):
        return False
    target = "127.0.0.1:%d/%s" % (port, name)
    docker("tag", local, target)
    try:
        docker("push", "--quiet", target, timeout=600)
    finally:
        docker("rmi", target, check=False)  # only the tag
    return True


# --- the containers ---


def inspect_service(name):
    """docker inspect of a lab service container (None if absent; refused if not ours)."""
    proc = docker("inspect", "--type", "container", name, check=False)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout)[0]
    if (info["Config"].get("Labels") or {}).get(LABEL) != name:
        raise LabError("a container named %s exists that the lab did not create; "
                       "not touching it" % name)
    return info


def ensure_network(name, internal):
    proc = docker("network", "inspect", name, check=False)
    if proc.returncode == 0:
        if (json.loads(proc.stdout)[0].get("Labels") or {}).get(LABEL) != name:
            raise LabError("a network named %s exists that the lab did not create" % name)
        return
    args = ["network", "create", "--label", "%s=%s" % (LABEL, name)]
    if internal:
        args += ["--internal", "--subnet", SUBNET]
    docker(*args, name)


def published_port(name, port):
    """The 127.0.0.1 port the engine publishes ``port`` of container ``name`` on."""
    out = docker("port", name, "%d/tcp" % port).stdout.decode().split()
    return int(out[0].rsplit(":", 1)[1])


def service_url(name, port):
    return "http://127.0.0.1:%d" % published_port(name, port)


def registry_url():
    """The lab registry as this machine reaches it (push, delete): http://127.0.0.1:<port>."""
    return service_url(REGISTRY, REGISTRY_PORT)


def hub_url():
    """The lab hub as this machine reaches it: http://127.0.0.1:<port>."""
    return service_url(HUB, HUB_PORT)


def _service_ok(info, image, labels=None):
    return (
        info is not None
        and info["State"]["Running"]
        and info["Config"]["Image"] == image
        and NETWORK in info["NetworkSettings"]["Networks"]
        and all((info["Config"].get("Labels") or {}).get(k) == v
                for k, v in (labels or {}).items())
    )


def _start_service(name, aliases, port, run_args, before_start=None, connect=()):
    """create (on the publish network, port on 127.0.0.1), join the lab network under
    ``aliases`` (and ``connect`` options), optional copy-in, start."""
    docker("rm", "-f", name, check=False)
    docker("create", "--name", name, "--hostname", aliases[0],
           "--label", "%s=%s" % (LABEL, name),
           "--network", PUBLISH_NETWORK, "-p", "127.0.0.1::%d" % port, *run_args)
    docker("network", "connect", *(a for alias in aliases for a in ("--alias", alias)),
           *connect, NETWORK, name)
    if before_start:
        before_start()
    docker("start", name)


def _wait_http(name, port, path):
    def answers():
        try:
            return http_call(service_url(name, port), "GET", path, timeout=2)[0] == 200
        except (OSError, LabError, IndexError, ValueError):
            return False

    wait_for("%s to answer" % name, answers, 30)


def ensure_registry(images):
    info = inspect_service(REGISTRY)
    storage = storage_url()
    if _service_ok(info, images["REGISTRY_IMAGE"], {CONTENT_LABEL: storage}):
        return False
    volume = docker("volume", "inspect", REGISTRY, check=False)
    if volume.returncode != 0:
        docker("volume", "create", "--label", "%s=%s" % (LABEL, REGISTRY), REGISTRY)
    # Blob downloads redirect (307) to the storage, as ollama.com's registry redirects them to
    # its object storage: Ollama follows no other (it fails with "http: no Location header in
    # response" on a registry that serves a blob itself). distribution 2.8's redirect storage
    # middleware, configured through its REGISTRY_* environment override.
    middleware = '[{name: redirect, options: {baseurl: "%s"}}]' % storage
    _start_service(REGISTRY, [REGISTRY_ALIAS], REGISTRY_PORT,
                   ["--label", "%s=%s" % (CONTENT_LABEL, storage),
                    "-e", "REGISTRY_MIDDLEWARE_STORAGE=" + middleware,
                    "-v", "%s:%s" % (REGISTRY, REGISTRY_DATA), images["REGISTRY_IMAGE"]])
    _wait_http(REGISTRY, REGISTRY_PORT, "/v2/")
    return True


def ensure_hub(images, content):
    root, digest = write_hub_tree(content)
    image = images["STANDIN_IMAGE"]
    ip = urllib.parse.urlsplit(storage_url()).hostname
    label = "%s@%s" % (digest, ip)
    if _service_ok(inspect_service(HUB), image, {CONTENT_LABEL: label}):
        return False
    _start_service(
        HUB, [HUB_ALIAS, HUB_CDN_ALIAS], HUB_PORT,
        ["--label", "%s=%s" % (CONTENT_LABEL, label),
         "-v", "%s:%s:ro" % (REGISTRY, HUB_STORAGE), "--entrypoint", "python3", image,
         "/opt/gpufleet-lab/servers/hf_hub.py", "--root", HUB_ROOT, "--storage", HUB_STORAGE,
         "--port", str(HUB_PORT)],
        before_start=lambda: docker("cp", root + "/.", "%s:%s" % (HUB, HUB_ROOT)),
        connect=("--ip", ip),
    )
    _wait_http(HUB, HUB_PORT, "/api/models/" + content["hf_repos"][0]["id"])
    return True


def up_services(images, content_path=CONTENT):
    """The lab network, registry and hub, and what they hold; quick when all is there.
    One `lab.py up` at a time does this (make test runs several, one per xdist worker)."""
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, "services.lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _up_services(images, content_path)


def _up_services(images, content_path):
    t0 = time.time()
    content = load_content(content_path)
    ensure_network(NETWORK, internal=True)
    ensure_network(PUBLISH_NETWORK, internal=False)
    done = []
    if ensure_registry(images):
        done.append("registry started")
    if ensure_hub(images, content):
        done.append("hub started")
    base = registry_url()
    port = published_port(REGISTRY, REGISTRY_PORT)
    pushed = [n for n, key in REGISTRY_IMAGES.items() if push_image(base, port, n, images[key])]
    if pushed:
        done.append("pushed " + ", ".join(pushed))
    cut = cut_blobs()
    models = [m["name"] for m in content.get("ollama_models") or []
              if push_model(base, m, content, cut)]
    if models:
        done.append("pushed models " + ", ".join(models))
    return "registry %s:%d, hub %s:%d on %s (%s) in %.1f s" % (
        REGISTRY_ALIAS, REGISTRY_PORT, HUB_ALIAS, HUB_PORT, NETWORK,
        "; ".join(done) or "all there", time.time() - t0)


def down_services():
    """Remove the registry (and its volume), the hub and the lab networks; refused while a
    host is still on the lab network."""
    networks = []
    for name in (NETWORK, PUBLISH_NETWORK):
        proc = docker("network", "inspect", name, check=False)
        if proc.returncode != 0:
            continue
        info = json.loads(proc.stdout)[0]
        if (info.get("Labels") or {}).get(LABEL) != name:
            continue
        others = sorted({c["Name"] for c in (info.get("Containers") or {}).values()}
                        - set(SERVICES))
        if others:
            raise LabError("--all: %s still on network %s" % (", ".join(others), name))
        networks.append(name)
    removed = []
    for name in SERVICES:
        if inspect_service(name) is not None:
            docker("rm", "-f", name)
            removed.append(name)
    volume = docker("volume", "inspect", REGISTRY, check=False)
    if volume.returncode == 0 and (json.loads(volume.stdout)[0].get("Labels") or {}).get(
        LABEL
    ) == REGISTRY:
        docker("volume", "rm", REGISTRY)
        removed.append("volume " + REGISTRY)
    for name in networks:
        docker("network", "rm", name)
        removed.append("network " + name)
    return removed


def delete_blob_data(digest):
    """Delete a blob's data from the registry's storage, as a pull cut off midway leaves a
    client without it (no blob descriptor cache: the registry then answers 404 at once).
    The blob stays cut, whatever `lab.py up` runs meanwhile, until restore_blob."""
    hexa = digest.split(":", 1)[1]
    docker("exec", REGISTRY, "sh", "-c", 'mkdir -p "$1" && touch "$1/$2"', "-", CUT_DIR, hexa)
    path = "%s/docker/registry/v2/blobs/sha256/%s/%s/data" % (REGISTRY_DATA, hexa[:2], hexa)
    docker("exec", REGISTRY, "rm", "-f", path)


def restore_blob(digest):
    """Let `lab.py up` push a blob cut by delete_blob_data again."""
    docker("exec", REGISTRY, "rm", "-f", "%s/%s" % (CUT_DIR, digest.split(":", 1)[1]))


def cut_blobs():
    """The digests delete_blob_data cut and restore_blob did not restore yet."""
    proc = docker("exec", REGISTRY, "ls", CUT_DIR, check=False)
    return {"sha256:" + n for n in proc.stdout.decode().split()} if proc.returncode == 0 else set()


def services_status():
    rows = []
    for name, alias, port in ((REGISTRY, REGISTRY_ALIAS, REGISTRY_PORT),
                              (HUB, HUB_ALIAS, HUB_PORT)):
        info = inspect_service(name)
        row = {"service": name, "state": info["State"]["Status"] if info else "absent",
               "address": "%s:%d" % (alias, port)}
        if info and info["State"]["Running"]:
            row["url"] = service_url(name, port)
            if name == REGISTRY:
                status, _h, body = http_call(row["url"], "GET", "/v2/_catalog?n=1000")
                row["repositories"] = json.loads(body)["repositories"] if status == 200 else []
            else:
                hub = json.loads(docker("exec", HUB, "cat", HUB_ROOT + "/hub.json").stdout)
                row["repositories"] = sorted(hub["repos"])
        rows.append(row)
    return rows


# --- the hosts ---------------------------------------------------------------------------------


def build_images():
    out = subprocess.run(
        [os.path.join(LAB, "image", "build.sh")], check=False, capture_output=True, text=True
    )
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        raise LabError("lab/image/build.sh failed")
    return dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)


def inspect(host):
    proc = docker("inspect", host, check=False)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout)[0]
    if (info["Config"].get("Labels") or {}).get(LABEL) != host:
        raise LabError(
            "a container named %s exists that the lab did not create; not touching it" % host
        )
    return info


def wait_for(what, probe, timeout):
    deadline = time.time() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.time() > deadline:
            raise LabError("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(0.2)


def write_file(host, path, text, mode="0644"):
    dexec(
        host,
        'mkdir -p "$(dirname %s)"; cat > %s.tmp; chmod %s %s.tmp; mv %s.tmp %s'
        % (path, path, mode, path, path, path),
        input=text.encode(),
    )


LAB_UNIT_ACCESS = """
getent group render >/dev/null || groupadd -r render
for unit in ollama vllm; do
  mkdir -p /etc/systemd/system/$unit@.service.d
  printf '[Service]\\nReadWritePaths=-%s\\n' \\
    > /etc/systemd/system/$unit@.service.d/gpufleet-lab.conf
done
""" % HOST_PROCS


# The lab network is --internal, but an engine run with --iptables=false (lab/engine.sh's own)
# cannot enforce that: its gateway is this machine. An air-gapped host has no route out, and
# reaches only its own network (the registry and the hub there).
NO_WAY_OUT = """
gw=$(ip -4 route show default | awk '{print $3; exit}')
if [ -n "$gw" ]; then ip route del default; ip route replace prohibit "$gw/32"; fi
"""


def configure(host, hvars):
    """Driver state, stand-in settings, NVML library and hook (GPU hosts only), then the engine."""
    gpus = nvidia_gpus(hvars)
    write_file(host, "/etc/gpufleet-lab/standin.env", standin_env(hvars))
    amd = amd_gpus(hvars)
    if amd:
        write_file(host, AMD_STATE, amd_state_text(host, hvars))
        dexec(host, "getent group render >/dev/null || groupadd -r render\n" + AMD_NODES % (
            AMD_PROCS, AMD_PROCS, AMD_PROCS))
    else:
        dexec(host, f"if [ -e {AMD_STATE} ]; then rm -f {AMD_STATE} /usr/local/bin/amd-smi "
                    "/dev/kfd /dev/dri/card* /dev/dri/renderD*; fi")
    podman = engine_of(hvars) == "podman"
    nodes = device_nodes_text(len(gpus) if podman else 0, len(amd))
    if nodes:
        write_file(host, DEVICES_CONF, nodes)
        dexec(host, "systemd-tmpfiles --create %s" % DEVICES_CONF)
    else:
        dexec(host, "rm -f %s" % DEVICES_CONF)
    if gpus:
        write_file(host, STATE, state_text(host, hvars))
        dexec(
            host,
            """
            mkdir -p %s
            chgrp video %s && chmod 1775 %s
            # /run is empty after a reboot (a restart of the host's container): made again
            # at boot, as a driver's device nodes are.
            printf 'd %s 1775 root video -\n' > /etc/tmpfiles.d/gpufleet-nvml.conf
            ln -sf /opt/gpufleet-lab/nvml/libnvidia-ml.so.1 /usr/lib/x86_64-linux-gnu/
            ldconfig
        """
            % (HOST_PROCS, HOST_PROCS, HOST_PROCS, HOST_PROCS),
        )
        if podman:
            write_file(host, CDI_SPEC, cdi_spec_text(hvars))
            dexec(host, "ln -sf /opt/gpufleet-lab/hook/nvidia-cdi-hook %s" % CDI_HOOK)
        else:
            dexec(host, "ln -sf /opt/gpufleet-lab/hook/nvidia-container-runtime-hook "
                        "/usr/local/bin/")
    else:
        dexec(
            host,
            "rm -f %s /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 "
            "/usr/local/bin/nvidia-container-runtime-hook %s %s; ldconfig"
            % (STATE, CDI_SPEC, CDI_HOOK),
        )
    # What a real GPU box has for the hardened units (systemd_units role): a `render` group, and
    # (stand-in driver only) write access for the video group where it counts VRAM; a real
    # driver needs /dev/nvidia*, which ProtectSystem=strict leaves alone.
    dexec(host, LAB_UNIT_ACCESS + NO_WAY_OUT)
    if podman:
        dexec(host, "touch /etc/gpufleet-lab/configured")
    else:
        dexec(host, "touch /etc/gpufleet-lab/configured; systemctl start docker.service")


def up_host(host, hvars, images, recreate=False):
    t0 = time.time()
    engine = engine_of(hvars)
    image = images["PODMAN_HOST_IMAGE" if engine == "podman" else "HOST_IMAGE"]
    info = inspect(host)
    if info is not None and (
        recreate
        or info["Config"]["Image"] != image
        or not info["State"]["Running"]
        or info["HostConfig"]["NetworkMode"] != NETWORK
    ):
        down_host(host, keep_volume=False)
        info = None
    elif info is None:
        # A new host gets a new engine: an engine volume left by a host removed halfway (a run
        # stopped during `down`) would bring back that host's containers.
        down_host(host, keep_volume=False)
    volume = "%s-docker" % host
    storage = "/var/lib/containers" if engine == "podman" else "/var/lib/docker"
    if info is None:
        docker("volume", "create", "--label", "%s=%s" % (LABEL, host), volume)
        docker(
            "run",
            "-d",
            "--name",
            host,
            "--hostname",
            host,
            "--label",
            "%s=%s" % (LABEL, host),
            *RUN_FLAGS,
            *(AMD_RUN_FLAGS if amd_gpus(hvars) else []),
            *(PODMAN_RUN_FLAGS if engine == "podman" else []),
            # The lab network: the registry and the hub answer there, nothing else does.
            "--network",
            NETWORK,
            "-v",
            "%s:%s" % (volume, storage),
            "-e",
            "GPUFLEET_NVML_STATE=%s" % STATE,
            image,
            "/sbin/init",
        )

    def systemd_up():
        proc = docker("exec", host, "systemctl", "is-system-running", check=False)
        return proc.stdout.strip() in (b"running", b"degraded")

    wait_for("systemd in %s" % host, systemd_up, 60)
    configure(host, hvars)
    wait_for(
        "the %s engine in %s" % ("Podman" if engine == "podman" else "Docker", host),
        lambda: (
            docker(
                "exec", host, engine, "info", "-f",
                "{{.Version.Version}}" if engine == "podman" else "{{.ServerVersion}}",
                check=False,
            ).returncode
            == 0
        ),
        60,
    )
    # No image is loaded: the host pulls from registry.lab:5000 like an air-gapped host from
    # its mirror (insecure-registries in lab/image/rootfs/etc/docker/daemon.json).
    return "%s up in %.1f s" % (host, time.time() - t0)


def down_host(host, keep_volume=False):
    info = inspect(host)
    if info is not None:
        if info["State"]["Running"]:
            # Stop the inner containers first, or their cgroups outlive the host.
            dexec(
                host,
                'ids=$(docker ps -q 2>/dev/null || true); [ -z "$ids" ] || docker stop -t 5 $ids >/dev/null; '  # noqa: E501
                'command -v podman >/dev/null && podman stop -a -t 5 >/dev/null 2>&1',
                check=False,
                timeout=60,
            )
            docker("stop", "-t", "20", host, check=False, timeout=60)
        docker("rm", "-f", host, check=False)
    if not keep_volume:
        vol = docker("volume", "inspect", "%s-docker" % host, check=False)
        if (
            vol.returncode == 0
            and (json.loads(vol.stdout)[0].get("Labels") or {}).get(LABEL) == host
        ):
            docker("volume", "rm", "-f", "%s-docker" % host, check=False)
    return "%s removed" % host


def lab_containers():
    """The lab's hosts (every labelled container but the registry and the hub)."""
    proc = docker("ps", "-a", "--filter", "label=%s" % LABEL, "--format", "{{.Names}}")
    return sorted(set(proc.stdout.decode().split()) - set(SERVICES))


def host_status(host):
    info = inspect(host)
    if info is None:
        return {"host": host, "state": "absent"}
    row = {"host": host, "state": info["State"]["Status"], "image": info["Config"]["Image"]}
    if not info["State"]["Running"]:
        return row
    script = r"""
        echo "hostname=$(hostname)"
        echo "systemd=$(systemctl is-system-running 2>/dev/null || true)"
        if command -v podman >/dev/null; then
            echo "engine=podman $(podman info -f '{{.Version.Version}}' 2>/dev/null || echo down)"
            echo "containers=$(podman ps -q 2>/dev/null | wc -l)"
        else
            echo "engine=$(docker info -f '{{.ServerVersion}}' 2>/dev/null || echo down)"
            echo "containers=$(docker ps -q 2>/dev/null | wc -l)"
        fi
        if [ -e /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 ]; then
            nvidia-smi --query-gpu=index,name,memory.used,memory.total \
                --format=csv,noheader,nounits | sed 's/^/gpu=/'
        fi
        [ -x /usr/local/bin/nvidia-container-runtime-hook ] || [ -s /etc/cdi/nvidia.yaml ] \
            && echo hook=yes || echo hook=no
    """
    out = dexec(host, script, check=False).stdout.decode()
    row["gpus"] = []
    for line in out.splitlines():
        key, _sep, value = line.partition("=")
        if key == "gpu":
            row["gpus"].append(value.strip())
        elif key:
            row[key] = value.strip()
    return row


def print_status(rows, engine, services=()):
    print("engine: %s" % engine)
    for row in services:
        print("%-10s %-8s %s %s %s" % (
            row["service"].replace("gpufleet-lab-", ""), row["state"], row["address"],
            row.get("url", ""), " ".join(row.get("repositories", []))))
    if not rows:
        print("no lab hosts (make lab-up)")
    for row in rows:
        if row["state"] != "running":
            print("%-10s %s" % (row["host"], row["state"]))
            continue
        print(
            "%-10s %-8s hostname=%s systemd=%s engine=%s containers=%s hook=%s"
            % (
                row["host"],
                row["state"],
                row.get("hostname"),
                row.get("systemd"),
                row.get("engine"),
                row.get("containers"),
                row.get("hook"),
            )
        )
        for gpu in row["gpus"] or ["(no GPU: no NVML library)"]:
            print("%-10s   gpu %s" % ("", gpu))


def parallel(fn, items):
    results, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = {pool.submit(fn, *item): item[0] for item in items}
        for future in concurrent.futures.as_completed(futures):
            try:
                results.append(future.result())
            except (LabError, subprocess.SubprocessError, OSError) as exc:
                errors.append("%s: %s" % (futures[future], exc))
    return results, errors


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--list"], ["--host"]):
        # Called as a script inventory (ansible -i lab/lab.py): --list, or --host HOST.
        argv = ["inventory", *argv]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument(
        "command",
        choices=["up", "down", "status", "services", "image", "write-state", "inventory"],
    )
    parser.add_argument("host", nargs="?")
    parser.add_argument("--inventory", default=os.path.join(ROOT, "inventory", "lab"))
    parser.add_argument("--hosts", help="comma-separated subset of the inventory's hosts")
    parser.add_argument(
        "--fleet", type=int, default=0, help="up/down/status: the generated hosts lab-fleet-01..N"
    )
    parser.add_argument("--recreate", action="store_true", help="up: replace running hosts")
    parser.add_argument(
        "--all", action="store_true", help="down: the registry, hub and lab network too"
    )
    parser.add_argument("--json", action="store_true", help="status: JSON")
    parser.add_argument("--list", action="store_true", help="inventory: every running host")
    parser.add_argument("--host", dest="inventory_host", help="inventory: one host's variables")
    args = parser.parse_args(argv)

    if "DOCKER_HOST" not in os.environ:
        # Looking (status, down, inventory) never starts an engine; up and image may.
        looking = args.command in ("status", "down", "inventory", "services")
        engine = subprocess.run(
            [os.path.join(LAB, "engine.sh"), "ensure"],
            check=False,
            capture_output=True,
            text=True,
            env=dict(os.environ, GPUFLEET_LAB_NO_START="1" if looking else "0"),
        )
        if engine.returncode == 3:
            if args.command == "inventory":
                print(json.dumps({} if args.inventory_host else {"_meta": {"hostvars": {}}}))
            else:
                print("engine: none running: the lab is down")
            return 0
        if engine.returncode != 0:
            print("lab: %s" % engine.stderr.strip(), file=sys.stderr)
            return 1
        os.environ["DOCKER_HOST"] = engine.stdout.strip()
    if args.command == "inventory":
        try:
            out = inventory_json(args.inventory, running_lab_hosts())
        except LabError as exc:
            print("lab: %s" % exc, file=sys.stderr)
            return 1
        if args.inventory_host:
            out = out["_meta"]["hostvars"].get(args.inventory_host, {})
        print(json.dumps(out, indent=2))
        return 0
    inventory = load_inventory(args.inventory)
    try:
        fleet = fleet_hosts(args.inventory, args.fleet) if args.fleet else {}
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    inventory.update(fleet)
    chosen = args.hosts.split(",") if args.hosts else sorted(fleet or inventory)
    unknown = [h for h in chosen if h not in inventory]
    try:
        if unknown and args.command in ("up", "write-state"):
            raise LabError("not in %s: %s" % (args.inventory, ", ".join(unknown)))
        if args.command == "image":
            for key, value in build_images().items():
                print("%s=%s" % (key, value))
        elif args.command == "up":
            t0 = time.time()
            images = build_images()
            print(up_services(images))
            done, errors = parallel(
                lambda h: up_host(h, inventory[h], images, args.recreate), [(h,) for h in chosen]
            )
            for line in sorted(done):
                print(line)
            if errors:
                raise LabError("; ".join(errors))
            print(
                "lab up: %d host(s) in %.1f s (DOCKER_HOST=%s)"
                % (len(chosen), time.time() - t0, os.environ["DOCKER_HOST"])
            )
        elif args.command == "down":
            hosts = (
                chosen
                if args.hosts or fleet
                else sorted(set(lab_containers()) | set(inventory))
            )
            done, errors = parallel(down_host, [(h,) for h in hosts])
            if args.all and not errors:
                done += down_services()
            print("lab down: %s" % (", ".join(sorted(done)) or "nothing to remove"))
            if errors:
                raise LabError("; ".join(errors))
        elif args.command == "status":
            hosts = chosen if fleet else sorted(set(lab_containers()) | set(chosen))
            rows, errors = parallel(host_status, [(h,) for h in hosts])
            rows.sort(key=lambda r: r["host"])
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print_status(rows, os.environ["DOCKER_HOST"], services_status())
        elif args.command == "services":
            rows = services_status()
            if args.json:
                print(json.dumps({row["service"]: row for row in rows}, indent=2))
            else:
                print_status([], os.environ["DOCKER_HOST"], rows)
        elif args.command == "write-state":
            write_file(args.host, STATE, state_text(args.host, inventory[args.host]))
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
