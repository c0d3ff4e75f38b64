# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_sleep.handover: park, drain, wake in one run, against the fake engines of test__sleep."""

from __future__ import annotations

import pytest
from test__sleep import OLLAMA, VLLM, Clock, FakeOllama, FakeVllm

from ansible_collections.gpufleet.inference.plugins.module_utils import _sleep

PARK = [{"name": "ollama", "engine": "ollama", "url": OLLAMA}]
WAKE = [{"name": "vllm", "engine": "vllm", "url": VLLM, "level": 2}]


class Host:
    """Both engines on one host; the drain is a callable that notes when it ran."""

    def __init__(self, loaded=("qwen2.5:7b",), asleep=True, drained=True):
        self.ollama = FakeOllama(list(loaded))
        self.vllm = FakeVllm(asleep=asleep)
        self.log = []
        self.drained = drained

    def http(self, method, url, body, timeout):
        fake = self.vllm if url.startswith(VLLM) else self.ollama
        if method == "POST":
            self.log.append("%s %s" % ("vllm" if fake is self.vllm else "ollama",
                                       url.split("/", 3)[3]))
        return fake(method, url, body, timeout)

    def drain(self):
        self.log.append("drain")
        return {"drained": self.drained, "waited_s": 0.5, "last": {}, "samples": [],
                "reason": None if self.drained else "GPU memory did not drain within 1 s: x"}


def handover(host, park=None, wake=None, **kwargs):
    clock = Clock()
    park = PARK if park is None else park
    wake = WAKE if wake is None else wake
    return _sleep.handover(park, wake, host.http, clock, clock.sleep, drain=host.drain,
                           **kwargs)


def test_park_then_drain_then_wake_in_that_order():
    host = Host()
    result = handover(host)
    assert host.log == ["ollama api/generate", "drain", "vllm wake_up?tags=weights",
                        "vllm collective_rpc", "vllm wake_up?tags=kv_cache"]
    assert result["changed"] and result["error"] is None
    assert [(s["name"], s["state"], s["changed"]) for s in result["steps"]] == [
        ("ollama", "asleep", True), ("vllm", "awake", True)]
    assert result["drain"]["drained"]


def test_nothing_parked_means_no_drain_and_a_second_run_changes_nothing():
    host = Host(loaded=(), asleep=False)
    result = handover(host)
    assert host.log == [] and result["drain"] is None and not result["changed"]


def test_a_drain_that_does_not_end_stops_before_the_wake():
    host = Host(drained=False)
    result = handover(host)
    assert host.log == ["ollama api/generate", "drain"]
    assert result["error"].startswith("GPU memory did not drain")
    assert host.vllm.asleep


def test_a_park_that_fails_names_the_step_and_runs_nothing_after_it():
    host = Host()
    host.ollama.missing = {"qwen2.5:7b"}
    result = handover(host)
    assert result["error"].startswith("park (ollama): ollama at %s answered POST" % OLLAMA)
    assert "drain" not in host.log and host.vllm.asleep


def test_check_mode_says_what_and_does_nothing():
    host = Host()
    result = handover(host, check_mode=True)
    assert host.log == [] and result["changed"]
    assert [s["name"] for s in result["steps"]] == ["ollama", "vllm"]


@pytest.mark.parametrize(("park", "wake", "message"), [
    ("ollama", [], "park must be a list of engines; got: 'ollama'"),
    ([{"engine": "ollama", "url": OLLAMA}], [], "park[0] must be a dict with name"),
    ([], [{"name": "vllm", "engine": "vllm", "url": VLLM, "port": 1}],
     "wake[0] (vllm) has unknown keys port"),
    ([], [{"name": "vllm", "engine": "vllm", "url": VLLM, "level": 3}],
     "wake[0] (vllm): level must be 1 or 2; got: 3"),
    ([{"name": "o", "engine": "ollama", "url": "127.0.0.1:11434"}], [],
     "park[0] (o): url must be an http:// or https:// base URL"),
])
def test_bad_engines_are_refused_before_any_request(park, wake, message):
    host = Host()
    with pytest.raises(ValueError) as err:
        handover(host, park=park, wake=wake)
    assert str(err.value).startswith(message), str(err.value)
    assert host.log == []
