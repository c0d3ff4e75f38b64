# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the placement engine: quality against an exact optimum and the baselines,
the seeds' reference cases, and speed at 10 / 100 / 1,000 GPUs.

    python bench/placement.py                  # the tables in bench/README.md (1-2 minutes)
    python bench/placement.py --quick          # smoke run, about a second (a unit test runs it)
    python bench/placement.py --quality-only   # the generated small instances only (~30 s)
    python bench/placement.py --json F --markdown M

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

Multi-GPU: generated instances of 4 and 8 GPUs with a link topology (NVLink pairs, NVLink
quads, PCIe switch pairs in two NUMA halves joined by SYS, or not reported) where one or two
services span 2 or 4 GPUs (tensor parallel), and named boxes (8x 80 GB with NVLink pairs,
4x 24 GB with a 70B model at gpus 2 and 4, a mixed-topology box). The exact solver gives a
service spanning N GPUs every set of N distinct GPUs with room for its per-GPU budget;
besides fit and spread it finds the lowest sum of link ranks (the slowest link inside each
set: nvlink 0 ... system 4, unknown 5) over the complete fits:
  best links  of the fitted instances, the share where the contender's sum equals it
The baselines give a service spanning N GPUs the N GPUs their rule ranks first, links unseen.

Reference cases: the seeds' boxes and stacks (bench/reference_cases.yml), each strategy and
baseline against the exact optimum and against the seed's own layout.

Speed: 5 services per GPU over 10, 100 and 1,000 GPUs (hosts of 2, 4 and 8 GPUs,
place_fleet), each strategy and baseline; median of several runs where cheap.
Deterministic: instances come from random.Random(seed).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

_common.import_collection()
from ansible_collections.gpufleet.inference.plugins.module_utils import _placement  # noqa: E402

