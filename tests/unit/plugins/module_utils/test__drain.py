# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drain wait: a fake driver (a timeline of readings) and a fake clock, no sleeps."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _drain


def gpu(used, *procs, index=0):
    return {"index": index, "uuid": "GPU-%d" % index, "memory_used_mib": used,
            "processes": [{"pid": pid, "name": name, "used_memory_mib": mib}
                          for pid, name, mib in procs]}


class Fake:
    """A clock advanced only by sleep(); read() returns the reading for the current time."""

    def __init__(self, timeline):
        self.now = 0.0
        self.timeline = timeline  # [(from_t, [gpus])], ascending

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def read(self):
        current = self.timeline[0][1]
        for start, gpus in self.timeline:
            if self.now >= start:
                current = gpus
        return current


OLLAMA = (4242, "ollama runner qwen2.5:7b", 4683)

CASES = [
    # id, timeline, kwargs, drained, waited_s
    ("drains", [(0, [gpu(5000, OLLAMA)]), (1.0, [gpu(5000)]), (3.0, [gpu(300)])],
     dict(names=["ollama"], stable_s=2.0), True, 5.0),
    ("already_empty", [(0, [gpu(0)])], dict(pids=[4242], stable_s=1.0), True, 1.0),
    ("never_drains", [(0, [gpu(5000, OLLAMA)])], dict(names=["ollama"], timeout_s=10.0),
     False, 10.0),
    ("fluctuates_then_settles",
     [(0, [gpu(900)]), (1, [gpu(400)]), (2, [gpu(800)]), (3, [gpu(300)]), (4, [gpu(310)])],
     dict(stable_s=2.0, tolerance_mib=64), True, 5.0),
    # The process left the list but the driver still holds its memory: the target waits.
    ("gone_but_held", [(0, [gpu(5000)]), (6.0, [gpu(317)])],
     dict(pids=[4242], target_used_mib=317, stable_s=1.0), True, 7.0),
    ("held_forever_times_out", [(0, [gpu(5000)])],
     dict(pids=[4242], target_used_mib=317, stable_s=1.0, timeout_s=4.0), False, 4.0),
    ("pid_match_on_other_gpu_ignored",
     [(0, [gpu(0), gpu(2000, (4242, "x", 2000), index=1)])],
     dict(gpus=["0"], pids=[4242], stable_s=1.0), True, 1.0),
    ("uuid_selects_gpu", [(0, [gpu(0, OLLAMA, index=0), gpu(10, index=1)])],
     dict(gpus=["GPU-1"], names=["ollama"], stable_s=0.5), True, 0.5),
]


@pytest.mark.parametrize("timeline, kwargs, drained, waited",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wait_drained(timeline, kwargs, drained, waited):
    fake = Fake(timeline)
    kwargs.setdefault("interval_s", 0.5)
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, **kwargs)
    assert result["drained"] is drained, result["reason"]
    assert result["waited_s"] == pytest.approx(waited)
    assert result["samples"][-1] == result["last"]
    if not drained:
        assert result["reason"].startswith("GPU memory did not drain within")


def test_timeout_reason_names_the_process_left():
    fake = Fake([(0, [gpu(5000, OLLAMA)])])
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, names=["ollama"],
                                 stable_s=1.0, timeout_s=2.0)
    assert result["reason"] == ("GPU memory did not drain within 2.0 s: processes still on the "
                                "GPU: ollama runner qwen2.5:7b (pid 4242, GPU 0)")
    assert result["last"]["processes"][0]["used_memory_mib"] == 4683


def test_samples_are_capped():
    fake = Fake([(0, [gpu(5000, OLLAMA)])])
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, names=["ollama"],
                                 timeout_s=100.0, max_samples=5)
    assert len(result["samples"]) == 5 and result["samples"][-1]["t"] == 100.0


