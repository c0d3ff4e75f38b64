# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_verify's logic on a scripted host: clock, endpoints, containers, units, /proc, GPUs.

The health-wait cases are service_wait's, ported (that module is gone): same timings, same
messages.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _verify

GPU0 = "GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60"
GPU1 = "GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10"
CRASH_LOG = ("INFO loading\nERROR EngineCore failed to start.\n"
             "RuntimeError: tensor parallel size 2 > 1 visible GPUs\n"
             "RuntimeError: Engine core initialization failed. See root cause above.\n")


RESTARTED_AT = "2026-12-06T16:30:17.129688184Z"


def cid(name):
    return hashlib.sha256(name.encode()).hexdigest()


def container(service, status="running", exit_code=0, restarts=0, device_ids=None,
              project="gpufleet", oneoff=False):
    return {
        "Id": cid(service), "Name": "/%s-%s-1" % (project, service), "RestartCount": restarts,
        # Docker says Running of a container waiting to restart too
        "State": {"Status": status, "Running": status in ("running", "restarting"),
                  "ExitCode": exit_code,
                  "StartedAt": RESTARTED_AT},
        "Config": {"Labels": {_verify.COMPOSE_PROJECT_LABEL: project,
                              _verify.COMPOSE_SERVICE_LABEL: service,
                              _verify.COMPOSE_ONEOFF_LABEL: "True" if oneoff else "False"}},
        "HostConfig": {"DeviceRequests": None if device_ids is None else [
            {"Driver": "nvidia", "Count": 0, "DeviceIDs": device_ids,
             "Capabilities": [["gpu"]], "Options": {}}]},
    }


def unit_show(active="active", sub="running", result="success", status=0, restarts=0, pid=0,
              load="loaded"):
    return ("LoadState=%s\nActiveState=%s\nSubState=%s\nResult=%s\nExecMainStatus=%d\n"
            "NRestarts=%d\nMainPID=%d\n" % (load, active, sub, result, status, restarts, pid))


def gpu(uuid, index, *processes):
    return {"index": index, "uuid": uuid, "processes": [
        {"pid": pid, "name": name, "used_memory_mib": mib} for pid, name, mib in processes]}


def v2(path):
    return "0::%s\n" % path


class Host:
    """A clock that advances by each sleep; endpoints answer per round (per sleep), containers
    and units per read (the first look, then one read a round); the last answer repeats."""

    def __init__(self, answers=None, containers=None, units=None, files=None, gpus=None,
                 posts=None):
        self.now = 100.0
        self.round = 0
        self.slept = []
        self.answers = answers or {}  # {url: [status or (status, text) per round]}
        self.containers = containers or [[]]  # [[inspect dict, ...] per read]
        self.units = units or {}  # {unit: [show text per read]}
        self.files = files or {}  # {path: text}
        self.gpu_reads = gpus or [[]]  # [[gpu, ...] per read]
        self.posts = posts or {}  # {url: (status, text)}
        self.calls = []
        self.gpu_count = 0
        self.reads = {}
        self.current = []

    @staticmethod
    def _at(script, index):
        return script[min(index, len(script) - 1)]

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        self.round += 1

    def http(self, method, url, body, timeout):
        self.calls.append((method, url, body, timeout))
        if method == "POST":
            return self.posts[url]
        answer = self._at(self.answers[url], self.round)
        if isinstance(answer, tuple):
            return answer
        return answer, "HTTP %s" % answer if answer else "connection refused"

    def _next(self, key, script):
        count = self.reads[key] = self.reads.get(key, -1) + 1
        return self._at(script, count)

    def ps(self, project):
        self.current = self._next("ps " + project, self.containers)
        return "".join(c["Id"] + "\n" for c in self.current
                       if c["Config"]["Labels"][_verify.COMPOSE_PROJECT_LABEL] == project)

    def inspect(self, ids):
        by_id = {c["Id"]: c for c in self.current}
        return json.dumps([by_id[i] for i in ids])

    def logs(self, container_id, since=None, until=None):
        """Docker's log of a container whose current run started at RESTARTED_AT: a run
        that started after a crash adds its first line; up to RESTARTED_AT is the log of
        the runs before the current one."""
        assert container_id == cid("vllm") and since in (None, RESTARTED_AT)
        status = next(c["State"]["Status"] for c in self.current if c["Id"] == container_id)
        if status == "running":
            return CRASH_LOG if until == RESTARTED_AT else CRASH_LOG + "INFO second run loading\n"
        return "" if until == RESTARTED_AT else CRASH_LOG

    def show(self, unit):
        return self._next("show " + unit, self.units[unit])

    @staticmethod
    def journal(unit):
        assert unit == "vllm@vllm.service"
        return "vllm@vllm.service: Deactivated successfully.\nStarted vllm\n" + CRASH_LOG

    def read(self, path):
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def gpus(self):
        self.gpu_count += 1
        return self._at(self.gpu_reads, self.gpu_count - 1)


VLLM = {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
        "project": "gpufleet", "service": "vllm"}
DOCLING = {"name": "docling", "url": "http://127.0.0.1:5001/health", "engine": "other",
           "project": "gpufleet", "service": "docling"}
OLLAMA = {"name": "ollama", "url": "http://127.0.0.1:11434/api/version", "engine": "ollama",
          "model": "llama3.2:3b", "project": "gpufleet", "service": "ollama"}
VLLM_UNIT = {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
             "unit": "vllm@vllm.service", "cuda_visible_devices": GPU1}
RUNNING = [container("vllm"), container("docling")]


def run(host, services, runtime="compose", timeout=600.0, interval=2.0, **options):
    return _verify.verify(runtime, [dict(s) for s in services], host, host.clock, host.sleep,
                          timeout_s=timeout, interval_s=interval, **options)


def entry(result, name):
    return next(s for s in result["services"] if s["name"] == name)


# ---- health (service_wait's cases) --------------------------------------------------------

def test_healthy_at_once():
    host = Host({VLLM["url"]: [200], DOCLING["url"]: [200]}, [RUNNING])
    result = run(host, [VLLM, DOCLING])
    assert result["ok"] and result["crashed"] is None and result["waited_s"] == 0
    assert host.slept == []
    assert entry(result, "vllm") == {
        "name": "vllm", "healthy": True, "waited_s": 0.0, "device_ok": True,
        "gpu_processes": [], "gpu_used": None, "model_in_vram": None, "problems": []}


def test_healthy_after_some_rounds_each_timed():
    host = Host({VLLM["url"]: [None, None, 503, 200], DOCLING["url"]: [None, 200]}, [RUNNING])
    result = run(host, [VLLM, DOCLING])
    assert result["ok"], result
    assert entry(result, "docling")["waited_s"] == 2.0
    assert entry(result, "vllm")["waited_s"] == 6.0
    assert result["waited_s"] == 6.0 and host.slept == [2.0, 2.0, 2.0]


def test_an_exited_container_ends_the_wait_at_once_with_its_logs():
    exited = container("vllm", status="exited", exit_code=1)
    host = Host({VLLM["url"]: [None], DOCLING["url"]: [200]},
                [RUNNING, RUNNING, [exited, container("docling")]])
    result = run(host, [VLLM, DOCLING])
    assert not result["ok"] and result["crashed"] == "vllm"
    assert result["waited_s"] == 2.0  # the second round, not the 600 s timeout
    assert result["msg"] == (
        "vllm: its container exited with code 1 after 2.0 s, before "
        "http://127.0.0.1:8000/health answered; last log lines: INFO loading | "
        "ERROR EngineCore failed to start. | RuntimeError: tensor parallel size 2 > 1 visible "
        "GPUs | RuntimeError: Engine core initialization failed. See root cause above.")
    assert entry(result, "docling")["healthy"] is True
    assert entry(result, "vllm")["device_ok"] is None  # placement not reached


