# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The services_plan action on the controller: the host answers through a fake _execute_module
(gpu_facts, slurp), so what is read, how often, and the plan are checked without a host."""

from __future__ import annotations

import base64
import copy
from unittest.mock import MagicMock

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.gpufleet.inference.plugins.action.services_plan import ActionModule
from ansible_collections.gpufleet.inference.plugins.module_utils import _placement, _plan
from tests.support.plans import TWO_GPUS, default_catalog, gpu, make_plan

CATALOG, EXTRA = default_catalog()
ENV_FILE = "/opt/gpufleet/.env"
MISSING = object()


class Host:
    """What the host answers: its GPUs (gpu_facts) and its .env (slurp); every call noted."""

    def __init__(self, gpus=None, env=MISSING, slurp_failure=None, facts_failure=None,
                 facts_warnings=()):
        self.gpus = TWO_GPUS if gpus is None else gpus
        self.env = env
        self.slurp_failure = slurp_failure
        self.facts_failure = facts_failure
        self.facts_warnings = list(facts_warnings)
        self.calls = []

    def execute_module(self, module_name=None, module_args=None, task_vars=None, **_kwargs):
        self.calls.append((module_name, module_args))
        if module_name == "gpufleet.inference.gpu_facts":
            if self.facts_failure:
                return {"failed": True, "msg": self.facts_failure}
            summary = {"count": len(self.gpus), "healthy_count": len(self.gpus),
                       "recommended_profile": _plan.recommend_profile(len(self.gpus))}
            return {"changed": False, "warnings": self.facts_warnings,
                    "ansible_facts": {"gpus": copy.deepcopy(self.gpus), "gpu_summary": summary,
                                      "discovered_interpreter_python": "/usr/bin/python3"}}
        if module_name == "ansible.builtin.slurp":
            if self.slurp_failure:
                return {"failed": True, "msg": self.slurp_failure % module_args["src"]}
            if self.env is MISSING:
                return {"failed": True, "msg": "File not found: %s" % module_args["src"]}
            content = base64.b64encode(self.env.encode()).decode()
            return {"changed": False, "content": content, "source": module_args["src"],
                    "encoding": "base64"}
        raise AssertionError("unexpected module %s" % module_name)

    def modules(self):
        return [name for name, _args in self.calls]


def run(host, check_mode=False, **args):
    args.setdefault("catalog", copy.deepcopy(CATALOG))
    args.setdefault("extra_profiles", dict(EXTRA))
    task = MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = check_mode
    task.action = "gpufleet.inference.services_plan"
    connection = MagicMock()
    connection._shell.tmpdir = None
    action = ActionModule(task, connection, play_context=MagicMock(), loader=None, templar=None,
                          shared_loader_obj=None)
    action._execute_module = host.execute_module
    return action.run(task_vars={})


def plan_of(result):
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return result["ansible_facts"]["services_plan"]


# ---- what is read, once ---------------------------------------------------------------------

def test_reads_gpus_and_env_once_and_plans():
    host = Host(env="TOKEN=x\nDUAL_GPU_MODE=vllm\n")
    result = run(host)
    plan = plan_of(result)
    assert host.modules() == ["ansible.builtin.slurp", "gpufleet.inference.gpu_facts"]
    assert host.calls[0][1] == {"src": ENV_FILE} and host.calls[1][1] == {}
    assert (plan["profile"], plan["dual_gpu_mode"], plan["dual_gpu_mode_source"]) == \
        ("dual-gpu", "vllm", "env")
    assert plan["env_file"] == ENV_FILE
    assert plan["compose_profiles"] == ["dual-gpu", "dual-gpu-vllm"]
    facts = result["ansible_facts"]
    assert facts["gpus"] == TWO_GPUS and facts["gpu_summary"]["count"] == 2
    assert facts["discovered_interpreter_python"] == "/usr/bin/python3"


def test_plan_is_the_one_the_role_made_before():
    """Same catalog, GPUs, profile and mode: the same plan as placement_input -> place -> plan,
    plus where the mode came from."""
    plan = plan_of(run(Host(), gpus=TWO_GPUS, dual_gpu_mode="mixed"))
    expected = make_plan("auto", "mixed", gpus=TWO_GPUS)
    assert plan == dict(expected, dual_gpu_mode_source="given", env_file=ENV_FILE)


@pytest.mark.parametrize("env, mode, source", [
    ("TOKEN=x\n", "ollama", "default"),
    ("DUAL_GPU_MODE=\n", "ollama", "default"),
    ("DUAL_GPU_MODE=\nmixed_cache=1\n", "ollama", "default"),
    ("DUAL_GPU_MODE= \nmixed=1\n", "ollama", "default"),
    ("DUAL_GPU_MODE=vllm # GPU 1 for research\n", "vllm", "env"),
    ('export DUAL_GPU_MODE="mixed"\n', "mixed", "env"),
    (MISSING, "ollama", "default"),
])
def test_mode_from_the_env_file_else_ollama(env, mode, source):
    host = Host(env=env)
    plan = plan_of(run(host, env_file="/srv/project/.env"))
    assert (plan["dual_gpu_mode"], plan["dual_gpu_mode_source"]) == (mode, source)
    assert host.calls[0] == ("ansible.builtin.slurp", {"src": "/srv/project/.env"})


def test_given_mode_reads_no_env_and_given_gpus_no_facts():
    host = Host(env="DUAL_GPU_MODE=vllm\n")
    result = run(host, dual_gpu_mode="mixed", gpus=TWO_GPUS)
    plan = plan_of(result)
    assert host.calls == []
    assert (plan["dual_gpu_mode"], plan["dual_gpu_mode_source"]) == ("mixed", "given")
    assert set(result["ansible_facts"]) == {"services_plan"}


def test_check_mode_plans_the_same():
    assert plan_of(run(Host(env="DUAL_GPU_MODE=vllm\n"), check_mode=True)) == \
        plan_of(run(Host(env="DUAL_GPU_MODE=vllm\n")))


# ---- profiles --------------------------------------------------------------------------------

def test_three_gpus_plan_multi_gpu_with_a_replica_on_gpu_2():
    plan = plan_of(run(Host(gpus=[gpu(0), gpu(1), gpu(2)], env="DUAL_GPU_MODE=vllm\n")))
    assert (plan["profile"], plan["compose_profiles"]) == \
        ("multi-gpu", ["multi-gpu", "multi-gpu-vllm"])
    assert plan["active"] == ["ollama", "vision", "vllm", "ollama_spare_gpu2", "docling"]
    assert plan["idle_gpus"] == []
    assert plan["replicas"] == {"ollama_spare": ["ollama_spare_gpu2"]}


def test_a_catalog_without_a_replica_entry_leaves_gpu_2_idle_and_says_so():
    catalog = {k: v for k, v in copy.deepcopy(CATALOG).items() if k != "ollama_spare"}
    plan = plan_of(run(Host(gpus=[gpu(0), gpu(1), gpu(2)]), catalog=catalog,
                       dual_gpu_mode="vllm"))
    assert plan["idle_gpus"] == [2]
    assert plan["summary"][-1].startswith("GPU 2 idle: profile multi-gpu places its active "
                                          "services on GPU 0, 1 only; services_catalog has no "
                                          "entry with per_spare_gpu: true")


# ---- multi-gpu: two placement passes ----------------------------------------------------------

class Placements:
    """_placement.place, each call's services and options noted."""

    def __init__(self):
        self.calls = []
        self.real = _placement.place

    def __call__(self, gpus, services, **options):
        self.calls.append((copy.deepcopy(services), options))
        return self.real(gpus, services, **options)


