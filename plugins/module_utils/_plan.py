# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the service catalog, its profiles and modes,
and the plan (``services_plan``) that every later step reads.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the action ``services_plan`` and the filters in plugins/filter/render.py wrap
them, and plugins/module_utils/_render.py writes documents from the plan they make. Bad input
raises ValueError naming the field and its value
(``services_catalog.vllm.ports[0] must be 1-65535; got: 70000``). The same input always gives
the same output (dicts keep the catalog's order).

Vocabulary
  profile       what the user picks: remote, cpu, single-gpu, dual-gpu, multi-gpu
                (``services_profile``), or ``auto`` (:func:`recommend_profile` of the number
                of healthy GPUs: 0 cpu, 1 single-gpu, 2 dual-gpu, 3 or more multi-gpu).
  mode          a named set of the catalog's services (``services_modes``; one of them runs,
                ``inference_mode``). Two kinds, one vocabulary:
                dual-GPU modes ollama, vllm, mixed: which stack occupies GPU 1 under dual-gpu
                and multi-gpu (the catalog entries whose ``modes`` name it; the
                ``DUAL_GPU_MODE`` of the host's .env); other profiles run all their entries.
                listed modes (chat, ingestion and any the user declares): exactly the services
                the mode lists, on any GPU profile; ``exclusive: true`` says the mode's
                engines must not share the GPUs' memory with another mode's (vLLM fails its
                start-up memory profiling when Ollama frees memory meanwhile): a
                switch stops or puts to sleep the leaving services and waits for their
                memory to drain before the new ones start.
  sub-profile   ``<profile>-<mode>`` (``dual-gpu-vllm``, ``multi-gpu-vllm``), the compose
                profile the tooling injects for a profile of MODE_PROFILES.
  extra profile an opt-in profile such as ``finetune`` whose services run beside any profile
                when enabled (``services_extra_profiles``).
  spare GPU     a healthy whole GPU the services placed first leave free; an entry with
                ``per_spare_gpu: true`` runs a replica ``<entry>_gpu<index>`` on each
                (:func:`place_in_two_passes`). The default catalog's multi-gpu runs the
                dual-GPU stack on GPUs 0 and 1 and an Ollama replica on every other GPU.
  idle GPU      a healthy GPU the plan puts no active service on: the plan's summary names
                it and why.
"""

from __future__ import annotations

import copy
import ipaddress
import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _vram
from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    ENV_KEY_RE,
    is_int,
    recommend_profile,
    scalar_text,
)

PROFILES = ("remote", "cpu", "single-gpu", "dual-gpu", "multi-gpu")
# The profiles that place services on GPUs (and get the GPU overlay).
GPU_PROFILES = ("single-gpu", "dual-gpu", "multi-gpu")
# The profiles DUAL_GPU_MODE applies to: each has the sub-profiles <profile>-<mode>.
MODE_PROFILES = ("dual-gpu", "multi-gpu")
PROFILE_CHOICES = ("auto", *PROFILES)
MODES = ("ollama", "vllm", "mixed")
MODE_DESCRIPTIONS = {
    "ollama": "GPU 1 runs a second Ollama server",
    "vllm": "GPU 1 runs vLLM",
    "mixed": "GPU 1 runs Ollama and vLLM side by side, by VRAM budgets",
}
MODE_KEYS = ("description", "exclusive", "services")
ENGINES = ("ollama", "vllm", "other")
# Engines a mode switch can put to sleep instead of stopping (catalog key sleep): vLLM's sleep
# mode (--enable-sleep-mode, its dev-mode /sleep and /wake_up), Ollama's keep_alive 0 unload.
SLEEP_ENGINES = ("vllm", "ollama")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
PROTOCOLS = ("tcp", "udp")

CATALOG_KEYS = (
    "engine", "image", "command", "entrypoint", "model", "ports", "volumes", "environment",
    "health", "profiles", "modes", "uses_gpu", "gpu", "gpus", "vram_mib", "vram_budget_mib",
    "context_length", "parallel", "role", "latency_critical", "exclusive",
    "min_compute_capability", "enabled", "restart", "description", "models", "per_spare_gpu",
    "vendor_images", "sleep",
)
# The GPU vendors an entry's vendor_images may name (the vendor of the GPU it is placed on).
IMAGE_VENDORS = ("nvidia", "amd", "intel")
# Catalog keys handed on to the placement engine as they are.
PLACEMENT_KEYS = (
    "engine", "model", "gpu", "gpus", "vram_mib", "vram_budget_mib", "context_length",
    "parallel", "role", "latency_critical", "exclusive", "min_compute_capability",
)
PORT_KEYS = ("host", "container", "protocol", "address")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,51}\Z")
_PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# An image reference: [registry[:port]/]path[:tag][@sha256:digest], path in lower case.
_IMAGE_RE = re.compile(
    r"^(?:[A-Za-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?\Z")


# ---- the catalog --------------------------------------------------------------------------

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
    if not is_int(value) or value <= 0:
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
    if not is_int(value) or not 1 <= value <= 65535:
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


def check_model(value, at):
    """A model name as an engine gets it (vLLM's ``--model``, an Ollama pull): the rules of
    _vram.check_model_name, and no space, newline or control character anywhere (its pattern
    lets a final newline through), in the same words."""
    _vram.check_model_name(value, at)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("%s must be a model name like llama3.2:3b or Qwen/Qwen2.5-1.5B-Instruct "
                         "(letters, digits and . _ : / @ + -, no spaces); got: %r" % (at, value))
    return value


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
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise ValueError("%s has a bad variable name; got: %r" % (at, key))
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError("%s.%s must be a string, number or boolean; got: %r"
                             % (at, key, item))
        env[key] = scalar_text(item)
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
                or name.startswith(tuple(p + "-" for p in MODE_PROFILES)):
            raise ValueError("%s has a bad profile name (lower case, digits and '-', not one of "
                             "%s nor %s); got: %r"
                             % (where, ", ".join(PROFILES),
                                " nor ".join(p + "-*" for p in MODE_PROFILES), name))
        if not isinstance(enabled, bool):
            raise ValueError("%s.%s must be a boolean; got: %r" % (where, name, enabled))
    return dict(extra_profiles)


def _check_replica_entry(entry, profiles, uses_gpu, at):
    """A per_spare_gpu entry: a GPU service on one whole GPU, pinned by its expansion only,
    in the profiles that place services on GPUs (or an extra profile)."""
    if not uses_gpu:
        raise ValueError("%s.per_spare_gpu runs a replica on each spare GPU, so uses_gpu must "
                         "be true; got: uses_gpu false" % at)
    if entry.get("gpu") is not None:
        raise ValueError("%s.gpu must not be set with per_spare_gpu: each replica is pinned to "
                         "its spare GPU; got: %r" % (at, entry["gpu"]))
    if entry.get("gpus") is not None and entry.get("gpus") != 1:
        raise ValueError("%s.gpus must be 1 with per_spare_gpu: one replica on each spare GPU; "
                         "got: %r" % (at, entry["gpus"]))
    for i, profile in enumerate(profiles):
        if profile in PROFILES and profile not in GPU_PROFILES:
            raise ValueError("%s.profiles[%d] must be %s (or an extra profile) with "
                             "per_spare_gpu: %s places nothing on a GPU; got: %r"
                             % (at, i, ", ".join(GPU_PROFILES), profile, profile))


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
    vendor_images = _check_vendor_images(entry.get("vendor_images"), at + ".vendor_images")
    model = entry.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError("%s.model must be a non-empty string; got: %r" % (at, model))
    if model is not None:
        check_model(model, at + ".model")
    if engine == "vllm" and model is None:
        raise ValueError("%s.model must be set for engine vllm; got: None" % at)
    models = _str_list(entry.get("models"), at + ".models")
    if models is not None and engine != "ollama":
        raise ValueError("%s.models lists the models an Ollama server pulls; it is only for "
                         "engine ollama; got: %r" % (at, models))
    for i, extra_model in enumerate(models or []):
        if not extra_model.strip() or any(c.isspace() or not c.isprintable()
                                          for c in extra_model):
            raise ValueError("%s.models[%d] must be an Ollama model name like llama3.2:3b; "
                             "got: %r" % (at, i, extra_model))
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
    mode_profiles = [p for p in profiles if p in MODE_PROFILES]
    modes = entry.get("modes")
    if modes is None:
        modes = list(MODES) if mode_profiles else []
    if not isinstance(modes, list):
        raise ValueError("%s.modes must be a list; got: %r" % (at, modes))
    for i, mode in enumerate(modes):
        if mode not in MODES:
            raise ValueError("%s.modes[%d] must be one of %s; got: %r"
                             % (at, i, ", ".join(MODES), mode))
    if modes and not mode_profiles:
        raise ValueError("%s.modes is only for services in profile %s; got: %r"
                         % (at, " or ".join(MODE_PROFILES), modes))
    if mode_profiles and not modes:
        raise ValueError("%s.modes must name at least one of %s for profile %s; got: []"
                         % (at, ", ".join(MODES), mode_profiles[0]))
    uses_gpu = _optional_bool(entry, "uses_gpu", at, True)
    count, pin = _check_gpu_count(entry, uses_gpu, at)
    per_spare_gpu = _optional_bool(entry, "per_spare_gpu", at, False)
    if per_spare_gpu:
        _check_replica_entry(entry, profiles, uses_gpu, at)
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
    sleep = _optional_bool(entry, "sleep", at, False)
    if sleep and (engine not in SLEEP_ENGINES or not uses_gpu):
        raise ValueError("%s.sleep is for GPU services of engine vllm (its sleep mode) or ollama "
                         "(its models unloaded); got: %r for engine %s" % (at, sleep, engine))
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
        "models": _ollama_models(model, models) if engine == "ollama" else [],
        "command": command,
        "entrypoint": _str_list(entry.get("entrypoint"), at + ".entrypoint"),
        "ports": ports,
        "volumes": _check_volumes(entry.get("volumes"), at + ".volumes"),
        "environment": _check_environment(entry.get("environment"), at + ".environment"),
        "health": _check_health(entry.get("health"), ports, at + ".health"),
        "profiles": list(profiles), "modes": [m for m in MODES if m in modes],
        "uses_gpu": uses_gpu, "gpu": pin, "gpus": count, "restart": restart,
        "role": entry.get("role"),
        "latency_critical": _optional_bool(entry, "latency_critical", at, False),
        "exclusive": _optional_bool(entry, "exclusive", at, False),
        "min_compute_capability": None if entry.get("min_compute_capability") is None
        else str(entry["min_compute_capability"]),
        "description": entry.get("description"),
        "per_spare_gpu": per_spare_gpu, "replica_of": None, "vendor_images": vendor_images,
        "sleep": sleep,
    }
    result.update(numbers)
    return result


def _check_vendor_images(value, at):
    """``{vendor: image}``: the image a service runs when placed on that vendor's GPU (the
    ROCm build of an engine on an AMD GPU); ``image`` stays the one for every other case."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict of vendor: image (vendors %s); got: %r"
                         % (at, ", ".join(IMAGE_VENDORS), value))
    checked = {}
    for vendor, image in value.items():
        if vendor not in IMAGE_VENDORS:
            raise ValueError("%s keys must be GPU vendors (%s); got: %r"
                             % (at, ", ".join(IMAGE_VENDORS), vendor))
        checked[vendor] = check_image(image, "%s.%s" % (at, vendor)).strip()
    return checked


