# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Preflight logic: .env, seed 000's download sizes, disks, GPU memory, ports, the report.

The recommended profile is _plan.recommend_profile's (test__plan.py)."""

from __future__ import annotations

import pathlib

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _preflight as pf

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "preflight"
TABLE = list(pf.DEFAULT_SIZE_TABLE)
DIRS = {"images": "/var/lib/docker", "models": "/srv/models", "vision_cache": "/srv/vision"}


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


# ---- downloads (seed 000's table) ---------------------------------------------------------

@pytest.mark.parametrize("profile, mode, images, models, total", [
    ("remote", "ollama", ["searxng/searxng", "app (Python build)"], [], 1800),
    ("cpu", "ollama", ["ollama/ollama", "searxng/searxng", "app (Python build)"],
     ["llama3.2:3b"], 4600),
    ("single-gpu", "vllm", ["ollama/ollama", "searxng/searxng", "app (Python build)",
                            "vision service"], ["llama3.2:3b", "moondream2"], 9400),
    ("dual-gpu", "ollama", ["ollama/ollama", "searxng/searxng", "app (Python build)",
                            "vision service"], ["llama3.2:3b", "moondream2"], 9400),
    ("dual-gpu", "vllm", ["ollama/ollama", "searxng/searxng", "app (Python build)",
                          "vision service", "vllm/vllm-openai"],
     ["llama3.2:3b", "moondream2"], 19400),
    ("dual-gpu", "mixed", ["ollama/ollama", "searxng/searxng", "app (Python build)",
                           "vision service", "vllm/vllm-openai"],
     ["llama3.2:3b", "moondream2"], 19400),
    ("multi-gpu", "vllm", ["ollama/ollama", "searxng/searxng", "app (Python build)",
                           "vision service", "vllm/vllm-openai"],
     ["llama3.2:3b", "moondream2"], 19400),
])
def test_download_plan_follows_seed_000(profile, mode, images, models, total):
    plan = pf.download_plan(TABLE, profile, mode, DIRS)
    assert [i["name"] for i in plan["images"]] == images
    assert [m["name"] for m in plan["models"]] == models
    assert plan["total_mb"] == total == plan["images_mb"] + plan["models_mb"]
    assert sum(plan["by_path"].values()) == total


def test_shared_model_directory_is_counted_once():
    table = [
        {"name": "llama3.2:3b", "kind": "model", "size_mb": 2000, "services": ["ollama"]},
        {"name": "llama3.2:3b", "kind": "model", "size_mb": 2000,
         "services": ["ollama_research"]},
        {"name": "llama3.2:3b", "kind": "model", "size_mb": 2000, "dir": "elsewhere"},
    ]
    dirs = {"models": "/srv/models", "elsewhere": "/data/models"}
    plan = pf.download_plan(table, "dual-gpu", "ollama", dirs, ["ollama", "ollama_research"])
    assert [(m["name"], m["path"]) for m in plan["models"]] == [
        ("llama3.2:3b", "/srv/models"), ("llama3.2:3b", "/data/models")]
    assert plan["by_path"] == {"/srv/models": 2000, "/data/models": 2000}
    only_research = pf.download_plan(table[1:2], "dual-gpu", "vllm", dirs, ["ollama"])
    assert only_research["models"] == []


@pytest.mark.parametrize("table, message", [
    ([], "preflight_size_table must be a non-empty list of components; got: []"),
    ([{"name": "x", "kind": "image", "size_mb": -5}],
     "preflight_size_table[0].size_mb must be an integer >= 0; got: -5"),
    ([{"name": "x", "kind": "layer", "size_mb": 5}],
     "preflight_size_table[0].kind must be one of image, model; got: 'layer'"),
    ([{"name": "x", "kind": "image", "size_mb": 5, "profiles": ["gpu"]}],
     "preflight_size_table[0].profiles[0] must be one of remote, cpu, single-gpu, dual-gpu, "
     "multi-gpu; got: 'gpu'"),
    ([{"name": "x", "kind": "image", "size_mb": 5, "modes": ["both"]}],
     "preflight_size_table[0].modes[0] must be one of ollama, vllm, mixed; got: 'both'"),
    ([{"name": "x", "kind": "image", "size_mb": 5, "size": 1}],
     "preflight_size_table[0] has unknown key(s): size"),
    ([{"name": "", "kind": "image", "size_mb": 5}],
     "preflight_size_table[0].name must be a non-empty string; got: ''"),
    ([{"name": "x", "kind": "image", "size_mb": 5, "dir": "cache"}],
     "preflight_size_table[0].dir is not a key of preflight_dirs (images, models, "
     "vision_cache); got: 'cache'"),
])
def test_size_table_rejects(table, message):
    with pytest.raises(ValueError) as info:
        pf.download_plan(table, "dual-gpu", "ollama", DIRS)
    assert str(info.value) == message


