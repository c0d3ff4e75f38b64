# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The documents of one plan: compose files, gpu-assignments.yml, systemd instances.

The catalog, profiles, modes and the plan itself: test__plan.py; Kubernetes: test__k8s.py.
"""

from __future__ import annotations

import copy
import re

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _render
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import MODELS, TWO_GPUS, default_catalog, gpu, make_plan

CATALOG, EXTRA = default_catalog()


# ---- bad input: every message names the field and the value -------------------------------

# Every document checks its input with the one check of a plan.
BAD_PLAN = "services_plan must be the fact set by the gpufleet.inference.services role; got: %r"


@pytest.mark.parametrize("call", [
    lambda plan: _render.compose_document(plan, "base"),
    lambda plan: _render.gpu_assignments_document(plan, None, "2025-01-23T10:30:00Z"),
    _render.systemd_instances,
])
@pytest.mark.parametrize("plan", [None, {"services": []}, {"compose_profiles": []}])
def test_every_document_checks_the_plan(call, plan):
    with pytest.raises(ValueError) as error:
        call(plan)
    assert str(error.value) == BAD_PLAN % (plan,)


@pytest.mark.parametrize("call,message", [
    (lambda: _render.compose_document({"services": []}, "base"),
     "services_plan must be the fact set by the gpufleet.inference.services role; "
     "got: {'services': []}"),
    (lambda: _render.compose_document(make_plan(), "swarm"),
     "kind must be one of base, gpu, podman; got: 'swarm'"),
    (lambda: _render.systemd_instances(make_plan(), models_dir="models"),
     "systemd_units_models_dir must be an absolute path; got: 'models'"),
    (lambda: _render.systemd_instances(make_plan(), bind_address="0.0.0.0.0"),
     "systemd_units_bind_address must be an IP address to listen on (127.0.0.1 for this host "
     "only, 0.0.0.0 for every interface); got: '0.0.0.0.0'"),
    (lambda: _render.gpu_assignments_document(make_plan(), None, None),
     "now must be a timestamp like 2025-01-23T10:30:00Z; got: None"),
])
def test_bad_options_name_field_and_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


# ---- compose ----------------------------------------------------------------

def by_name(plan):
    return {s["name"]: s for s in plan["services"]}


def _sidecar_vision(catalog):
    """vision as a sidecar of its own image on GPU 0 (engine other), not an Ollama server."""
    catalog["vision"] = dict(
        catalog["vision"], engine="other", image="example/vision:1", model="moondream2",
        ports=[{"host": 8002, "container": 8002}], volumes=[], environment={},
        health={"path": "/health", "port": 8002})


def test_compose_base_has_every_service_with_its_profiles():
    doc = _render.compose_document(make_plan(), "base", project="gpufleet")
    assert doc["name"] == "gpufleet"
    # A per_spare_gpu entry is a template: only its replicas (multi-gpu) are services.
    assert list(doc["services"]) == [n for n, e in CATALOG.items() if not e.get("per_spare_gpu")]
    research = doc["services"]["ollama_research"]
    assert research["ports"] == [{"target": 11434, "published": "11435", "host_ip": "127.0.0.1",
                                  "protocol": "tcp"}]
    assert research["volumes"][0]["source"] == doc["services"]["ollama"]["volumes"][0]["source"]
    assert research["profiles"] == ["dual-gpu-ollama", "dual-gpu-mixed", "multi-gpu-ollama",
                                    "multi-gpu-mixed"]
    assert doc["services"]["vllm"]["command"] == [
        "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--port", "8000"]
    assert doc["services"]["finetune"]["restart"] == "no"


@pytest.mark.parametrize("mode", _plan.MODES)
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
    # vision is a second Ollama server on GPU 0: Ollama's knobs hold it to its budget.
    assert gpu_doc["services"]["vision"]["environment"] == {
        "OLLAMA_GPU_OVERHEAD": "20235419648", "OLLAMA_MAX_LOADED_MODELS": "1"}
    # A sidecar of another engine gets its budget as VRAM_BUDGET_MIB / VRAM_BUDGET_GB.
    sidecar = _render.compose_document(make_plan(mode=mode, change=_sidecar_vision), "gpu")
    assert sidecar["services"]["vision"]["environment"] == {
        "VRAM_BUDGET_MIB": "2315", "VRAM_BUDGET_GB": "2.3"}


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


# ---- gpu-assignments.yml --------------------------------------------------------

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
        "ollama@ollama.service", "ollama@vision.service", "ollama@ollama_research.service",
        "vllm@vllm.service"]
    research = instances["ollama_research"]["environment"]
    assert research["OLLAMA_HOST"] == "127.0.0.1:11435"
    assert research["OLLAMA_MODELS"] == MODELS
    assert instances["ollama"]["environment"]["OLLAMA_MODELS"] == MODELS
    assert research["CUDA_VISIBLE_DEVICES"] == "GPU-0001"
    vision = instances["vision"]["environment"]
    assert (vision["OLLAMA_HOST"], vision["OLLAMA_MODELS"], vision["DEFAULT_OLLAMA_MODEL"],
            vision["CUDA_VISIBLE_DEVICES"]) == (
        "127.0.0.1:8002", MODELS, "moondream:latest", "GPU-0000")
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
    services = _plan.placement_input(CATALOG, "single-gpu", "ollama", EXTRA, TWO_GPUS)
    placement = place(TWO_GPUS, services, visible_devices_by="index")
    plan = _plan.plan(CATALOG, placement, TWO_GPUS, "single-gpu", "ollama", EXTRA)
    instances = _render.systemd_instances(plan)
    assert [i["unit"] for i in instances] == ["ollama@ollama.service", "ollama@vision.service"]
    for instance in instances:
        assert instance["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert instance["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # ...and a container never gets the host index.
    overlays = _render.compose_document(plan, "gpu")["services"]
    assert list(overlays) == ["ollama", "vision"]
    for overlay in overlays.values():
        assert "CUDA_VISIBLE_DEVICES" not in overlay.get("environment", {})


# ---- values as they come: '$' and '%' stay literal in every runtime --------------------------

HOSTILE = {"PASSWORD": "pa$word", "WHERE": "${HOME}", "SHARE": "100%"}


def hostile_plan(mode="vllm"):
    def change(catalog):
        catalog["vllm"]["environment"] = dict(HOSTILE)
        catalog["vllm"]["command"] = ["--api-key=pa$word", "--served-model-name=${HOME}"]
        catalog["vllm"]["entrypoint"] = ["/bin/run$1", "100%"]
        catalog["vllm"]["volumes"] = [{"source": "/srv/$data", "target": "/data/${HOME}"}]
    return make_plan("dual-gpu", mode, change=change)


def test_compose_escapes_every_dollar_of_a_user_value():
    """Compose interpolates '$' in the whole file: '$$' is its one literal '$'."""
    base = _render.compose_document(hostile_plan(), "base")["services"]["vllm"]
    assert base["environment"] == {"PASSWORD": "pa$$word", "WHERE": "$${HOME}", "SHARE": "100%",
                                   "HF_HUB_OFFLINE": "1"}
    assert base["command"][-2:] == ["--api-key=pa$$word", "--served-model-name=$${HOME}"]
    assert base["entrypoint"] == ["/bin/run$$1", "100%"]
    assert base["volumes"][0]["source"] == "/srv/$$data"
    assert base["volumes"][0]["target"] == "/data/$${HOME}"
    overlay = _render.compose_document(hostile_plan(), "gpu")["services"]["vllm"]
    assert "--api-key=pa$$word" in overlay["command"]


@pytest.mark.parametrize("value, line", [
    ("pa$word", 'X="pa\\$word"'),
    ("${HOME}", 'X="\\${HOME}"'),
    ("100%", "X=100%"),
    ("say `id`", 'X="say \\`id\\`"'),
])
def test_systemd_environment_file_keeps_dollar_literal(value, line):
    """EnvironmentFile= never expands '%'; '\\$' and '\\`' keep '$' and '`' in double quotes
    (systemd.exec(5), EnvironmentFile=)."""
    plan = make_plan("dual-gpu", "vllm",
                     change=lambda c: c["vllm"].update(environment={"X": value}))
    (instance,) = [i for i in _render.systemd_instances(plan) if i["service"] == "vllm"]
    assert instance["environment"]["X"] == value
    assert line in instance["env_lines"]


@pytest.mark.parametrize("key, value, bad", [
    ("ollama_bin", "/opt/o$x/ollama", "$"),
    ("vllm_bin", "/opt/vllm\nExecStartPre=+/bin/sh", "\n"),
    ("models_dir", "/srv/models;x", ";"),
    ("env_dir", "/etc/%i", "%"),
    ("hf_home", "/srv/../etc", ".."),
])
def test_systemd_unit_refuses_a_path_systemd_reads_specially(key, value, bad):
    """systemd expands $VAR and %-specifiers, splits on whitespace and starts a new unit line at
    a newline: the renderer refuses such a path itself (the role's preflight does it first)."""
    options = {"user": "gpufleet", "group": "gpufleet", "env_dir": "/etc/gpufleet/instances",
               "models_dir": "/srv/models", "ollama_bin": "/usr/bin/ollama",
               "vllm_bin": "/usr/bin/vllm", "state_dir_name": "gpufleet",
               "hf_home": "/srv/hf", key: value}
    with pytest.raises(ValueError) as info:
        _render.systemd_unit("vllm" if key in ("vllm_bin", "hf_home") else "ollama", options)
    assert str(info.value).startswith("%s must be an absolute path without whitespace" % key)
    assert str(info.value).endswith("(%r is not allowed)" % bad if bad != ".." else
                                    "('..' is not allowed)")
