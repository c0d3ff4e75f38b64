# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Preflight logic: .env, what the run fetches, disks, GPU memory, ports, the report.

The recommended profile is _plan.recommend_profile's (test__plan.py)."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _preflight as pf
from ansible_collections.gpufleet.inference.plugins.module_utils import _verify

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "preflight"
GB = 1000 * 1000 * 1000
GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024


@pytest.mark.parametrize("count, text, default, remote, want", [
    (2, None, "ollama", False, {"write": True, "mode": "ollama", "existing": None}),
    (2, "", "ollama", False, {"write": True, "mode": "ollama", "existing": None}),
    (2, "TOKEN=x\n# DUAL_GPU_MODE=vllm\n", "mixed", False,
     {"write": True, "mode": "mixed", "existing": None}),
    (2, "TOKEN=x\nDUAL_GPU_MODE=vllm\n", "ollama", False,
     {"write": False, "mode": "vllm", "existing": "vllm"}),
    (2, 'export DUAL_GPU_MODE="mixed"\n', "ollama", False,
     {"write": False, "mode": "mixed", "existing": "mixed"}),
    (3, "", "ollama", False, {"write": True, "mode": "ollama", "existing": None}),
    (1, "", "ollama", False, {"write": False, "mode": "ollama", "existing": None}),
    (0, "", "ollama", False, {"write": False, "mode": "ollama", "existing": None}),
    (2, "", "ollama", True, {"write": False, "mode": "ollama", "existing": None}),
])
def test_dual_gpu_mode_plan(count, text, default, remote, want):
    assert pf.dual_gpu_mode_plan(count, text, default, remote) == want


@pytest.mark.parametrize("text, default, message", [
    ("DUAL_GPU_MODE=both\n", "ollama", ".env DUAL_GPU_MODE must be one of ollama, vllm, mixed; "
     "got: 'both'"),
    ("", "sglang", "preflight_dual_gpu_mode_default must be one of ollama, vllm, mixed; "
     "got: 'sglang'"),
])
def test_dual_gpu_mode_plan_rejects(text, default, message):
    with pytest.raises(ValueError) as info:
        pf.dual_gpu_mode_plan(2, text, default)
    assert str(info.value) == message


# ---- downloads ----------------------------------------------------------------------------

def item(kind, name, services, size=0, present=False, filesystem="/"):
    """One entry of the downloads module's planned result."""
    return {"kind": kind, "name": name, "services": services, "present": present,
            "bytes": 0 if present else size, "fetched_bytes": 0, "filesystem": filesystem}


def planned(items, free=None):
    """The downloads module's result with state: planned (its by_filesystem from the items)."""
    free = free or {}
    by_fs = {}
    for entry in items:
        fs = by_fs.setdefault(entry["filesystem"], {
            "bytes": 0, "free_bytes": free.get(entry["filesystem"], 100 * GIB)})
        fs["bytes"] += entry["bytes"] or 0
    return {"changed": False, "downloads": items, "by_filesystem": by_fs,
            "total_bytes": sum(e["bytes"] or 0 for e in items)}


DUAL_ITEMS = [
    item("image", "ollama/ollama:latest", ["ollama", "vision", "ollama_research"],
         1300 * 1000 * 1000, filesystem="/var/lib/docker"),
    item("image", "quay.io/docling-project/docling-serve:latest", ["docling"],
         4400 * 1000 * 1000, filesystem="/var/lib/docker"),
    item("ollama", "llama3.2:3b", ["ollama", "ollama_research"], present=True,
         filesystem="/srv"),
    item("ollama", "moondream:latest", ["vision"], 1700 * 1000 * 1000, filesystem="/srv"),
    item("huggingface", "Qwen/Qwen2.5-1.5B-Instruct", ["vllm"], 3087467108, filesystem="/srv"),
]