def test_download_plan_rejects_profile_mode_and_relative_dir():
    with pytest.raises(ValueError, match=r"^profile must be one of .*; got: 'gpu'$"):
        pf.download_plan(TABLE, "gpu", "ollama")
    with pytest.raises(ValueError, match=r"^mode must be one of ollama, vllm, mixed; got: 'x'$"):
        pf.download_plan(TABLE, "cpu", "x")
    with pytest.raises(ValueError, match=r"^preflight_dirs.images must be an absolute path; "
                                         r"got: 'docker'$"):
        pf.download_plan(TABLE, "cpu", "ollama", dict(DIRS, images="docker"))


# ---- disks --------------------------------------------------------------------------------

GIB = 1024 * 1024 * 1024


@pytest.mark.parametrize("disks, reserve, want", [
    # One filesystem holds all three: 19400 MB = 18502 MiB.
    ([{"path": p, "device": 1, "free_bytes": 20 * GIB} for p in DIRS.values()], 0,
     [(1, 18502, 20480, True)]),
    ([{"path": p, "device": 1, "free_bytes": 20 * GIB} for p in DIRS.values()], 2048,
     [(1, 20550, 20480, False)]),
    ([{"path": "/var/lib/docker", "device": 1, "free_bytes": 20 * GIB},
      {"path": "/srv/models", "device": 2, "free_bytes": 1 * GIB},
      {"path": "/srv/vision", "device": 2, "free_bytes": 1 * GIB}], 0,
     [(1, 14878, 20480, True), (2, 3624, 1024, False)]),
    ([{"path": p, "device": None, "free_bytes": None} for p in DIRS.values()], 0,
     [(None, 1908, None, False), (None, 1717, None, False), (None, 14878, None, False)]),
])
def test_disk_check_adds_up_per_filesystem(disks, reserve, want):
    plan = pf.download_plan(TABLE, "dual-gpu", "vllm", DIRS)
    result = pf.disk_check(plan["by_path"], disks, reserve)
    rows = [(r["device"], r["required_mib"], r["free_mib"], r["ok"]) for r in result]
    known = sorted(row for row in rows if row[0] is not None)
    assert known + [row for row in rows if row[0] is None] == want


def test_disk_check_rejects():
    with pytest.raises(ValueError) as info:
        pf.disk_check({"/srv/models": 10}, [])
    assert str(info.value) == "disks has no entry for /srv/models (checked: none); got: " \
        "'/srv/models'"
    with pytest.raises(ValueError) as info:
        pf.disk_check({}, [], -1)
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
    assert str(info.value) == "gpus[0] must be a GPU fact with an index; got: {'name': " \
        "'no index'}"
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


def host_facts(free_bytes=100 * GIB, holders=None, binaries=None):
    return {"ports": [{"port": 11434, "held": bool(holders), "holders": holders or []}],
            "disks": [{"path": p, "device": 1, "free_bytes": free_bytes}
                      for p in DIRS.values()],
            "binaries": binaries if binaries is not None else {"docker": "/usr/bin/docker",
                                                               "nvidia-ctk": "/usr/bin/nvidia-ctk"},
            "nvidia": {"persistence_mode": [{"index": 0, "persistence_mode": "Disabled"}],
                       "error": None}}


GPUS = [dict(gpu(0, 24576, 24576), driver_version="590.48.01"),
        dict(gpu(1, 24576, 24576), driver_version="590.48.01")]


