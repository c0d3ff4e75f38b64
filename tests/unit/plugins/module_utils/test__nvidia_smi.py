# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nvidia-smi parsers and collector, against real captured outputs (tests/fixtures).

Every expected value below was read from the fixture file it names. ``collect`` runs
the stand-in executables in tests/stand_ins/bin through subprocess.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _nvidia_smi
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import GPU_KEYS
from tests.support.stand_in_tools import pick, stand_in_run

TESTS = Path(__file__).resolve().parents[3]
FIXTURES = TESTS / "fixtures"
XML_DIR = FIXTURES / "nvidia-smi-xml"
CAPTURES = FIXTURES / "nvidia-smi-captures"
H100 = CAPTURES / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt"
H100_MIG = CAPTURES / "linux-x86_64__nvidia-h100-mig__590.48.01.txt"
STAND_INS = TESTS / "stand_ins"

_spec = importlib.util.spec_from_file_location("_standin", STAND_INS / "_standin.py")
_standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_standin)

H100_UUID = "GPU-00000000-0000-0000-0000-000000000000"


def section(capture, phase, prefix):
    """The output of the first command starting with ``prefix`` in a capture's phase."""
    body = _standin.find_section(
        _standin.capture_sections(capture.read_text()), phase,
        lambda command: command.startswith(prefix))
    assert body is not None, "%s has no %s section %r" % (capture.name, phase, prefix)
    return body


# --------------------------------------------------------------------------- XML fixtures

XML_CASES = {
    "telegraf-a100-sxm4-v12.xml": dict(
        driver_version="535.54.03", cuda_driver_version="12.2",
        gpu=dict(index=0, uuid="GPU-513536b6-7d19-9063-b049-1e69664bb298",
                 name="NVIDIA A100-SXM4-80GB", vendor="nvidia", pci_bus_id="0000:01:00.0",
                 memory_total_mib=81920, memory_reserved_mib=869, memory_used_mib=50,
                 memory_free_mib=80999, memory_kind="dedicated", mig_mode="enabled",
                 temperature_c=27, utilization_pct=None, power_limit_w=500.0, healthy=True),
        processes=[],
        # four 1g.20gb-sized instances, GPU instance ids 3..6
        mig=[(0, 3, 0, 19968, 12, 19955), (1, 4, 0, 19968, 12, 19955),
             (2, 5, 0, 19968, 12, 19955), (3, 6, 0, 19968, 12, 19955)],
    ),
    "telegraf-rtx-3080-v12.xml": dict(
        driver_version="536.40", cuda_driver_version="12.2",
        gpu=dict(index=0, uuid="GPU-19d6d965-2acc-f646-00f8-4c76979aabb4",
                 name="NVIDIA GeForce RTX 3080", vendor="nvidia", pci_bus_id="0000:04:00.0",
                 memory_total_mib=10240, memory_reserved_mib=173, memory_used_mib=1128,
                 memory_free_mib=8938, memory_kind="dedicated", mig_mode=None,
                 temperature_c=31, utilization_pct=0, power_limit_w=336.0, healthy=True),
        processes=[(835, "/usr/lib/Xorg", 550), (1481, "/usr/bin/gnome-shell", 18),
                   (2214, "/opt/microsoft/msedge/msedge", 79),
                   (4044, "/usr/lib/firefox/firefox", 541),
                   (42416, "/opt/visual-studio-code/code", 159)],
        mig=[],
    ),
    "telegraf-tesla-t4.xml": dict(
        driver_version="515.105.01", cuda_driver_version="11.7",
        gpu=dict(index=0, uuid="GPU-d37e67a5-91dd-3774-a5cb-99096249601a", name="Tesla T4",
                 vendor="nvidia", pci_bus_id="0000:00:1e.0", memory_total_mib=15360,
                 memory_reserved_mib=388, memory_used_mib=1032, memory_free_mib=13939,
                 memory_kind="dedicated", mig_mode=None, temperature_c=40, utilization_pct=0,
                 power_limit_w=70.0, healthy=True),
        processes=[(675, "/usr/lib/xorg/Xorg", 22), (5762, "python", 1005)],
        mig=[],
    ),
}


