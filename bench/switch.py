# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of a mode switch on one lab host: chat -> ingestion -> chat (seed 003).

    python bench/switch.py                 # lab-spark, the grid in bench/README.md (~20 min)
    python bench/switch.py --runs 3 --role-drains 0.5,2,5,10,15   # the full grid (~35 min)
    python bench/switch.py --quick         # no lab: the analysis on a recorded timeline
    python bench/switch.py --role-extra-vars compose_drain_timeout=60   # role variables
    python bench/switch.py --no-sleep      # without the sleep-mode switch (~10 min)

Two approaches on the same compose project (the one site.yml writes, /opt/gpufleet, with the
catalog's chat and ingestion modes), the same stand-in servers and the same simulated driver:
  role    playbooks/switch_mode.yml (site.yml with inference_mode): remove the leaving
          services, wait until their GPU memory has really drained (gpu_drain_wait: the freed
          memory back and stable for its `stable` interval), start, verify; rollback on
          failure.
  script  seed 003's helper: `compose stop`, a fixed `sleep 5`, `compose up -d`, poll health.
The grid: the driver's drain delay (seconds a freed allocation still counts, lab_drain_delay)
and the stand-in vLLM's startup time (seconds before its free-memory snapshot). vLLM's
profiling window then lasts PROFILE_S: memory freed inside it crashes vLLM with its real
AssertionError (lab/servers/vllm.py), as in seed 003.

Downtime is measured from outside every approach: a prober inside the host asks every
PROBE_INTERVAL s for Ollama's /api/tags (chat) and vLLM's and Docling's /health (ingestion),
and also for Ollama's /api/ps and vLLM's /is_sleeping. A leg's downtime = first probe at which
the new mode is served - last probe at which the old mode was. For the role and the script a
mode is served when its services answer 200 (the health criterion). A leg whose vLLM exits
with the profiling assertion is "crashed": its mode never comes up without a person.

The issue's judgement is the role's downtime over the script's in the same cell (the
"x script" columns) at the 0.5 s drain, both directions, and the role's vLLM crashes over the
whole grid; the line under the table states both.

