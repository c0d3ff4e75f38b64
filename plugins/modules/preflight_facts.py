#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: preflight_facts
short_description: Read what only the host can tell before services start
version_added: 0.1.0
description:
  - Returns C(ansible_facts.preflight_host) with who holds each port in O(ports) (from
    C(/proc/net/tcp), C(/proc/net/tcp6) and the socket links in C(/proc/*/fd)), free disk space
    at each of O(paths), which of O(binaries) are on C(PATH), the CDI specs in O(cdi_dirs) by
    the device kind they describe, and the persistence mode of each NVIDIA GPU when
    C(nvidia-smi) is there.
  - Changes nothing; the preflight role decides what the facts mean.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  ports:
    description: TCP ports (1-65535) to look up; each is reported held or free, with its holders.
    type: list
    elements: int
    default: []
  paths:
    description:
      - Absolute paths of directories whose filesystem's free space is reported. A path that
        does not exist yet is measured at its nearest existing parent (where it will be created).
    type: list
    elements: path
    default: []
  binaries:
    description: Programs looked up on C(PATH) (and the usual sbin directories).
    type: list
    elements: str
    default: [docker, podman, nvidia-container-toolkit, nvidia-container-runtime-hook, nvidia-ctk,
              nvidia-smi]
  cdi_dirs:
    description:
      - Where Container Device Interface specs are read from (Podman reads the same two
        directories); each C(*.yaml) or C(*.json) file there is reported under its C(kind).
    type: list
    elements: path
    default: [/etc/cdi, /var/run/cdi]
  nvidia_smi_timeout:
    description:
      - Seconds C(nvidia-smi) may take to report the persistence mode before it is stopped.
        Without the persistence daemon it can take about 30 seconds on multi-GPU VMs.
      - 1 to 3600.
    type: int
    default: 10
  proc_root:
    description: Where C(/proc) is read from. Only useful to read a copied tree.
    type: path
    default: /proc
extends_documentation_fragment:
  - gpufleet.inference.attributes
  - gpufleet.inference.attributes.facts
attributes:
  check_mode:
    support: full
    details: Reading facts changes nothing.
  diff_mode:
    support: none
  facts:
    support: full
  idempotent:
    support: full
notes:
  - The process holding a port is only known for processes whose C(/proc/<pid>/fd) the user
    may read, so run it as root to see every holder. An unknown holder has C(pid=null).
seealso:
  - module: gpufleet.inference.gpu_facts
"""

EXAMPLES = r"""
- name: Read ports, disks and tools
  gpufleet.inference.preflight_facts:
    ports: [11434, 11435, 8000]
    paths: [/var/lib/docker, /srv/gpufleet/models/ollama]

- name: Show who holds port 11434
  ansible.builtin.debug:
    msg: "{{ ansible_facts.preflight_host.ports | selectattr('port', '==', 11434) | first }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts preflight needs from the host.
  returned: always
  type: complex
  contains:
    preflight_host:
      description: Ports, disks, binaries and NVIDIA persistence mode.
      returned: always
      type: dict
      contains:
        ports:
          description: One entry per port asked for, in the order asked.
          type: list
          elements: dict
          sample:
            - port: 11434
              held: true
              holders:
                - {address: 127.0.0.1, family: ipv4, pid: 4242, process: ollama}
        disks:
          description: One entry per path asked for.
          type: list
          elements: dict
          sample:
            - path: /srv/gpufleet/models/ollama
              checked_path: /srv
              exists: false
              device: 2049
              free_bytes: 107374182400
              total_bytes: 214748364800
        binaries:
          description: Program name to its path, or V(null) when it is not installed.
          type: dict
          sample: {docker: /usr/bin/docker, podman: null}
        cdi:
          description: Each device kind a CDI spec of O(cdi_dirs) describes, to those specs.
          type: dict
          sample: {nvidia.com/gpu: [/etc/cdi/nvidia.yaml]}
        nvidia:
          description:
            - C(nvidia_smi) its path or V(null); C(persistence_mode) one entry per GPU
              (C(index), C(persistence_mode) V(Enabled) or V(Disabled)); C(error) why it could
              not be read, or V(null).
          type: dict
          sample:
            nvidia_smi: /usr/bin/nvidia-smi
            persistence_mode: [{index: 0, persistence_mode: Enabled}]
            error: null
        warnings:
          description: What could not be read, one sentence each.
          type: list
          elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.yaml import HAS_YAML

from ansible_collections.gpufleet.inference.plugins.module_utils import _preflight, _verify

if HAS_YAML:
    from ansible.module_utils.common.yaml import yaml_load
else:
    yaml_load = None

SBIN = ["/usr/local/sbin", "/usr/sbin", "/sbin"]


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def socket_owners(proc_root, inodes):
    """inode -> {pid, process} for the sockets in ``inodes``, from /proc/*/fd."""
    owners = {}
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        fd_dir = os.path.join(proc_root, entry, "fd")
        try:
            links = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in links:
            try:
                inode = _preflight.socket_inode(os.readlink(os.path.join(fd_dir, fd)))
            except OSError:
                continue
            if inode in inodes and inode not in owners:
                comm = read_text(os.path.join(proc_root, entry, "comm"))
                owners[inode] = {"pid": int(entry),
                                 "process": comm.strip() if comm else None}
    return owners


def disk(path):
    checked = path
    while not os.path.exists(checked) and checked != os.path.dirname(checked):
        checked = os.path.dirname(checked)
    stat = os.statvfs(checked)
    return {"path": path, "checked_path": checked, "exists": checked == path,
            "device": os.stat(checked).st_dev, "free_bytes": stat.f_bavail * stat.f_frsize,
            "total_bytes": stat.f_blocks * stat.f_frsize}


def persistence(module, smi, timeout):
    if smi is None:
        return [], None
    timeout_bin = module.get_bin_path("timeout", required=True)
    rc, out, err = module.run_command(
        [timeout_bin, "--kill-after=2", str(timeout), smi,
         "--query-gpu=index,persistence_mode", "--format=csv,noheader"],
        environ_update={"LANG": "C", "LC_ALL": "C"})
    if rc in (124, 137):
        return [], "nvidia-smi did not answer within %d seconds and was stopped" % timeout
    if rc != 0:
        return [], "nvidia-smi failed (rc %d): %s" % (rc, (err or out).strip())
    modes = []
    for line in out.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit():
            modes.append({"index": int(fields[0]), "persistence_mode": fields[1]})
    return modes, None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ports=dict(type="list", elements="int", default=[]),
            paths=dict(type="list", elements="path", default=[]),
            binaries=dict(type="list", elements="str",
                          default=["docker", "podman", "nvidia-container-toolkit",
                                   "nvidia-container-runtime-hook", "nvidia-ctk",
                                   "nvidia-smi"]),
            cdi_dirs=dict(type="list", elements="path", default=list(_verify.CDI_DIRS)),
            nvidia_smi_timeout=dict(type="int", default=10),
            proc_root=dict(type="path", default="/proc"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        _preflight.check_facts_options(params["ports"], params["paths"],
                                       params["nvidia_smi_timeout"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    warnings = []
    listeners = []
    ports = []
    try:
        for name, family in (("tcp", "ipv4"), ("tcp6", "ipv6")):
            text = read_text(os.path.join(params["proc_root"], "net", name))
            if text is None:
                warnings.append("%s/net/%s cannot be read" % (params["proc_root"], name))
                continue
            listeners += _preflight.parse_proc_net_tcp(text, family)
        wanted = [{"service": None, "port": port} for port in params["ports"]]
        inodes = {item["inode"] for item in listeners if item["port"] in params["ports"]}
        ports = _preflight.port_report(wanted, listeners,
                                       socket_owners(params["proc_root"], inodes))
    except ValueError as exc:
        module.fail_json(msg="Reading the listening ports failed: %s" % exc)
    for entry in ports:
        del entry["service"], entry["active"]
        if any(h["pid"] is None for h in entry["holders"]):
            warnings.append("port %d is held by a process this user cannot see; run as root "
                            "to name it" % entry["port"])
    disks = []
    for path in params["paths"]:
        try:
            disks.append(disk(path))
        except OSError as exc:
            warnings.append("free space at %s cannot be read: %s" % (path, exc))
            disks.append({"path": path, "checked_path": None, "exists": False, "device": None,
                          "free_bytes": None, "total_bytes": None})
    binaries = {name: module.get_bin_path(name, opt_dirs=SBIN) for name in params["binaries"]}
    specs = {}
    for folder in params["cdi_dirs"]:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue  # no such directory: no spec there
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(_verify.CDI_SUFFIXES):
                continue
            try:
                specs[path] = _verify.parse_cdi_spec(path, read_text(path) or "", yaml_load)
            except Exception as exc:
                warnings.append("CDI spec %s cannot be read: %s" % (path, exc))
    smi = binaries.get("nvidia-smi") or module.get_bin_path("nvidia-smi")
    modes, error = persistence(module, smi, params["nvidia_smi_timeout"])
    if error:
        warnings.append(error)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"preflight_host": {
        "ports": ports, "disks": disks, "binaries": binaries, "cdi": _preflight.cdi_kinds(specs),
        "nvidia": {"nvidia_smi": smi, "persistence_mode": modes, "error": error},
        "warnings": warnings,
    }})


if __name__ == "__main__":
    main()
