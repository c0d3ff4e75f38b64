# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Router config logic: seed 000's llm.yaml, the LiteLLM config, reachability, task routes."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _router as rt
from ansible_collections.gpufleet.inference.plugins.module_utils._common import dotenv_get


def service(name, engine, host, container, active=True, model="llama3.2:3b"):
    return {"name": name, "engine": engine, "active": active, "model": model,
            "ports": [{"host": host, "container": container, "protocol": "tcp"}]}


def plan(mode):
    """services_plan's shape for seed 000's stack in one DUAL_GPU_MODE."""
    return {"profile": "dual-gpu", "dual_gpu_mode": mode, "services": [
        service("ollama", "ollama", 11434, 11434),
        {"name": "vision", "engine": "other", "active": True, "ports": []},
        service("ollama_research", "ollama", 11435, 11434, active=mode in ("ollama", "mixed")),
        service("vllm", "vllm", 8000, 8000, active=mode in ("vllm", "mixed"),
                model="Qwen/Qwen2.5-1.5B-Instruct"),
    ]}


@pytest.mark.parametrize("mode, backends, main, research, warnings", [
    ("ollama", ["ollama", "ollama_research"], ["ollama"], ["ollama_research"],
     ["backend vllm does not run here; left out of fallback_order",
      "backend vllm_research does not run here; left out of research_fallback_order"]),
    ("vllm", ["ollama", "vllm", "vllm_research"], ["ollama", "vllm"], ["vllm_research"],
     ["backend ollama_research does not run here; left out of research_fallback_order"]),
    ("mixed", ["ollama", "vllm", "vllm_research", "ollama_research"], ["ollama", "vllm"],
     ["vllm_research", "ollama_research"], []),
])
def test_modes_give_seed_000_orders(mode, backends, main, research, warnings):
    config = rt.router_config(plan(mode))
    llm = config["llm_yaml"]
    # A plan without a mode (older callers): mode null, said so in the LiteLLM config's comment.
    assert llm["mode"] is None and next(iter(llm)) == "mode"
    assert config["mode_comment"] == "mode: none (the plan names no mode)"
    assert list(llm["backends"]) == backends
    assert llm["fallback_order"] == main
    assert llm["research_fallback_order"] == research
    assert all(b["type"] == "openai_compat" and b["model"] == "__auto__" and b["api_key"] == ""
               for b in llm["backends"].values())
    assert [m["model_name"] for m in config["litellm"]["model_list"]] == backends
    assert config["warnings"] == warnings and config["secrets"] == {}


@pytest.mark.parametrize("options, want", [
    ({}, {"ollama": "http://ollama:11434/v1", "ollama_research": "http://ollama_research:11434/v1",
          "vllm": "http://vllm:8000/v1", "vllm_research": "http://vllm:8000/v1"}),
    ({"adopted": ["vllm"]}, {"ollama": "http://ollama:11434/v1",
                             "ollama_research": "http://ollama_research:11434/v1",
                             "vllm": "http://host.docker.internal:8000/v1",
                             "vllm_research": "http://host.docker.internal:8000/v1"}),
    ({"routing": "host", "host_address": "10.0.0.5"},
     {"ollama": "http://10.0.0.5:11434/v1", "ollama_research": "http://10.0.0.5:11435/v1",
      "vllm": "http://10.0.0.5:8000/v1", "vllm_research": "http://10.0.0.5:8000/v1"}),
    ({"adopted": ["ollama"], "docker_host_gateway": "172.17.0.1"},
     {"ollama": "http://172.17.0.1:11434/v1",
      "ollama_research": "http://ollama_research:11434/v1", "vllm": "http://vllm:8000/v1",
      "vllm_research": "http://vllm:8000/v1"}),
])
def test_base_url_docker_internal_or_host_adopted(options, want):
    config = rt.router_config(plan("mixed"), options=options)
    assert {n: b["base_url"] for n, b in config["llm_yaml"]["backends"].items()} == want
    assert {m["model_name"]: m["litellm_params"]["api_base"]
            for m in config["litellm"]["model_list"]} == want
    probes = {b["name"]: b["probe_url"] for b in config["backends"]}
    host = options.get("host_address", "127.0.0.1")
    assert probes["ollama_research"] == "http://%s:11435/v1/models" % host