_MIG_PIN_RE = re.compile(r"^\s*(?:[0-9]+:[0-9]+|MIG-.*)\Z", re.IGNORECASE)


def _one_pin(pin, at):
    """A GPU pin: an index >= 0, 'i:j' (MIG device j of GPU i) or a UUID."""
    bad = isinstance(pin, bool) or not isinstance(pin, (int, str))
    if bad or (is_int(pin) and pin < 0) or (isinstance(pin, str) and not pin.strip()):
        raise ValueError("%s must be a GPU index, 'i:j' (MIG) or a UUID; got: %r" % (at, pin))
    return pin


def _check_gpu_count(entry, uses_gpu, at):
    """``gpus`` (how many whole GPUs the service spans, tensor parallel when > 1; None when
    the catalog does not say, which is 1) and ``gpu`` (one pin, or a list of N pins)."""
    count = entry.get("gpus")
    pin = entry.get("gpu")
    if count is not None and (not is_int(count) or not 1 <= count <= 64):
        raise ValueError("%s.gpus must be an integer 1-64; got: %r" % (at, count))
    if not count or count == 1:
        if isinstance(pin, list):
            raise ValueError("%s.gpu is a list of pins, which is for a service with gpus > 1 "
                             "(one pin per GPU); got: %r with gpus %s" % (at, pin, count or 1))
        return count, None if pin is None else _one_pin(pin, at + ".gpu")
    if not uses_gpu:
        raise ValueError("%s.gpus must be 1 (or unset) when uses_gpu is false; got: %r"
                         % (at, count))
    if pin is None:
        return count, None
    if not isinstance(pin, list) or len(pin) != count:
        raise ValueError("%s.gpu must be a list of %d pins (GPU index or UUID), one per GPU of "
                         "gpus: %d; got: %r" % (at, count, count, pin))
    seen = {}
    for i, one in enumerate(pin):
        where = "%s.gpu[%d]" % (at, i)
        _one_pin(one, where)
        if isinstance(one, str) and _MIG_PIN_RE.match(one):
            raise ValueError("%s must be a whole GPU's index or UUID: a service with gpus > 1 "
                             "(tensor parallel) takes no MIG device; got: %r" % (where, one))
        key = str(int(one)) if is_int(one) or str(one).strip().isdigit() \
            else str(one).strip().lower()
        if key in seen:
            raise ValueError("%s names the GPU of %s.gpu[%d] again; got: %r"
                             % (where, at, seen[key], one))
        seen[key] = i
    return count, list(pin)


