# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the fleet report (model, HTML page, text table).

Not a public API: the leading underscore says so. Pure logic: what the report role collected on
each host (GPU facts, the services plan, the health verdict, the recorded mode and apply) becomes
one model per host (:func:`fleet`), a self-contained HTML page (:func:`html_page`) and a short
text table (:func:`table`). Everything that comes from a host is HTML-escaped. What the role
records of each host comes from :func:`host_entry` (and :func:`slurped_json` for its files).

A host is judged by its mode: the plan the report role makes (the services role, with no mode
given) is that of the host's recorded mode, and only its active services are listed and checked,
so a service stopped on purpose (Ollama in an exclusive ``ingestion``) is not a failure. The
mode shown (:func:`_mode`) is the apply record's ``mode``, else the plan's ``mode``, else the
record of the retired mode_switch role, read for compatibility.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re

from ansible_collections.gpufleet.inference.plugins.module_utils._placement import _managed
from ansible_collections.gpufleet.inference.plugins.module_utils._plan import MODES as DUAL_MODES

STATUSES = ("ok", "failed", "unreachable")
APPLY_RESULTS = ("ok", "rolled_back", "failed", "unknown")
# The services role's default managed_processes: what counts as "ours" on a GPU.
DEFAULT_MANAGED = ("*ollama*", "*vllm*", "*vision*", "*docling*")


