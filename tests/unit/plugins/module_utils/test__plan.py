# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan core: catalog checks, seed 000's profiles and modes, multi-gpu, the plan."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _render
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import MODELS, REPO, TWO_GPUS, default_catalog, gpu, make_plan

CATALOG, EXTRA = default_catalog()
THREE_GPUS = [gpu(0), gpu(1), gpu(2)]
FOUR_GPUS = [*THREE_GPUS, gpu(3)]


def by_name(plan):
    return {s["name"]: s for s in plan["services"]}


# ---- the profile vocabulary ----------------------------------------------------------------

@pytest.mark.parametrize("count, remote, want", [
    (0, False, "cpu"), (1, False, "single-gpu"), (2, False, "dual-gpu"), (3, False, "multi-gpu"),
    (8, False, "multi-gpu"), (2, True, "remote"), (0, True, "remote"),
])
def test_recommend_profile(count, remote, want):
    assert _plan.recommend_profile(count, remote) == want


@pytest.mark.parametrize("count, remote, message", [
    (-1, False, "gpu_count must be an integer >= 0; got: -1"),
    (True, False, "gpu_count must be an integer >= 0; got: True"),
    ("2", False, "gpu_count must be an integer >= 0; got: '2'"),
    (2, "yes", "remote must be a boolean; got: 'yes'"),
])
def test_recommend_profile_rejects(count, remote, message):
    with pytest.raises(ValueError) as error:
        _plan.recommend_profile(count, remote)
    assert str(error.value) == message


def test_vocabulary():
    assert _plan.PROFILES == ("remote", "cpu", "single-gpu", "dual-gpu", "multi-gpu")
    assert _plan.GPU_PROFILES == ("single-gpu", "dual-gpu", "multi-gpu")
    assert _plan.MODE_PROFILES == ("dual-gpu", "multi-gpu")
    assert _plan.PROFILE_CHOICES == ("auto", *_plan.PROFILES)


# ---- seed 000: the profile table --------------------------------------------------------

def _sub(modes):
    return ["%s-%s" % (p, m) for p in _plan.MODE_PROFILES for m in modes]


SEED_000_PROFILES = {
    "ollama": ["cpu", "single-gpu", *_sub(["ollama", "vllm", "mixed"])],
    "vision": ["single-gpu", *_sub(["ollama", "vllm", "mixed"])],
    "ollama_research": _sub(["ollama", "mixed"]),
    "vllm": _sub(["vllm", "mixed"]),
    "docling": ["remote", "cpu", "single-gpu", *_sub(["ollama", "vllm", "mixed"])],
    "finetune": ["finetune"],
}


@pytest.mark.parametrize("service,profiles", sorted(SEED_000_PROFILES.items()))
def test_default_catalog_has_seed_000_profiles(service, profiles):
    checked = _plan.check_catalog(CATALOG, EXTRA)
    assert _plan.compose_profiles(checked[service]) == profiles


def test_default_catalog_lists_multi_gpu_wherever_it_lists_dual_gpu():
    for name, entry in CATALOG.items():
        if entry.get("per_spare_gpu"):
            assert entry["profiles"] == ["multi-gpu"], name
            continue
        assert ("dual-gpu" in entry["profiles"]) == ("multi-gpu" in entry["profiles"]), name


@pytest.mark.parametrize("profile,mode,active", [
    ("remote", "ollama", ["docling"]),
    ("cpu", "ollama", ["ollama", "docling"]),
    ("single-gpu", "vllm", ["ollama", "vision", "docling"]),
    ("dual-gpu", "ollama", ["ollama", "vision", "ollama_research", "docling"]),
    ("dual-gpu", "vllm", ["ollama", "vision", "vllm", "docling"]),
    ("dual-gpu", "mixed", ["ollama", "vision", "ollama_research", "vllm", "docling"]),
    ("multi-gpu", "ollama", ["ollama", "vision", "ollama_research", "ollama_spare", "docling"]),
    ("multi-gpu", "vllm", ["ollama", "vision", "vllm", "ollama_spare", "docling"]),
    ("multi-gpu", "mixed", ["ollama", "vision", "ollama_research", "vllm", "ollama_spare",
                            "docling"]),
])
def test_select_by_profile_and_mode(profile, mode, active):
    checked = _plan.check_catalog(CATALOG, EXTRA)
    assert _plan.select(checked, profile, mode, EXTRA) == active
    assert _plan.select(checked, profile, mode, {"finetune": True}) == \
        [n for n in CATALOG if n in active or n == "finetune"]