@pytest.mark.parametrize("unreachable, reachable, main, research, backends, fallbacks", [
    ("last", {"vllm": False}, ["ollama", "vllm"], ["ollama_research", "vllm_research"],
     ["ollama", "vllm", "ollama_research", "vllm_research"],
     [{"ollama": ["vllm"]}, {"ollama_research": ["vllm_research"]}]),
    ("omit", {"vllm": False}, ["ollama"], ["ollama_research"], ["ollama", "ollama_research"],
     []),
    ("omit", {"vllm_research": False}, ["ollama", "vllm"], ["ollama_research"],
     ["ollama", "vllm", "ollama_research"], [{"ollama": ["vllm"]}]),
    ("last", {"ollama": False, "vllm": True}, ["vllm", "ollama"],
     ["vllm_research", "ollama_research"], ["vllm", "ollama", "vllm_research", "ollama_research"],
     [{"vllm": ["ollama"]}, {"vllm_research": ["ollama_research"]}]),
    ("last", {"ollama": None}, ["ollama", "vllm"], ["vllm_research", "ollama_research"],
     ["ollama", "vllm", "vllm_research", "ollama_research"],
     [{"ollama": ["vllm"]}, {"vllm_research": ["ollama_research"]}]),
])
def test_unreachable_backends_last_or_left_out(unreachable, reachable, main, research,
                                               backends, fallbacks):
    config = rt.router_config(plan("mixed"), reachable, {"unreachable": unreachable})
    assert config["llm_yaml"]["fallback_order"] == main
    assert config["llm_yaml"]["research_fallback_order"] == research
    assert list(config["llm_yaml"]["backends"]) == backends
    assert config["litellm"]["router_settings"]["fallbacks"] == fallbacks


@pytest.mark.parametrize("mode, routes, want, warnings", [
    ("mixed", {"simple": "small", "moderate": "large", "complex": "large"},
     {"simple": ("ollama_research", "qwen2.5:1.5b"), "moderate": ("ollama", "qwen2.5:7b"),
      "complex": ("ollama", "qwen2.5:7b")}, []),
    ("vllm", {"simple": "small"}, {"simple": ("ollama", "__auto__")},
     ["backend ollama_research does not run here; left out of research_fallback_order and "
      "task_routes.simple (routed to ollama)"]),
])
def test_task_routes_follow_seed_004(mode, routes, want, warnings):
    models = {"small": {"backend": "ollama_research", "model": "qwen2.5:1.5b"},
              "large": {"backend": "ollama", "model": "qwen2.5:7b"}}
    config = rt.router_config(plan(mode), options={"task_routes": routes,
                                                   "task_models": models})
    got = config["llm_yaml"]["task_routes"]
    assert {task: (r["backend"], r["model"]) for task, r in got.items()} == want
    assert config["warnings"] == warnings
    groups = {m["model_name"]: m["litellm_params"] for m in config["litellm"]["model_list"]}
    if "simple" in want and want["simple"][1] != "__auto__":
        assert groups["task-simple"]["model"] == "openai/qwen2.5:1.5b"
        assert groups["task-simple"]["api_base"] == "http://ollama_research:11434/v1"


def test_extra_backends_and_keys_never_hold_values():
    extra = {"anthropic": {"base_url": "https://api.anthropic.com/v1",
                           "litellm_model": "anthropic/claude-3-5-haiku-latest",
                           "type": "anthropic"},
             "claude_code": {"base_url": "http://127.0.0.1:3456/v1"}}
    config = rt.router_config(plan("mixed"), options={
        "extra_backends": extra, "keyed": ["anthropic", "vllm"],
        "research_fallback_order": ["claude_code", "vllm_research", "ollama_research",
                                    "anthropic"]})
    llm = config["llm_yaml"]
    assert llm["research_fallback_order"] == ["claude_code", "vllm_research",
                                              "ollama_research", "anthropic"]
    assert llm["backends"]["anthropic"]["type"] == "anthropic"
    assert config["secrets"] == {
        "vllm": {"key": "vllm", "env": "GPUFLEET_ROUTER_VLLM_API_KEY"},
        "vllm_research": {"key": "vllm", "env": "GPUFLEET_ROUTER_VLLM_API_KEY"},
        "anthropic": {"key": "anthropic", "env": "GPUFLEET_ROUTER_ANTHROPIC_API_KEY"}}
    params = {m["model_name"]: m["litellm_params"] for m in config["litellm"]["model_list"]}
    assert params["anthropic"]["api_key"] == "os.environ/GPUFLEET_ROUTER_ANTHROPIC_API_KEY"
    assert params["vllm_research"]["api_key"] == "os.environ/GPUFLEET_ROUTER_VLLM_API_KEY"
    assert "claude_code" not in params
    assert config["warnings"] == ["backend claude_code has no litellm_model (its model is "
                                  "__auto__): it is not in the LiteLLM config"]
    keys = {"anthropic": "sk-ant-1", "vllm": "sk-v-2"}
    filled = rt.apply_api_keys(config, keys)
    assert filled["backends"]["vllm_research"]["api_key"] == "sk-v-2"
    assert filled["backends"]["anthropic"]["api_key"] == "sk-ant-1"
    assert config["llm_yaml"]["backends"]["vllm"]["api_key"] == ""
    assert rt.litellm_env(config, keys) == ("GPUFLEET_ROUTER_ANTHROPIC_API_KEY=sk-ant-1\n"
                                            "GPUFLEET_ROUTER_VLLM_API_KEY=sk-v-2\n")


