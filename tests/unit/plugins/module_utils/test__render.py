# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The render logic: catalog checks, seed 000's profiles and modes, compose, systemd, k8s."""

from __future__ import annotations

import copy
import pathlib
import re

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _render
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place

REPO = pathlib.Path(__file__).resolve().parents[4]
MODELS = "/srv/test/models"


def default_catalog():
    """The role's default catalog, with services_models_dir filled in."""
    text = (REPO / "roles/services/defaults/main.yml").read_text()
    defaults = yaml.safe_load(text.replace("{{ services_models_dir }}", MODELS))
    return defaults["services_catalog"], defaults["services_extra_profiles"]


CATALOG, EXTRA = default_catalog()


def gpu(index, total=24576, vendor="nvidia"):
    return {"index": index, "uuid": "GPU-%04d" % index, "name": "GPU%d" % index,
            "vendor": vendor, "memory_total_mib": total, "memory_used_mib": 0,
            "memory_free_mib": total, "compute_capability": "8.6", "processes": [],
            "mig_devices": [], "healthy": True}


TWO_GPUS = [gpu(0), gpu(1)]


def make_plan(profile="dual-gpu", mode="ollama", gpus=None, catalog=None, extra=None):
    gpus = TWO_GPUS if gpus is None else gpus
    catalog = CATALOG if catalog is None else catalog
    extra = EXTRA if extra is None else extra
    services = _render.placement_input(catalog, profile, mode, extra, gpus)
    placement = place(gpus, services) if services else {}
    return _render.plan(catalog, placement, gpus, profile, mode, extra)


# ---- seed 000: the profile table --------------------------------------------------------

SEED_000_PROFILES = {
    "ollama": ["cpu", "single-gpu", "dual-gpu-ollama", "dual-gpu-vllm", "dual-gpu-mixed"],
    "vision": ["single-gpu", "dual-gpu-ollama", "dual-gpu-vllm", "dual-gpu-mixed"],
    "ollama_research": ["dual-gpu-ollama", "dual-gpu-mixed"],
    "vllm": ["dual-gpu-vllm", "dual-gpu-mixed"],
    "finetune": ["finetune"],
}


@pytest.mark.parametrize("service,profiles", sorted(SEED_000_PROFILES.items()))
def test_default_catalog_has_seed_000_profiles(service, profiles):
    checked = _render.check_catalog(CATALOG, EXTRA)
    assert _render.compose_profiles(checked[service]) == profiles


@pytest.mark.parametrize("profile,mode,active", [
    ("remote", "ollama", ["docling"]),
    ("cpu", "ollama", ["ollama", "docling"]),
    ("single-gpu", "vllm", ["ollama", "vision", "docling"]),
    ("dual-gpu", "ollama", ["ollama", "vision", "ollama_research", "docling"]),
    ("dual-gpu", "vllm", ["ollama", "vision", "vllm", "docling"]),
    ("dual-gpu", "mixed", ["ollama", "vision", "ollama_research", "vllm", "docling"]),
])
def test_select_by_profile_and_mode(profile, mode, active):
    checked = _render.check_catalog(CATALOG, EXTRA)
    assert _render.select(checked, profile, mode, EXTRA) == active
    assert _render.select(checked, profile, mode, {"finetune": True}) == \
        [n for n in CATALOG if n in active or n == "finetune"]


@pytest.mark.parametrize("gpus,profile", [
    ([], "cpu"), ([gpu(0)], "single-gpu"), (TWO_GPUS, "dual-gpu"),
    ([gpu(0), gpu(1), gpu(2)], "dual-gpu"), ([gpu(0), dict(gpu(1), healthy=False)], "single-gpu"),
])
def test_auto_profile_follows_healthy_gpus(gpus, profile):
    assert _render.resolve_profile("auto", gpus) == profile


def test_compose_profiles_passed_for_dual_gpu():
    assert _render.active_profiles("dual-gpu", "mixed", {"finetune": True}) == \
        ["dual-gpu", "dual-gpu-mixed", "finetune"]
    assert _render.active_profiles("cpu", "mixed", EXTRA) == ["cpu"]


