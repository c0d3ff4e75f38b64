# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service_verify module run in-process: its argspec, the commands it runs (argument lists
under ``timeout``, LANG=C), its HTTP calls, and what it returns. The commands, HTTP, /proc and
the GPU readers are scripted; the verdicts themselves are test__verify.py's."""

from __future__ import annotations

import io
import json
from unittest import mock
from urllib.error import HTTPError

import pytest
from ansible.module_utils import basic

from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_facts
from ansible_collections.gpufleet.inference.plugins.modules import service_verify
from tests.support.modules import patch_module_args

GPU1 = "GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10"
VLLM_ID = "a" * 64
OLLAMA_ID = "b" * 64


class Exit(Exception):
    pass


class Fail(Exception):
    pass


def inspect(cid, service, device_ids):
    return {"Id": cid, "Name": "/gpufleet-%s-1" % service, "RestartCount": 0,
            "State": {"Status": "running", "Running": True, "ExitCode": 0},
            "Config": {"Labels": {"com.docker.compose.project": "gpufleet",
                                  "com.docker.compose.service": service}},
            "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": device_ids}]}}


class Answer(io.BytesIO):
    def getcode(self):
        return 200


class Scripted:
    """Commands, HTTP, /proc and GPUs of a host running vllm and ollama on GPU 1."""

    def __init__(self, generate=(200, b'{"done": true}')):
        self.commands = []
        self.urls = []
        self.generate = generate

    def run_command(self, argv, environ_update=None):
        assert argv[:3] == ["/usr/bin/timeout", "--kill-after=2", "30"], argv
        assert environ_update == {"LANG": "C", "LC_ALL": "C"}
        command = [a.rsplit("/", 1)[-1] if i == 0 else a for i, a in enumerate(argv[3:])]
        self.commands.append(command)
        if command[:2] == ["docker", "ps"]:
            return 0, "%s\n%s\n" % (VLLM_ID, OLLAMA_ID), ""
        if command[:2] == ["docker", "inspect"]:
            return 0, json.dumps([inspect(VLLM_ID, "vllm", [GPU1]),
                                  inspect(OLLAMA_ID, "ollama", [GPU1])]), ""
        raise AssertionError("unexpected command %r" % command)

    def open_url(self, url, method="GET", data=None, headers=None, timeout=None,
                 validate_certs=True):
        self.urls.append((method, url, data, timeout))
        if url.endswith("/api/generate"):
            status, body = self.generate
            if status != 200:
                raise HTTPError(url, status, "Not Found", {}, io.BytesIO(body))
            return Answer(body)
        if url.endswith("/api/ps"):
            return Answer(json.dumps({"models": [{"name": "llama3.2:3b", "size": 10,
                                                  "size_vram": 10}]}).encode())
        return Answer(b"")

    @staticmethod
    def read(path):
        return {"/proc/11/cgroup": "0::/system.slice/docker-%s.scope\n" % VLLM_ID,
                "/proc/22/cgroup": "0::/system.slice/docker-%s.scope\n" % OLLAMA_ID}[path]

    @staticmethod
    def read_gpus(module, timeout=60, topology=True):
        assert timeout == 60
        return {"answered": ["nvml"], "tried": [], "gpus": [{
            "index": 1, "uuid": GPU1, "processes": [
                {"pid": 11, "name": "VLLM::EngineCor", "used_memory_mib": 20000},
                {"pid": 22, "name": "ollama", "used_memory_mib": 3000}]}]}


def run(args, host, check_mode=False):
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True

    def exit_json(self, **result):
        raise Exit(result)

    def fail_json(self, **result):
        raise Fail(result)

    def bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/bin/%s" % name

    with patch_module_args(args), \
            mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json), \
            mock.patch.object(basic.AnsibleModule, "get_bin_path", bin_path), \
            mock.patch.object(basic.AnsibleModule, "run_command", host.run_command), \
            mock.patch.object(service_verify._http, "open_url", host.open_url), \
            mock.patch.object(service_verify.Readers, "read", staticmethod(host.read)), \
            mock.patch.object(service_verify._gpu_readers, "read_gpus", host.read_gpus):
        try:
            service_verify.main()
        except Exit as exc:
            return exc.args[0]
        except Fail as exc:
            return dict(exc.args[0], failed=True)
    raise AssertionError("the module neither exited nor failed")


