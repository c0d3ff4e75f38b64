# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The indexed chooser (_Chooser, what place and place_fleet use above INDEX_MIN_UNITS units)
gives exactly the results of the plain one (_choose: every unit keyed for every service), on
random instances made to collide: few GPU and budget sizes (ties everywhere), hosts, labels,
dedicated hosts, compute capabilities, exclusive services, pins, MIG devices, unknown memory,
unhealthy GPUs; and on a fleet as the speed benchmark generates them."""

from __future__ import annotations

import random

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement

SIZES = (4096, 8192, 8192, 16384, 16384, 24576)
BUDGETS = (512, 1024, 1024, 2048, 3072, 4096, 4096, 6000, 9000, 20000)
CCS = ("7.5", "8.6", "8.6", "9.0", None)


# The scoring rules (_mode) each strategy places by, its repair pass included.
MODES = {
    "manual": {"most_free", "best_fit"}, "vram_based": {"most_free", "best_fit"},
    "balanced": {"balanced", "best_fit"}, "latency_optimized": {"critical", "noncritical"},
    "isolation_first": {"isolated", "shared", "sharing"},
}


class _Plain:
    """_chooser's stand-in: every choice by _choose over all units; records the modes."""

    def __init__(self, state, modes):
        self.state = state
        self.modes = modes

    def choose(self, service, mode, fleet_dedicated):
        self.modes.add(mode)
        return _placement._choose(service, self.state.units, mode, fleet_dedicated)


def _gpu(rng, host, index):
    fact = {"index": index, "uuid": "GPU-%s-%d" % (host, index), "name": "G%d" % index,
            "memory_total_mib": rng.choice(SIZES), "compute_capability": rng.choice(CCS),
            "power_limit_w": rng.choice((250.0, 300.0))}
    fact["memory_used_mib"] = rng.choice((0, 0, 512, 3000))
    roll = rng.random()
    if roll < 0.05:
        fact["memory_total_mib"] = None
    elif roll < 0.1:
        fact.update(healthy=False, errors=["Xid 79"])
    elif roll < 0.15:
        fact.update(mig_mode="Enabled", mig_devices=[
            {"index": j, "uuid": "MIG-%s-%d-%d" % (host, index, j), "memory_total_mib": size,
             "memory_free_mib": size} for j, size in enumerate(rng.sample((4864, 9984), 2))])
    return fact


def _service(rng, i, hosts, uuids):
    service = {"name": "s%02d" % i, "vram_mib": rng.choice(BUDGETS),
               "engine": rng.choice(("ollama", "vllm", "other", "other"))}
    if rng.random() < 0.3:
        service["role"] = rng.choice(("llm", "embedding"))
    for key, share in (("latency_critical", 0.3), ("exclusive", 0.1)):
        if rng.random() < share:
            service[key] = True
    if rng.random() < 0.15:
        service["min_compute_capability"] = rng.choice(("8.0", "8.9"))
    if hosts and rng.random() < 0.15:
        service["host"] = rng.choice(hosts)
    if hosts and rng.random() < 0.15:
        service["node_selector"] = {"zone": rng.choice(("a", "b"))}
    if rng.random() < 0.1:
        service["gpu"] = rng.choice([*uuids, "GPU-missing"])
    return service


def _instance(rng, fleet):
    names = ["h%d" % h for h in range(rng.randint(1, 4) if fleet else 1)]
    hosts = [{"name": name, "gpus": [_gpu(rng, name, i) for i in range(rng.randint(1, 5))],
              "labels": {"zone": rng.choice(("a", "b"))},
              "dedicated": rng.choice(([], [], [], ["vllm"], ["s03"]))} for name in names]
    uuids = [g["uuid"] for h in hosts for g in h["gpus"]]
    services = [_service(rng, i, names if fleet else [], uuids)
                for i in range(rng.randint(1, 24))]
    options = {"live_usage": rng.choice(("account", "ignore")),
               "headroom_mib": rng.choice((0, 512))}
    return hosts, services, options


