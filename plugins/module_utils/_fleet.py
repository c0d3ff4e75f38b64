# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: fleet rollouts.

Not a public API: the leading underscore says so. Pure logic, no Ansible import:
- ``check_expectation``: a host's GPU facts against what its inventory declares
  (``gpufleet_expected_gpus``), checked before a rollout changes anything;
- ``outcomes`` and ``outcome_table``: the per-host outcome of a rollout (changed, unchanged,
  failed, unreachable, rolled back, not reached) and the table printed at its end.
"""

from __future__ import annotations

import fnmatch

from ansible_collections.gpufleet.inference.plugins.module_utils._common import ascii_digits, is_int

EXPECTATION_KEYS = ("count", "names", "name", "min_memory_mib", "min_compute_capability",
                    "healthy")
FIELD = "gpufleet_expected_gpus"


def _capability(value, field):
    """'8.6' -> (8, 6); a clear error naming field and value otherwise."""
    text = str(value).strip()
    major, dot, minor = text.partition(".")
    if not ascii_digits(major) or (dot and not ascii_digits(minor)):
        raise ValueError("%s must be a compute capability like '8.6'; got: %r" % (field, value))
    return int(major), int(minor or 0)


def normalize_expectation(expected, field=FIELD):
    """The checked expectation as a dict (None: nothing declared); ValueError on bad input.

    ``expected`` is an int (the GPU count) or a dict of ``count``, ``names`` (one glob per GPU,
    in index order), ``name`` (a glob every GPU matches), ``min_memory_mib``,
    ``min_compute_capability`` and ``healthy`` (every GPU healthy; default true).
    """
    if expected is None or expected == {}:
        return None
    if is_int(expected):
        expected = {"count": expected}
    if not isinstance(expected, dict):
        raise ValueError("%s must be a GPU count or a dict; got: %r" % (field, expected))
    unknown = sorted(set(expected) - set(EXPECTATION_KEYS))
    if unknown:
        raise ValueError("%s has unknown key(s) %s (known: %s)"
                         % (field, ", ".join(map(str, unknown)), ", ".join(EXPECTATION_KEYS)))
    out = {"healthy": True}
    for key in ("count", "min_memory_mib"):
        if key in expected:
            value = expected[key]
            if not is_int(value) or value < 0:
                raise ValueError("%s.%s must be an integer >= 0; got: %r" % (field, key, value))
            out[key] = value
    if "names" in expected:
        names = expected["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError("%s.names must be a list of GPU names (globs); got: %r"
                             % (field, names))
        if "count" in out and out["count"] != len(names):
            raise ValueError("%s.count (%d) and the length of %s.names (%d) disagree"
                             % (field, out["count"], field, len(names)))
        out["names"] = list(names)
    if "name" in expected:
        if not isinstance(expected["name"], str) or not expected["name"]:
            raise ValueError("%s.name must be a GPU name (glob); got: %r"
                             % (field, expected["name"]))
        out["name"] = expected["name"]
    if "min_compute_capability" in expected:
        value = expected["min_compute_capability"]
        _capability(value, field + ".min_compute_capability")
        out["min_compute_capability"] = str(value)
    if "healthy" in expected:
        if not isinstance(expected["healthy"], bool):
            raise ValueError("%s.healthy must be true or false; got: %r"
                             % (field, expected["healthy"]))
        out["healthy"] = expected["healthy"]
    return out


def _summary(gpus):
    if not gpus:
        return "no GPU"
    parts = []
    for gpu in gpus:
        memory = gpu.get("memory_total_mib")
        parts.append("%s (%s MiB%s)" % (gpu.get("name") or "unknown",
                                        "?" if memory is None else memory,
                                        "" if gpu.get("healthy", True) else ", unhealthy"))
    return "%d GPU(s): %s" % (len(gpus), ", ".join(parts))


def _label(gpu, position):
    """'GPU 1 (NVIDIA L4)'; a GPU without an index (lost) by its bus id, UUID or position."""
    name = gpu.get("name") or "unknown"
    index = gpu.get("index")
    if is_int(index):
        return "GPU %d (%s)" % (index, name)
    who = gpu.get("pci_bus_id") or gpu.get("uuid") or "#%d" % position
    return "GPU %s (%s)" % (who, name)


def _unhealthy_detail(gpu):
    """The UUID of a GPU named by its bus id, then its errors (``errors``, or an old ``error``)."""
    parts = []
    if not is_int(gpu.get("index")) and gpu.get("pci_bus_id") and gpu.get("uuid"):
        parts.append("uuid %s" % gpu["uuid"])
    errors = gpu.get("errors")
    if isinstance(errors, list) and errors:
        parts.extend(str(e) for e in errors)
    elif isinstance(errors, str) and errors:
        parts.append(errors)
    elif gpu.get("error"):
        parts.append(str(gpu["error"]))
    return "; ".join(parts) or "no detail"


def check_expectation(gpus, expected, field=FIELD):
    """Compare GPU facts (``ansible_facts.gpus``) with a declared expectation.

    Returns ``{ok, problems, summary, expected}``: ``problems`` are sentences naming the GPU and
    what differs; ``ok`` is true when there are none (or nothing was declared).
    """
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        raise ValueError("gpus must be the list of gpu_facts; got: %r" % (gpus,))
    want = normalize_expectation(expected, field)
    problems = []
    if want is not None:
        count = want.get("count", len(want["names"]) if "names" in want else None)
        if count is not None and len(gpus) != count:
            problems.append("expected %d GPU(s), found %d" % (count, len(gpus)))
        for i, gpu in enumerate(gpus):
            name = gpu.get("name") or ""
            label = _label(gpu, i)
            if "names" in want and i < len(want["names"]) and not fnmatch.fnmatchcase(
                    name, want["names"][i]):
                problems.append("%s: expected name %r" % (label, want["names"][i]))
            if "name" in want and not fnmatch.fnmatchcase(name, want["name"]):
                problems.append("%s: expected name %r" % (label, want["name"]))
            memory = gpu.get("memory_total_mib")
            if "min_memory_mib" in want and (memory is None or memory < want["min_memory_mib"]):
                problems.append("%s: %s MiB, expected at least %d MiB"
                                % (label, "unknown" if memory is None else memory,
                                   want["min_memory_mib"]))
            if "min_compute_capability" in want:
                have = gpu.get("compute_capability")
                floor = _capability(want["min_compute_capability"], "min_compute_capability")
                if have is None or _capability(have, "%s.compute_capability" % label) < floor:
                    problems.append("%s: compute capability %s, expected at least %s"
                                    % (label, have, want["min_compute_capability"]))
            if want["healthy"] and not gpu.get("healthy", True):
                problems.append("%s: unhealthy (%s)" % (label, _unhealthy_detail(gpu)))
    return {"ok": not problems, "problems": problems, "summary": _summary(gpus),
            "expected": want}


# --- rollout outcomes ----------------------------------------------------------------------

OUTCOMES = ("changed", "unchanged", "failed", "unreachable", "rolled back", "not reached")


def outcomes(hosts):
    """One outcome row per host, in the order given.

    ``hosts`` maps a host name to what happened to it during the run: ``changed`` (count of
    changed results), ``failed`` (the failed task's name and message, or None), ``unreachable``
    (message or None), ``stopped`` (true when the play was stopped with the host still in it,
    by max_fail_percentage or any_errors_fatal), ``not_reached`` (a play meant for the host ended
    before the host got any task), ``outcome`` (set by the playbook: ``rolled_back``).
    Rows: ``{host, outcome, changed, note}``.
    """
    rows = []
    for host, seen in hosts.items():
        changed = int(seen.get("changed") or 0)
        note = ""
        if seen.get("outcome") in ("rolled_back", "rolled back"):
            outcome, note = "rolled back", seen.get("failed") or ""
        elif seen.get("unreachable"):
            outcome, note = "unreachable", seen["unreachable"]
        elif seen.get("failed"):
            outcome, note = "failed", seen["failed"]
        elif seen.get("stopped") or seen.get("not_reached"):
            outcome = "not reached" if changed == 0 else "changed"
            note = ("rollout stopped before this host" if changed == 0
                    else "rollout stopped while this host was changing")
        elif changed:
            outcome = "changed"
        else:
            outcome = "unchanged"
        rows.append({"host": host, "outcome": outcome, "changed": changed, "note": note})
    return rows


def outcome_table(rows, width=100):
    """The rows as fixed-width lines: a heading, one line per host, then the count per outcome."""
    host_w = max([len("HOST")] + [len(r["host"]) for r in rows])
    lines = ["%-*s  %-11s  %7s  %s" % (host_w, "HOST", "OUTCOME", "CHANGED", "NOTE")]
    for row in rows:
        line = "%-*s  %-11s  %7d  %s" % (host_w, row["host"], row["outcome"], row["changed"],
                                         " ".join(str(row["note"]).split()))
        lines.append(line if len(line) <= width else line[:width - 3] + "...")
    counts = [(o, sum(1 for r in rows if r["outcome"] == o)) for o in OUTCOMES]
    lines.append(", ".join("%d %s" % (n, o) for o, n in counts if n) or "no hosts")
    return lines
