# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet converge: site.yml on 1, 4, 8 (and 16) lab fleet hosts, first run and re-run.

    python bench/fleet.py                      # sizes 1,4, variants at 1 host (make bench)
    python bench/fleet.py --sizes 1,8 --variants-at 0   # 8 hosts: over 10 min on 2 cores
    python bench/fleet.py --sizes 1,4,8,16     # the whole scale (the longest)
    python bench/fleet.py --quick              # the plan only: no lab, nothing measured

The hosts are the generated lab fleet (lab/lab.py up --fleet N: small single-GPU and CPU
boxes, one Ollama each, inventory/fleet). Each size starts from hosts with nothing of ours
(project, apply record, containers removed), converges them all at once
(gpufleet_serial=100%, forks = hosts) and converges again (nothing may change). At one size,
the same runs without SSH-style pipelining (ANSIBLE_PIPELINING=0) and with the jsonfile fact
cache show what those settings are worth here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

ROOT = _common.ROOT
_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                    re.MULTILINE)
RESET = ("docker ps -aq --filter label=com.docker.compose.project=gpufleet | xargs -r docker rm -f"
         " >/dev/null; rm -rf /opt/gpufleet /etc/gpufleet /srv/gpufleet")
VARIANTS = {
    "default": {"ANSIBLE_PIPELINING": "1"},
    "no pipelining": {"ANSIBLE_PIPELINING": "0"},
    "fact cache": {"ANSIBLE_PIPELINING": "1", "ANSIBLE_CACHE_PLUGIN": "jsonfile"},
}


def fleet_hosts(count):
    return ["lab-fleet-%02d" % i for i in range(1, count + 1)]


def lab(*args):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "lab", "lab.py"), *args],
                          capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        sys.exit("bench: lab.py %s failed:\n%s%s" % (" ".join(args), done.stdout, done.stderr))
    return done.stdout


