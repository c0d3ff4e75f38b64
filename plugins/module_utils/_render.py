# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: from one plan (``services_plan``) to the
documents that run the services (compose files, gpu-assignments.yml, systemd instances;
Kubernetes manifests are _k8s.py's).

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule; the filters in plugins/filter/render.py wrap them so that the roles' templates
stay thin. The catalog, its profiles and modes and the plan itself are _plan.py's (its
docstring has the vocabulary); every document function here checks its input with
``_plan.check_plan``. Bad input raises ValueError naming the field and its value
(``kind must be one of base, gpu, podman; got: 'swarm'``). The same input always
gives the same output (dicts keep the catalog's order).
"""

from __future__ import annotations

import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._common import scalar_text

COMPOSE_KINDS = ("base", "gpu", "podman")

# A compose project name: lower case letters, digits, '_' and '-'.
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# A value an EnvironmentFile holds without quotes.
_PLAIN_VALUE_RE = re.compile(r"[A-Za-z0-9_./:,@%+=-]*")
# The folder, in the compose project and in systemd_units_env_dir, of the mode 0600 files
# holding each service's secret environment (secrets/<service>.env).
SECRETS_DIR = "secrets"
# Published ports and inference instances listen on loopback unless a port's ``address`` (or
# systemd_units_bind_address) asks for exposure (README of the services role, "Exposure").
DEFAULT_BIND_ADDRESS = "127.0.0.1"


# ---- small helpers ----------------------------------------------------------------------

def _dollars(value):
    """A string with every '$' doubled ('$$' is Compose's literal '$', systemd's in
    ExecStart= and Kubernetes' in command, args and env values); anything else as it is."""
    return value.replace("$", "$$") if isinstance(value, str) else value


def compose_literal(service):
    """A compose service whose user values (command, entrypoint, environment, volumes, labels)
    reach the container as written: Compose interpolates ``$VAR`` and ``${VAR}`` everywhere in
    the file (``pa$word`` would become ``pa``), so every '$' is written '$$'."""
    service = dict(service)
    for key in ("command", "entrypoint"):
        if isinstance(service.get(key), list):
            service[key] = [_dollars(arg) for arg in service[key]]
        elif isinstance(service.get(key), str):
            service[key] = _dollars(service[key])
    for key in ("environment", "labels"):
        if isinstance(service.get(key), dict):
            service[key] = {k: _dollars(v) for k, v in service[key].items()}
    if isinstance(service.get("volumes"), list):
        service["volumes"] = [
            dict(v, source=_dollars(v["source"]), target=_dollars(v["target"]))
            if isinstance(v, dict) else _dollars(v) for v in service["volumes"]]
    return service


def _host_port(address, port):
    """``address:port`` as OLLAMA_HOST wants it (an IPv6 address in brackets)."""
    return ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)


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
    if service.get("secret_environment"):
        # The values are in a mode 0600 file beside the project, never in this one.
        doc["env_file"] = ["%s/%s.env" % (SECRETS_DIR, service["name"])]
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


def device_ids(where):
    """The device ids of a plan service's placement, one per GPU: ``device_ids`` (a list,
    N with tensor parallel), else its ``device_id`` text split at the commas."""
    ids = where.get("device_ids")
    if isinstance(ids, list) and ids:
        return [str(i) for i in ids]
    return [i.strip() for i in str(where["device_id"]).split(",") if i.strip()]


def _compose_overlay(service, kind):
    where = service["placement"]
    doc = {}
    if where["engine_args"]:
        doc["command"] = _main_command(service) + list(where["engine_args"])
    env = dict(where["budget_env"])
    if where["vendor"] == "nvidia":
        # Exactly the placement's GPUs, one id each (N with tensor parallel), in its order.
        if kind == "gpu":
            doc["deploy"] = {"resources": {"reservations": {"devices": [{
                "driver": "nvidia", "device_ids": device_ids(where),
                "capabilities": ["gpu"]}]}}}
        else:
            doc["devices"] = ["nvidia.com/gpu=%s" % d for d in device_ids(where)]
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
    CDI name for Podman; exactly the N GPUs of a tensor-parallel service, and vLLM's
    ``--tensor-parallel-size N``), the budget environment and vLLM's
    ``--gpu-memory-utilization`` (per GPU).
    Containers never get the host's GPU index in ``CUDA_VISIBLE_DEVICES``: the device request
    does the selection and the GPU is renumbered 0 inside.
    """
    services_plan = _plan.check_plan(services_plan)
    if kind not in COMPOSE_KINDS:
        raise ValueError("kind must be one of %s; got: %r" % (", ".join(COMPOSE_KINDS), kind))
    services = {}
    for service in services_plan["services"]:
        if kind == "base":
            services[service["name"]] = compose_literal(_compose_base(service))
        elif service["active"] and service["placement"] is not None:
            services[service["name"]] = compose_literal(_compose_overlay(service, kind))
    doc = {}
    if kind == "base" and project:
        if not _PROJECT_RE.match(str(project)):
            raise ValueError("compose_project_name must be a compose project name (lower case "
                             "letters, digits, '_' and '-'); got: %r" % (project,))
        doc["name"] = project
    doc["services"] = services
    return doc


def gpu_assignments_document(services_plan, previous=None, now=None):
    """The ``gpu-assignments.yml`` for people: generated_at, strategy, assignments.

    ``generated_at`` is when the assignments last changed: the previous file's time is kept
    while strategy and assignments are the same, so a run that changes nothing rewrites nothing.
    """
    services_plan = _plan.check_plan(services_plan)
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

def systemd_env_value(value):
    """A value as an EnvironmentFile= holds it: plain when safe, else double-quoted with '\\',
    '"', '$' and '`' escaped, which systemd reads back as those characters (systemd.exec(5));
    systemd never expands '$' nor '%' in the file itself."""
    text = scalar_text(value)
    if _PLAIN_VALUE_RE.fullmatch(text):
        return text
    return '"%s"' % "".join("\\" + c if c in '\\"$`' else c for c in text)


def systemd_instances(services_plan, models_dir="/srv/gpufleet/models/ollama",
                      bind_address=DEFAULT_BIND_ADDRESS):
    """One instance of ``ollama@.service`` or ``vllm@.service`` per active inference service.

    Returns ``[{service, template, unit, environment, env_lines}]``: ``environment`` is what
    the instance's EnvironmentFile holds (``CUDA_VISIBLE_DEVICES`` by UUID from the placement,
    the N GPUs joined by commas for a tensor-parallel service, ``OLLAMA_HOST`` with the
    published port, ``OLLAMA_MODELS`` the one shared model directory; vLLM's model, port,
    ``--gpu-memory-utilization`` and, in ``VLLM_EXTRA_ARGS``, ``--tensor-parallel-size``).
    Sidecars (engine ``other``) run as
    containers only. An instance listens on ``bind_address`` (loopback by default), or on the
    ``address`` its first catalog port gives.
    """
    services_plan = _plan.check_plan(services_plan)
    if not isinstance(models_dir, str) or not models_dir.startswith("/"):
        raise ValueError("systemd_units_models_dir must be an absolute path; got: %r"
                         % (models_dir,))
    bind_address = _plan.check_bind_address(bind_address, "systemd_units_bind_address")
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
        for key in service.get("secret_environment") or []:
            if key in env:
                raise ValueError("services_secret_environment.%s.%s is set by the %s instance "
                                 "file too; set it in one place; got: %r"
                                 % (service["name"], key, service["engine"], key))
        instances.append({
            "service": service["name"], "template": service["engine"],
            "unit": "%s@%s.service" % (service["engine"], service["name"]),
            "environment": env,
            "env_lines": ["%s=%s" % (k, systemd_env_value(v)) for k, v in env.items()],
        })
    return instances


# ---- systemd template units ---------------------------------------------------------------

SYSTEMD_UNIT_ENGINES = ("ollama", "vllm")
# useradd's rules for an account or group name.
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}[$]?\Z")
# StateDirectory= under /var/lib: one relative name, no '..'.
_STATE_DIR_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")

# The hardening both template units share (ollama@ also writes its model directory).
_HARDENING_HEAD = "NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\n"
_HARDENING_REST = """\
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
UMask=0027