# What Compose v2 reads a backslash and a character as, in a double-quoted value.
COMPOSE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
                   "\\": "\\", '"': '"', "$": "$"}


def compose_env_file(text):
    """``{NAME: value}`` as Compose v2's env_file reads one-line values (compose-go's dotenv):
    unquoted up to `` #``, right-trimmed; '...' literal but for \\'; "..." with the escapes of
    COMPOSE_ESCAPES, any other backslash kept. A ``$`` that Compose would interpolate fails
    the test. The real Compose binary reads the role's file in tests/integration/test_router.py.
    """
    values = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        name, value = line.split("=", 1)
        if value[:1] in ("'", '"'):
            quote, chars, escaped = value[0], [], False
            for i, char in enumerate(value[1:], 1):
                if escaped:
                    if quote == '"':
                        chars.append(COMPOSE_ESCAPES.get(char, "\\" + char))
                    else:
                        chars.append(char if char == quote else "\\" + char)
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == quote:
                    assert value[i + 1:] == "", line
                    break
                else:
                    assert not (quote == '"' and char == "$"), "interpolated: %r" % line
                    chars.append(char)
            else:
                raise AssertionError("unterminated quote: %r" % line)
            values[name] = "".join(chars)
        else:
            value = value.split(" #", 1)[0].rstrip()
            assert "$" not in value, "interpolated: %r" % line
            values[name] = value
    return values


@pytest.mark.parametrize("key", [
    "sk-plain_key.v2:x/y+z=",
    "sk-ab$cd #tail",
    "${HOME}",
    "$(id)",
    "a'b\"c",
    "ends-with-backslash\\",
    "\\$escaped",
    " leading and trailing ",
    "#starts-like-a-comment",
    "tab\there",
    "\\n is not a newline",
    "ünïcode-€",
    "escape\x1b[0m",
])
def test_litellm_env_reads_back_as_the_key(key):
    config = rt.router_config(plan("vllm"), options={"keyed": ["vllm"]})
    text = rt.litellm_env(config, {"vllm": key})
    assert text.endswith("\n") and text.count("\n") == 1
    assert compose_env_file(text) == {"GPUFLEET_ROUTER_VLLM_API_KEY": key}


@pytest.mark.parametrize("keys, message", [
    ({"vllm": 12345}, "router_api_keys.vllm must be a string; got: a int (value hidden)"),
    ({"vllm": "sk-secret\nINJECTED=1"}, "router_api_keys.vllm must be one non-empty line; "
     "got: a string of 20 characters (value hidden)"),
    ({}, "router_api_keys.vllm is missing; got: keys for none"),
    ("sk-secret", "router_api_keys must be a dict of backend name: key (value hidden)"),
])
def test_api_key_errors_hide_the_value(keys, message):
    config = rt.router_config(plan("vllm"), options={"keyed": ["vllm"]})
    for function in (rt.apply_api_keys, rt.litellm_env):
        with pytest.raises(ValueError) as info:
            function(config, keys)
        assert str(info.value) == message
        assert "sk-secret" not in str(info.value)


