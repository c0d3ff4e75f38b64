# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What host_lock and service_verify write while they wait: the texts, the throttle, and the
lines of real waits (``_lock.acquire``, ``_verify.verify``) on a scripted clock, no sleeps."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _lock, _verify, _waiting

OWNER = json.dumps({"controller": "ops1", "pid": 4524, "play": "Apply",
                    "started": "2026-11-22T14:20:03Z"})
OTHER = json.dumps({"controller": "ops2", "pid": 99, "play": "Switch",
                    "started": "2026-11-22T13:00:00Z"})


class Clock:
    """A clock advanced only by sleep(); ``at`` runs an action once the clock reaches a time."""

    def __init__(self, at=()):
        self.now = 100.0
        self.slept = []
        self.at = sorted(at, key=lambda pair: pair[0])

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        while self.at and self.at[0][0] <= self.now - 100.0:
            self.at.pop(0)[1]()


class Written:
    """The progress file as a list of events."""

    def __init__(self):
        self.events = []

    def __call__(self, path, line):
        assert path == "/tmp/progress.jsonl"
        self.events.append(json.loads(line))

    def texts(self):
        return [(e["item"], e["text"], e["final"]) for e in self.events]


def progress(clock, every_s=_waiting.EVERY_S):
    written = Written()
    return _waiting.ProgressFile("/tmp/progress.jsonl", clock, every_s, append=written), written


# ---- texts -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("owner", "text"), [
    pytest.param(OWNER, "ops1 pid 4524 since 2026-11-22T14:20:03Z (play Apply)", id="role-json"),
    pytest.param(json.dumps({"controller": "ops1"}), "ops1", id="controller-only"),
    pytest.param(json.dumps({"controller": "ops1", "pid": 7, "play": ""}), "ops1 pid 7",
                 id="empty-play"),
    pytest.param("run-A\n", "run-A", id="plain-line"),
    pytest.param('{"pid": 7}', '{"pid": 7}', id="json-without-controller"),
    pytest.param("[1, 2]", "[1, 2]", id="json-not-a-dict"),
    pytest.param(None, "(no owner file yet)", id="no-owner-file"),
])
def test_owner_text(owner, text):
    assert _waiting.owner_text(owner) == text


def test_lock_line_state_is_the_holder_and_the_text_counts_seconds():
    assert _waiting.lock_line(OWNER, 30.7, 600) == (
        "ops1 pid 4524 since 2026-11-22T14:20:03Z (play Apply)",
        "host lock held by ops1 pid 4524 since 2026-11-22T14:20:03Z (play Apply): "
        "waited 30 s of 600 s")
    assert _waiting.lock_taken_line(42.9) == "took the host lock after 42 s"


@pytest.mark.parametrize(("status", "text", "state", "line"), [
    pytest.param(503, '{"error": "loading"}', "container running",
                 "vllm: /health 503 (loading), container running, 40 s of 600 s",
                 id="json-error"),
    pytest.param(503, '{"detail": "Model is starting"}', None,
                 "vllm: /health 503 (Model is starting), 40 s of 600 s", id="json-detail"),
    pytest.param(None, "[Errno 111] Connection refused", "container running",
                 "vllm: /health no answer ([Errno 111] Connection refused), container running, "
                 "40 s of 600 s", id="no-answer"),
    pytest.param(500, "", "container restarting (2 restarts)",
                 "vllm: /health 500, container restarting (2 restarts), 40 s of 600 s",
                 id="empty-body"),
    pytest.param(503, "<html>\n<body>busy</body>", None,
                 "vllm: /health 503 (<html>), 40 s of 600 s", id="first-line"),
    pytest.param(503, "x" * 80, None, "vllm: /health 503 (%s...), 40 s of 600 s" % ("x" * 57),
                 id="cut"),
])
def test_service_line(status, text, state, line):
    said, shown = _waiting.service_line("vllm", "http://127.0.0.1:8000/health", status, text,
                                        state, 40.2, 600.0)
    assert shown == line
    assert "40 s" not in said  # the state has no seconds, or every line would be a change


def test_service_line_of_a_url_without_path_and_a_fractional_timeout():
    assert _waiting.service_line("s", "http://h:1", 404, "Not Found", None, 1, 12.5)[1] == \
        "s: / 404 (Not Found), 1 s of 12.5 s"