@pytest.mark.parametrize(("later", "text"), [
    pytest.param([container("vllm", status="restarting", exit_code=1)],
                 "vllm: its container crashed and is being restarted by its restart policy "
                 "(exit code 1) after 0.0 s", id="restarting"),
    pytest.param([container("vllm", restarts=1, exit_code=1)],
                 "vllm: its container crashed and was restarted by its restart policy "
                 "(restart count 0 -> 1, exit code 1) after 0.0 s", id="restart-count-grew"),
    pytest.param([container("vllm", status="dead", exit_code=None)],
                 "vllm: its container is dead after 0.0 s", id="dead"),
    pytest.param([], "vllm: its container is gone (removed) after 0.0 s", id="removed"),
])
def test_a_restart_or_a_missing_container_is_a_crash_too(later, text):
    # the first look, then round 0's read: the crash ends the wait before any sleep
    host = Host({VLLM["url"]: [None]}, [[container("vllm")], later])
    result = run(host, [VLLM])
    assert result["crashed"] == "vllm"
    assert result["msg"].startswith(text), result["msg"]
    assert host.slept == []


def test_a_service_without_container_fails_at_once():
    host = Host({VLLM["url"]: [None]}, [[]])
    result = run(host, [VLLM])
    assert result["msg"] == (
        "vllm: it has no container (compose service vllm of project gpufleet) after 0.0 s, "
        "before http://127.0.0.1:8000/health answered; last log lines: (none)")


def test_one_off_containers_and_other_projects_are_not_the_service():
    others = [container("vllm", oneoff=True), container("vllm", project="other")]
    others[1]["Id"] = cid("other-vllm")
    host = Host({VLLM["url"]: [200]}, [others])
    result = run(host, [VLLM])
    assert result["crashed"] == "vllm" and "it has no container" in result["msg"]


def test_a_crash_after_it_answered_is_still_a_crash():
    host = Host({VLLM["url"]: [200], DOCLING["url"]: [None, None]},
                [RUNNING, RUNNING, [container("vllm", restarts=2, exit_code=137),
                                    container("docling")]])
    result = run(host, [VLLM, DOCLING])
    assert result["msg"].startswith(
        "vllm: its container crashed and was restarted by its restart policy (restart count "
        "0 -> 2, exit code 137) after 2.0 s; last log lines: INFO loading")


@pytest.mark.parametrize(("later", "tail"), [
    pytest.param(container("vllm", restarts=1, exit_code=1), CRASH_LOG, id="runs-again"),
    pytest.param(container("vllm", status="exited", exit_code=1), CRASH_LOG, id="exited"),
    pytest.param(container("vllm", status="restarting", exit_code=1), CRASH_LOG,
                 id="waits-to-restart"),
])
def test_the_log_lines_are_those_of_the_run_that_crashed(later, tail):
    host = Host({VLLM["url"]: [None]}, [[container("vllm")], [later]])
    result = run(host, [VLLM])
    want = " | ".join(line for line in tail.splitlines() if line)
    assert result["msg"].endswith("last log lines: " + want), result["msg"]


def test_timeout_names_the_late_services_and_their_last_answer():
    host = Host({VLLM["url"]: [503], DOCLING["url"]: [200]}, [RUNNING])
    result = run(host, [VLLM, DOCLING], timeout=5.0)
    assert not result["ok"] and result["crashed"] is None
    assert result["msg"] == "not healthy within 5 s: vllm (http://127.0.0.1:8000/health: HTTP 503)"
    assert host.slept == [2.0, 2.0, 1.0]  # never sleeps past the timeout
    assert entry(result, "vllm")["problems"] == [
        "vllm: not healthy within 5 s (http://127.0.0.1:8000/health: HTTP 503)"]
    assert entry(result, "docling")["problems"] == []
    assert result["problems"] == entry(result, "vllm")["problems"]


def test_a_service_without_url_is_watched_not_waited_for():
    quiet = dict(DOCLING, url=None)
    host = Host({VLLM["url"]: [None, None, 200]}, [RUNNING])
    result = run(host, [VLLM, quiet])
    assert result["ok"] and result["waited_s"] == 4.0
    assert entry(result, "docling")["healthy"] is None
    assert entry(result, "docling")["device_ok"] is True
    host = Host({}, [[container("vllm"), container("docling", status="exited", exit_code=2)]])
    host.logs = lambda container_id: "Traceback\nOSError: out of memory\n"
    result = run(host, [quiet])
    assert result["msg"] == ("docling: its container exited with code 2 after 0.0 s; "
                             "last log lines: Traceback | OSError: out of memory")


# ---- health under systemd -----------------------------------------------------------------

@pytest.mark.parametrize(("later", "text"), [
    pytest.param(unit_show("failed", "failed", "exit-code", 1),
                 "vllm: its unit vllm@vllm.service failed (result exit-code, exit status 1)",
                 id="failed"),
    pytest.param(unit_show("inactive", "dead", "success", 0),
                 "vllm: its unit vllm@vllm.service is inactive (result success, exit status 0)",
                 id="inactive"),
    pytest.param(unit_show("activating", "auto-restart", "exit-code", 1),
                 "vllm: its unit vllm@vllm.service crashed and waits to be restarted (result "
                 "exit-code, exit status 1)", id="auto-restart"),
    pytest.param(unit_show(restarts=3, pid=99, result="exit-code", status=1),
                 "vllm: its unit vllm@vllm.service crashed and was restarted (NRestarts 0 -> 3, "
                 "result exit-code, exit status 1)", id="restarts-grew"),
    pytest.param(unit_show(restarts=1, pid=99),
                 "vllm: its unit vllm@vllm.service crashed and was restarted (NRestarts 0 -> 1)",
                 id="restarts-grew-new-process-fine"),
    pytest.param(unit_show("inactive", "dead", load="not-found"),
                 "vllm: its unit vllm@vllm.service is not loaded (not-found)", id="not-found"),
])
def test_a_systemd_crash_ends_the_wait_at_once_with_the_journal(later, text):
    host = Host({VLLM_UNIT["url"]: [None]},
                units={"vllm@vllm.service": [unit_show(pid=42), later]})
    result = run(host, [VLLM_UNIT], runtime="systemd")
    assert result["crashed"] == "vllm" and host.slept == []
    assert result["msg"] == (
        text + " after 0.0 s, before http://127.0.0.1:8000/health answered; last log lines: "
        "Started vllm | INFO loading | ERROR EngineCore failed to start. | RuntimeError: tensor "
        "parallel size 2 > 1 visible GPUs | RuntimeError: Engine core initialization failed. "
        "See root cause above.")


def test_systemd_waits_while_the_unit_starts():
    host = Host({VLLM_UNIT["url"]: [None, None, 200]},
                units={"vllm@vllm.service": [unit_show("activating", "start", pid=42),
                                             unit_show("activating", "start", pid=42),
                                             unit_show(pid=42)]},
                files={"/proc/42/environ": "HOME=/var/lib/x\0CUDA_VISIBLE_DEVICES=%s\0" % GPU1})
    result = run(host, [VLLM_UNIT], runtime="systemd", gpu_check=False)
    assert result["ok"], result["msg"]
    assert entry(result, "vllm")["device_ok"] is True and result["waited_s"] == 4.0


# ---- placement ----------------------------------------------------------------------------