def test_download_table_counts_what_is_missing_per_filesystem():
    table = pf.download_table(planned(DUAL_ITEMS))
    assert [(i["kind"], i["name"], i["present"], i["bytes"], i["filesystem"])
            for i in table["items"]] == [
        ("image", "ollama/ollama:latest", False, 1300000000, "/var/lib/docker"),
        ("image", "quay.io/docling-project/docling-serve:latest", False, 4400000000,
         "/var/lib/docker"),
        ("ollama", "llama3.2:3b", True, 0, "/srv"),
        ("ollama", "moondream:latest", False, 1700000000, "/srv"),
        ("huggingface", "Qwen/Qwen2.5-1.5B-Instruct", False, 3087467108, "/srv")]
    assert table["items"][0]["services"] == ["ollama", "vision", "ollama_research"]
    assert table["total_bytes"] == 10487467108 and table["present"] == 1
    assert table["unknown"] == []
    assert table["by_filesystem"] == {
        "/srv": {"bytes": 4787467108, "free_bytes": 100 * GIB},
        "/var/lib/docker": {"bytes": 5700000000, "free_bytes": 100 * GIB}}


def test_download_table_present_costs_nothing_and_unknown_sizes_are_named():
    listed = [dict(item("image", "a:1", ["x"], 5), present=True, bytes=7),
              dict(item("image", "private.example/b:1", ["y"]), bytes=None)]
    table = pf.download_table(planned(listed))
    assert [i["bytes"] for i in table["items"]] == [0, None]
    assert table["total_bytes"] == 0 and table["unknown"] == ["private.example/b:1"]


@pytest.mark.parametrize("result", [None, {"skipped": True, "changed": False,
                                           "skip_reason": "Conditional result was False"}])
def test_download_table_without_a_result_is_none(result):
    assert pf.download_table(result) is None


@pytest.mark.parametrize("result, message", [
    ("x", "downloads must be the result of gpufleet.inference.downloads (state: planned); "
     "got: 'x'"),
    ({"downloads": {}}, "downloads.downloads must be a list; got: {}"),
    ({"downloads": [item("image", "", ["x"])]},
     "downloads.downloads[0].name must be a non-empty string; got: ''"),
    ({"downloads": [item("image", "a:1", ["x"], -1)]},
     "downloads.downloads[0].bytes must be an integer >= 0; got: -1"),
    ({"downloads": [dict(item("image", "a:1", ["x"]), services="x")]},
     "downloads.downloads[0].services must be a list of names; got: 'x'"),
    ({"downloads": [], "by_filesystem": {"/": {"bytes": 1, "free_bytes": -2}}},
     "downloads.by_filesystem['/'].free_bytes must be an integer >= 0; got: -2"),
    ({"downloads": [], "by_filesystem": []},
     "downloads.by_filesystem must be a dict of mount point: {bytes, free_bytes}; got: []"),
])
def test_download_table_rejects(result, message):
    with pytest.raises(ValueError) as info:
        pf.download_table(result)
    assert str(info.value) == message


@pytest.mark.parametrize("size, text", [
    (0, "0 MB"), (1, "< 1 MB"), (999999, "< 1 MB"), (1000000, "1 MB"), (800 * 10 ** 6, "800 MB"),
    (999600000, "1.0 GB"), (1500 * 10 ** 6, "1.5 GB"), (10 ** 10, "10.0 GB"),
])
def test_size_text(size, text):
    assert pf.size_text(size) == text


# ---- disks --------------------------------------------------------------------------------

@pytest.mark.parametrize("by_fs, reserve, want", [
    # 5700000000 bytes = 5436 MiB (rounded up).
    ({"/var/lib/docker": {"bytes": 5700000000, "free_bytes": 20 * GIB}}, 0,
     [("/var/lib/docker", 5436, 20480, True)]),
    ({"/var/lib/docker": {"bytes": 5700000000, "free_bytes": 20 * GIB}}, 15045,
     [("/var/lib/docker", 20481, 20480, False)]),
    ({"/var/lib/docker": {"bytes": 20 * GIB, "free_bytes": 20 * GIB}}, 0,
     [("/var/lib/docker", 20480, 20480, True)]),
    ({"/": {"bytes": 0, "free_bytes": 0}, "/srv": {"bytes": 2 * GIB, "free_bytes": GIB}}, 0,
     [("/", 0, 0, True), ("/srv", 2048, 1024, False)]),
    ({"/srv": {"bytes": 1, "free_bytes": None}}, 0, [("/srv", 1, None, False)]),
])
def test_disk_check_per_filesystem(by_fs, reserve, want):
    result = pf.disk_check(by_fs, reserve)
    assert [(r["filesystem"], r["required_mib"], r["free_mib"], r["ok"]) for r in result] == want


