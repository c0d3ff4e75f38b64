# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes manifests that match the placement: GPU requests, time-slicing, MIG, AMD, node
labels and taints from one fleet placement.

kubernetes-validate checks the rendered files in tests/integration/test_k8s.py.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _k8s, _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import TWO_GPUS, default_catalog, gpu, make_plan

CATALOG, EXTRA = default_catalog()


def gpus_of(count, vendor="nvidia"):
    return [gpu(i, vendor=vendor) for i in range(count)]


def by_file(manifests):
    return {f["name"]: f for f in manifests["files"]}


def pod_of(manifests, name):
    return by_file(manifests)[name]["documents"][0]["spec"]["template"]["spec"]


def limits(manifests, name):
    return pod_of(manifests, name)["containers"][0].get("resources", {}).get("limits", {})


def node_facts(manifests):
    """What the files say, read as the cluster would: {node: (limits of its pods, device
    plugin config or None)}; pods without a node affinity count for the node None."""
    files = by_file(manifests)
    labels = {}
    for node in (files.get("nodes") or {"documents": []})["documents"]:
        labels[node["metadata"]["name"]] = node["metadata"]["labels"]
    configs = {}
    if "nvidia-device-plugin" in files:
        configs = {key: yaml.safe_load(text) for key, text in
                   files["nvidia-device-plugin"]["documents"][0]["data"].items()}
    result = {}
    for file in manifests["files"]:
        if file["service"] is None:
            continue
        pod = file["documents"][0]["spec"]["template"]["spec"]
        terms = pod.get("affinity", {}).get("nodeAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms")
        node = terms[0]["matchExpressions"][0]["values"][0] if terms else None
        asked = pod["containers"][0].get("resources", {}).get("limits", {})
        if asked:
            result.setdefault(node, [[], None])[0].append(asked)
    for node, entry in result.items():
        key = (labels.get(node) or {}).get(_k8s.DEVICE_PLUGIN_CONFIG_LABEL)
        entry[1] = configs.get(key) if key else None
    return result


def check_arithmetic(manifests, plan, gpus_by_node):
    """The request arithmetic against the placement, per node: whole-GPU requests only where
    no GPU is time-sliced, shared replicas only within GPUs x replicas, at least as many
    replicas per GPU as services share one, and never more GPUs than the node has."""
    users = {}
    for service in plan["services"]:
        where = service["placement"]
        if not service["active"] or where is None or service["restart"] == "no":
            continue
        node = where.get("node", "box")
        for index in where.get("gpu_indexes") or [where["gpu_index"]]:
            users.setdefault(node, {}).setdefault(index, []).append(service["name"])
    facts = node_facts(manifests)
    for node, (asked, config) in facts.items():
        count = len(gpus_by_node[node])
        whole = sum(a.get("nvidia.com/gpu", 0) + a.get("amd.com/gpu", 0) for a in asked)
        shared = sum(a.get("nvidia.com/gpu.shared", 0) for a in asked)
        slicing = ((config or {}).get("sharing") or {}).get("timeSlicing")
        replicas = slicing["resources"][0]["replicas"] if slicing else None
        most = max((len(n) for n in users.get(node, {}).values()), default=0)
        if replicas:
            assert whole == 0, (node, asked)
            assert replicas >= most, (node, replicas, users)
            assert shared <= count * replicas, (node, asked)
            assert slicing["renameByDefault"] is True
        else:
            assert shared == 0 and most <= 1, (node, asked, users)
            assert whole <= count - sum(1 for n in users.get(node, {}).values() if len(n) > 1)
        assert whole + (shared / replicas if replicas else 0) <= count, (node, asked)


# ---- the arithmetic of the default plans ----------------------------------------------------

DEFAULT_PLANS = [("single-gpu", "ollama", 1)] + [
    (profile, mode, count) for profile, count in (("dual-gpu", 2), ("multi-gpu", 4),
                                                  ("multi-gpu", 8))
    for mode in ("ollama", "vllm", "mixed")]


def role_plan(profile, mode, gpus, catalog=CATALOG):
    """The plan as the services role makes it (both placement passes, spare-GPU replicas)."""
    placement = _plan.place_in_two_passes(catalog, profile, mode, EXTRA, gpus,
                                          lambda services: place(gpus, services))
    return _plan.plan(catalog, placement, gpus, profile, mode, EXTRA)


