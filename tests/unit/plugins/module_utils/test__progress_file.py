# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress files of the long waits: the async directory of a new host is created (0700)
by the first line, and both writers (downloads, host_lock/service_verify) go through it."""

from __future__ import annotations

import json
import os
import stat

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _downloads,
    _progress_file,
    _waiting,
)


def test_the_first_line_creates_the_directory_and_lines_are_appended(tmp_path):
    path = tmp_path / "home" / ".ansible_async" / "gpufleet-progress-1.jsonl"
    _progress_file.append(str(path), '{"a": 1}')
    _progress_file.append(str(path), '{"a": 2}')
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_both_writers_reach_a_file_whose_directory_is_missing(tmp_path):
    waits = tmp_path / "a" / "wait.jsonl"
    _waiting.ProgressFile(str(waits), lambda: 0.0).emit("lock", "held", "held by x", final=True)
    assert json.loads(waits.read_text()) == {"item": "lock", "text": "held by x", "final": True}
    pulls = tmp_path / "b" / "pull.jsonl"
    item = {"kind": "image", "name": "ollama/ollama:latest"}
    _downloads.Progress(str(pulls)).emit(0, item, "pulled", final=True)
    assert json.loads(pulls.read_text())["text"] == "pulled"
