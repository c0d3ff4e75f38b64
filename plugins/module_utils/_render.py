# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: from one service catalog and one placement to
what runs the services (compose files, systemd instances, Kubernetes manifests).

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the filters in plugins/filter/render.py wrap them so that the roles' templates
stay thin. Bad input raises ValueError naming the field and its value
(``services_catalog.vllm.ports[0] must be 1-65535; got: 70000``). The same input always gives
the same output (dicts keep the catalog's order).

Vocabulary (seed 000, "Compose Profile Architecture")
  profile       what the user picks: remote, cpu, single-gpu, dual-gpu (``services_profile``),
                or ``auto`` (from the number of healthy GPUs).
  mode          which stack occupies GPU 1 under dual-gpu: ollama, vllm, mixed
                (``services_dual_gpu_mode``, the ``DUAL_GPU_MODE`` of seed 000).
  sub-profile   ``dual-gpu-<mode>``, the compose profile the tooling injects.
  extra profile an opt-in profile such as ``finetune`` whose services run beside any profile
                when enabled (``services_extra_profiles``).
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _vram

PROFILES = ("remote", "cpu", "single-gpu", "dual-gpu")
GPU_PROFILES = ("single-gpu", "dual-gpu")
PROFILE_CHOICES = ("auto", *PROFILES)
MODES = ("ollama", "vllm", "mixed")
ENGINES = ("ollama", "vllm", "other")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
PROTOCOLS = ("tcp", "udp")
COMPOSE_KINDS = ("base", "gpu", "podman")

CATALOG_KEYS = (
    "engine", "image", "command", "entrypoint", "model", "ports", "volumes", "environment",
    "health", "profiles", "modes", "uses_gpu", "gpu", "vram_mib", "vram_budget_mib",
    "context_length", "parallel", "role", "latency_critical", "exclusive",
    "min_compute_capability", "enabled", "restart", "description",
)
# Catalog keys handed on to the placement engine as they are.
PLACEMENT_KEYS = (
    "engine", "model", "gpu", "vram_mib", "vram_budget_mib", "context_length", "parallel",
    "role", "latency_critical", "exclusive", "min_compute_capability",
)
# Kubernetes extended resource per GPU vendor (seed 002).
K8S_GPU_RESOURCE = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "intel": "gpu.intel.com/i915"}
NODE_PLACEMENT_KEYS = ("nodes", "dedicated", "node_selector")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,51}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DOTENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
_PLAIN_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:,@%+=-]*$")
# An image reference: [registry[:port]/]path[:tag][@sha256:digest], path in lower case.
_IMAGE_RE = re.compile(
    r"^(?:[A-Za-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$")
# Published ports and inference instances listen on loopback unless a port's ``address`` (or
# systemd_units_bind_address) asks for exposure (README of the services role, "Exposure").
DEFAULT_BIND_ADDRESS = "127.0.0.1"
PORT_KEYS = ("host", "container", "protocol", "address")


# ---- small helpers ----------------------------------------------------------------------

def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _str_list(value, at):
    """None, or a list of strings (numbers are written as text)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("%s must be a list of strings; got: %r" % (at, value))
    result = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError("%s[%d] must be a string; got: %r" % (at, i, item))
        result.append(str(item))
    return result


def _optional_positive(entry, key, at):
    value = entry.get(key)
    if value is None:
        return None
    if not _is_int(value) or value <= 0:
        raise ValueError("%s.%s must be an integer > 0; got: %r" % (at, key, value))
    return _vram.check_limit(value, key, at)


def _optional_bool(entry, key, at, default):
    value = entry.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError("%s.%s must be a boolean; got: %r" % (at, key, value))
    return value


def _port_number(value, at):
    if not _is_int(value) or not 1 <= value <= 65535:
        raise ValueError("%s must be 1-65535; got: %r" % (at, value))
    return value


def check_bind_address(value, at):
    """An IPv4 or IPv6 address to listen on (``127.0.0.1``, ``0.0.0.0``, ``::1``)."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("%s must be an IP address to listen on (127.0.0.1 for this host only, "
                         "0.0.0.0 for every interface); got: %r" % (at, value)) from None


def check_image(value, at):
    """An image reference (``ollama/ollama:latest``, ``quay.io/org/name@sha256:...``)."""
    if not isinstance(value, str) or not _IMAGE_RE.match(value.strip()):
        raise ValueError("%s must be an image reference like ollama/ollama:latest (repository "
                         "in lower case); got: %r" % (at, value))
    return value.strip()