def test_container_and_unit_states():
    assert _waiting.container_state(None) == "no container"
    assert _waiting.container_state({"status": "created", "restart_count": 0}) == \
        "container created"
    assert _waiting.unit_state("vllm@vllm.service", _verify.parse_show(
        "ActiveState=activating\nSubState=start\n")) == \
        "unit vllm@vllm.service activating (start)"


# ---- the throttle --------------------------------------------------------------------------

def test_progress_file_writes_on_a_change_and_else_every_few_seconds():
    clock = Clock()
    written_to, written = progress(clock, every_s=2.0)
    written_to.emit("a", "s1", "a 1")
    clock.now += 1
    written_to.emit("a", "s1", "a 2")  # same state, 1 s later: not written
    written_to.emit("b", "s1", "b 1")  # another item: its own clock
    written_to.emit("a", "s2", "a 3")  # a change: written at once
    clock.now += 1.5
    written_to.emit("a", "s2", "a 4")
    clock.now += 0.5
    written_to.emit("a", "s2", "a 5")  # 2 s after a 3
    written_to.emit("a", "s2", "a done", final=True)  # a final line always
    assert written.texts() == [("a", "a 1", False), ("b", "b 1", False), ("a", "a 3", False),
                               ("a", "a 5", False), ("a", "a done", True)]
    assert written_to.said("a") and not written_to.said("c")


def test_progress_file_without_a_path_or_unwritable_writes_nothing_and_goes_on():
    clock = Clock()
    quiet = _waiting.ProgressFile(None, clock)
    quiet.emit("a", "s", "a 1")
    assert quiet.said("a")

    def broken(path, line):
        raise OSError(28, "No space left on device", path)

    failing = _waiting.ProgressFile("/tmp/progress.jsonl", clock, append=broken)
    failing.emit("a", "s", "a 1")
    assert failing.path is None
    failing.emit("a", "t", "a 2")


def test_progress_file_appends_json_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    written_to = _waiting.ProgressFile(str(path), Clock())
    written_to.emit("lock", "x", "host lock held by x: waited 0 s of 5 s")
    written_to.emit("lock", "y", "took the host lock after 3 s", final=True)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"item": "lock", "text": "host lock held by x: waited 0 s of 5 s", "final": False},
        {"item": "lock", "text": "took the host lock after 3 s", "final": True}]


# ---- the host lock's wait --------------------------------------------------------------------

class Fs:
    """A lock another run holds, with its owner file; ``release()`` removes it."""

    def __init__(self, owner):
        self.dirs = {"/run/gpufleet": 0.0, "/run/gpufleet/lock": 50.0}
        self.files = {"/run/gpufleet/lock/owner": owner + "\n"}

    def makedirs(self, path):
        self.dirs.setdefault(path, 0.0)

    def mkdir(self, path):
        if path in self.dirs:
            raise FileExistsError(17, "File exists", path)
        self.dirs[path] = 0.0

    def isdir(self, path):
        return path in self.dirs

    def read(self, path):
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def write(self, path, text):
        self.files[path] = text

    def rename(self, src, dst):
        self.files[dst] = self.files.pop(src)

    def mtime(self, path):
        return self.dirs[path]

    def rmtree(self, path):
        self.dirs.pop(path)
        for name in [f for f in self.files if f.startswith(path + "/")]:
            del self.files[name]

    def release(self):
        self.rmtree("/run/gpufleet/lock")

    def hand_over(self, owner):
        self.files["/run/gpufleet/lock/owner"] = owner + "\n"


def acquire(fs, clock, timeout_s=600, delay_s=2):
    written_to, written = progress(clock)
    wait = _waiting.LockWait(fs, "/run/gpufleet/lock", timeout_s, written_to, clock, clock.sleep)
    result = _lock.acquire(fs, "/run/gpufleet/lock", "run-A", clock, wait.sleep,
                           timeout_s=timeout_s, delay_s=delay_s, stale_after_s=3600)
    if result["acquired"]:
        wait.taken()
    return result, written.texts()


