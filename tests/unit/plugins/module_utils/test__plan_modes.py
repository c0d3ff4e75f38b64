# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Modes in the one catalog: the dual-GPU modes and the listed (exclusive) modes."""

from __future__ import annotations

import copy

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import REPO, TWO_GPUS, default_catalog, gpu

CATALOG, EXTRA = default_catalog()
MODES = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text())["services_modes"]
ONE_GB10 = [dict(gpu(0, total=124610), name="NVIDIA GB10")]


def planned(mode, gpus, profile="auto", catalog=None, modes=None, dual=None):
    catalog = copy.deepcopy(catalog or CATALOG)
    modes = MODES if modes is None else modes
    checked = _plan.check_catalog(catalog, EXTRA)
    chosen = _plan.resolve_mode(mode, modes, checked)
    placement = _plan.place_in_two_passes(catalog, profile, chosen, EXTRA, gpus,
                                          lambda services: place(gpus, services))
    return _plan.plan(catalog, placement, gpus, profile, mode, EXTRA, None, None, modes, dual)


def active(plan):
    return [s["name"] for s in plan["services"] if s["active"]]


def where(plan, name):
    service = next(s for s in plan["services"] if s["name"] == name)
    return None if service["placement"] is None else service["placement"]["gpu_index"]


@pytest.mark.parametrize(("mode", "gpus", "services", "profiles"), [
    ("chat", ONE_GB10, ["ollama"], ["chat"]),
    ("ingestion", ONE_GB10, ["vllm", "docling"], ["ingestion"]),
    ("chat", TWO_GPUS, ["ollama"], ["chat"]),
    ("ingestion", TWO_GPUS, ["vllm", "docling"], ["ingestion"]),
    ("vllm", TWO_GPUS, ["ollama", "vision", "vllm", "docling"], ["dual-gpu", "dual-gpu-vllm"]),
    ("vllm", ONE_GB10, ["ollama", "vision", "docling"], ["single-gpu"]),
])
def test_a_mode_runs_its_services_under_its_compose_profiles(mode, gpus, services, profiles):
    plan = planned(mode, gpus)
    assert active(plan) == services
    assert plan["compose_profiles"] == profiles
    assert plan["mode"]["name"] == mode
    assert plan["mode"]["exclusive"] is (mode in ("chat", "ingestion"))


def test_a_listed_mode_places_by_the_strategy_not_by_gpu_numbers():
    """vLLM's `gpu: 1` is the dual-GPU layout's: on a one-GPU box ingestion still runs it."""
    plan = planned("ingestion", ONE_GB10)
    assert where(plan, "vllm") == 0
    assert plan["summary"][1] == "mode ingestion (exclusive): vllm, docling"
    pinned = copy.deepcopy(CATALOG)
    pinned["vllm"]["gpu"] = "GPU-0001"
    assert where(planned("ingestion", TWO_GPUS, catalog=pinned), "vllm") == 1


def test_every_service_carries_the_compose_profile_of_each_listed_mode_naming_it():
    services = {s["name"]: s["compose_profiles"] for s in planned("chat", TWO_GPUS)["services"]}
    assert "chat" in services["ollama"] and "chat" not in services["vision"]
    assert "ingestion" in services["vllm"] and "ingestion" in services["docling"]
    assert "ingestion" not in services["ollama"]


@pytest.mark.parametrize(("dual", "want"), [(None, "ollama"), ("mixed", "mixed")])
def test_a_listed_mode_keeps_the_dual_gpu_mode_recorded_beside_it(dual, want):
    assert planned("ingestion", TWO_GPUS, dual=dual)["dual_gpu_mode"] == want
    assert planned("vllm", TWO_GPUS, dual=dual)["dual_gpu_mode"] == "vllm"


def test_without_modes_only_the_dual_gpu_modes_exist():
    assert list(_plan.check_modes(None, {})) == ["ollama", "vllm", "mixed"]
    with pytest.raises(ValueError, match="services_mode must be one of ollama, vllm, mixed, "
                                         "chat, ingestion; got: 'chatty'"):
        planned("chatty", TWO_GPUS)


