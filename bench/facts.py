# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the cost of facts per host: gpu_facts against setup, NVML against nvidia-smi.

    python bench/facts.py              # lab-spark, the table in bench/README.md (1-2 minutes)
    python bench/facts.py --runs 30    # more runs per kind
    python bench/facts.py --quick      # no lab: both collectors in-process on the stand-ins

On the lab host (the real Ansible, the docker connection, the host's own python3):
  wall    one task as the controller times it (ansible.posix.json callback: task start to
          end), connection and module transfer included. The kinds are interleaved in one
          playbook, so drift on a noisy machine hits them alike.
  module  the module alone on the host: the AnsiballZ file Ansible left there
          (ANSIBLE_KEEP_REMOTE_FILES=1) run with the host's python3, timed on the host;
          interpreter start-up included, connection and controller excluded.
Kinds: gpu_facts with backend nvml, gpu_facts with backend nvidia-smi (the lab's stand-in
nvidia-smi, which prints what NVML reads), setup (default subsets) and setup with
gather_subset=min.

--quick (no lab, a few seconds): the two collectors in-process, `_nvml.read_gpus` on the
stand-in libnvidia-ml.so.1 (built with lab/nvml/build.sh) and `_nvidia_smi.collect` running
the stand-in tool of tests/stand_ins on a real H100 capture, one H100 each.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

HOST = "lab-spark"
KINDS = (
    ("gpu_facts nvml", "gpufleet.inference.gpu_facts", {"backend": "nvml"}),
    ("gpu_facts nvidia-smi", "gpufleet.inference.gpu_facts", {"backend": "nvidia-smi"}),
    ("setup", "ansible.builtin.setup", {}),
    ("setup min", "ansible.builtin.setup", {"gather_subset": ["min"]}),
)
REMOTE_TMP = "/root/.ansible/tmp"

TIMER = r"""
import json, subprocess, sys, time
runs = int(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    times = []
    for _run in range(runs):
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/python3", path], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        result = json.loads(done.stdout[done.stdout.index("{"):])
        if done.returncode != 0 or result.get("failed"):
            raise SystemExit("%s failed: %s" % (path, done.stdout[-500:] + done.stderr[-500:]))
    out[path] = times
print(json.dumps(out))
"""


def _playbook(directory, runs):
    tasks = []
    for run in range(1, runs + 1):
        for label, module, args in KINDS:
            tasks.append({"name": "%s #%d" % (label, run), module: args})
    path = os.path.join(directory, "facts-%d.yml" % runs)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump([{"name": "Facts cost", "hosts": HOST, "gather_facts": False,
                         "tasks": tasks}], handle, sort_keys=False)
    return path


def _ansible(playbook, **env):
    run_env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(_common.ROOT, "ansible.cfg"),
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", **env)
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
         os.path.join(_common.ROOT, "inventory", "lab"), playbook],
        cwd=_common.ROOT, env=run_env, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError("ansible-playbook %s failed (rc %d):\n%s\n%s" % (
            playbook, done.returncode, done.stdout[-3000:], done.stderr[-3000:]))
    return json.loads(done.stdout[done.stdout.index("{"):])


def _seconds(duration):
    def parse(text):
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parse(duration["end"]) - parse(duration["start"])).total_seconds()


def lab(runs):
    with _common.lab_host(HOST), tempfile.TemporaryDirectory() as directory:
        # 1. wall time per task, the kinds interleaved
        report = _ansible(_playbook(directory, runs))
        wall = {label: [] for label, _module, _args in KINDS}
        size = {}
        for task in report["plays"][0]["tasks"]:
            label = task["task"]["name"].rsplit(" #", 1)[0]
            result = task["hosts"][HOST]
            if result.get("failed"):
                raise RuntimeError("%s failed: %s" % (task["task"]["name"], result.get("msg")))
            wall[label].append(_seconds(task["task"]["duration"]))
            size[label] = len(json.dumps(result.get("ansible_facts", {}), sort_keys=True))
        # 2. the modules alone: the AnsiballZ files of one run of each kind, in task order
        _common.host_sh(HOST, "rm -rf %s/ansible-tmp-*" % REMOTE_TMP)
        _ansible(_playbook(directory, 1), ANSIBLE_KEEP_REMOTE_FILES="1")
        files = _common.host_sh(
            HOST, "ls -1tr -d %s/ansible-tmp-*/AnsiballZ_*.py" % REMOTE_TMP).stdout.split()
        if len(files) != len(KINDS):
            raise RuntimeError("expected %d AnsiballZ files on %s, found %r"
                               % (len(KINDS), HOST, files))
        timed = json.loads(_common.host_sh(
            HOST, "python3 - %d %s" % (runs, " ".join(files)), input_text=TIMER).stdout)
        module = {label: timed[path] for (label, _m, _a), path in zip(KINDS, files)}
        _common.host_sh(HOST, "rm -rf %s/ansible-tmp-*" % REMOTE_TMP)
    rows = []
    for label, name, args in KINDS:
        rows.append({"kind": label, "module": name, "args": args, "runs": len(wall[label]),
                     "wall_s": _common.median(wall[label]), "wall_runs": wall[label],
                     "module_s": _common.median(module[label]), "module_runs": module[label],
                     "facts_bytes": size.get(label)})
    setup = next(r for r in rows if r["kind"] == "setup")
    nvml = next(r for r in rows if r["kind"] == "gpu_facts nvml")
    for row in rows:
        row["wall_x_setup"] = _common.ratio(row["wall_s"], setup["wall_s"])
        row["module_x_setup"] = _common.ratio(row["module_s"], setup["module_s"])
        row["wall_x_nvml"] = _common.ratio(row["wall_s"], nvml["wall_s"])
        row["module_x_nvml"] = _common.ratio(row["module_s"], nvml["module_s"])
    return {"where": "lab host %s" % HOST, "rows": rows}


