# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulated driver's per-container side (lab stand-in, not NVIDIA code; stdlib only).

The real NVIDIA toolkit gives a container only the GPUs it asked for, renumbered from 0,
while memory used stays device-wide. The stand-in hook (lab/hook/) creates, for each GPU
container, a directory /run/gpufleet-nvml/containers/<id>/ with:

  container.json   {"id", "init_pid" (host pid), "visible": [host GPU indexes]}
  state            an NVML state file with only the visible GPUs; memory_used_mib = what
                   everybody else holds on that GPU (static + the host's registrations)
  state.d/         where the container's processes register (gpu<i>-<pid>, container pids)

and binds it at /run/nvidia-stand-in in the container. This relay (a systemd unit of the
host, `gpufleet-nvml-relay.service`) keeps that view fresh and copies each registration of
the container to the host's process directory under the host's GPU index and the host pid,
so the host's NVML (our facts, nvidia-smi, drain waits) sees container VRAM too.

On a host with a unified-memory GPU it also writes /run/gpufleet-nvml/meminfo, what
/proc/meminfo shows on a real GB10: MemAvailable = the GPU's memory minus what the driver
counts as used, memory still draining after a process exited included.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpuview

CONTAINERS = "/run/gpufleet-nvml/containers"
RELAY_PREFIX = "relay-"  # host copies are named gpu<h>-<hostpid>; we remember them in relayed.json
GPU_KEYS_DROPPED = ("process", "memory_used_mib")


def _pidns(pid):
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def host_pid_of(container_pid, init_pid, cache):
    """The host pid of ``container_pid`` in the pid namespace of ``init_pid`` (NSpid)."""
    known = cache.get(container_pid)
    if known and _nspid_last(known) == container_pid:
        return known
    namespace = _pidns(init_pid)
    if namespace is None:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _nspid_last(pid) == container_pid and _pidns(pid) == namespace:
            cache[container_pid] = pid
            return pid
    return None


def _nspid_last(pid):
    try:
        with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def render_view(cdir, host_state=gpuview.HOST_STATE, info=None, state=None, regs=None):
    """Write <cdir>/state: the visible GPUs of the host state, used = everybody else's MiB.

    ``state`` and ``regs`` (the parsed host state and its registrations) are read here unless
    the caller read them once for all its containers."""
    if info is None:
        with open(os.path.join(cdir, "container.json"), encoding="utf-8") as handle:
            info = json.load(handle)
    if state is None:
        state = gpuview.parse_state(host_state)
    glob = state["globals"]
    if regs is None:
        drain = float(gpuview._num(glob.get("drain_delay"), 0))
        regs = gpuview.registrations(glob["procs_dir"], drain)
    own = set(_relayed(cdir).values())
    lines = [
        "# view of container %s (written by the lab's nvml relay; do not edit)" % info["id"][:12]
    ]
    for key, value in glob.items():
        if key in ("procs_dir", "fails"):
            continue
        lines.append("%s %s" % (key, value))
    for fail in glob.get("fails", []):
        lines.append("fail %s" % fail)
    for index in info["visible"]:
        gpu = state["gpus"][index]
        others = sum(r["mib"] for r in regs if r["gpu"] == index and r["file"] not in own)
        static = int(gpuview._num(gpu.get("memory_used_mib"), 0))
        lines.append("gpu")
        for key, value in gpu["lines"]:
            if key not in GPU_KEYS_DROPPED:
                lines.append("  %s %s" % (key, value))
        lines.append("  memory_used_mib %d" % (static + others))
    text = "\n".join(lines) + "\n"
    path = os.path.join(cdir, "state")
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    gpuview.atomic_write(path, text)
    return True


def _relayed(cdir):
    try:
        with open(os.path.join(cdir, "relayed.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def relay(cdir, host_procs, pid_cache):
    """Copy the container's registrations to the host's procs dir (host index, host pid)."""
    with open(os.path.join(cdir, "container.json"), encoding="utf-8") as handle:
        info = json.load(handle)
    relayed = _relayed(cdir)  # container file name -> host file name
    cprocs = os.path.join(cdir, "state.d")
    try:
        names = [n for n in os.listdir(cprocs) if n.startswith("gpu") and ".tmp." not in n]
    except OSError:
        names = []
    os.makedirs(host_procs, exist_ok=True)
    changed = False
    for name in names:
        head, _sep, tail = name[3:].partition("-")
        if not (head.isdigit() and tail.isdigit()) or int(head) >= len(info["visible"]):
            continue
        reg = gpuview.read_registration(os.path.join(cprocs, name))
        if reg is None:
            continue
        content = reg[2]
        target = relayed.get(name)
        if target is None:
            hpid = host_pid_of(int(tail), info["init_pid"], pid_cache)
            if hpid is None:
                continue  # gone before we saw it: nothing to relay
            target = "gpu%d-%d" % (info["visible"][int(head)], hpid)
            relayed[name] = target
            changed = True
        hpath = os.path.join(host_procs, target)
        current = gpuview.read_registration(hpath)
        # The host saw the process die (dead_since in its copy): tell the container's copy too.
        if current is not None and "dead_since" in current[1]:
            if "dead_since" not in reg[1] and "released_at" not in reg[1]:
                gpuview.atomic_write(os.path.join(cprocs, name), current[2])
            continue
        if current is None or current[2] != content:
            gpuview.atomic_write(hpath, content)
    for name in list(relayed):
        if name not in names:  # unregistered in the container: gone at once on the host too
            try:
                os.unlink(os.path.join(host_procs, relayed.pop(name)))
            except OSError:
                pass
            changed = True
    if changed:
        gpuview.atomic_write(os.path.join(cdir, "relayed.json"), json.dumps(relayed))
    return info


def write_meminfo(state, regs, path=gpuview.HOST_MEMINFO):
    """Keep the host's simulated meminfo (unified-memory GPU only) current."""
    text = gpuview.meminfo_text(state, regs)
    if text is None:
        return
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        gpuview.atomic_write(path, text)
    except OSError as exc:
        print("nvml-relay: %s: %s" % (path, exc), file=sys.stderr)


def sweep(host_state=gpuview.HOST_STATE, containers=CONTAINERS, pid_cache=None):
    if pid_cache is None:
        pid_cache = {}
    if not os.path.exists(host_state):
        return
    state = gpuview.parse_state(host_state)
    host_procs = state["globals"]["procs_dir"]
    drain = float(gpuview._num(state["globals"].get("drain_delay"), 0))
    # Like a driver, notice a dead process at once (not at the next NVML call): dead_since.
    regs = gpuview.registrations(host_procs, drain)
    write_meminfo(state, regs)
    try:
        cdirs = sorted(os.listdir(containers))
    except OSError:
        return
    live = []
    for cid in cdirs:
        cdir = os.path.join(containers, cid)
        try:
            info = relay(cdir, host_procs, pid_cache.setdefault(cid, {}))
            if not gpuview.pid_alive(info["init_pid"]):
                ended = info.get("ended_at") or time.time()
                if "ended_at" not in info:
                    info["ended_at"] = ended
                    gpuview.atomic_write(os.path.join(cdir, "container.json"), json.dumps(info))
                if time.time() > ended + drain + 5:
                    shutil.rmtree(cdir, ignore_errors=True)
                    pid_cache.pop(cid, None)
                continue
            live.append((cid, cdir, info))
        except (OSError, ValueError, KeyError, IndexError) as exc:
            print("nvml-relay: %s: %s" % (cid, exc), file=sys.stderr)
    render_views(live, host_state, state, host_procs, drain)


def render_views(live, host_state, state, host_procs, drain):
    """Every view of ``live`` ([(who, cdir, info)]) from one reading of the host's
    registrations, taken after all the sweep's relays (a registration relayed for one
    container counts in the others' views in the same sweep)."""
    if not live:
        return
    regs = gpuview.registrations(host_procs, drain)
    for who, cdir, info in live:
        try:
            render_view(cdir, host_state, info, state=state, regs=regs)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            print("nvml-relay: %s: %s" % (who, exc), file=sys.stderr)


# ---- AMD containers ---------------------------------------------------------------------
# No hook runs for a container given /dev/kfd and /dev/dri (plain device nodes, no device
# request), so the relay finds them itself: a new container init (NSpid ends in 1) whose root
# has /dev/kfd. Its view lives INSIDE the container, at /proc/<init>/root/run/amd-stand-in
# (container.json, state, state.d/), and is relayed like an NVIDIA container's: only the GPUs
# whose render node (/dev/dri/renderD<minor>) the container has, numbered from 0 as ROCm
# numbers them; the container's registrations go to the host under host index and pid.


def _init_pids(seen):
    """Host pids of container init processes not looked at before."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in seen:
            continue
        pid = int(entry)
        seen.add(pid)
        try:
            with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
                nspid = next((line.split()[1:] for line in handle if line.startswith("NSpid:")),
                             [])
        except OSError:
            continue
        if len(nspid) > 1 and nspid[-1] == "1":
            found.append(pid)
    return found


def amd_visible(root, state):
    """Host AMD GPU indexes whose render node exists under ``root`` (a container's /)."""
    return [gpu["index"] for gpu in state["gpus"]
            if os.path.exists("%s/dev/dri/renderD%s" % (root, gpu.get("render_minor", "")))]


def sweep_amd(tracked, seen, host_state=gpuview.AMD_HOST_STATE):
    """Find new AMD containers, then keep each one's view and registrations in step."""
    if not os.path.exists(host_state):
        return
    state = gpuview.parse_state(host_state)
    host_procs = state["globals"]["procs_dir"]
    drain = float(gpuview._num(state["globals"].get("drain_delay"), 0))
    # marks dead processes at once, like a driver
    regs = gpuview.registrations(host_procs, drain)
    for pid in _init_pids(seen):
        root = "/proc/%d/root" % pid
        try:
            here, there = os.stat("/"), os.stat(root)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                seen.discard(pid)  # runc's init before pivot_root: look again next sweep
                continue
        except OSError:
            continue
        if not os.path.exists(root + gpuview.KFD):
            continue
        cdir = root + gpuview.AMD_CONTAINER_DIR
        info = {"id": "amd-%d" % pid, "init_pid": pid, "visible": amd_visible(root, state)}
        try:
            os.makedirs(os.path.join(cdir, "state.d"), exist_ok=True)
            gpuview.atomic_write(os.path.join(cdir, "container.json"), json.dumps(info))
            render_view(cdir, host_state, info, state=state, regs=regs)
        except OSError as exc:
            print("nvml-relay: AMD container %d: %s" % (pid, exc), file=sys.stderr)
            continue
        tracked[pid] = {"cdir": cdir, "cache": {}}
    live = []
    for pid, entry in list(tracked.items()):
        if not gpuview.pid_alive(pid):
            tracked.pop(pid)  # its processes are dead too: the host's copies drain
            continue
        try:
            live.append(("AMD container %d" % pid, entry["cdir"],
                         relay(entry["cdir"], host_procs, entry["cache"])))
        except (OSError, ValueError, KeyError, IndexError) as exc:
            print("nvml-relay: AMD container %d: %s" % (pid, exc), file=sys.stderr)
    render_views(live, host_state, state, host_procs, drain)


def main():
    period = float(os.environ.get("GPUFLEET_NVML_RELAY_PERIOD", "0.1"))
    cache = {}
    amd_tracked, amd_seen = {}, set()
    while True:
        sweep(pid_cache=cache)
        sweep_amd(amd_tracked, amd_seen)
        time.sleep(period)


if __name__ == "__main__":
    main()