@pytest.mark.parametrize(("modes", "message"), [
    ([], "services_modes must be a dict of mode name: definition; got: []"),
    ({"Chat": {"services": ["ollama"]}}, "services_modes has a bad mode name"),
    ({"dual-gpu": {"services": ["ollama"]}}, "not a profile's name); got: 'dual-gpu'"),
    ({"multi-gpu-x": {"services": ["ollama"]}}, "got: 'multi-gpu-x'"),
    ({"chat": "ollama"}, "services_modes.chat must be a dict (description, exclusive, "
                         "services); got: 'ollama'"),
    ({"chat": {"services": ["ollama"], "sleep": True}},
     "services_modes.chat has unknown key(s): sleep"),
    ({"chat": {"services": []}}, "services_modes.chat.services must list the catalog services "
                                 "of the mode; got: []"),
    ({"chat": {}}, "services_modes.chat.services must list the catalog services"),
    ({"chat": {"services": ["ollama", "ollama"]}}, "services_modes.chat.services names ollama "
                                                   "twice"),
    ({"chat": {"services": ["ollama_spare"]}}, "services_modes.chat.services[0] is a "
                                               "per_spare_gpu template"),
    ({"chat": {"services": ["ollama"], "exclusive": "yes"}},
     "services_modes.chat.exclusive must be a boolean; got: 'yes'"),
    ({"chat": {"services": ["ollama"], "description": 3}},
     "services_modes.chat.description must be a string; got: 3"),
    ({"vllm": {"services": ["vllm"]}}, "services_modes.vllm: the dual-GPU mode vllm shares the "
                                       "GPUs"),
    ({"mixed": {"exclusive": True}}, "services_modes.mixed: the dual-GPU mode mixed"),
])
def test_bad_modes_fail_naming_the_field_and_value(modes, message):
    with pytest.raises(ValueError) as error:
        _plan.check_modes(modes, _plan.check_catalog(copy.deepcopy(CATALOG), EXTRA))
    assert message in str(error.value)


def test_two_services_of_a_mode_on_one_host_port_fail():
    catalog = copy.deepcopy(CATALOG)
    catalog["docling"].update(ports=[{"host": 8000, "container": 5001}], profiles=["remote"])
    with pytest.raises(ValueError, match=r"services_modes.ingestion: services_catalog.docling."
                                         r"ports\[0\] publishes host port 8000, as "
                                         r"services_catalog.vllm.ports\[0\] does"):
        _plan.check_modes(MODES, _plan.check_catalog(catalog, EXTRA))


def test_a_gpu_service_of_a_mode_under_the_cpu_profile_fails():
    with pytest.raises(ValueError, match=r"services_modes.ingestion.services names vllm, which "
                                         r"uses a GPU; profile cpu places no service on a GPU"):
        planned("ingestion", [], profile="cpu")


# ---- sleep: switched by sleeping, not by stopping ------------------------------------------

def with_sleep(*names):
    catalog = copy.deepcopy(CATALOG)
    for name in names:
        catalog[name]["sleep"] = True
    return catalog


@pytest.mark.parametrize(("gpus", "level"), [
    ([dict(ONE_GB10[0], memory_kind="unified")], 2), (TWO_GPUS, 1)])
def test_a_vllm_that_may_sleep_gets_sleep_mode_and_its_level_follows_the_memory(gpus, level):
    plan = planned("ingestion", gpus, catalog=with_sleep("vllm", "ollama"))
    vllm = next(s for s in plan["services"] if s["name"] == "vllm")
    assert vllm["sleep"] is True and vllm["sleep_level"] == level
    assert "--enable-sleep-mode" in vllm["placement"]["engine_args"]
    assert vllm["placement"]["budget_env"]["VLLM_SERVER_DEV_MODE"] == "1"
    ollama = next(s for s in plan["services"] if s["name"] == "ollama")
    assert ollama["sleep"] is True and ollama["sleep_level"] == 1  # Ollama unloads its models
    plain = next(s for s in planned("ingestion", gpus)["services"] if s["name"] == "vllm")
    assert plain["sleep_level"] is None
    assert "--enable-sleep-mode" not in plain["placement"]["engine_args"]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("docling", True, "services_catalog.docling.sleep is for GPU services of engine vllm (its "
                      "sleep mode) or ollama (its models unloaded); got: True for engine other"),
    ("vllm", "yes", "services_catalog.vllm.sleep must be a boolean; got: 'yes'"),
])
def test_sleep_only_for_engines_that_can(name, value, message):
    catalog = copy.deepcopy(CATALOG)
    catalog[name]["sleep"] = value
    with pytest.raises(ValueError) as error:
        _plan.check_catalog(catalog, EXTRA)
    assert str(error.value) == message


def test_a_mode_naming_services_the_catalog_lacks_fails_only_when_it_runs():
    """A catalog of one's own (one Ollama) with the default modes: chat and the dual-GPU
    modes plan; ingestion, which lists vllm and docling, fails naming the field."""
    catalog = {"ollama": copy.deepcopy(CATALOG["ollama"])}
    assert active(planned("ollama", ONE_GB10, catalog=catalog)) == ["ollama"]
    assert active(planned("chat", ONE_GB10, catalog=catalog)) == ["ollama"]
    with pytest.raises(ValueError) as error:
        planned("ingestion", ONE_GB10, catalog=catalog)
    assert str(error.value) == ("services_modes.ingestion.services[0] names no enabled entry of "
                                "services_catalog (ollama); got: 'vllm'")
    modes = {"chat": {"services": ["olama"]}}
    with pytest.raises(ValueError, match=r"services_modes.chat.services\[0\] names no enabled "
                                         r"entry of services_catalog"):
        planned("chat", TWO_GPUS, modes=modes)
