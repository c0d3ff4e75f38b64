# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement strategies: isolation_first keeps each LLM alone, and the memory strategies fall
back to an exhaustive search on small instances when their own pass and best fit leave a
service without room although a complete fit exists."""

from __future__ import annotations

import copy
import itertools
import json
import math
import pathlib
import time

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import (
    place,
    place_fleet,
)
from tests.unit.plugins.module_utils.test__placement import codes, gpu, where

FIXTURES = pathlib.Path(__file__).parents[3] / "unit" / "fixtures" / "placement"
SEED_GPUS = json.loads((FIXTURES / "seed001_gpus.json").read_text())
SEED_SERVICES = json.loads((FIXTURES / "seed001_services.json").read_text())


def spread(result):
    utils = [g["budget_mib"] / float(g["usable_mib"]) for g in result["gpus"]
             if g["placeable"] and g["usable_mib"]]
    mean = sum(utils) / len(utils)
    return math.sqrt(sum((u - mean) ** 2 for u in utils) / len(utils))


# ---- isolation_first: the LLM stays alone ---------------------------------------------------

def test_isolation_first_keeps_the_llm_alone_on_the_reference_box():
    """The A5500 + A400 box: the LLM alone on the A5500, the four others share the A400 and
    overcommit it (warned), rather than one of them moving next to the LLM."""
    result = place(copy.deepcopy(SEED_GPUS), copy.deepcopy(SEED_SERVICES),
                   strategy="isolation_first", live_usage="ignore")
    assert where(result) == {"ai-llm": "0", "ai-yolo26": "1", "ai-florence": "1",
                             "ai-clip": "1", "ai-enrichment": "1"}
    assert codes(result) == ["budget_exceeds_gpu", "combined_exceeds_gpu"]
    assert "isolation_not_kept" not in codes(result)
    gpus = {g["gpu"]: g for g in result["gpus"]}
    assert gpus["0"]["services"] == ["ai-llm"]
    florence = result["explanations"]["ai-florence"]
    assert {"gpu": "GPU 0", "reason": "holds an LLM (ai-llm), which isolation_first keeps "
            "alone"} in florence["rejected"]
    assert "fits only next to an LLM (GPU 0), which isolation_first keeps alone: placed where " \
        "the overflow is smallest" in florence["notes"]


@pytest.mark.parametrize(("gpus", "services", "expected", "expected_codes", "repaired"), [
    pytest.param(  # no layout fits them all: c overflows GPU 1 rather than join the LLM
        [gpu(0, 48000), gpu(1, 8512)],
        [{"name": "llm", "vram_mib": 40000, "role": "llm"}, {"name": "a", "vram_mib": 6000},
         {"name": "b", "vram_mib": 4000}, {"name": "c", "vram_mib": 5000}],
        {"llm": "0", "a": "1", "b": "1", "c": "1"}, ["combined_exceeds_gpu"], False,
        id="overflow-not-llm"),
    pytest.param(  # each onto the GPU without an LLM where it overflows least (budget cut)
        [gpu(0, 48000), gpu(1, 4512), gpu(2, 6512)],
        [{"name": "llm", "vram_mib": 40000, "role": "llm"}, {"name": "a", "vram_mib": 10000},
         {"name": "b", "vram_mib": 5000}],
        {"llm": "0", "a": "2", "b": "1"}, ["budget_exceeds_gpu", "budget_exceeds_gpu"], False,
        id="least-overflow"),
    pytest.param(  # sharing makes every service fit: then it shares, with the warning
        [gpu(0, 48000), gpu(1, 8512)],
        [{"name": "llm", "vram_mib": 20000, "role": "llm"}, {"name": "a", "vram_mib": 6000},
         {"name": "b", "vram_mib": 4000}],
        {"llm": "0", "a": "1", "b": "0"}, ["isolation_not_kept"], True, id="sharing-fits-all"),
])
def test_isolation_first_shares_an_llm_gpu_only_when_that_fits_everything(
        gpus, services, expected, expected_codes, repaired):
    result = place(gpus, services, strategy="isolation_first")
    assert where(result) == expected
    assert codes(result) == expected_codes
    assert result["summary"]["repaired"] is repaired
    assert result["summary"]["fits"] is repaired


# ---- exhaustive search when the heuristics miss a fit ----------------------------------------

# Usable 48,640 + 40,448 MiB (512 MiB headroom each) for 86,171 MiB: largest first onto the
# most free (and best fit) strand 6,620 MiB; 29,584 + 17,144 | 19,321 + 13,502 + 6,620 fits.
MISSED_GPUS = [gpu(0, 49152), gpu(1, 40960)]
MISSED = [{"name": "s%d" % i, "vram_mib": size}
          for i, size in enumerate([17144, 19321, 6620, 29584, 13502])]


def best_spread(caps, sizes):
    """The lowest spread over every complete fit (brute force; tiny instances only)."""
    best = None
    for layout in itertools.product(range(len(caps)), repeat=len(sizes)):
        loads = [0] * len(caps)
        for size, g in zip(sizes, layout):
            loads[g] += size
        if any(load > cap for load, cap in zip(loads, caps)):
            continue
        utils = [load / float(cap) for load, cap in zip(loads, caps)]
        mean = sum(utils) / len(utils)
        value = math.sqrt(sum((u - mean) ** 2 for u in utils) / len(utils))
        best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("strategy", ["vram_based", "balanced", "manual"])
def test_memory_strategies_find_the_fit_their_rule_misses(strategy):
    result = place(copy.deepcopy(MISSED_GPUS), copy.deepcopy(MISSED), strategy=strategy)
    summary = result["summary"]
    assert summary["fits"] is True
    assert summary["exact_search"] is True
    assert summary["overcommitted_gpus"] == [] and summary["adjusted"] == []
    assert not {"budget_exceeds_gpu", "combined_exceeds_gpu"} & set(codes(result))
    for name, explanation in result["explanations"].items():
        assert explanation["rule"].startswith("exhaustive search"), name
        assert explanation["gpu"] == "GPU " + where(result)[name]
        assert explanation["rejected_total"] == 1
        assert explanation["rejected"][0]["gpu"] != explanation["gpu"]
        assert explanation["rejected"][0]["reason"]
    if strategy == "manual":
        assert codes(result) == ["unpinned_in_manual"] * 5
        assert "by an exhaustive search" in result["warnings"][0]
    else:
        assert result["warnings"] == []


def test_balanced_keeps_the_lowest_spread_among_the_fits():
    result = place(copy.deepcopy(MISSED_GPUS), copy.deepcopy(MISSED), strategy="balanced")
    optimum = best_spread([48640, 40448], [s["vram_mib"] for s in MISSED])
    assert result["summary"]["fits"] is True
    assert spread(result) == pytest.approx(optimum, abs=1e-9)


def mig_gpu():
    return gpu(1, 81559, mig_mode="Enabled", mig_devices=[
        {"index": 0, "uuid": "MIG-a", "memory_total_mib": 40960, "memory_free_mib": 40960},
        {"index": 1, "uuid": "MIG-b", "memory_total_mib": 4096, "memory_free_mib": 4096}])


@pytest.mark.parametrize(("gpus", "extra", "change", "expected"), [
    pytest.param(  # a faster-looking but too old GPU is never used
        [*MISSED_GPUS, gpu(2, 81559, compute_capability="7.0")], [],
        {"min_compute_capability": "8.0"},
        {"s0": "0", "s1": "1", "s2": "1", "s3": "0", "s4": "1"}, id="compute-capability"),
    pytest.param(  # the exclusive service alone on the small GPU, the rest as above
        [*MISSED_GPUS, gpu(2, 8192)], [{"name": "solo", "vram_mib": 4000, "exclusive": True}],
        {}, {"s0": "0", "s1": "1", "s2": "1", "s3": "0", "s4": "1", "solo": "2"},
        id="exclusive"),
    pytest.param(  # a pinned service stays on its pin
        [*MISSED_GPUS, gpu(2, 8192)], [{"name": "pinned", "vram_mib": 7000, "gpu": "2"}],
        {}, {"s0": "0", "s1": "1", "s2": "1", "s3": "0", "s4": "1", "pinned": "2"},
        id="pin"),
    pytest.param(  # unhealthy and MIG-mode GPUs are not used; MIG devices are
        [gpu(0, 49152), mig_gpu(), gpu(2, 81559, healthy=False, errors=["fell off the bus"])],
        [], {}, {"s0": "0", "s1": "1:0", "s2": "1:0", "s3": "0", "s4": "1:0"}, id="mig"),
])
def test_the_search_respects_every_hard_wish(gpus, extra, change, expected):
    services = [dict(s, **change) for s in MISSED] + extra
    result = place(copy.deepcopy(gpus), services, strategy="vram_based")
    assert result["summary"]["fits"] is True
    assert result["summary"]["exact_search"] is True
    assert where(result) == expected
    assert not {"budget_exceeds_gpu", "combined_exceeds_gpu", "compute_capability_too_low",
                "exclusive_not_possible"} & set(codes(result))


def test_the_search_respects_dedicated_hosts_and_node_selectors():
    hosts = [{"name": "vllm-box", "gpus": [gpu(0, 81559)], "dedicated": ["vllm"],
              "labels": {"zone": "a"}},
             {"name": "gpu-box", "gpus": copy.deepcopy(MISSED_GPUS), "labels": {"zone": "a"}},
             {"name": "other", "gpus": [gpu(0, 81559)], "labels": {"zone": "b"}}]
    services = [dict(s, node_selector={"zone": "a"}) for s in MISSED]
    result = place_fleet(hosts, services, strategy="balanced")
    assert result["summary"]["fits"] is True
    assert result["summary"]["exact_search"] is True
    assert {a["host"] for a in result["assignments"]} == {"gpu-box"}
    reasons = [r["reason"] for r in result["explanations"]["s0"]["rejected"]]
    assert "host vllm-box is dedicated to vllm" in reasons


def test_the_search_keeps_the_pin_fallback_warning():
    services = copy.deepcopy(MISSED)
    services[2]["gpu"] = "7"
    result = place(copy.deepcopy(MISSED_GPUS), services, strategy="vram_based")
    assert result["summary"]["fits"] is True
    assert codes(result) == ["pin_not_found"]
    assert result["explanations"]["s2"]["rule"].startswith(
        "pin not usable, fell back to exhaustive search")


@pytest.mark.parametrize("strategy", ["vram_based", "balanced"])
def test_no_fit_found_when_none_exists(strategy):
    # The reference box cannot hold its five services: the search proves it, nothing changes.
    result = place(copy.deepcopy(SEED_GPUS), copy.deepcopy(SEED_SERVICES), strategy=strategy,
                   live_usage="ignore")
    assert result["summary"]["fits"] is False
    assert result["summary"]["exact_search"] is False
    assert "combined_exceeds_gpu" in codes(result)


@pytest.mark.parametrize(("limit", "value"), [
    ("EXACT_SERVICE_LIMIT", 4), ("EXACT_UNIT_LIMIT", 1), ("EXACT_NODE_BUDGET", 3)])
def test_the_search_is_bounded(monkeypatch, limit, value):
    """Above the size limits no search starts; within them it stops at its node budget."""
    monkeypatch.setattr(_placement, limit, value)
    result = place(copy.deepcopy(MISSED_GPUS), copy.deepcopy(MISSED), strategy="vram_based")
    assert result["summary"]["fits"] is False
    assert result["summary"]["exact_search"] is False
    assert "combined_exceeds_gpu" in codes(result)


def test_large_instances_are_not_slowed_down():
    # 200 GPUs, 1,000 services that cannot all fit: far above the search's limits.
    hosts = [{"name": "h%03d" % h, "gpus": [gpu(0, 8192), gpu(1, 4096)]} for h in range(100)]
    services = [{"name": "x%04d" % i, "vram_mib": 1500 + i % 7} for i in range(1000)]
    started = time.perf_counter()
    result = place_fleet(hosts, services, strategy="vram_based")
    elapsed = time.perf_counter() - started
    assert result["summary"]["fits"] is False
    assert result["summary"]["exact_search"] is False
    assert elapsed < 30


def test_latency_and_isolation_strategies_are_not_searched():
    """Their rules are not about memory only: the search would overrule them."""
    for strategy in ("latency_optimized", "isolation_first"):
        result = place(copy.deepcopy(MISSED_GPUS), copy.deepcopy(MISSED), strategy=strategy)
        assert result["summary"]["exact_search"] is False
