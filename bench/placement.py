# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the placement engine: quality against an exact optimum, and speed at scale.

    python bench/placement.py            # the table in bench/README.md (about a minute)
    python bench/placement.py --quick    # smoke run, a few seconds (a unit test runs it)

Quality: thousands of generated small instances (2-4 GPUs, 3-10 services, demand between
half and just over the total usable memory). An exact solver (depth-first search over every
assignment, pruned by capacity and by GPUs in identical states) says whether every service
fits without overcommitting any GPU and, if so, the lowest possible spread of utilisation
(standard deviation of budget / usable over the GPUs). Each strategy of the engine and three
baselines are then scored:
  fits       instances where the strategy found a complete fit / instances where one exists
  optimal    of those, the share where its spread is within 0.005 of the optimum
  gap        mean spread above the optimum on those instances (0 = always optimal)
  ms         mean time per instance
Baselines: seed 001's "sort by VRAM desc, assign to GPU with most free space" (fails when the
most-free GPU is too small), a binpack scorer (GPUStack: highest claim / allocatable that fits)
and a spread scorer (the lowest). latency_optimized and isolation_first pursue other goals
(speed, isolation) by design: their balance numbers show the price, not a defect.

Speed: 5,000 services over 1,000 GPUs (125 hosts x 8, place_fleet), each strategy.
Deterministic: instances come from random.Random(seed).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    from ansible_collections.gpufleet.inference.plugins.module_utils import _placement
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
    try:
        from ansible_collections.gpufleet.inference.plugins.module_utils import _placement
    except ImportError:
        sys.exit("bench/placement.py: the collection is not importable; run `make setup` "
                 "(it links this checkout under .build/collections)")

HEADROOM = _placement.DEFAULT_HEADROOM_MIB
GPU_SIZES = (4094, 8192, 12288, 16384, 24564, 40960, 49152, 81559)
# Seed sizes (catalog totals in MiB) mixed with uniform draws.
SEED_SIZES = (650, 1229, 1536, 1717, 2963, 4482, 6963, 13351, 20027, 22221)
TOLERANCE = 0.005


def spread(loads, caps):
    utils = [load / float(cap) for load, cap in zip(loads, caps)]
    mean = sum(utils) / len(utils)
    return math.sqrt(sum((u - mean) ** 2 for u in utils) / len(utils))


def instance(rng):
    gpus = rng.randint(2, 4)
    count = rng.randint(3, 10 if gpus < 4 else 8)
    totals = [rng.choice(GPU_SIZES) for _gpu in range(gpus)]
    caps = [t - HEADROOM for t in totals]
    sizes = [rng.choice(SEED_SIZES) if rng.random() < 0.5 else rng.randint(500, 16000)
             for _service in range(count)]
    load = rng.uniform(0.5, 1.05) * sum(caps)
    factor = load / sum(sizes)
    sizes = [max(100, int(s * factor)) for s in sizes]
    roles = ["llm" if rng.random() < 0.25 else "other" for _service in range(count)]
    critical = [rng.random() < 0.2 for _service in range(count)]
    return totals, caps, sizes, roles, critical


def exact(caps, sizes):
    """(a complete fit exists, lowest spread of one) by exhaustive search."""
    order = sorted(sizes, reverse=True)
    loads = [0] * len(caps)
    best = [None]

    def dfs(k):
        if k == len(order):
            value = spread(loads, caps)
            if best[0] is None or value < best[0]:
                best[0] = value
            return
        size = order[k]
        seen = set()
        for g, cap in enumerate(caps):
            state = (cap, loads[g])
            if loads[g] + size > cap or state in seen:
                continue
            seen.add(state)
            loads[g] += size
            dfs(k + 1)
            loads[g] -= size

    dfs(0)
    return best[0] is not None, best[0]


def baseline(kind, caps, sizes):
    """(fits, spread) of a simple rule placing the largest first."""
    loads = [0] * len(caps)
    for size in sorted(sizes, reverse=True):
        if kind == "seed001":
            g = max(range(len(caps)), key=lambda i: (caps[i] - loads[i], -i))
            if loads[g] + size > caps[g]:
                return False, None
        else:
            fitting = [i for i in range(len(caps)) if loads[i] + size <= caps[i]]
            if not fitting:
                return False, None
            score = {i: (loads[i] + size) / float(caps[i]) for i in fitting}
            if kind == "binpack":
                g = max(fitting, key=lambda i: (score[i], -i))
            else:
                g = min(fitting, key=lambda i: (loads[i] / float(caps[i]), i))
        loads[g] += size
    return True, spread(loads, caps)


