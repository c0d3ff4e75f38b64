# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stand-in engines' sleep mode and unloading behave as the real ones (lab/README.md,
"Sleep mode and unloading"): vLLM 0.10's development endpoints (/sleep, /wake_up,
/is_sleeping, /collective_rpc, only with VLLM_SERVER_DEV_MODE=1) and their memory effects
with and without --enable-sleep-mode, on a discrete and a unified-memory GPU; Ollama's
keep_alive 0, answered before its runner has stopped. The servers run as subprocesses on the
stand-in driver (no lab host); memory is read from the driver's registrations."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SERVERS = Path(__file__).resolve().parents[2] / "lab" / "servers"
GPU = {"name": "NVIDIA RTX A5500", "uuid": "GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60",
       "pci_bus_id": "00000000:01:00.0", "memory_total_mib": 24564, "memory_reserved_mib": 309,
       "memory_used_mib": 5, "compute_capability": "8.6"}
QUICK = {"GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "0", "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0",
         "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "0", "GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS": "0"}
MODEL = "facebook/opt-125m"
WEIGHTS = 240  # the stand-in's weights of facebook/opt-125m (lab/servers/vllm.py WEIGHTS_MIB)
HELD = int(24564 * 0.5)  # --gpu-memory-utilization 0.5 of the GPU's total
KEEP = 512  # GPUFLEET_STANDIN_VLLM_SLEEP_KEEP_MIB's default: what stays while asleep


def _gpuview():
    spec = importlib.util.spec_from_file_location("lab_gpuview", SERVERS / "gpuview.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPUVIEW = _gpuview()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registered(state):
    """MiB the driver counts as held by processes on GPU 0 (drain delay 0)."""
    return sum(r["mib"] for r in GPUVIEW.registrations(state.procs_dir, 0.0) if r["gpu"] == 0)


def http(method, url, body=None):
    """(status, parsed JSON body or the raw text, or None when empty)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture
def start(nvml_state, tmp_path):
    """Start a stand-in on the stand-in driver (unified GPU or not); stopped afterwards."""
    started = []

    def run(argv, unified=False, **env):
        nvml_state.write_gpus([{**GPU, **({"unified": 1} if unified else {})}])
        full = {k: v for k, v in os.environ.items()
                if k not in ("CUDA_VISIBLE_DEVICES", "VLLM_SERVER_DEV_MODE")}
        full.update(QUICK, GPUFLEET_NVML_STATE=nvml_state.path, HOME=str(tmp_path), **env)
        proc = subprocess.Popen([str(SERVERS / argv[0]), *argv[1:]], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()


def wait_up(url, proc, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "%s did not answer" % url
            time.sleep(0.1)


def seed_hf_model(cache, repo, commit="a" * 40):
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    (folder / "snapshots" / commit).mkdir(parents=True)
    for name, data in {"config.json": b'{"model_type": "opt"}',
                       "model.safetensors": b"\0" * 64}.items():
        etag = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / etag).write_bytes(data)
        (folder / "snapshots" / commit / name).symlink_to(Path("../../blobs") / etag)


@pytest.fixture
def vllm(start, tmp_path):
    """A started stand-in vLLM serving facebook/opt-125m at 0.5 of the GPU: its base URL."""
    seed_hf_model(tmp_path / ".cache" / "huggingface" / "hub", MODEL)

    def run(*flags, unified=False, **env):
        port = free_port()
        proc = start(["vllm", "serve", MODEL, "--port", str(port), "--gpu-memory-utilization",
                      "0.5", *flags], unified=unified, HF_HUB_OFFLINE="1", **env)
        base = "http://127.0.0.1:%d" % port
        wait_up(base + "/health", proc)
        return base, proc

    return run


def complete(base):
    return http("POST", base + "/v1/completions", {"model": MODEL, "prompt": "hi"})


@pytest.mark.parametrize("flags", [(), ("--enable-sleep-mode",)], ids=["plain", "sleep-mode"])
def test_vllm_sleep_endpoints_exist_only_in_dev_mode(vllm, flags):
    base, _proc = vllm(*flags)
    assert http("GET", base + "/is_sleeping") == (404, {"detail": "Not Found"})
    assert http("POST", base + "/sleep?level=1") == (404, {"detail": "Not Found"})
    assert http("POST", base + "/wake_up") == (404, {"detail": "Not Found"})


@pytest.mark.parametrize(("flags", "level", "unified", "asleep_mib"), [
    pytest.param(("--enable-sleep-mode",), 1, False, KEEP, id="level1-discrete"),
    pytest.param(("--enable-sleep-mode",), 2, False, KEEP, id="level2-discrete"),
    pytest.param(("--enable-sleep-mode",), 1, True, KEEP + WEIGHTS, id="level1-unified"),
    pytest.param(("--enable-sleep-mode",), 2, True, KEEP, id="level2-unified"),
    pytest.param((), 1, False, HELD, id="without-enable-sleep-mode-frees-nothing"),
])
def test_vllm_sleep_frees_what_the_level_frees_and_wake_takes_it_back(
        vllm, nvml_state, flags, level, unified, asleep_mib):
    base, _proc = vllm(*flags, unified=unified, VLLM_SERVER_DEV_MODE="1")
    assert registered(nvml_state) == HELD
    assert http("GET", base + "/is_sleeping") == (200, {"is_sleeping": False})
    assert http("POST", base + "/sleep?level=%d" % level) == (200, None)
    assert http("GET", base + "/is_sleeping") == (200, {"is_sleeping": True})
    assert registered(nvml_state) == asleep_mib
    assert http("GET", base + "/health")[0] == 200  # the engine lives while it sleeps
    assert http("POST", base + "/sleep?level=%d" % level) == (200, None)  # already asleep
    assert registered(nvml_state) == asleep_mib
    if level == 2 and flags:
        assert http("POST", base + "/wake_up?tags=weights") == (200, None)
        assert http("GET", base + "/is_sleeping") == (200, {"is_sleeping": True})
        assert http("POST", base + "/collective_rpc", {"method": "reload_weights"}) == (
            200, {"results": [None]})
        assert http("POST", base + "/wake_up?tags=kv_cache") == (200, None)
    else:
        assert http("POST", base + "/wake_up") == (200, None)
    assert http("GET", base + "/is_sleeping") == (200, {"is_sleeping": False})
    assert registered(nvml_state) == HELD
    status, answer = complete(base)
    assert status == 200 and answer["choices"][0]["text"] == " stand-in completion by " + MODEL
    assert http("POST", base + "/wake_up") == (200, None)  # not sleeping: nothing happens


def test_vllm_level2_wake_without_reload_answers_garbage_until_weights_reload(vllm):
    base, _proc = vllm("--enable-sleep-mode", VLLM_SERVER_DEV_MODE="1")
    assert http("POST", base + "/sleep?level=2") == (200, None)
    assert http("POST", base + "/wake_up") == (200, None)
    status, answer = complete(base)
    assert status == 200 and answer["choices"][0]["text"] == "!!!!!!!!"
    assert http("POST", base + "/collective_rpc", {"method": "reload_weights"}) == (
        200, {"results": [None]})
    assert complete(base)[1]["choices"][0]["text"] == " stand-in completion by " + MODEL


@pytest.mark.parametrize("request_while_asleep", [
    pytest.param(complete, id="completion"),
    pytest.param(lambda base: http("POST", base + "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}]}), id="chat"),
    pytest.param(lambda base: http("POST", base + "/collective_rpc",
                                   {"method": "reload_weights"}), id="reload-weights-asleep"),
])
def test_vllm_request_while_asleep_kills_the_engine(vllm, nvml_state, request_while_asleep):
    base, proc = vllm("--enable-sleep-mode", VLLM_SERVER_DEV_MODE="1")
    assert http("POST", base + "/sleep?level=1") == (200, None)
    assert request_while_asleep(base) == (500, None)
    assert proc.wait(timeout=10) == 1
    assert "CUDA error: an illegal memory access was encountered" in proc.stderr.read().decode()
    assert registered(nvml_state) == 0


def test_vllm_asleep_without_sleep_mode_still_serves(vllm):
    base, _proc = vllm(VLLM_SERVER_DEV_MODE="1")
    assert http("POST", base + "/sleep?level=1") == (200, None)
    assert complete(base)[0] == 200


@pytest.mark.parametrize(("method", "path", "body", "answer"), [
    ("GET", "/sleep", None, (405, {"detail": "Method Not Allowed"})),
    ("POST", "/collective_rpc", {}, (400, {"detail": "Missing 'method' in request body"})),
    ("POST", "/collective_rpc", {"method": "no_such_method"}, (500, "Internal Server Error")),
    ("POST", "/sleep?level=deep", None, (500, "Internal Server Error")),
    ("GET", "/nothing", None, (404, {"detail": "Not Found"})),
])
def test_vllm_dev_endpoints_refuse_bad_requests_as_fastapi_does(
        vllm, method, path, body, answer):
    base, _proc = vllm("--enable-sleep-mode", VLLM_SERVER_DEV_MODE="1")
    assert http(method, base + path, body) == answer


def test_vllm_dev_mode_value_must_be_an_integer(start, tmp_path):
    seed_hf_model(tmp_path / ".cache" / "huggingface" / "hub", MODEL)
    proc = start(["vllm", "serve", MODEL, "--port", str(free_port())], HF_HUB_OFFLINE="1",
                 VLLM_SERVER_DEV_MODE="true")
    assert proc.wait(timeout=20) == 1
    assert "ValueError: invalid literal for int() with base 10: 'true'" in (
        proc.stderr.read().decode())


def seed_ollama_model(models_dir, model, tag):
    model_bytes, template = b"GGUF" + b"\0" * 600, b"{{ .Prompt }}"
    config = json.dumps({"model_format": "gguf", "model_family": "llama",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()

    def digest(data):
        return "sha256:" + hashlib.sha256(data).hexdigest()

    (models_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for data in (model_bytes, template, config):
        (models_dir / "blobs" / digest(data).replace(":", "-")).write_bytes(data)
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": digest(config), "size": len(config)},
                "layers": [{"mediaType": "application/vnd.ollama.image.model",
                            "digest": digest(model_bytes), "size": len(model_bytes)},
                           {"mediaType": "application/vnd.ollama.image.template",
                            "digest": digest(template), "size": len(template)}]}
    path = models_dir / "manifests" / "registry.ollama.ai" / "library" / model / tag
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("unload", [
    pytest.param({"model": "llama3.2:3b", "keep_alive": 0}, id="preload-request"),
    pytest.param({"model": "llama3.2:3b", "keep_alive": 0, "prompt": "hi", "stream": False},
                 id="with-a-prompt"),
])
def test_ollama_keep_alive_0_answers_first_and_unloads_after(start, nvml_state, tmp_path,
                                                             unload):
    port = free_port()
    proc = start(["ollama", "serve"], OLLAMA_HOST="127.0.0.1:%d" % port,
                 GPUFLEET_STANDIN_OLLAMA_UNLOAD_SECONDS="3")
    base = "http://127.0.0.1:%d" % port
    wait_up(base + "/api/version", proc)
    seed_ollama_model(tmp_path / ".ollama" / "models", "llama3.2", "3b")
    status, answer = http("POST", base + "/api/generate",
                          {"model": "llama3.2:3b", "keep_alive": -1})
    assert (status, answer["done_reason"]) == (200, "load")
    loaded = registered(nvml_state)
    assert loaded > 0
    status, answer = http("POST", base + "/api/generate", unload)
    assert status == 200
    # answered while the runner still runs: listed, its memory held
    assert [m["name"] for m in http("GET", base + "/api/ps")[1]["models"]] == ["llama3.2:3b"]
    assert registered(nvml_state) == loaded
    deadline = time.time() + 20
    while http("GET", base + "/api/ps")[1]["models"]:
        assert time.time() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.1)
    assert registered(nvml_state) == 0


def test_ollama_keep_alive_0_of_a_model_not_loaded_is_answered_unload(start, tmp_path):
    port = free_port()
    proc = start(["ollama", "serve"], OLLAMA_HOST="127.0.0.1:%d" % port)
    base = "http://127.0.0.1:%d" % port
    wait_up(base + "/api/version", proc)
    seed_ollama_model(tmp_path / ".ollama" / "models", "llama3.2", "3b")
    status, answer = http("POST", base + "/api/generate",
                          {"model": "llama3.2:3b", "keep_alive": 0})
    assert (status, answer["done_reason"], answer["done"]) == (200, "unload", True)
    assert http("GET", base + "/api/ps") == (200, {"models": []})
