# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: reading NVIDIA GPUs through nvidia-smi.

Not a public API: the leading underscore says so. Pure parsers (text in, GPU facts
out) and one collector, :func:`collect`, that takes the command runner as an
argument, so nothing here imports AnsibleModule or touches a machine by itself.
Standard library only; Python 3.8 syntax (modules run on the targets).

Which index a GPU gets: nvidia-smi's own ``index`` (the ``--query-gpu`` column),
which enumerates GPUs in PCI bus order, the order CUDA uses under
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. When that column cannot be read, the position of
the GPU in ``nvidia-smi -q -x``, which nvidia-smi writes in the same order. Never
``minor_number``: that is the ``/dev/nvidiaN`` number, which need not equal the
index (one captured A100 host has ``minor_number`` 1 on its only listed GPU) and
reads ``N/A`` on Windows drivers.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    clean_text,
    fill_free,
    first_line,
    is_known_unified,
    new_gpu,
    new_mig_device,
    new_process,
    normalize_pci_bus_id,
    parse_int,
    parse_number,
    to_mib,
)

# What collect() asks --query-gpu for. compute_cap is the one value the XML lacks;
# the rest lets the CSV stand alone when -q -x cannot be read.
QUERY_FIELDS = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "driver_version",
    "memory.total",
    "memory.reserved",
    "memory.used",
    "memory.free",
    "compute_cap",
    "temperature.gpu",
    "utilization.gpu",
    "power.limit",
    "mig.mode.current",
)

APPS_FIELDS = ("gpu_uuid", "pid", "process_name", "used_gpu_memory")

# Texts nvidia-smi prints in place of a value when the GPU itself failed.
_ERROR_MARKERS = ("gpu is lost", "unknown error", "gpu requires reset")

_HEADER_RE = re.compile(r"^([A-Za-z0-9_.]+)(?: \[([^\]]*)\])?\Z")
_INVALID_FIELD_RE = re.compile(r'Field "([^"]+)" is not a valid field to query')
_HANDLE_ERROR_RE = re.compile(
    r"^Unable to determine the device handle for (?:GPU|gpu)\s*([0-9A-Fa-f:.]+):\s*(.*)$"
)
_LIST_GPU_RE = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)\s*\Z")
_LIST_MIG_RE = re.compile(r"^\s+(MIG \S+)\s+Device\s+(\d+): \(UUID: ([^)]+)\)\s*\Z")


class InvalidField(ValueError):
    """nvidia-smi refused a --query-gpu field (a driver older than the field)."""

    def __init__(self, field):
        super().__init__(
            'nvidia-smi --query-gpu: the driver does not know the field "%s"' % field
        )
        self.field = field


