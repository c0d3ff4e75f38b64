# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the mode_switch role's inputs, checked.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the filter ``mode_switch_check`` wraps :func:`check` so that the role fails in
its preflight, before it stops or starts anything, with a message naming the field and the
value (``mode_switch_services.vllm.port must be 1-65535; got: 70000``).

Vocabulary (seed 003)
  mode      a named set of services that must not share the GPUs with another mode's
            (``mode_switch_modes``: ``chat`` = Ollama, ``ingestion`` = vLLM + Docling).
  service   one compose service a mode names (``mode_switch_services``).
"""

from __future__ import annotations

import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _drain, _render, _vram

ENGINES = ("ollama", "vllm", "docling", "http")
SERVICE_KEYS = ("image", "engine", "port", "container_port", "health_path", "gpu",
                "process_names", "command", "environment", "preload_model")
MODE_KEYS = ("services",)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GPU_KEY_RE = re.compile(r"^(?:\d+|(?:GPU|MIG)-[0-9A-Za-z-]+)$")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _port(value, at):
    if not _is_int(value) or not 1 <= value <= 65535:
        raise ValueError("%s must be 1-65535; got: %r" % (at, value))
    return value


def _names(value, at):
    if not isinstance(value, list) or not value:
        raise ValueError("%s must be a non-empty list of names; got: %r" % (at, value))
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError("%s[%d] must be a non-empty string; got: %r" % (at, i, item))
    return value


def _check_service(name, entry, at):
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError("mode_switch_services has a bad service name (lower case letters, "
                         "digits, '_' and '-'); got: %r" % (name,))
    if not isinstance(entry, dict):
        raise ValueError("%s must be a dict; got: %r" % (at, entry))
    unknown = sorted(set(entry) - set(SERVICE_KEYS))
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
    _render.check_image(entry.get("image"), at + ".image")
    engine = entry.get("engine")
    if engine not in ENGINES:
        raise ValueError("%s.engine must be one of %s; got: %r" % (at, ", ".join(ENGINES), engine))
    _port(entry.get("port"), at + ".port")
    _port(entry.get("container_port"), at + ".container_port")
    path = entry.get("health_path")
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError("%s.health_path must be a URL path starting with '/'; got: %r"
                         % (at, path))
    gpu = entry.get("gpu", True)
    if not isinstance(gpu, bool):
        raise ValueError("%s.gpu must be a boolean; got: %r" % (at, gpu))
    _names(entry.get("process_names"), at + ".process_names")
    command = entry.get("command")
    if command is not None:
        if not isinstance(command, list):
            raise ValueError("%s.command must be a list of arguments; got: %r" % (at, command))
        for i, arg in enumerate(command):
            if isinstance(arg, (bool, dict, list)) or arg is None:
                raise ValueError("%s.command[%d] must be a string; got: %r" % (at, i, arg))
    environment = entry.get("environment")
    if environment is not None:
        if not isinstance(environment, dict):
            raise ValueError("%s.environment must be a dict of NAME: value; got: %r"
                             % (at, environment))
        for key, value in environment.items():
            if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
                raise ValueError("%s.environment has a bad variable name; got: %r" % (at, key))
            if value is None or isinstance(value, (dict, list)):
                raise ValueError("%s.environment.%s must be a string, number or boolean; got: %r"
                                 % (at, key, value))
    model = entry.get("preload_model")
    if model is not None:
        _vram.check_model_name(model, at + ".preload_model")


def _number(options, key, allow_zero=False):
    value = options[key]
    where = "mode_switch_%s" % key
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number; got: %r" % (where, value))
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError("%s must be %s 0; got: %r" % (where, ">=" if allow_zero else ">", value))
    return value


def check(mode, modes, services, gpu_ids=None, options=None):
    """Check the role's variables; return True or raise ValueError naming field and value.

    ``options`` holds the numbers (``drain_timeout``, ``drain_settle``, ``drain_interval``,
    ``drain_tolerance_mib``, ``health_timeout``, ``health_interval``) and ``project_name``.
    """
    if not isinstance(services, dict):
        raise ValueError("mode_switch_services must be a dict of service name: definition; "
                         "got: %r" % (services,))
    for name, entry in services.items():
        _check_service(name, entry, "mode_switch_services.%s" % name)
    if not isinstance(modes, dict) or not modes:
        raise ValueError("mode_switch_modes must be a non-empty dict of mode: {services}; got: %r"
                         % (modes,))
    for name, entry in modes.items():
        at = "mode_switch_modes.%s" % name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError("mode_switch_modes has a bad mode name (lower case letters, digits, "
                             "'_' and '-'); got: %r" % (name,))
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict with services; got: %r" % (at, entry))
        unknown = sorted(set(entry) - set(MODE_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        names = _names(entry.get("services"), at + ".services")
        seen = {}
        ports = {}
        for i, service in enumerate(names):
            if service in seen:
                raise ValueError("%s.services[%d] duplicates services[%d]; got: %r"
                                 % (at, i, seen[service], service))
            seen[service] = i
            if service not in services:
                raise ValueError("%s.services[%d] is not a key of mode_switch_services (%s); "
                                 "got: %r" % (at, i, ", ".join(sorted(services)) or "none",
                                              service))
            port = services[service]["port"]
            if port in ports:
                raise ValueError("%s.services[%d] (%s) publishes port %d, as %s does; got: %d"
                                 % (at, i, service, port, ports[port], port))
            ports[port] = service
    if mode not in modes:
        raise ValueError("mode_switch_mode must be one of %s; got: %r"
                         % (", ".join(sorted(modes)), mode))
    if gpu_ids is not None:
        if not isinstance(gpu_ids, list) or not gpu_ids:
            raise ValueError("mode_switch_gpu_ids must be a non-empty list of GPU indexes or "
                             "UUIDs; got: %r" % (gpu_ids,))
        for i, key in enumerate(gpu_ids):
            if isinstance(key, bool) or not _GPU_KEY_RE.match(str(key).strip()):
                raise ValueError("mode_switch_gpu_ids[%d] must be a GPU index or UUID "
                                 "(GPU-..., MIG-...); got: %r" % (i, key))
    options = dict(options or {})
    project = options.pop("project_name", None)
    if project is not None and (not isinstance(project, str) or not _PROJECT_RE.match(project)):
        raise ValueError("mode_switch_project_name must be a compose project name (lower case "
                         "letters, digits, '_' and '-'); got: %r" % (project,))
    known = ("drain_timeout", "drain_settle", "drain_interval", "drain_tolerance_mib",
             "health_timeout", "health_interval")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError("options has unknown key(s): %s" % ", ".join(unknown))
    for key in known:
        if key in options:
            _number(options, key, allow_zero=key in ("drain_settle", "drain_tolerance_mib"))
    if {"drain_timeout", "drain_settle", "drain_interval"} <= set(options):
        timeout = options["drain_timeout"]
        if timeout > _drain.MAX_WAIT_S:
            raise ValueError("mode_switch_drain_timeout must be at most %d; got: %r"
                             % (_drain.MAX_WAIT_S, timeout))
        if options["drain_settle"] > timeout:
            raise ValueError("mode_switch_drain_settle must not exceed mode_switch_drain_timeout "
                             "(%r); got: %r" % (timeout, options["drain_settle"]))
        if options["drain_interval"] > timeout:
            raise ValueError("mode_switch_drain_interval must not exceed "
                             "mode_switch_drain_timeout (%r); got: %r"
                             % (timeout, options["drain_interval"]))
    return True