A third approach, on the same host and project (left out with --no-sleep):
  sleep   the role (switch_mode.yml) with a catalog whose vllm and ollama have `sleep: true`
          and vLLM the stand-in's sleep timings (tests/lab/test_lab_sleep.py): the leaving
          engine parked (vLLM /sleep, Ollama's model unloaded with keep_alive 0), the
          entering one woken. Before its cycles the host converges chat, ingestion, chat, so
          that vLLM's cold first start is not measured and every measured leg parks and wakes.
A sleeping vLLM still answers /health 200 and a parked Ollama /api/tags 200, so the sleep
rows are judged by a STRICTER criterion than the stop/start rows: chat is served when
Ollama's /api/ps lists OLLAMA_MODEL (a chat answers without a load); ingestion when vLLM's
/health is 200 and it is awake (/is_sleeping answers {"is_sleeping": false}, or 404: no dev
endpoints, not a sleeper) and Docling's /health is 200. A stop/start leg under it would wait
for a first chat to load the model, so those rows keep the health criterion, and the sleep
rows' "x stop/start" overstates their share. Each sleep leg records whether vLLM's container
is the same before and after (`woken`: its StartedAt unchanged), so that a silent fallback
to stop/start shows; a sleep leg "crashed" when vLLM's log shows the profiling assertion or
the illegal memory access of a request to a sleeping engine, or its container is not
running. The judged line adds the sleep-mode downtime at the 0.5 s drain, both directions,
against the issue's 3 s (SLEEP_TARGET_S), and the sleep legs' crashes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

HOST = "lab-spark"
PROJECT_DIR = "/opt/gpufleet"
PROJECT = "gpufleet"
# The script's own compose project, as seed 003 has one: each service as the role renders it in
# its mode (same image, GPU, command, environment, ports), under the profile chat or ingestion.
SCRIPT_DIR = "/srv/bench-script"
SCRIPT_PROJECT = "bench-script"
OLLAMA_MODEL = "qwen2.5:7b"
# A small vLLM model (about 1 GiB of weights, less than the 4.9 GiB Ollama's qwen2.5:7b
# frees), so that a drain ending inside the profiling window grows free memory (seed 003).
VLLM_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
# The stand-in runners are named like this in NVML: the placement counts them as ours.
MANAGED = {"managed_processes": ["ollama*", "*vllm*", "vision*"]}
# A task's header and its result line in a -v run: a drain wait's name says "wait until".
TASK_RESULT = re.compile(r"^TASK \[(?P<name>[^\n]*)\] \*+\n(?:ok|changed): \[[^\]]+\] => "
                         r"(?P<json>\{.*\})$", re.M)
LOAD_S = 0.5
PROFILE_S = 6.0
SCRIPT_SLEEP_S = 5
PROBE_INTERVAL = 0.1
HEALTH_TIMEOUT_S = 30
MODES = {
    "chat": {"ollama": "http://127.0.0.1:11434/api/tags"},
    "ingestion": {"vllm": "http://127.0.0.1:8000/health",
                  "docling": "http://127.0.0.1:5001/health"},
}
# The prober's columns, in order: (name, check, url); judge_answer() says what each check is.
PROBES = (
    ("ollama", "up", MODES["chat"]["ollama"]),
    ("vllm", "up", MODES["ingestion"]["vllm"]),
    ("docling", "up", MODES["ingestion"]["docling"]),
    ("ollama_loaded", "model=" + OLLAMA_MODEL, "http://127.0.0.1:11434/api/ps"),
    ("vllm_awake", "awake", "http://127.0.0.1:8000/is_sleeping"),
)
COLUMNS = tuple(name for name, _check, _url in PROBES)
# When a mode is served, per criterion: the columns that must all be up. "health" judges the
# role's and the script's rows (their meaning since the first run), "sleep" the sleep rows:
# stricter, since a parked engine still answers its health URL.
SERVED = {
    "health": {"chat": ("ollama",), "ingestion": ("vllm", "docling")},
    "sleep": {"chat": ("ollama_loaded",), "ingestion": ("vllm", "vllm_awake", "docling")},
}
PROFILING = re.compile(r"AssertionError: Error in memory profiling")
# What ends a sleep path's vLLM: the profiling assertion (a cold start after all) or a request
# that reached it asleep (vllm#15483; the stand-in logs the same).
SLEEP_CRASH = re.compile(r"AssertionError: Error in memory profiling"
                         r"|CUDA error: an illegal memory access")
DRAINS = (0.5, 15.0, 10.0, 5.0, 2.0)
STARTUPS = (0.5, 5.0)
ROLE_DRAINS = (0.5, 15.0)
SLEEP_DRAINS = (0.5,)
BUDGET_S = 1200
# The drain at which the issue compares the role's downtime with the script's.
JUDGED_DRAIN_S = 0.5
# The bound on a sleep-mode switch's downtime on the lab's timings, both directions.
SLEEP_TARGET_S = 3.0
# The stand-in vLLM's sleep timings (lab/README.md, "Sleep mode and unloading"), as
# tests/lab/test_lab_sleep.py gives them: containers do not see the host's standin.env.
VLLM_SLEEP_ENV = {
    "GPUFLEET_STANDIN_VLLM_SLEEP_SECONDS": "0.05",
    "GPUFLEET_STANDIN_VLLM_OFFLOAD_MIB_PER_S": "10240",
    "GPUFLEET_STANDIN_VLLM_RELOAD_MIB_PER_S": "4096",
}


def judge_answer(check, status, body):
    """Whether one probe answer counts as up. ``status`` None: no answer. Checks: "up" (200),
    "model=NAME" (200 and /api/ps lists NAME: a chat answers without a load), "awake" (200
    with {"is_sleeping": false}, or 404: no dev endpoints, so not a sleeper). The prober runs
    this function's own source inside the host (it imports json there)."""
    if check == "up":
        return status == 200
    if check == "awake" and status == 404:
        return True
    if status != 200:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    if check == "awake":
        return doc.get("is_sleeping") is False
    if check.startswith("model="):
        name = check[len("model="):]
        models = doc.get("models")
        return isinstance(models, list) and any(
            isinstance(m, dict) and name in (m.get("name"), m.get("model")) for m in models)
    raise ValueError("unknown probe check: %r" % (check,))


PROBE = r"""
import json, os, sys, time, urllib.error, urllib.request
%(judge)s
specs = [arg.split("|", 1) for arg in sys.argv[2:]]
with open(sys.argv[1] + ".pid", "w") as handle:
    handle.write(str(os.getpid()))
out = open(sys.argv[1], "a", buffering=1)
while True:
    t = time.time()
    row = []
    for check, url in specs:
        status, body = None, ""
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                status, body = answer.status, answer.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception:
            pass
        try:
            row.append("1" if judge_answer(check, status, body) else "0")
        except Exception:
            row.append("0")
    out.write("%.3f %s\n" % (t, " ".join(row)))
    time.sleep(max(0.0, %(interval)s - (time.time() - t)))
"""


def probe_script():
    """The prober's source: PROBE with judge_answer() and the interval filled in."""
    return PROBE.replace("%(judge)s", inspect.getsource(judge_answer)).replace(
        "%(interval)s", repr(PROBE_INTERVAL))


def probe_args():
    """The prober's arguments after its log file: one "check|url" per column."""
    return ["%s|%s" % (check, url) for _name, check, url in PROBES]


GPU_STATE = r"""
import json, os, sys
sys.path.insert(0, "/opt/gpufleet-lab/servers")
os.environ["GPUFLEET_NVML_STATE"] = "/etc/gpufleet-nvml/state"
import gpuview
regs = gpuview.View().regs
print(json.dumps({"counted": sum(r["mib"] for r in regs),
                  "draining": sum(r["mib"] for r in regs if r["gone"] is not None),
                  "names": sorted(r["name"] for r in regs if r["gone"] is None)}))
"""

SCRIPT = r"""
set -u
cd %(dir)s
C="docker compose --profile chat --profile ingestion"
$C stop %(leaving)s >/dev/null 2>&1
sleep %(sleep)s
$C up -d %(entering)s >/dev/null 2>&1
deadline=$((SECONDS + %(timeout)d))
while :; do
  ok=1
  for url in %(urls)s; do curl -sf -o /dev/null --max-time 2 "$url" || ok=0; done
  if [ $ok = 1 ]; then echo READY; break; fi
  for svc in %(entering)s; do
    state=$(docker inspect -f '{{.State.Status}}' %(project)s-$svc-1 2>/dev/null)
    if [ "$state" = exited ]; then echo "EXITED $svc"; break 2; fi
  done
  if [ $SECONDS -ge $deadline ]; then echo TIMEOUT; break; fi
  sleep 1
done
"""


# ---- analysis (pure: the smoke run checks it without a lab) -------------------------------

def parse_probe(text):
    """[(t, {column: ok})] from the prober's lines (COLUMNS); other lines are left out."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 1 + len(COLUMNS) or any(p not in ("0", "1") for p in parts[1:]):
            continue
        try:
            t = float(parts[0])
        except ValueError:
            continue
        rows.append((t, {c: p == "1" for c, p in zip(COLUMNS, parts[1:])}))
    return rows


def criterion(approach):
    """The SERVED criterion an approach's rows are judged by."""
    return "sleep" if approach == "sleep" else "health"


def downtime(rows, old, new, start, end, served="health"):
    """Seconds between the last probe serving ``old`` and the first one after it serving
    ``new`` (SERVED[served]: every column of the mode up), within [start, end]; None when
    ``new`` never came up or was served from the start (a role run that had already rolled
    back)."""
    modes = SERVED[served]
    window = [(t, up) for t, up in rows if start <= t <= end]
    came = next((i for i, (_t, up) in enumerate(window) if all(up[c] for c in modes[new])),
                None)
    if came is None or came == 0:
        return None  # never came up, or was up already (nothing was switched)
    last_old = None
    for t, up in window[:came]:
        if all(up[c] for c in modes[old]):
            last_old = t
    if last_old is None:
        last_old = start  # the old mode was already down when the leg began
    return window[came][0] - last_old


def drain_wait_s(output):
    """Seconds a role run's drain waits reported, summed; None without one. A drain wait is a
    task whose name says "wait until" (gpu_drain_wait: ``waited_s``; engine_handover, the
    sleep path's park, drain and wake: ``drain.waited_s``, not its engines' own times)."""
    waits = []
    for match in TASK_RESULT.finditer(output):
        if "wait until" not in match.group("name").lower():
            continue
        try:
            doc = json.loads(match.group("json"))
        except ValueError:
            continue
        drain = doc.get("drain") if isinstance(doc.get("drain"), dict) else doc
        if isinstance(drain.get("waited_s"), (int, float)):
            waits.append(float(drain["waited_s"]))
    return sum(waits) if waits else None


def parse_started(text):
    """(status, StartedAt) of a container from `docker inspect -f '{{.State.Status}}
    {{.State.StartedAt}}'`; None when there is none (no such container)."""
    parts = text.split()
    if len(parts) != 2 or not re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", parts[1]):
        return None
    return parts[0], parts[1]


def was_woken(before, after):
    """A sleep leg kept vLLM's container (woken or parked, not restarted): it ran before and
    after the leg with the same StartedAt (parse_started's pairs)."""
    return (before is not None and after is not None and before[0] == after[0] == "running"
            and before[1] == after[1])


def summarize(legs):
    """One row per (approach, startup, drain): medians and crash counts of each leg; the role's
    rows over the script's in the same cell, the sleep rows over the role's."""
    cells = {}
    for leg in legs:
        key = (leg["approach"], leg["startup_s"], leg["drain_s"])
        cells.setdefault(key, []).append(leg)
    rows = []
    for (approach, startup, drain), group in sorted(cells.items()):
        there = [g for g in group if g["to"] == "ingestion"]
        back = [g for g in group if g["to"] == "chat"]
        crashed = sum(g["crashed"] for g in there)
        rows.append({
            "approach": approach, "startup_s": startup, "drain_s": drain, "runs": len(there),
            "criterion": criterion(approach),
            "crashed": crashed,
            "crashed_to_chat": sum(g["crashed"] for g in back),
            "crash_rate": crashed / float(len(there)) if there else None,
            "legs": len(group),
            "woken": sum(bool(g.get("woken")) for g in group) if approach == "sleep" else None,
            "to_ingestion_s": _common.median(
                [g["downtime_s"] for g in there if not g["crashed"]]),
            "to_chat_s": _common.median([g["downtime_s"] for g in back if not g["crashed"]]),
            "cycle_s": _common.median([a["wall_s"] + b["wall_s"] for a, b in zip(there, back)]),
            "recorded_s": _common.median([g.get("recorded_downtime_s") for g in there]),
            "drain_wait_s": _common.median([g.get("drain_wait_s") for g in there]),
            "drain_wait_to_chat_s": _common.median([g.get("drain_wait_s") for g in back]),
        })
    for row in rows:
        peer_approach = {"role": "script", "sleep": "role"}.get(row["approach"])
        peer = next((r for r in rows if r["approach"] == peer_approach
                     and r["startup_s"] == row["startup_s"] and r["drain_s"] == row["drain_s"]),
                    None)
        if peer is not None:
            row["ratio_to_%s_ingestion" % peer_approach] = _common.ratio(
                row["to_ingestion_s"], peer["to_ingestion_s"])
            row["ratio_to_%s_chat" % peer_approach] = _common.ratio(
                row["to_chat_s"], peer["to_chat_s"])
    return rows


def verdict(rows, judged_drain=JUDGED_DRAIN_S, sleep_target=SLEEP_TARGET_S):
    """What the issue judges: the role's vLLM crashes over the grid, and its downtime over
    the script's at ``judged_drain`` in both directions (at most 1.0x), per startup time;
    with sleep rows also their downtime at ``judged_drain`` against ``sleep_target`` seconds
    both ways (met only when every judged sleep leg was woken and none crashed) and their
    crashes over the grid (None where there are no sleep rows)."""
    role = [r for r in rows if r["approach"] == "role"]
    judged = [r for r in role if r["drain_s"] == judged_drain]
    ratios = [r.get(key) for r in judged
              for key in ("ratio_to_script_ingestion", "ratio_to_script_chat")]
    out = {
        "role_crashed": sum(r["crashed"] for r in role),
        "role_switches": sum(r["runs"] for r in role),
        "judged_drain_s": judged_drain,
        "ratios": {"%g" % r["startup_s"]: {"to_ingestion": r.get("ratio_to_script_ingestion"),
                                           "to_chat": r.get("ratio_to_script_chat")}
                   for r in judged},
        "ratios_met": bool(ratios) and all(x is not None and x <= 1.0 for x in ratios),
        "sleep_target_s": sleep_target,
        "sleep_crashed": None, "sleep_legs": None, "sleep_woken": None,
        "sleep_downtimes": None, "sleep_met": None,
    }
    sleep = [r for r in rows if r["approach"] == "sleep"]
    if not sleep:
        return out
    judged = [r for r in sleep if r["drain_s"] == judged_drain]
    seconds = [r[key] for r in judged for key in ("to_ingestion_s", "to_chat_s")]
    out.update(
        sleep_crashed=sum(r["crashed"] + r["crashed_to_chat"] for r in sleep),
        sleep_legs=sum(r["legs"] for r in sleep),
        sleep_woken=sum(r["woken"] for r in sleep),
        sleep_downtimes={"%g" % r["startup_s"]: {"to_ingestion": r["to_ingestion_s"],
                                                 "to_chat": r["to_chat_s"]} for r in judged},
        sleep_met=bool(seconds) and all(x is not None and x <= sleep_target for x in seconds)
        and all(r["woken"] == r["legs"] and not r["crashed"] + r["crashed_to_chat"]
                for r in judged))
    return out


def _ratio(value):
    return "-" if value is None else "x%.2f" % value


def _down(value, crashed, runs):
    return "never up" if runs and crashed >= runs else _common.fmt(value)


def sleep_table(rows):
    """The sleep rows next to the role's stop/start rows of the same startup and drain."""
    f = _common.fmt
    sleep = {(r["startup_s"], r["drain_s"]) for r in rows if r["approach"] == "sleep"}
    shown = sorted((r for r in rows if r["approach"] in ("role", "sleep")
                    and (r["startup_s"], r["drain_s"]) in sleep),
                   key=lambda r: (r["startup_s"], r["drain_s"], r["approach"] != "role"))
    return _common.table(
        ["vLLM start s", "drain delay s", "path", "served when", "runs", "vLLM crashed",
         "vLLM woken", "chat->ingestion downtime s", "x stop/start",
         "ingestion->chat downtime s", "x stop/start", "drain wait s (to ingestion / chat)",
         "cycle wall s"],
        [[f(r["startup_s"], "%g"), f(r["drain_s"], "%g"),
          "sleep" if r["approach"] == "sleep" else "stop/start (role)",
          "model loaded / awake" if r["criterion"] == "sleep" else "health 200",
          str(r["runs"]),
          "%d / %d" % ((r["crashed"] + r["crashed_to_chat"], r["legs"]) if r["approach"] == "sleep"
                       else (r["crashed"], r["runs"])),
          "-" if r["woken"] is None else "%d / %d" % (r["woken"], r["legs"]),
          _down(r["to_ingestion_s"], r["crashed"], r["runs"]),
          _ratio(r.get("ratio_to_role_ingestion")),
          _down(r["to_chat_s"], r["crashed_to_chat"], r["legs"] - r["runs"]),
          _ratio(r.get("ratio_to_role_chat")),
          "%s / %s" % (f(r["drain_wait_s"]), f(r["drain_wait_to_chat_s"])),
          f(r["cycle_s"], "%.1f")]
         for r in shown])


def markdown(result):
    f = _common.fmt
    rows = result["cells"]
    plain = [r for r in rows if r["approach"] != "sleep"]
    parts = ["### Mode switch on %s: chat -> ingestion -> chat" % result["host"], ""]
    parts.append(_common.table(
        ["vLLM start s", "drain delay s", "approach", "runs", "vLLM crashed",
         "chat->ingestion downtime s", "x script", "ingestion->chat downtime s", "x script",
         "role's drain wait s", "cycle wall s"],
        [[f(r["startup_s"], "%g"), f(r["drain_s"], "%g"), r["approach"], str(r["runs"]),
          "%d / %d" % (r["crashed"], r["runs"]),
          f(r["to_ingestion_s"]) if r["runs"] > r["crashed"] else "never up",
          _ratio(r.get("ratio_to_script_ingestion")),
          f(r["to_chat_s"]), _ratio(r.get("ratio_to_script_chat")),
          f(r["drain_wait_s"]), f(r["cycle_s"], "%.1f")]
         for r in sorted(plain, key=lambda r: (r["startup_s"], r["drain_s"], r["approach"]))]))
    judged = verdict(rows)
    ratios = "; ".join(
        "%s to ingestion, %s to chat at vLLM start %s s" % (
            _ratio(r["to_ingestion"]), _ratio(r["to_chat"]), startup)
        for startup, r in sorted(judged["ratios"].items(), key=lambda item: float(item[0])))
    line = ("**Judged** (role vs script): vLLM crashed in %d of the role's %d switches to "
            "ingestion; role / script downtime at the %g s drain: %s (target at most x1.00 "
            "both ways: %s)." % (
                judged["role_crashed"], judged["role_switches"], judged["judged_drain_s"],
                ratios or "not measured", "met" if judged["ratios_met"] else "not met"))
    if judged["sleep_met"] is not None:
        seconds = "; ".join(
            "%s s to ingestion, %s s to chat at vLLM start %s s" % (
                f(r["to_ingestion"]), f(r["to_chat"]), startup)
            for startup, r in sorted(judged["sleep_downtimes"].items(),
                                     key=lambda item: float(item[0])))
        line += (" Sleep mode: vLLM crashed in %s of its %s legs, woken (not restarted) in "
                 "%s of %s; sleep-mode downtime at the %g s drain: %s (target at most %g s "
                 "both ways, every leg woken, none crashed: %s)." % (
                     judged["sleep_crashed"], judged["sleep_legs"], judged["sleep_woken"],
                     judged["sleep_legs"], judged["judged_drain_s"],
                     seconds or "not measured", judged["sleep_target_s"],
                     "met" if judged["sleep_met"] else "not met"))
    parts += ["", line]
    totals = {}
    for r in plain:
        crashed, runs = totals.get(r["approach"], (0, 0))
        totals[r["approach"]] = (crashed + r["crashed"], runs + r["runs"])
    parts += ["", "vLLM crashed in memory profiling: %s. Downtime: the prober's view (every "
              "%.1f s), crashed legs left out of the medians; x script = role / script in the "
              "same cell. vLLM profiling window %.1f s, weights %.1f s; script sleep %d s; "
              "role variables: %s. %s" % (
                  "; ".join("%s %d of %d switches to ingestion" % (a, c, n)
                            for a, (c, n) in sorted(totals.items())),
                  PROBE_INTERVAL, PROFILE_S, LOAD_S, SCRIPT_SLEEP_S,
                  ", ".join(result["settings"].get("role_extra_vars") or []) or "defaults",
                  "Measured on %s CPUs (load average %s), commit %s, %s, in %.0f s." % (
                      result["machine"]["cpus"], result["machine"]["load"],
                      result["machine"]["commit"],
                      result["machine"]["date"], result.get("seconds") or 0))]
    if judged["sleep_met"] is not None:
        parts += ["", "### Sleep-mode switch on %s, next to the role's stop/start (same run)"
                  % result["host"], "", sleep_table(rows), "",
                  "*sleep*: the role with `sleep: true` on vllm and ollama (vLLM parked and "
                  "woken, Ollama's model unloaded and loaded again, Docling stopped and "
                  "started). Its rows are judged by a stricter criterion than stop/start's "
                  "health 200: chat is served when Ollama's /api/ps lists %s, ingestion when "
                  "vLLM's /health is 200 and /is_sleeping says false (or 404) and Docling's "
                  "/health is 200; so x stop/start overstates the sleep path's share. "
                  "*vLLM crashed*: for sleep, legs in both directions whose vLLM logged the "
                  "profiling assertion or an illegal memory access, or stopped running (for "
                  "stop/start, switches to ingestion with the profiling assertion, as above). "
                  "*vLLM woken*: legs whose vLLM container kept its StartedAt (not restarted). "
                  "vLLM sleep timings: %s." % (
                      OLLAMA_MODEL, ", ".join("%s=%s" % (k[len("GPUFLEET_STANDIN_VLLM_"):], v)
                                              for k, v in sorted(VLLM_SLEEP_ENV.items())))]
    if result.get("skipped"):
        parts += ["", "Not run, the time budget (%.0f s) being spent: %s." % (
            result["settings"]["budget_s"], "; ".join(
                "%s at start %g s, drain %g s" % (c["approach"], c["startup_s"], c["drain_s"])
                for c in result["skipped"]))]
    return "\n".join(parts)


# ---- the lab ------------------------------------------------------------------------------

def sh(script, **kw):
    return _common.host_sh(HOST, script, **kw)


def gpu_state():
    return json.loads(sh("python3 -", input_text=GPU_STATE).stdout)


def wait_idle(timeout=60.0):
    """Until no freed allocation still counts (the previous leg's drain is over)."""
    deadline = time.time() + timeout
    while True:
        state = gpu_state()
        if state["draining"] == 0:
            return state
        if time.time() > deadline:
            raise RuntimeError("GPU memory still draining after %.0f s: %r" % (timeout, state))
        time.sleep(0.3)


def set_drain_delay(seconds):
    sh("s=/etc/gpufleet-nvml/state; sed 's/^drain_delay .*/drain_delay %s/' $s > $s.tmp; "
       "mv $s.tmp $s; grep -qx 'drain_delay %s' $s" % (seconds, seconds))


def vllm_env(startup):
    return {"GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "%g" % startup,
            "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "%g" % LOAD_S,
            "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "%g" % PROFILE_S}


def role_vars(startup, directory, sleep=False):
    """-e @file: the services role's default catalog with this vLLM's model and timings and
    Ollama's model; with ``sleep``, vllm and ollama with `sleep: true` and vLLM with the
    stand-in's sleep timings too (the sleep approach)."""
    with open(os.path.join(_common.ROOT, "roles", "services", "defaults", "main.yml"),
              encoding="utf-8") as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    for entry in catalog.values():
        for volume in entry.get("volumes") or []:
            volume["source"] = volume["source"].replace(
                "{{ services_models_dir }}", "/srv/gpufleet/models/ollama")
    catalog["vllm"].update(model=VLLM_MODEL, environment=vllm_env(startup))
    catalog["ollama"].update(model=OLLAMA_MODEL)
    catalog["ollama"]["environment"]["DEFAULT_OLLAMA_MODEL"] = OLLAMA_MODEL
    if sleep:
        catalog["vllm"]["environment"].update(VLLM_SLEEP_ENV)
        catalog["vllm"]["sleep"] = True
        catalog["ollama"]["sleep"] = True
    path = os.path.join(directory, "vars-%s%g.json" % ("sleep-" if sleep else "", startup))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"services_catalog": catalog, "services_placement_options": MANAGED,
                   "compose_verify_timeout": HEALTH_TIMEOUT_S}, handle)
    return "@" + path


