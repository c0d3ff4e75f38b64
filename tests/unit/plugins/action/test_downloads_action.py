# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The downloads action on the controller: the host is faked at the level of ActionBase's
calls (_execute_module, _low_level_execute_command, the temporary directories); the progress
file is a real file written by a fake job while the action polls, and read with the real
``tail`` command the action sends."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from unittest.mock import MagicMock

import pytest

from ansible_collections.gpufleet.inference.plugins.action import downloads
from ansible_collections.gpufleet.inference.plugins.action.downloads import (
    ActionModule,
    ProgressReader,
)

ITEMS = [{"kind": "image", "name": "ollama/ollama:latest", "services": ["ollama"]}]
DONE = {"changed": True, "downloads": [{"kind": "image", "name": "ollama/ollama:latest",
                                        "present": False, "bytes": 10, "fetched_bytes": 10}],
        "by_filesystem": {}, "total_bytes": 10}


class Host:
    """The host side: a job that writes progress lines and ends with ``final``."""

    def __init__(self, tmp_path, final=None, lines=(), start=None):
        self.tmp_path = tmp_path
        self.final = DONE if final is None else final
        self.lines = list(lines)
        self.start = start
        self.calls = []
        self.removed = []
        self.result = None
        self.async_val_seen = None
        self.job = None

    def execute_module(self, action, module_name=None, module_args=None, task_vars=None,
                       wrap_async=False, **_kwargs):
        self.calls.append((module_name, dict(module_args or {}), wrap_async))
        if module_name == "ansible.legacy.async_status":
            if module_args.get("mode") == "cleanup":
                return {"erased": "/root/.ansible_async/j1"}
            if self.result is None:
                return {"started": True, "finished": False, "ansible_job_id": "j1"}
            return dict(self.result, finished=True, ansible_job_id="j1")
        if not wrap_async:
            return {"changed": False, "downloads": [], "planned": True}
        self.async_val_seen = action._task.async_val
        if self.start is not None:
            return self.start
        self.job = threading.Thread(target=self.run_job, args=(module_args["progress_file"],))
        self.job.start()
        return {"started": True, "finished": False, "ansible_job_id": "j1",
                "results_file": "/root/.ansible_async/j1", "changed": True}

    def run_job(self, path):
        for line in self.lines:
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")
            time.sleep(0.02)
        self.result = dict(self.final)

    def make_tmp_path(self, action):
        path = self.tmp_path / ("ansible-tmp-%d" % len(self.calls))
        path.mkdir(exist_ok=True)
        action._connection._shell.tmpdir = str(path)
        return str(path)

    @staticmethod
    def low_level(cmd, sudoable=True, **_kwargs):
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def make_action(host, check_mode=False, **args):
    args.setdefault("items", ITEMS)
    task = MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = check_mode
    task.action = "gpufleet.inference.downloads"
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path = os.path.join
    action = ActionModule(task, connection, play_context=MagicMock(), loader=None, templar=None,
                          shared_loader_obj=None)
    action._execute_module = lambda **kw: host.execute_module(action, **kw)
    action._make_tmp_path = lambda *a: host.make_tmp_path(action)
    action._low_level_execute_command = host.low_level
    action._remove_tmp_path = lambda path, force=False: host.removed.append((path, force))
    action._remote_expand_user = lambda path, sudoable=True: path.replace("~", "/root")
    action.get_shell_option = lambda name, default=None: default
    shown = []
    action._display = MagicMock()
    action._display.display.side_effect = shown.append
    return action, shown


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
    assert [(name, wrap) for name, _args, wrap in host.calls] == [(None, False)]
    assert "progress_file" not in host.calls[0][1]
    assert shown == []


def test_present_runs_async_shows_progress_and_returns_the_module_result(tmp_path):
    lines = [event(0, "pulling ollama/ollama:latest (1650.3 MiB)"),
             event(0, "pulling ollama/ollama:latest 1/7 layers 12.0/1650.3 MiB"),
             event(0, "pulled ollama/ollama:latest (1650.3 MiB in 40 s)", final=True),
             event(1, "pulling ollama model llama3.2:3b 1/4 blobs 0.0/1926.0 MiB"),
             event(1, "pulled ollama model llama3.2:3b (1926.0 MiB in 30 s)", final=True)]
    host = Host(tmp_path, lines=lines)
    action, shown = make_action(host, state="present", timeout=600)
    result = action.run(task_vars={"inventory_hostname": "lab-dual"})
    host.job.join()
    assert result == dict(DONE, **{k: v for k, v in result.items() if k not in DONE})
    assert not set(result) & {"ansible_job_id", "finished", "started", "results_file"}
    assert host.async_val_seen == 600 + downloads.GRACE_S
    assert action._task.async_val == 0
    start = host.calls[0]
    assert start[2] is True and start[1]["progress_file"].endswith("/progress.jsonl")
    assert start[1]["items"] == ITEMS
    # Each poll shows an item's latest line: a slow poll (a loaded machine) may skip the first.
    assert shown[0] in ("lab-dual: pulling ollama/ollama:latest (1650.3 MiB)",
                        "lab-dual: pulling ollama/ollama:latest 1/7 layers 12.0/1650.3 MiB")
    assert "lab-dual: pulled ollama/ollama:latest (1650.3 MiB in 40 s)" in shown
    assert shown[-1] == "lab-dual: pulled ollama model llama3.2:3b (1926.0 MiB in 30 s)"
    assert host.calls[-1][1] == {"jid": "j1", "_async_dir": "/root/.ansible_async",
                                 "mode": "cleanup"}
    progress_dir = os.path.dirname(start[1]["progress_file"])
    assert (progress_dir, True) in host.removed


def test_a_failed_module_is_the_task_failure(tmp_path):
    failed = {"failed": True, "changed": True, "msg": 'image "x" (service s): docker pull failed '
              "(rc 1): manifest unknown", "downloads": []}
    host = Host(tmp_path, final=failed, lines=[event(0, "pulling x (1.0 MiB)")])
    action, shown = make_action(host, state="present")
    result = action.run(task_vars={"inventory_hostname": "h"})
    host.job.join()
    assert result["failed"] is True and result["msg"] == failed["msg"]
    assert shown == ["h: pulling x (1.0 MiB)"]


def test_a_job_that_does_not_start(tmp_path):
    host = Host(tmp_path, start={"failed": True, "msg": "async_wrapper exited prematurely"})
    action, _shown = make_action(host, state="present")
    result = action.run(task_vars={})
    assert (result["failed"], result["msg"]) == (True, "async_wrapper exited prematurely")
    assert action._task.async_val == 0


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
