# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for NVIDIA's nvidia-cdi-hook (not NVIDIA code).

`nvidia-ctk cdi generate` writes a CDI spec (/etc/cdi/nvidia.yaml) whose container edits give
a container the device nodes of its GPUs (/dev/nvidia<minor>, major 195) and /dev/nvidiactl,
bind the driver's libraries, and run `nvidia-cdi-hook` as OCI createContainer hooks (the OCI
state JSON on stdin): `create-symlinks --link <target>::<link>` makes the libraries' soname
links in the container, `update-ldcache --folder <dir>` refreshes its linker cache. lab/lab.py
writes the lab's spec the same way (cdi_spec_text), with the stand-in libnvidia-ml.so as the
driver library. This stand-in:

* create-symlinks: makes each link in the container's root, as the real hook does;
* update-ldcache: the container's NVML sees exactly the GPUs whose device nodes the runtime
  gave it (a real driver exposes only the opened /dev/nvidia<minor>): it creates the
  container's view (lab/servers/nvml_relay.py) from those device nodes and binds it at
  /run/nvidia-stand-in, as the Docker hook stand-in does (stand_in_hook.py);
* any other subcommand (chmod, enable-cuda-compat, ...): nothing to do on the lab's driver.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stand_in_hook

NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255


def gpu_minors(config):
    """The minors of the /dev/nvidia<N> GPU device nodes in the container's config.json."""
    minors = []
    for device in (config.get("linux") or {}).get("devices") or []:
        if device.get("type") == "c" and device.get("major") == NVIDIA_MAJOR \
                and device.get("minor", NVIDIACTL_MINOR) < NVIDIACTL_MINOR:
            minors.append(int(device["minor"]))
    return sorted(set(minors))


def create_symlinks(state, bundle, config, args):
    links = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--link"]
    root = stand_in_hook.rootfs(bundle, config)
    script = []
    for link in links:
        target, sep, path = link.partition("::")
        if not sep or not path.startswith("/"):
            stand_in_hook.fail("invalid --link %r" % link)
        script.append("mkdir -p '%s%s' && ln -sfn '%s' '%s%s'"
                      % (root.rstrip("/"), os.path.dirname(path), target, root.rstrip("/"), path))
    if script:
        stand_in_hook.in_container(container_pid(state), "\n".join(script), enter=False)


def _status(pid, key):
    with open("/proc/%s/status" % pid, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return line.split()[1:]
    return []


def container_pid(state):
    """The container's init as this host sees it. crun runs createContainer hooks inside the
    container's namespaces and gives pid 0 in the state; /proc is still the host's there (before
    pivot_root): the init is the first of this hook's ancestors whose pid in its own pid
    namespace is 1 (NSpid)."""
    pid = int(state.get("pid") or 0)
    if pid:
        return pid
    pid = int(os.readlink("/proc/self"))  # this hook, as the host's /proc numbers it
    depth = len(_status(pid, "NSpid"))
    while pid > 1:
        nspid = _status(pid, "NSpid")
        if len(nspid) == depth and nspid[-1] == "1":
            return pid
        pid = int(_status(pid, "PPid")[0])
    stand_in_hook.fail("cannot find the container's init")
    return 0


def update_ldcache(state, bundle, config):
    state = dict(state, pid=container_pid(state))
    gpus = stand_in_hook.host_gpus()
    visible = [i for i in gpu_minors(config) if i < len(gpus)]
    stand_in_hook.attach(state, bundle, config, visible, gpus,
                         "CDI device nodes %s" % ["/dev/nvidia%d" % i for i in visible],
                         bind_library=False, enter=False)


def main():
    args = sys.argv[1:]
    if not args or args[0] not in ("create-symlinks", "update-ldcache"):
        return
    state = json.load(sys.stdin)
    bundle, config = stand_in_hook.load_bundle(state)
    try:
        if args[0] == "create-symlinks":
            create_symlinks(state, bundle, config, args[1:])
        else:
            update_ldcache(state, bundle, config)
    except stand_in_hook.subprocess.CalledProcessError as exc:
        stand_in_hook.fail("mount error: %s" % exc.stderr.decode(errors="replace").strip())


if __name__ == "__main__":
    main()