@pytest.mark.parametrize("profile,mode,count", DEFAULT_PLANS)
def test_default_plans_never_ask_more_gpus_than_the_node_has(profile, mode, count):
    gpus = gpus_of(count)
    plan = role_plan(profile, mode, gpus)
    manifests = _k8s.k8s_manifests(plan, node="box", gpus=gpus)
    check_arithmetic(manifests, plan, {"box": gpus})
    assert manifests["nodes"]["box"]["capacity"] is not None
    assert not [w for w in manifests["warnings"] if "stay Pending" in w]


def test_dual_gpu_plan_time_slices_the_node():
    """ollama and vision share GPU 0: the node gets 2 replicas per GPU, every pod asks one."""
    plan = make_plan("dual-gpu", "vllm")
    manifests = _k8s.k8s_manifests(plan, node="box", gpus=TWO_GPUS)
    for name in ("ollama", "vision", "vllm"):
        assert limits(manifests, name) == {"nvidia.com/gpu.shared": 1}, name
    assert limits(manifests, "docling") == {}
    config = by_file(manifests)["nvidia-device-plugin"]["documents"][0]
    assert (config["metadata"]["name"], config["metadata"]["namespace"]) == (
        "gpufleet-device-plugin", "nvidia-device-plugin")
    assert yaml.safe_load(config["data"]["gpufleet-ts2"]) == {
        "version": "v1", "flags": {"migStrategy": "none"},
        "sharing": {"timeSlicing": {"renameByDefault": True, "failRequestsGreaterThanOne": True,
                                    "resources": [{"name": "nvidia.com/gpu", "replicas": 2}]}}}
    assert yaml.safe_load(config["data"]["default"]) == {
        "version": "v1", "flags": {"migStrategy": "none"}}
    node = by_file(manifests)["nodes"]["documents"][0]
    assert node["metadata"] == {"name": "box", "labels": {
        "gpufleet.io/gpu.vendor": "nvidia", "gpufleet.io/gpu.product": "GPU0",
        "gpufleet.io/gpu.count": "2", "nvidia.com/device-plugin.config": "gpufleet-ts2"}}
    assert manifests["warnings"] == [
        "vllm (GPU 1) has a GPU alone in the placement, but node box time-slices every GPU (the "
        "device plugin cannot share one GPU only): each gets a replica of some GPU, not a whole "
        "one, and may share it with other pods."]
    assert _k8s.node_commands(manifests) == [
        "kubectl label node box --overwrite gpufleet.io/gpu.vendor=nvidia "
        "gpufleet.io/gpu.product=GPU0 gpufleet.io/gpu.count=2 "
        "nvidia.com/device-plugin.config=gpufleet-ts2"]
    terms = pod_of(manifests, "vllm")["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["box"]


def test_services_alone_on_their_gpus_ask_whole_gpus():
    def apart(catalog):
        catalog["vision"]["gpu"] = 1
    plan = make_plan("single-gpu", "ollama", gpus=TWO_GPUS, change=apart)
    manifests = _k8s.k8s_manifests(plan, node="box", gpus=TWO_GPUS)
    assert limits(manifests, "ollama") == {"nvidia.com/gpu": 1}
    assert limits(manifests, "vision") == {"nvidia.com/gpu": 1}
    assert "nvidia-device-plugin" not in by_file(manifests)
    assert manifests["warnings"] == []


def test_no_node_leaves_pods_unpinned_and_writes_no_node_file():
    manifests = _k8s.k8s_manifests(make_plan("dual-gpu", "vllm"))
    assert "nodes" not in by_file(manifests)
    assert "affinity" not in pod_of(manifests, "vllm")
    assert manifests["nodes"][None]["capacity"] is None


def test_a_node_with_too_few_gpus_is_said():
    """Facts of one GPU for a plan made on two: the arithmetic says which pods stay Pending."""
    manifests = _k8s.k8s_manifests(make_plan("dual-gpu", "vllm"), node="box", gpus=[gpu(0)])
    assert "node box: the pods ask 3 nvidia.com/gpu.shared, it has 2: 1 stay Pending." \
        in manifests["warnings"]


# ---- tensor parallel, MIG, AMD ------------------------------------------------------------

def spanning(plan, name, indexes):
    """A plan whose service ``name`` spans ``indexes`` (interface 3 of the plan)."""
    plan = copy.deepcopy(plan)
    for service in plan["services"]:
        if service["name"] == name:
            service["placement"].update(
                gpu=str(indexes[0]), gpu_index=indexes[0], gpu_count=len(indexes),
                gpu_indexes=list(indexes), gpu_uuids=["GPU-%04d" % i for i in indexes],
                device_ids=["GPU-%04d" % i for i in indexes])
    return plan


def test_tensor_parallel_service_asks_its_gpus_whole():
    def apart(catalog):
        catalog["vision"]["gpu"] = 1
    gpus = gpus_of(4)
    plan = spanning(make_plan("dual-gpu", "vllm", gpus=gpus, change=apart), "vllm", [2, 3])
    plan["services"] = [s for s in plan["services"] if s["name"] != "ollama"]
    manifests = _k8s.k8s_manifests(plan, node="box", gpus=gpus)
    assert limits(manifests, "vllm") == {"nvidia.com/gpu": 2}
    pod = pod_of(manifests, "vllm")
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} \
        in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    check_arithmetic(manifests, plan, {"box": gpus})


