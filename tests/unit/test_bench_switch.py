# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bench/switch.py's pure parts: the prober's judgement of one answer (and the prober itself
on loopback servers), its log, the two criteria a leg's downtime is judged by, the drain
waits read from a role run, whether a sleep leg kept vLLM's container, and the verdict on the
sleep rows. The lab runs are `make bench`, not tests."""

from __future__ import annotations

import http.server
import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load():
    sys.path.insert(0, str(BENCH))  # switch.py imports _common from there
    try:
        spec = importlib.util.spec_from_file_location("bench_switch", BENCH / "switch.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


switch = _load()

PS = json.dumps({"models": [{"name": "qwen2.5:7b", "model": "qwen2.5:7b", "size": 1}]})


@pytest.mark.parametrize(("check", "status", "body", "expected"), [
    ("up", 200, "", True),
    ("up", 503, "", False),
    ("up", None, "", False),
    ("up", 404, "", False),
    ("model=qwen2.5:7b", 200, PS, True),
    ("model=qwen2.5:7b", 200, json.dumps({"models": [{"model": "qwen2.5:7b"}]}), True),
    ("model=qwen2.5:7b", 200, json.dumps({"models": []}), False),  # parked: no model
    ("model=qwen2.5:7b", 200, json.dumps({"models": [{"name": "llama3.2:3b"}]}), False),
    ("model=qwen2.5", 200, PS, False),  # a name, not a prefix
    ("model=qwen2.5:7b", 200, json.dumps({"models": None}), False),
    ("model=qwen2.5:7b", 200, json.dumps({"models": ["qwen2.5:7b"]}), False),
    ("model=qwen2.5:7b", 200, "not json", False),
    ("model=qwen2.5:7b", 500, PS, False),
    ("model=qwen2.5:7b", None, "", False),
    ("awake", 200, json.dumps({"is_sleeping": False}), True),
    ("awake", 200, json.dumps({"is_sleeping": True}), False),
    ("awake", 200, json.dumps({"is_sleeping": None}), False),
    ("awake", 200, json.dumps({"is_sleeping": 0}), False),  # only false itself
    ("awake", 200, json.dumps({}), False),
    ("awake", 200, json.dumps([False]), False),
    ("awake", 200, "", False),
    ("awake", 404, json.dumps({"detail": "Not Found"}), True),  # no dev endpoints
    ("awake", 500, "", False),
    ("awake", None, "", False),  # down is not awake
])
def test_judge_answer(check, status, body, expected):
    assert switch.judge_answer(check, status, body) is expected


def test_judge_answer_refuses_an_unknown_check():
    with pytest.raises(ValueError, match=r"^unknown probe check: 'lively'$"):
        switch.judge_answer("lively", 200, "{}")


def test_the_probe_columns_and_criteria_agree():
    assert switch.COLUMNS == ("ollama", "vllm", "docling", "ollama_loaded", "vllm_awake")
    for modes in switch.SERVED.values():
        assert sorted(modes) == ["chat", "ingestion"]
        assert all(set(columns) <= set(switch.COLUMNS) for columns in modes.values())
    # the sleep criterion asks more than the health criterion, never less
    assert set(switch.SERVED["sleep"]["ingestion"]) > set(switch.SERVED["health"]["ingestion"])
    assert switch.SERVED["sleep"]["chat"] == ("ollama_loaded",)
    assert [switch.criterion(a) for a in ("role", "script", "sleep")] == [
        "health", "health", "sleep"]


@pytest.mark.parametrize(("text", "expected"), [
    ("10.5 1 0 1 0 1\n", [(10.5, (True, False, True, False, True))]),
    ("10.5 1 0 1\n", []),  # the old three columns
    ("10.5 1 0 1 0 1 1\n", []),
    ("10.5 1 0 1 0 x\n", []),
    ("ten 1 0 1 0 1\n", []),
    ("", []),
    ("1 0 0 0 0 0\n\n2 1 1 1 1 1\n", [(1.0, (False,) * 5), (2.0, (True,) * 5)]),
])
def test_parse_probe(text, expected):
    rows = switch.parse_probe(text)
    assert [(t, tuple(up[c] for c in switch.COLUMNS)) for t, up in rows] == expected


# t, then ollama vllm docling ollama_loaded vllm_awake
STOP_START = """\
1.0 1 0 0 1 0
1.1 1 0 0 0 0
2.0 0 0 0 0 0
3.0 0 1 0 0 1
3.5 0 1 1 0 1
4.0 0 0 0 0 0
5.0 1 0 0 0 0
6.0 1 0 0 1 0
"""
PARKED = """\
1.0 1 1 0 1 0
1.1 1 1 0 1 0
1.2 1 1 0 0 0
1.9 1 1 1 0 0
2.8 1 1 1 0 1
2.9 1 1 1 0 1
3.0 1 1 0 0 0
4.5 1 1 0 0 0
5.6 1 1 0 1 0
"""


@pytest.mark.parametrize(("sample", "old", "new", "start", "end", "served", "expected"), [
    (STOP_START, "chat", "ingestion", 1.0, 3.8, "health", 2.4),  # 3.5 - 1.1
    (STOP_START, "chat", "ingestion", 1.0, 3.8, "sleep", 2.5),  # 3.5 - 1.0 (model left first)
    (STOP_START, "ingestion", "chat", 3.6, 7.0, "health", 1.4),  # 5.0 - 3.6: down at start
    (STOP_START, "ingestion", "chat", 3.0, 7.0, "health", 1.5),
    (STOP_START, "ingestion", "chat", 3.0, 7.0, "sleep", 2.5),  # 6.0 (model loaded) - 3.5
    (STOP_START, "ingestion", "chat", 3.0, 5.5, "sleep", None),  # model never loaded
    (STOP_START, "chat", "ingestion", 1.0, 3.2, "health", None),  # Docling never up
    (STOP_START, "chat", "ingestion", 3.5, 4.5, "health", None),  # up from the start
    (PARKED, "chat", "ingestion", 1.0, 2.95, "sleep", 1.7),  # 2.8 (awake) - 1.1
    (PARKED, "chat", "ingestion", 1.0, 2.95, "health", 0.7),  # blind: 1.9 (Docling) - 1.2
    (PARKED, "ingestion", "chat", 2.85, 6.0, "sleep", 2.7),  # 5.6 - 2.9
    (PARKED, "ingestion", "chat", 2.85, 6.0, "health", None),  # Ollama's /api/tags never down
    (PARKED, "ingestion", "chat", 3.0, 6.0, "sleep", 2.6),  # old mode down at the start
])
def test_downtime_by_criterion(sample, old, new, start, end, served, expected):
    value = switch.downtime(switch.parse_probe(sample), old, new, start, end, served)
    assert (None if value is None else round(value, 3)) == expected


def _task(name, result):
    return "TASK [gpufleet.inference.compose : %s] %s\n%s\n" % (name, "*" * 20, result)


REMOVED = "Wait until the GPU memory of the removed services has drained"
HANDOVER = "Park, wait until the freed GPU memory is back and steady, wake (one step, no gaps)"
STEPS = [{"name": "ollama", "state": "asleep", "waited_s": 0.4},
         {"name": "vllm", "state": "awake", "waited_s": 2.5}]


@pytest.mark.parametrize(("output", "expected"), [
    (_task(REMOVED, 'ok: [lab-spark] => {"changed": false, "waited_s": 1.02}'), 1.02),
    # the sleep path's handover: the drain's wait, not the engines' own seconds
    (_task(HANDOVER, "changed: [lab-spark] => %s" % json.dumps(
        {"changed": True, "drain": {"drained": True, "samples": 3, "waited_s": 1.5},
         "steps": STEPS}, sort_keys=True)), 1.5),
    (_task(HANDOVER, "changed: [lab-spark] => %s" % json.dumps(
        {"changed": True, "drain": None, "steps": STEPS})), None),  # a wake only
    (_task(HANDOVER, 'ok: [lab-spark] => {"drain": {"waited_s": 0.75}}')
     + _task(REMOVED, 'ok: [lab-spark] => {"changed": false, "waited_s": 0.25}'), 1.0),
    (_task(REMOVED, "skipping: [lab-spark] => {\"changed\": false}"), None),
    (_task(REMOVED, 'fatal: [lab-spark]: FAILED! => {"waited_s": 30.0}'), None),
    (_task(REMOVED, 'ok: [lab-spark] => {"waited_s": "soon"}'), None),
    (_task(REMOVED, 'ok: [lab-spark] => {"waited_s": 1.0'), None),  # cut short
    (_task("Start the active services", 'ok: [lab-spark] => {"waited_s": 9.0}'), None),
    ("", None),
])
def test_drain_wait_s(output, expected):
    value = switch.drain_wait_s(output)
    assert (None if value is None else round(value, 3)) == expected


T1 = "2026-12-06T19:55:15.123456789Z"
T2 = "2026-12-06T19:56:01.5Z"


@pytest.mark.parametrize(("text", "expected"), [
    ("running %s\n" % T1, ("running", T1)),
    ("exited %s" % T1, ("exited", T1)),
    ("", None),  # no such container
    ("Error: No such object: gpufleet-vllm-1", None),
    ("running 0001-01-01", None),
])
def test_parse_started(text, expected):
    assert switch.parse_started(text) == expected


@pytest.mark.parametrize(("before", "after", "expected"), [
    (("running", T1), ("running", T1), True),  # parked or woken: the same process
    (("running", T1), ("running", T2), False),  # restarted: the stop/start path after all
    (None, ("running", T2), False),  # started cold
    (("running", T1), None, False),  # removed
    (("exited", T1), ("running", T1), False),
    (("running", T1), ("exited", T1), False),  # died
])
def test_was_woken(before, after, expected):
    assert switch.was_woken(before, after) is expected


def _legs(approach, to_ingestion, to_chat, drain=0.5, woken=True, crashed=(False, False),
          startup=0.5):
    extra = {"woken": woken} if approach == "sleep" else {}
    return [dict(extra, approach=approach, startup_s=startup, drain_s=drain, to=to, run=1,
                 crashed=hit, downtime_s=None if hit else value, wall_s=4.0)
            for to, value, hit in (("ingestion", to_ingestion, crashed[0]),
                                   ("chat", to_chat, crashed[1]))]


ROLE = _legs("role", 10.0, 4.0) + _legs("script", 12.5, 5.0)


@pytest.mark.parametrize(("legs", "expected"), [
    (_legs("sleep", 1.7, 2.7), (True, 0, 2, 2, 1.7, 2.7)),
    (_legs("sleep", 3.0, 3.0), (True, 0, 2, 2, 3.0, 3.0)),  # at most 3 s
    (_legs("sleep", 3.01, 2.0), (False, 0, 2, 2, 3.01, 2.0)),
    (_legs("sleep", 2.0, 3.2), (False, 0, 2, 2, 2.0, 3.2)),
    (_legs("sleep", 1.7, 2.7, woken=False), (False, 0, 2, 0, 1.7, 2.7)),  # a silent fallback
    (_legs("sleep", None, 2.7, crashed=(True, False)), (False, 1, 2, 2, None, 2.7)),
    (_legs("sleep", 1.7, None, crashed=(False, True)), (False, 1, 2, 2, 1.7, None)),
    (_legs("sleep", None, 2.7), (False, 0, 2, 2, None, 2.7)),  # never served
    # only the judged drain counts for the target; crashes and wakes over the whole grid
    (_legs("sleep", 1.0, 1.0) + _legs("sleep", 9.0, 9.0, drain=15.0, woken=False),
     (True, 0, 4, 2, 1.0, 1.0)),
    (_legs("sleep", 9.0, 9.0, drain=15.0), (False, 0, 2, 2, None, None)),  # not measured
])
def test_verdict_on_the_sleep_rows(legs, expected):
    judged = switch.verdict(switch.summarize(ROLE + legs))
    downtimes = judged["sleep_downtimes"].get("0.5", {})
    assert (judged["sleep_met"], judged["sleep_crashed"], judged["sleep_legs"],
            judged["sleep_woken"], downtimes.get("to_ingestion"),
            downtimes.get("to_chat")) == expected
    # the role's judgement is the same with or without sleep rows
    alone = switch.verdict(switch.summarize(ROLE))
    assert {k: judged[k] for k in ("role_crashed", "role_switches", "ratios", "ratios_met")} \
        == {k: alone[k] for k in ("role_crashed", "role_switches", "ratios", "ratios_met")}


def test_without_sleep_rows_the_verdict_says_nothing_of_them():
    judged = switch.verdict(switch.summarize(ROLE))
    assert (judged["sleep_met"], judged["sleep_downtimes"], judged["ratios_met"]) == (
        None, None, True)
    result = {"host": "lab-spark", "cells": switch.summarize(ROLE), "skipped": [],
              "settings": {"role_extra_vars": []}, "seconds": 1.0,
              "machine": {"cpus": 2, "load": "0", "commit": "x", "date": "d"}}
    text = switch.markdown(result)
    assert "Sleep mode:" not in text and "Sleep-mode switch" not in text
    assert "| 0.5 | 0.5 | role | 1 | 0 / 1 | 10.00 | x0.80 | 4.00 | x0.80 |" in text


def test_the_sleep_rows_sit_next_to_the_roles_with_their_ratio():
    rows = switch.summarize(ROLE + _legs("sleep", 2.0, 1.0) + _legs("sleep", 3.0, 9.0, 15.0))
    sleep = next(r for r in rows if r["approach"] == "sleep" and r["drain_s"] == 0.5)
    assert (sleep["ratio_to_role_ingestion"], sleep["ratio_to_role_chat"]) == (0.2, 0.25)
    assert "ratio_to_script_ingestion" not in sleep  # another criterion: no ratio to it
    late = next(r for r in rows if r["approach"] == "sleep" and r["drain_s"] == 15.0)
    assert "ratio_to_role_ingestion" not in late  # no role row at that drain
    table = switch.sleep_table(rows).splitlines()
    assert table[2].startswith("| 0.5 | 0.5 | stop/start (role) | health 200 | 1 | 0 / 1 | - |")
    assert table[3].startswith("| 0.5 | 0.5 | sleep | model loaded / awake | 1 | 0 / 2 | 2 / 2 "
                               "| 2.00 | x0.20 | 1.00 | x0.25 |")
    assert table[4].startswith("| 0.5 | 15 | sleep |")
    assert len(table) == 5


def test_quick_mode_covers_the_sleep_rows(tmp_path, capsys):
    out = tmp_path / "switch.json"
    assert switch.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["verdict"]["sleep_met"] is True
    assert result["verdict"]["sleep_downtimes"] == {"0.5": {"to_ingestion": pytest.approx(1.7),
                                                            "to_chat": pytest.approx(2.7)}}
    text = capsys.readouterr().out
    assert "woken (not restarted) in 2 of 2; sleep-mode downtime at the 0.5 s drain: 1.70 s to " \
        "ingestion, 2.70 s to chat at vLLM start 0.5 s (target at most 3 s both ways" in text
    assert "### Sleep-mode switch on lab-spark" in text


class _Engines(http.server.BaseHTTPRequestHandler):
    """Loopback answers as the lab's engines give them; ANSWERS[path] = (status, body)."""

    ANSWERS = {}

    def do_GET(self):
        status, body = self.ANSWERS.get(self.path, (404, '{"detail": "Not Found"}'))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args):
        pass