def compose_profiles(entry, modes=None):
    """The compose profiles of a checked entry: dual-gpu (multi-gpu) becomes its sub-profiles
    dual-gpu-<mode> (multi-gpu-<mode>); each listed mode of ``modes`` (:func:`check_modes`)
    that names the entry adds the mode's name."""
    result = []
    for profile in entry["profiles"]:
        if profile in MODE_PROFILES:
            result.extend("%s-%s" % (profile, mode) for mode in entry["modes"])
        else:
            result.append(profile)
    for mode in (modes or {}).values():
        if mode["services"] is not None and entry["name"] in mode["services"]:
            result.append(mode["name"])
    return result


def _check_port_clashes(checked, extra, where):
    """Two services that can run together must not publish the same host port."""
    groups = [p for p in PROFILES if p not in MODE_PROFILES] + \
        ["%s-%s" % (p, m) for p in MODE_PROFILES for m in MODES]
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


def check_secret_environment(value, catalog, where="services_secret_environment"):
    """``{service: [NAME, ...]}`` of the secret environment ``{service: {NAME: value}}``: the
    names only, never a value (not even in an error: a message says the value's type).

    ``catalog`` is the raw catalog: a service may be disabled, but must be in it. A name the
    catalog's ``environment`` sets too is refused (Compose would take the catalog's, systemd
    the secret's)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict of service: {NAME: value}; got: a %s"
                         % (where, type(value).__name__))
    known = list(catalog) if isinstance(catalog, dict) else []
    names = {}
    for service, env in value.items():
        if service not in known:
            raise ValueError("%s has a service not in services_catalog (%s); got: %r"
                             % (where, ", ".join(map(str, known)), service))
        at = "%s.%s" % (where, service)
        if not isinstance(env, dict):
            raise ValueError("%s must be a dict of NAME: value; got: a %s"
                             % (at, type(env).__name__))
        entry = catalog[service] if isinstance(catalog[service], dict) else {}
        if entry.get("per_spare_gpu") is True:
            raise ValueError("%s: %s has per_spare_gpu, and its replicas cannot read a secret "
                             "environment (a service pinned with gpu to each GPU can); got "
                             "names: %s"
                             % (at, service, ", ".join(str(k) for k in env)))
        public = entry.get("environment") if isinstance(entry.get("environment"), dict) else {}
        for key, item in env.items():
            if not isinstance(key, str) or not ENV_KEY_RE.match(key):
                raise ValueError("%s has a bad variable name; got: %r" % (at, key))
            if item is None or isinstance(item, (dict, list)):
                raise ValueError("%s.%s must be a string, number or boolean; got: a %s"
                                 % (at, key, type(item).__name__))
            if "\x00" in scalar_text(item):
                raise ValueError("%s.%s must not hold a NUL character (value not shown)"
                                 % (at, key))
            if key in public:
                raise ValueError("%s.%s is set in services_catalog.%s.environment too; set it "
                                 "in one place; got: %r" % (at, key, service, key))
        names[service] = list(env)
    return names


def resolve_profile(profile, gpus=None):
    """``auto`` becomes cpu, single-gpu, dual-gpu or multi-gpu by the number of healthy GPUs."""
    if profile not in PROFILE_CHOICES:
        raise ValueError("services_profile must be one of %s; got: %r"
                         % (", ".join(PROFILE_CHOICES), profile))
    if profile != "auto":
        return profile
    return recommend_profile(len(_healthy(gpus)))


def _healthy(gpus):
    """The GPUs of ``ansible_facts.gpus`` that are not marked unhealthy."""
    return [g for g in gpus or [] if isinstance(g, dict) and g.get("healthy") is not False]


# ---- modes ---------------------------------------------------------------------------------

def _dual_mode(name):
    return {"name": name, "exclusive": False, "services": None,
            "description": MODE_DESCRIPTIONS[name]}


def check_modes(modes, checked, where="services_modes"):
    """``services_modes`` checked against the checked catalog: ``{name: {name, exclusive,
    services, description}}``, the dual-GPU modes always among them (``services`` None: the
    entries whose ``modes`` name them), a listed mode's ``services`` in catalog order."""
    result = {name: _dual_mode(name) for name in MODES}
    if modes is None:
        return result
    if not isinstance(modes, dict):
        raise ValueError("%s must be a dict of mode name: definition; got: %r" % (where, modes))
    sub = re.compile(r"^(?:%s)-" % "|".join(re.escape(p) for p in MODE_PROFILES))
    for name, entry in modes.items():
        at = "%s.%s" % (where, name)
        if not isinstance(name, str) or not _PROFILE_RE.match(name) or name in PROFILE_CHOICES \
                or sub.match(name):
            raise ValueError("%s has a bad mode name (lower case letters, digits and '-', not a "
                             "profile's name); got: %r" % (where, name))
        if entry is None:
            entry = {}  # noqa: PLW2901 - a mode declared with no keys
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict (description, exclusive, services); got: %r"
                             % (at, entry))
        unknown = sorted(str(key) for key in set(entry) - set(MODE_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        description = entry.get("description", MODE_DESCRIPTIONS.get(name, ""))
        if not isinstance(description, str):
            raise ValueError("%s.description must be a string; got: %r" % (at, description))
        exclusive = _optional_bool(entry, "exclusive", at, False)
        if name in MODES:
            if entry.get("services") is not None or exclusive:
                raise ValueError("%s: the dual-GPU mode %s shares the GPUs and runs the catalog "
                                 "entries whose modes name it (no services, no exclusive); "
                                 "got: %r" % (at, name, entry))
            result[name] = dict(_dual_mode(name), description=description)
            continue
        listed = _str_list(entry.get("services"), at + ".services")
        if not listed:
            raise ValueError("%s.services must list the catalog services of the mode; got: %r"
                             % (at, entry.get("services")))
        missing = []
        for i, service in enumerate(listed):
            if service not in checked:
                # A catalog of one's own need not have the default modes' services: the
                # mode fails only when it is the one that runs (resolve_mode).
                missing.append("%s.services[%d] names no enabled entry of services_catalog "
                               "(%s); got: %r" % (at, i, ", ".join(checked), service))
                continue
            if checked[service]["per_spare_gpu"]:
                raise ValueError("%s.services[%d] is a per_spare_gpu template (its replicas "
                                 "fill the spare GPUs of the dual-GPU modes); got: %r"
                                 % (at, i, service))
            if service in listed[:i]:
                raise ValueError("%s.services names %s twice; got: %r" % (at, service, listed))
        seen = {}
        for service in (s for s in listed if s in checked):
            for i, port in enumerate(checked[service]["ports"]):
                key = (port["host"], port["protocol"])
                if key in seen:
                    raise ValueError("%s: services_catalog.%s.ports[%d] publishes host port %d, "
                                     "as %s does (both run in mode %s); got: %d"
                                     % (at, service, i, port["host"], seen[key], name,
                                        port["host"]))
                seen[key] = "services_catalog.%s.ports[%d]" % (service, i)
        result[name] = {"name": name, "exclusive": exclusive, "description": description,
                        "services": [s for s in checked if s in listed]}
        if missing:
            result[name]["missing"] = missing
    return result


def resolve_mode(mode, modes=None, checked=None, where="services_mode"):
    """The mode named ``mode`` among ``modes`` (:func:`check_modes`' result, or the raw
    ``services_modes`` with ``checked`` the checked catalog); a mode's dict passes as it is."""
    if isinstance(mode, dict):
        return mode
    if modes is None or checked is not None:
        modes = check_modes(modes, checked or {})
    if not isinstance(mode, str) or mode not in modes:
        raise ValueError("%s must be one of %s; got: %r" % (where, ", ".join(modes), mode))
    if modes[mode].get("missing"):
        raise ValueError(modes[mode]["missing"][0])
    return modes[mode]


def _check_mode(mode):
    if isinstance(mode, dict):
        return mode
    if mode not in MODES:
        raise ValueError("services_dual_gpu_mode must be one of %s; got: %r"
                         % (", ".join(MODES), mode))
    return _dual_mode(mode)


def active_profiles(profile, mode, extra_profiles=None, gpus=None):
    """The compose profiles to pass (``--profile``): a listed mode's name, else the profile
    with the sub-profile injected for dual-gpu and multi-gpu."""
    profile = resolve_profile(profile, gpus)
    mode = _check_mode(mode)
    extra = check_extra_profiles(extra_profiles)
    if mode["services"] is not None:
        result = [mode["name"]]
    elif profile in MODE_PROFILES:
        result = [profile, "%s-%s" % (profile, mode["name"])]
    else:
        result = [profile]
    return result + [name for name, enabled in extra.items() if enabled]


def select(checked, profile, mode, extra_profiles=None, gpus=None):
    """Names of the services that run for the profile and mode, in catalog order."""
    mode = _check_mode(mode)
    wanted = set(active_profiles(profile, mode, extra_profiles, gpus))
    if mode["services"] is None:
        return [name for name, entry in checked.items() if set(compose_profiles(entry)) & wanted]
    resolved = resolve_profile(profile, gpus)
    if resolved not in GPU_PROFILES:
        for name in mode["services"]:
            if checked[name]["uses_gpu"]:
                raise ValueError("services_modes.%s.services names %s, which uses a GPU; profile "
                                 "%s places no service on a GPU; got: %r"
                                 % (mode["name"], name, resolved, name))
    return [name for name, entry in checked.items()
            if name in mode["services"] or set(compose_profiles(entry)) & wanted]


def placement_input(catalog, profile="auto", mode="ollama", extra_profiles=None, gpus=None):
    """The ``services`` option of gpu_placement: active services that use a GPU, but for
    the per_spare_gpu entries (the first pass of :func:`place_in_two_passes`).

    Nothing is placed under the cpu and remote profiles (the GPU overlay is used for the
    GPU profiles only).
    """
    checked = check_catalog(catalog, extra_profiles)
    mode = _check_mode(mode)
    if resolve_profile(profile, gpus) not in GPU_PROFILES:
        select(checked, profile, mode, extra_profiles, gpus)  # a listed GPU service fails
        return []
    services = []
    for name in select(checked, profile, mode, extra_profiles, gpus):
        entry = checked[name]
        if not entry["uses_gpu"] or entry["per_spare_gpu"]:
            continue
        service = _placement_service(entry)
        if mode["services"] is not None and _index_pin(service.get("gpu")):
            # GPU numbers are the dual-GPU layout's (GPU 1 runs vLLM): a listed mode's
            # services are placed by the strategy; UUID and MIG pins still hold.
            del service["gpu"]
        services.append(service)
    return services


def _index_pin(pin):
    pins = pin if isinstance(pin, list) else [pin]
    return pin is not None and all(is_int(p) or str(p).strip().isdigit() for p in pins)


def _placement_service(entry):
    """A checked entry as gpu_placement takes it: its name and PLACEMENT_KEYS."""
    service = {"name": entry["name"]}
    for key in PLACEMENT_KEYS:
        if entry.get(key) is not None and entry.get(key) is not False:
            service[key] = entry[key]
    return service


# ---- spare GPUs: a replica of each per_spare_gpu entry on each -----------------------------
#
# A host with more GPUs than its pinned services use (multi-gpu: 3 to 8 GPUs) puts the rest to
# work through catalog entries with ``per_spare_gpu: true``. Placement runs in two passes:
#   pass 1  every active GPU service but the per_spare_gpu entries, as the catalog says;
#   spare   the healthy whole GPUs pass 1 left without a service: with an index, not in MIG
#           mode (a replica takes a whole GPU; MIG devices are for the services pinned to
#           them), by index;
#   pass 2  the spare GPUs go to the active per_spare_gpu entries in turn (catalog order,
#           round robin), each becoming one service ``<entry>_gpu<index>`` pinned to its GPU,
#           its host ports the entry's + k (k = 0, 1, ... in GPU order); the pass-1 services
#           are pinned where pass 1 put them, so pass 2 never moves one.
# The replicas are ordinary services of the plan with ``replica_of: <entry>``; the entry itself
# is not (it is a template), and ``services_plan.replicas`` maps it to its replicas.

def _held_gpus(assignment):
    """The host GPU indexes an assignment holds: those of its ``gpus`` (a service that spans
    GPUs), else its ``gpu_index``."""
    spans = assignment.get("gpus")
    if isinstance(spans, list) and spans:
        return {g["gpu_index"] for g in spans
                if isinstance(g, dict) and is_int(g.get("gpu_index"))}
    index = assignment.get("gpu_index")
    return {index} if is_int(index) else set()


def _mig_enabled(gpu):
    return str(gpu.get("mig_mode") or "").strip().lower() == "enabled"


def spare_gpus(gpus, assignments):
    """``[{index, uuid}]`` of the healthy whole GPUs (an index, not in MIG mode) that none of
    ``assignments`` (gpu_placement's) holds, by index."""
    held = set()
    for assignment in assignments or []:
        if isinstance(assignment, dict):
            held |= _held_gpus(assignment)
    spare = {}
    for gpu in _healthy(gpus):
        index = gpu.get("index")
        if is_int(index) and index not in held and not _mig_enabled(gpu):
            spare.setdefault(index, {"index": index, "uuid": gpu.get("uuid") or None})
    return [spare[index] for index in sorted(spare)]


def _replica(entry, k, gpu, where):
    """Replica ``k`` of a per_spare_gpu entry, on ``gpu``."""
    template = entry["name"]
    name = "%s_gpu%d" % (template, gpu["index"])
    if not _NAME_RE.match(name):
        raise ValueError("%s.%s: its replica on GPU %d would be named %s, longer than 52 "
                         "characters; give the per_spare_gpu entry a shorter name; got: %r"
                         % (where, template, gpu["index"], name, template))
    ports = []
    for i, port in enumerate(entry["ports"]):
        if port["host"] + k > 65535:
            raise ValueError(
                "%s.%s.ports[%d].host: its replica on GPU %d (%s) would publish host port %d "
                "(%d + %d), above 65535; give a host port with room for every spare GPU; "
                "got: %d" % (where, template, i, gpu["index"], name, port["host"] + k,
                             port["host"], k, port["host"]))
        ports.append(dict(port, host=port["host"] + k))
    replica = copy.deepcopy(entry)
    replica.update(name=name, gpu=gpu["uuid"] if gpu["uuid"] else gpu["index"], ports=ports,
                   per_spare_gpu=False, replica_of=template)
    return replica


def _port_owner(services, name, i, where):
    entry = services[name]
    if entry["replica_of"] is None:
        return "%s.%s.ports[%d]" % (where, name, i)
    return "the replica %s of %s.%s.ports[%d]" % (name, where, entry["replica_of"], i)


def _check_replica_ports(services, extra, where):
    """A replica's host ports must not be another service's where both can run: the groups of
    _check_port_clashes (the catalog itself passed it before)."""
    groups = [p for p in PROFILES if p not in MODE_PROFILES] + \
        ["%s-%s" % (p, m) for p in MODE_PROFILES for m in MODES]
    extras = set(extra)
    for group in groups:
        seen = {}
        for name, entry in services.items():
            profiles = set(compose_profiles(entry))
            if group not in profiles and not profiles & extras:
                continue
            for i, port in enumerate(entry["ports"]):
                key = (port["host"], port["protocol"])
                if key not in seen:
                    seen[key] = (name, i)
                    continue
                pair = [(name, i), seen[key]]
                # The replica is named first (both may be replicas; the catalog passed the rest).
                pair.sort(key=lambda owner: services[owner[0]]["replica_of"] is None)
                (replica, at), other = pair
                template = services[replica]["replica_of"]
                if template is None:
                    continue
                raise ValueError(
                    "%s.%s.ports[%d].host: its replica on GPU %s (%s) publishes host port %d, "
                    "as %s does (both run in profile %s); give %s host ports with room for "
                    "every spare GPU; got: %d"
                    % (where, template, at, replica[len(template) + len("_gpu"):], replica,
                       port["host"], _port_owner(services, other[0], other[1], where), group,
                       template, port["host"]))


def expand_replicas(checked, active, gpus, assignments, profile, extra_profiles=None,
                    where="services_catalog"):
    """``(services, active, replicas)``: ``checked`` (check_catalog's) with each per_spare_gpu
    entry replaced by its replicas, ``active`` with the replicas of the active entries, and
    ``{entry: [replica, ...]}``.

    ``assignments`` are gpu_placement's for the other services (others are left out): the
    spare GPUs are those they leave (:func:`spare_gpus`). An entry that is not active has no
    replica, nor has any under a profile that places nothing on a GPU. Bad replicas (a name
    too long or taken, a host port above 65535 or published by another service) raise
    ValueError naming the entry, the GPU and the port.
    """
    extra = check_extra_profiles(extra_profiles)
    templates = [name for name, entry in checked.items() if entry["per_spare_gpu"]]
    if not templates:
        return checked, list(active), {}
    live = [name for name in templates if name in active] if profile in GPU_PROFILES else []
    others = [a for a in assignments or [] if isinstance(a, dict) and a.get("service") in checked]
    spare = spare_gpus(gpus, others) if live else []
    shares = {name: [] for name in templates}
    for j, gpu in enumerate(spare):
        shares[live[j % len(live)]].append(gpu)
    k8s_names = {name.replace("_", "-"): name for name in checked}
    services = {}
    for name, entry in checked.items():
        if not entry["per_spare_gpu"]:
            services[name] = entry
            continue
        for k, gpu in enumerate(shares[name]):
            replica = _replica(entry, k, gpu, where)
            taken = k8s_names.get(replica["name"].replace("_", "-"))
            if taken is not None:
                raise ValueError("%s.%s: its replica on GPU %d would be named %s, as %s.%s is "
                                 "(or its Kubernetes name %s); rename one of them; got: %r"
                                 % (where, name, gpu["index"], replica["name"], where, taken,
                                    replica["name"].replace("_", "-"), taken))
            services[replica["name"]] = replica
    _check_replica_ports(services, extra, where)
    active = [name for name, entry in services.items()
              if name in active or entry["replica_of"] in live]
    replicas = {name: [r for r, entry in services.items() if entry["replica_of"] == name]
                for name in templates}
    return services, active, replicas


def _pass_one_pin(assignment):
    """Where pass 1 put a service, as a pin: its unit (``2``, ``2:1``), or its GPUs."""
    spans = assignment.get("gpus")
    if isinstance(spans, list) and len(spans) > 1:
        return [g.get("gpu") for g in spans]
    return assignment.get("gpu")


def _merge_passes(first, second, replicas):
    """Pass 2's placement, with pass 1's words for the services pass 1 placed: their
    assignments and explanations, and pass 1's issues and warnings; pass 2 adds those of the
    replicas (and of GPUs pass 1 did not speak of)."""
    before = {a["service"]: a for a in first.get("assignments") or []}
    for assignment in second["assignments"]:
        old = before.get(assignment["service"])
        if old is not None and old.get("gpu") is not None \
                and old.get("gpu") != assignment.get("gpu"):
            raise ValueError("placement pass 2 moved %s from GPU %s to GPU %s; got: %r"
                             % (assignment["service"], old.get("gpu"), assignment.get("gpu"),
                                assignment.get("gpu")))
    issues = list(first.get("issues") or [])
    issues += [i for i in second.get("issues") or [] if i.get("service") in replicas
               or (i.get("service") is None and i not in issues)]
    explanations = dict(second.get("explanations") or {})
    explanations.update(first.get("explanations") or {})
    result = dict(second, assignments=[before.get(a["service"], a)
                                       for a in second["assignments"]],
                  explanations=explanations, issues=issues,
                  warnings=[issue["message"] for issue in issues])
    if isinstance(result.get("summary"), dict):
        result["summary"] = dict(result["summary"], warning_count=len(issues))
    return result


def place_in_two_passes(catalog, profile, mode, extra_profiles, gpus, place):
    """gpu_placement's result for a host's active GPU services (``{}`` when none), replicas
    of the per_spare_gpu entries included: ``place(services)`` runs gpu_placement on the
    host's GPUs with the caller's options.

    Pass 1 places :func:`placement_input`. When an active per_spare_gpu entry and spare GPUs
    are left, pass 2 places the same services, each pinned where pass 1 put it, and the
    replicas of :func:`expand_replicas`, each pinned to its GPU; the result is pass 2's with
    pass 1's words for the services pass 1 placed (their ``pinned`` stays what the catalog
    says). Otherwise the result is pass 1's.
    """
    services = placement_input(catalog, profile, mode, extra_profiles, gpus)
    first = place(services) if services else {}
    checked = check_catalog(catalog, extra_profiles)
    resolved = resolve_profile(profile, gpus)
    expanded, _active, replicas = expand_replicas(
        checked, select(checked, resolved, mode, extra_profiles), gpus,
        first.get("assignments"), resolved, extra_profiles)
    names = [name for group in replicas.values() for name in group]
    if not names:
        return first
    where = {a["service"]: a for a in first.get("assignments") or []}
    second = []
    for service in services:
        pin = _pass_one_pin(where.get(service["name"]) or {})
        second.append(dict(service, gpu=pin) if pin is not None else dict(service))
    second += [_placement_service(expanded[name]) for name in names]
    return _merge_passes(first, place(second), names)


# ---- where images, models and weights come from ------------------------------------------

# Docker Hub under its other names; a reference without a registry is Docker Hub's.
DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
# Where vLLM's container keeps Hugging Face downloads (HF_HOME of the root user in
# vllm/vllm-openai).
HF_CONTAINER_HOME = "/root/.cache/huggingface"
# Ollama's model directory when OLLAMA_MODELS is not set (the root user in ollama/ollama).
OLLAMA_DEFAULT_MODELS = "/root/.ollama/models"
SOURCE_DEFAULTS = {
    "image_mirrors": {},
    "insecure_registries": [],
    "ollama_registry": "registry.ollama.ai",
    "ollama_source_dir": None,
    "hf_home": "/srv/gpufleet/models/huggingface",
    "hf_endpoint": None,
    "hf_token_file": None,
}
_REGISTRY_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?\Z")
_MIRROR_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[a-z0-9._-]+)*\Z")


def split_image(image):
    """``(registry, rest)`` of an image reference: Docker Hub for a reference without a
    registry, its official images under ``library/`` (``python:3.11`` is
    ``docker.io/library/python:3.11``)."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry = DOCKER_HUB if first in _HUB_ALIASES else first
    else:
        registry, rest = DOCKER_HUB, image
    if registry == DOCKER_HUB and "/" not in rest.split("@")[0].split(":")[0]:
        rest = "library/" + rest
    return registry, rest


def mirror_image(image, mirrors):
    """The reference a host pulls: ``image`` under the mirror of its registry, if any."""
    registry, rest = split_image(image)
    prefix = (mirrors or {}).get(registry)
    return "%s/%s" % (prefix.rstrip("/"), rest) if prefix else image


def check_sources(sources, where="sources"):
    """The sources of images, Ollama models and Hugging Face weights, checked, with defaults."""
    if sources is None:
        sources = {}
    if not isinstance(sources, dict):
        raise ValueError("%s must be a dict; got: %r" % (where, sources))
    unknown = sorted(str(k) for k in set(sources) - set(SOURCE_DEFAULTS))
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (where, ", ".join(unknown)))
    result = dict(SOURCE_DEFAULTS)
    result.update({k: v for k, v in sources.items() if v not in (None, "")})
    mirrors = result["image_mirrors"]
    if not isinstance(mirrors, dict):
        raise ValueError("services_image_mirrors must be a dict of registry: mirror; got: %r"
                         % (mirrors,))
    checked = {}
    for registry, mirror in mirrors.items():
        if not isinstance(registry, str) or not _REGISTRY_RE.match(registry):
            raise ValueError("services_image_mirrors has a bad registry name (like docker.io "
                             "or quay.io); got: %r" % (registry,))
        if not isinstance(mirror, str) or not _MIRROR_RE.match(mirror.rstrip("/")):
            raise ValueError("services_image_mirrors.%s must be a registry host with an "
                             "optional path, like mirror.example:5000/quay.io; got: %r"
                             % (registry, mirror))
        checked[DOCKER_HUB if registry in _HUB_ALIASES else registry] = mirror.rstrip("/")
    result["image_mirrors"] = checked
    insecure = result["insecure_registries"]
    if not isinstance(insecure, list) or not all(
            isinstance(h, str) and _REGISTRY_RE.match(h) for h in insecure):
        raise ValueError("services_insecure_registries must be a list of registry hosts "
                         "(host or host:port); got: %r" % (insecure,))
    registry = result["ollama_registry"]
    if not isinstance(registry, str) or not _REGISTRY_RE.match(registry):
        raise ValueError("services_ollama_registry must be a registry host (host or host:port) "
                         "like registry.ollama.ai; got: %r" % (registry,))
    for key in ("hf_home", "ollama_source_dir", "hf_token_file"):
        value = result[key]
        if value is not None and (not isinstance(value, str) or not value.startswith("/")
                                  or any(c.isspace() for c in value)):
            raise ValueError("services_%s must be an absolute path without spaces; got: %r"
                             % (key, value))
    endpoint = result["hf_endpoint"]
    if endpoint is not None and (not isinstance(endpoint, str) or not re.match(
            r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/\S*)?$", endpoint)):
        raise ValueError("services_hf_endpoint must be an http(s) URL like "
                         "https://huggingface.co; got: %r" % (endpoint,))
    if endpoint is not None:
        result["hf_endpoint"] = endpoint.rstrip("/")
    return result


def _ollama_models(model, models):
    """The models an Ollama server needs: its ``model``, then ``models``, each once."""
    result = []
    for name in ([model] if model else []) + list(models or []):
        if name.strip() not in result:
            result.append(name.strip())
    return result


def ollama_models_dir(service):
    """The host directory an Ollama container keeps its models in: the bind mount that holds
    OLLAMA_MODELS (``~/.ollama/models`` when unset). None when no mount holds it."""
    inside = service["environment"].get("OLLAMA_MODELS") or OLLAMA_DEFAULT_MODELS
    for volume in sorted(service["volumes"], key=lambda v: -len(v["target"])):
        target = volume["target"].rstrip("/") or "/"
        if inside == target or inside.startswith(target.rstrip("/") + "/"):
            return (volume["source"].rstrip("/") + inside[len(target):]) or "/"
    return None


def _local_url(service, container_port):
    """The URL of a service's published port, from the host."""
    for port in service["ports"]:
        if port["container"] == container_port:
            address = port.get("address") or "127.0.0.1"
            if address in ("0.0.0.0", "::"):
                address = "127.0.0.1"
            return "http://%s:%d" % ("[%s]" % address if ":" in address else address,
                                     port["host"])
    return None


def _with_sources(item, sources):
    """A plan service with its image pulled through the mirror and vLLM's weights in the
    host's Hugging Face cache, read offline once fetched: vLLM itself never needs (nor gets)
    the Hugging Face token, only the fetch on the host does."""
    item["image_source"] = item["image"]
    item["image"] = mirror_image(item["image"], sources["image_mirrors"])
    if item["engine"] == "vllm":
        env = dict(item["environment"])
        env.setdefault("HF_HUB_OFFLINE", "1")
        if sources["hf_endpoint"]:
            env.setdefault("HF_ENDPOINT", sources["hf_endpoint"])
        item["environment"] = env
        if not any(v["target"] == HF_CONTAINER_HOME for v in item["volumes"]):
            item["volumes"] = item["volumes"] + [
                {"source": sources["hf_home"], "target": HF_CONTAINER_HOME, "read_only": False}]
    return item


def downloads(services, sources):
    """What the active services need on the host before they serve, each once:
    ``{items: [...], options: {...}}`` for gpufleet.inference.downloads."""
    items = []
    index = {}

    def add(key, services_name, item):
        if key in index:
            index[key]["services"].append(services_name)
            return
        item["services"] = [services_name]
        index[key] = item
        items.append(item)

    insecure = set(sources["insecure_registries"])
    for service in services:
        if not service["active"]:
            continue
        name = service["name"]
        add(("image", service["image"]), name,
            {"kind": "image", "name": service["image"],
             "insecure": split_image(service["image"])[0] in insecure})
        if service["engine"] == "ollama":
            models_dir = ollama_models_dir(service)
            if models_dir is None and service["models"]:
                raise ValueError(
                    "services_catalog.%s.volumes must mount a host directory at OLLAMA_MODELS "
                    "(%s; %s when unset): its models are pulled there before the verify and "
                    "kept when the container is recreated; got: %r"
                    % (name, service["environment"].get("OLLAMA_MODELS") or "unset",
                       OLLAMA_DEFAULT_MODELS, service["volumes"]))
            port = (service["health"] or {}).get("port") or (
                service["ports"][0]["container"] if service["ports"] else 11434)
            for model in service["models"]:
                add(("ollama", models_dir, model), name,
                    {"kind": "ollama", "name": model, "models_dir": models_dir,
                     "url": _local_url(service, port)})
        elif service["engine"] == "vllm" and not service["model"].startswith("/"):
            add(("huggingface", service["model"]), name,
                {"kind": "huggingface", "name": service["model"], "revision": "main",
                 "hf_home": sources["hf_home"]})
    options = {
        "ollama_registry": sources["ollama_registry"],
        "ollama_insecure": sources["ollama_registry"] in insecure,
        "ollama_source_dir": sources["ollama_source_dir"],
        "hf_endpoint": sources["hf_endpoint"] or "https://huggingface.co",
        "hf_token_file": sources["hf_token_file"],
    }
    return {"items": items, "options": options}


# ---- the plan -----------------------------------------------------------------------------

def _spanned(assignment):
    """The GPUs of a placed assignment, in order: its ``gpus`` list (N of them with tensor
    parallel), or its one GPU when the placement gives none."""
    spanned = assignment.get("gpus")
    if isinstance(spanned, list) and spanned:
        return spanned
    return [{key: assignment.get(key)
             for key in ("gpu", "gpu_index", "gpu_uuid", "gpu_name", "device_id")}]


def _budget(engine, assignment, sleep=False):
    """Budget environment and engine arguments that hold a service to its budget (vLLM on N
    GPUs: ``--tensor-parallel-size N``; its utilisation is per GPU); a vLLM that may sleep
    gets ``--enable-sleep-mode`` and the dev-mode endpoints (``VLLM_SERVER_DEV_MODE=1``)."""
    settings = assignment.get("engine_settings") or {}
    env = {}
    args = []
    if engine == "vllm" and sleep:
        env["VLLM_SERVER_DEV_MODE"] = "1"
        args.append("--enable-sleep-mode")
    if engine == "vllm":
        if settings.get("gpu_memory_utilization") is not None:
            args += ["--gpu-memory-utilization", str(settings["gpu_memory_utilization"])]
        if settings.get("max_model_len"):
            args += ["--max-model-len", str(settings["max_model_len"])]
        if settings.get("max_num_seqs"):
            args += ["--max-num-seqs", str(settings["max_num_seqs"])]
        count = settings.get("tensor_parallel_size") or len(_spanned(assignment))
        if count > 1:
            args += ["--tensor-parallel-size", str(count)]
    else:
        env = {key: scalar_text(value) for key, value in settings.items()}
    return env, args


def _idle_note(profile, idle, used, mode, gpus, replicas):
    """Why healthy GPUs run nothing: a summary line per reason (unhealthy GPUs are warned
    of by the placement and are not idle)."""
    mig = {g["index"] for g in _healthy(gpus) if is_int(g.get("index")) and _mig_enabled(g)}
    lines = []
    whole = [i for i in idle if i not in mig]
    if whole:
        text = "GPU %s idle: profile %s " % (", ".join(str(i) for i in whole), profile)
        if not used:
            text += "places no service on a GPU"
        else:
            text += "places its active services on GPU %s only" % ", ".join(str(i) for i in used)
            if profile == "multi-gpu" and not any(replicas.values()):
                text += ("; services_catalog has no entry with per_spare_gpu: true in profile "
                         "multi-gpu, mode %s, to run a replica on each spare GPU (the default "
                         "catalog's ollama_spare is one)" % mode)
        lines.append(text)
    if [i for i in idle if i in mig]:
        lines.append("GPU %s idle: MIG mode is enabled and no service is placed on its MIG "
                     "devices (a per_spare_gpu replica takes a whole GPU)"
                     % ", ".join(str(i) for i in idle if i in mig))
    return lines


def plan(catalog, placement=None, gpus=None, profile="auto", mode="ollama",
         extra_profiles=None, sources=None, secrets=None, modes=None, dual_gpu_mode=None):
    """The ``services_plan`` fact: every enabled service, which run, and where.

    ``placement`` is the result of gpu_placement for :func:`placement_input` (None or ``{}``
    when nothing was placed), ``gpus`` the host's ``ansible_facts.gpus``, ``sources`` where
    images, Ollama models and Hugging Face weights come from (:func:`check_sources`).
    ``idle_gpus`` lists the healthy GPUs no active service is placed on; the summary says why.
    A per_spare_gpu entry is replaced by its replicas (:func:`expand_replicas`, spare GPUs from
    the placement's other assignments, so ``placement`` is :func:`place_in_two_passes`'s);
    ``replicas`` maps each such entry to its replicas' names.
    ``downloads`` lists what the active services need fetched (:func:`downloads`).
    ``secrets`` is :func:`check_secret_environment`'s ``{service: [NAME, ...]}``: each service
    carries its names as ``secret_environment``, which the renderers read from a mode 0600
    file (the values never enter the plan).
    ``modes`` is ``services_modes`` (:func:`check_modes`), ``mode`` the name of the one that
    runs (or its dict); ``dual_gpu_mode`` the dual-GPU mode recorded beside a listed mode
    (``DUAL_GPU_MODE``; default ollama).
    """
    checked = check_catalog(catalog, extra_profiles)
    all_modes = check_modes(modes, checked)
    mode = resolve_mode(mode, all_modes) if not isinstance(mode, dict) else mode
    secrets = secrets or {}
    sources = check_sources(sources)
    resolved = resolve_profile(profile, gpus)
    profiles = active_profiles(resolved, mode, extra_profiles)
    active = select(checked, resolved, mode, extra_profiles)
    placement = placement or {}
    if not isinstance(placement, dict):
        raise ValueError("placement must be the result of gpu_placement; got: %r" % (placement,))
    live = [name for name in active if checked[name]["per_spare_gpu"]] \
        if resolved in GPU_PROFILES else []
    checked, active, replicas = expand_replicas(checked, active, gpus, placement.get("assignments"),
                                                resolved, extra_profiles)
    vendors, unified = {}, set()
    for gpu in gpus or []:
        if isinstance(gpu, dict) and is_int(gpu.get("index")):
            vendors[gpu["index"]] = gpu.get("vendor") or "nvidia"
            if gpu.get("memory_kind") == "unified":
                unified.add(gpu["index"])
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
        item = _with_sources(dict(entry, compose_profiles=compose_profiles(entry, all_modes),
                                  active=name in active, placement=None), sources)
        assignment = assignments.get(name)
        if assignment is not None and assignment.get("gpu_index") is not None:
            env, args = _budget(entry["engine"], assignment, entry["sleep"])
            spanned = _spanned(assignment)
            item["placement"] = {
                "gpu": assignment.get("gpu"), "gpu_index": assignment["gpu_index"],
                "gpu_uuid": assignment.get("gpu_uuid"), "gpu_name": assignment.get("gpu_name"),
                "device_id": ",".join(str(g.get("device_id")) for g in spanned),
                "gpu_count": len(spanned),
                "gpu_indexes": [g.get("gpu_index") for g in spanned],
                "gpu_uuids": [g.get("gpu_uuid") for g in spanned],
                "device_ids": [str(g.get("device_id")) for g in spanned],
                "vendor": vendors.get(assignment["gpu_index"], "nvidia"),
                "vram_budget_mib": assignment.get("vram_budget_mib"),
                "adjusted": bool(assignment.get("adjusted")),
                "environment": {k: scalar_text(v)
                                for k, v in (assignment.get("environment") or {}).items()},
                "engine_settings": dict(assignment.get("engine_settings") or {}),
                "budget_env": env, "engine_args": args,
            }
            vendor_image = entry.get("vendor_images", {}).get(item["placement"]["vendor"])
            if vendor_image:
                item["image_source"] = vendor_image
                item["image"] = mirror_image(vendor_image, sources["image_mirrors"])
        elif assignment is not None and (entry.get("gpus") or 1) > 1:
            # A tensor-parallel engine without its GPUs cannot start: fail before anything is
            # written, not at the apply (which would roll back what runs).
            said = [w for w in placement.get("warnings") or [] if name in w]
            raise ValueError("services_catalog.%s.gpus asks for %d GPUs and the placement found "
                             "none that can take it (%s); got: %d"
                             % (name, entry["gpus"], " ".join(said) or "no such GPUs",
                                entry["gpus"]))
        # vLLM's level 1 offloads the weights to host memory: on unified memory that frees
        # nothing, level 2 discards them (reloaded on wake).
        # (A service not placed in this mode is judged by the host's GPUs.)
        item["sleep_level"] = None
        if entry["sleep"]:
            spans = set(item["placement"]["gpu_indexes"]) if item["placement"] else unified
            item["sleep_level"] = 2 if entry["engine"] == "vllm" and spans & unified else 1
        item["secret_environment"] = list(secrets.get(name) or [])
        where = item["placement"] or {}
        for key in item["secret_environment"]:
            if key in item["environment"] or key in where.get("environment", {}) \
                    or key in where.get("budget_env", {}):
                raise ValueError("services_secret_environment.%s.%s is set by the plan too (the "
                                 "catalog's environment, its sources or the placement); set it "
                                 "in one place; got: %r" % (name, key, key))
        services.append(item)
    summary = []
    for item in services:
        if not item["active"]:
            continue
        where = item["placement"]
        if where is None:
            summary.append("%s: no GPU" % item["name"])
        elif where["gpu_count"] > 1:
            summary.append("%s: GPU %s (%s), %s MiB per GPU%s" % (
                item["name"], ", ".join(str(i) for i in where["gpu_indexes"]),
                ", ".join(where["device_ids"]), where["vram_budget_mib"],
                " (adjusted)" if where["adjusted"] else ""))
        else:
            summary.append("%s: GPU %s (%s), %s MiB%s" % (
                item["name"], where["gpu"], where["device_id"], where["vram_budget_mib"],
                " (adjusted)" if where["adjusted"] else ""))
    summary.insert(0, "profile %s (compose profiles %s)" % (resolved, ", ".join(profiles)))
    if mode["services"] is not None:
        summary.insert(1, "mode %s%s: %s" % (mode["name"], " (exclusive)" if mode["exclusive"]
                                             else "", ", ".join(mode["services"])))
    summary += ["%s: no replica, no spare GPU (per_spare_gpu: one on each healthy whole GPU "
                "the other services leave free)" % name for name in live if not replicas[name]]
    used = sorted({i for s in services if s["active"] and s["placement"] is not None
                   for i in s["placement"].get("gpu_indexes") or [s["placement"]["gpu_index"]]})
    idle = sorted({g["index"] for g in _healthy(gpus) if is_int(g.get("index"))} - set(used))
    if idle:
        summary += _idle_note(resolved, idle, used, mode["name"], gpus, replicas)
    gpu_assignments = placement.get("gpu_assignments") or {
        "strategy": placement.get("strategy"), "assignments": {}}
    return {
        "profile": resolved,
        "mode": {"name": mode["name"], "exclusive": mode["exclusive"],
                 "description": mode["description"],
                 "services": None if mode["services"] is None else list(mode["services"])},
        "dual_gpu_mode": mode["name"] if mode["services"] is None else (dual_gpu_mode or "ollama"),
        "compose_profiles": profiles,
        "gpu_overlay": resolved in GPU_PROFILES,
        "active": active,
        "services": services,
        "strategy": placement.get("strategy"),
        "warnings": list(placement.get("warnings") or []),
        "summary": summary,
        "idle_gpus": idle,
        "replicas": replicas,
        "sources": sources,
        "downloads": downloads(services, sources),
        "gpu_assignments": {"strategy": gpu_assignments.get("strategy"),
                            "assignments": dict(gpu_assignments.get("assignments") or {})},
    }


def check_plan(value, where="services_plan"):
    """The one check of a plan, wherever one is consumed (the documents of _render...)."""
    if not isinstance(value, dict) or not isinstance(value.get("services"), list) \
            or "compose_profiles" not in value:
        raise ValueError("%s must be the fact set by the gpufleet.inference.services role; "
                         "got: %r" % (where, value))
    return value
