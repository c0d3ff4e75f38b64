# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What leaving GPU services hold: the targets of the drain wait after their stop."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _leaving

GPUS_BEFORE = [
    {"index": 0, "memory_used_mib": 9000, "processes": [
        {"pid": 11, "used_memory_mib": 6000}, {"pid": 12, "used_memory_mib": 2000},
        {"pid": 99, "used_memory_mib": 500}]},
    {"index": 1, "memory_used_mib": 300, "processes": [{"pid": 13, "used_memory_mib": 300}]},
]
MEMINFO = "MemTotal:       131072000 kB\nMemAvailable:   65536000 kB\n"
UNIFIED = [{"index": 0, "memory_used_mib": None, "memory_kind": "unified",
            "processes": [{"pid": 5, "used_memory_mib": 4096}]}]


@pytest.mark.parametrize(("gpus", "pids", "meminfo", "expected"), [
    (GPUS_BEFORE, [11, 12], None,
     {"gpus": ["0"], "pids": [11, 12], "target_used_mib": 1000, "baseline_available_mib": None}),
    (GPUS_BEFORE, [11, 13], None,
     {"gpus": ["0", "1"], "pids": [11, 13], "target_used_mib": 3000,
      "baseline_available_mib": None}),
    # docker top's lines, as text
    (GPUS_BEFORE, ["11", " 12 ", ""], None,
     {"gpus": ["0"], "pids": [11, 12], "target_used_mib": 1000, "baseline_available_mib": None}),
    # dedicated memory: MemAvailable is not the drain's signal, whatever was read
    (GPUS_BEFORE, [11], MEMINFO,
     {"gpus": ["0"], "pids": [11], "target_used_mib": 3000, "baseline_available_mib": None}),
    (UNIFIED, [5], MEMINFO,
     {"gpus": ["0"], "pids": [5], "target_used_mib": None,
      "baseline_available_mib": 64000 + 4096}),
    # nothing on a GPU (a CPU-only leaver, or not loaded yet): every GPU, no target
    (GPUS_BEFORE, [42], MEMINFO,
     {"gpus": ["0", "1"], "pids": [42], "target_used_mib": None,
      "baseline_available_mib": None}),
    (UNIFIED, [], MEMINFO,
     {"gpus": ["0"], "pids": [], "target_used_mib": None, "baseline_available_mib": None}),
])
def test_drain_targets(gpus, pids, meminfo, expected):
    assert _leaving.drain_targets(gpus, pids, meminfo) == expected


def test_drain_targets_bad_input():
    with pytest.raises(ValueError, match="gpus must be the list of gpu_facts"):
        _leaving.drain_targets("x", [])
    with pytest.raises(ValueError, match="has no MemAvailable line"):
        _leaving.drain_targets(UNIFIED, [5], "MemTotal: 1 kB\n")
    with pytest.raises(ValueError) as err:
        _leaving.drain_targets(GPUS_BEFORE, ["11", "Error: no such container"])
    assert str(err.value) == "pids[1] must be a process id; got: 'Error: no such container'"
    with pytest.raises(ValueError, match=r"^pids\[0\] must be a process id; got: True$"):
        _leaving.drain_targets(GPUS_BEFORE, [True])


# A sleeping vLLM (pid 21) keeps its process and a residual; Ollama's runner (pid 31) leaves.
SLEEPERS = [{"index": 0, "memory_used_mib": 20000, "processes": [
    {"pid": 21, "used_memory_mib": 14000}, {"pid": 31, "used_memory_mib": 5000},
    {"pid": 99, "used_memory_mib": 1000}]}]
UNIFIED_SLEEPER = [{"index": 0, "memory_used_mib": None, "memory_kind": "unified",
                    "processes": [{"pid": 21, "used_memory_mib": 40000}]}]