[Install]
WantedBy=multi-user.target
"""

# The text of roles/systemd_units' former ollama@.service.j2 / vllm@.service.j2, after their
# ansible_managed line; str.format fields are the options of systemd_unit().
_SYSTEMD_UNITS = {
    "ollama": """\
# One Ollama server per instance (ollama@<service>.service). What differs between instances
# (GPU, port, budget) is in {env_dir}/<instance>.env, written from the placement.
[Unit]
Description=Ollama inference instance %i (gpufleet.inference)
Documentation=https://github.com/ollama/ollama/blob/main/docs/faq.md
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={user}
Group={group}
EnvironmentFile={env_dir}/%i.env
# The instance's secret environment (mode 0600, root), when it has one.
EnvironmentFile=-{env_dir}/secrets/%i.env
Environment=HOME=/var/lib/{state_dir_name}/%i
StateDirectory={state_dir_name}/%i
WorkingDirectory=/var/lib/{state_dir_name}/%i
ExecStart={ollama_bin} serve
Restart=on-failure
RestartSec=5
TimeoutStopSec=30

# Hardening. No PrivateDevices=: the GPU device nodes (/dev/nvidia*, /dev/kfd, /dev/dri) must
# stay visible; the GPU is chosen by CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES instead.
""" + _HARDENING_HEAD + "ReadWritePaths={models_dir}\n" + _HARDENING_REST,
    "vllm": """\
