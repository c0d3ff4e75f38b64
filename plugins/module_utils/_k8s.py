# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: Kubernetes manifests that match the placement.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the filters in plugins/filter/render.py wrap them. Bad input raises ValueError
naming the field and its value (``k8s_manifests_namespace must be a DNS-1123 label; got:
'GPU'``). The same input always gives the same output.

Vocabulary
  node          a Kubernetes node: one host of the placement. A plan of one host
                (``services_plan``) renders for the node ``node``; a fleet plan
                (:func:`fleet_plan`, from one ``place_fleet`` over the inventory) carries the
                node of each placement and the hosts' GPUs, labels and dedications.
  whole GPU     a GPU the placement gives one service alone (or one tensor-parallel service
                several): the pod asks ``nvidia.com/gpu: N`` (``amd.com/gpu``,
                ``gpu.intel.com/i915``).
  shared GPU    a GPU the placement gives several services. NVIDIA only, through the device
                plugin's CUDA time-slicing: ``sharing.timeSlicing.resources`` with ``replicas``
                R (the most services on one GPU of the node). The device plugin applies
                sharing to every GPU of a node alike (its README, "Shared Access to GPUs": "You
                cannot configure sharing on a per-GPU basis"), and with ``renameByDefault`` it
                advertises every GPU of that node as R ``nvidia.com/gpu.shared`` replicas and no
                ``nvidia.com/gpu`` at all. So on a time-sliced node EVERY NVIDIA pod asks
                ``nvidia.com/gpu.shared`` (1 per GPU it spans); a service the placement gave a
                GPU alone cannot be guaranteed one there, and the warnings say so. The device
                plugin, not the placement, decides which replicas go to which pod.
  MIG device    a placement on ``i:j``: the pod asks ``nvidia.com/mig-<profile>: 1``, the
                resource of the device plugin's ``mixed`` MIG strategy, set in the node's config.
  device plugin config  ``version: v1`` documents in one ConfigMap (keys ``default`` and one
                per distinct node config), chosen per node by the label
                ``nvidia.com/device-plugin.config`` (device plugin README, "Updating Per-Node
                Configuration With a Node Label"); checked by :func:`check_device_plugin_config`.
AMD and Intel GPUs are never shared by their device plugins here: a GPU the placement shares
is asked whole by each service, and a warning counts the pods that cannot be scheduled.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement, _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._common import scalar_text
from ansible_collections.gpufleet.inference.plugins.module_utils._fileset import YAML_DUMP_OPTIONS
from ansible_collections.gpufleet.inference.plugins.module_utils._render import (
    _dollars,
    _main_command,
)

# Kubernetes extended resource per GPU vendor (the vendors' device plugins).
GPU_RESOURCE = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "intel": "gpu.intel.com/i915"}
# NVIDIA device plugin: time-sliced replicas under renameByDefault, MIG resources (mixed).
SHARED_SUFFIX = ".shared"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"
DEVICE_PLUGIN_DEFAULT_CONFIG = "default"
MIG_STRATEGIES = ("none", "single", "mixed")
# Labels this collection sets on nodes (GPU Feature Discovery's names under our prefix).
LABEL_PREFIX = "gpufleet.io/"
NODE_PLACEMENT_KEYS = ("nodes", "dedicated", "node_selector")
# vLLM workers of one tensor-parallel engine talk through /dev/shm; a pod's default is 64 MiB
# (vLLM docs, "Using Kubernetes": an emptyDir of medium Memory mounted at /dev/shm).
SHM_SIZE = "2Gi"
NODES_COMMENT = [
    "Labels and taints of the nodes that the placement relies on. Set them with the lines",
    "below (--overwrite keeps the node's other labels and taints); 'kubectl apply' of this",
    "file would replace the node's whole taint list.",
]
DEVICE_PLUGIN_COMMENT = [
    "NVIDIA device plugin configs, one per kind of node; the node label",
    "nvidia.com/device-plugin.config picks one (nodes.yml). Deploy the plugin with them:",
    "helm upgrade -i nvdp nvdp/nvidia-device-plugin --namespace %(ns)s",
    "  --set config.name=%(map)s --set config.default=default",
]

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\Z")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\Z")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?\Z")
# A MIG profile at the end of a MIG device's name: "MIG 1g.10gb", "NVIDIA H100 ... MIG
# 3g.40gb", "1g.10gb", "1c.3g.40gb" (compute instance), "1g.10gb+me" (media extensions).
_MIG_PROFILE_RE = re.compile(r"(?:^|\s)((?:[0-9]+c\.)?[0-9]+g\.[0-9]+gb(?:\+[a-z]+)*)\s*\Z")
_PRODUCT_BAD_RE = re.compile(r"[^A-Za-z0-9_.-]+")


