# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: Podman Quadlet units from one services plan.

Not a public API: the leading underscore says so. Pure functions, stdlib only; the
``project_files`` module (runtime ``podman``) writes what they return. Bad input raises
ValueError naming the field and its value.

Quadlet (podman-systemd.unit(5), Podman 4.4 and later) reads ``<name>.container`` and
``<name>.network`` files in /etc/containers/systemd/ when systemd loads its units (boot, or
``systemctl daemon-reload``) and generates ``<name>.service`` for each ``.container`` (and
``<name>-network.service`` for a ``.network``): a service that runs ``podman run`` with the
keys as its options. Here:

* every active service of the plan gets ``gpufleet-<service>.container`` (service
  ``gpufleet-<service>.service``, container ``gpufleet-<service>``), on the network of
  ``gpufleet.network`` with the service's name as its alias, as compose puts a project's
  services on one network where they reach each other by name;
* a service on NVIDIA GPUs gets one ``AddDevice=nvidia.com/gpu=<id>`` per GPU of its
  placement: a CDI device (``nvidia-ctk cdi generate`` names each GPU by index and by UUID),
  so the container sees exactly those GPUs, renumbered from 0; AMD and Intel services get
  their device nodes (``/dev/kfd``, ``/dev/dri``) and the vendor's variable, as with compose;
* the environment goes into ``<env_dir>/<service>.env``, read by Podman itself
  (``EnvironmentFile=``, ``podman run --env-file``: ``NAME=value`` lines taken as they are,
  no quoting, no expansion), so no value passes through systemd's ``$`` and ``%`` expansion;
  the secret environment into ``<env_dir>/secrets/<service>.env``;
* ``Exec=`` (the command) is split into words by Quadlet and quoted again in the generated
  service's ExecStart=, where systemd expands ``%`` and ``$``: each word is quoted (``\\``
  and ``"`` escaped), ``%`` written ``%%`` and ``$`` written ``$$``. ``Entrypoint=`` is a JSON
  array that Quadlet takes as it is (``%`` and ``$`` doubled only). Checked on Podman 5.4:
  ``$$``, ``%%``, ``\\\\``, ``\\"`` and two spaces reach the container as ``$``, ``%``,
  ``\\``, ``"`` and two spaces;
* ``Pull=never``: the images are fetched before any file changes (a pull that fails leaves
  the services as they were), and a service never pulls on its own at boot. ``Image=`` is the
  fully qualified reference (``docker.io/ollama/ollama:...`` for ``ollama/ollama:...``, as
  Docker reads it): Podman resolves a short name through its search registries, which may
  differ from host to host or ask a question no service can answer.