def _host_port(address, port):
    """``address:port`` as OLLAMA_HOST wants it (an IPv6 address in brackets)."""
    return ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)


def _check_ports(value, at):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("%s must be a list; got: %r" % (at, value))
    ports = []
    for i, port in enumerate(value):
        where = "%s[%d]" % (at, i)
        address = None
        if isinstance(port, dict):
            unknown = sorted(set(port) - set(PORT_KEYS))
            if unknown:
                raise ValueError("%s has unknown key(s): %s" % (where, ", ".join(unknown)))
            if port.get("address") is not None:
                address = check_bind_address(port["address"], where + ".address")
            container = _port_number(port.get("container"), where + ".container")
            host = port.get("host", container)
            host = _port_number(host, where + ".host")
            protocol = port.get("protocol") or "tcp"
            if protocol not in PROTOCOLS:
                raise ValueError("%s.protocol must be one of %s; got: %r"
                                 % (where, ", ".join(PROTOCOLS), protocol))
        else:
            host = container = _port_number(port, where)
            protocol = "tcp"
        ports.append({"host": host, "container": container, "protocol": protocol,
                      "address": address})
    return ports


def _check_volumes(value, at):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("%s must be a list; got: %r" % (at, value))
    volumes = []
    targets = {}
    for i, volume in enumerate(value):
        where = "%s[%d]" % (at, i)
        if not isinstance(volume, dict):
            raise ValueError("%s must be a dict with source and target; got: %r"
                             % (where, volume))
        unknown = sorted(set(volume) - {"source", "target", "read_only"})
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (where, ", ".join(unknown)))
        source = volume.get("source")
        if not isinstance(source, str) or not source.startswith("/"):
            raise ValueError("%s.source must be an absolute host path; got: %r" % (where, source))
        target = volume.get("target")
        if not isinstance(target, str) or not target.startswith("/"):
            raise ValueError("%s.target must be an absolute path in the container; got: %r"
                             % (where, target))
        if target in targets:
            raise ValueError("%s.target duplicates %s[%d].target; got: %r"
                             % (where, at, targets[target], target))
        targets[target] = i
        read_only = _optional_bool(volume, "read_only", where, False)
        volumes.append({"source": source.rstrip("/") or "/", "target": target,
                        "read_only": read_only})
    return volumes


def _check_environment(value, at):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict of NAME: value; got: %r" % (at, value))
    env = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
            raise ValueError("%s has a bad variable name; got: %r" % (at, key))
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError("%s.%s must be a string, number or boolean; got: %r"
                             % (at, key, item))
        env[key] = _scalar_text(item)
    return env


def _check_health(value, ports, at):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict with path and port; got: %r" % (at, value))
    unknown = sorted(set(value) - {"path", "port"})
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
    path = value.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("%s.path must start with '/'; got: %r" % (at, path))
    port = value.get("port")
    if port is None:
        if not ports:
            raise ValueError("%s.port is needed when the service has no ports; got: None" % at)
        port = ports[0]["container"]
    _port_number(port, at + ".port")
    if port not in [p["container"] for p in ports]:
        raise ValueError("%s.port must be one of the service's container ports (%s); got: %r"
                         % (at, ", ".join(str(p["container"]) for p in ports) or "none", port))
    return {"path": path, "port": port}


def check_extra_profiles(extra_profiles, where="services_extra_profiles"):
    """``{name: enabled}`` of the opt-in profiles; returns it checked."""
    if extra_profiles is None:
        return {}
    if not isinstance(extra_profiles, dict):
        raise ValueError("%s must be a dict of profile name: enabled; got: %r"
                         % (where, extra_profiles))
    for name, enabled in extra_profiles.items():
        if not isinstance(name, str) or not _PROFILE_RE.match(name) or name in PROFILE_CHOICES \
                or name.startswith("dual-gpu"):
            raise ValueError("%s has a bad profile name (lower case, digits and '-', not one of "
                             "%s nor dual-gpu-*); got: %r" % (where, ", ".join(PROFILES), name))
        if not isinstance(enabled, bool):
            raise ValueError("%s.%s must be a boolean; got: %r" % (where, name, enabled))
    return dict(extra_profiles)