# ---- checks -------------------------------------------------------------------------------

def _check_label_key(key, at):
    prefix, _sep, name = key.rpartition("/") if isinstance(key, str) else ("", "", None)
    if not isinstance(key, str) or not _LABEL_NAME_RE.match(name or "") or (
            prefix and not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise ValueError("%s must be a label key ([prefix/]name, name 1-63 characters "
                         "[A-Za-z0-9_.-]); got: %r" % (at, key))


def _check_label_value(value, at):
    if not isinstance(value, str) or not _LABEL_VALUE_RE.match(value):
        raise ValueError("%s must be a label value (0-63 characters [A-Za-z0-9_.-], beginning "
                         "and ending with a letter or digit); got: %r" % (at, value))


def check_node_placement(value):
    """``k8s_manifests_node_placement``: per service ``nodes``, ``dedicated``, ``node_selector``."""
    if value is None:
        return {}
    where = "k8s_manifests_node_placement"
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict of service: {nodes, dedicated, node_selector}; "
                         "got: %r" % (where, value))
    result = {}
    for name, entry in value.items():
        at = "%s.%s" % (where, name)
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, entry))
        unknown = sorted(set(entry) - set(NODE_PLACEMENT_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        nodes = entry.get("nodes") or []
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
            raise ValueError("%s.nodes must be a list of node names; got: %r"
                             % (at, entry.get("nodes")))
        dedicated = entry.get("dedicated")
        if dedicated is not None and (not isinstance(dedicated, str) or not dedicated.strip()):
            raise ValueError("%s.dedicated must be the taint value; got: %r" % (at, dedicated))
        selector = entry.get("node_selector") or {}
        if not isinstance(selector, dict):
            raise ValueError("%s.node_selector must be a dict; got: %r" % (at, selector))
        result[name] = {"nodes": nodes, "dedicated": dedicated,
                        "node_selector": {str(k): scalar_text(v) for k, v in selector.items()}}
    return result


def check_device_plugin_config(config, where="device plugin config"):
    """The fields of an NVIDIA device plugin config (api/config/v1 of NVIDIA/k8s-device-plugin)
    that this collection writes: ``version``, ``flags.migStrategy`` and
    ``sharing.timeSlicing`` (``renameByDefault``, ``failRequestsGreaterThanOne``,
    ``resources`` of ``name`` and ``replicas`` >= 2). Returns it; raises ValueError."""
    if not isinstance(config, dict):
        raise ValueError("%s must be a mapping; got: %r" % (where, config))
    unknown = sorted(set(config) - {"version", "flags", "sharing"})
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (where, ", ".join(unknown)))
    if config.get("version") != "v1":
        raise ValueError("%s.version must be v1; got: %r" % (where, config.get("version")))
    flags = config.get("flags") or {}
    if not isinstance(flags, dict) or sorted(set(flags) - {"migStrategy"}):
        raise ValueError("%s.flags may only hold migStrategy here; got: %r" % (where, flags))
    if "migStrategy" in flags and flags["migStrategy"] not in MIG_STRATEGIES:
        raise ValueError("%s.flags.migStrategy must be one of %s; got: %r"
                         % (where, ", ".join(MIG_STRATEGIES), flags["migStrategy"]))
    sharing = config.get("sharing")
    if sharing is None:
        return config
    if not isinstance(sharing, dict) or sorted(set(sharing) - {"timeSlicing"}):
        raise ValueError("%s.sharing may only hold timeSlicing here; got: %r" % (where, sharing))
    slicing = sharing.get("timeSlicing")
    at = where + ".sharing.timeSlicing"
    if not isinstance(slicing, dict):
        raise ValueError("%s must be a mapping; got: %r" % (at, slicing))
    unknown = sorted(set(slicing) - {"renameByDefault", "failRequestsGreaterThanOne",
                                     "resources"})
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
    for key in ("renameByDefault", "failRequestsGreaterThanOne"):
        if key in slicing and not isinstance(slicing[key], bool):
            raise ValueError("%s.%s must be a boolean; got: %r" % (at, key, slicing[key]))
    resources = slicing.get("resources")
    if not isinstance(resources, list) or not resources:
        raise ValueError("%s.resources: no resources specified; got: %r" % (at, resources))
    names = []
    for i, resource in enumerate(resources):
        here = "%s.resources[%d]" % (at, i)
        if not isinstance(resource, dict) or sorted(set(resource) - {"name", "replicas"}):
            raise ValueError("%s must be {name, replicas}; got: %r" % (here, resource))
        name = resource.get("name")
        if name != GPU_RESOURCE["nvidia"] and not (
                isinstance(name, str) and name.startswith(MIG_RESOURCE_PREFIX)
                and _MIG_PROFILE_RE.match(name[len(MIG_RESOURCE_PREFIX):])):
            raise ValueError("%s.name must be nvidia.com/gpu or nvidia.com/mig-<profile>; "
                             "got: %r" % (here, name))
        if name in names:
            raise ValueError("%s.name repeats %s; got: %r" % (here, name, name))
        names.append(name)
        replicas = resource.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 2:
            # The device plugin's own words for a count below 2.
            raise ValueError("%s.replicas: number of replicas must be >= 2; got: %r"
                             % (here, replicas))
    return config


def device_plugin_config_text(config):
    """The YAML text of a device plugin config (the value of its ConfigMap key)."""
    check_device_plugin_config(config)
    lines = ["version: %s" % config["version"]]
    if config.get("flags"):
        lines += ["flags:", "  migStrategy: %s" % config["flags"]["migStrategy"]]
    slicing = (config.get("sharing") or {}).get("timeSlicing")
    if slicing:
        lines += ["sharing:", "  timeSlicing:"]
        for key in ("renameByDefault", "failRequestsGreaterThanOne"):
            if key in slicing:
                lines.append("    %s: %s" % (key, "true" if slicing[key] else "false"))
        lines.append("    resources:")
        for resource in slicing["resources"]:
            lines += ["      - name: %s" % resource["name"],
                      "        replicas: %d" % resource["replicas"]]
    return "\n".join(lines) + "\n"


# ---- what a service asks of its node -------------------------------------------------------

def mig_profile(name):
    """The MIG profile at the end of a MIG device's name (``MIG 1g.10gb`` -> ``1g.10gb``)."""
    match = _MIG_PROFILE_RE.search(name) if isinstance(name, str) else None
    return match.group(1) if match else None


def _product(name):
    """A GPU name as a label value, as GPU Feature Discovery writes gpu.product."""
    text = _PRODUCT_BAD_RE.sub("-", (name or "").strip()).strip("-_.")[:63].strip("-_.")
    return text or "unknown"


def _units_of(service):
    """``(kind, [unit keys], count)`` of a placed service: kind ``gpu`` or ``mig``."""
    where = service["placement"]
    if ":" in str(where.get("gpu")):
        return "mig", [str(where["gpu"])], 1
    indexes = where.get("gpu_indexes") or [where["gpu_index"]]
    return "gpu", [str(i) for i in indexes], int(where.get("gpu_count") or len(indexes))


def _node_inventory(gpus):
    """``{vendor: whole GPUs}`` and ``{MIG profile: devices}`` the device plugins advertise."""
    whole = {}
    mig = {}
    for gpu in gpus or []:
        if not isinstance(gpu, dict) or gpu.get("healthy") is False:
            continue
        vendor = gpu.get("vendor") or "nvidia"
        if str(gpu.get("mig_mode") or "").strip().lower() == "enabled":
            for device in gpu.get("mig_devices") or []:
                profile = mig_profile(device.get("name"))
                if profile:
                    mig[profile] = mig.get(profile, 0) + 1
            continue
        whole[vendor] = whole.get(vendor, 0) + 1
    return whole, mig


def _config_name(gpu_replicas, mig, mig_replicas):
    parts = ["gpufleet"]
    if gpu_replicas:
        parts.append("ts%d" % gpu_replicas)
    if mig:
        parts.append("mig")
    if mig_replicas:
        text = ",".join("%s=%d" % item for item in sorted(mig_replicas.items()))
        parts.append("ts" + hashlib.sha256(text.encode()).hexdigest()[:8])
    return "-".join(parts)


def node_requests(services, node, gpus=None):
    """What the GPU services of one node ask, from where the placement put them.

    ``services`` are active plan services placed on ``node``; ``gpus`` that node's
    ``ansible_facts.gpus`` (None when unknown). Returns ``{node, capacity, requests,
    sharing, device_plugin_config, config_name, warnings}``: ``requests`` per service
    ``{resource: count}``; ``capacity`` per resource what the device plugins advertise once
    the node's config is applied (None when the GPUs are unknown).
    """
    users = {}
    kinds = {}
    for service in services:
        kind, units, _count = _units_of(service)
        kinds[service["name"]] = kind
        for unit in units:
            users.setdefault((service["placement"]["vendor"], kind, unit), []).append(
                service["name"])
    shared = {key: names for key, names in users.items() if len(names) > 1}
    gpu_replicas = max([len(n) for (vendor, kind, _u), n in shared.items()
                        if vendor == "nvidia" and kind == "gpu"], default=0)
    profiles = {}
    for service in services:
        if kinds[service["name"]] == "mig":
            profile = mig_profile(service["placement"].get("gpu_name"))
            if profile is None:
                raise ValueError("%s: the MIG profile of %s on node %s cannot be told from its "
                                 "name (nvidia.com/mig-<profile> needs it); got: %r"
                                 % (service["name"], service["placement"]["gpu"], node,
                                    service["placement"].get("gpu_name")))
            profiles[service["name"]] = profile
    mig_replicas = {}
    for (_vendor, kind, _unit), names in shared.items():
        if kind == "mig":
            resource = MIG_RESOURCE_PREFIX + profiles[names[0]]
            mig_replicas[resource] = max(mig_replicas.get(resource, 0), len(names))
    warnings = []
    requests = {}
    lonely = []
    for service in services:
        name = service["name"]
        vendor = service["placement"]["vendor"]
        kind, units, count = _units_of(service)
        if kind == "mig":
            resource = MIG_RESOURCE_PREFIX + profiles[name]
            requests[name] = {resource + (SHARED_SUFFIX if resource in mig_replicas else ""): 1}
            continue
        base = GPU_RESOURCE.get(vendor, GPU_RESOURCE["nvidia"])
        if vendor == "nvidia" and gpu_replicas:
            requests[name] = {base + SHARED_SUFFIX: count}
            alone = all(len(users[(vendor, kind, u)]) == 1 for u in units)
            if count > 1:
                warnings.append(
                    "%s spans GPU %s (tensor parallel) on node %s, whose GPUs are time-sliced: "
                    "it asks %d nvidia.com/gpu.shared replicas, which the device plugin spreads "
                    "over distinct GPUs by preference only; vLLM fails to start when two land on "
                    "one GPU. Keep tensor-parallel services on a node where no GPU is shared."
                    % (name, ", ".join(units), node, count))
            elif alone:
                lonely.append("%s (GPU %s)" % (name, units[0]))
        else:
            requests[name] = {base: count}
    if lonely:
        warnings.insert(0, "%s %s a GPU alone in the placement, but node %s time-slices every "
                        "GPU (the device plugin cannot share one GPU only): each gets a replica "
                        "of some GPU, not a whole one, and may share it with other pods."
                        % (", ".join(lonely), "has" if len(lonely) == 1 else "have", node))
    for (vendor, _kind, unit), names in shared.items():
        if vendor != "nvidia":
            warnings.append(
                "GPU %s of node %s is shared by %s in the placement, but the %s device plugin "
                "hands out whole GPUs only: each asks its own %s, so some pods stay Pending. "
                "Give each service its own %s GPU for Kubernetes."
                % (unit, node, ", ".join(names), vendor.upper() if vendor == "amd" else vendor,
                   GPU_RESOURCE.get(vendor), vendor.upper() if vendor == "amd" else vendor))
    mig = any(kind == "mig" for kind in kinds.values())
    config = None
    name = None
    if gpu_replicas or mig:
        config = {"version": "v1", "flags": {"migStrategy": "mixed" if mig else "none"}}
        resources = []
        if gpu_replicas:
            resources.append({"name": GPU_RESOURCE["nvidia"], "replicas": gpu_replicas})
        resources += [{"name": r, "replicas": n} for r, n in sorted(mig_replicas.items())]
        if resources:
            # renameByDefault: a pod that asks a whole nvidia.com/gpu is never handed a replica
            # in silence. failRequestsGreaterThanOne (the device plugin recommends it) unless a
            # tensor-parallel service asks one replica per GPU it spans.
            spans = any(_units_of(s)[2] > 1 for s in services)
            config["sharing"] = {"timeSlicing": {"renameByDefault": True,
                                                 "failRequestsGreaterThanOne": not spans,
                                                 "resources": resources}}
        check_device_plugin_config(config)
        name = _config_name(gpu_replicas, mig, mig_replicas)
    capacity = None
    if gpus is not None:
        whole, mig_devices = _node_inventory(gpus)
        capacity = {}
        for vendor, count in whole.items():
            resource = GPU_RESOURCE.get(vendor, GPU_RESOURCE["nvidia"])
            if vendor == "nvidia" and gpu_replicas:
                capacity[resource + SHARED_SUFFIX] = count * gpu_replicas
            else:
                capacity[resource] = count
        for profile, count in mig_devices.items():
            resource = MIG_RESOURCE_PREFIX + profile
            if resource in mig_replicas:
                capacity[resource + SHARED_SUFFIX] = count * mig_replicas[resource]
            else:
                capacity[resource] = count
        asked = {}
        for wanted in requests.values():
            for resource, count in wanted.items():
                asked[resource] = asked.get(resource, 0) + count
        for resource, count in sorted(asked.items()):
            if count > capacity.get(resource, 0):
                warnings.append("node %s: the pods ask %d %s, it has %d: %d stay Pending."
                                % (node, count, resource, capacity.get(resource, 0),
                                   count - capacity.get(resource, 0)))
    if mig:
        warnings.append("node %s: the MIG placements ask nvidia.com/mig-<profile> resources: "
                        "its device plugin must run with migStrategy mixed (config %s)."
                        % (node, name))
    return {"node": node, "capacity": capacity, "requests": requests,
            "sharing": {"nvidia.com/gpu": gpu_replicas or None, **mig_replicas},
            "shared_gpus": {unit: names for (_v, _k, unit), names in shared.items()},
            "device_plugin_config": config, "config_name": name, "warnings": warnings}


# ---- one fleet placement --------------------------------------------------------------------

def fleet_hosts(names, hostvars):
    """place_fleet's ``hosts`` from the inventory: per host name, its GPUs (``services_gpus``
    when the inventory gives them, else ``ansible_facts.gpus``), ``gpufleet_node_labels`` and
    ``gpufleet_node_dedicated``."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("the node names must be a list of inventory host names; got: %r"
                         % (names,))
    hosts = []
    for name in names:
        found = hostvars[name]
        gpus = found.get("services_gpus")
        if not gpus:
            gpus = (found.get("ansible_facts") or {}).get("gpus") or []
        dedicated = found.get("gpufleet_node_dedicated") or []
        hosts.append({"name": name, "gpus": gpus,
                      "labels": found.get("gpufleet_node_labels") or {},
                      "dedicated": [dedicated] if isinstance(dedicated, str) else dedicated})
    return hosts


def fleet_plan(catalog, hosts, profile="dual-gpu", mode="ollama", extra_profiles=None,
               strategy=_placement.DEFAULT_STRATEGY, placement_options=None, sources=None):
    """A plan of the whole fleet from ONE ``place_fleet`` over ``hosts``.

    ``hosts`` as place_fleet takes them (``{name, gpus, labels, dedicated}``: the inventory's
    hosts with their ``ansible_facts.gpus``). The result is a ``services_plan`` whose
    placements also carry ``node`` (the host), with ``nodes`` (the checked hosts) and
    ``fleet_placement`` (place_fleet's result), for :func:`k8s_manifests`.
    """
    _placement._check_hosts(hosts)
    checked = []
    for host in hosts:
        dedicated = host.get("dedicated") or []
        checked.append((host["name"], list(host.get("gpus") or []),
                        {str(k): str(v) for k, v in (host.get("labels") or {}).items()},
                        sorted([dedicated] if isinstance(dedicated, str) else dedicated)))
    largest = max((gpus for _name, gpus, _labels, _dedicated in checked), key=len, default=[])
    options = dict(placement_options or {})
    services = _plan.placement_input(catalog, profile, mode, extra_profiles, largest)
    # A GPU index is a layout of one host ("GPU 0 of this box"); across hosts it names no GPU,
    # so the fleet placement chooses those services' GPUs itself. UUID pins stay.
    unpinned = []
    for service in services:
        pins = service.get("gpu")
        if pins is not None and any(_placement._pin_is_index(p) for p in (
                pins if isinstance(pins, list) else [pins])):
            unpinned.append(service["name"])
            service.pop("gpu")
    placement = _placement.place_fleet(hosts, services, strategy=strategy, **options) \
        if services else {}
    plan = _plan.plan(catalog, placement, largest, profile, mode, extra_profiles, sources)
    by_name = {a["service"]: a for a in (placement or {}).get("assignments") or []}
    vendors = {(name, g.get("index")): g.get("vendor") or "nvidia"
               for name, gpus, _labels, _dedicated in checked for g in gpus}
    for service in plan["services"]:
        where = service["placement"]
        if where is None:
            continue
        node = by_name[service["name"]]["host"]
        where["node"] = node
        where["vendor"] = vendors.get((node, where["gpu_index"]), "nvidia")
    if unpinned:
        plan["warnings"].append(
            "fleet placement: the GPU index pins of %s name a GPU of one host; the fleet "
            "placement chose their GPUs itself (pin by UUID to keep one)" % ", ".join(unpinned))
    plan["nodes"] = [{"name": name, "gpus": gpus, "labels": labels, "dedicated": dedicated}
                     for name, gpus, labels, dedicated in checked]
    plan["fleet_placement"] = placement
    return plan


# ---- manifests ------------------------------------------------------------------------------

def _pod(service, labels, options, request, node):
    container = {"name": labels["app.kubernetes.io/name"], "image": service["image"]}
    # Kubernetes expands $(VAR) in command, args and env values and reads '$$' as '$': every
    # '$' doubled keeps them as written, as in the compose files.
    if service["entrypoint"] is not None:
        container["command"] = [_dollars(arg) for arg in service["entrypoint"]]
    args = _main_command(service)
    where = service["placement"]
    if where is not None:
        args += list(where["engine_args"])
    if args:
        container["args"] = [_dollars(arg) for arg in args]
    if service["ports"]:
        container["ports"] = [{"name": "port-%d" % p["container"],
                               "containerPort": p["container"],
                               "protocol": p["protocol"].upper()} for p in service["ports"]]
    env = dict(service["environment"])
    if where is not None:
        env.update(where["budget_env"])
    if env:
        container["env"] = [{"name": k, "value": _dollars(v)} for k, v in env.items()]
    if request:
        container["resources"] = {"limits": dict(request)}
    if service["health"]:
        container["readinessProbe"] = {
            "httpGet": {"path": service["health"]["path"], "port": service["health"]["port"]},
            "periodSeconds": 10, "failureThreshold": 3}
    mounts = [{"name": "volume-%d" % i, "mountPath": v["target"], "readOnly": v["read_only"]}
              for i, v in enumerate(service["volumes"])]
    volumes = [{"name": "volume-%d" % i,
                "hostPath": {"path": v["source"], "type": "DirectoryOrCreate"}}
               for i, v in enumerate(service["volumes"])]
    if where is not None and int(where.get("gpu_count") or 1) > 1:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
    if mounts:
        container["volumeMounts"] = mounts
    pod = {"containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    steer = options["node_placement"].get(service["name"]) or {
        "nodes": [], "dedicated": None, "node_selector": {}}
    tolerations = []
    if request and options["gpu_tolerations"]:
        vendor = where["vendor"] if where is not None else "nvidia"
        tolerations.append({"key": GPU_RESOURCE.get(vendor, GPU_RESOURCE["nvidia"]),
                            "operator": "Exists", "effect": "NoSchedule"})
    dedicated = [steer["dedicated"]] if steer["dedicated"] else []
    if node is not None and node.get("taint"):
        dedicated.append(node["taint"])
    for value in dict.fromkeys(dedicated):
        tolerations.append({"key": options["taint_key"], "operator": "Equal", "value": value,
                            "effect": "NoSchedule"})
    if steer["node_selector"]:
        pod["nodeSelector"] = dict(steer["node_selector"])
    nodes = steer["nodes"] or ([node["name"]] if node is not None else [])
    if nodes:
        pod["affinity"] = {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                      "values": list(nodes)}]}]}}}
    if tolerations:
        pod["tolerations"] = tolerations
    return pod


def _node_labels(node, gpus, config_name):
    labels = dict(node.get("labels") or {})
    usable = [g for g in gpus or [] if isinstance(g, dict) and g.get("healthy") is not False]
    if usable:
        labels[LABEL_PREFIX + "gpu.vendor"] = _product(usable[0].get("vendor") or "nvidia")
        labels[LABEL_PREFIX + "gpu.product"] = _product(usable[0].get("name"))
        labels[LABEL_PREFIX + "gpu.count"] = str(len(usable))
    if node.get("taint"):
        labels[LABEL_PREFIX + "dedicated"] = node["taint"]
    if config_name:
        labels[DEVICE_PLUGIN_CONFIG_LABEL] = config_name
    return labels


def _check_options(namespace, taint_key, gpu_tolerations, device_plugin_namespace,
                   device_plugin_config_map):
    if not isinstance(namespace, str) or not _DNS_LABEL_RE.match(namespace):
        raise ValueError("k8s_manifests_namespace must be a DNS-1123 label; got: %r"
                         % (namespace,))
    if not isinstance(taint_key, str) or not taint_key.strip():
        raise ValueError("k8s_manifests_taint_key must be a taint key; got: %r" % (taint_key,))
    _check_label_key(taint_key, "k8s_manifests_taint_key")
    if not isinstance(gpu_tolerations, bool):
        raise ValueError("k8s_manifests_gpu_tolerations must be a boolean; got: %r"
                         % (gpu_tolerations,))
    if not isinstance(device_plugin_namespace, str) or not _DNS_LABEL_RE.match(
            device_plugin_namespace):
        raise ValueError("k8s_manifests_device_plugin_namespace must be a DNS-1123 label; "
                         "got: %r" % (device_plugin_namespace,))
    if not isinstance(device_plugin_config_map, str) or not _DNS_SUBDOMAIN_RE.match(
            device_plugin_config_map):
        raise ValueError("k8s_manifests_device_plugin_config_map must be a DNS-1123 subdomain; "
                         "got: %r" % (device_plugin_config_map,))


def _nodes_of(services_plan, node, gpus):
    """``{name: {name, gpus, labels, taint}}`` from a fleet plan, or the one node given."""
    if services_plan.get("nodes") is not None:
        result = {}
        for i, host in enumerate(services_plan["nodes"]):
            at = "services_plan.nodes[%d]" % i
            for key, value in (host.get("labels") or {}).items():
                _check_label_key(key, "%s.labels key" % at)
                _check_label_value(value, "%s.labels.%s" % (at, key))
            taint = ".".join(host.get("dedicated") or []) or None
            if taint is not None:
                _check_label_value(taint, "%s.dedicated" % at)
            result[host["name"]] = {"name": host["name"], "gpus": host.get("gpus"),
                                    "labels": dict(host.get("labels") or {}), "taint": taint}
        return result
    if node is None:
        return {}
    if not isinstance(node, str) or not _DNS_SUBDOMAIN_RE.match(node):
        raise ValueError("k8s_manifests_node must be a node name (a DNS-1123 subdomain: set it "
                         "to this host's Kubernetes node) or null; got: %r" % (node,))
    if gpus is not None and not isinstance(gpus, list):
        raise ValueError("k8s_manifests_gpus must be the node's ansible_facts.gpus (a list); "
                         "got: %r" % (gpus,))
    # No facts (an empty list too: a plan that places services had GPUs): unknown.
    return {node: {"name": node, "gpus": gpus or None, "labels": {}, "taint": None}}


def k8s_manifests(services_plan, namespace="gpufleet", node_placement=None,
                  gpu_tolerations=True, taint_key="dedicated", node=None, gpus=None,
                  device_plugin_namespace="nvidia-device-plugin",
                  device_plugin_config_map="gpufleet-device-plugin"):
    """The manifests of a plan: ``{files, nodes, warnings}``.

    ``files`` is a list of ``{name, service, documents}``: ``namespace``, one per active
    long-running service (a Deployment, and a Service when it has ports), ``nodes`` (Node
    objects with the labels and taints the placement relies on) and
    ``nvidia-device-plugin`` (its ConfigMap, when a node needs time-slicing or MIG). ``nodes``
    is :func:`node_requests` per node (the request arithmetic). A plan of one host renders for
    ``node`` (its ``gpus``; None: pods are not pinned, no node file); a :func:`fleet_plan`
    for the node of each placement.
    """
    services_plan = _plan.check_plan(services_plan)
    _check_options(namespace, taint_key, gpu_tolerations, device_plugin_namespace,
                   device_plugin_config_map)
    options = {"node_placement": check_node_placement(node_placement),
               "gpu_tolerations": gpu_tolerations, "taint_key": taint_key}
    known = [s["name"] for s in services_plan["services"]]
    for name in options["node_placement"]:
        if name not in known:
            raise ValueError("k8s_manifests_node_placement has a service not in "
                             "services_catalog (%s); got: %r" % (", ".join(known), name))
    nodes = _nodes_of(services_plan, node, gpus)
    # Only services that run as Deployments hold a GPU in the cluster (finetune does not).
    running = [s for s in services_plan["services"]
               if s["active"] and s["restart"] in ("always", "unless-stopped")]
    by_node = {}
    for service in running:
        if service["placement"] is None:
            continue
        where = service["placement"].get("node") or node
        if where not in nodes and nodes:
            raise ValueError("services_plan places %s on %s, which is not a node (%s)"
                             % (service["name"], where, ", ".join(nodes)))
        by_node.setdefault(where, []).append(service)
    analysis = {}
    for name, services in by_node.items():
        analysis[name] = node_requests(services, name, (nodes.get(name) or {}).get("gpus"))
    requests = {}
    for result in analysis.values():
        requests.update(result["requests"])
    files = [{"name": "namespace", "service": None, "comments": [], "documents": [{
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "gpufleet"}}}]}]
    for service in running:
        name = service["name"].replace("_", "-")
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "gpufleet",
                  "app.kubernetes.io/managed-by": "ansible",
                  "app.kubernetes.io/component": service["engine"]}
        where = service["placement"]
        on = nodes.get(where.get("node") or node) if where is not None else None
        pod = _pod(service, labels, options, requests.get(service["name"]), on)
        selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "gpufleet"}
        documents = [{
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": labels}, "spec": pod}},
        }]
        if service["ports"]:
            documents.append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"type": "ClusterIP", "selector": selector,
                         "ports": [{"name": "port-%d" % p["container"], "port": p["host"],
                                    "targetPort": p["container"],
                                    "protocol": p["protocol"].upper()}
                                   for p in service["ports"]]},
            })
        files.append({"name": name, "service": service["name"], "documents": documents,
                      "comments": ["%s: written from services_plan by "
                                   "gpufleet.inference.k8s_manifests." % service["name"]]})
    node_documents = []
    for name, entry in nodes.items():
        result = analysis.get(name) or {}
        spec = {}
        if entry["taint"]:
            spec["taints"] = [{"key": taint_key, "value": entry["taint"],
                               "effect": "NoSchedule"}]
        labels = _node_labels(entry, entry["gpus"], result.get("config_name"))
        if labels or spec:
            node_documents.append({"apiVersion": "v1", "kind": "Node",
                                   "metadata": {"name": name, "labels": labels},
                                   **({"spec": spec} if spec else {})})
    if node_documents:
        files.append({"name": "nodes", "service": None, "documents": node_documents,
                      "comments": NODES_COMMENT + _node_commands(node_documents)})
    configs = {r["config_name"]: device_plugin_config_text(r["device_plugin_config"])
               for r in analysis.values() if r["config_name"]}
    if configs:
        data = {DEVICE_PLUGIN_DEFAULT_CONFIG: device_plugin_config_text(
            {"version": "v1", "flags": {"migStrategy": "none"}})}
        data.update(sorted(configs.items()))
        config_map = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": device_plugin_config_map,
                         "namespace": device_plugin_namespace,
                         "labels": {"app.kubernetes.io/part-of": "gpufleet"}},
            "data": data}
        files.append({"name": "nvidia-device-plugin", "service": None,
                      "comments": [line % {"map": device_plugin_config_map,
                                           "ns": device_plugin_namespace}
                                   for line in DEVICE_PLUGIN_COMMENT],
                      "documents": [config_map]})
    warnings = [w for name in sorted(analysis) for w in analysis[name]["warnings"]]
    return {"files": files, "nodes": analysis, "warnings": warnings}


MANIFEST_HEADER = ("# Managed by gpufleet.inference (k8s_manifests): edit the inventory, "
                   "not this file.")
MANIFEST_MODE = "0644"
_FILE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def manifest_files(files, directory, yaml_dump):
    """The ``files`` option of gpufleet.inference.config_files for the manifests of
    :func:`k8s_manifests`: per entry of its ``files`` ``{path, content, mode}``, the path
    ``<directory>/<name>.yml``; the content the header line, the entry's ``comments`` as
    ``# `` lines, then each document after a ``---`` line, as ``yaml_dump`` (``yaml.dump`` or
    Ansible's dumper) writes it with :data:`YAML_DUMP_OPTIONS` (what ``to_nice_yaml(indent=2,
    sort_keys=false, width=200)`` hands to ``yaml.dump``)."""
    if not isinstance(directory, str) or not directory.startswith("/"):
        raise ValueError("k8s_manifests_dir must be an absolute path; got: %r" % (directory,))
    if not isinstance(files, list):
        raise ValueError("files must be the list k8s_manifests returns; got: %r" % (files,))
    result = []
    for i, entry in enumerate(files):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _FILE_NAME_RE.match(name):
            raise ValueError("files[%d].name must be a lower-case file name without '/'; got: %r"
                             % (i, name))
        comments = entry.get("comments") or []
        documents = entry.get("documents")
        if not isinstance(comments, list) or not all(isinstance(c, str) for c in comments):
            raise ValueError("files[%d].comments must be a list of lines; got: %r"
                             % (i, comments))
        if not isinstance(documents, list) or not documents:
            raise ValueError("files[%d].documents must be a non-empty list; got: %r"
                             % (i, documents))
        lines = [MANIFEST_HEADER] + [("# %s" % line).rstrip() for line in comments]
        content = "\n".join(lines) + "\n" + "".join(
            "---\n%s" % yaml_dump(document, **YAML_DUMP_OPTIONS) for document in documents)
        result.append({"path": "%s/%s.yml" % (directory.rstrip("/") or "", name),
                       "content": content, "mode": MANIFEST_MODE})
    return result


def _node_commands(documents):
    """The ``kubectl label`` and ``kubectl taint`` lines that set what Node documents say."""
    lines = []
    for node in documents:
        name = node["metadata"]["name"]
        labels = node["metadata"]["labels"]
        if labels:
            lines.append("kubectl label node %s --overwrite %s" % (
                name, " ".join("%s=%s" % item for item in labels.items())))
        for taint in (node.get("spec") or {}).get("taints") or []:
            lines.append("kubectl taint node %s --overwrite %s=%s:%s" % (
                name, taint["key"], taint["value"], taint["effect"]))
    return lines


def node_commands(manifests):
    """The kubectl lines of the ``nodes`` file of :func:`k8s_manifests`' result."""
    return [line for file in manifests["files"] if file["name"] == "nodes"
            for line in _node_commands(file["documents"])]
