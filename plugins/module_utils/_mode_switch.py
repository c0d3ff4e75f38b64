# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the mode_switch role's inputs, checked.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the filter ``mode_switch_check`` wraps :func:`check` so that the role fails in
its preflight, before it stops or starts anything, with a message naming the field and the
value (``mode_switch_services.vllm.port must be 1-65535; got: 70000``). The other filters
(``mode_switch_<name>``) wrap the functions of the same name: the compose project the role
renders (:func:`compose_document`), what runs and what a switch must do (:func:`state`, from
``docker ps`` and the state file), the status report (:func:`status`), what the drain wait waits
for (:func:`drain_targets`), the health checks (:func:`verify_checks`), the models to preload
(:func:`preloads`) and the switch's record (:func:`record`).

Vocabulary (seed 003)
  mode      a named set of services that must not share the GPUs with another mode's
            (``mode_switch_modes``: ``chat`` = Ollama, ``ingestion`` = vLLM + Docling).
  service   one compose service a mode names (``mode_switch_services``).
"""

from __future__ import annotations

import datetime as _dt
import json
import re

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _common,
    _drain,
    _plan,
    _render,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._common import is_int

ENGINES = ("ollama", "vllm", "docling", "http")
SERVICE_KEYS = ("image", "engine", "port", "container_port", "health_path", "gpu",
                "process_names", "command", "environment", "preload_model", "model")
# Where the Ollama container keeps its models (OLLAMA_MODELS, bind-mounted from the host).
OLLAMA_MODELS_TARGET = "/root/.ollama"
MODE_KEYS = ("services",)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_GPU_KEY_RE = re.compile(r"^(?:\d+|(?:GPU|MIG)-[0-9A-Za-z-]+)\Z")


def _port(value, at):
    if not is_int(value) or not 1 <= value <= 65535:
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
    _plan.check_image(entry.get("image"), at + ".image")
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
    for key in ("preload_model", "model"):
        if entry.get(key) is not None:
            _plan.check_model(entry[key], "%s.%s" % (at, key))


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
    owners = {}
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
            if service in owners:
                raise ValueError("%s.services[%d] is a service of mode %s too (a service belongs "
                                 "to one mode); got: %r" % (at, i, owners[service], service))
            port = services[service]["port"]
            if port in ports:
                raise ValueError("%s.services[%d] (%s) publishes port %d, as %s does; got: %d"
                                 % (at, i, service, port, ports[port], port))
            ports[port] = service
        owners.update((service, name) for service in names)
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
    _common.known_keys(options, known, "options")
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


def _services_of(modes, at="mode_switch_modes"):
    """(mode, [service names]) per mode, in mode-name order (as Jinja's dictsort gives them)."""
    if not isinstance(modes, dict):
        raise ValueError("%s must be a dict of mode: {services}; got: %r" % (at, modes))
    out = []
    for mode in sorted(modes, key=lambda m: str(m).lower()):
        entry = modes[mode]
        names = entry.get("services") if isinstance(entry, dict) else None
        if not isinstance(names, list):
            raise ValueError("%s.%s.services must be a list of service names; got: %r"
                             % (at, mode, names))
        out.append((mode, names))
    return out


def model_of(svc):
    """The model a service needs on the host: ``model``, else Ollama's ``preload_model``, else
    vLLM's first positional argument (``vllm serve MODEL``); None for the others."""
    if svc.get("model"):
        return svc["model"]
    if svc.get("engine") == "ollama":
        return svc.get("preload_model")
    if svc.get("engine") == "vllm":
        for arg in svc.get("command") or []:
            if not str(arg).startswith("-"):
                return str(arg)
            break
    return None


def _with_sources(svc, item, sources, models_dir):
    """Images through the mirror, Ollama's models in the host's model directory, vLLM's
    weights in the host's Hugging Face cache read offline (as the services role plans them)."""
    item["image"] = _plan.mirror_image(svc["image"], sources["image_mirrors"])
    env = dict(item.get("environment") or {})
    volumes = []
    if svc.get("engine") == "ollama" and models_dir:
        env.setdefault("OLLAMA_MODELS", OLLAMA_MODELS_TARGET)
        volumes.append("%s:%s" % (models_dir, OLLAMA_MODELS_TARGET))
    elif svc.get("engine") == "vllm":
        env.setdefault("HF_HUB_OFFLINE", "1")
        if sources["hf_endpoint"]:
            env.setdefault("HF_ENDPOINT", sources["hf_endpoint"])
        volumes.append("%s:%s" % (sources["hf_home"], _plan.HF_CONTAINER_HOME))
    if env:
        item["environment"] = env
    if volumes:
        item["volumes"] = volumes
    return item


def downloads(services, names, sources=None, models_dir=None):
    """What the services ``names`` need on the host (images, Ollama models, Hugging Face
    weights), for gpufleet.inference.downloads: ``{items, options}`` as the plan's."""
    services = _dict_of(services, "mode_switch_services")
    sources = _plan.check_sources(sources, "mode_switch_sources")
    plan_services = []
    for name in names:
        svc = services[name]
        model = model_of(svc)
        engine = svc.get("engine") if svc.get("engine") in ("ollama", "vllm") else "other"
        plan_services.append({
            "name": name, "active": True, "engine": engine,
            "image": _plan.mirror_image(svc["image"], sources["image_mirrors"]),
            "model": model or "", "models": [model] if engine == "ollama" and model else [],
            "environment": {"OLLAMA_MODELS": OLLAMA_MODELS_TARGET} if engine == "ollama" else {},
            "volumes": [{"source": models_dir, "target": OLLAMA_MODELS_TARGET}]
            if engine == "ollama" and models_dir else [],
            "health": {"port": svc["container_port"]},
            "ports": [{"host": svc["port"], "container": svc["container_port"],
                       "address": "127.0.0.1"}],
        })
    return _plan.downloads([s for s in plan_services
                            if s["engine"] != "vllm" or s["model"]], sources)


def compose_document(modes, services, project_name, gpu_ids, sources=None, models_dir=None):
    """The compose document of every mode, as a dict to dump to the project's compose.yml.

    Every service of every mode (modes by name, services in the mode's order), with its mode as
    its only compose profile, so that a plain ``docker compose up`` starts none of them: image,
    ``command`` and ``environment`` when given, its port published on 127.0.0.1 only, no restart
    (the role starts and stops the modes), 30 s to stop, the label ``org.gpufleet.mode``, and,
    unless ``gpu`` is false, an NVIDIA reservation of the GPUs ``gpu_ids`` (as strings).

    A service may belong to one mode only: one compose service cannot carry two modes' labels,
    and compose rejects a service named twice. ``check`` is the thorough check of the same
    variables; this one only refuses what it cannot build.
    """
    if not isinstance(services, dict):
        raise ValueError("mode_switch_services must be a dict of service name: definition; "
                         "got: %r" % (services,))
    if not isinstance(project_name, str) or not project_name:
        raise ValueError("mode_switch_project_name must be a non-empty string; got: %r"
                         % (project_name,))
    if not isinstance(gpu_ids, list) or not gpu_ids:
        raise ValueError("mode_switch_gpu_ids must be a non-empty list of GPU indexes or UUIDs; "
                         "got: %r" % (gpu_ids,))
    device_ids = [str(key) for key in gpu_ids]
    sources = _plan.check_sources(sources, "mode_switch_sources")
    out = {}
    owners = {}
    for mode, names in _services_of(modes):
        for i, name in enumerate(names):
            at = "mode_switch_modes.%s.services[%d]" % (mode, i)
            if not isinstance(name, str):
                raise ValueError("%s must be a service name; got: %r" % (at, name))
            if name in owners:
                raise ValueError("%s is a service of mode %s too (a service belongs to one "
                                 "mode); got: %r" % (at, owners[name], name))
            svc = services.get(name)
            if not isinstance(svc, dict):
                raise ValueError("%s is not a service of mode_switch_services (%s); got: %r"
                                 % (at, ", ".join(sorted(services)) or "none", name))
            owners[name] = mode
            for key in ("image", "port", "container_port"):
                if svc.get(key) is None:
                    raise ValueError("mode_switch_services.%s.%s is required; got: None"
                                     % (name, key))
            item = {"image": svc["image"]}
            command = svc.get("command")
            if command is not None:
                item["command"] = list(command) if isinstance(command, list) else command
            item.update({
                "profiles": [mode],
                "ports": ["127.0.0.1:%s:%s" % (svc["port"], svc["container_port"])],
                "restart": "no",
                "stop_grace_period": "30s",
                "labels": {"org.gpufleet.mode": mode},
            })
            environment = svc.get("environment")
            if environment is not None:
                item["environment"] = (dict(environment) if isinstance(environment, dict)
                                       else environment)
            if svc.get("gpu", True):
                item["deploy"] = {"resources": {"reservations": {"devices": [{
                    "driver": "nvidia",
                    "device_ids": list(device_ids),
                    "capabilities": ["gpu"],
                }]}}}
            out[name] = _render.compose_literal(_with_sources(svc, item, sources, models_dir))
    return {"name": project_name, "services": out}


def active_modes(modes, running):
    """The modes (by name) of which at least one service is among ``running``.

    ``running`` is the list of compose service names ``docker ps`` shows. Two modes here means
    exclusive modes run at once.
    """
    if not isinstance(running, list):
        raise ValueError("running must be a list of compose service names; got: %r" % (running,))
    now = set(running)
    return [mode for mode, names in _services_of(modes) if now.intersection(names)]


def devices(lines):
    """The GPUs each running service was given: {service: [device id, ...]}.

    ``lines`` are ``docker inspect``'s, one a container, formatted as the compose service name, a
    space, and the JSON of ``.HostConfig.DeviceRequests`` (``null`` without any); the device ids
    of all its requests, in order. A service listed twice keeps its last line's. Blank lines are
    skipped.
    """
    if not isinstance(lines, list):
        raise ValueError("lines must be a list of docker inspect lines; got: %r" % (lines,))
    out = {}
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise ValueError("lines[%d] must be a string; got: %r" % (i, line))
        if not line.strip():
            continue
        service, sep, text = line.partition(" ")
        if not sep:
            raise ValueError("lines[%d] must be '<service> <DeviceRequests JSON>'; got: %r"
                             % (i, line))
        try:
            requests = json.loads(text)
        except ValueError:
            raise ValueError("lines[%d] must end with the JSON of DeviceRequests; got: %r"
                             % (i, text)) from None
        requests = requests or []
        if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
            raise ValueError("lines[%d]: DeviceRequests must be a list of objects; got: %r"
                             % (i, requests))
        ids = []
        for request in requests:
            found = request.get("DeviceIDs") or []
            if not isinstance(found, list):
                raise ValueError("lines[%d]: DeviceIDs must be a list; got: %r" % (i, found))
            ids.extend(found)
        out[service] = ids
    return out


def drain_targets(gpus, gpu_ids, pids, meminfo_text=None):
    """What the drain wait after the stop waits for, from the GPUs read before the stop.

    ``gpus`` is gpu_facts' list, ``gpu_ids`` the mode's GPUs (indexes as text), ``pids`` the host
    pids of the leaving services (numbers or their text, as ``docker top`` prints them; blank
    lines are skipped). Returns
    ``{pids, target_used_mib, baseline_available_mib}``: the pids as integers, the used memory of
    those GPUs less what the leaving processes held (None when a GPU's used memory is unknown,
    as on unified memory), and, when one of those GPUs is unified, MemAvailable of
    ``meminfo_text`` (read before the stop) plus what the leaving processes held (else None:
    on dedicated memory the drain wait does not read MemAvailable).
    """
    if not isinstance(gpus, list):
        raise ValueError("gpus must be the list of gpu_facts; got: %r" % (gpus,))
    wanted = {str(key) for key in gpu_ids or []}
    chosen = [g for g in gpus if isinstance(g, dict) and str(g.get("index")) in wanted]
    leaving = []
    for i, pid in enumerate(pids or []):
        text = str(pid).strip()
        if not text:
            continue
        if isinstance(pid, bool) or not _common.ascii_digits(text):
            raise ValueError("pids[%d] must be a process id; got: %r" % (i, pid))
        leaving.append(int(text))
    held = sum(p.get("used_memory_mib") or 0 for g in chosen for p in g.get("processes") or []
               if p.get("pid") in leaving and is_int(p.get("used_memory_mib")))
    used = [g.get("memory_used_mib") for g in chosen]
    target = (sum(used) - held) if used and all(is_int(u) for u in used) else None
    baseline = None
    if meminfo_text and any(g.get("memory_kind") == "unified" for g in chosen):
        baseline = _common.parse_meminfo(meminfo_text)["available_mib"] + held
    return {"pids": leaving, "target_used_mib": target, "baseline_available_mib": baseline}


def verify_checks(services, names, project_name, gpu_ids=None):
    """service_verify's checks of the services ``names``: health URL on 127.0.0.1, container,
    and the GPUs its container must have been given (``gpu_ids`` joined by commas, as the compose
    document asks for them; none for a service with ``gpu: false``)."""
    device = ",".join(str(key) for key in gpu_ids or []) or None
    checks = []
    for name in names:
        svc = services[name]
        checks.append({"name": name, "project": project_name, "service": name,
                       "url": "http://127.0.0.1:%s%s" % (svc["port"], svc["health_path"]),
                       "device_id": device if svc.get("gpu", True) else None})
    return checks


def preloads(services, names):
    """The models to preload, ``[{name, url, model}]``: each service of ``names`` (in that order)
    that has a ``preload_model``, with its Ollama ``/api/generate`` URL on 127.0.0.1."""
    services = _dict_of(services, "mode_switch_services")
    if not isinstance(names, list):
        raise ValueError("names must be a list of service names; got: %r" % (names,))
    out = []
    for name in names:
        svc = services.get(name)
        if not isinstance(svc, dict):
            raise ValueError("%r is not a service of mode_switch_services (%s)"
                             % (name, ", ".join(sorted(services)) or "none"))
        if svc.get("preload_model") is not None:
            out.append({"name": name, "model": svc["preload_model"],
                        "url": "http://127.0.0.1:%s/api/generate" % svc["port"]})
    return out


def record(previous, mode, requested, outcome, failure, started, now, drain_s, services,
           modes=None, state_file=None, metrics_file=None):
    """The mode state file's record of a switch, the switch metrics' text, and a summary line.

    ``services`` are the service definitions the record keeps; with ``modes``
    (``mode_switch_modes``) they are every service, and the record keeps those of ``mode``.
    Returns ``{record, metrics, summary, files}``: ``files`` the files to write, ``{dest,
    content}`` each: the record as JSON (as ``to_nice_json`` writes it) at ``state_file`` and the
    metrics at ``metrics_file``, each when its path is given (not empty).
    """
    if modes is not None:
        names = _dict_of(modes, "mode_switch_modes").get(mode, {}).get("services") or []
        services = {name: entry for name, entry in _dict_of(services, "mode_switch_services")
                    .items() if name in names}
    record_ = {
        "mode": mode, "previous": previous, "requested": requested, "outcome": outcome,
        "failure": failure,
        "switched_at": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(),
        "downtime_s": round(now - float(started), 2), "drain_s": drain_s or 0,
        "services": services,
    }
    metrics = (
        "# HELP gpufleet_mode_switch_downtime_seconds Downtime of the last mode switch.\n"
        "# TYPE gpufleet_mode_switch_downtime_seconds gauge\n"
        'gpufleet_mode_switch_downtime_seconds{mode="%s",outcome="%s"} %s\n'
        "# HELP gpufleet_mode_switch_drain_seconds GPU memory drain wait of the last mode switch.\n"
        "# TYPE gpufleet_mode_switch_drain_seconds gauge\n"
        'gpufleet_mode_switch_drain_seconds{mode="%s"} %s\n'
        % (mode, outcome, record_["downtime_s"], mode, record_["drain_s"]))
    summary = "mode %s -> %s (%s); downtime %s s, GPU drain %s s" % (
        previous, mode, outcome, record_["downtime_s"], record_["drain_s"])
    files = []
    if state_file:
        files.append({"dest": state_file, "content": json.dumps(
            record_, indent=4, sort_keys=True, separators=(",", ": ")) + "\n"})
    if metrics_file:
        files.append({"dest": metrics_file, "content": metrics})
    return {"record": record_, "metrics": metrics, "summary": summary, "files": files}


def _dict_of(value, where):
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict; got: %r" % (where, value))
    return value


def state(ps_lines, state_text, modes, mode):
    """What runs now, what the host last recorded, and what a switch to ``mode`` must do.

    ``ps_lines`` are ``docker ps``'s lines for the project's containers, each the container id,
    a space, and its compose service name (``_mode_switch_ps_format``); blank lines are skipped.
    ``state_text`` is the state file's text (empty when there is none). Returns:

      ids        the containers' ids, in ``docker ps`` order.
      running    the services that run, each once, sorted.
      recorded   the state file's record (``{}`` without one).
      active     the modes of which a service runs (:func:`active_modes`).
      previous   the mode the host is in: the one active mode, else the recorded one (None).
      leaving    the running services that ``mode`` does not name (sorted).
      needed     whether a switch must run: a service to stop or to start, or another mode
                 recorded.
      in_mode    whether exactly the services of ``mode`` run, each in one container.
    """
    if not isinstance(ps_lines, list):
        raise ValueError("ps_lines must be a list of docker ps lines; got: %r" % (ps_lines,))
    entering = dict(_services_of(modes)).get(mode)
    if entering is None:
        raise ValueError("mode_switch_mode must be one of %s; got: %r"
                         % (", ".join(sorted(modes)), mode))
    ids = []
    services = []
    for i, line in enumerate(ps_lines):
        if not isinstance(line, str):
            raise ValueError("ps_lines[%d] must be a string; got: %r" % (i, line))
        if not line.strip():
            continue
        container, _sep, service = line.strip().partition(" ")
        ids.append(container)
        services.append(service.strip())
    running = sorted({s for s in services if s})
    recorded = {}
    text = (state_text or "").strip()
    if text:
        try:
            recorded = json.loads(text)
        except ValueError:
            recorded = None
        if not isinstance(recorded, dict):
            # The record holds the services' environment: say what it is, never quote it.
            raise ValueError("the mode state file must hold a JSON object; got: %s"
                             % ("text that is not JSON" if recorded is None
                                else "a JSON %s" % type(recorded).__name__))
    active = active_modes(modes, running)
    leaving = [s for s in running if s not in entering]
    return {
        "ids": ids,
        "running": running,
        "recorded": recorded,
        "active": active,
        "previous": active[0] if len(active) == 1 else recorded.get("mode"),
        "leaving": leaving,
        "needed": bool(leaving) or any(s not in running for s in entering)
        or recorded.get("mode") != mode,
        "in_mode": sorted(services) == sorted(entering),
    }


def status(state_, host, inspect_lines):
    """The status entry point's report of one host, from :func:`state` and ``docker inspect``.

    ``inspect_lines`` are the lines :func:`devices` reads. Returns ``{host, recorded_mode,
    last_switch, active_modes, running, conflict}``, and a ``warning`` when services of two
    exclusive modes run at once.
    """
    state_ = _dict_of(state_, "state")
    recorded = state_.get("recorded") or {}
    active = list(state_.get("active") or [])
    report = {
        "host": host,
        "recorded_mode": recorded.get("mode"),
        "last_switch": {k: v for k, v in recorded.items() if k != "services"},
        "active_modes": active,
        "running": devices(inspect_lines),
        "conflict": len(active) > 1,
    }
    if report["conflict"]:
        report["warning"] = (
            "WARNING: EXCLUSIVE MODES RUN AT ONCE on %s: %s (%s). A vLLM that starts or restarts "
            "now can crash in memory profiling (seed 003). Run playbooks/switch_mode.yml "
            "-e inference_mode=<one of them>."
            % (host, " + ".join(active), ", ".join(state_.get("running") or [])))
    return report