@pytest.mark.parametrize(("gpus", "pids", "meminfo", "kept", "residual", "expected"), [
    # the kept process frees what it held less the residual, and is not waited for
    (SLEEPERS, [], None, [21], 512,
     {"gpus": ["0"], "pids": [], "target_used_mib": 20000 - 13488,
      "baseline_available_mib": None}),
    (SLEEPERS, [31], None, ["21"], 512,
     {"gpus": ["0"], "pids": [31], "target_used_mib": 20000 - 13488 - 5000,
      "baseline_available_mib": None}),
    # a pid both leaving and kept stays
    (SLEEPERS, [21, 31], None, [21], 0,
     {"gpus": ["0"], "pids": [31], "target_used_mib": 1000, "baseline_available_mib": None}),
    # held less than the residual: nothing counted as freed
    (SLEEPERS, [], None, [21], 20000,
     {"gpus": ["0"], "pids": [], "target_used_mib": 20000, "baseline_available_mib": None}),
    (UNIFIED_SLEEPER, [], MEMINFO, [21], "4096",
     {"gpus": ["0"], "pids": [], "target_used_mib": None,
      "baseline_available_mib": 64000 + 40000 - 4096}),
    # a kept process on no GPU: every GPU, no target
    (SLEEPERS, [], None, [77], 512,
     {"gpus": ["0"], "pids": [], "target_used_mib": None, "baseline_available_mib": None}),
])
def test_drain_targets_with_sleepers(gpus, pids, meminfo, kept, residual, expected):
    assert _leaving.drain_targets(gpus, pids, meminfo, kept, residual) == expected


@pytest.mark.parametrize(("kept", "residual", "message"), [
    (["x"], 0, "kept[0] must be a process id; got: 'x'"),
    ([21], -1, "residual_mib must be an integer >= 0 (MiB); got: -1"),
    ([21], True, "residual_mib must be an integer >= 0 (MiB); got: True"),
    ([21], "1 GiB", "residual_mib must be an integer >= 0 (MiB); got: '1 GiB'"),
])
def test_drain_targets_with_sleepers_bad_input(kept, residual, message):
    with pytest.raises(ValueError) as err:
        _leaving.drain_targets(SLEEPERS, [], None, kept, residual)
    assert str(err.value) == message


PLAN = [
    {"name": "ollama", "engine": "ollama", "model": "qwen2.5:7b", "sleep": True, "sleep_level": 1,
     "restart": "unless-stopped", "ports": [{"host": 11434, "container": 11434}]},
    {"name": "vllm", "engine": "vllm", "sleep": True, "sleep_level": 2, "restart": "always",
     "ports": [{"host": 8000, "container": 8000}]},
    {"name": "docling", "engine": "other", "sleep": False, "restart": "unless-stopped",
     "ports": [{"host": 5001, "container": 5001}]},
]
LISTING = [
    "container ollama aaa true hash=h1 restart=unless-stopped",
    "container vllm bbb true hash=h2 restart=no",
    "container docling ccc true hash=h3 restart=unless-stopped",
    "pid ollama 100", "pid ollama 101", "pid vllm 200", "pid vllm 201", "",
]
OLLAMA_SLEEP = {"name": "ollama", "engine": "ollama", "url": "http://127.0.0.1:11434",
                "level": 1, "models": []}
VLLM_SLEEP = {"name": "vllm", "engine": "vllm", "url": "http://127.0.0.1:8000", "level": 2,
              "models": []}


@pytest.mark.parametrize(("names", "lines", "state", "expected"), [
    # parking: vLLM's processes stay, Ollama's leave; the policy goes to no where it is not
    (["ollama", "vllm", "docling"], LISTING, "asleep",
     {"names": ["ollama", "vllm"], "sleep": [OLLAMA_SLEEP, VLLM_SLEEP],
      "policies": [{"name": "ollama", "id": "aaa", "restart": "no"}],
      "pids": [100, 101], "kept": [200, 201],
      "summary": "would put to sleep: ollama, vllm; would set the restart policy of: "
                 "ollama (no)"}),
    # waking: the catalog's restart policy back; a service up recreates (its config hash
    # differs) is not woken
    (["ollama", "vllm"], [*LISTING, "hash ollama h1", "hash vllm h9"], "awake",
     {"names": ["ollama", "vllm"], "sleep": [dict(OLLAMA_SLEEP, models=["qwen2.5:7b"])],
      "policies": [{"name": "vllm", "id": "bbb", "restart": "always"}], "pids": [], "kept": [],
      "summary": "would wake: ollama; would set the restart policy of: vllm (always)"}),
    (["vllm"], [*LISTING, "hash vllm h2"], "awake",
     {"names": ["vllm"], "sleep": [VLLM_SLEEP],
      "policies": [{"name": "vllm", "id": "bbb", "restart": "always"}], "pids": [], "kept": [],
      "summary": "would wake: vllm; would set the restart policy of: vllm (always)"}),
    # after a reboot: the parked container is not running; its policy is set, nothing woken
    (["vllm"], ["container vllm bbb false hash=h2 restart=no"], "awake",
     {"names": ["vllm"], "sleep": [],
      "policies": [{"name": "vllm", "id": "bbb", "restart": "always"}], "pids": [], "kept": [],
      "summary": "would wake: none; would set the restart policy of: vllm (always)"}),
    (["vllm"], ["container vllm bbb false hash= restart="], "asleep",
     {"names": ["vllm"], "sleep": [], "policies": [], "pids": [], "kept": [],
      "summary": "would put to sleep: none; would set the restart policy of: none"}),
    # no container (a first start): nothing to do, `up` creates it
    (["vllm"], [], "awake",
     {"names": [], "sleep": [], "policies": [], "pids": [], "kept": [],
      "summary": "would wake: none; would set the restart policy of: none"}),
])
def test_sleep_actions(names, lines, state, expected):
    assert _leaving.sleep_actions(PLAN, names, lines, state) == expected


