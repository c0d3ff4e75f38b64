# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's stand-in engines show in NVML by their engine's process title (their
/proc/<pid>/comm, 15 characters), never by a friendly name they register.

Real vLLM titles its engine core ``VLLM::EngineCore`` (prefix VLLM_PROCESS_NAME_PREFIX; vLLM
PRs 21445, 22205), which the kernel's comm cuts to ``VLLM::EngineCor``; Ollama's GPU memory is
held by its runner, a subprocess running the ollama binary. The stand-ins run here on the
stand-in NVML library, no lab host needed (lab/README.md, "What the driver shows of them").
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._nvml import read_gpus

SERVERS = Path(__file__).resolve().parents[2] / "lab" / "servers"
GPU = {"name": "NVIDIA RTX A5500", "uuid": "GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60",
       "pci_bus_id": "00000000:01:00.0", "memory_total_mib": 24564, "memory_reserved_mib": 309,
       "memory_used_mib": 5, "compute_capability": "8.6"}
QUICK = {"GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "0", "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0",
         "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "0", "GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS": "0"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def standin(nvml_state, tmp_path):
    """Start a stand-in server on the stand-in driver; stopped (by its pid) afterwards."""
    nvml_state.write_gpus([GPU])
    started = []

    def start(argv, **env):
        full = {k: v for k, v in os.environ.items()
                if k not in ("CUDA_VISIBLE_DEVICES", "VLLM_PROCESS_NAME_PREFIX")}
        full.update(QUICK, GPUFLEET_NVML_STATE=nvml_state.path, HOME=str(tmp_path), **env)
        proc = subprocess.Popen([str(SERVERS / argv[0]), *argv[1:]], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url, proc, body=None, timeout=20.0):
    deadline = time.time() + timeout
    data = None if body is None else json.dumps(body).encode()
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data),
                                        timeout=5) as answer:
                return json.loads(answer.read() or b"null")
        except OSError:
            assert proc is None or proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "%s did not answer" % url
            time.sleep(0.1)


def comm(pid):
    with open("/proc/%d/comm" % pid, encoding="utf-8") as handle:
        return handle.read().strip()


@pytest.mark.parametrize(("prefix", "shown"), [
    pytest.param(None, "VLLM::EngineCor", id="default-prefix"),
    pytest.param("gpufleet", "gpufleet::Engin", id="VLLM_PROCESS_NAME_PREFIX"),
])
def test_vllm_standin_shows_as_its_engine_core(standin, nvml_lib, use_nvml_lib, prefix, shown,
                                               tmp_path):
    port = free_port()
    env = {"VLLM_PROCESS_NAME_PREFIX": prefix} if prefix else {}
    seed_hf_model(tmp_path / ".cache" / "huggingface" / "hub", "facebook/opt-125m")
    proc = standin(["vllm", "serve", "facebook/opt-125m", "--port", str(port),
                    "--gpu-memory-utilization", "0.5"], HF_HUB_OFFLINE="1", **env)
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    pynvml = use_nvml_lib(nvml_lib())
    processes = read_gpus(pynvml)["gpus"][0]["processes"]
    assert [(p["pid"], p["name"]) for p in processes] == [(proc.pid, shown)]
    assert comm(proc.pid) == shown
    assert "vllm" not in shown  # a name match on "vllm" finds the real engine no more


def test_ollama_standin_memory_is_held_by_a_runner_named_ollama(
        standin, nvml_lib, use_nvml_lib, tmp_path):
    port = free_port()
    proc = standin(["ollama", "serve"], OLLAMA_HOST="127.0.0.1:%d" % port)
    base = "http://127.0.0.1:%d" % port
    wait_http(base + "/api/version", proc)
    seed_ollama_model(tmp_path / ".ollama" / "models", "llama3.2", "3b")  # a copied directory
    wait_http(base + "/api/generate", proc, body={"model": "llama3.2:3b"})
    pynvml = use_nvml_lib(nvml_lib())
    processes = read_gpus(pynvml)["gpus"][0]["processes"]
    assert [p["name"] for p in processes] == ["ollama"]
    runner = processes[0]["pid"]
    assert runner != proc.pid and comm(proc.pid) == "ollama"
    with open("/proc/%d/status" % runner, encoding="utf-8") as handle:
        assert "PPid:\t%d\n" % proc.pid in handle.read()  # the server's subprocess


