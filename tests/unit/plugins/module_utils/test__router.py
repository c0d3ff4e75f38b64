# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Router config logic: seed 000's llm.yaml, the LiteLLM config, reachability, task routes."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _router as rt


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


@pytest.mark.parametrize("mode, backends, main, research", [
    ("ollama", ["ollama", "ollama_research"], ["ollama"], ["ollama_research"]),
    ("vllm", ["ollama", "vllm", "vllm_research"], ["ollama", "vllm"], ["vllm_research"]),
    ("mixed", ["ollama", "vllm", "vllm_research", "ollama_research"], ["ollama", "vllm"],
     ["vllm_research", "ollama_research"]),
])
def test_modes_give_seed_000_orders(mode, backends, main, research):
    config = rt.router_config(plan(mode))
    llm = config["llm_yaml"]
    assert list(llm["backends"]) == backends
    assert llm["fallback_order"] == main
    assert llm["research_fallback_order"] == research
    assert all(b["type"] == "openai_compat" and b["model"] == "__auto__" and b["api_key"] == ""
               for b in llm["backends"].values())
    assert [m["model_name"] for m in config["litellm"]["model_list"]] == backends
    assert config["warnings"] == [] and config["secrets"] == {}


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
     ["task class simple: ollama_research (small model) is not available here; routed to "
      "ollama"]),
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


@pytest.mark.parametrize("reachable, want", [
    ({}, [{"name": "ollama", "probe_url": "http://127.0.0.1:11434/v1/models"},
          {"name": "vllm", "probe_url": "http://127.0.0.1:8000/v1/models"},
          {"name": "vllm_research", "probe_url": "http://127.0.0.1:8000/v1/models"},
          {"name": "ollama_research", "probe_url": "http://127.0.0.1:11435/v1/models"}]),
    ({"ollama": True, "vllm_research": False},
     [{"name": "vllm", "probe_url": "http://127.0.0.1:8000/v1/models"},
      {"name": "ollama_research", "probe_url": "http://127.0.0.1:11435/v1/models"}]),
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
