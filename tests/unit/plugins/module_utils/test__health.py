# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health probes, verdicts and table."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _health, _render

OLLAMA = {"name": "ollama", "engine": "ollama", "port": 11434, "gpu": "0",
          "process_names": ["ollama"], "vram_budget_mib": 6000}
VLLM = {"name": "vllm", "engine": "vllm", "port": 8000, "request": True, "model": "m"}
GPUS = [{"index": 0, "uuid": "GPU-0", "processes": [
    {"pid": 9, "name": "ollama runner qwen2.5:7b", "used_memory_mib": 4683}]}]


def ok(json=None):
    return {"status": 200, "json": json}


def test_probes_per_engine():
    calls = _health.probes([OLLAMA, VLLM])
    assert [(c["service"], c["check"], c["url"]) for c in calls] == [
        ("ollama", "tags", "http://127.0.0.1:11434/api/tags"),
        ("ollama", "ps", "http://127.0.0.1:11434/api/ps"),
        ("vllm", "health", "http://127.0.0.1:8000/health"),
        ("vllm", "models", "http://127.0.0.1:8000/v1/models"),
        ("vllm", "request", "http://127.0.0.1:8000/v1/completions"),
    ]
    assert calls[-1]["body"] == {"model": "m", "prompt": "ping", "max_tokens": 1}


@pytest.mark.parametrize("answers, gpus, healthy, failing", [
    ([ok(), ok({"models": [{"name": "q", "size": 10, "size_vram": 10}]}), ok(),
      ok({"data": [{"id": "m"}]}), ok()], GPUS, True, []),
    ([ok(), ok({"models": [{"name": "q", "size": 10, "size_vram": 4}]}), ok(),
      ok({"data": [{"id": "m"}]}), ok()], GPUS, False, ["ps"]),
    ([ok(), ok({"models": []}), {"status": -1, "msg": "refused"},
      ok({"data": []}), {"status": 503}], GPUS, False, ["health", "models", "request"]),
    ([ok(), ok({"models": []}), ok(), ok({"data": [{"id": "m"}]}), ok()],
     [{"index": 0, "processes": []}], False, ["gpu"]),
])
def test_report(answers, gpus, healthy, failing):
    result = _health.report([OLLAMA, VLLM], answers, gpus)
    assert result["healthy"] is healthy
    bad = [c["check"] for r in result["services"] for c in r["checks"] if not c["ok"]]
    assert bad == failing
    table = _health.table(result, "lab-spark")
    assert table[0] == "lab-spark: %s" % ("HEALTHY" if healthy else "UNHEALTHY")
    assert table[1].startswith("SERVICE")


def test_vram_over_budget():
    svc = dict(OLLAMA, vram_budget_mib=4000)
    result = _health.report([svc], [ok(), ok({"models": []})], GPUS)
    assert result["services"][0]["checks"][-1] == {"check": "vram", "ok": False,
                                                   "detail": "4683 of 4000 MiB"}


@pytest.mark.parametrize("svc, message", [
    ("x", "services[0] must be a dict; got: 'x'"),
    (dict(OLLAMA, name=""), "services[0].name must be a non-empty string; got: ''"),
    (dict(OLLAMA, engine="tgi"),
     "services[0].engine must be one of docling, http, ollama, vllm; got: 'tgi'"),
    (dict(OLLAMA, port=0), "services[0].port must be 1-65535; got: 0"),
    (dict(OLLAMA, vram_budget_mib=-5), "services[0].vram_budget_mib must be > 0; got: -5"),
    (dict(VLLM, model=None), "services[0].model is required with request: true; got: None"),
])
def test_bad_service(svc, message):
    with pytest.raises(ValueError) as err:
        _health.probes([svc])
    assert str(err.value) == message


def test_answers_must_match_probes():
    with pytest.raises(ValueError, match="one entry per probe"):
        _health.report([OLLAMA], [ok()], GPUS)


def _plan():
    """services_plan of seed 000's stack in vllm mode on two GPUs, from the real catalog."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    with open(os.path.join(root, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    for entry in catalog.values():
        for volume in entry.get("volumes") or []:
            volume["source"] = "/srv/models"
    gpus = [{"index": i, "uuid": "GPU-%d" % i, "memory_total_mib": 24576, "healthy": True}
            for i in range(2)]
    placement = {"strategy": "vram_based", "assignments": [
        {"service": "ollama", "gpu": 0, "gpu_index": 0, "gpu_uuid": "GPU-0", "device_id": "GPU-0",
         "vram_budget_mib": 6000},
        {"service": "vision", "gpu": 0, "gpu_index": 0, "gpu_uuid": "GPU-0", "device_id": "GPU-0",
         "vram_budget_mib": 3000},
        {"service": "vllm", "gpu": 1, "gpu_index": 1, "gpu_uuid": "GPU-1", "device_id": "GPU-1",
         "vram_budget_mib": 10240}]}
    return _render.plan(catalog, placement, gpus, profile="dual-gpu", mode="vllm",
                        extra_profiles={"finetune": False})


def test_from_plan_compose_checks_every_active_service_on_its_published_port():
    services = {s["name"]: s for s in _health.from_plan(_plan())}
    assert sorted(services) == ["docling", "ollama", "vision", "vllm"]
    assert services["ollama"] == {"name": "ollama", "engine": "ollama", "port": 11434,
                                  "path": "/api/version", "gpu": "GPU-0",
                                  "process_names": ["ollama"], "vram_budget_mib": 6000}
    assert services["vision"]["engine"] == "http" and services["vision"]["path"] == "/health"
    assert services["vision"]["process_names"] == ["vision"]
    assert services["docling"]["gpu"] is None and "vram_budget_mib" not in services["docling"]
    calls = _health.probes(list(services.values()))
    assert ("vision", "http://127.0.0.1:8002/health") in [(c["service"], c["url"]) for c in calls]


def test_from_plan_systemd_checks_only_the_instances():
    assert [s["name"] for s in _health.from_plan(_plan(), "systemd")] == ["ollama", "vllm"]


@pytest.mark.parametrize("plan, runtime, message", [
    ({"services": "x"}, "compose", "services_plan must be the fact"),
    ({"services": []}, "podman", "runtime must be compose or systemd; got: 'podman'"),
])
def test_from_plan_bad_input(plan, runtime, message):
    with pytest.raises(ValueError, match=message):
        _health.from_plan(plan, runtime)


def test_ollama_without_a_gpu_may_run_its_models_on_the_cpu():
    svc = dict(OLLAMA, gpu=None)
    models = {"models": [{"name": "q", "size": 10, "size_vram": 0}]}
    result = _health.report([svc], [ok(), ok(models)], GPUS)
    assert result["healthy"], result
    assert result["services"][0]["checks"][1]["detail"] == "1 loaded (CPU)"