# --- models and weights: the stand-ins fetch them like the real engines ------------------
# Ollama pulls from an OCI distribution registry (ollama/ollama server/images.go PullModel,
# server/download.go); vLLM fetches a repository through huggingface_hub (file_download.py,
# _snapshot_download.py) from HF_ENDPOINT. The registry and the hub here are small loopback
# fakes of those APIs (as lab/ serves them), written for these tests.
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seed_hf_model(cache, repo, files=None, commit="a" * 40):
    """A repository in the Hugging Face cache layout, as huggingface_hub writes it:
    refs/main, snapshots/<commit>/<file> -> ../../blobs/<etag>."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    files = files or {"config.json": b'{"model_type": "opt"}', "model.safetensors": b"\0" * 64}
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    (folder / "snapshots" / commit).mkdir(parents=True)
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / etag).write_bytes(data)
        (folder / "snapshots" / commit / name).symlink_to(Path("../../blobs") / etag)
    return folder


def ollama_model(model_bytes=b"GGUF" + b"\0" * 60_000, template=b"{{ .Prompt }}"):
    """(manifest bytes, {digest: bytes}) of a model as Ollama's registry holds it."""
    config = json.dumps({"model_format": "gguf", "model_family": "llama",
                         "model_families": ["llama"], "model_type": "3.2B",
                         "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    blobs = {sha256(b): b for b in (model_bytes, template, config)}
    layer = {"application/vnd.ollama.image.model": model_bytes,
             "application/vnd.ollama.image.template": template}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_V2,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": sha256(config), "size": len(config)},
                "layers": [{"mediaType": kind, "digest": sha256(data), "size": len(data)}
                           for kind, data in layer.items()]}
    return json.dumps(manifest).encode(), blobs


def seed_ollama_model(models_dir, model, tag, host="registry.ollama.ai"):
    """Write a model in Ollama's layout, as a models directory copied from another host."""
    manifest, blobs = ollama_model()
    (models_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (models_dir / "blobs" / digest.replace(":", "-")).write_bytes(data)
    path = models_dir / "manifests" / host / "library" / model / tag
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)


class Loopback:
    """A small HTTP server on 127.0.0.1 in a thread; handle(request) answers."""

    def __init__(self, handle):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _any(self):
                outer.requests.append((self.command, self.path, self.headers.get("Range"),
                                       self.headers.get("Authorization")))
                handle(self)

            do_GET = do_HEAD = _any

        self.requests = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reply(handler, status, data=b"", headers=None, length=None):
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data) if length is None else length))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


