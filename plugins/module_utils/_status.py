# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the one-line status of a host's mode.

Not a public API: the leading underscore says so. Pure logic for ``playbooks/status.yml``: the
host's mode (the services role's plan of its recorded mode), each active service healthy or not
(a gpufleet.inference.service_verify run in report mode) and its GPU, and the catalog services
that are not in the mode but still run (a conflict: two exclusive modes must never share the
GPU memory, and a leftover of another mode holds ports and memory the mode's own services need).

Vocabulary
  plan      the ``services_plan`` fact: ``mode`` ({name, exclusive, description}), ``profile``
            and ``services`` (every enabled catalog entry, ``active`` when it runs in the mode).
  verified  the ``services`` of service_verify (report mode) over the plan's active services
            that publish a health port (``health_services`` then ``health_verify_checks``).
  running   what runs on the host: with runtime compose the compose service label of each
            running container of the project (``docker ps --format``), one per line; with
            systemd the unit names of ``systemctl list-units`` (``ollama@<service>.service``);
            with podman those of the services Quadlet generates (``gpufleet-<service>.service``;
            ``gpufleet-network.service``, the network's, is not a service of the catalog).
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _quadlet

RUNTIMES = ("compose", "systemd", "podman")


def running_services(lines, runtime="compose"):
    """The service names the lines of ``docker ps`` or ``systemctl list-units`` name, sorted."""
    if runtime not in RUNTIMES:
        raise ValueError("runtime must be one of %s; got: %r" % (", ".join(RUNTIMES), runtime))
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ValueError("running must be the output lines of docker ps or systemctl (a list of "
                         "strings); got: %r" % (lines,))
    names = set()
    for line in lines:
        words = line.split()
        if not words:
            continue
        name = words[0]
        unit = name[:-len(".service")] if name.endswith(".service") else name
        if runtime == "systemd":
            if "@" not in unit:
                continue
            name = unit.split("@", 1)[1]
        elif runtime == "podman":
            if not unit.startswith(_quadlet.PREFIX) or unit == _quadlet.NETWORK_UNIT:
                continue
            name = unit[len(_quadlet.PREFIX):]
        names.add(name)
    return sorted(names)


def _gpu(service):
    where = service.get("placement") or {}
    indexes = where.get("gpu_indexes") or (
        [] if where.get("gpu_index") is None else [where["gpu_index"]])
    if not indexes:
        return None
    return "GPU%s %s" % ("s" if len(indexes) > 1 else "", ",".join(str(i) for i in indexes))


def _strip(text, prefix):
    return text[len(prefix):] if text.startswith(prefix) else text


def _verdict(name, seen):
    if seen is None:
        return None, "not checked (no published health port)"
    # service_verify's problems start with the service's name, which the line says already.
    problems = [_strip(str(p), name + ": ") for p in seen.get("problems") or []]
    if seen.get("healthy") is not False and not problems:
        return True, "healthy"
    return False, "UNHEALTHY (%s)" % (problems[0] if problems else "did not answer 200")


def status(plan, verified, running, host="", runtime="compose"):
    """The host's status: ``{host, mode, exclusive, profile, services, running, conflicts,
    conflict, line, warning}``.

    ``services``: one per active service of the plan, in catalog order, ``{name, gpu,
    healthy, detail}`` (``healthy`` None when service_verify did not check it). ``conflicts``:
    the plan's services that are not active in its mode but whose container or unit runs,
    but for those with ``sleep: true``, which a switch parks asleep (``parked``).
    ``line`` says it all in one line; ``warning`` (a conflict only) says what to do.
    """
    _plan.check_plan(plan)
    mode = plan.get("mode") or {}
    if not isinstance(mode, dict) or not mode.get("name"):
        raise ValueError("services_plan.mode must be a dict with a name (the plan of a "
                         "services role that knows the modes); got: %r" % (plan.get("mode"),))
    if not isinstance(verified, list) or not all(isinstance(v, dict) for v in verified):
        raise ValueError("verified must be the services of a gpufleet.inference.service_verify "
                         "result (a list of dicts); got: %r" % (verified,))
    seen = {v.get("name"): v for v in verified}
    names = running_services(running, runtime)
    services, inactive, sleepers = [], [], set()
    for service in plan["services"]:
        if not service.get("active"):
            inactive.append(service["name"])
            if service.get("sleep"):
                sleepers.add(service["name"])
            continue
        healthy, detail = _verdict(service["name"], seen.get(service["name"]))
        services.append({"name": service["name"], "gpu": _gpu(service), "healthy": healthy,
                         "detail": detail})
    conflicts = [name for name in inactive if name in names and name not in sleepers]
    parked = [name for name in inactive if name in names and name in sleepers]
    word = "mode %s%s" % (mode["name"], " (exclusive)" if mode.get("exclusive") else "")
    if plan.get("profile"):
        word += ", profile %s" % plan["profile"]
    parts = ["%s%s %s" % (s["name"], " on %s" % s["gpu"] if s["gpu"] else "", s["detail"])
             for s in services]
    line = "%s: %s: %s" % (host or "host", word, "; ".join(parts) or "no service runs")
    result = {"host": host, "mode": mode["name"], "exclusive": bool(mode.get("exclusive")),
              "profile": plan.get("profile"), "services": services, "running": names,
              "conflicts": conflicts, "conflict": bool(conflicts), "parked": parked,
              "line": line}
    if parked:
        result["line"] += "; parked asleep (sleep: true): %s" % ", ".join(parked)
    if conflicts:
        result["line"] += "; CONFLICT, not in mode %s but running: %s" % (
            mode["name"], ", ".join(conflicts))
        result["warning"] = (
            "WARNING: %s runs %s, which mode %s does not run%s. Converge the mode with "
            "playbooks/site.yml -e inference_mode=%s (or switch to another one)."
            % (host or "the host", ", ".join(conflicts), mode["name"],
               " (an exclusive mode: they share the GPU memory its services need; a vLLM that "
               "starts or restarts now can fail its memory profiling)"
               if mode.get("exclusive") else "", mode["name"]))
    return result
