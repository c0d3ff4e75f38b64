# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's stand-in amd-smi answers as the real one does (the MI210 capture's key tree and
units), from the host's AMD state, and the collection's own amd-smi reader reads it; the
stand-in driver selects AMD GPUs as ROCm does (ROCR_VISIBLE_DEVICES). No lab host needed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _amd_smi

REPO = Path(__file__).resolve().parents[2]
SERVERS = REPO / "lab" / "servers"
CAPTURE = REPO / "tests" / "fixtures" / "amd-smi-json" / "device-metrics-exporter-mi210-static.json"


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SERVERS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SERVERS))
    return module


lab = _module("lab_lab_for_amd_tests", REPO / "lab" / "lab.py")
gpuview = _module("gpuview", SERVERS / "gpuview.py")
HOSTS = yaml.safe_load((REPO / "inventory" / "lab" / "hosts.yml").read_text())
LAB_AMD = HOSTS["all"]["children"]["lab"]["hosts"]["lab-amd"]
LAB_MIXED = HOSTS["all"]["children"]["lab"]["hosts"]["lab-mixed"]


@pytest.fixture
def amd_state(tmp_path):
    """Write a host's AMD state (as lab.py writes it) with its process directory here."""
    def write(hvars, registrations=()):
        procs = tmp_path / "procs"
        procs.mkdir(exist_ok=True)
        text = lab.amd_state_text("lab-test", hvars).replace(lab.AMD_PROCS, str(procs))
        path = tmp_path / "state"
        path.write_text(text)
        for index, pid, mib in registrations:
            (procs / ("gpu%d-%d" % (index, pid))).write_text("%d\n" % mib)
        return path
    return write