def _error_of(value):
    """The failure text when a value reads 'GPU is lost' / 'Unknown Error', else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().strip("[]").strip()
    if text.lower() in _ERROR_MARKERS:
        return text
    return None


def _mig_mode(value):
    text = clean_text(value)
    return None if text is None else text.lower()


# --------------------------------------------------------------------------- CSV


def _parse_csv(text, what, free_text_field=None):
    """Rows of a nvidia-smi ``--format=csv`` answer, keyed by bare field name.

    Values are stripped strings (units kept, e.g. ``"81559 MiB"``) or None for the
    unknown markers and any other bracketed text. A value that reads like a GPU
    failure is listed under the extra key ``_errors``. Lines nvidia-smi prints for
    a GPU it cannot open come back as rows ``{"pci.bus_id": ..., "_errors": [...]}``.
    """
    if text is None:
        raise ValueError("%s: no output" % what)
    match = _INVALID_FIELD_RE.search(text)
    if match:
        raise InvalidField(match.group(1))
    lines = [line for line in text.splitlines() if line.strip()]
    lost = []
    rest = []
    for line in lines:
        handle = _HANDLE_ERROR_RE.match(line.strip())
        if handle:
            lost.append({"pci.bus_id": handle.group(1), "_errors": [handle.group(2).strip()]})
        else:
            rest.append(line)
    if not rest:
        if lost:
            return lost
        raise ValueError("%s: no CSV header in the output" % what)
    names = []
    for cell in rest[0].split(","):
        header = _HEADER_RE.match(cell.strip())
        if not header:
            raise ValueError(
                "%s: not CSV with a header (line 1: %r)" % (what, first_line(rest[0]))
            )
        names.append(header.group(1))
    rows = []
    for number, line in enumerate(rest[1:], start=2):
        cells = [cell.strip() for cell in line.split(", ")]
        if len(cells) > len(names) and free_text_field in names:
            # nvidia-smi does not quote: a process name may itself contain ", ".
            at = names.index(free_text_field)
            extra = len(cells) - len(names)
            cells[at : at + extra + 1] = [", ".join(cells[at : at + extra + 1])]
        if len(cells) != len(names):
            raise ValueError(
                "%s: line %d has %d values for %d columns: %r"
                % (what, number, len(cells), len(names), first_line(line))
            )
        row = {}
        errors = []
        for name, cell in zip(names, cells):
            failure = _error_of(cell)
            if failure:
                errors.append("%s: %s" % (name, failure))
            # Every bracketed cell is nvidia-smi saying "no value": [N/A], [Not Supported],
            # [Requested functionality has been deprecated], [Insufficient Permissions].
            bracketed = cell.startswith("[") and cell.endswith("]")
            row[name] = None if bracketed else clean_text(cell)
        if errors:
            row["_errors"] = errors
        rows.append(row)
    return rows + lost


def parse_query_gpu_csv(text):
    """Parse ``nvidia-smi --query-gpu=... --format=csv`` (with header, with or without units).

    Columns are found by their header names (``memory.total [MiB]`` -> ``memory.total``),
    never by position. Returns a list of dicts keyed by the bare field name; values
    are strings with their units, or None for ``[N/A]`` / ``[Not Supported]``.
    Raises :class:`InvalidField` (a ValueError) when nvidia-smi refused a field.
    """
    return _parse_csv(text, "nvidia-smi --query-gpu")


def parse_query_apps_csv(text):
    """Parse ``nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_gpu_memory
    --format=csv``: one dict per process, keyed by the bare field name."""
    return _parse_csv(text, "nvidia-smi --query-compute-apps", free_text_field="process_name")


def gpu_from_query_row(row):
    """One ``--query-gpu`` row as a GPU fact (fields the row lacks stay None)."""
    what = "nvidia-smi --query-gpu GPU %s" % (row.get("uuid") or row.get("pci.bus_id"))
    gpu = new_gpu(
        index=parse_int(row.get("index"), "%s index" % what),
        uuid=row.get("uuid"),
        name=row.get("name"),
        vendor="nvidia",
        pci_bus_id=normalize_pci_bus_id(row.get("pci.bus_id")),
        memory_total_mib=to_mib(row.get("memory.total"), what="%s memory.total" % what),
        memory_used_mib=to_mib(row.get("memory.used"), what="%s memory.used" % what),
        memory_free_mib=to_mib(row.get("memory.free"), what="%s memory.free" % what),
        memory_reserved_mib=to_mib(row.get("memory.reserved"),
                                   what="%s memory.reserved" % what),
        compute_capability=row.get("compute_cap"),
        driver_version=row.get("driver_version"),
        mig_mode=_mig_mode(row.get("mig.mode.current")),
        power_limit_w=parse_number(row.get("power.limit"), "%s power.limit" % what),
        temperature_c=parse_int(row.get("temperature.gpu"), "%s temperature.gpu" % what),
        utilization_pct=parse_int(row.get("utilization.gpu"), "%s utilization.gpu" % what),
    )
    if row.get("_errors"):
        gpu["healthy"] = False
        gpu["errors"] = list(row["_errors"])
    return gpu


def processes_from_apps_rows(rows):
    """``--query-compute-apps`` rows -> ``{gpu_uuid: [process, ...]}``."""
    by_gpu = {}
    for row in rows:
        what = "nvidia-smi --query-compute-apps pid %s" % row.get("pid")
        process = new_process(
            parse_int(row.get("pid"), what),
            row.get("process_name"),
            to_mib(row.get("used_gpu_memory"), what="%s used_gpu_memory" % what),
        )
        by_gpu.setdefault(row.get("gpu_uuid"), []).append(process)
    return by_gpu


# --------------------------------------------------------------------------- -L


def parse_list(text):
    """Parse ``nvidia-smi -L``: GPUs with their UUIDs and MIG devices (profile, UUID).

    Returns ``[{"index", "name", "uuid", "mig_devices": [{"index", "name", "uuid"}]}]``.
    The MIG device UUIDs (``MIG-...``) are what CUDA_VISIBLE_DEVICES takes; the XML
    does not carry them.
    """
    if text is None or not text.strip():
        raise ValueError("nvidia-smi -L: no output")
    gpus = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        gpu = _LIST_GPU_RE.match(line.strip())
        if gpu:
            gpus.append({"index": int(gpu.group(1)), "name": gpu.group(2),
                         "uuid": gpu.group(3), "mig_devices": []})
            continue
        mig = _LIST_MIG_RE.match(line)
        if mig and gpus:
            gpus[-1]["mig_devices"].append(
                {"index": int(mig.group(2)), "name": mig.group(1), "uuid": mig.group(3)})
            continue
        raise ValueError("nvidia-smi -L: unexpected line %d: %r" % (number, first_line(line)))
    return gpus


# --------------------------------------------------------------------------- XML


def _text(element, path):
    if element is None:
        return None
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


# Fields checked for 'GPU is lost' / 'Unknown Error'.
_HEALTH_PATHS = (
    "product_name",
    "uuid",
    "pci/pci_bus_id",
    "fb_memory_usage/total",
    "fb_memory_usage/used",
    "temperature/gpu_temp",
    "utilization/gpu_util",
)

_POWER_LIMIT_PATHS = (
    "gpu_power_readings/current_power_limit",
    "power_readings/power_limit",
    "power_readings/enforced_power_limit",
    "gpu_power_readings/enforced_power_limit",
)


def _gpu_from_xml(element, position, driver_version, cuda_version):
    bus_id = _text(element, "pci/pci_bus_id") or element.get("id")
    what = "nvidia-smi -q -x GPU %s" % bus_id

    errors = []
    for path in _HEALTH_PATHS:
        failure = _error_of(_text(element, path))
        if failure:
            errors.append("%s: %s" % (path, failure))

    def value(path):
        """The text at path; None where a failed GPU printed an error instead."""
        text = _text(element, path)
        return None if _error_of(text) else text

    def mib(path):
        return to_mib(value(path), what="%s %s" % (what, path))

    mig_devices = []
    for mig in element.findall("mig_devices/mig_device"):
        mig_what = "%s MIG device %s" % (what, _text(mig, "index"))
        mig_devices.append(new_mig_device(
            index=parse_int(_text(mig, "index"), "%s index" % mig_what),
            gpu_instance_id=parse_int(_text(mig, "gpu_instance_id"), mig_what),
            compute_instance_id=parse_int(_text(mig, "compute_instance_id"), mig_what),
            memory_total_mib=to_mib(_text(mig, "fb_memory_usage/total"), what=mig_what),
            memory_used_mib=to_mib(_text(mig, "fb_memory_usage/used"), what=mig_what),
            memory_free_mib=to_mib(_text(mig, "fb_memory_usage/free"), what=mig_what),
        ))

    processes = []
    for info in element.findall("processes/process_info"):
        proc_what = "%s process %s" % (what, _text(info, "pid"))
        processes.append(new_process(
            parse_int(_text(info, "pid"), proc_what),
            clean_text(_text(info, "process_name")),
            to_mib(_text(info, "used_memory"), what="%s used_memory" % proc_what),
        ))

    gpu = new_gpu(
        index=position,
        uuid=clean_text(value("uuid")),
        name=clean_text(value("product_name")),
        vendor="nvidia",
        pci_bus_id=normalize_pci_bus_id(value("pci/pci_bus_id") or element.get("id")),
        memory_total_mib=mib("fb_memory_usage/total"),
        memory_used_mib=mib("fb_memory_usage/used"),
        memory_free_mib=mib("fb_memory_usage/free"),
        memory_reserved_mib=mib("fb_memory_usage/reserved"),
        driver_version=driver_version,
        cuda_driver_version=cuda_version,
        mig_mode=_mig_mode(value("mig_mode/current_mig")),
        mig_devices=mig_devices,
        power_limit_w=parse_number(
            next((value(p) for p in _POWER_LIMIT_PATHS if clean_text(value(p))), None),
            "%s power limit" % what),
        temperature_c=parse_int(value("temperature/gpu_temp"),
                                "%s temperature/gpu_temp" % what),
        utilization_pct=parse_int(value("utilization/gpu_util"),
                                  "%s utilization/gpu_util" % what),
        processes=processes,
    )
    if errors:
        gpu["healthy"] = False
        gpu["errors"] = errors
    return gpu


def parse_xml(text, system_memory_mib=None):
    """Parse ``nvidia-smi -q -x`` into ``{"gpus", "driver_version",
    "cuda_driver_version", "warnings"}``.

    ``index`` is the GPU's position in the document (see the module docstring);
    :func:`collect` replaces it with nvidia-smi's own index from the CSV. Lines
    ``Unable to determine the device handle for GPU ...: GPU is lost`` that
    nvidia-smi prints before the XML become GPUs with ``healthy: false``.
    A part known to share the host's memory (``fb_memory_usage/total`` N/A or 0, as on
    DGX Spark GB10) gets ``memory_kind: unified`` (see :func:`apply_unified_memory`).
    """
    if text is None or not text.strip():
        raise ValueError("nvidia-smi -q -x: no output")
    lost = []
    start = None
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("<"):
            start = number
            break
        handle = _HANDLE_ERROR_RE.match(stripped)
        if handle:
            lost.append((handle.group(1), handle.group(2).strip()))
    if start is None:
        if lost:
            body = None
        else:
            raise ValueError("nvidia-smi -q -x: not XML (line 1: %r)" % first_line(text))
    else:
        body = "\n".join(lines[start:])
    driver_version = cuda_version = None
    elements = []
    if body is not None:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            line_no = exc.position[0] + (start or 0)
            bad = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
            raise ValueError(
                "nvidia-smi -q -x: not XML (line %d: %r)" % (line_no, first_line(bad))
            ) from None
        if root.tag != "nvidia_smi_log":
            raise ValueError(
                "nvidia-smi -q -x: the root element is <%s>, expected <nvidia_smi_log>"
                % root.tag
            )
        driver_version = clean_text(_text(root, "driver_version"))
        cuda_version = clean_text(_text(root, "cuda_version"))
        elements = root.findall("gpu")
    gpus = [
        _gpu_from_xml(element, position, driver_version, cuda_version)
        for position, element in enumerate(elements)
    ]
    for bus_id, message in lost:
        gpus.append(_lost_gpu(bus_id, message, driver_version, cuda_version))
    warnings = []
    apply_unified_memory(gpus, system_memory_mib, warnings)
    for gpu in gpus:
        fill_free(gpu)
    return {"gpus": gpus, "driver_version": driver_version,
            "cuda_driver_version": cuda_version, "warnings": warnings}


def _lost_gpu(bus_id, message, driver_version=None, cuda_version=None):
    try:
        pci_bus_id = normalize_pci_bus_id(bus_id)
    except ValueError:
        pci_bus_id = None
    return new_gpu(vendor="nvidia", pci_bus_id=pci_bus_id, driver_version=driver_version,
                   cuda_driver_version=cuda_version, healthy=False,
                   errors=["nvidia-smi cannot open the GPU %s: %s"
                           % (pci_bus_id or bus_id, message)])


def apply_unified_memory(gpus, system_memory_mib, warnings):
    """Mark healthy GPUs known to share the host's memory, and that report none, as unified.

    On DGX Spark (GB10) and the Jetson modules ``fb_memory_usage`` reads N/A or 0: the GPU
    uses system memory. Its size becomes ``system_memory_mib`` (None when unknown);
    used/free/reserved stay None, since the driver does not say how much of the host memory
    the GPU holds. Any other GPU reading N/A or 0 (a discrete card behind a driver fault or a
    virtual GPU) keeps ``memory_kind: dedicated`` with its size None and a warning: it is
    never given the host's memory.
    """
    for gpu in gpus:
        if not gpu["healthy"] or gpu["memory_total_mib"] not in (None, 0):
            continue
        label = "GPU %s (%s)" % (gpu["index"], gpu["name"] or gpu["uuid"] or gpu["pci_bus_id"])
        if not is_known_unified(gpu["name"]):
            gpu["memory_total_mib"] = None
            warnings.append(
                "%s reports no memory size and is not a part known to share the host's "
                "memory: memory_total_mib is null" % label
            )
            continue
        gpu["memory_kind"] = "unified"
        gpu["memory_total_mib"] = system_memory_mib
        gpu["memory_used_mib"] = gpu["memory_free_mib"] = gpu["memory_reserved_mib"] = None
        if system_memory_mib is None:
            warnings.append(
                "%s reports no dedicated memory (unified memory) and the system memory is "
                "unknown: memory_total_mib is null" % label
            )
        else:
            warnings.append(
                "%s reports no dedicated memory (unified memory): memory_total_mib is the "
                "system memory, %d MiB, shared with the host" % (label, system_memory_mib)
            )


# --------------------------------------------------------------------------- topo -m

# What a cell of ``nvidia-smi topo -m`` says about two GPUs (its Legend), as a ``link`` of
# the ``topology`` fact. PIX: at most one PCIe bridge; PXB: several, below one host bridge;
# PHB: through a host bridge; NODE: between host bridges of one NUMA node; SYS: across NUMA
# nodes (SOC in drivers older than the NODE level); NV#: a bonded set of # NVLinks.
TOPO_LINKS = {
    "PIX": "pcie_switch",
    "PXB": "pcie_switch",
    "PHB": "host_bridge",
    "NODE": "numa",
    "SYS": "system",
    "SOC": "system",
}

# nvidia-smi underlines the header line (ESC[4m ... ESC[0m), also when its output is a pipe.
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_TOPO_GPU_RE = re.compile(r"^GPU(\d+)\Z")
_TOPO_NVLINK_RE = re.compile(r"^NV(\d+)\Z")


def _topo_cell(cell, where):
    """(link, nvlink_count) of one matrix cell; ValueError for anything else."""
    nvlink = _TOPO_NVLINK_RE.match(cell)
    if nvlink and int(nvlink.group(1)) > 0:
        return "nvlink", int(nvlink.group(1))
    if cell in TOPO_LINKS:
        return TOPO_LINKS[cell], None
    raise ValueError("nvidia-smi topo -m: %s is %r, not one of X, NV<n>, %s"
                     % (where, cell, ", ".join(TOPO_LINKS)))


def parse_topo_matrix(text):
    """Parse ``nvidia-smi topo -m`` into ``{GPU index: [{"index", "link", "nvlink_count"}]}``.

    The header names the GPU columns first (``GPU0`` .. ``GPU<n-1>``), then whatever the host
    has besides: NIC columns (``NIC0``, ``mlx5_0``), ``CPU Affinity``, ``NUMA Affinity``,
    ``GPU NUMA ID``; those, the NIC rows and the Legend are skipped. Each GPU row must give
    ``X`` on the diagonal and a known link (:data:`TOPO_LINKS`, ``NV<n>``) in every other GPU
    column. Anything else raises ValueError naming the line or the cell.
    """
    if text is None or not text.strip():
        raise ValueError("nvidia-smi topo -m: no output")
    lines = [_ANSI_RE.sub("", line) for line in text.splitlines()]
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    number, header = numbered[0]
    columns = []
    for token in header.split():
        match = _TOPO_GPU_RE.match(token)
        if not match:
            break
        columns.append(int(match.group(1)))
    if not columns or columns != list(range(len(columns))):
        raise ValueError("nvidia-smi topo -m: no GPU0, GPU1, ... columns (line %d: %r)"
                         % (number, first_line(header)))
    rows = {}
    for number, line in numbered[1:]:
        if line.strip().startswith("Legend"):
            break
        tokens = line.split()
        label = _TOPO_GPU_RE.match(tokens[0])
        if label is None:
            continue  # a NIC row (NIC0, mlx5_0): not about GPUs
        index = int(label.group(1))
        if index not in columns or index in rows:
            raise ValueError("nvidia-smi topo -m: line %d: row GPU%d does not fit the %d GPU "
                             "columns: %r" % (number, index, len(columns), first_line(line)))
        cells = tokens[1:1 + len(columns)]
        if len(cells) < len(columns):
            raise ValueError("nvidia-smi topo -m: line %d: %d cells for %d GPU columns: %r"
                             % (number, len(cells), len(columns), first_line(line)))
        peers = []
        for peer, cell in zip(columns, cells):
            where = "row GPU%d, column GPU%d" % (index, peer)
            if peer == index:
                if cell != "X":
                    raise ValueError("nvidia-smi topo -m: %s is %r, expected X" % (where, cell))
                continue
            link, count = _topo_cell(cell, where)
            peers.append({"index": peer, "link": link, "nvlink_count": count})
        rows[index] = peers
    missing = [index for index in columns if index not in rows]
    if missing:
        raise ValueError("nvidia-smi topo -m: no row for GPU%s" % ", GPU".join(map(str, missing)))
    return rows


def _topology(run, gpus, warnings):
    """``{GPU index: topology or None}`` for the GPUs read (see :func:`parse_topo_matrix`);
    a failure leaves every GPU's topology None with one warning."""
    indexed = [gpu for gpu in gpus if gpu["index"] is not None]
    result = {gpu["index"]: None for gpu in indexed}
    if len(indexed) < 2:
        # One GPU that can be numbered (the other, if any, lost): no peers, nothing to ask.
        result.update((gpu["index"], []) for gpu in indexed)
        return result
    try:
        try:
            rc, out, err = _run_text(run, ["nvidia-smi", "topo", "-m"])
        except Exception as exc:  # the runner's own failure (a timeout): the GPUs stay read
            raise ValueError("nvidia-smi topo -m: %s" % exc) from None
        if rc != 0:
            raise ValueError("nvidia-smi topo -m exited %d: %s" % (rc, first_line(out or err)))
        matrix = parse_topo_matrix(out)
    except ValueError as exc:
        warnings.append("%s: topology is null" % exc)
        return result
    uuids = {gpu["index"]: gpu["uuid"] for gpu in indexed}
    for index in result:
        if index not in matrix:
            warnings.append("nvidia-smi topo -m has no GPU%d: its topology is null" % index)
            continue
        result[index] = [dict(peer, uuid=uuids.get(peer["index"])) for peer in matrix[index]]
    return result