@pytest.mark.parametrize("count,calls", [(2, 1), (4, 2), (8, 2)])
def test_the_action_places_in_two_passes_when_there_are_spare_gpus(monkeypatch, count, calls):
    placements = Placements()
    monkeypatch.setattr(_placement, "place", placements)
    gpus = [gpu(i) for i in range(count)]
    plan = plan_of(run(Host(gpus=gpus), profile="multi-gpu", dual_gpu_mode="mixed",
                       strategy="balanced"))
    assert len(placements.calls) == calls
    assert all(options["strategy"] == "balanced" for _services, options in placements.calls)
    first = placements.calls[0][0]
    assert [s["name"] for s in first] == ["ollama", "vision", "ollama_research", "vllm"]
    if calls == 2:
        second = placements.calls[1][0]
        assert [(s["name"], s["gpu"]) for s in second] == [
            ("ollama", "0"), ("vision", "0"), ("ollama_research", "1"), ("vllm", "1")] + [
            ("ollama_spare_gpu%d" % i, "GPU-%04d" % i) for i in range(2, count)]
    expected = _plan.plan(CATALOG, _plan.place_in_two_passes(
        CATALOG, "multi-gpu", "mixed", EXTRA, gpus,
        lambda services: placements.real(gpus, services, strategy="balanced")),
        gpus, "multi-gpu", "mixed", EXTRA)
    assert plan == dict(expected, dual_gpu_mode_source="given", env_file=ENV_FILE)
    assert plan["idle_gpus"] == []