def playbook(mode, extra_vars, more=()):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="1",
               ANSIBLE_CONFIG=os.path.join(_common.ROOT, "ansible.cfg"))
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
         os.path.join(_common.ROOT, "inventory", "lab"),
         os.path.join(_common.ROOT, "playbooks", "switch_mode.yml"), "--limit", HOST, "-v",
         "-e", "inference_mode=%s" % mode, "-e", extra_vars]
        + [arg for item in more for arg in ("-e", item)],
        cwd=_common.ROOT, env=env, capture_output=True, text=True, check=False, timeout=600)


def vllm_crashed(since, project=PROJECT, pattern=PROFILING):
    logs = sh("docker logs --since %d %s-vllm-1 2>&1 || true" % (int(since) - 1, project),
              check=False).stdout
    return bool(pattern.search(logs))


def vllm_container():
    """(status, StartedAt) of the role's vLLM container, None when there is none."""
    return parse_started(sh("docker inspect -f '{{.State.Status}} {{.State.StartedAt}}' "
                            "%s-vllm-1 2>/dev/null || true" % PROJECT, check=False).stdout)


def probe_rows():
    return parse_probe(sh("cat /root/bench-probe.log", check=False).stdout)


def sleep_switch(new, extra_vars, more=()):
    """The sleep-mode leg: switch_mode.yml with the sleep catalog (the role parks the leaving
    engines: vLLM /sleep, Ollama's models unloaded with keep_alive 0; waits for the memory
    they free; wakes the entering ones). Returns (outcome, record) as the role's branch of
    leg() does; leg() notes whether vLLM was woken, not restarted."""
    done = playbook(new, extra_vars, more)
    outcome = "ok" if done.returncode == 0 else "failed: %s" % done.stdout[-2000:]
    return outcome, {"drain_wait_s": drain_wait_s(done.stdout)}