HEADROOM = _placement.DEFAULT_HEADROOM_MIB
GPU_SIZES = (4094, 8192, 12288, 16384, 24564, 40960, 49152, 81559)
# Seed sizes (catalog totals in MiB) mixed with uniform draws.
SEED_SIZES = (650, 1229, 1536, 1717, 2963, 4482, 6963, 13351, 20027, 22221)
TOLERANCE = 0.005
BASELINES = ("seed001", "binpack", "spread")
REFERENCE_CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "reference_cases.yml")
# (GPUs, GPUs per host, repeats): services = 5 per GPU.
SCALES = ((10, 2, 5), (100, 4, 3), (1000, 8, 1))
QUICK_SCALES = ((10, 2, 1), (40, 4, 1))


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
    """(a complete fit exists, lowest spread, GPU of each service) by exhaustive search."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    loads = [0] * len(caps)
    where = [None] * len(sizes)
    best = [None, None]

    def dfs(k):
        if k == len(order):
            value = spread(loads, caps)
            if best[0] is None or value < best[0]:
                best[0], best[1] = value, list(where)
            return
        service = order[k]
        size = sizes[service]
        seen = set()
        for g, cap in enumerate(caps):
            state = (cap, loads[g])
            if loads[g] + size > cap or state in seen:
                continue
            seen.add(state)
            loads[g] += size
            where[service] = g
            dfs(k + 1)
            loads[g] -= size
        where[service] = None

    dfs(0)
    return best[0] is not None, best[0], best[1]


def baseline(kind, caps, sizes):
    """(fits, spread, GPU of each service) of a simple rule placing the largest first."""
    loads = [0] * len(caps)
    where = [None] * len(sizes)
    for service in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        size = sizes[service]
        if kind == "seed001":
            g = max(range(len(caps)), key=lambda i: (caps[i] - loads[i], -i))
            if loads[g] + size > caps[g]:
                return False, None, where
        else:
            fitting = [i for i in range(len(caps)) if loads[i] + size <= caps[i]]
            if not fitting:
                return False, None, where
            if kind == "binpack":
                g = max(fitting, key=lambda i: ((loads[i] + size) / float(caps[i]), -i))
            else:
                g = min(fitting, key=lambda i: (loads[i] / float(caps[i]), i))
        loads[g] += size
        where[service] = g
    return True, spread(loads, caps), where


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


# ---- 1. quality on generated instances ---------------------------------------------------

def quality(count, seed):
    rng = random.Random(seed)
    contenders = [(s, lambda inst, s=s: engine(s, inst[0], inst[2], inst[3], inst[4]))
                  for s in _placement.STRATEGIES]
    contenders += [("baseline: " + k, lambda inst, k=k: baseline(k, inst[1], inst[2])[:2])
                   for k in BASELINES]
    stats = {name: {"fits": 0, "optimal": 0, "gap": 0.0, "seconds": 0.0, "wrong": 0}
             for name, _run in contenders}
    possible = 0
    exact_seconds = 0.0
    for _instance in range(count):
        inst = instance(rng)
        started = time.perf_counter()
        feasible, optimum, _where = exact(inst[1], inst[2])
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
    rows = []
    for name, row in stats.items():
        fits = row["fits"]
        rows.append({
            "contender": name, "fits": fits, "possible": possible,
            "fit_ratio": fits / float(possible) if possible else None,
            "optimal_share": row["optimal"] / float(fits) if fits else None,
            "mean_gap": row["gap"] / fits if fits else None,
            "ms_per_instance": 1000.0 * row["seconds"] / count,
            "wrong_fits": row["wrong"],
        })
    return {"instances": count, "seed": seed, "possible": possible,
            "exact_ms_per_instance": 1000.0 * exact_seconds / count, "rows": rows}


# ---- 2. multi-GPU services (tensor parallel) ---------------------------------------------

LINKS = _placement.LINK_NAMES
UNKNOWN = LINKS.index("unknown")
# Topologies of the generated boxes: {(a, b): link} over their GPUs, the rest `rest`.
TOPOLOGIES = ("nvlink_pairs", "nvlink_quads", "pcie_numa", "unknown")
MULTI_INSTANCES = 1000
# Named boxes. A 70B model at 4.25 bits per weight (AWQ), 80 layers, 8 KV heads of 128, 8k
# context: the engine's own per-GPU estimate (about 20.6 GB on 2 GPUs, 10.8 GB on 4).
LLAMA_70B_AWQ = {"name": "llama-3.3-70b-awq", "params_b": 70.6, "quantization": "awq",
                 "layers": 80, "kv_heads": 8, "head_dim": 128, "context_length": 8192}


def _pairs(count, links, rest):
    return {(a, b): links.get((a, b), rest) for a, b in itertools.combinations(range(count), 2)}


def topology(kind, count):
    """{(a, b): link name} for ``count`` GPUs (a < b); None when not reported."""
    if kind == "unknown":
        return None
    if kind == "nvlink_pairs":
        return _pairs(count, {(i, i + 1): "nvlink" for i in range(0, count, 2)}, "system")
    if kind == "nvlink_quads":
        quads = {(a, b): "nvlink" for q in range(0, count, 4)
                 for a, b in itertools.combinations(range(q, min(q + 4, count)), 2)}
        return _pairs(count, quads, "system")
    half = count // 2
    links = {(i, i + 1): "pcie_switch" for i in range(0, count, 2)}
    links.update({(a, b): "numa" for a, b in itertools.combinations(range(count), 2)
                  if (a < half) == (b < half) and (a, b) not in links})
    return _pairs(count, links, "system")


def link_rank(links, members):
    """The slowest link inside ``members`` (rank in LINKS; unknown when not reported)."""
    if links is None:
        return UNKNOWN
    return max(LINKS.index(links[(a, b)]) for a, b in itertools.combinations(sorted(members), 2))


def multi_instance(rng):
    count = rng.choice((4, 8))
    size = rng.choice((24564, 49152, 81559))
    totals = [size] * count if rng.random() < 0.8 else \
        [rng.choice((24564, 49152, 81559)) for _gpu in range(count)]
    caps = [t - HEADROOM for t in totals]
    kind = rng.choice(TOPOLOGIES)
    wide = rng.randint(1, 2)
    widths = [rng.choice((2, 4) if count == 8 or w == 0 else (2,)) for w in range(wide)]
    singles = rng.randint(1, 4 if count == 8 else 5)
    widths += [1] * singles
    sizes = [rng.choice(SEED_SIZES) if rng.random() < 0.5 else rng.randint(500, 16000)
             for _service in widths]
    load = rng.uniform(0.5, 1.05) * sum(caps)
    factor = load / sum(s * w for s, w in zip(sizes, widths))
    sizes = [max(100, int(s * factor)) for s in sizes]
    return {"totals": totals, "caps": caps, "sizes": sizes, "widths": widths,
            "links": topology(kind, count), "kind": kind}


def exact_multi(caps, sizes, widths, links):
    """{fits, spread, where, link_cost} by exhaustive search: a service of width N takes every
    set of N distinct GPUs with room for its per-GPU size (widest first); single services
    skip GPUs in a state already tried. ``spread`` is the lowest over the complete fits, and
    ``link_cost`` the lowest sum of link ranks of the wide services (not always the same fit)."""
    order = sorted(range(len(sizes)), key=lambda i: (-widths[i], -sizes[i], i))
    loads = [0] * len(caps)
    where = [None] * len(sizes)
    best = {"spread": None, "where": None, "link_cost": None}
    rest = [0]
    for i in order:
        rest[0] += sizes[i] * widths[i]

    def dfs(k, cost):
        if k == len(order):
            value = spread(loads, caps)
            if best["spread"] is None or value < best["spread"]:
                best["spread"], best["where"] = value, list(where)
            if best["link_cost"] is None or cost < best["link_cost"]:
                best["link_cost"] = cost
            return
        if rest[0] > sum(c - load for c, load in zip(caps, loads)):
            return
        service = order[k]
        size, width = sizes[service], widths[service]
        rest[0] -= size * width
        if width == 1:
            seen = set()
            for g, cap in enumerate(caps):
                state = (cap, loads[g])
                if loads[g] + size > cap or state in seen:
                    continue
                seen.add(state)
                loads[g] += size
                where[service] = g
                dfs(k + 1, cost)
                loads[g] -= size
        else:
            room = [g for g, cap in enumerate(caps) if loads[g] + size <= cap]
            sets = list(itertools.combinations(room, width))
            if all(widths[i] == 1 for i in order[k + 1:]):
                # The last wide service: sets leaving the GPUs in the same states (capacity,
                # load) leave the same problem to the single services; the fastest-linked
                # one of them stands for all.
                kept = {}
                for members in sets:
                    after = tuple(sorted((cap, loads[g] + (size if g in members else 0))
                                         for g, cap in enumerate(caps)))
                    rank = link_rank(links, members)
                    if after not in kept or rank < kept[after][0]:
                        kept[after] = (rank, members)
                sets = [members for _rank, members in kept.values()]
            for members in sets:
                for g in members:
                    loads[g] += size
                where[service] = members
                dfs(k + 1, cost + link_rank(links, members))
                for g in members:
                    loads[g] -= size
        where[service] = None
        rest[0] += size * width

    dfs(0, 0)
    return {"fits": best["spread"] is not None, "spread": best["spread"],
            "where": best["where"], "link_cost": best["link_cost"]}


def baseline_multi(kind, caps, sizes, widths, links):
    """(fits, spread, link cost): the largest total first; a service of width N takes the N
    GPUs the rule ranks first (seed001: most free, failing when one lacks room; binpack: the
    fullest after placement that fit; spread: the emptiest that fit), links unseen."""
    loads = [0] * len(caps)
    cost = 0
    for service in sorted(range(len(sizes)), key=lambda i: (-sizes[i] * widths[i], i)):
        size, width = sizes[service], widths[service]
        if kind == "seed001":
            chosen = sorted(range(len(caps)), key=lambda i: (loads[i] - caps[i], i))[:width]
            if any(loads[g] + size > caps[g] for g in chosen):
                return False, None, None
        else:
            fitting = [i for i in range(len(caps)) if loads[i] + size <= caps[i]]
            if len(fitting) < width:
                return False, None, None
            if kind == "binpack":
                chosen = sorted(fitting, key=lambda i: (-(loads[i] + size) / float(caps[i]),
                                                        i))[:width]
            else:
                chosen = sorted(fitting, key=lambda i: (loads[i] / float(caps[i]), i))[:width]
        for g in chosen:
            loads[g] += size
        if width > 1:
            cost += link_rank(links, chosen)
    return True, spread(loads, caps), cost


def _facts(totals, links, names=None):
    gpus = []
    for i, total in enumerate(totals):
        fact = {"index": i, "uuid": "GPU-%d" % i, "memory_total_mib": total,
                "compute_capability": "9.0", "name": names[i] if names else None}
        if links is not None:
            fact["topology"] = [{"index": j, "uuid": "GPU-%d" % j, "nvlink_count": None,
                                 "link": links[(min(i, j), max(i, j))]}
                                for j in range(len(totals)) if j != i]
        gpus.append(fact)
    return gpus


def engine_multi(strategy, inst, services=None, catalog=None):
    """(fits, spread, link cost, {service: [GPU indexes]}) of the engine on ``inst``."""
    if services is None:
        services = [dict({"name": "s%d" % i, "vram_mib": size, "engine": "vllm"},
                         **({"gpus": width} if width > 1 else {}))
                    for i, (size, width) in enumerate(zip(inst["sizes"], inst["widths"]))]
    result = _placement.place(_facts(inst["totals"], inst["links"]), services,
                              strategy=strategy, live_usage="ignore", catalog=catalog)
    where = {a["service"]: [g["gpu_index"] for g in a["gpus"]] for a in result["assignments"]}
    if not result["summary"]["fits"]:
        return False, None, None, where
    table = result["gpus"]
    cost = sum(LINKS.index(result["explanations"][s["name"]]["link"]) for s in services
               if s.get("gpus", 1) > 1)
    return True, spread([g["budget_mib"] for g in table],
                        [g["usable_mib"] for g in table]), cost, where


def multi_quality(count, seed):
    rng = random.Random(seed)
    names = list(_placement.STRATEGIES) + ["baseline: " + k for k in BASELINES]
    stats = {name: {"fits": 0, "optimal": 0, "gap": 0.0, "links": 0, "seconds": 0.0,
                    "wrong": 0} for name in names}
    possible = 0
    exact_seconds = 0.0
    for _instance in range(count):
        inst = multi_instance(rng)
        started = time.perf_counter()
        best = exact_multi(inst["caps"], inst["sizes"], inst["widths"], inst["links"])
        exact_seconds += time.perf_counter() - started
        possible += best["fits"]
        for name in names:
            started = time.perf_counter()
            if name.startswith("baseline: "):
                fits, value, cost = baseline_multi(name[len("baseline: "):], inst["caps"],
                                                   inst["sizes"], inst["widths"],
                                                   inst["links"])
            else:
                fits, value, cost, _where = engine_multi(name, inst)
            row = stats[name]
            row["seconds"] += time.perf_counter() - started
            if fits and not best["fits"]:
                row["wrong"] += 1
            if fits and best["fits"]:
                row["fits"] += 1
                row["gap"] += value - best["spread"]
                row["optimal"] += value - best["spread"] <= TOLERANCE
                row["links"] += cost == best["link_cost"]
    rows = []
    for name, row in stats.items():
        fits = row["fits"]
        rows.append({
            "contender": name, "fits": fits, "possible": possible,
            "fit_ratio": fits / float(possible) if possible else None,
            "optimal_share": row["optimal"] / float(fits) if fits else None,
            "mean_gap": row["gap"] / fits if fits else None,
            "best_links_share": row["links"] / float(fits) if fits else None,
            "ms_per_instance": 1000.0 * row["seconds"] / count, "wrong_fits": row["wrong"],
        })
    return {"instances": count, "seed": seed, "possible": possible,
            "exact_ms_per_instance": 1000.0 * exact_seconds / count, "rows": rows}


def multi_cases():
    """The named multi-GPU boxes: {case, box, services, exact, rows}."""
    h100 = 81559
    # Two PCIe switches of two GPUs each under one CPU (nvidia-smi: PXB within, NODE across).
    workstation = _pairs(4, {(0, 1): "pcie_switch", (2, 3): "pcie_switch"}, "numa")
    cases = [
        ("8x 80 GB, gpus 4 + 2: NVLink pairs, a 4-GPU and a 2-GPU vLLM, three single "
         "services",
         [h100] * 8, topology("nvlink_pairs", 8),
         [{"name": "chat", "engine": "vllm", "vram_mib": 60000, "gpus": 4},
          {"name": "code", "engine": "vllm", "vram_mib": 50000, "gpus": 2},
          {"name": "embed", "vram_mib": 4000}, {"name": "whisper", "vram_mib": 6000},
          {"name": "ollama", "engine": "ollama", "vram_mib": 20000}]),
        ("4x 24 GB, 70B at gpus 2: PCIe switch pairs, NUMA between, a 70B AWQ model at gpus 2, "
         "three single services", [24564] * 4, workstation,
         [{"name": "llm70b", "engine": "vllm", "model": LLAMA_70B_AWQ["name"], "gpus": 2},
          {"name": "ollama", "engine": "ollama", "vram_mib": 8000},
          {"name": "whisper", "vram_mib": 3000}, {"name": "embed", "vram_mib": 1500}]),
        ("4x 24 GB, 70B at gpus 4: PCIe switch pairs, NUMA between, a 70B AWQ model at gpus 4, "
         "two single services", [24564] * 4, workstation,
         [{"name": "llm70b", "engine": "vllm", "model": LLAMA_70B_AWQ["name"], "gpus": 4},
          {"name": "ollama", "engine": "ollama", "vram_mib": 8000},
          {"name": "whisper", "vram_mib": 3000}]),
        ("mixed topology, gpus 4 + 2: 4x 80 GB NVLink quad, 2x 48 GB on a PCIe switch, "
         "2x 48 GB on host bridges, SYS between, a 4-GPU and a 2-GPU vLLM, three single "
         "services",
         [h100] * 4 + [49152] * 4,
         _pairs(8, {**{(a, b): "nvlink" for a, b in itertools.combinations(range(4), 2)},
                    (4, 5): "pcie_switch", (6, 7): "host_bridge"}, "system"),
         [{"name": "chat", "engine": "vllm", "vram_mib": 45000, "gpus": 4},
          {"name": "code", "engine": "vllm", "vram_mib": 30000, "gpus": 2},
          {"name": "embed", "vram_mib": 4000}, {"name": "whisper", "vram_mib": 6000},
          {"name": "ollama", "engine": "ollama", "vram_mib": 20000}]),
    ]
    out = []
    for name, totals, links, services in cases:
        inst = {"totals": totals, "links": links}
        probe = _placement.place(_facts(totals, links), services, live_usage="ignore",
                                 catalog=[LLAMA_70B_AWQ])
        sizes = [a["vram_requested_mib"] for a in probe["assignments"]]
        widths = [s.get("gpus", 1) for s in services]
        caps = [g["usable_mib"] for g in probe["gpus"]]
        best = exact_multi(caps, sizes, widths, links)
        rows = []
        for strategy in _placement.STRATEGIES:
            fits, value, cost, where = engine_multi(strategy, inst, services, [LLAMA_70B_AWQ])
            rows.append({"contender": strategy, "fits": fits, "spread": value,
                         "link_cost": cost, "where": where})
        for kind in BASELINES:
            fits, value, cost = baseline_multi(kind, caps, sizes, widths, links)
            rows.append({"contender": "baseline: " + kind, "fits": fits, "spread": value,
                         "link_cost": cost, "where": None})
        for row in rows:
            row["gap"] = row["spread"] - best["spread"] if row["fits"] and best["fits"] \
                else None
        names = [s["name"] for s in services]
        out.append({"case": name, "services": dict(zip(names, zip(sizes, widths))),
                    "exact": best, "rows": rows})
    return out


# ---- 3. the seeds' reference cases -------------------------------------------------------

def _layout(names, where, count):
    """'GPU0: a, b; GPU1: c' (unplaced services listed apart)."""
    parts = []
    for g in range(count):
        on = [n for n, w in zip(names, where) if w == g]
        parts.append("GPU%d: %s" % (g, ", ".join(on) if on else "-"))
    left = [n for n, w in zip(names, where) if w is None]
    if left:
        parts.append("unplaced: " + ", ".join(left))
    return "; ".join(parts)


def _engine_row(result, names):
    summary = result["summary"]
    by_name = {a["service"]: a["gpu_index"] for a in result["assignments"]}
    where = [by_name.get(n) for n in names]
    table = result["gpus"]
    value = spread([g["budget_mib"] for g in table], [g["usable_mib"] for g in table])
    return {"fits": summary["fits"], "spread": value if summary["fits"] else None,
            "where": where, "warnings": summary["warning_count"],
            "overcommitted": summary["overcommitted_gpus"], "adjusted": summary["adjusted"]}


def reference_cases(path=REFERENCE_CASES):
    with open(path, encoding="utf-8") as handle:
        cases = yaml.safe_load(handle)["cases"]
    out = []
    for case in cases:
        gpus = [dict(g, index=i, uuid="GPU-ref-%d" % i) for i, g in enumerate(case["gpus"])]
        names = [s["name"] for s in case["services"]]
        probe = _placement.place(gpus, case["services"], strategy="vram_based",
                                 live_usage="ignore")
        sizes = {a["service"]: a["vram_requested_mib"] for a in probe["assignments"]}
        sizes = [sizes[n] for n in names]
        caps = [g["usable_mib"] for g in probe["gpus"]]
        feasible, optimum, best = exact(caps, sizes)
        seed_layout = case.get("seed_layout") or {}
        pinned = [dict(s, gpu=seed_layout[s["name"]]) if s["name"] in seed_layout else s
                  for s in case["services"]]
        rows = [dict(_engine_row(_placement.place(gpus, pinned, strategy="manual",
                                                  live_usage="ignore"), names),
                     contender="seed's own layout")]
        for strategy in _placement.STRATEGIES:
            result = _placement.place(gpus, case["services"], strategy=strategy,
                                      live_usage="ignore")
            rows.append(dict(_engine_row(result, names), contender=strategy))
        for kind in BASELINES:
            fits, value, where = baseline(kind, caps, sizes)
            rows.append({"contender": "baseline: " + kind, "fits": fits, "spread": value,
                         "where": where, "warnings": None, "overcommitted": None,
                         "adjusted": None})
        for row in rows:
            row["layout"] = _layout(names, row.pop("where"), len(gpus))
            row["gap"] = (row["spread"] - optimum) if row["fits"] and feasible and \
                row["spread"] is not None else None
            row["seed_layout"] = row["layout"] == _layout(
                names, [seed_layout.get(n) for n in names], len(gpus))
        out.append({
            "case": case["name"], "source": case["source"],
            "gpus": ["%s (%d MiB, %d usable)" % (g["name"], g["memory_total_mib"], c)
                     for g, c in zip(case["gpus"], caps)],
            "services": dict(zip(names, sizes)), "demand_mib": sum(sizes),
            "usable_mib": sum(caps), "exact_fits": feasible, "exact_spread": optimum,
            "exact_layout": _layout(names, best, len(gpus)) if feasible else None,
            "rows": rows,
        })
    return out


# ---- 4. speed at 10 / 100 / 1,000 GPUs ---------------------------------------------------

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


def _timed(run, repeats):
    times = []
    result = None
    for _repeat in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return _common.median(times), times, result


def scale(sizes, seed):
    out = []
    for gpus, per_host, repeats in sizes:
        hosts = gpus // per_host
        fleet_hosts, demand = fleet(hosts, per_host, 5 * gpus, seed)
        rows = []
        for strategy in _placement.STRATEGIES:
            seconds, times, result = _timed(
                lambda s=strategy, h=fleet_hosts, d=demand: _placement.place_fleet(
                    h, d, strategy=s, live_usage="ignore"), repeats)
            summary = result["summary"]
            rows.append({"contender": strategy, "seconds": seconds, "runs": times,
                         "placed": summary["placed"], "services": summary["services"],
                         "fits": summary["fits"], "spread": summary["utilization_stddev"],
                         "warnings": summary["warning_count"]})
        caps = [g["memory_total_mib"] - HEADROOM for h in fleet_hosts for g in h["gpus"]]
        sizes_mib = [d["vram_mib"] for d in demand]
        for kind in BASELINES:
            seconds, times, result = _timed(
                lambda k=kind, c=caps, m=sizes_mib: baseline(k, c, m), repeats)
            fits, value, where = result
            rows.append({"contender": "baseline: " + kind, "seconds": seconds, "runs": times,
                         "placed": sum(w is not None for w in where),
                         "services": len(demand), "fits": fits,
                         "spread": round(value, 4) if value is not None else None,
                         "warnings": None})
        reference = next(r["seconds"] for r in rows if r["contender"] == "vram_based")
        for row in rows:
            row["ratio_to_vram_based"] = _common.ratio(row["seconds"], reference)
        out.append({"gpus": gpus, "hosts": hosts, "gpus_per_host": per_host,
                    "services": len(demand), "repeats": repeats, "rows": rows})
    for smaller, larger in zip(out, out[1:]):
        for row in larger["rows"]:
            before = next(r for r in smaller["rows"] if r["contender"] == row["contender"])
            row["growth_vs_previous"] = _common.ratio(row["seconds"], before["seconds"])
    return out


# ---- output ------------------------------------------------------------------------------

def _pct(value):
    return _common.fmt(None if value is None else 100.0 * value, "%.1f %%")


def _links_text(cost, widths):
    """A link cost as the link names when one service spans GPUs, else the sum."""
    if cost is None:
        return "-"
    return LINKS[cost] if sum(1 for w in widths if w > 1) == 1 else "sum %d" % cost


def _multi_markdown(result):
    f = _common.fmt
    q = result["multi_quality"]
    parts = ["### Quality, multi-GPU: %d generated instances of 4 and 8 GPUs with one or two "
             "services spanning 2 or 4 GPUs, a complete fit exists in %d (exact solver %.1f ms "
             "each)" % (q["instances"], q["possible"], q["exact_ms_per_instance"]), ""]
    parts.append(_common.table(
        ["strategy", "fits found / possible", "optimal spread", "mean gap", "best links",
         "ms / instance"],
        [[r["contender"], "%d / %d (%s)" % (r["fits"], r["possible"], _pct(r["fit_ratio"])),
          _pct(r["optimal_share"]), f(r["mean_gap"], "%.4f"), _pct(r["best_links_share"]),
          f(r["ms_per_instance"])] for r in q["rows"]]))
    cases = result["multi_cases"]
    parts += ["", "### Multi-GPU boxes (each cell: fit, spread above the exact optimum, the "
              "slowest link inside the service spanning GPUs)", ""]
    headers = ["strategy"] + ["%s. %s" % (n, c["case"].split(":")[0])
                              for n, c in enumerate(cases, 1)]
    rows = []
    for i, first in enumerate(cases[0]["rows"]):
        cells = [first["contender"]]
        for case in cases:
            r = case["rows"][i]
            widths = [w for _size, w in case["services"].values()]
            links = _links_text(r["link_cost"], widths)
            cells.append("fits, gap %s, %s" % (f(r["gap"], "%.3f"), links)
                         if r["fits"] else "no fit")
        rows.append(cells)
    exact_cells = ["exact"]
    for case in cases:
        widths = [w for _size, w in case["services"].values()]
        best = case["exact"]
        exact_cells.append("spread %.4f, best links %s" % (
            best["spread"], _links_text(best["link_cost"], widths))
            if best["fits"] else "no fit")
    parts.append(_common.table(headers, [exact_cells, *rows]))
    parts.append("")
    for n, case in enumerate(cases, 1):
        where = next(r["where"] for r in case["rows"] if r["contender"] == "vram_based")
        parts.append("%d. %s. Per-GPU budgets: %s. vram_based: %s." % (
            n, case["case"], ", ".join("%s %d MiB x %d" % (name, size, width)
                                       for name, (size, width) in case["services"].items()),
            "; ".join("%s on GPU %s" % (name, ", ".join(str(g) for g in gpus))
                      for name, gpus in where.items())))
    return "\n".join(parts)


def markdown(result):
    f = _common.fmt
    q = result["quality"]
    parts = ["### Quality: %d generated instances, a complete fit exists in %d "
             "(exact solver %.1f ms each)" % (q["instances"], q["possible"],
                                              q["exact_ms_per_instance"]), ""]
    parts.append(_common.table(
        ["strategy", "fits found / possible", "optimal spread", "mean gap", "ms / instance"],
        [[r["contender"], "%d / %d (%s)" % (r["fits"], r["possible"], _pct(r["fit_ratio"])),
          _pct(r["optimal_share"]), f(r["mean_gap"], "%.4f"), f(r["ms_per_instance"])]
         for r in q["rows"]]))
    parts += ["", _multi_markdown(result)]
    if "references" not in result:
        machine = result["machine"]
        parts += ["", "Quality only (`--quality-only`). Measured on %s CPUs (load average %s), "
                  "Python %s, commit %s, %s."
                  % (machine["cpus"], machine["load"], machine["python"], machine["commit"],
                     machine["date"])]
        return "\n".join(parts)
    parts += ["", "### Reference cases (the seeds' boxes, `bench/reference_cases.yml`)", ""]
    cases = result["references"]
    headers = ["strategy"] + ["%s. %s" % (n, c["case"]) for n, c in enumerate(cases, 1)]
    rows = []
    for i, first in enumerate(cases[0]["rows"]):
        cells = [first["contender"]]
        for case in cases:
            r = case["rows"][i]
            cell = ("fits, gap %s" % f(r["gap"], "%.3f")) if r["fits"] else "no fit"
            cells.append(cell + (", seed's layout" if r["seed_layout"] else ""))
        rows.append(cells)
    parts.append(_common.table(headers, rows))
    parts.append("")
    for n, case in enumerate(cases, 1):
        layouts = {}
        for r in case["rows"][1:]:
            layouts.setdefault(r["layout"], []).append(r["contender"])
        parts.append("%d. %s: %s. Demand %s MiB of %s usable (%s). Exact: %s. Seed: %s. "
                     "Chosen: %s." % (
                         n, case["source"], "; ".join(case["gpus"]),
                         "{:,}".format(case["demand_mib"]), "{:,}".format(case["usable_mib"]),
                         ", ".join("%s %d" % kv for kv in case["services"].items()),
                         ("best spread %.4f with %s" % (case["exact_spread"],
                                                        case["exact_layout"]))
                         if case["exact_fits"] else "no placement fits every service",
                         case["rows"][0]["layout"],
                         " | ".join("%s (%s)" % (layout, ", ".join(who))
                                    for layout, who in layouts.items())))
    parts.append("")
    parts += ["### Speed: 5 services per GPU at %s GPUs (`place_fleet`; baselines over the "
              "flat GPU list)" % " / ".join("{:,}".format(s["gpus"]) for s in result["scale"]),
              ""]
    headers = ["strategy"]
    for s in result["scale"]:
        headers.append("{:,} GPUs s (x vram_based)".format(s["gpus"]))
    headers += ["growth per 10x GPUs", "fits at %s" % "{:,}".format(result["scale"][-1]["gpus"]),
                "spread at largest", "warnings at largest"]
    rows = []
    for i, row in enumerate(result["scale"][0]["rows"]):
        cells = [row["contender"]]
        for s in result["scale"]:
            r = s["rows"][i]
            cells.append("%s (%s)" % (f(r["seconds"], "%.3f"),
                                      f(r["ratio_to_vram_based"], "%.2f")))
        last = result["scale"][-1]["rows"][i]
        growth = [s["rows"][i].get("growth_vs_previous") for s in result["scale"][1:]]
        cells += [" / ".join(f(g, "%.0fx") for g in growth),
                  "%s (%d / %d)" % ("yes" if last["fits"] else "no", last["placed"],
                                    last["services"]),
                  f(last["spread"], "%.4f"), f(last["warnings"], "%d")]
        rows.append(cells)
    parts.append(_common.table(headers, rows))
    machine = result["machine"]
    runs = ", ".join("%d at %s GPUs" % (s["repeats"], "{:,}".format(s["gpus"]))
                     for s in result["scale"])
    parts += ["", "Runs per size (median): %s. Measured on %s CPUs (load average %s), Python %s, "
              "commit %s, %s." % (runs, machine["cpus"], machine["load"], machine["python"],
                                  machine["commit"], machine["date"])]
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (about a second)")
    parser.add_argument("--instances", type=int, help="generated instances (default 5000)")
    parser.add_argument("--multi-instances", type=int,
                        help="generated multi-GPU instances (default %d)" % MULTI_INSTANCES)
    parser.add_argument("--seed", type=int, default=20250123)
    parser.add_argument("--quality-only", action="store_true",
                        help="only the generated instances and the multi-GPU boxes (no reference "
                        "cases, no speed)")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    count = args.instances or (60 if args.quick else 5000)
    started = time.perf_counter()
    result = {
        "benchmark": "placement", "quick": args.quick, "machine": _common.machine(),
        "quality": quality(count, args.seed),
        "multi_quality": multi_quality(
            args.multi_instances or (20 if args.quick else MULTI_INSTANCES), args.seed),
        "multi_cases": multi_cases(),
    }
    if not args.quality_only:
        result["references"] = reference_cases()
        result["scale"] = scale(QUICK_SCALES if args.quick else SCALES, args.seed)
    result["seconds"] = time.perf_counter() - started
    _common.write_outputs(args, result, markdown(result))
    wrong = sum(r["wrong_fits"] for r in result["quality"]["rows"] +
                result["multi_quality"]["rows"])
    if wrong:
        print("\nERROR: %d fits reported where the exact solver found none" % wrong)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
