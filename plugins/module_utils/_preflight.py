# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what preflight decides before anything starts.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule: the ``preflight_facts`` module uses the /proc parsers, the preflight role's
filters use the rest. Bad input raises ValueError naming the field and its value
(``preflight_size_table[2].size_mb must be an integer >= 0; got: -5``).

What it covers (seed 000, "scripts/preflight.py")
  profile         the recommended profile (``_plan.recommend_profile``): cpu, single-gpu,
                  dual-gpu, multi-gpu, or remote when the inventory says inference runs elsewhere.
  downloads       the first-run download size from a size table (seed 000's is the default), the
                  active profile and DUAL_GPU_MODE: images and model weights listed apart, a
                  model directory shared by several servers counted once.
  disks           what each filesystem must hold against what it has free.
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
    dotenv_get,
    is_int,
    known_keys,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._plan import (
    GPU_PROFILES,
    MODE_PROFILES,
    MODES,
    PROFILES,
    recommend_profile,
)

KINDS = ("image", "model")
SIZE_KEYS = ("name", "kind", "size_mb", "profiles", "modes", "services", "dir", "note")
# Seed 000's "Size table (used by the warning calculator)", in MB.
DEFAULT_SIZE_TABLE = (
    {"name": "ollama/ollama", "kind": "image", "size_mb": 800,
     "profiles": ["cpu", "single-gpu", "dual-gpu", "multi-gpu"], "dir": "images",
     "note": "shared by ollama + ollama_research"},
    {"name": "searxng/searxng", "kind": "image", "size_mb": 300, "dir": "images"},
    {"name": "app (Python build)", "kind": "image", "size_mb": 1500, "dir": "images"},
    {"name": "vision service", "kind": "image", "size_mb": 3000,
     "profiles": ["single-gpu", "dual-gpu", "multi-gpu"], "dir": "images",
     "note": "single-gpu and above"},
    {"name": "vllm/vllm-openai", "kind": "image", "size_mb": 10000,
     "profiles": ["dual-gpu", "multi-gpu"], "modes": ["vllm", "mixed"], "dir": "images",
     "note": "vllm / mixed mode only"},
    {"name": "llama3.2:3b", "kind": "model", "size_mb": 2000,
     "profiles": ["cpu", "single-gpu", "dual-gpu", "multi-gpu"], "dir": "models",
     "note": "shared model directory: ollama + ollama_research download it once"},
    {"name": "moondream2", "kind": "model", "size_mb": 1800,
     "profiles": ["single-gpu", "dual-gpu", "multi-gpu"], "dir": "vision_cache",
     "note": "vision container cache"},
)

# /proc/net/tcp: "sl local_address rem_address st ..."; st 0A is LISTEN.
_TCP_LISTEN = "0A"
_SOCKET_LINK_RE = re.compile(r"^socket:\[(\d+)\]$")


def gb_text(mb):
    """MB as seed 000 prints sizes: 800 -> '800 MB', 1500 -> '1.5 GB', 10000 -> '10.0 GB'."""
    if mb < 1000:
        return "%d MB" % mb
    return "%.1f GB" % (mb / 1000.0)


# ---- profile and .env -------------------------------------------------------------------

def dual_gpu_mode_plan(gpu_count, existing_text, default="ollama", remote=False):
    """Seed 000: write DUAL_GPU_MODE=<default> into .env on the first setup of a 2-GPU host.

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

def _names(entry, key, at, allowed=None):
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("%s.%s must be a list of names; got: %r" % (at, key, value))
    for i, item in enumerate(value):
        if allowed is not None and item not in allowed:
            raise ValueError("%s.%s[%d] must be one of %s; got: %r"
                             % (at, key, i, ", ".join(allowed), item))
    return list(value)


def check_size_table(table, where="preflight_size_table"):
    """Check the size table; returns it with every key filled in."""
    if not isinstance(table, (list, tuple)) or not table:
        raise ValueError("%s must be a non-empty list of components; got: %r" % (where, table))
    checked = []
    for i, entry in enumerate(table):
        at = "%s[%d]" % (where, i)
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, entry))
        unknown = sorted(set(entry) - set(SIZE_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("%s.name must be a non-empty string; got: %r" % (at, name))
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ValueError("%s.kind must be one of %s; got: %r" % (at, ", ".join(KINDS), kind))
        size = entry.get("size_mb")
        if not is_int(size) or size < 0:
            raise ValueError("%s.size_mb must be an integer >= 0; got: %r" % (at, size))
        directory = entry.get("dir") or ("images" if kind == "image" else "models")
        if not isinstance(directory, str):
            raise ValueError("%s.dir must be a key of preflight_dirs; got: %r" % (at, directory))
        note = entry.get("note")
        if note is not None and not isinstance(note, str):
            raise ValueError("%s.note must be a string; got: %r" % (at, note))
        checked.append({
            "name": name.strip(), "kind": kind, "size_mb": size,
            "profiles": _names(entry, "profiles", at, PROFILES),
            "modes": _names(entry, "modes", at, MODES),
            "services": _names(entry, "services", at), "dir": directory, "note": note,
        })
    return checked


def _needed(entry, profile, mode, active):
    if entry["profiles"] is not None and profile not in entry["profiles"]:
        return False
    if entry["modes"] is not None and profile in MODE_PROFILES and mode not in entry["modes"]:
        return False
    if entry["services"] is not None and active is not None and \
            not set(entry["services"]) & set(active):
        return False
    return True


def download_plan(table, profile, mode="ollama", dirs=None, active=None):
    """The first-run downloads for ``profile`` and ``mode``.

    ``dirs`` maps a table entry's ``dir`` key (images, models, vision_cache...) to a host path;
    ``active`` (optional) the names of the services that run, for entries with ``services``.
    A component listed twice for one directory (a model two servers share) is counted once.
    Returns ``{profile, mode, images, models, images_mb, models_mb, total_mb, by_path}``.
    """
    checked = check_size_table(table)
    if profile not in PROFILES:
        raise ValueError("profile must be one of %s; got: %r" % (", ".join(PROFILES), profile))
    if mode not in MODES:
        raise ValueError("mode must be one of %s; got: %r" % (", ".join(MODES), mode))
    dirs = dirs or {}
    if not isinstance(dirs, dict):
        raise ValueError("preflight_dirs must be a dict of key: path; got: %r" % (dirs,))
    if active is not None and not isinstance(active, list):
        raise ValueError("active must be a list of service names; got: %r" % (active,))
    lists = {"image": [], "model": []}
    seen = set()
    by_path = {}
    for i, entry in enumerate(checked):
        if not _needed(entry, profile, mode, active):
            continue
        path = dirs.get(entry["dir"])
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ValueError("preflight_dirs.%s must be an absolute path; got: %r"
                             % (entry["dir"], path))
        if path is None and dirs:
            raise ValueError("preflight_size_table[%d].dir is not a key of preflight_dirs (%s); "
                             "got: %r" % (i, ", ".join(sorted(dirs)), entry["dir"]))
        key = (entry["kind"], entry["name"], path or entry["dir"])
        if key in seen:
            continue
        seen.add(key)
        lists[entry["kind"]].append({"name": entry["name"], "size_mb": entry["size_mb"],
                                     "dir": entry["dir"], "path": path, "note": entry["note"]})
        if path is not None:
            by_path[path] = by_path.get(path, 0) + entry["size_mb"]
    images_mb = sum(item["size_mb"] for item in lists["image"])
    models_mb = sum(item["size_mb"] for item in lists["model"])
    return {"profile": profile, "mode": mode, "images": lists["image"],
            "models": lists["model"], "images_mb": images_mb, "models_mb": models_mb,
            "total_mb": images_mb + models_mb, "by_path": by_path}


def disk_check(by_path, disks, reserve_mib=0):
    """Sum what each filesystem must hold and compare it with its free space.

    ``by_path`` is ``download_plan()['by_path']`` (MB); ``disks`` the ``disks`` list of the
    preflight_facts module (``path``, ``device``, ``free_bytes``). Paths on one filesystem
    (same device) are added up. Returns one entry per filesystem:
    ``{device, paths, required_mib, free_mib, ok}``.
    """
    if not isinstance(by_path, dict):
        raise ValueError("by_path must be a dict of path: MB; got: %r" % (by_path,))
    if not is_int(reserve_mib) or reserve_mib < 0:
        raise ValueError("preflight_disk_reserve_mib must be an integer >= 0; got: %r"
                         % (reserve_mib,))
    if not isinstance(disks, list):
        raise ValueError("disks must be the disks list of preflight_facts; got: %r" % (disks,))
    known = {}
    for i, disk in enumerate(disks):
        if not isinstance(disk, dict) or not isinstance(disk.get("path"), str):
            raise ValueError("disks[%d] must be a dict with path; got: %r" % (i, disk))
        free = disk.get("free_bytes")
        if free is not None and (not is_int(free) or free < 0):
            raise ValueError("disks[%d].free_bytes must be an integer >= 0; got: %r" % (i, free))
        known[disk["path"]] = disk
    groups = {}
    for path, size_mb in sorted(by_path.items()):
        if not is_int(size_mb) or size_mb < 0:
            raise ValueError("by_path[%r] must be an integer >= 0; got: %r" % (path, size_mb))
        disk = known.get(path)
        if disk is None:
            raise ValueError("disks has no entry for %s (checked: %s); got: %r"
                             % (path, ", ".join(sorted(known)) or "none", path))
        device = disk.get("device")
        key = device if device is not None else "path:" + path
        group = groups.setdefault(key, {"device": device, "paths": [], "required_mb": 0,
                                        "free_bytes": disk.get("free_bytes")})
        group["paths"].append(path)
        group["required_mb"] += size_mb
    result = []
    for group in groups.values():
        # The table is in MB (10^6 bytes), free space in bytes: compare in MiB, rounded up.
        required = math.ceil(group["required_mb"] * 1000000 / 1048576.0) + reserve_mib
        free = None if group["free_bytes"] is None else group["free_bytes"] // 1048576
        result.append({"device": group["device"], "paths": group["paths"],
                       "required_mib": required, "free_mib": free,
                       "ok": free is not None and free >= required})
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
        if not isinstance(gpu, dict) or not is_int(gpu.get("index")):
            raise ValueError("gpus[%d] must be a GPU fact with an index; got: %r" % (i, gpu))
        found[gpu["index"]] = gpu
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

    Seed 000 warns when GPU 1 has < 12 GB free in mixed mode; here the need is the sum of the
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
    downloads = report.get("downloads")
    if downloads:
        lines.append("Download sizes (first-run estimates)")
        lines.append("  Docker images")
        for item in downloads["images"]:
            note = "  (%s)" % item["note"] if item["note"] else ""
            lines.append("    %-24s ~%-8s%s" % (item["name"], gb_text(item["size_mb"]), note))
        lines.append("  Model weights (lazy-loaded on first use)")
        for item in downloads["models"]:
            lines.append("    %-24s ~%-8s -> %s%s" % (
                item["name"], gb_text(item["size_mb"]), item["path"] or item["dir"],
                "  (%s)" % item["note"] if item["note"] else ""))
        lines.append("  Total first-run: ~%s (images %s, models %s; models persist between "
                     "restarts)" % (gb_text(downloads["total_mb"]),
                                    gb_text(downloads["images_mb"]),
                                    gb_text(downloads["models_mb"])))
    for warning in report.get("warnings") or []:
        lines.append("warning: %s" % warning)
    return [line.rstrip() for line in lines]


# ---- the report -------------------------------------------------------------------------

REPORT_OPTIONS = {
    "size_table": DEFAULT_SIZE_TABLE,
    "dirs": {},
    "remote": False,
    "disk_reserve_mib": 0,
    "ignore_port_processes": [],
    "managed_processes": ["ollama", "*vllm*"],
    "toolkit_binaries": ["nvidia-container-toolkit", "nvidia-container-runtime-hook",
                         "nvidia-ctk"],
    "runtime_binaries": ["docker", "podman"],
    "warn_only": [],
}
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
    dirs = opts["dirs"]
    if not isinstance(dirs, dict):
        raise ValueError("preflight_dirs must be a dict of key: path; got: %r" % (dirs,))
    for key, path in dirs.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("preflight_dirs.%s must be an absolute path; got: %r" % (key, path))
    for i, entry in enumerate(check_size_table(opts["size_table"])):
        if dirs and entry["dir"] not in dirs:
            raise ValueError("preflight_size_table[%d].dir is not a key of preflight_dirs (%s); "
                             "got: %r" % (i, ", ".join(sorted(dirs)), entry["dir"]))
    return opts


ROLE_OPTIONS = ("env_file", "nvidia_smi_timeout")


def check_options(options, role_options=None):
    """The preflight role's options, checked before the role reads or writes anything.

    ``options`` are the report options (:func:`build_report`); ``role_options`` the role's
    other options, each checked when given: ``env_file`` (the .env path, absolute) and
    ``nvidia_smi_timeout`` (seconds, 1-3600; a number's text counts, as ``-e`` gives it).
    """
    _check_report_options(options)
    role_options = known_keys(role_options, ROLE_OPTIONS, "role_options")
    if "env_file" in role_options:
        path = role_options["env_file"]
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("preflight_env_file must be an absolute path; got: %r" % (path,))
    if "nvidia_smi_timeout" in role_options:
        value = role_options["nvidia_smi_timeout"]
        number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
        if not is_int(number) or not 1 <= number <= MAX_TOOL_TIMEOUT_S:
            raise ValueError("preflight_nvidia_smi_timeout must be 1-%d seconds; got: %r"
                             % (MAX_TOOL_TIMEOUT_S, value))
    return True


def _check(checks, opts, name, ok, text):
    checks.append({"check": name, "ok": bool(ok), "warn_only": name in opts["warn_only"],
                   "text": text})


def build_report(host, services_plan, gpus, host_facts, dual_gpu_mode=None, options=None):
    """Everything preflight found on one host, and whether it may go on.

    ``host_facts`` is ``ansible_facts.preflight_host`` (the preflight_facts module);
    ``dual_gpu_mode`` the result of :func:`dual_gpu_mode_plan`. A check that fails blocks
    (``ok: false``) unless its name is in ``warn_only``; the mixed-mode GPU check and the
    persistence mode only ever warn (seed 000: warn, not block).
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
    # Ports: an active service's port held by someone else blocks; an inactive one warns.
    host_ports = {p["port"]: p for p in host_facts.get("ports") or []}
    wanted = service_ports(services_plan)
    report = []
    for item in wanted:
        holders = list((host_ports.get(item["port"]) or {}).get("holders") or [])
        report.append(dict(item, held=bool(holders), holders=holders))
    conflicts = port_conflicts(report, opts["ignore_port_processes"])
    blocking = [c for c in conflicts if c["active"]]
    for conflict in conflicts:
        if not conflict["active"]:
            warnings.append(conflict["text"] + " (the service does not run in this profile)")
    _check(checks, opts, "ports", not blocking,
           "; ".join(c["text"] for c in blocking) if blocking else
           "ports free: %s" % (", ".join(str(p["port"]) for p in wanted if p["active"])
                               or "none needed"))
    # Downloads and disks.
    active = list(services_plan.get("active") or [])
    downloads = None
    disks = []
    if profile in PROFILES:
        downloads = download_plan(opts["size_table"], profile, mode, opts["dirs"], active)
        disks = disk_check(downloads["by_path"], host_facts.get("disks") or [],
                           opts["disk_reserve_mib"])
        for item in disks:
            _check(checks, opts, "disk", item["ok"],
                   "disk at %s: %s MiB needed, %s MiB free" % (
                       ", ".join(item["paths"]), item["required_mib"],
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
        if nvidia:
            found = [b for b in opts["toolkit_binaries"] if binaries.get(b)]
            _check(checks, opts, "toolkit", bool(found),
                   "NVIDIA container toolkit: %s" % ", ".join(found) if found else
                   "NVIDIA container toolkit not found (none of %s)"
                   % ", ".join(opts["toolkit_binaries"]))
        runtimes = [b for b in opts["runtime_binaries"] if binaries.get(b)]
        _check(checks, opts, "runtime", bool(runtimes),
               "container runtime: %s" % ", ".join(runtimes) if runtimes else
               "no container runtime found (none of %s)" % ", ".join(opts["runtime_binaries"]))
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
        "checks": checks, "ports": report, "downloads": downloads, "disks": disks,
        "gpu_memory": memory["gpus"], "warnings": warnings, "failed": [c["text"] for c in failed],
        "ok": not failed,
    }
    result["summary"] = summary_lines(result)
    return result
