# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: health probes, verdicts and the health table.

Not a public API: the leading underscore says so. Pure logic: which endpoints to probe for
each engine, and what the probe answers plus the GPU facts say about each service.
"""

from __future__ import annotations

# The engines' own endpoints (domain notes): Ollama /api/tags and /api/ps, vLLM /health and
# /v1/models; the tiny real request is made only where a service asks for it.
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


def probes(services, host="127.0.0.1"):
    """The HTTP calls to make: [{service, check, method, url, body}]."""
    out = []
    for i, svc in enumerate(services):
        _check_service(i, svc)
        base = "http://%s:%d" % (svc.get("address") or host, svc["port"])
        for check, method, endpoint in ENDPOINTS[svc["engine"]]:
            path = endpoint or svc.get("path") or "/health"
            out.append(dict(service=svc["name"], check=check, method=method, url=base + path,
                            body=None))
        if svc.get("request") and svc["engine"] in REQUESTS:
            path, body = REQUESTS[svc["engine"]]
            out.append(dict(service=svc["name"], check="request", method="POST",
                            url=base + path, body=body(svc["model"])))
    return out


def from_plan(services_plan, runtime="compose"):
    """The services to check, from the ``services_plan`` fact of the services role.

    Every active service that publishes its health port: its published port, the GPU its
    placement gave it (UUID), the VRAM budget, and the names its processes carry on the GPU.
    Under ``runtime`` systemd only the Ollama and vLLM instances run (sidecars are containers
    of the compose path), so only they are checked.
    """
    if runtime not in ("compose", "systemd"):
        raise ValueError("runtime must be compose or systemd; got: %r" % (runtime,))
    if not isinstance(services_plan, dict) or not isinstance(services_plan.get("services"), list):
        raise ValueError("services_plan must be the fact set by the gpufleet.inference.services "
                         "role; got: %r" % (services_plan,))
    out = []
    for service in services_plan["services"]:
        if not service.get("active"):
            continue
        engine = service.get("engine")
        if runtime == "systemd" and engine not in ("ollama", "vllm"):
            continue
        health = service.get("health") or {}
        ports = service.get("ports") or []
        wanted = health.get("port")
        published = [p["host"] for p in ports if wanted is None or p["container"] == wanted]
        if not published:
            continue
        where = service.get("placement") or {}
        gpu = where.get("gpu_uuid") or where.get("gpu_index")
        item = {
            "name": service["name"],
            "engine": engine if engine in ("ollama", "vllm") else "http",
            "port": published[0],
            "path": health.get("path") or "/health",
            "gpu": None if gpu is None else str(gpu),
            "process_names": [engine if engine in ("ollama", "vllm") else service["name"]],
        }
        if where.get("vram_budget_mib"):
            item["vram_budget_mib"] = int(where["vram_budget_mib"])
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


def report(services, answers, gpus):
    """Verdict per service from the probe answers and the GPU facts.

    ``answers``: one per probe, in :func:`probes` order, each the probe plus ``status``
    (HTTP status, -1 when unreachable), optional ``json`` and ``msg``.
    """
    calls = probes(services)
    if len(answers) != len(calls):
        raise ValueError("answers must have one entry per probe (%d); got: %d"
                         % (len(calls), len(answers)))
    by_gpu = {}
    for gpu in gpus or []:
        by_gpu[str(gpu.get("index"))] = gpu
        by_gpu[str(gpu.get("uuid"))] = gpu
    results = []
    for svc in services:
        checks = []
        for call, answer in zip(calls, answers):
            if call["service"] == svc["name"]:
                ok, detail = _detail(call["check"], answer, svc.get("gpu") is not None)
                checks.append(dict(check=call["check"], ok=ok, detail=detail))
        held = None
        if svc.get("gpu") is not None:
            gpu = by_gpu.get(str(svc["gpu"]))
            names = svc.get("process_names") or [svc["engine"]]
            procs = [p for p in (gpu or {}).get("processes") or []
                     if any(n in (p.get("name") or "") for n in names)]
            held = sum(p.get("used_memory_mib") or 0 for p in procs)
            checks.append(dict(check="gpu", ok=gpu is not None and bool(procs),
                               detail=("GPU %s missing" % svc["gpu"]) if gpu is None
                               else "%d process(es) on GPU %s" % (len(procs), svc["gpu"])))
            budget = svc.get("vram_budget_mib")
            if budget is not None:
                checks.append(dict(check="vram", ok=held <= budget,
                                   detail="%d of %d MiB" % (held, budget)))
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