def check_xml_gpu(name, result, expected):
    assert result["driver_version"] == expected["driver_version"], name
    assert result["cuda_driver_version"] == expected["cuda_driver_version"], name
    assert len(result["gpus"]) == 1, "%s: one <gpu> element; got %d" % (name, len(result["gpus"]))
    gpu = result["gpus"][0]
    assert tuple(gpu) == GPU_KEYS
    assert pick(gpu, expected["gpu"]) == expected["gpu"], name
    assert gpu["driver_version"] == expected["driver_version"]
    got = [(p["pid"], p["name"].split(" ")[0], p["used_memory_mib"]) for p in gpu["processes"]]
    assert got == expected["processes"], "%s processes" % name
    mig = [(d["index"], d["gpu_instance_id"], d["compute_instance_id"], d["memory_total_mib"],
            d["memory_used_mib"], d["memory_free_mib"]) for d in gpu["mig_devices"]]
    assert mig == expected["mig"], "%s MIG devices" % name


@pytest.mark.parametrize("name", sorted(XML_CASES))
def test_parse_xml_reads_every_fixture(name):
    result = _nvidia_smi.parse_xml((XML_DIR / name).read_text())
    check_xml_gpu(name, result, XML_CASES[name])
    assert result["gpus"][0]["compute_capability"] is None  # the XML has none
    assert result["warnings"] == []


@pytest.mark.parametrize("name", sorted(XML_CASES))
def test_collect_reads_every_xml_fixture_through_the_stand_in(name):
    run = stand_in_run(GPUFLEET_FIXTURE_NVIDIA_SMI_XML=XML_DIR / name)
    result = _nvidia_smi.collect(run)
    check_xml_gpu(name, result, XML_CASES[name])
    # No capture holds a CSV for these machines: the stand-in refuses --query-gpu.
    assert any("--query-gpu" in w and "compute_capability is null" in w
               for w in result["warnings"]), result["warnings"]
    assert run.calls[0] == ["nvidia-smi", "-q", "-x"]
    assert run.calls[1][1].startswith("--query-gpu=index,uuid,")


def test_collect_adds_mig_uuids_from_list_when_mig_is_enabled():
    # The A100 XML has MIG on: collect asks -L for the MIG UUIDs; no capture has them.
    run = stand_in_run(GPUFLEET_FIXTURE_NVIDIA_SMI_XML=XML_DIR / "telegraf-a100-sxm4-v12.xml")
    result = _nvidia_smi.collect(run)
    assert ["nvidia-smi", "-L"] in run.calls
    assert any(w.startswith("nvidia-smi -L exited 97") and "MIG device UUIDs unknown" in w
               for w in result["warnings"]), result["warnings"]
    assert [d["uuid"] for d in result["gpus"][0]["mig_devices"]] == [None] * 4


def test_a100_index_is_the_position_not_minor_number():
    text = (XML_DIR / "telegraf-a100-sxm4-v12.xml").read_text()
    assert "<minor_number>1</minor_number>" in text
    assert _nvidia_smi.parse_xml(text)["gpus"][0]["index"] == 0


# --------------------------------------------------------------------------- CSV captures

CSV_CASES = [
    # capture, phase, used, free, utilization, temperature, mig mode
    (H100, "idle", 0, 81081, 0, 41, "disabled"),
    (H100, "load", 19818, 61263, 100, 59, "disabled"),
    (H100_MIG, "idle", 59, 81022, None, 42, "enabled"),
    (H100_MIG, "load", 11125, 69956, None, 53, "enabled"),
]

APPS_CASES = [
    (H100, "idle", []),
    (H100, "load", [(11327, "/root/tools/memhog", 2566), (11328, "/root/tools/memhog", 1542),
                    (11345, "./gpu_burn", 15690)]),
    (H100_MIG, "idle", []),
    (H100_MIG, "load", [(21180, "/root/tools/memhog", 2296), (21181, "/root/tools/memhog", 1272),
                        (21198, "./gpu_burn", 7484)]),
]

MIG_LIST = [(0, "MIG 3g.40gb", "MIG-00000000-0000-0000-0000-000000000000"),
            (1, "MIG 2g.20gb", "MIG-00000001-0000-0000-0000-000000000001"),
            (2, "MIG 1g.10gb", "MIG-00000002-0000-0000-0000-000000000002"),
            (3, "MIG 1g.10gb", "MIG-00000003-0000-0000-0000-000000000003")]


