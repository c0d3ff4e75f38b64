# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The downloads module run as Ansible runs it on a host: a Python process reading its
arguments from a file and printing its result, so check mode, the argument spec and the
masking of HF_TOKEN are the real ones. Fakes on loopback: tests/support/download_fakes.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.support.download_fakes import GATED, TOKEN, FakeHub, FakeWorld

ROOT = pathlib.Path(__file__).resolve().parents[4]
MODULE = ROOT / "plugins" / "modules" / "downloads.py"
COLLECTIONS = ROOT / ".build" / "collections"


def run(tmp_path, args, check_mode=False, env=None):
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    environ = dict(os.environ, PYTHONPATH=str(COLLECTIONS), **(env or {}))
    done = subprocess.run([sys.executable, str(MODULE), str(path)], capture_output=True,
                          text=True, env=environ, timeout=120, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1]), done.stdout


@pytest.fixture
def world(tmp_path):
    made = FakeWorld(tmp_path)
    yield made
    made.close()


def module_args(world, **more):
    args = {"items": world.items(), "ollama_registry": world.registry.host,
            "ollama_insecure": True, "hf_endpoint": world.hub.url,
            "docker_bin": world.docker.path}
    args.update(more)
    return args


def test_check_real_check_real(world, tmp_path):
    env = {"FAKE_DOCKER_STATE": world.docker.state_file}
    check, _out = run(tmp_path, module_args(world), check_mode=True, env=env)
    assert check["changed"] is False and not check.get("failed"), check
    assert check["total_bytes"] > 0 and not any(e["present"] for e in check["downloads"])
    assert world.pulls() == [] and world.ollama.pulls == []

    real, _out = run(tmp_path, module_args(world), env=env)
    assert real["changed"] is True and not real.get("failed"), real
    assert [e["fetched_bytes"] for e in real["downloads"]] == [
        e["bytes"] for e in check["downloads"]]
    assert real["total_bytes"] == check["total_bytes"]

    again, _out = run(tmp_path, module_args(world), check_mode=True, env=env)
    assert again["changed"] is False and again["total_bytes"] == 0
    last, _out = run(tmp_path, module_args(world), env=env)
    assert last["changed"] is False
    assert all(e["present"] and e["fetched_bytes"] == 0 for e in last["downloads"])
    assert len(world.pulls()) == 1


def test_planned_failure_lists_every_problem(world, tmp_path):
    items = [dict(world.items()[1], name="nosuchmodel:7b"),
             {"kind": "huggingface", "name": GATED, "services": ["vllm"],
              "hf_home": world.hf_home}]
    result, _out = run(tmp_path, module_args(world, items=items, state="planned"))
    assert result["failed"] is True
    assert result["msg"].startswith('ollama model "nosuchmodel:7b" (service ollama) is not in ')
    assert '; huggingface repo "%s" (service vllm) is gated: set HF_TOKEN' % GATED in result["msg"]
    assert [bool(e.get("error")) for e in result["downloads"]] == [True, True]


def test_the_token_is_used_and_never_returned(world, tmp_path):
    token_file = tmp_path / "hf.env"
    token_file.write_text("HF_TOKEN=%s\n" % TOKEN)
    token_file.chmod(0o600)
    item = {"kind": "huggingface", "name": GATED, "services": ["vllm"], "hf_home": world.hf_home}
    result, out = run(tmp_path, module_args(world, items=[item],
                                            hf_token_file=str(token_file)))
    assert result["changed"] is True and not result.get("failed"), result
    assert TOKEN not in out
    assert not result.get("warnings")
    token_file.chmod(0o644)
    result, out = run(tmp_path, module_args(world, items=[item], hf_token_file=str(token_file)))
    warnings = [w["event"]["msg"] if isinstance(w, dict) else w for w in result["warnings"]]
    assert warnings == ["hf_token_file %s has mode 644: others can read HF_TOKEN; make it 0600"
                        % token_file]


class EchoingHub(FakeHub):
    """A hub that (wrongly) echoes the token it was sent in its error message."""

    def handle(self, method, path, headers, body):
        return self.error(401, None, "Invalid credentials: %s" % headers.get("Authorization"))


def test_a_token_in_an_answer_is_masked(tmp_path):
    token_file = tmp_path / "hf.env"
    token_file.write_text("HF_TOKEN=%s\n" % TOKEN)
    with EchoingHub() as hub:
        item = {"kind": "huggingface", "name": GATED, "services": ["vllm"],
                "hf_home": str(tmp_path / "hf")}
        result, out = run(tmp_path, {"items": [item], "state": "planned",
                                     "hf_endpoint": hub.url, "hf_token_file": str(token_file)})
    assert result["failed"] is True
    assert TOKEN not in out
    assert "Invalid credentials: Bearer ********" in result["msg"]


def test_bad_items_fail_naming_the_field(tmp_path):
    result, _out = run(tmp_path, {"items": [{"kind": "ollama", "name": "m:1"}]})
    assert result == dict(result, failed=True,
                          msg="downloads: items[0].models_dir must be an absolute path; got: None")
    result, _out = run(tmp_path, {"items": [{"kind": "pip", "name": "x"}]})
    assert result["failed"] is True and "value of kind must be one of" in result["msg"]
