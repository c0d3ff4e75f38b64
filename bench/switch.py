# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of a mode switch on one lab host: chat -> ingestion -> chat (seed 003).

    python bench/switch.py                 # lab-spark, the grid in bench/README.md (~10 min)
    python bench/switch.py --runs 3 --role-drains 0.5,2,5,10,15   # the full grid (~35 min)
    python bench/switch.py --quick         # no lab: the analysis on a recorded timeline
    python bench/switch.py --role-extra-vars compose_drain_timeout=60   # role variables

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

Downtime is measured from outside both approaches: a prober inside the host asks every
PROBE_INTERVAL s for Ollama's /api/tags (chat) and vLLM's and Docling's /health (ingestion).
A leg's downtime = first probe at which every service of the new mode answers 200 - last
probe at which every service of the old mode did. A leg whose vLLM exits with the
profiling assertion is "crashed": its mode never comes up without a person.

The issue's judgement is the role's downtime over the script's in the same cell (the
"x script" columns) at the 0.5 s drain, both directions, and the role's vLLM crashes over the
whole grid; the line under the table states both.

--sleep adds rows for a sleep-mode switch (vLLM put to sleep and woken, Ollama's models
unloaded, instead of stop and start); sleep_switch() is where that leg goes, and until it
exists the flag stops with an error instead of printing numbers.
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
DRAIN_WAITED = re.compile(r"Wait until the GPU memory of the removed services has drained\] "
                          r"\*+\nok: \[[^\]]+\] => .*?\"waited_s\": ([0-9.]+)")
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
# The drain at which the issue compares the role's downtime with the script's.
JUDGED_DRAIN_S = 0.5
# sleep_switch() is written: --sleep may run.
SLEEP_READY = False

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
        if row["approach"] == "script":
            continue
        peer = next((r for r in rows if r["approach"] == "script"
                     and r["startup_s"] == row["startup_s"] and r["drain_s"] == row["drain_s"]),
                    None)
        if peer is not None:
            row["ratio_to_script_ingestion"] = _common.ratio(row["to_ingestion_s"],
                                                             peer["to_ingestion_s"])
            row["ratio_to_script_chat"] = _common.ratio(row["to_chat_s"], peer["to_chat_s"])
    return rows


def verdict(rows, judged_drain=JUDGED_DRAIN_S):
    """What the issue judges: the role's vLLM crashes over the grid, and its downtime over
    the script's at ``judged_drain`` in both directions (at most 1.0x), per startup time."""
    role = [r for r in rows if r["approach"] == "role"]
    judged = [r for r in role if r["drain_s"] == judged_drain]
    ratios = [r.get(key) for r in judged
              for key in ("ratio_to_script_ingestion", "ratio_to_script_chat")]
    return {
        "role_crashed": sum(r["crashed"] for r in role),
        "role_switches": sum(r["runs"] for r in role),
        "judged_drain_s": judged_drain,
        "ratios": {"%g" % r["startup_s"]: {"to_ingestion": r.get("ratio_to_script_ingestion"),
                                           "to_chat": r.get("ratio_to_script_chat")}
                   for r in judged},
        "ratios_met": bool(ratios) and all(x is not None and x <= 1.0 for x in ratios),
    }


def _ratio(value):
    return "-" if value is None else "x%.2f" % value


def markdown(result):
    f = _common.fmt
    rows = result["cells"]
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
         for r in sorted(rows, key=lambda r: (r["startup_s"], r["drain_s"], r["approach"]))]))
    judged = verdict(rows)
    ratios = "; ".join(
        "%s to ingestion, %s to chat at vLLM start %s s" % (
            _ratio(r["to_ingestion"]), _ratio(r["to_chat"]), startup)
        for startup, r in sorted(judged["ratios"].items(), key=lambda item: float(item[0])))
    parts += ["", "**Judged** (role vs script): vLLM crashed in %d of the role's %d switches to "
              "ingestion; role / script downtime at the %g s drain: %s (target at most x1.00 "
              "both ways: %s)." % (
                  judged["role_crashed"], judged["role_switches"], judged["judged_drain_s"],
                  ratios or "not measured", "met" if judged["ratios_met"] else "not met")]
    totals = {}
    for r in rows:
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
    """-e @file: the services role's default catalog with this vLLM's model and timings and
    Ollama's model."""
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
    path = os.path.join(directory, "vars-%g.json" % startup)
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