def leg(approach, old, new, extra_vars, startup, drain, run, more=()):
    before = vllm_container() if approach == "sleep" else None
    started = time.time()
    record = {}
    if approach == "sleep":
        outcome, record = sleep_switch(new, extra_vars, more)
    elif approach == "role":
        done = playbook(new, extra_vars, more)
        outcome = "ok" if done.returncode == 0 else "failed: %s" % done.stdout[-2000:]
        record = {"drain_wait_s": drain_wait_s(done.stdout)}
    else:
        urls = " ".join(MODES[new].values())
        out = sh(SCRIPT % {"dir": SCRIPT_DIR, "leaving": " ".join(MODES[old]),
                           "entering": " ".join(MODES[new]), "sleep": SCRIPT_SLEEP_S,
                           "timeout": HEALTH_TIMEOUT_S, "urls": urls,
                           "project": SCRIPT_PROJECT},
                 check=False).stdout.strip()
        outcome = "ok" if out == "READY" else out
    ended = time.time()
    time.sleep(2 * PROBE_INTERVAL + 0.3)  # the prober's last lines of this leg
    if approach == "sleep":
        after = vllm_container()
        record.update(vllm_before=before, vllm_after=after, woken=was_woken(before, after))
        # either direction: a request that reaches a parked vLLM ends it
        crashed = vllm_crashed(started, PROJECT, SLEEP_CRASH) or (
            after is not None and after[0] != "running")
    else:
        crashed = new == "ingestion" and vllm_crashed(
            started, SCRIPT_PROJECT if approach == "script" else PROJECT)
    value = downtime(probe_rows(), old, new, started, ended + 0.3, criterion(approach))
    entry = dict(record, approach=approach, startup_s=startup, drain_s=drain, run=run,
                 to=new, outcome=outcome, crashed=crashed, wall_s=ended - started,
                 downtime_s=None if crashed else value, criterion=criterion(approach))
    sys.stderr.write("switch: %-6s start %-4g drain %-4g run %d -> %-9s %s downtime %s "
                     "(%.1f s)%s\n" % (approach, startup, drain, run, new,
                                       "CRASHED" if crashed else outcome,
                                       _common.fmt(entry["downtime_s"]), entry["wall_s"],
                                       "" if approach != "sleep" else
                                       " woken" if entry["woken"] else " NOT WOKEN"))
    return entry


