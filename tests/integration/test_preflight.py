# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""preflight_facts and the preflight playbook, run for real by ansible against localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import REPO, run_module
from .playbook_helpers import gpu, run_playbook

TWO_GPUS = [gpu(0), gpu(1)]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server(tmp_path):
    """A python http.server on 127.0.0.1 that this test started: (port, pid)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                             str(port)], cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("http.server did not listen on %d" % port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def tools(tmp_path):
    """A PATH with stand-in docker and nvidia-ctk (presence is all preflight checks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "nvidia-ctk"):
        path = bin_dir / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return {"PATH": "%s:/usr/bin:/bin" % bin_dir}


def base_vars(tmp_path, **extra):
    values = {
        "services_gather_gpu_facts": False,
        "services_gpus": TWO_GPUS,
        "preflight_env_file": str(tmp_path / "project" / ".env"),
        "preflight_dirs": {"images": str(tmp_path / "images"),
                           "models": str(tmp_path / "models"),
                           "vision_cache": str(tmp_path / "vision")},
    }
    values.update(extra)
    return values


def catalog_with_port(service, port):
    defaults = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text().replace(
        "{{ services_models_dir }}", "/srv/test/models"))
    catalog = defaults["services_catalog"]
    catalog[service]["ports"] = [{"host": port, "container": catalog[service]["ports"][0][
        "container"]}]
    return catalog


# ---- the module --------------------------------------------------------------------------

def test_module_names_the_holder_of_a_port(http_server, tmp_path):
    port, pid = http_server
    free = free_port()
    rc, result = run_module("gpufleet.inference.preflight_facts",
                            "ports=%d,%d paths=%s,%s" % (port, free, tmp_path,
                                                         tmp_path / "not" / "yet"),
                            check=True)
    assert rc == 0, result
    facts = result["ansible_facts"]["preflight_host"]
    held, unused = facts["ports"]
    comm = (open("/proc/%d/comm" % pid).read()).strip()
    assert held == {"port": port, "held": True, "holders": [
        {"address": "127.0.0.1", "family": "ipv4", "pid": pid, "process": comm}]}
    assert unused == {"port": free, "held": False, "holders": []}
    here, later = facts["disks"]
    stat = os.statvfs(str(tmp_path))
    assert here["exists"] is True and here["checked_path"] == str(tmp_path)
    assert abs(here["free_bytes"] - stat.f_bavail * stat.f_frsize) < 64 * 1024 * 1024
    assert later["exists"] is False and later["checked_path"] == str(tmp_path)
    assert later["device"] == here["device"]
    assert set(facts["binaries"]) >= {"docker", "podman", "nvidia-container-toolkit",
                                      "nvidia-container-runtime-hook"}
    assert result["changed"] is False


