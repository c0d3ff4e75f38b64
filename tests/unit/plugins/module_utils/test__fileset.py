# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The project's file set: render, compare, snapshot, write atomically, restore."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import pathlib

import pytest
import yaml
from ansible.module_utils.common.yaml import yaml_dump, yaml_load
from ansible.plugins.filter.core import to_nice_yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _fileset, _render
from tests.support.plans import MODELS, make_plan

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "fileset"
HEADER = _fileset.HEADER
T1 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
T2 = datetime.datetime(2027, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc)
COMPOSE_NAMES = ["compose.yml", "compose.gpu.yml", "compose.podman-gpu.yml", ".env",
                 "gpu-assignments.yml"]


def options(tmp_path, runtime, **more):
    if runtime == "compose":
        opts = {"project_dir": str(tmp_path / "project")}
    else:
        opts = {"units_dir": str(tmp_path / "units"), "env_dir": str(tmp_path / "env"),
                "models_dir": MODELS}
    opts.update(more)
    return opts


def present(runtime, plan, opts, check_mode=False, now=T1, **kwargs):
    return _fileset.present(runtime, plan, opts, check_mode=check_mode, yaml_dump=yaml_dump,
                            yaml_load=yaml_load, now=lambda: now, **kwargs)


def tree(root, snapshot=False):
    """{relative path: (sha256, mode)} of every file under root (the snapshot left out)."""
    root = pathlib.Path(root)
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and (snapshot or _fileset.SNAPSHOT_NAME not in rel):
            result[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                           oct(path.stat().st_mode & 0o777))
    return result


def leftovers(root):
    """Temporary and backup files anywhere under root."""
    return [str(p) for p in pathlib.Path(root).rglob("*")
            if p.name.endswith(_fileset._TEMP_SUFFIX) or p.name.endswith("~")]


def names(result):
    return [(os.path.basename(f["path"]), f["state"]) for f in result["files"]]


# ---- the first write, then nothing ---------------------------------------------------------