def amd_smi_run(state):
    env = dict(os.environ, GPUFLEET_AMD_STATE=str(state))

    def run(argv):
        done = subprocess.run([str(SERVERS / "amd-smi"), *argv[1:]], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        return done.returncode, done.stdout, done.stderr
    return run


def _tree(value, depth):
    """The key tree of a JSON value down to ``depth`` levels (lists: their first element)."""
    if depth == 0:
        return None
    if isinstance(value, list):
        return [_tree(value[0], depth)] if value else []
    if isinstance(value, dict):
        return {key: _tree(item, depth - 1) for key, item in value.items()}
    return type(value).__name__


def test_static_has_the_key_tree_and_units_of_the_real_capture(amd_state):
    state = amd_state(LAB_AMD)
    rc, out, _err = amd_smi_run(state)(["amd-smi", "static", "--json"])
    assert rc == 0
    ours = json.loads(out)["gpu_data"][0]
    real = json.loads(CAPTURE.read_text())["gpu_data"][0]
    assert list(ours) == list(real)
    for key in ("asic", "bus", "limit", "driver", "board", "vram"):
        assert _tree(ours[key], 2) == _tree(real[key], 2), key
    assert ours["vram"]["size"] == real["vram"]["size"] == {"value": 65520, "unit": "MB"}


def test_the_collections_reader_reads_the_lab_host(amd_state):
    state = amd_state(LAB_AMD, [(1, os.getpid(), 9000)])
    result = _amd_smi.collect_amd_smi(amd_smi_run(state))
    assert result["warnings"] == []
    assert result["driver_version"] == "6.14.0-24-generic"
    got = [{k: g[k] for k in ("index", "name", "uuid", "pci_bus_id", "memory_total_mib",
                              "memory_used_mib", "memory_free_mib", "power_limit_w")}
           for g in result["gpus"]]
    assert got == [
        {"index": 0, "name": "AMD Instinct MI210", "uuid": "b4ff740f-0000-1000-80de-55b0b6b9d260",
         "pci_bus_id": "0000:c1:00.0", "memory_total_mib": 65520, "memory_used_mib": 0,
         "memory_free_mib": 65520, "power_limit_w": 300.0},
        {"index": 1, "name": "AMD Instinct MI210", "uuid": "b4ff740f-0000-1000-80de-55b0b6b9d261",
         "pci_bus_id": "0000:c2:00.0", "memory_total_mib": 65520, "memory_used_mib": 9000,
         "memory_free_mib": 56520, "power_limit_w": 300.0}]
    # The process by its pid and its comm (what the stand-in NVML shows too), in MiB.
    me = Path("/proc/self/comm").read_text().strip()
    assert result["gpus"][0]["processes"] == []
    assert result["gpus"][1]["processes"] == [
        {"pid": os.getpid(), "name": me, "used_memory_mib": 9000}]


def test_a_dead_process_is_not_listed_but_drains(amd_state):
    # A pid above the kernel's largest (pid_max is at most 2^22): never alive.
    state = amd_state(LAB_AMD, [(0, 2 ** 22 + 7, 500)])
    result = _amd_smi.collect_amd_smi(amd_smi_run(state))
    assert result["gpus"][0]["processes"] == []
    assert result["gpus"][0]["memory_used_mib"] == 500  # still counted for drain_delay


def test_the_mixed_box_shows_only_its_amd_gpu_to_amd_smi_and_only_nvidia_to_nvml(amd_state):
    state = amd_state(LAB_MIXED)
    result = _amd_smi.collect_amd_smi(amd_smi_run(state))
    assert [(g["index"], g["name"], g["memory_total_mib"]) for g in result["gpus"]] == [
        (0, "AMD Radeon PRO W7900", 49136)]
    assert "AMD" not in lab.state_text("lab-mixed", LAB_MIXED)
    assert "NVIDIA GeForce RTX 4090" in lab.state_text("lab-mixed", LAB_MIXED)


@pytest.mark.parametrize(("argv", "rc", "text"), [
    (["static"], 2, "amd-smi (lab stand-in): only --json output is produced\n"),
    (["bogus", "--json"], 2, "usage: amd-smi {static,list,metric,process} ... --json"),
])
def test_what_the_stand_in_does_not_answer(amd_state, argv, rc, text):
    got = amd_smi_run(amd_state(LAB_AMD))(["amd-smi", *argv])
    assert got[0] == rc and got[1].startswith(text)


def test_no_driver_is_what_the_facts_call_no_gpu(tmp_path):
    rc, out, _err = amd_smi_run(tmp_path / "absent")(["amd-smi", "static", "--json"])
    assert rc == 1 and "amdgpu not found in modules" in out


@pytest.mark.parametrize(("spec", "picked"), [
    ("1", [1]),
    ("1,0", [1, 0]),
    ("GPU-55b0b6b9d2610a11", [1]),
    ("0,GPU-55b0b6b9d2600a10", [0, 0]),
    # amd-smi's UUID is not ROCm's: it selects nothing, and the list ends there.
    ("b4ff740f-0000-1000-80de-55b0b6b9d261", []),
    ("0,b4ff740f-0000-1000-80de-55b0b6b9d261,1", [0]),
    ("2", []),
    ("", []),
])
def test_rocr_visible_devices_selects_as_rocm_does(amd_state, spec, picked):
    view = gpuview.View(str(amd_state(LAB_AMD)))
    assert view.vendor == "amd"
    chosen = gpuview.select_rocr(view.gpus, spec)
    assert [g["index"] for g in chosen] == picked


def test_the_relay_gives_an_amd_container_the_gpus_of_its_render_nodes(amd_state, tmp_path):
    relay = _module("nvml_relay", SERVERS / "nvml_relay.py")
    state = gpuview.parse_state(str(amd_state(LAB_AMD)))
    root = tmp_path / "root"
    (root / "dev" / "dri").mkdir(parents=True)
    assert relay.amd_visible(str(root), state) == []
    (root / "dev" / "dri" / "renderD129").write_text("")
    assert relay.amd_visible(str(root), state) == [1]
    (root / "dev" / "dri" / "renderD128").write_text("")
    assert relay.amd_visible(str(root), state) == [0, 1]