def test_tensor_parallel_service_of_the_catalog_through_the_real_plan():
    catalog = copy.deepcopy(CATALOG)
    catalog["vllm"]["gpus"] = 2
    catalog["vllm"].pop("gpu", None)
    gpus = gpus_of(4)
    plan = role_plan("dual-gpu", "vllm", gpus, catalog)
    manifests = _k8s.k8s_manifests(plan, node="box", gpus=gpus)
    container = pod_of(manifests, "vllm")["containers"][0]
    args = container["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    # ollama and vision share GPU 0, so the node is time-sliced: two replicas, said.
    assert container["resources"] == {"limits": {"nvidia.com/gpu.shared": 2}}
    assert any("(tensor parallel)" in w for w in manifests["warnings"])
    check_arithmetic(manifests, plan, {"box": gpus})


def test_tensor_parallel_on_a_time_sliced_node_is_warned():
    gpus = gpus_of(4)
    plan = spanning(make_plan("dual-gpu", "vllm", gpus=gpus), "vllm", [2, 3])
    manifests = _k8s.k8s_manifests(plan, node="box", gpus=gpus)
    assert limits(manifests, "vllm") == {"nvidia.com/gpu.shared": 2}
    config = manifests["nodes"]["box"]["device_plugin_config"]
    assert config["sharing"]["timeSlicing"]["failRequestsGreaterThanOne"] is False
    assert any(w.startswith("vllm spans GPU 2, 3 (tensor parallel) on node box, whose GPUs "
                            "are time-sliced") for w in manifests["warnings"])
    check_arithmetic(manifests, plan, {"box": gpus})


MIGS = [{"index": 0, "uuid": "MIG-aaaa", "name": "MIG 3g.40gb", "memory_total_mib": 40192,
         "memory_free_mib": 40192},
        {"index": 1, "uuid": "MIG-bbbb", "name": "MIG 1g.10gb", "memory_total_mib": 9984,
         "memory_free_mib": 9984},
        {"index": 2, "uuid": "MIG-cccc", "name": "MIG 1g.10gb", "memory_total_mib": 9984,
         "memory_free_mib": 9984}]


def mig_gpus():
    mig = dict(gpu(0, total=81559), mig_mode="Enabled", mig_devices=copy.deepcopy(MIGS))
    return [mig, gpu(1)]


@pytest.mark.parametrize("name, profile", [
    ("MIG 1g.10gb", "1g.10gb"), ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "3g.40gb"),
    ("1g.10gb", "1g.10gb"), ("MIG 1c.3g.40gb", "1c.3g.40gb"), ("MIG 1g.10gb+me", "1g.10gb+me"),
    ("NVIDIA H100", None), (None, None),
])
def test_mig_profile_from_the_device_name(name, profile):
    assert _k8s.mig_profile(name) == profile