@pytest.mark.parametrize("options, message", [
    ({"routing": "k8s"}, "router_routing must be one of docker, host; got: 'k8s'"),
    ({"unreachable": "drop"}, "router_unreachable must be one of omit, last; got: 'drop'"),
    ({"fallback_order": ["ollama", "olama"]}, "router_fallback_order names no service, alias "
     "or extra backend (ollama, ollama_research, vllm, vllm_research); got: 'olama'"),
    ({"research_fallback_order": ["vllm", "vllm"]},
     "router_research_fallback_order lists a name twice; got: ['vllm', 'vllm']"),
    ({"adopted": ["vision"]}, "router_adopted_services names no LLM service of services_plan "
     "(ollama, ollama_research, vllm); got: 'vision'"),
    ({"aliases": {"sglang": ["x"]}}, "router_aliases has a key that is no LLM service of "
     "services_plan nor an extra backend (ollama, ollama_research, vllm); got: 'sglang'"),
    ({"aliases": {"vllm": ["ollama"]}},
     "router_aliases.vllm names an existing backend; got: 'ollama'"),
    ({"cooldown_time": -1}, "router_cooldown_time must be an integer >= 0; got: -1"),
    ({"host_address": "http://x"},
     "router_host_address must be a host name or IPv4 address; got: 'http://x'"),
    ({"keyed": ["openai"]}, "router_api_keys has a key for no backend (ollama, "
     "ollama_research, vllm, vllm_research); got: 'openai'"),
    ({"extra_backends": {"cloud": {"base_url": "ftp://x"}}},
     "router_extra_backends.cloud.base_url must be an http(s) URL; got: 'ftp://x'"),
    ({"extra_backends": {"cloud": {"base_url": "https://x", "litellm_model": "gpt"}}},
     "router_extra_backends.cloud.litellm_model must be provider/model (openai/gpt-4o-mini); "
     "got: 'gpt'"),
    ({"extra_backends": {"ollama": {"base_url": "https://x"}}},
     "router_extra_backends.ollama has the name of a service or alias; got: 'ollama'"),
    ({"task_routes": {"trivial": "small"}},
     "router_task_routes has an unknown class (simple, moderate, complex); got: 'trivial'"),
    ({"task_routes": {"simple": "tiny"}},
     "router_task_routes.simple must be one of small, large; got: 'tiny'"),
    ({"task_routes": {"simple": "small"}, "task_models": {"small": {"model": "x"}}},
     "router_task_models.small must be a dict with backend; got: {'model': 'x'}"),
    ({"colour": "blue"}, "options has unknown key(s): colour"),
])
def test_bad_options_name_field_and_value(options, message):
    with pytest.raises(ValueError) as info:
        rt.router_config(plan("mixed"), options=options)
    assert str(info.value) == message


@pytest.mark.parametrize("services_plan, reachable, message", [
    ({"services": None}, None, "services_plan must be the fact set by the "
     "gpufleet.inference.services role; got: {'services': None}"),
    ({"services": [dict(service("vllm", "vllm", 8000, 8000), model=None)]}, None,
     "services_catalog.vllm.model must name the model LiteLLM asks for; got: None"),
    ({"services": [dict(service("ollama", "ollama", 1, 1), ports=[])]}, None,
     "services_catalog.ollama.ports must give the port the router reaches; got: []"),
    (plan("mixed"), {"vllm": "down"}, "reachable.vllm must be true, false or null; got: 'down'"),
])
def test_bad_plan_or_reachability(services_plan, reachable, message):
    with pytest.raises(ValueError) as info:
        rt.router_config(services_plan, reachable,
                         {"aliases": {}, "fallback_order": [], "research_fallback_order": []})
    assert str(info.value) == message


def test_litellm_router_settings_carry_cooldowns():
    config = rt.router_config(plan("mixed"), options={"cooldown_time": 30, "allowed_fails": 1,
                                                      "num_retries": 0, "timeout": 60})
    settings = config["litellm"]["router_settings"]
    assert (settings["cooldown_time"], settings["allowed_fails"], settings["num_retries"],
            settings["timeout"]) == (30, 1, 0, 60)


# ---- the role's preflight and probe ----------------------------------------------------------

ROLE = {"file_mode": "0600", "config_dir": "/opt/gpufleet/config", "probe_timeout": 5}


@pytest.mark.parametrize("role_options", [
    ROLE, dict(ROLE, file_mode="0640", probe_timeout="10"), {}, None])
def test_check_role_passes_good_input(role_options):
    assert rt.check_role(plan("mixed"), {}, {"keyed": ["vllm"]}, {"vllm": "sk-1"},
                         role_options) is True


@pytest.mark.parametrize("role_options, options, keys, message", [
    (dict(ROLE, file_mode="0644"), {}, {},
     "router_file_mode must be one of 0600, 0640; got: '0644'"),
    (dict(ROLE, file_mode=384), {}, {}, "router_file_mode must be one of 0600, 0640; got: 384"),
    (dict(ROLE, config_dir="config"), {}, {},
     "router_config_dir must be an absolute path; got: 'config'"),
    (dict(ROLE, probe_timeout=0), {}, {}, "router_probe_timeout must be an integer >= 1; got: 0"),
    (dict(ROLE, probe_timeout="soon"), {}, {},
     "router_probe_timeout must be an integer >= 1; got: 'soon'"),
    (dict(ROLE, colour="blue"), {}, {}, "role_options has unknown key(s): colour"),
    ("0600", {}, {}, "role_options must be a dict; got: '0600'"),
    (ROLE, {"routing": "mesh"}, {}, "router_routing must be one of docker, host; got: 'mesh'"),
    (ROLE, {"keyed": ["vllm"]}, {"vllm": "sk-secret\nx"},
     "router_api_keys.vllm must be one non-empty line; got: a string of 11 characters "
     "(value hidden)"),
    (ROLE, {"keyed": ["vllm"]}, {}, "router_api_keys.vllm is missing; got: keys for none"),
])
def test_check_role_names_field_and_value(role_options, options, keys, message):
    with pytest.raises(ValueError) as info:
        rt.check_role(plan("mixed"), {}, options, keys, role_options)
    assert str(info.value) == message
    assert "sk-secret" not in str(info.value)


