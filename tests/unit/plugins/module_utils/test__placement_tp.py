# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement of services that span GPUs (``gpus: N``, tensor parallel): N whole GPUs of one
host with room for the per-GPU budget, the fastest-linked set first, the outputs per GPU."""

from __future__ import annotations

import copy
import itertools

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _vram
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import (
    STRATEGIES,
    place,
    place_fleet,
)
from tests.unit.plugins.module_utils.test__placement import codes, gpu, where

H100 = 81559


def linked(count, total, links, default="system", **extra):
    """``count`` GPUs of ``total`` MiB; ``links`` {(a, b): link} between them, else
    ``default``; each GPU's ``topology`` as gpu_facts reports it."""
    gpus = []
    for i in range(count):
        topology = []
        for j in range(count):
            if j == i:
                continue
            link = links.get((min(i, j), max(i, j)), default)
            topology.append({"index": j, "uuid": "GPU-%04d" % j, "link": link,
                             "nvlink_count": 12 if link == "nvlink" else None})
        gpus.append(gpu(i, total, topology=topology, compute_capability="9.0", **extra))
    return gpus


def nvlink_pairs(count=8, total=H100):
    """An 8x 80 GB box whose GPUs are NVLink pairs (0-1, 2-3, ...), pairs joined by SYS."""
    return linked(count, total, {(i, i + 1): "nvlink" for i in range(0, count, 2)})


def spans(result):
    return {a["service"]: [g["gpu"] for g in a["gpus"]] for a in result["assignments"]}


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ({"gpus": 0}, "services[0].gpus must be an integer 1-64; got: 0"),
    ({"gpus": 65}, "services[0].gpus must be an integer 1-64; got: 65"),
    ({"gpus": -2}, "services[0].gpus must be an integer 1-64; got: -2"),
    ({"gpus": True}, "services[0].gpus must be an integer 1-64; got: True"),
    ({"gpus": "2"}, "services[0].gpus must be an integer 1-64; got: '2'"),
    ({"gpus": 2.0}, "services[0].gpus must be an integer 1-64; got: 2.0"),
    ({"gpus": 2, "gpu": "0"}, "services[0].gpu must be a list of 2 GPU pins (index or UUID), "
                              "one per GPU of gpus: 2; got: '0'"),
    ({"gpus": 2, "gpu": [0]}, "services[0].gpu must be a list of 2 GPU pins (index or UUID), "
                              "one per GPU of gpus: 2; got: [0]"),
    ({"gpus": 2, "gpu": [0, "0"]}, "services[0].gpu[1] names a GPU twice; got: [0, '0']"),
    ({"gpus": 2, "gpu": ["GPU-AB", "gpu-ab"]},
     "services[0].gpu[1] names a GPU twice; got: ['GPU-AB', 'gpu-ab']"),
    ({"gpus": 2, "gpu": ["0:1", 1]}, "services[0].gpu[0] must be a whole GPU's index or UUID "
                                     "(tensor parallel takes no MIG device); got: '0:1'"),
    ({"gpus": 2, "gpu": [1, "MIG-1c2d"]}, "services[0].gpu[1] must be a whole GPU's index or "
                                          "UUID (tensor parallel takes no MIG device); got: "
                                          "'MIG-1c2d'"),
    ({"gpus": 2, "gpu": [1, None]}, "services[0].gpu[1] must be a whole GPU's index or UUID "
                                    "(tensor parallel takes no MIG device); got: None"),
    ({"gpu": [0]}, "services[0].gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: [0]"),
])
def test_bad_gpus_and_list_pins_name_the_field(extra, message):
    with pytest.raises(ValueError) as error:
        place(nvlink_pairs(), [dict({"name": "tp", "engine": "vllm", "vram_mib": 1000},
                                    **extra)])
    assert str(error.value) == message


def test_an_index_list_pin_needs_a_host_in_a_fleet():
    with pytest.raises(ValueError) as error:
        place_fleet([{"name": "a", "gpus": nvlink_pairs(2)}],
                    [{"name": "tp", "vram_mib": 1000, "gpus": 2, "gpu": ["GPU-0000", 1]}])
    assert str(error.value) == (
        "services[0].gpu is an index, which is ambiguous across hosts: give services[0].host "
        "too, or pin by UUID; got: ['GPU-0000', 1]")