# One vLLM OpenAI-compatible server per instance (vllm@<service>.service). Model, port and
# --gpu-memory-utilization (budget / total memory of its GPU, from the placement) are in
# {env_dir}/<instance>.env.
[Unit]
Description=vLLM inference instance %i (gpufleet.inference)
Documentation=https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={user}
Group={group}
EnvironmentFile={env_dir}/%i.env
# The instance's secret environment (mode 0600, root), when it has one.
EnvironmentFile=-{env_dir}/secrets/%i.env
Environment=HOME=/var/lib/{state_dir_name}/%i
# The host's Hugging Face cache, filled by gpufleet.inference.downloads before the start
# and read offline (HF_HUB_OFFLINE=1 in the instance file): vLLM needs no token.
Environment=HF_HOME={hf_home}
StateDirectory={state_dir_name}/%i
WorkingDirectory=/var/lib/{state_dir_name}/%i
ExecStart={vllm_bin} serve ${{VLLM_MODEL}} --host ${{VLLM_HOST}} --port ${{VLLM_PORT}} \
--gpu-memory-utilization ${{VLLM_GPU_MEMORY_UTILIZATION}} $VLLM_EXTRA_ARGS
Restart=on-failure
RestartSec=10
# A cold start of a big model takes minutes.
TimeoutStopSec=60

# Hardening. No PrivateDevices=: the GPU device nodes must stay visible. No
# MemoryDenyWriteExecute=: PyTorch and Triton compile kernels at run time.
""" + _HARDENING_HEAD + "ReadWritePaths={hf_home}\n" + _HARDENING_REST,
}


# What systemd reads specially in a unit's values: '%' starts a specifier, '$' a variable
# (ExecStart=), quotes and backslashes are unquoted and unescaped, ';' separates commands
# (ExecStart=). Whitespace splits words and lists (ExecStart=, ReadWritePaths=), a newline
# starts a new line of the unit (ExecStartPre=+... would run as root).
UNIT_PATH_SPECIAL = "%$'\";\\"
_UNIT_PATH_RULE = ("must be an absolute path without whitespace, control characters, '..' or "
                   "any of %s" % " ".join(UNIT_PATH_SPECIAL))


def check_unit_path(value, where):
    """``value`` as a path written into a systemd unit: absolute, nothing systemd reads
    specially (:data:`UNIT_PATH_SPECIAL`), no whitespace or control character, no ``..``
    component (systemd ignores a ``ReadWritePaths=`` that is not normalized). ValueError naming
    ``where``, the value and what is wrong with it."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("%s must be an absolute path; got: %r" % (where, value))
    for char in value:
        if char.isspace() or not char.isprintable() or char in UNIT_PATH_SPECIAL:
            raise ValueError("%s %s; got: %r (%r is not allowed)"
                             % (where, _UNIT_PATH_RULE, value, char))
    if ".." in value.split("/"):
        raise ValueError("%s %s; got: %r ('..' is not allowed)" % (where, _UNIT_PATH_RULE, value))
    return value


def _unit_path(options, key):
    return check_unit_path(options.get(key), key).rstrip("/") or "/"


def systemd_unit(engine, options):
    """The text of ``ollama@.service`` or ``vllm@.service`` (without a header comment).

    ``options``: ``user``, ``group`` (the dedicated account), ``env_dir`` (where each
    instance's ``<instance>.env`` is), ``models_dir`` (Ollama's writable model directory),
    ``ollama_bin`` / ``vllm_bin`` (the executables), ``state_dir_name`` (``StateDirectory=``
    under /var/lib) and ``hf_home`` (the Hugging Face cache vLLM reads, default
    /srv/gpufleet/models/huggingface).
    The same options always give the same text.
    """
    if engine not in SYSTEMD_UNIT_ENGINES:
        raise ValueError("engine must be one of %s; got: %r"
                         % (", ".join(SYSTEMD_UNIT_ENGINES), engine))
    if not isinstance(options, dict):
        raise ValueError("options must be a dict; got: %r" % (options,))
    fields = {}
    for key in ("user", "group"):
        value = options.get(key)
        if not isinstance(value, str) or not _ACCOUNT_RE.match(value):
            raise ValueError("%s must be an account or group name (lower case letters, digits, "
                             "'_' and '-', at most 32); got: %r" % (key, value))
        fields[key] = value
    options = dict({"hf_home": _plan.SOURCE_DEFAULTS["hf_home"]},
                   **{k: v for k, v in options.items() if v is not None})
    for key in ("env_dir", "models_dir", "ollama_bin", "vllm_bin", "hf_home"):
        fields[key] = _unit_path(options, key)
    for key in ("ollama_bin", "vllm_bin"):  # ExecStart= expands $VAR: '$$' is a literal '$'
        fields[key] = _dollars(fields[key])
    name = options.get("state_dir_name")
    if not isinstance(name, str) or not _STATE_DIR_RE.match(name) or ".." in name:
        raise ValueError("state_dir_name must be one directory name under /var/lib (letters, "
                         "digits, '_', '.', '-'); got: %r" % (name,))
    fields["state_dir_name"] = name
    return _SYSTEMD_UNITS[engine].format(**fields)
