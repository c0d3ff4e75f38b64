# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's simulated GPU driver, seen from Python (stdlib only; lab stand-in, not NVIDIA code).

Reads the same state file and process directory as the stand-in NVML library
(lab/nvml/README.md, lab/nvml/libnvidia-ml.c) and applies the same rules, so the stand-in
servers, the stand-in hook and the relay see exactly what nvidia-ml-py sees:

* state file: $GPUFLEET_NVML_STATE ("key value" lines; "gpu" starts a GPU);
* registered processes: files "gpu<index>-<pid>" in procs_dir (default "<state>.d") holding
  MiB, optional "released_at", "dead_since" (and "name", which the stand-in servers do not
  write: NVML then shows /proc/<pid>/comm); counted while the pid lives and is not released,
  then for drain_delay seconds.

What CUDA would report (cudaMemGetInfo) is total - used - reserved; on a unified-memory GPU
(where NVML says NOT_SUPPORTED) it uses memory_total_mib when the state gives one.
"""

from __future__ import annotations

import json
import os
import time

HOST_STATE = "/etc/gpufleet-nvml/state"
# What /proc/meminfo shows on a real GB10 (GPU and CPU share the memory), simulated.
HOST_MEMINFO = "/run/gpufleet-nvml/meminfo"
CONTAINER_STATE = "/run/nvidia-stand-in/state"
CONTAINER_INFO = "/run/nvidia-stand-in/container.json"


# The simulated AMD driver (lab/servers/amd_smi.py): the host's state, and the view the relay
# writes into an AMD container (one given /dev/kfd), where ROCm would find the GPUs.
AMD_HOST_STATE = "/etc/gpufleet-amd/state"
AMD_CONTAINER_DIR = "/run/amd-stand-in"
AMD_CONTAINER_STATE = AMD_CONTAINER_DIR + "/state"
KFD = "/dev/kfd"
# How long an AMD container's process waits for the relay's first view (it comes within 0.1 s).
AMD_VIEW_WAIT_S = 10.0


def _amd_state():
    """The AMD state this process reads: the container's view, else the host's; None when
    there is no /dev/kfd (ROCm finds no GPU without it)."""
    if not os.path.exists(KFD):
        return None
    if os.path.exists(AMD_HOST_STATE) and not os.path.exists(AMD_CONTAINER_DIR):
        return AMD_HOST_STATE
    deadline = time.time() + AMD_VIEW_WAIT_S
    while not os.path.exists(AMD_CONTAINER_STATE) and time.time() < deadline:
        time.sleep(0.05)
    return AMD_CONTAINER_STATE if os.path.exists(AMD_CONTAINER_STATE) else None


def state_path():
    """The state file this process's driver reads: NVML's (env first, then the lab's fixed
    places), else the AMD one where /dev/kfd exists."""
    path = os.environ.get("GPUFLEET_NVML_STATE")
    if path and os.path.exists(path):
        return path
    for candidate in (CONTAINER_STATE, HOST_STATE):
        if os.path.exists(candidate):
            return candidate
    return _amd_state() or path


def parse_state(path):
    """{'globals': {...}, 'gpus': [{'index', 'lines': [(key, value)], key: value...}]}."""
    glob = {}
    gpus = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _sep, value = line.partition(" ")
            value = value.strip()
            if key == "gpu":
                gpus.append({"index": len(gpus), "lines": [], "mig_devices": [], "fails": []})
                continue
            if not gpus:
                if key == "fail":
                    glob.setdefault("fails", []).append(value)
                else:
                    glob[key] = value
                continue
            gpu = gpus[-1]
            gpu["lines"].append((key, value))
            if key == "mig_device":
                gpu["mig_devices"].append(value)
            elif key == "fail":
                gpu["fails"].append(value)
            elif key != "process":
                gpu[key] = value
    if "procs_dir" not in glob:
        glob["procs_dir"] = path + ".d"
    return {"globals": glob, "gpus": gpus}


def _num(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            return default


def pid_alive(pid):
    """Same test as the NVML stand-in: kill(pid, 0), and a zombie holds nothing."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return True
    tail = stat[stat.rfind(")") + 1 :]
    return not tail.startswith(" Z")