def test_disk_check_rejects():
    with pytest.raises(ValueError) as info:
        pf.disk_check([], 0)
    assert str(info.value) == "by_filesystem must be a dict of mount point: {bytes, " \
        "free_bytes}; got: []"
    with pytest.raises(ValueError) as info:
        pf.disk_check({}, -1)
    assert str(info.value) == "preflight_disk_reserve_mib must be an integer >= 0; got: -1"


# ---- GPU memory ---------------------------------------------------------------------------

def placed(name, engine, index, budget, util=None):
    settings = {"gpu_memory_utilization": util} if util is not None else {}
    return {"name": name, "engine": engine, "active": True,
            "placement": {"gpu_index": index, "vram_budget_mib": budget,
                          "engine_settings": settings}}


def gpu(index, total, free, processes=()):
    return {"index": index, "memory_total_mib": total, "memory_free_mib": free,
            "processes": list(processes), "healthy": True}


MIXED = {"dual_gpu_mode": "mixed", "services": [
    placed("ollama", "ollama", 0, 3000), placed("ollama_research", "ollama", 1, 3000),
    placed("vllm", "vllm", 1, 8000, 0.48)]}


@pytest.mark.parametrize("gpus, ok, warnings", [
    ([gpu(0, 24576, 24576), gpu(1, 16384, 16000)], True, []),
    ([gpu(0, 24576, 24576), gpu(1, 16384, 9000)], False, [
        "DUAL_GPU_MODE=mixed: GPU 1 has only 8.8 GB free; ollama_research + vllm need 10.7 GB "
        "(their budgets). Running them together may cause OOM. Consider DUAL_GPU_MODE=ollama "
        "or DUAL_GPU_MODE=vllm instead.",
        "vllm: vLLM starts only when free memory >= gpu_memory_utilization x total (0.48 x "
        "16384 = 7865 MiB), but GPU 1 will have 6000 MiB free when it starts."]),
    # Our own ollama already holds 5000 MiB of GPU 1: it is counted as available.
    ([gpu(0, 24576, 24576),
      gpu(1, 16384, 9000, [{"pid": 1, "name": "/usr/bin/ollama", "used_memory_mib": 5000}])],
     True, []),
    # Free memory not read: nothing is checked, and that is said.
    ([gpu(0, 24576, 24576), gpu(1, 16384, None)], True, [
        "GPU 1 free memory unknown: the budgets of ollama_research + vllm (10.7 GB) are not "
        "checked against it."]),
])
def test_gpu_memory_check_uses_the_budgets(gpus, ok, warnings):
    result = pf.gpu_memory_check(MIXED, gpus)
    gpu1 = next(g for g in result["gpus"] if g["gpu_index"] == 1)
    assert gpu1["services"] == ["ollama_research", "vllm"] and gpu1["need_mib"] == 11000
    assert gpu1["ok"] is ok
    assert result["warnings"] == warnings


def test_gpu_memory_check_rejects():
    with pytest.raises(ValueError) as info:
        pf.gpu_memory_check(MIXED, [{"name": "no index"}])
    assert str(info.value) == "gpus[0].index must be an integer >= 0; got: None"
    with pytest.raises(ValueError) as info:
        pf.gpu_memory_check(MIXED, ["GPU 0"])
    assert str(info.value) == "gpus[0] must be a GPU fact (a dict); got: 'GPU 0'"
    with pytest.raises(ValueError, match=r"^services_plan must be the fact set by"):
        pf.gpu_memory_check({"services": None}, [])


