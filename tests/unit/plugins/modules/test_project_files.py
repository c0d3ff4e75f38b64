# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The project_files module run in-process, as Ansible's unit-test pattern does it.

ansible-core 2.19 reads module args with a serialization profile: its own
``ansible.module_utils.testing.patch_module_args`` sets both; older cores take the
JSON bytes in ``basic._ANSIBLE_ARGS``.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import pathlib
from unittest import mock

import pytest
from ansible.module_utils import basic

from ansible_collections.gpufleet.inference.plugins.module_utils import _fileset
from ansible_collections.gpufleet.inference.plugins.modules import project_files
from tests.support.modules import patch_module_args
from tests.support.plans import MODELS, make_plan


class Exit(Exception):
    pass


class Fail(Exception):
    pass


# One clock for every run: a check run and the real run after it must render the same
# gpu-assignments.yml even when a second boundary falls between them.
NOW = datetime.datetime(2026, 1, 23, 10, 30, tzinfo=datetime.timezone.utc)


def run(args, check_mode=False):
    """Run the module at NOW; its result, or its failure with ``failed: true``."""
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True

    def exit_json(self, **result):
        raise Exit(result)

    def fail_json(self, **result):
        raise Fail(result)

    with patch_module_args(args), \
            mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json), \
            mock.patch.object(_fileset, "_utc_now", lambda: NOW):
        try:
            project_files.main()
        except Exit as exc:
            return exc.args[0]
        except Fail as exc:
            return dict(exc.args[0], failed=True)
    raise AssertionError("the module neither exited nor failed")


