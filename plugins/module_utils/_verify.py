# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: verify that services run where they were placed.

Not a public API: the leading underscore says so. Pure logic, stdlib only, no AnsibleModule:
every reader (HTTP, ``docker ps`` / ``docker inspect`` / ``docker logs``, ``systemctl show``,
``journalctl``, files under /proc, the GPUs, the clock and the sleep) is passed in, so the
timing and the verdicts are unit-tested without a host and without sleeping. The
``service_verify`` module wraps :func:`verify`. Bad input raises ValueError naming the field
and its value.

Vocabulary
  check    one entry of ``services``: a service to verify under one runtime (``compose``: a
           compose service of a project; ``systemd``: a unit).
  watch    what the runtime says of a check: its container (``docker inspect``) or its unit
           (``systemctl show``).
  owner    what a process belongs to, read from ``/proc/<pid>/cgroup``: a container (its full
           id) or a systemd unit. Never the process name: real vLLM shows as ``python3`` or
           by its process title ``VLLM::EngineCore`` (``VLLM::EngineCor`` where the kernel's
           15-character comm is read), Ollama's GPU memory is held by its runner subprocess,
           and a second instance of the same engine on the same GPU has the same name.

What is checked, in this order; the first two stop at the first failure, the last two are
reported together:
1. health: every ``url`` answers 200 within ``timeout_s``. Every round also reads each check's
   container or unit, and a crash ends the wait at once with its exit code and the last log
   lines: compose: the container exited, is dead or restarting, is gone, or its restart count
   grew since the first look (the services run with ``restart: unless-stopped``, so a crash
   usually shows as a restart); systemd: the unit failed, is inactive, waits in
   ``auto-restart``, or its ``NRestarts`` grew.
2. placement: compose: the container runs and its ``HostConfig.DeviceRequests`` ask for exactly
   the GPUs of ``device_id`` (several joined by commas, in order: the N GPUs of a tensor-parallel
   service; none for ``device_id`` null); systemd: the unit is active and its main
   process runs with ``CUDA_VISIBLE_DEVICES=<cuda_visible_devices>``. On an AMD GPU
   (``vendor`` amd, or the GPU facts say so where the NVIDIA check would fail): no device
   request, ``HostConfig.Devices`` with /dev/kfd and /dev/dri (or a render node), and
   ``ROCR_VISIBLE_DEVICES=<device_id>`` in the container's (the unit's) environment.
3. Ollama with a model: POST ``/api/generate {"model": m}`` loads it, then ``/api/ps`` must show
   it entirely in VRAM when the service has a GPU (``size_vram == size``; else the
   failure "GPU detected is not GPU used": the server started but runs the model, or part
   of it, on the CPU).
