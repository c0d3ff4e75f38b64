# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: health probes, verdicts and the health table.

Not a public API: the leading underscore says so. Pure logic: which endpoints to probe for
each engine, which service_verify checks stand for each service, and what the probe answers
plus service_verify's report say about each service.

Vocabulary
  service   one entry the health role checks: ``name``, ``engine`` (ollama, vllm, docling,
            http), ``port``, optional ``address``, ``path`` (an http service's health path),
            ``gpu`` (the device id of its placement: a GPU UUID, a MIG UUID or an index; null
            on the CPU), ``vram_budget_mib``, ``request`` and ``model``; and who runs it, as
            service_verify names it: ``project`` and ``service`` (runtime compose; defaults:
            the role's compose project, the name), ``unit`` and ``cuda_visible_devices``
            (runtime systemd; defaults: ``<engine>@<name>.service``, the ``gpu`` or ``-1``)
            or ``unit`` and ``container`` (runtime podman; defaults:
            ``gpufleet-<name>.service``, ``gpufleet-<name>``).
  verified  the ``services`` of a service_verify run in report mode (``fail_on_problem:
            false``) over :func:`verify_checks`: per service ``healthy``, ``device_ok``,
            ``gpu_processes`` (ITS processes on its GPU, found by cgroup, never by name),
            ``gpu_used``, ``model_in_vram`` and ``problems``.

The first endpoint of each engine (Ollama ``/api/tags``, vLLM ``/health``, Docling
``/health``, an http service's path) is service_verify's health url, so it is asked once;
:func:`probes` lists only the others. ``process_names`` (earlier versions: substrings of the
process names on the GPU) is no longer read: vLLM shows as ``python3`` or ``VLLM::EngineCor``
and a second instance of an engine has the same names.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _common,
    _fileset,
    _plan,
    _quadlet,
)

# The engines' own endpoints (domain notes): Ollama /api/tags and /api/ps, vLLM /health and
# /v1/models; the tiny real request is made only where a service asks for it. The first of
# each is the health url service_verify waits for.
ENDPOINTS = {
    "ollama": (("tags", "GET", "/api/tags"), ("ps", "GET", "/api/ps")),
    "vllm": (("health", "GET", "/health"), ("models", "GET", "/v1/models")),
    "docling": (("health", "GET", "/health"),),
    # Any other service: the health path its catalog entry names (services[].path).
    "http": (("health", "GET", None),),
}
REQUESTS = {
    "ollama": ("/api/generate", lambda m: {"model": m, "prompt": "ping", "stream": False,
                                           "options": {"num_predict": 1}}),
    "vllm": ("/v1/completions", lambda m: {"model": m, "prompt": "ping", "max_tokens": 1}),
}
# service_verify's engines: only Ollama is told apart (its GPU is held while a model is loaded).
VERIFY_ENGINES = {"ollama": "ollama", "vllm": "vllm", "docling": "other", "http": "other"}
RUNTIMES = ("compose", "systemd", "podman")
DEFAULT_PROJECT = "gpufleet"


def _check_service(i, svc):
    if not isinstance(svc, dict):
        raise ValueError("services[%d] must be a dict; got: %r" % (i, svc))
    name = svc.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("services[%d].name must be a non-empty string; got: %r" % (i, name))
    if svc.get("engine") not in ENDPOINTS:
        raise ValueError("services[%d].engine must be one of %s; got: %r"
                         % (i, ", ".join(sorted(ENDPOINTS)), svc.get("engine")))
    port = svc.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError("services[%d].port must be 1-65535; got: %r" % (i, port))
    budget = svc.get("vram_budget_mib")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget <= 0):
        raise ValueError("services[%d].vram_budget_mib must be > 0; got: %r" % (i, budget))
    path = svc.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ValueError("services[%d].path must start with '/'; got: %r" % (i, path))
    if svc.get("request") and svc.get("engine") in REQUESTS and not svc.get("model"):
        raise ValueError("services[%d].model is required with request: true; got: %r"
                         % (i, svc.get("model")))


def _base(svc, host):
    return "http://%s:%d" % (svc.get("address") or host, svc["port"])


def _health_url(svc, host):
    return _base(svc, host) + (ENDPOINTS[svc["engine"]][0][2] or svc.get("path") or "/health")


def probes(services, host="127.0.0.1"):
    """The HTTP calls to make besides the health url service_verify asks:
    [{service, check, method, url, body}]."""
    out = []
    for i, svc in enumerate(services):
        _check_service(i, svc)
        base = _base(svc, host)
        for check, method, endpoint in ENDPOINTS[svc["engine"]][1:]:
            out.append(dict(service=svc["name"], check=check, method=method,
                            url=base + endpoint, body=None))
        if svc.get("request") and svc["engine"] in REQUESTS:
            path, body = REQUESTS[svc["engine"]]
            out.append(dict(service=svc["name"], check="request", method="POST",
                            url=base + path, body=body(svc["model"])))
    return out


def _runtime(runtime):
    if runtime not in RUNTIMES:
        raise ValueError("runtime must be one of %s; got: %r" % (", ".join(RUNTIMES), runtime))
    return runtime


def _gpu(i, svc):
    gpu = svc.get("gpu")
    if gpu is None or gpu == "":
        return None
    if isinstance(gpu, bool) or not isinstance(gpu, (str, int)):
        raise ValueError("services[%d].gpu must be a GPU UUID, MIG UUID or index (or null); "
                         "got: %r" % (i, gpu))
    return str(gpu)


def verify_checks(services, runtime="compose", project=DEFAULT_PROJECT, host="127.0.0.1"):
    """service_verify's checks of the services, in order: the health url (the engine's first
    endpoint), the GPU of the placement (``device_id``; ``gpu_index`` when given as an
    index), and who runs the service (module docstring: project and service, or unit and
    cuda_visible_devices), so that its GPU processes are found by cgroup."""
    _runtime(runtime)
    checks = []
    for i, svc in enumerate(services):
        _check_service(i, svc)
        gpu = _gpu(i, svc)
        check = {"name": svc["name"], "url": _health_url(svc, host),
                 "engine": VERIFY_ENGINES[svc["engine"]], "device_id": gpu,
                 "gpu_index": int(gpu) if _common.ascii_digits(gpu) else None}
        if runtime == "compose":
            check["project"] = svc.get("project") or project
            check["service"] = svc.get("service") or svc["name"]
        elif runtime == "podman":
            check["unit"] = svc.get("unit") or _quadlet.unit_name(svc["name"])
            check["container"] = svc.get("container") or _quadlet.container_name(svc["name"])
        else:
            check["unit"] = svc.get("unit") or "%s@%s.service" % (svc["engine"], svc["name"])
            cvd = svc.get("cuda_visible_devices")
            check["cuda_visible_devices"] = cvd if cvd is not None else (gpu or "-1")
        checks.append(check)
    return checks


def from_plan(services_plan, runtime="compose", project=DEFAULT_PROJECT):
    """The services to check, from the ``services_plan`` fact of the services role.

    Every active service that publishes its health port: its published port, the GPU its
    placement gave it (its ``device_id``), the VRAM budget, and who runs it as the compose
    and systemd_units roles verify it (``_fileset.verify_checks``): compose project
    ``project`` and the service's name, the systemd unit and its CUDA_VISIBLE_DEVICES, or
    Podman's generated unit and its container. Under ``runtime`` systemd only the Ollama and
    vLLM instances run (sidecars are containers of the compose path), so only they are
    checked.
    """
    _runtime(runtime)
    _plan.check_plan(services_plan)
    owners = {c["name"]: c for c in _fileset.verify_checks(services_plan, runtime,
                                                           project_name=project)}
    out = []
    for service in services_plan["services"]:
        if not service.get("active") or service.get("name") not in owners:
            continue
        engine = service.get("engine")
        health = service.get("health") or {}
        ports = service.get("ports") or []
        wanted = health.get("port")
        published = [p["host"] for p in ports if wanted is None or p["container"] == wanted]
        if not published:
            continue
        where = service.get("placement") or {}
        owner = owners[service["name"]]
        gpu = owner.get("device_id") or where.get("gpu_uuid") or where.get("gpu_index")
        item = {
            "name": service["name"],
            "engine": engine if engine in ("ollama", "vllm") else "http",
            "port": published[0],
            "path": health.get("path") or "/health",
            "gpu": None if gpu is None else str(gpu),
        }
        if runtime == "compose":
            item.update(project=owner["project"], service=owner["service"])
        elif runtime == "podman":
            item.update(unit=owner["unit"], container=owner["container"])
        else:
            item.update(unit=owner["unit"], cuda_visible_devices=owner["cuda_visible_devices"])
        if where.get("vram_budget_mib"):
            # The budget is per GPU; what is held is summed over every GPU the service spans.
            item["vram_budget_mib"] = int(where["vram_budget_mib"]) * int(
                where.get("gpu_count") or 1)
        out.append(item)
    return out


def _detail(check, answer, on_gpu=True):
    status = answer.get("status")
    if status != 200:
        return False, ("HTTP %s %s" % (status, (answer.get("msg") or "")[:80])).strip()
    body = answer.get("json")
    if check == "ps":
        models = (body or {}).get("models") or []
        partial = [m["name"] for m in models if m.get("size_vram", 0) < m.get("size", 0)]
        if not on_gpu:  # no GPU placed: the models run on the CPU, as they should
            return True, "%d loaded (CPU)" % len(models)
        if partial:
            return False, "partly on CPU: %s" % ", ".join(partial)
        return True, "%d loaded" % len(models)
    if check == "models":
        served = [m.get("id") for m in (body or {}).get("data") or []]
        return bool(served), ", ".join(served) or "no model served"
    return True, "200"


def _verified_by_name(services, verified):
    if not isinstance(verified, list) or not all(isinstance(v, dict) for v in verified):
        raise ValueError("verified must be the services of a gpufleet.inference.service_verify "
                         "result (a list of dicts); got: %r" % (verified,))
    by_name = {v.get("name"): v for v in verified}
    missing = [svc["name"] for svc in services if svc["name"] not in by_name]
    if missing:
        raise ValueError("verified must have an entry per service; missing: %s"
                         % ", ".join(missing))
    return by_name


def _gpu_check(svc, seen, rest):
    """The ``gpu`` check of a service with a GPU, from what service_verify saw of it."""
    gpu, processes = svc["gpu"], seen.get("gpu_processes") or []
    if rest:
        return dict(check="gpu", ok=False, detail="; ".join(rest))
    if seen.get("device_ok") is None:  # down: its container or unit was not there to place
        return dict(check="gpu", ok=False, detail="not checked (the service is down)")
    if seen.get("gpu_used"):
        return dict(check="gpu", ok=True,
                    detail="%d process(es) on GPU %s" % (len(processes), gpu))
    if seen.get("gpu_used") is None and svc["engine"] == "ollama":
        # Ollama's runner holds the GPU only while a model is loaded; /api/ps listed none.
        return dict(check="gpu", ok=True, detail="no model loaded on GPU %s" % gpu)
    return dict(check="gpu", ok=False, detail="no process of it on GPU %s" % gpu)


def report(services, answers, verified):
    """Verdict per service from the probe answers and service_verify's report.

    ``answers``: one per probe, in :func:`probes` order, each the probe plus ``status``
    (HTTP status, -1 when unreachable), optional ``json`` and ``msg``. ``verified``: the
    ``services`` of service_verify (report mode) over :func:`verify_checks`, one per service
    by name. Whether a service's process is on its GPU and the VRAM it holds come from its
    ``gpu_processes`` (found by cgroup), never from process names.
    """
    calls = probes(services)
    if not isinstance(answers, list) or len(answers) != len(calls):
        raise ValueError("answers must have one entry per probe (%d); got: %s"
                         % (len(calls), len(answers) if isinstance(answers, list)
                            else repr(answers)))
    by_name = _verified_by_name(services, verified)
    results = []
    for svc in services:
        seen = by_name[svc["name"]]
        problems = list(seen.get("problems") or [])
        on_gpu = svc.get("gpu") is not None
        first = ENDPOINTS[svc["engine"]][0][0]
        if seen.get("healthy") is True:
            checks = [dict(check=first, ok=True, detail="200")]
        else:
            said = problems.pop(0) if problems else "did not answer 200"
            checks = [dict(check=first, ok=False, detail=said)]
        for call, answer in zip(calls, answers):
            if call["service"] == svc["name"]:
                ok, detail = _detail(call["check"], answer, on_gpu)
                checks.append(dict(check=call["check"], ok=ok, detail=detail))
        held = None
        if on_gpu:
            held = sum(p.get("used_memory_mib") or 0 for p in seen.get("gpu_processes") or [])
            checks.append(_gpu_check(svc, seen, problems))
            budget = svc.get("vram_budget_mib")
            if budget is not None:
                checks.append(dict(check="vram", ok=held <= budget,
                                   detail="%d of %d MiB" % (held, budget)))
        elif problems:  # a GPU where none was placed, a crash after it answered
            checks.append(dict(check="gpu", ok=False, detail="; ".join(problems)))
        results.append(dict(service=svc["name"], engine=svc["engine"], vram_mib=held,
                            vram_budget_mib=svc.get("vram_budget_mib"),
                            healthy=all(c["ok"] for c in checks), checks=checks))
    return dict(healthy=all(r["healthy"] for r in results), services=results,
                unhealthy=[r["service"] for r in results if not r["healthy"]])


def table(result, host=""):
    """A fixed-width text table of :func:`report`'s result, one line per service."""
    rows = [("SERVICE", "ENGINE", "STATE", "VRAM MiB", "CHECKS")]
    for r in result["services"]:
        vram = "-" if r["vram_mib"] is None else str(r["vram_mib"])
        if r["vram_budget_mib"] is not None:
            vram += "/%d" % r["vram_budget_mib"]
        checks = "; ".join("%s %s: %s" % ("ok" if c["ok"] else "FAIL", c["check"], c["detail"])
                           for c in r["checks"])
        rows.append((r["service"], r["engine"], "healthy" if r["healthy"] else "UNHEALTHY",
                     vram, checks))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["%s  %s" % ("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)), row[4])
             for row in rows]
    head = "%s: %s" % (host or "host", "HEALTHY" if result["healthy"] else "UNHEALTHY")
    return [head] + [line.rstrip() for line in lines]
