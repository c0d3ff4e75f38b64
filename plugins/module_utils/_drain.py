# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: wait until GPU memory has really drained.

Not a public API: the leading underscore says so. Pure logic: the reader of the GPUs
(``read() -> [gpu facts]``, as ``_nvml.read_gpus`` returns them), the clock and the sleep
are injected, so tests drive it with a fake driver and a fake clock.

Drained means, on the watched GPUs: no process of the given PIDs or names is listed any
more, the freed memory is back (used memory at or below ``target_used_mib`` plus the
tolerance) when a target is given, and the reading has stayed within ``tolerance_mib`` for
``stable_s`` seconds since it got there. The wait ends at the first sample that satisfies
all three: no fixed sleep, so a drain the driver finishes at once costs ``stable_s``, not a
constant that must cover the slowest teardown.

``stable_s`` is short on purpose (``STABLE_S``): drivers hand a process's memory back in
one step (a real H200 went from held to free between two readings 20 ms apart, 0.14 s after
a ``kill -9``), and the lab's driver does the same after its drain delay. Being back at the
target proves the memory is free; the stable interval only rules out a reading caught while
something else moved, so two readings past the first (at the default 0.5 s interval) do.
Without a target or a baseline nothing proves the memory is back: stability alone decides,
and ``stable_s`` must then cover the gaps between the steps of the driver's teardown.

