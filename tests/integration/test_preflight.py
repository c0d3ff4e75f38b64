# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""preflight_facts and the preflight playbook, run for real by ansible against localhost."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _preflight as pf

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
    """A PATH with stand-in docker and nvidia-ctk: preflight checks that they are there, and
    the downloads module asks docker where the engine keeps its images and whether it has
    each one (this docker has them all: the images of these tests are present)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "nvidia-ctk": "#!/bin/sh\nexit 0\n",
        "docker": ("#!/bin/sh\n"
                   "case \"$1 $2\" in\n"
                   "  'info --format') echo %s ;;\n"
                   "  'image inspect') echo sha256:%s ;;\n"
                   "esac\n" % (tmp_path / "docker", "0" * 64)),
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return {"PATH": "%s:/usr/bin:/bin" % bin_dir}


# What the planned sizes are in these tests: the manifests of the offline Ollama source say so
# (planning reads the manifest; the blob files beside it are small stand-ins).
MODEL_SIZES = {"llama3.2:3b": 2019393189, "moondream:latest": 1738454192}
HF_REPO = "Qwen/Qwen2.5-1.5B-Instruct"


def ollama_source(root, sizes):
    """An offline Ollama source (services_ollama_source_dir) in Ollama's layout."""
    for name, size in sizes.items():
        model, tag = name.split(":")
        digest = hashlib.sha256(name.encode()).hexdigest()
        config = hashlib.sha256(b"config " + name.encode()).hexdigest()
        manifest = {"schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": "sha256:" + config, "size": 485},
                    "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                "digest": "sha256:" + digest, "size": size - 485}]}
        path = root / "manifests/registry.ollama.ai/library" / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))
        (root / "blobs").mkdir(exist_ok=True)
        for blob in (digest, config):
            (root / "blobs" / ("sha256-" + blob)).write_text(name)


def hf_cache(hf_home, repo):
    """A complete Hugging Face cache of ``repo`` (config and weights at refs/main)."""
    commit = "a" * 40
    folder = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs/main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_text("{}")


def base_vars(tmp_path, sizes=None, **extra):
    source = tmp_path / "ollama-source"
    if not source.exists():
        ollama_source(source, sizes or MODEL_SIZES)
        hf_cache(tmp_path / "hf", HF_REPO)
    values = {
        "services_gather_gpu_facts": False,
        "services_gpus": TWO_GPUS,
        "services_models_dir": str(tmp_path / "models"),
        "services_ollama_source_dir": str(source),
        "services_hf_home": str(tmp_path / "hf"),
        "services_hf_token_file": str(tmp_path / "etc" / "huggingface.env"),
        "preflight_env_file": str(tmp_path / "project" / ".env"),
    }
    values.update(extra)
    return values


def table_lines(output):
    """The download table of the summary: the lines from its title to its total."""
    lines = [line.strip().strip('",').strip() for line in output.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Downloads"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Total:"))
    return lines[start:end + 1]


def default_catalog(tmp_path):
    defaults = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text().replace(
        "{{ services_models_dir }}", str(tmp_path / "models")))
    return defaults["services_catalog"]


def catalog_with_port(tmp_path, service, port):
    catalog = default_catalog(tmp_path)
    catalog[service]["ports"] = [{"host": port, "container": catalog[service]["ports"][0][
        "container"]}]
    return catalog


