# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The apply_record module run in-process: the mode in the record, idempotence, check mode."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpufleet.inference.plugins.modules import apply_record
from tests.support.modules import run_module


def run(args, check_mode=False):
    return run_module(apply_record.main, args, check_mode)


OLD = {"result": "ok", "runtime": "compose", "services": ["docling", "vllm"],
       "finished_at": "2026-12-01T10:00:00+00:00"}


@pytest.mark.parametrize("before, mode, after", [
    (None, "ingestion", dict(OLD, mode="ingestion")),
    # A record written before the mode existed is rewritten once, with the mode.
    (OLD, "ingestion", dict(OLD, mode="ingestion")),
    # The mode changed (a switch), the services too.
    (dict(OLD, services=["ollama"], mode="chat"), "ingestion", dict(OLD, mode="ingestion")),
    # No mode given: the record has none.
    (dict(OLD, mode="chat"), None, OLD),
], ids=["new", "old-record-without-mode", "switched", "no-mode"])
def test_the_mode_is_recorded_once_then_nothing_changes(tmp_path, before, mode, after):
    path = tmp_path / "gpufleet" / "apply.json"
    if before is not None:
        path.parent.mkdir()
        path.write_text(json.dumps(before))
    args = {"path": str(path), "result": "ok", "runtime": "compose",
            "services": ["vllm", "docling"]}
    if mode is not None:
        args["mode"] = mode
    wanted = {k: v for k, v in after.items() if k != "finished_at"}

    checked = run(args, check_mode=True)
    assert checked["changed"] is True
    assert {k: v for k, v in checked["record"].items() if k != "finished_at"} == wanted
    assert (json.loads(path.read_text()) if before is not None else None) == before

    done = run(args)
    assert done["changed"] is True and done["diff"]["before"] != done["diff"]["after"]
    written = json.loads(path.read_text())
    assert {k: v for k, v in written.items() if k != "finished_at"} == wanted

    again = run(args, check_mode=True)
    assert again["changed"] is False and again["record"] == written
    assert run(args)["changed"] is False
    assert json.loads(path.read_text()) == written


def test_another_mode_with_the_same_services_is_a_change(tmp_path):
    path = tmp_path / "apply.json"
    path.write_text(json.dumps(dict(OLD, mode="vllm")))
    args = {"path": str(path), "result": "ok", "runtime": "compose",
            "services": ["vllm", "docling"]}
    assert run(dict(args, mode="vllm"))["changed"] is False
    assert run(dict(args, mode="mixed"))["changed"] is True
    assert json.loads(path.read_text())["mode"] == "mixed"