def test_check_role_needs_the_plan():
    with pytest.raises(ValueError, match=r"^services_plan must be the fact set by the "):
        rt.check_role(None, {}, {}, {}, ROLE)


def _target(name, port):
    url = "http://127.0.0.1:%d/v1/models" % port
    return {"name": name, "probe_url": url, "url": url}


@pytest.mark.parametrize("reachable, want", [
    ({}, [_target("ollama", 11434),
          _target("vllm", 8000),
          _target("vllm_research", 8000),
          _target("ollama_research", 11435)]),
    ({"ollama": True, "vllm_research": False},
     [_target("vllm", 8000),
      _target("ollama_research", 11435)]),
])
def test_probe_targets_are_the_local_backends_not_given(reachable, want):
    assert rt.probe_targets(plan("mixed"), reachable, {}) == want


def test_probe_targets_leave_out_remote_backends():
    options = {"extra_backends": {"cloud": {"base_url": "https://api.example.com/v1"}}}
    assert [t["name"] for t in rt.probe_targets(plan("ollama"), None, options)] == [
        "ollama", "ollama_research"]


def _probe(name, **result):
    return dict(result, item={"name": name, "probe_url": "http://x/v1/models"})


@pytest.mark.parametrize("probe, reachable, want", [
    ({"results": [_probe("ollama", status=200), _probe("vllm", status=-1),
                  _probe("vllm_research", status=404)]}, {},
     {"ollama": True, "vllm": False, "vllm_research": False}),
    # a probe that failed to connect has no status
    ({"results": [_probe("vllm", failed=True, msg="refused")]}, None, {"vllm": False}),
    # probing off: every item was skipped
    ({"results": [_probe("ollama", skipped=True)], "skipped": True}, {}, {}),
    # no backend to probe, or no probe at all
    ({"results": [], "skipped": True}, {"vllm": True}, {"vllm": True}),
    ({}, None, {}),
    (None, None, {}),
    # the role's overrides win
    ({"results": [_probe("ollama", status=200)]}, {"ollama": False, "vllm": None},
     {"ollama": False, "vllm": None}),
])
def test_probed(probe, reachable, want):
    assert rt.probed(probe, reachable) == want


@pytest.mark.parametrize("probe, reachable, message", [
    ("ok", None, "probe must be the probe task's registered result; got: 'ok'"),
    ({"results": "x"}, None, "probe.results must be a list; got: 'x'"),
    ({"results": [None]}, None, "probe.results[0] must be a dict; got: None"),
    ({}, {"vllm": "up"}, "reachable.vllm must be true, false or null; got: 'up'"),
])
def test_probed_bad_input(probe, reachable, message):
    with pytest.raises(ValueError) as info:
        rt.probed(probe, reachable)
    assert str(info.value) == message


# ---- modes: the router and the applications follow the mode ----------------------------------

def test_unreachable_and_left_out_is_one_line_naming_where():
    config = rt.router_config(plan("mixed"), {"vllm": False}, {"unreachable": "omit"})
    assert config["warnings"] == [
        "backend vllm is unreachable and left out of fallback_order",
        "backend vllm_research is unreachable and left out of research_fallback_order"]


MODE_SERVICES = {"chat": ("ollama", "ollama_research", "vision"),
                 "ingestion": ("vllm", "docling"),
                 "mixed": ("ollama", "ollama_research", "vision", "vllm", "docling")}


def modal_plan(name, exclusive=True):
    """services_plan with a mode (chat: the Ollama servers; ingestion: vLLM and Docling)."""
    runs = MODE_SERVICES[name]
    return {"mode": {"name": name, "exclusive": exclusive, "description": "%s mode" % name},
            "services": [
                service("ollama", "ollama", 11434, 11434, active="ollama" in runs),
                {"name": "vision", "engine": "other", "active": "vision" in runs, "ports": []},
                service("ollama_research", "ollama", 11435, 11434,
                        active="ollama_research" in runs),
                service("vllm", "vllm", 8000, 8000, active="vllm" in runs,
                        model="Qwen/Qwen2.5-1.5B-Instruct"),
                {"name": "docling", "engine": "other", "active": "docling" in runs,
                 "ports": [{"host": 5001, "container": 5001}]}]}