def test_report_passes_and_prints_the_seed_block():
    report = pf.build_report("box", plan_fixture(), GPUS, host_facts(),
                             {"write": True, "mode": "ollama", "existing": None},
                             {"dirs": DIRS})
    assert report["ok"] is True and report["env_written"] is True
    assert report["summary"][:3] == [
        "Preflight box",
        "Profile: dual-gpu (recommended: dual-gpu, 2 GPU(s)), DUAL_GPU_MODE=ollama",
        "ok    ports free: 11434, 11435"]
    assert "  Total first-run: ~9.4 GB (images 5.6 GB, models 3.8 GB; models persist between " \
        "restarts)" in report["summary"]
    assert "    llama3.2:3b              ~2.0 GB   -> /srv/models  (shared model directory: " \
        "ollama + ollama_research download it once)" in report["summary"]
    assert report["warnings"] == [
        "persistence mode is off on GPU 0: nvidia-smi can take ~30 s per call on multi-GPU "
        "hosts (nvidia-smi -pm 1, or nvidia-persistenced)"]


@pytest.mark.parametrize("facts, warn_only, failed", [
    (host_facts(holders=[{"address": "0.0.0.0", "family": "ipv4", "pid": 9,
                          "process": "nginx"}]), [],
     ["port 11434 (ollama) is held by nginx (pid 9) on 0.0.0.0"]),
    (host_facts(holders=[{"address": "0.0.0.0", "family": "ipv4", "pid": 9,
                          "process": "ollama"}]), [], []),
    (host_facts(free_bytes=1 * GIB), [],
     ["disk at /srv/models, /srv/vision, /var/lib/docker: 8965 MiB needed, 1024 MiB free"]),
    (host_facts(free_bytes=1 * GIB), ["disk"], []),
    (host_facts(binaries={"docker": "/usr/bin/docker"}), [],
     ["NVIDIA container toolkit not found (none of nvidia-container-toolkit, "
      "nvidia-container-runtime-hook, nvidia-ctk)"]),
    (host_facts(binaries={}), ["toolkit"], ["no container runtime found (none of docker, podman)"]),
])
def test_report_blocks_on_failed_checks(facts, warn_only, failed):
    report = pf.build_report("box", plan_fixture(), GPUS, facts, None,
                             {"dirs": DIRS, "warn_only": warn_only,
                              "ignore_port_processes": ["ollama"]})
    assert report["failed"] == failed
    assert report["ok"] is (not failed)


def test_report_rejects_unknown_options():
    with pytest.raises(ValueError) as info:
        pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {"warn_only": ["gpu"]})
    assert str(info.value) == "preflight_warn_only[0] must be one of ports, disk, driver, " \
        "toolkit, runtime, gpu_memory, persistence; got: 'gpu'"
    with pytest.raises(ValueError) as info:
        pf.build_report("box", plan_fixture(), GPUS, host_facts(), None, {"sizes": []})
    assert str(info.value) == "options has unknown key(s): sizes"


def test_report_of_a_multi_gpu_plan_checks_the_gpu_stack():
    gpus = [*GPUS, dict(gpu(2, 24576, 24576), driver_version="590.48.01")]
    report = pf.build_report("box", dict(plan_fixture("vllm"), profile="multi-gpu"), gpus,
                             host_facts(), None, {"dirs": DIRS})
    assert report["summary"][1] == \
        "Profile: multi-gpu (recommended: multi-gpu, 3 GPU(s)), DUAL_GPU_MODE=vllm"
    checks = {c["check"] for c in report["checks"]}
    assert checks >= {"ports", "disk", "driver", "toolkit", "runtime"}
    assert report["downloads"]["total_mb"] == 19400
    assert not any("differs" in w for w in report["warnings"])


def test_report_warns_when_a_3_gpu_host_runs_dual_gpu():
    gpus = [*GPUS, dict(gpu(2, 24576, 24576), driver_version="590.48.01")]
    report = pf.build_report("box", plan_fixture(), gpus, host_facts(), None, {"dirs": DIRS})
    assert "profile dual-gpu differs from the recommended multi-gpu (3 healthy GPU(s))" in \
        report["warnings"]


# ---- the role's options check ------------------------------------------------------------

@pytest.mark.parametrize("role_options", [
    None, {}, {"env_file": "/opt/gpufleet/.env", "nvidia_smi_timeout": 10},
    {"nvidia_smi_timeout": "3600"}, {"nvidia_smi_timeout": 1}])
def test_check_options_passes_good_input(role_options):
    assert pf.check_options({"dirs": DIRS}, role_options) is True


@pytest.mark.parametrize("options, role_options, message", [
    ({"dirs": {"models": "models"}}, {},
     "preflight_dirs.models must be an absolute path; got: 'models'"),
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