def _csv_id(case):
    return "%s-%s" % (case[0].name.split("__")[1], case[1])


def expected_csv_gpu(used, free, util, temp, mig):
    return dict(index=0, uuid=H100_UUID, name="NVIDIA H100 80GB HBM3", vendor="nvidia",
                pci_bus_id="0000:00:09.0", memory_total_mib=81559, memory_reserved_mib=479,
                memory_used_mib=used, memory_free_mib=free, compute_capability="9.0",
                driver_version="590.48.01", utilization_pct=util, temperature_c=temp,
                power_limit_w=700.0, mig_mode=mig, healthy=True)


@pytest.mark.parametrize(("capture", "phase", "used", "free", "util", "temp", "mig"),
                         CSV_CASES, ids=[_csv_id(c) for c in CSV_CASES])
def test_parse_query_gpu_csv_by_header_name(capture, phase, used, free, util, temp, mig):
    rows = _nvidia_smi.parse_query_gpu_csv(section(capture, phase, "nvidia-smi --query-gpu="))
    assert len(rows) == 1
    row = rows[0]
    assert len(row) == 212  # every column of the capture, under its bare name
    assert row["memory.total"] == "81559 MiB"
    assert row["compute_cap"] == "9.0"
    assert row["module.power.limit"] is None  # [N/A]
    assert row["display_mode"] is None  # [Requested functionality has been deprecated]
    assert row["hostname"] is None
    gpu = _nvidia_smi.gpu_from_query_row(row)
    expected = expected_csv_gpu(used, free, util, temp, mig)
    assert pick(gpu, expected) == expected


@pytest.mark.parametrize(("capture", "phase", "expected"), APPS_CASES,
                         ids=[_csv_id(c) for c in APPS_CASES])
def test_parse_query_apps_csv(capture, phase, expected):
    rows = _nvidia_smi.parse_query_apps_csv(
        section(capture, phase, "nvidia-smi --query-compute-apps="))
    assert all(row["gpu_uuid"] == H100_UUID for row in rows)
    by_gpu = _nvidia_smi.processes_from_apps_rows(rows)
    got = [(p["pid"], p["name"], p["used_memory_mib"]) for p in by_gpu.get(H100_UUID, [])]
    assert got == expected


def test_parse_list_reads_mig_uuids():
    listed = _nvidia_smi.parse_list(section(H100_MIG, "capabilities", "nvidia-smi -L"))
    assert [(g["index"], g["name"], g["uuid"]) for g in listed] == [
        (0, "NVIDIA H100 80GB HBM3", H100_UUID)]
    assert [(d["index"], d["name"], d["uuid"]) for d in listed[0]["mig_devices"]] == MIG_LIST


@pytest.mark.parametrize(("capture", "phase", "used", "free", "util", "temp", "mig"),
                         CSV_CASES, ids=[_csv_id(c) for c in CSV_CASES])
def test_collect_reads_every_capture_through_the_stand_in(
        capture, phase, used, free, util, temp, mig):
    run = stand_in_run(GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE=capture,
                       GPUFLEET_FIXTURE_NVIDIA_SMI_PHASE=phase)
    result = _nvidia_smi.collect(run)
    assert result["driver_version"] == "590.48.01"
    assert result["cuda_driver_version"] is None  # only the XML carries it
    [gpu] = result["gpus"]
    expected = expected_csv_gpu(used, free, util, temp, mig)
    assert pick(gpu, expected) == expected
    # The captures hold no XML: collect says what the CSV alone cannot tell.
    assert any(w.startswith("nvidia-smi -q -x exited 97") for w in result["warnings"])
    apps = next(case[2] for case in APPS_CASES if case[:2] == (capture, phase))
    assert [(p["pid"], p["name"], p["used_memory_mib"]) for p in gpu["processes"]] == apps
    if mig == "enabled":
        assert [(d["index"], d["name"], d["uuid"]) for d in gpu["mig_devices"]] == MIG_LIST
        assert run.calls[-1] == ["nvidia-smi", "-L"]
    else:
        assert gpu["mig_devices"] == []
        assert ["nvidia-smi", "-L"] not in run.calls