# ---- ports --------------------------------------------------------------------------------

def test_parse_proc_net_tcp_reads_listeners_only():
    ipv4 = pf.parse_proc_net_tcp((FIXTURES / "proc_net_tcp.txt").read_text())
    ipv6 = pf.parse_proc_net_tcp((FIXTURES / "proc_net_tcp6.txt").read_text(), "ipv6")
    assert ipv4 == [
        {"port": 11434, "address": "127.0.0.1", "family": "ipv4", "inode": 51234},
        {"port": 8000, "address": "0.0.0.0", "family": "ipv4", "inode": 51240}]
    assert ipv6 == [
        {"port": 11435, "address": "::", "family": "ipv6", "inode": 61001},
        {"port": 8001, "address": "::1", "family": "ipv6", "inode": 61002},
        {"port": 5001, "address": "::ffff:127.0.0.1", "family": "ipv6", "inode": 61003}]


@pytest.mark.parametrize("text, family, message", [
    ("   0: garbage\n", "ipv4", "/proc/net/tcp line 1 is not a socket line; got: '   0: garbage'"),
    ("   0: ZZ00007F:2CAA 00000000:0000 0A 0:0 0:0 0 0 0 7 1\n", "ipv4",
     "/proc/net/tcp line 1 has a bad address or inode; got: "
     "'   0: ZZ00007F:2CAA 00000000:0000 0A 0:0 0:0 0 0 0 7 1'"),
    ("", "ipv5", "family must be ipv4 or ipv6; got: 'ipv5'"),
])
def test_parse_proc_net_tcp_rejects(text, family, message):
    with pytest.raises(ValueError) as info:
        pf.parse_proc_net_tcp(text, family)
    assert str(info.value) == message


@pytest.mark.parametrize("link, want", [
    ("socket:[51234]", 51234), ("pipe:[12]", None), ("/dev/null", None), ("", None),
])
def test_socket_inode(link, want):
    assert pf.socket_inode(link) == want


def test_port_report_and_conflicts():
    listeners = pf.parse_proc_net_tcp((FIXTURES / "proc_net_tcp.txt").read_text())
    owners = {51234: {"pid": 4242, "process": "ollama"}, 51240: {"pid": 77, "process": "nginx"}}
    report = pf.port_report([{"service": "ollama", "port": 11434},
                             {"service": "vllm", "port": 8000, "active": False},
                             {"service": "docling", "port": 5001}], listeners, owners)
    assert [(r["service"], r["held"], [h["pid"] for h in r["holders"]]) for r in report] == [
        ("ollama", True, [4242]), ("vllm", True, [77]), ("docling", False, [])]
    assert pf.port_conflicts(report, ["ollama"]) == [{
        "service": "vllm", "port": 8000, "active": False,
        "text": "port 8000 (vllm) is held by nginx (pid 77) on 0.0.0.0"}]
    with pytest.raises(ValueError) as info:
        pf.port_report([{"service": "x", "port": 70000}], listeners)
    assert str(info.value) == "ports[0].port must be 1-65535; got: 70000"


# ---- the report ---------------------------------------------------------------------------

def plan_fixture(mode="ollama"):
    return {"profile": "dual-gpu", "dual_gpu_mode": mode, "warnings": [],
            "active": ["ollama", "ollama_research"],
            "services": [
                dict(placed("ollama", "ollama", 0, 3000),
                     ports=[{"host": 11434, "container": 11434}]),
                dict(placed("ollama_research", "ollama", 1, 3000),
                     ports=[{"host": 11435, "container": 11434}]),
                {"name": "vllm", "engine": "vllm", "active": False, "placement": None,
                 "ports": [{"host": 8000, "container": 8000}]}]}