def script_project():
    """Write the script's compose project from the role's rendered one (the services of the
    mode it runs now, ``docker compose config``) into SCRIPT_DIR, adding to what is there."""
    text = sh("cd %s && docker compose config --format json" % PROJECT_DIR).stdout
    services = json.loads(text)["services"]
    found = sh("cat %s/compose.json 2>/dev/null || echo '{}'" % SCRIPT_DIR).stdout
    doc = json.loads(found) or {"name": SCRIPT_PROJECT, "services": {}}
    for mode, names in MODES.items():
        for name in names:
            if name in services:
                service = dict(services[name], profiles=[mode])
                service.pop("networks", None)
                doc["services"][name] = service
    sh("mkdir -p %s && cat > %s/compose.json" % (SCRIPT_DIR, SCRIPT_DIR),
       input_text=json.dumps(doc))
    sh("cd %s && ln -sf compose.json compose.yml" % SCRIPT_DIR)


def use(approach, extra_vars, more=()):
    """Only one project holds the ports: the role's (converged to chat) or the script's (chat
    up). The sleep approach converges chat, ingestion, chat: vLLM's first start is cold, so
    that every measured leg parks and wakes."""
    if approach == "script":
        # every profile: the project's .env enables only the current mode's, and a parked
        # engine belongs to the other one
        sh("cd %s && docker compose --profile '*' stop -t 10 >/dev/null 2>&1 || true"
           % PROJECT_DIR)
        sh("cd %s && docker compose --profile chat up -d ollama >/dev/null" % SCRIPT_DIR)
    else:
        sh("cd %s && docker compose --profile chat --profile ingestion down -t 10 "
           ">/dev/null 2>&1 || true" % SCRIPT_DIR)
        for mode in ("chat", "ingestion", "chat") if approach == "sleep" else ("chat",):
            done = playbook(mode, extra_vars, more)
            if done.returncode != 0:
                raise RuntimeError("%s: switch to %s failed:\n%s"
                                   % (approach, mode, done.stdout[-3000:]))
    wait_idle()
    sh("for i in $(seq 60); do curl -sf -o /dev/null http://127.0.0.1:11434/api/version "
       "&& exit 0; sleep 0.5; done; exit 1")


