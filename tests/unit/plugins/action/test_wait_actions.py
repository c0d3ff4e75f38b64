# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host_lock and service_verify actions on the controller: which paths run the module
directly, which run it with a progress file the controller reads meanwhile
(plugin_utils/_progress.py, the loop the downloads action tests too), and that the task's
result is the module's own. The host is faked
at the level of ActionBase's calls (progress_host.py)."""

from __future__ import annotations

import os

import pytest
from progress_host import Host, make_action

from ansible_collections.gpufleet.inference.plugins.action import host_lock, service_verify
from ansible_collections.gpufleet.inference.plugins.plugin_utils import _progress

OWNER = '{"controller": "ops1", "pid": 4524}'
HELD = {"failed": True, "changed": False, "acquired": False, "broken": None, "released": False,
        "msg": "the lock /run/gpufleet/lock is held by another run (owner x, taken 3 s ago)"}
TAKEN = {"changed": False, "acquired": True, "broken": None, "released": False,
         "msg": "took the lock /run/gpufleet/lock"}


def run(action):
    return action.run(task_vars={"inventory_hostname": "lab-dual"})


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(_progress, "POLL_S", 0.01)


def event(item, text, final=False):
    return {"item": item, "text": text, "final": final}


# ---- host_lock -------------------------------------------------------------------------------

@pytest.mark.parametrize(("check_mode", "args"), [
    pytest.param(True, {}, id="check-mode"),
    pytest.param(False, {"state": "absent"}, id="release"),
    pytest.param(False, {"timeout": 0}, id="timeout-0"),
    pytest.param(False, {"timeout": "soon"}, id="timeout-not-a-number"),
    pytest.param(False, {"timeout": True}, id="timeout-a-bool"),
])
def test_host_lock_paths_that_do_not_wait_run_the_module_once_as_given(tmp_path, check_mode,
                                                                       args):
    host = Host(tmp_path, direct=[TAKEN])
    action, shown = make_action(host_lock, host, check_mode=check_mode, owner=OWNER, **args)
    assert run(action) == TAKEN
    assert host.kinds() == ["direct"] and host.calls[0] == dict(args, owner=OWNER)
    assert shown == []


def test_a_free_lock_is_taken_by_one_try_whose_invocation_shows_the_task_timeout(tmp_path):
    taken = dict(TAKEN, invocation={"module_args": {"owner": OWNER, "timeout": 0}})
    host = Host(tmp_path, direct=[taken])
    action, shown = make_action(host_lock, host, owner=OWNER, timeout="30")
    result = run(action)
    assert host.kinds() == ["direct"] and host.calls[0] == {"owner": OWNER, "timeout": 0}
    assert result == dict(TAKEN, invocation={"module_args": {"owner": OWNER, "timeout": 30}})
    assert shown == []


def test_a_held_lock_is_waited_for_with_progress_and_the_module_result(tmp_path):
    final = dict(TAKEN, invocation={"module_args": {"owner": OWNER, "timeout": 600,
                                                    "progress_file": "/x/progress.jsonl"}})
    lines = [event("lock", "host lock held by ops1 pid 4524: waited 0 s of 600 s"),
             event("lock", "took the host lock after 4 s", final=True)]
    host = Host(tmp_path, direct=[HELD], final=final, lines=lines)
    action, shown = make_action(host_lock, host, owner=OWNER)
    result = run(action)
    assert host.kinds() == ["direct", "progress"]
    assert host.calls[0] == {"owner": OWNER, "timeout": 0}
    waited = host.calls[1]
    assert waited["progress_file"].startswith(host.async_dir + "/gpufleet-progress-")
    assert {k: v for k, v in waited.items() if k != "progress_file"} == {"owner": OWNER}
    assert not os.path.exists(waited["progress_file"])  # read to its end, then removed
    assert result == dict(TAKEN, invocation={"module_args": {"owner": OWNER, "timeout": 600,
                                                             "progress_file": None}})
    assert shown[-1] == "lab-dual: took the host lock after 4 s"
    assert shown[0] in ("lab-dual: host lock held by ops1 pid 4524: waited 0 s of 600 s",
                        "lab-dual: took the host lock after 4 s")


def test_a_lock_held_past_the_timeout_is_the_waiting_run_s_failure(tmp_path):
    failed = dict(HELD, msg=HELD["msg"] + " and was not released within host_lock_timeout=5 s")
    host = Host(tmp_path, direct=[HELD], final=failed)
    action, _shown = make_action(host_lock, host, owner=OWNER, timeout=5)
    assert run(action) == failed and host.kinds() == ["direct", "progress"]