@pytest.mark.parametrize(("device_ids", "device_id", "ok"), [
    pytest.param([GPU1], GPU1, True, id="the-placed-gpu"),
    pytest.param(None, None, True, id="no-gpu-none-asked"),
    pytest.param(None, "", True, id="empty-is-no-gpu"),
    pytest.param([GPU0], GPU1, False, id="another-gpu"),
    pytest.param([GPU0, GPU1], GPU1, False, id="two-gpus"),
    pytest.param([GPU1], None, False, id="a-gpu-where-none-was-placed"),
    pytest.param(None, GPU1, False, id="no-gpu-where-one-was-placed"),
])
def test_device_requests_must_be_the_placement(device_ids, device_id, ok):
    host = Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=device_ids)]])
    result = run(host, [dict(VLLM, device_id=device_id)], gpu_check=False)
    assert result["ok"] is ok and entry(result, "vllm")["device_ok"] is ok
    if not ok:
        requests = container("vllm", device_ids=device_ids)["HostConfig"]["DeviceRequests"]
        assert result["msg"] == (
            "vllm: container gpufleet-vllm-1 (running: True) has device requests %s; the "
            "placement says %s" % (requests, device_id or "no GPU"))


def test_device_request_mismatch_message():
    host = Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=[GPU0])]])
    result = run(host, [dict(VLLM, device_id=GPU1, gpu_index=1)])
    assert result["msg"] == (
        "vllm: container gpufleet-vllm-1 (running: True) has device requests [{'Driver': "
        "'nvidia', 'Count': 0, 'DeviceIDs': ['%s'], 'Capabilities': [['gpu']], 'Options': "
        "{}}]; the placement says %s" % (GPU0, GPU1))


@pytest.mark.parametrize(("environ", "text"), [
    pytest.param("CUDA_VISIBLE_DEVICES=%s\0" % GPU0,
                 "vllm: unit vllm@vllm.service (active) runs with CUDA_VISIBLE_DEVICES=%s; the "
                 "placement says CUDA_VISIBLE_DEVICES=%s" % (GPU0, GPU1), id="another-gpu"),
    pytest.param("HOME=/root\0",
                 "vllm: unit vllm@vllm.service (active) runs with no CUDA_VISIBLE_DEVICES; the "
                 "placement says CUDA_VISIBLE_DEVICES=%s" % GPU1, id="unset"),
    pytest.param(None,
                 "vllm: unit vllm@vllm.service (active): /proc/42/environ cannot be read ([Errno "
                 "2] No such file or directory: '/proc/42/environ'); the placement says "
                 "CUDA_VISIBLE_DEVICES=%s" % GPU1, id="unreadable"),
])
def test_cuda_visible_devices_must_be_the_placement(environ, text):
    files = {} if environ is None else {"/proc/42/environ": environ}
    host = Host({VLLM_UNIT["url"]: [200]}, units={"vllm@vllm.service": [unit_show(pid=42)]},
                files=files)
    result = run(host, [VLLM_UNIT], runtime="systemd")
    assert result["msg"] == text
    assert entry(result, "vllm")["device_ok"] is False


ENVIRON_SECRET = "hf_plantedEnvironSecret123"


@pytest.mark.parametrize("cuda, ok", [
    pytest.param(GPU1, True, id="placed"),
    pytest.param(GPU0, False, id="another-gpu"),
    pytest.param(None, False, id="unset"),
])
@pytest.mark.parametrize("fail_on_problem", [True, False])
def test_the_main_process_environment_is_never_returned(cuda, ok, fail_on_problem):
    """Only CUDA_VISIBLE_DEVICES is read from /proc/<pid>/environ: a token beside it is in no
    part of the result, passed or failed, in the failing and the report mode."""
    environ = ["HOME=/var/lib/gpufleet/vllm", "HF_TOKEN=%s" % ENVIRON_SECRET,
               "VLLM_API_KEY=%s" % ENVIRON_SECRET, "NOT_CUDA_VISIBLE_DEVICES=%s" % ENVIRON_SECRET]
    if cuda:
        environ.insert(2, "CUDA_VISIBLE_DEVICES=%s" % cuda)
    host = Host({VLLM_UNIT["url"]: [200]}, units={"vllm@vllm.service": [unit_show(pid=42)]},
                files={"/proc/42/environ": "\0".join(environ) + "\0"})
    result = run(host, [VLLM_UNIT], runtime="systemd", gpu_check=False,
                 fail_on_problem=fail_on_problem)
    assert result["ok"] is ok and entry(result, "vllm")["device_ok"] is ok
    assert ENVIRON_SECRET not in repr(result) and "HF_TOKEN" not in repr(result)


# ---- Ollama -------------------------------------------------------------------------------

def ps_answer(size, size_vram, name="llama3.2:3b"):
    return 200, json.dumps({"models": [{"name": name, "model": name, "size": size,
                                        "size_vram": size_vram}]})


def ollama_host(ps, device_ids=None, post=(200, '{"done":true,"done_reason":"load"}'),
                gpus=None, files=None):
    return Host({OLLAMA["url"]: [200], "http://127.0.0.1:11434/api/ps": [ps]},
                [[container("ollama", device_ids=device_ids)]],
                posts={"http://127.0.0.1:11434/api/generate": post}, gpus=gpus, files=files)


def test_ollama_404_says_pull_it_first():
    post = (404, '{"error":"model \\"llama3.2:3b\\" not found, try pulling it first"}')
    host = ollama_host(ps_answer(1, 1), post=post)
    result = run(host, [OLLAMA])
    assert result["msg"] == (
        'ollama: Ollama cannot load model llama3.2:3b: HTTP 404 model "llama3.2:3b" not found, '
        "try pulling it first (POST http://127.0.0.1:11434/api/generate)")
    assert ("POST", "http://127.0.0.1:11434/api/generate", {"model": "llama3.2:3b"},
            600.0) in host.calls


def test_ollama_partly_on_cpu_is_not_the_gpu_used():
    host = ollama_host(ps_answer(3000, 1000), device_ids=[GPU0])
    result = run(host, [dict(OLLAMA, device_id=GPU0, gpu_index=0)])
    assert result["msg"] == (
        "GPU detected is not GPU used: ollama (GPU 0) holds 1000 of 3000 bytes of llama3.2:3b "
        "in VRAM (/api/ps: [{'name': 'llama3.2:3b', 'model': 'llama3.2:3b', 'size': 3000, "
        "'size_vram': 1000}])")
    assert entry(result, "ollama")["model_in_vram"] is False
    assert host.gpu_count == 0  # no GPU read for a service that failed already


def test_ollama_model_missing_from_ps():
    host = ollama_host((200, '{"models": []}'), device_ids=[GPU0])
    result = run(host, [dict(OLLAMA, device_id=GPU0)])
    assert result["msg"] == (
        "GPU detected is not GPU used: ollama (%s) holds 0 of ? bytes of llama3.2:3b in VRAM "
        "(/api/ps: [])" % GPU0)


def test_ollama_on_the_cpu_as_placed_passes():
    host = ollama_host(ps_answer(3000, 0))
    result = run(host, [OLLAMA])
    assert result["ok"], result["msg"]
    assert entry(result, "ollama")["model_in_vram"] is False


def test_ollama_in_vram_held_by_its_runner_passes():
    runner = 5151
    host = ollama_host(ps_answer(3000, 3000, name="llama3.2:3b"), device_ids=[GPU0],
                       gpus=[[gpu(GPU0, 0, (runner, "ollama", 2900))]],
                       files={"/proc/5151/cgroup": v2("/system.slice/docker-%s.scope"
                                                      % cid("ollama"))})
    result = run(host, [dict(OLLAMA, device_id=GPU0, gpu_index=0)])
    assert result["ok"], result["msg"]
    assert entry(result, "ollama") == {
        "name": "ollama", "healthy": True, "waited_s": 0.0, "device_ok": True,
        "gpu_processes": [{"pid": runner, "name": "ollama", "used_memory_mib": 2900}],
        "gpu_used": True, "model_in_vram": True, "problems": []}