def test_a_lock_wait_says_who_holds_it_every_few_seconds_then_that_it_took_it():
    fs = Fs(OWNER)
    clock = Clock(at=[(3, lambda: fs.hand_over(OTHER)), (7, fs.release)])
    result, lines = acquire(fs, clock, delay_s=1)
    assert result["acquired"] and clock.slept == [1] * 7
    held = "host lock held by ops1 pid 4524 since 2026-11-22T14:20:03Z (play Apply): waited"
    assert lines == [
        ("lock", held + " 0 s of 600 s", False),
        ("lock", held + " 2 s of 600 s", False),
        # another run took it over: said at once
        ("lock", "host lock held by ops2 pid 99 since 2026-11-22T13:00:00Z (play Switch): "
                 "waited 3 s of 600 s", False),
        ("lock", "host lock held by ops2 pid 99 since 2026-11-22T13:00:00Z (play Switch): "
                 "waited 5 s of 600 s", False),
        ("lock", "took the host lock after 7 s", True)]


def test_a_free_lock_writes_nothing():
    fs = Fs(OWNER)
    fs.release()
    result, lines = acquire(fs, Clock())
    assert result["acquired"] and lines == []


def test_a_lock_held_past_the_timeout_says_the_wait_and_no_final_line():
    fs = Fs(OWNER)
    clock = Clock()
    result, lines = acquire(fs, clock, timeout_s=4)
    assert not result["acquired"] and "is held by another run" in result["reason"]
    assert [text for _item, text, _final in lines] == [
        "host lock held by ops1 pid 4524 since 2026-11-22T14:20:03Z (play Apply): "
        "waited %d s of 4 s" % waited for waited in (0, 2)]


# ---- the services' wait --------------------------------------------------------------------

HEALTH = "http://127.0.0.1:8000/health"
DOCS = "http://127.0.0.1:5001/health"
VLLM = {"name": "vllm", "url": HEALTH, "engine": "vllm", "device_id": None,
        "project": "gpufleet", "service": "vllm"}
DOCLING = {"name": "docling", "url": DOCS, "project": "gpufleet", "service": "docling"}
OLLAMA = {"name": "ollama", "url": "http://127.0.0.1:11434/api/version", "engine": "ollama",
          "model": "llama3.2:3b", "project": "gpufleet", "service": "ollama"}


def inspected(service, status="running", restarts=0):
    return {"Id": service * 8, "Name": "/gpufleet-%s-1" % service, "RestartCount": restarts,
            "State": {"Status": status, "Running": status == "running", "ExitCode": 0},
            "Config": {"Labels": {"com.docker.compose.project": "gpufleet",
                                  "com.docker.compose.service": service}},
            "HostConfig": {"DeviceRequests": None}}


class Readers:
    """A host whose endpoints answer per round (one round a sleep); its containers likewise;
    the last answer repeats. Every call noted, as verify made it."""

    def __init__(self, clock, answers, containers, posts=None):
        self.clock = clock
        self.answers = answers
        self.containers = containers
        self.posts = posts or {}
        self.calls = []

    def _round(self, script):
        return script[min(len(self.clock.slept), len(script) - 1)]

    def http(self, method, url, body, timeout):
        self.calls.append(("http", method, url))
        if method == "POST":
            return self.posts[url]
        return self._round(self.answers[url])

    def ps(self, project):
        self.calls.append(("ps", project))
        return "".join(c["Id"] + "\n" for c in self._round(self.containers))

    def inspect(self, ids):
        self.calls.append(("inspect", tuple(ids)))
        return json.dumps([c for c in self._round(self.containers) if c["Id"] in ids])


def verify(services, answers, containers, posts=None, timeout=600.0, **options):
    clock = Clock()
    readers = Readers(clock, answers, containers, posts)
    written_to, written = progress(clock)
    watch = _waiting.ServiceWatch("compose", services, readers, written_to, clock, clock.sleep,
                                  timeout, options.get("load_models", True))
    result = _verify.verify("compose", services, watch, clock, watch.sleep, timeout_s=timeout,
                            interval_s=1.0, gpu_check=False, **options)
    # The same wait without the watch: the watch changes nothing verify sees.
    bare_clock = Clock()
    bare = Readers(bare_clock, answers, containers, posts)
    assert _verify.verify("compose", services, bare, bare_clock, bare_clock.sleep,
                          timeout_s=timeout, interval_s=1.0, gpu_check=False, **options) == result
    assert bare.calls == readers.calls and bare_clock.slept == clock.slept
    return result, written.texts()