def host_facts(holders=None, binaries=None):
    return {"ports": [{"port": 11434, "held": bool(holders), "holders": holders or []}],
            "disks": [],
            "binaries": binaries if binaries is not None else {"docker": "/usr/bin/docker",
                                                               "nvidia-ctk": "/usr/bin/nvidia-ctk"},
            "nvidia": {"persistence_mode": [{"index": 0, "persistence_mode": "Disabled"}],
                       "error": None}}


GPUS = [dict(gpu(0, 24576, 24576), driver_version="590.48.01"),
        dict(gpu(1, 24576, 24576), driver_version="590.48.01")]


def test_report_passes_and_prints_the_download_table():
    report = pf.build_report("box", plan_fixture(), GPUS, host_facts(),
                             {"write": True, "mode": "ollama", "existing": None}, {},
                             planned(DUAL_ITEMS))
    assert report["ok"] is True and report["env_written"] is True
    assert report["summary"][:3] == [
        "Preflight box",
        "Profile: dual-gpu (recommended: dual-gpu, 2 GPU(s)), DUAL_GPU_MODE=ollama",
        "ok    ports free: 11434, 11435"]
    assert [c["text"] for c in report["checks"] if c["check"] == "disk"] == [
        "disk at /srv: 4566 MiB needed (4.8 GB to fetch, 0 MiB reserve), 102400 MiB free",
        "disk at /var/lib/docker: 5436 MiB needed (5.7 GB to fetch, 0 MiB reserve), "
        "102400 MiB free"]
    start = report["summary"].index("Downloads (what this run fetches)")
    assert report["summary"][start:start + 7] == [
        "Downloads (what this run fetches)",
        "  image        ollama/ollama:latest                          1.3 GB    -> "
        "/var/lib/docker  (ollama, vision, ollama_research)",
        "  image        quay.io/docling-project/docling-serve:latest  4.4 GB    -> "
        "/var/lib/docker  (docling)",
        "  ollama       llama3.2:3b                                   present   -> /srv  "
        "(ollama, ollama_research)",
        "  ollama       moondream:latest                              1.7 GB    -> /srv  "
        "(vision)",
        "  huggingface  Qwen/Qwen2.5-1.5B-Instruct                    3.1 GB    -> /srv  "
        "(vllm)",
        "  Total: 10.5 GB to fetch (1 of 5 already present)"]
    assert report["downloads"]["total_bytes"] == 10487467108
    assert report["warnings"] == [
        "persistence mode is off on GPU 0: nvidia-smi can take ~30 s per call on multi-GPU "
        "hosts (nvidia-smi -pm 1, or nvidia-persistenced)"]


def test_report_without_downloads_has_no_table_and_no_disk_check():
    for downloads in (None, {"skipped": True, "changed": False}):
        report = pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {},
                                 downloads)
        assert report["downloads"] is None and report["disks"] == []
        assert "disk" not in {c["check"] for c in report["checks"]}
        assert not any(line.startswith("Downloads") for line in report["summary"])


def test_report_when_everything_is_present():
    listed = [item("image", "ollama/ollama:latest", ["ollama"], present=True),
              item("ollama", "llama3.2:3b", ["ollama"], present=True)]
    report = pf.build_report("box", plan_fixture(), GPUS, host_facts(), None,
                             {"disk_reserve_mib": 10}, planned(listed, {"/": 5 * MIB}))
    assert report["summary"][-4:-1] == [
        "  image        ollama/ollama:latest  present   -> /  (ollama)",
        "  ollama       llama3.2:3b           present   -> /  (ollama)",
        "  Total: nothing to fetch (2 of 2 already present)"]
    # The reserve still holds on a filesystem the downloads land on.
    assert report["failed"] == [
        "disk at /: 10 MiB needed (nothing to fetch, 10 MiB reserve), 5 MiB free"]
    empty = pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {}, planned([]))
    assert "Downloads: nothing to fetch" in empty["summary"] and empty["ok"] is True


def test_report_warns_about_unknown_sizes():
    listed = [dict(item("image", "private.example/app:1", ["app"]), bytes=None)]
    report = pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {},
                             planned(listed))
    assert "  image        private.example/app:1  unknown   -> /  (app)" in report["summary"]
    assert "the size of private.example/app:1 is unknown (its registry could not be read): " \
        "the disk check does not count it" in report["warnings"]


