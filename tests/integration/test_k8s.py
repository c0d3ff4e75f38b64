# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The k8s_manifests role and the fleet playbook (playbooks/k8s.yml) run for real by
ansible-playbook on localhost into temporary directories, with hand-written GPU facts; every
file is checked by kubernetes-validate's offline schemas (``--strict``), the NVIDIA device
plugin configs inside the ConfigMap by our own check of their fields, and the GPU requests of
each node against its GPUs.
"""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _k8s

from .conftest import REPO
from .render_support import DUAL_GPUS, kubernetes_validate_bin, recap, run_playbook

PLAYBOOK = """---
- name: Render the Kubernetes manifests of each host's plan
  hosts: all
  gather_facts: false
  roles:
    - gpufleet.inference.services
    - gpufleet.inference.k8s_manifests
"""


def gpus(count, name="NVIDIA GeForce RTX 3090", vendor="nvidia", total=24576, prefix="a"):
    result = []
    for index in range(count):
        gpu = copy.deepcopy(DUAL_GPUS[0])
        gpu.update(index=index, uuid="GPU-%s%07d-0000-4000-8000-000000000000" % (prefix, index),
                   name=name, vendor=vendor, memory_total_mib=total,
                   memory_free_mib=total - 262, pci_bus_id="00000000:%02X:00.0" % (index + 1))
        result.append(gpu)
    return result


def mig_gpus():
    """An H100 in MIG mode: one 3g.40gb and two 1g.10gb devices."""
    result = gpus(1, name="NVIDIA H100 80GB HBM3", total=81559, prefix="c")
    result[0]["mig_mode"] = "Enabled"
    result[0]["mig_devices"] = [
        {"index": i, "uuid": "MIG-c%07d-0000-4000-8000-000000000000" % i, "name": name,
         "memory_total_mib": total, "memory_used_mib": 0, "memory_free_mib": total}
        for i, (name, total) in enumerate((("MIG 3g.40gb", 40192), ("MIG 1g.10gb", 9984),
                                           ("MIG 1g.10gb", 9984)))]
    return result


# Host: (profile, mode, GPU facts).
HOSTS = {
    "single": ("single-gpu", "ollama", gpus(1)),
    "dual-vllm": ("dual-gpu", "vllm", DUAL_GPUS),
    "dual-mixed": ("dual-gpu", "mixed", DUAL_GPUS),
    "multi": ("multi-gpu", "vllm", gpus(4, name="NVIDIA A100-SXM4-80GB", total=81920)),
    "mig": ("single-gpu", "ollama", mig_gpus()),
    "amd": ("dual-gpu", "ollama",
            gpus(2, name="AMD Instinct MI210", vendor="amd", total=65520, prefix="b")),
}


def kubernetes_validate(paths):
    binary = kubernetes_validate_bin()
    assert binary is not None, "kubernetes-validate is not installed (requirements/render.txt)"
    proc = subprocess.run([str(binary), "--strict", *[str(p) for p in paths]],
                          capture_output=True, text=True, check=False, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("k8s")
    hosts = {name: {"services_profile": profile, "services_dual_gpu_mode": mode,
                    "services_gpus": facts}
             for name, (profile, mode, facts) in HOSTS.items()}
    inventory = {"all": {"vars": {
        "ansible_connection": "local",
        "services_gather_gpu_facts": False,
        "services_models_dir": str(root / "models"),
        "k8s_manifests_dir": str(root) + "/{{ inventory_hostname }}",
    }, "hosts": hosts}}
    (root / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    (root / "render.yml").write_text(PLAYBOOK)
    first = run_playbook(root / "render.yml", root / "inventory.yml")
    second = run_playbook(root / "render.yml", root / "inventory.yml")
    return {"root": root, "first": first, "second": second}


def files_of(directory):
    return {p.stem: list(yaml.safe_load_all(p.read_text()))
            for p in sorted(directory.glob("*.yml"))}


def test_renders_every_host_and_a_second_run_changes_nothing(rendered):
    for key in ("first", "second"):
        rc, output = rendered[key]
        assert rc == 0, output
    stats = recap(rendered["second"][1])
    assert set(stats) == set(HOSTS)
    assert {h: s["changed"] for h, s in stats.items()} == dict.fromkeys(HOSTS, 0)
    text = (rendered["root"] / "dual-vllm" / "nodes.yml").read_text()
    assert text.startswith("# Managed by gpufleet.inference (k8s_manifests): edit the inventory, "
                           "not this file.\n# Labels and taints of the nodes")
    assert "# kubectl label node dual-vllm --overwrite " in text


def test_every_file_passes_kubernetes_validate(rendered):
    paths = sorted(rendered["root"].glob("*/*.yml"))
    names = {p.name for p in paths}
    assert {"namespace.yml", "nodes.yml", "nvidia-device-plugin.yml", "vllm.yml"} <= names
    rc, output = kubernetes_validate(paths)
    assert rc == 0, output


def test_kubernetes_validate_catches_a_bad_manifest(rendered, tmp_path):
    bad = tmp_path / "bad.yml"
    source = (rendered["root"] / "dual-vllm" / "vllm.yml").read_text()
    bad.write_text(source.replace("replicas: 1", "replicas: one"))
    assert kubernetes_validate([bad])[0] != 0
    config = (rendered["root"] / "dual-vllm" / "nvidia-device-plugin.yml").read_text()
    bad.write_text(config.replace("data:", "datas:"))
    assert kubernetes_validate([bad])[0] != 0


def node_arithmetic(directory):
    """Per node of a host's files: (GPUs, whole-GPU requests, shared replicas asked,
    replicas per GPU), each device plugin config checked on the way."""
    files = files_of(directory)
    node = files["nodes"][0]
    labels = node["metadata"]["labels"]
    config = None
    if "nvidia-device-plugin" in files:
        data = files["nvidia-device-plugin"][0]["data"]
        for key, text in data.items():
            _k8s.check_device_plugin_config(yaml.safe_load(text), "data.%s" % key)
        config = yaml.safe_load(data[labels[_k8s.DEVICE_PLUGIN_CONFIG_LABEL]]) \
            if _k8s.DEVICE_PLUGIN_CONFIG_LABEL in labels else None
    slicing = ((config or {}).get("sharing") or {}).get("timeSlicing")
    replicas = {r["name"]: r["replicas"] for r in (slicing or {}).get("resources", [])}
    whole = shared = 0
    for documents in files.values():
        if documents[0]["kind"] != "Deployment":
            continue
        limits = documents[0]["spec"]["template"]["spec"]["containers"][0].get(
            "resources", {}).get("limits", {})
        whole += limits.get("nvidia.com/gpu", 0) + limits.get("amd.com/gpu", 0)
        shared += limits.get("nvidia.com/gpu.shared", 0)
    return int(labels["gpufleet.io/gpu.count"]), whole, shared, replicas.get("nvidia.com/gpu")


@pytest.mark.parametrize("host", ["single", "dual-vllm", "dual-mixed", "multi", "mig"])
def test_requests_fit_the_node(rendered, host):
    count, whole, shared, replicas = node_arithmetic(rendered["root"] / host)
    if replicas:
        assert whole == 0 and 0 < shared <= count * replicas
    else:
        assert shared == 0
    assert whole + (shared / replicas if replicas else 0) <= count


def test_mig_host_asks_mig_devices_under_the_mixed_strategy(rendered):
    files = files_of(rendered["root"] / "mig")
    asked = {}
    for name, documents in files.items():
        if documents[0]["kind"] == "Deployment":
            asked[name] = documents[0]["spec"]["template"]["spec"]["containers"][0].get(
                "resources", {}).get("limits", {})
    assert any(k.startswith("nvidia.com/mig-") for limits in asked.values() for k in limits)
    label = files["nodes"][0]["metadata"]["labels"][_k8s.DEVICE_PLUGIN_CONFIG_LABEL]
    config = yaml.safe_load(files["nvidia-device-plugin"][0]["data"][label])
    assert config["flags"]["migStrategy"] == "mixed"


def test_amd_host_has_no_device_plugin_config_and_warns(rendered):
    files = files_of(rendered["root"] / "amd")
    assert "nvidia-device-plugin" not in files
    assert files["vllm" if "vllm" in files else "ollama"][0]["spec"]["template"]["spec"][
        "containers"][0]["resources"] == {"limits": {"amd.com/gpu": 1}}
    assert "the AMD device plugin hands out whole GPUs only" in rendered["first"][1]


# ---- the fleet playbook: one placement over every node ----------------------------------------

def test_fleet_playbook_renders_one_placement_over_the_inventory(tmp_path):
    out = tmp_path / "k8s"
    hosts = {
        "workstation": {"services_gpus": gpus(2), "gpufleet_node_labels": {
            "gpufleet.io/role": "workstation"}},
        "laptop": {"services_gpus": gpus(1, name="NVIDIA GeForce RTX 2070", total=8192,
                                         prefix="d"),
                   "gpufleet_node_labels": {"gpufleet.io/role": "laptop"}},
        "server": {"services_gpus": gpus(1, name="NVIDIA L40S", total=49152, prefix="e"),
                   "gpufleet_node_labels": {"gpufleet.io/role": "server"},
                   "gpufleet_node_dedicated": "vllm"},
    }
    inventory = {"all": {"vars": {
        "ansible_connection": "local", "services_gather_gpu_facts": False,
        "services_profile": "dual-gpu", "dual_gpu_mode": "vllm",
        "services_models_dir": str(tmp_path / "models"), "k8s_manifests_dir": str(out),
    }, "hosts": hosts}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    for attempt in ("first", "second"):
        rc, output = run_playbook(REPO / "playbooks/k8s.yml", tmp_path / "inventory.yml")
        assert rc == 0, output
        if attempt == "second":
            assert sum(s["changed"] for s in recap(output).values()) == 0, output
    rc, output = kubernetes_validate(sorted(out.glob("*.yml")))
    assert rc == 0, output
    files = files_of(out)
    nodes = {d["metadata"]["name"]: d for d in files["nodes"]}
    assert nodes["server"]["spec"]["taints"] == [
        {"key": "dedicated", "value": "vllm", "effect": "NoSchedule"}]
    assert nodes["laptop"]["metadata"]["labels"]["gpufleet.io/role"] == "laptop"
    pod = files["vllm"][0]["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["server"]
    assert {"key": "dedicated", "operator": "Equal", "value": "vllm",
            "effect": "NoSchedule"} in pod["tolerations"]
    for name in ("ollama", "vision"):
        spec = files[name][0]["spec"]["template"]["spec"]
        where = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert where["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] != ["server"]
