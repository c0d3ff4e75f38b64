# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import pathlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import placement
from ansible_collections.gpufleet.inference.plugins.module_utils import _placement

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "placement"
SEED_GPUS = json.loads((FIXTURES / "seed001_gpus.json").read_text())
SEED_SERVICES = json.loads((FIXTURES / "seed001_services.json").read_text())


def test_filters_are_registered():
    assert sorted(placement.FilterModule().filters()) == ["gpu_fleet_placement", "gpu_placement"]


@pytest.mark.parametrize("strategy", _placement.STRATEGIES)
def test_filter_equals_the_engine(strategy):
    via_filter = placement.gpu_placement(SEED_GPUS, SEED_SERVICES, strategy=strategy,
                                         managed_processes=["ollama"])
    direct = _placement.place(SEED_GPUS, SEED_SERVICES, strategy=strategy,
                              managed_processes=["ollama"])
    assert via_filter == direct
    assert via_filter["warnings"]


def test_fleet_filter():
    fleet = json.loads((FIXTURES / "fleet_seed002.json").read_text())
    result = placement.gpu_fleet_placement(fleet["hosts"], fleet["services"])
    assert [a["host"] for a in result["assignments"]] == [
        "khelben", "elminster", "elminster", "drizzt", "danilo"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: placement.gpu_placement(SEED_GPUS, [{"name": "s", "vram_mib": -5}]),
     "gpu_placement: services[0].vram_mib must be > 0; got: -5"),
    (lambda: placement.gpu_placement(SEED_GPUS, SEED_SERVICES, strategy="fast"),
     "gpu_placement: strategy must be one of manual, vram_based, latency_optimized, "
     "isolation_first, balanced; got: 'fast'"),
    (lambda: placement.gpu_placement(SEED_GPUS, SEED_SERVICES, colour="red"),
     "gpu_placement: "),
    (lambda: placement.gpu_fleet_placement("x", []),
     "gpu_fleet_placement: hosts must be a list"),
])
def test_bad_input_raises_a_filter_error(call, message):
    with pytest.raises(AnsibleFilterError) as caught:
        call()
    assert str(caught.value).startswith(message)


def test_filter_places_around_a_lost_gpu_and_says_so():
    lost = {"index": None, "uuid": "GPU-dead", "pci_bus_id": "00000000:65:00.0",
            "healthy": False, "errors": ["GPU is lost"], "memory_total_mib": None}
    result = placement.gpu_placement([*SEED_GPUS, lost], SEED_SERVICES)
    assert result["warnings"][0] == ("GPU 00000000:65:00.0 (uuid GPU-dead) is unhealthy and "
                                     "left out of placement: GPU is lost.")
    assert {a["gpu"] for a in result["assignments"]} == {"0", "1"}