@pytest.mark.parametrize("gpus,profile", [
    ([], "cpu"), ([gpu(0)], "single-gpu"), (TWO_GPUS, "dual-gpu"),
    (THREE_GPUS, "multi-gpu"), (FOUR_GPUS, "multi-gpu"),
    ([gpu(0), dict(gpu(1), healthy=False)], "single-gpu"),
    ([gpu(0), gpu(1), dict(gpu(2), healthy=False)], "dual-gpu"),
])
def test_auto_profile_follows_healthy_gpus(gpus, profile):
    assert _plan.resolve_profile("auto", gpus) == profile


def test_compose_profiles_passed_for_dual_and_multi_gpu():
    assert _plan.active_profiles("dual-gpu", "mixed", {"finetune": True}) == \
        ["dual-gpu", "dual-gpu-mixed", "finetune"]
    assert _plan.active_profiles("multi-gpu", "vllm", EXTRA) == ["multi-gpu", "multi-gpu-vllm"]
    assert _plan.active_profiles("cpu", "mixed", EXTRA) == ["cpu"]


@pytest.mark.parametrize("profile,mode,expected", [
    ("cpu", "ollama", []),
    ("remote", "mixed", []),
    ("single-gpu", "ollama", [("ollama", 0), ("vision", 0)]),
    ("dual-gpu", "ollama", [("ollama", 0), ("vision", 0), ("ollama_research", 1)]),
    ("dual-gpu", "vllm", [("ollama", 0), ("vision", 0), ("vllm", 1)]),
    ("dual-gpu", "mixed", [("ollama", 0), ("vision", 0), ("ollama_research", 1), ("vllm", 1)]),
    ("multi-gpu", "mixed", [("ollama", 0), ("vision", 0), ("ollama_research", 1), ("vllm", 1)]),
])
def test_placement_input_pins_as_seed_000(profile, mode, expected):
    services = _plan.placement_input(CATALOG, profile, mode, EXTRA, TWO_GPUS)
    assert [(s["name"], s["gpu"]) for s in services] == expected
    assert all("ports" not in s and "image" not in s for s in services)


# ---- multi-gpu: the dual-GPU stack on GPUs 0 and 1, a replica on each other GPU -------------
# (more in test__plan_multi_gpu.py)

def test_auto_with_three_gpus_plans_multi_gpu():
    placement = _plan.place_in_two_passes(CATALOG, "auto", "vllm", EXTRA, THREE_GPUS,
                                          lambda services: place(THREE_GPUS, services))
    plan = _plan.plan(CATALOG, placement, THREE_GPUS, "auto", "vllm", EXTRA)
    services = by_name(plan)
    assert plan["profile"] == "multi-gpu" and plan["gpu_overlay"]
    assert plan["compose_profiles"] == ["multi-gpu", "multi-gpu-vllm"]
    assert plan["active"] == ["ollama", "vision", "vllm", "ollama_spare_gpu2", "docling"]
    assert services["ollama"]["placement"]["gpu_index"] == 0
    assert services["vllm"]["placement"]["gpu_index"] == 1
    assert services["ollama_spare_gpu2"]["placement"]["gpu_index"] == 2
    assert services["vllm"]["compose_profiles"] == ["dual-gpu-vllm", "dual-gpu-mixed",
                                                    "multi-gpu-vllm", "multi-gpu-mixed"]
    assert plan["idle_gpus"] == []
    assert plan["summary"][0] == "profile multi-gpu (compose profiles multi-gpu, multi-gpu-vllm)"
    assert plan["summary"][-2:] == ["ollama_spare_gpu2: GPU 2 (GPU-0002), 2963 MiB",
                                    "docling: no GPU"]