def test_ollama_without_load_models_is_not_asked_nor_gpu_checked():
    host = ollama_host(ps_answer(3000, 0), device_ids=[GPU0])
    result = run(host, [dict(OLLAMA, device_id=GPU0)], load_models=False)
    assert result["ok"] and host.calls == [("GET", OLLAMA["url"], None, 5.0)]
    assert host.gpu_count == 0


# ---- the GPU really used ------------------------------------------------------------------

VLLM_GPU = dict(VLLM, device_id=GPU1, gpu_index=1)


def gpu_host(processes, files, reads=None):
    return Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=[GPU1])]],
                files=files, gpus=reads or [[gpu(GPU0, 0), gpu(GPU1, 1, *processes)]])


def test_a_vllm_engine_core_of_the_container_passes_and_another_containers_does_not_count():
    other = cid("vllm-of-another-project")
    files = {"/proc/700/cgroup": v2("/system.slice/docker-%s.scope" % other),
             "/proc/801/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))}
    host = gpu_host([(700, "VLLM::EngineCor", 20000), (801, "VLLM::EngineCor", 18000)], files)
    result = run(host, [VLLM_GPU])
    assert result["ok"], result["msg"]
    assert entry(result, "vllm")["gpu_processes"] == [
        {"pid": 801, "name": "VLLM::EngineCor", "used_memory_mib": 18000}]


def test_only_another_containers_process_on_the_gpu_fails_listing_owners():
    other = cid("vllm-of-another-project")
    files = {"/proc/700/cgroup": v2("/system.slice/docker-%s.scope" % other),
             "/proc/900/cgroup": "12:memory:/user.slice\n0::/user.slice/user-0.slice\n"}
    host = gpu_host([(700, "VLLM::EngineCor", 20000), (900, "python3", 10), (901, None, None)],
                    files)
    result = run(host, [VLLM_GPU])
    assert result["msg"] == (
        "GPU detected is not GPU used: no process of vllm (container %s) holds memory on GPU 1 "
        "(%s); processes there: pid 700 VLLM::EngineCor 20000 MiB (container %s); pid 900 "
        "python3 10 MiB (no container or unit (cgroup /user.slice/user-0.slice)); pid 901 ? "
        "memory unknown (owner unknown (/proc/901/cgroup: [Errno 2] No such file or directory: "
        "'/proc/901/cgroup'))" % (cid("vllm")[:12], GPU1, other[:12]))
    assert entry(result, "vllm")["gpu_used"] is False
    assert host.now == 100.0 + _verify.GPU_SETTLE_S  # read again until the settle time


def test_a_process_of_the_service_holding_nothing_does_not_count():
    files = {"/proc/801/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))}
    host = gpu_host([(801, "python3", 0)], files)
    result = run(host, [VLLM_GPU])
    assert result["msg"].startswith("GPU detected is not GPU used: no process of vllm")
    assert entry(result, "vllm")["gpu_processes"] == [
        {"pid": 801, "name": "python3", "used_memory_mib": 0}]


def test_a_process_listed_a_moment_later_passes():
    files = {"/proc/801/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))}
    reads = [[gpu(GPU1, 1)], [gpu(GPU1, 1)], [gpu(GPU1, 1, (801, "python3", 9000))]]
    host = gpu_host([], files, reads)
    result = run(host, [VLLM_GPU])
    assert result["ok"] and host.gpu_count == 3 and host.slept == [2.0, 2.0]


def test_the_placed_gpu_missing_fails_at_once():
    host = gpu_host([], {}, [[gpu(GPU0, 0)]])
    result = run(host, [VLLM_GPU])
    assert result["msg"] == ("vllm: GPU %s of its placement is not on this host (GPUs: %s)"
                             % (GPU1, GPU0))
    assert host.gpu_count == 1


def test_gpu_read_failure_is_reported():
    host = gpu_host([], {})

    def broken():
        raise ValueError("nvidia-smi: did not answer within 60 seconds and was stopped")
    host.gpus = broken
    result = run(host, [VLLM_GPU])
    assert result["msg"] == ("reading the GPUs failed: nvidia-smi: did not answer within 60 "
                             "seconds and was stopped")


def test_a_unit_process_on_its_gpu_passes_and_a_sibling_unit_does_not_count():
    files = {"/proc/42/environ": "CUDA_VISIBLE_DEVICES=%s\0" % GPU1,
             "/proc/43/cgroup": v2("/system.slice/system-vllm.slice/vllm@vllm.service"),
             "/proc/50/cgroup": v2("/system.slice/system-vllm.slice/vllm@other.service")}
    host = Host({VLLM_UNIT["url"]: [200]}, units={"vllm@vllm.service": [unit_show(pid=42)]},
                files=files, gpus=[[gpu(GPU1, 1, (50, "VLLM::EngineCor", 7000),
                                        (43, "VLLM::EngineCor", 9000))]])
    result = run(host, [dict(VLLM_UNIT, device_id=GPU1)], runtime="systemd")
    assert result["ok"], result["msg"]
    assert [p["pid"] for p in entry(result, "vllm")["gpu_processes"]] == [43]
    del files["/proc/43/cgroup"]
    host = Host({VLLM_UNIT["url"]: [200]}, units={"vllm@vllm.service": [unit_show(pid=42)]},
                files=files, gpus=[[gpu(GPU1, 1, (50, "VLLM::EngineCor", 7000))]])
    result = run(host, [dict(VLLM_UNIT, device_id=GPU1, gpu_index=1)], runtime="systemd")
    assert result["msg"] == (
        "GPU detected is not GPU used: no process of vllm (unit vllm@vllm.service) holds memory "
        "on GPU 1 (%s); processes there: pid 50 VLLM::EngineCor 7000 MiB (unit "
        "vllm@other.service)" % GPU1)


def test_gpu_check_off_reads_no_gpu():
    host = gpu_host([], {})
    assert run(host, [VLLM_GPU], gpu_check=False)["ok"] and host.gpu_count == 0


# ---- report mode (fail_on_problem=False) --------------------------------------------------

def report_run(host, services, runtime="compose", timeout=2.0, interval=1.0, **options):
    result = run(host, services, runtime=runtime, timeout=timeout, interval=interval,
                 fail_on_problem=False, **options)
    assert result["problems"] == [p for s in result["services"] for p in s["problems"]]
    assert result["ok"] is (result["problems"] == [])
    assert result["msg"] == ("; ".join(result["problems"]) or None)
    return result


def summary(result):
    return {s["name"]: (s["healthy"], s["device_ok"], s["gpu_used"], s["model_in_vram"],
                        [p["pid"] for p in s["gpu_processes"]], s["problems"])
            for s in result["services"]}


def test_report_mode_checks_every_service_and_names_each_problem():
    other = cid("vllm-of-another-project")
    files = {"/proc/700/cgroup": v2("/system.slice/docker-%s.scope" % other),
             "/proc/801/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))}
    cpu_ollama = dict(OLLAMA, model=None)
    host = Host({VLLM["url"]: [200], DOCLING["url"]: [503], OLLAMA["url"]: [None]},
                [[container("vllm", device_ids=[GPU1]), container("docling")]], files=files,
                gpus=[[gpu(GPU1, 1, (700, "VLLM::EngineCor", 20000),
                           (801, "VLLM::EngineCor", 18000))]])
    result = report_run(host, [VLLM_GPU, DOCLING, cpu_ollama], load_models=False)
    assert summary(result) == {
        "vllm": (True, True, True, None, [801], []),
        # unhealthy but running: still placed (no GPU, none asked)
        "docling": (False, True, None, None, [], [
            "docling: not healthy within 2 s (http://127.0.0.1:5001/health: HTTP 503)"]),
        # no container: a crash that ends its own check only
        "ollama": (False, None, None, None, [], [
            "ollama: it has no container (compose service ollama of project gpufleet) after "
            "0.0 s, before http://127.0.0.1:11434/api/version answered; last log lines: "
            "(none)"])}
    assert result["crashed"] == "ollama"
    assert host.slept == [1.0, 1.0] and host.gpu_count == 1  # waits at most the timeout


def test_report_mode_a_crash_does_not_end_the_others_wait():
    exited = container("vllm", status="exited", exit_code=1)
    host = Host({VLLM["url"]: [None], DOCLING["url"]: [None, None, 200]},
                [RUNNING, RUNNING, [exited, container("docling")]])
    result = report_run(host, [VLLM, DOCLING], timeout=10.0)
    assert result["crashed"] == "vllm" and host.slept == [1.0, 1.0]
    assert summary(result)["docling"] == (True, True, None, None, [], [])
    assert summary(result)["vllm"][:2] == (False, None)
    assert result["problems"] == [
        "vllm: its container exited with code 1 after 1.0 s, before "
        "http://127.0.0.1:8000/health answered; last log lines: INFO loading | "
        "ERROR EngineCore failed to start. | RuntimeError: tensor parallel size 2 > 1 visible "
        "GPUs | RuntimeError: Engine core initialization failed. See root cause above."]


def test_report_mode_goes_on_past_a_wrong_placement_and_bounds_the_gpu_read():
    files = {"/proc/700/cgroup": v2("/system.slice/docker-%s.scope" % cid("other"))}
    host = Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=[GPU0])]], files=files,
                gpus=[[gpu(GPU0, 0), gpu(GPU1, 1, (700, "python3", 500))]])
    result = report_run(host, [VLLM_GPU], timeout=3.0, interval=2.0)
    assert summary(result)["vllm"][:5] == (True, False, False, None, [])
    assert [p.split(";")[0] for p in result["problems"]] == [
        "vllm: container gpufleet-vllm-1 (running: True) has device requests [{'Driver': "
        "'nvidia', 'Count': 0, 'DeviceIDs': ['%s'], 'Capabilities': [['gpu']], 'Options': {}}]"
        % GPU0,
        "GPU detected is not GPU used: no process of vllm (container %s) holds memory on GPU 1 "
        "(%s)" % (cid("vllm")[:12], GPU1)]
    assert host.gpu_count == 3 and host.slept == [2.0, 1.0]  # min(15 s, timeout), not 15 s