Unified-memory GPUs (GB10 / DGX Spark): NVML has no memory size there, and used memory is
only the sum of the LIVE processes, so memory the driver still holds after a process exited
is invisible to it. When one of the watched GPUs is unified and a reader of the host's
MemAvailable (``read_available() -> MiB``, from /proc/meminfo) is given, the memory signal
is MemAvailable instead: drained means the processes are gone, MemAvailable is back to at
least ``baseline_available_mib`` minus the tolerance when a baseline is given, and
MemAvailable has stayed within ``tolerance_mib`` for ``stable_s`` seconds.
"""

from __future__ import annotations

import re

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _common,
    _gpu_facts,
    _nvml,
)

# A day: beyond it a wait is a typo (seconds given as milliseconds), not a drain.
MAX_WAIT_S = 86400
# Seconds the freed memory must stay back and steady (see the module docstring).
STABLE_S = 1.0
# The options of a drain wait: gpu_drain_wait's, and engine_handover's drain.
ARGUMENT_SPEC = dict(
    gpus=dict(type="list", elements="str", default=[]),
    pids=dict(type="list", elements="int", default=[]),
    names=dict(type="list", elements="str", default=[]),
    target_used_mib=dict(type="int"),
    stable=dict(type="float", default=STABLE_S),
    tolerance_mib=dict(type="int", default=64),
    timeout=dict(type="float", default=120.0),
    interval=dict(type="float", default=0.5),
    meminfo_path=dict(type="path", default="/proc/meminfo"),
    baseline_available_mib=dict(type="int"),
)
_GPU_KEY_RE = re.compile(r"^(?:\d+|(?:GPU|MIG)-[0-9A-Za-z-]+)\Z")


def _positive(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number; got: %r" % (name, value))
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError("%s must be %s 0; got: %r" % (name, ">=" if allow_zero else ">", value))
    return value


def _selected(gpus, wanted):
    """The GPUs whose index or UUID is in ``wanted`` (all of them when it is empty)."""
    if not wanted:
        return list(gpus)
    keys = {str(key) for key in wanted}
    chosen = [g for g in gpus if str(g.get("index")) in keys or g.get("uuid") in keys]
    found = {str(g.get("index")) for g in chosen} | {g.get("uuid") for g in chosen}
    missing = sorted(keys - found)
    if missing:
        raise ValueError("gpus names GPUs this host does not have: %s" % ", ".join(missing))
    return chosen


def _unified(gpus):
    return any(g.get("memory_kind") == "unified" for g in gpus)


def sample(gpus, pids=(), names=()):
    """One reading: used MiB per GPU and the watched processes still listed."""
    pids = {int(pid) for pid in pids}
    used, left = {}, []
    for gpu in gpus:
        used[str(gpu.get("index"))] = gpu.get("memory_used_mib")
        for proc in gpu.get("processes") or []:
            name = proc.get("name") or ""
            if proc.get("pid") in pids or any(n and n in name for n in names):
                left.append(dict(gpu=gpu.get("index"), pid=proc.get("pid"), name=name,
                                 used_memory_mib=proc.get("used_memory_mib")))
    known = [value for value in used.values() if value is not None]
    total = sum(known) if len(known) == len(used) else None
    return dict(used_mib=used, total_used_mib=total, processes=left)


def wait_drained(read, clock, sleep, gpus=(), pids=(), names=(), target_used_mib=None,
                 stable_s=STABLE_S, tolerance_mib=64, timeout_s=120.0, interval_s=0.5,
                 max_samples=50, read_available=None, baseline_available_mib=None):
    """Poll ``read()`` until drained; return the outcome (never raises on a timeout).

    Returns ``drained`` (bool), ``waited_s``, ``reason`` (why it is not drained, or None),
    ``last`` (the last sample) and ``samples`` (at most ``max_samples``, the latest kept,
    each with ``t`` seconds since the start). On a unified GPU with ``read_available``,
    each sample also holds ``available_mib`` and the memory signal is MemAvailable.
    """
    # messages name the module options (stable, timeout, interval), in seconds
    _positive("stable", stable_s, allow_zero=True)
    _positive("tolerance_mib", tolerance_mib, allow_zero=True)
    _positive("timeout", timeout_s)
    _positive("interval", interval_s)
    if timeout_s > MAX_WAIT_S:
        raise ValueError("timeout must be at most %d; got: %r" % (MAX_WAIT_S, timeout_s))
    if interval_s > timeout_s:
        raise ValueError("interval must not exceed timeout (%r); got: %r"
                         % (timeout_s, interval_s))
    if stable_s > timeout_s:
        raise ValueError("stable must not exceed timeout (%r), or memory can never count "
                         "as stable; got: %r" % (timeout_s, stable_s))
    if target_used_mib is not None:
        _positive("target_used_mib", target_used_mib, allow_zero=True)
    if baseline_available_mib is not None:
        _positive("baseline_available_mib", baseline_available_mib, allow_zero=True)
    for i, key in enumerate(gpus):
        if isinstance(key, bool) or not _GPU_KEY_RE.match(str(key).strip()):
            raise ValueError("gpus[%d] must be a GPU index or UUID (GPU-..., MIG-...); got: %r"
                             % (i, key))
    for i, pid in enumerate(pids):
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError("pids[%d] must be a positive integer; got: %r" % (i, pid))
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError("names[%d] must be a non-empty string; got: %r" % (i, name))

    start = clock()
    samples = []
    stable_since, stable_total = None, None
    while True:
        now = clock()
        watched = _selected(read(), gpus)
        current = sample(watched, pids, names)
        current["t"] = round(now - start, 3)
        unified = read_available is not None and _unified(watched)
        if unified:
            current["available_mib"] = read_available()
        samples.append(current)
        del samples[:-max_samples]
        total = current["available_mib"] if unified else current["total_used_mib"]

        if current["processes"]:
            reason = "processes still on the GPU: %s" % ", ".join(
                "%s (pid %s, GPU %s)" % (p["name"] or "?", p["pid"], p["gpu"])
                for p in current["processes"])
            stable_since = None
        elif unified and baseline_available_mib is not None and (
                total < baseline_available_mib - tolerance_mib):
            reason = ("MemAvailable %d MiB is still below the baseline %d MiB (-%d): the driver "
                      "still holds memory of the processes that left" % (
                          total, baseline_available_mib, tolerance_mib))
            stable_since = None
        elif not unified and target_used_mib is not None and (
                total is None or total > target_used_mib + tolerance_mib):
            reason = "used memory %s MiB is still above the target %d MiB (+%d)" % (
                total, target_used_mib, tolerance_mib)
            stable_since = None
        else:
            if (stable_since is None or total is None or stable_total is None
                    or abs(total - stable_total) > tolerance_mib):
                stable_since, stable_total = now, total
            if now - stable_since >= stable_s:
                return dict(drained=True, waited_s=round(now - start, 3), reason=None,
                            last=current, samples=samples)
            reason = "%s has been stable for %.1f s of %.1f s" % (
                "MemAvailable" if unified else "used memory", now - stable_since, stable_s)

        if now - start >= timeout_s:
            return dict(drained=False, waited_s=round(now - start, 3),
                        reason="GPU memory did not drain within %s s: %s" % (timeout_s, reason),
                        last=current, samples=samples)
        sleep(interval_s)


def wait_with_nvml(pynvml, options, clock, sleep):
    """wait_drained with the host's readers: the GPUs through NVML, MemAvailable from
    ``options["meminfo_path"]``; ``options`` as ARGUMENT_SPEC parses them."""
    path = options["meminfo_path"]
    memory = _gpu_facts.read_meminfo_mib(path)

    def read():
        return _nvml.read_gpus(pynvml, system_memory_mib=memory)["gpus"]

    def read_available():
        where = "meminfo_path %s" % path
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError as exc:
            raise ValueError("%s cannot be read: %s" % (where, exc)) from exc
        return _common.parse_meminfo(text, where)["available_mib"]

    return wait_drained(
        read, clock, sleep, gpus=options["gpus"], pids=options["pids"],
        names=options["names"], target_used_mib=options["target_used_mib"],
        stable_s=options["stable"], tolerance_mib=options["tolerance_mib"],
        timeout_s=options["timeout"], interval_s=options["interval"],
        read_available=read_available,
        baseline_available_mib=options["baseline_available_mib"])