def test_the_prober_runs_judge_answer_on_real_answers(tmp_path):
    _Engines.ANSWERS = {
        "/health": (200, ""), "/down": (503, ""),
        "/ps": (200, PS), "/ps-empty": (200, '{"models": []}'),
        "/asleep": (200, '{"is_sleeping": true}'), "/awake": (200, '{"is_sleeping": false}'),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engines)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = "http://127.0.0.1:%d" % server.server_address[1]
    script = tmp_path / "probe.py"
    script.write_text(switch.probe_script())
    log = tmp_path / "probe.log"
    args = ["up|%s/health" % base, "up|%s/down" % base, "model=qwen2.5:7b|%s/ps" % base,
            "model=qwen2.5:7b|%s/ps-empty" % base, "awake|%s/awake" % base,
            "awake|%s/asleep" % base, "awake|%s/no-dev-endpoints" % base,
            "up|http://127.0.0.1:9/closed"]
    probe = subprocess.Popen([sys.executable, str(script), str(log), *args])
    try:
        deadline = time.time() + 20
        while time.time() < deadline and len(
                log.read_text().splitlines() if log.exists() else []) < 2:
            time.sleep(0.05)
    finally:
        probe.kill()
        probe.wait()
        server.shutdown()
    assert (tmp_path / "probe.log.pid").read_text() == str(probe.pid)
    lines = log.read_text().splitlines()
    assert len(lines) >= 2, lines
    for line in lines[:2]:
        assert line.split()[1:] == ["1", "0", "1", "0", "1", "0", "1", "0"], line
    assert switch.probe_args()[3] == "model=qwen2.5:7b|http://127.0.0.1:11434/api/ps"


@pytest.mark.parametrize(("crashed", "cells"), [
    ((True, False), "| 1 / 2 | 1 / 2 | never up | - | 2.00 | x0.50 |"),
    ((False, True), "| 1 / 2 | 1 / 2 | 1.00 | x0.10 | never up | - |"),
    ((False, False), "| 0 / 2 | 1 / 2 | 1.00 | x0.10 | 2.00 | x0.50 |"),
])
def test_a_crashed_sleep_leg_is_never_up(crashed, cells):
    legs = _legs("sleep", 1.0, 2.0, crashed=crashed)
    legs[0]["woken"] = False  # one leg of two kept its vLLM container
    row = switch.sleep_table(switch.summarize(ROLE + legs)).splitlines()[3]
    assert cells in row, row