@pytest.mark.parametrize("facts, downloads, warn_only, failed", [
    (host_facts(holders=[{"address": "0.0.0.0", "family": "ipv4", "pid": 9,
                          "process": "nginx"}]), None, [],
     ["port 11434 (ollama) is held by nginx (pid 9) on 0.0.0.0"]),
    (host_facts(holders=[{"address": "0.0.0.0", "family": "ipv4", "pid": 9,
                          "process": "ollama"}]), None, [], []),
    (host_facts(), planned(DUAL_ITEMS, {"/srv": GIB}), [],
     ["disk at /srv: 4566 MiB needed (4.8 GB to fetch, 0 MiB reserve), 1024 MiB free"]),
    (host_facts(), planned(DUAL_ITEMS, {"/srv": GIB}), ["disk"], []),
    (host_facts(binaries={"docker": "/usr/bin/docker"}), None, [],
     ["NVIDIA container toolkit not found (none of nvidia-container-toolkit, "
      "nvidia-container-runtime-hook, nvidia-ctk)"]),
    (host_facts(binaries={}), None, ["toolkit"],
     ["no container runtime found (none of docker, podman)"]),
])
def test_report_blocks_on_failed_checks(facts, downloads, warn_only, failed):
    report = pf.build_report("box", plan_fixture(), GPUS, facts, None,
                             {"warn_only": warn_only, "ignore_port_processes": ["ollama"]},
                             downloads)
    assert report["failed"] == failed
    assert report["ok"] is (not failed)


PROXY = [{"address": "0.0.0.0", "family": "ipv4", "pid": 7, "process": "docker-proxy"}]
CONMON = [{"address": "127.0.0.1", "family": "ipv4", "pid": 8, "process": "conmon"}]
DEFAULT_IGNORE = ["docker-proxy", "rootlessport", "conmon", "ollama", "*vllm*"]


@pytest.mark.parametrize("runtime, holders, failed", [
    # A compose re-run: the port is our own container's.
    ("compose", PROXY, []),
    ("", PROXY, []),
    # Switching to systemd: the compose project still holds it, and systemd cannot take it.
    ("systemd", PROXY, ["port 11434 (ollama) is held by docker-proxy (pid 7) on 0.0.0.0"]),
    # A podman re-run: rootful Podman's conmon keeps the container's port open.
    ("podman", CONMON, []),
    ("podman", PROXY, ["port 11434 (ollama) is held by docker-proxy (pid 7) on 0.0.0.0"]),
    ("systemd", CONMON, ["port 11434 (ollama) is held by conmon (pid 8) on 127.0.0.1"]),
])
def test_a_container_port_blocks_a_runtime_that_did_not_start_it(runtime, holders, failed):
    facts = dict(host_facts(holders=holders), cdi={"nvidia.com/gpu": ["/etc/cdi/nvidia.yaml"]})
    facts["binaries"]["podman"] = "/usr/bin/podman"
    report = pf.build_report("box", plan_fixture(), GPUS, facts, None,
                             {"ignore_port_processes": DEFAULT_IGNORE, "runtime": runtime})
    assert report["failed"] == failed
    said = [w for w in report["warnings"] if "does not stop containers it did not start" in w]
    assert len(said) == (1 if failed else 0)