@pytest.mark.parametrize("first", [
    pytest.param(dict(HELD, msg="host_lock: delay must be an integer > 0; got: 0"),
                 id="bad-input"),
    pytest.param({"failed": True, "msg": "missing required arguments: owner"},
                 id="argspec-failure"),
])
def test_a_first_try_that_fails_otherwise_is_the_result(tmp_path, first):
    host = Host(tmp_path, direct=[first])
    action, _shown = make_action(host_lock, host, owner=OWNER, delay=0)
    assert run(action) == first and host.kinds() == ["direct"]


# ---- service_verify --------------------------------------------------------------------------

VERIFIED = {"changed": False, "waited_s": 41.0, "crashed": None, "problems": [],
            "services": [{"name": "vllm", "healthy": True}]}
SERVICES = [{"name": "vllm", "url": "http://127.0.0.1:8000/health"},
            {"name": "ollama", "engine": "ollama", "url": "http://127.0.0.1:11434/api/version"}]


@pytest.mark.parametrize(("check_mode", "args"), [
    pytest.param(True, {}, id="check-mode"),
    pytest.param(False, {"timeout": 2}, id="a-snapshot"),
    pytest.param(False, {"timeout": service_verify.DIRECT_MAX_S}, id="at-the-limit"),
    pytest.param(False, {"timeout": "0"}, id="bad-timeout"),
    pytest.param(False, {"timeout": "soon"}, id="not-a-number"),
])
def test_service_verify_short_waits_run_the_module_directly(tmp_path, check_mode, args):
    host = Host(tmp_path, direct=[VERIFIED])
    action, shown = make_action(service_verify, host, check_mode=check_mode, runtime="compose",
                                services=SERVICES, **args)
    assert run(action) == VERIFIED
    assert host.kinds() == ["direct"] and shown == []


def test_service_verify_long_waits_run_with_progress(tmp_path):
    lines = [event("vllm", "vllm: /health 503 (loading), container running, 0 s of 600 s"),
             event("vllm", "vllm: /health 200 after 41 s", final=True)]
    failed = dict(VERIFIED, failed=True, msg="ollama: not healthy within 600 s")
    host = Host(tmp_path, final=failed, lines=lines)
    action, shown = make_action(service_verify, host, runtime="compose", services=SERVICES,
                                timeout=600)
    result = run(action)
    assert result == failed
    assert host.kinds() == ["progress"]
    assert {k: v for k, v in host.calls[0].items() if k != "progress_file"} == {
        "runtime": "compose", "services": SERVICES, "timeout": 600}
    assert shown[-1] == "lab-dual: vllm: /health 200 after 41 s"


def test_service_verify_default_timeout_runs_with_progress(tmp_path):
    host = Host(tmp_path, final=VERIFIED)
    action, _shown = make_action(service_verify, host, runtime="systemd", services="bad")
    assert run(action) == VERIFIED
    assert host.kinds() == ["progress"]


@pytest.mark.parametrize(("services", "seconds"), [
    # the health wait, one model load per Ollama service, the GPU check and a margin
    (SERVICES, 600 * 2 + service_verify.JOB_MARGIN_S),
    ("bad", 600 + service_verify.JOB_MARGIN_S),
])
def test_service_verify_waits_for_the_module_s_longest_run(services, seconds):
    assert service_verify.job_seconds(600, services) == seconds


def test_a_module_that_outlasts_the_patience_fails_the_task_and_its_file_goes(
        tmp_path, monkeypatch):
    monkeypatch.setattr(_progress, "GRACE_S", 0)
    lines = [event("lock", "host lock held by ops1 pid 4524: waited %d s of 1 s" % i)
             for i in range(60)]  # 1.2 s of writing, past 0 + 1 s of patience
    host = Host(tmp_path, direct=[HELD], final=TAKEN, lines=lines)
    action, shown = make_action(host_lock, host, owner=OWNER, timeout=1)
    result = action.run_with_progress({"inventory_hostname": "lab-dual"}, {"owner": OWNER},
                                      job_s=1, what="the host_lock job")
    assert result == {"failed": True, "changed": True,
                      "msg": "the host_lock job did not end within 1 seconds"}
    assert shown and shown[0].startswith("lab-dual: host lock held by ops1 pid 4524")


def test_an_error_of_the_module_run_is_the_action_s_own(tmp_path):
    host = Host(tmp_path, final=TAKEN)

    def unreachable(**_kwargs):
        raise ConnectionError("the host went away")

    action, _shown = make_action(host_lock, host, owner=OWNER)
    action._execute_module = unreachable
    with pytest.raises(ConnectionError, match="the host went away"):
        action.run_with_progress({}, {"owner": OWNER}, job_s=5, what="the host_lock job")
