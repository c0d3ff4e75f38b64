# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait until services answer on their health endpoints, and stop at once when one crashed.

A health wait that only polls an endpoint cannot tell "still starting" from "dead": an
engine that exited during start-up (vLLM's memory profiling, a model that does not fit)
would be polled until the timeout, minutes of downtime before anything is rolled back.
``wait_healthy`` also reads the state of each service's container and ends the wait as soon
as one has exited, with its exit code and last log lines.

Pure logic: the HTTP probe, the container reader, the clock and the sleep are passed in.
"""

from __future__ import annotations

import re

# `docker ps --format '{{.Status}}'` of an exited container: "Exited (1) 3 seconds ago"
_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")
# container states that mean the service's process is gone (or was, for "restarting")
CRASHED_STATES = ("exited", "dead", "restarting")
LOG_LINES = 5


def parse_ps(text):
    """{service: {'state', 'status', 'exit_code'}} of `docker ps -a --format` lines
    ``<service>\\t<state>\\t<status>\\t<id>`` (compose's service label, .State, .Status, .ID)."""
    found = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise ValueError("unexpected docker ps line: %r" % line)
        service, state, status, container = parts
        match = _EXITED_RE.match(status)
        found[service] = {"state": state, "status": status, "id": container,
                          "exit_code": int(match.group(1)) if match else None}
    return found


def _tail(text, lines=LOG_LINES):
    kept = [line.rstrip() for line in (text or "").splitlines() if line.strip()]
    return kept[-lines:]


def wait_healthy(services, probe, containers, logs, clock, sleep, timeout_s, interval_s):
    """Poll until every service answers 200, one's container is gone, or ``timeout_s``.

    ``services``: [{'name', 'url'}]. ``probe(url) -> (status code or None, detail)``.
    ``containers() -> {service: {'state', 'status', 'exit_code', 'id'}}`` or None when no
    container is watched. ``logs(container id) -> text``.

    Returns {'healthy', 'reason', 'waited_s', 'services': {name: {'healthy', 'seconds',
    'detail', 'state'}}, 'crashed': name or None}.
    """
    names = [service["name"] for service in services]
    if len(set(names)) != len(names):
        raise ValueError("services: each name once; got: %s" % ", ".join(names))
    start = clock()
    report = {name: {"healthy": False, "seconds": None, "detail": "not probed yet",
                     "state": None} for name in names}
    pending = list(services)
    while True:
        for service in list(pending):
            status, detail = probe(service["url"])
            entry = report[service["name"]]
            entry["detail"] = detail
            if status == 200:
                entry["healthy"] = True
                entry["seconds"] = round(clock() - start, 3)
                pending.remove(service)
        waited = round(clock() - start, 3)
        if not pending:
            return {"healthy": True, "reason": None, "waited_s": waited, "services": report,
                    "crashed": None}
        if containers is not None:
            states = containers()
            for service in pending:
                seen = states.get(service["name"])
                report[service["name"]]["state"] = seen["state"] if seen else "missing"
                if seen is None or seen["state"] in CRASHED_STATES:
                    return {"healthy": False, "waited_s": waited, "services": report,
                            "crashed": service["name"],
                            "reason": _crash_reason(service, seen, waited, logs)}
        if waited >= timeout_s:
            late = ", ".join("%s (%s: %s)" % (s["name"], s["url"], report[s["name"]]["detail"])
                             for s in pending)
            return {"healthy": False, "waited_s": waited, "services": report, "crashed": None,
                    "reason": "not healthy within %.0f s: %s" % (timeout_s, late)}
        sleep(min(interval_s, max(0.0, timeout_s - waited)))


def _crash_reason(service, seen, waited, logs):
    if seen is None:
        return ("%s: its container is gone (removed) after %.1f s, before %s answered"
                % (service["name"], waited, service["url"]))
    if seen["state"] == "restarting":
        what = "its container crashed and is being restarted by its restart policy"
    elif seen["exit_code"] is not None:
        what = "its container exited with code %d" % seen["exit_code"]
    else:
        what = "its container is %s" % seen["state"]
    tail = _tail(logs(seen["id"]))
    return "%s: %s after %.1f s, before %s answered; last log lines: %s" % (
        service["name"], what, waited, service["url"], " | ".join(tail) if tail else "(none)")