def cycle(approach, extra_vars, startup, drain, run, more=()):
    wait_idle()
    # chat traffic: the model is loaded and holds its memory (the role also preloads it)
    sh("curl -sf -o /dev/null --max-time 60 http://127.0.0.1:11434/api/generate "
       "-d '{\"model\": \"%s\", \"keep_alive\": -1}'" % OLLAMA_MODEL)
    first = leg(approach, "chat", "ingestion", extra_vars, startup, drain, run, more)
    second = leg(approach, "ingestion", "chat", extra_vars, startup, drain, run, more)
    return [first, second]


def run_lab(args):
    """The legs run, and the cycles left out because the time budget was spent."""
    legs, skipped = [], []
    began = time.time()
    with _common.lab_host(HOST), tempfile.TemporaryDirectory() as directory:
        sh("cat > /root/bench-probe.py", input_text=probe_script())
        sh("rm -f /root/bench-probe.log; nohup python3 /root/bench-probe.py "
           "/root/bench-probe.log %s >/dev/null 2>&1 &" % " ".join(
               shlex.quote(arg) for arg in probe_args()))
        try:
            for group, startup in enumerate(args.startups, 1):
                # each startup time gets its share of the budget, spent on the drains in
                # the order given (the default puts the telling ones first)
                deadline = began + args.budget * group / len(args.startups)
                extra = role_vars(startup, directory)
                extras = {"sleep": role_vars(startup, directory, sleep=True)}
                set_drain_delay(1.0)
                # renders this vLLM's timings; the script's project takes each mode's services
                # as the role renders them
                sh("rm -rf %s" % SCRIPT_DIR)
                for mode in ("ingestion", "chat"):
                    done = playbook(mode, extra, args.role_extra_vars)
                    if done.returncode != 0:
                        raise RuntimeError("switch to %s failed:\n%s"
                                           % (mode, done.stdout[-3000:]))
                    script_project()
                for approach in ["role"] + (["sleep"] if args.sleep else []) + ["script"]:
                    use(approach, extras.get(approach, extra), args.role_extra_vars)
                    for drain in args.drains:
                        if drain not in {"role": args.role_drains, "script": args.drains,
                                         "sleep": args.sleep_drains}[approach]:
                            continue
                        set_drain_delay(drain)
                        for run in range(1, args.runs + 1):
                            if time.time() > deadline:
                                skipped.append({"approach": approach, "startup_s": startup,
                                                "drain_s": drain, "run": run})
                                continue
                            legs += cycle(approach, extras.get(approach, extra), startup,
                                          drain, run, args.role_extra_vars)
                    if approach == "sleep":
                        # the role's catalog again, its parked vLLM removed while Ollama runs:
                        # left stopped by the script's `compose stop`, its later removal
                        # (`down vllm`) would take the project's network from under Ollama
                        use("role", extra, args.role_extra_vars)
                use("role", extra, args.role_extra_vars)
        finally:
            sh("kill $(cat /root/bench-probe.log.pid) 2>/dev/null || true", check=False)
    return legs, skipped


