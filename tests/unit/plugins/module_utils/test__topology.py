# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``topology`` of each GPU fact: NVML (through the real nvidia-ml-py on the stand-in
libnvidia-ml.so.1), ``nvidia-smi topo -m`` (real captures and the lab's stand-in), the
merge into ``ansible_facts.gpus`` and the lab inventory's topology keys."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_facts
from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import new_gpu
from ansible_collections.gpufleet.inference.plugins.module_utils._nvidia_smi import (
    collect,
    parse_topo_matrix,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._nvml import read_gpus

ROOT = Path(__file__).resolve().parents[4]
FIXTURES = ROOT / "tests" / "fixtures"
TOPO = FIXTURES / "nvidia-smi-topo"
H100_CAPTURE = (FIXTURES / "nvidia-smi-captures"
                / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt")
T4 = "GPU-d37e67a5-91dd-3774-a5cb-99096249601a"
LINKS = ("nvlink", "pcie_switch", "host_bridge", "numa", "system")

# lab/lab.py under a name of its own (a plain "import lab" could find the tests/lab folder).
_spec = importlib.util.spec_from_file_location("gpufleet_lab_cli_topology",
                                               ROOT / "lab" / "lab.py")
lab_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab_cli)


def _gpu(bus, **topology):
    gpu = {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-%s" % bus.replace(":", "-"),
           "pci_bus_id": "00000000:%s:00.0" % bus, "memory_total_mib": 81920,
           "compute_capability": "8.0"}
    gpu.update(topology)
    return gpu


def _links(topology):
    """{peer index: (link, nvlink_count)} of one GPU's topology."""
    return {peer["index"]: (peer["link"], peer["nvlink_count"]) for peer in topology}


@pytest.fixture
def nvml(nvml_lib, use_nvml_lib):
    return use_nvml_lib(nvml_lib())


def lab_multi():
    return lab_cli.load_inventory(str(ROOT / "inventory" / "lab"))["lab-multi"]


# --------------------------------------------------------------------------- NVML


def test_one_gpu_has_no_peers_and_asks_nothing(nvml, nvml_state):
    nvml_state.write_gpus([_gpu("01", fail="nvmlDeviceGetTopologyCommonAncestor 999")])
    result = read_gpus(nvml, topology=True)
    assert result["topology"] == {0: []}
    assert result["warnings"] == []


def test_topology_is_only_read_when_asked(nvml, nvml_state):
    nvml_state.write_gpus([_gpu("01"), _gpu("02")])
    assert "topology" not in read_gpus(nvml)


@pytest.mark.parametrize(("first", "second", "link"), [
    ({}, {}, ("numa", None)),
    ({"numa_node": 0}, {"numa_node": 1}, ("system", None)),
    ({"host_bridge": 3}, {"host_bridge": 3}, ("host_bridge", None)),
    ({"pcie_switch": 7, "host_bridge": 3}, {"pcie_switch": 7, "host_bridge": 3},
     ("pcie_switch", None)),
    # NVLink wins over any PCIe level
    ({"numa_node": 0, "nvlink": "00000000:02:00.0 2"},
     {"numa_node": 1, "nvlink": "00000000:01:00.0 2"}, ("nvlink", 2)),
    # both through NVSwitches (HGX/DGX): NV<the links each has to the switches>
    ({"nvlink": "00000000:C4:00.0 12 switch"}, {"nvlink": "00000000:C5:00.0 12 switch"},
     ("nvlink", 12)),
    # an active link to a GPU this process cannot see (a container): not counted
    ({"nvlink": "00000000:09:00.0 4", "nvlink_ports": 12},
     {"nvlink": "00000000:0A:00.0 4"}, ("numa", None)),
], ids=["same-numa", "across-numa", "host-bridge", "pcie-switch", "nvlink", "nvswitch",
        "nvlink-to-unseen-gpu"])
def test_two_gpus_through_nvml(nvml, nvml_state, first, second, link):
    nvml_state.write_gpus([_gpu("01", **first), _gpu("02", **second)])
    result = read_gpus(nvml, topology=True)
    gpus = result["gpus"]
    assert result["topology"] == {
        0: [{"index": 1, "uuid": gpus[1]["uuid"], "link": link[0], "nvlink_count": link[1]}],
        1: [{"index": 0, "uuid": gpus[0]["uuid"], "link": link[0], "nvlink_count": link[1]}],
    }
    assert result["warnings"] == []


def test_the_eight_gpu_lab_host_through_nvml(nvml, nvml_state):
    nvml_state.write(lab_cli.state_text("lab-multi", lab_multi()))
    result = read_gpus(nvml, topology=True)
    topology = result["topology"]
    assert sorted(topology) == list(range(8)) and result["warnings"] == []
    for index, links in topology.items():
        assert [peer["index"] for peer in links] == [i for i in range(8) if i != index]
        assert [peer["uuid"] for peer in links] == [
            gpu["uuid"] for gpu in result["gpus"] if gpu["index"] != index]
        for peer, (link, count) in _links(links).items():
            if peer == index ^ 1:
                assert (link, count) == ("nvlink", 4)
            elif peer // 4 == index // 4:
                assert (link, count) == ("numa", None)
            else:
                assert (link, count) == ("system", None)


@pytest.mark.parametrize(("fail", "nulls"), [
    ("nvmlDeviceGetTopologyCommonAncestor 999", [0, 1, 2]),
    ("nvmlDeviceGetNvLinkState 999", [1]),
    ("nvmlDeviceGetNvLinkRemotePciInfo_v2 999", [1]),
], ids=["common-ancestor", "nvlink-state", "remote-pci"])
def test_a_failing_topology_call_makes_that_gpu_null_with_one_warning(
        nvml, nvml_state, fail, nulls):
    """The fail line on GPU 1 fails its calls (a pair's call fails for both GPUs of it)."""
    nvml_state.write_gpus([
        _gpu("01", nvlink="00000000:02:00.0 1"),
        _gpu("02", nvlink="00000000:01:00.0 1", fail=fail),
        _gpu("03"),
    ])
    result = read_gpus(nvml, topology=True)
    assert [i for i, links in result["topology"].items() if links is None] == nulls
    assert all(gpu["healthy"] for gpu in result["gpus"])
    assert len(result["warnings"]) == len(nulls)
    assert "GPU 1 (NVIDIA A100-SXM4-80GB): topology is null" in result["warnings"][
        nulls.index(1)]
    assert "failed: Unknown Error (NVML error 999)" in result["warnings"][0]


def test_a_lost_gpu_is_nobodys_peer(nvml, nvml_state):
    nvml_state.write_gpus([_gpu("01"), _gpu("02", lost=1), _gpu("03", numa_node=1)])
    result = read_gpus(nvml, topology=True)
    assert result["topology"][1] is None
    assert _links(result["topology"][0]) == {2: ("system", None)}
    assert _links(result["topology"][2]) == {0: ("system", None)}


@pytest.mark.parametrize(("state", "link", "call", "expected"), [
    # no NVLink on the GPU: NOT_SUPPORTED on every link (nvml.h)
    ({}, 0, "nvmlDeviceGetNvLinkState", "NVMLError_NotSupported"),
    # a link number the GPU does not have: INVALID_ARGUMENT
    ({"nvlink": "00000000:02:00.0 2", "nvlink_ports": 4}, 4, "nvmlDeviceGetNvLinkState",
     "NVMLError_InvalidArgument"),
    ({"nvlink": "00000000:02:00.0 2", "nvlink_ports": 4}, 1, "nvmlDeviceGetNvLinkState", 1),
    ({"nvlink": "00000000:02:00.0 2", "nvlink_ports": 4}, 2, "nvmlDeviceGetNvLinkState", 0),
    ({"nvlink": "00000000:02:00.0 2"}, 1, "nvmlDeviceGetNvLinkRemoteDeviceType", 0),
    ({"nvlink": "00000000:C4:00.0 2 switch"}, 0, "nvmlDeviceGetNvLinkRemoteDeviceType", 2),
])
def test_the_stand_in_answers_nvlink_calls_as_nvml_h_says(nvml, nvml_state, state, link, call,
                                                          expected):
    nvml_state.write_gpus([_gpu("01", **state), _gpu("02")])
    nvml.nvmlInit()
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        try:
            got = getattr(nvml, call)(handle, link)
        except nvml.NVMLError as exc:
            got = type(exc).__name__
    finally:
        nvml.nvmlShutdown()
    assert got == expected


def test_the_stand_in_gives_the_remote_bus_id_of_a_link(nvml, nvml_state):
    nvml_state.write_gpus([_gpu("01", nvlink="00000000:8A:00.0 1"), _gpu("8A")])
    nvml.nvmlInit()
    try:
        pci = nvml.nvmlDeviceGetNvLinkRemotePciInfo(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    finally:
        nvml.nvmlShutdown()
    assert (pci.busId, pci.bus) == ("00000000:8A:00.0", 0x8A)


@pytest.mark.parametrize("line", [
    "nvlink 00000000:02:00.0 0",
    "nvlink 00000000:02:00.0 2 bridge",
    "nvlink 02 2",
    "nvlink_ports 40",
], ids=["no-links", "unknown-kind", "bad-bus-id", "too-many-ports"])
def test_the_stand_in_refuses_a_bad_topology_line(nvml, nvml_state, line):
    nvml_state.write("driver_version 590.48.01\ngpu\nname x\n%s\n" % line)
    with pytest.raises(nvml.NVMLError) as caught:
        nvml.nvmlInit()
    assert caught.value.value == 999


# --------------------------------------------------------------------------- nvidia-smi


def _capture_section(path, command):
    text = path.read_text(encoding="utf-8")
    body = text.split("# $ %s\n" % command, 1)[1].split("\n", 1)[1]
    return body.split("#" * 80, 1)[0]


def test_the_real_590_single_gpu_matrix_with_its_underlined_header():
    text = _capture_section(H100_CAPTURE, "nvidia-smi topo -m")
    assert "\x1b[4m" in text
    assert parse_topo_matrix(text) == {0: []}


@pytest.mark.parametrize(("fixture", "count", "expected"), [
    ("club-3090-1229__2x-rtx5090-phb.txt", 2, {0: {1: ("host_bridge", None)}}),
    ("club-3090-46__5x-rtx-pcie-2-numa.txt", 5, {
        0: {1: ("system", None), 2: ("system", None), 3: ("system", None),
            4: ("system", None)},
        1: {0: ("system", None), 2: ("host_bridge", None), 3: ("numa", None),
            4: ("numa", None)},
        3: {0: ("system", None), 1: ("numa", None), 2: ("numa", None),
            4: ("host_bridge", None)},
    }),
    ("nccl-1617__4x-h100-nv6-nics.trimmed.txt", 4, {
        index: {peer: ("nvlink", 6) for peer in range(4) if peer != index}
        for index in range(4)}),
])
def test_real_topo_matrices(fixture, count, expected):
    matrix = parse_topo_matrix((TOPO / fixture).read_text(encoding="utf-8"))
    for index, links in expected.items():
        assert _links(matrix[index]) == links
    assert sorted(matrix) == list(range(count))
    for links in matrix.values():
        assert all(peer["link"] in LINKS for peer in links)


@pytest.mark.parametrize(("text", "message"), [
    ("", "nvidia-smi topo -m: no output"),
    ("NVIDIA-SMI has failed\n", "no GPU0, GPU1, ... columns (line 1: 'NVIDIA-SMI has failed')"),
    ("\tGPU0\tGPU1\nGPU0\t X \tPHB\n", "no row for GPU1"),
    ("\tGPU0\tGPU1\nGPU0\t X \tPHB\nGPU1\tFOO\t X \n",
     "row GPU1, column GPU0 is 'FOO', not one of X, NV<n>, PIX"),
    ("\tGPU0\tGPU1\nGPU0\tPHB\t X \nGPU1\tPHB\t X \n",
     "row GPU0, column GPU0 is 'PHB', expected X"),
    ("\tGPU0\tGPU1\nGPU0\t X \nGPU1\tPHB\t X \n", "line 2: 1 cells for 2 GPU columns"),
    ("\tGPU0\tGPU1\nGPU0\t X \tNV0\nGPU1\tNV0\t X \n", "is 'NV0', not one of"),
    ("\tGPU0\tGPU1\nGPU0\t X \tPHB\nGPU0\tPHB\t X \n", "line 3: row GPU0 does not fit"),
    ("\tGPU1\tGPU2\nGPU1\t X \tPHB\n", "no GPU0, GPU1, ... columns"),
], ids=["empty", "no-header", "missing-row", "unknown-cell", "no-diagonal", "short-row",
        "nv0", "duplicate-row", "columns-not-from-0"])
def test_a_garbled_matrix_is_refused_naming_the_place(text, message):
    with pytest.raises(ValueError, match="nvidia-smi topo -m") as caught:
        parse_topo_matrix(text)
    assert message in str(caught.value)


def _answers(topo):
    xml = (FIXTURES / "nvidia-smi-xml" / "telegraf-tesla-t4.xml").read_text()
    second = xml.replace(T4, "GPU-second").replace("00000000:00:1E.0", "00000000:00:1F.0")
    body = second.split("<gpu id=", 1)[1].rsplit("</gpu>", 1)[0]
    both = xml.replace("</gpu>", "</gpu>\n<gpu id=" + body + "</gpu>", 1)
    csv = ("index, uuid, pci.bus_id\n0, %s, 00000000:00:1E.0\n1, GPU-second, "
           "00000000:00:1F.0\n" % T4)
    answers = {"-q": (0, both, ""), "--query-gpu": (0, csv, ""), "-L": (0, "", ""),
               "topo": topo}
    calls = []

    def run(argv):
        calls.append(argv)
        answer = answers[argv[1].split("=")[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return run, calls


@pytest.mark.parametrize(("topo", "expected", "warning"), [
    ((0, "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV12\t0-7\nGPU1\tNV12\t X \t0-7\n", ""),
     {0: [{"index": 1, "uuid": "GPU-second", "link": "nvlink", "nvlink_count": 12}],
      1: [{"index": 0, "uuid": T4, "link": "nvlink", "nvlink_count": 12}]}, None),
    ((4, "Failed to run topology: Not Supported\n", ""), {0: None, 1: None},
     "nvidia-smi topo -m exited 4: Failed to run topology: Not Supported: topology is null"),
    ((0, "garbage\n", ""), {0: None, 1: None},
     "nvidia-smi topo -m: no GPU0, GPU1, ... columns (line 1: 'garbage'): topology is null"),
    (RuntimeError("did not answer within 60 seconds"), {0: None, 1: None},
     "nvidia-smi topo -m: did not answer within 60 seconds: topology is null"),
    ((0, "\tGPU0\nGPU0\t X \n", ""), {0: [], 1: None},
     "nvidia-smi topo -m has no GPU1: its topology is null"),
], ids=["nvlink", "exit-code", "garbage", "runner-fails", "gpu-missing"])
def test_collect_reads_topo_m_for_two_gpus_and_never_fails_for_it(topo, expected, warning):
    run, calls = _answers(topo)
    result = collect(run, topology=True)
    assert [gpu["index"] for gpu in result["gpus"]] == [0, 1]
    assert result["topology"] == expected
    assert (warning in result["warnings"]) if warning else result["warnings"] == []
    assert ["nvidia-smi", "topo", "-m"] in calls


def test_collect_does_not_ask_topo_for_one_gpu_nor_when_not_asked():
    xml = (FIXTURES / "nvidia-smi-xml" / "telegraf-tesla-t4.xml").read_text()
    calls = []

    def run(argv):
        calls.append(argv)
        answers = {"-q": (0, xml, ""),
                   "--query-gpu": (0, "index, pci.bus_id\n0, 00000000:00:1E.0\n", "")}
        return answers[argv[1].split("=")[0]]

    assert collect(run, topology=True)["topology"] == {0: []}
    assert "topology" not in collect(run)
    assert not [argv for argv in calls if argv[1] == "topo"]


def test_the_stand_in_nvidia_smi_prints_what_nvml_reads(nvml_lib, nvml, nvml_state):
    """The lab's `nvidia-smi topo -m` (real layout, underlined header) parses to the links
    NVML gives for the 8-GPU lab host."""
    nvml_state.write(lab_cli.state_text("lab-multi", lab_multi()))
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(nvml_lib()))
    out = subprocess.run([sys.executable, str(ROOT / "lab" / "servers" / "nvidia_smi.py"),
                          "topo", "-m"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("\t\x1b[4mGPU0\tGPU1\t")
    assert "\nGPU4\tSYS\tSYS\tSYS\tSYS\t X \tNV4\tNODE\tNODE\tN/A\t1\t\tN/A\n" in out.stdout
    matrix = parse_topo_matrix(out.stdout)
    nvml_view = read_gpus(nvml, topology=True)["topology"]
    assert {i: _links(links) for i, links in matrix.items()} == {
        i: _links(links) for i, links in nvml_view.items()}


# --------------------------------------------------------------------------- ansible_facts.gpus


def _reader(count, topology=True, vendor="nvidia"):
    gpus = [new_gpu(index=i, vendor=vendor, uuid="GPU-%d" % i, healthy=True)
            for i in range(count)]
    result = {"gpus": gpus, "warnings": []}
    if topology:
        result["topology"] = {
            i: [{"index": j, "uuid": "GPU-%d" % j, "link": "nvlink" if i ^ 1 == j else "numa",
                 "nvlink_count": 4 if i ^ 1 == j else None} for j in range(count) if j != i]
            for i in range(count)}
    return lambda: result


def _unavailable():
    raise _gpu_facts.BackendUnavailable("not here")


@pytest.mark.parametrize("count", [1, 2, 8])
def test_every_gpu_fact_carries_its_topology(count):
    readers = {"nvml": _reader(count), "nvidia-smi": _unavailable, "amd-smi": _unavailable,
               "rocm-smi": _unavailable, "sysfs": _unavailable}
    gpus = _gpu_facts.gather("auto", readers)["gpus"]
    assert len(gpus) == count
    for gpu in gpus:
        topology = gpu["topology"]
        assert isinstance(topology, list) and len(topology) == count - 1
        assert [peer["index"] for peer in topology] == sorted(
            i for i in range(count) if i != gpu["index"])
        for peer in topology:
            assert set(peer) == {"index", "uuid", "link", "nvlink_count"}
            assert peer["link"] in LINKS
            assert (peer["link"] == "nvlink") == (peer["nvlink_count"] is not None)


def test_gpus_of_a_backend_without_topology_have_null():
    readers = {"nvml": _reader(2), "nvidia-smi": _unavailable, "amd-smi": _reader(2, False, "amd"),
               "rocm-smi": _unavailable, "sysfs": _unavailable}
    gpus = _gpu_facts.gather("auto", readers)["gpus"]
    assert [(gpu["vendor"], gpu["index"], gpu["topology"] is None) for gpu in gpus] == [
        ("nvidia", 0, False), ("nvidia", 1, False), ("amd", 2, True), ("amd", 3, True)]
    # the AMD GPUs were renumbered; the NVIDIA peers keep their numbers
    assert [peer["index"] for peer in gpus[0]["topology"]] == [1]


# --------------------------------------------------------------------------- lab inventory


def test_the_lab_inventory_writes_topology_lines():
    lines = lab_cli.state_text("lab-multi", lab_multi()).splitlines()
    gpu5 = lines[[i for i, line in enumerate(lines) if line == "gpu"][5]:]
    assert "numa_node 1" in gpu5 and "nvlink_ports 12" in gpu5
    assert "nvlink 00000000:87:00.0 4" in gpu5


@pytest.mark.parametrize(("gpus", "message"), [
    ([{"nvlink": [{"peer": 1, "links": 4}]}, {}],
     "lab-t: lab_gpus[0].nvlink[0]: 4 NVLinks to GPU 1, but lab_gpus[1] lists none back"),
    ([{"nvlink": [{"peer": 0, "links": 4}]}, {}], "lab_gpus[0].nvlink[0].peer is the GPU itself"),
    ([{"nvlink": [{"peer": 2, "links": 4}]}, {}],
     "lab_gpus[0].nvlink[0].peer must be an integer 0-1; got: 2"),
    ([{"nvlink": [{"peer": 1, "links": 40}]}, {"nvlink": [{"peer": 0, "links": 40}]}],
     "lab_gpus[0].nvlink[0].links must be an integer 1-36; got: 40"),
    ([{"nvlink": [{"peer": 1}]}, {}], "lab_gpus[0].nvlink[0] must be {peer, links}"),
    ([{"numa_node": "0"}, {}], "lab_gpus[0].numa_node must be an integer 0-255; got: '0'"),
    ([{"nvlink_ports": 2, "nvlink": [{"peer": 1, "links": 4}]},
      {"nvlink": [{"peer": 0, "links": 4}]}],
     "lab_gpus[0] has 4 NVLinks, more than its nvlink_ports 2"),
], ids=["one-sided", "self", "no-such-peer", "too-many-links", "shape", "numa-text",
        "over-ports"])
def test_the_lab_refuses_a_bad_topology(gpus, message):
    hvars = {"lab_gpus": [dict(_gpu("0%d" % (i + 1)), memory_mib=1, **gpu)
                          for i, gpu in enumerate(gpus)]}
    with pytest.raises(lab_cli.LabError) as caught:
        lab_cli.state_text("lab-t", hvars)
    assert message in str(caught.value)


class _Module:
    """What _gpu_readers uses of AnsibleModule: get_bin_path and run_command."""

    def __init__(self, answers):
        self.answers = answers
        self.commands = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name if name in ("nvidia-smi", "timeout") else None

    def run_command(self, command, environ_update=None):
        argv = command[4:]  # timeout --kill-after=2 <seconds> <path> ...
        self.commands.append(argv)
        return self.answers[argv[0].split("=")[0]]


@pytest.mark.parametrize("topology", [True, False])
def test_gpu_facts_readers_take_topology_from_nvidia_smi_unless_told_not_to(topology,
                                                                            monkeypatch):
    from ansible_collections.gpufleet.inference.plugins.module_utils import (  # noqa: PLC0415
        _gpu_readers,
    )

    run, _calls = _answers((0, "\tGPU0\tGPU1\nGPU0\t X \tSYS\nGPU1\tSYS\t X \n", ""))
    answers = {"-q": run(["nvidia-smi", "-q"]), "--query-gpu": run(["nvidia-smi", "--query-gpu"]),
               "topo": run(["nvidia-smi", "topo"])}
    module = _Module(answers)
    monkeypatch.setattr(_gpu_readers, "HAS_PYNVML", False)
    result = _gpu_readers.read_gpus(module, backend="auto", timeout=5, topology=topology)
    assert result["answered"] == ["nvidia-smi"]
    links = [gpu["topology"] for gpu in result["gpus"]]
    if topology:
        assert links == [[{"index": 1, "uuid": "GPU-second", "link": "system",
                           "nvlink_count": None}],
                         [{"index": 0, "uuid": T4, "link": "system", "nvlink_count": None}]]
    else:
        assert links == [None, None]
    assert (["topo", "-m"] in module.commands) is topology


def test_lab_nvlink_peers_are_nvml_indexes_on_a_mixed_host():
    """An AMD GPU listed first does not shift the NVIDIA GPUs' numbers."""
    nvidia = [dict(_gpu("0%d" % (i + 1)), memory_mib=1, nvlink=[{"peer": 1 - i, "links": 2}])
              for i in range(2)]
    amd = {"vendor": "amd", "name": "AMD Instinct MI210", "memory_mib": 65520,
           "uuid": "amd-0", "compute_capability": "9.0"}
    text = lab_cli.state_text("lab-t", {"lab_gpus": [amd, *nvidia]})
    assert "nvlink 00000000:02:00.0 2" in text and "nvlink 00000000:01:00.0 2" in text


def test_collect_with_a_lost_gpu_gives_the_other_no_peers_without_asking():
    xml = (FIXTURES / "nvidia-smi-xml" / "telegraf-tesla-t4.xml").read_text()
    lost = "Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost\n"
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[1] == "-q":
            return 15, lost + xml, ""
        return 15, lost, ""

    result = collect(run, topology=True)
    assert [(gpu["index"], gpu["healthy"]) for gpu in result["gpus"]] == [
        (0, True), (None, False)]
    assert result["topology"] == {0: []}
    assert not [argv for argv in calls if argv[1] == "topo"]
