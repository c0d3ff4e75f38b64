# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the GPU summary and the placement as text lines.

Not a public API: the leading underscore says so. Pure functions, stdlib only: the lines the
playbooks gpu_summary.yml (``make run``) and place_example.yml print, from the facts of
``gpu_facts`` (:func:`summary_lines`) and the result of ``gpu_placement``
(:func:`placement_lines`). The filters ``gpu_summary_lines`` and ``gpu_placement_lines`` wrap
them. A value a fact leaves out or null prints as ``-`` in the summary.
"""

from __future__ import annotations

HEAD = ("%s: %d GPU(s), %s MiB total, %s MiB free, recommended profile: %s "
        "(backend: %s, driver: %s)")
GPU_LINE = "GPU %s  %-24s %-9s %6s MiB total  %6s used  %6s free  cc %-4s %s"
PROCESS_LINE = "      pid %s  %s  %s MiB"
PLACEMENT_KEYS = ("service", "gpu", "vram_budget_mib", "environment")


def _v(value):
    return "-" if value is None else str(value)


def _dict(value, at):
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict; got: %r" % (at, value))
    return value


def _list(value, at):
    if not isinstance(value, list):
        raise ValueError("%s must be a list; got: %r" % (at, value))
    return value


def summary_lines(summary, gpus, host):
    """The host's GPU summary: a head line, a line per GPU and per GPU process, the warnings.

    ``summary`` is the ``gpu_summary`` fact, ``gpus`` the ``gpus`` fact, ``host`` the inventory
    name. The head names the GPU count, total and free MiB, the recommended profile, the backend
    and the driver (``none`` when empty); a GPU line its index, name, memory kind, total, used
    and free MiB, compute capability and ``healthy`` or ``UNHEALTHY: <errors>``; each warning is
    prefixed ``warning: ``.
    """
    _dict(summary, "gpu_summary")
    count = summary.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError("gpu_summary.count must be an integer; got: %r" % (count,))
    lines = [HEAD % (host, count, summary.get("total_memory_mib"),
                     summary.get("free_memory_mib"), summary.get("recommended_profile"),
                     summary.get("backend") or "none", summary.get("driver_version") or "none")]
    for i, gpu in enumerate(_list(gpus, "gpus")):
        _dict(gpu, "gpus[%d]" % i)
        if gpu.get("healthy"):
            health = "healthy"
        else:
            errors = _list(gpu.get("errors") or [], "gpus[%d].errors" % i)
            health = "UNHEALTHY: " + "; ".join(str(e) for e in errors)
        lines.append(GPU_LINE % (_v(gpu.get("index")), _v(gpu.get("name")),
                                 _v(gpu.get("memory_kind")), _v(gpu.get("memory_total_mib")),
                                 _v(gpu.get("memory_used_mib")), _v(gpu.get("memory_free_mib")),
                                 _v(gpu.get("compute_capability")), health))
        for j, proc in enumerate(_list(gpu.get("processes") or [], "gpus[%d].processes" % i)):
            _dict(proc, "gpus[%d].processes[%d]" % (i, j))
            lines.append(PROCESS_LINE % (_v(proc.get("pid")), _v(proc.get("name")),
                                         _v(proc.get("used_memory_mib"))))
    warnings = _list(summary.get("warnings") or [], "gpu_summary.warnings")
    lines.extend("warning: %s" % warning for warning in warnings)
    return lines


def placement_lines(assignments):
    """One line per assignment of ``gpu_placement``: service, GPU, VRAM budget (MiB) and the
    environment that selects the device, two spaces apart (an unplaced service's GPU is None).
    """
    lines = []
    for i, entry in enumerate(_list(assignments, "assignments")):
        _dict(entry, "assignments[%d]" % i)
        missing = [key for key in PLACEMENT_KEYS if key not in entry]
        if missing:
            raise ValueError("assignments[%d] lacks %s; got: %r" % (i, ", ".join(missing), entry))
        lines.append("  ".join(str(entry[key]) for key in PLACEMENT_KEYS))
    return lines