class FakeRegistry:
    """Distribution's API for Ollama models: manifests, blobs (HEAD for the size, GET
    answered with a 307 to a "CDN" on another host name, localhost, as registry.ollama.ai
    does; redirect=False serves the blob itself, as a registry on local storage does)."""

    def __init__(self):
        self.models, self.blobs = {}, {}
        self.redirect, self.missing, self.cut = True, set(), {}
        self.slow = 0.0
        self.registry = Loopback(self._registry)
        self.cdn = Loopback(self._cdn)
        self.host = "127.0.0.1:%d" % self.registry.port

    def add(self, repo, tag, manifest_and_blobs):
        manifest, blobs = manifest_and_blobs
        self.models[(repo, tag)] = manifest
        self.blobs.update(blobs)

    def _registry(self, handler):
        parts = handler.path.split("/")
        if len(parts) == 6 and parts[4] == "manifests":
            manifest = self.models.get(("%s/%s" % (parts[2], parts[3]), parts[5]))
            if manifest is None:
                return reply(handler, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return reply(handler, 200, manifest, {"Content-Type": MANIFEST_V2})
        digest = parts[-1]
        if len(parts) == 6 and parts[4] == "blobs" and digest in self.blobs \
                and digest not in self.missing:
            if handler.command == "HEAD" or not self.redirect:
                return reply(handler, 200, self.blobs[digest], length=len(self.blobs[digest]))
            where = "http://localhost:%d/blobs/%s" % (self.cdn.port, digest)
            return reply(handler, 307, b"", {"Location": where})
        return reply(handler, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')

    def _cdn(self, handler):
        data = self.blobs[handler.path.rsplit("/", 1)[1]]
        wanted = (handler.headers.get("Range") or "bytes=0-").split("=")[1]
        first, _sep, last = wanted.partition("-")
        body = data[int(first):int(last or len(data) - 1) + 1]
        handler.send_response(206)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        cut = self.cut.get(sha256(data))
        sent = body[:cut] if cut is not None else body
        for start in range(0, len(sent), 4096):
            handler.wfile.write(sent[start:start + 4096])
            handler.wfile.flush()
            time.sleep(self.slow)
        if cut is not None:
            handler.close_connection = True  # the connection drops midway

    def close(self):
        self.registry.close()
        self.cdn.close()


@pytest.fixture
def registry():
    fake = FakeRegistry()
    yield fake
    fake.close()


def post_lines(url, body, timeout=60):
    """POST; (status, [JSON lines]) of a streamed answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, [json.loads(line) for line in answer.read().splitlines()]
    except urllib.error.HTTPError as error:
        return error.code, [json.loads(error.read() or b"null")]


def ollama_server(standin, tmp_path, models="models", **env):
    port = free_port()
    proc = standin(["ollama", "serve"], OLLAMA_HOST="127.0.0.1:%d" % port,
                   OLLAMA_MODELS=str(tmp_path / models),
                   GPUFLEET_STANDIN_OLLAMA_RETRY_SCALE="0", **env)
    base = "http://127.0.0.1:%d" % port
    wait_http(base + "/api/version", proc)
    return base


def test_ollama_pull_streams_stores_and_skips_what_it_has(standin, tmp_path, registry):
    manifest, blobs = ollama_model()
    registry.add("library/tiny", "1", (manifest, blobs))
    registry.slow = 0.02  # the model blob takes about 0.3 s: progress lines every 60 ms
    base = ollama_server(standin, tmp_path)
    name = "%s/library/tiny:1" % registry.host
    status, lines = post_lines(base + "/api/pull", {"model": name, "insecure": True})
    assert status == 200
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-3:] == [{"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                          {"status": "success"}]
    model = json.loads(manifest)["layers"][0]
    progress = [line for line in lines if line.get("digest") == model["digest"]]
    assert len(progress) >= 2 and progress[0]["status"] == "pulling " + model["digest"][7:19]
    assert {line["total"] for line in progress} == {model["size"]}
    models = tmp_path / "models"
    for digest, data in blobs.items():
        assert (models / "blobs" / digest.replace(":", "-")).read_bytes() == data
    stored = models / "manifests" / registry.host / "library" / "tiny" / "1"
    assert stored.read_bytes() == manifest
    assert not list((models / "blobs").glob("*partial*"))

    # a second server on the same directory sees it; a second pull downloads nothing
    other = ollama_server(standin, tmp_path)
    tags = wait_http(other + "/api/tags", None)["models"]
    assert [(m["name"], m["size"], m["details"]["parameter_size"]) for m in tags] == [
        (name, sum(len(b) for b in blobs.values()), "3.2B")]
    before = len(registry.registry.requests) + len(registry.cdn.requests)
    status, lines = post_lines(other + "/api/pull", {"model": name, "insecure": True})
    assert lines[-1] == {"status": "success"}
    after = len(registry.registry.requests) + len(registry.cdn.requests)
    assert after == before + 1  # the manifest only
    cached = [line for line in lines if "digest" in line]
    assert len(cached) == 3 and all(line["completed"] == line["total"] for line in cached)


def test_ollama_pull_errors_as_ollama_words_them(standin, tmp_path, registry):
    base = ollama_server(standin, tmp_path)
    pull = base + "/api/pull"
    unknown = "%s/library/nothing:1" % registry.host
    assert post_lines(pull, {"model": unknown, "insecure": True}) == (200, [
        {"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}])
    assert post_lines(pull, {"model": unknown, "insecure": True, "stream": False}) == (
        500, [{"error": "pull model manifest: file does not exist"}])
    assert post_lines(pull, {"model": "bad name!"}) == (400, [{"error": "invalid model name"}])
    closed = free_port()
    url = "http://127.0.0.1:%d/v2/library/x/manifests/1" % closed
    _status, lines = post_lines(pull, {"model": "127.0.0.1:%d/library/x:1" % closed,
                                       "insecure": True})
    assert lines[-1] == {"error": 'pull model manifest: Get "%s": dial tcp 127.0.0.1:%d: '
                                  'connect: connection refused' % (url, closed)}
    # https by default: a plain-HTTP registry answers the TLS hello with HTTP
    _status, lines = post_lines(pull, {"model": unknown})
    assert lines[-1]["error"].endswith(": http: server gave HTTP response to HTTPS client")
    # a request naming a model that is not there
    status, lines = post_lines(base + "/api/generate", {"model": "llama3.2:3b", "prompt": "hi"})
    assert (status, lines) == (404, [{"error": "model 'llama3.2:3b' not found"}])
    assert wait_http(base + "/api/tags", None) == {"models": []}  # it starts with none


def test_ollama_dns_failure_reads_like_go(monkeypatch):
    import importlib.util  # noqa: PLC0415
    spec = importlib.util.spec_from_file_location("standin_ollama", SERVERS / "ollama.py")
    ollama = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ollama)

    def no_such_host(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(ollama.socket, "getaddrinfo", no_such_host)
    monkeypatch.setattr(ollama, "_nameserver", lambda: "127.0.0.11")
    with pytest.raises(ollama.PullError) as error:
        ollama.go_request("GET", "https://registry.ollama.ai/v2/library/llama3.2/manifests/3b")
    assert str(error.value) == ('Get "https://registry.ollama.ai/v2/library/llama3.2/manifests/'
                                '3b": dial tcp: lookup registry.ollama.ai on 127.0.0.11:53: '
                                'no such host')
    name = ollama.parse_name("llama3.2:3b")
    assert (str(name), name.display()) == ("registry.ollama.ai/library/llama3.2:3b",
                                           "llama3.2:3b")
    name = ollama.parse_name("registry.lab:5000/library/llama3.2")
    assert (str(name), name.display()) == ("registry.lab:5000/library/llama3.2:latest",
                                           "registry.lab:5000/library/llama3.2:latest")


def test_ollama_blob_failures_leave_no_manifest(standin, tmp_path, registry):
    manifest, blobs = ollama_model()
    registry.add("library/tiny", "1", (manifest, blobs))
    base = ollama_server(standin, tmp_path)
    name = "%s/library/tiny:1" % registry.host
    stored = tmp_path / "models" / "manifests" / registry.host / "library" / "tiny" / "1"
    model, template = (layer["digest"] for layer in json.loads(manifest)["layers"])
    blob_dir = tmp_path / "models" / "blobs"

    # the registry 404s a blob: HEAD fails before any part file is written
    registry.missing = {template}
    _status, lines = post_lines(base + "/api/pull", {"model": name, "insecure": True})
    assert lines[-1] == {"error": "file does not exist"} and not stored.exists()
    assert (blob_dir / model.replace(":", "-")).exists()  # the first layer came
    registry.missing = set()

    # the connection drops after 10000 bytes, every time: 6 tries (download.go maxRetries)
    (blob_dir / model.replace(":", "-")).unlink()
    registry.cut = {model: 10000}
    _status, lines = post_lines(base + "/api/pull", {"model": name, "insecure": True})
    assert lines[-1] == {"error": "max retries exceeded: unexpected EOF"}
    assert not stored.exists()
    partial = blob_dir / (model.replace(":", "-") + "-partial")
    part = json.loads((blob_dir / (partial.name + "-0")).read_text())
    assert part == {"N": 0, "Offset": 0, "Size": len(blobs[model]), "Completed": 60000}
    assert partial.read_bytes()[:60000] == blobs[model][:60000]

    # the next pull resumes where the part stopped, and completes
    registry.cut = {}
    _status, lines = post_lines(base + "/api/pull", {"model": name, "insecure": True})
    assert lines[-1] == {"status": "success"} and stored.read_bytes() == manifest
    ranges = [r[2] for r in registry.cdn.requests if r[1].endswith(model)]
    assert ranges[-1] == "bytes=60000-%d" % (len(blobs[model]) - 1)
    assert not list(blob_dir.glob("*partial*"))


def test_ollama_registry_serving_blobs_itself_fails_like_ollama(standin, tmp_path, registry):
    """Ollama takes the blob's URL from the registry's redirect (download.go: resp.Location());
    distribution's registry on local storage answers 200 instead: Ollama's pull fails."""
    registry.add("library/tiny", "1", ollama_model())
    registry.redirect = False
    base = ollama_server(standin, tmp_path)
    _status, lines = post_lines(base + "/api/pull", {
        "model": "%s/library/tiny:1" % registry.host, "insecure": True})
    assert lines[-1] == {"error": "http: no Location header in response"}


def test_ollama_copy_and_delete(standin, tmp_path, registry):
    manifest, blobs = ollama_model()
    registry.add("library/tiny", "1", (manifest, blobs))
    base = ollama_server(standin, tmp_path)
    name = "%s/library/tiny:1" % registry.host
    assert post_lines(base + "/api/pull", {"model": name, "insecure": True})[1][-1] == {
        "status": "success"}
    request = urllib.request.Request(
        base + "/api/copy", method="POST",
        data=json.dumps({"source": name, "destination": "llama3.2:3b"}).encode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"")
    copied = tmp_path / "models" / "manifests" / "registry.ollama.ai" / "library" / "llama3.2"
    assert (copied / "3b").read_bytes() == manifest
    names = sorted(m["name"] for m in wait_http(base + "/api/tags", None)["models"])
    assert names == sorted([name, "llama3.2:3b"])
    status, lines = post_lines(base + "/api/generate",
                               {"model": "llama3.2:3b", "prompt": "hi", "stream": False})
    assert status == 200 and lines[0]["model"] == "llama3.2:3b"
    assert post_lines(base + "/api/copy", {"source": "nope:1", "destination": "x:1"}) == (
        404, [{"error": 'model "nope:1" not found'}])

    def delete(model):
        request = urllib.request.Request(base + "/api/delete", method="DELETE",
                                         data=json.dumps({"model": model}).encode())
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert delete(name) == (200, b"")
    assert all((tmp_path / "models" / "blobs" / d.replace(":", "-")).exists() for d in blobs)
    assert delete("llama3.2:3b") == (200, b"")  # the last user of the blobs: they go too
    assert not list((tmp_path / "models" / "blobs").iterdir())
    assert delete("llama3.2:3b") == (404, {"error": "model 'llama3.2:3b' not found"})


class FakeHub:
    """huggingface.co's API for model repositories: revision info, resolve (HEAD and GET,
    Range), gated repositories (401 GatedRepo without a token, 403 with one lacking access),
    RepoNotFound, EntryNotFound, X-Repo-Commit, ETag, X-Linked-Etag/-Size for LFS files."""

    TOKEN = "hf_granted"

    def __init__(self):
        self.repos = {}
        self.server = Loopback(self._handle)
        self.endpoint = "http://127.0.0.1:%d" % self.server.port

    def add(self, repo, files, gated=False, commit="c" * 40):
        self.repos[repo] = {"files": files, "gated": gated, "sha": commit}

    @staticmethod
    def _error(handler, status, code, message):
        reply(handler, status, json.dumps({"error": message}).encode(),
              {"X-Error-Code": code, "X-Error-Message": message,
               "Content-Type": "application/json"})

    def _handle(self, handler):
        path = urllib.parse.unquote(handler.path.split("?")[0])
        token = (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
        if path.startswith("/api/models/"):
            repo, _sep, _rev = path[len("/api/models/"):].partition("/revision/")
            entry = self.repos.get(repo)
            if entry is None:
                return self._error(handler, 404, "RepoNotFound", "Repository not found")
            siblings = [{"rfilename": name, "size": len(data),
                         "blobId": hashlib.sha1(data).hexdigest(),
                         **({"lfs": {"sha256": hashlib.sha256(data).hexdigest(),
                                     "size": len(data)}} if name.endswith(".safetensors")
                            else {})}
                        for name, data in entry["files"].items()]
            return reply(handler, 200, json.dumps({
                "id": repo, "sha": entry["sha"], "gated": "manual" if entry["gated"] else False,
                "siblings": siblings}).encode(), {"Content-Type": "application/json"})
        repo, _sep, rest = path.lstrip("/").partition("/resolve/")
        entry = self.repos.get(repo)
        if entry is None:
            return self._error(handler, 404, "RepoNotFound", "Repository not found")
        if entry["gated"] and not token:
            return self._error(handler, 401, "GatedRepo",
                               "Access to model %s is restricted. You must have access to it "
                               "and be authenticated to access it. Please log in." % repo)
        if entry["gated"] and token != self.TOKEN:
            return self._error(handler, 403, "GatedRepo",
                               "Access to model %s is restricted and you are not in the "
                               "authorized list. Visit https://huggingface.co/%s to ask for "
                               "access." % (repo, repo))
        name = rest.partition("/")[2]
        data = entry["files"].get(name)
        if data is None:
            return self._error(handler, 404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": entry["sha"],
                   "ETag": '"%s"' % hashlib.sha1(data).hexdigest()}
        if name.endswith(".safetensors"):
            headers["X-Linked-Etag"] = '"%s"' % hashlib.sha256(data).hexdigest()
            headers["X-Linked-Size"] = str(len(data))
        start = int((handler.headers.get("Range") or "bytes=0-")[6:].partition("-")[0])
        reply(handler, 206 if start else 200, data[start:], headers)

    def close(self):
        self.server.close()


@pytest.fixture
def hub():
    fake = FakeHub()
    yield fake
    fake.close()


TINY = {"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": b"{}",
        "model.safetensors": b"\1" * 5000}


def vllm_start(standin, model, *args, **env):
    port = free_port()
    proc = standin(["vllm", "serve", model, "--port", str(port),
                    "--gpu-memory-utilization", "0.5", *args],
                   GPUFLEET_STANDIN_VLLM_RETRY_SECONDS="0", **env)
    return proc, port


def vllm_fails(proc):
    assert proc.wait(timeout=30) == 1
    return proc.stderr.read().decode()


def test_vllm_offline_without_the_model_refuses_before_the_gpu(standin, nvml_state):
    proc, _port = vllm_start(standin, "Qwen/Qwen2.5-0.5B-Instruct", HF_HUB_OFFLINE="1")
    err = vllm_fails(proc)
    assert err.endswith(
        "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached "
        "snapshot folder for the specified revision on the local disk and outgoing traffic "
        "has been disabled. To enable repo look-ups and downloads online, pass "
        "'local_files_only=False' as input.\n")
    assert "EngineCore" not in err and not os.listdir(nvml_state.procs_dir)


def test_vllm_offline_with_a_snapshot_lacking_weights_dies_loading(standin, tmp_path):
    seed_hf_model(tmp_path / "hf" / "hub", "org/tiny", {"config.json": b"{}"})
    proc, _port = vllm_start(standin, "org/tiny", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    err = vllm_fails(proc)
    snapshot = tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    assert "HF_HUB_OFFLINE is True, replace model_id [org/tiny] to model_path [%s]" % snapshot \
        in err
    assert "RuntimeError: Cannot find any model weights with `%s`\n" % snapshot in err
    assert "EngineCore failed to start" in err


def test_vllm_downloads_into_the_cache_then_starts_offline(standin, tmp_path, hub):
    hub.add("org/tiny", TINY)
    cache = tmp_path / "hf" / "hub"
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    proc, port = vllm_start(standin, "org/tiny", **env)
    assert wait_http("http://127.0.0.1:%d/v1/models" % port, proc)["data"][0]["id"] == "org/tiny"
    folder = cache / "models--org--tiny"
    assert (folder / "refs" / "main").read_text() == "c" * 40
    for name, data in TINY.items():
        pointer = folder / "snapshots" / ("c" * 40) / name
        etag = (hashlib.sha256 if name.endswith(".safetensors") else hashlib.sha1)(data)
        assert os.readlink(pointer) == "../../blobs/" + etag.hexdigest()
        assert pointer.read_bytes() == data
    assert not list(folder.glob("blobs/*.incomplete"))
    proc.terminate()
    proc.wait(timeout=10)
    served = len(hub.server.requests)
    proc, port = vllm_start(standin, "org/tiny", HF_HUB_OFFLINE="1", **env)
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    assert len(hub.server.requests) == served  # nothing asked of the hub
    proc.terminate()
    proc.wait(timeout=10)
    # online, the hub out of reach: the cached snapshot still serves (snapshot_download)
    proc, port = vllm_start(standin, "org/tiny", HF_HOME=env["HF_HOME"],
                            HF_ENDPOINT="http://127.0.0.1:%d" % free_port())
    wait_http("http://127.0.0.1:%d/health" % port, proc)


def test_vllm_weights_go_to_the_download_dir(standin, tmp_path, hub):
    hub.add("org/tiny", TINY)
    proc, port = vllm_start(standin, "org/tiny", "--download-dir", str(tmp_path / "weights"),
                            HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"))
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    snapshot = Path("models--org--tiny") / "snapshots" / ("c" * 40)
    assert os.listdir(tmp_path / "weights" / snapshot) == ["model.safetensors"]
    assert sorted(os.listdir(tmp_path / "hf" / "hub" / snapshot)) == ["config.json",
                                                                      "tokenizer.json"]


def test_vllm_gated_model_needs_a_token(standin, tmp_path, hub, nvml_state):
    hub.add("org/gated", TINY, gated=True)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    proc, _port = vllm_start(standin, "org/gated", **env)
    err = vllm_fails(proc)
    url = "%s/org/gated/resolve/%s/config.json" % (hub.endpoint, "c" * 40)
    assert ("huggingface_hub.errors.GatedRepoError: 401 Client Error.\n\n"
            "Cannot access gated repo for url %s.\nAccess to model org/gated is restricted. You "
            "must have access to it and be authenticated to access it. Please log in.\n" % url
            ) in err
    assert err.endswith("OSError: You are trying to access a gated repo.\nMake sure to have "
                        "access to it at https://huggingface.co/org/gated.\n401 Client Error.\n\n"
                        "Cannot access gated repo for url %s.\nAccess to model org/gated is "
                        "restricted. You must have access to it and be authenticated to access "
                        "it. Please log in.\n" % url)
    assert not os.listdir(nvml_state.procs_dir)
    # a token without access: 403; the right one, from $HF_HOME/token: it starts
    proc, _port = vllm_start(standin, "org/gated", HF_TOKEN="hf_other", **env)
    assert "huggingface_hub.errors.GatedRepoError: 403 Client Error." in vllm_fails(proc)
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "hf" / "token").write_text(FakeHub.TOKEN + "\n")
    proc, port = vllm_start(standin, "org/gated", **env)
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    assert {r[3] for r in hub.server.requests[-3:]} == {"Bearer " + FakeHub.TOKEN}


def test_vllm_unknown_or_unreachable_repository(standin, tmp_path, hub):
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    proc, _port = vllm_start(standin, "org/nothing", **env)
    err = vllm_fails(proc)
    assert ("huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error.\n\nRepository "
            "Not Found for url: %s/api/models/org/nothing/revision/main." % hub.endpoint) in err
    assert "Error retrieving file list: " in err and "retrying 1 of 2" in err
    assert err.endswith("ValueError: Invalid repository ID or local directory specified: "
                        "'org/nothing'.\nPlease verify the following requirements:\n1. Provide "
                        "a valid Hugging Face repository ID.\n2. Specify a local directory that "
                        "contains a recognized configuration file.\n   - For Hugging Face "
                        "models: ensure the presence of a 'config.json'.\n   - For Mistral "
                        "models: ensure the presence of a 'params.json'.\n3. For GGUF: pass the "
                        "local path of the GGUF checkpoint.\n   Loading GGUF from a remote repo "
                        "directly is not yet supported.\n\n")
    closed = free_port()
    env["HF_ENDPOINT"] = "http://127.0.0.1:%d" % closed
    err = vllm_fails(vllm_start(standin, "org/tiny", **env)[0])
    assert ("requests.exceptions.ConnectionError: (MaxRetryError(\"HTTPConnectionPool(host="
            "'127.0.0.1', port=%d): Max retries exceeded with url: /api/models/org/tiny/revision/"
            "main (Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at "
            "0x7f3a9c2b1d50>: Failed to establish a new connection: [Errno 111] Connection "
            "refused'))\"), '(Request ID: " % closed) in err


def test_vllm_tensor_parallel_memory_is_held_by_its_workers(
        standin, nvml_state, nvml_lib, use_nvml_lib, tmp_path):
    second = dict(GPU, uuid="GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f61",
                  pci_bus_id="00000000:02:00.0")
    nvml_state.write_gpus([GPU, second])
    seed_hf_model(tmp_path / ".cache" / "huggingface" / "hub", "facebook/opt-125m")
    proc, port = vllm_start(standin, "facebook/opt-125m", "--tensor-parallel-size", "2",
                            HF_HUB_OFFLINE="1")
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    gpus = read_gpus(use_nvml_lib(nvml_lib()))["gpus"]
    held = [(p["name"], p["pid"]) for gpu in gpus for p in gpu["processes"]]
    assert [name for name, _pid in held] == ["VLLM::Worker_TP", "VLLM::Worker_TP"]
    assert len({pid for _name, pid in held} | {proc.pid}) == 3
    for _name, pid in held:
        with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
            assert "PPid:\t%d\n" % proc.pid in handle.read()


# --- tensor parallel as real vLLM does it (vllm/config/parallel.py, config/model.py,
# v1/executor/multiproc_executor.py): checked before any GPU is touched, then one worker per
# GPU holding gpu_memory_utilization x that GPU's total ---------------------------------------
TP_GPUS = [GPU, dict(GPU, uuid="GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f61",
                     pci_bus_id="00000000:02:00.0", memory_total_mib=49140),
           dict(GPU, uuid="GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f62",
                pci_bus_id="00000000:03:00.0")]


def test_vllm_tensor_parallel_workers_hold_each_gpus_share(
        standin, nvml_state, nvml_lib, use_nvml_lib, tmp_path):
    """Three GPUs visible, --tensor-parallel-size 2: ranks 0 and 1 take the first two, each
    holds 0.5 x its own GPU's total; the third GPU and the API server hold nothing."""
    nvml_state.write_gpus(TP_GPUS)
    seed_hf_model(tmp_path / ".cache" / "huggingface" / "hub", "facebook/opt-125m")
    proc, port = vllm_start(standin, "facebook/opt-125m", "--tensor-parallel-size", "2",
                            HF_HUB_OFFLINE="1")
    wait_http("http://127.0.0.1:%d/health" % port, proc)
    gpus = read_gpus(use_nvml_lib(nvml_lib()))["gpus"]
    held = [[(p["name"], p["used_memory_mib"]) for p in gpu["processes"]] for gpu in gpus]
    assert held == [[("VLLM::Worker_TP", 24564 // 2)], [("VLLM::Worker_TP", 49140 // 2)], []]
    pids = [gpu["processes"][0]["pid"] for gpu in gpus[:2]]
    assert proc.pid not in pids
    for rank, pid in enumerate(pids):
        assert comm(pid) == "VLLM::Worker_TP"  # "VLLM::Worker_TP<rank>" cut to 15 characters
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            assert handle.read().split(b"\0")[-2] == b"VLLM::Worker_TP%d" % rank


@pytest.mark.parametrize(("visible", "config", "error"), [
    pytest.param(
        TP_GPUS[0]["uuid"], {"model_type": "qwen2", "num_attention_heads": 14},
        "1 validation error for ParallelConfig\n  Value error, World size (2) is larger than "
        "the number of available GPUs (1) in this node. If this is intentional and you are "
        "using:\n- ray, set '--distributed-executor-backend ray'.\n- multiprocessing, set "
        "'--nnodes' appropriately. [type=value_error", id="more-ranks-than-visible-gpus"),
    pytest.param(
        None, {"model_type": "llava", "text_config": {"num_attention_heads": 9}},
        "1 validation error for VllmConfig\n  Value error, Total number of attention heads (9) "
        "must be divisible by tensor parallel size (2). [type=value_error",
        id="heads-not-divisible"),
])
def test_vllm_tensor_parallel_refused_before_any_gpu(
        standin, nvml_state, tmp_path, visible, config, error):
    nvml_state.write_gpus(TP_GPUS[:2])
    seed_hf_model(tmp_path / ".cache" / "huggingface" / "hub", "org/tp",
                  {"config.json": json.dumps(config).encode(), "model.safetensors": b"\0" * 64})
    env = {"CUDA_VISIBLE_DEVICES": visible} if visible else {}
    proc, _port = vllm_start(standin, "org/tp", "--tensor-parallel-size", "2",
                             HF_HUB_OFFLINE="1", **env)
    err = vllm_fails(proc)
    assert "pydantic_core._pydantic_core.ValidationError: " + error in err
    assert "EngineCore failed to start" not in err and not os.listdir(nvml_state.procs_dir)