def test_auto_with_two_gpus_plans_dual_gpu_and_leaves_none_idle():
    plan = make_plan("auto", "mixed", gpus=TWO_GPUS)
    assert plan["profile"] == "dual-gpu"
    assert plan["compose_profiles"] == ["dual-gpu", "dual-gpu-mixed"]
    assert plan["idle_gpus"] == []
    assert not any("idle" in line for line in plan["summary"])


def test_idle_note_names_every_idle_gpu_and_skips_unhealthy_ones():
    gpus = [*THREE_GPUS, dict(gpu(3), healthy=False), gpu(4)]
    plan = make_plan("auto", "ollama", gpus=gpus, change=lambda c: c.pop("ollama_spare"))
    assert plan["idle_gpus"] == [2, 4]
    assert plan["summary"][-1].startswith("GPU 2, 4 idle: profile multi-gpu places its active "
                                          "services on GPU 0, 1 only; ")


@pytest.mark.parametrize("profile,gpus,note", [
    ("single-gpu", TWO_GPUS,
     "GPU 1 idle: profile single-gpu places its active services on GPU 0 only"),
    ("cpu", TWO_GPUS, "GPU 0, 1 idle: profile cpu places no service on a GPU"),
])
def test_idle_note_for_a_profile_below_the_gpus(profile, gpus, note):
    plan = make_plan(profile, "ollama", gpus=gpus)
    assert plan["summary"][-1] == note


# ---- bad input: every message names the field and the value -------------------------------

def mutate(path, value):
    catalog = copy.deepcopy(CATALOG)
    node = catalog
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return catalog


