# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: put an engine to sleep or wake it up.

Not a public API: the leading underscore says so. Pure logic: the HTTP call
(``http(method, url, body, timeout) -> (status or None, text)``), the clock and the sleep
are injected, so tests drive it with a fake engine and a fake clock.

vLLM (its development endpoints, served only when the server runs with
``VLLM_SERVER_DEV_MODE=1``; docs/features/sleep_mode.md, vllm/entrypoints/openai/api_server.py):

* asleep: ``POST /sleep?level=L``, then ``GET /is_sleeping`` until ``{"is_sleeping": true}``.
  Level 1 copies the weights to host memory and drops the KV cache; level 2 drops both. On a
  unified-memory GPU (GB10 / DGX Spark) host memory is the GPU's memory, so only level 2
  frees the weights. A server already asleep is left as it is, whatever its level (vLLM
  ignores a second sleep).
* awake: ``POST /wake_up`` after a level 1 sleep; after level 2 the weights' memory comes back
  empty, so ``POST /wake_up?tags=weights``, ``POST /collective_rpc {"method":
  "reload_weights"}`` (read again from disk), then ``POST /wake_up?tags=kv_cache``; then
  ``/is_sleeping`` false and ``/health`` 200. A wake after level 2 without the reload serves
  garbage; a request while asleep kills vLLM 0.10's engine (vllm#15483).
* Without ``--enable-sleep-mode`` vLLM 0.10 still answers ``/sleep`` with 200 and reports
  ``is_sleeping`` true, but frees nothing: only a look at the GPU memory (the drain wait that
  follows a sleep in a mode switch) can tell. Without dev mode the endpoints answer 404.

Ollama (docs/api.md, server/routes.go, server/sched.go): asleep = each model unloaded with
``POST /api/generate {"model": M, "keep_alive": 0}`` (answered ``done_reason: "unload"``
before the runner has stopped), then ``GET /api/ps`` until none of them is listed; awake =
each of ``models`` loaded again with ``keep_alive: -1`` (never unloaded), then listed in
``/api/ps``. Without ``models``, asleep unloads every loaded model and awake does nothing.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

ENGINES = ("vllm", "ollama")
STATES = ("asleep", "awake")
LEVELS = (1, 2)
# A day: beyond it a timeout is a typo (milliseconds given as seconds), not a wait.
MAX_WAIT_S = 86400
# Seconds one status read (/is_sleeping, /health, /api/ps) may take.
READ_TIMEOUT_S = 10.0
DEV_MODE_HINT = ("start vLLM with the environment variable VLLM_SERVER_DEV_MODE=1 and the flag "
                 "--enable-sleep-mode")


