# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: reading AMD GPUs through amd-smi or rocm-smi.

Not a public API: the leading underscore says so. Pure parsers (text in, GPU facts
out) and two collectors that take the command runner as an argument, so nothing
here imports AnsibleModule or touches a machine by itself. Standard library only;
Python 3.8 syntax (modules run on the targets).

amd-smi changed its JSON shape over releases: one GPU as a bare dict or several
as a list, ``vram.size`` as ``"65520 MB"`` or ``{"value": 65520, "unit": "MB"}``,
and the newest wraps the list in ``{"gpu_data": [...]}``. Both tools may print
warnings before the JSON (``WARNING: GPU[0] ...``); parsing starts at the first line
that opens a JSON document and runs to the end (see :func:`load_json`). Indexes are
amd-smi's ``gpu`` number and rocm-smi's ``cardN`` number.
"""

from __future__ import annotations

import json
import re

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    clean_text,
    fill_free,
    first_line,
    new_gpu,
    new_process,
    normalize_pci_bus_id,
    parse_int,
    parse_number,
    to_mib,
)

AMD_SMI_STATIC = ("amd-smi", "static", "--json")
AMD_SMI_LIST = ("amd-smi", "list", "--json")
AMD_SMI_METRIC = ("amd-smi", "metric", "--usage", "--mem-usage", "--temperature", "--json")
AMD_SMI_PROCESS = ("amd-smi", "process", "--json")
ROCM_SMI = (
    "rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showbus", "--showuniqueid",
    "--showuse", "--showtemp", "--showmaxpower", "--showdriverversion", "--json",
)

_CARD_RE = re.compile(r"^card(\d+)\Z")
# amd-smi reports the in-tree amdgpu driver's version as the squashed /proc/version.
_KERNEL_VERSION_RE = re.compile(r"^Linuxversion([0-9][^(\s]*)\(")
# A line that opens a JSON document: '{' then a key or '}', or '[' then a value or ']'.
_JSON_START_RE = re.compile(r'^\s*(?:\{\s*(?:"|\}|$)|\[\s*(?:[\[{"\]0-9tfn-]|$))')


def load_json(text, what):
    """The JSON document in a tool's output, skipping any warning lines before it.

    The document starts at the first line that opens a JSON object or array (``{``, or ``[``
    followed by a value or ``]``), so a line like ``WARNING: GPU[0] ...`` is skipped, and it
    runs to the end of the output: a cut document or text after it is an error naming the
    line, never a smaller document found further on.
    """
    if text is None or not text.strip():
        raise ValueError("%s: no output" % what)
    offset, number = 0, None
    for count, line in enumerate(text.splitlines(True), start=1):
        if _JSON_START_RE.match(line):
            number = count
            break
        offset += len(line)
    if number is None:
        raise ValueError("%s: no JSON in the output (line 1: %r)" % (what, first_line(text)))
    body = text[offset:]
    try:
        value, end = json.JSONDecoder().raw_decode(body, len(body) - len(body.lstrip()))
    except ValueError as exc:
        raise ValueError("%s: the output is not valid JSON: %s (line %d, column %d)"
                         % (what, getattr(exc, "msg", exc), getattr(exc, "lineno", 1)
                            + number - 1, getattr(exc, "colno", 0))) from None
    rest = body[end:]
    if rest.strip():
        at = end + len(rest) - len(rest.lstrip())
        raise ValueError("%s: the output is not valid JSON: text after the JSON document "
                         "(line %d: %r)" % (what, number + body[:at].count("\n"),
                                            first_line(rest)))
    return value


def _value(item):
    """amd-smi values are plain (``300``, ``"65520 MB"``, ``"N/A"``) or ``{value, unit}``."""
    if isinstance(item, dict) and "value" in item:
        value, unit = item.get("value"), item.get("unit")
        if value is None or (isinstance(value, str) and clean_text(value) is None):
            return None
        return "%s %s" % (value, unit) if unit else value
    if isinstance(item, str):
        return clean_text(item)
    return item


def _dig(data, *path):
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _gpu_entries(data, what):
    """The per-GPU dicts of any amd-smi JSON shape: dict, list or {"gpu_data": [...]}."""
    if isinstance(data, dict) and isinstance(data.get("gpu_data"), list):
        data = data["gpu_data"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError("%s: expected a GPU object, a list of them or {\"gpu_data\": [...]}"
                         % what)
    for position, entry in enumerate(data):
        if "gpu" not in entry:
            raise ValueError("%s: entry %d has no \"gpu\" number; keys: %s"
                             % (what, position, ", ".join(sorted(entry)[:8])))
    return data


def _index(entry, what):
    return parse_int(entry.get("gpu"), "%s gpu" % what)


def amd_driver_version(text):
    """amd-smi ``driver.version``; the in-tree driver's squashed /proc/version gives the
    kernel release (``Linuxversion6.14.0-24-generic(...)`` -> ``6.14.0-24-generic``)."""
    text = clean_text(text)
    if text is None:
        return None
    match = _KERNEL_VERSION_RE.match(text)
    return match.group(1) if match else text


def parse_amd_smi_static(text):
    """Parse ``amd-smi static --json`` (any of its three shapes).

    Returns ``{"gpus", "driver_version", "cuda_driver_version": None, "warnings"}``;
    names, VRAM size, power limit, and bus id / UUID where this amd-smi prints them.
    """
    what = "amd-smi static --json"
    entries = _gpu_entries(load_json(text, what), what)
    gpus = []
    driver_version = None
    for entry in entries:
        gpu_what = "%s gpu %s" % (what, entry.get("gpu"))
        version = amd_driver_version(_dig(entry, "driver", "version"))
        driver_version = driver_version or version
        size = _value(_dig(entry, "vram", "size"))
        power = next(
            (value for value in (_value(_dig(entry, "limit", key))
                                 for key in ("socket_power", "max_power", "power_cap"))
             if value is not None),
            None,
        )
        gpus.append(new_gpu(
            index=_index(entry, gpu_what),
            name=clean_text(_dig(entry, "asic", "market_name"))
            or clean_text(_dig(entry, "board", "product_name")),
            vendor="amd",
            pci_bus_id=normalize_pci_bus_id(_dig(entry, "bus", "bdf") or entry.get("bdf")),
            memory_total_mib=to_mib(size, default_unit="MB", what="%s vram.size" % gpu_what),
            driver_version=version,
            power_limit_w=parse_number(power, "%s power limit" % gpu_what),
        ))
    return {"gpus": gpus, "driver_version": driver_version, "cuda_driver_version": None,
            "warnings": []}


def parse_amd_smi_list(text):
    """Parse ``amd-smi list --json`` -> ``{gpu index: {"pci_bus_id", "uuid"}}``."""
    what = "amd-smi list --json"
    found = {}
    for entry in _gpu_entries(load_json(text, what), what):
        found[_index(entry, what)] = {
            "pci_bus_id": normalize_pci_bus_id(entry.get("bdf")),
            "uuid": clean_text(entry.get("uuid")),
        }
    return found


def parse_amd_smi_metric(text):
    """Parse ``amd-smi metric --json`` -> ``{gpu index: {GPU fact key: value}}``
    (memory total/used/free, temperature, utilization)."""
    what = "amd-smi metric --json"
    found = {}
    for entry in _gpu_entries(load_json(text, what), what):
        gpu_what = "%s gpu %s" % (what, entry.get("gpu"))

        def mib(key, gpu_what=gpu_what, entry=entry):
            return to_mib(_value(_dig(entry, "mem_usage", key)), default_unit="MB",
                          what="%s mem_usage.%s" % (gpu_what, key))

        temperature = next(
            (value for value in (_value(_dig(entry, "temperature", key))
                                 for key in ("edge", "hotspot"))
             if value is not None),
            None,
        )
        found[_index(entry, what)] = {
            "memory_total_mib": mib("total_vram"),
            "memory_used_mib": mib("used_vram"),
            "memory_free_mib": mib("free_vram"),
            "temperature_c": parse_int(temperature, "%s temperature" % gpu_what),
            "utilization_pct": parse_int(_value(_dig(entry, "usage", "gfx_activity")),
                                         "%s usage.gfx_activity" % gpu_what),
        }
    return found


def parse_amd_smi_process(text):
    """Parse ``amd-smi process --json`` -> ``{gpu index: [process, ...]}``.

    Entries that are not process objects ("No running processes detected") are skipped.
    """
    what = "amd-smi process --json"
    found = {}
    for entry in _gpu_entries(load_json(text, what), what):
        processes = []
        for item in entry.get("process_list") or []:
            info = item.get("process_info") if isinstance(item, dict) else None
            if not isinstance(info, dict):
                continue
            proc_what = "%s pid %s" % (what, info.get("pid"))
            vram = _value(_dig(info, "memory_usage", "vram_mem"))
            if vram is None:
                vram = _value(info.get("mem_usage"))
            processes.append(new_process(
                parse_int(info.get("pid"), proc_what),
                clean_text(info.get("name")),
                to_mib(vram, default_unit="B", what="%s vram_mem" % proc_what),
            ))
        found[_index(entry, what)] = processes
    return found


def _run(run, argv):
    rc, out, err = run(list(argv))
    return rc, out or "", err or ""


def _optional(run, argv, parse, warnings, missing):
    """Run a command whose answer only adds detail: a failure (an error exit, or an answer
    that does not parse) becomes a warning and its values stay null, as amd-smi's own N/A."""
    rc, out, err = _run(run, argv)
    command = " ".join(argv)
    if rc != 0:
        warnings.append("%s exited %d: %s; %s" % (command, rc, first_line(out or err), missing))
        return {}
    try:
        return parse(out)
    except ValueError as exc:
        said = str(exc)
        if not said.startswith(argv[0]):
            said = "%s: %s" % (command, said)
        warnings.append("%s; %s" % (said, missing))
        return {}


def collect_amd_smi(run, system_memory_mib=None):
    """Read every AMD GPU with amd-smi.

    ``run(argv) -> (rc, stdout, stderr)`` runs one command (a hang is the runner's to
    stop). ``amd-smi static --json`` is required (a non-zero exit or garbage raises
    ValueError); ``list`` (bus id, UUID), ``metric`` (used memory, temperature,
    utilization) and ``process`` add detail, and each one that fails leaves its
    values null with a warning. ``system_memory_mib`` is accepted for a uniform
    call from the module and not used: amd-smi reports APU carve-outs as VRAM.

    Returns ``{"gpus", "driver_version", "cuda_driver_version": None, "warnings"}``.
    """
    del system_memory_mib
    rc, out, err = _run(run, AMD_SMI_STATIC)
    if rc != 0:
        raise ValueError("%s exited %d: %s" % (" ".join(AMD_SMI_STATIC), rc,
                                               first_line(out or err)))
    result = parse_amd_smi_static(out)
    warnings = result["warnings"]
    listed = _optional(run, AMD_SMI_LIST, parse_amd_smi_list, warnings,
                       "bus ids and UUIDs unknown")
    metrics = _optional(run, AMD_SMI_METRIC, parse_amd_smi_metric, warnings,
                        "used memory, temperature and utilization unknown")
    processes = _optional(run, AMD_SMI_PROCESS, parse_amd_smi_process, warnings,
                          "processes unknown")
    for gpu in result["gpus"]:
        for key, value in listed.get(gpu["index"], {}).items():
            if value is not None:
                gpu[key] = value
        for key, value in metrics.get(gpu["index"], {}).items():
            if value is not None and (gpu[key] is None or key != "memory_total_mib"):
                gpu[key] = value
        gpu["processes"] = processes.get(gpu["index"], [])
        fill_free(gpu)
    return result


# --------------------------------------------------------------------------- rocm-smi


def _key(card, *names):
    """A rocm-smi value by key, ignoring case (releases differ: 'Card series'/'Card Series')."""
    lowered = {key.lower(): value for key, value in card.items()}
    for name in names:
        value = clean_text(lowered.get(name.lower()))
        if value is not None:
            return value
    return None


def parse_rocm_smi(text):
    """Parse ``rocm-smi ... --json`` (``{"card0": {...}, "system": {...}}``, strings).

    Memory comes in bytes (``VRAM Total Memory (B)``). Processes that rocm-smi lists
    under ``system`` (``PIDnnn``) do not say which GPU they use: they are reported
    as a warning, not attached to a GPU.

    Returns ``{"gpus", "driver_version", "cuda_driver_version": None, "warnings"}``.
    """
    what = "rocm-smi --json"
    data = load_json(text, what)
    if not isinstance(data, dict):
        raise ValueError("%s: expected an object with cardN keys; got a %s"
                         % (what, type(data).__name__))
    cards = []
    for key, card in data.items():
        match = _CARD_RE.match(key)
        if match and isinstance(card, dict):
            cards.append((int(match.group(1)), key, card))
    if not cards:
        raise ValueError("%s: no cardN entries; keys: %s" % (what, ", ".join(sorted(data)[:8])))
    system = data.get("system") if isinstance(data.get("system"), dict) else {}
    driver_version = _key(system, "Driver version")
    gpus = []
    for index, key, card in sorted(cards):
        card_what = "%s %s" % (what, key)
        gpus.append(fill_free(new_gpu(
            index=index,
            uuid=_key(card, "Unique ID"),
            name=_key(card, "Card Series", "Device Name", "Card Model"),
            vendor="amd",
            pci_bus_id=normalize_pci_bus_id(_key(card, "PCI Bus")),
            memory_total_mib=to_mib(_key(card, "VRAM Total Memory (B)"), default_unit="B",
                                    what="%s VRAM Total Memory (B)" % card_what),
            memory_used_mib=to_mib(_key(card, "VRAM Total Used Memory (B)"), default_unit="B",
                                   what="%s VRAM Total Used Memory (B)" % card_what),
            driver_version=driver_version,
            power_limit_w=parse_number(_key(card, "Max Graphics Package Power (W)"),
                                       "%s Max Graphics Package Power (W)" % card_what),
            temperature_c=parse_int(
                _key(card, "Temperature (Sensor edge) (C)", "Temperature (Sensor junction) (C)"),
                "%s temperature" % card_what),
            utilization_pct=parse_int(_key(card, "GPU use (%)"), "%s GPU use (%%)" % card_what),
        )))
    warnings = []
    pids = sorted(key for key in system if key.startswith("PID"))
    if pids:
        warnings.append(
            "rocm-smi lists processes without their GPU (%s); processes are not attributed"
            % ", ".join("%s %s" % (pid[3:], str(system[pid]).split(",", maxsplit=1)[0])
                        for pid in pids)
        )
    return {"gpus": gpus, "driver_version": driver_version, "cuda_driver_version": None,
            "warnings": warnings}


def collect_rocm_smi(run, system_memory_mib=None):
    """Read every AMD GPU with rocm-smi (one command; a failure raises ValueError).

    Same contract and return shape as :func:`collect_amd_smi`.
    """
    del system_memory_mib
    rc, out, err = _run(run, ROCM_SMI)
    if rc != 0:
        raise ValueError("rocm-smi --json exited %d: %s" % (rc, first_line(out or err)))
    return parse_rocm_smi(out)
