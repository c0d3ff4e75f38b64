# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health probes, service_verify checks, verdicts and table."""

from __future__ import annotations

import os
import pathlib

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _health
from ansible_collections.gpufleet.inference.plugins.module_utils import _plan as plan_utils
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from ansible_collections.gpufleet.inference.plugins.module_utils._plan import plan as services_plan
from tests.support.plans import REPO, TWO_GPUS, default_catalog, gpu, make_plan

GPU1 = "GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10"
OLLAMA = {"name": "ollama", "engine": "ollama", "port": 11434, "gpu": "0",
          "vram_budget_mib": 6000}
VLLM = {"name": "vllm", "engine": "vllm", "port": 8000, "gpu": GPU1, "request": True,
        "model": "m"}
DOCLING = {"name": "docling", "engine": "docling", "port": 5001}


def ok(json=None):
    return {"status": 200, "json": json}


def seen(name, healthy=True, device_ok=True, processes=(), gpu_used=None, problems=(),
         model_in_vram=None):
    """One entry of service_verify's services (report mode)."""
    procs = [{"pid": pid, "name": comm, "used_memory_mib": mib} for pid, comm, mib in processes]
    if gpu_used is None and procs:
        gpu_used = any(p["used_memory_mib"] for p in procs)
    return {"name": name, "healthy": healthy, "waited_s": 0.0 if healthy else None,
            "device_ok": device_ok, "gpu_processes": procs, "gpu_used": gpu_used,
            "model_in_vram": model_in_vram, "problems": list(problems)}


# ---- probes and checks --------------------------------------------------------------------

def test_probes_are_the_endpoints_beyond_the_health_url():
    calls = _health.probes([OLLAMA, VLLM, DOCLING, {"name": "web", "engine": "http",
                                                    "port": 80, "path": "/ok"}])
    assert [(c["service"], c["check"], c["method"], c["url"]) for c in calls] == [
        ("ollama", "ps", "GET", "http://127.0.0.1:11434/api/ps"),
        ("vllm", "models", "GET", "http://127.0.0.1:8000/v1/models"),
        ("vllm", "request", "POST", "http://127.0.0.1:8000/v1/completions"),
    ]
    assert calls[-1]["body"] == {"model": "m", "prompt": "ping", "max_tokens": 1}


WEB = {"name": "web", "engine": "http", "port": 80, "path": "/ok", "gpu": 1,
       "address": "10.0.0.5"}


@pytest.mark.parametrize("services, runtime, project, expected", [
    pytest.param([OLLAMA, VLLM, DOCLING, WEB], "compose", "gpufleet", [
        {"name": "ollama", "url": "http://127.0.0.1:11434/api/tags", "engine": "ollama",
         "device_id": "0", "gpu_index": 0, "project": "gpufleet", "service": "ollama"},
        {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
         "device_id": GPU1, "gpu_index": None, "project": "gpufleet", "service": "vllm"},
        {"name": "docling", "url": "http://127.0.0.1:5001/health", "engine": "other",
         "device_id": None, "gpu_index": None, "project": "gpufleet", "service": "docling"},
        {"name": "web", "url": "http://10.0.0.5:80/ok", "engine": "other", "device_id": "1",
         "gpu_index": 1, "project": "gpufleet", "service": "web"}], id="compose-defaults"),
    pytest.param([dict(VLLM, project="gpufleet-modes", service="vllm-a")], "compose", "gpufleet",
                 [{"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
                   "device_id": GPU1, "gpu_index": None, "project": "gpufleet-modes",
                   "service": "vllm-a"}], id="compose-as-given"),
    pytest.param([OLLAMA, dict(VLLM, unit="vllm@big.service", cuda_visible_devices="0,1"),
                  DOCLING], "systemd", "ignored", [
        {"name": "ollama", "url": "http://127.0.0.1:11434/api/tags", "engine": "ollama",
         "device_id": "0", "gpu_index": 0, "unit": "ollama@ollama.service",
         "cuda_visible_devices": "0"},
        {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
         "device_id": GPU1, "gpu_index": None, "unit": "vllm@big.service",
         "cuda_visible_devices": "0,1"},
        {"name": "docling", "url": "http://127.0.0.1:5001/health", "engine": "other",
         "device_id": None, "gpu_index": None, "unit": "docling@docling.service",
         "cuda_visible_devices": "-1"}], id="systemd"),
    pytest.param([OLLAMA, dict(VLLM, unit="other.service", container="other")], "podman",
                 "ignored", [
        {"name": "ollama", "url": "http://127.0.0.1:11434/api/tags", "engine": "ollama",
         "device_id": "0", "gpu_index": 0, "unit": "gpufleet-ollama.service",
         "container": "gpufleet-ollama"},
        {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
         "device_id": GPU1, "gpu_index": None, "unit": "other.service",
         "container": "other"}], id="podman"),
])
def test_verify_checks(services, runtime, project, expected):
    assert _health.verify_checks(services, runtime, project) == expected