@pytest.mark.parametrize("facts, failed", [
    (dict(host_facts(binaries={"podman": "/usr/bin/podman"}),
          cdi={"nvidia.com/gpu": ["/etc/cdi/nvidia.yaml"]}), []),
    # The Docker hook is no use to Podman: its GPUs are CDI devices.
    (host_facts(binaries={"podman": "/usr/bin/podman",
                          "nvidia-container-runtime-hook": "/usr/bin/hook"}),
     ["no CDI spec describes nvidia.com/gpu in /etc/cdi or /var/run/cdi: Podman gives a "
      "container its GPUs as CDI devices (nvidia-ctk cdi generate "
      "--output=/etc/cdi/nvidia.yaml)"]),
    (dict(host_facts(), cdi={"nvidia.com/gpu": ["/var/run/cdi/nvidia.json"]}),
     ["no container runtime found (none of podman)"]),
])
def test_the_podman_runtime_needs_a_cdi_spec_and_podman(facts, failed):
    report = pf.build_report("box", plan_fixture(), GPUS, facts, None, {"runtime": "podman"})
    assert report["failed"] == failed
    if not failed:
        assert "ok    NVIDIA CDI spec: /etc/cdi/nvidia.yaml" in report["summary"]


def test_cdi_kinds_reads_the_kind_of_yaml_and_json_specs():
    texts = {
        "/etc/cdi/nvidia.yaml": "---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n",
        "/etc/cdi/amd.json": '{"cdiVersion": "0.6.0", "kind": "amd.com/gpu", "devices": []}',
        "/var/run/cdi/nvidia.json": '{"kind":"nvidia.com/gpu"}',
        "/etc/cdi/broken.yaml": "devices: []\n", "/etc/cdi/list.yaml": "- kind\n"}
    specs = {path: _verify.parse_cdi_spec(path, text, yaml.safe_load)
             for path, text in texts.items()}
    assert pf.cdi_kinds(specs) == {
        "amd.com/gpu": ["/etc/cdi/amd.json"],
        "nvidia.com/gpu": ["/etc/cdi/nvidia.yaml", "/var/run/cdi/nvidia.json"]}
    with pytest.raises(ValueError):
        _verify.parse_cdi_spec("/etc/cdi/bad.json", "{not json")
    with pytest.raises(ValueError) as err:
        _verify.parse_cdi_spec("/etc/cdi/x.yaml", "kind: a/b\n")
    assert str(err.value) == "PyYAML is needed to read the CDI spec /etc/cdi/x.yaml"


def test_report_rejects_an_unknown_runtime():
    with pytest.raises(ValueError) as info:
        pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {"runtime": "k8s"})
    assert str(info.value) == \
        "preflight_runtime must be one of compose, systemd, podman (or empty); got: 'k8s'"


def test_report_rejects_unknown_options():
    with pytest.raises(ValueError) as info:
        pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {"warn_only": ["gpu"]})
    assert str(info.value) == "preflight_warn_only[0] must be one of ports, disk, driver, " \
        "toolkit, runtime, gpu_memory, persistence; got: 'gpu'"
    for removed in ("size_table", "dirs"):
        with pytest.raises(ValueError) as info:
            pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {removed: []})
        assert str(info.value) == "options has unknown key(s): %s" % removed


def test_report_of_a_multi_gpu_plan_checks_the_gpu_stack():
    gpus = [*GPUS, dict(gpu(2, 24576, 24576), driver_version="590.48.01")]
    report = pf.build_report("box", dict(plan_fixture("vllm"), profile="multi-gpu"), gpus,
                             host_facts(), None, {}, planned(DUAL_ITEMS))
    assert report["summary"][1] == \
        "Profile: multi-gpu (recommended: multi-gpu, 3 GPU(s)), DUAL_GPU_MODE=vllm"
    checks = {c["check"] for c in report["checks"]}
    assert checks >= {"ports", "disk", "driver", "toolkit", "runtime"}
    assert report["downloads"]["total_bytes"] == 10487467108
    assert not any("differs" in w for w in report["warnings"])


def test_report_warns_when_a_3_gpu_host_runs_dual_gpu():
    gpus = [*GPUS, dict(gpu(2, 24576, 24576), driver_version="590.48.01")]
    report = pf.build_report("box", plan_fixture(), gpus, host_facts(), None, {})
    assert "profile dual-gpu differs from the recommended multi-gpu (3 healthy GPU(s))" in \
        report["warnings"]


# ---- the role's options check ------------------------------------------------------------

