# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the LLM router's configuration.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the router role's filters wrap them. From the ``services_plan`` fact (the
services role) and what was reachable, :func:`router_config` builds

  llm_yaml   the application's ``config/llm.yaml``: ``backends`` (``type: openai_compat``,
             ``base_url``, ``model: __auto__``), ``fallback_order`` and
             ``research_fallback_order``, and, when asked, ``task_routes`` (each task class to
             the small or the large model).
  litellm    a LiteLLM proxy config: ``model_list`` (one model group per backend),
             ``router_settings`` (fallbacks, cooldowns, retries).

:func:`probe_targets` and :func:`probed` are the probe before it (which backends to ask, and
what they answered), :func:`check_role` the role's preflight, :func:`app_env` the application
env file (the mode, which engines are up, their base URLs). Secrets never enter these: a
backend with an API key gets ``api_key: ''`` in llm_yaml and ``os.environ/<VAR>`` in the
LiteLLM config; :func:`apply_api_keys` and :func:`litellm_env` fill them in at the last moment,
in tasks that run with no_log. Bad input raises ValueError
naming the field and its value; an API key's value is never quoted.

Vocabulary
  backend     something the router sends requests to: an active LLM service of the plan
              (engine ollama or vllm), an alias of one (``vllm_research`` is ``vllm``
              under a second name, for research requests), or an extra backend (a remote or
              cloud API).
  routing     ``docker``: the router runs in the services' compose network and reaches a
              container by its service name and container port (``http://ollama:11434/v1``);
              a service in ``adopted`` runs on the host and is reached through the host
              gateway and its published port (``http://host.docker.internal:8000/v1``).
              ``host``: the router runs on the host and reaches every service at
              ``host_address`` and the published port.
  mode        ``services_plan.mode``: ``{name, exclusive, description}``, the named set of
              services that runs (``chat``, ``ingestion``, or a dual-GPU mode). A backend of the
              catalog that does not run in the mode is left out of every order and route, with
              one warning line; a plan without a mode (older callers) gives ``mode: null``.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ansible_collections.gpufleet.inference.plugins.module_utils import _vram
from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    ENV_KEY_RE,
    ascii_digits,
    dotenv_value,
    is_int,
    known_keys,
)

ROUTINGS = ("docker", "host")
UNREACHABLE = ("omit", "last")
TASK_CLASSES = ("simple", "moderate", "complex")
SIZES = ("small", "large")
LLM_ENGINES = ("ollama", "vllm")
EXTRA_KEYS = ("base_url", "type", "model", "litellm_model", "supports_images")
TASK_MODEL_KEYS = ("backend", "model")
# LiteLLM provider prefix per engine: vLLM has its own, Ollama speaks OpenAI under /v1.
LITELLM_PROVIDER = {"ollama": "openai", "vllm": "hosted_vllm"}
# What LiteLLM's OpenAI client sends when a local backend needs no key (it insists on one).
NO_KEY = "none"

DEFAULTS = {
    "routing": "docker",
    "host_address": "127.0.0.1",
    "docker_host_gateway": "host.docker.internal",
    "adopted": [],
    "aliases": {"vllm": ["vllm_research"]},
    "extra_backends": {},
    "fallback_order": ["ollama", "vllm"],
    "research_fallback_order": ["vllm_research", "ollama_research"],
    "unreachable": "last",
    "task_routes": {},
    "task_models": {"small": {"backend": "ollama_research"}, "large": {"backend": "ollama"}},
    "keyed": [],
    "cooldown_time": 5,
    "allowed_fails": 3,
    "num_retries": 2,
    "timeout": 600,
    "key_env_prefix": "GPUFLEET_ROUTER_",
    "app_env_mode_names": [],
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_ENV_PREFIX_RE = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _name_list(value, where, allow_empty=True):
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ValueError("%s must be a list of backend names; got: %r" % (where, value))
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _NAME_RE.match(item):
            raise ValueError("%s[%d] must be a backend name; got: %r" % (where, i, item))
    if len(set(value)) != len(value):
        raise ValueError("%s lists a name twice; got: %r" % (where, value))
    return list(value)


def is_host(value):
    """A DNS host name (RFC 1123 labels) or an IPv4 address; not an all-numeric non-address."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        return ipaddress.ip_address(value).version == 4
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        return False  # 999.1.1.1: a mistyped address, not a name
    return all(_LABEL_RE.match(label) for label in labels)


def _url(value, where):
    bad = "%s must be an http(s) URL with a valid host and port; got: %r" % (where, value)
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+(/\S*)?\Z", value):
        raise ValueError("%s must be an http(s) URL; got: %r" % (where, value))
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(bad) from None
    host = parts.hostname or ""
    if port == 0 or parts.username is not None or parts.password is not None:
        raise ValueError(bad)
    if host.startswith("[") or ":" in host:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise ValueError(bad) from None
    elif not is_host(host):
        raise ValueError(bad)
    return value.rstrip("/")


def check_options(options):
    """The options with defaults filled in; ValueError names the bad one."""
    options = known_keys(options, DEFAULTS, "options")
    opts = dict(DEFAULTS)
    opts.update({k: v for k, v in options.items() if v is not None})
    if opts["routing"] not in ROUTINGS:
        raise ValueError("router_routing must be one of %s; got: %r"
                         % (", ".join(ROUTINGS), opts["routing"]))
    if opts["unreachable"] not in UNREACHABLE:
        raise ValueError("router_unreachable must be one of %s; got: %r"
                         % (", ".join(UNREACHABLE), opts["unreachable"]))
    for key in ("host_address", "docker_host_gateway"):
        value = opts[key]
        if not is_host(value):
            raise ValueError("router_%s must be a host name or IPv4 address; got: %r"
                             % (key, value))
    opts["adopted"] = _name_list(opts["adopted"], "router_adopted_services")
    opts["keyed"] = _name_list(opts["keyed"], "router_api_keys")
    opts["fallback_order"] = _name_list(opts["fallback_order"], "router_fallback_order")
    opts["research_fallback_order"] = _name_list(opts["research_fallback_order"],
                                                 "router_research_fallback_order")
    aliases = opts["aliases"]
    if not isinstance(aliases, dict):
        raise ValueError("router_aliases must be a dict of service: [alias, ...]; got: %r"
                         % (aliases,))
    for service, names in aliases.items():
        _name_list(names, "router_aliases.%s" % service)
    for key in ("cooldown_time", "allowed_fails", "num_retries", "timeout"):
        value = opts[key]
        if not is_int(value) or value < 0:
            raise ValueError("router_%s must be an integer >= 0; got: %r" % (key, value))
    if not isinstance(opts["key_env_prefix"], str) or \
            not _ENV_PREFIX_RE.match(opts["key_env_prefix"]):
        raise ValueError("key_env_prefix must be upper case letters, digits and '_'; got: %r"
                         % (opts["key_env_prefix"],))
    names = opts["app_env_mode_names"]
    if not isinstance(names, list):
        raise ValueError("router_app_env_mode_names must be a list of variable names; got: %r"
                         % (names,))
    for i, name in enumerate(names):
        if not isinstance(name, str) or not ENV_KEY_RE.match(name):
            raise ValueError("router_app_env_mode_names[%d] must be a variable name (letters, "
                             "digits and '_', not first a digit); got: %r" % (i, name))
    if len(set(names)) != len(names):
        raise ValueError("router_app_env_mode_names lists a name twice; got: %r" % (names,))
    return opts


def _check_extra(extra):
    if not isinstance(extra, dict):
        raise ValueError("router_extra_backends must be a dict of name: backend; got: %r"
                         % (extra,))
    checked = {}
    for name, entry in extra.items():
        at = "router_extra_backends.%s" % name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError("router_extra_backends has a bad backend name; got: %r" % (name,))
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, entry))
        unknown = sorted(set(entry) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        model = entry.get("model", "__auto__")
        if not isinstance(model, str) or not model.strip():
            raise ValueError("%s.model must be a non-empty string; got: %r" % (at, model))
        if model != "__auto__":
            _vram.check_model_name(model, at + ".model")
        litellm_model = entry.get("litellm_model")
        if litellm_model is None and model != "__auto__":
            litellm_model = "openai/%s" % model
        if litellm_model is not None and (not isinstance(litellm_model, str)
                                          or "/" not in litellm_model):
            raise ValueError("%s.litellm_model must be provider/model (openai/gpt-4o-mini); "
                             "got: %r" % (at, litellm_model))
        kind = entry.get("type", "openai_compat")
        if not isinstance(kind, str) or not kind.strip():
            raise ValueError("%s.type must be a non-empty string; got: %r" % (at, kind))
        images = entry.get("supports_images", False)
        if not isinstance(images, bool):
            raise ValueError("%s.supports_images must be a boolean; got: %r" % (at, images))
        checked[name] = {"base_url": _url(entry.get("base_url"), at + ".base_url"),
                         "type": kind, "model": model, "litellm_model": litellm_model,
                         "supports_images": images}
    return checked


def _check_reachable(reachable):
    if reachable is None:
        return {}
    if not isinstance(reachable, dict):
        raise ValueError("reachable must be a dict of backend name: true/false; got: %r"
                         % (reachable,))
    for name, value in reachable.items():
        if value is not None and not isinstance(value, bool):
            raise ValueError("reachable.%s must be true, false or null; got: %r" % (name, value))
    return reachable


def _plan_services(services_plan):
    if not isinstance(services_plan, dict) or not isinstance(services_plan.get("services"), list):
        raise ValueError("services_plan must be the fact set by the gpufleet.inference.services "
                         "role; got: %r" % (services_plan,))
    result = []
    for i, service in enumerate(services_plan["services"]):
        at = "services_plan.services[%d]" % i
        if not isinstance(service, dict) or not isinstance(service.get("name"), str):
            raise ValueError("%s must be a service with a name; got: %r" % (at, service))
        if service.get("engine") not in LLM_ENGINES:
            continue
        result.append(service)
    return result


def plan_mode(services_plan):
    """``{name, exclusive}`` of ``services_plan.mode``; None for a plan without one."""
    mode = services_plan.get("mode") if isinstance(services_plan, dict) else None
    if mode is None:
        return None
    if not isinstance(mode, dict):
        raise ValueError("services_plan.mode must be a dict with name and exclusive; got: %r"
                         % (mode,))
    name = mode.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError("services_plan.mode.name must be a mode name (letters, digits, '_', "
                         "'.', '-'); got: %r" % (name,))
    exclusive = mode.get("exclusive", False)
    if not isinstance(exclusive, bool):
        raise ValueError("services_plan.mode.exclusive must be true or false; got: %r"
                         % (exclusive,))
    return {"name": name, "exclusive": exclusive}


def _local_backend(service, opts):
    name = service["name"]
    at = "services_catalog.%s" % name
    ports = service.get("ports") or []
    if not ports or not isinstance(ports[0], dict):
        raise ValueError("%s.ports must give the port the router reaches; got: %r"
                         % (at, service.get("ports")))
    host_port, container_port = ports[0].get("host"), ports[0].get("container")
    if not is_int(host_port) or not is_int(container_port):
        raise ValueError("%s.ports[0] must have host and container ports; got: %r"
                         % (at, ports[0]))
    model = service.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("%s.model must name the model LiteLLM asks for; got: %r" % (at, model))
    if opts["routing"] == "host":
        base = "http://%s:%d" % (opts["host_address"], host_port)
    elif name in opts["adopted"]:
        base = "http://%s:%d" % (opts["docker_host_gateway"], host_port)
    else:
        base = "http://%s:%d" % (name, container_port)
    return {
        "name": name, "service": name, "engine": service["engine"], "type": "openai_compat",
        "base_url": base + "/v1", "model": "__auto__",
        # A vision model (the catalog's role) takes images, as Ollama's moondream does.
        "supports_images": service.get("role") == "vision",
        "litellm_model": "%s/%s" % (LITELLM_PROVIDER[service["engine"]], model),
        "probe_url": "http://%s:%d/v1/models" % (opts["host_address"], host_port),
    }


def _backends(services_plan, opts):
    """Every known backend name, and the present ones (active services, aliases, extras)."""
    services = _plan_services(services_plan)
    extra = _check_extra(opts["extra_backends"])
    known = {}
    present = []
    names = {s["name"] for s in services}
    for service, aliases in opts["aliases"].items():
        if service not in names and service not in extra:
            raise ValueError("router_aliases has a key that is no LLM service of services_plan "
                             "nor an extra backend (%s); got: %r"
                             % (", ".join(sorted(names | set(extra))) or "none", service))
        for alias in aliases:
            if alias in names or alias in extra:
                raise ValueError("router_aliases.%s names an existing backend; got: %r"
                                 % (service, alias))
    for service in services:
        known[service["name"]] = service["name"]
        for alias in opts["aliases"].get(service["name"], []):
            known[alias] = service["name"]
        if not service.get("active"):
            continue
        backend = _local_backend(service, opts)
        present.append(backend)
        for alias in opts["aliases"].get(service["name"], []):
            present.append(dict(backend, name=alias))
    for name, entry in extra.items():
        if name in known:
            raise ValueError("router_extra_backends.%s has the name of a service or alias; "
                             "got: %r" % (name, name))
        known[name] = name
        backend = dict(entry, name=name, service=name, engine="remote", probe_url=None)
        present.append(backend)
        for alias in opts["aliases"].get(name, []):
            known[alias] = name
            present.append(dict(backend, name=alias))
    for name in opts["adopted"]:
        if name not in names:
            raise ValueError("router_adopted_services names no LLM service of services_plan "
                             "(%s); got: %r" % (", ".join(sorted(names)) or "none", name))
    return known, present


def _order(names, where, known, present, reachable, opts):
    for name in names:
        if name not in known:
            raise ValueError("%s names no service, alias or extra backend (%s); got: %r"
                             % (where, ", ".join(sorted(known)) or "none", name))
    by_name = {b["name"]: b for b in present}
    live = [n for n in names if n in by_name and reachable.get(n) is not False]
    down = [n for n in names if n in by_name and reachable.get(n) is False]
    return live + (down if opts["unreachable"] == "last" else [])


def _task_routes(opts, present, order):
    routes = opts["task_routes"]
    if not isinstance(routes, dict):
        raise ValueError("router_task_routes must be a dict of class: small or large; got: %r"
                         % (routes,))
    models = opts["task_models"]
    if not isinstance(models, dict):
        raise ValueError("router_task_models must be a dict of small/large: {backend, model}; "
                         "got: %r" % (models,))
    by_name = {b["name"]: b for b in present}
    result = {}
    notes = []
    for task, size in routes.items():
        if task not in TASK_CLASSES:
            raise ValueError("router_task_routes has an unknown class (%s); got: %r"
                             % (", ".join(TASK_CLASSES), task))
        if size not in SIZES:
            raise ValueError("router_task_routes.%s must be one of %s; got: %r"
                             % (task, ", ".join(SIZES), size))
        target = models.get(size)
        at = "router_task_models.%s" % size
        if not isinstance(target, dict) or not isinstance(target.get("backend"), str):
            raise ValueError("%s must be a dict with backend; got: %r" % (at, target))
        unknown = sorted(set(target) - set(TASK_MODEL_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        model = target.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError("%s.model must be a non-empty string; got: %r" % (at, model))
        if model is not None:
            _vram.check_model_name(model, at + ".model")
        backend = target["backend"]
        if backend not in by_name:
            if not order:
                notes.append((backend, "task_routes.%s (no backend is left)" % task))
                continue
            notes.append((backend, "task_routes.%s (routed to %s)" % (task, order[0])))
            backend, model = order[0], None
        route = {"size": size, "backend": backend, "model": model or "__auto__"}
        litellm_model = by_name[backend]["litellm_model"]
        if model and litellm_model:
            litellm_model = litellm_model.split("/", 1)[0] + "/" + model
        route["litellm_model"] = litellm_model
        result[task] = route
    return result, notes


def _absent_warnings(opts, notes, backends, left_out, mode):
    """One line per backend named in an order or a task route that is not written: it does not
    run in this mode (a mode may stop a backend on purpose: not an error) or is unreachable."""
    places = {}
    for where in ("fallback_order", "research_fallback_order"):
        for name in opts[where]:
            places.setdefault(name, []).append(where)
    for name, where in notes:
        places.setdefault(name, []).append(where)
    written = {b["name"] for b in backends}
    here = "in mode %s" % mode["name"] if mode else "here"
    warnings = []
    for name, where in places.items():
        if name in written or name in left_out:
            continue
        warnings.append("backend %s does not run %s; left out of %s"
                        % (name, here, _and(where)))
    for name in left_out:
        where = places.get(name)
        warnings.append("backend %s is unreachable and left out%s"
                        % (name, " of %s" % _and(where) if where else ""))
    return warnings


def _and(items):
    return items[0] if len(items) == 1 else "%s and %s" % (", ".join(items[:-1]), items[-1])


def key_env_name(backend, prefix=DEFAULTS["key_env_prefix"]):
    """The environment variable holding a backend's API key: GPUFLEET_ROUTER_<NAME>_API_KEY."""
    return "%s%s_API_KEY" % (prefix, re.sub(r"[^A-Z0-9]", "_", backend.upper()))


def router_config(services_plan, reachable=None, options=None):
    """The router's configuration, without secrets.

    Returns ``{mode, mode_comment, llm_yaml, litellm, backends, left_out, secrets, warnings}``:
    ``mode`` the plan's ``{name, exclusive}`` (None without one; llm.yaml's ``mode`` too),
    ``mode_comment`` the line that says it at the top of litellm.yaml, ``backends`` one
    entry per backend written (with ``probe_url`` and ``reachable``), ``left_out`` the
    unreachable backends removed under ``unreachable=omit``, ``secrets`` backend -> ``{key,
    env}`` (the key's name in the API key map and its variable; never a value).
    """
    opts = check_options(options)
    reachable = _check_reachable(reachable)
    known, present = _backends(services_plan, opts)
    for name in opts["keyed"]:
        if name not in known:
            raise ValueError("router_api_keys has a key for no backend (%s); got: %r"
                             % (", ".join(sorted(known)) or "none", name))
    reach = {}
    for backend in present:
        value = reachable.get(backend["name"])
        if value is None:
            value = reachable.get(backend["service"])
        reach[backend["name"]] = value
    left_out = [b["name"] for b in present if reach[b["name"]] is False
                and opts["unreachable"] == "omit"]
    present = [b for b in present if b["name"] not in left_out]
    main = _order(opts["fallback_order"], "router_fallback_order", known, present, reach, opts)
    research = _order(opts["research_fallback_order"], "router_research_fallback_order", known,
                      present, reach, opts)
    listed = set(main) | set(research)
    # Backends named in no order still get a model group, after the ordered ones.
    ordered = [b for n in main + research for b in present if b["name"] == n]
    rest = [b for b in present if b["name"] not in listed]
    if opts["unreachable"] == "last":
        rest.sort(key=lambda b: reach[b["name"]] is False)
    backends = []
    for backend in ordered + rest:
        if backend not in backends:
            backends.append(backend)
    secrets = {}
    for backend in backends:
        key = backend["name"] if backend["name"] in opts["keyed"] else (
            backend["service"] if backend["service"] in opts["keyed"] else None)
        if key is not None:
            secrets[backend["name"]] = {"key": key,
                                        "env": key_env_name(key, opts["key_env_prefix"])}
    tasks, notes = _task_routes(opts, backends, main or [b["name"] for b in backends])
    mode = plan_mode(services_plan)
    warnings = _absent_warnings(opts, notes, backends, left_out, mode)
    for backend in backends:
        if reach[backend["name"]] is False:
            warnings.append("backend %s is unreachable and ordered last" % backend["name"])
    llm_yaml = {"mode": mode, "backends": {}}
    for backend in backends:
        llm_yaml["backends"][backend["name"]] = {
            "api_key": "", "base_url": backend["base_url"], "enabled": True,
            "model": backend["model"], "supports_images": backend["supports_images"],
            "type": backend["type"],
        }
    llm_yaml["fallback_order"] = main
    llm_yaml["research_fallback_order"] = research
    if tasks:
        llm_yaml["task_routes"] = {task: {"size": r["size"], "backend": r["backend"],
                                          "model": r["model"]} for task, r in tasks.items()}
    return {
        "mode": mode,
        "mode_comment": _mode_comment(mode),
        "llm_yaml": llm_yaml,
        "litellm": _litellm(backends, main, research, tasks, secrets, opts, warnings),
        "backends": [{"name": b["name"], "service": b["service"], "engine": b["engine"],
                      "base_url": b["base_url"], "probe_url": b["probe_url"],
                      "reachable": reach[b["name"]]} for b in backends],
        "left_out": left_out,
        "secrets": secrets,
        "warnings": warnings,
    }


def _mode_comment(mode):
    """LiteLLM's config has no key for it (``general_settings`` are the proxy's own settings, and
    ``environment_variables`` would set variables in the proxy): a comment line says the mode."""
    if mode is None:
        return "mode: none (the plan names no mode)"
    return "mode: %s, exclusive: %s" % (mode["name"], "true" if mode["exclusive"] else "false")


def _litellm(backends, main, research, tasks, secrets, opts, warnings):
    model_list = []
    groups = []
    by_name = {}
    for backend in backends:
        if backend["litellm_model"] is None:
            warnings.append("backend %s has no litellm_model (its model is __auto__): it is "
                            "not in the LiteLLM config" % backend["name"])
            continue
        params = {"model": backend["litellm_model"], "api_base": backend["base_url"]}
        if backend["name"] in secrets:
            params["api_key"] = "os.environ/%s" % secrets[backend["name"]]["env"]
        elif backend["litellm_model"].startswith(("openai/", "hosted_vllm/")):
            params["api_key"] = NO_KEY
        by_name[backend["name"]] = params
        groups.append(backend["name"])
        model_list.append({"model_name": backend["name"], "litellm_params": params})
    for task, route in tasks.items():
        if route["backend"] not in by_name:
            continue
        params = dict(by_name[route["backend"]], model=route["litellm_model"])
        model_list.append({"model_name": "task-%s" % task, "litellm_params": params})
    fallbacks = []
    done = set()
    for order in (main, research):
        chain = [n for n in order if n in by_name]
        for i, name in enumerate(chain):
            if name in done or not chain[i + 1:]:
                continue
            done.add(name)
            fallbacks.append({name: chain[i + 1:]})
    for task, route in tasks.items():
        if route["backend"] not in by_name:
            continue
        chain = [n for n in main if n in by_name]
        if route["backend"] in chain:
            chain = chain[chain.index(route["backend"]):]
        else:
            chain = [route["backend"], *chain]
        fallbacks.append({"task-%s" % task: chain})
    return {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "fallbacks": fallbacks,
            "allowed_fails": opts["allowed_fails"],
            "cooldown_time": opts["cooldown_time"],
            "num_retries": opts["num_retries"],
            "timeout": opts["timeout"],
        },
        "litellm_settings": {"drop_params": True},
    }


def _check_keys(api_keys, config):
    if api_keys is None:
        return {}
    if not isinstance(api_keys, dict):
        raise ValueError("router_api_keys must be a dict of backend name: key (value hidden)")
    for name, value in api_keys.items():
        if not isinstance(value, str):
            raise ValueError("router_api_keys.%s must be a string; got: a %s (value hidden)"
                             % (name, type(value).__name__))
        if not value or any(c in value for c in "\r\n\0"):
            raise ValueError("router_api_keys.%s must be one non-empty line; got: a string of "
                             "%d characters (value hidden)" % (name, len(value)))
    if not isinstance(config, dict) or not isinstance(config.get("secrets"), dict):
        raise ValueError("config must be the result of router_config; got: %r" % (config,))
    return api_keys


def apply_api_keys(config, api_keys):
    """``config['llm_yaml']`` with each keyed backend's ``api_key`` filled in (for no_log use)."""
    keys = _check_keys(api_keys, config)
    llm_yaml = dict(config["llm_yaml"])
    llm_yaml["backends"] = {name: dict(entry) for name, entry in llm_yaml["backends"].items()}
    for name, secret in config["secrets"].items():
        if secret["key"] not in keys:
            raise ValueError("router_api_keys.%s is missing; got: keys for %s"
                             % (secret["key"], ", ".join(sorted(keys)) or "none"))
        llm_yaml["backends"][name]["api_key"] = keys[secret["key"]]
    return llm_yaml


def litellm_env(config, api_keys):
    """The text of the LiteLLM container's env file, ``VAR=key`` a line (for no_log use).

    Each key is written as Compose v2's ``env_file`` reads it back exactly (``.env``
    quoting, :func:`_common.dotenv_value`): plain when it holds only safe characters, else
    double-quoted and escaped, so that no ``$`` is interpolated and no `` #`` starts a
    comment (unquoted, ``sk-ab$cd #tail`` reached the container as ``sk-ab``). A key is one
    line (:func:`_check_keys`).
    """
    keys = _check_keys(api_keys, config)
    env = {}
    for secret in config["secrets"].values():
        if secret["key"] not in keys:
            raise ValueError("router_api_keys.%s is missing; got: keys for %s"
                             % (secret["key"], ", ".join(sorted(keys)) or "none"))
        env[secret["env"]] = keys[secret["key"]]
    return "".join("%s=%s\n" % (name, dotenv_value(env[name])) for name in sorted(env))


# ---- the application env file ------------------------------------------------------------

def _env_prefix(name, at):
    prefix = re.sub(r"[^A-Z0-9]", "_", name.upper())
    if not ENV_KEY_RE.match(prefix):
        raise ValueError("%s gives no variable name (%s_ENABLED starts with a digit); got: %r"
                         % (at, prefix, name))
    return prefix


def app_env(services_plan, options=None):
    """The text of the application env file: what runs in the plan's mode, as apps read it.

    ``KEY=value`` lines sorted by key, each value quoted as :func:`litellm_env` does
    (:func:`_common.dotenv_value`): ``INFERENCE_MODE`` (the mode's name, empty without one) and
    ``INFERENCE_MODE_EXCLUSIVE``; per LLM service of the plan, active or not, with ``NAME`` its
    name upper-cased and every other character ``_``: ``NAME_ENABLED``, ``NAME_BASE_URL``
    (``http://<host_address>:<published port>/v1`` as apps on the host reach it, empty when it
    does not run) and ``NAME_MODEL``; ``LLM_FALLBACK_ENABLED`` (true only when two engine kinds
    run, so that there is something to fall back to); and each of ``options.app_env_mode_names``
    set to the mode's name. It is built from the plan and the options only: no API key can
    reach it (the file is world-readable).
    """
    opts = check_options(options)
    services = _plan_services(services_plan)
    mode = plan_mode(services_plan)
    env = {"INFERENCE_MODE": mode["name"] if mode else "",
           "INFERENCE_MODE_EXCLUSIVE": "true" if mode and mode["exclusive"] else "false"}
    owner = dict.fromkeys([*env, "LLM_FALLBACK_ENABLED"], "the file itself")
    host = dict(opts, routing="host")
    engines = set()
    for service in services:
        prefix = _env_prefix(service["name"], "services_catalog.%s" % service["name"])
        backend = _local_backend(service, host)
        active = bool(service.get("active"))
        if active:
            engines.add(service["engine"])
        values = {"ENABLED": "true" if active else "false",
                  "BASE_URL": backend["base_url"] if active else "",
                  "MODEL": service["model"]}
        for suffix, value in values.items():
            key = "%s_%s" % (prefix, suffix)
            if key in owner:
                raise ValueError("services_catalog.%s gives the application env variable %s, "
                                 "which %s sets too; rename the service; got: %r"
                                 % (service["name"], key, owner[key], service["name"]))
            owner[key] = "services_catalog.%s" % service["name"]
            env[key] = value
    env["LLM_FALLBACK_ENABLED"] = "true" if len(engines) > 1 else "false"
    for name in opts["app_env_mode_names"]:
        if name in env:
            raise ValueError("router_app_env_mode_names names a variable the file sets already; "
                             "got: %r" % (name,))
        env[name] = env["INFERENCE_MODE"]
    return "".join("%s=%s\n" % (key, dotenv_value(env[key])) for key in sorted(env))


# ---- the role's preflight and probe ------------------------------------------------------

FILE_MODES = ("0600", "0640")
ROLE_OPTIONS = ("file_mode", "config_dir", "probe_timeout", "write_app_env", "app_env_file")


def check_role(services_plan, reachable, options, api_keys, role_options=None):
    """The router role's input, checked before it probes or writes anything: True or ValueError.

    ``role_options`` are the role's own options, each checked when given: ``file_mode`` (of the
    files that can hold keys: 0600 or 0640), ``config_dir`` (absolute) and ``probe_timeout``
    (seconds, an integer >= 1; a number's text counts, as ``-e`` gives it), and, when
    ``write_app_env`` is true, ``app_env_file`` (absolute) and the file's text (:func:`app_env`).
    Then the
    configuration must build without probing (:func:`router_config`: the plan, the options)
    and the API keys must fit it (:func:`apply_api_keys`: one non-empty line each, one for every
    keyed backend); no message quotes a key.
    """
    role_options = known_keys(role_options, ROLE_OPTIONS, "role_options")
    if "file_mode" in role_options and str(role_options["file_mode"]) not in FILE_MODES:
        raise ValueError("router_file_mode must be one of %s; got: %r"
                         % (", ".join(FILE_MODES), role_options["file_mode"]))
    if "config_dir" in role_options:
        path = role_options["config_dir"]
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("router_config_dir must be an absolute path; got: %r" % (path,))
    if "probe_timeout" in role_options:
        value = role_options["probe_timeout"]
        number = int(value) if isinstance(value, str) and ascii_digits(value.strip()) else value
        if not is_int(number) or number < 1:
            raise ValueError("router_probe_timeout must be an integer >= 1; got: %r" % (value,))
    if role_options.get("write_app_env") not in (None, False, True):
        raise ValueError("router_write_app_env must be true or false; got: %r"
                         % (role_options["write_app_env"],))
    if role_options.get("write_app_env"):
        path = role_options.get("app_env_file")
        if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
            raise ValueError("router_app_env_file must be an absolute path of a file; got: %r"
                             % (path,))
        app_env(services_plan, options)
    apply_api_keys(router_config(services_plan, reachable, options), api_keys)
    return True


def probe_targets(services_plan, reachable=None, options=None):
    """``[{name, probe_url, url}]``: the backends to probe, those with a probe URL (the local
    ones) whose reachability ``reachable`` does not already say (``url``: the probe URL, as
    gpufleet.inference.http_probe takes its requests)."""
    config = router_config(services_plan, reachable, options)
    known = _check_reachable(reachable)
    return [{"name": b["name"], "probe_url": b["probe_url"], "url": b["probe_url"]}
            for b in config["backends"] if b["probe_url"] and b["name"] not in known]


def probed(probe, reachable=None):
    """Backend name -> reachable (HTTP 200), from the probe task's registered result (each
    result's ``item`` is its request, as http_probe and a loop both give it).

    Items that were skipped (probing off) say nothing; ``reachable`` (the role's overrides) wins
    over what was probed. ``probe`` may be empty (no probe ran).
    """
    if probe is None:
        probe = {}
    if not isinstance(probe, dict):
        raise ValueError("probe must be the probe task's registered result; got: %r" % (probe,))
    results = probe.get("results") or []
    if not isinstance(results, list):
        raise ValueError("probe.results must be a list; got: %r" % (results,))
    found = {}
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError("probe.results[%d] must be a dict; got: %r" % (i, result))
        item = result.get("item")
        if result.get("skipped") or not isinstance(item, dict) or "name" not in item:
            continue
        found[item["name"]] = result.get("status", -1) == 200
    found.update(_check_reachable(reachable))
    return found


def file_writes(files, contents, directories=None):
    """The options of gpufleet.inference.config_files for the router's files: ``{directories,
    files, secret_files}`` from the role's files ``[{name, dest, mode, secret}]`` (those it
    writes), their rendered ``contents`` (one per file, in the same order) and its
    ``directories`` ``[{path, mode}]``; each file ``{path, content, mode}``."""
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise ValueError("files must be a list of {name, dest, mode, secret}; got: %r" % (files,))
    if not isinstance(contents, list) or len(contents) != len(files):
        raise ValueError("contents must be a list of %d rendered files; got %s" % (
            len(files), "%d" % len(contents) if isinstance(contents, list)
            else type(contents).__name__))
    if directories is None:
        directories = []
    if not isinstance(directories, list) or not all(isinstance(d, dict) for d in directories):
        raise ValueError("directories must be a list of {path, mode}; got: %r" % (directories,))
    out = {"directories": [{"path": d.get("path"), "mode": d.get("mode")} for d in directories],
           "files": [], "secret_files": []}
    for i, (entry, content) in enumerate(zip(files, contents)):
        for key in ("dest", "mode"):
            if not isinstance(entry.get(key), str):
                raise ValueError("files[%d].%s must be a string; got: %r"
                                 % (i, key, entry.get(key)))
        if not isinstance(content, str):
            raise ValueError("contents[%d] must be text (%s); got a %s"
                             % (i, entry["dest"], type(content).__name__))
        out["secret_files" if entry.get("secret") else "files"].append(
            {"path": entry["dest"], "content": content, "mode": entry["mode"]})
    return out