@pytest.mark.parametrize(("ps", "gpus", "expected", "reads"), [
    pytest.param((200, '{"models": []}'), None, (None, None, [], []), 0,
                 id="no-model-loaded-nothing-to-check"),
    pytest.param(ps_answer(3000, 3000, name="qwen2.5:7b"),
                 [[gpu(GPU0, 0, (5151, "ollama", 2900))]], (True, True, [5151], []), 1,
                 id="loaded-in-vram-held-by-its-runner"),
    pytest.param(ps_answer(3000, 3000), [[gpu(GPU0, 0, (9, "ollama", 2900))]],
                 (False, True, [], ["GPU detected is not GPU used: no process of ollama"]), 3,
                 id="loaded-but-its-gpu-holds-nothing-of-it"),
    pytest.param(ps_answer(3000, 1000), None,
                 (None, False, [], ["GPU detected is not GPU used: ollama (GPU 0) holds 1000 "
                                    "of 3000 bytes of llama3.2:3b in VRAM"]), 0,
                 id="partly-on-cpu"),
    pytest.param((500, "boom"), None,
                 (None, None, [], ["ollama: GET http://127.0.0.1:11434/api/ps answered "
                                   "HTTP 500"]), 0, id="ps-fails"),
])
def test_report_mode_ollama_without_load_models_reads_what_is_loaded(ps, gpus, expected, reads):
    files = {"/proc/5151/cgroup": v2("/system.slice/docker-%s.scope" % cid("ollama")),
             "/proc/9/cgroup": v2("/user.slice")}
    host = ollama_host(ps, device_ids=[GPU0], gpus=gpus, files=files)
    result = report_run(host, [dict(OLLAMA, model=None, device_id=GPU0, gpu_index=0)],
                        load_models=False)
    got = summary(result)["ollama"]
    assert (got[2], got[3], got[4]) == expected[:3]
    assert [p[:len(want)] for p, want in zip(got[5], expected[3])] == expected[3]
    assert len(got[5]) == len(expected[3])
    assert host.gpu_count == reads
    assert [c[0] for c in host.calls] == ["GET", "GET"]  # its url and /api/ps: never a load


def test_report_mode_a_gpu_read_failure_is_each_gpu_services_problem():
    host = gpu_host([], {})

    def broken():
        raise ValueError("nvidia-smi: not found")
    host.gpus = broken
    result = report_run(host, [VLLM_GPU, dict(DOCLING, url=None)])
    assert summary(result) == {
        "vllm": (True, True, None, None, [], ["reading the GPUs failed: nvidia-smi: not found"]),
        "docling": (None, None, None, None, [], [
            "docling: it has no container (compose service docling of project gpufleet) after "
            "0.0 s; last log lines: (none)"])}