BAD_CATALOGS = [
    (mutate(["vllm", "ports", 0], 70000),
     "services_catalog.vllm.ports[0] must be 1-65535; got: 70000"),
    (mutate(["vllm", "ports", 0], {"container": 0}),
     "services_catalog.vllm.ports[0].container must be 1-65535; got: 0"),
    (mutate(["vllm", "ports", 0], {"container": 80, "host": "x"}),
     "services_catalog.vllm.ports[0].host must be 1-65535; got: 'x'"),
    (mutate(["vllm", "ports", 0], {"container": 80, "protocol": "sctp"}),
     "services_catalog.vllm.ports[0].protocol must be one of tcp, udp; got: 'sctp'"),
    (mutate(["vllm", "ports", 0], {"container": 80, "hostt": 1}),
     "services_catalog.vllm.ports[0] has unknown key(s): hostt"),
    (mutate(["vllm", "ports"], [{"host": 11435, "container": 8000}]),
     "services_catalog.vllm.ports[0] publishes host port 11435, as "
     "services_catalog.ollama_research.ports[0] does (both run in profile dual-gpu-mixed); "
     "got: 11435"),
    (mutate(["vllm", "profiles"], ["dual"]),
     "services_catalog.vllm.profiles[0] must be one of remote, cpu, single-gpu, dual-gpu, "
     "multi-gpu, finetune (or a key of services_extra_profiles); got: 'dual'"),
    (mutate(["vllm", "profiles"], []),
     "services_catalog.vllm.profiles must be a non-empty list; got: []"),
    (mutate(["vllm", "modes"], ["hybrid"]),
     "services_catalog.vllm.modes[0] must be one of ollama, vllm, mixed; got: 'hybrid'"),
    (mutate(["vllm", "modes"], []),
     "services_catalog.vllm.modes must name at least one of ollama, vllm, mixed for profile "
     "dual-gpu; got: []"),
    (dict(CATALOG, vllm=dict(CATALOG["vllm"], profiles=["multi-gpu"], modes=[])),
     "services_catalog.vllm.modes must name at least one of ollama, vllm, mixed for profile "
     "multi-gpu; got: []"),
    (mutate(["finetune", "modes"], ["mixed"]),
     "services_catalog.finetune.modes is only for services in profile dual-gpu or multi-gpu; "
     "got: ['mixed']"),
    (mutate(["vllm", "engine"], "tgi"),
     "services_catalog.vllm.engine must be one of ollama, vllm, other; got: 'tgi'"),
    (mutate(["vllm", "model"], KeyError),
     "services_catalog.vllm.model must be set for engine vllm; got: None"),
    (mutate(["vllm", "model"], "Qwen/Qwen2.5-1.5B-Instruct\n"),
     "services_catalog.vllm.model must be a model name like llama3.2:3b or "
     "Qwen/Qwen2.5-1.5B-Instruct (letters, digits and . _ : / @ + -, no spaces); "
     "got: 'Qwen/Qwen2.5-1.5B-Instruct\\n'"),
    (mutate(["ollama", "model"], "llama3.2:3b\x1b"),
     "services_catalog.ollama.model must be a model name like llama3.2:3b or "
     "Qwen/Qwen2.5-1.5B-Instruct (letters, digits and . _ : / @ + -, no spaces); "
     "got: 'llama3.2:3b\\x1b'"),
    (mutate(["ollama", "models"], ["qwen3:8b\x00"]),
     "services_catalog.ollama.models[0] must be an Ollama model name like llama3.2:3b; "
     "got: 'qwen3:8b\\x00'"),
    (mutate(["vllm", "image"], ""),
     "services_catalog.vllm.image must be an image reference like ollama/ollama:latest "
     "(repository in lower case); got: ''"),
    (mutate(["vllm", "imag"], "x"), "services_catalog.vllm has unknown key(s): imag"),
    (mutate(["vllm", "gpu"], -1),
     "services_catalog.vllm.gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: -1"),
    (mutate(["vllm", "vram_budget_mib"], 0),
     "services_catalog.vllm.vram_budget_mib must be an integer > 0; got: 0"),
    (mutate(["vllm", "uses_gpu"], "yes"),
     "services_catalog.vllm.uses_gpu must be a boolean; got: 'yes'"),
    (mutate(["vllm", "command"], ["--max-model-len 4096"]),
     "services_catalog.vllm.command[0] must be one argument without spaces (vLLM extra "
     "arguments); got: '--max-model-len 4096'"),
    (mutate(["vllm", "restart"], "sometimes"),
     "services_catalog.vllm.restart must be one of no, always, on-failure, unless-stopped; "
     "got: 'sometimes'"),
    (mutate(["ollama", "volumes", 0, "source"], "models"),
     "services_catalog.ollama.volumes[0].source must be an absolute host path; got: 'models'"),
    (mutate(["ollama", "environment", "OLLAMA_KEEP_ALIVE"], None),
     "services_catalog.ollama.environment.OLLAMA_KEEP_ALIVE must be a string, number or "
     "boolean; got: None"),
    (mutate(["ollama", "environment"], {"BAD-NAME": "1"}),
     "services_catalog.ollama.environment has a bad variable name; got: 'BAD-NAME'"),
    (mutate(["ollama", "health"], {"path": "api"}),
     "services_catalog.ollama.health.path must start with '/'; got: 'api'"),
    (mutate(["ollama", "health"], {"path": "/api", "port": 9999}),
     "services_catalog.ollama.health.port must be one of the service's container ports "
     "(11434); got: 9999"),
    (mutate(["finetune", "vram_mib"], KeyError),
     "services_catalog.finetune needs model, vram_mib or vram_budget_mib when uses_gpu is "
     "true; got none of them"),
    (dict(CATALOG, **{"Bad Name": CATALOG["docling"]}),
     "services_catalog has a bad service name (lower case letters, digits, '_' and '-', at "
     "most 52); got: 'Bad Name'"),
    (dict(CATALOG, **{"ollama-research": CATALOG["ollama_research"]}),
     "services_catalog.ollama-research has the same Kubernetes name (ollama-research) as "
     "services_catalog.ollama_research; got: 'ollama-research'"),
    ({}, "services_catalog must be a non-empty dict of service name: definition; got: {}"),
]


@pytest.mark.parametrize("catalog,message", BAD_CATALOGS)
def test_bad_catalog_names_field_and_value(catalog, message):
    with pytest.raises(ValueError) as error:
        _plan.check_catalog(catalog, EXTRA)
    assert str(error.value) == message