@pytest.mark.parametrize("services, runtime, message", [
    ([OLLAMA], "k8s", "runtime must be one of compose, systemd, podman; got: 'k8s'"),
    ([dict(OLLAMA, gpu=True)], "compose",
     "services[0].gpu must be a GPU UUID, MIG UUID or index (or null); got: True"),
    ([dict(OLLAMA, port=0)], "compose", "services[0].port must be 1-65535; got: 0"),
])
def test_verify_checks_bad_input(services, runtime, message):
    with pytest.raises(ValueError) as err:
        _health.verify_checks(services, runtime)
    assert str(err.value) == message


# ---- the verdict ----------------------------------------------------------------------------

OTHER_GPU_PROCESS = ("GPU detected is not GPU used: no process of vllm (container 0123456789ab) "
                     "holds memory on GPU %s; processes there: pid 700 VLLM::EngineCor 20000 "
                     "MiB (container fedcba987654)" % GPU1)
CRASH = ("vllm: its container exited with code 1 after 0.0 s, before "
         "http://127.0.0.1:8000/health answered; last log lines: RuntimeError: CUDA OOM")
LATE = "vllm: not healthy within 2 s (http://127.0.0.1:8000/health: HTTP 503)"
PLACED_ELSEWHERE = ("vllm: container gpufleet-vllm-1 (running: True) has device requests "
                    "[{'DeviceIDs': ['GPU-0']}]; the placement says %s" % GPU1)
GPU_GIVEN = ("docling: container gpufleet-docling-1 (running: True) has device requests "
             "[{'DeviceIDs': ['GPU-0']}]; the placement says no GPU")
VLLM_UP = [ok({"data": [{"id": "m"}]}), ok()]
MODELS = {"models": [{"name": "q", "size": 10, "size_vram": 10}]}