def test_mig_placements_ask_mig_resources_under_the_mixed_strategy():
    def pins(catalog):
        catalog["ollama"]["gpu"] = "0:1"
        catalog["vision"]["gpu"] = "0:2"
    gpus = mig_gpus()
    plan = make_plan("single-gpu", "ollama", gpus=gpus, change=pins)
    manifests = _k8s.k8s_manifests(plan, node="h100", gpus=gpus)
    assert limits(manifests, "ollama") == {"nvidia.com/mig-1g.10gb": 1}
    assert limits(manifests, "vision") == {"nvidia.com/mig-1g.10gb": 1}
    result = manifests["nodes"]["h100"]
    assert result["capacity"] == {"nvidia.com/gpu": 1, "nvidia.com/mig-3g.40gb": 1,
                                  "nvidia.com/mig-1g.10gb": 2}
    assert result["device_plugin_config"] == {"version": "v1", "flags": {"migStrategy": "mixed"}}
    labels = by_file(manifests)["nodes"]["documents"][0]["metadata"]["labels"]
    assert labels["nvidia.com/device-plugin.config"] == "gpufleet-mig"
    assert "node h100: the MIG placements ask nvidia.com/mig-<profile> resources: its device " \
           "plugin must run with migStrategy mixed (config gpufleet-mig)." in manifests["warnings"]


def test_a_shared_mig_device_is_time_sliced_too():
    def pins(catalog):
        catalog["ollama"]["gpu"] = "0:1"
        catalog["vision"]["gpu"] = "0:1"
    gpus = mig_gpus()
    plan = make_plan("single-gpu", "ollama", gpus=gpus, change=pins)
    manifests = _k8s.k8s_manifests(plan, node="h100", gpus=gpus)
    assert limits(manifests, "ollama") == {"nvidia.com/mig-1g.10gb.shared": 1}
    config = manifests["nodes"]["h100"]["device_plugin_config"]
    assert config["sharing"]["timeSlicing"]["resources"] == [
        {"name": "nvidia.com/mig-1g.10gb", "replicas": 2}]
    assert manifests["nodes"]["h100"]["capacity"]["nvidia.com/mig-1g.10gb.shared"] == 4


def test_mig_device_without_a_profile_in_its_name_fails():
    def pins(catalog):
        catalog["ollama"]["gpu"] = "0:1"
    gpus = mig_gpus()
    gpus[0]["mig_devices"][1]["name"] = "mystery"
    plan = make_plan("single-gpu", "ollama", gpus=gpus, change=pins)
    with pytest.raises(ValueError) as error:
        _k8s.k8s_manifests(plan, node="h100", gpus=gpus)
    assert str(error.value) == (
        "ollama: the MIG profile of 0:1 on node h100 cannot be told from its name "
        "(nvidia.com/mig-<profile> needs it); got: 'mystery'")


def test_amd_gpus_ask_whole_gpus_and_sharing_is_said():
    gpus = gpus_of(2, vendor="amd")
    plan = make_plan("dual-gpu", "vllm", gpus=gpus)
    manifests = _k8s.k8s_manifests(plan, node="mi", gpus=gpus)
    assert limits(manifests, "vllm") == {"amd.com/gpu": 1}
    assert limits(manifests, "ollama") == {"amd.com/gpu": 1}
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod_of(manifests, "vllm")["tolerations"]
    assert "nvidia-device-plugin" not in by_file(manifests)
    assert manifests["warnings"] == [
        "GPU 0 of node mi is shared by ollama, vision in the placement, but the AMD device "
        "plugin hands out whole GPUs only: each asks its own amd.com/gpu, so some pods stay "
        "Pending. Give each service its own AMD GPU for Kubernetes.",
        "node mi: the pods ask 3 amd.com/gpu, it has 2: 1 stay Pending."]


# ---- the device plugin config: our own schema check ---------------------------------------

GOOD_CONFIG = {"version": "v1", "flags": {"migStrategy": "none"},
               "sharing": {"timeSlicing": {"renameByDefault": True,
                                           "resources": [{"name": "nvidia.com/gpu",
                                                          "replicas": 4}]}}}


def bad(change):
    config = copy.deepcopy(GOOD_CONFIG)
    change(config)
    return config