# ---- smoke: a recorded timeline, no lab ---------------------------------------------------

# Columns: t, then COLUMNS (ollama vllm docling ollama_loaded vllm_awake).
SAMPLE = """\
100.0 1 0 0 1 0
100.1 1 0 0 1 0
100.2 0 0 0 0 0
104.0 0 0 0 0 0
104.1 0 1 0 0 1
104.2 0 1 1 0 1
104.3 0 1 1 0 1
109.0 0 0 0 0 0
109.1 1 0 0 1 0
"""
# A sleep cycle: the parked engines keep answering their health URLs (vLLM asleep, Ollama
# without its model), so only the sleep criterion sees the downtime.
SLEEP_SAMPLE = """\
200.0 1 1 0 1 0
200.1 1 1 0 1 0
200.2 1 1 0 0 0
200.9 1 1 1 0 0
201.8 1 1 1 0 1
201.9 1 1 1 0 1
202.0 1 1 0 0 0
203.5 1 1 0 0 0
204.6 1 1 0 1 0
"""


def smoke():
    rows = parse_probe(SAMPLE)
    to_ingestion = downtime(rows, "chat", "ingestion", 100.0, 105.0)
    to_chat = downtime(rows, "ingestion", "chat", 104.25, 110.0)
    never = downtime(rows, "chat", "ingestion", 100.0, 104.15)
    if (round(to_ingestion, 3), round(to_chat, 3), never) != (4.1, 4.8, None):
        raise SystemExit("switch smoke: downtime analysis is wrong: %r"
                         % ((to_ingestion, to_chat, never),))
    rows = parse_probe(SLEEP_SAMPLE)
    judged = [downtime(rows, old, new, start, end, served)
              for served in ("sleep", "health")
              for old, new, start, end in (("chat", "ingestion", 200.0, 201.95),
                                           ("ingestion", "chat", 201.85, 205.0))]
    judged = [None if x is None else round(x, 3) for x in judged]
    if judged != [1.7, 2.7, 0.7, None]:
        raise SystemExit("switch smoke: the sleep criterion's analysis is wrong: %r" % judged)
    sleep_to_ingestion, sleep_to_chat = judged[:2]
    legs = []
    for approach, crashed, drain in (("role", False, 10.0), ("script", True, 10.0),
                                     ("script", False, 10.0), ("role", False, 0.5),
                                     ("sleep", False, 0.5)):
        sleep = approach == "sleep"
        extra = {"woken": True, "criterion": "sleep"} if sleep else {}
        legs.append(dict(extra, approach=approach, startup_s=0.5, drain_s=drain,
                         to="ingestion", crashed=crashed, wall_s=5.0, run=1,
                         downtime_s=None if crashed else
                         sleep_to_ingestion if sleep else to_ingestion))
        legs.append(dict(extra, approach=approach, startup_s=0.5, drain_s=drain, to="chat",
                         crashed=False, downtime_s=sleep_to_chat if sleep else to_chat,
                         wall_s=5.0, run=1))
    return legs