@pytest.mark.parametrize("profile,mode,expected", [
    ("cpu", "ollama", []),
    ("remote", "mixed", []),
    ("single-gpu", "ollama", [("ollama", 0), ("vision", 0)]),
    ("dual-gpu", "ollama", [("ollama", 0), ("vision", 0), ("ollama_research", 1)]),
    ("dual-gpu", "vllm", [("ollama", 0), ("vision", 0), ("vllm", 1)]),
    ("dual-gpu", "mixed", [("ollama", 0), ("vision", 0), ("ollama_research", 1), ("vllm", 1)]),
])
def test_placement_input_pins_as_seed_000(profile, mode, expected):
    services = _render.placement_input(CATALOG, profile, mode, EXTRA, TWO_GPUS)
    assert [(s["name"], s["gpu"]) for s in services] == expected
    assert all("ports" not in s and "image" not in s for s in services)


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
     "finetune (or a key of services_extra_profiles); got: 'dual'"),
    (mutate(["vllm", "profiles"], []),
     "services_catalog.vllm.profiles must be a non-empty list; got: []"),
    (mutate(["vllm", "modes"], ["hybrid"]),
     "services_catalog.vllm.modes[0] must be one of ollama, vllm, mixed; got: 'hybrid'"),
    (mutate(["vllm", "modes"], []),
     "services_catalog.vllm.modes must name at least one of ollama, vllm, mixed for profile "
     "dual-gpu; got: []"),
    (mutate(["finetune", "modes"], ["mixed"]),
     "services_catalog.finetune.modes is only for services in profile dual-gpu; got: ['mixed']"),
    (mutate(["vllm", "engine"], "tgi"),
     "services_catalog.vllm.engine must be one of ollama, vllm, other; got: 'tgi'"),
    (mutate(["vllm", "model"], KeyError),
     "services_catalog.vllm.model must be set for engine vllm; got: None"),
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
        _render.check_catalog(catalog, EXTRA)
    assert str(error.value) == message


@pytest.mark.parametrize("call,message", [
    (lambda: _render.placement_input(CATALOG, "dual", "ollama", EXTRA),
     "services_profile must be one of auto, remote, cpu, single-gpu, dual-gpu; got: 'dual'"),
    (lambda: _render.placement_input(CATALOG, "cpu", "both", EXTRA),
     "services_dual_gpu_mode must be one of ollama, vllm, mixed; got: 'both'"),
    (lambda: _render.check_catalog(CATALOG, {"finetune": "yes"}),
     "services_extra_profiles.finetune must be a boolean; got: 'yes'"),
    (lambda: _render.check_catalog(CATALOG, {"dual-gpu-x": True}),
     "services_extra_profiles has a bad profile name (lower case, digits and '-', not one of "
     "remote, cpu, single-gpu, dual-gpu nor dual-gpu-*); got: 'dual-gpu-x'"),
    (lambda: _render.plan(CATALOG, {"assignments": [{"service": "vllm", "gpu_index": 1}]},
                          TWO_GPUS, "dual-gpu", "ollama", EXTRA),
     "placement.assignments[0].service is not an active GPU service of services_catalog for "
     "profile dual-gpu (dual-gpu, dual-gpu-ollama); got: 'vllm'"),
    (lambda: _render.compose_document({"services": []}, "base"),
     "services_plan must be the fact set by the gpufleet.inference.services role; "
     "got: {'services': []}"),
    (lambda: _render.compose_document(make_plan(), "swarm"),
     "kind must be one of base, gpu, podman; got: 'swarm'"),
    (lambda: _render.k8s_manifests(make_plan(), namespace="GPU"),
     "k8s_manifests_namespace must be a DNS-1123 label; got: 'GPU'"),
    (lambda: _render.k8s_manifests(make_plan(), node_placement={"vllm": {"nodes": "khelben"}}),
     "k8s_manifests_node_placement.vllm.nodes must be a list of node names; got: 'khelben'"),
    (lambda: _render.k8s_manifests(make_plan(), node_placement={"tgi": {}}),
     "k8s_manifests_node_placement has a service not in services_catalog (ollama, vision, "
     "ollama_research, vllm, docling, finetune); got: 'tgi'"),
    (lambda: _render.systemd_instances(make_plan(), models_dir="models"),
     "systemd_units_models_dir must be an absolute path; got: 'models'"),
    (lambda: _render.dotenv_merge("", {"A-B": 1}), "owned has a bad variable name; got: 'A-B'"),
    (lambda: _render.gpu_assignments_document(make_plan(), None, None),
     "now must be a timestamp like 2025-01-23T10:30:00Z; got: None"),
])
def test_bad_options_name_field_and_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_disabled_service_is_left_out():
    catalog = mutate(["vllm", "enabled"], False)
    assert "vllm" not in _render.check_catalog(catalog, EXTRA)
    assert [s["name"] for s in make_plan(mode="vllm", catalog=catalog)["services"]] == \
        ["ollama", "vision", "ollama_research", "docling", "finetune"]