def _check_entry(name, entry, extra, at):
    if not isinstance(entry, dict):
        raise ValueError("%s must be a dict; got: %r" % (at, entry))
    unknown = sorted(set(entry) - set(CATALOG_KEYS))
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
    engine = entry.get("engine") or "other"
    if engine not in ENGINES:
        raise ValueError("%s.engine must be one of %s; got: %r" % (at, ", ".join(ENGINES), engine))
    image = check_image(entry.get("image"), at + ".image")
    model = entry.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError("%s.model must be a non-empty string; got: %r" % (at, model))
    if model is not None:
        _vram.check_model_name(model, at + ".model")
    if engine == "vllm" and model is None:
        raise ValueError("%s.model must be set for engine vllm; got: None" % at)
    ports = _check_ports(entry.get("ports"), at + ".ports")
    profiles = entry.get("profiles")
    known = PROFILES + tuple(extra)
    if not isinstance(profiles, list) or not profiles:
        raise ValueError("%s.profiles must be a non-empty list; got: %r" % (at, profiles))
    for i, profile in enumerate(profiles):
        if profile not in known:
            raise ValueError("%s.profiles[%d] must be one of %s (or a key of "
                             "services_extra_profiles); got: %r"
                             % (at, i, ", ".join(known), profile))
    if len(set(profiles)) != len(profiles):
        raise ValueError("%s.profiles lists a profile twice; got: %r" % (at, profiles))
    modes = entry.get("modes")
    if modes is None:
        modes = list(MODES) if "dual-gpu" in profiles else []
    if not isinstance(modes, list):
        raise ValueError("%s.modes must be a list; got: %r" % (at, modes))
    for i, mode in enumerate(modes):
        if mode not in MODES:
            raise ValueError("%s.modes[%d] must be one of %s; got: %r"
                             % (at, i, ", ".join(MODES), mode))
    if modes and "dual-gpu" not in profiles:
        raise ValueError("%s.modes is only for services in profile dual-gpu; got: %r"
                         % (at, modes))
    if "dual-gpu" in profiles and not modes:
        raise ValueError("%s.modes must name at least one of %s for profile dual-gpu; got: []"
                         % (at, ", ".join(MODES)))
    uses_gpu = _optional_bool(entry, "uses_gpu", at, True)
    pin = entry.get("gpu")
    if pin is not None:
        bad = isinstance(pin, bool) or not isinstance(pin, (int, str))
        if bad or (_is_int(pin) and pin < 0) or (isinstance(pin, str) and not pin.strip()):
            raise ValueError("%s.gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: %r"
                             % (at, pin))
    numbers = {key: _optional_positive(entry, key, at)
               for key in ("vram_mib", "vram_budget_mib", "context_length", "parallel")}
    if uses_gpu and model is None and numbers["vram_mib"] is None \
            and numbers["vram_budget_mib"] is None:
        raise ValueError("%s needs model, vram_mib or vram_budget_mib when uses_gpu is true; "
                         "got none of them" % at)
    for key in ("role", "min_compute_capability", "description"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, (str, int, float))
                                  or isinstance(value, bool) or not str(value).strip()):
            raise ValueError("%s.%s must be a non-empty string; got: %r" % (at, key, value))
    restart = entry.get("restart") or "unless-stopped"
    if restart not in RESTART_POLICIES:
        raise ValueError("%s.restart must be one of %s; got: %r"
                         % (at, ", ".join(RESTART_POLICIES), restart))
    command = _str_list(entry.get("command"), at + ".command")
    if engine == "vllm":
        for i, arg in enumerate(command or []):
            if not arg or any(c.isspace() for c in arg):
                raise ValueError("%s.command[%d] must be one argument without spaces (vLLM "
                                 "extra arguments); got: %r" % (at, i, arg))
    result = {
        "name": name, "engine": engine, "image": image.strip(), "model": model,
        "command": command,
        "entrypoint": _str_list(entry.get("entrypoint"), at + ".entrypoint"),
        "ports": ports,
        "volumes": _check_volumes(entry.get("volumes"), at + ".volumes"),
        "environment": _check_environment(entry.get("environment"), at + ".environment"),
        "health": _check_health(entry.get("health"), ports, at + ".health"),
        "profiles": list(profiles), "modes": [m for m in MODES if m in modes],
        "uses_gpu": uses_gpu, "gpu": pin, "restart": restart,
        "role": entry.get("role"),
        "latency_critical": _optional_bool(entry, "latency_critical", at, False),
        "exclusive": _optional_bool(entry, "exclusive", at, False),
        "min_compute_capability": None if entry.get("min_compute_capability") is None
        else str(entry["min_compute_capability"]),
        "description": entry.get("description"),
    }
    result.update(numbers)
    return result


def compose_profiles(entry):
    """The compose profiles of a checked entry: dual-gpu becomes its dual-gpu-<mode> profiles."""
    result = []
    for profile in entry["profiles"]:
        if profile == "dual-gpu":
            result.extend("dual-gpu-%s" % mode for mode in entry["modes"])
        else:
            result.append(profile)
    return result