def test_report_mode_all_good_is_ok_without_a_message():
    files = {"/proc/801/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))}
    host = gpu_host([(801, "VLLM::EngineCor", 18000)], files)
    result = report_run(host, [VLLM_GPU])
    assert result["ok"] and result["msg"] is None and result["problems"] == []
    assert host.slept == []


def test_report_mode_bad_input_still_raises():
    host = Host()
    with pytest.raises(ValueError, match=r"services\[0\]\.project is required"):
        report_run(host, [dict(VLLM, project=None)])


# ---- cgroups ------------------------------------------------------------------------------

ID = cid("vllm")
OUTER = cid("lab-ws")
# cgroup v1 as this machine shows it (hybrid: the unified line is "0::/")
V1 = "".join("%d:%s:/docker/%s\n" % (n, c, ID) for n, c in (
    (12, "perf_event"), (4, "memory"), (3, "cpu,cpuacct"), (1, "name=systemd"))) + "0::/\n"


@pytest.mark.parametrize(("text", "container", "unit", "owner"), [
    pytest.param(v2("/system.slice/docker-%s.scope" % ID), ID, None,
                 {"kind": "container", "id": ID}, id="v2-docker-systemd-driver"),
    pytest.param(v2("/machine.slice/libpod-%s.scope/container" % ID), ID, None,
                 {"kind": "container", "id": ID}, id="v2-podman"),
    pytest.param(V1, ID, None, {"kind": "container", "id": ID}, id="v1-cgroupfs-driver"),
    pytest.param("4:memory:/docker/%s/system.slice/docker-%s.scope\n"
                 "1:name=systemd:/docker/%s/system.slice/docker-%s.scope\n"
                 % (OUTER, ID, OUTER, ID), ID, None, {"kind": "container", "id": ID},
                 id="v1-nested-container"),
    pytest.param(v2("/system.slice/docker-%s.scope/system.slice/docker-%s.scope" % (OUTER, ID)),
                 ID, None, {"kind": "container", "id": ID}, id="v2-nested-container"),
    pytest.param(v2("/system.slice/system-ollama.slice/ollama@ollama_research.service"), None,
                 "ollama@ollama_research.service",
                 {"kind": "unit", "name": "ollama@ollama_research.service"}, id="v2-unit"),
    pytest.param(v2("/system.slice/docker-%s.scope/system.slice/system-ollama.slice/"
                    "ollama@ollama_research.service" % OUTER), None,
                 "ollama@ollama_research.service",
                 {"kind": "unit", "name": "ollama@ollama_research.service"},
                 id="v2-unit-inside-a-container"),
    pytest.param("1:name=systemd:/system.slice/vllm@vllm.service\n4:memory:/system.slice/"
                 "vllm@vllm.service\n", None, "vllm@vllm.service",
                 {"kind": "unit", "name": "vllm@vllm.service"}, id="v1-unit"),
    pytest.param(v2("/"), None, None, {"kind": None, "path": "/"}, id="no-owner-root"),
    pytest.param(v2("/user.slice/user-1000.slice"), None, None,
                 {"kind": None, "path": "/user.slice/user-1000.slice"}, id="no-owner-slice"),
])
def test_cgroup_owner_and_membership(text, container, unit, owner):
    assert _verify.cgroup_owner(text) == owner
    assert _verify.belongs(text, container_id=container, unit=unit) is (owner["kind"] is not None)
    # never someone else's: another container id, another unit, a name as a prefix
    assert _verify.belongs(text, container_id=cid("another"), unit="vllm@other.service") \
        is False
    assert _verify.belongs(text, container_id=ID[:12]) is False


def test_cgroup_bad_line_is_refused():
    with pytest.raises(ValueError, match="unexpected /proc/<pid>/cgroup line: 'garbage'"):
        _verify.cgroup_paths("garbage\n")


def test_parse_inspect_and_show():
    got = _verify.parse_inspect(json.dumps([container("vllm", status="exited", exit_code=137,
                                                      restarts=2, device_ids=[GPU1])]))
    assert got == [{"id": ID, "name": "gpufleet-vllm-1", "project": "gpufleet",
                    "service": "vllm", "oneoff": False, "status": "exited", "running": False,
                    "exit_code": 137, "restart_count": 2, "started_at": RESTARTED_AT,
                    "device_requests": [
                        {"Driver": "nvidia", "Count": 0, "DeviceIDs": [GPU1],
                         "Capabilities": [["gpu"]], "Options": {}}],
                    "devices": [], "env": []}]
    assert _verify.parse_show(unit_show("failed", "failed", "exit-code", 1, 2, 0)) == {
        "load": "loaded", "active": "failed", "sub": "failed", "result": "exit-code",
        "exit_status": 1, "restarts": 2, "main_pid": 0}
    with pytest.raises(ValueError, match="docker inspect printed no JSON"):
        _verify.parse_inspect("Error: No such object")


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize(("runtime", "services", "options", "text"), [
    ("k8s", [], {}, "runtime must be one of compose, systemd, podman; got: 'k8s'"),
    ("compose", [dict(VLLM, url="127.0.0.1:8000/health")], {},
     "services[0].url must be an http(s) URL; got: '127.0.0.1:8000/health'"),
    ("compose", [VLLM, dict(VLLM, url="http://127.0.0.1:8001/health")], {},
     "services: each name once; got: vllm, vllm"),
    ("compose", [VLLM, dict(DOCLING, project=None)], {},
     "services[1].project is required with runtime compose; got: None"),
    ("compose", [dict(VLLM, service="")], {},
     "services[0].service must be a non-empty string; got: ''"),
    ("compose", [dict(VLLM, unit="vllm@vllm.service")], {},
     "services[0].unit applies to runtime systemd or podman only; got: 'vllm@vllm.service'"),
    ("systemd", [dict(VLLM_UNIT, unit=None)], {},
     "services[0].unit is required with runtime systemd; got: None"),
    ("systemd", [dict(VLLM_UNIT, cuda_visible_devices=None)], {},
     "services[0].cuda_visible_devices is required with runtime systemd (a string: a GPU "
     "UUID, an index list or -1); got: None"),
    ("systemd", [dict(VLLM_UNIT, project="gpufleet")], {},
     "services[0].project applies to runtime compose only; got: 'gpufleet'"),
    ("compose", [dict(VLLM, engine="tgi")], {},
     "services[0].engine must be one of ollama, vllm, other; got: 'tgi'"),
    ("compose", [dict(VLLM, gpu_index=-1)], {},
     "services[0].gpu_index must be an integer >= 0; got: -1"),
    ("compose", [dict(OLLAMA, url=None)], {},
     "services[0].url is required to load services[0].model 'llama3.2:3b' (engine ollama); "
     "got: None"),
    ("compose", [{"url": VLLM["url"]}], {}, "services[0].name must be a non-empty string; "
     "got: None"),
    ("compose", [VLLM], {"timeout_s": 0}, "timeout must be more than 0 seconds and at most "
     "86400; got: 0"),
    ("compose", [VLLM], {"interval_s": -1.0}, "interval must be more than 0 seconds and at "
     "most 86400; got: -1.0"),
])
def test_bad_input_names_the_field(runtime, services, options, text):
    host = Host()
    with pytest.raises(ValueError) as caught:
        _verify.verify(runtime, services, host, host.clock, host.sleep, **options)
    assert str(caught.value) == text
    assert host.calls == []


def test_a_unit_without_type_gets_service():
    checks = _verify.check_services("systemd", [dict(VLLM_UNIT, unit="vllm@vllm")])
    assert checks[0]["unit"] == "vllm@vllm.service"


# ---- a tensor-parallel service: N GPUs, a worker of the service on each ------------------

VLLM_TP = dict(VLLM, device_id="%s,%s" % (GPU0, GPU1), gpu_index=0)
MINE = v2("/system.slice/docker-%s.scope" % cid("vllm"))


@pytest.mark.parametrize(("device_ids", "ok"), [
    pytest.param([GPU0, GPU1], True, id="both-gpus-in-order"),
    pytest.param(["%s,%s" % (GPU0, GPU1)], False, id="one-joined-id"),
    pytest.param([GPU0], False, id="one-of-the-two"),
    pytest.param([GPU1, GPU0], False, id="another-order"),
])
def test_tensor_parallel_device_request_holds_exactly_its_gpus(device_ids, ok):
    host = Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=device_ids)]])
    result = run(host, [VLLM_TP], gpu_check=False)
    assert result["ok"] is ok and entry(result, "vllm")["device_ok"] is ok


def tp_host(processes, reads=None):
    files = {"/proc/801/cgroup": MINE, "/proc/802/cgroup": MINE,
             "/proc/700/cgroup": v2("/system.slice/docker-%s.scope" % cid("other"))}
    reads = reads or [[gpu(GPU0, 0, *processes[0]), gpu(GPU1, 1, *processes[1])]]
    return Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=[GPU0, GPU1])]],
                files=files, gpus=reads)


def test_tensor_parallel_workers_on_each_gpu_pass():
    host = tp_host([[(801, "VLLM::Worker_TP", 20000)], [(802, "VLLM::Worker_TP", 20000)]])
    result = run(host, [VLLM_TP])
    assert result["ok"], result["msg"]
    assert [p["pid"] for p in entry(result, "vllm")["gpu_processes"]] == [801, 802]


@pytest.mark.parametrize(("processes", "where", "there"), [
    pytest.param([[(801, "VLLM::Worker_TP", 20000)], [(700, "VLLM::Worker_TP", 9000)]],
                 "GPU 1 (%s)" % GPU1, "pid 700 VLLM::Worker_TP 9000 MiB (container %s)"
                 % cid("other")[:12], id="second-gpu-held-by-another"),
    pytest.param([[], [(802, "VLLM::Worker_TP", 20000)]], "GPU 0 (%s)" % GPU0, "none",
                 id="first-gpu-empty"),
])
def test_tensor_parallel_names_the_gpu_without_a_worker(processes, where, there):
    result = run(tp_host(processes), [VLLM_TP])
    assert result["msg"] == (
        "GPU detected is not GPU used: no process of vllm (container %s) holds memory on %s, "
        "one of the 2 GPUs it spans (%s,%s); processes there: %s"
        % (cid("vllm")[:12], where, GPU0, GPU1, there))
    assert entry(result, "vllm")["gpu_used"] is False


