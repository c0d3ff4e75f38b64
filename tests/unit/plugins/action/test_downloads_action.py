# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The downloads action on the controller: the host is faked at the level of ActionBase's
calls (progress_host.py): the progress file is a real file written by a fake job while the
action polls, and read with the real ``tail`` command the action sends."""

from __future__ import annotations

import json
import os

import progress_host
import pytest

from ansible_collections.gpufleet.inference.plugins.action import downloads
from ansible_collections.gpufleet.inference.plugins.action.downloads import ProgressReader

ITEMS = [{"kind": "image", "name": "ollama/ollama:latest", "services": ["ollama"]}]
DONE = {"changed": True, "downloads": [{"kind": "image", "name": "ollama/ollama:latest",
                                        "present": False, "bytes": 10, "fetched_bytes": 10}],
        "by_filesystem": {}, "total_bytes": 10}


PLANNED = {"changed": False, "downloads": [], "planned": True}


class Host(progress_host.Host):
    """The host side: a direct run plans; a job writes progress lines and ends with ``final``
    (DONE by default)."""

    def __init__(self, tmp_path, final=None, lines=(), start=None):
        super().__init__(tmp_path, direct=[PLANNED], final=DONE if final is None else final,
                         lines=lines, start=start)


def make_action(host, check_mode=False, **args):
    args.setdefault("items", ITEMS)
    return progress_host.make_action(downloads, host, check_mode=check_mode, **args)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(downloads, "POLL_S", 0.01)


def event(item, text, final=False):
    return {"item": item, "kind": "image", "name": "x", "text": text, "final": final}


@pytest.mark.parametrize("check_mode, state", [(False, "planned"), (True, "present")])
def test_planned_and_check_mode_run_the_module_directly(tmp_path, check_mode, state):
    host = Host(tmp_path)
    action, shown = make_action(host, check_mode=check_mode, state=state)
    result = action.run(task_vars={"inventory_hostname": "lab-dual"})
    assert result["planned"] is True
    assert host.kinds() == ["direct"]
    assert shown == []


def test_present_shows_progress_and_returns_the_module_result(tmp_path):
    lines = [event(0, "pulling ollama/ollama:latest (1650.3 MiB)"),
             event(0, "pulling ollama/ollama:latest 1/7 layers 12.0/1650.3 MiB"),
             event(0, "pulled ollama/ollama:latest (1650.3 MiB in 40 s)", final=True),
             event(1, "pulling ollama model llama3.2:3b 1/4 blobs 0.0/1926.0 MiB"),
             event(1, "pulled ollama model llama3.2:3b (1926.0 MiB in 30 s)", final=True)]
    host = Host(tmp_path, lines=lines)
    action, shown = make_action(host, state="present", timeout=600)
    result = action.run(task_vars={"inventory_hostname": "lab-dual"})
    assert result == DONE
    assert host.kinds() == ["progress"] and host.calls[0]["items"] == ITEMS
    # An item's first line is always shown, however slow the polls.
    assert shown[0] == "lab-dual: pulling ollama/ollama:latest (1650.3 MiB)"
    assert "lab-dual: pulled ollama/ollama:latest (1650.3 MiB in 40 s)" in shown
    assert shown[-1] == "lab-dual: pulled ollama model llama3.2:3b (1926.0 MiB in 30 s)"
    # The file is read to its end, then removed, by one command.
    assert not os.path.exists(host.progress_file)
    assert os.path.dirname(host.progress_file) == host.async_dir


def test_a_failed_module_is_the_task_failure(tmp_path):
    failed = {"failed": True, "changed": True, "msg": 'image "x" (service s): docker pull failed '
              "(rc 1): manifest unknown", "downloads": []}
    host = Host(tmp_path, final=failed, lines=[event(0, "pulling x (1.0 MiB)")])
    action, shown = make_action(host, state="present")
    result = action.run(task_vars={"inventory_hostname": "h"})
    assert result["failed"] is True and result["msg"] == failed["msg"]
    assert shown == ["h: pulling x (1.0 MiB)"]


def test_a_module_that_fails_at_once_is_the_result_and_nothing_is_left(tmp_path):
    failed = {"failed": True, "msg": "MODULE FAILURE: /usr/bin/python3: not found"}
    host = Host(tmp_path, start=failed)
    action, shown = make_action(host, state="present")
    assert action.run(task_vars={}) == failed and shown == []
    assert host.kinds() == ["progress"] and not os.path.exists(host.async_dir)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_reader_keeps_partial_lines_and_throttles():
    clock = Clock()
    shown = []
    reader = ProgressReader("h", shown.append, clock=clock)
    first = json.dumps(event(0, "a 1")) + "\n" + json.dumps(event(0, "a 2")) + "\n"
    partial = json.dumps(event(0, "a 3"))[:10]
    reader.feed(first + partial)
    assert reader.offset == len(first) and shown == ["h: a 1"]
    clock.now += 2
    reader.feed(json.dumps(event(0, "a 4")) + "\n" + json.dumps(event(1, "b 1")) + "\n")
    assert shown == ["h: a 1", "h: b 1"]
    clock.now += 4
    reader.feed(json.dumps(event(0, "a 5")) + "\n" + json.dumps(event(0, "a done", True)) + "\n")
    assert shown == ["h: a 1", "h: b 1", "h: a done"]
    clock.now += 0.5  # b was shown 4.5 s ago
    reader.feed("not json\n" + json.dumps(event(1, "b 2")) + "\n")
    assert shown == ["h: a 1", "h: b 1", "h: a done"]
    clock.now += 5
    reader.feed(json.dumps(event(1, "b 3")) + "\n")
    assert shown[-1] == "h: b 3"


def test_progress_reader_shows_an_item_that_starts_and_ends_between_two_polls():
    clock = Clock()
    shown = []
    reader = ProgressReader("h", shown.append, clock=clock)
    reader.feed("".join(json.dumps(e) + "\n" for e in (
        event(0, "pulling x (42 MiB)"), event(0, "pulling x 3/7 layers"),
        event(0, "pulled x (42 MiB in 1 s)", True))))
    assert shown == ["h: pulling x (42 MiB)", "h: pulled x (42 MiB in 1 s)"]
