# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _outcome


@pytest.mark.parametrize("result, task, expected", [
    ({"msg": "boom"}, "Apply", "Apply: boom"),
    ({}, None, "?: failed"),
    (None, "Apply", "Apply: failed"),
    ({"msg": "All items completed", "results": [
        {"item": {"name": "ollama"}, "failed": False},
        {"item": {"name": "vllm"}, "failed": True, "msg": "exited (1)"},
        {"item": {"item": {"name": "vision"}}, "failed": True},
    ]}, "Verify", "Verify: vllm: exited (1); vision: failed"),
    ({"results": [{"item": "ollama@x.service", "failed": True, "msg": "no unit"}]}, "Start",
     "Start: ollama@x.service: no unit"),
    ({"msg": "plain", "results": [{"item": {"name": "a"}, "failed": False}]}, "T", "T: plain"),
])
def test_failure_summary(result, task, expected):
    assert _outcome.failure_summary(result, task) == expected


@pytest.mark.parametrize("previous, changed", [
    (None, True),
    ({"result": "ok", "runtime": "compose", "services": ["a", "b"], "finished_at": "x"}, False),
    ({"result": "rolled_back", "runtime": "compose", "services": ["a", "b"]}, True),
    ({"result": "ok", "runtime": "systemd", "services": ["a", "b"]}, True),
])
def test_record_changes_only_when_the_outcome_does(previous, changed):
    record, is_changed = _outcome.record("ok", "compose", ["b", "a"], previous)
    assert record == {"result": "ok", "runtime": "compose", "services": ["a", "b"]}
    assert is_changed is changed


@pytest.mark.parametrize("outcome, services, message", [
    ("done", [], "outcome must be one of ok, rolled_back, failed; got: 'done'"),
    ("ok", "a", "services must be a list of service names; got: 'a'"),
])
def test_record_bad_input(outcome, services, message):
    with pytest.raises(ValueError) as err:
        _outcome.record(outcome, "compose", services)
    assert str(err.value) == message