"""

from __future__ import annotations

import json
import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _registry
from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    ENV_KEY_RE,
    scalar_text,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._render import (
    DEFAULT_BIND_ADDRESS,
    SECRETS_DIR,
    _host_port,
    _main_command,
    device_ids,
)

PREFIX = "gpufleet-"
NETWORK = "gpufleet"
NETWORK_FILE = "%s.network" % NETWORK
# The unit Quadlet generates for the network (no service may take its name).
NETWORK_UNIT = "%s-network" % NETWORK
DEFAULT_ENV_DIR = "/etc/gpufleet/podman"
SERVICE_LABEL = "org.gpufleet.service"
# compose's restart policies as systemd's Restart= (the service restarts the container).
RESTART = {"always": "always", "unless-stopped": "always", "on-failure": "on-failure",
           "no": "no"}
# A first start may wait for an engine to load; images are never pulled here (Pull=never).
START_TIMEOUT_S = 300
_PATH_RE = re.compile(r"^/[^\s:%$'\"\\;,]*\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def container_name(service):
    return PREFIX + service


def unit_name(service):
    return "%s%s.service" % (PREFIX, service)


def container_file(service):
    return "%s%s.container" % (PREFIX, service)


def _path(value, where):
    if not isinstance(value, str) or not _PATH_RE.match(value) or "/../" in value + "/":
        raise ValueError("%s must be an absolute path without whitespace, ':', '%%', '$', "
                         "quotes, ';', ',' or '\\'; got: %r" % (where, value))
    return value


def _unit_text(words, value, where):
    """``words`` (texts) as they may stand on a unit line, ``%`` and ``$`` doubled (systemd
    expands specifiers and variables in the generated service's ExecStart=); ``value`` is
    what the catalog gave, for the message."""
    if any(_CONTROL_RE.search(w) for w in words):
        raise ValueError("%s must not hold control characters (a newline would end the "
                         "unit line); got: %r" % (where, value))
    return [w.replace("%", "%%").replace("$", "$$") for w in words]


def exec_word(word, where):
    """One word of a command line in a unit: quoted (``\\`` and ``"`` escaped), with ``%``
    and ``$`` doubled."""
    text = _unit_text([scalar_text(word)], word, where)[0]
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def entrypoint_value(entrypoint, where):
    """``Entrypoint=``: a JSON array (podman run --entrypoint takes one, so each word stays one
    word). Quadlet takes this value as it is and quotes it in ExecStart=: only ``%`` and ``$``
    are doubled."""
    return _unit_text([json.dumps([scalar_text(w) for w in entrypoint])], entrypoint, where)[0]


def env_file_line(name, value, where):
    """``NAME=value`` as Podman's --env-file reads it: the value to the end of the line."""
    if not isinstance(name, str) or not ENV_KEY_RE.match(name):
        raise ValueError("%s: %r is not an environment variable name" % (where, name))
    text = scalar_text(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        raise ValueError("%s.%s must be one line (Podman's environment file has no quoting); "
                         "got: %r" % (where, name, value))
    return "%s=%s" % (name, text)


def _publish(port, bind_address):
    return "%s:%d/%s" % (_host_port(port.get("address") or bind_address, port["host"]),
                         port["container"], port["protocol"])


def _devices(where):
    if where is None:
        return []
    if where["vendor"] == "nvidia":
        return ["nvidia.com/gpu=%s" % d for d in device_ids(where)]
    return ["/dev/kfd", "/dev/dri"] if where["vendor"] == "amd" else ["/dev/dri"]


def _command(service):
    """The container's command, as compose's overlay gives it: vLLM's model and port, the
    catalog's arguments, then the placement's engine arguments."""
    where = service["placement"]
    return _main_command(service) + (list(where["engine_args"]) if where is not None else [])


def environment(service):
    """What the container's environment file holds: the catalog's environment, then the
    placement's budget variables (and, off NVIDIA, the vendor's visible-devices variable)."""
    env = dict(service["environment"])
    where = service["placement"]
    if where is not None:
        env.update(where["budget_env"])
        if where["vendor"] != "nvidia":
            env.update(where["environment"])
    return env


def _image(reference, where):
    try:
        return _registry.qualified(reference)
    except ValueError as exc:
        raise ValueError("%s: %s" % (where, exc)) from None


def container_units(services_plan, env_dir=DEFAULT_ENV_DIR, bind_address=DEFAULT_BIND_ADDRESS):
    """One Quadlet container per active service: ``[{service, file, unit, container,
    env_file, env_lines, secret_env_file, text}]`` (``secret_env_file`` None without a secret
    environment). The same plan and options always give the same text."""
    services_plan = _plan.check_plan(services_plan)
    env_dir = _path(env_dir, "env_dir")
    bind_address = _plan.check_bind_address(bind_address, "bind_address")
    units = []
    for service in services_plan["services"]:
        if not service["active"]:
            continue
        name = service["name"]
        at = "services_catalog.%s" % name
        if unit_name(name) == NETWORK_UNIT + ".service":
            raise ValueError("%s: Quadlet names the network's unit %s.service, which the "
                             "container of a service named %r would take too; rename the "
                             "service" % (at, NETWORK_UNIT, name))
        env = environment(service)
        env_lines = [env_file_line(k, v, at + ".environment") for k, v in env.items()]
        for key in service.get("secret_environment") or []:
            if key in env:
                raise ValueError("services_secret_environment.%s.%s is set by the container's "
                                 "environment too; set it in one place; got: %r"
                                 % (name, key, key))
        env_file = "%s/%s.env" % (env_dir, name)
        secret_file = ("%s/%s/%s.env" % (env_dir, SECRETS_DIR, name)
                       if service.get("secret_environment") else None)
        lines = [
            "[Unit]",
            "Description=gpufleet.inference %s (%s)" % (name, service["engine"]),
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Container]",
            "ContainerName=%s" % container_name(name),
            "Image=%s" % _image(service["image"], at + ".image"),
            "Pull=never",
            "Network=%s" % NETWORK_FILE,
            "NetworkAlias=%s" % name,
            "Label=%s=%s" % (SERVICE_LABEL, name),
            "EnvironmentFile=%s" % env_file,
        ]
        if secret_file:
            lines.append("EnvironmentFile=%s" % secret_file)
        lines += ["PublishPort=%s" % _publish(p, bind_address) for p in service["ports"]]
        for i, volume in enumerate(service["volumes"]):
            source = _path(volume["source"], "%s.volumes[%d].source" % (at, i))
            target = _path(volume["target"], "%s.volumes[%d].target" % (at, i))
            suffix = ":ro" if volume["read_only"] else ""
            lines.append("Volume=%s:%s%s" % (source, target, suffix))
        lines += ["AddDevice=%s" % d for d in _devices(service["placement"])]
        if service["entrypoint"] is not None:
            lines.append("Entrypoint=%s" % entrypoint_value(service["entrypoint"],
                                                            at + ".entrypoint"))
        command = _command(service)
        if command:
            lines.append("Exec=%s" % " ".join(exec_word(w, at + ".command") for w in command))
        lines += [
            "NoNewPrivileges=true",
            "",
            "[Service]",
            "Restart=%s" % RESTART.get(service["restart"], "always"),
            "TimeoutStartSec=%d" % START_TIMEOUT_S,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
        units.append({"service": name, "file": container_file(name), "unit": unit_name(name),
                      "container": container_name(name), "env_file": env_file,
                      "env_lines": env_lines, "secret_env_file": secret_file,
                      "text": "\n".join(lines) + "\n"})
    return units


def network_unit():
    """``gpufleet.network``: the network the containers share (Podman names it gpufleet)."""
    return "[Network]\nNetworkName=%s\n" % NETWORK
