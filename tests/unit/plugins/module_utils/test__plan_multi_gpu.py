# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""multi-gpu: every healthy GPU serving or idle with a reason. per_spare_gpu entries, the two
placement passes, the replicas in the plan and what reads the plan (compose, router)."""

from __future__ import annotations

import copy
import random

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _render, _router
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import MODELS, default_catalog, gpu

CATALOG, EXTRA = default_catalog()
MODES = ("ollama", "vllm", "mixed")
# What pass 1 puts on GPU 1 in each mode (GPU 0 holds ollama and vision in all three).
GPU_1 = {"ollama": ["ollama_research"], "vllm": ["vllm"], "mixed": ["ollama_research", "vllm"]}


def gpus_of(count, **changes):
    """``count`` GPUs; ``changes`` maps an index to keys to set on that GPU."""
    return [dict(gpu(i), **changes.get("gpu%d" % i, {})) for i in range(count)]


def two_pass_plan(gpus, mode="ollama", profile="auto", catalog=None, change=None,
                  strategy="vram_based", secrets=None):
    """The plan as the services_plan action makes it: two placement passes, then the plan."""
    catalog = copy.deepcopy(CATALOG if catalog is None else catalog)
    if change is not None:
        change(catalog)
    placement = _plan.place_in_two_passes(catalog, profile, mode, EXTRA, gpus,
                                          lambda services: place(gpus, services,
                                                                 strategy=strategy))
    return _plan.plan(catalog, placement, gpus, profile, mode, EXTRA, secrets=secrets)


def by_name(plan):
    return {s["name"]: s for s in plan["services"]}


def where(plan):
    """{service: GPU index} of the active services placed on a GPU."""
    return {s["name"]: s["placement"]["gpu_index"] for s in plan["services"]
            if s["active"] and s["placement"] is not None}


def spare_entry(**changes):
    entry = copy.deepcopy(CATALOG["ollama_spare"])
    entry.update(changes)
    return entry


# ---- the default: the dual-GPU stack on GPUs 0 and 1, an Ollama on every other GPU ----------

@pytest.mark.parametrize("count", [3, 4, 8])
@pytest.mark.parametrize("mode", MODES)
def test_every_healthy_gpu_serves_under_the_default_catalog(count, mode):
    plan = two_pass_plan(gpus_of(count), mode)
    placed = where(plan)
    assert plan["profile"] == "multi-gpu"
    assert plan["idle_gpus"] == []
    assert sorted(set(placed.values())) == list(range(count))
    assert {n for n, i in placed.items() if i == 0} == {"ollama", "vision"}
    assert sorted(n for n, i in placed.items() if i == 1) == sorted(GPU_1[mode])
    replicas = ["ollama_spare_gpu%d" % i for i in range(2, count)]
    assert plan["replicas"] == {"ollama_spare": replicas}
    assert [n for n in plan["active"] if n.startswith("ollama_spare")] == replicas
    services = by_name(plan)
    assert "ollama_spare" not in services
    for k, name in enumerate(replicas):
        replica = services[name]
        assert replica["replica_of"] == "ollama_spare"
        assert replica["gpu"] == "GPU-%04d" % (k + 2)
        assert replica["placement"]["gpu_uuid"] == "GPU-%04d" % (k + 2)
        assert replica["placement"]["device_id"] == "GPU-%04d" % (k + 2)
        assert replica["ports"] == [{"host": 11436 + k, "container": 11434, "protocol": "tcp",
                                     "address": None}]
        assert replica["health"] == {"path": "/api/version", "port": 11434}
        assert replica["compose_profiles"] == ["multi-gpu-ollama", "multi-gpu-vllm",
                                               "multi-gpu-mixed"]
        assert "%s: GPU %d (GPU-%04d), 2963 MiB" % (name, k + 2, k + 2) in plan["summary"]
    assert not any("idle" in line for line in plan["summary"])
    assert all(services[n]["replica_of"] is None for n in plan["active"] if n not in replicas)


def test_replicas_share_the_model_directory_and_one_download():
    plan = two_pass_plan(gpus_of(4))
    items = [i for i in plan["downloads"]["items"] if i["kind"] == "ollama"]
    llama = [i for i in items if i["name"] == "llama3.2:3b"]
    assert len(llama) == 1 and llama[0]["models_dir"] == MODELS
    assert llama[0]["services"] == ["ollama", "ollama_research", "ollama_spare_gpu2",
                                    "ollama_spare_gpu3"]


def test_two_gpus_under_multi_gpu_leave_no_spare_gpu_and_say_so():
    plan = two_pass_plan(gpus_of(2), "vllm", profile="multi-gpu")
    assert plan["replicas"] == {"ollama_spare": []}
    assert "ollama_spare" not in by_name(plan)
    assert plan["summary"][-1] == (
        "ollama_spare: no replica, no spare GPU (per_spare_gpu: one on each healthy whole GPU "
        "the other services leave free)")


@pytest.mark.parametrize("count,profile", [(4, "dual-gpu"), (2, "auto"), (0, "auto")])
def test_below_multi_gpu_the_entry_has_no_replica_and_is_not_rendered(count, profile):
    plan = two_pass_plan(gpus_of(count), "mixed", profile=profile)
    assert plan["replicas"] == {"ollama_spare": []}
    assert not [s for s in plan["services"] if s["name"].startswith("ollama_spare")]
    assert "ollama_spare" not in _render.compose_document(plan)["services"]


# ---- GPUs that are not spare ------------------------------------------------------------------

def test_an_unhealthy_gpu_gets_no_replica_and_the_next_takes_the_first_port():
    gpus = gpus_of(5, gpu2={"healthy": False, "errors": ["Xid 79"]})
    plan = two_pass_plan(gpus, "vllm")
    assert plan["replicas"] == {"ollama_spare": ["ollama_spare_gpu3", "ollama_spare_gpu4"]}
    services = by_name(plan)
    assert [services["ollama_spare_gpu%d" % i]["ports"][0]["host"] for i in (3, 4)] == \
        [11436, 11437]
    assert plan["idle_gpus"] == []
    assert any(w.startswith("GPU 2") and "Xid 79" in w for w in plan["warnings"])
    assert not any("idle" in line for line in plan["summary"])


MIG_GPU = {"mig_mode": "Enabled", "mig_devices": [
    {"index": 0, "uuid": "MIG-3-0", "name": "1g.10gb", "memory_total_mib": 9856,
     "memory_free_mib": 9856}]}


def test_a_gpu_in_mig_mode_gets_no_replica_and_is_idle_with_the_reason():
    plan = two_pass_plan(gpus_of(4, gpu3=MIG_GPU), "ollama")
    assert plan["replicas"] == {"ollama_spare": ["ollama_spare_gpu2"]}
    assert plan["idle_gpus"] == [3]
    assert plan["summary"][-1] == (
        "GPU 3 idle: MIG mode is enabled and no service is placed on its MIG devices (a "
        "per_spare_gpu replica takes a whole GPU)")


def test_a_mig_gpu_holding_a_pinned_service_is_used_not_idle():
    def change(catalog):
        catalog["vision"]["gpu"] = "3:0"
    plan = two_pass_plan(gpus_of(4, gpu3=MIG_GPU), "ollama", change=change)
    assert by_name(plan)["vision"]["placement"]["gpu"] == "3:0"
    assert plan["replicas"] == {"ollama_spare": ["ollama_spare_gpu2"]}
    assert plan["idle_gpus"] == []


def test_spare_gpus_come_from_the_gpus_list_of_a_service_that_spans_several():
    gpus = gpus_of(5)
    assignments = [{"service": "big", "gpu_index": 1,
                    "gpus": [{"gpu_index": 1}, {"gpu_index": 3}]},
                   {"service": "ollama", "gpu_index": 0}]
    assert _plan.spare_gpus(gpus, assignments) == [{"index": 2, "uuid": "GPU-0002"},
                                                   {"index": 4, "uuid": "GPU-0004"}]
    # Before the gpus list existed an assignment named its one GPU only.
    assert _plan.spare_gpus(gpus, [{"service": "x", "gpu_index": 4}]) == \
        [{"index": i, "uuid": "GPU-%04d" % i} for i in range(4)]


def test_a_gpu_without_uuid_pins_its_replica_by_index():
    gpus = gpus_of(3, gpu2={"uuid": None})
    plan = two_pass_plan(gpus, "ollama", profile="multi-gpu")
    assert by_name(plan)["ollama_spare_gpu2"]["gpu"] == 2
    assert by_name(plan)["ollama_spare_gpu2"]["placement"]["gpu_index"] == 2


# ---- a catalog of the user's own --------------------------------------------------------------

def test_a_catalog_without_a_replica_entry_says_which_key_would_use_the_idle_gpus():
    plan = two_pass_plan(gpus_of(4), "vllm", change=lambda c: c.pop("ollama_spare"))
    assert plan["idle_gpus"] == [2, 3]
    assert plan["replicas"] == {}
    assert plan["summary"][-1] == (
        "GPU 2, 3 idle: profile multi-gpu places its active services on GPU 0, 1 only; "
        "services_catalog has no entry with per_spare_gpu: true in profile multi-gpu, mode vllm, "
        "to run a replica on each spare GPU (the default catalog's ollama_spare is one)")


def test_a_replica_entry_of_another_mode_leaves_the_gpus_idle_and_says_why():
    def change(catalog):
        catalog["ollama_spare"]["modes"] = ["ollama"]
    plan = two_pass_plan(gpus_of(3), "mixed", change=change)
    assert plan["idle_gpus"] == [2]
    assert "no entry with per_spare_gpu: true in profile multi-gpu, mode mixed" in \
        plan["summary"][-1]


def test_two_replica_entries_take_the_spare_gpus_in_turn():
    def change(catalog):
        catalog["vllm_spare"] = {
            "engine": "vllm", "image": "vllm/vllm-openai:latest", "per_spare_gpu": True,
            "model": "Qwen/Qwen2.5-1.5B-Instruct", "ports": [{"host": 8010, "container": 8000}],
            "health": {"path": "/health"}, "profiles": ["multi-gpu"]}
    plan = two_pass_plan(gpus_of(8), "ollama", change=change)
    assert plan["replicas"] == {
        "ollama_spare": ["ollama_spare_gpu2", "ollama_spare_gpu4", "ollama_spare_gpu6"],
        "vllm_spare": ["vllm_spare_gpu3", "vllm_spare_gpu5", "vllm_spare_gpu7"]}
    services = by_name(plan)
    assert [services[n]["ports"][0]["host"] for n in plan["replicas"]["vllm_spare"]] == \
        [8010, 8011, 8012]
    assert [services[n]["ports"][0]["host"] for n in plan["replicas"]["ollama_spare"]] == \
        [11436, 11437, 11438]
    assert services["vllm_spare_gpu5"]["placement"]["engine_args"][:1] == \
        ["--gpu-memory-utilization"]
    assert plan["idle_gpus"] == []


BIG_VLLM = {"engine": "vllm", "image": "vllm/vllm-openai:latest", "gpus": 4,
            "model": "Qwen/Qwen2.5-72B-Instruct-AWQ", "ports": [{"host": 8001, "container": 8000}],
            "health": {"path": "/health"}, "profiles": ["multi-gpu"]}


def test_a_tensor_parallel_service_is_placed_first_and_the_replicas_take_the_rest():
    gpus = [gpu(i, 81920) for i in range(8)]
    recorder = Recorder(gpus)
    catalog = dict(copy.deepcopy(CATALOG), vllm_big=BIG_VLLM)
    placement = _plan.place_in_two_passes(catalog, "auto", "vllm", EXTRA, gpus, recorder)
    plan = _plan.plan(catalog, placement, gpus, "auto", "vllm", EXTRA)
    big = by_name(plan)["vllm_big"]["placement"]
    assert big["gpu_indexes"] == [2, 3, 4, 5]
    assert "--tensor-parallel-size" in big["engine_args"]
    assert plan["replicas"] == {"ollama_spare": ["ollama_spare_gpu6", "ollama_spare_gpu7"]}
    assert plan["idle_gpus"] == []
    pins = {s["name"]: s.get("gpu") for s in recorder.calls[1]}
    assert pins["vllm_big"] == ["2", "3", "4", "5"]


def test_the_replicas_follow_their_entry_in_the_catalog_order():
    plan = two_pass_plan(gpus_of(4), "vllm")
    names = [s["name"] for s in plan["services"]]
    assert names.index("vllm") < names.index("ollama_spare_gpu2") < \
        names.index("ollama_spare_gpu3") < names.index("docling")


# ---- bad input: the entry, the GPU and the port named -------------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda c: c["ollama_spare"].update(gpu=2),
     "services_catalog.ollama_spare.gpu must not be set with per_spare_gpu: each replica is "
     "pinned to its spare GPU; got: 2"),
    (lambda c: c["ollama_spare"].update(uses_gpu=False),
     "services_catalog.ollama_spare.per_spare_gpu runs a replica on each spare GPU, so uses_gpu "
     "must be true; got: uses_gpu false"),
    (lambda c: c["ollama_spare"].update(profiles=["cpu", "multi-gpu"]),
     "services_catalog.ollama_spare.profiles[0] must be single-gpu, dual-gpu, multi-gpu (or an "
     "extra profile) with per_spare_gpu: cpu places nothing on a GPU; got: 'cpu'"),
    (lambda c: c["ollama_spare"].update(per_spare_gpu="yes"),
     "services_catalog.ollama_spare.per_spare_gpu must be a boolean; got: 'yes'"),
    (lambda c: c["ollama_spare"].update(gpus=2),
     "services_catalog.ollama_spare.gpus must be 1 with per_spare_gpu: one replica on each "
     "spare GPU; got: 2"),
])
def test_bad_replica_entry_fails_naming_the_field(change, message):
    catalog = copy.deepcopy(CATALOG)
    change(catalog)
    with pytest.raises(ValueError) as error:
        _plan.check_catalog(catalog, EXTRA)
    assert str(error.value) == message


@pytest.mark.parametrize("count,change,message", [
    (4, lambda c: c["ollama_spare"].update(ports=[{"host": 65535, "container": 11434}]),
     "services_catalog.ollama_spare.ports[0].host: its replica on GPU 3 (ollama_spare_gpu3) "
     "would publish host port 65536 (65535 + 1), above 65535; give a host port with room for "
     "every spare GPU; got: 65535"),
    (8, lambda c: c.update(other={
        "image": "example/other:1", "uses_gpu": False, "ports": [{"host": 11440, "container": 80}],
        "profiles": ["multi-gpu"], "modes": ["vllm"]}),
     "services_catalog.ollama_spare.ports[0].host: its replica on GPU 6 (ollama_spare_gpu6) "
     "publishes host port 11440, as services_catalog.other.ports[0] does (both run in profile "
     "multi-gpu-vllm); give ollama_spare host ports with room for every spare GPU; got: 11440"),
    (6, lambda c: c.update(second=dict(c["ollama_spare"], ports=[
        {"host": 11437, "container": 11434}])),
     "services_catalog.second.ports[0].host: its replica on GPU 3 (second_gpu3) publishes host "
     "port 11437, as the replica ollama_spare_gpu4 of services_catalog.ollama_spare.ports[0] "
     "does (both run in profile multi-gpu-ollama); give second host ports with room for every "
     "spare GPU; got: 11437"),
    (3, lambda c: c.update({"ollama_spare_gpu2": dict(c["docling"], ports=[11499],
                                                      health=None)}),
     "services_catalog.ollama_spare: its replica on GPU 2 would be named ollama_spare_gpu2, as "
     "services_catalog.ollama_spare_gpu2 is (or its Kubernetes name ollama-spare-gpu2); rename "
     "one of them; got: 'ollama_spare_gpu2'"),
    (3, lambda c: c.update({"a" * 48: c.pop("ollama_spare")}),
     "services_catalog.%s: its replica on GPU 2 would be named %s_gpu2, longer than 52 "
     "characters; give the per_spare_gpu entry a shorter name; got: '%s'" % (("a" * 48,) * 3)),
])
def test_bad_replicas_fail_naming_entry_gpu_and_port(count, change, message):
    with pytest.raises(ValueError) as error:
        two_pass_plan(gpus_of(count), "ollama", change=change)
    assert str(error.value) == message


def test_the_last_port_fits_exactly():
    def change(catalog):
        catalog["ollama_spare"]["ports"] = [{"host": 65534, "container": 11434}]
    plan = two_pass_plan(gpus_of(4), "ollama", change=change)
    assert by_name(plan)["ollama_spare_gpu3"]["ports"][0]["host"] == 65535


def test_a_replica_entry_cannot_have_a_secret_environment():
    with pytest.raises(ValueError) as error:
        _plan.check_secret_environment({"ollama_spare": {"TOKEN": "s3cret"}}, CATALOG)
    assert str(error.value) == (
        "services_secret_environment.ollama_spare: ollama_spare has per_spare_gpu, and its "
        "replicas cannot read a secret environment (a service pinned with gpu to each GPU can); "
        "got names: TOKEN")
    assert "s3cret" not in str(error.value)


# ---- the two passes ------------------------------------------------------------------------------

class Recorder:
    """gpu_placement on ``gpus``, each call's services noted; ``moved`` makes pass 2 put that
    service on GPU 3 (a placement engine that moved it)."""

    def __init__(self, gpus, strategy="vram_based", moved=None):
        self.gpus, self.strategy, self.moved, self.calls = gpus, strategy, moved, []

    def __call__(self, services):
        self.calls.append(copy.deepcopy(services))
        result = place(self.gpus, services, strategy=self.strategy)
        if self.moved and len(self.calls) == 2:
            for assignment in result["assignments"]:
                if assignment["service"] == self.moved:
                    assignment.update(gpu="3", gpu_index=3)
        return result


UNPINNED = {
    "big": {"engine": "vllm", "image": "vllm/vllm-openai:latest", "model": "Qwen/Qwen2.5-7B",
            "vram_budget_mib": 30000, "profiles": ["multi-gpu"]},
    "small": {"engine": "ollama", "image": "ollama/ollama:latest", "model": "llama3.2:3b",
              "profiles": ["multi-gpu"]},
    "spare": {"engine": "ollama", "image": "ollama/ollama:latest", "model": "llama3.2:1b",
              "per_spare_gpu": True, "ports": [{"host": 11500, "container": 11434}],
              "profiles": ["multi-gpu"]},
}
# GPU sizes that make each strategy choose differently from GPU 0.
MIXED_GPUS = [gpu(0, 24576), gpu(1, 49152), gpu(2, 81920), gpu(3, 24576)]


@pytest.mark.parametrize("strategy", ["manual", "vram_based", "latency_optimized",
                                      "isolation_first", "balanced"])
def test_pass_2_pins_pass_1_services_where_pass_1_put_them(strategy):
    recorder = Recorder(MIXED_GPUS, strategy)
    placement = _plan.place_in_two_passes(UNPINNED, "multi-gpu", "ollama", {}, MIXED_GPUS,
                                          recorder)
    first = place(MIXED_GPUS, recorder.calls[0], strategy=strategy)
    assert [s["name"] for s in recorder.calls[0]] == ["big", "small"]
    assert all("gpu" not in s for s in recorder.calls[0])
    pins = {s["name"]: s.get("gpu") for s in recorder.calls[1]}
    held = {a["service"]: a["gpu"] for a in first["assignments"]}
    assert pins == dict(held, **{"spare_gpu%d" % i: "GPU-%04d" % i
                                 for i in range(4) if str(i) not in held.values()})
    # Pass 1's own words for its services: not pinned by the user, same explanation.
    merged = {a["service"]: a for a in placement["assignments"]}
    for assignment in first["assignments"]:
        assert merged[assignment["service"]] == assignment
        assert placement["explanations"][assignment["service"]] == \
            first["explanations"][assignment["service"]]
    assert placement["warnings"][:len(first["warnings"])] == first["warnings"]


def test_a_pass_2_that_moved_a_service_fails_loudly():
    recorder = Recorder(MIXED_GPUS, moved="big")
    with pytest.raises(ValueError) as error:
        _plan.place_in_two_passes(UNPINNED, "multi-gpu", "ollama", {}, MIXED_GPUS, recorder)
    assert str(error.value).startswith("placement pass 2 moved big from GPU 2 to GPU 3")


def test_one_pass_when_no_replica_entry_is_active():
    recorder = Recorder(MIXED_GPUS)
    catalog = {k: v for k, v in UNPINNED.items() if k != "spare"}
    placement = _plan.place_in_two_passes(catalog, "multi-gpu", "ollama", {}, MIXED_GPUS,
                                          recorder)
    assert len(recorder.calls) == 1
    assert placement == place(MIXED_GPUS, recorder.calls[0])


def test_only_replicas_means_one_placement_of_the_replicas():
    recorder = Recorder(MIXED_GPUS)
    catalog = {"spare": UNPINNED["spare"]}
    placement = _plan.place_in_two_passes(catalog, "multi-gpu", "ollama", {}, MIXED_GPUS,
                                          recorder)
    assert len(recorder.calls) == 1
    assert [a["gpu_index"] for a in placement["assignments"]] == [0, 1, 2, 3]


def test_the_same_input_gives_the_same_plan_whatever_the_order_of_the_gpus():
    gpus = gpus_of(8)
    first = two_pass_plan(gpus, "mixed")
    shuffled = copy.deepcopy(gpus)
    random.Random(16).shuffle(shuffled)
    assert two_pass_plan(shuffled, "mixed") == first
    assert two_pass_plan(copy.deepcopy(gpus), "mixed") == first


# ---- what reads the plan: compose and the router, unchanged -------------------------------------

def test_compose_documents_run_each_replica_on_its_own_gpu():
    plan = two_pass_plan(gpus_of(4), "vllm")
    base = _render.compose_document(plan)["services"]
    gpu_doc = _render.compose_document(plan, "gpu")["services"]
    podman = _render.compose_document(plan, "podman")["services"]
    for k, index in enumerate((2, 3)):
        name = "ollama_spare_gpu%d" % index
        assert base[name]["ports"] == [{"target": 11434, "published": str(11436 + k),
                                        "host_ip": "127.0.0.1", "protocol": "tcp"}]
        assert base[name]["profiles"] == ["multi-gpu-ollama", "multi-gpu-vllm",
                                          "multi-gpu-mixed"]
        assert base[name]["volumes"][0]["source"] == MODELS
        assert gpu_doc[name]["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "device_ids": ["GPU-%04d" % index], "capabilities": ["gpu"]}]
        assert podman[name]["devices"] == ["nvidia.com/gpu=GPU-%04d" % index]
    published = [p["published"] for s in base.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))
    assert set(gpu_doc) == {"ollama", "vision", "vllm", "ollama_spare_gpu2",
                            "ollama_spare_gpu3"}


def test_systemd_instances_listen_on_the_replica_ports():
    plan = two_pass_plan(gpus_of(4), "ollama")
    instances = {i["service"]: i for i in _render.systemd_instances(plan)}
    for k, index in enumerate((2, 3)):
        env = instances["ollama_spare_gpu%d" % index]["environment"]
        assert env["OLLAMA_HOST"] == "127.0.0.1:%d" % (11436 + k)
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-%04d" % index


@pytest.mark.parametrize("routing,url", [
    ("docker", "http://ollama_spare_gpu3:11434/v1"),
    ("host", "http://127.0.0.1:11437/v1"),
])
def test_the_router_gets_a_backend_per_replica(routing, url):
    plan = two_pass_plan(gpus_of(4), "mixed")
    config = _router.router_config(plan, options={"routing": routing})
    backends = {b["name"]: b for b in config["backends"]}
    assert {"ollama_spare_gpu2", "ollama_spare_gpu3"} <= set(backends)
    assert backends["ollama_spare_gpu3"]["base_url"] == url
    groups = [m["model_name"] for m in config["litellm"]["model_list"]]
    assert "ollama_spare_gpu3" in groups
