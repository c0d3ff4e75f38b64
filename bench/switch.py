# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of a mode switch on one lab host: chat -> ingestion -> chat (seed 003).

    python bench/switch.py                 # lab-spark, the grid in bench/README.md (~10 min)
    python bench/switch.py --runs 3 --role-drains 0.5,2,5,10,15   # the full grid (~35 min)
    python bench/switch.py --quick         # no lab: the analysis on a recorded timeline

Two approaches on the same compose project (the one roles/mode_switch renders), the same
stand-in servers and the same simulated driver:
  role    playbooks/switch_mode.yml: stop, wait until the GPU memory has really drained
          (gpu_drain_wait), start, wait for health; rollback on failure.
  script  seed 003's helper: `compose stop`, a fixed `sleep 5`, `compose up -d`, poll health.
The grid: the driver's drain delay (seconds a freed allocation still counts, lab_drain_delay)
and the stand-in vLLM's startup time (seconds before its free-memory snapshot). vLLM's
profiling window then lasts PROFILE_S: memory freed inside it crashes vLLM with its real
AssertionError (lab/servers/vllm.py), as in seed 003.

Downtime is measured from outside both approaches: a prober inside the host asks every
PROBE_INTERVAL s for Ollama's /api/tags (chat) and vLLM's and Docling's /health (ingestion).
A leg's downtime = first probe at which every service of the new mode answers 200 - last
probe at which every service of the old mode did. A leg whose vLLM exits with the
profiling assertion is "crashed": its mode never comes up without a person.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

HOST = "lab-spark"
PROJECT_DIR = "/srv/gpufleet/modes"
PROJECT = "gpufleet-modes"
OLLAMA_MODEL = "qwen2.5:7b"
# A small vLLM model (about 1 GiB of weights, less than the 4.9 GiB Ollama's qwen2.5:7b
# frees), so that a drain ending inside the profiling window grows free memory (seed 003).
VLLM_COMMAND = ["Qwen/Qwen2.5-0.5B-Instruct", "--gpu-memory-utilization", "0.5"]
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
SERVICES = ("ollama", "vllm", "docling")  # the prober's column order
PROFILING = re.compile(r"AssertionError: Error in memory profiling")
DRAINS = (0.5, 15.0, 10.0, 5.0, 2.0)
STARTUPS = (0.5, 5.0)
ROLE_DRAINS = (0.5, 15.0)
BUDGET_S = 540

