# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what became of an apply, as data.

Not a public API: the leading underscore says so. Pure functions, stdlib only. The compose and
systemd_units roles say why an apply failed with ``failure_summary`` (one line from the failed
task and its result, loops included) and record the outcome (``ok``, ``rolled_back``,
``failed``) as a fact that site.yml writes into the apply record: no caller has to recognise an
outcome by matching text in an error message.
"""

from __future__ import annotations

OUTCOMES = ("ok", "rolled_back", "failed")


def _label(item):
    """The name of a loop item: ``item.name``, else that of the item it wraps, else its text."""
    seen = item
    for _depth in range(4):
        if isinstance(seen, dict) and "name" in seen:
            return str(seen["name"])
        if isinstance(seen, dict) and "item" in seen:
            seen = seen["item"]
            continue
        break
    return str(item)


def failure_summary(result, task_name=None):
    """``<task>: <what failed>`` from a failed task's result (``ansible_failed_result``).

    A loop's failed items are listed as ``<item name>: <msg>`` joined by ``; ``; a plain task
    gives its ``msg``. Never raises on a result of an unexpected shape: it is the text of a
    failure report.
    """
    result = result if isinstance(result, dict) else {}
    lines = []
    for res in result.get("results") or []:
        if isinstance(res, dict) and res.get("failed"):
            lines.append("%s: %s" % (_label(res.get("item")), res.get("msg") or "failed"))
    if not lines:
        lines = [str(result.get("msg") or "failed")]
    return "%s: %s" % (task_name or "?", "; ".join(lines))


def record(outcome, runtime, services, previous=None):
    """The apply record ``{result, runtime, services}``, and whether it differs from ``previous``.

    ``previous`` is the record on the host (its ``finished_at`` is not compared), so a converged
    re-run writes nothing. Returns ``(record, changed)``.
    """
    if outcome not in OUTCOMES:
        raise ValueError("outcome must be one of %s; got: %r" % (", ".join(OUTCOMES), outcome))
    if not isinstance(services, list):
        raise ValueError("services must be a list of service names; got: %r" % (services,))
    new = {"result": outcome, "runtime": runtime, "services": sorted(str(s) for s in services)}
    old = dict(previous) if isinstance(previous, dict) else {}
    old.pop("finished_at", None)
    return new, old != new