def _floats(text):
    return tuple(float(x) for x in text.split(",") if x.strip())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="no lab: check the analysis on a recorded timeline")
    parser.add_argument("--drains", type=_floats, default=DRAINS,
                        help="drain delays, seconds (default %s)" % ",".join(map(str, DRAINS)))
    parser.add_argument("--startups", type=_floats, default=STARTUPS,
                        help="vLLM startup times, seconds (default %s)"
                        % ",".join(map(str, STARTUPS)))
    parser.add_argument("--role-drains", type=_floats, default=ROLE_DRAINS,
                        help="drain delays at which the role runs too (default %s)"
                        % ",".join(map(str, ROLE_DRAINS)))
    parser.add_argument("--runs", type=int, default=1, help="cycles per cell (default 1)")
    parser.add_argument("--role-extra-vars", action="append", default=[], metavar="VARS",
                        help="extra variables for the role's playbook runs (ansible-playbook "
                        "-e VARS), e.g. compose_drain_timeout=60; repeatable")
    parser.add_argument("--no-sleep", dest="sleep", action="store_false",
                        help="leave out the sleep-mode switch (the role with `sleep: true` on "
                        "vllm and ollama, judged by the stricter criterion), which runs by "
                        "default at the sleep drains")
    parser.add_argument("--sleep-drains", type=_floats, default=SLEEP_DRAINS,
                        help="drain delays at which the sleep-mode switch runs (default %s)"
                        % ",".join(map(str, SLEEP_DRAINS)))
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds after which no new cycle starts (default %d); the "
                        "cycles left out are listed" % BUDGET_S)
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    legs, skipped = (smoke(), []) if args.quick else run_lab(args)
    result = {"benchmark": "switch", "quick": args.quick, "host": HOST,
              "machine": _common.machine(),
              "settings": {"drains": list(args.drains), "startups": list(args.startups),
                           "role_drains": list(args.role_drains), "runs": args.runs,
                           "vllm_model": VLLM_MODEL, "vllm_load_s": LOAD_S,
                           "vllm_profile_s": PROFILE_S, "script_sleep_s": SCRIPT_SLEEP_S,
                           "probe_interval_s": PROBE_INTERVAL, "budget_s": args.budget,
                           "role_extra_vars": list(args.role_extra_vars),
                           "sleep": args.sleep, "vllm_sleep_env": VLLM_SLEEP_ENV,
                           "sleep_target_s": SLEEP_TARGET_S, "probe_columns": list(COLUMNS),
                           "served": {k: {m: list(c) for m, c in v.items()}
                                      for k, v in SERVED.items()}},
              "legs": legs, "cells": summarize(legs), "skipped": skipped}
    result["verdict"] = verdict(result["cells"])
    result["seconds"] = time.perf_counter() - started
    _common.write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
