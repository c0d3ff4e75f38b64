# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpu_placement module run in-process, as Ansible's unit-test pattern does it.

ansible-core 2.19 reads module args with a serialization profile: its own
``ansible.module_utils.testing.patch_module_args`` sets both; older cores take the
JSON bytes in ``basic._ANSIBLE_ARGS``.
"""

from __future__ import annotations

import json
import pathlib
from unittest import mock

import pytest
from ansible.module_utils import basic

from ansible_collections.gpufleet.inference.plugins.modules import gpu_placement
from tests.support.modules import patch_module_args

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "placement"
SEED_GPUS = json.loads((FIXTURES / "seed001_gpus.json").read_text())
SEED_SERVICES = json.loads((FIXTURES / "seed001_services.json").read_text())


class Exit(Exception):
    pass


class Fail(Exception):
    pass


def run(args, check_mode=False):
    """Run the module; its result (with the task warnings in ``_warnings``) or its failure."""
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    warned = []

    def exit_json(self, **result):
        raise Exit(result)

    def fail_json(self, **result):
        raise Fail(result)

    with patch_module_args(args), \
            mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json), \
            mock.patch.object(basic.AnsibleModule, "warn", lambda self, w: warned.append(w)):
        try:
            gpu_placement.main()
        except Exit as exc:
            return dict(exc.args[0], _warnings=warned)
        except Fail as exc:
            return dict(exc.args[0], failed=True)
    raise AssertionError("the module neither exited nor failed")


@pytest.mark.parametrize("check_mode", [False, True])
def test_seed001_through_the_module(check_mode):
    result = run({"gpus": SEED_GPUS, "services": SEED_SERVICES, "strategy": "latency_optimized",
                  "live_usage": "ignore"}, check_mode=check_mode)
    assert result["changed"] is False
    assert {a["service"]: a["gpu"] for a in result["assignments"]} == {
        "ai-llm": "0", "ai-yolo26": "0", "ai-florence": "1", "ai-clip": "1",
        "ai-enrichment": "1"}
    assert result["_warnings"][0].startswith(
        "ai-enrichment VRAM budget (6.8 GB) exceeds GPU 1 (4 GB). Auto-adjusted to 3.5 GB")
    assert [i["code"] for i in result["issues"]] == ["budget_exceeds_gpu", "combined_exceeds_gpu"]
    assert "warnings" not in result  # task warnings, not a second list


def test_argspec_turns_pins_into_strings_and_the_engine_accepts_them():
    services = [{"name": "s", "vram_mib": 100, "gpu": 1}]  # int in YAML, str after the argspec
    result = run({"gpus": SEED_GPUS, "services": services})
    assert result["assignments"][0]["gpu"] == "1"
    assert result["assignments"][0]["pinned"] is True


def test_fleet_through_the_module():
    fleet = json.loads((FIXTURES / "fleet_seed002.json").read_text())
    result = run({"hosts": fleet["hosts"], "services": fleet["services"]})
    assert result["assignments"][0]["host"] == "khelben"
    assert sorted(result["by_host"]) == ["danilo", "drizzt", "elminster", "khelben"]


def test_catalog_option_extends_the_estimates():
    result = run({"gpus": SEED_GPUS, "live_usage": "ignore",
                  "services": [{"name": "m", "model": "mine:8b", "engine": "ollama"}],
                  "catalog": [{"name": "mine:8b", "vram_mib": 5000}]})
    assert result["assignments"][0]["vram_budget_mib"] == 5000


@pytest.mark.parametrize(("args", "message"), [
    ({"gpus": SEED_GPUS, "services": [{"name": "s", "vram_mib": -5}]},
     "services[0].vram_mib must be > 0; got: -5"),
    ({"gpus": SEED_GPUS, "services": [{"name": "s", "vram_mib": 5}], "headroom_mib": -1},
     "headroom_mib must be an integer >= 0; got: -1"),
    ({"gpus": [{"index": 0, "memory_total_mib": "lots"}], "services": []},
     "gpus[0].memory_total_mib must be an integer >= 0 or null; got: 'lots'"),
    ({"gpus": SEED_GPUS, "services": [{"name": "s", "vram_mib": 1, "gpu": "GPU-x"}],
      "catalog": [{"name": "x", "params_b": 1.0, "quantization": "q9"}]},
     "catalog[0].quantization must be one of"),
])
def test_bad_input_fails_naming_the_field(args, message):
    result = run(args)
    assert result["failed"] is True
    assert result["msg"].startswith(message)


@pytest.mark.parametrize(("args", "message"), [
    ({"services": []}, "one of the following is required: gpus, hosts"),
    ({"gpus": [], "hosts": [], "services": []},
     "parameters are mutually exclusive: gpus|hosts"),
    ({"gpus": [], "services": [], "strategy": "random"}, "value of strategy must be one of"),
])
def test_argspec_rules(args, message):
    result = run(args)
    assert result["failed"] is True
    assert message in result["msg"]