def _packing(rng, fleet):
    """Many GPUs of one or two sizes, demand near the total: most free leaves a service
    without room where best fit places them all (the repair pass), with ties in every group."""
    sizes = rng.sample((8192, 12288, 16384), rng.randint(1, 2))
    hosts = [{"name": "h%d" % h, "gpus": [{"index": i, "uuid": "GPU-%d-%d" % (h, i),
                                           "memory_total_mib": rng.choice(sizes)}
                                          for i in range(rng.randint(2, 6))]}
             for h in range(rng.randint(1, 3) if fleet else 1)]
    room = sum(g["memory_total_mib"] for h in hosts for g in h["gpus"])
    services = []
    while room > 0:
        budget = min(rng.choice((1024, 2048, 3072, 4096, 5120, 6144)), room)
        services.append({"name": "p%02d" % len(services), "vram_mib": budget,
                         "role": rng.choice(("llm", "other", "other")),
                         "exclusive": rng.random() < 0.15})
        room -= budget
    for service in services[-2:]:  # the smallest, on a GPU before the others are placed
        service["gpu"] = rng.choice(hosts[-1]["gpus"])["uuid"]
    return hosts, services, {"live_usage": "ignore", "headroom_mib": 0}


def _run(fleet, hosts, services, strategy, options):
    if fleet:
        return _placement.place_fleet(hosts, services, strategy=strategy, **options)
    return _placement.place(hosts[0]["gpus"], services, strategy=strategy, **options)


@pytest.mark.parametrize("fleet", [False, True])
@pytest.mark.parametrize("strategy", _placement.STRATEGIES)
def test_indexed_chooser_places_as_the_plain_one(monkeypatch, strategy, fleet):
    rng = random.Random("%s-%s" % (strategy, fleet))
    instances = [(_packing if i % 3 == 0 else _instance)(rng, fleet) for i in range(120)]
    monkeypatch.setattr(_placement, "INDEX_MIN_UNITS", 0)  # the index even for one GPU
    indexed = [_run(fleet, *inst[:2], strategy, inst[2]) for inst in instances]
    modes = set()
    monkeypatch.setattr(_placement, "_chooser", lambda state, services: _Plain(state, modes))
    for (hosts, services, options), got in zip(instances, indexed):
        assert got == _run(fleet, hosts, services, strategy, options), (hosts, services, options)
    assert modes == MODES[strategy]  # each rule of the strategy was compared


def test_indexed_chooser_at_fleet_size(monkeypatch):
    """60 GPUs on 15 hosts, 5 services per GPU (bench/placement.py's speed instances): every
    strategy, the index as place_fleet uses it by default."""
    rng = random.Random(60)
    hosts = [{"name": "h%02d" % h, "gpus": [
        {"index": i, "uuid": "GPU-%02d-%d" % (h, i),
         "memory_total_mib": rng.choice((16384, 24564, 40960, 81559)),
         "compute_capability": rng.choice(("8.0", "8.6", "8.9", "9.0"))} for i in range(4)]}
        for h in range(15)]
    services = [{"name": "s%03d" % i, "vram_mib": rng.randint(500, 12000),
                 "role": "llm" if rng.random() < 0.2 else "other",
                 "latency_critical": rng.random() < 0.2} for i in range(300)]
    assert len(hosts) * 4 > _placement.INDEX_MIN_UNITS
    indexed = {s: _placement.place_fleet(hosts, services, strategy=s, live_usage="ignore")
               for s in _placement.STRATEGIES}
    modes = set()
    monkeypatch.setattr(_placement, "_chooser", lambda state, services: _Plain(state, modes))
    for strategy, got in indexed.items():
        assert got == _placement.place_fleet(hosts, services, strategy=strategy,
                                             live_usage="ignore"), strategy
    assert modes == {"most_free", "balanced", "critical", "noncritical", "isolated", "shared"}