def test_unknown_used_memory_never_meets_a_target():
    fake = Fake([(0, [gpu(None)])])
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, target_used_mib=0,
                                 stable_s=0.5, timeout_s=1.0)
    assert not result["drained"] and "None MiB" in result["reason"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(stable_s=-1), "stable must be >= 0; got: -1"),
    (dict(timeout_s=0), "timeout must be > 0; got: 0"),
    (dict(interval_s="1"), "interval must be a number; got: '1'"),
    (dict(tolerance_mib=True), "tolerance_mib must be a number; got: True"),
    (dict(target_used_mib=-5), "target_used_mib must be >= 0; got: -5"),
    (dict(pids=[1, -3]), "pids[1] must be a positive integer; got: -3"),
    (dict(names=["ollama", " "]), "names[1] must be a non-empty string; got: ' '"),
    (dict(gpus=["7"]), "gpus names GPUs this host does not have: 7"),
])
def test_bad_input(kwargs, message):
    fake = Fake([(0, [gpu(0)])])
    with pytest.raises(ValueError) as err:
        _drain.wait_drained(fake.read, fake.clock, fake.sleep, **kwargs)
    assert str(err.value) == message


def spark(*procs):
    """A GB10: NVML lists only live processes and their memory (no memory size)."""
    reading = gpu(sum(p[2] for p in procs), *procs)
    reading["memory_kind"] = "unified"
    return reading


class Meminfo:
    """MemAvailable over time, on the same fake clock: [(from_t, MiB)], ascending."""

    def __init__(self, fake, timeline):
        self.fake, self.timeline = fake, timeline

    def __call__(self):
        return [mib for start, mib in self.timeline if self.fake.now >= start][-1]


# Ollama leaves at t=1; the driver holds its 4683 MiB until t=9 (an 8 s drain).
SPARK_TIMELINE = [(0, [spark(OLLAMA)]), (1.0, [spark()])]
SPARK_AVAILABLE = [(0, 100000), (9.0, 104683)]


def test_unified_drain_waits_for_memavailable_back_at_the_baseline():
    fake = Fake(SPARK_TIMELINE)
    result = _drain.wait_drained(
        fake.read, fake.clock, fake.sleep, names=["ollama"], stable_s=2.0, interval_s=0.5,
        read_available=Meminfo(fake, SPARK_AVAILABLE), baseline_available_mib=104683)
    assert result["drained"], result["reason"]
    assert result["waited_s"] == pytest.approx(11.0)
    assert result["last"]["available_mib"] == 104683


def test_unified_drain_without_the_signal_ends_before_the_memory_is_free():
    """NVML's live-process sum drops at exit: the defect the MemAvailable signal fixes."""
    fake = Fake(SPARK_TIMELINE)
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, names=["ollama"],
                                 stable_s=2.0, interval_s=0.5, target_used_mib=0)
    assert result["drained"] and result["waited_s"] == pytest.approx(3.0)


def test_unified_drain_needs_memavailable_stable_for_the_stable_time():
    """No baseline: MemAvailable climbing back resets the stable time until it holds."""
    fake = Fake(SPARK_TIMELINE)
    climbing = [(0, 100000), (2.0, 101000), (3.0, 102000), (4.0, 104000), (5.0, 104683),
                (6.0, 104700)]
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, names=["ollama"],
                                 stable_s=2.0, interval_s=0.5,
                                 read_available=Meminfo(fake, climbing))
    assert result["drained"] and result["waited_s"] == pytest.approx(7.0)


def test_unified_drain_times_out_naming_memavailable():
    fake = Fake(SPARK_TIMELINE)
    result = _drain.wait_drained(
        fake.read, fake.clock, fake.sleep, names=["ollama"], stable_s=1.0, timeout_s=4.0,
        read_available=Meminfo(fake, [(0, 100000)]), baseline_available_mib=104683)
    assert not result["drained"]
    assert result["reason"] == (
        "GPU memory did not drain within 4.0 s: MemAvailable 100000 MiB is still below the "
        "baseline 104683 MiB (-64): the driver still holds memory of the processes that left")


def test_discrete_gpu_ignores_memavailable():
    fake = Fake([(0, [gpu(5000, OLLAMA)]), (1.0, [gpu(300)])])

    def unused():
        raise AssertionError("meminfo must not be read for a discrete GPU")

    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, names=["ollama"],
                                 stable_s=1.0, read_available=unused,
                                 baseline_available_mib=999999)
    assert result["drained"] and result["waited_s"] == pytest.approx(2.0)
    assert "available_mib" not in result["last"]