EXPECTED_FIRST = {
    "compose": [("project/compose.yml", "0o644"), ("project/compose.gpu.yml", "0o644"),
                ("project/compose.podman-gpu.yml", "0o644"), ("project/.env", "0o640"),
                ("project/gpu-assignments.yml", "0o644")],
    "systemd": [("units/ollama@.service", "0o644"), ("units/vllm@.service", "0o644"),
                ("env/ollama.env", "0o640"), ("env/vision.env", "0o640"),
                ("env/ollama_research.env", "0o640"), ("env/vllm.env", "0o640")],
}


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_first_write_creates_every_file(tmp_path, runtime):
    opts = options(tmp_path, runtime)
    result = present(runtime, make_plan(mode="mixed"), opts)
    assert result["changed"] is True
    assert [(str(pathlib.Path(f["path"]).relative_to(tmp_path)), f["state"])
            for f in result["files"]] == [(p, "created") for p, _mode in EXPECTED_FIRST[runtime]]
    assert {p: m for p, (_sha, m) in tree(tmp_path).items()} == dict(EXPECTED_FIRST[runtime])
    assert len(result["diff"]) == len(EXPECTED_FIRST[runtime])
    for diff, (rel, _mode) in zip(result["diff"], EXPECTED_FIRST[runtime]):
        assert diff["before"] == ""
        assert diff["before_header"] == str(tmp_path / rel) + " (absent)"
        assert diff["after_header"] == str(tmp_path / rel)
        assert diff["after"] == (tmp_path / rel).read_text()
        assert diff["after"].startswith(HEADER + "\n")
    assert leftovers(tmp_path) == []
    manifest = json.loads((pathlib.Path(result["snapshot_dir"]) / "manifest.json").read_text())
    assert [(f["key"], f["exists"]) for f in manifest["files"]] == [
        (rel.split("/", 1)[1] if runtime == "compose" else rel, False)
        for rel, _mode in EXPECTED_FIRST[runtime]]
    assert oct(os.stat(result["snapshot_dir"]).st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_check_real_check_real(tmp_path, runtime):
    """Check mode, real, check again, real again: the house's four runs of a stateful case."""
    opts = options(tmp_path, runtime)
    plan = make_plan(mode="mixed")
    first_check = present(runtime, plan, opts, check_mode=True)
    assert first_check["changed"] is True
    assert list(tmp_path.iterdir()) == []  # no directory either
    real = present(runtime, plan, opts)
    assert (real["changed"], real["diff"]) == (True, first_check["diff"])
    written = tree(tmp_path, snapshot=True)
    again = present(runtime, plan, opts, check_mode=True, now=T2)
    assert (again["changed"], again["diff"]) == (False, [])
    assert {f["state"] for f in again["files"]} == {"unchanged"}
    last = present(runtime, plan, opts, now=T2)
    assert (last["changed"], last["diff"]) == (False, [])
    assert tree(tmp_path) == {k: v for k, v in written.items()
                              if _fileset.SNAPSHOT_NAME not in k}
    assert leftovers(tmp_path) == []


# ---- the same bytes as the templates wrote -------------------------------------------------

@pytest.mark.parametrize(("profile", "mode", "compose_runtime"), [
    ("dual-gpu", "mixed", "docker"), ("dual-gpu", "vllm", "podman"),
    ("single-gpu", "ollama", "docker"), ("cpu", "ollama", "docker"),
])
def test_compose_files_are_what_the_template_rendered(tmp_path, profile, mode, compose_runtime):
    """compose.yml.j2 was ``{{ ansible_managed | comment }}``, a comment line and
    ``compose_document | to_nice_yaml(indent=2, sort_keys=false, width=200)``: now the one
    header line and the same YAML."""
    plan = make_plan(profile=profile, mode=mode)
    opts = options(tmp_path, "compose", project_name="gpu_fleet",
                   compose_runtime=compose_runtime)
    present("compose", plan, opts)
    project = tmp_path / "project"
    for name, kind in _fileset.COMPOSE_FILES:
        doc = _render.compose_document(plan, kind, project="gpu_fleet")
        expected = "%s\n%s" % (HEADER, to_nice_yaml(doc, indent=2, sort_keys=False, width=200))
        assert (project / name).read_text() == expected, name
    doc = _render.gpu_assignments_document(plan, None, "2026-01-02T03:04:05Z")
    assert (project / "gpu-assignments.yml").read_text() == (
        "%s\n# Which GPU each service runs on: for reading, generated from the "
        "placement.\n%s" % (HEADER, to_nice_yaml(doc, indent=2, sort_keys=False, width=200)))
    overlay = {"docker": ":compose.gpu.yml", "podman": ":compose.podman-gpu.yml"}
    assert (project / ".env").read_text() == (
        "%s\nCOMPOSE_PROJECT_NAME=gpu_fleet\nCOMPOSE_FILE=compose.yml%s\n"
        "COMPOSE_PROFILES=%s\nDUAL_GPU_MODE=%s\nINFERENCE_MODE=%s\n"
        % (HEADER, overlay[compose_runtime] if plan["gpu_overlay"] else "",
           ",".join(plan["compose_profiles"]), mode, mode))


def test_systemd_units_are_what_the_templates_rendered(tmp_path):
    """ollama@.service.j2 and vllm@.service.j2 rendered by Ansible with these options, the
    ansible_managed comment replaced by the header (tests/unit/fixtures/fileset)."""
    opts = options(tmp_path, "systemd", env_dir="/etc/gpufleet/instances")
    opts["snapshot_dir"] = str(tmp_path / "snapshot")
    for engine in ("ollama", "vllm"):
        text = "%s\n%s" % (HEADER, _render.systemd_unit(engine, {
            "user": "gpufleet", "group": "gpufleet", "env_dir": "/etc/gpufleet/instances",
            "models_dir": MODELS, "ollama_bin": "/usr/local/bin/ollama",
            "vllm_bin": "/usr/local/bin/vllm", "state_dir_name": "gpufleet"}))
        assert text == (FIXTURES / ("%s@.service" % engine)).read_text()


def test_instance_env_file_as_the_template_wrote_it(tmp_path):
    opts = options(tmp_path, "systemd")
    present("systemd", make_plan(mode="mixed"), opts)
    assert (tmp_path / "env/vllm.env").read_text() == (
        HEADER + "\n"
        "# vllm@vllm.service: written from services_plan (placement and catalog); edit the "
        "inventory.\n"
        "HF_HUB_OFFLINE=1\nVLLM_MODEL=Qwen/Qwen2.5-1.5B-Instruct\nVLLM_HOST=127.0.0.1\nVLLM_PORT=8000\n"
        "VLLM_GPU_MEMORY_UTILIZATION=0.41\nVLLM_EXTRA_ARGS=\nCUDA_VISIBLE_DEVICES=GPU-0001\n")


# ---- a changed plan ------------------------------------------------------------------------

def _new_image(catalog):
    catalog["vllm"]["image"] = "vllm/vllm-openai:v0.9.2"


def _research_env(catalog):
    catalog["ollama_research"].setdefault("environment", {})["OLLAMA_DEBUG"] = "1"


@pytest.mark.parametrize(("runtime", "plan", "more", "states", "keys"), [
    ("compose", make_plan(mode="mixed", change=_new_image), {},
     ["changed", "unchanged", "unchanged", "unchanged", "unchanged"],
     {"services_changed": ["vllm"], "services_removed": []}),
    ("compose", make_plan(mode="vllm"), {},
     ["unchanged", "changed", "changed", "changed", "changed"],
     {"services_changed": [], "services_removed": ["ollama_research"],
      "compose_profiles": ["dual-gpu", "dual-gpu-vllm"]}),
    ("compose", make_plan(profile="cpu"), {},
     ["unchanged", "changed", "changed", "changed", "changed"],
     {"services_changed": ["ollama"], "services_removed": ["vision", "ollama_research", "vllm"],
      "compose_files": ["compose.yml"]}),
    ("compose", make_plan(mode="mixed"), {"compose_runtime": "podman"},
     ["unchanged", "unchanged", "unchanged", "changed", "unchanged"],
     {"services_changed": ["ollama", "vision", "ollama_research", "vllm"],
      "compose_files": ["compose.yml", "compose.podman-gpu.yml"]}),
    ("compose", make_plan(mode="mixed"), {"env": {"HF_TOKEN": "t"}},
     ["unchanged", "unchanged", "unchanged", "changed", "unchanged"],
     {"services_changed": [], "services_removed": []}),
    ("systemd", make_plan(mode="mixed", change=_research_env), {},
     ["unchanged", "unchanged", "unchanged", "unchanged", "changed", "unchanged"],
     {"units_changed": False, "restart": ["ollama@ollama_research.service"],
      "stale_instances": []}),
    ("systemd", make_plan(mode="mixed"), {"vllm_bin": "/opt/vllm/bin/vllm"},
     ["unchanged", "changed", "unchanged", "unchanged", "unchanged", "unchanged"],
     {"units_changed": True, "restart": ["vllm@vllm.service"], "stale_instances": []}),
    ("systemd", make_plan(mode="ollama"), {},
     ["unchanged", "unchanged", "unchanged", "unchanged", "changed", "removed"],
     {"units_changed": False, "restart": ["ollama@ollama_research.service"],
      "stale_instances": ["vllm@vllm.service"],
      "instances": ["ollama@ollama.service", "ollama@vision.service",
                    "ollama@ollama_research.service"]}),
])
def test_changed_plan_changes_only_what_it_must(tmp_path, runtime, plan, more, states, keys):
    present(runtime, make_plan(mode="mixed"), options(tmp_path, runtime))
    before = tree(tmp_path)
    result = present(runtime, plan, options(tmp_path, runtime, **more), now=T2)
    assert [s for _name, s in names(result)] == states
    assert {k: result[k] for k in keys} == keys
    after = tree(tmp_path)
    changed = {str(pathlib.Path(f["path"]).relative_to(tmp_path)) for f in result["files"]
               if f["state"] != "unchanged"}
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == changed
    assert len(result["diff"]) == len(changed)


def test_first_apply_counts_every_active_service_as_changed(tmp_path):
    result = present("compose", make_plan(mode="mixed"), options(tmp_path, "compose"))
    assert result["services_changed"] == ["ollama", "vision", "ollama_research", "vllm",
                                          "docling"]
    assert result["services_removed"] == []


def test_gpu_assignments_keep_their_time_until_they_change(tmp_path):
    opts = options(tmp_path, "compose")
    path = tmp_path / "project/gpu-assignments.yml"
    present("compose", make_plan(mode="mixed"), opts, now=T1)
    assert "generated_at: '2026-01-02T03:04:05Z'\n" in path.read_text()
    present("compose", make_plan(mode="mixed"), opts, now=T2)
    assert "generated_at: '2026-01-02T03:04:05Z'\n" in path.read_text()
    present("compose", make_plan(mode="vllm"), opts, now=T2)
    assert "generated_at: '2027-06-07T08:09:10Z'\n" in path.read_text()


LEGACY = "#\n# Ansible managed\n#\n"


@pytest.mark.parametrize(("existing", "expected"), [
    ("# mine\nTOKEN=secret\nDUAL_GPU_MODE=ollama\nexport OTHER='a b'\n",
     "# mine\nTOKEN=secret\nDUAL_GPU_MODE=mixed\nexport OTHER='a b'\n"
     "COMPOSE_PROJECT_NAME=gpufleet\nCOMPOSE_FILE=compose.yml:compose.gpu.yml\n"
     "COMPOSE_PROFILES=dual-gpu,dual-gpu-mixed\nINFERENCE_MODE=mixed\nEXTRA=\"x y\"\n"),
    (LEGACY + "TOKEN=secret\nCOMPOSE_FILE=compose.yml\nEXTRA=old\n",
     "TOKEN=secret\nCOMPOSE_FILE=compose.yml:compose.gpu.yml\nEXTRA=\"x y\"\n"
     "COMPOSE_PROJECT_NAME=gpufleet\nCOMPOSE_PROFILES=dual-gpu,dual-gpu-mixed\n"
     "DUAL_GPU_MODE=mixed\nINFERENCE_MODE=mixed\n"),
    (HEADER + "\nTOKEN=s\u00e9cret\n",
     "TOKEN=s\u00e9cret\nCOMPOSE_PROJECT_NAME=gpufleet\n"
     "COMPOSE_FILE=compose.yml:compose.gpu.yml\nCOMPOSE_PROFILES=dual-gpu,dual-gpu-mixed\n"
     "DUAL_GPU_MODE=mixed\nINFERENCE_MODE=mixed\nEXTRA=\"x y\"\n"),
])
def test_env_keeps_the_keys_it_does_not_own(tmp_path, existing, expected):
    (tmp_path / "project").mkdir()
    (tmp_path / "project/.env").write_text(existing)
    opts = options(tmp_path, "compose", env={"EXTRA": "x y"})
    result = present("compose", make_plan(mode="mixed"), opts)
    assert (tmp_path / "project/.env").read_text() == HEADER + "\n" + expected
    assert dict(names(result))[".env"] == "changed"
    assert present("compose", make_plan(mode="mixed"), opts)["changed"] is False


# ---- check mode ----------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_check_mode_writes_nothing(tmp_path, runtime):
    present(runtime, make_plan(mode="mixed"), options(tmp_path, runtime))
    before = tree(tmp_path, snapshot=True)
    result = present(runtime, make_plan(mode="vllm"), options(tmp_path, runtime, user="ai"),
                     check_mode=True, now=T2)
    assert result["changed"] is True and result["diff"]
    assert tree(tmp_path, snapshot=True) == before


# ---- restored ------------------------------------------------------------------------------

@pytest.mark.parametrize(("runtime", "more"), [
    ("compose", {"env": {"HF_TOKEN": "t"}}),
    ("systemd", {"user": "ai", "group": "ai"}),
])
def test_restored_after_a_change_is_the_previous_set(tmp_path, runtime, more):
    opts = options(tmp_path, runtime)
    present(runtime, make_plan(mode="mixed"), opts)
    if runtime == "compose":
        os.chmod(tmp_path / "project/compose.yml", 0o600)  # a mode is restored too
        (tmp_path / "project/.env").write_text(
            (tmp_path / "project/.env").read_text() + "FOREIGN=1\n")
    previous = tree(tmp_path)
    changed = present(runtime, make_plan(mode="ollama"), options(tmp_path, runtime, **more),
                      now=T2)
    assert changed["changed"] is True and tree(tmp_path) != previous
    check = _fileset.restored(runtime, opts, check_mode=True)
    assert check["changed"] is True
    assert tree(tmp_path) != previous
    result = _fileset.restored(runtime, opts)
    assert (result["changed"], result["diff"]) == (True, check["diff"])
    assert tree(tmp_path) == previous
    assert result["previous_existed"] is True
    if runtime == "compose":
        assert (result["compose_files"], result["compose_profiles"]) == (
            ["compose.yml", "compose.gpu.yml"], ["dual-gpu", "dual-gpu-mixed"])
        assert "FOREIGN=1\n" in (tmp_path / "project/.env").read_text()
    else:
        assert result["instances"] == ["ollama@ollama.service",
                                       "ollama@ollama_research.service",
                                       "ollama@vision.service", "vllm@vllm.service"]
    assert _fileset.restored(runtime, opts)["changed"] is False
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_restored_after_a_first_apply_removes_what_it_wrote(tmp_path, runtime):
    opts = options(tmp_path, runtime)
    present(runtime, make_plan(mode="mixed"), opts)
    result = _fileset.restored(runtime, opts)
    assert result["previous_existed"] is False
    assert {s for _n, s in names(result)} == {"removed"}
    assert tree(tmp_path) == {}
    if runtime == "compose":
        assert (result["compose_files"], result["compose_profiles"]) == (["compose.yml"], [])
    else:
        assert result["instances"] == []


def test_restored_removes_instance_env_files_the_snapshot_has_not(tmp_path):
    opts = options(tmp_path, "systemd")
    present("systemd", make_plan(mode="ollama"), opts)
    present("systemd", make_plan(mode="mixed"), opts)  # adds vllm.env
    (tmp_path / "env/handmade.env").write_text("X=1\n")
    result = _fileset.restored("systemd", opts)
    assert sorted(os.listdir(tmp_path / "env")) == [
        _fileset.SNAPSHOT_NAME, "ollama.env", "ollama_research.env", "vision.env"]
    assert ("vllm.env", "removed") in names(result) and ("handmade.env", "removed") in \
        names(result)


def test_snapshot_is_the_set_before_the_last_write(tmp_path):
    opts = options(tmp_path, "systemd")
    snapshot = tmp_path / "env" / _fileset.SNAPSHOT_NAME
    snapshot.mkdir(parents=True)
    (snapshot / "instances").write_text('["ollama@old.service"]\n')  # the roles' old layout
    present("systemd", make_plan(mode="mixed"), opts)
    first = tree(tmp_path)
    present("systemd", make_plan(mode="ollama"), opts)
    prefix = "env/%s/" % _fileset.SNAPSHOT_NAME
    kept = {k[len(prefix):]: v[0] for k, v in tree(tmp_path, snapshot=True).items()
            if k.startswith(prefix)}
    assert kept.pop("manifest.json")
    assert kept == {k: v[0] for k, v in first.items()}
    assert "instances" not in os.listdir(snapshot)
    assert oct(os.stat(snapshot / "env/vllm.env").st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda snap: None,
     "there is no snapshot of the last good files in {snap} (project_files state=present keeps "
     "one before it writes): nothing to restore"),
    (lambda snap: (snap / "manifest.json").write_text("[]"),
     "{snap}/manifest.json is not a snapshot manifest of project_files; nothing restored"),
    (lambda snap: (snap / "compose.yml").write_text("x"),
     "the snapshot in {snap} is damaged: compose.yml does not match its manifest; "
     "nothing restored"),
])
def test_restored_refuses_a_missing_or_damaged_snapshot(tmp_path, damage, message):
    opts = options(tmp_path, "compose")
    snap = tmp_path / "project" / _fileset.SNAPSHOT_NAME
    if "no snapshot" not in message:
        present("compose", make_plan(mode="mixed"), opts)
        present("compose", make_plan(mode="vllm"), opts)
    damage(snap)
    before = tree(tmp_path, snapshot=True)
    with pytest.raises(_fileset.FilesetError) as exc:
        _fileset.restored("compose", opts)
    assert str(exc.value) == message.format(snap=snap)
    assert tree(tmp_path, snapshot=True) == before