def reset(hosts):
    """Nothing of ours on the hosts: what a first run meets."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(lambda h: _common.host_sh(h, RESET), hosts))


def _env(hosts, variant):
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS=str(max(5, len(hosts))),
                PATH=_common.VENV_BIN + os.pathsep + os.environ["PATH"], **VARIANTS[variant])


def facts_call(host, runs=3):
    """One gpu_facts call on ``host`` with ``ansible`` (same inventory, same settings as the
    converge): the fastest of ``runs`` wall times, in seconds."""
    command = [os.path.join(_common.VENV_BIN, "ansible"), "-i", os.path.join(ROOT, "lab", "lab.py"),
               "-i", os.path.join(ROOT, "inventory", "fleet"), host,
               "-m", "gpufleet.inference.gpu_facts"]
    best = None
    for _run in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env=_env([host], "default"), cwd=ROOT, timeout=300)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit("bench: gpu_facts on %s failed:\n%s%s" % (host, done.stdout, done.stderr))
        best = seconds if best is None else min(best, seconds)
    return best


def converge(hosts, variant, cache_dir):
    """One site.yml run over ``hosts``: {seconds, changed (sum), failed hosts}."""
    env = _env(hosts, variant)
    if "ANSIBLE_CACHE_PLUGIN" in env:
        env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = cache_dir
    command = [os.path.join(_common.VENV_BIN, "ansible-playbook"),
               "-i", os.path.join(ROOT, "lab", "lab.py"),
               "-i", os.path.join(ROOT, "inventory", "fleet"), os.path.join(ROOT, "site.yml"),
               "--limit", ",".join(hosts), "-e", "gpufleet_serial=100%"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env,
                          cwd=ROOT, timeout=1200)
    seconds = time.perf_counter() - started
    out = done.stdout + done.stderr
    recap = {m.group(1): (int(m.group(3)), int(m.group(4)) + int(m.group(5)))
             for m in _RECAP.finditer(out)}
    if done.returncode != 0 or sorted(recap) != sorted(hosts):
        sys.exit("bench: site.yml on %d host(s) (%s) failed, rc %d:\n%s"
                 % (len(hosts), variant, done.returncode, out[-4000:]))
    return {"seconds": seconds, "changed": sum(c for c, _f in recap.values()),
            "failed": sorted(h for h, (_c, f) in recap.items() if f)}


def measure(sizes, variants_at, cache_dir):
    rows, variants = [], []
    for count in sizes:
        hosts = fleet_hosts(count)
        reset(hosts)
        first = converge(hosts, "default", cache_dir)
        rerun = converge(hosts, "default", cache_dir)
        row = {"hosts": count, "first": first, "rerun": rerun}
        if count == 1:
            # The same host, in the same run: what one module run costs through Ansible.
            row["facts_call"] = facts_call(hosts[0])
        rows.append(row)
        sys.stderr.write("fleet: %2d host(s): first %.1f s, re-run %.1f s (%d changed)\n"
                         % (count, first["seconds"], rerun["seconds"], rerun["changed"]))
    if variants_at:
        hosts = fleet_hosts(variants_at)
        for variant in VARIANTS:
            done = [r for r in rows if r["hosts"] == variants_at]
            if variant == "default" and done:
                # Measured above at this size: the same runs, not repeated.
                variants.append({"variant": variant, "hosts": variants_at,
                                 "first": done[0]["first"], "rerun": done[0]["rerun"]})
                continue
            reset(hosts)
            first = converge(hosts, variant, cache_dir)
            rerun = converge(hosts, variant, cache_dir)
            variants.append({"variant": variant, "hosts": variants_at, "first": first,
                             "rerun": rerun})
            sys.stderr.write("fleet: %s at %d: first %.1f s, re-run %.1f s\n"
                             % (variant, variants_at, first["seconds"], rerun["seconds"]))
    return rows, variants


def markdown(result):
    rows, variants = result["sizes"], result["variants"]
    base = {kind: rows[0][kind]["seconds"] for kind in ("first", "rerun")} if rows else {}
    lines = ["### site.yml on the lab fleet, all hosts at once (%s, load %s, commit %s)"
             % (result["machine"]["date"], result["machine"]["load"],
                result["machine"]["commit"]), ""]
    lines.append(_common.table(
        ["hosts", "first run s", "per host s", "x 1 host", "re-run s", "per host s",
         "x 1 host", "re-run changed"],
        [[r["hosts"], _common.fmt(r["first"]["seconds"], "%.1f"),
          _common.fmt(r["first"]["seconds"] / r["hosts"], "%.1f"),
          _common.fmt(_common.ratio(r["first"]["seconds"], base.get("first"))),
          _common.fmt(r["rerun"]["seconds"], "%.1f"),
          _common.fmt(r["rerun"]["seconds"] / r["hosts"], "%.1f"),
          _common.fmt(_common.ratio(r["rerun"]["seconds"], base.get("rerun"))),
          r["rerun"]["changed"]] for r in rows]))
    single = [r for r in rows if r.get("facts_call")]
    if single:
        r = single[0]
        lines += ["", "### site.yml against one gpu_facts call, same host, same run", ""]
        lines.append(_common.table(
            ["run", "seconds", "one gpu_facts call s", "x gpu_facts call"],
            [["first converge", _common.fmt(r["first"]["seconds"], "%.1f"),
              _common.fmt(r["facts_call"], "%.2f"),
              _common.fmt(_common.ratio(r["first"]["seconds"], r["facts_call"]), "%.1f")],
             ["no-op re-run", _common.fmt(r["rerun"]["seconds"], "%.1f"),
              _common.fmt(r["facts_call"], "%.2f"),
              _common.fmt(_common.ratio(r["rerun"]["seconds"], r["facts_call"]), "%.1f")]]))
    if variants:
        ref = variants[0]
        lines += ["", "### Settings at %d hosts (first run, then re-run)" % ref["hosts"], ""]
        lines.append(_common.table(
            ["variant", "first run s", "x default", "re-run s", "x default"],
            [[v["variant"], _common.fmt(v["first"]["seconds"], "%.1f"),
              _common.fmt(_common.ratio(v["first"]["seconds"], ref["first"]["seconds"])),
              _common.fmt(v["rerun"]["seconds"], "%.1f"),
              _common.fmt(_common.ratio(v["rerun"]["seconds"], ref["rerun"]["seconds"]))]
             for v in variants]))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    # make bench must stay under 20 minutes on 2 cores: 8 and 16 hosts are asked for by hand.
    parser.add_argument("--sizes", default="1,4", help="fleet sizes (default 1,4)")
    parser.add_argument("--variants-at", type=int, default=1,
                        help="fleet size of the pipelining / fact cache runs (0: none)")
    parser.add_argument("--quick", action="store_true", help="print the plan only (no lab)")
    parser.add_argument("--keep", action="store_true", help="leave the fleet up afterwards")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes must be numbers separated by commas; got: %r" % args.sizes)
    if not sizes or sizes[0] < 1 or sizes[-1] > 64:
        parser.error("--sizes must be 1-64; got: %r" % args.sizes)
    if not 0 <= args.variants_at <= 64:
        parser.error("--variants-at must be 0-64; got: %d" % args.variants_at)
    count = max([*sizes, args.variants_at])
    if args.quick:
        plan = (count, ", ".join(map(str, sizes)), ", ".join(VARIANTS), args.variants_at)
        print("fleet plan: lab fleet of %d; site.yml first run and re-run at %s host(s); "
              "variants %s at %d host(s)" % plan)
        return 0
    os.environ["DOCKER_HOST"] = _common.docker_host()
    started = time.perf_counter()
    lab("up", "--fleet", str(count), "--recreate")
    up_s = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            rows, variants = measure(sizes, args.variants_at, cache_dir)
    finally:
        if not args.keep:
            lab("down", "--fleet", str(count))
    result = {"machine": _common.machine(), "fleet_up_s": up_s, "sizes": rows,
              "variants": variants}
    _common.write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
