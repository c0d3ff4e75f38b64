# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the cost of facts per host: gpu_facts against setup, NVML against nvidia-smi.

    python bench/facts.py              # the table in bench/README.md (2-3 minutes)
    python bench/facts.py --runs 30    # more runs per kind
    python bench/facts.py --quick      # no lab, no Ansible: both collectors in-process
    python bench/facts.py --real       # on a host with a real NVIDIA GPU: no lab, no stand-in

On lab host lab-spark (the real Ansible, the docker connection, the host's own python3):
gpu_facts with backend nvml, setup (default subsets) and setup with gather_subset=min. The
lab's nvidia-smi stand-in answers -L and --query-gpu but not -q -x, which gpu_facts reads, so
the NVML / nvidia-smi comparison runs on this machine (connection local), on the stand-ins
the integration tests use: the stand-in libnvidia-ml.so.1 (lab/nvml) and tests/stand_ins'
nvidia-smi replaying a real H100 capture, one H100 each ("local:" rows).
  wall    one task as the controller times it (ansible.posix.json callback: task start to
          end), connection and module transfer included. The kinds are interleaved in one
          playbook, so drift on a noisy machine hits them alike.
  module  the module alone: the AnsiballZ file Ansible left behind
          (ANSIBLE_KEEP_REMOTE_FILES=1) run with the same python, timed where it runs;
          interpreter start-up included, connection and controller excluded.

--real (on a GPU host, about a minute): the module alone (as above) of gpu_facts with each
NVIDIA backend and of setup / setup min on this machine, against the real driver and the real
nvidia-smi; no lab and no stand-in (tests/real_gpu/check.py runs on the same kind of host).

--quick (a few seconds): the two collectors in-process, `_nvml.read_gpus` on the stand-in
library and `_nvidia_smi.collect` running the stand-in tool, one H100 each.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

HOST = "lab-spark"
LAB_KINDS = (
    ("gpu_facts nvml", "gpufleet.inference.gpu_facts", {"backend": "nvml"}),
    ("setup", "ansible.builtin.setup", {}),
    ("setup min", "ansible.builtin.setup", {"gather_subset": ["min"]}),
)
LOCAL_KINDS = (
    ("local: gpu_facts nvml", "gpufleet.inference.gpu_facts", {"backend": "nvml"}),
    ("local: gpu_facts nvidia-smi", "gpufleet.inference.gpu_facts", {"backend": "nvidia-smi"}),
)
H100_CAPTURE = os.path.join(_common.ROOT, "tests", "fixtures", "nvidia-smi-captures",
                            "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt")
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
        "uuid": "GPU-00000000-0000-0000-0000-000000000000", "pci_bus_id": "00000000:01:00.0",
        "compute_capability": "9.0", "memory_used_mib": 0}
REAL_KINDS = (
    ("gpu_facts nvml", "gpufleet.inference.gpu_facts", {"backend": "nvml"}),
    ("gpu_facts nvidia-smi", "gpufleet.inference.gpu_facts", {"backend": "nvidia-smi"}),
    ("setup", "ansible.builtin.setup", {}),
    ("setup min", "ansible.builtin.setup", {"gather_subset": ["min"]}),
)
REMOTE_TMP = "/root/.ansible/tmp"

TIMER = r"""
import json, subprocess, sys, time
runs, python = int(sys.argv[1]), sys.argv[2]
out = {}
for path in sys.argv[3:]:
    times = []
    for _run in range(runs):
        started = time.perf_counter()
        done = subprocess.run([python, path], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        result = json.loads(done.stdout[done.stdout.index("{"):])
        if done.returncode != 0 or result.get("failed"):
            raise SystemExit("%s failed: %s" % (path, done.stdout[-500:] + done.stderr[-500:]))
    size = len(json.dumps(result.get("ansible_facts", {}), sort_keys=True))
    out[path] = {"times": times, "facts_bytes": size}
print(json.dumps(out))
"""


def _playbook(directory, name, runs, kinds, play):
    tasks = []
    for run in range(1, runs + 1):
        for label, module, args in kinds:
            tasks.append({"name": "%s #%d" % (label, run), module: args})
    path = os.path.join(directory, "%s-%d.yml" % (name, runs))
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump([dict(play, name="Facts cost", gather_facts=False, tasks=tasks)],
                       handle, sort_keys=False)
    return path