# --------------------------------------------------------------------------- collect


def _run_text(run, argv):
    """Run and return (rc, stdout, stderr) as strings; nvidia-smi writes errors to stdout."""
    rc, out, err = run(list(argv))
    return rc, out or "", err or ""


def _read(run, argv, parse, warnings):
    """Run argv and parse its output. Returns (result, None) or (None, why it failed).

    A non-zero exit whose output still parses (one GPU lost, the others listed) is
    a warning; a non-zero exit without usable output is a failure the caller may
    tolerate; garbage after a zero exit raises ValueError.
    """
    rc, out, err = _run_text(run, argv)
    command = " ".join(
        arg.split("=", 1)[0] + "=..." if arg.startswith("--query-") else arg for arg in argv)
    try:
        result = parse(out)
    except InvalidField:
        raise
    except ValueError:
        if rc == 0:
            raise
        return None, "%s exited %d: %s" % (command, rc, first_line(out or err))
    if rc != 0:
        warnings.append("%s exited %d: %s" % (command, rc, first_line(out or err)))
    return result, None


def _query_gpu(run, fields, warnings):
    """Run --query-gpu, dropping fields an older driver refuses. Returns (rows, failure)."""
    fields = list(fields)
    while fields:
        argv = ["nvidia-smi", "--query-gpu=" + ",".join(fields), "--format=csv"]
        try:
            return _read(run, argv, parse_query_gpu_csv, warnings)
        except InvalidField as exc:
            if exc.field not in fields:
                raise
            fields.remove(exc.field)
            if exc.field == "compute_cap":
                warnings.append(
                    'nvidia-smi does not know the field "compute_cap" (a driver older than '
                    "510): compute_capability is null"
                )
            else:
                warnings.append(
                    'nvidia-smi does not know the field "%s" (an older driver): its value '
                    "is null" % exc.field
                )
    return None, "nvidia-smi --query-gpu: the driver refused every field"