def engine(strategy, totals, sizes, roles, critical):
    gpus = [{"index": i, "uuid": "GPU-%d" % i, "memory_total_mib": t, "compute_capability": "8.6"}
            for i, t in enumerate(totals)]
    services = [{"name": "s%d" % i, "vram_mib": s, "role": r, "latency_critical": c}
                for i, (s, r, c) in enumerate(zip(sizes, roles, critical))]
    result = _placement.place(gpus, services, strategy=strategy, live_usage="ignore")
    if not result["summary"]["fits"]:
        return False, None
    table = result["gpus"]
    return True, spread([g["budget_mib"] for g in table], [g["usable_mib"] for g in table])


def quality(count, seed):
    rng = random.Random(seed)
    contenders = [(s, lambda inst, s=s: engine(s, inst[0], inst[2], inst[3], inst[4]))
                  for s in _placement.STRATEGIES]
    contenders += [("baseline: " + k, lambda inst, k=k: baseline(k, inst[1], inst[2]))
                   for k in ("seed001", "binpack", "spread")]
    stats = {name: {"fits": 0, "optimal": 0, "gap": 0.0, "seconds": 0.0, "wrong": 0}
             for name, _run in contenders}
    possible = 0
    exact_seconds = 0.0
    for _instance in range(count):
        inst = instance(rng)
        started = time.perf_counter()
        feasible, optimum = exact(inst[1], inst[2])
        exact_seconds += time.perf_counter() - started
        possible += feasible
        for name, run in contenders:
            started = time.perf_counter()
            fits, value = run(inst)
            stats[name]["seconds"] += time.perf_counter() - started
            if fits and not feasible:
                stats[name]["wrong"] += 1  # would be a bug in the exact solver or the engine
            if fits and feasible:
                stats[name]["fits"] += 1
                stats[name]["gap"] += value - optimum
                stats[name]["optimal"] += value - optimum <= TOLERANCE
    return possible, exact_seconds, stats


def fleet(hosts, per_host, services, seed):
    rng = random.Random(seed)
    sizes = (16384, 24564, 40960, 81559)
    fleet_hosts = [{"name": "h%04d" % h, "gpus": [
        {"index": i, "uuid": "GPU-%04d-%d" % (h, i), "memory_total_mib": rng.choice(sizes),
         "compute_capability": rng.choice(("8.0", "8.6", "8.9", "9.0"))}
        for i in range(per_host)]} for h in range(hosts)]
    demand = [{"name": "s%05d" % i, "vram_mib": rng.randint(500, 12000),
               "role": "llm" if rng.random() < 0.2 else "other",
               "latency_critical": rng.random() < 0.2} for i in range(services)]
    return fleet_hosts, demand


def speed(hosts, per_host, services, seed):
    fleet_hosts, demand = fleet(hosts, per_host, services, seed)
    rows = []
    for strategy in _placement.STRATEGIES:
        started = time.perf_counter()
        result = _placement.place_fleet(fleet_hosts, demand, strategy=strategy,
                                        live_usage="ignore")
        rows.append((strategy, time.perf_counter() - started, result["summary"]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (a few seconds)")
    parser.add_argument("--instances", type=int, help="small instances (default 5000)")
    parser.add_argument("--seed", type=int, default=20250123)
    args = parser.parse_args(argv)
    count = args.instances or (60 if args.quick else 5000)
    hosts, per_host, services = (10, 4, 200) if args.quick else (125, 8, 5000)

    possible, exact_seconds, stats = quality(count, args.seed)
    print("### Quality: %d instances, a complete fit exists in %d (exact solver %.1f ms each)"
          % (count, possible, 1000.0 * exact_seconds / count))
    print()
    print("| strategy | fits found / possible | optimal spread | mean gap | ms / instance |")
    print("|---|---|---|---|---|")
    for name, row in stats.items():
        fits = row["fits"]
        print("| %s | %d / %d (%.1f %%) | %.1f %% | %.4f | %.2f |" % (
            name, fits, possible, 100.0 * fits / max(possible, 1),
            100.0 * row["optimal"] / max(fits, 1), row["gap"] / max(fits, 1),
            1000.0 * row["seconds"] / count))
    wrong = sum(row["wrong"] for row in stats.values())
    print()
    print("### Speed: %d services over %d GPUs (%d hosts x %d), place_fleet"
          % (services, hosts * per_host, hosts, per_host))
    print()
    print("| strategy | seconds | placed | fits | utilisation spread | warnings |")
    print("|---|---|---|---|---|---|")
    for strategy, seconds, summary in speed(hosts, per_host, services, args.seed):
        print("| %s | %.2f | %d / %d | %s | %.4f | %d |" % (
            strategy, seconds, summary["placed"], summary["services"], summary["fits"],
            summary["utilization_stddev"], summary["warning_count"]))
    if wrong:
        print("\nERROR: %d fits reported where the exact solver found none" % wrong)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