4. the GPU ``device_id`` lists a process of THIS service (by cgroup) holding memory; with
   several (tensor parallel: one worker per GPU) each of them must, and the first that does
   not is named. Read again
   every ``interval_s`` for up to ``GPU_SETTLE_S`` seconds, since a driver (or the lab's relay)
   may list a process a moment after its allocation.

Report mode (``fail_on_problem=False``, the health role's): nothing stops at a failure; every
check is taken as far as it goes and each entry of ``services`` gets its ``problems`` (texts, in
the order above; the same texts the failing mode puts in ``msg``). A crash ends that check only;
a check that crashed or has no container is not placed nor GPU-checked. The health wait and the
GPU read are bounded by ``timeout_s`` (the caller's small value: a snapshot, not a start-up
wait). Without ``load_models`` an Ollama service with a GPU and a url has its ``/api/ps`` read
(read-only): a loaded model must be entirely in VRAM and held by a process of the service; with
no model loaded nothing holds its GPU and nothing is checked there.

Rejected: matching process names (see ``owner``); reading ``docker top`` or ``systemctl
show -p ControlGroup`` for the PIDs of a service (a second call per service per read, and
the cgroup of the process is what the kernel itself says); failing on the first GPU read
(a process appears in NVML a moment after the engine answered).
"""

from __future__ import annotations

import json
import re

RUNTIMES = ("compose", "systemd", "podman")
ENGINES = ("ollama", "vllm", "other")
LOG_LINES = 5
# How long the GPU check reads again before it fails (seconds).
GPU_SETTLE_S = 15.0
# A day: beyond it a wait is a typo (milliseconds given as seconds), not a start-up.
MAX_WAIT_S = 86400
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_ONEOFF_LABEL = "com.docker.compose.oneoff"
# `docker inspect` .State.Status values that mean the service's process is gone (or was).
CRASHED_STATES = ("exited", "dead", "restarting")
SYSTEMD_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "ExecMainStatus",
                      "NRestarts", "MainPID")
COMPOSE_FIELDS = ("project", "service")
SYSTEMD_FIELDS = ("unit", "cuda_visible_devices")
PODMAN_FIELDS = ("unit", "container")
# The fields of each runtime's checks; the others' are refused.
RUNTIME_FIELDS = {"compose": COMPOSE_FIELDS, "systemd": SYSTEMD_FIELDS, "podman": PODMAN_FIELDS}
CDI_KIND = "nvidia.com/gpu"
_NVIDIA_NODE_RE = re.compile(r"^/dev/nvidia[0-9]+\Z")
# The GPU's vendor: AMD GPUs are given as device nodes and ROCR_VISIBLE_DEVICES, not requests.
VENDORS = ("nvidia", "amd", "intel")
# What a container placed on an AMD GPU must be given (ROCm's docs: docker run --device
# /dev/kfd --device /dev/dri); a single render node of /dev/dri will do for the second.
AMD_KFD = "/dev/kfd"
AMD_DRI = "/dev/dri"
FIELDS = ("name", "url", "engine", "model", "device_id", "gpu_index", "vendor", *COMPOSE_FIELDS,
          *SYSTEMD_FIELDS, "container")

_URL_RE = re.compile(r"^(https?://[^/\s?#]+)(/\S*)?\Z")
_HEX64 = r"[0-9a-f]{64}"
# A container's cgroup directory: the bare id (cgroupfs driver), or a systemd scope.
_CONTAINER_DIR_RE = re.compile(r"^(?:(?:docker|libpod)-(%s)\.scope|(%s))$" % (_HEX64, _HEX64))
_UNIT_DIR_RE = re.compile(r"^[^/]+\.(?:service|scope)\Z")
_UNIT_SUFFIXES = (".service", ".scope")


# ---- input ------------------------------------------------------------------------------

def _text_field(at, value, required=False):
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError("%s must be a non-empty string; got: %r" % (at, value))
    return value


def _seconds(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number of seconds; got: %r" % (name, value))
    if not 0 < value <= MAX_WAIT_S:
        raise ValueError("%s must be more than 0 seconds and at most %d; got: %r"
                         % (name, MAX_WAIT_S, value))
    return float(value)


def check_services(runtime, services, load_models=True):
    """The checks with their defaults filled in; ValueError naming the field and the value."""
    if runtime not in RUNTIMES:
        raise ValueError("runtime must be one of %s; got: %r" % (", ".join(RUNTIMES), runtime))
    if not isinstance(services, list):
        raise ValueError("services must be a list; got: %r" % (services,))
    own = RUNTIME_FIELDS[runtime]
    other = {}
    for name, fields in RUNTIME_FIELDS.items():
        for field in fields:
            if field not in own:
                other.setdefault(field, []).append(name)
    checks = []
    for i, svc in enumerate(services):
        at = "services[%d]" % i
        if not isinstance(svc, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, svc))
        check = {field: svc.get(field) for field in FIELDS}
        check["name"] = _text_field(at + ".name", svc.get("name"), required=True)
        url = svc.get("url")
        if url is not None and (not isinstance(url, str) or not _URL_RE.match(url)):
            raise ValueError("%s.url must be an http(s) URL; got: %r" % (at, url))
        check["engine"] = svc.get("engine") or "other"
        if check["engine"] not in ENGINES:
            raise ValueError("%s.engine must be one of %s; got: %r"
                             % (at, ", ".join(ENGINES), svc.get("engine")))
        # "" is no model / no GPU, as the roles' own checks read it
        check["model"] = _text_field(at + ".model", svc.get("model") or None)
        check["device_id"] = _text_field(at + ".device_id", svc.get("device_id") or None)
        if check["vendor"] is not None and check["vendor"] not in VENDORS:
            raise ValueError("%s.vendor must be one of %s (or null: read from the GPU facts); "
                             "got: %r" % (at, ", ".join(VENDORS), check["vendor"]))
        index = svc.get("gpu_index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or index < 0):
            raise ValueError("%s.gpu_index must be an integer >= 0; got: %r" % (at, index))
        for field in own:
            if runtime == "systemd" and field == "cuda_visible_devices":
                value = svc.get(field)
                if not isinstance(value, str):
                    raise ValueError("%s.%s is required with runtime %s (a string: a GPU UUID, "
                                     "an index list or -1); got: %r" % (at, field, runtime, value))
                continue
            if svc.get(field) is None:
                raise ValueError("%s.%s is required with runtime %s; got: None"
                                 % (at, field, runtime))
            _text_field("%s.%s" % (at, field), svc.get(field))
        for field, owners in other.items():
            if svc.get(field) is not None:
                raise ValueError("%s.%s applies to runtime %s only; got: %r"
                                 % (at, field, " or ".join(owners), svc.get(field)))
        if runtime != "compose" and not check["unit"].endswith(_UNIT_SUFFIXES):
            check["unit"] += ".service"
        if (load_models and check["engine"] == "ollama" and check["model"]
                and check["url"] is None):
            raise ValueError("%s.url is required to load %s.model %r (engine ollama); got: None"
                             % (at, at, check["model"]))
        checks.append(check)
    names = [c["name"] for c in checks]
    if len(set(names)) != len(names):
        raise ValueError("services: each name once; got: %s" % ", ".join(names))
    return checks


# ---- cgroups: who owns a process ----------------------------------------------------------

def cgroup_paths(text):
    """The paths of a ``/proc/<pid>/cgroup`` text, cgroup v1 (``4:memory:/docker/<id>``, one
    line a hierarchy) or v2 (``0::/system.slice/docker-<id>.scope``), in file order."""
    paths = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            raise ValueError("unexpected /proc/<pid>/cgroup line: %r" % line)
        paths.append(parts[2])
    return paths


def _components(path):
    return [part for part in path.split("/") if part]


def container_of_dir(component):
    """The container id a cgroup directory name stands for, or None."""
    match = _CONTAINER_DIR_RE.match(component)
    return (match.group(1) or match.group(2)) if match else None


def belongs(cgroup_text, container_id=None, unit=None):
    """True when a cgroup path component is the container (its full id, ``docker-<id>.scope``
    or ``libpod-<id>.scope``) or equals the unit's name, on any line: a process of a nested
    container or of a unit inside a container has the outer ones above it."""
    for path in cgroup_paths(cgroup_text):
        for part in _components(path):
            if container_id and container_of_dir(part) == container_id:
                return True
            if unit and part == unit:
                return True
    return False


def cgroup_owner(cgroup_text):
    """The innermost owner of a process: {'kind': 'container', 'id'} or {'kind': 'unit',
    'name'}, or {'kind': None, 'path'} when no component names one (a login shell's
    ``/user.slice/...`` still names its session scope; ``/`` names nothing)."""
    best, depth, deepest = None, -1, "/"
    for path in cgroup_paths(cgroup_text):
        parts = _components(path)
        if len(parts) > len(_components(deepest)):
            deepest = path
        for position in range(len(parts) - 1, -1, -1):
            part = parts[position]
            container = container_of_dir(part)
            if container:
                found = {"kind": "container", "id": container}
            elif _UNIT_DIR_RE.match(part) and not part.endswith(".slice"):
                found = {"kind": "unit", "name": part}
            else:
                continue
            if position > depth:
                best, depth = found, position
            break
    return best or {"kind": None, "path": deepest}


def describe_owner(owner, known=None):
    """``container 0123456789ab (vllm)``, ``unit ollama@x.service``, ``no container or unit
    (cgroup /user.slice)``; ``known`` maps container ids to service names."""
    if owner["kind"] == "container":
        name = (known or {}).get(owner["id"])
        return "container %s%s" % (owner["id"][:12], " (%s)" % name if name else "")
    if owner["kind"] == "unit":
        return "unit %s" % owner["name"]
    if owner["kind"] == "error":
        return "owner unknown (%s)" % owner["error"]
    return "no container or unit (cgroup %s)" % owner["path"]


# ---- what the runtimes say ------------------------------------------------------------------

def parse_inspect(text):
    """``docker inspect`` JSON -> [{'id', 'name', 'project', 'service', 'oneoff', 'status',
    'running', 'exit_code', 'restart_count', 'started_at', 'device_requests', 'devices',
    'env'}], in the given order."""
    try:
        data = json.loads(text or "[]")
    except ValueError as exc:
        raise ValueError("docker inspect printed no JSON: %s" % exc) from None
    if not isinstance(data, list):
        raise ValueError("docker inspect printed no list; got: %r" % (data,))
    found = []
    for item in data:
        state = item.get("State") or {}
        labels = (item.get("Config") or {}).get("Labels") or {}
        found.append({
            "id": item.get("Id"),
            "name": (item.get("Name") or "").lstrip("/"),
            "project": labels.get(COMPOSE_PROJECT_LABEL),
            "service": labels.get(COMPOSE_SERVICE_LABEL),
            "oneoff": labels.get(COMPOSE_ONEOFF_LABEL) == "True",
            "status": state.get("Status"),
            "running": bool(state.get("Running")),
            "exit_code": state.get("ExitCode"),
            "restart_count": item.get("RestartCount") or 0,
            "started_at": state.get("StartedAt"),
            "device_requests": (item.get("HostConfig") or {}).get("DeviceRequests"),
            "devices": [d.get("PathOnHost") for d in
                        (item.get("HostConfig") or {}).get("Devices") or [] if isinstance(d, dict)],
            "env": [e for e in (item.get("Config") or {}).get("Env") or []
                    if isinstance(e, str)],
        })
    return found


def parse_show(text):
    """``systemctl show -p ...`` output -> {'load', 'active', 'sub', 'result', 'exit_status',
    'restarts', 'main_pid'}."""
    values = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()

    def number(key):
        value = values.get(key, "")
        return int(value) if value.lstrip("-").isdigit() else None

    return {"load": values.get("LoadState"), "active": values.get("ActiveState"),
            "sub": values.get("SubState"), "result": values.get("Result"),
            "exit_status": number("ExecMainStatus"), "restarts": number("NRestarts") or 0,
            "main_pid": number("MainPID") or 0}


def _read_containers(checks, readers):
    """{check name: the container of its compose service, or None}. One ``docker ps`` and one
    ``docker inspect`` a project; a running container is preferred, then the newest."""
    by_project = {}
    for check in checks:
        by_project.setdefault(check["project"], []).append(check)
    seen = {}
    for project, members in by_project.items():
        ids = [line.strip() for line in (readers.ps(project) or "").splitlines() if line.strip()]
        containers = parse_inspect(readers.inspect(ids)) if ids else []
        for check in members:
            mine = [c for c in containers if c["service"] == check["service"]
                    and c["project"] == project and not c["oneoff"]]
            running = [c for c in mine if c["running"]]
            seen[check["name"]] = (running or mine or [None])[0]
    return seen


def _read_units(checks, readers):
    return {check["name"]: parse_show(readers.show(check["unit"])) for check in checks}


def _tail(text, lines=LOG_LINES):
    kept = [line.rstrip() for line in (text or "").splitlines() if line.strip()]
    return kept[-lines:]


def _crashed_run_logs(readers, seen, first):
    """The crashed run's last log lines. A container that runs again after a crash has the
    new run's first lines at the end of its log: read from the run seen at the first look to
    the new run's start (``docker logs`` cuts --tail before --until, so no --tail then). A
    container waiting to restart says Running too, with the crashed run's StartedAt."""
    if seen["status"] == "running" and seen.get("started_at"):
        since = first["started_at"] if first and first["id"] == seen["id"] else None
        return readers.logs(seen["id"], since=since, until=seen["started_at"])
    return readers.logs(seen["id"])


def _compose_crash(check, seen, first):
    """What went wrong with a check's container, or None while it may still come up."""
    if seen is None:
        if first is None:
            return ("it has no container (compose service %s of project %s)"
                    % (check["service"], check["project"]))
        return "its container is gone (removed)"
    code = seen["exit_code"]
    if seen["status"] == "restarting":
        return ("its container crashed and is being restarted by its restart policy%s"
                % (" (exit code %s)" % code if code else ""))
    if seen["status"] in CRASHED_STATES:
        if code is not None:
            return "its container exited with code %d" % code
        return "its container is %s" % seen["status"]
    if first is not None and seen["id"] == first["id"] \
            and seen["restart_count"] > first["restart_count"]:
        return ("its container crashed and was restarted by its restart policy (restart "
                "count %d -> %d%s)" % (first["restart_count"], seen["restart_count"],
                                       ", exit code %s" % code if code else ""))
    return None


def _systemd_crash(check, seen, first):
    unit = check["unit"]
    why = "result %s, exit status %s" % (seen["result"], seen["exit_status"])
    # After a restart systemd describes the new main process (success, 0): say nothing then.
    said = ", " + why if seen["result"] not in (None, "success") or seen["exit_status"] else ""
    if seen["load"] not in (None, "loaded"):
        return "its unit %s is not loaded (%s)" % (unit, seen["load"])
    if seen["active"] == "failed":
        return "its unit %s failed (%s)" % (unit, why)
    if seen["active"] == "inactive":
        return "its unit %s is inactive (%s)" % (unit, why)
    if seen["sub"] == "auto-restart":
        return "its unit %s crashed and waits to be restarted (%s)" % (unit, why)
    if first is not None and seen["restarts"] > first["restarts"]:
        return "its unit %s crashed and was restarted (NRestarts %d -> %d%s)" % (
            unit, first["restarts"], seen["restarts"], said)
    return None


# ---- health -------------------------------------------------------------------------------

def _wait(runtime, checks, readers, clock, sleep, timeout_s, interval_s, request_timeout_s,
          report, keep_going=False):
    """Poll until every url answers 200, a check crashed, or ``timeout_s``.

    Each crash and each late check is added to its entry's ``problems``. With ``keep_going``
    (report mode) a crash ends the wait of that check only. Returns (the failing mode's message
    or None, the names of the crashed checks, waited_s, the last watch of every check).
    """
    # podman: Quadlet's service runs the container (and recreates it when it restarts).
    read = _read_containers if runtime == "compose" else _read_units
    crash_of = _compose_crash if runtime == "compose" else _systemd_crash
    start = clock()
    first = read(checks, readers)
    pending = [c for c in checks if c["url"]]
    detail = {c["name"]: "not probed yet" for c in pending}
    crashed = []
    while True:
        for check in list(pending):
            status, text = readers.http("GET", check["url"], None, request_timeout_s)
            detail[check["name"]] = "HTTP %d" % status if status is not None else text
            if status == 200:
                entry = report[check["name"]]
                entry["healthy"] = True
                entry["waited_s"] = round(clock() - start, 3)
                pending.remove(check)
        waited = round(clock() - start, 3)
        seen = read(checks, readers)
        for check in checks:
            if check["name"] in crashed:
                continue
            what = crash_of(check, seen[check["name"]], first[check["name"]])
            if what is None:
                continue
            if runtime == "compose":
                now_seen, first_seen = seen[check["name"]], first[check["name"]]
                tail = _tail(_crashed_run_logs(readers, now_seen, first_seen)) \
                    if now_seen else []
            else:
                tail = _tail(readers.journal(check["unit"]))
            before = ", before %s answered" % check["url"] \
                if check["url"] and not report[check["name"]]["healthy"] else ""
            reason = "%s: %s after %.1f s%s; last log lines: %s" % (
                check["name"], what, waited, before, " | ".join(tail) if tail else "(none)")
            report[check["name"]]["problems"].append(reason)
            crashed.append(check["name"])
            if not keep_going:
                return reason, crashed, waited, seen
            if check in pending:
                pending.remove(check)
        if not pending:
            return None, crashed, waited, seen
        if waited >= timeout_s:
            for check in pending:
                report[check["name"]]["problems"].append(
                    "%s: not healthy within %.0f s (%s: %s)"
                    % (check["name"], timeout_s, check["url"], detail[check["name"]]))
            late = ", ".join("%s (%s: %s)" % (c["name"], c["url"], detail[c["name"]])
                             for c in pending)
            return ("not healthy within %.0f s: %s" % (timeout_s, late), crashed, waited, seen)
        sleep(min(interval_s, max(0.0, timeout_s - waited)))


# ---- placement ----------------------------------------------------------------------------

def _compose_placement(check, seen, vendor_of=None):
    if seen is None:
        return False, "%s: no container (compose service %s of project %s)" % (
            check["name"], check["service"], check["project"])
    if check["device_id"] and (check["vendor"] == "amd" or (
            check["vendor"] is None and not seen["device_requests"] and vendor_of is not None
            and vendor_of(check) == "amd")):
        return _amd_placement(check, seen)
    requests = seen["device_requests"] or []
    ids = [i for r in requests for i in (r.get("DeviceIDs") or [])]
    # Several GPUs (a mode switch's) are joined by commas, in the order they were asked for.
    wanted = check["device_id"].split(",") if check["device_id"] else []
    ok = seen["running"] and ids == wanted and (bool(requests) == bool(wanted))
    if ok:
        return True, None
    return False, ("%s: container %s (running: %s) has device requests %s; the placement says %s"
                   % (check["name"], seen["name"], seen["running"], seen["device_requests"],
                      check["device_id"] or "no GPU"))


# Where CDI specs are (the CDI spec's default directories; nvidia-ctk writes /etc/cdi, the
# toolkit's nvidia-cdi-refresh service /var/run/cdi), and the files read there.
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
CDI_SUFFIXES = (".yaml", ".json")


def parse_cdi_spec(path, text, yaml_load=None):
    """One CDI spec file's content: JSON for ``*.json``, else YAML (``yaml_load``, PyYAML's
    safe loader); ValueError when PyYAML is needed and not given."""
    if path.endswith(".json"):
        return json.loads(text)
    if yaml_load is None:
        raise ValueError("PyYAML is needed to read the CDI spec %s" % path)
    return yaml_load(text)


def cdi_devices(specs):
    """``{device name: [device node paths]}`` of the NVIDIA CDI specs (kind nvidia.com/gpu)
    among ``specs`` (parsed spec files); each name as ``nvidia-ctk cdi generate`` writes it (an
    index, a UUID, ``all``)."""
    devices = {}
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("kind") != CDI_KIND:
            continue
        for device in spec.get("devices") or []:
            edits = (device or {}).get("containerEdits") or {}
            devices[str(device.get("name"))] = [n.get("path") for n in edits.get("deviceNodes")
                                                or [] if isinstance(n, dict)]
    return devices


def _cdi(readers):
    """``devices()``: :func:`cdi_devices` of the host's specs, read once per verify and only
    when a Podman service has a GPU."""
    cache = {}

    def devices():
        if "devices" not in cache:
            cache["devices"] = cdi_devices(readers.cdi_specs())
        return cache["devices"]
    return devices


def _podman_placement(check, seen, readers, cdi):
    """The Quadlet service is active and its container runs with exactly the GPU device nodes
    the host's CDI spec gives the placement's devices (``nvidia.com/gpu=<device_id>``), or,
    on an AMD GPU, what ROCm needs (as for compose)."""
    head = "%s: unit %s (%s)" % (check["name"], check["unit"], seen["active"])
    if seen["active"] != "active":
        return False, "%s is not active; its container %s cannot be placed" % (
            head, check["container"])
    found = parse_inspect(readers.podman_inspect(check["container"]))
    container = found[0] if found else None
    if container is None or not container["running"]:
        return False, "%s: container %s is %s" % (
            head, check["container"], container["status"] if container else "not there")
    if check["device_id"] and check["vendor"] == "amd":
        return _amd_placement(check, container)
    have = sorted(d for d in container["devices"] if d and _NVIDIA_NODE_RE.match(d))
    wanted = []
    if check["device_id"]:
        devices = cdi()
        for device_id in check["device_id"].split(","):
            if device_id not in devices:
                return False, ("%s: the host's CDI specs have no device %s=%s (devices: %s)"
                               % (check["name"], CDI_KIND, device_id,
                                  ", ".join(sorted(devices)) or "none"))
            wanted += [n for n in devices[device_id] if n not in wanted]
    if have == sorted(wanted):
        return True, None
    return False, ("%s: container %s has the GPU device nodes %s; the placement (%s) gives %s"
                   % (check["name"], check["container"], ", ".join(have) or "none",
                      ", ".join("%s=%s" % (CDI_KIND, d) for d in
                                check["device_id"].split(",")) if check["device_id"]
                      else "no GPU", ", ".join(sorted(wanted)) or "none"))


def _amd_placement(check, seen):
    """An AMD GPU: the device nodes ROCm needs, the plan's ROCR_VISIBLE_DEVICES, and no NVIDIA
    device request (which would fail on an AMD host: no nvidia device driver)."""
    devices = seen.get("devices") or []
    env = [e for e in seen.get("env") or [] if e.startswith("ROCR_VISIBLE_DEVICES=")]
    want = "ROCR_VISIBLE_DEVICES=%s" % check["device_id"]
    differs = []
    if not seen["running"]:
        differs.append("it is not running")
    if AMD_KFD not in devices:
        differs.append("it is not given %s" % AMD_KFD)
    if not any(d == AMD_DRI or d.startswith(AMD_DRI + "/renderD") for d in devices):
        differs.append("it is given neither %s nor a render node %s/renderD*" % (AMD_DRI, AMD_DRI))
    if env != [want]:
        differs.append("it runs with %s" % (", ".join(env) or "no ROCR_VISIBLE_DEVICES"))
    if seen["device_requests"]:
        differs.append("it has NVIDIA device requests %s" % seen["device_requests"])
    if not differs:
        return True, None
    return False, ("%s: container %s is placed on AMD GPU %s (devices %s and %s, %s, no device "
                   "request), but %s; its devices: %s"
                   % (check["name"], seen["name"], check["device_id"], AMD_KFD, AMD_DRI, want,
                      "; ".join(differs), ", ".join(devices) or "none"))


def _systemd_placement(check, seen, readers, vendor_of=None):
    """The unit's main process runs with the plan's CUDA_VISIBLE_DEVICES (ROCR_VISIBLE_DEVICES =
    ``device_id`` on an AMD GPU: ``vendor`` amd, or read from the facts when CUDA's differs)."""
    amd = check["device_id"] and check["vendor"] == "amd"
    good, why = _systemd_env(check, seen, readers, "ROCR_VISIBLE_DEVICES" if amd
                             else "CUDA_VISIBLE_DEVICES")
    if not good and not amd and check["device_id"] and check["vendor"] is None \
            and vendor_of is not None and vendor_of(check) == "amd":
        return _systemd_env(check, seen, readers, "ROCR_VISIBLE_DEVICES")
    return good, why


def _systemd_env(check, seen, readers, variable):
    value = check["device_id"] if variable == "ROCR_VISIBLE_DEVICES" \
        else check["cuda_visible_devices"]
    unit, want = check["unit"], "%s=%s" % (variable, value)
    head = "%s: unit %s (%s)" % (check["name"], unit, seen["active"])
    if seen["active"] != "active" or not seen["main_pid"]:
        return False, "%s has no main process; the placement says %s" % (head, want)
    path = "/proc/%d/environ" % seen["main_pid"]
    try:
        environ = readers.read(path).split("\0")
    except OSError as exc:
        return False, "%s: %s cannot be read (%s); the placement says %s" % (
            head, path, exc, want)
    found = [e for e in environ if e.startswith(variable + "=")]
    if want in found:
        return True, None
    return False, "%s runs with %s; the placement says %s" % (
        head, ", ".join(found) or "no " + variable, want)


def _vendors(readers):
    """``vendor_of(check)``: the vendor of the check's GPU, from one read of the GPU facts
    (by ``gpu_index``, the host's own number, else ``device_id``); None when unknown. Read
    only when a placement does not look like an NVIDIA one, so NVIDIA hosts pay nothing."""
    cache = {}

    def vendor_of(check):
        if "gpus" not in cache:
            try:
                cache["gpus"] = readers.gpus()
            except (OSError, ValueError):
                cache["gpus"] = []
        gpus = cache["gpus"]
        gpu = next((g for g in gpus if check["gpu_index"] is not None
                    and g.get("index") == check["gpu_index"]), None)
        if gpu is None:
            gpu = _gpu_of(gpus, check["device_id"].split(",")[0])
        vendor = gpu.get("vendor") if gpu else None
        if vendor == "amd":
            check["vendor"] = "amd"
            # ROCR_VISIBLE_DEVICES counts AMD GPUs only (vendor_index): the GPU check finds
            # them by UUID, else by the host's own index.
            amd = {str(g.get("vendor_index")): g for g in gpus if g.get("vendor") == "amd"}
            check["gpu_ids"] = ",".join(
                str(amd[i].get("uuid") or amd[i].get("index")) if i in amd else i
                for i in check["device_id"].split(","))
        return vendor
    return vendor_of


# ---- Ollama -------------------------------------------------------------------------------

def _error_text(text):
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        return (text or "").strip()[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return (text or "").strip()[:300]


def _names_of(model):
    return {model, model if ":" in model else model + ":latest"}


def _where(check):
    return ("GPU %s" % check["gpu_index"] if check["gpu_index"] is not None
            else check["device_id"])


def _ps(check, readers, request_timeout_s):
    """The models ``/api/ps`` lists, or (None, why not)."""
    url = _URL_RE.match(check["url"]).group(1) + "/api/ps"
    status, text = readers.http("GET", url, None, request_timeout_s)
    if status == 200:
        try:
            return json.loads(text).get("models") or [], None
        except (TypeError, ValueError, AttributeError):
            pass
    return None, "%s: GET %s answered %s" % (
        check["name"], url, "HTTP %d" % status if status is not None else text)


def _in_vram(held):
    return held.get("size_vram") == held.get("size") and bool(held.get("size"))


def _not_in_vram(check, held, model, models):
    return ("GPU detected is not GPU used: %s (%s) holds %s of %s bytes of %s in VRAM "
            "(/api/ps: %s)" % (check["name"], _where(check), held.get("size_vram", 0),
                               held.get("size", "?"), model, models))


def _ollama(check, readers, timeout_s, request_timeout_s, entry):
    """Load the model, then ask /api/ps where it is. Returns a failure text or None."""
    base = _URL_RE.match(check["url"]).group(1)
    model = check["model"]
    url = base + "/api/generate"
    status, text = readers.http("POST", url, {"model": model}, timeout_s)
    if status != 200:
        said = _error_text(text) if status is not None else text
        if status == 404:
            return "%s: Ollama cannot load model %s: HTTP 404 %s (POST %s)" % (
                check["name"], model, said, url)
        return "%s: loading model %s failed: %s%s (POST %s)" % (
            check["name"], model, "HTTP %d " % status if status is not None else "", said, url)
    models, why = _ps(check, readers, request_timeout_s)
    if models is None:
        return why
    names = _names_of(model)
    mine = [m for m in models if m.get("name") in names or m.get("model") in names]
    held = mine[0] if mine else {}
    entry["model_in_vram"] = bool(mine) and _in_vram(held)
    if check["device_id"] and not entry["model_in_vram"]:
        return _not_in_vram(check, held, model, models)
    return None


def _ollama_loaded(check, readers, request_timeout_s, entry):
    """Report mode without load_models: what /api/ps says is loaded, read only (its
    ``model``, else any). Returns (whether one is loaded, a failure text or None)."""
    models, why = _ps(check, readers, request_timeout_s)
    if models is None:
        return False, why
    names = _names_of(check["model"]) if check["model"] else None
    mine = [m for m in models
            if names is None or m.get("name") in names or m.get("model") in names]
    if not mine:
        return False, None
    partial = [m for m in mine if not _in_vram(m)]
    entry["model_in_vram"] = not partial
    if partial:
        held = partial[0]
        return True, _not_in_vram(check, held, held.get("name") or held.get("model"), models)
    return True, None


# ---- the GPU really used ------------------------------------------------------------------

def _gpu_of(gpus, device_id):
    for gpu in gpus:
        if gpu.get("uuid") == device_id:
            return gpu
    for gpu in gpus:  # a MIG device: its processes are listed on the parent GPU
        if any(m.get("uuid") == device_id for m in gpu.get("mig_devices") or []):
            return gpu
    if device_id.isdigit():
        for gpu in gpus:
            if str(gpu.get("index")) == device_id:
                return gpu
    return None


def _owner_of(pid, readers, cache):
    if pid not in cache:
        path = "/proc/%d/cgroup" % pid
        try:
            text = readers.read(path)
            cache[pid] = (text, cgroup_owner(text))
        except (OSError, ValueError) as exc:
            cache[pid] = (None, {"kind": "error", "error": "%s: %s" % (path, exc)})
    return cache[pid]


def _gpu_round(pending, watched, readers, known):
    """One read of the GPUs: {check name: {'ok', 'mine', 'failure', 'missing'}}."""
    gpus = readers.gpus()
    cache = {}
    out = {}
    for check in pending:
        # A tensor-parallel service spans N GPUs (joined by commas): its engine must hold
        # memory on each of them (one worker per GPU), so each is read and the first GPU
        # without a process of it is named.
        ids = [i.strip() for i in (check.get("gpu_ids") or check["device_id"]).split(",")]
        found = [(device_id, _gpu_of(gpus, device_id)) for device_id in ids]
        absent = [device_id for device_id, gpu in found if gpu is None]
        if absent:
            listed = ", ".join(str(g.get("uuid")) for g in gpus) or "none"
            out[check["name"]] = {"ok": False, "mine": [], "missing": True, "failure": (
                "%s: GPU %s of its placement is not on this host (GPUs: %s)"
                % (check["name"], ", ".join(absent), listed))}
            continue
        verdict = {"ok": True, "mine": [], "missing": False, "failure": None}
        for device_id, gpu in found:
            mine, lines = _gpu_processes(gpu, watched[check["name"]], readers, cache, known)
            verdict["mine"] += mine
            if any((p["used_memory_mib"] or 0) > 0 for p in mine) or not verdict["ok"]:
                continue
            index = check["gpu_index"] if len(ids) == 1 else gpu.get("index")
            where = "GPU %s (%s)" % (index, device_id) if index is not None \
                else "GPU %s" % device_id
            if len(ids) > 1:
                where += ", one of the %d GPUs it spans (%s)" % (len(ids), check["device_id"])
            whose = watched[check["name"]]
            who = ("container %s" % whose["container_id"][:12] if whose.get("container_id")
                   else "unit %s" % whose.get("unit"))
            verdict.update(ok=False, failure=(
                "GPU detected is not GPU used: no process of %s (%s) holds memory on %s; "
                "processes there: %s" % (check["name"], who, where, "; ".join(lines) or "none")))
        out[check["name"]] = verdict
    return out


def _gpu_processes(gpu, whose, readers, cache, known):
    """The processes of ``whose`` (a container or a unit) on ``gpu``, and a line for each
    process there."""
    mine, lines = [], []
    for proc in gpu.get("processes") or []:
        text, owner = _owner_of(proc.get("pid"), readers, cache)
        if text is not None and belongs(text, **whose):
            mine.append({"pid": proc.get("pid"), "name": proc.get("name"),
                         "used_memory_mib": proc.get("used_memory_mib")})
        memory = proc.get("used_memory_mib")
        lines.append("pid %s %s %s (%s)" % (
            proc.get("pid"), proc.get("name") or "?",
            "memory unknown" if memory is None else "%s MiB" % memory,
            describe_owner(owner, known)))
    return mine, lines


def _gpu_check(checks, seen, readers, clock, sleep, interval_s, report, settle_s=GPU_SETTLE_S):
    """Read the GPUs until each check's GPU lists a process of it holding memory, for at most
    ``settle_s`` seconds. Returns the failure texts, each added to its entry's problems."""
    watched, known = {}, {}
    for check in checks:
        if check["unit"]:
            watched[check["name"]] = {"unit": check["unit"]}
        else:
            container_id = (seen.get(check["name"]) or {}).get("id")
            watched[check["name"]] = {"container_id": container_id}
            if container_id:
                known[container_id] = check["name"]
    pending = list(checks)
    deadline = clock() + settle_s
    while True:
        verdicts = _gpu_round(pending, watched, readers, known)
        for check in list(pending):
            verdict = verdicts[check["name"]]
            report[check["name"]]["gpu_processes"] = verdict["mine"]
            if verdict["ok"]:
                report[check["name"]]["gpu_used"] = True
                pending.remove(check)
        missing = any(verdicts[c["name"]]["missing"] for c in pending)
        if not pending or missing or clock() >= deadline:
            for check in pending:
                report[check["name"]]["gpu_used"] = False
                report[check["name"]]["problems"].append(verdicts[check["name"]]["failure"])
            return [verdicts[c["name"]]["failure"] for c in pending]
        sleep(min(interval_s, max(0.0, deadline - clock())))


# ---- all of it ----------------------------------------------------------------------------

def verify(runtime, services, readers, clock, sleep, timeout_s=180.0, interval_s=1.0,
           request_timeout_s=5.0, load_models=True, gpu_check=True, fail_on_problem=True):
    """Verify every check; returns {'ok', 'msg', 'waited_s', 'crashed', 'problems',
    'services'}.

    ``readers`` has: ``http(method, url, body, timeout) -> (status or None, text)`` (the body
    of the answer, or why there was none); compose: ``ps(project) -> text`` (full container
    ids of the project, one a line, stopped ones too), ``inspect(ids) -> text`` (``docker
    inspect`` JSON), ``logs(container id) -> text``; systemd: ``show(unit) -> text``
    (``systemctl show -p`` SYSTEMD_PROPERTIES), ``journal(unit) -> text``; ``read(path) ->
    text`` (raises OSError); ``gpus() -> [gpu facts]`` (as gpu_facts returns them).

    ``services`` (one entry a check): per service ``name``, ``healthy`` (None without url),
    ``waited_s``, ``device_ok``, ``gpu_processes`` (its processes on its GPU), ``gpu_used``
    and ``model_in_vram`` (None where not checked), and ``problems`` (what failed, as texts).
    ``fail_on_problem`` False is the report mode (module docstring): every check is taken
    as far as it goes; ``ok`` still says whether none had a problem, ``problems`` lists them
    all and ``msg`` joins them.
    """
    checks = check_services(runtime, services, load_models)
    timeout_s = _seconds("timeout", timeout_s)
    interval_s = _seconds("interval", interval_s)
    request_timeout_s = _seconds("request_timeout", request_timeout_s)
    keep_going = not fail_on_problem
    report = {c["name"]: {"name": c["name"], "healthy": None if not c["url"] else False,
                          "waited_s": None, "device_ok": None, "gpu_processes": [],
                          "gpu_used": None, "model_in_vram": None, "problems": []}
              for c in checks}
    result = {"ok": True, "msg": None, "waited_s": 0.0, "crashed": None, "problems": [],
              "services": [report[c["name"]] for c in checks]}

    def done(msg=None):
        result["problems"] = [p for c in checks for p in report[c["name"]]["problems"]]
        if result["problems"]:
            result.update(ok=False, msg=msg if not keep_going else "; ".join(result["problems"]))
        return result

    if not checks:
        return result
    reason, crashed, waited, seen = _wait(runtime, checks, readers, clock, sleep, timeout_s,
                                          interval_s, request_timeout_s, report, keep_going)
    result.update(waited_s=waited, crashed=crashed[0] if crashed else None)
    if reason and not keep_going:
        return done(reason)
    # A check that crashed (or has no container) is not placed nor GPU-checked.
    live = [c for c in checks if c["name"] not in crashed]

    failures = []
    vendor_of = _vendors(readers)
    cdi = _cdi(readers)
    for check in live:
        if runtime == "compose":
            good, why = _compose_placement(check, seen[check["name"]], vendor_of)
        elif runtime == "podman":
            try:
                good, why = _podman_placement(check, seen[check["name"]], readers, cdi)
            except (OSError, ValueError) as exc:
                good, why = False, "%s: reading its container failed: %s" % (check["name"], exc)
        else:
            good, why = _systemd_placement(check, seen[check["name"]], readers, vendor_of)
        report[check["name"]]["device_ok"] = good
        if not good:
            failures.append(why)
            report[check["name"]]["problems"].append(why)
    if failures and not keep_going:
        return done("; ".join(failures))

    failed, loaded = set(), set()
    for check in live:
        if check["engine"] != "ollama":
            continue
        why = None
        if load_models and check["model"]:
            why = _ollama(check, readers, timeout_s, request_timeout_s, report[check["name"]])
        elif keep_going and not load_models and check["url"] and check["device_id"]:
            held, why = _ollama_loaded(check, readers, request_timeout_s,
                                       report[check["name"]])
            if held:
                loaded.add(check["name"])
        if why:
            failures.append(why)
            failed.add(check["name"])
            report[check["name"]]["problems"].append(why)

    for check in live:  # an AMD GPU named by ROCm's number: found in the facts by vendor_index
        if check["vendor"] == "amd" and check["device_id"] and "gpu_ids" not in check \
                and gpu_check:
            vendor_of(check)
    # An Ollama server holds GPU memory only while a model is loaded (by its runner).
    on_gpu = [c for c in live if gpu_check and c["device_id"] and c["name"] not in failed
              and (c["engine"] != "ollama" or (load_models and c["model"])
                   or c["name"] in loaded)]
    if on_gpu:
        settle_s = min(GPU_SETTLE_S, timeout_s) if keep_going else GPU_SETTLE_S
        try:
            failures.extend(_gpu_check(on_gpu, seen, readers, clock, sleep, interval_s, report,
                                       settle_s))
        except ValueError as exc:
            why = "reading the GPUs failed: %s" % exc
            failures.append(why)
            for check in on_gpu:
                report[check["name"]]["problems"].append(why)
    return done("; ".join(failures) if failures else None)