def _merge_csv(gpus, rows, warnings):
    """Take index and compute capability from the CSV; fill what the XML left null."""
    by_uuid = {gpu["uuid"]: gpu for gpu in gpus if gpu["uuid"]}
    by_bus = {gpu["pci_bus_id"]: gpu for gpu in gpus if gpu["pci_bus_id"]}
    for row in rows:
        extra = gpu_from_query_row(row)
        gpu = by_uuid.get(extra["uuid"]) or by_bus.get(extra["pci_bus_id"])
        if gpu is None:
            warnings.append(
                "nvidia-smi --query-gpu lists GPU %s that -q -x does not; added from the CSV"
                % (extra["uuid"] or extra["pci_bus_id"])
            )
            gpus.append(extra)
            continue
        if extra["index"] is not None:
            gpu["index"] = extra["index"]
        for key, value in extra.items():
            if key in ("processes", "mig_devices", "errors", "healthy", "memory_kind"):
                continue
            if gpu["memory_kind"] == "unified" and key.startswith("memory_"):
                continue  # the CSV's N/A or 0 would undo apply_unified_memory
            if gpu.get(key) is None and value is not None:
                gpu[key] = value
        if not extra["healthy"] and gpu["healthy"]:
            gpu["healthy"] = False
            gpu["errors"].extend(extra["errors"])


