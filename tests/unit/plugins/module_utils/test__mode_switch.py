# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mode_switch role's compose document, active modes and GPUs of the running services.

The expected documents were rendered by the role's former Jinja template (a 28-line for-block in
roles/mode_switch/templates/compose.yml.j2) with ansible's templar, then parsed: the function
keeps every key, value and order the template wrote.
"""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _mode_switch

REPO = pathlib.Path(__file__).resolve().parents[4]
DEFAULTS = yaml.safe_load((REPO / "roles/mode_switch/defaults/main.yml").read_text())
MODES = DEFAULTS["mode_switch_modes"]
SERVICES = DEFAULTS["mode_switch_services"]


def _gpu(*ids):
    return {"resources": {"reservations": {"devices": [
        {"driver": "nvidia", "device_ids": list(ids), "capabilities": ["gpu"]}]}}}


def _base(mode, port):
    return {"profiles": [mode], "ports": [port], "restart": "no", "stop_grace_period": "30s",
            "labels": {"org.gpufleet.mode": mode}}


# The former template's render of the role's defaults.
DEFAULT_DOCUMENT = {"name": "gpufleet-modes", "services": {
    "ollama": {"image": "ollama/ollama:latest", **_base("chat", "127.0.0.1:11434:11434"),
               "deploy": _gpu("0")},
    "vllm": {"image": "vllm/vllm-openai:latest",
             "command": ["Qwen/Qwen2.5-7B-Instruct", "--gpu-memory-utilization", "0.5"],
             **_base("ingestion", "127.0.0.1:8000:8000"), "deploy": _gpu("0"),
             # The host's Hugging Face cache, read offline (the role fetches before it starts).
             "environment": {"HF_HUB_OFFLINE": "1"},
             "volumes": ["/srv/gpufleet/models/huggingface:/root/.cache/huggingface"]},
    "docling": {"image": "quay.io/docling-project/docling-serve:latest",
                **_base("ingestion", "127.0.0.1:5001:5001"), "deploy": _gpu("0")},
}}

# Modes out of name order, environment, a service without a GPU, an integer GPU index.
OTHER_MODES = {"b": {"services": ["web", "emb"]}, "a": {"services": ["ollama"]}}
OTHER_SERVICES = {
    "ollama": {"image": "ollama/ollama:0.5", "engine": "ollama", "port": 11434,
               "container_port": 11434, "health_path": "/", "process_names": ["ollama"],
               "environment": {"OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_NUM_PARALLEL": 2,
                               "X_ON": True}},
    "web": {"image": "nginx:1", "engine": "http", "port": 8080, "container_port": 80,
            "health_path": "/", "gpu": False, "process_names": ["nginx"],
            "command": ["nginx", "-g", "daemon off;", 8]},
    "emb": {"image": "e:1", "engine": "http", "port": 9000, "container_port": 9000,
            "health_path": "/h", "gpu": True, "process_names": ["e"]},
}
OTHER_DOCUMENT = {"name": "lab", "services": {
    "ollama": {"image": "ollama/ollama:0.5", **_base("a", "127.0.0.1:11434:11434"),
               "environment": {"OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_NUM_PARALLEL": 2,
                               "X_ON": True},
               "deploy": _gpu("0", "GPU-abc")},
    "web": {"image": "nginx:1", "command": ["nginx", "-g", "daemon off;", 8],
            **_base("b", "127.0.0.1:8080:80")},
    "emb": {"image": "e:1", **_base("b", "127.0.0.1:9000:9000"), "deploy": _gpu("0", "GPU-abc")},
}}


def _order(document):
    """Every mapping's keys in order, depth first: dict equality alone ignores the order."""
    if isinstance(document, dict):
        return [list(document)] + [o for v in document.values() for o in _order(v)]
    if isinstance(document, list):
        return [o for v in document for o in _order(v)]
    return []