def read_registration(path):
    """(mib, {'name', 'released_at', 'dead_since'}) or None when unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except OSError:
        return None
    mib = None
    extra = {}
    for line in content.splitlines():
        key, _sep, value = line.strip().partition(" ")
        if mib is None:
            try:
                mib = int(key)
                continue
            except ValueError:
                pass
        if key in ("released_at", "dead_since"):
            extra[key] = _num(value, None)
        elif key == "name":
            extra["name"] = value.strip()
    if mib is None:
        return None
    return mib, extra, content


def atomic_write(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.rename(tmp, path)


def registrations(procs_dir, drain_delay, check_alive=True, mark_dead=True, now=None):
    """Registered processes that count now: [{'file', 'gpu', 'pid', 'mib', 'alive', ...}]."""
    now = time.time() if now is None else now
    out = []
    try:
        names = os.listdir(procs_dir)
    except OSError:
        return out
    for name in names:
        if not name.startswith("gpu") or "-" not in name or name.startswith("."):
            continue
        head, _sep, tail = name[3:].partition("-")
        if not (head.isdigit() and tail.isdigit()):
            continue
        path = os.path.join(procs_dir, name)
        reg = read_registration(path)
        if reg is None:
            continue
        mib, extra, content = reg
        pid = int(tail)
        alive = pid_alive(pid) if check_alive else True
        released = extra.get("released_at")
        dead = extra.get("dead_since")
        if not alive and dead is None and released is None:
            dead = now
            if mark_dead:
                try:
                    atomic_write(path, content.rstrip("\n") + "\ndead_since %.3f\n" % now)
                except OSError:
                    pass
        gone = released if released is not None else dead
        if gone is not None and now >= gone + drain_delay:
            continue
        out.append(
            {
                "file": name,
                "gpu": int(head),
                "pid": pid,
                "mib": mib,
                "alive": alive,
                "gone": gone,
                "name": extra.get("name", ""),
            }
        )
    return out


class View:
    """One reading of the driver: GPUs with total / used / free MiB as CUDA would see them."""

    def __init__(self, path=None):
        self.path = path or state_path()
        self.gpus = []
        self.globals = {}
        self.regs = []
        self.vendor = "nvidia"
        if not self.path or not os.path.exists(self.path):
            return
        state = parse_state(self.path)
        self.globals = state["globals"]
        self.vendor = self.globals.get("vendor", "nvidia")
        self.drain_delay = float(_num(self.globals.get("drain_delay"), 0))
        self.procs_dir = self.globals["procs_dir"]
        self.regs = registrations(self.procs_dir, self.drain_delay)
        for gpu in state["gpus"]:
            registered = sum(r["mib"] for r in self.regs if r["gpu"] == gpu["index"])
            total = _num(gpu.get("memory_total_mib"), 0)
            reserved = _num(gpu.get("memory_reserved_mib"), 0)
            used = _num(gpu.get("memory_used_mib"), 0) + registered
            self.gpus.append(
                {
                    "index": gpu["index"],
                    "uuid": gpu.get("uuid", "GPU-%d" % gpu["index"]),
                    "name": gpu.get("name", "NVIDIA GPU"),
                    "total_mib": total,
                    "reserved_mib": reserved,
                    "used_mib": used,
                    "free_mib": max(0, total - used - reserved),
                    "unified": gpu.get("unified") == "1",
                    "lost": gpu.get("lost") == "1",
                    "compute_capability": gpu.get("compute_capability", ""),
                }
            )

    def by_index(self, index):
        for gpu in self.gpus:
            if gpu["index"] == index:
                return gpu
        raise KeyError(index)


def _select(gpus, spec):
    """Apply a CUDA_VISIBLE_DEVICES-like list (ordinals or UUID prefixes) to ``gpus``."""
    chosen = []
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            break
        if token.lstrip("-").isdigit():
            ordinal = int(token)
            if ordinal < 0 or ordinal >= len(gpus):
                break  # CUDA stops at the first invalid entry
            chosen.append(gpus[ordinal])
        else:
            match = [g for g in gpus if g["uuid"].startswith(token) or g["uuid"] == "GPU-" + token]
            if len(match) != 1:
                break
            chosen.append(match[0])
    return chosen


def visible_gpus(view=None):
    """The GPUs this process may use, as CUDA would enumerate them, lost ones left out.

    The view already holds only the container's GPUs (the stand-in hook writes a view per
    container, as the real toolkit exposes only the requested devices); on top of it,
    CUDA_VISIBLE_DEVICES selects and reorders; "" or "-1" hides every GPU.
    """
    view = view or View()
    gpus = [g for g in view.gpus if not g["lost"]]
    if view.vendor == "amd":
        spec = os.environ.get("ROCR_VISIBLE_DEVICES")
        return gpus if spec is None else select_rocr(gpus, spec)
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is not None:
        gpus = _select(gpus, spec)
    return gpus


def select_rocr(gpus, spec):
    """Apply ROCR_VISIBLE_DEVICES to the GPUs ROCm enumerates (those whose device nodes the
    process has, numbered from 0): each entry a number among them or a UUID as rocminfo
    prints it (``GPU-`` and 16 hex digits) (ROCm's GPU isolation docs); an entry that is
    neither ends the list, as CUDA does (assumed for ROCm). amd-smi's UUID
    (``xxxxxxxx-0000-1000-...``) is not that UUID: it selects nothing. "" hides every GPU."""
    chosen = []
    for raw in spec.split(","):
        token = raw.strip()
        if token.isdigit() and int(token) < len(gpus):
            chosen.append(gpus[int(token)])
            continue
        match = [g for g in gpus if token.startswith("GPU-") and g["uuid"] == token]
        if len(match) != 1:
            break
        chosen.append(match[0])
    return chosen


class Registration:
    """VRAM this process holds, registered with the simulated driver (files gpu<i>-<pid>).

    No name is registered: the stand-in NVML then reports the process's /proc/<pid>/comm,
    which each stand-in sets to its engine's process title (standin.set_process_name), so no
    friendly name shows that a real host would not show. The library still reads a "name"
    line, for its own tests.
    """

    def __init__(self, view=None, pid=None):
        self.view = view or View()
        self.pid = pid or os.getpid()
        self.held = {}

    def _path(self, index):
        return os.path.join(self.view.procs_dir, "gpu%d-%d" % (index, self.pid))

    def set(self, index, mib):
        """Hold ``mib`` MiB on GPU ``index`` (of this process's view); 0 releases it."""
        if not self.view.path:
            return
        os.makedirs(self.view.procs_dir, exist_ok=True)
        mib = int(mib)
        if mib <= 0:
            self.release(index)
            return
        atomic_write(self._path(index), "%d\n" % mib)
        self.held[index] = mib

    def release(self, index=None):
        """Free memory like a context teardown: counted drain_delay seconds more."""
        for idx in [index] if index is not None else list(self.held):
            if idx not in self.held:
                continue
            mib = self.held.pop(idx)
            text = "%d\nreleased_at %.3f\n" % (mib, time.time())
            try:
                atomic_write(self._path(idx), text)
            except OSError:
                pass


def meminfo_text(state, regs):
    """A /proc/meminfo stand-in for a host with a unified-memory GPU, or None without one.

    MemTotal is the unified GPU's memory; MemAvailable is MemTotal minus what the driver
    counts as used on it: static use plus the registrations, still-draining ones included
    (on a real GB10 the driver's teardown shows in MemAvailable, not in NVML).
    """
    unified = [g for g in state["gpus"] if g.get("unified") == "1"]
    if not unified:
        return None
    total = sum(int(_num(g.get("memory_total_mib"), 0)) for g in unified)
    indexes = {g["index"] for g in unified}
    used = sum(int(_num(g.get("memory_used_mib"), 0)) for g in unified)
    used += sum(r["mib"] for r in regs if r["gpu"] in indexes)
    return "MemTotal: %d kB\nMemFree: %d kB\nMemAvailable: %d kB\n" % (
        total * 1024, max(0, total - used) * 1024, max(0, total - used) * 1024)


def container_info():
    try:
        with open(CONTAINER_INFO, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