@pytest.mark.parametrize(("services", "lines", "state", "message"), [
    (PLAN, [], "stopped", "state must be asleep or awake; got: 'stopped'"),
    ("x", [], "asleep", "services must be services_plan.services (a list of dicts); got: 'x'"),
    (PLAN, ["Error response from daemon: No such container: bbb"], "asleep",
     "lines[0] must be 'container <service> <id> <running> hash=<hash> restart=<policy>', "
     "'pid <service> <pid>' or 'hash <service> <hash>'; got: 'Error response from daemon: "
     "No such container: bbb'"),
    (PLAN, ["container vllm bbb true hash=h restart=no", "pid vllm 2x"], "asleep",
     "pids of vllm[0] must be a process id; got: '2x'"),
    ([dict(PLAN[1], ports=[])], ["container vllm bbb true hash=h restart=no"], "awake",
     "services_plan.services[0].ports must publish a host port for vllm to be put to sleep or "
     "woken; got: []"),
])
def test_sleep_actions_bad_input(services, lines, state, message):
    with pytest.raises(ValueError) as err:
        _leaving.sleep_actions(services, ["vllm"], lines, state)
    assert str(err.value) == message


# --- switch_order ------------------------------------------------------------------------
def _svc(name, active, uses_gpu=True, sleep=False, ports=()):
    return {"name": name, "active": active, "uses_gpu": uses_gpu, "sleep": sleep,
            "ports": [{"host": p, "container": p} for p in ports]}


CHAT_TO_INGESTION = [_svc("ollama", False, ports=[11434]), _svc("vllm", True, ports=[8000]),
                     _svc("docling", True, uses_gpu=False, ports=[5001])]
INGESTION_TO_CHAT = [_svc("ollama", True, ports=[11434]), _svc("vllm", False, ports=[8000]),
                     _svc("docling", False, uses_gpu=False, ports=[5001])]


@pytest.mark.parametrize(("services", "existing", "early", "late"), [
    pytest.param(CHAT_TO_INGESTION, ["ollama"], ["docling"], [], id="docling-starts-early"),
    pytest.param(CHAT_TO_INGESTION, ["ollama", "docling"], [], [],
                 id="a-docling-with-a-container-is-left-to-up"),
    pytest.param(CHAT_TO_INGESTION, [], [], [], id="no-switch-no-reorder"),
    pytest.param(INGESTION_TO_CHAT, ["vllm", "docling"], [], ["docling"],
                 id="docling-removed-late"),
    pytest.param([_svc("a", False, uses_gpu=False, ports=[5001]),
                  _svc("b", True, uses_gpu=False, ports=[5001])], ["a"], [], [],
                 id="a-shared-port-keeps-the-old-order"),
    pytest.param([_svc("a", False, uses_gpu=False, sleep=True),
                  _svc("b", True, uses_gpu=True)], ["a"], [], [],
                 id="gpu-services-and-sleepers-keep-their-place"),
])
def test_switch_order(services, existing, early, late):
    assert _leaving.switch_order(services, existing) == {"early": early, "late": late}


@pytest.mark.parametrize(("services", "existing", "message"), [
    ("x", [], "services must be services_plan.services"),
    ([], "ollama", "existing must be a list of service names; got: 'ollama'"),
])
def test_switch_order_bad_input(services, existing, message):
    with pytest.raises(ValueError) as err:
        _leaving.switch_order(services, existing)
    assert str(err.value).startswith(message)