def test_bad_baseline_names_the_field():
    fake = Fake([(0, [spark()])])
    with pytest.raises(ValueError) as err:
        _drain.wait_drained(fake.read, fake.clock, fake.sleep, baseline_available_mib=-1)
    assert str(err.value) == "baseline_available_mib must be >= 0; got: -1"


# The criterion: gone, back at the target, then steady for stable_s (not a constant after
# the last movement). Ollama holds 4683 MiB over a static 317; it leaves at t=1.
BACK_CASES = [
    # id, timeline, kwargs, drained, waited_s
    # The default stable interval: back at t=2.0, drained two readings later.
    ("default_stable_after_the_memory_is_back",
     [(0, [gpu(5000, OLLAMA)]), (1.0, [gpu(5000)]), (2.0, [gpu(317)])],
     dict(names=["ollama"], target_used_mib=317), True, 3.0),
    # A drain of 10 s costs the drain plus stable_s, not a settle after it.
    ("long_drain_then_stable",
     [(0, [gpu(5000, OLLAMA)]), (1.0, [gpu(5000)]), (11.0, [gpu(317)])],
     dict(names=["ollama"], target_used_mib=317, stable_s=1.0), True, 12.0),
    # Back at the target, then something takes memory again: the stable time starts over.
    ("back_then_taken_again",
     [(0, [gpu(5000)]), (1.0, [gpu(317)]), (1.5, [gpu(2000)]), (3.0, [gpu(317)])],
     dict(pids=[4242], target_used_mib=317, stable_s=1.0), True, 4.0),
    # Back in two steps (two processes): the first step is not the target.
    ("two_steps_wait_for_the_second",
     [(0, [gpu(9000)]), (1.0, [gpu(4600)]), (4.0, [gpu(317)])],
     dict(pids=[4242, 4343], target_used_mib=317, stable_s=0.5), True, 4.5),
    # Moving within the tolerance while back counts as steady.
    ("jitter_within_tolerance",
     [(0, [gpu(5000)]), (1.0, [gpu(317)]), (1.5, [gpu(360)]), (2.0, [gpu(300)])],
     dict(pids=[4242], target_used_mib=317, stable_s=1.0, tolerance_mib=64), True, 2.0),
    # stable 0: the first reading with the memory back ends the wait.
    ("stable_zero_ends_at_the_first_reading_back",
     [(0, [gpu(5000)]), (2.0, [gpu(317)])],
     dict(pids=[4242], target_used_mib=317, stable_s=0), True, 2.0),
    # No target: stability alone decides, so a pause between two steps of the teardown
    # longer than stable_s ends the wait early (what the module docs warn about).
    ("no_target_a_pause_looks_stable",
     [(0, [gpu(9000)]), (1.0, [gpu(4600)]), (4.0, [gpu(317)])],
     dict(pids=[4242], stable_s=1.0), True, 2.0),
]


@pytest.mark.parametrize("timeline, kwargs, drained, waited",
                         [c[1:] for c in BACK_CASES], ids=[c[0] for c in BACK_CASES])
def test_drained_when_back_and_stable(timeline, kwargs, drained, waited):
    fake = Fake(timeline)
    result = _drain.wait_drained(fake.read, fake.clock, fake.sleep, **kwargs)
    assert result["drained"] is drained, result["reason"]
    assert result["waited_s"] == pytest.approx(waited)


def test_unified_drain_ends_stable_s_after_memavailable_is_back():
    """The lab's GB10 case: an 8 s driver teardown costs 8 s plus the stable time."""
    fake = Fake(SPARK_TIMELINE)
    result = _drain.wait_drained(
        fake.read, fake.clock, fake.sleep, names=["ollama"],
        read_available=Meminfo(fake, SPARK_AVAILABLE), baseline_available_mib=104683)
    assert result["drained"] and result["waited_s"] == pytest.approx(9.0 + _drain.STABLE_S)


def test_stable_beyond_timeout_names_stable():
    fake = Fake([(0, [gpu(0)])])
    with pytest.raises(ValueError) as err:
        _drain.wait_drained(fake.read, fake.clock, fake.sleep, stable_s=30, timeout_s=10)
    assert str(err.value) == ("stable must not exceed timeout (10), or memory can never "
                              "count as stable; got: 30")