def test_tensor_parallel_gpu_missing_from_the_host_fails_at_once():
    host = tp_host([[], []], reads=[[gpu(GPU0, 0, (801, "VLLM::Worker_TP", 20000))]])
    result = run(host, [VLLM_TP])
    assert result["msg"] == ("vllm: GPU %s of its placement is not on this host (GPUs: %s)"
                             % (GPU1, GPU0))
    assert host.gpu_count == 1


def test_tensor_parallel_unit_workers_on_each_gpu():
    both = "%s,%s" % (GPU0, GPU1)
    worker = v2("/system.slice/system-vllm.slice/vllm@vllm.service")
    files = {"/proc/42/environ": "CUDA_VISIBLE_DEVICES=%s\0" % both,
             "/proc/43/cgroup": worker, "/proc/44/cgroup": worker}
    host = Host({VLLM_UNIT["url"]: [200]}, units={"vllm@vllm.service": [unit_show(pid=42)]},
                files=files, gpus=[[gpu(GPU0, 0, (43, "VLLM::Worker_TP", 9000)),
                                    gpu(GPU1, 1, (44, "VLLM::Worker_TP", 9000))]])
    service = dict(VLLM_UNIT, device_id=both, cuda_visible_devices=both)
    result = run(host, [service], runtime="systemd")
    assert result["ok"], result["msg"]
    files["/proc/42/environ"] = "CUDA_VISIBLE_DEVICES=%s\0" % GPU0
    result = run(Host({VLLM_UNIT["url"]: [200]}, units={"vllm@vllm.service": [unit_show(pid=42)]},
                      files=files), [service], runtime="systemd")
    assert result["msg"] == ("vllm: unit vllm@vllm.service (active) runs with "
                             "CUDA_VISIBLE_DEVICES=%s; the placement says "
                             "CUDA_VISIBLE_DEVICES=%s" % (GPU0, both))


# ---- AMD GPUs: device nodes and ROCR_VISIBLE_DEVICES, not NVIDIA device requests --------------

AMD_UUID = "b4ff740f-0000-1000-80de-55b0b6b9d261"


def amd_container(service, devices=("/dev/kfd", "/dev/dri"), rocr="1", device_ids=None,
                  status="running"):
    """A compose container as the AMD overlay makes it (devices, ROCR_VISIBLE_DEVICES)."""
    item = container(service, status=status, device_ids=device_ids)
    item["HostConfig"]["Devices"] = [
        {"PathOnHost": d, "PathInContainer": d, "CgroupPermissions": "rwm"} for d in devices]
    item["Config"]["Env"] = ["PATH=/usr/bin"] + (
        [] if rocr is None else ["ROCR_VISIBLE_DEVICES=%s" % rocr])
    return item


def amd_gpu(index, vendor_index, uuid, *processes):
    return dict(gpu(uuid, index, *processes), vendor="amd", vendor_index=vendor_index)


# lab-mixed as gpu_facts reads it: NVIDIA GPU 0, the AMD GPU numbered 1 (ROCm's 0).
MIXED = [dict(gpu(GPU0, 0), vendor="nvidia", vendor_index=0),
         amd_gpu(1, 0, AMD_UUID, (4321, "VLLM::EngineCor", 9000))]
VLLM_AMD = dict(VLLM, device_id="0", gpu_index=1)
OWN = {"/proc/4321/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))}


@pytest.mark.parametrize("vendor", [None, "amd"])
def test_amd_placement_checks_devices_env_and_the_process_on_that_gpu(vendor):
    host = Host({VLLM["url"]: [200]}, [[amd_container("vllm", rocr="0")]], files=OWN,
                gpus=[MIXED])
    result = run(host, [dict(VLLM_AMD, vendor=vendor)])
    assert result["ok"], result["msg"]
    assert entry(result, "vllm")["device_ok"] is True
    assert entry(result, "vllm")["gpu_processes"] == [
        {"pid": 4321, "name": "VLLM::EngineCor", "used_memory_mib": 9000}]


def test_amd_placement_by_uuid():
    host = Host({VLLM["url"]: [200]}, [[amd_container("vllm", rocr=AMD_UUID)]], files=OWN,
                gpus=[MIXED])
    assert run(host, [dict(VLLM, device_id=AMD_UUID, gpu_index=1)])["ok"]


HEAD = ("vllm: container gpufleet-vllm-1 is placed on AMD GPU 0 (devices /dev/kfd and /dev/dri, "
        "ROCR_VISIBLE_DEVICES=0, no device request), but ")


@pytest.mark.parametrize(("seen", "why"), [
    pytest.param(amd_container("vllm", devices=("/dev/dri",), rocr="0"),
                 "it is not given /dev/kfd; its devices: /dev/dri", id="no-kfd"),
    pytest.param(amd_container("vllm", devices=("/dev/kfd",), rocr="0"),
                 "it is given neither /dev/dri nor a render node /dev/dri/renderD*; its "
                 "devices: /dev/kfd", id="no-dri"),
    pytest.param(amd_container("vllm", rocr="1"),
                 "it runs with ROCR_VISIBLE_DEVICES=1; its devices: /dev/kfd, /dev/dri",
                 id="wrong-rocr"),
    pytest.param(amd_container("vllm", rocr=None),
                 "it runs with no ROCR_VISIBLE_DEVICES; its devices: /dev/kfd, /dev/dri",
                 id="no-rocr"),
    pytest.param(amd_container("vllm", devices=(), rocr=None, device_ids=["0"]),
                 "it is not given /dev/kfd; it is given neither /dev/dri nor a render node "
                 "/dev/dri/renderD*; it runs with no ROCR_VISIBLE_DEVICES; it has NVIDIA device "
                 "requests [{'Driver': 'nvidia', 'Count': 0, 'DeviceIDs': ['0'], "
                 "'Capabilities': [['gpu']], 'Options': {}}]; its devices: none",
                 id="nvidia-request-on-amd"),
])
def test_amd_placement_fails_naming_what_differs(seen, why):
    host = Host({VLLM["url"]: [200]}, [[seen]], files=OWN, gpus=[MIXED])
    result = run(host, [dict(VLLM_AMD, vendor="amd")])
    assert not result["ok"]
    assert result["msg"] == HEAD + why
    assert entry(result, "vllm")["device_ok"] is False


def test_amd_placement_read_from_the_facts_when_vendor_is_not_given():
    # No device request and no vendor: the facts say GPU 1 is AMD, so its devices are checked.
    host = Host({VLLM["url"]: [200]}, [[amd_container("vllm", rocr="1")]], files=OWN,
                gpus=[MIXED])
    result = run(host, [VLLM_AMD])
    assert result["msg"] == HEAD + "it runs with ROCR_VISIBLE_DEVICES=1; its devices: " \
        "/dev/kfd, /dev/dri"


def test_an_nvidia_placement_on_a_mixed_host_still_wants_its_device_request():
    host = Host({VLLM["url"]: [200]}, [[amd_container("vllm", rocr="0")]], files=OWN,
                gpus=[MIXED])
    result = run(host, [dict(VLLM, device_id=GPU0, gpu_index=0)])
    assert not result["ok"]
    assert result["msg"].startswith("vllm: container gpufleet-vllm-1 (running: True) has device "
                                    "requests None; the placement says %s" % GPU0)


def test_nvidia_placement_reads_no_gpu_facts_for_the_placement():
    host = Host({VLLM["url"]: [200]}, [[container("vllm", device_ids=[GPU1])]],
                files={"/proc/77/cgroup": v2("/system.slice/docker-%s.scope" % cid("vllm"))},
                gpus=[[gpu(GPU1, 1, (77, "VLLM::EngineCor", 100))]])
    assert run(host, [dict(VLLM, device_id=GPU1, gpu_index=1)])["ok"]
    assert host.gpu_count == 1  # the GPU check only


def test_amd_gpu_without_a_process_of_the_service_is_named():
    other = [MIXED[0], amd_gpu(1, 0, AMD_UUID)]
    host = Host({VLLM["url"]: [200]}, [[amd_container("vllm", rocr="0")]], files=OWN,
                gpus=[other])
    result = run(host, [dict(VLLM_AMD, vendor="amd")])
    assert result["msg"].startswith("GPU detected is not GPU used: no process of vllm "
                                    "(container %s) holds memory on GPU 1" % cid("vllm")[:12])


def test_amd_systemd_unit_wants_rocr_visible_devices():
    show = {"vllm@vllm.service": [unit_show(pid=4321)]}
    environ = "PATH=/usr/bin\0ROCR_VISIBLE_DEVICES=0\0"
    files = {"/proc/4321/environ": environ,
             "/proc/4321/cgroup": v2("/system.slice/system-vllm.slice/vllm@vllm.service")}
    host = Host({VLLM["url"]: [200]}, units=show, files=files, gpus=[MIXED])
    unit = dict(VLLM_UNIT, cuda_visible_devices="", device_id="0", gpu_index=1)
    assert run(host, [unit], runtime="systemd")["ok"]
    files["/proc/4321/environ"] = "ROCR_VISIBLE_DEVICES=1\0"
    result = run(Host({VLLM["url"]: [200]}, units=show, files=files, gpus=[MIXED]), [unit],
                 runtime="systemd")
    assert result["msg"] == ("vllm: unit vllm@vllm.service (active) runs with "
                             "ROCR_VISIBLE_DEVICES=1; the placement says ROCR_VISIBLE_DEVICES=0")


def test_bad_vendor_is_refused():
    with pytest.raises(ValueError, match=re.escape(
            "services[0].vendor must be one of nvidia, amd, intel (or null: read from the GPU "
            "facts); got: 'rocm'")):
        _verify.check_services("compose", [dict(VLLM, vendor="rocm")])


# ---- podman (Quadlet) ---------------------------------------------------------------------

CDI_SPEC = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [
    {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
    {"name": GPU0, "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
    {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1"}]}},
    {"name": GPU1, "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1"}]}},
    {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"},
                                                       {"path": "/dev/nvidia1"}]}}]}