def _check_port_clashes(checked, extra, where):
    """Two services that can run together must not publish the same host port."""
    groups = ["remote", "cpu", "single-gpu"] + ["dual-gpu-%s" % m for m in MODES]
    extras = set(extra)
    for group in groups:
        seen = {}
        for name, entry in checked.items():
            profiles = set(compose_profiles(entry))
            if group not in profiles and not profiles & extras:
                continue
            for i, port in enumerate(entry["ports"]):
                key = (port["host"], port["protocol"])
                if key in seen:
                    raise ValueError(
                        "%s.%s.ports[%d] publishes host port %d, as %s does (both run in "
                        "profile %s); got: %d" % (where, name, i, port["host"], seen[key],
                                                  group, port["host"]))
                seen[key] = "%s.%s.ports[%d]" % (where, name, i)


def check_catalog(catalog, extra_profiles=None, where="services_catalog"):
    """Check the catalog; return ``{name: entry}`` of the enabled services, every key filled in."""
    extra = check_extra_profiles(extra_profiles)
    if not isinstance(catalog, dict) or not catalog:
        raise ValueError("%s must be a non-empty dict of service name: definition; got: %r"
                         % (where, catalog))
    checked = {}
    for name, entry in catalog.items():
        at = "%s.%s" % (where, name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError("%s has a bad service name (lower case letters, digits, '_' and "
                             "'-', at most 52); got: %r" % (where, name))
        if isinstance(entry, dict) and not _optional_bool(entry, "enabled", at, True):
            continue
        checked[name] = _check_entry(name, entry, extra, at)
    k8s_names = {}
    for name in checked:
        k8s = name.replace("_", "-")
        if k8s in k8s_names:
            raise ValueError("%s.%s has the same Kubernetes name (%s) as %s.%s; got: %r"
                             % (where, name, k8s, where, k8s_names[k8s], name))
        k8s_names[k8s] = name
    _check_port_clashes(checked, extra, where)
    return checked


def resolve_profile(profile, gpus=None):
    """``auto`` becomes cpu, single-gpu or dual-gpu by the number of healthy GPUs."""
    if profile not in PROFILE_CHOICES:
        raise ValueError("services_profile must be one of %s; got: %r"
                         % (", ".join(PROFILE_CHOICES), profile))
    if profile != "auto":
        return profile
    healthy = [g for g in gpus or [] if isinstance(g, dict) and g.get("healthy") is not False]
    return ("cpu", "single-gpu")[len(healthy)] if len(healthy) < 2 else "dual-gpu"


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError("services_dual_gpu_mode must be one of %s; got: %r"
                         % (", ".join(MODES), mode))
    return mode


def active_profiles(profile, mode, extra_profiles=None, gpus=None):
    """The compose profiles to pass (``--profile``), the sub-profile injected for dual-gpu."""
    profile = resolve_profile(profile, gpus)
    mode = _check_mode(mode)
    extra = check_extra_profiles(extra_profiles)
    result = ["dual-gpu", "dual-gpu-%s" % mode] if profile == "dual-gpu" else [profile]
    return result + [name for name, enabled in extra.items() if enabled]


def select(checked, profile, mode, extra_profiles=None, gpus=None):
    """Names of the services that run for the profile and mode, in catalog order."""
    wanted = set(active_profiles(profile, mode, extra_profiles, gpus))
    return [name for name, entry in checked.items() if set(compose_profiles(entry)) & wanted]


def placement_input(catalog, profile="auto", mode="ollama", extra_profiles=None, gpus=None):
    """The ``services`` option of gpu_placement: active services that use a GPU.

    Nothing is placed under the cpu and remote profiles (seed 000: the GPU overlay is
    used for single-gpu and dual-gpu only).
    """
    checked = check_catalog(catalog, extra_profiles)
    _check_mode(mode)
    if resolve_profile(profile, gpus) not in GPU_PROFILES:
        return []
    services = []
    for name in select(checked, profile, mode, extra_profiles, gpus):
        entry = checked[name]
        if not entry["uses_gpu"]:
            continue
        service = {"name": name}
        for key in PLACEMENT_KEYS:
            if entry.get(key) is not None and entry.get(key) is not False:
                service[key] = entry[key]
        services.append(service)
    return services


# ---- the plan -----------------------------------------------------------------------------

def _budget(engine, assignment):
    """Budget environment and engine arguments that hold a service to its budget."""
    settings = assignment.get("engine_settings") or {}
    env = {}
    args = []
    if engine == "vllm":
        if settings.get("gpu_memory_utilization") is not None:
            args += ["--gpu-memory-utilization", str(settings["gpu_memory_utilization"])]
        if settings.get("max_model_len"):
            args += ["--max-model-len", str(settings["max_model_len"])]
        if settings.get("max_num_seqs"):
            args += ["--max-num-seqs", str(settings["max_num_seqs"])]
    else:
        env = {key: _scalar_text(value) for key, value in settings.items()}
    return env, args


def plan(catalog, placement=None, gpus=None, profile="auto", mode="ollama",
         extra_profiles=None):
    """The ``services_plan`` fact: every enabled service, which run, and where.

    ``placement`` is the result of gpu_placement for :func:`placement_input` (None or ``{}``
    when nothing was placed), ``gpus`` the host's ``ansible_facts.gpus``.
    """
    checked = check_catalog(catalog, extra_profiles)
    resolved = resolve_profile(profile, gpus)
    profiles = active_profiles(resolved, mode, extra_profiles)
    active = select(checked, resolved, mode, extra_profiles)
    placement = placement or {}
    if not isinstance(placement, dict):
        raise ValueError("placement must be the result of gpu_placement; got: %r" % (placement,))
    vendors = {}
    for gpu in gpus or []:
        if isinstance(gpu, dict) and _is_int(gpu.get("index")):
            vendors[gpu["index"]] = gpu.get("vendor") or "nvidia"
    assignments = {}
    for i, assignment in enumerate(placement.get("assignments") or []):
        name = assignment.get("service") if isinstance(assignment, dict) else None
        if name not in active or not checked[name]["uses_gpu"]:
            raise ValueError("placement.assignments[%d].service is not an active GPU service "
                             "of services_catalog for profile %s (%s); got: %r"
                             % (i, resolved, ", ".join(profiles), name))
        assignments[name] = assignment
    services = []
    for name, entry in checked.items():
        item = dict(entry, compose_profiles=compose_profiles(entry), active=name in active,
                    placement=None)
        assignment = assignments.get(name)
        if assignment is not None and assignment.get("gpu_index") is not None:
            env, args = _budget(entry["engine"], assignment)
            item["placement"] = {
                "gpu": assignment.get("gpu"), "gpu_index": assignment["gpu_index"],
                "gpu_uuid": assignment.get("gpu_uuid"), "gpu_name": assignment.get("gpu_name"),
                "device_id": str(assignment.get("device_id")),
                "vendor": vendors.get(assignment["gpu_index"], "nvidia"),
                "vram_budget_mib": assignment.get("vram_budget_mib"),
                "adjusted": bool(assignment.get("adjusted")),
                "environment": {k: _scalar_text(v)
                                for k, v in (assignment.get("environment") or {}).items()},
                "engine_settings": dict(assignment.get("engine_settings") or {}),
                "budget_env": env, "engine_args": args,
            }
        services.append(item)
    summary = []
    for item in services:
        if not item["active"]:
            continue
        where = item["placement"]
        if where is None:
            summary.append("%s: no GPU" % item["name"])
        else:
            summary.append("%s: GPU %s (%s), %s MiB%s" % (
                item["name"], where["gpu"], where["device_id"], where["vram_budget_mib"],
                " (adjusted)" if where["adjusted"] else ""))
    summary.insert(0, "profile %s (compose profiles %s)" % (resolved, ", ".join(profiles)))
    gpu_assignments = placement.get("gpu_assignments") or {
        "strategy": placement.get("strategy"), "assignments": {}}
    return {
        "profile": resolved,
        "dual_gpu_mode": mode,
        "compose_profiles": profiles,
        "gpu_overlay": resolved in GPU_PROFILES,
        "active": active,
        "services": services,
        "strategy": placement.get("strategy"),
        "warnings": list(placement.get("warnings") or []),
        "summary": summary,
        "gpu_assignments": {"strategy": gpu_assignments.get("strategy"),
                            "assignments": dict(gpu_assignments.get("assignments") or {})},
    }


def _check_plan(value):
    if not isinstance(value, dict) or not isinstance(value.get("services"), list) \
            or "compose_profiles" not in value:
        raise ValueError("services_plan must be the fact set by the gpufleet.inference.services "
                         "role; got: %r" % (value,))
    return value


# ---- compose ------------------------------------------------------------------------------

def _main_command(service):
    """The container's command: vLLM gets ``--model`` and ``--port`` before the extra args."""
    command = list(service["command"] or [])
    if service["engine"] == "vllm":
        port = service["ports"][0]["container"] if service["ports"] else 8000
        command = ["--model", service["model"], "--port", str(port), *command]
    return command


def _compose_base(service):
    doc = {"image": service["image"]}
    if service["entrypoint"] is not None:
        doc["entrypoint"] = list(service["entrypoint"])
    command = _main_command(service)
    if command or service["command"] is not None:
        doc["command"] = command
    if service["environment"]:
        doc["environment"] = dict(service["environment"])
    if service["ports"]:
        doc["ports"] = [{"target": p["container"], "published": str(p["host"]),
                         "host_ip": p.get("address") or DEFAULT_BIND_ADDRESS,
                         "protocol": p["protocol"]} for p in service["ports"]]
    if service["volumes"]:
        doc["volumes"] = [{"type": "bind", "source": v["source"], "target": v["target"],
                           "read_only": v["read_only"], "bind": {"create_host_path": True}}
                          for v in service["volumes"]]
    doc["profiles"] = list(service["compose_profiles"])
    doc["restart"] = service["restart"]
    return doc


def _compose_overlay(service, kind):
    where = service["placement"]
    doc = {}
    if where["engine_args"]:
        doc["command"] = _main_command(service) + list(where["engine_args"])
    env = dict(where["budget_env"])
    if where["vendor"] == "nvidia":
        if kind == "gpu":
            doc["deploy"] = {"resources": {"reservations": {"devices": [{
                "driver": "nvidia", "device_ids": [where["device_id"]],
                "capabilities": ["gpu"]}]}}}
        else:
            doc["devices"] = ["nvidia.com/gpu=%s" % where["device_id"]]
    else:
        # AMD and Intel: the device nodes, narrowed by the vendor's variable. Inside the
        # container every GPU keeps its host number here, so the host index is right.
        doc["devices"] = ["/dev/kfd", "/dev/dri"] if where["vendor"] == "amd" else ["/dev/dri"]
        env.update(where["environment"])
    if env:
        doc["environment"] = env
    return doc


def compose_document(services_plan, kind="base", project=None):
    """``compose.yml`` (base), ``compose.gpu.yml`` (gpu) or ``compose.podman-gpu.yml`` (podman).

    The base file holds every service with its profiles; an overlay holds, for the active
    services the placement put on a GPU, the device (a ``deploy`` reservation for Docker, a
    CDI name for Podman), the budget environment and vLLM's ``--gpu-memory-utilization``.
    Containers never get the host's GPU index in ``CUDA_VISIBLE_DEVICES``: the device request
    does the selection and the GPU is renumbered 0 inside.
    """
    services_plan = _check_plan(services_plan)
    if kind not in COMPOSE_KINDS:
        raise ValueError("kind must be one of %s; got: %r" % (", ".join(COMPOSE_KINDS), kind))
    services = {}
    for service in services_plan["services"]:
        if kind == "base":
            services[service["name"]] = _compose_base(service)
        elif service["active"] and service["placement"] is not None:
            services[service["name"]] = _compose_overlay(service, kind)
    doc = {}
    if kind == "base" and project:
        if not _PROFILE_RE.match(str(project).replace("_", "-")):
            raise ValueError("compose_project_name must be a compose project name (lower case "
                             "letters, digits, '_' and '-'); got: %r" % (project,))
        doc["name"] = project
    doc["services"] = services
    return doc


def _dotenv_value(value):
    text = _scalar_text(value)
    if _PLAIN_VALUE_RE.match(text):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")


def dotenv_merge(existing, owned, header=None):
    """Merge the keys we own into an ``.env`` text; every other line stays as it was.

    An owned key is rewritten where it stands (later duplicates of it are dropped); owned keys
    not there yet are appended in ``owned``'s order. ``header`` (the ``ansible_managed``
    comment the template writes first) is dropped from the top of ``existing``, so it is not
    repeated. Returns the text without that header, ending in a newline.
    """
    if existing is None:
        existing = ""
    if not isinstance(existing, str):
        raise ValueError("existing must be the text of the .env file; got: %r" % (existing,))
    if not isinstance(owned, dict):
        raise ValueError("owned must be a dict of NAME: value; got: %r" % (owned,))
    for key, value in owned.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
            raise ValueError("owned has a bad variable name; got: %r" % (key,))
        if value is None or isinstance(value, (dict, list)):
            raise ValueError("owned.%s must be a string or number; got: %r" % (key, value))
    head = (header or "").rstrip("\n").splitlines()
    lines = existing.splitlines()
    if head and lines[:len(head)] == head:
        lines = lines[len(head):]
    written = set()
    result = []
    for line in lines:
        match = _DOTENV_LINE_RE.match(line)
        key = match.group(1) if match else None
        if key in owned:
            if key not in written:
                result.append("%s=%s" % (key, _dotenv_value(owned[key])))
                written.add(key)
            continue
        result.append(line)
    result.extend("%s=%s" % (key, _dotenv_value(value))
                  for key, value in owned.items() if key not in written)
    return "\n".join(result) + "\n"


def gpu_assignments_document(services_plan, previous=None, now=None):
    """Seed 001's ``gpu-assignments.yml``: generated_at, strategy, assignments.

    ``generated_at`` is when the assignments last changed: the previous file's time is kept
    while strategy and assignments are the same, so a run that changes nothing rewrites nothing.
    """
    services_plan = _check_plan(services_plan)
    doc = services_plan["gpu_assignments"]
    stamp = now
    if isinstance(previous, dict) and previous.get("generated_at") \
            and previous.get("strategy") == doc["strategy"] \
            and previous.get("assignments") == doc["assignments"]:
        stamp = previous["generated_at"]
    if not isinstance(stamp, str) or not stamp.strip():
        raise ValueError("now must be a timestamp like 2025-01-23T10:30:00Z; got: %r" % (now,))
    return {"generated_at": stamp, "strategy": doc["strategy"],
            "assignments": dict(doc["assignments"])}


# ---- systemd ------------------------------------------------------------------------------

def _systemd_env_value(value):
    text = _scalar_text(value)
    if _PLAIN_VALUE_RE.match(text):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def systemd_instances(services_plan, models_dir="/srv/gpufleet/models/ollama",
                      bind_address=DEFAULT_BIND_ADDRESS):
    """One instance of ``ollama@.service`` or ``vllm@.service`` per active inference service.

    Returns ``[{service, template, unit, environment, env_lines}]``: ``environment`` is what
    the instance's EnvironmentFile holds (``CUDA_VISIBLE_DEVICES`` by UUID from the placement,
    ``OLLAMA_HOST`` with the published port, ``OLLAMA_MODELS`` the one shared model directory;
    vLLM's model, port and ``--gpu-memory-utilization``). Sidecars (engine ``other``) run as
    containers only. An instance listens on ``bind_address`` (loopback by default), or on the
    ``address`` its first catalog port gives.
    """
    services_plan = _check_plan(services_plan)
    if not isinstance(models_dir, str) or not models_dir.startswith("/"):
        raise ValueError("systemd_units_models_dir must be an absolute path; got: %r"
                         % (models_dir,))
    bind_address = check_bind_address(bind_address, "systemd_units_bind_address")
    instances = []
    for service in services_plan["services"]:
        if not service["active"] or service["engine"] not in ("ollama", "vllm"):
            continue
        at = "services_catalog.%s" % service["name"]
        if not service["ports"]:
            raise ValueError("%s.ports must give the port a systemd instance listens on; "
                             "got: []" % at)
        port = service["ports"][0]["host"]
        address = service["ports"][0].get("address") or bind_address
        where = service["placement"]
        env = dict(service["environment"])
        if service["engine"] == "ollama":
            env["OLLAMA_HOST"] = _host_port(address, port)
            env["OLLAMA_MODELS"] = models_dir
            if service["model"]:
                env.setdefault("DEFAULT_OLLAMA_MODEL", service["model"])
        else:
            utilization = "0.9"
            extra = list(service["command"] or [])
            if where is not None:
                args = list(where["engine_args"])
                if "--gpu-memory-utilization" in args:
                    i = args.index("--gpu-memory-utilization")
                    utilization = args[i + 1]
                    del args[i:i + 2]
                extra += args
            env.update(VLLM_MODEL=service["model"], VLLM_HOST=address,
                       VLLM_PORT=str(port), VLLM_GPU_MEMORY_UTILIZATION=utilization,
                       VLLM_EXTRA_ARGS=" ".join(extra))
        if where is not None:
            env.update(where["environment"])
            env.update(where["budget_env"])
        elif service["engine"] == "ollama":
            env["CUDA_VISIBLE_DEVICES"] = "-1"  # no GPU placed: CPU, never "any GPU"
        instances.append({
            "service": service["name"], "template": service["engine"],
            "unit": "%s@%s.service" % (service["engine"], service["name"]),
            "environment": env,
            "env_lines": ["%s=%s" % (k, _systemd_env_value(v)) for k, v in env.items()],
        })
    return instances


# ---- Kubernetes ---------------------------------------------------------------------------

def _check_node_placement(value):
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
                        "node_selector": {str(k): _scalar_text(v) for k, v in selector.items()}}
    return result