def mount_point(path):
    return subprocess.run(["stat", "-c", "%m", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


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
    assert "Total: 3.8 GB to fetch (4 of 6 already present)" in output


def test_download_table_is_what_the_plan_fetches(tmp_path, tools):
    """vllm mode: the images (present), the two Ollama models (from the offline source, sized
    by their manifests) and vLLM's weights (cached: present), each on its filesystem."""
    values = base_vars(tmp_path, services_dual_gpu_mode="vllm")
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc == 0, output
    fs = mount_point(tmp_path)
    rows = [" ".join(line.split()) for line in table_lines(output)]
    assert rows == [
        "Downloads (what this run fetches)",
        "image ollama/ollama:latest present -> %s (ollama, vision)" % fs,
        "ollama llama3.2:3b 2.0 GB -> %s (ollama)" % fs,
        "ollama moondream:latest 1.7 GB -> %s (vision)" % fs,
        "image vllm/vllm-openai:latest present -> %s (vllm)" % fs,
        "huggingface %s present -> %s (vllm)" % (HF_REPO, fs),
        "image quay.io/docling-project/docling-serve:latest present -> %s (docling)" % fs,
        "Total: 3.8 GB to fetch (4 of 6 already present)"]
    # 3757847381 bytes: 3584 MiB, on the filesystem of tmp_path.
    assert "ok    disk at %s: 3584 MiB needed (3.8 GB to fetch, 0 MiB reserve), " % fs in output
    # Planning fetched nothing.
    assert not (tmp_path / "models").exists()


def test_systemd_kinds_leave_out_the_images(tmp_path, tools):
    """site.yml's systemd runtime: no images, and the instances' own models directory (which
    already has llama3.2:3b here)."""
    instances = tmp_path / "instances-models"
    ollama_source(instances, {"llama3.2:3b": MODEL_SIZES["llama3.2:3b"]})
    values = base_vars(tmp_path, preflight_download_kinds=["ollama", "huggingface"],
                       preflight_ollama_models_dir=str(instances))
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc == 0, output
    rows = [line.split()[:3] for line in table_lines(output)[1:-1]]
    assert rows == [["ollama", "llama3.2:3b", "present"], ["ollama", "moondream:latest", "1.7"]]
    rc, output, _recap = run_playbook("preflight.yml", tmp_path,
                                      base_vars(tmp_path, preflight_download_kinds=[]),
                                      env=tools)
    assert rc == 0, output
    assert "Downloads" not in output and "disk at" not in output


def test_disk_too_small_for_the_downloads_fails(tmp_path, tools):
    stat = os.statvfs(str(tmp_path))
    free = stat.f_bavail * stat.f_frsize
    values = base_vars(tmp_path, sizes={"llama3.2:3b": free * 2, "moondream:latest": 1000})
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc != 0
    assert "Preflight failed on localhost: disk at %s: " % mount_point(tmp_path) in output
    assert "MiB needed (%s to fetch, 0 MiB reserve)" % pf.size_text(free * 2 + 1000) in output


def test_unknown_ollama_model_fails_before_anything_changes(tmp_path, tools):
    catalog = default_catalog(tmp_path)
    catalog["ollama"]["model"] = "llama9:70b"
    values = base_vars(tmp_path, services_catalog=catalog)
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc != 0
    assert 'ollama model "llama9:70b"' in output
    assert "is not in ollama_source_dir %s" % (tmp_path / "ollama-source") in output
    assert not (tmp_path / "project" / ".env").exists()
    assert "Preflight localhost" not in output


def test_first_run_writes_dual_gpu_mode_and_the_hf_token_once_never_showing_it(tmp_path, tools):
    """Check, real, check, real on a two-GPU host with a token: .env gets DUAL_GPU_MODE and
    the token file its token (0600, root's) on the first real run only, and no run shows it.
    Without the token, the file is removed."""
    env_file = tmp_path / "project" / ".env"
    token = "hf_plantedPreflightToken1234567890"
    token_file = tmp_path / "etc" / "huggingface.env"
    values = base_vars(tmp_path, services_hf_token=token)
    runs, outputs = [], []
    for check in (True, False, True, False):
        rc, output, recap = run_playbook("preflight.yml", tmp_path, values, check=check,
                                         diff=True, verbosity=2, env=tools)
        assert rc == 0, output
        outputs.append(output)
        runs.append((recap["changed"], env_file.exists() and env_file.read_text(),
                     token_file.exists() and token_file.read_text()))
    written = ("DUAL_GPU_MODE=ollama\n", "HF_TOKEN=%s\n" % token)
    # .env's DUAL_GPU_MODE, the token file's directory and the token file
    assert runs == [(3, False, False), (3, *written), (0, *written), (0, *written)]
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert oct(token_file.parent.stat().st_mode & 0o777) == "0o755"
    assert token_file.stat().st_uid == 0
    assert all(token not in output for output in outputs)
    assert "Profile: dual-gpu (recommended: dual-gpu, 2 GPU(s)), DUAL_GPU_MODE=ollama" in output
    assert "Total: 3.8 GB to fetch (2 of 4 already present)" in output
    rc, output, recap = run_playbook("preflight.yml", tmp_path, base_vars(tmp_path),
                                     diff=True, verbosity=2, env=tools)
    assert rc == 0, output
    assert not token_file.exists() and recap["changed"] == 1


def test_port_held_by_another_process_fails_with_its_pid(tmp_path, tools, http_server):
    port, pid = http_server
    values = base_vars(tmp_path, services_catalog=catalog_with_port(tmp_path, "docling", port))
    rc, output, _recap = run_playbook("preflight.yml", tmp_path, values, env=tools)
    assert rc != 0
    assert "Preflight failed on localhost: port %d (docling) is held by " % port in output
    assert "(pid %d) on 127.0.0.1" % pid in output


def test_missing_toolkit_fails_unless_warn_only(tmp_path):
    # No docker either: the images cannot be planned (the downloads module would fail on
    # them), so this host plans its models only.
    env = {"PATH": "/usr/bin:/bin"}
    kinds = ["ollama", "huggingface"]
    rc, output, _recap = run_playbook("preflight.yml", tmp_path,
                                      base_vars(tmp_path, preflight_download_kinds=kinds),
                                      env=env)
    assert rc != 0
    assert "NVIDIA container toolkit not found" in output
    rc, output, _recap = run_playbook(
        "preflight.yml", tmp_path,
        base_vars(tmp_path, preflight_warn_only=["toolkit", "runtime"],
                  preflight_download_kinds=kinds), env=env)
    assert rc == 0, output
    assert "WARN  NVIDIA container toolkit not found" in output