def test_ports_in_profiles_that_never_run_together_may_repeat():
    catalog = mutate(["vllm", "ports"], [{"host": 11435, "container": 8000}])
    catalog["vllm"]["modes"] = ["vllm"]
    assert _render.check_catalog(catalog, EXTRA)["vllm"]["ports"][0]["host"] == 11435


# ---- the plan and compose ----------------------------------------------------------------

def by_name(plan):
    return {s["name"]: s for s in plan["services"]}


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


def test_compose_base_has_every_service_with_its_profiles():
    doc = _render.compose_document(make_plan(), "base", project="gpufleet")
    assert doc["name"] == "gpufleet"
    assert list(doc["services"]) == list(CATALOG)
    research = doc["services"]["ollama_research"]
    assert research["ports"] == [{"target": 11434, "published": "11435", "host_ip": "127.0.0.1",
                                  "protocol": "tcp"}]
    assert research["volumes"][0]["source"] == doc["services"]["ollama"]["volumes"][0]["source"]
    assert research["profiles"] == ["dual-gpu-ollama", "dual-gpu-mixed"]
    assert doc["services"]["vllm"]["command"] == [
        "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--port", "8000"]
    assert doc["services"]["finetune"]["restart"] == "no"


@pytest.mark.parametrize("mode", _render.MODES)
def test_gpu_overlays_select_devices_never_by_host_index(mode):
    plan = make_plan(mode=mode)
    gpu_doc = _render.compose_document(plan, "gpu")
    podman = _render.compose_document(plan, "podman")
    active_gpu = [s["name"] for s in plan["services"] if s["active"] and s["placement"]]
    assert list(gpu_doc["services"]) == active_gpu == list(podman["services"])
    for name, service in gpu_doc["services"].items():
        device = by_name(plan)[name]["placement"]["device_id"]
        assert service["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "device_ids": [device], "capabilities": ["gpu"]}]
        assert podman["services"][name]["devices"] == ["nvidia.com/gpu=%s" % device]
        assert "deploy" not in podman["services"][name]
        for doc in (service, podman["services"][name]):
            assert "CUDA_VISIBLE_DEVICES" not in doc.get("environment", {})
    if "vllm" in gpu_doc["services"]:
        assert gpu_doc["services"]["vllm"]["command"][-2:] == [
            "--gpu-memory-utilization", plan["services"][3]["placement"]["engine_args"][1]]
    assert gpu_doc["services"]["vision"]["environment"]["VRAM_BUDGET_GB"] == "2.3"


def test_cpu_profile_has_empty_overlays():
    plan = make_plan(profile="cpu")
    assert not plan["gpu_overlay"]
    assert _render.compose_document(plan, "gpu") == {"services": {}}


def test_amd_gpu_gets_device_nodes_and_rocr():
    gpus = [gpu(0, vendor="amd"), gpu(1, vendor="amd")]
    plan = make_plan(mode="vllm", gpus=gpus)
    ollama = _render.compose_document(plan, "gpu")["services"]["ollama"]
    assert ollama["devices"] == ["/dev/kfd", "/dev/dri"]
    assert ollama["environment"]["ROCR_VISIBLE_DEVICES"] == "GPU-0000"
    manifests = {m["service"]: m for m in _render.k8s_manifests(plan)}
    container = manifests["vllm"]["documents"][0]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"amd.com/gpu": 1}}


def test_gpu_missing_leaves_service_unplaced_with_a_warning():
    plan = make_plan(mode="vllm", gpus=[gpu(0)])
    services = by_name(plan)
    assert services["vllm"]["placement"]["gpu_index"] == 0  # pin to GPU 1 falls back
    assert any("vllm" in w for w in plan["warnings"])


# ---- .env and gpu-assignments.yml --------------------------------------------------------

HEADER = "#\n# Ansible managed\n#"


@pytest.mark.parametrize("existing,owned,expected", [
    ("", {"A": "1"}, "A=1\n"),
    (None, {"A": "1", "B": "x y"}, 'A=1\nB="x y"\n'),
    ("TOKEN=secret\nDUAL_GPU_MODE=vllm\n", {"DUAL_GPU_MODE": "mixed"},
     "TOKEN=secret\nDUAL_GPU_MODE=mixed\n"),
    ("# mine\nexport DUAL_GPU_MODE=vllm\n\nX=1\nDUAL_GPU_MODE=ollama\n", {"DUAL_GPU_MODE": "mixed"},
     "# mine\nDUAL_GPU_MODE=mixed\n\nX=1\n"),
    (HEADER + "\nX=1\nA=0\n", {"A": 2}, "X=1\nA=2\n"),
    ("X=1", {"P": 'say "$hi"'}, 'X=1\nP="say \\"\\$hi\\""\n'),
])
def test_dotenv_merge_keeps_foreign_keys(existing, owned, expected):
    assert _render.dotenv_merge(existing, owned, header=HEADER) == expected