@pytest.mark.parametrize("config, message", [
    (bad(lambda c: c.update(version="v2")), "device plugin config.version must be v1; got: 'v2'"),
    (bad(lambda c: c["flags"].update(migStrategy="both")),
     "device plugin config.flags.migStrategy must be one of none, single, mixed; got: 'both'"),
    (bad(lambda c: c["sharing"]["timeSlicing"]["resources"][0].update(replicas=1)),
     "device plugin config.sharing.timeSlicing.resources[0].replicas: number of replicas must "
     "be >= 2; got: 1"),
    (bad(lambda c: c["sharing"]["timeSlicing"].update(resources=[])),
     "device plugin config.sharing.timeSlicing.resources: no resources specified; got: []"),
    (bad(lambda c: c["sharing"]["timeSlicing"]["resources"][0].update(name="amd.com/gpu")),
     "device plugin config.sharing.timeSlicing.resources[0].name must be nvidia.com/gpu or "
     "nvidia.com/mig-<profile>; got: 'amd.com/gpu'"),
    (bad(lambda c: c["sharing"]["timeSlicing"].update(renameByDefault="yes")),
     "device plugin config.sharing.timeSlicing.renameByDefault must be a boolean; got: 'yes'"),
    (bad(lambda c: c["sharing"].update(mps={})),
     "device plugin config.sharing may only hold timeSlicing here; got: "
     "{'timeSlicing': {'renameByDefault': True, 'resources': [{'name': 'nvidia.com/gpu', "
     "'replicas': 4}]}, 'mps': {}}"),
    (bad(lambda c: c.update(extra=1)), "device plugin config has unknown key(s): extra"),
])
def test_device_plugin_config_check(config, message):
    with pytest.raises(ValueError) as error:
        _k8s.check_device_plugin_config(config)
    assert str(error.value) == message


def test_device_plugin_config_text_reads_back_as_written():
    assert yaml.safe_load(_k8s.device_plugin_config_text(GOOD_CONFIG)) == GOOD_CONFIG


# ---- bad input: every message names the field and the value -------------------------------

BAD_PLAN = "services_plan must be the fact set by the gpufleet.inference.services role; got: %r"


@pytest.mark.parametrize("plan", [None, {"services": []}, {"compose_profiles": []}])
def test_manifests_check_the_plan(plan):
    with pytest.raises(ValueError) as error:
        _k8s.k8s_manifests(plan)
    assert str(error.value) == BAD_PLAN % (plan,)


@pytest.mark.parametrize("kwargs, message", [
    ({"namespace": "GPU"}, "k8s_manifests_namespace must be a DNS-1123 label; got: 'GPU'"),
    ({"node_placement": {"vllm": {"nodes": "khelben"}}},
     "k8s_manifests_node_placement.vllm.nodes must be a list of node names; got: 'khelben'"),
    ({"node_placement": {"tgi": {}}},
     "k8s_manifests_node_placement has a service not in services_catalog (%s); got: 'tgi'"),
    ({"taint_key": "bad key"},
     "k8s_manifests_taint_key must be a label key ([prefix/]name, name 1-63 characters "
     "[A-Za-z0-9_.-]); got: 'bad key'"),
    ({"node": "Box_1"},
     "k8s_manifests_node must be a node name (a DNS-1123 subdomain: set it to this host's "
     "Kubernetes node) or null; got: 'Box_1'"),
    ({"node": "box", "gpus": "two"},
     "k8s_manifests_gpus must be the node's ansible_facts.gpus (a list); got: 'two'"),
    ({"device_plugin_namespace": "Kube System"},
     "k8s_manifests_device_plugin_namespace must be a DNS-1123 label; got: 'Kube System'"),
    ({"device_plugin_config_map": "my_map"},
     "k8s_manifests_device_plugin_config_map must be a DNS-1123 subdomain; got: 'my_map'"),
])
def test_bad_options(kwargs, message):
    plan = make_plan()
    with pytest.raises(ValueError) as error:
        _k8s.k8s_manifests(plan, **kwargs)
    names = ", ".join(s["name"] for s in plan["services"])
    assert str(error.value) == (message % names if "%s" in message else message)


# ---- one fleet placement: nodes, labels, taints, pinning (seed 002's split) -----------------

def fleet_hosts():
    """A workstation with two RTX 3090, a laptop with one 8 GB GPU, a server dedicated to vLLM."""
    workstation = [dict(gpu(i), name="NVIDIA GeForce RTX 3090", uuid="GPU-ws%02d" % i)
                   for i in range(2)]
    laptop = [dict(gpu(0, total=8192), name="NVIDIA GeForce RTX 2070", uuid="GPU-lap0")]
    server = [dict(gpu(0, total=49152), name="NVIDIA L40S", uuid="GPU-srv0")]
    return [
        {"name": "workstation", "gpus": workstation, "labels": {"gpufleet.io/role": "workstation"}},
        {"name": "laptop", "gpus": laptop, "labels": {"gpufleet.io/role": "laptop"}},
        {"name": "server", "gpus": server, "labels": {"gpufleet.io/role": "server"},
         "dedicated": ["vllm"]},
    ]