# --------------------------------------------------------------------------- merge

# Hand-written: no capture pairs an XML with a CSV of the same machine. Values the
# XML lacks (index 3, compute capability 8.0) prove which source each fact came from.
A100_CSV = ("index, uuid, pci.bus_id, compute_cap, memory.total [MiB]\n"
            "3, GPU-513536b6-7d19-9063-b049-1e69664bb298, 00000000:01:00.0, 8.0, 81920 MiB\n")


@pytest.mark.parametrize("csv", [
    A100_CSV,
    # matched by PCI bus id when the CSV has no uuid column
    "index, pci.bus_id, compute_cap\n3, 00000000:01:00.0, 8.0\n",
], ids=["by-uuid", "by-pci-bus-id"])
def test_collect_merges_csv_index_and_compute_cap_into_xml(csv):
    xml = (XML_DIR / "telegraf-a100-sxm4-v12.xml").read_text()
    listed = ("GPU 3: NVIDIA A100-SXM4-80GB (UUID: GPU-513536b6-7d19-9063-b049-1e69664bb298)\n"
              "  MIG 1g.20gb     Device  0: (UUID: MIG-11111111-0000-0000-0000-000000000000)\n")
    answers = {"-q": (0, xml, ""), "--query-gpu": (0, csv, ""), "-L": (0, listed, "")}

    def run(argv):
        return answers[argv[1].split("=")[0]]

    result = _nvidia_smi.collect(run)
    [gpu] = result["gpus"]
    assert (gpu["index"], gpu["compute_capability"]) == (3, "8.0")
    assert gpu["name"] == "NVIDIA A100-SXM4-80GB" and gpu["memory_used_mib"] == 50
    assert gpu["mig_devices"][0]["uuid"] == "MIG-11111111-0000-0000-0000-000000000000"
    assert gpu["mig_devices"][0]["name"] == "MIG 1g.20gb"
    assert gpu["mig_devices"][1]["uuid"] is None
    assert result["warnings"] == []


def test_collect_drops_a_field_an_old_driver_refuses():
    run = stand_in_run(GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE=H100,
                       GPUFLEET_STANDIN_UNSUPPORTED_FIELDS="compute_cap")
    result = _nvidia_smi.collect(run)
    log = [argv[1] for argv in run.calls if argv[1].startswith("--query-gpu=")]
    assert len(log) == 2 and "compute_cap" in log[0] and "compute_cap" not in log[1]
    [gpu] = result["gpus"]
    assert gpu["compute_capability"] is None
    assert gpu["memory_total_mib"] == 81559
    assert 'nvidia-smi does not know the field "compute_cap" (a driver older than 510): ' \
        "compute_capability is null" in result["warnings"]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("env", "message"), [
    (dict(GPUFLEET_FIXTURE_NVIDIA_SMI_XML=XML_DIR / "telegraf-tesla-t4.xml",
          GPUFLEET_STANDIN_MATCH="^-q -x$", GPUFLEET_STANDIN_GARBAGE="Segmentation fault"),
     r"^nvidia-smi -q -x: not XML \(line 1: 'Segmentation fault'\)$"),
    (dict(GPUFLEET_FIXTURE_NVIDIA_SMI_XML=XML_DIR / "telegraf-tesla-t4.xml",
          GPUFLEET_STANDIN_MATCH="^-q -x$", GPUFLEET_STANDIN_GARBAGE="<nvidia_smi_log><gpu>"),
     r"^nvidia-smi -q -x: not XML \(line 1: '<nvidia_smi_log><gpu>'\)$"),
    (dict(GPUFLEET_FIXTURE_NVIDIA_SMI_XML=XML_DIR / "telegraf-tesla-t4.xml",
          GPUFLEET_STANDIN_MATCH="^-q -x$", GPUFLEET_STANDIN_GARBAGE="<html>hello</html>"),
     r"^nvidia-smi -q -x: the root element is <html>, expected <nvidia_smi_log>$"),
    (dict(GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE=H100, GPUFLEET_STANDIN_MATCH="--query-gpu",
          GPUFLEET_STANDIN_GARBAGE="GPU 0: fine, thanks"),
     r"^nvidia-smi --query-gpu: not CSV with a header \(line 1: 'GPU 0: fine, thanks'\)$"),
    (dict(GPUFLEET_STANDIN_FAIL="9:NVIDIA-SMI has failed because it couldn't communicate "
                                "with the NVIDIA driver."),
     r"^nvidia-smi -q -x exited 9: NVIDIA-SMI has failed because it couldn't communicate with "
     r"the NVIDIA driver\.; nvidia-smi --query-gpu=\.\.\. --format=csv exited 9: NVIDIA-SMI"),
], ids=["xml-garbage", "xml-truncated", "xml-wrong-root", "csv-garbage", "no-driver"])
def test_collect_raises_naming_the_command(env, message):
    with pytest.raises(ValueError, match=message):
        _nvidia_smi.collect(stand_in_run(**env))