def test_an_unhealthy_gpu_is_warned_of_once_across_the_two_passes():
    gpus = [gpu(0), gpu(1), dict(gpu(2), healthy=False, errors=["Xid 79"]), gpu(3), gpu(4)]
    result = run(Host(gpus=gpus), dual_gpu_mode="ollama")
    plan = plan_of(result)
    unhealthy = [w for w in result["warnings"] if "Xid 79" in w]
    assert len(unhealthy) == 1 and plan["warnings"] == result["warnings"]
    assert plan["replicas"] == {"ollama_spare": ["ollama_spare_gpu3", "ollama_spare_gpu4"]}


def test_a_replica_port_above_65535_fails_naming_entry_gpu_and_port():
    catalog = copy.deepcopy(CATALOG)
    catalog["ollama_spare"]["ports"] = [{"host": 65535, "container": 11434}]
    result = run(Host(gpus=[gpu(i) for i in range(4)]), catalog=catalog, dual_gpu_mode="vllm")
    assert result["failed"] is True and "services_plan" not in result.get("ansible_facts", {})
    assert result["msg"] == (
        "services_catalog.ollama_spare.ports[0].host: its replica on GPU 3 (ollama_spare_gpu3) "
        "would publish host port 65536 (65535 + 1), above 65535; give a host port with room for "
        "every spare GPU; got: 65535")


def test_a_secret_environment_for_a_replica_entry_fails_before_the_host_is_asked():
    host = Host()
    result = run(host, secret_environment={"ollama_spare": {"TOKEN": "s3cret"}})
    assert result["failed"] is True and host.calls == []
    assert "ollama_spare has per_spare_gpu" in result["msg"] and "s3cret" not in result["msg"]


def test_two_gpus_plan_dual_gpu():
    plan = plan_of(run(Host(), dual_gpu_mode="ollama"))
    assert plan["profile"] == "dual-gpu" and plan["idle_gpus"] == []


def test_cpu_profile_places_nothing():
    plan = plan_of(run(Host(gpus=[]), profile="auto", dual_gpu_mode="ollama"))
    assert plan["profile"] == "cpu" and plan["strategy"] is None
    assert all(s["placement"] is None for s in plan["services"])


# ---- placement, as the gpu_placement module does it --------------------------------------------