def _ansible(playbook, inventory, callback="ansible.posix.json", **env):
    """Run a playbook; its report when the callback is ansible.posix.json, else None."""
    run_env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(_common.ROOT, "ansible.cfg"),
                   ANSIBLE_STDOUT_CALLBACK=callback, **env)
    binary = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    if not os.path.exists(binary):  # a Python whose scripts live elsewhere (pip --target)
        binary = shutil.which("ansible-playbook") or binary
    done = subprocess.run(
        [binary, "-i", inventory, playbook],
        cwd=_common.ROOT, env=run_env, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError("ansible-playbook %s failed (rc %d):\n%s\n%s" % (
            playbook, done.returncode, done.stdout[-3000:], done.stderr[-3000:]))
    if callback != "ansible.posix.json":
        return None
    return json.loads(done.stdout[done.stdout.index("{"):])


def _seconds(duration):
    def parse(text):
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parse(duration["end"]) - parse(duration["start"])).total_seconds()


def _measure(directory, name, runs, kinds, play, inventory, host_name, shell, remote_tmp,
             python):
    """Rows of wall and module times of ``kinds`` on one host.

    ``shell(script, input_text)`` runs a bash script where the modules run (the lab host, or
    this machine); ``remote_tmp`` is where Ansible leaves the AnsiballZ files there.
    """
    # 1. wall time per task, the kinds interleaved
    report = _ansible(_playbook(directory, name, runs, kinds, play), inventory,
                      ANSIBLE_REMOTE_TMP=remote_tmp)
    wall = {label: [] for label, _module, _args in kinds}
    size = {}
    for task in report["plays"][0]["tasks"]:
        label = task["task"]["name"].rsplit(" #", 1)[0]
        result = task["hosts"][host_name]
        if result.get("failed"):
            raise RuntimeError("%s failed: %s" % (task["task"]["name"], result.get("msg")))
        wall[label].append(_seconds(task["task"]["duration"]))
        size[label] = len(json.dumps(result.get("ansible_facts", {}), sort_keys=True))
    # 2. the modules alone
    timed = _module_times(directory, name, runs, kinds, play, inventory, shell, remote_tmp,
                          python)
    rows = []
    for (label, module, args), alone in zip(kinds, timed):
        rows.append({"kind": label, "module": module, "args": args, "runs": len(wall[label]),
                     "wall_s": _common.median(wall[label]), "wall_runs": wall[label],
                     "module_s": _common.median(alone["times"]), "module_runs": alone["times"],
                     "facts_bytes": size.get(label)})
    return rows


def _module_times(directory, name, runs, kinds, play, inventory, shell, remote_tmp, python):
    """The modules alone: the AnsiballZ files of one run of each kind (kept by Ansible), each
    run ``runs`` times where it runs. [{'times', 'facts_bytes'}] in the order of ``kinds``."""
    shell("rm -rf %s/ansible-tmp-*" % remote_tmp, None)
    _ansible(_playbook(directory, name, 1, kinds, play), inventory,
             callback="ansible.builtin.default", ANSIBLE_KEEP_REMOTE_FILES="1",
             ANSIBLE_REMOTE_TMP=remote_tmp)
    files = shell("ls -1tr -d %s/ansible-tmp-*/AnsiballZ_*.py" % remote_tmp, None).split()
    if len(files) != len(kinds):
        raise RuntimeError("expected %d AnsiballZ files in %s, found %r"
                           % (len(kinds), remote_tmp, files))
    timed = json.loads(shell("%s - %d %s %s" % (python, runs, python, " ".join(files)), TIMER))
    shell("rm -rf %s/ansible-tmp-*" % remote_tmp, None)
    return [timed[path] for path in files]


def _local_shell(env=None):
    """shell(script, input_text) for _measure / _module_times on this machine."""
    def shell(script, input_text):
        return subprocess.run(["bash", "-c", script], input=input_text, capture_output=True,
                              text=True, check=True, timeout=600,
                              env=dict(os.environ, **(env or {}))).stdout
    return shell


def _lab_rows(directory, runs):
    def shell(script, input_text):
        return _common.host_sh(HOST, script, input_text=input_text).stdout
    return _measure(directory, "lab", runs, LAB_KINDS, {"hosts": HOST},
                    os.path.join(_common.ROOT, "inventory", "lab"), HOST, shell,
                    REMOTE_TMP, "/usr/bin/python3")


def _local_rows(directory, runs):
    """gpu_facts through Ansible on this machine, on the stand-ins the integration tests
    use: the stand-in libnvidia-ml.so.1 and tests/stand_ins' nvidia-smi, one H100 each."""
    standin = _standin()
    state = standin.NvmlState(os.path.join(directory, "nvml.state"))
    state.write_gpus([H100], drain_delay=0)
    lib_dir = os.path.join(directory, "lib")
    standin.build_standin(lib_dir)
    env = {"PATH": "%s:/usr/bin:/bin" % os.path.join(_common.ROOT, "tests", "stand_ins", "bin"),
           "LD_LIBRARY_PATH": lib_dir, "GPUFLEET_NVML_STATE": state.path,
           "GPUFLEET_FIXTURE_NVIDIA_SMI_CAPTURE": H100_CAPTURE}
    remote_tmp = os.path.join(directory, "remote-tmp")
    os.makedirs(remote_tmp)
    play = {"hosts": "localhost", "connection": "local", "environment": env,
            "vars": {"ansible_python_interpreter": sys.executable}}
    return _measure(directory, "local", runs, LOCAL_KINDS, play, "localhost,", "localhost",
                    _local_shell(env), remote_tmp, sys.executable)


