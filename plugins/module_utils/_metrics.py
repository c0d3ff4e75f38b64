# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: Prometheus textfile-collector metrics of a host.

Not a public API: the leading underscore says so. Pure logic: one host's entry of the fleet
report (see _report.fleet) becomes the text exposition format that node_exporter's textfile
collector reads (HELP and TYPE lines, label values escaped, one family per metric name).
"""

from __future__ import annotations

import datetime

from ansible_collections.gpufleet.inference.plugins.module_utils import _report

MIB = 1024 * 1024

# name -> help text; every family is a gauge.
FAMILIES = (
    ("gpufleet_gpu_memory_total_bytes", "Total memory of the GPU."),
    ("gpufleet_gpu_memory_used_bytes", "GPU memory held (total minus free)."),
    ("gpufleet_gpu_memory_free_bytes", "Free memory of the GPU."),
    ("gpufleet_gpu_memory_managed_bytes", "GPU memory held by processes of our services."),
    ("gpufleet_gpu_healthy", "1 when the GPU answered without error."),
    ("gpufleet_service_vram_budget_bytes", "VRAM budget the placement gave the service."),
    ("gpufleet_service_vram_used_bytes", "VRAM the service's processes hold on its GPU."),
    ("gpufleet_service_healthy", "1 when every health check of the service passed."),
    ("gpufleet_host_healthy", "1 when every service of the host is healthy."),
    ("gpufleet_mode_info", "The host's inference mode (the last apply's, else the plan's)."),
    ("gpufleet_profile_info", "The services profile and dual-GPU mode of the host."),
    ("gpufleet_last_switch_duration_seconds", "Downtime of the last mode switch."),
    ("gpufleet_last_switch_drain_seconds", "GPU memory drain wait of the last mode switch."),
    ("gpufleet_last_switch_timestamp_seconds", "When the last mode switch finished."),
    ("gpufleet_last_apply_info", "Result of the last apply (unknown when none is recorded)."),
    ("gpufleet_last_apply_success", "1 when the last apply succeeded, 0 when it failed."),
    ("gpufleet_last_apply_timestamp_seconds", "When the last apply finished."),
)


def escape_label(value):
    """A label value as the exposition format wants it: backslash, quote, newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels):
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (k, escape_label(v)) for k, v in labels)


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _timestamp(value, what):
    """Seconds since the epoch of an ISO-8601 time (a trailing Z means UTC)."""
    if not value:
        return None
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("%s must be an ISO-8601 time; got: %r" % (what, value)) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def samples(entry):
    """(name, labels, value) of one host entry of :func:`_report.fleet`."""
    out = []
    for gpu in entry["gpus"]:
        labels = (("gpu", "" if gpu["index"] is None else gpu["index"]),
                  ("uuid", gpu["uuid"] or ""), ("name", gpu["name"]))
        for name, mib in (("gpufleet_gpu_memory_total_bytes", gpu["memory_total_mib"]),
                          ("gpufleet_gpu_memory_used_bytes", gpu["held_mib"]),
                          ("gpufleet_gpu_memory_free_bytes", gpu["memory_free_mib"]),
                          ("gpufleet_gpu_memory_managed_bytes", gpu["ours_mib"])):
            if mib is not None:
                out.append((name, labels, mib * MIB))
        out.append(("gpufleet_gpu_healthy", labels, gpu["healthy"]))
    for service in entry["services"]:
        labels = (("service", service["name"]), ("engine", service["engine"]),
                  ("gpu", "none" if service["gpu_index"] is None else service["gpu_index"]))
        if service["placed"] and service["vram_budget_mib"] is not None:
            out.append(("gpufleet_service_vram_budget_bytes", labels,
                        service["vram_budget_mib"] * MIB))
        if service["vram_used_mib"] is not None:
            out.append(("gpufleet_service_vram_used_bytes", labels,
                        service["vram_used_mib"] * MIB))
        if service["healthy"] is not None:
            out.append(("gpufleet_service_healthy", labels, service["healthy"]))
    if entry["healthy"] is not None:
        out.append(("gpufleet_host_healthy", (), entry["healthy"]))
    mode = entry["mode"]
    if mode and mode["mode"]:
        out.append(("gpufleet_mode_info", (("mode", mode["mode"]),
                                           ("outcome", mode["outcome"] or "")), 1))
    if entry["profile"]:
        dual = entry["dual_gpu_mode"] if entry["profile"] in ("dual-gpu", "multi-gpu") else None
        out.append(("gpufleet_profile_info", (("profile", entry["profile"]),
                                              ("dual_gpu_mode", dual or "")), 1))
    if mode:
        if mode["downtime_s"] is not None:
            out.append(("gpufleet_last_switch_duration_seconds", (), mode["downtime_s"]))
        if mode["drain_s"] is not None:
            out.append(("gpufleet_last_switch_drain_seconds", (), mode["drain_s"]))
        switched = _timestamp(mode["switched_at"], "mode.switched_at")
        if switched is not None:
            out.append(("gpufleet_last_switch_timestamp_seconds", (), switched))
    applied = entry["apply"]
    out.append(("gpufleet_last_apply_info", (("result", applied["result"]),
                                             ("runtime", applied["runtime"] or "")), 1))
    if applied["result"] != "unknown":
        out.append(("gpufleet_last_apply_success", (), applied["result"] == "ok"))
        finished = _timestamp(applied["finished_at"], "apply.finished_at")
        if finished is not None:
            out.append(("gpufleet_last_apply_timestamp_seconds", (), finished))
    return out


def textfile(host):
    """The textfile-collector file of one host: its entry as the report role collects it.

    Families come in a fixed order, each with its HELP and TYPE lines, only when they have a
    sample (a host without a recorded mode has no mode family).
    """
    entry = _report.fleet([host])["hosts"][0]
    if entry["status"] != "ok":
        raise ValueError("host %s is %s: nothing to export" % (entry["host"], entry["status"]))
    by_name = {}
    for name, labels, value in samples(entry):
        by_name.setdefault(name, []).append("%s%s %s" % (name, _labels(labels), _number(value)))
    lines = []
    for name, text in FAMILIES:
        if name in by_name:
            lines.append("# HELP %s %s" % (name, text))
            lines.append("# TYPE %s gauge" % name)
            lines.extend(by_name[name])
    return "\n".join(lines) + "\n"