TASKS = {"task_routes": {"simple": "small", "moderate": "large", "complex": "large"},
         "task_models": {"small": {"backend": "ollama_research", "model": "qwen2.5:1.5b"},
                         "large": {"backend": "ollama", "model": "qwen2.5:7b"}}}
NO_OLLAMA = [
    "backend ollama does not run in mode ingestion; left out of fallback_order, "
    "task_routes.moderate (routed to vllm) and task_routes.complex (routed to vllm)",
    "backend ollama_research does not run in mode ingestion; left out of "
    "research_fallback_order and task_routes.simple (routed to vllm)"]


@pytest.mark.parametrize("unreachable, reachable, warnings", [
    ("last", {}, NO_OLLAMA),
    # What a probe says of a stopped backend changes nothing: it is not in the mode at all.
    ("last", {"ollama": False, "ollama_research": True}, NO_OLLAMA),
    ("omit", {"ollama": True}, NO_OLLAMA),
])
def test_ingestion_has_no_ollama_in_any_order_route_or_fallback(
        unreachable, reachable, warnings):
    config = rt.router_config(modal_plan("ingestion"), reachable,
                              dict(TASKS, unreachable=unreachable))
    llm, litellm = config["llm_yaml"], config["litellm"]
    assert llm["mode"] == {"name": "ingestion", "exclusive": True}
    assert config["mode_comment"] == "mode: ingestion, exclusive: true"
    assert (llm["fallback_order"], llm["research_fallback_order"]) == (["vllm"],
                                                                       ["vllm_research"])
    assert {t: r["backend"] for t, r in llm["task_routes"].items()} == {
        "simple": "vllm", "moderate": "vllm", "complex": "vllm"}
    assert litellm["router_settings"]["fallbacks"] == [
        {"task-simple": ["vllm"]}, {"task-moderate": ["vllm"]}, {"task-complex": ["vllm"]}]
    assert "ollama" not in repr(llm) and "ollama" not in repr(litellm)
    assert "ollama" not in repr(config["backends"])
    assert config["warnings"] == warnings


def test_chat_has_no_vllm_and_a_mixed_mode_keeps_both():
    chat = rt.router_config(modal_plan("chat"))
    assert chat["llm_yaml"]["mode"] == {"name": "chat", "exclusive": True}
    assert (chat["llm_yaml"]["fallback_order"], chat["llm_yaml"]["research_fallback_order"]) \
        == (["ollama"], ["ollama_research"])
    assert "vllm" not in repr(chat["llm_yaml"]) and "vllm" not in repr(chat["litellm"])
    assert chat["litellm"]["router_settings"]["fallbacks"] == []
    assert chat["warnings"] == [
        "backend vllm does not run in mode chat; left out of fallback_order",
        "backend vllm_research does not run in mode chat; left out of research_fallback_order"]
    mixed = rt.router_config(modal_plan("mixed", exclusive=False))
    assert mixed["llm_yaml"]["mode"] == {"name": "mixed", "exclusive": False}
    assert mixed["mode_comment"] == "mode: mixed, exclusive: false"
    assert mixed["litellm"]["router_settings"]["fallbacks"] == [
        {"ollama": ["vllm"]}, {"vllm_research": ["ollama_research"]}]
    assert mixed["warnings"] == []


CHAT_ENV = """\
INFERENCE_MODE=chat
INFERENCE_MODE_EXCLUSIVE=true
LLM_FALLBACK_ENABLED=false
OLLAMA_BASE_URL=http://127.0.0.1:11434/v1
OLLAMA_ENABLED=true
OLLAMA_MODEL=llama3.2:3b
OLLAMA_RESEARCH_BASE_URL=http://127.0.0.1:11435/v1
OLLAMA_RESEARCH_ENABLED=true
OLLAMA_RESEARCH_MODEL=llama3.2:3b
VLLM_BASE_URL=
VLLM_ENABLED=false
VLLM_MODEL=Qwen/Qwen2.5-1.5B-Instruct
"""
INGESTION_ENV = """\
AEGIS_MODE=ingestion
INFERENCE_MODE=ingestion
INFERENCE_MODE_EXCLUSIVE=true
LLM_FALLBACK_ENABLED=false
OLLAMA_BASE_URL=
OLLAMA_ENABLED=false
OLLAMA_MODEL=llama3.2:3b
OLLAMA_RESEARCH_BASE_URL=
OLLAMA_RESEARCH_ENABLED=false
OLLAMA_RESEARCH_MODEL=llama3.2:3b
VLLM_BASE_URL=http://10.0.0.5:8000/v1
VLLM_ENABLED=true
VLLM_MODEL=Qwen/Qwen2.5-1.5B-Instruct
"""