@pytest.mark.parametrize("services, answers, verified, expected", [
    pytest.param([VLLM], VLLM_UP, [seen("vllm", processes=[(801, "VLLM::EngineCor", 18000)])],
                 {"vllm": (True, 18000, [("health", True, "200"), ("models", True, "m"),
                                         ("request", True, "200"),
                                         ("gpu", True, "1 process(es) on GPU %s" % GPU1)])},
                 id="vllm-engine-core-owned-by-the-service-counts"),
    pytest.param([VLLM], VLLM_UP, [seen("vllm", gpu_used=False, problems=[OTHER_GPU_PROCESS])],
                 {"vllm": (False, 0, [("health", True, "200"), ("models", True, "m"),
                                      ("request", True, "200"),
                                      ("gpu", False, OTHER_GPU_PROCESS)])},
                 id="another-containers-process-on-the-gpu-does-not-count"),
    pytest.param([OLLAMA], [ok({"models": []})], [seen("ollama")],
                 {"ollama": (True, 0, [("tags", True, "200"), ("ps", True, "0 loaded"),
                                       ("gpu", True, "no model loaded on GPU 0"),
                                       ("vram", True, "0 of 6000 MiB")])},
                 id="ollama-with-no-model-loaded"),
    pytest.param([OLLAMA], [ok(MODELS)],
                 [seen("ollama", processes=[(5151, "ollama", 4683)], model_in_vram=True)],
                 {"ollama": (True, 4683, [("tags", True, "200"), ("ps", True, "1 loaded"),
                                          ("gpu", True, "1 process(es) on GPU 0"),
                                          ("vram", True, "4683 of 6000 MiB")])},
                 id="ollama-runner-holds-its-model"),
    pytest.param([dict(OLLAMA, vram_budget_mib=4000)], [ok(MODELS)],
                 [seen("ollama", processes=[(5151, "ollama", 3000), (5152, "ollama", 1683)])],
                 {"ollama": (False, 4683, [("tags", True, "200"), ("ps", True, "1 loaded"),
                                           ("gpu", True, "2 process(es) on GPU 0"),
                                           ("vram", False, "4683 of 4000 MiB")])},
                 id="over-its-budget"),
    pytest.param([DOCLING], [], [seen("docling", device_ok=True)],
                 {"docling": (True, None, [("health", True, "200")])}, id="cpu-service"),
    pytest.param([DOCLING], [], [seen("docling", device_ok=False, problems=[GPU_GIVEN])],
                 {"docling": (False, None, [("health", True, "200"),
                                            ("gpu", False, GPU_GIVEN)])},
                 id="cpu-service-given-a-gpu"),
    pytest.param([dict(OLLAMA, gpu=None)], [ok({"models": [{"name": "q", "size": 10,
                                                            "size_vram": 0}]})],
                 [seen("ollama")],
                 {"ollama": (True, None, [("tags", True, "200"), ("ps", True, "1 loaded (CPU)")])},
                 id="ollama-on-the-cpu-as-placed"),
    pytest.param([VLLM], [{"status": -1, "msg": "refused"}, {"status": -1, "msg": "refused"}],
                 [seen("vllm", healthy=False, device_ok=None, problems=[CRASH])],
                 {"vllm": (False, 0, [("health", False, CRASH),
                                      ("models", False, "HTTP -1 refused"),
                                      ("request", False, "HTTP -1 refused"),
                                      ("gpu", False, "not checked (the service is down)")])},
                 id="crashed"),
    pytest.param([VLLM], [{"status": 503}, {"status": 503}],
                 [seen("vllm", healthy=False, processes=[(801, "python3", 9000)],
                       problems=[LATE])],
                 {"vllm": (False, 9000, [("health", False, LATE), ("models", False, "HTTP 503"),
                                         ("request", False, "HTTP 503"),
                                         ("gpu", True, "1 process(es) on GPU %s" % GPU1)])},
                 id="not-healthy-yet-but-on-its-gpu"),
    pytest.param([VLLM], VLLM_UP,
                 [seen("vllm", device_ok=False, gpu_used=False,
                       problems=[PLACED_ELSEWHERE, OTHER_GPU_PROCESS])],
                 {"vllm": (False, 0, [("health", True, "200"), ("models", True, "m"),
                                      ("request", True, "200"),
                                      ("gpu", False,
                                       PLACED_ELSEWHERE + "; " + OTHER_GPU_PROCESS)])},
                 id="placed-on-another-gpu"),
])
def test_report(services, answers, verified, expected):
    result = _health.report(services, answers, verified)
    got = {r["service"]: (r["healthy"], r["vram_mib"],
                          [(c["check"], c["ok"], c["detail"]) for c in r["checks"]])
           for r in result["services"]}
    assert got == expected
    healthy = all(v[0] for v in expected.values())
    assert result["healthy"] is healthy
    assert result["unhealthy"] == [name for name, v in expected.items() if not v[0]]
    table = _health.table(result, "lab-spark")
    assert table[0] == "lab-spark: %s" % ("HEALTHY" if healthy else "UNHEALTHY")
    assert table[1].startswith("SERVICE")


def test_report_several_services_and_the_table():
    answers = [ok(MODELS), *VLLM_UP]
    verified = [seen("vllm", processes=[(801, "VLLM::EngineCor", 18000)]),
                seen("ollama", processes=[(5151, "ollama", 4683)]), seen("docling")]
    result = _health.report([OLLAMA, VLLM, DOCLING], answers, verified)
    assert result["healthy"] and result["unhealthy"] == []
    assert _health.table(result, "lab-spark") == [
        "lab-spark: HEALTHY",
        "SERVICE  ENGINE   STATE    VRAM MiB   CHECKS",
        "ollama   ollama   healthy  4683/6000  ok tags: 200; ok ps: 1 loaded; ok gpu: 1 "
        "process(es) on GPU 0; ok vram: 4683 of 6000 MiB",
        "vllm     vllm     healthy  18000      ok health: 200; ok models: m; ok request: 200; "
        "ok gpu: 1 process(es) on GPU %s" % GPU1,
        "docling  docling  healthy  -          ok health: 200"]


@pytest.mark.parametrize("answers, verified, message", [
    ([], [seen("ollama")], "answers must have one entry per probe (1); got: 0"),
    ([ok()], None, "verified must be the services of a gpufleet.inference.service_verify "
                   "result (a list of dicts); got: None"),
    ([ok()], [seen("vllm")], "verified must have an entry per service; missing: ollama"),
])
def test_report_bad_input(answers, verified, message):
    with pytest.raises(ValueError) as err:
        _health.report([OLLAMA], answers, verified)
    assert str(err.value) == message


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