def tree(root):
    """{relative path: (sha256, mode)} of the files under root, the snapshot left out."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       oct(p.stat().st_mode & 0o777))
            for p in sorted(root.rglob("*"))
            if p.is_file() and _fileset.SNAPSHOT_NAME not in str(p)}


def args(tmp_path, runtime, **more):
    if runtime == "compose":
        base = {"runtime": "compose", "project_dir": str(tmp_path / "project")}
    elif runtime == "podman":
        base = {"runtime": "podman", "units_dir": str(tmp_path / "units"),
                "env_dir": str(tmp_path / "env")}
    else:
        base = {"runtime": "systemd", "units_dir": str(tmp_path / "units"),
                "env_dir": str(tmp_path / "env"), "models_dir": MODELS}
    base.update(more)
    return base


@pytest.mark.parametrize("runtime", ["compose", "systemd", "podman"])
def test_check_real_check_real_then_restored(tmp_path, runtime):
    first = args(tmp_path, runtime, plan=make_plan(mode="mixed"))
    check = run(first, check_mode=True)
    assert check["changed"] is True and not check.get("failed")
    assert list(tmp_path.iterdir()) == []
    real = run(first)
    assert (real["changed"], real["diff"]) == (True, check["diff"])
    assert {f["state"] for f in real["files"]} == {"created"}
    assert run(first, check_mode=True)["changed"] is False
    again = run(first)
    assert (again["changed"], again["diff"]) == (False, [])
    good = tree(tmp_path)

    second = args(tmp_path, runtime, plan=make_plan(mode="vllm"))
    changed = run(second)
    assert changed["changed"] is True
    if runtime == "compose":
        assert changed["services_removed"] == ["ollama_research"]
        assert changed["compose_profiles"] == ["dual-gpu", "dual-gpu-vllm"]
    elif runtime == "podman":
        assert changed["stale_instances"] == ["gpufleet-ollama_research.service"]
    else:
        assert changed["stale_instances"] == ["ollama@ollama_research.service"]
    assert tree(tmp_path) != good

    back = args(tmp_path, runtime, state="restored")
    assert run(back, check_mode=True)["changed"] is True
    restored = run(back)
    assert (restored["changed"], restored["previous_existed"]) == (True, True)
    assert tree(tmp_path) == good
    if runtime == "compose":
        assert restored["compose_profiles"] == ["dual-gpu", "dual-gpu-mixed"]
    elif runtime == "podman":
        assert restored["instances"] == ["gpufleet-%s.service" % s for s in sorted(
            ("ollama", "vision", "ollama_research", "vllm", "docling"))]
    else:
        assert restored["instances"] == ["ollama@ollama.service",
                                         "ollama@ollama_research.service",
                                         "ollama@vision.service", "vllm@vllm.service"]
    assert run(back)["changed"] is False


def test_returns_what_the_roles_need(tmp_path):
    result = run(args(tmp_path, "systemd", plan=make_plan(mode="mixed")))
    assert (result["instances"], result["units_changed"], result["restart"],
            result["stale_instances"]) == (
        ["ollama@ollama.service", "ollama@vision.service", "ollama@ollama_research.service",
         "vllm@vllm.service"], True,
        ["ollama@ollama.service", "ollama@vision.service", "ollama@ollama_research.service",
         "vllm@vllm.service"], [])
    assert [c["unit"] for c in result["verify"]] == result["instances"]
    result = run(args(tmp_path, "compose", plan=make_plan(mode="mixed"),
                      compose_runtime="podman"))
    assert result["compose_files"] == ["compose.yml", "compose.podman-gpu.yml"]
    assert [c["service"] for c in result["verify"]] == result["services_changed"] == [
        "ollama", "vision", "ollama_research", "vllm", "docling"]


@pytest.mark.parametrize(("more", "message"), [
    ({"runtime": "compose", "project_dir": "relative", "plan": make_plan()},
     "project_files: project_dir must be an absolute path; got: 'relative'"),
    ({"runtime": "compose", "env": {"COMPOSE_FILE": "x.yml"}, "plan": make_plan()},
     "project_files: env must not set COMPOSE_FILE: project_files writes them from the plan "
     "and its options; got: COMPOSE_FILE"),
    ({"runtime": "k8s", "plan": make_plan()},
     "value of runtime must be one of: compose, systemd, podman, got: k8s"),
    ({"runtime": "systemd"}, "state is present but all of the following are missing: plan"),
    ({"runtime": "compose", "state": "restored"},
     "project_files: there is no snapshot of the last good files in {tmp}/project/"
     ".gpufleet-previous (project_files state=present keeps one before it writes): nothing to "
     "restore"),
])
def test_bad_input_fails_naming_the_field(tmp_path, more, message):
    base = {"project_dir": str(tmp_path / "project"), "units_dir": str(tmp_path / "units"),
            "env_dir": str(tmp_path / "env")}
    base.update(more)
    result = run(base)
    assert result["failed"] is True
    assert result["msg"] == message.format(tmp=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_fails_with_every_file_old(tmp_path, monkeypatch):
    run(args(tmp_path, "compose", plan=make_plan(mode="mixed")))
    good = tree(tmp_path)
    calls = []

    def write(fd, data, path):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_fileset, "_write_bytes", write)
    result = run(args(tmp_path, "compose", plan=make_plan(mode="vllm")))
    assert result["failed"] is True
    assert result["msg"] == ("project_files: cannot keep the last good files: cannot write "
                             "%s: [Errno 28] No space left on device; no file of the set was "
                             "changed" % (tmp_path / "project" / _fileset.SNAPSHOT_NAME /
                                          "compose.yml"))
    assert tree(tmp_path) == good


def test_compose_needs_pyyaml(tmp_path, monkeypatch):
    monkeypatch.setattr(project_files, "HAS_YAML", False)
    result = run(args(tmp_path, "compose", plan=make_plan()))
    assert result["failed"] is True and "PyYAML" in result["msg"]
    assert os.listdir(tmp_path) == []


# ---- the secret environment: a 0600 file, never in the result --------------------------------

@pytest.mark.parametrize("runtime, path", [("compose", "project/secrets/vllm.env"),
                                           ("systemd", "env/secrets/vllm.env")])
def test_secret_env_is_written_0600_and_never_returned(tmp_path, runtime, path):
    def change(catalog):
        catalog["vllm"]["environment"] = {"PUBLIC": "yes"}

    plan = make_plan(mode="mixed", change=change)
    for service in plan["services"]:
        service["secret_environment"] = ["API_KEY"] if service["name"] == "vllm" else []
    secret = {"vllm": {"API_KEY": "sk-ab$cd #tail"}}
    first = args(tmp_path, runtime, plan=plan, secret_env=secret)
    check = run(first, check_mode=True)
    real = run(first)
    assert not check.get("failed") and not real.get("failed"), real
    for result in (check, real):
        assert "sk-ab" not in json.dumps(result)
        assert any("API_KEY=(hidden)" in d["after"] for d in result["diff"])
    assert tree(tmp_path)[path][1] == "0o600"
    assert oct(os.stat(tmp_path / os.path.dirname(path)).st_mode & 0o777) == "0o700"
    assert run(first)["changed"] is False
    bad = run(args(tmp_path, runtime, plan=plan, secret_env={"vllm": {"OTHER": "sk-zz"}}))
    assert bad["failed"] and "sk-zz" not in json.dumps(bad)
    assert bad["msg"] == ("project_files: secret_env.vllm has no value for API_KEY (the plan "
                          "lists API_KEY); got names: OTHER")