@pytest.mark.parametrize("role_options", [
    None, {}, {"env_file": "/opt/gpufleet/.env", "nvidia_smi_timeout": 10},
    {"nvidia_smi_timeout": "3600"}, {"nvidia_smi_timeout": 1},
    {"download_kinds": ["image", "ollama", "huggingface"]}, {"download_kinds": []}])
def test_check_options_passes_good_input(role_options):
    assert pf.check_options({"disk_reserve_mib": 512}, role_options) is True


@pytest.mark.parametrize("options, role_options, message", [
    ({"dirs": {"models": "/srv/models"}}, {}, "options has unknown key(s): dirs"),
    ({"disk_reserve_mib": -1}, {},
     "preflight_disk_reserve_mib must be an integer >= 0; got: -1"),
    ({}, {"download_kinds": ["image", "model"]},
     "preflight_download_kinds[1] must be one of image, ollama, huggingface; got: 'model'"),
    ({}, {"download_kinds": "image"},
     "preflight_download_kinds must be a list of image, ollama, huggingface; got: 'image'"),
    ({}, {"env_file": ".env"}, "preflight_env_file must be an absolute path; got: '.env'"),
    ({}, {"env_file": None}, "preflight_env_file must be an absolute path; got: None"),
    ({}, {"nvidia_smi_timeout": 0}, "preflight_nvidia_smi_timeout must be 1-3600 seconds; "
     "got: 0"),
    ({}, {"nvidia_smi_timeout": "3601"}, "preflight_nvidia_smi_timeout must be 1-3600 seconds; "
     "got: '3601'"),
    ({}, {"nvidia_smi_timeout": True}, "preflight_nvidia_smi_timeout must be 1-3600 seconds; "
     "got: True"),
    ({}, {"nvidia_smi_timeout": 2.5}, "preflight_nvidia_smi_timeout must be 1-3600 seconds; "
     "got: 2.5"),
    ({}, {"env": "/x"}, "role_options has unknown key(s): env"),
    ({}, ["/x"], "role_options must be a dict; got: ['/x']"),
])
def test_check_options_names_field_and_value(options, role_options, message):
    with pytest.raises(ValueError) as info:
        pf.check_options(options, role_options)
    assert str(info.value) == message


# ---- a GPU that fell off the bus ----------------------------------------------------------

LOST = {"index": None, "uuid": "GPU-dead", "pci_bus_id": "00000000:65:00.0",
        "memory_total_mib": None, "memory_free_mib": None, "processes": [], "healthy": False,
        "errors": ["nvidia-smi cannot open the GPU: Unknown Error"]}
LOST_TEXT = ("GPU 00000000:65:00.0 (uuid GPU-dead) is unhealthy and left out of placement: "
             "nvidia-smi cannot open the GPU: Unknown Error.")


def test_gpu_memory_check_leaves_a_lost_gpu_out():
    result = pf.gpu_memory_check(MIXED, [gpu(0, 24576, 24576), LOST, gpu(1, 16384, 16000)])
    assert [g["gpu_index"] for g in result["gpus"]] == [0, 1]
    assert result["warnings"] == []
    for claims in (True, None):  # a GPU that says it is healthy still needs its index
        with pytest.raises(ValueError) as info:
            pf.gpu_memory_check(MIXED, [gpu(0, 24576, 24576), dict(LOST, healthy=claims)])
        assert str(info.value) == "gpus[1].index must be an integer >= 0; got: None"


@pytest.mark.parametrize("profile, plan_warnings", [
    ("dual-gpu", []),
    ("dual-gpu", [LOST_TEXT]),  # the placement said it already: said once
    ("cpu", []),
])
def test_report_names_a_lost_gpu_once_and_counts_the_healthy_ones(profile, plan_warnings):
    plan = dict(plan_fixture(), profile=profile, warnings=plan_warnings)
    report = pf.build_report("box", plan, [*GPUS, LOST], host_facts(), None, {})
    assert report["warnings"].count(LOST_TEXT) == 1
    assert (report["gpu_count"], report["recommended_profile"]) == (2, "dual-gpu")
