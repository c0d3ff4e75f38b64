# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_sleep.ensure against fake engines (HTTP answers as vLLM 0.10's development endpoints and
Ollama's API give them) and a fake clock: no server, no real waiting."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _sleep

VLLM = "http://127.0.0.1:8000"
OLLAMA = "http://127.0.0.1:11434"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeVllm:
    """vLLM's development endpoints: the state flips ``lag`` reads of /is_sleeping after the
    request (a server that answers before its engine is there); ``health`` is the /health
    status after a wake."""

    def __init__(self, asleep=False, dev_mode=True, lag=1, health=200, rpc=True, fail=None):
        self.asleep, self.dev_mode, self.lag, self.health = asleep, dev_mode, lag, health
        self.rpc, self.fail = rpc, fail or {}
        self.pending = None
        self.posts = []

    def __call__(self, method, url, body, timeout):
        assert timeout > 0
        path = url[len(VLLM):]
        if path in self.fail:
            return self.fail[path]
        route = path.split("?")[0]
        if route in ("/sleep", "/wake_up", "/is_sleeping", "/collective_rpc") and (
                not self.dev_mode or (route == "/collective_rpc" and not self.rpc)):
            return 404, '{"detail":"Not Found"}'
        if method == "POST":
            self.posts.append((path, body))
            if route == "/sleep":
                self.pending = [True, self.lag]
            elif route == "/wake_up" and "tags=weights" not in path:
                self.pending = [False, self.lag]
            return 200, ""
        if path == "/is_sleeping":
            if self.pending:
                self.pending[1] -= 1
                if self.pending[1] < 0:
                    self.asleep, self.pending = self.pending[0], None
            return 200, json.dumps({"is_sleeping": self.asleep})
        if path == "/health":
            return self.health, ""
        raise AssertionError("unexpected %s %s" % (method, path))


class FakeOllama:
    """Ollama's /api/generate and /api/ps: a keep_alive 0 answer comes first, the model
    leaves /api/ps ``lag`` reads later (server/sched.go unloads after the answer)."""

    def __init__(self, loaded=(), lag=1, stuck=False, missing=()):
        self.loaded = list(loaded)
        self.lag, self.stuck, self.missing = lag, stuck, set(missing)
        self.leaving = {}
        self.posts = []

    def __call__(self, method, url, body, timeout):
        assert timeout > 0
        path = url[len(OLLAMA):]
        if method == "POST" and path == "/api/generate":
            self.posts.append(body)
            if body["model"] in self.missing:
                return 404, '{"error":"model \'%s\' not found"}' % body["model"]
            if body["keep_alive"] == 0:
                if body["model"] in self.loaded and not self.stuck:
                    self.leaving[body["model"]] = self.lag
                return 200, json.dumps({"model": body["model"], "done": True,
                                        "done_reason": "unload"})
            if body["model"] not in self.loaded:
                self.loaded.append(body["model"])
            return 200, json.dumps({"model": body["model"], "done": True, "done_reason": "load"})
        if method == "GET" and path == "/api/ps":
            for model in list(self.leaving):
                self.leaving[model] -= 1
                if self.leaving[model] < 0:
                    self.loaded.remove(model)
                    del self.leaving[model]
            return 200, json.dumps({"models": [{"name": m, "model": m, "size_vram": 1}
                                               for m in self.loaded]})
        raise AssertionError("unexpected %s %s" % (method, path))


def run(engine, state, fake, clock=None, **kwargs):
    clock = clock or Clock()
    url = VLLM if engine == "vllm" else OLLAMA
    return _sleep.ensure(engine, url, state, fake, clock, clock.sleep, **kwargs)