PROBE = r"""
import os, sys, time, urllib.request
urls = sys.argv[2:]
with open(sys.argv[1] + ".pid", "w") as handle:
    handle.write(str(os.getpid()))
out = open(sys.argv[1], "a", buffering=1)
while True:
    t = time.time()
    row = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                row.append("1" if answer.status == 200 else "0")
        except Exception:
            row.append("0")
    out.write("%.3f %s\n" % (t, " ".join(row)))
    time.sleep(max(0.0, %(interval)s - (time.time() - t)))
""".replace("%(interval)s", repr(PROBE_INTERVAL))

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
    """[(t, {service: ok})] from the prober's lines."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 1 + len(SERVICES):
            continue
        rows.append((float(parts[0]), {s: p == "1" for s, p in zip(SERVICES, parts[1:])}))
    return rows


def downtime(rows, old, new, start, end):
    """Seconds between the last probe with every ``old`` service up and the first one after
    it with every ``new`` service up, within [start, end]; None when ``new`` never came up
    or was up from the start (a role run that had already rolled back)."""
    window = [(t, up) for t, up in rows if start <= t <= end]
    came = next((i for i, (_t, up) in enumerate(window) if all(up[s] for s in MODES[new])),
                None)
    if came is None or came == 0:
        return None  # never came up, or was up already (nothing was switched)
    last_old = None
    for t, up in window[:came]:
        if all(up[s] for s in MODES[old]):
            last_old = t
    if last_old is None:
        last_old = start  # the old mode was already down when the leg began
    return window[came][0] - last_old


def summarize(legs):
    """One row per (approach, startup, drain): medians and crash counts of each leg."""
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
            "crashed": crashed,
            "crash_rate": crashed / float(len(there)) if there else None,
            "to_ingestion_s": _common.median(
                [g["downtime_s"] for g in there if not g["crashed"]]),
            "to_chat_s": _common.median([g["downtime_s"] for g in back]),
            "cycle_s": _common.median([a["wall_s"] + b["wall_s"] for a, b in zip(there, back)]),
            "recorded_s": _common.median([g.get("recorded_downtime_s") for g in there]),
            "drain_wait_s": _common.median([g.get("drain_wait_s") for g in there]),
        })
    for row in rows:
        if row["approach"] != "role":
            continue
        peer = next((r for r in rows if r["approach"] == "script"
                     and r["startup_s"] == row["startup_s"] and r["drain_s"] == row["drain_s"]),
                    None)
        if peer is not None:
            row["ratio_to_script_ingestion"] = _common.ratio(row["to_ingestion_s"],
                                                             peer["to_ingestion_s"])
            row["ratio_to_script_chat"] = _common.ratio(row["to_chat_s"], peer["to_chat_s"])
    return rows


def markdown(result):
    f = _common.fmt
    rows = result["cells"]
    parts = ["### Mode switch on %s: chat -> ingestion -> chat" % result["host"], ""]
    parts.append(_common.table(
        ["vLLM start s", "drain delay s", "approach", "runs", "vLLM crashed",
         "chat->ingestion downtime s (x script)", "ingestion->chat downtime s "
         "(x script)", "role's drain wait s", "cycle wall s"],
        [[f(r["startup_s"], "%g"), f(r["drain_s"], "%g"), r["approach"], str(r["runs"]),
          "%d / %d" % (r["crashed"], r["runs"]),
          (f(r["to_ingestion_s"]) if r["runs"] > r["crashed"] else "never up") +
          ("" if r.get("ratio_to_script_ingestion") is None
           else " (x%.2f)" % r["ratio_to_script_ingestion"]),
          f(r["to_chat_s"]) + ("" if r.get("ratio_to_script_chat") is None
                               else " (x%.2f)" % r["ratio_to_script_chat"]),
          f(r["drain_wait_s"]), f(r["cycle_s"], "%.1f")]
         for r in sorted(rows, key=lambda r: (r["startup_s"], r["drain_s"], r["approach"]))]))
    totals = {}
    for r in rows:
        crashed, runs = totals.get(r["approach"], (0, 0))
        totals[r["approach"]] = (crashed + r["crashed"], runs + r["runs"])
    parts += ["", "vLLM crashed in memory profiling: %s. Downtime: the prober's view (every "
              "%.1f s), crashed legs left out of the medians; (xN) = role / script in the same "
              "cell. vLLM profiling window %.1f s, weights %.1f s; script sleep %d s. %s" % (
                  "; ".join("%s %d of %d switches to ingestion" % (a, c, n)
                            for a, (c, n) in sorted(totals.items())),
                  PROBE_INTERVAL, PROFILE_S, LOAD_S, SCRIPT_SLEEP_S,
                  "Measured on %s CPUs (load average %s), commit %s, %s, in %.0f s." % (
                      result["machine"]["cpus"], result["machine"]["load"],
                      result["machine"]["commit"],
                      result["machine"]["date"], result.get("seconds") or 0))]
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


def role_vars(startup, directory):
    """-e @file: the role's default services with this vLLM's command and timings."""
    with open(os.path.join(_common.ROOT, "roles", "mode_switch", "defaults", "main.yml"),
              encoding="utf-8") as handle:
        services = yaml.safe_load(handle)["mode_switch_services"]
    services["vllm"]["environment"] = vllm_env(startup)
    services["vllm"]["command"] = VLLM_COMMAND
    path = os.path.join(directory, "vars-%g.json" % startup)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"mode_switch_services": services,
                   "mode_switch_health_timeout": HEALTH_TIMEOUT_S}, handle)
    return "@" + path


def playbook(mode, extra_vars):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="1",
               ANSIBLE_CONFIG=os.path.join(_common.ROOT, "ansible.cfg"))
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
         os.path.join(_common.ROOT, "inventory", "lab"),
         os.path.join(_common.ROOT, "playbooks", "switch_mode.yml"), "--limit", HOST,
         "-e", "inference_mode=%s" % mode, "-e", extra_vars],
        cwd=_common.ROOT, env=env, capture_output=True, text=True, check=False, timeout=600)


def vllm_crashed(since):
    logs = sh("docker logs --since %d %s-vllm-1 2>&1 || true" % (int(since) - 1, PROJECT),
              check=False).stdout
    return bool(PROFILING.search(logs))


def probe_rows():
    return parse_probe(sh("cat /root/bench-probe.log", check=False).stdout)


def leg(approach, old, new, extra_vars, startup, drain, run):
    started = time.time()
    record = {}
    if approach == "role":
        done = playbook(new, extra_vars)
        state = json.loads(sh("cat /etc/gpufleet/mode.json").stdout)
        outcome = "ok" if done.returncode == 0 else "failed: %s" % state.get("failure")
        record = {"recorded_downtime_s": float(state["downtime_s"]),
                  "drain_wait_s": float(state["drain_s"]), "role_outcome": state["outcome"]}
    else:
        urls = " ".join(MODES[new].values())
        out = sh(SCRIPT % {"dir": PROJECT_DIR, "leaving": " ".join(MODES[old]),
                           "entering": " ".join(MODES[new]), "sleep": SCRIPT_SLEEP_S,
                           "timeout": HEALTH_TIMEOUT_S, "urls": urls, "project": PROJECT},
                 check=False).stdout.strip()
        outcome = "ok" if out == "READY" else out
    ended = time.time()
    time.sleep(2 * PROBE_INTERVAL + 0.3)  # the prober's last lines of this leg
    crashed = new == "ingestion" and vllm_crashed(started)
    value = downtime(probe_rows(), old, new, started, ended + 0.3)
    entry = dict(record, approach=approach, startup_s=startup, drain_s=drain, run=run,
                 to=new, outcome=outcome, crashed=crashed, wall_s=ended - started,
                 downtime_s=None if crashed else value)
    sys.stderr.write("switch: %-6s start %-4g drain %-4g run %d -> %-9s %s downtime %s "
                     "(%.1f s)\n" % (approach, startup, drain, run, new,
                                     "CRASHED" if crashed else outcome,
                                     _common.fmt(entry["downtime_s"]), entry["wall_s"]))
    return entry


def cycle(approach, extra_vars, startup, drain, run):
    wait_idle()
    # chat traffic: the model is loaded and holds its memory (the role also preloads it)
    sh("curl -sf -o /dev/null --max-time 60 http://127.0.0.1:11434/api/generate "
       "-d '{\"model\": \"%s\", \"keep_alive\": -1}'" % OLLAMA_MODEL)
    first = leg(approach, "chat", "ingestion", extra_vars, startup, drain, run)
    second = leg(approach, "ingestion", "chat", extra_vars, startup, drain, run)
    return [first, second]


def run_lab(args):
    """The legs run, and the cycles left out because the time budget was spent."""
    legs, skipped = [], []
    began = time.time()
    with _common.lab_host(HOST), tempfile.TemporaryDirectory() as directory:
        sh("cat > /root/bench-probe.py", input_text=PROBE)
        sh("rm -f /root/bench-probe.log; nohup python3 /root/bench-probe.py "
           "/root/bench-probe.log %s >/dev/null 2>&1 &" % " ".join(
               MODES["chat"]["ollama"] if s == "ollama" else MODES["ingestion"][s]
               for s in SERVICES))
        try:
            for group, startup in enumerate(args.startups, 1):
                # each startup time gets its share of the budget, spent on the drains in
                # the order given (the default puts the telling ones first)
                deadline = began + args.budget * group / len(args.startups)
                extra = role_vars(startup, directory)
                set_drain_delay(1.0)
                done = playbook("chat", extra)  # renders this vLLM's timings, chat mode
                if done.returncode != 0:
                    raise RuntimeError("switch to chat failed:\n" + done.stdout[-3000:])
                for drain in args.drains:
                    set_drain_delay(drain)
                    for run in range(1, args.runs + 1):
                        approaches = (["role"] if drain in args.role_drains else []) + \
                            ["script"]
                        for approach in approaches:
                            if time.time() > deadline:
                                skipped.append({"approach": approach, "startup_s": startup,
                                                "drain_s": drain, "run": run})
                                continue
                            legs += cycle(approach, extra, startup, drain, run)
        finally:
            sh("kill $(cat /root/bench-probe.log.pid) 2>/dev/null || true", check=False)
    return legs, skipped


# ---- smoke: a recorded timeline, no lab ---------------------------------------------------

SAMPLE = """\
100.0 1 0 0
100.1 1 0 0
100.2 0 0 0
104.0 0 0 0
104.1 0 1 0
104.2 0 1 1
104.3 0 1 1
109.0 0 0 0
109.1 1 0 0
"""


def smoke():
    rows = parse_probe(SAMPLE)
    to_ingestion = downtime(rows, "chat", "ingestion", 100.0, 105.0)
    to_chat = downtime(rows, "ingestion", "chat", 104.25, 110.0)
    never = downtime(rows, "chat", "ingestion", 100.0, 104.15)
    if (round(to_ingestion, 3), round(to_chat, 3), never) != (4.1, 4.8, None):
        raise SystemExit("switch smoke: downtime analysis is wrong: %r"
                         % ((to_ingestion, to_chat, never),))
    legs = []
    for approach, crashed in (("role", False), ("script", True), ("script", False)):
        legs.append({"approach": approach, "startup_s": 0.5, "drain_s": 10.0, "to": "ingestion",
                     "crashed": crashed, "downtime_s": None if crashed else to_ingestion,
                     "wall_s": 5.0, "run": 1})
        legs.append({"approach": approach, "startup_s": 0.5, "drain_s": 10.0, "to": "chat",
                     "crashed": False, "downtime_s": to_chat, "wall_s": 5.0, "run": 1})
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
                           "vllm_command": VLLM_COMMAND, "vllm_load_s": LOAD_S,
                           "vllm_profile_s": PROFILE_S, "script_sleep_s": SCRIPT_SLEEP_S,
                           "probe_interval_s": PROBE_INTERVAL, "budget_s": args.budget},
              "legs": legs, "cells": summarize(legs), "skipped": skipped}
    result["seconds"] = time.perf_counter() - started
    _common.write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
