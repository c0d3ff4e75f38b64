# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_wait's logic with a scripted clock, endpoints and containers."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _service_wait

VLLM = {"name": "vllm", "url": "http://127.0.0.1:8000/health"}
DOCLING = {"name": "docling", "url": "http://127.0.0.1:5001/health"}
CRASH_LOG = ("INFO loading\nERROR EngineCore failed to start.\n"
             "RuntimeError: tensor parallel size 2 > 1 visible GPUs\n"
             "RuntimeError: Engine core initialization failed. See root cause above.\n")


class Script:
    """A clock that advances by each sleep, and per-round answers."""

    def __init__(self, answers, states=None):
        self.now = 100.0
        self.answers = answers  # {url: [status per round...]} (the last one repeats)
        self.states = states  # [ {service: state} per round ] or None
        self.round = 0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        self.round += 1

    def probe(self, url):
        script = self.answers[url]
        status = script[min(self.round, len(script) - 1)]
        return status, "HTTP %s" % status if status else "connection refused"

    def containers(self):
        states = self.states[min(self.round, len(self.states) - 1)]
        return {name: {"state": state, "status": status, "id": "c-" + name,
                       "exit_code": code} for name, (state, status, code) in states.items()}

    @staticmethod
    def logs(container):
        assert container == "c-vllm"
        return CRASH_LOG


RUNNING = ("running", "Up 2 seconds", None)


def wait(script, services=(VLLM, DOCLING), watch=True, timeout=600.0):
    return _service_wait.wait_healthy(
        list(services), script.probe, script.containers if watch else None, script.logs,
        script.clock, script.sleep, timeout_s=timeout, interval_s=2.0)


def test_healthy_at_once():
    script = Script({VLLM["url"]: [200], DOCLING["url"]: [200]},
                    [{"vllm": RUNNING, "docling": RUNNING}])
    result = wait(script)
    assert result["healthy"] and result["crashed"] is None and result["waited_s"] == 0
    assert script.slept == []


def test_healthy_after_some_rounds_each_timed():
    script = Script({VLLM["url"]: [None, None, 503, 200], DOCLING["url"]: [None, 200]},
                    [{"vllm": RUNNING, "docling": RUNNING}])
    result = wait(script)
    assert result["healthy"], result
    assert result["services"]["docling"]["seconds"] == 2.0
    assert result["services"]["vllm"]["seconds"] == 6.0
    assert result["waited_s"] == 6.0 and script.slept == [2.0, 2.0, 2.0]


def test_an_exited_container_ends_the_wait_at_once_with_its_logs():
    exited = ("exited", "Exited (1) 1 second ago", 1)
    script = Script({VLLM["url"]: [None], DOCLING["url"]: [200]},
                    [{"vllm": RUNNING, "docling": RUNNING}, {"vllm": exited, "docling": RUNNING}])
    result = wait(script)
    assert not result["healthy"] and result["crashed"] == "vllm"
    assert result["waited_s"] == 2.0  # the second round, not the 600 s timeout
    assert result["reason"] == (
        "vllm: its container exited with code 1 after 2.0 s, before "
        "http://127.0.0.1:8000/health answered; last log lines: INFO loading | "
        "ERROR EngineCore failed to start. | RuntimeError: tensor parallel size 2 > 1 visible "
        "GPUs | RuntimeError: Engine core initialization failed. See root cause above.")
    assert result["services"]["docling"]["healthy"] is True


def test_a_restarting_or_missing_container_is_a_crash_too():
    restarting = ("restarting", "Restarting (1) 1 second ago", 1)
    script = Script({VLLM["url"]: [None]}, [{"vllm": restarting}])
    result = wait(script, services=(VLLM,))
    assert "crashed and is being restarted by its restart policy" in result["reason"]
    script = Script({VLLM["url"]: [None]}, [{}])
    result = wait(script, services=(VLLM,))
    assert result["crashed"] == "vllm"
    assert result["reason"].startswith("vllm: its container is gone (removed) after 0.0 s")


def test_timeout_names_the_late_services_and_their_last_answer():
    script = Script({VLLM["url"]: [503], DOCLING["url"]: [200]},
                    [{"vllm": RUNNING, "docling": RUNNING}])
    result = wait(script, timeout=5.0)
    assert not result["healthy"] and result["crashed"] is None
    assert result["reason"] == (
        "not healthy within 5 s: vllm (http://127.0.0.1:8000/health: HTTP 503)")
    assert script.slept == [2.0, 2.0, 1.0]  # never sleeps past the timeout


def test_without_containers_only_the_endpoints_count():
    script = Script({VLLM["url"]: [None, None, 200]}, None)
    result = wait(script, services=(VLLM,), watch=False)
    assert result["healthy"] and result["waited_s"] == 4.0
    assert result["services"]["vllm"]["state"] is None


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="services: each name once; got: vllm, vllm"):
        wait(Script({VLLM["url"]: [200]}, None), services=(VLLM, VLLM), watch=False)


def test_parse_ps():
    text = ("vllm\texited\tExited (137) 4 seconds ago\tabc\n"
            "docling\trunning\tUp 10 seconds\tdef\n\n")
    assert _service_wait.parse_ps(text) == {
        "vllm": {"state": "exited", "status": "Exited (137) 4 seconds ago", "id": "abc",
                 "exit_code": 137},
        "docling": {"state": "running", "status": "Up 10 seconds", "id": "def",
                    "exit_code": None}}
    with pytest.raises(ValueError, match="unexpected docker ps line"):
        _service_wait.parse_ps("vllm running\n")