@pytest.mark.parametrize("call,message", [
    (lambda: _plan.placement_input(CATALOG, "dual", "ollama", EXTRA),
     "services_profile must be one of auto, remote, cpu, single-gpu, dual-gpu, multi-gpu; "
     "got: 'dual'"),
    (lambda: _plan.placement_input(CATALOG, "cpu", "both", EXTRA),
     "services_dual_gpu_mode must be one of ollama, vllm, mixed; got: 'both'"),
    (lambda: _plan.check_catalog(CATALOG, {"finetune": "yes"}),
     "services_extra_profiles.finetune must be a boolean; got: 'yes'"),
    (lambda: _plan.check_catalog(CATALOG, {"dual-gpu-x": True}),
     "services_extra_profiles has a bad profile name (lower case, digits and '-', not one of "
     "remote, cpu, single-gpu, dual-gpu, multi-gpu nor dual-gpu-* nor multi-gpu-*); "
     "got: 'dual-gpu-x'"),
    (lambda: _plan.check_catalog(CATALOG, {"multi-gpu-extra": True}),
     "services_extra_profiles has a bad profile name (lower case, digits and '-', not one of "
     "remote, cpu, single-gpu, dual-gpu, multi-gpu nor dual-gpu-* nor multi-gpu-*); "
     "got: 'multi-gpu-extra'"),
    (lambda: _plan.plan(CATALOG, {"assignments": [{"service": "vllm", "gpu_index": 1}]},
                        TWO_GPUS, "dual-gpu", "ollama", EXTRA),
     "placement.assignments[0].service is not an active GPU service of services_catalog for "
     "profile dual-gpu (dual-gpu, dual-gpu-ollama); got: 'vllm'"),
    (lambda: _plan.plan(CATALOG, ["not", "a", "result"], TWO_GPUS, "dual-gpu", "ollama", EXTRA),
     "placement must be the result of gpu_placement; got: ['not', 'a', 'result']"),
    (lambda: _plan.check_plan({"services": []}),
     "services_plan must be the fact set by the gpufleet.inference.services role; "
     "got: {'services': []}"),
    (lambda: _plan.check_plan(None, "health_services_plan"),
     "health_services_plan must be the fact set by the gpufleet.inference.services role; "
     "got: None"),
])
def test_bad_options_name_field_and_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_check_plan_returns_the_plan():
    plan = make_plan()
    assert _plan.check_plan(plan) is plan


def test_disabled_service_is_left_out():
    catalog = mutate(["vllm", "enabled"], False)
    assert "vllm" not in _plan.check_catalog(catalog, EXTRA)
    assert [s["name"] for s in make_plan(mode="vllm", catalog=catalog)["services"]] == \
        ["ollama", "vision", "ollama_research", "docling", "finetune"]


def test_ports_in_profiles_that_never_run_together_may_repeat():
    catalog = mutate(["vllm", "ports"], [{"host": 11435, "container": 8000}])
    catalog["vllm"]["modes"] = ["vllm"]
    assert _plan.check_catalog(catalog, EXTRA)["vllm"]["ports"][0]["host"] == 11435


def test_port_clash_in_a_multi_gpu_sub_profile_only():
    catalog = mutate(["vllm", "profiles"], ["multi-gpu"])
    catalog["vllm"]["ports"] = [{"host": 11435, "container": 8000}]
    catalog["ollama_research"]["profiles"] = ["multi-gpu"]
    with pytest.raises(ValueError) as error:
        _plan.check_catalog(catalog, EXTRA)
    assert str(error.value) == (
        "services_catalog.vllm.ports[0] publishes host port 11435, as "
        "services_catalog.ollama_research.ports[0] does (both run in profile multi-gpu-mixed); "
        "got: 11435")


# ---- the plan ----------------------------------------------------------------------------

def test_mixed_mode_shares_gpu_1_by_budgets():
    plan = make_plan(mode="mixed")
    services = by_name(plan)
    assert plan["compose_profiles"] == ["dual-gpu", "dual-gpu-mixed"] and plan["gpu_overlay"]
    assert services["vllm"]["placement"]["device_id"] == "GPU-0001"
    assert services["ollama_research"]["placement"]["device_id"] == "GPU-0001"
    assert services["ollama"]["placement"]["device_id"] == "GPU-0000"
    assert services["vllm"]["placement"]["engine_args"] == ["--gpu-memory-utilization", "0.41"]
    assert services["ollama_research"]["placement"]["budget_env"]["OLLAMA_KEEP_ALIVE"] == "-1"
    assert services["docling"]["placement"] is None
    assert plan["gpu_assignments"]["assignments"]["vllm"] == {"gpu": 1, "vram_budget": 10.0}
    assert plan["summary"][0] == "profile dual-gpu (compose profiles dual-gpu, dual-gpu-mixed)"


