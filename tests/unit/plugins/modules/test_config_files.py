# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The config_files module run in-process on real files: a first run writes, a second changes
nothing, check mode writes nothing, modes are set, a secret file's content never reaches the
result, backups are kept, bad input is named before anything is touched."""

from __future__ import annotations

import json
import os
import stat
from unittest import mock

import pytest

from ansible_collections.gpufleet.inference.plugins.modules import config_files
from tests.support.modules import run_module


def run(args, check_mode=False, diff=True):
    return run_module(config_files.main, args, check_mode, diff)


SECRET = "sk-planted-config-files-3f9a"


def router_set(root):
    config = root / "opt" / "config"
    return {
        "directories": [{"path": str(config), "mode": "0750"}],
        "files": [{"path": str(config / "litellm.yaml"), "content": "model_list: []\n",
                   "mode": "0640"}],
        "secret_files": [{"path": str(config / "litellm.env"),
                          "content": "KEY=%s\n" % SECRET, "mode": "0600"}],
    }


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_run_writes_the_set_then_nothing_changes(tmp_path):
    args = router_set(tmp_path)
    config = tmp_path / "opt" / "config"
    first = run(args)
    assert first["changed"] is True and not first.get("failed"), first
    assert first["written"] == [str(config / "litellm.yaml"), str(config / "litellm.env")]
    assert first["directories"] == [str(config)]
    assert (config / "litellm.yaml").read_text() == "model_list: []\n"
    assert (config / "litellm.env").read_text() == "KEY=%s\n" % SECRET
    assert (mode(config), mode(config / "litellm.yaml"), mode(config / "litellm.env")) == (
        0o750, 0o640, 0o600)
    assert mode(tmp_path / "opt") == 0o755
    assert SECRET not in json.dumps(first)
    assert {"prepared": "%s: created (it may hold keys: its content is not shown)\n"
            % (config / "litellm.env")} in first["diff"]
    assert sorted(os.listdir(config)) == ["litellm.env", "litellm.yaml"]  # no temporary file
    again = run(args)
    assert (again["changed"], again["written"], again["directories"], again["diff"]) == (
        False, [], [], [])


def test_check_mode_says_what_would_change_and_writes_nothing(tmp_path):
    result = run(router_set(tmp_path), check_mode=True)
    assert result["changed"] is True and len(result["written"]) == 2
    assert not (tmp_path / "opt").exists()
    assert SECRET not in json.dumps(result)


def test_a_changed_file_and_mode_are_rewritten_with_a_backup(tmp_path):
    args = router_set(tmp_path)
    run(args)
    config = tmp_path / "opt" / "config"
    os.chmod(config / "litellm.yaml", 0o644)
    os.chmod(config, 0o755)
    args["files"][0]["content"] = "model_list: [a]\n"
    result = run(dict(args, backup=True))
    assert result["written"] == [str(config / "litellm.yaml")]
    assert result["directories"] == [str(config)]
    assert mode(config / "litellm.yaml") == 0o640 and mode(config) == 0o750
    backup = result["backups"][str(config / "litellm.yaml")]
    assert open(backup).read() == "model_list: []\n"
    diff = result["diff"]
    assert {"prepared": "%s: directory mode 0755 -> 0750\n" % config} in diff
    assert {"before_header": str(config / "litellm.yaml"),
            "after_header": str(config / "litellm.yaml"),
            "before": "model_list: []\n", "after": "model_list: [a]\n"} in diff
    assert {"prepared": "%s: mode 0644 -> 0640\n" % (config / "litellm.yaml")} in diff


def test_a_write_that_fails_names_the_file_and_keeps_what_was_there(tmp_path):
    args = router_set(tmp_path)
    run(args)
    config = tmp_path / "opt" / "config"
    args["files"][0]["content"] = "new\n"
    args["secret_files"][0]["content"] = "KEY=new-%s\n" % SECRET
    with mock.patch.object(config_files.os, "fsync", side_effect=OSError(28, "No space left")):
        result = run(args)
    assert result["failed"] and result["written"] == []
    assert result["msg"].startswith("config_files: cannot write %s: " % (config / "litellm.yaml"))
    assert (config / "litellm.yaml").read_text() == "model_list: []\n"
    assert sorted(os.listdir(config)) == ["litellm.env", "litellm.yaml"]


@pytest.mark.parametrize("change, message", [
    (lambda a: a["files"][0].update(path="config/litellm.yaml"),
     "config_files: files[0].path must be an absolute path; got: 'config/litellm.yaml'"),
    (lambda a: a["secret_files"][0].update(mode="600"),
     None),  # three digits are a mode too
    (lambda a: a["secret_files"][0].update(mode="0o600"),
     "config_files: secret_files[0].mode must be an octal mode in quotes such as '0640'; "
     "got: '0o600'"),
    (lambda a: a["directories"][0].update(mode="rwx"),
     "config_files: directories[0].mode must be an octal mode in quotes such as '0640'; "
     "got: 'rwx'"),
    (lambda a: a["secret_files"][0].update(path=a["files"][0]["path"]),
     "config_files: %s is given twice"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, change, message):
    args = router_set(tmp_path)
    change(args)
    result = run(args)
    if message is None:
        assert not result.get("failed"), result
        return
    if "%s" in message:
        message %= args["files"][0]["path"]
    assert result["failed"] and result["msg"] == message, result
    assert not (tmp_path / "opt").exists()
    assert SECRET not in json.dumps(result)


def test_a_directory_in_the_way_of_a_file_is_named(tmp_path):
    args = router_set(tmp_path)
    (tmp_path / "opt" / "config" / "litellm.yaml").mkdir(parents=True)
    result = run(args)
    assert result["failed"] and result["msg"] == "config_files: %s is not a regular file" % (
        tmp_path / "opt" / "config" / "litellm.yaml")