SERVICES = [
    {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
     "device_id": GPU1, "gpu_index": 1, "project": "gpufleet", "service": "vllm"},
    {"name": "ollama", "url": "http://127.0.0.1:11434/api/version", "engine": "ollama",
     "model": "llama3.2:3b", "device_id": GPU1, "gpu_index": 1, "project": "gpufleet",
     "service": "ollama"},
]


@pytest.mark.parametrize("check_mode", [False, True])
def test_compose_services_verified_through_the_module(check_mode):
    host = Scripted()
    result = run({"runtime": "compose", "services": SERVICES}, host, check_mode=check_mode)
    assert "failed" not in result, result
    assert result["changed"] is False and result["crashed"] is None
    assert [(s["name"], s["healthy"], s["device_ok"], s["gpu_used"], s["model_in_vram"],
             s["gpu_processes"]) for s in result["services"]] == [
        ("vllm", True, True, True, None,
         [{"pid": 11, "name": "VLLM::EngineCor", "used_memory_mib": 20000}]),
        ("ollama", True, True, True, True,
         [{"pid": 22, "name": "ollama", "used_memory_mib": 3000}])]
    assert host.commands[0] == ["docker", "ps", "--all", "--quiet", "--no-trunc", "--filter",
                                "label=com.docker.compose.project=gpufleet"]
    assert host.commands[1] == ["docker", "inspect", VLLM_ID, OLLAMA_ID]
    assert ("POST", "http://127.0.0.1:11434/api/generate", '{"model": "llama3.2:3b"}',
            180.0) in host.urls
    assert ("GET", "http://127.0.0.1:8000/health", None, 5.0) in host.urls


def test_ollama_404_through_the_module():
    body = b'{"error":"model \\"llama3.2:3b\\" not found, try pulling it first"}'
    result = run({"runtime": "compose", "services": SERVICES}, Scripted(generate=(404, body)))
    assert result["failed"] and result["msg"] == (
        'ollama: Ollama cannot load model llama3.2:3b: HTTP 404 model "llama3.2:3b" not found, '
        "try pulling it first (POST http://127.0.0.1:11434/api/generate)")
    assert [s["gpu_used"] for s in result["services"]] == [True, None]


@pytest.mark.parametrize(("args", "text"), [
    pytest.param({"runtime": "compose", "services": [dict(SERVICES[0], project=None)]},
                 "service_verify: services[0].project is required with runtime compose; "
                 "got: None", id="compose-without-project"),
    pytest.param({"runtime": "compose", "services": SERVICES, "interval": 0},
                 "service_verify: interval must be more than 0 seconds and at most 86400; "
                 "got: 0.0", id="interval"),
    pytest.param({"runtime": "k8s", "services": SERVICES}, "runtime", id="runtime-choice"),
    pytest.param({"runtime": "compose", "services": [dict(SERVICES[0], engine="tgi")]},
                 "engine", id="engine-choice"),
])
def test_bad_input_fails_before_any_command(args, text):
    host = Scripted()
    result = run(args, host)
    assert result["failed"] and text in result["msg"], result
    assert host.commands == [] and host.urls == []


def test_gpu_backend_failure_is_named():
    host = Scripted()

    def broken(module, timeout=60, topology=True):
        raise _gpu_facts.BackendError("nvidia-smi", "did not answer within 60 seconds")
    host.read_gpus = broken
    result = run({"runtime": "compose", "services": SERVICES[:1]}, host)
    assert result["msg"] == ("reading the GPUs failed: nvidia-smi: did not answer within 60 "
                             "seconds")