def _attach_mig_list(gpus, listed, from_xml):
    by_uuid = {entry["uuid"]: entry for entry in listed}
    for gpu in gpus:
        entry = by_uuid.get(gpu["uuid"])
        if entry is None:
            continue
        if from_xml:
            named = {dev["index"]: dev for dev in entry["mig_devices"]}
            for dev in gpu["mig_devices"]:
                found = named.get(dev["index"])
                if found:
                    dev["uuid"], dev["name"] = found["uuid"], found["name"]
        else:
            gpu["mig_devices"] = [
                new_mig_device(index=dev["index"], uuid=dev["uuid"], name=dev["name"])
                for dev in entry["mig_devices"]
            ]


def collect(run, query_fields=QUERY_FIELDS, system_memory_mib=None, topology=False):
    """Read every NVIDIA GPU with nvidia-smi.

    ``run(argv) -> (rc, stdout, stderr)`` runs one command (the module passes its
    ``run_command`` with a timeout; a hang is the runner's to stop and report).
    Runs ``nvidia-smi -q -x`` (names, memory, MIG, processes, health) and
    ``nvidia-smi --query-gpu=<query_fields> --format=csv`` (index, compute
    capability) and merges them by UUID, else PCI bus id. Adds ``nvidia-smi -L``
    when a GPU is in MIG mode (MIG device UUIDs), and ``--query-compute-apps``
    when the XML could not be read.

    A field an older driver refuses is dropped with a warning (``compute_cap``
    -> ``compute_capability: null``). When exactly one of -q -x and --query-gpu
    exits non-zero, the other one answers and a warning says what is missing;
    when both fail, or one prints garbage, raises ValueError naming the command.

    Returns ``{"gpus", "driver_version", "cuda_driver_version", "warnings"}``; with
    ``topology=True`` also ``"topology": {GPU index: [links] or None}`` from
    ``nvidia-smi topo -m`` (asked only when there are two GPUs or more).
    """
    warnings = []
    xml, xml_failure = _read(
        run, ["nvidia-smi", "-q", "-x"],
        lambda out: parse_xml(out, system_memory_mib=system_memory_mib), warnings)
    rows, csv_failure = _query_gpu(run, query_fields, warnings)

    if xml is None and rows is None:
        raise ValueError("%s; %s" % (xml_failure, csv_failure))

    if xml is not None:
        gpus = xml["gpus"]
        warnings.extend(xml["warnings"])
        driver_version = xml["driver_version"]
        cuda_version = xml["cuda_driver_version"]
        if rows is None:
            warnings.append("%s: compute_capability is null and indexes follow the XML order"
                            % csv_failure)
        else:
            _merge_csv(gpus, rows, warnings)
    else:
        warnings.append(
            "%s: GPUs read from --query-gpu alone (no MIG device memory, no CUDA version)"
            % xml_failure
        )
        gpus = [gpu_from_query_row(row) for row in rows]
        driver_version = next((g["driver_version"] for g in gpus if g["driver_version"]), None)
        cuda_version = None
        apps_argv = ["nvidia-smi", "--query-compute-apps=" + ",".join(APPS_FIELDS),
                     "--format=csv"]
        apps, apps_failure = _read(run, apps_argv, parse_query_apps_csv, warnings)
        if apps is None:
            warnings.append("%s: processes unknown" % apps_failure)
        else:
            by_gpu = processes_from_apps_rows(apps)
            for gpu in gpus:
                gpu["processes"] = by_gpu.get(gpu["uuid"], [])
        unified = []
        apply_unified_memory(gpus, system_memory_mib, unified)
        warnings.extend(unified)

    if any(gpu["mig_mode"] == "enabled" for gpu in gpus):
        listed, list_failure = _read(run, ["nvidia-smi", "-L"], parse_list, warnings)
        if listed is None:
            warnings.append("%s: MIG device UUIDs unknown" % list_failure)
        else:
            _attach_mig_list(gpus, listed, from_xml=xml is not None)

    for gpu in gpus:
        gpu["driver_version"] = gpu["driver_version"] or driver_version
        gpu["cuda_driver_version"] = gpu["cuda_driver_version"] or cuda_version
        fill_free(gpu)
    gpus.sort(key=lambda gpu: (gpu["index"] is None, gpu["index"] or 0))
    result = {"gpus": gpus, "driver_version": driver_version,
              "cuda_driver_version": cuda_version, "warnings": warnings}
    if topology:
        result["topology"] = _topology(run, gpus, warnings)
    return result
