# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what services about to stop hold on the GPUs.

Not a public API. A mode switch (or any run that removes GPU services) notes, before the stop,
the host pids of the leaving services, the GPUs that list them and what they hold; the drain
wait (_drain.py, gpu_drain_wait) then waits until that memory is back. Pure: the GPU facts,
the ``docker top`` pids and /proc/meminfo's text come in.

Engines that sleep instead of stopping (catalog key ``sleep``) keep their processes: a vLLM
asleep keeps its CUDA context and what it allocated outside its sleep pools (``kept``, less a
residual), an Ollama server whose models were unloaded loses its runner processes (they leave,
as a stopped service's do). ``sleep_actions`` works out, from the containers, which engines a
switch parks or wakes and whose restart policy it sets.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _common
from ansible_collections.gpufleet.inference.plugins.module_utils._common import is_int

STATES = ("asleep", "awake")
# Engines whose GPU processes stay while asleep (vLLM); Ollama's runners exit on an unload.
KEEPS_PROCESSES = ("vllm",)


def _pids(values, name):
    found = []
    for i, pid in enumerate(values or []):
        text = str(pid).strip()
        if not text:
            continue
        if isinstance(pid, bool) or not _common.ascii_digits(text):
            raise ValueError("%s[%d] must be a process id; got: %r" % (name, i, pid))
        found.append(int(text))
    return found


def drain_targets(gpus, pids, meminfo_text=None, kept=None, residual_mib=0):
    """What the drain wait after the stop waits for, from the GPUs read before the stop.

    ``gpus`` is gpu_facts' list, ``pids`` the host pids of the leaving services (numbers or
    their text, as ``docker top`` prints them; blank lines are skipped). ``kept`` are the pids
    of engines put to sleep: their processes stay, so the wait does not wait for them to leave,
    and each of them listed on a GPU is counted as freeing what it held less ``residual_mib``
    (the CUDA context and buffers a sleeping vLLM keeps; nothing when it held less). Returns
    ``{gpus, pids, target_used_mib, baseline_available_mib}``: the indexes (text) of the GPUs
    that list a leaving or kept process, the leaving pids as integers (without the kept ones),
    the used memory of those GPUs less what is freed (None when a GPU's used memory is unknown,
    as on unified memory), and, when one of those GPUs is unified, MemAvailable of
    ``meminfo_text`` plus what is freed (else None: on dedicated memory the drain wait does not
    read MemAvailable). No GPU lists them (nothing held): every GPU is watched until the
    processes are gone.
    """
    if not isinstance(gpus, list):
        raise ValueError("gpus must be the list of gpu_facts; got: %r" % (gpus,))
    if (not is_int(residual_mib) and not _common.ascii_digits(residual_mib)) or int(
            residual_mib) < 0:
        raise ValueError("residual_mib must be an integer >= 0 (MiB); got: %r" % (residual_mib,))
    staying = _pids(kept, "kept")
    leaving = [pid for pid in _pids(pids, "pids") if pid not in staying]
    watched = leaving + staying
    gpus = [g for g in gpus if isinstance(g, dict) and is_int(g.get("index"))]
    chosen = [g for g in gpus if any(p.get("pid") in watched for p in g.get("processes") or [])]
    if not chosen:
        return {"gpus": [str(g["index"]) for g in gpus], "pids": leaving,
                "target_used_mib": None, "baseline_available_mib": None}
    held = 0
    for proc in (p for g in chosen for p in g.get("processes") or []):
        used = proc.get("used_memory_mib")
        if not is_int(used):
            continue
        if proc.get("pid") in leaving:
            held += used
        elif proc.get("pid") in staying:
            held += max(0, used - int(residual_mib))
    used = [g.get("memory_used_mib") for g in chosen]
    target = (sum(used) - held) if all(is_int(u) for u in used) else None
    baseline = None
    if meminfo_text and any(g.get("memory_kind") == "unified" for g in chosen):
        baseline = _common.parse_meminfo(meminfo_text)["available_mib"] + held
    return {"gpus": [str(g["index"]) for g in chosen], "pids": leaving,
            "target_used_mib": target, "baseline_available_mib": baseline}


def sleep_actions(services, names, lines, state):
    """What a switch does to the engines among ``names`` that sleep instead of stopping.

    ``services`` is ``services_plan.services``; ``names`` the services to park (``state``
    asleep: the leaving ones) or to wake (awake: the entering ones); ``lines`` the output of
    the role's container listing: ``container <service> <id> <running> hash=<config hash>
    restart=<policy>`` for each container of the project (docker inspect), ``pid <service>
    <pid>`` for each host process of the running ones to park (docker top), and ``hash
    <service> <config hash>`` for the new files (``docker compose config --hash``) while
    waking: a container whose hash differs is recreated by ``up``, so it is not woken (woken,
    its memory would come back just to be freed under the new one's memory profiling). Only
    services with ``sleep`` true and a container count; the others stop and start as usual.

    Returns ``{names, sleep, policies, pids, kept, summary}``: the services handled; the engines
    to put to sleep or wake (running containers; each ``{name, engine, url, level, models}``,
    the URL of the first host port on 127.0.0.1, the level ``sleep_level``, the model an Ollama
    woken loads again); the restart policies to
    set (``{name, id, restart}``: ``no`` for a parked engine, so that a reboot does not bring
    it back awake, the catalog's ``restart`` when it enters again), where they differ; the
    pids whose processes leave the GPUs (Ollama's runners) and those that stay (vLLM) while
    parking; and a line saying what would be done (check mode).
    """
    if state not in STATES:
        raise ValueError("state must be asleep or awake; got: %r" % (state,))
    if not isinstance(services, list) or not all(isinstance(s, dict) for s in services):
        raise ValueError("services must be services_plan.services (a list of dicts); got: %r"
                         % (services,))
    containers, processes, hashes = {}, {}, {}
    for i, line in enumerate(lines or []):
        words = str(line).split()
        if not words:
            continue
        if (words[0] == "container" and len(words) == 6 and words[4].startswith("hash=")
                and words[5].startswith("restart=")):
            # a container without a restart policy prints an empty name: Docker's "no"
            containers.setdefault(words[1], []).append(
                {"id": words[2], "running": words[3] == "true", "hash": words[4][5:],
                 "restart": words[5][8:] or "no"})
        elif words[0] in ("pid", "hash") and len(words) == 3:
            (processes if words[0] == "pid" else hashes).setdefault(words[1], []).append(
                words[2])
        else:
            raise ValueError("lines[%d] must be 'container <service> <id> <running> hash=<hash> "
                             "restart=<policy>', 'pid <service> <pid>' or 'hash <service> "
                             "<hash>'; got: %r" % (i, line))
    result = {"names": [], "sleep": [], "policies": [], "pids": [], "kept": []}
    for i, item in enumerate(services):
        name = item.get("name")
        if name not in (names or []) or not item.get("sleep") or name not in containers:
            continue
        ports = item.get("ports") or []
        if not ports or not is_int(ports[0].get("host")):
            raise ValueError("services_plan.services[%d].ports must publish a host port for "
                             "%s to be put to sleep or woken; got: %r" % (i, name, ports))
        result["names"].append(name)
        restart = "no" if state == "asleep" else item.get("restart") or "unless-stopped"
        for container in containers[name]:
            if container["restart"] != restart:
                result["policies"].append(
                    {"name": name, "id": container["id"], "restart": restart})
            recreated = state == "awake" and name in hashes and hashes[name] != [
                container["hash"]]
            if container["running"] and not recreated:
                # an Ollama woken loads its model again (kept loaded) before the mode serves
                wake_models = [item["model"]] if state == "awake" and item.get(
                    "engine") == "ollama" and item.get("model") else []
                result["sleep"].append({
                    "name": name, "engine": item.get("engine"),
                    "url": "http://127.0.0.1:%d" % int(ports[0]["host"]),
                    "level": item.get("sleep_level") or 1, "models": wake_models})
        if state == "asleep" and any(c["running"] for c in containers[name]):
            key = "kept" if item.get("engine") in KEEPS_PROCESSES else "pids"
            result[key].extend(_pids(processes.get(name), "pids of %s" % name))
    verb = "put to sleep" if state == "asleep" else "wake"
    result["summary"] = "would %s: %s; would set the restart policy of: %s" % (
        verb, ", ".join(a["name"] for a in result["sleep"]) or "none",
        ", ".join("%s (%s)" % (u["name"], u["restart"]) for u in result["policies"]) or "none")
    return result


def _host_ports(service):
    return {str(port.get("host")) for port in service.get("ports") or []
            if isinstance(port, dict) and port.get("host") is not None}


def switch_order(services, existing):
    """The services a switch moves out of its downtime: ``{early, late}``.

    ``services`` is ``services_plan.services``, ``existing`` the names of the services that
    have a container (``docker ps --all``). Only a switch (an inactive service has a container)
    reorders anything. ``early``: the entering services that need no GPU (no container yet,
    ``uses_gpu`` false), started before the leaving services are parked or removed, so that
    their start overlaps the GPU drain instead of following it; one whose host port a leaving
    service publishes waits for it as before. ``late``: the leaving services that need no GPU
    and do not sleep, removed after the entering ones have started (they hold no GPU memory,
    so nothing waits for them); one whose host port an active service publishes goes first
    as before.
    """
    if not isinstance(services, list) or not all(isinstance(s, dict) for s in services):
        raise ValueError("services must be services_plan.services (a list of dicts); got: %r"
                         % (services,))
    if not isinstance(existing, list):
        raise ValueError("existing must be a list of service names; got: %r" % (existing,))
    have = {str(name) for name in existing}
    leaving = [s for s in services if not s.get("active") and s.get("name") in have]
    if not leaving:
        return {"early": [], "late": []}
    active = [s for s in services if s.get("active")]
    leaving_ports = set().union(*(_host_ports(s) for s in leaving))
    active_ports = set().union(*(_host_ports(s) for s in active))
    early = [s["name"] for s in active if not s.get("uses_gpu") and s.get("name") not in have
             and not _host_ports(s) & leaving_ports]
    late = [s["name"] for s in leaving if not s.get("uses_gpu") and not s.get("sleep")
            and not _host_ports(s) & active_ports]
    return {"early": early, "late": late}
