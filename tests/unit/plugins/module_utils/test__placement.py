# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess
import sys

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._placement import (
    STRATEGIES,
    gb,
    place,
    place_fleet,
)

FIXTURES = pathlib.Path(__file__).parents[3] / "unit" / "fixtures" / "placement"
SEED_GPUS = json.loads((FIXTURES / "seed001_gpus.json").read_text())
SEED_SERVICES = json.loads((FIXTURES / "seed001_services.json").read_text())
A5500, A400 = SEED_GPUS[0]["uuid"], SEED_GPUS[1]["uuid"]


def gpu(index, total, used=0, **extra):
    fact = {
        "index": index, "uuid": "GPU-%04d" % index, "name": "GPU%d" % index,
        "vendor": "nvidia", "memory_total_mib": total, "memory_used_mib": used,
        "memory_free_mib": total - used, "compute_capability": "8.6", "power_limit_w": 300.0,
        "mig_mode": None, "mig_devices": [], "processes": [], "healthy": True, "errors": [],
    }
    fact.update(extra)
    return fact


def where(result):
    return {a["service"]: a["gpu"] for a in result["assignments"]}


def codes(result):
    return [issue["code"] for issue in result["issues"]]


def seed(strategy, **options):
    options.setdefault("live_usage", "ignore")
    return place(copy.deepcopy(SEED_GPUS), copy.deepcopy(SEED_SERVICES), strategy=strategy,
                 **options)


# ---- seed 001's reference case, every strategy ---------------------------------------------

SEED_EXPECTED = {
    # Largest first onto the most free: the LLM takes GPU 0; the 6.8 GB zoo fits nowhere and
    # goes where it overflows least (GPU 1, cut to 3.5 GB); the rest fill GPU 0, then spill.
    "vram_based": ({"ai-llm": "0", "ai-yolo26": "1", "ai-florence": "0", "ai-clip": "0",
                    "ai-enrichment": "1"},
                   ["budget_exceeds_gpu", "combined_exceeds_gpu", "combined_exceeds_gpu"]),
    "manual": ({"ai-llm": "0", "ai-yolo26": "1", "ai-florence": "0", "ai-clip": "0",
                "ai-enrichment": "1"},
               ["unpinned_in_manual", "budget_exceeds_gpu"] + ["unpinned_in_manual"] * 4
               + ["combined_exceeds_gpu"] * 2),
    # Seed 001: "ai-yolo26 + ai-llm on GPU 0, others distributed".
    "latency_optimized": ({"ai-llm": "0", "ai-yolo26": "0", "ai-florence": "1", "ai-clip": "1",
                           "ai-enrichment": "1"},
                          ["budget_exceeds_gpu", "combined_exceeds_gpu"]),
    # Seed 001: "ai-llm alone on largest GPU, everything else shares remaining": the LLM
    # alone on GPU 0; the four others share GPU 1 and overcommit it (warned), since no layout
    # fits every service.
    "isolation_first": ({"ai-llm": "0", "ai-yolo26": "1", "ai-florence": "1", "ai-clip": "1",
                         "ai-enrichment": "1"},
                        ["budget_exceeds_gpu", "combined_exceeds_gpu"]),
    "balanced": ({"ai-llm": "0", "ai-yolo26": "1", "ai-florence": "0", "ai-clip": "0",
                  "ai-enrichment": "1"},
                 ["budget_exceeds_gpu", "combined_exceeds_gpu", "combined_exceeds_gpu"]),
}