def test_restored_refuses_the_other_runtimes_snapshot(tmp_path):
    present("compose", make_plan(mode="mixed"), options(tmp_path, "compose"))
    opts = options(tmp_path, "systemd", snapshot_dir=str(tmp_path / "project" /
                                                         _fileset.SNAPSHOT_NAME))
    with pytest.raises(ValueError, match="is of runtime compose; got: runtime='systemd'"):
        _fileset.restored("systemd", opts)


# ---- failures while writing ----------------------------------------------------------------

def _full_disk_on(monkeypatch, nth):
    """The nth file of the set (not of the snapshot) gets half written, then ENOSPC."""
    real = _fileset._write_bytes
    count = {"files": 0}

    def write(fd, data, path):
        if _fileset.SNAPSHOT_NAME not in path:
            count["files"] += 1
            if count["files"] == nth:
                os.write(fd, data[:len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, path)

    monkeypatch.setattr(_fileset, "_write_bytes", write)


@pytest.mark.parametrize(("runtime", "more", "third"), [
    ("compose", {}, "project/.env"),
    ("systemd", {"user": "ai", "group": "ai"}, "env/ollama_research.env"),
])
def test_full_disk_leaves_every_file_old(tmp_path, monkeypatch, runtime, more, third):
    opts = options(tmp_path, runtime)
    present(runtime, make_plan(mode="mixed"), opts)
    before = tree(tmp_path)
    _full_disk_on(monkeypatch, 3)
    with pytest.raises(_fileset.FilesetError) as exc:
        present(runtime, make_plan(mode="ollama"), options(tmp_path, runtime, **more), now=T2)
    assert str(exc.value) == ("cannot write %s: [Errno 28] No space left on device; no file "
                              "was changed" % (tmp_path / third))
    assert tree(tmp_path) == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert _fileset.restored(runtime, opts)["changed"] is False  # the snapshot is the old set


@pytest.mark.parametrize(("runtime", "mode"), [("compose", "vllm"), ("systemd", "ollama")])
def test_failed_rename_puts_back_the_files_already_replaced(tmp_path, runtime, mode):
    opts = options(tmp_path, runtime)
    present(runtime, make_plan(mode="mixed"), opts)
    before = tree(tmp_path)
    moved = []

    def mover(src, dest):
        if _fileset.SNAPSHOT_NAME not in dest:
            moved.append(dest)
            if len(moved) == 3:
                raise OSError(errno.EIO, "Input/output error")
        os.replace(src, dest)

    more = {"user": "ai", "group": "ai"} if runtime == "systemd" else {"env": {"A": "1"}}
    with pytest.raises(_fileset.FilesetError) as exc:
        present(runtime, make_plan(mode=mode), options(tmp_path, runtime, **more), now=T2,
                mover=mover)
    assert str(exc.value) == ("cannot write %s: [Errno 5] Input/output error; every file is as "
                              "it was before" % moved[2])
    assert len(moved) > 3  # the first two were put back
    assert tree(tmp_path) == before
    assert leftovers(tmp_path) == []


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize(("runtime", "plan", "opts", "message"), [
    ("compose", None, {"project_dir": "relative/dir"},
     "project_dir must be an absolute path; got: 'relative/dir'"),
    ("compose", None, {"env": {"COMPOSE_FILE": "x.yml", "DUAL_GPU_MODE": "vllm", "A": "1"}},
     "env must not set COMPOSE_FILE, DUAL_GPU_MODE: project_files writes them from the plan "
     "and its options; got: COMPOSE_FILE, DUAL_GPU_MODE, A"),
    ("k8s", None, {}, "runtime must be one of compose, systemd, podman; got: 'k8s'"),
    ("compose", None, {"project_name": "My Project"},
     "project_name must be a compose project name (lower case letters, digits, '_' and '-'); "
     "got: 'My Project'"),
    ("compose", None, {"compose_runtime": "lxc"},
     "compose_runtime must be one of docker, podman; got: 'lxc'"),
    ("compose", None, {"env": {"A-B": "1"}}, "env has a bad variable name; got: 'A-B'"),
    ("compose", None, {"env": {"A": {"b": 1}}},
     "env.A must be a string, number or boolean; got: {'b': 1}"),
    ("compose", None, {"snapshot_dir": "snap"},
     "snapshot_dir must be an absolute path; got: 'snap'"),
    ("compose", {"services": []}, {},
     "plan must be the services_plan fact set by the gpufleet.inference.services role "
     "(services, compose_profiles, ...); got: ['services']"),
    ("compose", {"services": [{"name": "x"}], "compose_profiles": [], "dual_gpu_mode": "ollama"},
     {}, "plan is not a services_plan fact of gpufleet.inference.services: KeyError 'image'"),
    ("systemd", None, {"units_dir": "etc/systemd"},
     "units_dir must be an absolute path; got: 'etc/systemd'"),
    ("systemd", None, {"bind_address": "localhost"},
     "bind_address must be an IP address to listen on (127.0.0.1 for this host only, 0.0.0.0 "
     "for every interface); got: 'localhost'"),
    ("systemd", None, {"user": "Root!"},
     "user must be an account or group name (lower case letters, digits, '_' and '-', at most "
     "32); got: 'Root!'"),
    ("systemd", None, {"state_dir_name": "../etc"},
     "state_dir_name must be one directory name under /var/lib (letters, digits, '_', '.', "
     "'-'); got: '../etc'"),
    ("systemd", None, {"vllm_bin": "/opt/my vllm/bin/vllm"},
     "vllm_bin must be an absolute path without whitespace, control characters, '..' or any "
     "of % $ ' \" ; \\; got: '/opt/my vllm/bin/vllm' (' ' is not allowed)"),
])
def test_bad_input_fails_naming_the_field_and_writes_nothing(tmp_path, runtime, plan, opts,
                                                             message):
    base = options(tmp_path, "systemd" if runtime == "systemd" else "compose")
    base.update(opts)
    with pytest.raises(ValueError) as exc:
        present(runtime, make_plan(mode="mixed") if plan is None else plan, base)
    assert str(exc.value) == message
    assert list(tmp_path.iterdir()) == []


def test_systemd_unit_rejects_an_unknown_engine():
    with pytest.raises(ValueError, match="engine must be one of ollama, vllm; got: 'tgi'"):
        _render.systemd_unit("tgi", {})


# ---- verify --------------------------------------------------------------------------------

def _exposed(catalog):
    catalog["ollama"]["ports"][0]["address"] = "0.0.0.0"
    catalog["vllm"]["ports"][0]["address"] = "10.0.0.5"
    catalog["ollama_research"]["ports"][0]["address"] = "::1"


@pytest.mark.parametrize(("runtime", "plan", "expected"), [
    ("compose", make_plan(mode="mixed"), [
        {"name": "ollama", "engine": "ollama", "model": "llama3.2:3b",
         "url": "http://127.0.0.1:11434/api/version", "device_id": "GPU-0000", "gpu_index": 0,
         "project": "gpufleet", "service": "ollama"},
        {"name": "vision", "engine": "ollama", "model": "moondream:latest",
         "url": "http://127.0.0.1:8002/api/version", "device_id": "GPU-0000", "gpu_index": 0,
         "project": "gpufleet", "service": "vision"},
        {"name": "ollama_research", "engine": "ollama", "model": "llama3.2:3b",
         "url": "http://127.0.0.1:11435/api/version", "device_id": "GPU-0001", "gpu_index": 1,
         "project": "gpufleet", "service": "ollama_research"},
        {"name": "vllm", "engine": "vllm", "model": "Qwen/Qwen2.5-1.5B-Instruct",
         "url": "http://127.0.0.1:8000/health", "device_id": "GPU-0001", "gpu_index": 1,
         "project": "gpufleet", "service": "vllm"},
        {"name": "docling", "engine": "other", "model": None,
         "url": "http://127.0.0.1:5001/health", "device_id": None, "gpu_index": None,
         "project": "gpufleet", "service": "docling"},
    ]),
    ("systemd", make_plan(mode="mixed"), [
        {"name": "ollama", "engine": "ollama", "model": "llama3.2:3b",
         "url": "http://127.0.0.1:11434/api/version", "device_id": "GPU-0000", "gpu_index": 0,
         "unit": "ollama@ollama.service", "cuda_visible_devices": "GPU-0000"},
        {"name": "vision", "engine": "ollama", "model": "moondream:latest",
         "url": "http://127.0.0.1:8002/api/version", "device_id": "GPU-0000", "gpu_index": 0,
         "unit": "ollama@vision.service", "cuda_visible_devices": "GPU-0000"},
        {"name": "ollama_research", "engine": "ollama", "model": "llama3.2:3b",
         "url": "http://127.0.0.1:11435/api/version", "device_id": "GPU-0001", "gpu_index": 1,
         "unit": "ollama@ollama_research.service", "cuda_visible_devices": "GPU-0001"},
        {"name": "vllm", "engine": "vllm", "model": "Qwen/Qwen2.5-1.5B-Instruct",
         "url": "http://127.0.0.1:8000/health", "device_id": "GPU-0001", "gpu_index": 1,
         "unit": "vllm@vllm.service", "cuda_visible_devices": "GPU-0001"},
    ]),
    ("systemd", make_plan(profile="cpu"), [
        {"name": "ollama", "engine": "ollama", "model": "llama3.2:3b",
         "url": "http://127.0.0.1:11434/api/version", "device_id": None, "gpu_index": None,
         "unit": "ollama@ollama.service", "cuda_visible_devices": "-1"},
    ]),
])
def test_verify_checks(runtime, plan, expected):
    # The vendor of the placement goes with it (the verify checks AMD devices its own way).
    expected = [dict(check, vendor="nvidia") if check["gpu_index"] is not None else check
                for check in expected]
    assert _fileset.verify_checks(plan, runtime, models_dir=MODELS) == expected


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_verify_checks_probe_a_listener_on_its_address(runtime):
    checks = _fileset.verify_checks(make_plan(mode="mixed", change=_exposed), runtime)
    urls = {c["name"]: c["url"] for c in checks}
    assert (urls["ollama"], urls["vllm"], urls["ollama_research"]) == (
        "http://127.0.0.1:11434/api/version", "http://10.0.0.5:8000/health",
        "http://[::1]:11435/api/version")


def test_present_returns_the_checks(tmp_path):
    plan = make_plan(mode="mixed")
    result = present("compose", plan, options(tmp_path, "compose", project_name="ai"))
    assert result["verify"] == _fileset.verify_checks(plan, "compose", project_name="ai")


@pytest.mark.parametrize("profiles, expected", [
    (["dual-gpu", "dual-gpu-vllm"], ["docling", "ollama", "vision", "vllm"]),
    (["cpu"], ["docling", "ollama"]),
    ([], ["plain"]),
])
def test_active_services_are_what_compose_config_lists(profiles, expected):
    text = yaml.safe_dump({"services": {
        "ollama": {"profiles": ["cpu", "dual-gpu"]}, "vision": {"profiles": ["dual-gpu"]},
        "vllm": {"profiles": ["dual-gpu-vllm"]}, "docling": {"profiles": ["cpu", "dual-gpu"]},
        "finetune": {"profiles": ["finetune"]}, "plain": {}}})
    found = _fileset.active_services(text, profiles, yaml.safe_load)
    assert found == sorted(set(expected) | {"plain"})


def test_env_diff_hides_the_values_of_keys_it_does_not_own(tmp_path):
    """The project .env holds the user's own secrets (HF_TOKEN): a diff shows their names,
    never a value; the keys the collection writes and the comments are shown as they are."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text("# mine\nHF_TOKEN=hf_planted0123\nexport OTHER='a b'\n")
    opts = options(tmp_path, "compose", env={"API_KEY": "sk-planted$4567"})
    result = present("compose", make_plan(mode="mixed"), opts)
    [diff] = [d for d in result["diff"] if d["after_header"].startswith(str(project / ".env"))]
    text = json.dumps(result)
    for secret in ("hf_planted0123", "sk-planted", "a b"):
        assert secret not in text
    assert diff["before"] == "# mine\nHF_TOKEN=(hidden)\nOTHER=(hidden)\n"
    assert "DUAL_GPU_MODE=mixed\n" in diff["after"] and "API_KEY=(hidden)\n" in diff["after"]
    assert "HF_TOKEN=hf_planted0123\n" in (project / ".env").read_text()
    # Only a hidden value changes: the diff says so without showing it.
    opts["env"]["API_KEY"] = "sk-planted-new"
    result = present("compose", make_plan(mode="mixed"), opts)
    [diff] = [d for d in result["diff"] if d["after_header"].startswith(str(project / ".env"))]
    assert "sk-planted" not in json.dumps(result)
    assert diff["after"].endswith("# other values changed\n")


# ---- podman (Quadlet) ----------------------------------------------------------------------

def podman_options(tmp_path):
    return {"units_dir": str(tmp_path / "units"), "env_dir": str(tmp_path / "env")}


def test_podman_first_write_then_nothing(tmp_path):
    opts = podman_options(tmp_path)
    plan = make_plan(mode="vllm")
    check = present("podman", plan, opts, check_mode=True)
    assert list(tmp_path.iterdir()) == []
    result = present("podman", plan, opts)
    assert (result["changed"], result["diff"]) == (True, check["diff"])
    assert {p: m for p, (_sha, m) in tree(tmp_path).items()} == {
        "units/gpufleet.network": "0o644",
        **{"units/gpufleet-%s.container" % s: "0o644" for s in plan["active"]},
        **{"env/%s.env" % s: "0o640" for s in plan["active"]}}
    assert result["instances"] == ["gpufleet-%s.service" % s for s in
                                   ("ollama", "vision", "vllm", "docling")]
    assert result["units_changed"] is True
    assert result["restart"] == result["instances"] and result["stale_instances"] == []
    text = (tmp_path / "units/gpufleet-vllm.container").read_text()
    assert text.startswith(HEADER + "\n# gpufleet-vllm.service: written from services_plan")
    assert "AddDevice=nvidia.com/gpu=GPU-0001\n" in text
    assert "EnvironmentFile=%s/env/vllm.env\n" % tmp_path in text
    assert [c["unit"] for c in result["verify"]] == result["instances"]
    assert result["verify"][2]["container"] == "gpufleet-vllm"
    again = present("podman", plan, opts, now=T2)
    assert (again["changed"], again["diff"], again["restart"], again["units_changed"]) == (
        False, [], [], False)
    assert leftovers(tmp_path) == []


def test_podman_mode_change_restarts_what_changed_and_removes_the_leaving(tmp_path):
    opts = podman_options(tmp_path)
    present("podman", make_plan(mode="vllm"), opts)
    result = present("podman", make_plan(mode="ollama"), opts, now=T2)
    states = dict(names(result))
    assert states["gpufleet-vllm.container"] == "removed" and states["vllm.env"] == "removed"
    assert states["gpufleet-ollama_research.container"] == "created"
    assert result["stale_instances"] == ["gpufleet-vllm.service"]
    assert "gpufleet-ollama_research.service" in result["restart"]
    assert "gpufleet-docling.service" not in result["restart"]
    restored = _fileset.restored("podman", opts)
    assert restored["instances"] == ["gpufleet-docling.service", "gpufleet-ollama.service",
                                     "gpufleet-vision.service", "gpufleet-vllm.service"]
    assert not (tmp_path / "units/gpufleet-ollama_research.container").exists()
    assert (tmp_path / "units/gpufleet-vllm.container").exists()


def test_podman_restored_after_a_first_apply_removes_what_it_wrote(tmp_path):
    opts = podman_options(tmp_path)
    present("podman", make_plan(mode="mixed"), opts)
    (tmp_path / "units/gpufleet-handmade.container").write_text("[Container]\n")
    result = _fileset.restored("podman", opts)
    assert (result["previous_existed"], result["instances"]) == (False, [])
    assert tree(tmp_path) == {}


def test_podman_secret_values_are_one_line_and_never_shown(tmp_path):
    plan = make_plan(mode="vllm")
    for service in plan["services"]:
        service["secret_environment"] = ["HF_TOKEN"] if service["name"] == "vllm" else []
    opts = dict(podman_options(tmp_path), secret_env={"vllm": {"HF_TOKEN": "hf_x\ny"}})
    with pytest.raises(ValueError) as exc:
        present("podman", plan, opts)
    assert str(exc.value) == ("secret_env.vllm.HF_TOKEN must be one line (Podman's environment "
                              "file has no quoting; value not shown)")
    assert list(tmp_path.iterdir()) == []
    opts["secret_env"] = {"vllm": {"HF_TOKEN": "hf_plain"}}
    result = present("podman", plan, opts)
    secret = tmp_path / "env/secrets/vllm.env"
    assert secret.read_text().endswith("HF_TOKEN=hf_plain\n")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert "hf_plain" not in json.dumps(result)