def test_placement_options_are_converted_as_the_module_does():
    plan = plan_of(run(Host(), dual_gpu_mode="ollama", strategy="balanced",
                       visible_devices_by="index",
                       placement_options={"headroom_mib": "1024", "live_usage": "ignore"}))
    ollama = {s["name"]: s for s in plan["services"]}["ollama"]
    assert plan["strategy"] == "balanced"
    assert ollama["placement"]["environment"] == {"CUDA_VISIBLE_DEVICES": "0",
                                                  "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_warnings_of_facts_and_placement_are_the_task_warnings():
    host = Host(gpus=[gpu(0)], facts_warnings=["persistence mode is off"])
    result = run(host, profile="dual-gpu", dual_gpu_mode="vllm")
    plan = plan_of(result)
    assert result["warnings"][0] == "persistence mode is off"
    assert any("vllm" in w for w in result["warnings"][1:])
    assert plan["warnings"] == result["warnings"][1:]


# ---- bad input: a failed result naming the field and the value, never a traceback --------------

@pytest.mark.parametrize("host, args, message", [
    (Host(env="DUAL_GPU_MODE=hybrid\n"), {},
     ".env DUAL_GPU_MODE (/opt/gpufleet/.env) must be one of ollama, vllm, mixed; got: 'hybrid'"),
    (Host(env="DUAL_GPU_MODE=vllm2\n"), {},
     ".env DUAL_GPU_MODE (/opt/gpufleet/.env) must be one of ollama, vllm, mixed; got: 'vllm2'"),
    (Host(env="DUAL_GPU_MODE=mixed2 # was mixed\n"), {},
     ".env DUAL_GPU_MODE (/opt/gpufleet/.env) must be one of ollama, vllm, mixed; got: 'mixed2'"),
    (Host(), {"dual_gpu_mode": "both"},
     "services_dual_gpu_mode must be one of ollama, vllm, mixed; got: both"),
    (Host(slurp_failure="File is not readable: %s"), {},
     "services_env_file /opt/gpufleet/.env cannot be read for DUAL_GPU_MODE: File is not "
     "readable: /opt/gpufleet/.env"),
    (Host(), {"placement_options": {"headroom": 512, "managed_processes": []}},
     "services_placement_options has unknown key(s): headroom"),
    (Host(), {"placement_options": {"headroom_mib": -1}},
     "headroom_mib must be an integer >= 0; got: -1"),
    (Host(gpus=[gpu(0)]), {"profile": "dual-gpu", "dual_gpu_mode": "vllm",
                           "placement_options": {"pin_not_found": "fail"}},
     "services[2].gpu names a GPU this host does not have (GPUs: 0); got: 1"),
    (Host(), {"catalog": dict(CATALOG, vllm=dict(CATALOG["vllm"], ports=[70000]))},
     "services_catalog.vllm.ports[0] must be 1-65535; got: 70000"),
    (Host(), {"extra_profiles": {"finetune": "yes"}},
     "services_extra_profiles.finetune must be a boolean; got: 'yes'"),
    (Host(gpus=[{"index": "zero"}]), {"dual_gpu_mode": "ollama"},
     "gpus[0].index must be an integer >= 0; got: 'zero'"),
    (Host(facts_failure="Reading GPUs failed: nvml: GPU is lost"), {"dual_gpu_mode": "ollama"},
     "Reading GPUs failed: nvml: GPU is lost"),
])
def test_bad_input_fails_naming_field_and_value(host, args, message):
    result = run(host, **args)
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"] == message
    assert "services_plan" not in result.get("ansible_facts", {})


def test_placement_option_of_the_wrong_type_fails_as_in_the_module():
    host = Host()
    result = run(host, placement_options={"headroom_mib": "lots"})
    assert result["failed"] is True and host.calls == []
    assert result["msg"].startswith("services_placement_options: argument 'headroom_mib' is of "
                                    "type str and we were unable to convert to int")
    assert "lots" in result["msg"]


def test_bad_catalog_fails_before_the_host_is_asked():
    host = Host()
    result = run(host, catalog={"ollama": {"image": "x", "profiles": ["gpu"]}})
    assert result["failed"] and host.calls == []


def test_unknown_option_is_refused():
    with pytest.raises(AnsibleActionFail) as error:
        run(Host(), strategie="balanced")
    assert "strategie" in str(error.value)


def test_bad_profile_is_refused_by_the_argument_spec():
    with pytest.raises(AnsibleActionFail) as error:
        run(Host(), profile="quad-gpu")
    assert "profile" in str(error.value) and "quad-gpu" in str(error.value)


# ---- the recorded mode: INFERENCE_MODE, then DUAL_GPU_MODE -----------------------------------

MODES = {"chat": {"exclusive": True, "services": ["ollama"]},
         "ingestion": {"exclusive": True, "services": ["vllm", "docling"]}}


@pytest.mark.parametrize(("env", "args", "mode", "dual", "source"), [
    ("INFERENCE_MODE=ingestion\nDUAL_GPU_MODE=vllm\n", {}, "ingestion", "vllm", "env"),
    ("INFERENCE_MODE=chat\n", {}, "chat", "ollama", "env"),
    ("DUAL_GPU_MODE=mixed\n", {}, "mixed", "mixed", "env"),
    ("INFERENCE_MODE=ingestion\n", {"mode": "chat"}, "chat", "ollama", "given"),
    ("INFERENCE_MODE=ingestion\n", {"dual_gpu_mode": "mixed"}, "mixed", "mixed", "given"),
    ("INFERENCE_MODE=ingestion\nDUAL_GPU_MODE=vllm\n", {"mode": "chat"}, "chat", "vllm",
     "given"),
])
def test_the_recorded_mode_is_converged_when_none_is_given(env, args, mode, dual, source):
    plan = plan_of(run(Host(env=env), modes=MODES, **args))
    assert (plan["mode"]["name"], plan["dual_gpu_mode"], plan["dual_gpu_mode_source"]) == \
        (mode, dual, source)


def test_a_recorded_mode_that_is_no_mode_fails_naming_the_file():
    result = run(Host(env="INFERENCE_MODE=chatty\n"), modes=MODES)
    assert result["failed"] and result["msg"] == (
        "INFERENCE_MODE in /opt/gpufleet/.env must be one of ollama, vllm, mixed, chat, "
        "ingestion; got: 'chatty'")


def test_gpu_facts_options_reach_the_gpu_facts_run():
    host = Host()
    plan_of(run(host, gpu_facts_options={"meminfo_path": "/run/lab/meminfo"}))
    assert ("gpufleet.inference.gpu_facts", {"meminfo_path": "/run/lab/meminfo"}) in host.calls
