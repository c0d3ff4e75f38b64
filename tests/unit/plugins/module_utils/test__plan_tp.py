# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A service that spans GPUs (``gpus: N``, vLLM tensor parallel): its catalog checks, its
plan (placement fields, per-GPU budget, ``--tensor-parallel-size``) and the documents
rendered from it (compose overlays, systemd instances).

The placements are built by hand in the shape gpu_placement returns for N GPUs (every
assignment's ``gpus`` list, the first GPU's keys on top, the device ids joined), so that
these tests do not depend on how the placement picks the N GPUs (test__placement.py).
"""

from __future__ import annotations

import copy

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _render
from tests.support.plans import default_catalog, gpu, make_plan

CATALOG, EXTRA = default_catalog()
FOUR_GPUS = [gpu(i, 49152) for i in range(4)]


def tp_catalog(**vllm):
    """The default catalog with vLLM changed (``None`` removes a key)."""
    catalog = copy.deepcopy(CATALOG)
    catalog["vllm"].pop("gpu")
    catalog["vllm"].update(vllm)
    for key in [k for k, v in vllm.items() if v is None]:
        del catalog["vllm"][key]
    return catalog


def check(**vllm):
    return _plan.check_catalog(tp_catalog(**vllm), EXTRA)["vllm"]


# ---- the catalog --------------------------------------------------------------------------

AT = "services_catalog.vllm"


@pytest.mark.parametrize(("vllm", "message"), [
    ({"gpus": 0}, AT + ".gpus must be an integer 1-64; got: 0"),
    ({"gpus": 65}, AT + ".gpus must be an integer 1-64; got: 65"),
    ({"gpus": "2"}, AT + ".gpus must be an integer 1-64; got: '2'"),
    ({"gpus": True}, AT + ".gpus must be an integer 1-64; got: True"),
    ({"gpus": 2.0}, AT + ".gpus must be an integer 1-64; got: 2.0"),
    ({"gpus": 2, "uses_gpu": False},
     AT + ".gpus must be 1 (or unset) when uses_gpu is false; got: 2"),
    ({"gpus": 2, "gpu": 1},
     AT + ".gpu must be a list of 2 pins (GPU index or UUID), one per GPU of gpus: 2; got: 1"),
    ({"gpus": 2, "gpu": [1, 2, 3]},
     AT + ".gpu must be a list of 2 pins (GPU index or UUID), one per GPU of gpus: 2; got: "
     "[1, 2, 3]"),
    ({"gpus": 2, "gpu": [1, "0:1"]},
     AT + ".gpu[1] must be a whole GPU's index or UUID: a service with gpus > 1 (tensor "
     "parallel) takes no MIG device; got: '0:1'"),
    ({"gpus": 2, "gpu": ["MIG-4f0e9c1a-2b3d-5e6f-8a9b-0c1d2e3f4a5b", 1]},
     AT + ".gpu[0] must be a whole GPU's index or UUID: a service with gpus > 1 (tensor "
     "parallel) takes no MIG device; got: 'MIG-4f0e9c1a-2b3d-5e6f-8a9b-0c1d2e3f4a5b'"),
    ({"gpus": 2, "gpu": [1, "1"]},
     AT + ".gpu[1] names the GPU of services_catalog.vllm.gpu[0] again; got: '1'"),
    ({"gpus": 2, "gpu": ["GPU-0002", "gpu-0002"]},
     AT + ".gpu[1] names the GPU of services_catalog.vllm.gpu[0] again; got: 'gpu-0002'"),
    ({"gpus": 2, "gpu": [1, -1]},
     AT + ".gpu[1] must be a GPU index, 'i:j' (MIG) or a UUID; got: -1"),
    ({"gpus": 2, "gpu": [1, None]},
     AT + ".gpu[1] must be a GPU index, 'i:j' (MIG) or a UUID; got: None"),
    ({"gpu": [1, 2]},
     AT + ".gpu is a list of pins, which is for a service with gpus > 1 (one pin per GPU); "
     "got: [1, 2] with gpus 1"),
    ({"gpus": 1, "gpu": [1]},
     AT + ".gpu is a list of pins, which is for a service with gpus > 1 (one pin per GPU); "
     "got: [1] with gpus 1"),
    ({"gpu": True}, AT + ".gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: True"),
])
def test_bad_gpus_names_the_field_and_value(vllm, message):
    with pytest.raises(ValueError) as error:
        check(**vllm)
    assert str(error.value) == message


@pytest.mark.parametrize(("vllm", "gpus", "pin"), [
    ({}, None, None),
    ({"gpus": 1, "gpu": "0:1"}, 1, "0:1"),
    ({"gpus": 2}, 2, None),
    ({"gpus": 2, "gpu": [2, "GPU-0003"]}, 2, [2, "GPU-0003"]),
    ({"gpus": 64}, 64, None),
])
def test_gpus_and_pins_reach_the_placement(vllm, gpus, pin):
    entry = check(**vllm)
    assert (entry["gpus"], entry["gpu"]) == (gpus, pin)
    services = _plan.placement_input(tp_catalog(**vllm), "multi-gpu", "vllm", EXTRA, FOUR_GPUS)
    service = next(s for s in services if s["name"] == "vllm")
    assert (service.get("gpus"), service.get("gpu")) == (gpus, pin)


# ---- the plan -----------------------------------------------------------------------------

def spanning(service, indexes, budget=40960, util=0.83, **extra):
    """An assignment of ``service`` on the GPUs ``indexes`` (interface of gpu_placement)."""
    gpus = [{"gpu": str(i), "gpu_index": i, "gpu_uuid": "GPU-%04d" % i, "gpu_name": "GPU%d" % i,
             "device_id": "GPU-%04d" % i} for i in indexes]
    joined = ",".join(g["device_id"] for g in gpus)
    settings = {"gpu_memory_utilization": util}
    if len(indexes) > 1:
        settings["tensor_parallel_size"] = len(indexes)
    return dict(gpus[0], service=service, engine="vllm", vram_budget_mib=budget,
                adjusted=False, device_id=joined, environment={"CUDA_VISIBLE_DEVICES": joined},
                engine_settings=settings, gpu_count=len(indexes), gpus=gpus, **extra)


def one_gpu(service, index, budget):
    return dict(spanning(service, [index], budget), engine="ollama", engine_settings={})


def tp_plan(indexes=(2, 3), gpus=None, **vllm):
    catalog = tp_catalog(gpus=len(indexes), **vllm)
    placement = {"strategy": "balanced", "assignments": [
        one_gpu("ollama", 0, 2963), one_gpu("vision", 0, 2315), spanning("vllm", list(indexes))]}
    return _plan.plan(catalog, placement, FOUR_GPUS if gpus is None else gpus, "multi-gpu",
                      "vllm", EXTRA)


def placed(plan, name="vllm"):
    return next(s for s in plan["services"] if s["name"] == name)["placement"]


def test_plan_names_every_gpu_of_a_tensor_parallel_service():
    where = placed(tp_plan())
    assert {k: where[k] for k in ("gpu", "gpu_index", "gpu_uuid", "device_id", "gpu_count",
                                  "gpu_indexes", "gpu_uuids", "device_ids", "vram_budget_mib",
                                  "environment")} == {
        "gpu": "2", "gpu_index": 2, "gpu_uuid": "GPU-0002", "device_id": "GPU-0002,GPU-0003",
        "gpu_count": 2, "gpu_indexes": [2, 3], "gpu_uuids": ["GPU-0002", "GPU-0003"],
        "device_ids": ["GPU-0002", "GPU-0003"], "vram_budget_mib": 40960,
        "environment": {"CUDA_VISIBLE_DEVICES": "GPU-0002,GPU-0003"}}
    assert where["engine_args"] == ["--gpu-memory-utilization", "0.83",
                                    "--tensor-parallel-size", "2"]


def test_plan_of_one_gpu_keeps_its_shape_and_gains_the_lists():
    where = placed(tp_plan(indexes=(1,)))
    assert (where["device_id"], where["gpu_count"], where["gpu_indexes"], where["device_ids"]) \
        == ("GPU-0001", 1, [1], ["GPU-0001"])
    assert "--tensor-parallel-size" not in where["engine_args"]
    assert placed(tp_plan(indexes=(1,)), "ollama")["device_ids"] == ["GPU-0000"]


def test_an_assignment_without_a_gpus_list_is_its_one_gpu():
    """A placement of before tensor parallelism (no ``gpus`` list) still plans."""
    assignment = {k: v for k, v in spanning("vllm", [1]).items()
                  if k not in ("gpus", "gpu_count")}
    plan = _plan.plan(tp_catalog(gpu=1), {"assignments": [assignment]}, FOUR_GPUS,
                      "multi-gpu", "vllm", EXTRA)
    where = placed(plan)
    assert (where["gpu_count"], where["gpu_indexes"], where["device_ids"]) == \
        (1, [1], ["GPU-0001"])


def test_summary_names_all_gpus_and_the_budget_per_gpu_and_none_is_idle():
    plan = tp_plan()
    assert "vllm: GPU 2, 3 (GPU-0002, GPU-0003), 40960 MiB per GPU" in plan["summary"]
    assert 2 not in plan["idle_gpus"] and 3 not in plan["idle_gpus"]
    assert not any(line.startswith("GPU 2") or "GPU 2, 3 idle" in line
                   for line in plan["summary"])


def test_tensor_parallel_size_follows_the_gpus_when_the_settings_omit_it():
    assignment = spanning("vllm", [2, 3])
    del assignment["engine_settings"]["tensor_parallel_size"]
    plan = _plan.plan(tp_catalog(gpus=2), {"assignments": [assignment]}, FOUR_GPUS,
                      "multi-gpu", "vllm", EXTRA)
    assert placed(plan)["engine_args"][-2:] == ["--tensor-parallel-size", "2"]


# ---- the documents ------------------------------------------------------------------------

def test_compose_overlays_give_the_container_exactly_its_gpus():
    plan = tp_plan(indexes=(1, 3))
    docker = _render.compose_document(plan, "gpu")["services"]
    podman = _render.compose_document(plan, "podman")["services"]
    assert docker["vllm"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["GPU-0001", "GPU-0003"], "capabilities": ["gpu"]}]
    assert podman["vllm"]["devices"] == ["nvidia.com/gpu=GPU-0001", "nvidia.com/gpu=GPU-0003"]
    assert docker["vllm"]["command"][-4:] == ["--gpu-memory-utilization", "0.83",
                                              "--tensor-parallel-size", "2"]
    assert "environment" not in docker["vllm"]  # never CUDA_VISIBLE_DEVICES in a container
    assert docker["ollama"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"] == ["GPU-0000"]


def test_amd_tensor_parallel_gets_its_device_nodes_and_the_joined_rocr_list():
    amd = [gpu(i, 65536, vendor="amd") for i in range(4)]
    plan = tp_plan(gpus=amd)
    for item in plan["services"]:
        if item["placement"] is not None and item["name"] == "vllm":
            item["placement"]["environment"] = {"ROCR_VISIBLE_DEVICES": "2,3"}
    overlay = _render.compose_document(plan, "gpu")["services"]["vllm"]
    assert overlay["devices"] == ["/dev/kfd", "/dev/dri"]
    assert overlay["environment"] == {"ROCR_VISIBLE_DEVICES": "2,3"}


def test_systemd_instance_sees_the_joined_gpus_and_the_tensor_parallel_size():
    instance = next(i for i in _render.systemd_instances(tp_plan()) if i["service"] == "vllm")
    env = instance["environment"]
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0002,GPU-0003"
    assert env["VLLM_GPU_MEMORY_UTILIZATION"] == "0.83"
    assert env["VLLM_EXTRA_ARGS"] == "--tensor-parallel-size 2"
    assert "CUDA_VISIBLE_DEVICES=GPU-0002,GPU-0003" in instance["env_lines"]


def test_compose_overlay_of_a_hand_made_plan_splits_the_joined_device_id():
    """A plan written before the device_ids list existed: device_id text joined by commas."""
    plan = tp_plan()
    where = placed(plan)
    del where["device_ids"]
    overlay = _render.compose_document(plan, "gpu")["services"]["vllm"]
    assert overlay["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [
        "GPU-0002", "GPU-0003"]


def test_a_tensor_parallel_service_no_host_can_take_fails_the_plan():
    """gpus: 9 on an 8-GPU host: the plan fails naming the field, before anything is written
    (a vLLM rendered without GPUs would only crash at the apply and roll back)."""
    def nine(catalog):
        catalog["vllm"].pop("gpu")
        catalog["vllm"]["gpus"] = 9

    with pytest.raises(ValueError, match=r"^services_catalog\.vllm\.gpus asks for 9 GPUs and "
                       r"the placement found none that can take it \(.*9 GPUs.*\); got: 9$"):
        make_plan(profile="multi-gpu", mode="vllm", gpus=[gpu(i) for i in range(8)],
                  change=nine)