def real(runs):
    """The modules alone on this machine's real GPU (no lab, no stand-in)."""
    with tempfile.TemporaryDirectory() as directory:
        remote_tmp = os.path.join(directory, "remote-tmp")
        os.makedirs(remote_tmp)
        play = {"hosts": "localhost", "connection": "local",
                "vars": {"ansible_python_interpreter": sys.executable}}
        timed = _module_times(directory, "real", runs, REAL_KINDS, play, "localhost,",
                              _local_shell(), remote_tmp, sys.executable)
    rows = [{"kind": label, "module": module, "args": args, "runs": runs, "wall_s": None,
             "module_s": _common.median(alone["times"]), "module_runs": alone["times"],
             "facts_bytes": alone["facts_bytes"]}
            for (label, module, args), alone in zip(REAL_KINDS, timed)]
    setup = next(r for r in rows if r["kind"] == "setup")
    for row in rows:
        row["wall_x_setup"] = row["wall_x_nvml"] = None
        row["module_x_setup"] = _common.ratio(row["module_s"], setup["module_s"])
        row["module_x_nvml"] = _common.ratio(row["module_s"], rows[0]["module_s"])
    return {"where": "this machine, real driver: %s" % _gpu_line(), "rows": rows}


def _gpu_line():
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True,
                          check=False, timeout=60)
    return "; ".join(line.strip() for line in done.stdout.splitlines() if line.strip()) or "?"


def _standin():
    sys.path.insert(0, _common.ROOT)
    return importlib.import_module("tests.support.nvml_standin")


def lab(runs):
    with tempfile.TemporaryDirectory() as directory:
        rows = _local_rows(directory, runs)
        with _common.lab_host(HOST):
            rows = _lab_rows(directory, runs) + rows
    setup = next(r for r in rows if r["kind"] == "setup")
    for row in rows:
        row["wall_x_setup"] = _common.ratio(row["wall_s"], setup["wall_s"])
        row["module_x_setup"] = _common.ratio(row["module_s"], setup["module_s"])
        peer = rows[0] if not row["kind"].startswith("local") else rows[len(LAB_KINDS)]
        row["wall_x_nvml"] = _common.ratio(row["wall_s"], peer["wall_s"])
        row["module_x_nvml"] = _common.ratio(row["module_s"], peer["module_s"])
    return {"where": "lab host %s, and this machine for the local: rows" % HOST, "rows": rows}


def local(runs):
    """The two collectors in-process on the stand-ins (no lab, no Ansible)."""
    sys.path.insert(0, _common.ROOT)
    _common.import_collection()
    # Imported here: only this mode needs the bindings and the test support code.
    pynvml = importlib.import_module("pynvml")
    utils = "ansible_collections.gpufleet.inference.plugins.module_utils."
    _nvml = importlib.import_module(utils + "_nvml")
    _nvidia_smi = importlib.import_module(utils + "_nvidia_smi")
    standin = _standin()

    stand_ins = os.path.join(_common.ROOT, "tests", "stand_ins", "bin")
    capture = H100_CAPTURE
    with tempfile.TemporaryDirectory() as directory:
        state = standin.NvmlState(os.path.join(directory, "nvml.state"))
        state.write_gpus([H100], drain_delay=0)
        os.environ["GPUFLEET_NVML_STATE"] = state.path
        pynvml.nvmlLib = ctypes.CDLL(standin.build_standin(directory))
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
        "commit %s, %s, in %.0f s." % (
            data["where"], body, result["machine"]["cpus"], result["machine"]["load"],
            result["machine"]["commit"], result["machine"]["date"], result["seconds"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="no lab: the collectors in-process on the stand-ins")
    parser.add_argument("--real", action="store_true",
                        help="on a host with a real NVIDIA GPU: no lab, no stand-in")
    parser.add_argument("--runs", type=int, help="runs per kind (default 7, quick 2)")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 7)
    started = time.perf_counter()
    data = local(runs) if args.quick else real(runs) if args.real else lab(runs)
    result = {"benchmark": "facts", "quick": args.quick, "real": args.real,
              "machine": _common.machine(), "data": data, "seconds": time.perf_counter() - started}
    _common.write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