@pytest.mark.parametrize("services_plan, options, want", [
    (modal_plan("chat"), {}, CHAT_ENV),
    # Docker routing and adoption are for the router's container: apps on the host use the
    # host address and the published port.
    (modal_plan("chat"), {"routing": "docker", "adopted": ["vllm"]}, CHAT_ENV),
    (modal_plan("ingestion"), {"host_address": "10.0.0.5", "app_env_mode_names": ["AEGIS_MODE"]},
     INGESTION_ENV),
    (modal_plan("mixed", exclusive=False), {},
     CHAT_ENV.replace("=chat", "=mixed").replace("EXCLUSIVE=true", "EXCLUSIVE=false")
     .replace("FALLBACK_ENABLED=false", "FALLBACK_ENABLED=true")
     .replace("VLLM_BASE_URL=", "VLLM_BASE_URL=http://127.0.0.1:8000/v1")
     .replace("VLLM_ENABLED=false", "VLLM_ENABLED=true")),
    # A plan without a mode (older callers): the dual-GPU mode vllm runs both engine kinds.
    (plan("vllm"), {"app_env_mode_names": ["AEGIS_MODE"]}, "AEGIS_MODE=\n" +
     CHAT_ENV.replace("=chat", "=").replace("EXCLUSIVE=true", "EXCLUSIVE=false")
     .replace("FALLBACK_ENABLED=false", "FALLBACK_ENABLED=true")
     .replace("OLLAMA_RESEARCH_BASE_URL=http://127.0.0.1:11435/v1", "OLLAMA_RESEARCH_BASE_URL=")
     .replace("RESEARCH_ENABLED=true", "RESEARCH_ENABLED=false")
     .replace("VLLM_BASE_URL=", "VLLM_BASE_URL=http://127.0.0.1:8000/v1")
     .replace("VLLM_ENABLED=false", "VLLM_ENABLED=true")),
])
def test_app_env_tells_apps_the_mode_and_the_engines(services_plan, options, want):
    assert rt.app_env(services_plan, options) == want


def test_app_env_values_read_back_exactly():
    odd = modal_plan("chat")
    odd["services"][0]["model"] = 'my model "v2" $HOME #1'
    text = rt.app_env(odd)
    assert 'OLLAMA_MODEL="my model \\"v2\\" \\$HOME #1"\n' in text
    assert dotenv_get(text, "OLLAMA_MODEL") == 'my model "v2" $HOME #1'
    assert dotenv_get(text, "VLLM_BASE_URL") == ""


def test_app_env_holds_no_key_whatever_the_options():
    keyed = rt.app_env(modal_plan("ingestion"), {"keyed": ["vllm"], "key_env_prefix": "K_"})
    assert keyed == rt.app_env(modal_plan("ingestion"))
    assert "API_KEY" not in keyed


def renamed(name, active=True):
    return {"services": [service(name, "vllm", 8000, 8000, active=active)]}


@pytest.mark.parametrize("services_plan, options, message", [
    (modal_plan("chat"), {"app_env_mode_names": "AEGIS_MODE"},
     "router_app_env_mode_names must be a list of variable names; got: 'AEGIS_MODE'"),
    (modal_plan("chat"), {"app_env_mode_names": ["aegis-mode"]},
     "router_app_env_mode_names[0] must be a variable name (letters, digits and '_', not first "
     "a digit); got: 'aegis-mode'"),
    (modal_plan("chat"), {"app_env_mode_names": ["A", "A"]},
     "router_app_env_mode_names lists a name twice; got: ['A', 'A']"),
    (modal_plan("chat"), {"app_env_mode_names": ["VLLM_ENABLED"]},
     "router_app_env_mode_names names a variable the file sets already; got: 'VLLM_ENABLED'"),
    (renamed("7b"), {}, "services_catalog.7b gives no variable name (7B_ENABLED starts with a "
     "digit); got: '7b'"),
    ({"services": [service("vllm-a", "vllm", 8000, 8000), service("vllm_a", "vllm", 8001, 8000)]},
     {}, "services_catalog.vllm_a gives the application env variable VLLM_A_ENABLED, which "
     "services_catalog.vllm-a sets too; rename the service; got: 'vllm_a'"),
    (renamed("llm_fallback"), {}, "services_catalog.llm_fallback gives the application env "
     "variable LLM_FALLBACK_ENABLED, which the file itself sets too; rename the service; got: "
     "'llm_fallback'"),
    # A service that does not run still gets its variables: its ports and model are checked.
    ({"services": [dict(service("vllm", "vllm", 1, 1, active=False), ports=[])]}, {},
     "services_catalog.vllm.ports must give the port the router reaches; got: []"),
    (dict(modal_plan("chat"), mode="chat"), {},
     "services_plan.mode must be a dict with name and exclusive; got: 'chat'"),
    (dict(modal_plan("chat"), mode={"name": "chat mode"}), {},
     "services_plan.mode.name must be a mode name (letters, digits, '_', '.', '-'); got: "
     "'chat mode'"),
    (dict(modal_plan("chat"), mode={"name": "chat", "exclusive": "yes"}), {},
     "services_plan.mode.exclusive must be true or false; got: 'yes'"),
    ([], {}, "services_plan must be the fact set by the gpufleet.inference.services role; "
     "got: []"),
])
def test_app_env_bad_input_names_the_field(services_plan, options, message):
    with pytest.raises(ValueError) as info:
        rt.app_env(services_plan, options)
    assert str(info.value) == message


