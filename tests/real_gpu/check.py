# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts and gpu_drain_wait against a real NVIDIA driver (no stand-in anywhere).

Run on a host with an NVIDIA GPU, its driver, nvidia-smi, ansible-core, nvidia-ml-py and
PyTorch (which holds real GPU memory for the process checks):

    python3 tests/real_gpu/check.py OUTDIR

It never changes the GPU's settings (no MIG, clocks, persistence or reset). Checks, each
printed as PASS/FAIL and written to OUTDIR/summary.json:

1. the module through ``ansible localhost -m gpufleet.inference.gpu_facts`` answers with the
   NVML backend, the nvidia-smi backend and auto (which must pick NVML);
2. both backends agree on every GPU's identity (UUID, name, PCI bus id, total memory, compute
   capability, driver and CUDA versions) and count the GPUs ``nvidia-smi -L`` lists;
3. a process holding HOLD_MIB of real GPU memory (torch) is listed by both backends with its
   PID and at least that memory, and used memory grows by about that much;
4. gpu_drain_wait, started while the holder runs, returns only after the holder was killed,
   its process left NVML's list, and used memory came back; the driver's own teardown time
   (kill -> gone from the list -> memory back) is measured by polling NVML every 20 ms.

Also written: capture.txt, every nvidia-smi command the nvidia-smi reader ran and what it
printed (``# $ <command>`` sections, the format of tests/fixtures/nvidia-smi-captures), while
the holder runs; facts.json, the module's results (idle, held, after; each backend); drain.json,
the timeline and gpu_drain_wait's result: tests/unit parses the capture again and compares it with
the NVML facts taken at the same moment, so the real outputs keep being checked without a GPU.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pynvml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLD_MIB = 8192
IDENTITY = ("uuid", "name", "pci_bus_id", "memory_total_mib", "compute_capability",
            "driver_version", "cuda_driver_version")
HOLDER = r"""
import signal, sys, time, torch
block = torch.empty(%d * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
block.fill_(1)
torch.cuda.synchronize()
print("ready", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
""" % HOLD_MIB

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append({"check": name, "ok": bool(ok), "detail": detail})
    print("%s  %s%s" % ("PASS" if ok else "FAIL", name, ("  -- " + str(detail)) if detail else ""),
          flush=True)
    return ok


def collections_path():
    """A collections root whose ansible_collections/gpufleet/inference is this checkout."""
    root = tempfile.mkdtemp(prefix="gpufleet-coll-")
    os.makedirs(os.path.join(root, "ansible_collections", "gpufleet"))
    os.symlink(REPO, os.path.join(root, "ansible_collections", "gpufleet", "inference"))
    return root


def ansible_module(coll, module, args):
    """(rc, result dict, seconds) of ``ansible localhost -m module -a args``."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=coll,
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), coll) if p)
    command = ["ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", module,
               "-e", "ansible_python_interpreter=%s" % sys.executable, "-a", args]
    start = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    seconds = time.monotonic() - start
    document = proc.stdout.partition(" => ")[2]
    try:
        result = json.loads(document)
    except ValueError:
        result = {"unparsed_stdout": proc.stdout, "stderr": proc.stderr}
    return proc.returncode, result, seconds


def record_nvidia_smi(out_dir, coll):
    """Run the nvidia-smi reader itself, saving each command and its output."""
    sys.path.insert(0, coll)
    _nvidia_smi = importlib.import_module(
        "ansible_collections.gpufleet.inference.plugins.module_utils._nvidia_smi")

    sections = []

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              env=dict(os.environ, LANG="C", LC_ALL="C"))
        sections.append("# $ %s\n%s" % (" ".join(argv), proc.stdout))
        return proc.returncode, proc.stdout, proc.stderr

    collected = _nvidia_smi.collect(run)
    apps = "--query-compute-apps=" + ",".join(_nvidia_smi.APPS_FIELDS)
    for argv in (["nvidia-smi", apps, "--format=csv"], ["nvidia-smi", "--version"],
                 ["nvidia-smi", "-L"]):
        run(argv)
    with open(os.path.join(out_dir, "capture.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(sections))
    return collected


def gpus_of(result):
    return (result.get("ansible_facts") or {}).get("gpus") or []


FACTS = {}


def write_json(out_dir, name, document):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)


def facts(coll, out_dir, tag):
    """Run gpu_facts with each backend; facts.json holds every result by tag and backend."""
    got = {}
    for backend in ("nvml", "nvidia-smi", "auto"):
        rc, result, seconds = ansible_module(coll, "gpufleet.inference.gpu_facts",
                                             "backend=%s timeout=60" % backend)
        result["_rc"], result["_seconds"] = rc, round(seconds, 3)
        got[backend] = result
    FACTS[tag] = got
    write_json(out_dir, "facts.json", FACTS)
    return got


def nvml_reader():
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def read():
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used // (1024 * 1024)
        pids = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        return used, pids

    return read


def start_holder():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    line = holder.stdout.readline().strip()
    if line != "ready":
        holder.kill()
        raise RuntimeError("the memory holder did not start: %r" % line)
    return holder


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    coll = collections_path()
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    gpu_lines = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    check("nvidia-smi -L lists a GPU", gpu_lines, listed.stdout.strip() or listed.stderr.strip())

    # 1-2: idle GPU, the three backends
    idle = facts(coll, out_dir, "idle")
    for backend, result in idle.items():
        check("gpu_facts backend=%s answers" % backend,
              result["_rc"] == 0 and len(gpus_of(result)) == len(gpu_lines),
              "rc %s, %d GPU(s), %.2f s, warnings %s" % (
                  result["_rc"], len(gpus_of(result)), result["_seconds"],
                  (result.get("ansible_facts") or {}).get("gpu_summary", {}).get("warnings")))
    summary = (idle["auto"].get("ansible_facts") or {}).get("gpu_summary") or {}
    check("auto picks NVML", summary.get("backend") == "nvml", summary.get("backend"))
    for nvml_gpu, smi_gpu in zip(gpus_of(idle["nvml"]), gpus_of(idle["nvidia-smi"])):
        differ = {key: (nvml_gpu.get(key), smi_gpu.get(key)) for key in IDENTITY
                  if nvml_gpu.get(key) != smi_gpu.get(key)}
        check("NVML and nvidia-smi agree on GPU %s's identity" % nvml_gpu.get("index"),
              not differ, differ or {key: nvml_gpu.get(key) for key in IDENTITY})

    # 3: a real process holding real memory
    read = nvml_reader()
    used_before, _pids = read()
    holder = start_holder()
    try:
        used_held, pids = read()
        check("NVML lists the holder's PID", holder.pid in pids, {"pid": holder.pid, "pids": pids})
        check("used memory grows by the holder's allocation",
              used_held - used_before >= HOLD_MIB, "%d -> %d MiB" % (used_before, used_held))
        collected = record_nvidia_smi(out_dir, coll)
        held = facts(coll, out_dir, "held")
        for backend in ("nvml", "nvidia-smi", "reader"):
            gpu0 = (gpus_of(held[backend]) if backend != "reader" else collected["gpus"])[0]
            mine = [p for p in gpu0.get("processes") or [] if p.get("pid") == holder.pid]
            check("%s lists the holder with >= %d MiB" % (backend, HOLD_MIB),
                  mine and (mine[0].get("used_memory_mib") or 0) >= HOLD_MIB,
                  {"holder": mine, "processes": gpu0.get("processes"),
                   "memory_used_mib": gpu0.get("memory_used_mib")})

        # 4: the drain, as the driver does it and as gpu_drain_wait sees it
        wait_out = os.path.join(tempfile.mkdtemp(prefix="gpufleet-drain-"), "wait.json")
        args = ("gpus=0 pids=%d target_used_mib=%d stable=1 interval=0.1 timeout=60"
                % (holder.pid, used_before))
        waiter = subprocess.Popen(
            [sys.executable, "-c",
             "import json, sys; sys.path.insert(0, %r); import check; "
             "rc, result, seconds = check.ansible_module(%r, 'gpufleet.inference.gpu_drain_wait',"
             " %r); result['_rc'] = rc; result['_seconds'] = seconds; "
             "json.dump(result, open(%r, 'w'), indent=2)"
             % (os.path.dirname(os.path.abspath(__file__)), coll, args, wait_out)])
        time.sleep(6)  # the wait has started and polls a live holder
        waiter_alive_before_kill = waiter.poll() is None
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        timeline = {"kill": 0.0}
        while time.monotonic() - killed_at < 60:
            used, pids = read()
            now = round(time.monotonic() - killed_at, 3)
            if "gone" not in timeline and holder.pid not in pids:
                timeline["gone"] = now
            if "memory_back" not in timeline and used <= used_before + 64:
                timeline["memory_back"] = now
            if "gone" in timeline and "memory_back" in timeline:
                break
            time.sleep(0.02)
        waiter.wait(timeout=120)
        waited_s = time.monotonic() - killed_at
        with open(wait_out, encoding="utf-8") as handle:
            waited = json.load(handle)
        check("gpu_drain_wait was still waiting when the holder was killed",
              waiter_alive_before_kill)
        check("gpu_drain_wait succeeds after the drain", waited.get("_rc") == 0,
              {k: waited.get(k) for k in ("msg", "waited_s", "last", "_rc")})
        check("the driver tore the memory down", "memory_back" in timeline, timeline)
        check("gpu_drain_wait returned after the memory came back",
              waited_s >= timeline.get("memory_back", 1e9), "returned %.2f s after the kill; "
              "driver timeline %s" % (waited_s, timeline))
        drain = {"hold_mib": HOLD_MIB, "used_before_mib": used_before,
                 "used_held_mib": used_held, "driver_timeline_s": timeline,
                 "drain_wait_returned_s_after_kill": round(waited_s, 3),
                 "drain_wait_result": waited}
        write_json(out_dir, "drain.json", drain)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    after = facts(coll, out_dir, "after")
    gpu0 = gpus_of(after["nvml"])[0] if gpus_of(after["nvml"]) else {}
    check("the holder is gone from gpu_facts after the drain",
          all(p.get("pid") != holder.pid for p in gpu0.get("processes") or []),
          gpu0.get("processes"))
    write_json(out_dir, "summary.json", {"checks": RESULTS, "timings_s": {
        "%s-%s" % (backend, tag): run["_seconds"]
        for tag, runs in FACTS.items() for backend, run in runs.items()}})
    failed = [r["check"] for r in RESULTS if not r["ok"]]
    listed = (": " + "; ".join(failed)) if failed else ""
    print("%d checks, %d failed%s" % (len(RESULTS), len(failed), listed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "real-gpu-out"))