# --- four runs: check, real, check again, real again ---------------------------------------
@pytest.mark.parametrize(("engine", "state", "fake", "kwargs", "requests", "models"), [
    pytest.param("vllm", "asleep", FakeVllm, {}, ["POST /sleep?level=1"], [],
                 id="vllm-sleep-level1"),
    pytest.param("vllm", "asleep", FakeVllm, {"level": 2}, ["POST /sleep?level=2"],
                 [], id="vllm-sleep-level2"),
    pytest.param("vllm", "awake", lambda: FakeVllm(asleep=True), {}, ["POST /wake_up"], [],
                 id="vllm-wake-level1"),
    pytest.param("vllm", "awake", lambda: FakeVllm(asleep=True), {"level": 2},
                 ["POST /wake_up?tags=weights", "POST /collective_rpc",
                  "POST /wake_up?tags=kv_cache"], [], id="vllm-wake-level2-reloads-weights"),
    pytest.param("ollama", "asleep", lambda: FakeOllama(["qwen2.5:7b", "llama3.2:3b"]), {},
                 ["POST /api/generate", "POST /api/generate"], ["qwen2.5:7b", "llama3.2:3b"],
                 id="ollama-unload-all"),
    pytest.param("ollama", "asleep", lambda: FakeOllama(["qwen2.5:7b", "llama3.2:latest"]),
                 {"models": ["llama3.2"]}, ["POST /api/generate"], ["llama3.2:latest"],
                 id="ollama-unload-one-by-short-name"),
    pytest.param("ollama", "awake", lambda: FakeOllama(["llama3.2:3b"]),
                 {"models": ["qwen2.5:7b", "llama3.2:3b"]}, ["POST /api/generate"],
                 ["qwen2.5:7b"], id="ollama-load-the-missing-one"),
])
def test_four_runs_check_real_check_real(engine, state, fake, kwargs, requests, models):
    server = fake()
    check = run(engine, state, server, check_mode=True, **kwargs)
    assert (check["changed"], check["requests"], check["models"]) == (True, [], models)
    assert server.posts == []  # check mode sent nothing that changes the state
    real = run(engine, state, server, **kwargs)
    assert (real["changed"], real["was_sleeping"], real["requests"], real["models"]) == (
        True, check["was_sleeping"], requests, models)
    again = run(engine, state, server, check_mode=True, **kwargs)
    assert (again["changed"], again["requests"], again["models"]) == (False, [], [])
    last = run(engine, state, server, **kwargs)
    assert (last["changed"], last["requests"]) == (False, [])
    assert last["was_sleeping"] is (state == "asleep")


def test_vllm_sleep_waits_for_is_sleeping_and_reports_the_wait():
    clock = Clock()
    server = FakeVllm(lag=3)
    result = run("vllm", "asleep", server, clock, interval_s=0.5)
    assert result == {"changed": True, "was_sleeping": False, "waited_s": 1.5,
                      "requests": ["POST /sleep?level=1"], "models": []}
    assert server.asleep is True


def test_vllm_wake_level2_sends_reload_weights_between_the_tags():
    server = FakeVllm(asleep=True)
    run("vllm", "awake", server, level=2)
    assert server.posts == [("/wake_up?tags=weights", None),
                            ("/collective_rpc", {"method": "reload_weights"}),
                            ("/wake_up?tags=kv_cache", None)]


def test_ollama_unload_sends_keep_alive_0_and_load_sends_keep_alive_minus_1():
    server = FakeOllama(["qwen2.5:7b"])
    run("ollama", "asleep", server)
    run("ollama", "awake", server, models=["qwen2.5:7b"])
    assert server.posts == [{"model": "qwen2.5:7b", "keep_alive": 0},
                            {"model": "qwen2.5:7b", "keep_alive": -1}]


@pytest.mark.parametrize(("state", "loaded", "kwargs", "was_sleeping"), [
    pytest.param("asleep", [], {}, True, id="asleep-nothing-loaded"),
    pytest.param("asleep", ["qwen2.5:7b"], {"models": ["llama3.2:3b"]}, True,
                 id="asleep-that-model-not-loaded"),
    pytest.param("awake", ["qwen2.5:7b"], {}, False, id="awake-without-models-is-a-no-op"),
    pytest.param("awake", [], {}, True, id="awake-without-models-nothing-loaded"),
])
def test_ollama_nothing_to_do(state, loaded, kwargs, was_sleeping):
    server = FakeOllama(loaded)
    result = run("ollama", state, server, **kwargs)
    assert (result["changed"], result["was_sleeping"], server.posts) == (False, was_sleeping,
                                                                         [])


# --- failures: the engine's answer and what to do --------------------------------------------
DEV = ("start vLLM with the environment variable VLLM_SERVER_DEV_MODE=1 and the flag "
       "--enable-sleep-mode")