def test_collect_leaves_a_hang_to_the_runner():
    run = stand_in_run(timeout=1, GPUFLEET_STANDIN_HANG=30,
                       GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE=H100)
    with pytest.raises(subprocess.TimeoutExpired):
        _nvidia_smi.collect(run)


@pytest.mark.parametrize(("parse", "text", "message"), [
    (_nvidia_smi.parse_xml, "", r"^nvidia-smi -q -x: no output$"),
    (_nvidia_smi.parse_query_gpu_csv, "index, uuid\n0\n",
     r"^nvidia-smi --query-gpu: line 2 has 1 values for 2 columns: '0'$"),
    (_nvidia_smi.parse_query_gpu_csv, "", r"^nvidia-smi --query-gpu: no CSV header"),
    (_nvidia_smi.parse_query_apps_csv, "pid; name\n",
     r"^nvidia-smi --query-compute-apps: not CSV with a header \(line 1: 'pid; name'\)$"),
    (_nvidia_smi.parse_list, "GPU zero\n", r"^nvidia-smi -L: unexpected line 1: 'GPU zero'$"),
])
def test_parsers_reject_garbage(parse, text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_refused_field_is_its_own_error():
    with pytest.raises(_nvidia_smi.InvalidField) as caught:
        _nvidia_smi.parse_query_gpu_csv('Field "compute_cap" is not a valid field to query.\n')
    assert caught.value.field == "compute_cap"


@pytest.mark.parametrize("marker", ["[N/A]", "[Not Supported]", "[Insufficient Permissions]",
                                    "[Requested functionality has been deprecated]"])
def test_unknown_markers_are_none_never_zero(marker):
    csv = ("index, uuid, memory.total [MiB], memory.used [MiB], temperature.gpu, "
           "power.limit [W], utilization.gpu [%%], compute_cap\n"
           "0, GPU-1, %s, %s, %s, %s, %s, %s\n" % ((marker,) * 6))
    gpu = _nvidia_smi.gpu_from_query_row(_nvidia_smi.parse_query_gpu_csv(csv)[0])
    for key in ("memory_total_mib", "memory_used_mib", "temperature_c", "power_limit_w",
                "utilization_pct", "compute_capability"):
        assert gpu[key] is None, "%s for %s; got: %r" % (key, marker, gpu[key])
    assert gpu["healthy"] is True


def test_a_process_name_with_a_comma_stays_whole():
    rows = _nvidia_smi.parse_query_apps_csv(
        "gpu_uuid, pid, process_name, used_gpu_memory [MiB]\n"
        "GPU-1, 42, python -c print(1, 2), 100 MiB\n")
    assert rows == [{"gpu_uuid": "GPU-1", "pid": "42", "process_name": "python -c print(1, 2)",
                     "used_gpu_memory": "100 MiB"}]


# --------------------------------------------------------------------------- lost GPUs


def test_csv_row_of_a_lost_gpu_is_unhealthy():
    csv = ("index, uuid, name, pci.bus_id, memory.total [MiB], memory.used [MiB]\n"
           "0, GPU-a, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 81559 MiB, 10 MiB\n"
           "1, [GPU is lost], [GPU is lost], 00000000:3B:00.0, [GPU is lost], [Unknown Error]\n")
    gpus = [_nvidia_smi.gpu_from_query_row(r) for r in _nvidia_smi.parse_query_gpu_csv(csv)]
    assert [g["healthy"] for g in gpus] == [True, False]
    assert gpus[1]["errors"] == ["uuid: GPU is lost", "name: GPU is lost",
                                 "memory.total: GPU is lost", "memory.used: Unknown Error"]
    assert (gpus[1]["pci_bus_id"], gpus[1]["memory_total_mib"]) == ("0000:3b:00.0", None)


def _t4_xml():
    return (XML_DIR / "telegraf-tesla-t4.xml").read_text()


def _gb10_xml():
    """The T4 fixture renamed to the DGX Spark part (no GB10 capture exists)."""
    return _t4_xml().replace("<product_name>Tesla T4</product_name>",
                             "<product_name>NVIDIA GB10</product_name>")


def test_xml_gpu_reading_gpu_is_lost_is_unhealthy():
    # Derived in memory from the T4 fixture: the values a fallen-off GPU prints.
    text = (_t4_xml()
            .replace("<product_name>Tesla T4</product_name>",
                     "<product_name>Unknown Error</product_name>")
            .replace("<total>15360 MiB</total>", "<total>GPU is lost</total>")
            .replace("<gpu_temp>40 C</gpu_temp>", "<gpu_temp>GPU is lost</gpu_temp>"))
    [gpu] = _nvidia_smi.parse_xml(text)["gpus"]
    assert gpu["healthy"] is False
    assert gpu["errors"] == ["product_name: Unknown Error", "fb_memory_usage/total: GPU is lost",
                             "temperature/gpu_temp: GPU is lost"]
    assert (gpu["name"], gpu["memory_total_mib"], gpu["temperature_c"]) == (None, None, None)
    assert gpu["uuid"] == "GPU-d37e67a5-91dd-3774-a5cb-99096249601a"


def test_device_handle_error_before_the_xml_becomes_an_unhealthy_gpu():
    text = ("Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost.  "
            "Reboot the system to recover this GPU\n" + _t4_xml())
    gpus = _nvidia_smi.parse_xml(text)["gpus"]
    assert [(g["pci_bus_id"], g["healthy"]) for g in gpus] == [
        ("0000:00:1e.0", True), ("0000:3b:00.0", False)]
    assert "GPU is lost" in gpus[1]["errors"][0]


def test_collect_keeps_the_healthy_gpus_when_one_is_lost():
    text = "Unable to determine the device handle for GPU 0000:3B:00.0: Unknown Error\n" + \
        _t4_xml()

    def run(argv):
        if argv[1] == "-q":
            return 15, text, ""
        return 15, "Unable to determine the device handle for GPU 0000:3B:00.0: Unknown Error", ""

    result = _nvidia_smi.collect(run)
    assert [(g["name"], g["healthy"]) for g in result["gpus"]] == [
        ("Tesla T4", True), (None, False)]
    assert "nvidia-smi -q -x exited 15: Unable to determine the device handle for GPU " \
        "0000:3B:00.0: Unknown Error" in result["warnings"]


@pytest.mark.parametrize(("csv_answer", "index", "errors"), [
    # The CSV fails too: the lost GPU comes from the line before the XML alone.
    ((15, "Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost.  Reboot "
          "the system to recover this GPU\n", ""), None,
     ["nvidia-smi cannot open the GPU 0000:3b:00.0: GPU is lost.  Reboot the system to "
      "recover this GPU"]),
    # The CSV lists it with the failure in its cells, and its number: that one is kept.
    ((15, "index, uuid, pci.bus_id, memory.total [MiB]\n"
          "0, GPU-d37e67a5-91dd-3774-a5cb-99096249601a, 00000000:00:1E.0, 15360 MiB\n"
          "1, [GPU is lost], 00000000:3B:00.0, [GPU is lost]\n", ""), 1,
     ["nvidia-smi cannot open the GPU 0000:3b:00.0: GPU is lost.  Reboot the system to "
      "recover this GPU"]),
], ids=["csv-fails", "csv-lists-it"])
def test_a_lost_gpu_is_unhealthy_without_an_index_and_named(csv_answer, index, errors):
    text = ("Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost.  "
            "Reboot the system to recover this GPU\n" + _t4_xml())

    def run(argv):
        return (15, text, "") if argv[1] == "-q" else csv_answer

    gpus = _nvidia_smi.collect(run)["gpus"]
    assert [(g["index"], g["healthy"], g["pci_bus_id"]) for g in gpus] == [
        (0, True, "0000:00:1e.0"), (index, False, "0000:3b:00.0")]
    assert gpus[1]["errors"] == errors


@pytest.mark.parametrize("path", [
    "<used_memory>22 MiB</used_memory>", "<used>1032 MiB</used>", "<gpu_temp>40 C</gpu_temp>",
    "<product_name>Tesla T4</product_name>",
])
def test_xml_insufficient_permissions_is_unknown_not_a_failure(path):
    tag = path[1:path.index(">")]
    text = _t4_xml().replace(path, "<%s>Insufficient Permissions</%s>" % (tag, tag), 1)
    result = _nvidia_smi.parse_xml(text)
    [gpu] = result["gpus"]
    assert gpu["healthy"] is True
    values = {"used_memory": gpu["processes"][0]["used_memory_mib"],
              "used": gpu["memory_used_mib"], "gpu_temp": gpu["temperature_c"],
              "product_name": gpu["name"]}
    assert values[tag] is None


# --------------------------------------------------------------------------- unified memory


@pytest.mark.parametrize(("total", "system", "expected", "warning"), [
    ("[N/A]", 122880, 122880, "memory_total_mib is the system memory, 122880 MiB"),
    ("0 MiB", 122880, 122880, "memory_total_mib is the system memory, 122880 MiB"),
    ("[N/A]", None, None, "the system memory is unknown: memory_total_mib is null"),
])
def test_gpu_without_dedicated_memory_is_unified(total, system, expected, warning):
    # Derived in memory from the T4 fixture: how DGX Spark (GB10) reports its memory.
    text = _gb10_xml().replace("<total>15360 MiB</total>", "<total>%s</total>" % total)
    result = _nvidia_smi.parse_xml(text, system_memory_mib=system)
    [gpu] = result["gpus"]
    assert gpu["memory_kind"] == "unified"
    assert gpu["memory_total_mib"] == expected
    assert gpu["memory_used_mib"] is None and gpu["memory_free_mib"] is None
    assert len(result["warnings"]) == 1 and warning in result["warnings"][0]
    assert result["warnings"][0].startswith("GPU 0 (NVIDIA GB10) reports no dedicated memory")


@pytest.mark.parametrize("total", ["[N/A]", "N/A", "0 MiB"])
def test_a_discrete_gpu_without_a_memory_size_is_not_given_the_host_memory(total):
    # Derived in memory from the T4 fixture: a 24 GB RTX A5500 whose memory reads N/A.
    text = (_t4_xml().replace("<product_name>Tesla T4</product_name>",
                              "<product_name>NVIDIA RTX A5500</product_name>")
            .replace("<total>15360 MiB</total>", "<total>%s</total>" % total))
    result = _nvidia_smi.parse_xml(text, system_memory_mib=61440)
    [gpu] = result["gpus"]
    assert (gpu["memory_kind"], gpu["memory_total_mib"]) == ("dedicated", None)
    assert result["warnings"] == [
        "GPU 0 (NVIDIA RTX A5500) reports no memory size and is not a part known to share the "
        "host's memory: memory_total_mib is null"]


def test_collect_keeps_unified_memory_when_the_csv_reads_zero():
    text = _gb10_xml().replace("<total>15360 MiB</total>", "<total>[N/A]</total>")
    csv = ("index, uuid, memory.total [MiB], memory.used [MiB], memory.free [MiB], compute_cap\n"
           "0, GPU-d37e67a5-91dd-3774-a5cb-99096249601a, 0 MiB, 0 MiB, 0 MiB, 12.1\n")
    answers = {"-q": (0, text, ""), "--query-gpu": (0, csv, "")}
    result = _nvidia_smi.collect(lambda argv: answers[argv[1].split("=")[0]],
                                 system_memory_mib=122880)
    [gpu] = result["gpus"]
    assert (gpu["memory_kind"], gpu["memory_total_mib"], gpu["memory_used_mib"],
            gpu["memory_free_mib"], gpu["compute_capability"]) == (
        "unified", 122880, None, None, "12.1")