def test_gpu_assignments_keep_their_time_until_they_change():
    plan = make_plan(mode="mixed")
    first = _render.gpu_assignments_document(plan, None, "2025-01-23T10:30:00Z")
    assert list(first) == ["generated_at", "strategy", "assignments"]
    again = _render.gpu_assignments_document(plan, copy.deepcopy(first), "2030-01-01T00:00:00Z")
    assert again == first
    changed = _render.gpu_assignments_document(make_plan(mode="vllm"), first,
                                               "2030-01-01T00:00:00Z")
    assert changed["generated_at"] == "2030-01-01T00:00:00Z"
    assert "ollama_research" not in changed["assignments"]


# ---- systemd -------------------------------------------------------------------------------

def test_systemd_instances_for_mixed_mode():
    instances = {i["service"]: i for i in _render.systemd_instances(make_plan(mode="mixed"),
                                                                    models_dir=MODELS)}
    assert [i["unit"] for i in instances.values()] == [
        "ollama@ollama.service", "ollama@ollama_research.service", "vllm@vllm.service"]
    research = instances["ollama_research"]["environment"]
    assert research["OLLAMA_HOST"] == "127.0.0.1:11435"
    assert research["OLLAMA_MODELS"] == MODELS
    assert instances["ollama"]["environment"]["OLLAMA_MODELS"] == MODELS
    assert research["CUDA_VISIBLE_DEVICES"] == "GPU-0001"
    vllm = instances["vllm"]["environment"]
    assert (vllm["VLLM_PORT"], vllm["VLLM_GPU_MEMORY_UTILIZATION"], vllm["VLLM_EXTRA_ARGS"]) == \
        ("8000", "0.41", "")
    assert vllm["CUDA_VISIBLE_DEVICES"] == "GPU-0001"
    assert all(re.match(r"^[A-Z_]+=\S*$", line) for i in instances.values()
               for line in i["env_lines"])


def test_systemd_cpu_profile_forces_cpu():
    (instance,) = _render.systemd_instances(make_plan(profile="cpu"))
    assert instance["environment"]["CUDA_VISIBLE_DEVICES"] == "-1"


def test_systemd_index_selection_sets_pci_bus_order():
    services = _render.placement_input(CATALOG, "single-gpu", "ollama", EXTRA, TWO_GPUS)
    placement = place(TWO_GPUS, services, visible_devices_by="index")
    plan = _render.plan(CATALOG, placement, TWO_GPUS, "single-gpu", "ollama", EXTRA)
    (instance,) = _render.systemd_instances(plan)
    assert instance["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert instance["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # ...and a container never gets the host index.
    overlay = _render.compose_document(plan, "gpu")["services"]["ollama"]
    assert "CUDA_VISIBLE_DEVICES" not in overlay.get("environment", {})


# ---- Kubernetes ----------------------------------------------------------------------------

def test_k8s_dedicated_node_for_vllm_as_seed_002():
    manifests = _render.k8s_manifests(
        make_plan(mode="vllm"), node_placement={"vllm": {"nodes": ["khelben"],
                                                         "dedicated": "vllm"}})
    by_service = {m["service"]: m for m in manifests}
    assert list(by_service) == ["ollama", "vision", "vllm", "docling"]
    deployment, service = by_service["vllm"]["documents"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert {"key": "dedicated", "operator": "Equal", "value": "vllm",
            "effect": "NoSchedule"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["khelben"]
    assert "CUDA_VISIBLE_DEVICES" not in str(pod)
    assert service["spec"]["ports"][0]["port"] == 8000
    docling = by_service["docling"]["documents"][0]["spec"]["template"]["spec"]
    assert "resources" not in docling["containers"][0] and "tolerations" not in docling
    assert by_service["ollama"]["documents"][1]["metadata"]["name"] == "ollama"


def test_example_inventory_catalog_is_valid():
    path = REPO / "inventory/examples/group_vars/all/services.yml"
    example = yaml.safe_load(path.read_text().replace("{{ services_models_dir }}", MODELS))
    checked = _render.check_catalog(example["services_catalog"], example["services_extra_profiles"])
    assert _render.compose_profiles(checked["vllm"]) == ["dual-gpu-vllm", "dual-gpu-mixed"]