@pytest.mark.parametrize(("engine", "state", "fake", "kwargs", "message"), [
    pytest.param("vllm", "asleep", lambda: FakeVllm(dev_mode=False), {},
                 'vllm at %s answered GET /is_sleeping with HTTP 404: {"detail":"Not Found"}; '
                 "its sleep endpoints are off: %s" % (VLLM, DEV), id="vllm-without-dev-mode"),
    pytest.param("vllm", "asleep",
                 lambda: FakeVllm(
                     fail={"/is_sleeping": (None, "[Errno 111] Connection refused")}), {},
                 "cannot reach vllm at %s (GET /is_sleeping): [Errno 111] Connection refused"
                 % VLLM, id="vllm-unreachable"),
    pytest.param("vllm", "asleep",
                 lambda: FakeVllm(fail={"/sleep?level=1": (500, "Internal Server Error")}), {},
                 "vllm at %s answered POST /sleep?level=1 with HTTP 500: Internal Server Error"
                 % VLLM, id="vllm-sleep-refused"),
    pytest.param("vllm", "asleep", lambda: FakeVllm(fail={"/is_sleeping": (200, "<html>")}),
                 {}, "vllm at %s answered GET /is_sleeping with HTTP 200: <html>; not the JSON "
                 "answer of vllm" % VLLM, id="vllm-not-json"),
    pytest.param("vllm", "asleep",
                 lambda: FakeVllm(fail={"/is_sleeping": (200, '{"sleeping": 1}')}), {},
                 'vllm at %s answered GET /is_sleeping with HTTP 200: {"sleeping": 1}; expected '
                 '{"is_sleeping": true|false}' % VLLM, id="vllm-wrong-shape"),
    pytest.param("vllm", "asleep", lambda: FakeVllm(lag=10 ** 6), {"timeout_s": 2},
                 "vllm at %s: is_sleeping true not reached within 2 s (last seen: is_sleeping "
                 "false)" % VLLM, id="vllm-never-asleep"),
    pytest.param("vllm", "awake", lambda: FakeVllm(asleep=True, rpc=False), {"level": 2},
                 'vllm at %s answered POST /collective_rpc with HTTP 404: {"detail":"Not '
                 'Found"}; this vLLM has no POST /collective_rpc, so weights discarded at level '
                 "2 cannot be reloaded: use level 1, or restart the service" % VLLM,
                 id="vllm-no-collective-rpc"),
    pytest.param("vllm", "awake", lambda: FakeVllm(asleep=True, health=503), {"timeout_s": 3},
                 "vllm at %s: /health 200 not reached within 3 s (last seen: /health HTTP 503)"
                 % VLLM, id="vllm-awake-but-unhealthy"),
    pytest.param("ollama", "asleep", lambda: FakeOllama(["qwen2.5:7b"], stuck=True),
                 {"timeout_s": 2}, "ollama at %s: models unloaded not reached within 2 s (last "
                 "seen: still loaded: qwen2.5:7b)" % OLLAMA, id="ollama-model-stays"),
    pytest.param("ollama", "awake", lambda: FakeOllama(missing=["nope:1b"]),
                 {"models": ["nope:1b"]},
                 "ollama at %s answered POST /api/generate (nope:1b, keep_alive -1) with HTTP "
                 "404: {\"error\":\"model 'nope:1b' not found\"}" % OLLAMA,
                 id="ollama-model-not-pulled"),
])
def test_failures_say_what_the_engine_answered(engine, state, fake, kwargs, message):
    with pytest.raises(ValueError) as info:
        run(engine, state, fake(), **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(("args", "message"), [
    ({"engine": "tgi"}, "engine must be one of vllm, ollama; got: 'tgi'"),
    ({"state": "off"}, "state must be one of asleep, awake; got: 'off'"),
    ({"level": 3}, "level must be 1 or 2; got: 3"),
    ({"level": True}, "level must be 1 or 2; got: True"),
    ({"url": "127.0.0.1:8000"}, "url must be an http:// or https:// base URL such as "
                                "http://127.0.0.1:8000; got: '127.0.0.1:8000'"),
    ({"url": "http://h:8000/sleep?level=1"}, "url must be an http:// or https:// base URL "
     "such as http://127.0.0.1:8000; got: 'http://h:8000/sleep?level=1'"),
    ({"models": ["qwen2.5:7b"]}, "models is for engine=ollama only; got: ['qwen2.5:7b'] with "
                                 "engine=vllm"),
    ({"engine": "ollama", "models": ["a", " "]}, "models[1] must be a model name; got: ' '"),
    ({"timeout_s": 0}, "timeout must be > 0 and <= 86400 seconds; got: 0"),
    ({"interval_s": -1}, "interval must be > 0 and <= 86400 seconds; got: -1"),
])
def test_bad_input_is_refused_before_any_request(args, message):
    full = {"engine": "vllm", "url": VLLM, "state": "asleep", **args}

    def no_http(*_args):
        raise AssertionError("no request may be sent")

    clock = Clock()
    with pytest.raises(ValueError) as info:
        _sleep.ensure(full.pop("engine"), full.pop("url"), full.pop("state"), no_http, clock,
                      clock.sleep, **full)
    assert str(info.value) == message


@pytest.mark.parametrize(("name", "short"), [
    ("llama3.2", "llama3.2:latest"),
    ("llama3.2:3b", "llama3.2:3b"),
    ("registry.lab:5000/library/llama3.2", "registry.lab:5000/library/llama3.2:latest"),
])
def test_ollama_name_adds_the_default_tag(name, short):
    assert _sleep.ollama_name(name) == short