def vllm_crashed(since, project=PROJECT):
    logs = sh("docker logs --since %d %s-vllm-1 2>&1 || true" % (int(since) - 1, project),
              check=False).stdout
    return bool(PROFILING.search(logs))


def probe_rows():
    return parse_probe(sh("cat /root/bench-probe.log", check=False).stdout)


def sleep_switch(new, extra_vars, more=()):
    """The sleep-mode leg: the leaving engines put to sleep (vLLM /sleep, Ollama's models
    unloaded with keep_alive 0), their memory waited for, the entering ones woken. Returns
    (outcome, record) as the role's branch of leg() does. Not written yet: --sleep refuses
    to run until it is (SLEEP_READY)."""
    raise NotImplementedError("sleep-mode switch legs are not implemented yet")


def leg(approach, old, new, extra_vars, startup, drain, run, more=()):
    started = time.time()
    record = {}
    if approach == "sleep":
        outcome, record = sleep_switch(new, extra_vars, more)
    elif approach == "role":
        done = playbook(new, extra_vars, more)
        outcome = "ok" if done.returncode == 0 else "failed: %s" % done.stdout[-2000:]
        waited = DRAIN_WAITED.search(done.stdout)
        record = {"drain_wait_s": float(waited.group(1)) if waited else None}
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
    crashed = new == "ingestion" and vllm_crashed(
        started, SCRIPT_PROJECT if approach == "script" else PROJECT)
    value = downtime(probe_rows(), old, new, started, ended + 0.3)
    entry = dict(record, approach=approach, startup_s=startup, drain_s=drain, run=run,
                 to=new, outcome=outcome, crashed=crashed, wall_s=ended - started,
                 downtime_s=None if crashed else value)
    sys.stderr.write("switch: %-6s start %-4g drain %-4g run %d -> %-9s %s downtime %s "
                     "(%.1f s)\n" % (approach, startup, drain, run, new,
                                     "CRASHED" if crashed else outcome,
                                     _common.fmt(entry["downtime_s"]), entry["wall_s"]))
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
    up)."""
    if approach == "script":
        sh("cd %s && docker compose stop -t 10 >/dev/null 2>&1 || true" % PROJECT_DIR)
        sh("cd %s && docker compose --profile chat up -d ollama >/dev/null" % SCRIPT_DIR)
    else:
        sh("cd %s && docker compose --profile chat --profile ingestion down -t 10 "
           ">/dev/null 2>&1 || true" % SCRIPT_DIR)
        done = playbook("chat", extra_vars, more)
        if done.returncode != 0:
            raise RuntimeError("switch to chat failed:\n" + done.stdout[-3000:])
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
                    use(approach, extra, args.role_extra_vars)
                    for drain in args.drains:
                        if approach != "script" and drain not in args.role_drains:
                            continue
                        set_drain_delay(drain)
                        for run in range(1, args.runs + 1):
                            if time.time() > deadline:
                                skipped.append({"approach": approach, "startup_s": startup,
                                                "drain_s": drain, "run": run})
                                continue
                            legs += cycle(approach, extra, startup, drain, run,
                                          args.role_extra_vars)
                use("role", extra, args.role_extra_vars)
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
    parser.add_argument("--role-extra-vars", action="append", default=[], metavar="VARS",
                        help="extra variables for the role's playbook runs (ansible-playbook "
                        "-e VARS), e.g. compose_drain_timeout=60; repeatable")
    parser.add_argument("--sleep", action="store_true",
                        help="also switch with sleep mode at the role's drains (not "
                        "implemented yet: stops with an error)")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds after which no new cycle starts (default %d); the "
                        "cycles left out are listed" % BUDGET_S)
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.sleep and not SLEEP_READY:
        parser.error("--sleep: the sleep-mode switch legs (sleep_switch) are not implemented "
                     "yet; no numbers are made up for them")
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
                           "sleep": args.sleep},
              "legs": legs, "cells": summarize(legs), "skipped": skipped}
    result["verdict"] = verdict(result["cells"])
    result["seconds"] = time.perf_counter() - started
    _common.write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