# ---- from the plan ----------------------------------------------------------------------------

def _plan(change=None):
    """services_plan of seed 000's stack in vllm mode on two GPUs, from the real catalog;
    ``change(catalog)`` edits the catalog first."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    with open(os.path.join(root, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    if change is not None:
        change(catalog)
    for entry in catalog.values():
        for volume in entry.get("volumes") or []:
            volume["source"] = "/srv/models"
    gpus = [{"index": i, "uuid": "GPU-%d" % i, "memory_total_mib": 24576, "healthy": True}
            for i in range(2)]

    def on(service, index, budget):
        return {"service": service, "gpu": index, "gpu_index": index,
                "gpu_uuid": "GPU-%d" % index, "device_id": "GPU-%d" % index,
                "vram_budget_mib": budget,
                "environment": {"CUDA_VISIBLE_DEVICES": "GPU-%d" % index}}

    placement = {"strategy": "vram_based", "assignments": [
        on("ollama", 0, 6000), on("vision", 0, 3000), on("vllm", 1, 10240)]}
    return services_plan(catalog, placement, gpus, profile="dual-gpu", mode="vllm",
                         extra_profiles={"finetune": False})


def _http_vision(catalog):
    """vision as a sidecar of its own image on GPU 0 (engine other), not an Ollama server."""
    catalog["vision"] = dict(
        catalog["vision"], engine="other", image="example/vision:1", model="moondream2",
        ports=[{"host": 8002, "container": 8002}], volumes=[], environment={},
        health={"path": "/health", "port": 8002})


def test_from_plan_compose_checks_every_active_service_on_its_published_port():
    services = {s["name"]: s for s in _health.from_plan(_plan(), "compose", "stack")}
    assert sorted(services) == ["docling", "ollama", "vision", "vllm"]
    assert services["ollama"] == {"name": "ollama", "engine": "ollama", "port": 11434,
                                  "path": "/api/version", "gpu": "GPU-0", "project": "stack",
                                  "service": "ollama", "vram_budget_mib": 6000}
    # The default vision is a second Ollama server, published on 8002.
    assert services["vision"] == {"name": "vision", "engine": "ollama", "port": 8002,
                                  "path": "/api/version", "gpu": "GPU-0", "project": "stack",
                                  "service": "vision", "vram_budget_mib": 3000}
    assert services["docling"] == {"name": "docling", "engine": "http", "port": 5001,
                                   "path": "/health", "gpu": None, "project": "stack",
                                   "service": "docling"}
    assert not any("process_names" in s for s in services.values())
    calls = _health.verify_checks(list(services.values()), "compose")
    assert {"name": "vision", "url": "http://127.0.0.1:8002/api/tags", "engine": "ollama",
            "device_id": "GPU-0", "gpu_index": None, "project": "stack",
            "service": "vision"} in calls
    assert {"name": "docling", "url": "http://127.0.0.1:5001/health", "engine": "other",
            "device_id": None, "gpu_index": None, "project": "stack",
            "service": "docling"} in calls


def test_from_plan_compose_checks_a_gpu_sidecar_by_http():
    services = {s["name"]: s for s in _health.from_plan(_plan(_http_vision), "compose",
                                                        "stack")}
    assert sorted(services) == ["docling", "ollama", "vision", "vllm"]
    assert services["vision"]["engine"] == "http" and services["vision"]["path"] == "/health"
    calls = _health.verify_checks(list(services.values()), "compose")
    assert {"name": "vision", "url": "http://127.0.0.1:8002/health", "engine": "other",
            "device_id": "GPU-0", "gpu_index": None, "project": "stack",
            "service": "vision"} in calls


def test_from_plan_systemd_checks_only_the_instances_by_their_units():
    services = _health.from_plan(_plan(), "systemd")
    assert [(s["name"], s["unit"], s["cuda_visible_devices"], s["gpu"]) for s in services] == [
        ("ollama", "ollama@ollama.service", "GPU-0", "GPU-0"),
        ("vision", "ollama@vision.service", "GPU-0", "GPU-0"),
        ("vllm", "vllm@vllm.service", "GPU-1", "GPU-1")]
    assert not any("project" in s for s in services)
    checks = _health.verify_checks(services, "systemd")
    assert [(c["unit"], c["cuda_visible_devices"]) for c in checks] == [
        ("ollama@ollama.service", "GPU-0"), ("ollama@vision.service", "GPU-0"),
        ("vllm@vllm.service", "GPU-1")]
    # A sidecar of its own image (and docling) is a container of the compose path only.
    sidecar = _health.from_plan(_plan(_http_vision), "systemd")
    assert [s["unit"] for s in sidecar] == ["ollama@ollama.service", "vllm@vllm.service"]


def test_from_plan_podman_checks_every_container_by_its_unit():
    services = {s["name"]: s for s in _health.from_plan(_plan(_http_vision), "podman")}
    assert sorted(services) == ["docling", "ollama", "vision", "vllm"]
    assert [(s["unit"], s["container"], s["gpu"]) for s in services.values()] == [
        ("gpufleet-%s.service" % n, "gpufleet-%s" % n, services[n]["gpu"]) for n in services]
    assert services["vllm"]["gpu"] == "GPU-1" and services["docling"]["gpu"] is None
    assert not any("project" in s or "cuda_visible_devices" in s for s in services.values())
    checks = _health.verify_checks(list(services.values()), "podman")
    assert {(c["name"], c["unit"], c["container"]) for c in checks} == {
        (n, "gpufleet-%s.service" % n, "gpufleet-%s" % n) for n in services}


# ---- the host's mode: only the services of the planned (recorded) mode are checked ---------

MODES = yaml.safe_load(pathlib.Path(REPO, "roles/services/defaults/main.yml").read_text())[
    "services_modes"]
ONE_GB10 = [dict(gpu(0, total=124610), name="NVIDIA GB10")]


def mode_plan(mode, gpus):
    catalog, extra = default_catalog()
    chosen = plan_utils.resolve_mode(mode, MODES, plan_utils.check_catalog(catalog, extra))
    placement = plan_utils.place_in_two_passes(catalog, "auto", chosen, extra, gpus,
                                               lambda services: place(gpus, services))
    return services_plan(catalog, placement, gpus, "auto", mode, extra, modes=MODES)


@pytest.mark.parametrize("mode, gpus, runtime, checked", [
    # Ollama is stopped on purpose in ingestion: it is not checked, so the host can be healthy.
    ("ingestion", ONE_GB10, "compose", [("vllm", "vllm", 8000, "GPU-0000"),
                                        ("docling", "http", 5001, None)]),
    ("chat", ONE_GB10, "compose", [("ollama", "ollama", 11434, "GPU-0000")]),
    ("ingestion", TWO_GPUS, "systemd", [("vllm", "vllm", 8000, "GPU-0000")]),
    ("vllm", TWO_GPUS, "compose", [("ollama", "ollama", 11434, "GPU-0000"),
                                   ("vision", "ollama", 8002, "GPU-0000"),
                                   ("vllm", "vllm", 8000, "GPU-0001"),
                                   ("docling", "http", 5001, None)]),
], ids=["ingestion", "chat", "ingestion-systemd", "dual-gpu-vllm"])
def test_from_plan_checks_the_services_of_the_planned_mode_only(mode, gpus, runtime, checked):
    services = _health.from_plan(mode_plan(mode, gpus), runtime)
    assert [(s["name"], s["engine"], s["port"], s["gpu"]) for s in services] == checked


@pytest.mark.parametrize("plan, runtime, message", [
    ({"services": "x"}, "compose", "services_plan must be the fact"),
    ({"services": []}, "docker", "runtime must be one of compose, systemd, podman; got: 'docker'"),
])
def test_from_plan_bad_input(plan, runtime, message):
    with pytest.raises(ValueError, match=message):
        _health.from_plan(plan, runtime)


def test_a_service_spanning_gpus_is_held_to_its_budget_on_every_gpu():
    """A tensor-parallel vLLM holds its per-GPU budget on each of its GPUs: the health check
    sums what it holds over them, so it compares against N x the per-GPU budget."""
    def tensor_parallel(catalog):
        catalog["vllm"].pop("gpu")
        catalog["vllm"]["gpus"] = 2

    plan = make_plan(mode="vllm", gpus=[gpu(0), gpu(1), gpu(2)], change=tensor_parallel)
    where = next(s["placement"] for s in plan["services"] if s["name"] == "vllm")
    assert where["gpu_count"] == 2
    services = {s["name"]: s for s in _health.from_plan(plan, "compose", "stack")}
    assert services["vllm"]["vram_budget_mib"] == 2 * where["vram_budget_mib"]
    assert services["ollama"]["vram_budget_mib"] == next(
        s["placement"]["vram_budget_mib"] for s in plan["services"] if s["name"] == "ollama")
