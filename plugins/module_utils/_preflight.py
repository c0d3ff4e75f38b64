# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what preflight decides before anything starts.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule: the ``preflight_facts`` module uses the /proc parsers, the preflight role's
filters use the rest. Bad input raises ValueError naming the field and its value
(``preflight_disk_reserve_mib must be an integer >= 0; got: -5``).

What it covers
  profile         the recommended profile (``_plan.recommend_profile``): cpu, single-gpu,
                  dual-gpu, multi-gpu, or remote when the inventory says inference runs elsewhere.
  downloads       what the run will fetch, from the planned result of the downloads module
                  (``gpufleet.inference.downloads``, ``state: planned``): the images, Ollama
                  models and Hugging Face weights of the plan, each with its real size, what
                  is already present costing nothing, and the filesystem it lands on.
  disks           per filesystem: the bytes fetched onto it plus the reserve against its free
                  space.
  mixed mode      GPU 1 must have room for the budgets of every service placed on it, and vLLM's
                  start rule (free >= gpu_memory_utilization x total) must hold.
  ports           /proc/net/tcp{,6} listeners and who holds them.
  summary         one readable block per host.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import re

from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    ascii_digits,
    dotenv_get,
    is_int,
    known_keys,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import (
    unhealthy_warnings,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._plan import (
    GPU_PROFILES,
    MODE_PROFILES,
    MODES,
    recommend_profile,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._render import check_unit_path
from ansible_collections.gpufleet.inference.plugins.module_utils._verify import CDI_KIND

# /proc/net/tcp: "sl local_address rem_address st ..."; st 0A is LISTEN.
_TCP_LISTEN = "0A"
_SOCKET_LINK_RE = re.compile(r"^socket:\[(\d+)\]\Z")


def gb_text(mb):
    """MB as the summary prints sizes: 800 -> '800 MB', 1500 -> '1.5 GB', 10000 -> '10.0 GB'."""
    if mb < 1000:
        return "%d MB" % mb
    return "%.1f GB" % (mb / 1000.0)


# ---- profile and .env -------------------------------------------------------------------

def dual_gpu_mode_plan(gpu_count, existing_text, default="ollama", remote=False):
    """Write DUAL_GPU_MODE=<default> into .env on the first setup of a 2-GPU host.

    Returns ``{write, mode, existing}``: ``write`` is true only on a host with two GPUs or
    more (not remote) whose .env
    has no DUAL_GPU_MODE yet; a value already there is kept (and reported as the mode).
    """
    if default not in MODES:
        raise ValueError("preflight_dual_gpu_mode_default must be one of %s; got: %r"
                         % (", ".join(MODES), default))
    existing = dotenv_get(existing_text, "DUAL_GPU_MODE")
    if existing is not None and existing not in MODES:
        raise ValueError(".env DUAL_GPU_MODE must be one of %s; got: %r"
                         % (", ".join(MODES), existing))
    # A 3+ GPU host (multi-gpu) has a mode too: GPU 1's stack is the dual-GPU one.
    dual = recommend_profile(gpu_count, remote) in MODE_PROFILES
    return {"write": dual and existing is None, "mode": existing or default,
            "existing": existing}


# ---- downloads --------------------------------------------------------------------------

MIB = 1048576


def size_text(size_bytes):
    """Bytes as gb_text prints them (MB of 10^6 bytes): less than one MB is '< 1 MB'."""
    if 0 < size_bytes < 1000000:
        return "< 1 MB"
    return gb_text(round(size_bytes / 1000000.0))


def _byte_count(value, at):
    if not is_int(value) or value < 0:
        raise ValueError("%s must be an integer >= 0; got: %r" % (at, value))
    return value


def download_table(result, where="downloads"):
    """What the run will fetch, from the planned result of gpufleet.inference.downloads.

    ``result`` is the registered result of the module in ``state: planned``: its
    ``downloads`` (one per item: ``kind``, ``name``, ``services``, ``present``, ``bytes``,
    ``filesystem``) and ``by_filesystem`` (mount point: ``{bytes, free_bytes}``). None, or a
    skipped result, gives None (no table, no disk check). Returns ``{items, total_bytes,
    present, unknown, by_filesystem}``: an item already present costs nothing; ``unknown``
    names the items whose size could not be read (``bytes`` None, not counted).
    """
    if result is None:
        return None
    if not isinstance(result, dict):
        raise ValueError("%s must be the result of gpufleet.inference.downloads (state: "
                         "planned); got: %r" % (where, result))
    if result.get("skipped") or "downloads" not in result:
        return None
    listed = result["downloads"]
    if not isinstance(listed, list):
        raise ValueError("%s.downloads must be a list; got: %r" % (where, listed))
    items = []
    for i, item in enumerate(listed):
        at = "%s.downloads[%d]" % (where, i)
        if not isinstance(item, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, item))
        for key in ("kind", "name"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ValueError("%s.%s must be a non-empty string; got: %r"
                                 % (at, key, item.get(key)))
        services = item.get("services") or []
        if not isinstance(services, list):
            raise ValueError("%s.services must be a list of names; got: %r" % (at, services))
        present = bool(item.get("present"))
        # bytes is None when the registry could not be read (a login only docker has).
        size = item.get("bytes")
        size = 0 if present else (None if size is None else _byte_count(size, at + ".bytes"))
        items.append({"kind": item["kind"], "name": item["name"],
                      "services": [str(s) for s in services], "present": present,
                      "bytes": size, "filesystem": item.get("filesystem")})
    by_filesystem = result.get("by_filesystem")
    by_filesystem = {} if by_filesystem is None else by_filesystem
    if not isinstance(by_filesystem, dict):
        raise ValueError("%s.by_filesystem must be a dict of mount point: {bytes, free_bytes}; "
                         "got: %r" % (where, by_filesystem))
    filesystems = {}
    for mount, entry in sorted(by_filesystem.items()):
        at = "%s.by_filesystem[%r]" % (where, mount)
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict with bytes and free_bytes; got: %r"
                             % (at, entry))
        free = entry.get("free_bytes")
        filesystems[mount] = {
            "bytes": _byte_count(entry.get("bytes"), at + ".bytes"),
            "free_bytes": None if free is None else _byte_count(free, at + ".free_bytes")}
    return {"items": items, "total_bytes": sum(item["bytes"] or 0 for item in items),
            "present": sum(1 for item in items if item["present"]),
            "unknown": [item["name"] for item in items if item["bytes"] is None],
            "by_filesystem": filesystems}


def disk_check(by_filesystem, reserve_mib=0):
    """What each filesystem must hold against what it has free.

    ``by_filesystem`` is ``download_table()['by_filesystem']``: the bytes the run fetches onto
    each filesystem and its free bytes. The need is those bytes (rounded up to MiB) plus
    ``reserve_mib``. Returns ``[{filesystem, bytes, required_mib, free_mib, ok}]``; an
    unknown free space is not ok.
    """
    if not isinstance(by_filesystem, dict):
        raise ValueError("by_filesystem must be a dict of mount point: {bytes, free_bytes}; "
                         "got: %r" % (by_filesystem,))
    if not is_int(reserve_mib) or reserve_mib < 0:
        raise ValueError("preflight_disk_reserve_mib must be an integer >= 0; got: %r"
                         % (reserve_mib,))
    result = []
    for mount, entry in sorted(by_filesystem.items()):
        required = math.ceil(entry["bytes"] / float(MIB)) + reserve_mib
        free = entry.get("free_bytes")
        free_mib = None if free is None else free // MIB
        result.append({"filesystem": mount, "bytes": entry["bytes"], "required_mib": required,
                       "free_mib": free_mib,
                       "ok": free is not None and free >= entry["bytes"] + reserve_mib * MIB})
    return result


# ---- GPU 1 in mixed mode, vLLM's start rule -----------------------------------------------

def _managed(name, patterns):
    name = str(name or "").lower()
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def _gpu_by_index(gpus):
    if not isinstance(gpus, list):
        raise ValueError("gpus must be a list of GPU facts; got: %r" % (gpus,))
    found = {}
    for i, gpu in enumerate(gpus):
        if not isinstance(gpu, dict):
            raise ValueError("gpus[%d] must be a GPU fact (a dict); got: %r" % (i, gpu))
        index = gpu.get("index")
        if index is None and gpu.get("healthy") is False:
            continue  # fell off the bus: nothing is placed on it (build_report names it)
        if not is_int(index) or index < 0:
            raise ValueError("gpus[%d].index must be an integer >= 0; got: %r" % (i, index))
        found[index] = gpu
    return found


def _available_mib(gpu, patterns):
    """Free memory plus what our own engines already hold (a re-run must not count them)."""
    free = gpu.get("memory_free_mib")
    if free is None:
        return None
    ours = sum(p.get("used_memory_mib") or 0 for p in gpu.get("processes") or []
               if isinstance(p, dict) and _managed(p.get("name"), patterns))
    return free + ours


def _placed(services_plan):
    if not isinstance(services_plan, dict) or not isinstance(services_plan.get("services"), list):
        raise ValueError("services_plan must be the fact set by the gpufleet.inference.services "
                         "role; got: %r" % (services_plan,))
    placed = []
    for service in services_plan["services"]:
        where = service.get("placement") if isinstance(service, dict) else None
        if service.get("active") and isinstance(where, dict) \
                and where.get("gpu_index") is not None:
            placed.append(service)
    return placed


def gpu_memory_check(services_plan, gpus, managed_processes=("ollama", "*vllm*")):
    """Mixed mode's GPU 1 check and vLLM's start rule, from the placement budgets.

    Mixed mode needs room on GPU 1 for both of its tenants: the need is the sum of the
    budgets of the services placed on the GPU (ollama_research + vllm by default), compared
    with its free memory plus what our own engines already hold. For every vLLM, free memory
    when it starts (after the co-tenants started before it) must be at least
    gpu_memory_utilization x total (vllm#20305). Returns ``{gpus, warnings}``; nothing blocks.
    """
    patterns = [str(p).lower() for p in managed_processes or []]
    by_index = _gpu_by_index(gpus)
    mode = services_plan.get("dual_gpu_mode") if isinstance(services_plan, dict) else None
    placed = _placed(services_plan)
    groups = {}
    for service in placed:
        groups.setdefault(service["placement"]["gpu_index"], []).append(service)
    report = []
    warnings = []
    for index in sorted(groups):
        services = groups[index]
        gpu = by_index.get(index)
        need = sum(s["placement"].get("vram_budget_mib") or 0 for s in services)
        available = None if gpu is None else _available_mib(gpu, patterns)
        total = None if gpu is None else gpu.get("memory_total_mib")
        names = [s["name"] for s in services]
        entry = {"gpu_index": index, "services": names, "need_mib": need,
                 "available_mib": available, "total_mib": total, "ok": True, "vllm": []}
        if available is None and gpu is not None:
            warnings.append("GPU %d free memory unknown: the budgets of %s (%.1f GB) are not "
                            "checked against it." % (index, " + ".join(names), need / 1024.0))
        if available is not None and need > available:
            entry["ok"] = False
            if mode == "mixed" and len(services) > 1:
                warnings.append(
                    "DUAL_GPU_MODE=mixed: GPU %d has only %.1f GB free; %s need %.1f GB "
                    "(their budgets). Running them together may cause OOM. Consider "
                    "DUAL_GPU_MODE=ollama or DUAL_GPU_MODE=vllm instead."
                    % (index, available / 1024.0, " + ".join(names), need / 1024.0))
            else:
                warnings.append("GPU %d has only %.1f GB free; %s need %.1f GB (their budgets)."
                                % (index, available / 1024.0, " + ".join(names),
                                   need / 1024.0))
        started = [s for s in services if s.get("engine") != "vllm"]
        for service in services:
            if service.get("engine") != "vllm":
                continue
            settings = service["placement"].get("engine_settings") or {}
            util = settings.get("gpu_memory_utilization")
            rule = {"service": service["name"], "gpu_memory_utilization": util,
                    "needed_mib": None, "free_at_start_mib": None, "ok": None}
            if util is not None and total and available is not None:
                needed = math.ceil(float(util) * total)
                free_at_start = available - sum(s["placement"].get("vram_budget_mib") or 0
                                                for s in started)
                rule.update(needed_mib=needed, free_at_start_mib=free_at_start,
                            ok=free_at_start >= needed)
                if free_at_start < needed:
                    entry["ok"] = False
                    warnings.append(
                        "%s: vLLM starts only when free memory >= gpu_memory_utilization x "
                        "total (%.2f x %d = %d MiB), but GPU %d will have %d MiB free when it "
                        "starts." % (service["name"], float(util), total, needed, index,
                                     free_at_start))
            entry["vllm"].append(rule)
            started.append(service)
        report.append(entry)
    return {"gpus": report, "warnings": warnings}


# ---- the preflight_facts module's options -------------------------------------------------

MAX_TOOL_TIMEOUT_S = 3600


def check_facts_options(ports, paths, nvidia_smi_timeout):
    """The options of preflight_facts, checked before anything is read."""
    for i, port in enumerate(ports or []):
        if not is_int(port) or not 1 <= port <= 65535:
            raise ValueError("ports[%d] must be 1-65535; got: %r" % (i, port))
    for i, path in enumerate(paths or []):
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("paths[%d] must be an absolute path; got: %r" % (i, path))
    if not is_int(nvidia_smi_timeout) or not 1 <= nvidia_smi_timeout <= MAX_TOOL_TIMEOUT_S:
        raise ValueError("nvidia_smi_timeout must be 1-%d seconds; got: %r"
                         % (MAX_TOOL_TIMEOUT_S, nvidia_smi_timeout))


# ---- inventory values: the paths a systemd unit carries, the rollout's batches -------------

def check_unit_paths(paths):
    """``{variable name: path}``, each checked by :func:`check_unit_path`: True or ValueError.

    The systemd_units role's preflight gives it every path its units carry (the executables,
    the instance, model and Hugging Face directories) and the unit directory, before anything
    is written.
    """
    if not isinstance(paths, dict):
        raise ValueError("paths must be a dict of variable name: path; got: %r" % (paths,))
    for where, value in paths.items():
        check_unit_path(value, where)
    return True


_SERIAL_RE = re.compile(r"([0-9]+)(%?)")
_SERIAL_RULE = ("must be a count, a percentage like '25%' or a list of them (a count at least "
                "1, a percentage 1-100%)")


def _serial_item_ok(item):
    if is_int(item):
        return item >= 1
    match = _SERIAL_RE.fullmatch(item) if isinstance(item, str) else None
    if not match:
        return False
    number = int(match.group(1))
    return 1 <= number <= 100 if match.group(2) else number >= 1


def check_serial(serial, where="gpufleet_serial"):
    """The batches of a rollout (the play keyword ``serial``): True or ValueError.

    A count of hosts (at least 1; a number's text counts, as ``-e`` gives it), a percentage of
    them (1-100%, ``'25%'``) or a non-empty list of those. Ansible itself takes 0 and a
    percentage over 100 as every host at once (no canary, no batches), and fails on other
    shapes only after the hosts are known. The message shows the value as ``-e`` would say it
    (``gpufleet_serial=0``), and which item of a list is wrong.
    """
    if isinstance(serial, (list, tuple)):
        bad = [i for i, item in enumerate(serial) if not _serial_item_ok(item)]
        if serial and not bad:
            return True
        why = " (item %d: %r)" % (bad[0], serial[bad[0]]) if bad else " (an empty list)"
        shown = "%r%s" % (list(serial), why)
    elif _serial_item_ok(serial):
        return True
    else:
        printable = isinstance(serial, str) and serial and serial.isprintable()
        shown = serial if printable else repr(serial)
    raise ValueError("%s %s; got: %s=%s" % (where, _SERIAL_RULE, where, shown))


# ---- ports ------------------------------------------------------------------------------

def _hex_ipv4(text):
    raw = bytes.fromhex(text)
    return ".".join(str(b) for b in reversed(raw))


def _hex_ipv6(text):
    raw = bytes.fromhex(text)
    # Four 32-bit words, each in host (little-endian) order.
    address = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    if address.ipv4_mapped is not None:
        return "::ffff:%s" % address.ipv4_mapped
    return address.compressed


def parse_proc_net_tcp(text, family="ipv4"):
    """Listening sockets of a /proc/net/tcp (``family=ipv4``) or tcp6 (``ipv6``) text.

    Returns ``[{port, address, family, inode}]``; raises ValueError naming the line.
    """
    if family not in ("ipv4", "ipv6"):
        raise ValueError("family must be ipv4 or ipv6; got: %r" % (family,))
    if not isinstance(text, str):
        raise ValueError("text must be the content of /proc/net/tcp; got: %r" % (text,))
    listeners = []
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        if len(fields) < 10 or ":" not in fields[1]:
            raise ValueError("/proc/net/tcp line %d is not a socket line; got: %r"
                             % (number + 1, line))
        if fields[3].upper() != _TCP_LISTEN:
            continue
        address, port = fields[1].rsplit(":", 1)
        try:
            listeners.append({
                "port": int(port, 16),
                "address": _hex_ipv4(address) if family == "ipv4" else _hex_ipv6(address),
                "family": family, "inode": int(fields[9]),
            })
        except ValueError as exc:
            raise ValueError("/proc/net/tcp line %d has a bad address or inode; got: %r"
                             % (number + 1, line)) from exc
    return listeners


def socket_inode(link):
    """The inode of a ``socket:[12345]`` fd link, or None for any other link."""
    match = _SOCKET_LINK_RE.match(link or "")
    return int(match.group(1)) if match else None


def port_report(ports, listeners, owners=None):
    """Who holds each wanted port.

    ``ports`` is ``[{service, port, active}]``; ``listeners`` the output of
    :func:`parse_proc_net_tcp`; ``owners`` maps an inode to ``{pid, process}``. Returns
    ``[{service, port, active, held, holders: [{address, family, pid, process}]}]``.
    """
    if not isinstance(ports, list):
        raise ValueError("ports must be a list of {service, port}; got: %r" % (ports,))
    owners = owners or {}
    result = []
    for i, wanted in enumerate(ports):
        if not isinstance(wanted, dict):
            raise ValueError("ports[%d] must be a dict; got: %r" % (i, wanted))
        port = wanted.get("port")
        if not is_int(port) or not 1 <= port <= 65535:
            raise ValueError("ports[%d].port must be 1-65535; got: %r" % (i, port))
        holders = []
        for listener in listeners:
            if listener["port"] != port:
                continue
            owner = owners.get(listener["inode"]) or owners.get(str(listener["inode"])) or {}
            holders.append({"address": listener["address"], "family": listener["family"],
                            "pid": owner.get("pid"), "process": owner.get("process")})
        result.append({"service": wanted.get("service"), "port": port,
                       "active": bool(wanted.get("active", True)), "held": bool(holders),
                       "holders": holders})
    return result


def port_conflicts(report, ignore_processes=()):
    """Ports held by a process that is not one of ours: ``[{service, port, active, text}]``."""
    patterns = [str(p).lower() for p in ignore_processes or []]
    conflicts = []
    for entry in report:
        foreign = [h for h in entry["holders"]
                   if h.get("process") is None or not _managed(h["process"], patterns)]
        if not foreign:
            continue
        who = ", ".join("%s (pid %s) on %s" % (h.get("process") or "unknown process",
                                               h.get("pid") if h.get("pid") is not None
                                               else "unknown", h["address"])
                        for h in foreign)
        conflicts.append({"service": entry["service"], "port": entry["port"],
                          "active": entry["active"],
                          "text": "port %d (%s) is held by %s" % (entry["port"],
                                                                  entry["service"], who)})
    return conflicts


# ---- summary ----------------------------------------------------------------------------

def download_lines(table):
    """The download table of the summary (nothing without a downloads result)."""
    if table is None:
        return []
    items = table["items"]
    if not items:
        return ["Downloads: nothing to fetch"]
    lines = ["Downloads (what this run fetches)"]
    width = max(len(item["name"]) for item in items)
    for item in items:
        lines.append("  %-11s  %-*s  %-8s  -> %s  (%s)" % (
            item["kind"], width, item["name"],
            "present" if item["present"] else
            "unknown" if item["bytes"] is None else size_text(item["bytes"]),
            item["filesystem"] or "?", ", ".join(item["services"])))
    total = size_text(table["total_bytes"]) if table["total_bytes"] else "nothing"
    lines.append("  Total: %s to fetch (%d of %d already present)"
                 % (total, table["present"], len(items)))
    return lines


def summary_lines(report):
    """The readable block of one host, from the ``preflight_report`` the role builds."""
    lines = ["Preflight %s" % report.get("host", "")]
    lines.append("Profile: %s (recommended: %s, %d GPU(s))%s" % (
        report.get("profile"), report.get("recommended_profile"), report.get("gpu_count", 0),
        ", DUAL_GPU_MODE=%s" % report["dual_gpu_mode"] if report.get("profile") in MODE_PROFILES
        else ""))
    for item in report.get("checks") or []:
        status = "ok" if item["ok"] else ("WARN" if item.get("warn_only") else "FAIL")
        lines.append("%-5s %s" % (status, item["text"]))
    lines.extend(download_lines(report.get("downloads")))
    for warning in report.get("warnings") or []:
        lines.append("warning: %s" % warning)
    return [line.rstrip() for line in lines]


# ---- the report -------------------------------------------------------------------------

REPORT_OPTIONS = {
    "remote": False,
    "disk_reserve_mib": 0,
    "ignore_port_processes": [],
    "managed_processes": ["ollama", "*vllm*"],
    "toolkit_binaries": ["nvidia-container-toolkit", "nvidia-container-runtime-hook",
                         "nvidia-ctk"],
    "runtime_binaries": ["docker", "podman"],
    "runtime": None,
    "warn_only": [],
}
RUNTIMES = ("compose", "systemd", "podman")
# The processes that hold a container's published port on the host: Docker's docker-proxy;
# Podman's conmon (rootful: it keeps the port open for the container) and rootlessport. Ours
# only where the runtime runs such containers: the systemd runtime stops no container, and the
# podman runtime no compose project.
CONTAINER_PORT_PROXIES = ("docker-proxy", "rootlessport", "conmon")
RUNTIME_PORT_PROXIES = {"compose": CONTAINER_PORT_PROXIES, "systemd": (),
                        "podman": ("rootlessport", "conmon")}
CHECKS = ("ports", "disk", "driver", "toolkit", "runtime", "gpu_memory", "persistence")


def service_ports(services_plan):
    """``[{service, port, active}]``: the published ports of every enabled service."""
    if not isinstance(services_plan, dict) or not isinstance(services_plan.get("services"), list):
        raise ValueError("services_plan must be the fact set by the gpufleet.inference.services "
                         "role; got: %r" % (services_plan,))
    ports = []
    for service in services_plan["services"]:
        for port in service.get("ports") or []:
            if (port.get("protocol") or "tcp") == "tcp":
                ports.append({"service": service["name"], "port": port["host"],
                              "active": bool(service.get("active"))})
    return ports


def cdi_kinds(specs):
    """``{kind: [paths]}`` of CDI specs given as ``{path: parsed spec}``
    (``_verify.parse_cdi_spec``): the top-level ``kind`` of each (CDI ``SPEC.md``), sorted; a
    spec without one is left out."""
    kinds = {}
    for path in sorted(specs):
        kind = specs[path].get("kind") if isinstance(specs[path], dict) else None
        if isinstance(kind, str) and kind:
            kinds.setdefault(kind, []).append(path)
    return kinds


def _check_report_options(options):
    options = known_keys(options, REPORT_OPTIONS, "options")
    opts = dict(REPORT_OPTIONS)
    opts.update({k: v for k, v in options.items() if v is not None})
    if not isinstance(opts["warn_only"], list):
        raise ValueError("preflight_warn_only must be a list of check names; got: %r"
                         % (opts["warn_only"],))
    for i, name in enumerate(opts["warn_only"]):
        if name not in CHECKS:
            raise ValueError("preflight_warn_only[%d] must be one of %s; got: %r"
                             % (i, ", ".join(CHECKS), name))
    if not isinstance(opts["remote"], bool):
        raise ValueError("preflight_remote must be a boolean; got: %r" % (opts["remote"],))
    if not is_int(opts["disk_reserve_mib"]) or opts["disk_reserve_mib"] < 0:
        raise ValueError("preflight_disk_reserve_mib must be an integer >= 0; got: %r"
                         % (opts["disk_reserve_mib"],))
    if opts["runtime"] not in (None, "", *RUNTIMES):
        raise ValueError("preflight_runtime must be one of %s (or empty); got: %r"
                         % (", ".join(RUNTIMES), opts["runtime"]))
    for key, where in (("ignore_port_processes", "preflight_ignore_port_processes"),
                       ("managed_processes", "managed_processes"),
                       ("toolkit_binaries", "toolkit_binaries"),
                       ("runtime_binaries", "runtime_binaries")):
        value = opts[key]
        if not isinstance(value, (list, tuple)):
            raise ValueError("%s must be a list of names; got: %r" % (where, value))
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ValueError("%s[%d] must be a non-empty string; got: %r" % (where, i, item))
    return opts


ROLE_OPTIONS = ("env_file", "nvidia_smi_timeout", "download_kinds")
DOWNLOAD_KINDS = ("image", "ollama", "huggingface")


def check_options(options, role_options=None):
    """The preflight role's options, checked before the role reads or writes anything.

    ``options`` are the report options (:func:`build_report`); ``role_options`` the role's
    other options, each checked when given: ``env_file`` (the .env path, absolute),
    ``nvidia_smi_timeout`` (seconds, 1-3600; a number's text counts, as ``-e`` gives it) and
    ``download_kinds`` (the kinds of download the run checks: image, ollama, huggingface).
    """
    _check_report_options(options)
    role_options = known_keys(role_options, ROLE_OPTIONS, "role_options")
    if "env_file" in role_options:
        path = role_options["env_file"]
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("preflight_env_file must be an absolute path; got: %r" % (path,))
    if "nvidia_smi_timeout" in role_options:
        value = role_options["nvidia_smi_timeout"]
        number = int(value) if isinstance(value, str) and ascii_digits(value.strip()) else value
        if not is_int(number) or not 1 <= number <= MAX_TOOL_TIMEOUT_S:
            raise ValueError("preflight_nvidia_smi_timeout must be 1-%d seconds; got: %r"
                             % (MAX_TOOL_TIMEOUT_S, value))
    if "download_kinds" in role_options:
        kinds = role_options["download_kinds"]
        if not isinstance(kinds, list):
            raise ValueError("preflight_download_kinds must be a list of %s; got: %r"
                             % (", ".join(DOWNLOAD_KINDS), kinds))
        for i, kind in enumerate(kinds):
            if kind not in DOWNLOAD_KINDS:
                raise ValueError("preflight_download_kinds[%d] must be one of %s; got: %r"
                                 % (i, ", ".join(DOWNLOAD_KINDS), kind))
    return True


def _check(checks, opts, name, ok, text):
    checks.append({"check": name, "ok": bool(ok), "warn_only": name in opts["warn_only"],
                   "text": text})


def build_report(host, services_plan, gpus, host_facts, dual_gpu_mode=None, options=None,
                 downloads=None):
    """Everything preflight found on one host, and whether it may go on.

    ``host_facts`` is ``ansible_facts.preflight_host`` (the preflight_facts module);
    ``dual_gpu_mode`` the result of :func:`dual_gpu_mode_plan`; ``downloads`` the planned
    result of gpufleet.inference.downloads (None or skipped: no table, no disk check). A
    check that fails blocks (``ok: false``) unless its name is in ``warn_only``; the
    mixed-mode GPU check and the persistence mode only ever warn.
    """
    opts = _check_report_options(options)
    if not isinstance(host_facts, dict):
        raise ValueError("host_facts must be ansible_facts.preflight_host; got: %r"
                         % (host_facts,))
    if not isinstance(gpus, list):
        raise ValueError("gpus must be a list of GPU facts; got: %r" % (gpus,))
    healthy = [g for g in gpus if isinstance(g, dict) and g.get("healthy") is not False]
    profile = services_plan.get("profile") if isinstance(services_plan, dict) else None
    mode = services_plan.get("dual_gpu_mode") or "ollama"
    recommended = recommend_profile(len(healthy), bool(opts["remote"]))
    checks = []
    warnings = list(services_plan.get("warnings") or [])
    # A GPU that fell off the bus: named with its errors (once, when the plan said it too).
    warnings.extend(w for w in unhealthy_warnings(gpus) if w not in warnings)
    # Ports: an active service's port held by someone else blocks; an inactive one warns.
    host_ports = {p["port"]: p for p in host_facts.get("ports") or []}
    wanted = service_ports(services_plan)
    report = []
    for item in wanted:
        holders = list((host_ports.get(item["port"]) or {}).get("holders") or [])
        report.append(dict(item, held=bool(holders), holders=holders))
    ignore = opts["ignore_port_processes"]
    ours = RUNTIME_PORT_PROXIES.get(opts["runtime"], CONTAINER_PORT_PROXIES)
    ignore = [p for p in ignore
              if str(p).lower() not in CONTAINER_PORT_PROXIES or str(p).lower() in ours]
    conflicts = port_conflicts(report, ignore)
    if opts["runtime"] in ("systemd", "podman") and any(
            h.get("process") in CONTAINER_PORT_PROXIES and h.get("process") not in ours
            for c in conflicts for h in (host_ports.get(c["port"]) or {}).get("holders") or []):
        warnings.append("a container publishes a port the %s services need: the %s runtime "
                        "does not stop containers it did not start (take the compose project "
                        "down first, for example docker compose down in its directory)"
                        % (opts["runtime"], opts["runtime"]))
    blocking = [c for c in conflicts if c["active"]]
    for conflict in conflicts:
        if not conflict["active"]:
            warnings.append(conflict["text"] + " (the service does not run in this profile)")
    _check(checks, opts, "ports", not blocking,
           "; ".join(c["text"] for c in blocking) if blocking else
           "ports free: %s" % (", ".join(str(p["port"]) for p in wanted if p["active"])
                               or "none needed"))
    # Downloads and disks: what the run fetches onto each filesystem, plus the reserve.
    table = download_table(downloads)
    disks = []
    if table is not None:
        disks = disk_check(table["by_filesystem"], opts["disk_reserve_mib"])
        if table["unknown"]:
            warnings.append("the size of %s is unknown (its registry could not be read): the "
                            "disk check does not count it" % ", ".join(table["unknown"]))
        for item in disks:
            _check(checks, opts, "disk", item["ok"],
                   "disk at %s: %s MiB needed (%s to fetch, %s MiB reserve), %s MiB free" % (
                       item["filesystem"], item["required_mib"],
                       size_text(item["bytes"]) if item["bytes"] else "nothing",
                       opts["disk_reserve_mib"],
                       "unknown" if item["free_mib"] is None else item["free_mib"]))
    # Driver, container toolkit and runtime for the GPU profiles.
    binaries = host_facts.get("binaries") or {}
    gpu_profile = profile in GPU_PROFILES
    if gpu_profile:
        nvidia = [g for g in healthy if (g.get("vendor") or "nvidia") == "nvidia"]
        drivers = sorted({str(g.get("driver_version")) for g in healthy
                          if g.get("driver_version")})
        _check(checks, opts, "driver", bool(drivers),
               "GPU driver %s" % ", ".join(drivers) if drivers
               else "no GPU driver reported a version")
        if nvidia and opts["runtime"] == "podman":
            specs = (host_facts.get("cdi") or {}).get(CDI_KIND) or []
            _check(checks, opts, "toolkit", bool(specs),
                   "NVIDIA CDI spec: %s" % ", ".join(specs) if specs else
                   "no CDI spec describes %s in /etc/cdi or /var/run/cdi: Podman gives a "
                   "container its GPUs as CDI devices (nvidia-ctk cdi generate "
                   "--output=/etc/cdi/nvidia.yaml)" % CDI_KIND)
        elif nvidia:
            found = [b for b in opts["toolkit_binaries"] if binaries.get(b)]
            _check(checks, opts, "toolkit", bool(found),
                   "NVIDIA container toolkit: %s" % ", ".join(found) if found else
                   "NVIDIA container toolkit not found (none of %s)"
                   % ", ".join(opts["toolkit_binaries"]))
        wanted = (["podman"] if opts["runtime"] == "podman" else opts["runtime_binaries"])
        runtimes = [b for b in wanted if binaries.get(b)]
        _check(checks, opts, "runtime", bool(runtimes),
               "container runtime: %s" % ", ".join(runtimes) if runtimes else
               "no container runtime found (none of %s)" % ", ".join(wanted))
    # GPU memory: budgets against free memory, vLLM's start rule (warn only).
    memory = {"gpus": [], "warnings": []}
    if gpu_profile:
        memory = gpu_memory_check(services_plan, gpus, opts["managed_processes"])
        # The placement words vLLM's start rule already (with more detail): say it once.
        warnings.extend(w for w in memory["warnings"]
                        if not any(o.startswith(w.rstrip(".")) for o in warnings))
    nvidia_facts = host_facts.get("nvidia") or {}
    disabled = [m["index"] for m in nvidia_facts.get("persistence_mode") or []
                if str(m.get("persistence_mode")).lower() == "disabled"]
    if disabled:
        warnings.append("persistence mode is off on GPU %s: nvidia-smi can take ~30 s per call "
                        "on multi-GPU hosts (nvidia-smi -pm 1, or nvidia-persistenced)"
                        % ", ".join(str(i) for i in disabled))
    if nvidia_facts.get("error"):
        warnings.append(nvidia_facts["error"])
    if profile not in (None, recommended):
        warnings.append("profile %s differs from the recommended %s (%d healthy GPU(s))"
                        % (profile, recommended, len(healthy)))
    if isinstance(dual_gpu_mode, dict) and dual_gpu_mode.get("existing") not in (None, mode):
        warnings.append(".env says DUAL_GPU_MODE=%s but the inventory's mode is %s"
                        % (dual_gpu_mode["existing"], mode))
    failed = [c for c in checks if not c["ok"] and not c["warn_only"]]
    result = {
        "host": host, "profile": profile, "recommended_profile": recommended,
        "dual_gpu_mode": mode, "gpu_count": len(healthy),
        "env_written": bool(isinstance(dual_gpu_mode, dict) and dual_gpu_mode.get("write")),
        "checks": checks, "ports": report, "downloads": table, "disks": disks,
        "gpu_memory": memory["gpus"], "warnings": warnings, "failed": [c["text"] for c in failed],
        "ok": not failed,
    }
    result["summary"] = summary_lines(result)
    return result