def test_gpu_missing_leaves_service_unplaced_with_a_warning():
    plan = make_plan(mode="vllm", gpus=[gpu(0)])
    services = by_name(plan)
    assert services["vllm"]["placement"]["gpu_index"] == 0  # pin to GPU 1 falls back
    assert any("vllm" in w for w in plan["warnings"])


def test_plan_is_the_same_for_the_same_input():
    services = _plan.placement_input(CATALOG, "auto", "mixed", EXTRA, THREE_GPUS)
    placement = place(THREE_GPUS, services)
    first = _plan.plan(CATALOG, copy.deepcopy(placement), THREE_GPUS, "auto", "mixed", EXTRA)
    assert first == _plan.plan(CATALOG, placement, THREE_GPUS, "auto", "mixed", EXTRA)


def test_example_inventory_catalog_is_valid():
    path = REPO / "inventory/examples/group_vars/all/services.yml"
    example = yaml.safe_load(path.read_text().replace("{{ services_models_dir }}", MODELS))
    checked = _plan.check_catalog(example["services_catalog"], example["services_extra_profiles"])
    assert _plan.compose_profiles(checked["vllm"])[:2] == ["dual-gpu-vllm", "dual-gpu-mixed"]
    assert checked["ollama_spare"]["per_spare_gpu"] is True


# ---- where images, models and weights come from -------------------------------------------

@pytest.mark.parametrize("image, registry, rest", [
    ("ollama/ollama:latest", "docker.io", "ollama/ollama:latest"),
    ("python:3.11", "docker.io", "library/python:3.11"),
    ("docker.io/vllm/vllm-openai:v0.9.2", "docker.io", "vllm/vllm-openai:v0.9.2"),
    ("index.docker.io/library/python", "docker.io", "library/python"),
    ("quay.io/docling-project/docling-serve:latest", "quay.io",
     "docling-project/docling-serve:latest"),
    ("registry.lab:5000/a/b@sha256:" + "0" * 64, "registry.lab:5000", "a/b@sha256:" + "0" * 64),
    ("localhost/x:1", "localhost", "x:1"),
])
def test_split_image(image, registry, rest):
    assert _plan.split_image(image) == (registry, rest)


def test_mirror_rewrites_only_the_mirrored_registries():
    mirrors = {"docker.io": "m.lan:5000", "quay.io": "m.lan:5000/quay.io"}
    assert _plan.mirror_image("ollama/ollama:latest", mirrors) == "m.lan:5000/ollama/ollama:latest"
    assert _plan.mirror_image("python:3.11", mirrors) == "m.lan:5000/library/python:3.11"
    assert _plan.mirror_image("quay.io/d/s:1", mirrors) == "m.lan:5000/quay.io/d/s:1"
    assert _plan.mirror_image("ghcr.io/a/b:1", mirrors) == "ghcr.io/a/b:1"


LAB_SOURCES = {"image_mirrors": {"docker.io": "registry.lab:5000",
                                 "quay.io": "registry.lab:5000/quay.io"},
               "insecure_registries": ["registry.lab:5000"],
               "ollama_registry": "registry.lab:5000", "hf_endpoint": "http://hub.lab:8080/",
               "hf_token_file": "/etc/gpufleet/huggingface.env"}


def _sourced_plan(mode="mixed", sources=None):
    catalog, extra = default_catalog()
    services = _plan.placement_input(catalog, "dual-gpu", mode, extra, TWO_GPUS)
    return _plan.plan(catalog, place(TWO_GPUS, services), TWO_GPUS, "dual-gpu", mode, extra,
                      sources)


