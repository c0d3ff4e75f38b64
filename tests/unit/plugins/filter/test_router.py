# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router and preflight filters are the functions of _router and _preflight, with their docs."""

from __future__ import annotations

import pathlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import checks, preflight, router
from ansible_collections.gpufleet.inference.plugins.module_utils import _router

ROUTER = router.FilterModule().filters()
CHECKS = checks.FilterModule().filters()
PREFLIGHT = preflight.FilterModule().filters()
PLAN = {"services": [{"name": "ollama", "engine": "ollama", "active": True, "model": "m",
                      "ports": [{"host": 11434, "container": 11434}]}]}
OPTIONS = {"aliases": {}, "fallback_order": ["ollama"], "research_fallback_order": []}


def test_filters_are_registered_with_their_docs():
    assert sorted(ROUTER) == ["router_app_env", "router_config", "router_file_writes",
                              "router_litellm_env", "router_llm_yaml_with_keys",
                              "router_probe_targets", "router_probed"]
    assert sorted(CHECKS) == ["preflight_options_check",
                              "rollout_serial_check", "router_options_check", "unit_paths_check"]
    docs = pathlib.Path(router.__file__).parent
    for name in [*ROUTER, *CHECKS, *PREFLIGHT]:
        assert "name: %s\n" % name in (docs / ("%s.yml" % name)).read_text()


def test_filters_equal_the_functions():
    assert CHECKS["router_options_check"](PLAN, {}, OPTIONS, {}, {"file_mode": "0640"}) is True
    assert ROUTER["router_probe_targets"](PLAN, {}, OPTIONS) == _router.probe_targets(
        PLAN, {}, OPTIONS)
    probe = {"results": [{"item": {"name": "ollama"}, "status": 200}]}
    assert ROUTER["router_probed"](probe, {}) == {"ollama": True}
    assert ROUTER["router_app_env"](PLAN, OPTIONS) == _router.app_env(PLAN, OPTIONS)
    assert "OLLAMA_BASE_URL=http://127.0.0.1:11434/v1\n" in ROUTER["router_app_env"](PLAN)
    assert CHECKS["preflight_options_check"]({}, {"env_file": "/x/.env"}) is True
    assert CHECKS["unit_paths_check"]({"systemd_units_vllm_bin": "/usr/bin/vllm"}) is True
    assert CHECKS["rollout_serial_check"]([1, "25%", "100%"]) is True
    assert CHECKS["rollout_serial_check"]("3", "switch_serial") is True


@pytest.mark.parametrize("filters, name, args, message", [
    (CHECKS, "router_options_check", (PLAN, {}, OPTIONS, {}, {"file_mode": "0644"}),
     "router_options_check: router_file_mode must be one of 0600, 0640; got: '0644'"),
    (CHECKS, "router_options_check", (PLAN, {}, dict(OPTIONS, keyed=["ollama"]),
                                      {"ollama": "sk-hidden\n"}),
     "router_options_check: router_api_keys.ollama must be one non-empty line; got: a string "
     "of 10 characters (value hidden)"),
    (ROUTER, "router_app_env", (dict(PLAN, mode="chat"),),
     "router_app_env: services_plan.mode must be a dict with name and exclusive; got: 'chat'"),
    (ROUTER, "router_probed", ("x",),
     "router_probed: probe must be the probe task's registered result; got: 'x'"),
    (ROUTER, "router_file_writes", ([{"name": "llm.yaml", "dest": "/c/llm.yaml", "mode": "0600"}],
                                    []),
     "router_file_writes: contents must be a list of 1 rendered files; got 0"),
    (CHECKS, "preflight_options_check", ({}, {"nvidia_smi_timeout": 0}),
     "preflight_options_check: preflight_nvidia_smi_timeout must be 1-3600 seconds; got: 0"),
    (CHECKS, "unit_paths_check",
     ({"systemd_units_ollama_bin": "/usr/bin/ollama\nExecStartPre=+x"},),
     "unit_paths_check: systemd_units_ollama_bin must be an absolute path without whitespace, "
     "control characters, '..' or any of % $ ' \" ; \\; got: '/usr/bin/ollama\\nExecStartPre=+x' "
     "('\\n' is not allowed)"),
    (CHECKS, "rollout_serial_check", ("150%",),
     "rollout_serial_check: gpufleet_serial must be a count, a percentage like '25%' or a list "
     "of them (a count at least 1, a percentage 1-100%); got: gpufleet_serial=150%"),
])
def test_bad_input_is_a_filter_error_naming_the_filter(filters, name, args, message):
    with pytest.raises(AnsibleFilterError) as err:
        filters[name](*args)
    assert str(err.value) == message