def local(runs):
    """The two collectors in-process on the stand-ins (no lab, no Ansible)."""
    sys.path.insert(0, _common.ROOT)
    _common.import_collection()
    # Imported here: only this mode needs the bindings and the test support code.
    pynvml = importlib.import_module("pynvml")
    utils = "ansible_collections.gpufleet.inference.plugins.module_utils."
    _nvml = importlib.import_module(utils + "_nvml")
    _nvidia_smi = importlib.import_module(utils + "_nvidia_smi")
    standin = importlib.import_module("tests.support.nvml_standin")
    NvmlState, build_standin = standin.NvmlState, standin.build_standin

    stand_ins = os.path.join(_common.ROOT, "tests", "stand_ins", "bin")
    capture = os.path.join(_common.ROOT, "tests", "fixtures", "nvidia-smi-captures",
                           "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt")
    with tempfile.TemporaryDirectory() as directory:
        state = NvmlState(os.path.join(directory, "nvml.state"))
        state.write_gpus([{"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
                           "uuid": "GPU-00000000-0000-0000-0000-000000000000",
                           "pci_bus_id": "00000000:01:00.0", "compute_capability": "9.0",
                           "memory_used_mib": 0}], drain_delay=0)
        os.environ["GPUFLEET_NVML_STATE"] = state.path
        pynvml.nvmlLib = ctypes.CDLL(build_standin(directory))
        env = dict(os.environ, GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE=capture, LANG="C")

        def run(argv):
            done = subprocess.run([os.path.join(stand_ins, "nvidia-smi"), *argv[1:]], env=env,
                                  capture_output=True, text=True, check=False, timeout=60)
            return done.returncode, done.stdout, done.stderr

        times = {"nvml": [], "nvidia-smi": []}
        for _run in range(runs):
            for kind, read in (("nvml", lambda: _nvml.read_gpus(pynvml)),
                               ("nvidia-smi", lambda: _nvidia_smi.collect(run))):
                started = time.perf_counter()
                result = read()
                times[kind].append(time.perf_counter() - started)
                if [g["memory_total_mib"] for g in result["gpus"]] != [81559]:
                    raise SystemExit("facts: %s read %r" % (kind, result["gpus"]))
    rows = [{"kind": "collector %s" % kind, "runs": runs, "module_s": _common.median(t),
             "module_runs": t, "wall_s": None} for kind, t in times.items()]
    for row in rows:
        row["module_x_nvml"] = _common.ratio(row["module_s"], rows[0]["module_s"])
    return {"where": "this machine, in-process, stand-ins", "rows": rows}


def markdown(result):
    f = _common.fmt
    data = result["data"]
    if result["quick"]:
        body = _common.table(
            ["collector", "runs", "ms (median)", "x nvml"],
            [[r["kind"], str(r["runs"]), f(1000 * r["module_s"], "%.1f"),
              f(r["module_x_nvml"])] for r in data["rows"]])
        return "### Facts collectors in-process (%s)\n\n%s" % (data["where"], body)
    body = _common.table(
        ["kind", "runs", "wall s (median)", "wall x setup", "module s (median)",
         "module x setup", "module x nvml", "facts returned (bytes of JSON)"],
        [[r["kind"], str(r["runs"]), f(r["wall_s"], "%.3f"), f(r["wall_x_setup"]),
          f(r["module_s"], "%.3f"), f(r["module_x_setup"]), f(r["module_x_nvml"]),
          "-" if r["facts_bytes"] is None else "{:,}".format(r["facts_bytes"])]
         for r in data["rows"]])
    return "### Facts cost per host (%s)\n\n%s\n\nMeasured on %s CPUs (load average %s), " \
        "commit %s, %s, in %.0f s." % (data["where"], body, result["machine"]["cpus"],
                                       result["machine"]["load"],
                     result["machine"]["commit"], result["machine"]["date"], result["seconds"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="no lab: the collectors in-process on the stand-ins")
    parser.add_argument("--runs", type=int, help="runs per kind (default 15, quick 2)")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 15)
    started = time.perf_counter()
    data = local(runs) if args.quick else lab(runs)
    result = {"benchmark": "facts", "quick": args.quick, "machine": _common.machine(),
              "data": data, "seconds": time.perf_counter() - started}
    _common.write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