def test_fleet_plan_pins_each_workload_where_place_fleet_put_it():
    hosts = fleet_hosts()
    plan = _k8s.fleet_plan(CATALOG, hosts, "dual-gpu", "vllm", EXTRA)
    nodes = {s["name"]: s["placement"]["node"] for s in plan["services"]
             if s["active"] and s["placement"] is not None}
    assert nodes["vllm"] == "server"
    assert "fleet placement: the GPU index pins of ollama, vision, vllm name a GPU of one host; " \
           "the fleet placement chose their GPUs itself (pin by UUID to keep one)" \
        in plan["warnings"]
    assert "server" not in {n for s, n in nodes.items() if s != "vllm"}
    manifests = _k8s.k8s_manifests(plan)
    for name, node in nodes.items():
        terms = pod_of(manifests, name)["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == [node], name
    assert {"key": "dedicated", "operator": "Equal", "value": "vllm", "effect": "NoSchedule"} \
        in pod_of(manifests, "vllm")["tolerations"]
    for name in set(nodes) - {"vllm"}:
        assert all(t["key"] != "dedicated" for t in pod_of(manifests, name)["tolerations"])
    documents = {d["metadata"]["name"]: d for d in by_file(manifests)["nodes"]["documents"]}
    assert documents["server"]["spec"] == {"taints": [
        {"key": "dedicated", "value": "vllm", "effect": "NoSchedule"}]}
    assert documents["server"]["metadata"]["labels"] == {
        "gpufleet.io/role": "server", "gpufleet.io/gpu.vendor": "nvidia",
        "gpufleet.io/gpu.product": "NVIDIA-L40S", "gpufleet.io/gpu.count": "1",
        "gpufleet.io/dedicated": "vllm"}
    assert "spec" not in documents["laptop"]
    assert "kubectl taint node server --overwrite dedicated=vllm:NoSchedule" \
        in _k8s.node_commands(manifests)
    check_arithmetic(manifests, plan, {h["name"]: h["gpus"] for h in hosts})


def test_fleet_plan_keeps_the_vendor_of_each_host():
    hosts = fleet_hosts()
    hosts[2]["gpus"] = [dict(hosts[2]["gpus"][0], vendor="amd")]
    manifests = _k8s.k8s_manifests(_k8s.fleet_plan(CATALOG, hosts, "dual-gpu", "vllm", EXTRA))
    assert limits(manifests, "vllm") == {"amd.com/gpu": 1}


def test_fleet_hosts_from_the_inventory():
    hostvars = {
        "ws": {"ansible_facts": {"gpus": TWO_GPUS}, "gpufleet_node_labels": {"a": "b"}},
        "srv": {"services_gpus": [gpu(0)], "gpufleet_node_dedicated": "vllm"},
        "cpu": {},
    }
    assert _k8s.fleet_hosts(["ws", "srv", "cpu"], hostvars) == [
        {"name": "ws", "gpus": TWO_GPUS, "labels": {"a": "b"}, "dedicated": []},
        {"name": "srv", "gpus": [gpu(0)], "labels": {}, "dedicated": ["vllm"]},
        {"name": "cpu", "gpus": [], "labels": {}, "dedicated": []}]


@pytest.mark.parametrize("change, message", [
    (lambda h: h[0]["labels"].update({"bad key": "x"}),
     "services_plan.nodes[0].labels key must be a label key ([prefix/]name, name 1-63 characters "
     "[A-Za-z0-9_.-]); got: 'bad key'"),
    (lambda h: h[1]["labels"].update({"gpufleet.io/role": "a laptop"}),
     "services_plan.nodes[1].labels.gpufleet.io/role must be a label value (0-63 characters "
     "[A-Za-z0-9_.-], beginning and ending with a letter or digit); got: 'a laptop'"),
])
def test_fleet_node_labels_are_checked(change, message):
    hosts = fleet_hosts()
    change(hosts)
    plan = _k8s.fleet_plan(CATALOG, hosts, "dual-gpu", "vllm", EXTRA)
    with pytest.raises(ValueError) as error:
        _k8s.k8s_manifests(plan)
    assert str(error.value) == message


# ---- steering and escaping, as before ------------------------------------------------------

def test_dedicated_node_for_vllm_by_node_placement():
    manifests = _k8s.k8s_manifests(
        make_plan(mode="vllm"), node_placement={"vllm": {"nodes": ["khelben"],
                                                         "dedicated": "vllm"}})
    files = by_file(manifests)
    assert [f["service"] for f in manifests["files"] if f["service"]] == [
        s["name"] for s in make_plan(mode="vllm")["services"]
        if s["active"] and s["restart"] != "no"]
    assert {"ollama", "vision", "vllm", "docling"} <= set(files)
    deployment, service = files["vllm"]["documents"]
    pod = deployment["spec"]["template"]["spec"]
    assert {"key": "dedicated", "operator": "Equal", "value": "vllm",
            "effect": "NoSchedule"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["khelben"]
    assert "CUDA_VISIBLE_DEVICES" not in str(pod)
    assert service["spec"]["ports"][0]["port"] == 8000
    docling = files["docling"]["documents"][0]["spec"]["template"]["spec"]
    assert "resources" not in docling["containers"][0] and "tolerations" not in docling
    assert files["ollama"]["documents"][1]["metadata"]["name"] == "ollama"


HOSTILE = {"PASSWORD": "pa$word", "WHERE": "${HOME}", "SHARE": "100%"}


def test_escapes_every_dollar_of_a_user_value():
    """Kubernetes expands $(VAR) in command, args and env values; '$$' is its literal '$'."""
    def change(catalog):
        catalog["vllm"]["environment"] = dict(HOSTILE)
        catalog["vllm"]["command"] = ["--api-key=pa$word", "--served-model-name=${HOME}"]
        catalog["vllm"]["entrypoint"] = ["/bin/run$1", "100%"]
    manifests = _k8s.k8s_manifests(make_plan("dual-gpu", "vllm", change=change))
    container = pod_of(manifests, "vllm")["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["PASSWORD"], env["WHERE"], env["SHARE"]) == ("pa$$word", "$${HOME}", "100%")
    assert container["command"] == ["/bin/run$$1", "100%"]
    assert "--api-key=pa$$word" in container["args"]
    assert "--served-model-name=$${HOME}" in container["args"]


# ---- the files config_files writes ---------------------------------------------------------

def _dump(document, **options):
    return yaml.dump(document, **options)


def test_manifest_files_are_header_comments_and_documents_in_order():
    manifests = _k8s.k8s_manifests(make_plan("dual-gpu", "vllm"), node="box", gpus=TWO_GPUS)
    files = _k8s.manifest_files(manifests["files"], "/opt/gpufleet/k8s/", _dump)
    assert [f["path"] for f in files] == ["/opt/gpufleet/k8s/%s.yml" % m["name"]
                                          for m in manifests["files"]]
    assert {f["mode"] for f in files} == {"0644"}
    by_name = dict(zip((m["name"] for m in manifests["files"]), files))
    nodes = by_name["nodes"]["content"]
    lines = nodes.splitlines()
    assert lines[0] == _k8s.MANIFEST_HEADER
    comments = ["# %s" % c if c else "#" for c in _k8s.NODES_COMMENT]
    assert lines[1:1 + len(comments)] == comments
    vllm = by_name["vllm"]["content"]
    assert list(yaml.safe_load_all(vllm)) == by_name_documents(manifests, "vllm")
    assert vllm.count("\n---\n") == 2 and not vllm.endswith("\n\n")
    # what to_nice_yaml(indent=2, sort_keys=false, width=200) writes: keys in their order
    assert "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: vllm\n" in vllm


def by_name_documents(manifests, name):
    return next(m["documents"] for m in manifests["files"] if m["name"] == name)


@pytest.mark.parametrize("files,directory,message", [
    ([], "k8s", "k8s_manifests_dir must be an absolute path; got: 'k8s'"),
    ([], None, "k8s_manifests_dir must be an absolute path; got: None"),
    ({"name": "x"}, "/k8s", "files must be the list k8s_manifests returns; got: {'name': 'x'}"),
    ([{"name": "../etc/passwd", "documents": [{}]}], "/k8s",
     "files[0].name must be a lower-case file name without '/'; got: '../etc/passwd'"),
    ([{"name": "ok", "documents": []}], "/k8s",
     "files[0].documents must be a non-empty list; got: []"),
    ([{"name": "ok", "comments": "one line", "documents": [{}]}], "/k8s",
     "files[0].comments must be a list of lines; got: 'one line'"),
])
def test_manifest_files_bad_input_names_the_field(files, directory, message):
    with pytest.raises(ValueError) as exc:
        _k8s.manifest_files(files, directory, _dump)
    assert str(exc.value) == message