@pytest.mark.parametrize("mode, message", [
    ("chat", "services_plan.mode must be a dict with name and exclusive; got: 'chat'"),
    ({"name": None, "exclusive": True}, "services_plan.mode.name must be a mode name (letters, "
     "digits, '_', '.', '-'); got: None"),
])
def test_router_config_checks_the_mode(mode, message):
    with pytest.raises(ValueError) as info:
        rt.router_config(dict(modal_plan("chat"), mode=mode))
    assert str(info.value) == message


APP = dict(ROLE, write_app_env=True, app_env_file="/etc/gpufleet/inference.env")


@pytest.mark.parametrize("role_options, options, message", [
    (dict(APP, app_env_file="inference.env"), {},
     "router_app_env_file must be an absolute path of a file; got: 'inference.env'"),
    (dict(APP, app_env_file="/etc/gpufleet/"), {},
     "router_app_env_file must be an absolute path of a file; got: '/etc/gpufleet/'"),
    (dict(APP, write_app_env="yes"), {},
     "router_write_app_env must be true or false; got: 'yes'"),
    (APP, {"app_env_mode_names": ["VLLM_MODEL"]},
     "router_app_env_mode_names names a variable the file sets already; got: 'VLLM_MODEL'"),
])
def test_check_role_checks_the_app_env_file(role_options, options, message):
    with pytest.raises(ValueError) as info:
        rt.check_role(modal_plan("ingestion"), {}, options, {}, role_options)
    assert str(info.value) == message


def test_check_role_skips_the_app_env_file_not_written():
    role_options = dict(APP, write_app_env=False, app_env_file="not/absolute")
    assert rt.check_role(renamed("7b"), {}, {"aliases": {}, "fallback_order": [],
                                             "research_fallback_order": []}, {},
                         role_options) is True
    assert rt.check_role(modal_plan("ingestion"), {}, {}, {}, APP) is True


FILES = [{"name": "llm.yaml", "dest": "/c/llm.yaml", "mode": "0600", "secret": True, "write": True},
         {"name": "litellm.yaml", "dest": "/c/litellm.yaml", "mode": "0640", "secret": False},
         {"name": "inference.env", "dest": "/e/inference.env", "mode": "0644", "secret": False}]


def test_file_writes_pair_each_file_with_its_content_secret_ones_apart():
    dirs = [{"path": "/c", "mode": "0750", "write": True}]
    assert rt.file_writes(FILES, ["keys: k\n", "model_list: []\n", "A=1\n"], dirs) == {
        "directories": [{"path": "/c", "mode": "0750"}],
        "files": [{"path": "/c/litellm.yaml", "content": "model_list: []\n", "mode": "0640"},
                  {"path": "/e/inference.env", "content": "A=1\n", "mode": "0644"}],
        "secret_files": [{"path": "/c/llm.yaml", "content": "keys: k\n", "mode": "0600"}]}
    assert rt.file_writes([], []) == {"directories": [], "files": [], "secret_files": []}


@pytest.mark.parametrize("files, contents, dirs, message", [
    ("x", [], None, "files must be a list of {name, dest, mode, secret}; got: 'x'"),
    (FILES, ["a", "b"], None, "contents must be a list of 3 rendered files; got 2"),
    (FILES, "abc", None, "contents must be a list of 3 rendered files; got str"),
    (FILES, ["a", None, "c"], None, "contents[1] must be text (/c/litellm.yaml); got a NoneType"),
    ([{"name": "x", "dest": "/x"}], ["a"], None, "files[0].mode must be a string; got: None"),
    (FILES, ["a", "b", "c"], "/c", "directories must be a list of {path, mode}; got: '/c'"),
])
def test_file_writes_name_bad_input(files, contents, dirs, message):
    with pytest.raises(ValueError) as raised:
        rt.file_writes(files, contents, dirs)
    assert str(raised.value) == message