def test_module_reads_persistence_mode_with_a_timeout(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, Enabled\\n1, Disabled\\n'\n")
    smi.chmod(0o755)
    rc, result = run_module("gpufleet.inference.preflight_facts", "",
                            env={"PATH": "%s:/usr/bin:/bin" % bin_dir})
    assert rc == 0, result
    nvidia = result["ansible_facts"]["preflight_host"]["nvidia"]
    assert nvidia == {"nvidia_smi": str(smi), "error": None, "persistence_mode": [
        {"index": 0, "persistence_mode": "Enabled"},
        {"index": 1, "persistence_mode": "Disabled"}]}
    smi.write_text("#!/bin/sh\nsleep 30\n")
    rc, result = run_module("gpufleet.inference.preflight_facts", "nvidia_smi_timeout=1",
                            env={"PATH": "%s:/usr/bin:/bin" % bin_dir})
    assert rc == 0, result
    assert result["ansible_facts"]["preflight_host"]["nvidia"]["error"] == \
        "nvidia-smi did not answer within 1 seconds and was stopped"


# ---- the playbook ------------------------------------------------------------------------

def test_env_gets_dual_gpu_mode_once_on_a_two_gpu_host(tmp_path, tools):
    env_file = tmp_path / "project" / ".env"
    values = base_vars(tmp_path)
    runs = []
    for check in (True, False, True, False):
        rc, output, recap = run_playbook("preflight.yml", tmp_path, values, check=check,
                                         diff=True, env=tools)
        assert rc == 0, output
        runs.append((recap["changed"], env_file.exists() and env_file.read_text()))
    assert runs == [(1, False), (1, "DUAL_GPU_MODE=ollama\n"),
                    (0, "DUAL_GPU_MODE=ollama\n"), (0, "DUAL_GPU_MODE=ollama\n")]
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    assert "Profile: dual-gpu (recommended: dual-gpu, 2 GPU(s)), DUAL_GPU_MODE=ollama" in output
    assert "Total first-run: ~9.4 GB (images 5.6 GB, models 3.8 GB" in output


def test_env_value_already_there_is_kept(tmp_path, tools):
    env_file = tmp_path / "project" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("TOKEN=x\nDUAL_GPU_MODE=vllm\n")
    rc, output, recap = run_playbook("preflight.yml", tmp_path, base_vars(tmp_path), env=tools)
    assert rc == 0, output
    assert recap["changed"] == 0
    assert env_file.read_text() == "TOKEN=x\nDUAL_GPU_MODE=vllm\n"
    assert ".env says DUAL_GPU_MODE=vllm but the inventory's mode is ollama" in output


def test_single_gpu_host_gets_no_env(tmp_path, tools):
    rc, output, recap = run_playbook("preflight.yml", tmp_path,
                                     base_vars(tmp_path, services_gpus=[gpu(0)]), env=tools)
    assert rc == 0, output
    assert recap["changed"] == 0
    assert not (tmp_path / "project" / ".env").exists()


def test_mixed_mode_warns_from_the_budgets_and_goes_on(tmp_path, tools):
    values = base_vars(tmp_path, services_dual_gpu_mode="mixed",
                       services_gpus=[gpu(0), gpu(1, total=16384, free=9000)])
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc == 0, output
    assert ("DUAL_GPU_MODE=mixed: GPU 1 has only 8.8 GB free; ollama_research + vllm need "
            "11.2 GB (their budgets). Running them together may cause OOM.") in output
    assert "vllm: vLLM starts only when free memory >= gpu_memory_utilization x total" in output
    assert "Total first-run: ~19.4 GB" in output


def test_disk_too_small_for_the_downloads_fails(tmp_path, tools):
    stat = os.statvfs(str(tmp_path))
    free_mb = stat.f_bavail * stat.f_frsize // 1000000
    table = [{"name": "huge/image", "kind": "image", "size_mb": free_mb * 2 + 1000,
              "dir": "images"}]
    rc, output, _recap = run_playbook("preflight.yml", tmp_path,
                                      base_vars(tmp_path, preflight_size_table=table),
                                      env=tools)
    assert rc != 0
    assert "Preflight failed on localhost: disk at %s: " % (tmp_path / "images") in output
    assert "MiB needed" in output


def test_port_held_by_another_process_fails_with_its_pid(tmp_path, tools, http_server):
    port, pid = http_server
    values = base_vars(tmp_path, services_catalog=catalog_with_port("docling", port))
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc != 0
    assert "Preflight failed on localhost: port %d (docling) is held by " % port in output
    assert "(pid %d) on 127.0.0.1" % pid in output


def test_missing_toolkit_fails_unless_warn_only(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, base_vars(tmp_path), env=env)
    assert rc != 0
    assert "NVIDIA container toolkit not found" in output
    rc, output, _recap = run_playbook(
        "preflight.yml", tmp_path,
        base_vars(tmp_path, preflight_warn_only=["toolkit", "runtime"]), env=env)
    assert rc == 0, output
    assert "WARN  NVIDIA container toolkit not found" in output
