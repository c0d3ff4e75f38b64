# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for NVIDIA's nvidia-container-runtime-hook (not NVIDIA code).

Docker 20.10 registers its "nvidia" device driver when an executable of this name is on
dockerd's PATH, sets NVIDIA_VISIBLE_DEVICES from the device request and runs this file as an
OCI prestart hook (`nvidia-container-runtime-hook prestart`, state JSON on stdin). Like the
real hook it gives the container its GPUs and the driver library, on the lab's simulated
driver (lab/servers/gpuview.py, lab/nvml/):

* resolves NVIDIA_VISIBLE_DEVICES (all, none, void, indexes, UUIDs) against the host's GPUs;
  an unknown device fails the start like the real one ("unknown device");
* creates the container's view (lab/servers/nvml_relay.py): only its GPUs, renumbered from 0,
  device-wide memory; binds it at /run/nvidia-stand-in;
* binds the stand-in libnvidia-ml.so.1 into the container's library directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, "/opt/gpufleet-lab/servers")
import gpuview
import nvml_relay

LIB = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
TARGET_DIR = "/run/nvidia-stand-in"
LOG = "/run/gpufleet-nvml/hook.log"


def fail(message):
    sys.stderr.write("nvidia-container-cli: %s\n" % message)
    sys.exit(1)


def resolve(spec, gpus):
    spec = spec.strip()
    if spec == "all":
        return [g["index"] for g in gpus]
    if spec == "none":
        return []
    chosen = []
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        if token.isdigit():
            if int(token) >= len(gpus):
                fail("device error: %s: unknown device" % token)
            chosen.append(int(token))
            continue
        match = [g["index"] for g in gpus if g.get("uuid") == token]
        if not match:
            fail("device error: %s: unknown device" % token)
        chosen.append(match[0])
    return chosen


def in_container(pid, script, enter=True):
    """Run ``script`` in the mount namespace of ``pid``: entered from a prestart hook (the
    runtime's namespace); a createContainer hook (``enter`` False) already runs in it."""
    command = ["nsenter", "--target", str(pid), "--mount", "--"] if enter else []
    subprocess.run(
        [*command, "sh", "-ec", script],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def load_bundle(state):
    """The OCI state (stdin) and the bundle's config.json."""
    bundle = state.get("bundle") or state.get("bundlePath")
    with open(os.path.join(bundle, "config.json"), encoding="utf-8") as handle:
        return bundle, json.load(handle)


def rootfs(bundle, config):
    """The container's root directory (config.json's root.path, relative to the bundle)."""
    root = config["root"]["path"]
    return root if os.path.isabs(root) else os.path.join(bundle, root)


def host_gpus():
    if not os.path.exists(gpuview.HOST_STATE):
        fail("initialization error: nvml error: driver not loaded")
    return gpuview.parse_state(gpuview.HOST_STATE)["gpus"]


def attach(state, bundle, config, visible, gpus, why, bind_library=True, enter=True):
    """Give the container its view of the host GPUs ``visible`` (host indexes) and (unless a
    CDI spec mounts it) the stand-in library, inside its mount namespace (before pivot_root:
    the old root is there)."""
    root = rootfs(bundle, config)
    pid = int(state["pid"])
    cdir = os.path.join(nvml_relay.CONTAINERS, state["id"])
    os.makedirs(os.path.join(cdir, "state.d"), exist_ok=True)
    info = {
        "id": state["id"],
        "init_pid": pid,
        "visible": visible,
        "uuids": [gpus[i].get("uuid") for i in visible],
    }
    gpuview.atomic_write(os.path.join(cdir, "container.json"), json.dumps(info))
    # crun runs the CDI hook in the container's pid namespace, where every host pid looks
    # dead: the hook must not judge them (nor mark their registrations dead); the relay does,
    # from the host's namespace, within 0.1 s.
    host = gpuview.parse_state(gpuview.HOST_STATE)
    drain = float(gpuview._num(host["globals"].get("drain_delay"), 0))
    regs = gpuview.registrations(host["globals"]["procs_dir"], drain, check_alive=False,
                                 mark_dead=False)
    nvml_relay.render_view(cdir, info=info, state=host, regs=regs)
    in_container(
        pid,
        """
        mkdir -p '{root}{target}'
        mount --bind '{cdir}' '{root}{target}'
        if [ {bind} = yes ] && [ -e '{lib}' ]; then
            mkdir -p '{root}{libdir}'
            [ -e '{root}{lib}' ] || : > '{root}{lib}'
            mount --bind -o ro '{lib}' '{root}{lib}'
        fi
    """.format(
            root=root.rstrip("/"),
            target=TARGET_DIR,
            cdir=cdir,
            lib=LIB,
            libdir=os.path.dirname(LIB),
            bind="yes" if bind_library else "no",
        ),
        enter=enter,
    )
    with open(LOG, "a", encoding="utf-8") as log:
        log.write("%s pid=%d %s -> host GPUs %s\n" % (state["id"][:12], pid, why, visible))


def prestart():
    state = json.load(sys.stdin)
    bundle, config = load_bundle(state)
    env = dict(
        item.split("=", 1) for item in config.get("process", {}).get("env", []) if "=" in item
    )
    spec = env.get("NVIDIA_VISIBLE_DEVICES")
    if spec is None or spec.strip() in ("", "void"):
        return
    gpus = host_gpus()
    attach(state, bundle, config, resolve(spec, gpus), gpus,
           "NVIDIA_VISIBLE_DEVICES=%s" % spec)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not args or args[0] != "prestart":
        return  # poststart / poststop: nothing to do, like the real hook
    try:
        prestart()
    except subprocess.CalledProcessError as exc:
        fail("mount error: %s" % exc.stderr.decode(errors="replace").strip())


if __name__ == "__main__":
    main()