def test_every_strategy_has_a_reference_case():
    assert sorted(SEED_EXPECTED) == sorted(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seed001_reference_case(strategy):
    expected_where, expected_codes = SEED_EXPECTED[strategy]
    result = seed(strategy)
    assert where(result) == expected_where
    assert codes(result) == expected_codes
    enrichment = result["assignments"][4]
    assert enrichment["adjusted"] is True
    assert enrichment["vram_requested_mib"] == 6963
    assert enrichment["vram_budget_mib"] == 3582
    assert enrichment["engine_settings"] == {"VRAM_BUDGET_MIB": 3582, "VRAM_BUDGET_GB": "3.5"}
    # Seed 001's own warning sentence, word for word, then the detail.
    assert result["warnings"][codes(result).index("budget_exceeds_gpu")].startswith(
        "ai-enrichment VRAM budget (6.8 GB) exceeds GPU 1 (4 GB). Auto-adjusted to 3.5 GB")
    # Seed 001's config/gpu-assignments.yml shape.
    assert result["gpu_assignments"]["assignments"]["ai-enrichment"] == {
        "gpu": 1, "vram_budget": 3.5}
    assert result["gpu_assignments"]["assignments"]["ai-llm"]["vram_budget"] is None
    assert result["summary"]["fits"] is False  # seed 001's five services overcommit 28 GB


def test_seed001_with_live_usage_counts_foreign_memory():
    result = seed("vram_based", live_usage="account", managed_processes=["ollama"])
    gpus = {g["gpu"]: g for g in result["gpus"]}
    assert gpus["0"]["foreign_mib"] == 24564 - 5260 - 18974  # ollama's 18,974 MiB is ours
    assert gpus["1"]["foreign_mib"] == 329
    assert result["assignments"][4]["vram_budget_mib"] == 4094 - 512 - 329
    assert "Auto-adjusted to 3.2 GB (4094 MiB total - 512 MiB headroom - 329 MiB used by " \
           "other processes)" in result["warnings"][0]


def test_seed001_live_usage_without_managed_processes_leaves_the_llm_no_room():
    result = seed("vram_based", live_usage="account")
    assert "llm_on_small_gpu" in codes(result)
    assert result["assignments"][0]["adjusted"] is True


def test_seed001_manual_pins_as_in_the_seed_request():
    services = copy.deepcopy(SEED_SERVICES)
    for service, pin in zip(services, [0, "0", 0, "0", 1]):
        service["gpu"] = pin
    services[4]["vram_budget_mib"] = 3500  # seed 001's "vram_budget_override: 3.5", under 3,582
    result = place(copy.deepcopy(SEED_GPUS), services, strategy="manual", live_usage="ignore")
    assert where(result) == {"ai-llm": "0", "ai-yolo26": "0", "ai-florence": "0",
                             "ai-clip": "0", "ai-enrichment": "1"}
    assert all(a["pinned"] for a in result["assignments"])
    assert codes(result) == ["combined_exceeds_gpu"]
    assert result["warnings"][0].startswith(
        "Combined VRAM (~25 GB: ai-llm, ai-yolo26, ai-florence, ai-clip) exceeds GPU 0 "
        "capacity (24 GB")
    explanation = result["explanations"]["ai-enrichment"]
    assert "below the estimated need of 6963 MiB" in explanation["notes"][0]


# ---- strategies on small hand-made cases ---------------------------------------------------

def test_vram_based_largest_first_most_free_first():
    result = place([gpu(0, 16000), gpu(1, 24000)],
                   [{"name": "small", "vram_mib": 2000}, {"name": "big", "vram_mib": 12000},
                    {"name": "mid", "vram_mib": 8000}], strategy="vram_based")
    assert where(result) == {"big": "1", "mid": "0", "small": "1"}
    assert result["summary"]["fits"] is True
    assert result["warnings"] == []


@pytest.mark.parametrize(("strategy", "repaired"), [
    ("vram_based", True), ("manual", True), ("balanced", False)])  # balanced fits on its own
def test_memory_strategies_fall_back_to_best_fit_when_it_places_everything(strategy, repaired):
    # Most free first: 5000 -> GPU 1, 4000 -> GPU 0, 3000 -> 1, 3000 -> 0, and the last 3000
    # has 1,000 MiB left anywhere. Best fit: 5000 + 3000 on GPU 0, 4000 + 3000 + 3000 on GPU 1.
    gpus = [gpu(0, 8512), gpu(1, 10512)]
    services = [{"name": "s%d" % i, "vram_mib": size}
                for i, size in enumerate([4000, 5000, 3000, 3000, 3000])]
    result = place(gpus, services, strategy=strategy)
    assert result["summary"]["fits"] is True
    assert result["summary"]["repaired"] is repaired
    assert [g["budget_mib"] for g in result["gpus"]] == [8000, 10000]
    assert "budget_exceeds_gpu" not in codes(result)
    assert result["explanations"]["s1"]["rule"].startswith("best fit") is repaired


def test_latency_optimized_fastest_gpu_by_compute_capability_then_memory():
    gpus = [gpu(0, 24000, compute_capability="8.6"), gpu(1, 16000, compute_capability="8.9"),
            gpu(2, 24000, compute_capability="8.6", power_limit_w=100.0)]
    services = [{"name": "chat", "vram_mib": 6000, "engine": "ollama"},
                {"name": "detect", "vram_mib": 1000, "latency_critical": True},
                {"name": "batch", "vram_mib": 3000, "role": "embedding"}]
    result = place(gpus, services, strategy="latency_optimized")
    assert where(result) == {"chat": "1", "detect": "1", "batch": "0"}
    ranks = {g["gpu"]: g["speed_rank"] for g in result["gpus"]}
    assert ranks == {"1": 0, "0": 1, "2": 2}


def test_latency_optimized_warns_when_the_fastest_gpu_is_full():
    gpus = [gpu(0, 8000, compute_capability="9.0"), gpu(1, 24000, compute_capability="8.0")]
    services = [{"name": "a", "vram_mib": 7000, "latency_critical": True},
                {"name": "b", "vram_mib": 7000, "latency_critical": True}]
    result = place(gpus, services, strategy="latency_optimized")
    assert where(result) == {"a": "0", "b": "1"}
    assert codes(result) == ["latency_not_fastest"]


def test_isolation_first_gives_each_llm_its_own_largest_gpu():
    gpus = [gpu(0, 8000), gpu(1, 48000), gpu(2, 24000)]
    services = [{"name": "tts", "vram_mib": 2000, "role": "tts"},
                {"name": "llm-a", "vram_mib": 20000, "engine": "vllm"},
                {"name": "llm-b", "vram_mib": 10000, "engine": "ollama"},
                {"name": "stt", "vram_mib": 3000, "role": "stt"}]
    result = place(gpus, services, strategy="isolation_first")
    assert where(result) == {"llm-a": "1", "llm-b": "2", "stt": "0", "tts": "0"}
    assert result["warnings"] == []


def test_isolation_first_shares_when_there_are_more_llms_than_gpus():
    result = place([gpu(0, 24000)], [{"name": "a", "vram_mib": 5000, "role": "llm"},
                                     {"name": "b", "vram_mib": 5000, "role": "llm"}],
                   strategy="isolation_first")
    assert where(result) == {"a": "0", "b": "0"}
    assert codes(result) == ["isolation_not_kept"]


def test_balanced_evens_out_utilisation_better_than_vram_based():
    gpus = [gpu(0, 10512), gpu(1, 10512), gpu(2, 20512)]
    services = [{"name": "s%d" % i, "vram_mib": size}
                for i, size in enumerate([7000, 6000, 5000, 4000, 4000, 3000, 1000])]
    balanced = place(gpus, services, strategy="balanced")
    greedy = place(gpus, services, strategy="vram_based")
    assert balanced["summary"]["fits"] and greedy["summary"]["fits"]
    assert balanced["summary"]["utilization_stddev"] < greedy["summary"]["utilization_stddev"]
    # 30,000 MiB over 10,000 + 10,000 + 20,000 usable: 7,000 / 8,000 / 15,000 is the best
    # split the sizes allow (utilisation 0.70, 0.80, 0.75).
    assert balanced["summary"]["utilization_stddev"] == 0.0408


def test_balanced_local_search_fixes_what_greedy_cannot():
    # Greedy by utilisation: 5000 | 4000, 3000 | 3000, 3000 -> 8,000 vs 10,000; one swap
    # (3000 <-> 4000) gives 9,000 each.
    gpus = [gpu(0, 10512), gpu(1, 10512)]
    services = [{"name": "s%d" % i, "vram_mib": size}
                for i, size in enumerate([5000, 4000, 3000, 3000, 3000])]
    result = place(gpus, services, strategy="balanced")
    assert [g["budget_mib"] for g in result["gpus"]] == [9000, 9000]
    assert result["summary"]["utilization_stddev"] == 0.0
    assert result["summary"]["balance_moves"] == 1
    assert any("to even out utilisation" in note
               for e in result["explanations"].values() for note in e["notes"])


# ---- warnings, each at least once ----------------------------------------------------------

def test_budget_above_a_gpu_is_cut_to_usable_and_said():
    result = place([gpu(0, 4094)], [{"name": "zoo", "vram_mib": 6963, "gpu": 0}])
    assert result["assignments"][0]["vram_budget_mib"] == 3582
    assert result["warnings"] == [
        "zoo VRAM budget (6.8 GB) exceeds GPU 0 (4 GB). Auto-adjusted to 3.5 GB (4094 MiB "
        "total - 512 MiB headroom); some models may not load."]


def test_budget_above_usable_but_below_total_is_cut_too():
    result = place([gpu(0, 4094)], [{"name": "zoo", "vram_mib": 4000}])
    assert result["assignments"][0]["vram_budget_mib"] == 3582
    assert "exceeds what GPU 0 (4 GB) has left for it" in result["warnings"][0]


def test_llm_on_small_gpu_names_the_larger_one():
    gpus = [gpu(0, 24564), gpu(1, 4094)]
    result = place(gpus, [{"name": "ai-llm", "model": "nemotron-3-nano:30b", "engine": "ollama",
                           "gpu": 1}])
    assert codes(result) == ["budget_exceeds_gpu", "llm_on_small_gpu"]
    assert result["warnings"][1] == (
        "ai-llm: nemotron-3-nano:30b requires ~21.7 GB, GPU 1 only has 3.5 GB; GPU 0 (23.5 GB) "
        "is larger.")


@pytest.mark.parametrize(("pin", "problem"), [
    (7, "which does not exist (GPUs: 0, 1)"),
    ("GPU-does-not-exist", "which does not exist (GPUs: 0, 1)"),
    ("3:1", "which does not exist (GPUs: 0, 1)"),
])
def test_pin_to_a_missing_gpu_falls_back_and_says_so(pin, problem):
    result = place([gpu(0, 8000), gpu(1, 24000)], [{"name": "svc", "vram_mib": 1000,
                                                    "gpu": pin}])
    assert where(result) == {"svc": "1"}
    assert result["assignments"][0]["fallback"] is True
    assert result["warnings"] == ["svc is pinned to GPU %s, %s; fell back to GPU 1 (GPU1)."
                                  % (pin, problem)]


def test_pin_to_an_unhealthy_gpu_falls_back():
    gpus = [gpu(0, 24000, healthy=False, errors=["GPU is lost"]), gpu(1, 8000)]
    result = place(gpus, [{"name": "svc", "vram_mib": 1000, "gpu": 0}])
    assert where(result) == {"svc": "1"}
    assert result["warnings"] == [
        "GPU 0 (GPU0, uuid GPU-0000) is unhealthy and left out of placement: GPU is lost.",
        "svc is pinned to GPU 0, which cannot take services (unhealthy: GPU is lost); fell back "
        "to GPU 1 (GPU1)."]
    assert result["gpus"][0]["reason"] == "unhealthy: GPU is lost"


@pytest.mark.parametrize("pin", [1, "1", "GPU-0001", "gpu-0001", " 1 "])
def test_pins_by_index_or_uuid(pin):
    result = place([gpu(0, 24000), gpu(1, 8000)], [{"name": "svc", "vram_mib": 1000,
                                                    "gpu": pin}], strategy="balanced")
    assert where(result) == {"svc": "1"}
    assert result["assignments"][0]["pinned"] is True
    assert result["explanations"]["svc"]["rule"] == "pinned to GPU 1 by its gpu field"


def test_compute_capability_too_low_is_avoided_then_warned():
    gpus = [gpu(0, 24000, compute_capability="6.1"), gpu(1, 8000, compute_capability="8.0")]
    avoided = place(gpus, [{"name": "v", "vram_mib": 1000, "engine": "vllm",
                            "min_compute_capability": "7.0"}])
    assert where(avoided) == {"v": "1"}
    assert avoided["explanations"]["v"]["rejected"] == [
        {"gpu": "GPU 0", "reason": "compute capability 6.1 < 7.0 required"}]
    forced = place(gpus[:1], [{"name": "v", "vram_mib": 1000, "min_compute_capability": 7}])
    assert codes(forced) == ["compute_capability_too_low"]
    assert forced["warnings"][0] == "v needs compute capability 7.0; GPU 0 (GPU0) has 6.1."


def test_compute_capability_unknown_is_warned():
    result = place([gpu(0, 8000, compute_capability=None)],
                   [{"name": "v", "vram_mib": 1000, "min_compute_capability": "8.0"}])
    assert codes(result) == ["compute_capability_unknown"]


def test_exclusive_service_gets_a_gpu_of_its_own():
    gpus = [gpu(0, 24000), gpu(1, 24000)]
    services = [{"name": "a", "vram_mib": 1000}, {"name": "b", "vram_mib": 1000},
                {"name": "solo", "vram_mib": 500, "exclusive": True}]
    result = place(gpus, services)
    assert where(result) == {"solo": "0", "a": "1", "b": "1"}
    assert result["warnings"] == []
    squeezed = place(gpus[:1], services)
    assert codes(squeezed) == ["exclusive_not_possible", "exclusive_not_possible"]


def test_unplaced_when_no_gpu_can_take_a_service():
    result = place([gpu(0, 8000, healthy=False, errors=["Xid 79"])],
                   [{"name": "svc", "vram_mib": 100}])
    assert result["assignments"][0]["gpu"] is None
    assert result["summary"]["unplaced"] == ["svc"]
    assert result["warnings"] == [
        "GPU 0 (GPU0, uuid GPU-0000) is unhealthy and left out of placement: Xid 79.",
        "svc was not placed: no GPU can take it (GPU 0: unhealthy: Xid 79)."]


def test_no_gpus_at_all():
    result = place([], [{"name": "svc", "vram_mib": 100}])
    assert codes(result) == ["unplaced"]
    assert "no GPU at all" in result["warnings"][0]


def test_headroom_and_reserve_per_gpu():
    result = place([gpu(0, 10000), gpu(1, 10000)], [{"name": "s", "vram_mib": 100}],
                   headroom_mib=1000, reserve_mib={"GPU-0000": 2000, 1: 500})
    usable = {g["gpu"]: g["usable_mib"] for g in result["gpus"]}
    assert usable == {"0": 7000, "1": 8500}
    assert where(result) == {"s": "1"}


# ---- engine settings and visible devices ---------------------------------------------------

def test_seed000_mixed_mode_vllm_and_ollama_share_gpu1():
    gpus = [gpu(0, 24564), gpu(1, 24564)]
    services = [
        {"name": "ollama", "model": "llama3.2:3b", "engine": "ollama", "gpu": 0},
        {"name": "vision", "model": "moondream2", "gpu": 0},
        {"name": "ollama_research", "model": "llama3.2:3b", "engine": "ollama", "gpu": 1},
        {"name": "vllm", "engine": "vllm", "vram_mib": 12288, "gpu": 1, "context_length": 8192},
    ]
    result = place(gpus, services, strategy="manual")
    by_name = {a["service"]: a for a in result["assignments"]}
    vllm = by_name["vllm"]
    assert vllm["engine_settings"] == {"gpu_memory_utilization": 0.5, "max_model_len": 8192}
    research = by_name["ollama_research"]["engine_settings"]
    # Its server starts before vLLM, but its model loads after vLLM took its share: what is free
    # then, less its own budget, is reserved from Ollama's view.
    assert research["OLLAMA_GPU_OVERHEAD"] == (
        24564 - 12288 - research_budget(by_name)) * 1048576
    assert research["OLLAMA_KEEP_ALIVE"] == "-1"
    assert research["OLLAMA_MAX_LOADED_MODELS"] == 1
    gpu1 = result["gpus"][1]
    assert gpu1["start_order"] == ["ollama_research", "vllm"]
    assert result["warnings"] == []
    assert any("vLLM starts last" in note for note in result["explanations"]["vllm"]["notes"])


def research_budget(by_name):
    return by_name["ollama_research"]["vram_budget_mib"]


def test_vllm_utilization_is_rounded_down_and_the_start_rule_checked():
    gpus = [gpu(0, 24564, used=4000)]
    ok = place(gpus, [{"name": "v", "engine": "vllm", "vram_mib": 10000}])
    assert ok["assignments"][0]["engine_settings"]["gpu_memory_utilization"] == 0.40
    assert ok["warnings"] == []
    # 20,000 MiB asked: usable is 24,564 - 512 - 4,000, cut to 20,052 -> 0.81 x 24,564 free?
    crowded = place(gpus, [{"name": "v", "engine": "vllm", "vram_mib": 20000},
                           {"name": "o", "engine": "other", "vram_mib": 1000}],
                    strategy="manual")
    assert "vllm_start_rule" in codes(crowded)
    message = crowded["warnings"][codes(crowded).index("vllm_start_rule")]
    assert message.startswith("v: vLLM starts only when free memory >= gpu_memory_utilization "
                              "x total (0.81 x 24564 = 19897 MiB), but GPU 0 will have 19564 "
                              "MiB free when it starts")


def test_ollama_alone_may_use_the_whole_gpu():
    result = place([gpu(0, 24564)], [{"name": "o", "model": "qwen2.5:7b", "engine": "ollama",
                                      "context_length": 8192, "parallel": 2}])
    assert result["assignments"][0]["engine_settings"] == {
        "OLLAMA_GPU_OVERHEAD": 512 * 1048576, "OLLAMA_CONTEXT_LENGTH": 8192,
        "OLLAMA_NUM_PARALLEL": 2}


@pytest.mark.parametrize(("by", "vendor", "env"), [
    ("uuid", "nvidia", {"CUDA_VISIBLE_DEVICES": "GPU-0001"}),
    ("index", "nvidia", {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ("uuid", "amd", {"ROCR_VISIBLE_DEVICES": "GPU-0001"}),
    ("index", "intel", {"ZE_AFFINITY_MASK": "1"}),
])
def test_visible_devices(by, vendor, env):
    gpus = [gpu(0, 8000, vendor=vendor), gpu(1, 24000, vendor=vendor)]
    result = place(gpus, [{"name": "s", "vram_mib": 100}], visible_devices_by=by)
    assert result["assignments"][0]["environment"] == env
    assert result["assignments"][0]["device_id"] == next(iter(env.values()))


def test_missing_uuid_falls_back_to_index_with_pci_order():
    result = place([gpu(0, 8000, uuid=None)], [{"name": "s", "vram_mib": 100}])
    assert result["assignments"][0]["environment"] == {
        "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert codes(result) == ["no_uuid"]


def test_mig_devices_are_placeable_slices():
    migs = [{"index": 0, "uuid": "MIG-aaaa", "name": "3g.40gb", "memory_total_mib": 40192,
             "memory_free_mib": 40192},
            {"index": 1, "uuid": "MIG-bbbb", "name": "1g.10gb", "memory_total_mib": 9984,
             "memory_free_mib": 9984}]
    gpus = [gpu(0, 81559, mig_mode="Enabled", mig_devices=migs)]
    services = [{"name": "big", "vram_mib": 30000}, {"name": "small", "vram_mib": 4000},
                {"name": "pinned", "vram_mib": 100, "gpu": "0:1"}]
    result = place(gpus, services)
    assert where(result) == {"big": "0:0", "small": "0:0", "pinned": "0:1"}
    assert result["assignments"][0]["environment"] == {"CUDA_VISIBLE_DEVICES": "MIG-aaaa"}
    assert result["gpus"][0]["placeable"] is False
    assert result["gpu_assignments"]["assignments"]["pinned"]["gpu"] == "0:1"
    pinned_parent = place(gpus, [{"name": "p", "vram_mib": 100, "gpu": 0}])
    assert codes(pinned_parent) == ["pin_not_found"]
    assert "MIG mode is enabled" in pinned_parent["warnings"][0]


# ---- explanations and determinism ----------------------------------------------------------

def test_explanations_say_why_and_why_not():
    result = place([gpu(0, 8000), gpu(1, 24000, healthy=False, errors=["lost"]), gpu(2, 4000)],
                   [{"name": "s", "vram_mib": 6000}])
    explanation = result["explanations"]["s"]
    assert explanation["gpu"] == "GPU 0"
    assert explanation["rule"].startswith("the unit with the most free memory")
    assert explanation["remaining_before_mib"] == 7488
    assert explanation["rejected"] == [
        {"gpu": "GPU 2", "reason": "not enough room: needs 6000 MiB, 3488 MiB left"},
        {"gpu": "GPU 1", "reason": "unhealthy: lost"},
    ]
    assert explanation["rejected_total"] == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_input_same_output_whatever_the_gpu_order(strategy):
    gpus = [gpu(i, size) for i, size in enumerate([24000, 8000, 16000, 16000])]
    services = [{"name": "s%02d" % i, "vram_mib": 500 + (i * 733) % 5000,
                 "role": "llm" if i % 5 == 0 else "other", "latency_critical": i % 3 == 0}
                for i in range(20)]
    first = json.dumps(place(gpus, services, strategy=strategy), sort_keys=True)
    again = json.dumps(place(list(reversed(gpus)), services, strategy=strategy), sort_keys=True)
    assert first == again


def test_big_fixture_places_in_a_stable_way():
    fleet = json.loads((FIXTURES / "fleet_seed002.json").read_text())
    result = place_fleet(fleet["hosts"], fleet["services"], strategy="balanced")
    assert {a["service"]: (a["host"], a["gpu"]) for a in result["assignments"]} == {
        "vllm": ("khelben", "0"), "whisper": ("elminster", "0"), "xtts": ("elminster", "0"),
        "bge-embeddings": ("drizzt", "0"), "bge-reranker": ("danilo", "0")}


# ---- fleet ---------------------------------------------------------------------------------

def fleet_hosts():
    return [
        {"name": "khelben", "gpus": [gpu(0, 65536, memory_kind="unified", vendor="amd")],
         "labels": {"gpu": "amd"}, "dedicated": ["vllm"]},
        {"name": "elminster", "gpus": [gpu(0, 8192, compute_capability="7.5")],
         "labels": {"gpu": "nvidia"}},
        {"name": "drizzt", "gpus": [gpu(0, 12288, vendor="amd")], "labels": {"gpu": "amd"}},
    ]


def test_fleet_dedicated_host_takes_only_its_engine_and_attracts_it():
    services = [{"name": "vllm", "engine": "vllm", "vram_mib": 40000},
                {"name": "whisper", "vram_mib": 3000, "node_selector": {"gpu": "nvidia"}},
                {"name": "bge", "vram_mib": 2000},
                {"name": "big-other", "vram_mib": 20000}]
    result = place_fleet(fleet_hosts(), services)
    placed = {a["service"]: (a["host"], a["gpu"]) for a in result["assignments"]}
    assert placed == {"vllm": ("khelben", "0"), "whisper": ("elminster", "0"),
                      "bge": ("elminster", "0"), "big-other": ("drizzt", "0")}
    assert result["summary"]["adjusted"] == ["big-other"]  # 20,000 MiB on a 12 GB host
    assert "host khelben is dedicated to vllm" in json.dumps(result["explanations"]["bge"])
    assert [a["service"] for a in result["by_host"]["khelben"]["assignments"]] == ["vllm"]
    assert result["assignments"][0]["environment"] == {"ROCR_VISIBLE_DEVICES": "GPU-0000"}


def test_fleet_host_pin_and_index_pin():
    services = [{"name": "s", "vram_mib": 100, "host": "elminster", "gpu": 0}]
    result = place_fleet(fleet_hosts(), services)
    assert result["assignments"][0]["host"] == "elminster"
    assert result["assignments"][0]["pinned"] is True
    assert result["gpu_assignments"]["assignments"]["s"] == {
        "host": "elminster", "gpu": 0, "vram_budget": None}


def test_fleet_unplaced_when_no_host_matches():
    result = place_fleet(fleet_hosts(), [{"name": "s", "vram_mib": 100,
                                          "node_selector": {"gpu": "intel"}}])
    assert codes(result) == ["unplaced"]


@pytest.mark.parametrize(("hosts", "services", "message"), [
    ("x", [], "hosts must be a list of {name, gpus, labels, dedicated}; got: 'x'"),
    ([{"name": "a", "gpus": []}, {"name": "a", "gpus": []}], [],
     "hosts[1].name duplicates hosts[0]; got: 'a'"),
    ([{"name": "a", "gpus": [], "dedicated": [3]}], [],
     "hosts[0].dedicated must be a list of engines, roles or service names; got: [3]"),
    ([{"name": "a", "gpus": [], "zone": 1}], [], "hosts[0] has unknown key(s): zone"),
    ([{"name": "a", "gpus": [{"index": "0"}]}], [],
     "hosts[0].gpus[0].index must be an integer >= 0; got: '0'"),
    ([{"name": "a", "gpus": []}], [{"name": "s", "vram_mib": 1, "gpu": 0}],
     "services[0].gpu is an index, which is ambiguous across hosts: give services[0].host too, "
     "or pin by UUID; got: 0"),
    ([{"name": "a", "gpus": []}], [{"name": "s", "vram_mib": 1, "host": "b"}],
     "services[0].host is not one of the hosts (a); got: 'b'"),
])
def test_fleet_bad_input(hosts, services, message):
    with pytest.raises(ValueError) as caught:
        place_fleet(hosts, services)
    assert str(caught.value) == message


# ---- bad input: every field, named with its value ------------------------------------------

GOOD = {"name": "s", "vram_mib": 100}


@pytest.mark.parametrize(("service", "message"), [
    ({"name": "s", "vram_mib": -5}, "services[1].vram_mib must be > 0; got: -5"),
    ({"name": "s", "vram_mib": "5"}, "services[1].vram_mib must be an integer; got: '5'"),
    ({"name": "s", "vram_mib": True}, "services[1].vram_mib must be an integer; got: True"),
    ({"name": "s", "vram_budget_mib": 0}, "services[1].vram_budget_mib must be > 0; got: 0"),
    ({"name": "s", "vram_mib": 1, "context_length": 0},
     "services[1].context_length must be > 0; got: 0"),
    ({"name": "s", "vram_mib": 1, "parallel": -1}, "services[1].parallel must be > 0; got: -1"),
    ({"name": "", "vram_mib": 1}, "services[1].name must be a non-empty string; got: ''"),
    ({"vram_mib": 1}, "services[1].name must be a non-empty string; got: None"),
    ({"name": "s0", "vram_mib": 1}, "services[1].name duplicates services[0]; got: 's0'"),
    ({"name": "s"}, "services[1] needs vram_mib, model or vram_budget_mib; got none of them"),
    ({"name": "s", "vram_mib": 1, "engine": "tgi"},
     "services[1].engine must be one of ollama, vllm, other; got: 'tgi'"),
    ({"name": "s", "vram_mib": 1, "role": ""},
     "services[1].role must be a non-empty string; got: ''"),
    ({"name": "s", "vram_mib": 1, "latency_critical": "yes"},
     "services[1].latency_critical must be a boolean; got: 'yes'"),
    ({"name": "s", "vram_mib": 1, "exclusive": 1},
     "services[1].exclusive must be a boolean; got: 1"),
    ({"name": "s", "vram_mib": 1, "gpu": -1},
     "services[1].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: -1"),
    ({"name": "s", "vram_mib": 1, "gpu": True},
     "services[1].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: True"),
    ({"name": "s", "vram_mib": 1, "gpu": [0]},
     "services[1].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: [0]"),
    # Digits of other scripts: str.isdigit() and int() take them, a GPU index does not.
    ({"name": "s", "vram_mib": 1, "gpu": "\u0661"},
     "services[1].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: '\u0661'"),
    ({"name": "s", "vram_mib": 1, "gpu": "\uff10"},
     "services[1].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: '\uff10'"),
    ({"name": "s", "vram_mib": 1, "gpu": "0:\u0660"},
     "services[1].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: '0:\u0660'"),
    ({"name": "s", "vram_mib": 1, "min_compute_capability": "sm_80"},
     "services[1].min_compute_capability must look like '8.0'; got: 'sm_80'"),
    ({"name": "s", "vram_mib": 1, "min_compute_capability": "\uff18.0"},
     "services[1].min_compute_capability must look like '8.0'; got: '\uff18.0'"),
    ({"name": "s", "model": "mystery"},
     "services[1].model is not in the model catalog and its name carries no parameter count "
     "(like ':7b'); add it with the catalog option or give vram_mib; got: 'mystery'"),
    ({"name": "s", "model": ""}, "services[1].model must be a non-empty string; got: ''"),
    ({"name": "s", "vram_mib": 1, "colour": "red"}, "services[1] has unknown key(s): colour"),
    ({"name": "s", "vram_mib": 1, "host": "a"},
     "services[1] has host or node_selector, which only place_fleet (the hosts option) uses; "
     "got: 'a'"),
    ({"name": "s", "vram_mib": 1, "node_selector": ["a"]},
     "services[1].node_selector must be a dict of label -> value; got: ['a']"),
    ("s", "services[1] must be a dict; got: 's'"),
])
def test_bad_service_fields(service, message):
    with pytest.raises(ValueError) as caught:
        place([gpu(0, 8000)], [{"name": "s0", "vram_mib": 1}, service])
    assert str(caught.value) == message


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strategy": "random"}, "strategy must be one of manual, vram_based, latency_optimized, "
                             "isolation_first, balanced; got: 'random'"),
    ({"headroom_mib": -1}, "headroom_mib must be an integer >= 0; got: -1"),
    ({"reserve_mib": {"0": -2}}, "reserve_mib['0'] must be an integer >= 0; got: -2"),
    ({"reserve_mib": [1]}, "reserve_mib must be a dict of GPU index or UUID -> MiB; got: [1]"),
    ({"live_usage": "maybe"}, "live_usage must be one of account, ignore; got: 'maybe'"),
    ({"managed_processes": "ollama"},
     "managed_processes must be a list of process name patterns; got: 'ollama'"),
    ({"visible_devices_by": "pci"}, "visible_devices_by must be one of uuid, index; got: 'pci'"),
    ({"catalog": [{"name": "m", "vram_mib": 0}]},
     "catalog[0].vram_mib must be an integer > 0; got: 0"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError) as caught:
        place([gpu(0, 8000)], [GOOD], **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(("gpus", "message"), [
    ("gpu0", "gpus must be a list of GPU facts; got: 'gpu0'"),
    ([3], "gpus[0] must be a dict; got: 3"),
    ([{"index": -1}], "gpus[0].index must be an integer >= 0; got: -1"),
    ([gpu(0, 100), gpu(0, 100)], "gpus[1].index duplicates gpus[0]; got: 0"),
    ([gpu(0, -100)], "gpus[0].memory_total_mib must be an integer >= 0 or null; got: -100"),
    ([gpu(0, 100, memory_used_mib="1 GiB")],
     "gpus[0].memory_used_mib must be an integer >= 0 or null; got: '1 GiB'"),
    ([gpu(0, 100, uuid=5)], "gpus[0].uuid must be a string or null; got: 5"),
    ([gpu(0, 100, healthy="yes")], "gpus[0].healthy must be a boolean; got: 'yes'"),
    ([gpu(0, 100, processes="none")], "gpus[0].processes must be a list; got: 'none'"),
    ([gpu(0, 100, mig_devices=[{"memory_total_mib": "x"}])],
     "gpus[0].mig_devices[0].memory_total_mib must be an integer >= 0 or null; got: 'x'"),
    ([gpu(0, 100, mig_devices=[{"index": None, "memory_total_mib": 50}])],
     "gpus[0].mig_devices[0].index must be an integer >= 0; got: None"),
    ([gpu(0, 100, mig_devices=[{"index": 1}, {"index": 1}])],
     "gpus[0].mig_devices[1].index duplicates gpus[0].mig_devices[0]; got: 1"),
    ([gpu(0, 100, vendor_index="0")],
     "gpus[0].vendor_index must be an integer >= 0 or null; got: '0'"),
    ([gpu(0, 100, healthy=False, errors="lost")],
     "gpus[0].errors must be a list of strings or null; got: 'lost'"),
])
def test_bad_gpu_facts(gpus, message):
    with pytest.raises(ValueError) as caught:
        place(gpus, [GOOD])
    assert str(caught.value) == message


def test_services_must_be_a_list():
    with pytest.raises(ValueError, match=r"^services must be a list; got: \{\}$"):
        place([], {})


def test_gb_formats_like_the_seeds():
    assert [gb(v) for v in (6963, 4094, 3582, 22221, 650)] == ["6.8", "4", "3.5", "21.7", "0.6"]


def test_the_benchmarks_quick_modes_run():
    """bench/run.py --quick: every benchmark's smoke mode, no lab, so none can rot (the full
    runs are `make bench`, not tests)."""
    root = pathlib.Path(__file__).parents[4]
    done = subprocess.run([sys.executable, str(root / "bench" / "run.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("placement", "switch", "facts"):
        assert re.search(r"^%s\s+rc 0 " % name, done.stdout, re.M), done.stdout
    assert "| balanced |" in done.stdout
    assert "| baseline: binpack |" in done.stdout
    assert "| seed's own layout | no fit, seed's layout |" in done.stdout
    assert "script 1 of 2 switches to ingestion" in done.stdout
    assert re.search(r"^\| collector nvidia-smi \| 2 \| \d+\.\d \|", done.stdout, re.M)
    assert "ERROR" not in done.stdout


# ---- hosts as they really are: lost GPUs, unknown memory, unknown live usage ---------------

LOST_ERROR = "nvidia-smi cannot open the GPU: Unable to determine the device handle: Unknown Error"


def lost(uuid="GPU-dead", bus="00000000:65:00.0"):
    """A GPU that fell off the bus, as the facts report it: no index, its errors."""
    return {"index": None, "uuid": uuid, "pci_bus_id": bus, "name": None, "vendor": "nvidia",
            "memory_total_mib": None, "memory_used_mib": None, "memory_free_mib": None,
            "mig_devices": [], "processes": [], "healthy": False, "errors": [LOST_ERROR]}


@pytest.mark.parametrize(("lost_gpu", "label"), [
    (lost(), "GPU 00000000:65:00.0 (uuid GPU-dead)"),
    (lost(bus=None), "GPU GPU-dead"),
    (lost(uuid=None, bus=None), "GPU #1"),
])
@pytest.mark.parametrize("fleet", [False, True])
def test_a_lost_gpu_is_left_out_and_named(lost_gpu, label, fleet):
    gpus = [gpu(0, 24000), lost_gpu, lost(uuid="GPU-gone", bus="00000000:66:00.0")]
    services = [{"name": "svc", "vram_mib": 1000}]
    if fleet:
        result = place_fleet([{"name": "h", "gpus": gpus}], services)
        label = "h " + label
    else:
        result = place(gpus, services)
    assert where(result) == {"svc": "0"}
    assert result["issues"][0] == {
        "code": "gpu_unhealthy", "service": None, "gpu": label.split(" (")[0],
        "message": "%s is unhealthy and left out of placement: %s." % (label, LOST_ERROR)}
    assert codes(result) == ["gpu_unhealthy", "gpu_unhealthy"]
    assert result["summary"]["warning_count"] == 2
    row = result["gpus"][1]
    assert (row["index"], row["gpu"], row["placeable"]) == (None, None, False)
    assert row["reason"] == "unhealthy: " + LOST_ERROR
    # A null index on a GPU that claims to be healthy is still bad input.
    for healthy in (True, None):
        with pytest.raises(ValueError) as caught:
            place([gpu(0, 24000), dict(lost_gpu, healthy=healthy)], services)
        assert str(caught.value) == "gpus[1].index must be an integer >= 0; got: None"


@pytest.mark.parametrize("pin_not_found", ["warn", "fail"])
def test_a_uuid_pin_to_a_lost_gpu_falls_back(pin_not_found):
    result = place([gpu(0, 24000), lost()], [{"name": "svc", "vram_mib": 1000,
                                             "gpu": "gpu-DEAD"}], pin_not_found=pin_not_found)
    assert where(result) == {"svc": "0"}
    assert result["warnings"][1] == (
        "svc is pinned to GPU gpu-DEAD, which cannot take services (unhealthy: %s); fell back "
        "to GPU 0 (GPU0)." % LOST_ERROR)


def test_a_host_with_a_lost_gpu_places_as_its_healthy_gpus_alone():
    result = place([*copy.deepcopy(SEED_GPUS), lost()], copy.deepcopy(SEED_SERVICES),
                   live_usage="ignore")
    assert where(result) == SEED_EXPECTED["vram_based"][0]
    assert codes(result) == ["gpu_unhealthy"] + SEED_EXPECTED["vram_based"][1]


def unknown_memory(index, **extra):
    return gpu(index, 0, memory_total_mib=None, memory_used_mib=None, memory_free_mib=None,
               **extra)


def test_a_gpu_of_unknown_memory_takes_only_its_pins_and_what_fits_nowhere_else():
    gpus = [gpu(0, 8000), unknown_memory(1)]
    services = [{"name": "free", "vram_mib": 1000},
                {"name": "pinned", "vram_mib": 60000, "engine": "vllm", "gpu": 1}]
    result = place(gpus, services)
    assert where(result) == {"free": "0", "pinned": "1"}
    assert result["assignments"][1]["pinned"] is True
    assert result["assignments"][1]["engine_settings"] == {}  # vLLM's own default, not 0 %
    assert codes(result) == ["memory_unknown", "memory_unknown"]
    assert result["warnings"] == [
        "GPU 1 memory size unknown: placement cannot check what fits on it; it takes the "
        "services pinned to it and those no other GPU has room for.",
        "GPU 1 memory size unknown: pinned (58.6 GB) is placed on it without a memory check "
        "and may not load."]
    assert result["summary"]["fits"] is False  # nothing claims a fit it cannot know
    # Unknown, not overcommitted: no made-up negative room either.
    assert result["summary"]["overcommitted_gpus"] == []
    assert result["summary"]["unknown_memory_gpus"] == ["GPU 1"]
    row = result["gpus"][1]
    assert (row["placeable"], row["total_mib"], row["usable_mib"]) == (True, None, 0)
    assert row["free_after_mib"] is None
    # An unpinned service goes there only when no other GPU has room.
    alone = place([unknown_memory(0)], [{"name": "s", "vram_mib": 1000}])
    assert where(alone) == {"s": "0"}
    assert codes(alone) == ["memory_unknown", "memory_unknown"]


@pytest.mark.parametrize(("facts", "live_usage", "warned"), [
    (dict(memory_used_mib=None, memory_free_mib=None), "account", True),
    (dict(memory_used_mib=None, memory_free_mib=None), "ignore", False),
    (dict(memory_used_mib=100, memory_free_mib=None), "account", False),
    (dict(memory_used_mib=None, memory_free_mib=7000), "account", False),
])
def test_unknown_live_usage_is_said(facts, live_usage, warned):
    result = place([gpu(0, 8000, **facts)], [{"name": "s", "vram_mib": 1000}],
                   live_usage=live_usage)
    expected = ["GPU 0 live memory use unknown (neither used nor free memory was read): "
                "counted as 0 MiB held by other processes."] if warned else []
    assert result["warnings"] == expected
    assert codes(result) == (["live_usage_unknown"] if warned else [])


def test_unknown_live_usage_of_a_mig_device_is_said():
    migs = [{"index": 0, "uuid": "MIG-aaaa", "name": "3g.40gb", "memory_total_mib": 40192,
             "memory_free_mib": None}]
    result = place([gpu(0, 81559, mig_mode="Enabled", mig_devices=migs)],
                   [{"name": "s", "vram_mib": 1000}])
    assert codes(result) == ["live_usage_unknown"]
    assert result["warnings"][0].startswith("GPU 0 MIG 0 live memory use unknown")


# ---- pins and indexes as they really come ----------------------------------------------------

def test_a_uuid_pin_matching_gpus_on_two_hosts_fails():
    hosts = [{"name": "a", "gpus": [gpu(0, 8000)]}, {"name": "b", "gpus": [gpu(0, 8000)]},
             {"name": "c", "gpus": [gpu(1, 8000)]}]
    with pytest.raises(ValueError) as caught:
        place_fleet(hosts, [{"name": "s", "vram_mib": 1, "gpu": "GPU-0000"}])
    assert str(caught.value) == (
        "services[0].gpu of s matches a GPU on more than one host (a, b): give services[0].host "
        "too; got: 'GPU-0000'")
    result = place_fleet(hosts, [{"name": "s", "vram_mib": 1, "gpu": "GPU-0000", "host": "b"}])
    assert result["assignments"][0]["host"] == "b"
    with pytest.raises(ValueError) as caught:
        place([gpu(0, 8000), gpu(1, 8000, uuid="GPU-0000")],
              [{"name": "s", "vram_mib": 1, "gpu": "GPU-0000"}])
    assert str(caught.value) == (
        "services[0].gpu of s matches more than one GPU (GPU 0, GPU 1); got: 'GPU-0000'")


@pytest.mark.parametrize(("by", "facts", "env"), [
    ("index", dict(vendor="amd", vendor_index=0), {"ROCR_VISIBLE_DEVICES": "0"}),
    ("index", dict(vendor="intel", vendor_index=1), {"ZE_AFFINITY_MASK": "1"}),
    ("uuid", dict(vendor="amd", vendor_index=0, uuid=None), {"ROCR_VISIBLE_DEVICES": "0"}),
    ("index", dict(vendor="amd"), {"ROCR_VISIBLE_DEVICES": "2"}),
    ("index", dict(vendor="amd", vendor_index=None), {"ROCR_VISIBLE_DEVICES": "2"}),
    # amd-smi's UUID is not ROCm's "GPU-<id>" form: the vendor's number, whatever is asked.
    ("uuid", dict(vendor="amd", vendor_index=0), {"ROCR_VISIBLE_DEVICES": "0"}),
    ("uuid", dict(vendor="intel", vendor_index=1), {"ZE_AFFINITY_MASK": "1"}),
    ("index", dict(vendor="nvidia", vendor_index=0),
     {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
])
def test_amd_and_intel_are_made_visible_by_their_own_index(by, facts, env):
    # GPU 2 across vendors (an NVIDIA GPU holds 0 and 1) is the vendor's own GPU 0 or 1.
    result = place([gpu(2, 24000, **facts)], [{"name": "s", "vram_mib": 100}],
                   visible_devices_by=by)
    assert result["assignments"][0]["environment"] == env
    assert result["assignments"][0]["gpu"] == "2"


@pytest.mark.parametrize("uuid", [None, "GPU-0002"])
def test_an_amd_gpu_is_given_its_own_number_without_a_uuid_warning(uuid):
    result = place([gpu(2, 24000, vendor="amd", vendor_index=0, uuid=uuid)],
                   [{"name": "s", "vram_mib": 100}])
    assert result["warnings"] == []
    assert result["assignments"][0]["environment"] == {"ROCR_VISIBLE_DEVICES": "0"}