@pytest.mark.parametrize(("topology", "message"), [
    ("PIX", "gpus[0].topology must be a list of peer links or null; got: 'PIX'"),
    (["x"], "gpus[0].topology[0] must be a dict; got: 'x'"),
    ([{"index": -1, "link": "nvlink"}],
     "gpus[0].topology[0].index must be an integer >= 0; got: -1"),
    ([{"index": 1, "link": "PIX"}], "gpus[0].topology[0].link must be one of nvlink, "
                                    "pcie_switch, host_bridge, numa, system; got: 'PIX'"),
])
def test_bad_topology_facts(topology, message):
    with pytest.raises(ValueError) as error:
        place([gpu(0, 8192, topology=topology)], [{"name": "s", "vram_mib": 100}])
    assert str(error.value) == message


# ---- choosing the set -----------------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_nvlink_pair_wins_over_a_pcie_pair_and_an_earlier_position(strategy):
    gpus = linked(4, H100, {(0, 1): "pcie_switch", (2, 3): "nvlink"})
    result = place(gpus, [{"name": "tp", "engine": "vllm", "vram_mib": 30000, "gpus": 2}],
                   strategy=strategy, live_usage="ignore")
    assert spans(result) == {"tp": ["2", "3"]}
    explanation = result["explanations"]["tp"]
    assert explanation["gpu"] == "GPU 2, 3 (nvlink)"
    assert explanation["gpus"] == ["GPU 2", "GPU 3"]
    assert {"gpu": "GPU 0, 1", "reason": "slower link between them (pcie_switch; the chosen "
                                         "GPUs: nvlink)"} in explanation["rejected"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_places_a_2_and_a_4_gpu_vllm_beside_single_services(strategy):
    services = [{"name": "chat", "engine": "vllm", "vram_mib": 60000, "gpus": 4},
                {"name": "code", "engine": "vllm", "vram_mib": 50000, "gpus": 2},
                {"name": "embed", "vram_mib": 4000},
                {"name": "whisper", "vram_mib": 6000, "latency_critical": True},
                {"name": "ollama", "engine": "ollama", "vram_mib": 20000}]
    result = place(nvlink_pairs(), services, strategy=strategy, live_usage="ignore")
    placed = spans(result)
    assert len(placed["chat"]) == 4 and len(placed["code"]) == 2
    assert not set(placed["chat"]) & set(placed["code"])
    # The pair is one NVLink pair; any four GPUs cross SYS between pairs.
    assert placed["code"] in [[str(i), str(i + 1)] for i in range(0, 8, 2)]
    assert result["explanations"]["code"]["link"] == "nvlink"
    assert result["summary"]["fits"] is True
    assert {"tensor_parallel_short", "unplaced"}.isdisjoint(codes(result))
    # Every GPU of a set lists the service; each holds the per-GPU budget.
    table = {g["gpu"]: g for g in result["gpus"]}
    for name, size in (("chat", 60000), ("code", 50000)):
        for index in placed[name]:
            assert name in table[index]["services"]
            assert table[index]["budget_mib"] >= size


def test_a_tensor_parallel_service_is_placed_before_larger_single_ones():
    services = [{"name": "single", "vram_mib": 30000},
                {"name": "tp", "engine": "vllm", "vram_mib": 10000, "gpus": 2}]
    result = place([gpu(0, H100), gpu(1, H100)], services, live_usage="ignore")
    # Placed first, tp saw both GPUs empty although "single" has the larger budget.
    assert result["explanations"]["tp"]["remaining_before_mib"] == H100 - 512
    assert spans(result) == {"single": ["0"], "tp": ["0", "1"]}


def test_the_same_input_gives_the_same_output_whatever_the_gpu_order():
    services = [{"name": "tp", "engine": "vllm", "vram_mib": 30000, "gpus": 2},
                {"name": "a", "vram_mib": 9000}, {"name": "b", "vram_mib": 9000}]
    gpus = nvlink_pairs(4)
    first = place(copy.deepcopy(gpus), services, live_usage="ignore")
    for order in itertools.permutations(range(4)):
        again = place([copy.deepcopy(gpus[i]) for i in order], copy.deepcopy(services),
                      live_usage="ignore")
        assert again == first


def test_a_large_host_grows_sets_from_each_gpu_instead_of_every_combination():
    """16 GPUs choose 4 is 1,820 sets: grown from each GPU, the NVLink quad still wins."""
    links = {(a, b): "nvlink" for a, b in itertools.combinations(range(12, 16), 2)}
    links.update({(a, b): "pcie_switch" for a, b in itertools.combinations(range(4), 2)})
    result = place(linked(16, H100, links), [{"name": "tp", "engine": "vllm",
                                              "vram_mib": 40000, "gpus": 4}],
                   live_usage="ignore")
    assert spans(result) == {"tp": ["12", "13", "14", "15"]}
    # At most one set per other start GPU (grown sets that coincide count once).
    assert result["explanations"]["tp"]["rejected_total"] <= 15


def test_exclusive_holds_all_of_its_gpus():
    services = [{"name": "tp", "engine": "vllm", "vram_mib": 20000, "gpus": 2,
                 "exclusive": True},
                {"name": "a", "vram_mib": 30000}, {"name": "b", "vram_mib": 30000},
                {"name": "c", "vram_mib": 30000}]
    result = place(nvlink_pairs(4), services, live_usage="ignore")
    tp = spans(result)["tp"]
    table = {g["gpu"]: g["services"] for g in result["gpus"]}
    assert all(table[i] == ["tp"] for i in tp)
    assert "exclusive_not_possible" not in codes(result)


def test_isolation_first_keeps_a_tensor_parallel_llm_alone():
    services = [{"name": "tp", "engine": "vllm", "vram_mib": 20000, "gpus": 2},
                {"name": "stt", "vram_mib": 3000}, {"name": "tts", "vram_mib": 3000}]
    result = place(nvlink_pairs(4), services, strategy="isolation_first", live_usage="ignore")
    tp = spans(result)["tp"]
    assert not {"stt", "tts"} & {s for g in result["gpus"] if g["gpu"] in tp
                                 for s in g["services"]}


@pytest.mark.parametrize(("strategy", "code"), [
    # The brief order: room, then the fastest link, then the strategy's own preference.
    ("vram_based", ["0", "1"]),
    # isolation_first keeps each LLM alone before it looks at links.
    ("isolation_first", ["2", "3"]),
])
def test_a_second_tp_llm_shares_the_fast_pair_unless_isolation_first(strategy, code):
    gpus = linked(4, H100, {(0, 1): "nvlink", (2, 3): "pcie_switch"})
    services = [{"name": "chat", "engine": "vllm", "vram_mib": 40000, "gpus": 2},
                {"name": "code", "engine": "vllm", "vram_mib": 30000, "gpus": 2}]
    result = place(gpus, services, strategy=strategy, live_usage="ignore")
    assert spans(result) == {"chat": ["0", "1"], "code": code}
    assert ("isolation_not_kept" in codes(result)) is False


def test_latency_optimized_puts_a_critical_tensor_parallel_service_on_the_fastest_gpus():
    gpus = [gpu(0, 49152, compute_capability="8.6"), gpu(1, H100, compute_capability="9.0"),
            gpu(2, 49152, compute_capability="8.6"), gpu(3, H100, compute_capability="9.0")]
    result = place(gpus, [{"name": "tp", "engine": "vllm", "vram_mib": 20000, "gpus": 2,
                           "latency_critical": True}],
                   strategy="latency_optimized", live_usage="ignore")
    assert spans(result) == {"tp": ["1", "3"]}
    assert "latency_not_fastest" not in codes(result)


def test_balanced_places_a_tensor_parallel_service_and_never_moves_it():
    services = [{"name": "tp", "engine": "vllm", "vram_mib": 30000, "gpus": 2},
                {"name": "a", "vram_mib": 20000}, {"name": "b", "vram_mib": 10000},
                {"name": "c", "vram_mib": 10000}]
    result = place(nvlink_pairs(4), services, strategy="balanced", live_usage="ignore")
    assert spans(result)["tp"] in (["0", "1"], ["2", "3"])
    notes = result["explanations"]["tp"]["notes"]
    assert not any(note.startswith("moved from") for note in notes)
    assert result["summary"]["fits"] is True


# ---- not enough GPUs, not one host ------------------------------------------------------------

def test_fewer_gpus_than_asked_leaves_the_service_unplaced_and_says_what_exists():
    migs = [{"index": 0, "memory_total_mib": 40000}]
    gpus = [gpu(0, H100), gpu(1, H100, mig_mode="Enabled", mig_devices=migs)]
    result = place(gpus, [{"name": "tp", "engine": "vllm", "vram_mib": 1000, "gpus": 2},
                          {"name": "s", "vram_mib": 1000}], live_usage="ignore")
    assert codes(result) == ["tensor_parallel_short"]
    assert result["warnings"][0].startswith(
        "tp was not placed: it spans 2 GPUs (gpus: 2), which must be whole GPUs of one host "
        "and one vendor, and the most any host offers it is 1 (GPU 0); GPU 1: MIG mode is "
        "enabled: services go on its MIG devices; GPU 1 MIG 0: a MIG device")
    assert where(result) == {"tp": None, "s": "0"}
    assert result["assignments"][0]["gpus"] == [] and result["assignments"][0]["gpu_count"] == 2
    assert result["summary"]["unplaced"] == ["tp"] and result["summary"]["fits"] is False


def test_place_fleet_never_splits_a_service_across_hosts():
    hosts = [{"name": "one-a", "gpus": [gpu(0, H100, uuid="GPU-a0")]},
             {"name": "one-b", "gpus": [gpu(0, H100, uuid="GPU-b0")]},
             {"name": "two", "gpus": [gpu(0, 24576, uuid="GPU-t0"),
                                      gpu(1, 24576, uuid="GPU-t1")]}]
    result = place_fleet(hosts, [{"name": "tp", "engine": "vllm", "vram_mib": 20000,
                                  "gpus": 2}], live_usage="ignore")
    tp = result["assignments"][0]
    assert (tp["host"], [g["gpu"] for g in tp["gpus"]]) == ("two", ["0", "1"])
    assert tp["environment"] == {"CUDA_VISIBLE_DEVICES": "GPU-t0,GPU-t1"}
    result = place_fleet(hosts[:2], [{"name": "tp", "engine": "vllm", "vram_mib": 20000,
                                      "gpus": 2}], live_usage="ignore")
    assert codes(result) == ["tensor_parallel_short"]
    assert "the most any host offers it is 1 (one-a GPU 0)" in result["warnings"][0]


def test_a_set_never_mixes_vendors():
    gpus = [gpu(0, 24576), gpu(1, 24576, vendor="amd", vendor_index=0)]
    result = place(gpus, [{"name": "tp", "engine": "vllm", "vram_mib": 1000, "gpus": 2}])
    assert codes(result) == ["tensor_parallel_short"]


# ---- budget per GPU ---------------------------------------------------------------------------

CATALOG = [{"name": "big-70b", "weights_mib": 40000, "layers": 80, "kv_heads": 8,
            "head_dim": 128, "context_length": 8192},
           {"name": "stated-50g", "vram_mib": 50000}]


@pytest.mark.parametrize(("model", "count", "per_gpu"), [
    # KV: 2 x 80 x 8 x 128 x 2 bytes x 8,192 = 2,560 MiB. Per GPU: 1/N of weights and KV
    # cache, vLLM's 1,024 MiB base on each, + 5 % of that GPU's weights.
    ("big-70b", 1, 40000 + 2560 + 1024 + 2000),
    ("big-70b", 2, 20000 + 1280 + 1024 + 1000),
    ("big-70b", 4, 10000 + 640 + 1024 + 500),
    # A stated total keeps the base on every GPU and splits the rest.
    ("stated-50g", 2, 1024 + (50000 - 1024) // 2),
])
def test_the_estimate_is_split_per_gpu(model, count, per_gpu):
    service = {"name": "tp", "engine": "vllm", "model": model}
    if count > 1:
        service["gpus"] = count
    result = place(nvlink_pairs(), [service], catalog=CATALOG, live_usage="ignore")
    entry = result["assignments"][0]
    assert entry["vram_need_mib"] == entry["vram_budget_mib"] == per_gpu
    assert [g["budget_mib"] for g in result["gpus"] if g["services"]] == [per_gpu] * count
    estimate = result["explanations"]["tp"]["estimate"]
    assert ("per_gpu" in estimate) is (count > 1)


def test_per_gpu_of_one_gpu_is_the_whole_estimate():
    whole = _vram.estimate("big-70b", _vram.build_catalog(CATALOG), engine="vllm")
    assert _vram.per_gpu(whole, 1, "vllm")["total_mib"] == whole["total_mib"]


@pytest.mark.parametrize("key", ["vram_mib", "vram_budget_mib"])
def test_a_given_budget_is_per_gpu(key):
    result = place(nvlink_pairs(2), [{"name": "tp", "engine": "vllm", key: 30000, "gpus": 2}],
                   live_usage="ignore")
    assert [g["budget_mib"] for g in result["gpus"]] == [30000, 30000]
    assert result["assignments"][0]["vram_budget_mib"] == 30000


def test_a_budget_above_the_smallest_gpu_is_cut_on_every_gpu():
    gpus = [gpu(0, 24576), gpu(1, 8192)]
    result = place(gpus, [{"name": "tp", "vram_mib": 20000, "gpus": 2}], live_usage="ignore")
    assert codes(result) == ["budget_exceeds_gpu", "tensor_parallel_engine"]
    assert result["warnings"][0].startswith("tp VRAM budget (19.5 GB) exceeds GPU 1 (8 GB).")
    assert [g["budget_mib"] for g in result["gpus"]] == [8192 - 512] * 2
    assert result["summary"]["adjusted"] == ["tp"] and result["summary"]["fits"] is False


# ---- engine settings and outputs --------------------------------------------------------------

def test_vllm_utilisation_is_against_the_smallest_gpu_and_tensor_parallel_size_is_set():
    gpus = [gpu(0, 49152), gpu(1, 24576)]
    result = place(gpus, [{"name": "tp", "engine": "vllm", "vram_mib": 20000, "gpus": 2,
                           "context_length": 8192}], live_usage="ignore")
    entry = result["assignments"][0]
    # floor(20,000 / 24,576, 2 decimals): the same fraction for both workers.
    assert entry["engine_settings"] == {"gpu_memory_utilization": 0.81, "max_model_len": 8192,
                                        "tensor_parallel_size": 2}
    assert entry["gpu_count"] == 2
    assert entry["device_id"] == "GPU-0000,GPU-0001"
    assert entry["gpus"] == [
        {"gpu": "0", "gpu_index": 0, "gpu_uuid": "GPU-0000", "gpu_name": "GPU0",
         "device_id": "GPU-0000"},
        {"gpu": "1", "gpu_index": 1, "gpu_uuid": "GPU-0001", "gpu_name": "GPU1",
         "device_id": "GPU-0001"}]
    assert (entry["gpu"], entry["gpu_index"], entry["gpu_uuid"]) == ("0", 0, "GPU-0000")
    assert "vLLM takes gpu_memory_utilization x total on every GPU of the set: 39814 MiB on " \
           "GPU 0, 19907 MiB on GPU 1" in result["explanations"]["tp"]["notes"]


def test_indexes_are_joined_with_pci_order():
    result = place(nvlink_pairs(2), [{"name": "tp", "engine": "vllm", "vram_mib": 1000,
                                      "gpus": 2}], visible_devices_by="index")
    assert result["assignments"][0]["environment"] == {
        "CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert result["gpu_assignments"]["assignments"]["tp"] == {"gpu": [0, 1], "vram_budget": None}


def test_the_vllm_start_rule_is_checked_on_each_gpu():
    services = [{"name": "tp", "engine": "vllm", "vram_mib": 20000, "gpus": 2,
                 "gpu": ["0", "1"]},
                {"name": "side", "engine": "ollama", "vram_mib": 8000, "gpu": "1"}]
    result = place([gpu(0, 24576), gpu(1, 24576)], services, live_usage="ignore")
    rules = [i for i in result["issues"] if i["code"] == "vllm_start_rule"]
    assert [i["gpu"] for i in rules] == ["GPU 1"]
    assert "0.81 x 24576 = 19907 MiB" in rules[0]["message"]
    combined = [i["gpu"] for i in result["issues"] if i["code"] == "combined_exceeds_gpu"]
    assert combined == ["GPU 1"]


def test_a_list_pin_is_honoured_in_its_order():
    result = place(nvlink_pairs(4), [{"name": "tp", "engine": "vllm", "vram_mib": 1000,
                                      "gpus": 2, "gpu": ["GPU-0003", 1]}])
    entry = result["assignments"][0]
    assert entry["pinned"] is True and [g["gpu"] for g in entry["gpus"]] == ["3", "1"]
    assert result["explanations"]["tp"]["rule"] == "pinned to GPU 3, 1 by its gpu field"
    # 3 and 1 cross SYS: said, with the faster pairs this host has.
    assert codes(result) == ["tensor_parallel_slow_link"]
    assert result["warnings"][0] == (
        "tp spans GPU 3, 1, whose slowest link is system: tensor parallel exchanges "
        "activations over it on every layer; this host has sets of 2 linked by nvlink (pinned, "
        "taken or without room).")


@pytest.mark.parametrize(("pin_not_found", "pin"), [("warn", [0, 7]), ("warn", [0, "GPU-0000"])])
def test_a_list_pin_that_cannot_be_honoured_falls_back(pin_not_found, pin):
    result = place(nvlink_pairs(4), [{"name": "tp", "engine": "vllm", "vram_mib": 1000,
                                      "gpus": 2, "gpu": pin}], pin_not_found=pin_not_found)
    assert codes(result) == ["pin_not_found"]
    assert spans(result) == {"tp": ["0", "1"]}
    assert result["assignments"][0]["fallback"] is True
    assert result["warnings"][0].endswith("; fell back to GPU 0, 1 (GPU0, GPU1).")


def test_a_list_pin_to_a_missing_gpu_fails_with_pin_not_found_fail():
    with pytest.raises(ValueError) as error:
        place(nvlink_pairs(2), [{"name": "tp", "vram_mib": 1000, "gpus": 2, "gpu": [0, 5]}],
              pin_not_found="fail")
    assert str(error.value) == "services[0].gpu names a GPU this host does not have " \
                               "(GPUs: 0, 1); got: 5"


@pytest.mark.parametrize(("engine", "tail"), [
    ("ollama", "and Ollama splits a model across them by itself"),
    ("other", "and using them is up to it"),
])
def test_another_engine_than_vllm_is_warned_and_sees_the_gpus(engine, tail):
    result = place(nvlink_pairs(2), [{"name": "tp", "engine": engine, "vram_mib": 1000,
                                      "gpus": 2}], live_usage="ignore")
    assert codes(result) == ["tensor_parallel_engine"]
    assert result["warnings"][0] == (
        "tp spans 2 GPUs with engine %s: only vLLM runs tensor parallel "
        "(--tensor-parallel-size); %s is given the 2 GPUs as visible devices, %s."
        % (engine, engine, tail))
    assert result["assignments"][0]["environment"] == {
        "CUDA_VISIBLE_DEVICES": "GPU-0000,GPU-0001"}
    assert "tensor_parallel_size" not in result["assignments"][0]["engine_settings"]


@pytest.mark.parametrize(("links", "warned"), [
    ({(0, 1): "numa"}, True),
    ({(0, 1): "host_bridge"}, True),
    ({(0, 1): "pcie_switch"}, False),
    (None, False),  # topology not read: nothing claimed
])
def test_a_slow_link_is_said_only_when_known(links, warned):
    gpus = linked(2, H100, links) if links else [gpu(0, H100, topology=None),
                                                 gpu(1, H100, topology=None)]
    result = place(gpus, [{"name": "tp", "engine": "vllm", "vram_mib": 1000, "gpus": 2}],
                   live_usage="ignore")
    assert ("tensor_parallel_slow_link" in codes(result)) is warned
    assert result["explanations"]["tp"]["link"] == (
        links[(0, 1)] if links else "unknown")


def test_single_gpu_assignments_gain_a_one_entry_gpus_list():
    services = [{"name": "s", "vram_mib": 100}, {"name": "u", "vram_mib": 100, "gpu": "0"}]
    result = place([gpu(0, 8192)], services)
    for entry in result["assignments"]:
        assert entry["gpu_count"] == 1
        assert entry["gpus"] == [{"gpu": "0", "gpu_index": 0, "gpu_uuid": "GPU-0000",
                                  "gpu_name": "GPU0", "device_id": "GPU-0000"}]


def test_the_exhaustive_search_places_a_tensor_parallel_service_where_greedy_cannot():
    """From the benchmark (multi-GPU instance 306): two NVLink quads of mixed sizes. The
    fastest set for the 4-GPU service takes GPUs 0-3, leaving the 77.6 GB service no room; the
    search finds the fit that crosses the quads."""
    totals = [81559, 49152, 81559, 81559, 49152, 24564, 24564, 81559]
    quads = {(a, b): "nvlink" for q in (0, 4)
             for a, b in itertools.combinations(range(q, q + 4), 2)}
    gpus = linked(8, 0, quads)
    for fact, total in zip(gpus, totals):
        fact.update(memory_total_mib=total, memory_free_mib=total)
    services = [{"name": "tp", "engine": "vllm", "vram_mib": 33161, "gpus": 4},
                {"name": "a", "vram_mib": 51518}, {"name": "b", "vram_mib": 18608},
                {"name": "c", "vram_mib": 77628}]
    for strategy in ("vram_based", "balanced", "manual"):
        result = place(copy.deepcopy(gpus), services, strategy=strategy, live_usage="ignore")
        assert result["summary"]["fits"] is True
        assert result["summary"]["exact_search"] is True
        assert result["explanations"]["tp"]["rule"].startswith("exhaustive search")
        assert len(set(spans(result)["tp"])) == 4
    greedy = place(copy.deepcopy(gpus), services, strategy="latency_optimized",
                   live_usage="ignore")
    assert greedy["summary"]["fits"] is False