def test_plan_pulls_images_through_the_mirror_and_keeps_the_catalog_name():
    plan = _sourced_plan(sources=LAB_SOURCES)
    by_name = {s["name"]: s for s in plan["services"]}
    assert by_name["ollama"]["image"] == "registry.lab:5000/ollama/ollama:latest"
    assert by_name["ollama"]["image_source"] == "ollama/ollama:latest"
    assert by_name["docling"]["image"] == (
        "registry.lab:5000/quay.io/docling-project/docling-serve:latest")
    compose = _render.compose_document(plan)
    assert compose["services"]["vllm"]["image"] == "registry.lab:5000/vllm/vllm-openai:latest"


def test_plan_lists_each_download_once_with_its_services():
    plan = _sourced_plan(sources=LAB_SOURCES)
    items = plan["downloads"]["items"]
    images = [i for i in items if i["kind"] == "image"]
    assert [(i["name"], i["services"], i["insecure"]) for i in images] == [
        ("registry.lab:5000/ollama/ollama:latest", ["ollama", "vision", "ollama_research"], True),
        ("registry.lab:5000/vllm/vllm-openai:latest", ["vllm"], True),
        ("registry.lab:5000/quay.io/docling-project/docling-serve:latest", ["docling"], True),
    ]
    models = [i for i in items if i["kind"] == "ollama"]
    # ollama and ollama_research share the model directory: llama3.2:3b is pulled once.
    assert [(i["name"], i["services"], i["models_dir"], i["url"]) for i in models] == [
        ("llama3.2:3b", ["ollama", "ollama_research"], MODELS, "http://127.0.0.1:11434"),
        ("moondream:latest", ["vision"], MODELS, "http://127.0.0.1:8002"),
    ]
    weights = [i for i in items if i["kind"] == "huggingface"]
    assert weights == [{"kind": "huggingface", "name": "Qwen/Qwen2.5-1.5B-Instruct",
                        "revision": "main", "services": ["vllm"],
                        "hf_home": "/srv/gpufleet/models/huggingface"}]
    assert plan["downloads"]["options"] == {
        "ollama_registry": "registry.lab:5000", "ollama_insecure": True,
        "ollama_source_dir": None, "hf_endpoint": "http://hub.lab:8080",
        "hf_token_file": "/etc/gpufleet/huggingface.env"}


def test_inactive_services_need_no_download():
    plan = _sourced_plan(mode="ollama")
    names = [i["name"] for i in plan["downloads"]["items"]]
    assert "vllm/vllm-openai:latest" not in names
    assert "Qwen/Qwen2.5-1.5B-Instruct" not in names


def test_vllm_reads_the_host_cache_offline_and_never_gets_the_token():
    plan = _sourced_plan(sources=LAB_SOURCES)
    vllm = _render.compose_document(plan)["services"]["vllm"]
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "1"
    assert vllm["environment"]["HF_ENDPOINT"] == "http://hub.lab:8080"
    assert {"type": "bind", "source": "/srv/gpufleet/models/huggingface",
            "target": "/root/.cache/huggingface", "read_only": False,
            "bind": {"create_host_path": True}} in vllm["volumes"]
    # vLLM reads offline: the token is the fetch's alone, never the container's.
    assert "env_file" not in vllm and "HF_TOKEN" not in vllm["environment"]


def test_ollama_models_dir_follows_the_mount_of_ollama_models():
    service = {"environment": {"OLLAMA_MODELS": "/root/.ollama"},
               "volumes": [{"source": "/srv/m", "target": "/root/.ollama"}]}
    assert _plan.ollama_models_dir(service) == "/srv/m"
    service = {"environment": {}, "volumes": [{"source": "/srv/o", "target": "/root/.ollama"}]}
    assert _plan.ollama_models_dir(service) == "/srv/o/models"
    assert _plan.ollama_models_dir({"environment": {}, "volumes": []}) is None


def test_extra_ollama_models_are_pulled_too():
    def more(catalog):
        catalog["ollama"]["models"] = ["qwen2.5:1.5b", "llama3.2:3b"]
    plan = make_plan(change=more)
    assert next(s for s in plan["services"] if s["name"] == "ollama")["models"] == [
        "llama3.2:3b", "qwen2.5:1.5b"]