def _int_or_none(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number or null; got: %r" % (what, value))
    return int(value)


def _float_or_none(value, what):
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("%s must be a number or null; got: %r" % (what, value))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("%s must be a number or null; got: %r" % (what, value)) from None


def _dict_or_none(value, what):
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict or null; got: %r" % (what, value))
    return value


def _planned_mode(plan, where):
    """The plan's ``mode`` ({name, exclusive, description}), or None in a plan without one."""
    mode = plan.get("mode")
    if mode is None:
        return None
    if not isinstance(mode, dict) or not isinstance(mode.get("name"), str) or not mode["name"]:
        raise ValueError("%s.plan.mode must be a dict with a name; got: %r" % (where, mode))
    return mode


def _mode(value, plan, applied, where):
    """The host's mode: ``{mode, exclusive, description, source, outcome, switched_at,
    downtime_s, drain_s}``, or None when nothing names one.

    The name is the apply record's ``mode`` (source ``apply``: what the last apply ran), else
    the plan's (``plan``: the mode the host's .env records, which the report role planned),
    else ``value``'s, the state file of the retired mode_switch role (``record``). That file is
    read for compatibility only, for hosts switched before the modes joined the catalog; its
    last switch (outcome, time, downtime, drain) is shown while it names the mode shown (a
    record of another mode is stale). ``exclusive`` and the description come from the plan when
    it names the same mode (None otherwise).
    """
    record = _dict_or_none(value, where + ".mode") or {}
    planned = _planned_mode(plan, where)
    legacy = None if record.get("mode") is None else str(record["mode"])
    if applied["mode"] is not None:
        name, source = applied["mode"], "apply"
    elif planned is not None:
        name, source = planned["name"], "plan"
    elif legacy is not None:
        name, source = legacy, "record"
    elif record:
        name, source = None, "record"
    else:
        return None
    same = planned is not None and planned["name"] == name
    switch = record if legacy == name else {}
    return {
        "mode": name,
        "exclusive": bool(planned.get("exclusive")) if same else None,
        "description": (str(planned.get("description") or "") or None) if same else None,
        "source": source,
        "outcome": None if switch.get("outcome") is None else str(switch["outcome"]),
        "switched_at": switch.get("switched_at"),
        "downtime_s": _float_or_none(switch.get("downtime_s"), where + ".mode.downtime_s"),
        "drain_s": _float_or_none(switch.get("drain_s"), where + ".mode.drain_s"),
    }


def _apply(value, where):
    record = _dict_or_none(value, where + ".apply")
    if record is None:
        return {"result": "unknown", "finished_at": None, "runtime": None, "changed": None,
                "services": [], "mode": None}
    result = record.get("result")
    if result not in APPLY_RESULTS:
        raise ValueError("%s.apply.result must be one of %s; got: %r"
                         % (where, ", ".join(APPLY_RESULTS), result))
    mode = record.get("mode")
    if mode is not None and (not isinstance(mode, str) or not mode):
        raise ValueError("%s.apply.mode must be a mode's name; got: %r" % (where, mode))
    changed = record.get("changed")
    return {"result": result, "finished_at": record.get("finished_at"),
            "runtime": record.get("runtime"),
            "changed": None if changed is None else bool(changed),
            "services": [str(s) for s in record.get("services") or []], "mode": mode}


def _gpu_matches(placement, gpu):
    if placement.get("gpu_uuid") and gpu["uuid"]:
        return placement["gpu_uuid"] == gpu["uuid"]
    return placement.get("gpu_index") is not None and placement["gpu_index"] == gpu["index"]


def _services(plan, health, where):
    """The active services of the plan, each with its placement and its health verdict."""
    verdicts = {}
    for i, result in enumerate((health or {}).get("services") or []):
        if not isinstance(result, dict) or not result.get("service"):
            raise ValueError("%s.health.services[%d] must be a dict with a service; got: %r"
                             % (where, i, result))
        verdicts[result["service"]] = result
    out = []
    for i, service in enumerate(plan.get("services") or []):
        what = "%s.plan.services[%d]" % (where, i)
        if not isinstance(service, dict) or not isinstance(service.get("name"), str):
            raise ValueError("%s must be a dict with a name; got: %r" % (what, service))
        if not service.get("active"):
            continue
        placement = _dict_or_none(service.get("placement"), what + ".placement") or {}
        verdict = verdicts.get(service["name"])
        budget = _int_or_none(placement.get("vram_budget_mib"), what + ".placement.vram_budget_mib")
        used = None if verdict is None else _int_or_none(verdict.get("vram_mib"),
                                                         what + " health vram_mib")
        failed = [] if verdict is None else [
            "%s: %s" % (c.get("check"), c.get("detail")) for c in verdict.get("checks") or []
            if isinstance(c, dict) and not c.get("ok")]
        out.append({
            "name": service["name"],
            "engine": str(service.get("engine") or ""),
            "gpu_index": _int_or_none(placement.get("gpu_index"), what + ".placement.gpu_index"),
            "gpu_uuid": placement.get("gpu_uuid"),
            "vram_budget_mib": budget,
            "adjusted": bool(placement.get("adjusted")),
            "vram_used_mib": used,
            "healthy": None if verdict is None else bool(verdict.get("healthy")),
            "failed_checks": failed,
            "over_budget": used is not None and budget is not None and used > budget,
            "placed": bool(placement) and placement.get("gpu_index") is not None,
        })
    return out


def _gpu(raw, i, services, patterns, where):
    what = "%s.gpus[%d]" % (where, i)
    if not isinstance(raw, dict):
        raise ValueError("%s must be a dict; got: %r" % (what, raw))
    gpu = {
        "index": _int_or_none(raw.get("index"), what + ".index"),
        "uuid": raw.get("uuid"),
        "name": str(raw.get("name") or "unknown GPU"),
        "memory_kind": raw.get("memory_kind") or "dedicated",
        "healthy": raw.get("healthy") is not False,
        "errors": [str(e) for e in raw.get("errors") or []],
    }
    total = _int_or_none(raw.get("memory_total_mib"), what + ".memory_total_mib")
    used = _int_or_none(raw.get("memory_used_mib"), what + ".memory_used_mib")
    free = _int_or_none(raw.get("memory_free_mib"), what + ".memory_free_mib")
    reserved = _int_or_none(raw.get("memory_reserved_mib"), what + ".memory_reserved_mib") or 0
    processes = []
    for j, proc in enumerate(raw.get("processes") or []):
        if not isinstance(proc, dict):
            raise ValueError("%s.processes[%d] must be a dict; got: %r" % (what, j, proc))
        processes.append({
            "pid": proc.get("pid"), "name": str(proc.get("name") or "?"),
            "used_memory_mib": _int_or_none(proc.get("used_memory_mib"),
                                            "%s.processes[%d].used_memory_mib" % (what, j)) or 0,
            "ours": _managed(proc, patterns)})
    ours = sum(p["used_memory_mib"] for p in processes if p["ours"])
    # Held = what is not free (used plus what the driver reserves); ours is part of it and the
    # rest belongs to others (other programs, the driver, the display).
    if total is not None and free is not None:
        held = max(total - free, 0)
    elif used is not None:
        held = used + reserved
    else:
        held = None
    if held is not None:
        ours = min(ours, held)
        others = held - ours
    else:
        others = None
    if free is None and total is not None and held is not None:
        free = max(total - held, 0)
    placed = [s for s in services if s["placed"] and _gpu_matches(
        {"gpu_uuid": s["gpu_uuid"], "gpu_index": s["gpu_index"]}, gpu)]
    budgets = sum(s["vram_budget_mib"] or 0 for s in placed)
    gpu.update(memory_total_mib=total, memory_used_mib=used, memory_free_mib=free,
               memory_reserved_mib=reserved, held_mib=held, ours_mib=ours, others_mib=others,
               processes=processes, services=[s["name"] for s in placed], budgets_mib=budgets,
               overcommitted=total is not None and budgets > total)
    return gpu


def _host(i, entry):
    where = "hosts[%d]" % i
    if not isinstance(entry, dict):
        raise ValueError("%s must be a dict; got: %r" % (where, entry))
    name = entry.get("host")
    if not isinstance(name, str) or not name:
        raise ValueError("%s.host must be a non-empty string; got: %r" % (where, name))
    status = entry.get("status") or "ok"
    if status not in STATUSES:
        raise ValueError("%s.status must be one of %s; got: %r"
                         % (where, ", ".join(STATUSES), status))
    gpus = entry.get("gpus") or []
    if not isinstance(gpus, list):
        raise ValueError("%s.gpus must be a list; got: %r" % (where, gpus))
    plan = _dict_or_none(entry.get("plan"), where + ".plan") or {}
    health = _dict_or_none(entry.get("health"), where + ".health")
    patterns = entry.get("managed_processes")
    if patterns is None:
        patterns = DEFAULT_MANAGED
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ValueError("%s.managed_processes must be a list of patterns; got: %r"
                         % (where, patterns))
    patterns = [p.lower() for p in patterns]
    services = _services(plan, health, where)
    gpu_list = [_gpu(raw, j, services, patterns, where) for j, raw in enumerate(gpus)]
    warnings = [str(w) for w in entry.get("gpu_warnings") or []]
    warnings += [str(w) for w in plan.get("warnings") or []]
    for gpu in gpu_list:
        if not gpu["healthy"]:
            warnings.append("GPU %s (%s) is unhealthy: %s"
                            % (gpu["index"], gpu["name"], "; ".join(gpu["errors"]) or "no detail"))
        if gpu["overcommitted"]:
            warnings.append("GPU %s (%s) is over-committed: budgets %d MiB > total %d MiB"
                            % (gpu["index"], gpu["name"], gpu["budgets_mib"],
                               gpu["memory_total_mib"]))
    for service in services:
        if service["over_budget"]:
            warnings.append("%s holds %d MiB, over its budget of %d MiB"
                            % (service["name"], service["vram_used_mib"],
                               service["vram_budget_mib"]))
    apply = _apply(entry.get("apply"), where)
    if apply["result"] in ("failed", "rolled_back"):
        warnings.append("last apply %s" % apply["result"].replace("_", " "))
    mode = _mode(entry.get("mode"), plan, apply, where)
    planned = _planned_mode(plan, where)
    if apply["mode"] and planned and planned["name"] != apply["mode"]:
        warnings.append("the last apply ran mode %s; the host's plan is mode %s (its services "
                        "were checked)" % (apply["mode"], planned["name"]))
    return {
        "host": name,
        "status": status,
        "error": None if entry.get("error") is None else str(entry["error"]),
        "profile": plan.get("profile"),
        "dual_gpu_mode": plan.get("dual_gpu_mode"),
        "mode": mode,
        "apply": apply,
        "healthy": None if health is None else bool(health.get("healthy")),
        "unhealthy": [str(s) for s in (health or {}).get("unhealthy") or []],
        "gpus": gpu_list,
        "services": services,
        "warnings": warnings,
    }


def slurped_json(result):
    """The JSON document a ``slurp`` result holds, or None when it holds none (a missing file).

    ``result`` is the registered result of ``ansible.builtin.slurp`` (or one item of a slurp
    loop); its ``source`` names the file in the messages.
    """
    if not isinstance(result, dict):
        raise ValueError("result must be a slurp result; got: %r" % (result,))
    if result.get("content") is None:
        return None
    where = result.get("source") or (result.get("item") if isinstance(result.get("item"), str)
                                     else "the file")
    try:
        text = base64.b64decode(result["content"], validate=True).decode("utf-8")
    except (binascii.Error, TypeError, ValueError):
        raise ValueError("%s: its content is not base64 text; got: %r"
                         % (where, result["content"])) from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError("%s must hold JSON (%s); got: %r" % (where, err, text[:200])) from None


def host_entry(read, host, ping=None, error=None):
    """The report role's record of one host (``report_host``), an element of :func:`fleet`'s input.

    ``ping`` is the registered result of the first contact: an unreachable host is recorded as
    ``unreachable`` with its message. ``error`` says why reading a reachable host failed: it is
    recorded as ``failed`` with its GPUs (as far as read). Otherwise the host is ``ok`` with all
    that ``read`` holds: ``gpus``, ``gpu_warnings``, ``plan``, ``health``, ``managed_processes``,
    and the mode and apply records, parsed from ``mode_file`` (the retired mode_switch role's
    state file, read for compatibility) and ``apply_file``, the slurp results of those files
    (:func:`slurped_json`: none where a file is missing). A failed host's records are not
    parsed: one that is not JSON may be why it failed.
    """
    if not isinstance(read, dict):
        raise ValueError("read must be a dict of what the host said; got: %r" % (read,))
    if not isinstance(host, str) or not host:
        raise ValueError("host must be a non-empty string; got: %r" % (host,))
    if isinstance(ping, dict) and ping.get("unreachable"):
        return {"host": host, "status": "unreachable", "error": ping.get("msg") or "unreachable"}
    gpus = read.get("gpus") or []
    managed = read.get("managed_processes")
    if error is not None:
        return {"host": host, "status": "failed", "error": str(error), "gpus": gpus,
                "managed_processes": managed}
    return {"host": host, "status": "ok", "gpus": gpus,
            "gpu_warnings": read.get("gpu_warnings") or [], "plan": read.get("plan"),
            "health": read.get("health"), "mode": slurped_json(read.get("mode_file") or {}),
            "apply": slurped_json(read.get("apply_file") or {}), "managed_processes": managed}


def fleet(hosts):
    """The report model: one entry per host, in the order given, and the fleet's totals.

    Each element of ``hosts`` is what the report role collected on one host: ``host`` (name),
    ``status`` (ok, failed, unreachable), ``error``, ``gpus`` (``ansible_facts.gpus``),
    ``gpu_warnings``, ``plan`` (``services_plan``, with its ``mode``), ``health``
    (``health_result``), ``mode`` (the retired mode_switch role's record, read for
    compatibility), ``apply`` (the apply record, with the ``mode`` it ran; missing means
    unknown) and ``managed_processes`` (which GPU processes are ours). The host's mode is
    :func:`_mode`'s.
    """
    if not isinstance(hosts, list):
        raise ValueError("hosts must be a list of host entries; got: %r" % (hosts,))
    entries = [_host(i, entry) for i, entry in enumerate(hosts)]
    names = [e["host"] for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError("hosts must name each host once; got twice: %s" % ", ".join(twice))
    gpus = [g for e in entries for g in e["gpus"]]
    return {
        "hosts": entries,
        "totals": {
            "hosts": len(entries),
            "reachable": sum(1 for e in entries if e["status"] == "ok"),
            "gpus": len(gpus),
            "memory_total_mib": sum(g["memory_total_mib"] or 0 for g in gpus),
            "memory_free_mib": sum(g["memory_free_mib"] or 0 for g in gpus),
            "unhealthy_hosts": [e["host"] for e in entries
                                if e["status"] != "ok" or e["healthy"] is False],
        },
    }


def _model(value):
    """Accept either the host entries or what :func:`fleet` made of them."""
    if isinstance(value, dict) and "hosts" in value and "totals" in value:
        return value
    return fleet(value)


# ---- text table ---------------------------------------------------------------------------

def _health_word(entry):
    if entry["status"] != "ok":
        return entry["status"].upper()
    return {None: "unknown", True: "healthy", False: "UNHEALTHY"}[entry["healthy"]]


def _listed_mode(entry):
    """The mode's name, with "(exclusive)" when the plan says so; None for no mode or a
    dual-GPU mode (ollama, vllm, mixed: shown with the profile, where it means something)."""
    mode = entry["mode"]
    if not mode or not mode["mode"] or mode["mode"] in DUAL_MODES:
        return None
    return mode["mode"] + (" (exclusive)" if mode["exclusive"] else "")


def _dual_mode(entry):
    mode = entry["mode"]
    return mode["mode"] if mode and mode["mode"] in DUAL_MODES else entry["dual_gpu_mode"]


def _mode_word(entry):
    listed = _listed_mode(entry)
    if listed:
        return listed
    if entry["profile"]:
        if entry["profile"] in ("dual-gpu", "multi-gpu") and _dual_mode(entry):
            return "%s/%s" % (entry["profile"], _dual_mode(entry))
        return entry["profile"]
    return "-"


def _mib(value):
    return "?" if value is None else str(value)


def table(report):
    """A concise text table of the fleet: one line per host, one indented line per GPU."""
    model = _model(report)
    rows = [("HOST", "STATE", "HEALTH", "MODE", "APPLY", "GPUS", "WARNINGS")]
    details = {}
    for entry in model["hosts"]:
        rows.append((entry["host"], entry["status"], _health_word(entry), _mode_word(entry),
                     entry["apply"]["result"], str(len(entry["gpus"])),
                     str(len(entry["warnings"]))))
        lines = []
        if entry["error"]:
            lines.append("  error: %s" % (entry["error"].strip().splitlines() or [""])[0][:160])
        for gpu in entry["gpus"]:
            placed = ", ".join(
                "%s %s" % (s["name"], _mib(s["vram_budget_mib"])) for s in entry["services"]
                if s["name"] in gpu["services"])
            lines.append("  GPU %s %s: ours %s + others %s, free %s of %s MiB%s" % (
                _mib(gpu["index"]), gpu["name"], _mib(gpu["ours_mib"]), _mib(gpu["others_mib"]),
                _mib(gpu["memory_free_mib"]), _mib(gpu["memory_total_mib"]),
                "; " + placed if placed else ""))
        unplaced = [s["name"] for s in entry["services"] if not s["placed"]]
        if unplaced:
            lines.append("  no GPU: %s" % ", ".join(unplaced))
        details[entry["host"]] = lines
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        out.extend(details.get(row[0], []) if row is not rows[0] else [])
    totals = model["totals"]
    out.append("%d host(s), %d reachable, %d GPU(s), %d of %d MiB free; needing attention: %s" % (
        totals["hosts"], totals["reachable"], totals["gpus"], totals["memory_free_mib"],
        totals["memory_total_mib"], ", ".join(totals["unhealthy_hosts"]) or "none"))
    return out


# ---- HTML page ----------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;
background:#f4f6f8;color:#1f2933;font-size:14px}
h1{font-size:22px;margin:0 0 4px}
.meta{color:#52606d;margin:0 0 16px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
.host{background:#fff;border:1px solid #d9e2ec;border-radius:8px;padding:14px 18px;
margin:0 0 16px}
.host h2{font-size:18px;margin:0 0 8px;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.badge{font-size:12px;font-weight:600;padding:2px 8px;border-radius:10px}
.good{background:#d8f3dc;color:#1b5e20}.bad{background:#ffe0e0;color:#9b1c1c}
.unknown{background:#e4e7eb;color:#3e4c59}
.facts{color:#3e4c59;margin:0 0 10px}
.facts b{color:#1f2933;font-weight:600}
.gpu{border-top:1px solid #e4e7eb;padding:10px 0 4px}
.gpu h3{font-size:15px;margin:0 0 6px}
.gpu h3 small{color:#7b8794;font-weight:400}
.vram-bar{display:flex;height:22px;width:100%;max-width:760px;border:1px solid #bcccdc;
border-radius:4px;overflow:hidden;background:#f0f4f8}
.seg{height:100%}
.seg.ours{background:#2f6fed}.seg.others{background:#f0a202}.seg.free{background:#c6f0d4}
.nums{color:#52606d;margin:4px 0 6px}
table{border-collapse:collapse;margin:4px 0 8px}
th,td{text-align:left;padding:3px 12px 3px 0;border-bottom:1px solid #eef2f6;vertical-align:top}
th{color:#52606d;font-weight:600}
tr.over td{color:#9b1c1c;font-weight:600}
.warnings{background:#fff8e1;border:1px solid #f7d070;border-radius:6px;padding:6px 10px 6px 28px;
margin:8px 0 0}
.error{background:#ffe0e0;border:1px solid #f29b9b;border-radius:6px;padding:6px 10px;
white-space:pre-wrap;font-family:ui-monospace,monospace;margin:0 0 8px}
.none{color:#7b8794}
"""


def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _pct(part, total):
    if not total or part is None:
        return 0.0
    return max(0.0, min(100.0, 100.0 * part / total))


def _badge(text, kind):
    return '<span class="badge %s">%s</span>' % (kind, _e(text))


def _host_badges(entry):
    out = []
    if entry["status"] != "ok":
        out.append(_badge(entry["status"], "bad"))
    kind = {None: "unknown", True: "good", False: "bad"}[entry["healthy"]]
    word = {None: "unknown", True: "healthy", False: "unhealthy"}[entry["healthy"]]
    out.append(_badge("health: " + word, kind))
    result = entry["apply"]["result"]
    out.append(_badge("last apply: " + result.replace("_", " "),
                      {"ok": "good", "unknown": "unknown"}.get(result, "bad")))
    return "".join(out)


def _facts(entry):
    items = []
    mode = entry["mode"]
    if _listed_mode(entry):
        items.append(("mode", _listed_mode(entry)))
    if mode:
        if mode["outcome"]:
            items.append(("last switch", mode["outcome"]))
        if mode["switched_at"]:
            items.append(("switched at", mode["switched_at"]))
        if mode["downtime_s"] is not None:
            items.append(("downtime", "%.1f s" % mode["downtime_s"]))
        if mode["drain_s"] is not None:
            items.append(("drain", "%.1f s" % mode["drain_s"]))
    if entry["profile"]:
        items.append(("profile", entry["profile"]))
    if _dual_mode(entry) and entry["profile"] in ("dual-gpu", "multi-gpu"):
        items.append(("dual-GPU mode", _dual_mode(entry)))
    applied = entry["apply"]
    if applied["finished_at"]:
        items.append(("applied at", applied["finished_at"]))
    if applied["runtime"]:
        items.append(("runtime", applied["runtime"]))
    if not items:
        return ""
    return '<p class="facts">%s</p>' % " &middot; ".join(
        "%s <b>%s</b>" % (_e(k), _e(v)) for k, v in items)


def _service_rows(services):
    if not services:
        return '<p class="none">no service placed here</p>'
    rows = ["<tr><th>service</th><th>engine</th><th>budget MiB</th><th>held MiB</th>"
            "<th>health</th></tr>"]
    for s in services:
        health = {None: "unknown", True: "healthy", False: "unhealthy"}[s["healthy"]]
        if s["failed_checks"]:
            health += ": " + "; ".join(s["failed_checks"])
        budget = _mib(s["vram_budget_mib"]) if s["placed"] else "-"
        if s["adjusted"]:
            budget += " (cut)"
        held = "-" if s["vram_used_mib"] is None and not s["placed"] else _mib(s["vram_used_mib"])
        if s["over_budget"]:
            held += " over budget"
        rows.append('<tr class="service%s" data-service="%s"><td>%s</td><td>%s</td><td>%s</td>'
                    "<td>%s</td><td>%s</td></tr>"
                    % (" over" if s["over_budget"] else "", _e(s["name"]), _e(s["name"]),
                       _e(s["engine"]), _e(budget), _e(held), _e(health)))
    return "<table>%s</table>" % "".join(rows)


def _gpu_block(host, gpu, services):
    total = gpu["memory_total_mib"]
    segments = [("ours", gpu["ours_mib"], "used by our services"),
                ("others", gpu["others_mib"], "used by others"),
                ("free", gpu["memory_free_mib"], "free")]
    drawn = "".join(
        '<div class="seg %s" style="width:%.2f%%" title="%s: %s MiB"></div>'
        % (kind, _pct(mib, total), label, _e(_mib(mib))) for kind, mib, label in segments)
    nums = "ours %s MiB &middot; others %s MiB &middot; free %s MiB &middot; total %s MiB" % (
        _e(_mib(gpu["ours_mib"])), _e(_mib(gpu["others_mib"])), _e(_mib(gpu["memory_free_mib"])),
        _e(_mib(total)))
    if gpu["services"]:
        nums += " &middot; budgets %d MiB%s" % (
            gpu["budgets_mib"], " (over-committed)" if gpu["overcommitted"] else "")
    placed = [s for s in services if s["name"] in gpu["services"]]
    sub = [gpu["uuid"] or "no UUID"]
    if gpu["memory_kind"] == "unified":
        sub.append("unified memory")
    if not gpu["healthy"]:
        sub.append("UNHEALTHY")
    return ('<div class="gpu" data-host="%s" data-gpu="%s"><h3>GPU %s: %s <small>%s</small></h3>'
            '<div class="vram-bar" data-host="%s" data-gpu="%s" role="img" aria-label="%s">%s</div>'
            '<p class="nums">%s</p>%s</div>'
            % (_e(host), _e(gpu["index"]), _e(_mib(gpu["index"])), _e(gpu["name"]),
               _e(", ".join(sub)), _e(host), _e(gpu["index"]),
               _e("GPU %s memory: %s" % (gpu["index"], nums.replace(" &middot; ", ", "))),
               drawn, nums, _service_rows(placed)))


def _host_block(entry):
    parts = ['<section class="host" data-host="%s" data-status="%s"><h2>%s %s</h2>'
             % (_e(entry["host"]), _e(entry["status"]), _e(entry["host"]), _host_badges(entry))]
    if entry["error"]:
        parts.append('<div class="error">%s</div>' % _e(entry["error"]))
    parts.append(_facts(entry))
    if entry["status"] == "ok" and not entry["gpus"]:
        parts.append('<p class="none">no GPU</p>')
    for gpu in entry["gpus"]:
        parts.append(_gpu_block(entry["host"], gpu, entry["services"]))
    unplaced = [s for s in entry["services"] if not s["placed"]]
    if unplaced:
        parts.append('<div class="gpu cpu"><h3>Not on a GPU</h3>%s</div>'
                     % _service_rows(unplaced))
    if entry["warnings"]:
        parts.append('<ul class="warnings">%s</ul>'
                     % "".join("<li>%s</li>" % _e(w) for w in entry["warnings"]))
    parts.append("</section>")
    return "".join(parts)


_GENERATED_RE = re.compile(r'<p class="meta">[^<]*; generated ([^<]+)</p>')


def html_page(report, title="GPU fleet report", generated_at=None, previous=None):
    """One self-contained HTML page (inline CSS, no script, nothing fetched) of the fleet.

    ``previous``: the page written before, if any. When it shows the same fleet, it comes back
    as it is, with the time it was generated, so that writing the report of a fleet that did
    not change changes nothing.
    """
    if previous and generated_at:
        match = _GENERATED_RE.search(previous)
        if match and html_page(report, title, html.unescape(match.group(1))) == previous:
            return previous
    model = _model(report)
    totals = model["totals"]
    meta = "%d host(s), %d reachable, %d GPU(s), %d of %d MiB free" % (
        totals["hosts"], totals["reachable"], totals["gpus"], totals["memory_free_mib"],
        totals["memory_total_mib"])
    if totals["unhealthy_hosts"]:
        meta += "; needing attention: " + ", ".join(totals["unhealthy_hosts"])
    if generated_at:
        meta += "; generated %s" % generated_at
    legend = ('<p class="legend"><span><i style="background:#2f6fed"></i>used by our services'
              '</span><span><i style="background:#f0a202"></i>used by others</span>'
              '<span><i style="background:#c6f0d4"></i>free</span></p>')
    body = "".join(_host_block(entry) for entry in model["hosts"])
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>%s</title><style>%s</style></head><body><h1>%s</h1>"
            '<p class="meta">%s</p>%s<main>%s</main></body></html>\n'
            % (_e(title), CSS, _e(title), _e(meta), legend, body))