@pytest.mark.parametrize("args, expected", [
    ((MODES, SERVICES, "gpufleet-modes", ["0"]), DEFAULT_DOCUMENT),
    ((OTHER_MODES, OTHER_SERVICES, "lab", [0, "GPU-abc"]), OTHER_DOCUMENT),
], ids=["defaults", "other"])
def test_compose_document_is_what_the_template_rendered(args, expected):
    inputs = copy.deepcopy(args)
    document = _mode_switch.compose_document(*args)
    assert document == expected
    assert _order(document) == _order(expected)
    assert args == inputs  # the inputs are left alone
    dumped = yaml.safe_dump(document, sort_keys=False)
    assert "&" not in dumped and yaml.safe_load(dumped) == expected  # no YAML anchors


def test_compose_document_with_lab_sources():
    sources = {"image_mirrors": {"docker.io": "registry.lab:5000",
                                 "quay.io": "registry.lab:5000/quay.io"},
               "hf_endpoint": "http://hub.lab:8080", "hf_token_file": "/etc/gpufleet/hf.env"}
    doc = _mode_switch.compose_document(MODES, SERVICES, "m", ["0"], sources, "/srv/models")
    ollama, vllm, docling = (doc["services"][n] for n in ("ollama", "vllm", "docling"))
    assert ollama["image"] == "registry.lab:5000/ollama/ollama:latest"
    assert ollama["environment"] == {"OLLAMA_MODELS": "/root/.ollama"}
    assert ollama["volumes"] == ["/srv/models:/root/.ollama"]
    assert docling["image"] == "registry.lab:5000/quay.io/docling-project/docling-serve:latest"
    assert vllm["environment"] == {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://hub.lab:8080"}
    assert "env_file" not in vllm  # vLLM reads offline: the token stays with the fetch


def test_downloads_of_a_mode():
    sources = {"image_mirrors": {"docker.io": "registry.lab:5000"},
               "insecure_registries": ["registry.lab:5000"]}
    chat = _mode_switch.downloads(SERVICES, ["ollama"], sources, "/srv/models")
    assert chat["items"] == [
        {"kind": "image", "name": "registry.lab:5000/ollama/ollama:latest", "insecure": True,
         "services": ["ollama"]},
        {"kind": "ollama", "name": "qwen2.5:7b", "models_dir": "/srv/models",
         "url": "http://127.0.0.1:11434", "services": ["ollama"]}]
    ingestion = _mode_switch.downloads(SERVICES, ["vllm", "docling"], sources, "/srv/models")
    assert [(i["kind"], i["name"]) for i in ingestion["items"]] == [
        ("image", "registry.lab:5000/vllm/vllm-openai:latest"),
        ("huggingface", "Qwen/Qwen2.5-7B-Instruct"),
        ("image", "quay.io/docling-project/docling-serve:latest")]


def test_compose_document_passes_the_roles_check():
    assert _mode_switch.check("chat", MODES, SERVICES, ["0"], {"project_name": "gpufleet-modes"})
    assert _mode_switch.check("a", OTHER_MODES, OTHER_SERVICES, ["0", "GPU-abc"])


def _services(**changes):
    services = copy.deepcopy(SERVICES)
    for name, change in changes.items():
        services[name] = None if change is None else dict(services[name], **change)
    return services


@pytest.mark.parametrize("modes, services, project, gpu_ids, message", [
    ({"chat": {"services": ["ollama"]}, "chat2": {"services": ["ollama"]}}, SERVICES, "p", ["0"],
     "mode_switch_modes.chat2.services[0] is a service of mode chat too (a service belongs to "
     "one mode); got: 'ollama'"),
    ({"chat": {"services": ["ollama", "ollama"]}}, SERVICES, "p", ["0"],
     "mode_switch_modes.chat.services[1] is a service of mode chat too"),
    ({"chat": {"services": ["tgi"]}}, SERVICES, "p", ["0"],
     "mode_switch_modes.chat.services[0] is not a service of mode_switch_services (docling, "
     "ollama, vllm); got: 'tgi'"),
    ({"chat": {"services": [["ollama"]]}}, SERVICES, "p", ["0"],
     "mode_switch_modes.chat.services[0] must be a service name; got: ['ollama']"),
    ({"chat": {"services": "ollama"}}, SERVICES, "p", ["0"],
     "mode_switch_modes.chat.services must be a list of service names; got: 'ollama'"),
    ({"chat": ["ollama"]}, SERVICES, "p", ["0"],
     "mode_switch_modes.chat.services must be a list of service names; got: None"),
    (["chat"], SERVICES, "p", ["0"],
     "mode_switch_modes must be a dict of mode: {services}; got: ['chat']"),
    (MODES, ["ollama"], "p", ["0"],
     "mode_switch_services must be a dict of service name: definition; got: ['ollama']"),
    (MODES, _services(vllm={"port": None}), "p", ["0"],
     "mode_switch_services.vllm.port is required; got: None"),
    (MODES, _services(docling=None), "p", ["0"],
     "mode_switch_modes.ingestion.services[1] is not a service of mode_switch_services"),
    (MODES, SERVICES, "", ["0"], "mode_switch_project_name must be a non-empty string; got: ''"),
    (MODES, SERVICES, "p", [], "mode_switch_gpu_ids must be a non-empty list of GPU indexes or "
                               "UUIDs; got: []"),
    (MODES, SERVICES, "p", "0", "mode_switch_gpu_ids must be a non-empty list"),
])
def test_compose_document_bad_input(modes, services, project, gpu_ids, message):
    with pytest.raises(ValueError) as err:
        _mode_switch.compose_document(modes, services, project, gpu_ids)
    assert str(err.value).startswith(message)


def test_check_refuses_a_service_of_two_modes():
    modes = {"chat": {"services": ["ollama"]}, "ingestion": {"services": ["vllm", "ollama"]}}
    with pytest.raises(ValueError) as err:
        _mode_switch.check("chat", modes, SERVICES)
    assert str(err.value) == ("mode_switch_modes.ingestion.services[1] is a service of mode chat "
                              "too (a service belongs to one mode); got: 'ollama'")


@pytest.mark.parametrize("running, expected", [
    ([], []),
    (["ollama"], ["chat"]),
    (["docling"], ["ingestion"]),
    (["vllm", "docling"], ["ingestion"]),
    (["vllm", "ollama"], ["chat", "ingestion"]),
    (["stranger"], []),
    (["ollama", "ollama", "stranger"], ["chat"]),
])
def test_active_modes(running, expected):
    assert _mode_switch.active_modes(MODES, running) == expected


def test_active_modes_in_name_order():
    modes = {"zeta": {"services": ["a"]}, "Beta": {"services": ["b"]}, "alpha": {"services": ["c"]}}
    assert _mode_switch.active_modes(modes, ["a", "b", "c"]) == ["alpha", "Beta", "zeta"]


@pytest.mark.parametrize("modes, running, message", [
    (MODES, "ollama", "running must be a list of compose service names; got: 'ollama'"),
    (MODES, None, "running must be a list of compose service names; got: None"),
    ("chat", [], "mode_switch_modes must be a dict of mode: {services}; got: 'chat'"),
    ({"chat": {}}, [], "mode_switch_modes.chat.services must be a list of service names; "
                       "got: None"),
])
def test_active_modes_bad_input(modes, running, message):
    with pytest.raises(ValueError) as err:
        _mode_switch.active_modes(modes, running)
    assert str(err.value) == message


NVIDIA = '[{"Driver":"nvidia","Count":0,"DeviceIDs":["0"],"Capabilities":[["gpu"]],"Options":{}}]'


@pytest.mark.parametrize("lines, expected", [
    ([], {}),
    (["ollama " + NVIDIA], {"ollama": ["0"]}),
    (["docling null"], {"docling": []}),
    (["docling []"], {"docling": []}),
    (['vllm [{"DeviceIDs":["GPU-a","GPU-b"]},{"DeviceIDs":null},{"DeviceIDs":["1"]}]'],
     {"vllm": ["GPU-a", "GPU-b", "1"]}),
    (['vllm [{"Driver":"nvidia","Count":-1}]'], {"vllm": []}),
    (["ollama " + NVIDIA, "", "vllm null"], {"ollama": ["0"], "vllm": []}),
    (['ollama [{"DeviceIDs":["0"]}]', 'ollama [{"DeviceIDs":["1"]}]'], {"ollama": ["1"]}),
    ([" null"], {"": []}),  # a container without the compose service label
])
def test_devices(lines, expected):
    assert _mode_switch.devices(lines) == expected


@pytest.mark.parametrize("lines, message", [
    ("ollama null", "lines must be a list of docker inspect lines; got: 'ollama null'"),
    ([None], "lines[0] must be a string; got: None"),
    (["ollama"], "lines[0] must be '<service> <DeviceRequests JSON>'; got: 'ollama'"),
    (["", "vllm [{"], "lines[1] must end with the JSON of DeviceRequests; got: '[{'"),
    (['vllm {"DeviceIDs":["0"]}'],
     "lines[0]: DeviceRequests must be a list of objects; got: {'DeviceIDs': ['0']}"),
    (['vllm ["0"]'], "lines[0]: DeviceRequests must be a list of objects; got: ['0']"),
    (['vllm [{"DeviceIDs":"0"}]'], "lines[0]: DeviceIDs must be a list; got: '0'"),
])
def test_devices_bad_input(lines, message):
    with pytest.raises(ValueError) as err:
        _mode_switch.devices(lines)
    assert str(err.value) == message


GPUS_BEFORE = [
    {"index": 0, "memory_used_mib": 9000, "processes": [
        {"pid": 11, "used_memory_mib": 6000}, {"pid": 12, "used_memory_mib": 2000},
        {"pid": 99, "used_memory_mib": 500}]},
    {"index": 1, "memory_used_mib": 300, "processes": [{"pid": 13, "used_memory_mib": 300}]},
]
MEMINFO = "MemTotal:       131072000 kB\nMemAvailable:   65536000 kB\n"


UNIFIED = [{"index": 0, "memory_used_mib": None, "memory_kind": "unified",
            "processes": [{"pid": 5, "used_memory_mib": 4096}]}]


@pytest.mark.parametrize("gpus, gpu_ids, pids, meminfo, expected", [
    (GPUS_BEFORE, ["0"], [11, 12], None,
     {"pids": [11, 12], "target_used_mib": 1000, "baseline_available_mib": None}),
    (GPUS_BEFORE, ["0", "1"], [11, 13], None,
     {"pids": [11, 13], "target_used_mib": 3000, "baseline_available_mib": None}),
    (GPUS_BEFORE, ["1"], [11], None,
     {"pids": [11], "target_used_mib": 300, "baseline_available_mib": None}),
    # docker top's lines, as text
    (GPUS_BEFORE, ["0"], ["11", " 12 ", ""], None,
     {"pids": [11, 12], "target_used_mib": 1000, "baseline_available_mib": None}),
    # dedicated memory: MemAvailable is not the drain's signal, whatever was read
    (GPUS_BEFORE, ["0"], [11], MEMINFO,
     {"pids": [11], "target_used_mib": 3000, "baseline_available_mib": None}),
    (UNIFIED, ["0"], [5], MEMINFO,
     {"pids": [5], "target_used_mib": None, "baseline_available_mib": 64000 + 4096}),
    (UNIFIED, ["0"], [], MEMINFO,
     {"pids": [], "target_used_mib": None, "baseline_available_mib": 64000}),
    (UNIFIED, ["1"], [5], MEMINFO,  # the unified GPU is not the mode's
     {"pids": [5], "target_used_mib": None, "baseline_available_mib": None}),
])
def test_drain_targets(gpus, gpu_ids, pids, meminfo, expected):
    assert _mode_switch.drain_targets(gpus, gpu_ids, pids, meminfo) == expected


def test_drain_targets_bad_input():
    with pytest.raises(ValueError, match="gpus must be the list of gpu_facts"):
        _mode_switch.drain_targets("x", ["0"], [])
    with pytest.raises(ValueError, match="has no MemAvailable line"):
        _mode_switch.drain_targets(UNIFIED, ["0"], [], "MemTotal: 1 kB\n")
    with pytest.raises(ValueError) as err:
        _mode_switch.drain_targets(GPUS_BEFORE, ["0"], ["11", "Error: no such container"])
    assert str(err.value) == "pids[1] must be a process id; got: 'Error: no such container'"
    with pytest.raises(ValueError, match=r"^pids\[0\] must be a process id; got: True$"):
        _mode_switch.drain_targets(GPUS_BEFORE, ["0"], [True])


def test_verify_checks_point_at_the_health_paths():
    services = {"ollama": {"port": 11434, "health_path": "/api/tags"},
                "vllm": {"port": 8000, "health_path": "/health"}}
    assert _mode_switch.verify_checks(services, ["vllm"], "modes") == [
        {"name": "vllm", "project": "modes", "service": "vllm",
         "url": "http://127.0.0.1:8000/health", "device_id": None}]


def test_record_and_metrics():
    out = _mode_switch.record("chat", "ingestion", "ingestion", "switched", None, "100.0",
                              112.346, 5.5, {"vllm": {"port": 8000}})
    record = out["record"]
    assert record["downtime_s"] == 12.35 and record["drain_s"] == 5.5
    assert record["switched_at"] == "1970-01-01T00:01:52.346000+00:00"
    assert (record["mode"], record["previous"], record["outcome"]) == (
        "ingestion", "chat", "switched")
    assert record["services"] == {"vllm": {"port": 8000}}
    assert 'gpufleet_mode_switch_downtime_seconds{mode="ingestion",outcome="switched"} 12.35\n' \
        in out["metrics"]
    assert 'gpufleet_mode_switch_drain_seconds{mode="ingestion"} 5.5\n' in out["metrics"]
    assert out["summary"] == "mode chat -> ingestion (switched); downtime 12.35 s, GPU drain 5.5 s"
    assert out["files"] == []


def test_record_keeps_the_mode_s_services_and_names_its_files():
    out = _mode_switch.record(None, "chat", "ingestion", "rolled_back", "vllm: exited", 100.0,
                              101.0, None, SERVICES, MODES, "/etc/gpufleet/mode.json",
                              "/var/lib/m.prom")
    record = out["record"]
    assert record["services"] == {"ollama": SERVICES["ollama"]}
    assert (record["previous"], record["requested"], record["failure"], record["drain_s"]) == (
        None, "ingestion", "vllm: exited", 0)
    state, metrics = out["files"]
    assert state["dest"] == "/etc/gpufleet/mode.json"
    # as to_nice_json writes it, with a final newline
    assert state["content"] == json.dumps(record, indent=4, sort_keys=True) + "\n"
    assert state["content"].startswith('{\n    "downtime_s": 1.0,\n    "drain_s": 0,\n')
    assert metrics == {"dest": "/var/lib/m.prom", "content": out["metrics"]}
    assert out["summary"] == "mode None -> chat (rolled_back); downtime 1.0 s, GPU drain 0 s"
    # an empty metrics file path writes no metrics
    assert [f["dest"] for f in _mode_switch.record(
        None, "chat", "chat", "switched", None, 1, 2, 0, {}, None, "/s.json", "")["files"]] == [
        "/s.json"]


def test_preloads():
    services = dict(SERVICES, other={"port": 11500, "preload_model": "llama3.2:3b"})
    assert _mode_switch.preloads(services, ["vllm", "other", "ollama"]) == [
        {"name": "other", "model": "llama3.2:3b", "url": "http://127.0.0.1:11500/api/generate"},
        {"name": "ollama", "model": "qwen2.5:7b", "url": "http://127.0.0.1:11434/api/generate"}]
    assert _mode_switch.preloads(SERVICES, ["vllm", "docling"]) == []
    assert _mode_switch.preloads(SERVICES, []) == []


@pytest.mark.parametrize("services, names, message", [
    (SERVICES, ["sglang"], "'sglang' is not a service of mode_switch_services (docling, "
     "ollama, vllm)"),
    (SERVICES, "ollama", "names must be a list of service names; got: 'ollama'"),
    ([], ["ollama"], "mode_switch_services must be a dict; got: []"),
])
def test_preloads_bad_input(services, names, message):
    with pytest.raises(ValueError) as err:
        _mode_switch.preloads(services, names)
    assert str(err.value) == message


RECORD = json.dumps({"mode": "chat", "previous": "ingestion", "outcome": "switched",
                     "switched_at": "2026-01-01T00:00:00+00:00", "services": {"ollama": {}}})


@pytest.mark.parametrize("lines, text, mode, expected", [
    # nothing runs, nothing recorded: start the mode
    ([], "", "chat", {"ids": [], "running": [], "recorded": {}, "active": [], "previous": None,
                      "leaving": [], "needed": True, "in_mode": False}),
    # in the mode and recorded so: nothing to do
    (["a1 ollama"], RECORD, "chat",
     {"ids": ["a1"], "running": ["ollama"], "active": ["chat"], "previous": "chat",
      "leaving": [], "needed": False, "in_mode": True}),
    # the mode runs but another is recorded: record it
    (["a1 ollama"], RECORD.replace('"chat"', '"ingestion"'), "chat",
     {"previous": "chat", "leaving": [], "needed": True, "in_mode": True}),
    # chat runs, switch to ingestion
    (["a1 ollama", ""], RECORD, "ingestion",
     {"ids": ["a1"], "previous": "chat", "leaving": ["ollama"], "needed": True,
      "in_mode": False}),
    # half of ingestion runs: start the rest
    (["b2 vllm"], "", "ingestion",
     {"running": ["vllm"], "active": ["ingestion"], "previous": "ingestion", "leaving": [],
      "needed": True, "in_mode": False}),
    # two modes at once: the recorded one is the previous
    (["c3 vllm", "a1 ollama", "d4 docling"], RECORD, "ingestion",
     {"ids": ["c3", "a1", "d4"], "running": ["docling", "ollama", "vllm"],
      "active": ["chat", "ingestion"], "previous": "chat", "leaving": ["ollama"],
      "needed": True, "in_mode": False}),
    (["c3 vllm", "d4 docling"], "", "ingestion",
     {"previous": "ingestion", "leaving": [], "needed": True, "in_mode": True}),
    # a service in two containers, a container without the service label, a stranger
    (["a1 ollama", "a2 ollama"], RECORD, "chat",
     {"ids": ["a1", "a2"], "running": ["ollama"], "needed": False, "in_mode": False}),
    (["a1 ollama", "z9 "], RECORD, "chat",
     {"ids": ["a1", "z9"], "running": ["ollama"], "needed": False, "in_mode": False}),
    (["a1 ollama", "z9 web"], RECORD, "chat",
     {"running": ["ollama", "web"], "active": ["chat"], "leaving": ["web"], "needed": True,
      "in_mode": False}),
])
def test_state(lines, text, mode, expected):
    state = _mode_switch.state(lines, text, MODES, mode)
    assert {key: state[key] for key in expected} == expected
    assert set(state) == {"ids", "running", "recorded", "active", "previous", "leaving",
                          "needed", "in_mode"}
    assert state["recorded"] == (json.loads(text) if text else {})


@pytest.mark.parametrize("lines, text, mode, message", [
    ("a1 ollama", "", "chat", "ps_lines must be a list of docker ps lines; got: 'a1 ollama'"),
    ([None], "", "chat", "ps_lines[0] must be a string; got: None"),
    ([], "", "gaming", "mode_switch_mode must be one of chat, ingestion; got: 'gaming'"),
    ([], "{not json", "chat",
     "the mode state file must hold a JSON object; got: text that is not JSON"),
    ([], "[1]", "chat", "the mode state file must hold a JSON object; got: a JSON list"),
])
def test_state_bad_input(lines, text, mode, message):
    with pytest.raises(ValueError) as err:
        _mode_switch.state(lines, text, MODES, mode)
    assert str(err.value) == message


def test_status_of_a_host_in_its_mode():
    state = _mode_switch.state(["a1 ollama"], RECORD, MODES, "chat")
    assert _mode_switch.status(state, "spark", ["ollama " + NVIDIA]) == {
        "host": "spark", "recorded_mode": "chat",
        "last_switch": {"mode": "chat", "previous": "ingestion", "outcome": "switched",
                        "switched_at": "2026-01-01T00:00:00+00:00"},
        "active_modes": ["chat"], "running": {"ollama": ["0"]}, "conflict": False}
    nothing = _mode_switch.state([], "", MODES, "chat")
    assert _mode_switch.status(nothing, "spark", []) == {
        "host": "spark", "recorded_mode": None, "last_switch": {}, "active_modes": [],
        "running": {}, "conflict": False}


def test_status_warns_loudly_when_two_modes_run():
    state = _mode_switch.state(["a1 ollama", "d4 docling"], RECORD, MODES, "chat")
    report = _mode_switch.status(state, "lab-spark", ["ollama null", "docling null"])
    assert report["conflict"] is True and report["active_modes"] == ["chat", "ingestion"]
    assert report["warning"] == (
        "WARNING: EXCLUSIVE MODES RUN AT ONCE on lab-spark: chat + ingestion (docling, ollama). "
        "A vLLM that starts or restarts now can crash in memory profiling (seed 003). Run "
        "playbooks/switch_mode.yml -e inference_mode=<one of them>.")


def test_status_bad_input():
    with pytest.raises(ValueError, match=r"^state must be a dict; got: None$"):
        _mode_switch.status(None, "spark", [])
    with pytest.raises(ValueError, match=r"^lines\[0\] must be a string; got: 1$"):
        _mode_switch.status({}, "spark", [1])


def test_verify_checks_name_the_gpus_of_the_mode():
    services = {"vllm": {"port": 8000, "health_path": "/health"},
                "docling": {"port": 5001, "health_path": "/health", "gpu": False}}
    checks = _mode_switch.verify_checks(services, ["vllm", "docling"], "modes", ["0", "1"])
    assert [c["device_id"] for c in checks] == ["0,1", None]


# ---- values as they come: '$' stays literal -------------------------------------------------

def test_compose_document_escapes_every_dollar_of_a_user_value():
    services = copy.deepcopy(SERVICES)
    name = next(iter(services))
    services[name]["command"] = ["--api-key=pa$word", "${HOME}"]
    services[name]["environment"] = {"PASSWORD": "pa$word", "SHARE": "100%", "N": 3}
    doc = _mode_switch.compose_document(MODES, services, "gpufleet-modes", [0],
                                        models_dir="/srv/$models")
    svc = doc["services"][name]
    assert svc["command"] == ["--api-key=pa$$word", "$${HOME}"]
    assert {k: svc["environment"][k] for k in ("PASSWORD", "SHARE", "N")} == \
        {"PASSWORD": "pa$$word", "SHARE": "100%", "N": 3}
    assert all("$$" in v for v in svc.get("volumes", []) if "models" in v)


@pytest.mark.parametrize("key", ["model", "preload_model"])
@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-1.5B-Instruct\n", "llama3.2:3b\r", "a\tb"])
def test_check_refuses_a_model_name_with_a_newline_or_space(key, model):
    services = copy.deepcopy(SERVICES)
    name = next(iter(services))
    services[name][key] = model
    with pytest.raises(ValueError) as err:
        _mode_switch.check(next(iter(MODES)), MODES, services)
    prefix = "mode_switch_services.%s.%s must be a model name" % (name, key)
    assert str(err.value).startswith(prefix)
    assert repr(model) in str(err.value)
