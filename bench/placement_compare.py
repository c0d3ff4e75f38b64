# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement engine before and after a change: the same results, and the time of each.

    python bench/placement_compare.py --against ead7c81        # this checkout vs that commit
    python bench/placement_compare.py --against main --sizes 10,100 --instances 500
    python bench/placement_compare.py --against ead7c81 --sizes 1000 --runs 3 --instances 0

Loads plugins/module_utils/_placement.py as it is at ``--against`` (git show) next to this
checkout's, runs both on the instances of bench/placement.py (the speed instances: 5 services
per GPU, place_fleet; and generated small ones, place) for every strategy, and fails if any
result differs in anything (assignments, warnings, explanations, summary). Times are taken
in the same process, old and new in turn on the same input, with the baselines of
bench/placement.py beside them at each size (the simplest: binpack).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import placement

_common.import_collection()
from ansible_collections.gpufleet.inference.plugins.module_utils import _placement  # noqa: E402

PACKAGE = "ansible_collections.gpufleet.inference.plugins.module_utils"


def old_module(ref):
    """_placement.py as it is at git ``ref``, imported beside the current one."""
    source = subprocess.run(["git", "-C", _common.ROOT, "show",
                             "%s:plugins/module_utils/_placement.py" % ref],
                            capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(PACKAGE + "._placement_before", handle.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(handle.name)
    return module


def timed(run, runs=1):
    """(median seconds of ``runs`` runs, the result)."""
    times = []
    for _run in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return _common.median(times), result


def compare_scale(before, gpus, per_host, seed, runs):
    hosts, demand = placement.fleet(gpus // per_host, per_host, 5 * gpus, seed)
    rows = []
    for strategy in _placement.STRATEGIES:
        old_s, old = timed(functools.partial(
            before.place_fleet, hosts, demand, strategy=strategy, live_usage="ignore"), runs)
        new_s, new = timed(functools.partial(
            _placement.place_fleet, hosts, demand, strategy=strategy, live_usage="ignore"), runs)
        rows.append((strategy, old_s, new_s, old == new))
    caps = [g["memory_total_mib"] - placement.HEADROOM for h in hosts for g in h["gpus"]]
    sizes = [d["vram_mib"] for d in demand]
    for kind in placement.BASELINES:
        seconds, _result = timed(functools.partial(placement.baseline, kind, caps, sizes), runs)
        rows.append(("baseline: " + kind, None, seconds, None))
    return rows


def compare_small(before, count, seed):
    rng = random.Random(seed)
    instances = [placement.instance(rng) for _instance in range(count)]
    rows = []
    for strategy in _placement.STRATEGIES:
        spent = {"old": 0.0, "new": 0.0}
        same = True
        for k, (totals, _caps, sizes, roles, critical) in enumerate(instances):
            gpus = [{"index": i, "uuid": "GPU-%d" % i, "memory_total_mib": t,
                     "compute_capability": "8.6"} for i, t in enumerate(totals)]
            services = [{"name": "s%d" % i, "vram_mib": s, "role": r, "latency_critical": c}
                        for i, (s, r, c) in enumerate(zip(sizes, roles, critical))]
            results = {}
            pair = (("old", before), ("new", _placement))
            for name, module in pair if k % 2 else pair[::-1]:  # each goes first in turn
                seconds, results[name] = timed(functools.partial(
                    module.place, gpus, services, strategy=strategy, live_usage="ignore"))
                spent[name] += seconds
            same = same and results["old"] == results["new"]
        rows.append((strategy, spent["old"] * 1000 / count, spent["new"] * 1000 / count, same))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--against", default="HEAD", help="git ref of the code before")
    parser.add_argument("--sizes", default="10,100,1000", help="GPUs of the speed instances")
    parser.add_argument("--instances", type=int, default=2000, help="generated small instances")
    parser.add_argument("--runs", type=int, default=1, help="median of this many (speed)")
    parser.add_argument("--seed", type=int, default=20250123)
    args = parser.parse_args(argv)
    before = old_module(args.against)
    machine = _common.machine()
    differ = 0
    print("### Before: %s; after: this checkout (%s and its uncommitted changes)\n"
          % (args.against, machine["commit"]))
    for gpus in (int(size) for size in args.sizes.split(",") if size):
        per_host = {10: 2, 100: 4}.get(gpus, 8)
        rows = compare_scale(before, gpus, per_host, args.seed, args.runs)
        reference = next(new for name, _old, new, _same in rows if name == "baseline: binpack")
        print("%d GPUs, %d services (place_fleet, median of %d):\n"
              % (gpus, 5 * gpus, args.runs))
        print(_common.table(
            ["strategy", "before s", "after s", "after / before", "after / binpack",
             "same results"],
            [[name, _common.fmt(old, "%.3f"), "%.3f" % new,
              _common.fmt(_common.ratio(new, old)), _common.fmt(_common.ratio(new, reference)),
              {True: "yes", False: "NO", None: "-"}[same]] for name, old, new, same in rows]))
        print()
        differ += sum(1 for row in rows if row[3] is False)
    if args.instances:
        rows = compare_small(before, args.instances, args.seed)
        print("%d generated small instances (place), ms per instance:\n" % args.instances)
        print(_common.table(
            ["strategy", "before ms", "after ms", "after / before", "same results"],
            [[name, "%.3f" % old, "%.3f" % new, _common.fmt(_common.ratio(new, old)),
              "yes" if same else "NO"] for name, old, new, same in rows]))
        print()
        differ += sum(1 for row in rows if not row[3])
    print("Measured on %s CPUs (load average %s), Python %s, %s."
          % (machine["cpus"], machine["load"], machine["python"], machine["date"]))
    if differ:
        print("\nERROR: %d comparisons gave different results" % differ)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