VLLM_QUADLET = {"name": "vllm", "url": "http://127.0.0.1:8000/health", "engine": "vllm",
                "unit": "gpufleet-vllm.service", "container": "gpufleet-vllm"}


class PodmanHost(Host):
    """A Podman host: the unit as systemctl shows it, the container as podman inspect does."""

    def __init__(self, nodes, status="running", specs=(CDI_SPEC,), **kwargs):
        super().__init__(**kwargs)
        self.nodes, self.status, self.specs = nodes, status, list(specs)

    def podman_inspect(self, name):
        assert name == "gpufleet-vllm"
        return json.dumps([{
            "Id": cid(name), "Name": name, "State": {
                "Status": self.status, "Running": self.status == "running", "ExitCode": 0},
            "HostConfig": {"Devices": [{"PathOnHost": n, "PathInContainer": n}
                                       for n in self.nodes]}}])

    def cdi_specs(self):
        return self.specs


def podman_run(host, device_id, **options):
    return run(host, [dict(VLLM_QUADLET, device_id=device_id)], runtime="podman", **options)


@pytest.mark.parametrize(("nodes", "device_id", "ok"), [
    pytest.param(["/dev/nvidiactl", "/dev/nvidia1"], GPU1, True, id="the-placed-gpu"),
    pytest.param(["/dev/nvidiactl", "/dev/nvidia1"], "1", True, id="by-index"),
    pytest.param([], None, True, id="no-gpu-none-given"),
    pytest.param(["/dev/nvidiactl", "/dev/nvidia0"], GPU1, False, id="another-gpu"),
    pytest.param(["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"], GPU1, False,
                 id="two-gpus"),
    pytest.param(["/dev/nvidiactl", "/dev/nvidia1"], None, False, id="a-gpu-where-none"),
])
def test_podman_container_has_the_cdi_device_nodes_of_its_placement(nodes, device_id, ok):
    host = PodmanHost(nodes, answers={VLLM_QUADLET["url"]: [200]},
                      units={"gpufleet-vllm.service": [unit_show(pid=42)]})
    result = podman_run(host, device_id, gpu_check=False)
    assert result["ok"] is ok and entry(result, "vllm")["device_ok"] is ok, result["msg"]
    if not ok:
        assert result["msg"].startswith("vllm: container gpufleet-vllm has the GPU device nodes ")


def test_podman_placement_messages():
    host = PodmanHost(["/dev/nvidia0"], answers={VLLM_QUADLET["url"]: [200]},
                      units={"gpufleet-vllm.service": [unit_show(pid=42)]})
    assert podman_run(host, GPU1, gpu_check=False)["msg"] == (
        "vllm: container gpufleet-vllm has the GPU device nodes /dev/nvidia0; the placement "
        "(nvidia.com/gpu=%s) gives /dev/nvidia1" % GPU1)
    host = PodmanHost(["/dev/nvidia1"], specs=(), answers={VLLM_QUADLET["url"]: [200]},
                      units={"gpufleet-vllm.service": [unit_show(pid=42)]})
    assert podman_run(host, GPU1, gpu_check=False)["msg"] == (
        "vllm: the host's CDI specs have no device nvidia.com/gpu=%s (devices: none)" % GPU1)
    host = PodmanHost(["/dev/nvidia1"], status="exited", answers={VLLM_QUADLET["url"]: [200]},
                      units={"gpufleet-vllm.service": [unit_show(pid=42)]})
    assert podman_run(host, GPU1, gpu_check=False)["msg"] == (
        "vllm: unit gpufleet-vllm.service (active): container gpufleet-vllm is exited")


def test_podman_crash_is_the_units():
    host = PodmanHost([], answers={VLLM_QUADLET["url"]: [None]},
                      units={"gpufleet-vllm.service": [unit_show(pid=42),
                                                       unit_show("failed", "failed",
                                                                 "exit-code", 125)]})
    host.journal = lambda unit: "Error: unresolvable CDI devices nvidia.com/gpu=GPU-x\n"
    result = podman_run(host, GPU1)
    assert result["crashed"] == "vllm"
    assert result["msg"].startswith(
        "vllm: its unit gpufleet-vllm.service failed (result exit-code, exit status 125)")
    assert result["msg"].endswith("last log lines: Error: unresolvable CDI devices "
                                  "nvidia.com/gpu=GPU-x")


def test_podman_checks_need_unit_and_container():
    with pytest.raises(ValueError) as exc:
        _verify.check_services("podman", [{"name": "vllm", "unit": "gpufleet-vllm.service"}])
    assert str(exc.value) == "services[0].container is required with runtime podman; got: None"
    with pytest.raises(ValueError) as exc:
        _verify.check_services("podman", [dict(VLLM_QUADLET, cuda_visible_devices="0")])
    assert str(exc.value) == ("services[0].cuda_visible_devices applies to runtime systemd only; "
                              "got: '0'")


def test_cdi_devices_reads_the_nvidia_specs_only():
    other = {"kind": "amd.com/gpu", "devices": [{"name": "0", "containerEdits": {
        "deviceNodes": [{"path": "/dev/kfd"}]}}]}
    assert _verify.cdi_devices([other, CDI_SPEC, "junk"])[GPU1] == ["/dev/nvidia1"]
    assert _verify.cdi_devices([other]) == {}