class Strangers(Scripted):
    """The same host, but pid 22 on GPU 1 is a process of another container."""

    @staticmethod
    def read(path):
        if path == "/proc/22/cgroup":
            return "0::/system.slice/docker-%s.scope\n" % ("c" * 64)
        return Scripted.read(path)


# The failing mode loads the model to check Ollama's GPU; the report mode reads /api/ps.
@pytest.mark.parametrize(("fail_on_problem", "load_models"), [(False, False), (True, True)],
                         ids=["report-mode", "failing-mode"])
def test_report_mode_returns_the_problems_without_failing(fail_on_problem, load_models):
    host = Strangers()
    args = {"runtime": "compose", "services": SERVICES, "load_models": load_models,
            "fail_on_problem": fail_on_problem, "timeout": 0.05, "interval": 0.05}
    failed = fail_on_problem
    with mock.patch.object(service_verify._verify, "GPU_SETTLE_S", 0.05):  # no 15 s sleep
        result = run(args, host, check_mode=True)
    assert bool(result.get("failed")) is failed
    assert result["changed"] is False
    problem = ("GPU detected is not GPU used: no process of ollama (container %s) holds memory "
               "on GPU 1 (%s); processes there: pid 11 VLLM::EngineCor 20000 MiB (container %s "
               "(vllm)); pid 22 ollama 3000 MiB (container %s)"
               % (OLLAMA_ID[:12], GPU1, VLLM_ID[:12], "c" * 12))
    assert result["problems"] == [problem]
    assert [(s["name"], s["healthy"], s["device_ok"], s["gpu_used"], s["model_in_vram"],
             s["problems"]) for s in result["services"]] == [
        ("vllm", True, True, True, None, []), ("ollama", True, True, False, True, [problem])]
    assert [u[:2] for u in host.urls if "11434" in u[1]] == [
        ("GET", "http://127.0.0.1:11434/api/version"),
        *([("POST", "http://127.0.0.1:11434/api/generate")] if load_models else []),
        ("GET", "http://127.0.0.1:11434/api/ps")]


def test_report_mode_bad_input_still_fails():
    result = run({"runtime": "compose", "services": [dict(SERVICES[0], project=None)],
                  "fail_on_problem": False}, Scripted())
    assert result["failed"] and result["msg"] == (
        "service_verify: services[0].project is required with runtime compose; got: None")


ENVIRON_SECRET = "hf_plantedModuleSecret456"


class ScriptedUnit(Scripted):
    """A vLLM unit whose main process (pid 42) has a token in its environment."""

    def __init__(self, cuda):
        super().__init__()
        self.cuda = cuda

    def run_command(self, argv, environ_update=None):
        command = [a.rsplit("/", 1)[-1] if i == 0 else a for i, a in enumerate(argv[3:])]
        self.commands.append(command)
        if command[:2] == ["systemctl", "show"]:
            return 0, ("LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n"
                       "ExecMainStatus=0\nNRestarts=0\nMainPID=42\n"), ""
        if command[0] == "journalctl":
            return 0, "HF_TOKEN=%s\n" % ENVIRON_SECRET, ""
        raise AssertionError("unexpected command %r" % command)

    def read(self, path):
        assert path == "/proc/42/environ", path
        return "\0".join(["HF_TOKEN=%s" % ENVIRON_SECRET, "CUDA_VISIBLE_DEVICES=%s" % self.cuda,
                          "VLLM_API_KEY=%s" % ENVIRON_SECRET]) + "\0"


@pytest.mark.parametrize("cuda, failed", [(GPU1, False), ("GPU-other", True)])
def test_systemd_result_holds_no_other_environment_variable(cuda, failed):
    host = ScriptedUnit(cuda)
    result = run({"runtime": "systemd", "gpu_check": False, "services": [
        {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
         "unit": "vllm@vllm.service", "cuda_visible_devices": GPU1}]}, host)
    assert bool(result.get("failed")) is failed, result
    assert result["services"][0]["device_ok"] is not failed
    assert ENVIRON_SECRET not in repr(result) and "HF_TOKEN" not in repr(result)