def validate(engine, url, state, level=1, models=None, timeout_s=120.0, interval_s=0.25):
    """The arguments, checked and normalised: (engine, base url, state, level, models,
    timeout_s, interval_s). Raises ValueError naming the option and the value."""
    if engine not in ENGINES:
        raise ValueError("engine must be one of %s; got: %r" % (", ".join(ENGINES), engine))
    if state not in STATES:
        raise ValueError("state must be one of %s; got: %r" % (", ".join(STATES), state))
    if isinstance(level, bool) or level not in LEVELS:
        raise ValueError("level must be 1 or 2; got: %r" % (level,))
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError("url must be an http:// or https:// base URL such as "
                         "http://127.0.0.1:8000; got: %r" % (url,))
    models = list(models or [])
    for i, name in enumerate(models):
        if not isinstance(name, str) or not name.strip():
            raise ValueError("models[%d] must be a model name; got: %r" % (i, name))
    if models and engine != "ollama":
        raise ValueError("models is for engine=ollama only; got: %r with engine=%s"
                         % (models, engine))
    for name, value in (("timeout", timeout_s), ("interval", interval_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value <= MAX_WAIT_S):
            raise ValueError("%s must be > 0 and <= %d seconds; got: %r"
                             % (name, MAX_WAIT_S, value))
    return (engine, url.rstrip("/"), state, level, [m.strip() for m in models],
            float(timeout_s), float(interval_s))


def ollama_name(name):
    """Ollama's short form of a model name: ``llama3.2`` is ``llama3.2:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


class _Call:
    """One run: the HTTP calls against one base URL, within one deadline."""

    def __init__(self, engine, url, http, clock, sleep, timeout_s, interval_s):
        self.engine, self.url, self.http = engine, url, http
        self.clock, self.sleep = clock, sleep
        self.started = clock()
        self.deadline = self.started + timeout_s
        self.timeout_s, self.interval_s = timeout_s, interval_s
        self.requests = []

    def left(self):
        return max(0.5, self.deadline - self.clock())

    def waited(self):
        return round(self.clock() - self.started, 3)

    def call(self, method, path, body=None, long=False):
        """(status, text) of one request; None status (unreachable) raises."""
        timeout = self.left() if long else min(READ_TIMEOUT_S, self.left())
        if method == "POST":
            self.requests.append("POST %s" % path)
        status, text = self.http(method, self.url + path, body, timeout)
        if status is None:
            raise ValueError("cannot reach %s at %s (%s %s): %s"
                             % (self.engine, self.url, method, path, text))
        return status, text

    def refused(self, method, path, status, text, hint=None):
        answer = (text or "").strip().replace("\n", " ")[:300]
        msg = "%s at %s answered %s %s with HTTP %d%s" % (
            self.engine, self.url, method, path, status, ": %s" % answer if answer else "")
        return ValueError(msg + ("; %s" % hint if hint else ""))

    def json(self, method, path, status, text):
        try:
            return json.loads(text)
        except ValueError:
            raise self.refused(method, path, status, text,
                               "not the JSON answer of %s" % self.engine) from None

    def until(self, what, check):
        """Poll check() every interval until it is true; ValueError after the timeout."""
        while True:
            done, seen = check()
            if done:
                return
            if self.clock() >= self.deadline:
                raise ValueError("%s at %s: %s not reached within %g s (last seen: %s)"
                                 % (self.engine, self.url, what, self.timeout_s, seen))
            self.sleep(self.interval_s)


# --- vLLM ---------------------------------------------------------------------------------
def _is_sleeping(run):
    status, text = run.call("GET", "/is_sleeping")
    if status == 404:
        raise run.refused("GET", "/is_sleeping", status, text,
                          "its sleep endpoints are off: " + DEV_MODE_HINT)
    if status != 200:
        raise run.refused("GET", "/is_sleeping", status, text)
    answer = run.json("GET", "/is_sleeping", status, text)
    if not isinstance(answer, dict) or not isinstance(answer.get("is_sleeping"), bool):
        raise run.refused("GET", "/is_sleeping", status, text,
                          'expected {"is_sleeping": true|false}')
    return answer["is_sleeping"]


def _post(run, path, body=None):
    status, text = run.call("POST", path, body, long=True)
    if status == 404:
        hint = ("this vLLM has no POST /collective_rpc, so weights discarded at level 2 "
                "cannot be reloaded: use level 1, or restart the service"
                if path == "/collective_rpc" else "its sleep endpoints are off: "
                + DEV_MODE_HINT)
        raise run.refused("POST", path, status, text, hint)
    if status != 200:
        raise run.refused("POST", path, status, text)


def _vllm(run, state, level, check_mode):
    was_sleeping = _is_sleeping(run)
    want = state == "asleep"
    if was_sleeping == want:
        return False, was_sleeping
    if check_mode:
        return True, was_sleeping
    if want:
        _post(run, "/sleep?level=%d" % level)
        run.until("is_sleeping true", lambda: (_is_sleeping(run), "is_sleeping false"))
        return True, was_sleeping
    if level == 2:
        _post(run, "/wake_up?tags=weights")
        _post(run, "/collective_rpc", {"method": "reload_weights"})
        _post(run, "/wake_up?tags=kv_cache")
    else:
        _post(run, "/wake_up")
    run.until("is_sleeping false", lambda: (not _is_sleeping(run), "is_sleeping true"))

    def healthy():
        status, text = run.call("GET", "/health")
        answer = (text or "").strip()[:100]
        return status == 200, "/health HTTP %d%s" % (status, ": " + answer if answer else "")

    run.until("/health 200", healthy)
    return True, was_sleeping


# --- Ollama -------------------------------------------------------------------------------
def _loaded(run):
    status, text = run.call("GET", "/api/ps")
    if status != 200:
        raise run.refused("GET", "/api/ps", status, text)
    answer = run.json("GET", "/api/ps", status, text)
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise run.refused("GET", "/api/ps", status, text, 'expected {"models": [...]}')
    return [m.get("name") or m.get("model") for m in models if isinstance(m, dict)]


def _generate(run, model, keep_alive):
    body = {"model": model, "keep_alive": keep_alive}
    status, text = run.call("POST", "/api/generate", body, long=True)
    if status != 200:
        raise run.refused("POST", "/api/generate (%s, keep_alive %s)" % (model, keep_alive),
                          status, text)


def _ollama(run, state, models, check_mode):
    """(changed, was_sleeping, models acted on)."""
    loaded = _loaded(run)
    if state == "asleep":
        wanted = {ollama_name(m) for m in models}
        todo = [m for m in loaded if not models or ollama_name(m) in wanted]
        if not todo:
            return False, True, []
        if check_mode:
            return True, False, todo
        for model in todo:
            _generate(run, model, 0)

        def gone():
            left = [m for m in _loaded(run) if m in todo]
            return not left, "still loaded: %s" % ", ".join(left)

        run.until("models unloaded", gone)
        return True, False, todo
    have = {ollama_name(m) for m in loaded}
    todo = [m for m in models if ollama_name(m) not in have]
    was_sleeping = not loaded if not models else len(todo) == len(models)
    if not todo:
        return False, was_sleeping, []
    if check_mode:
        return True, was_sleeping, todo
    for model in todo:
        _generate(run, model, -1)

    def listed():
        now = {ollama_name(m) for m in _loaded(run)}
        left = [m for m in todo if ollama_name(m) not in now]
        return not left, "not loaded: %s" % ", ".join(left)

    run.until("models loaded", listed)
    return True, was_sleeping, todo


def ensure(engine, url, state, http, clock, sleep, level=1, models=None, timeout_s=120.0,
           interval_s=0.25, check_mode=False):
    """Bring the engine at ``url`` into ``state``. Returns {changed, was_sleeping, waited_s,
    requests (the POSTs made), models (Ollama: those unloaded or loaded)}. Raises ValueError
    with the engine's answer when it refuses or does not get there in time."""
    engine, url, state, level, models, timeout_s, interval_s = validate(
        engine, url, state, level, models, timeout_s, interval_s)
    run = _Call(engine, url, http, clock, sleep, timeout_s, interval_s)
    touched = []
    if engine == "vllm":
        changed, was_sleeping = _vllm(run, state, level, check_mode)
    else:
        changed, was_sleeping, touched = _ollama(run, state, models, check_mode)
    return {"changed": changed, "was_sleeping": was_sleeping, "waited_s": run.waited(),
            "requests": run.requests, "models": touched}


# --- a handover: park, drain, wake --------------------------------------------------------
HANDOVER_KEYS = ("name", "engine", "url", "level", "models")


def _engines(items, where):
    """``items`` (park or wake), checked: a list of {name, engine, url, level, models}."""
    if not isinstance(items, list):
        raise ValueError("%s must be a list of engines; got: %r" % (where, items))
    checked = []
    for i, item in enumerate(items):
        at = "%s[%d]" % (where, i)
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("%s must be a dict with name, engine, url (level, models "
                             "optional); got: %r" % (at, item))
        unknown = sorted(set(item) - set(HANDOVER_KEYS))
        if unknown:
            raise ValueError("%s (%s) has unknown keys %s; allowed: %s"
                             % (at, item["name"], ", ".join(unknown), ", ".join(HANDOVER_KEYS)))
        try:
            validate(item.get("engine"), item.get("url"), "asleep", item.get("level", 1),
                     item.get("models"))
        except ValueError as exc:
            raise ValueError("%s (%s): %s" % (at, item["name"], exc)) from None
        checked.append(dict(item, level=item.get("level", 1), models=item.get("models") or []))
    return checked


def handover(park, wake, http, clock, sleep, drain=None, timeout_s=120.0, interval_s=0.25,
             check_mode=False):
    """Put the engines of ``park`` to sleep, wait for the memory they free, wake ``wake``.

    One run with no gap between the steps: a mode switch is down from the first park to the
    last wake. ``drain()`` (the drain wait, ``_drain.wait_drained``'s result) runs only when a
    park changed something, and a wake runs only after the memory drained: an engine woken
    while the other's memory is still held would not find it (vLLM's wake allocates at once).
    Returns ``{changed, steps, drain, error}``: each step ``{name, engine, state, changed,
    waited_s, requests, models}``; ``drain`` the wait's result (None when it did not run);
    ``error`` the first failure (the steps after it are not run), or None.
    """
    park, wake = _engines(park, "park"), _engines(wake, "wake")
    result = {"changed": False, "steps": [], "drain": None, "error": None}
    for items, state in ((park, "asleep"), (wake, "awake")):
        if state == "awake" and result["changed"] and drain is not None and not check_mode:
            result["drain"] = drain()
            if not result["drain"]["drained"]:
                result["error"] = result["drain"]["reason"]
                return result
        for item in items:
            try:
                done = ensure(item["engine"], item["url"], state, http, clock, sleep,
                              level=item["level"], models=item["models"],
                              timeout_s=timeout_s, interval_s=interval_s,
                              check_mode=check_mode)
            except ValueError as exc:
                result["error"] = "%s (%s): %s" % (
                    "park" if state == "asleep" else "wake", item["name"], exc)
                return result
            result["steps"].append(dict(done, name=item["name"], engine=item["engine"],
                                        state=state))
            result["changed"] = result["changed"] or done["changed"]
    return result