def _k8s_pod(service, labels, options, gpu_resource):
    container = {"name": labels["app.kubernetes.io/name"], "image": service["image"]}
    if service["entrypoint"] is not None:
        container["command"] = list(service["entrypoint"])
    args = _main_command(service)
    where = service["placement"]
    if where is not None:
        args += list(where["engine_args"])
    if args:
        container["args"] = args
    if service["ports"]:
        container["ports"] = [{"name": "port-%d" % p["container"],
                               "containerPort": p["container"],
                               "protocol": p["protocol"].upper()} for p in service["ports"]]
    env = dict(service["environment"])
    if where is not None:
        env.update(where["budget_env"])
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if gpu_resource:
        container["resources"] = {"limits": {gpu_resource: 1}}
    if service["health"]:
        container["readinessProbe"] = {
            "httpGet": {"path": service["health"]["path"], "port": service["health"]["port"]},
            "periodSeconds": 10, "failureThreshold": 3}
    if service["volumes"]:
        container["volumeMounts"] = [{"name": "volume-%d" % i, "mountPath": v["target"],
                                      "readOnly": v["read_only"]}
                                     for i, v in enumerate(service["volumes"])]
    pod = {"containers": [container]}
    if service["volumes"]:
        pod["volumes"] = [{"name": "volume-%d" % i,
                           "hostPath": {"path": v["source"], "type": "DirectoryOrCreate"}}
                          for i, v in enumerate(service["volumes"])]
    node = options["node_placement"].get(service["name"])
    tolerations = []
    if gpu_resource and options["gpu_tolerations"]:
        tolerations.append({"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    if node is not None:
        if node["dedicated"]:
            tolerations.append({"key": options["taint_key"], "operator": "Equal",
                                "value": node["dedicated"], "effect": "NoSchedule"})
        if node["node_selector"]:
            pod["nodeSelector"] = dict(node["node_selector"])
        if node["nodes"]:
            pod["affinity"] = {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                    "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                          "values": list(node["nodes"])}]}]}}}
    if tolerations:
        pod["tolerations"] = tolerations
    if service["restart"] not in ("always", "unless-stopped"):
        # A Deployment's pods always restart; a one-shot job (finetune) is not a Deployment.
        return None
    return pod


def k8s_manifests(services_plan, namespace="gpufleet", node_placement=None,
                  gpu_tolerations=True, taint_key="dedicated"):
    """A Deployment (and a Service when it has ports) per active long-running service.

    A service the placement put on a GPU asks for one ``nvidia.com/gpu`` (``amd.com/gpu``...)
    by limit; the device plugin picks the GPU, so no ``CUDA_VISIBLE_DEVICES``. Node affinity
    and a toleration come from ``node_placement`` for dedicated GPU nodes (seed 002).
    Returns ``[{service, name, documents}]``.
    """
    services_plan = _check_plan(services_plan)
    if not isinstance(namespace, str) or not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                                                      namespace):
        raise ValueError("k8s_manifests_namespace must be a DNS-1123 label; got: %r"
                         % (namespace,))
    if not isinstance(taint_key, str) or not taint_key.strip():
        raise ValueError("k8s_manifests_taint_key must be a taint key; got: %r" % (taint_key,))
    if not isinstance(gpu_tolerations, bool):
        raise ValueError("k8s_manifests_gpu_tolerations must be a boolean; got: %r"
                         % (gpu_tolerations,))
    options = {"node_placement": _check_node_placement(node_placement),
               "gpu_tolerations": gpu_tolerations, "taint_key": taint_key}
    known = [s["name"] for s in services_plan["services"]]
    for name in options["node_placement"]:
        if name not in known:
            raise ValueError("k8s_manifests_node_placement has a service not in "
                             "services_catalog (%s); got: %r" % (", ".join(known), name))
    result = []
    for service in services_plan["services"]:
        if not service["active"]:
            continue
        name = service["name"].replace("_", "-")
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "gpufleet",
                  "app.kubernetes.io/managed-by": "ansible",
                  "app.kubernetes.io/component": service["engine"]}
        where = service["placement"]
        gpu_resource = K8S_GPU_RESOURCE.get(where["vendor"]) if where is not None else None
        pod = _k8s_pod(service, labels, options, gpu_resource)
        if pod is None:
            continue
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
        result.append({"service": service["name"], "name": name, "documents": documents})
    return result