@pytest.mark.parametrize("sources, message", [
    ({"image_mirror": {}}, "sources has unknown key(s): image_mirror"),
    ({"image_mirrors": ["x"]}, "services_image_mirrors must be a dict of registry: mirror; "
                               "got: ['x']"),
    ({"image_mirrors": {"docker.io": "http://m:5000"}},
     "services_image_mirrors.docker.io must be a registry host with an optional path"),
    ({"insecure_registries": "m:5000"}, "services_insecure_registries must be a list"),
    ({"ollama_registry": "https://registry.ollama.ai"}, "services_ollama_registry must be a "
                                                        "registry host"),
    ({"hf_home": "models/hf"}, "services_hf_home must be an absolute path without spaces; "
                               "got: 'models/hf'"),
    ({"hf_endpoint": "hub.lab:8080"}, "services_hf_endpoint must be an http(s) URL"),
])
def test_bad_sources_name_field_and_value(sources, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _sourced_plan(sources=sources)


def test_models_only_for_ollama():
    def bad(catalog):
        catalog["vllm"]["models"] = ["x"]
    with pytest.raises(ValueError, match=re.escape(
            "services_catalog.vllm.models lists the models an Ollama server pulls")):
        make_plan(change=bad)


def test_two_ollama_servers_on_one_gpu_leave_each_other_their_budgets():
    """Both load lazily, in any order: each one's OLLAMA_GPU_OVERHEAD keeps the other's budget
    free, so whichever loads second still has its own budget."""
    plan = make_plan(mode="mixed")
    by_name = {s["name"]: s for s in plan["services"]}
    ollama, vision = by_name["ollama"]["placement"], by_name["vision"]["placement"]
    total = 24576
    for me, other in ((ollama, vision), (vision, ollama)):
        overhead = int(me["budget_env"]["OLLAMA_GPU_OVERHEAD"]) // (1024 * 1024)
        assert overhead == total - me["vram_budget_mib"] - other["vram_budget_mib"]


def test_an_ollama_server_without_a_models_mount_is_refused_naming_it():
    def no_volume(catalog):
        del catalog["ollama"]["volumes"]
    with pytest.raises(ValueError, match=re.escape(
            "services_catalog.ollama.volumes must mount a host directory at OLLAMA_MODELS "
            "(/root/.ollama; /root/.ollama/models when unset)")):
        make_plan(change=no_volume)


# ---- a host as it really is: a GPU fell off the bus ------------------------------------------

LOST_GPU = {"index": None, "uuid": "GPU-dead", "pci_bus_id": "00000000:65:00.0", "name": None,
            "vendor": "nvidia", "memory_total_mib": None, "memory_used_mib": None,
            "memory_free_mib": None, "processes": [], "mig_devices": [], "healthy": False,
            "errors": ["nvidia-smi cannot open the GPU: Unknown Error"]}
LOST_WARNING = ("GPU 00000000:65:00.0 (uuid GPU-dead) is unhealthy and left out of placement: "
                "nvidia-smi cannot open the GPU: Unknown Error.")


@pytest.mark.parametrize("profile, mode, gpus, where, fallback", [
    # auto counts healthy GPUs only: one left, single-gpu on it.
    ("auto", "vllm", [gpu(0), LOST_GPU], {"ollama": 0, "vision": 0}, False),
    ("auto", "vllm", [LOST_GPU, gpu(0)], {"ollama": 0, "vision": 0}, False),
    # A dual-gpu inventory keeps its profile: GPU 1's pin falls back to the healthy GPU.
    ("dual-gpu", "vllm", [gpu(0), LOST_GPU], {"ollama": 0, "vision": 0, "vllm": 0}, True),
])
def test_the_plan_degrades_to_the_healthy_gpus_and_names_the_lost_one(
        profile, mode, gpus, where, fallback):
    services = _plan.placement_input(CATALOG, profile, mode, EXTRA, gpus)
    plan = _plan.plan(CATALOG, place(gpus, services), gpus, profile, mode, EXTRA)
    placed = {s["name"]: s["placement"]["gpu_index"] for s in plan["services"]
              if s["placement"] is not None}
    assert placed == where
    assert plan["warnings"][0] == LOST_WARNING
    assert any("vllm is pinned to GPU 1" in w for w in plan["warnings"]) is fallback
    assert plan["idle_gpus"] == []