def test_a_service_that_answers_at_once_writes_nothing():
    result, lines = verify([VLLM, DOCLING], {HEALTH: [(200, "")], DOCS: [(200, "")]},
                           [[inspected("vllm"), inspected("docling")]])
    assert result["ok"] and lines == []


def test_a_slow_service_says_what_it_waits_for_then_that_it_answered():
    answers = {HEALTH: [(None, "[Errno 111] Connection refused")] * 2
               + [(503, '{"error": "loading"}')] * 4 + [(200, "")],
               DOCS: [(200, "")]}
    containers = [[inspected("vllm", "created"), inspected("docling")],
                  [inspected("vllm"), inspected("docling")]]
    result, lines = verify([VLLM, DOCLING], answers, containers)
    assert result["ok"] and result["waited_s"] == 6.0
    assert lines == [
        ("vllm", "vllm: /health no answer ([Errno 111] Connection refused), container created, "
                 "0 s of 600 s", False),
        # the container runs now: a change, written at once
        ("vllm", "vllm: /health no answer ([Errno 111] Connection refused), container running, "
                 "1 s of 600 s", False),
        ("vllm", "vllm: /health 503 (loading), container running, 2 s of 600 s", False),
        ("vllm", "vllm: /health 503 (loading), container running, 4 s of 600 s", False),
        ("vllm", "vllm: /health 200 after 6 s", True)]


def test_a_service_late_past_the_timeout_is_said_until_the_timeout_only():
    result, lines = verify([VLLM], {HEALTH: [(503, "")]}, [[inspected("vllm")]], timeout=3.0)
    assert not result["ok"] and "not healthy within 3 s" in result["msg"]
    assert [text for _item, text, _final in lines] == [
        "vllm: /health 503, container running, 0 s of 3 s",
        "vllm: /health 503, container running, 2 s of 3 s"]


def test_an_ollama_model_load_is_said_when_it_starts():
    posts = {"http://127.0.0.1:11434/api/generate": (200, '{"done": true}')}
    answers = {OLLAMA["url"]: [(None, "connection refused"), (200, "")],
               "http://127.0.0.1:11434/api/ps": [(200, '{"models": []}')]}
    result, lines = verify([OLLAMA], answers, [[inspected("ollama")]], posts=posts)
    assert result["ok"], result["msg"]
    assert lines == [
        ("ollama", "ollama: /api/version no answer (connection refused), container running, "
                   "0 s of 600 s", False),
        ("ollama", "ollama: /api/version 200 after 1 s", True),
        ("ollama model", "ollama: loading model llama3.2:3b", False)]


def test_bad_input_is_verify_s_to_say():
    clock = Clock()
    written_to, written = progress(clock)
    watch = _waiting.ServiceWatch("compose", [{"name": "x", "url": "nope"}], None, written_to,
                                  clock, clock.sleep, 10.0)
    with pytest.raises(ValueError, match=r"services\[0\]\.url must be an http"):
        _verify.verify("compose", [{"name": "x", "url": "nope"}], watch, clock, watch.sleep)
    assert written.events == []


def test_sleeps_after_the_health_wait_are_not_said():
    """In report mode the GPU check sleeps after a late service's wait ended: no line then."""
    clock = Clock()
    readers = Readers(clock, {HEALTH: [(503, "")]}, [[inspected("vllm")]])
    written_to, written = progress(clock)
    watch = _waiting.ServiceWatch("compose", [VLLM], readers, written_to, clock, clock.sleep,
                                  3.0)
    assert watch.http("GET", HEALTH, None, 5.0) == (503, "")
    watch.sleep(2.9)
    watch.sleep(2.0)  # 2.9 s: still waiting
    watch.sleep(1.0)  # 4.9 s: the wait is over
    assert [text for _item, text, _final in written.texts()] == [
        "vllm: /health 503, 0 s of 3 s", "vllm: /health 503, 2 s of 3 s"]
