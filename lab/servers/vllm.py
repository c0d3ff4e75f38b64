# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for vLLM's OpenAI-compatible server (not vLLM).

`vllm serve MODEL [--port 8000] [--host 0.0.0.0] [--gpu-memory-utilization 0.9]
[--served-model-name NAME] [--max-model-len N] [--tensor-parallel-size N]
[--kv-cache-memory BYTES]` (also `--model MODEL`, as
`python -m vllm.entrypoints.openai.api_server`).

Startup, like vLLM's worker (timings from GPUFLEET_STANDIN_VLLM_*_SECONDS):
1. startup delay (imports, engine args); then the model: a local directory, or a repository
   of the Hugging Face cache (HF_HOME, HF_HUB_CACHE), fetched from HF_ENDPOINT (token from
   HF_TOKEN or $HF_HOME/token) unless HF_HUB_OFFLINE, with huggingface_hub's and vLLM's error
   texts (offline and not cached, gated, unknown, unreachable): exit 1, no GPU touched;
   then the engine configuration: a --tensor-parallel-size over the visible GPUs ("World
   size (N) is larger than the number of available GPUs (M) in this node. ...") or not
   dividing the model's num_attention_heads ("Total number of attention heads (H) must be
   divisible by tensor parallel size (N).") dies the same way, as pydantic reports them;
2. device init: snapshot of free memory; refuses when free < utilization x total:
   "ValueError: Free memory on device (F/T GiB) on startup is less than desired GPU memory
   utilization (U, R GiB). ..."
3. weights: found in the model's directory or downloaded into --download-dir or the cache
   (no progress bars, as vLLM's), else "Cannot find any model weights with `MODEL`"; then
   held on the GPU (by one process per GPU, ``VLLM::Worker_TP<n>``, with tensor parallel);
4. profiling window: then asserts that free memory did not grow since the snapshot:
   "AssertionError: Error in memory profiling. Initial free memory X GiB, current free
   memory Y GiB. This happens when other processes sharing the same container release GPU
   memory while vLLM is profiling during initialization. ..." (seed 003);
5. holds utilization x total (or weights + --kv-cache-memory) and only then opens its port:
   /health (200), /v1/models, /v1/completions, /v1/chat/completions, /version, /metrics.

Sleep mode (lab/README.md, "Sleep mode and unloading"): with VLLM_SERVER_DEV_MODE=1 it also
serves POST /sleep?level=N, POST /wake_up[?tags=weights|kv_cache], GET /is_sleeping and
POST /collective_rpc (method reload_weights), as vLLM 0.10's development endpoints; only
with --enable-sleep-mode does a sleep free memory (level 1 keeps a host copy of the weights,
which on a unified-memory GPU is the same memory; level 2 discards them, and a wake then
needs reload_weights or it answers garbage); a completion while asleep kills the engine.
Unknown paths answer FastAPI's 404 {"detail": "Not Found"}.

Its kernel name (/proc/<pid>/comm, what NVML shows) is ``VLLM::EngineCore`` cut to 15
characters, ``VLLM::EngineCor``, prefix from VLLM_PROCESS_NAME_PREFIX, as real vLLM's engine
core (PRs 21445, 22205): a match on the name "vllm" finds it no more than the real one.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from http.client import HTTPConnection, HTTPSConnection, IncompleteRead

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import gpuview
import standin

COMPONENT = "api_server.py"
GIB = 1024.0
WEIGHTS_MIB = {
    "facebook/opt-125m": 240,
    "Qwen/Qwen2.5-0.5B-Instruct": 950,
    "Qwen/Qwen2.5-1.5B-Instruct": 2950,
    "Qwen/Qwen2.5-7B-Instruct": 14500,
    "meta-llama/Llama-3.2-3B-Instruct": 6130,
}


def weights_of(model):
    if model in WEIGHTS_MIB:
        return WEIGHTS_MIB[model]
    return int(standin.setting("GPUFLEET_STANDIN_VLLM_WEIGHTS_MIB", "1024"))


def parse(argv):
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="vllm serve", description="lab stand-in for vLLM")
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--model")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--kv-cache-memory", type=int)
    parser.add_argument("--download-dir")
    parser.add_argument("--revision")
    parser.add_argument("--enable-sleep-mode", action="store_true")
    args, unknown = parser.parse_known_args(argv)
    args.model = args.model_tag or args.model or "facebook/opt-125m"
    if not 0 < args.gpu_memory_utilization <= 1:
        parser.error(
            "--gpu-memory-utilization must be in (0, 1]; got: %s" % args.gpu_memory_utilization
        )
    return args, unknown


REG = None
VLLM = "/usr/local/lib/python3.12/dist-packages/vllm"
HF = "/usr/local/lib/python3.12/dist-packages/huggingface_hub"


def _traceback(chain):
    """Python's report of chained exceptions: each (type, message, frame) of the chain, the
    root cause first, as vLLM's process prints it when it dies."""
    out = []
    for i, (exc_type, message, frame) in enumerate(chain):
        if i:
            out.append("\nThe above exception was the direct cause of the following exception:\n\n")
        out.append("Traceback (most recent call last):\n")
        out.append('  File "%s", line 0, in %s (lab stand-in)\n' % frame)
        out.append("%s: %s\n" % (exc_type, message))
    return "".join(out)


def die(chain):
    """The API server process dies before any engine started (no GPU touched): exit 1."""
    sys.stderr.write(_traceback(chain))
    sys.stderr.flush()
    sys.exit(1)


def crash(exc_type, message, frame=None):
    """The engine core dies after it touched the GPU: its memory goes, the server exits 1."""
    if REG is not None:
        REG.release()  # the engine core exits: the driver tears its context down
    sys.stderr.write(
        "ERROR %s [core.py] EngineCore failed to start.\n" % time.strftime("%m-%d %H:%M:%S")
    )
    frame = frame or ("%s/v1/worker/gpu_worker.py" % VLLM, "determine_available_memory")
    sys.stderr.write(_traceback([(exc_type, message, frame)]))
    sys.stderr.write("RuntimeError: Engine core initialization failed. See root cause above.\n")
    sys.stderr.flush()
    sys.exit(1)


# --- the Hugging Face cache and hub, as huggingface_hub 0.34 uses them (constants.py,
# file_download.py, _snapshot_download.py, utils/_http.py) ---------------------------------
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")  # vLLM's load format "auto"
NOT_DOWNLOADED_EARLY = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack",
                        ".onnx", ".ckpt", ".pkl")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _is_true(value):
    return (value or "").upper() in ("1", "ON", "YES", "TRUE")


class Hub:
    """HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and the token (HF_TOKEN, else
    HUGGING_FACE_HUB_TOKEN, else the file HF_TOKEN_PATH, default $HF_HOME/token)."""

    def __init__(self):
        env = os.environ
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "huggingface")
        home = os.path.expandvars(os.path.expanduser(home))
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        self.cache = os.path.expandvars(os.path.expanduser(cache or os.path.join(home, "hub")))
        self.offline = _is_true(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE"))
        self.endpoint = (env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
        if not token:
            try:
                with open(env.get("HF_TOKEN_PATH") or os.path.join(home, "token"),
                          encoding="utf-8") as handle:
                    token = handle.read()
            except OSError:
                token = None
        self.token = (token or "").replace("\r", "").replace("\n", "").strip() or None

    @staticmethod
    def repo_dir(cache, repo):
        return os.path.join(cache, "models--" + repo.replace("/", "--"))

    def snapshot(self, cache, repo, revision):
        """The cached snapshot folder of a revision (a commit, or a ref naming one), or None."""
        folder = self.repo_dir(cache, repo)
        commit = revision
        if not COMMIT.match(revision):
            try:
                with open(os.path.join(folder, "refs", revision), encoding="utf-8") as handle:
                    commit = handle.read().strip()
            except OSError:
                return None
        path = os.path.join(folder, "snapshots", commit)
        return path if os.path.isdir(path) else None


class HubError(Exception):
    """An error of a hub call: its exception type (qualified name) and message."""

    def __init__(self, exc_type, message):
        super().__init__(message)
        self.exc_type = exc_type


def _connection_error(parts, exc):
    """requests' ConnectionError text (urllib3 2) with the request id huggingface_hub adds."""
    scheme = "HTTPS" if parts.scheme == "https" else "HTTP"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    obj = "<urllib3.connection.%sConnection object at 0x7f3a9c2b1d50>" % scheme
    if isinstance(exc, socket.gaierror):
        cause = 'NameResolutionError("%s: Failed to resolve \'%s\' ([Errno %d] %s)")' % (
            obj, parts.hostname, exc.errno, exc.strerror)
    else:
        cause = "NewConnectionError(%r)" % (
            "%s: Failed to establish a new connection: [Errno %s] %s"
            % (obj, exc.errno, exc.strerror or exc))
    path = urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
    text = "%sConnectionPool(host='%s', port=%d): Max retries exceeded with url: %s " \
           "(Caused by %s)" % (scheme, parts.hostname, port, path, cause)
    return "(MaxRetryError(%r), '(Request ID: %s)')" % (text, uuid.uuid4())


def hub_request(hub, method, url, headers=None, body=True, sink=None):
    """One request to the hub (no redirect followed); returns (status, headers, data). With
    a sink, a 2xx body is written to it as it comes (data is then b"")."""
    parts = urllib.parse.urlsplit(url)
    conn_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    conn = conn_class(parts.hostname, parts.port, timeout=10)
    sent = {"user-agent": "unknown/None; hf_hub/0.34.4; python/3.12.3", **(headers or {})}
    if hub.token:
        sent["authorization"] = "Bearer %s" % hub.token
    try:
        try:
            conn.request(method, urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")),
                         headers=sent)
            resp = conn.getresponse()
        except OSError as exc:
            raise HubError("requests.exceptions.ConnectionError",
                           _connection_error(parts, exc)) from None
        data, got = b"", 0
        try:
            if sink is not None and resp.status < 400:
                while chunk := resp.read(1 << 16):
                    sink.write(chunk)
                    got += len(chunk)
            elif body:
                data = resp.read()
        except (OSError, IncompleteRead) as exc:
            expected = int(resp.getheader("Content-Length") or 0)
            if isinstance(exc, IncompleteRead):
                got += len(exc.partial)
                if sink is not None:
                    sink.write(exc.partial)
            raise HubError("requests.exceptions.ChunkedEncodingError",
                           "(\"Connection broken: IncompleteRead(%d bytes read, %d more "
                           "expected)\", IncompleteRead(%d bytes read, %d more expected))"
                           % (got, expected - got, got, expected - got)) from None
    finally:
        conn.close()
    if resp.status >= 400:
        raise hub_error(url, resp.status, resp.reason, resp.headers, data)
    return resp.status, resp.headers, data


def hub_error(url, status, reason, headers, data):
    """hf_raise_for_status: the error class from X-Error-Code, the server's message after."""
    code, message = headers.get("X-Error-Code"), headers.get("X-Error-Message")
    kind = "huggingface_hub.errors.HfHubHTTPError"
    head = "%d %s Error: %s for url: %s" % (
        status, "Client" if status < 500 else "Server", reason, url)
    if code == "RevisionNotFound":
        kind = "huggingface_hub.errors.RevisionNotFoundError"
        head = "%d Client Error.\n\nRevision Not Found for url: %s." % (status, url)
    elif code == "EntryNotFound":
        kind = "huggingface_hub.errors.RemoteEntryNotFoundError"
        head = "%d Client Error.\n\nEntry Not Found for url: %s." % (status, url)
    elif code == "GatedRepo":
        kind = "huggingface_hub.errors.GatedRepoError"
        head = "%d Client Error.\n\nCannot access gated repo for url %s." % (status, url)
    elif code == "RepoNotFound" or (
            status == 401 and message != "Invalid credentials in Authorization header"
            and re.match(r"^https://[^/]+(/api/(models|datasets|spaces)/(.+)|/(.+)/resolve/(.+))",
                         url)):
        kind = "huggingface_hub.errors.RepositoryNotFoundError"
        head = ("%d Client Error.\n\nRepository Not Found for url: %s.\nPlease make sure you "
                "specified the correct `repo_id` and `repo_type`.\nIf you are trying to access a "
                "private or gated repo, make sure you are authenticated. For more details, see "
                "https://huggingface.co/docs/huggingface_hub/authentication" % (status, url))
    elif status == 403:
        head = ("\n\n403 Forbidden: %s.\nCannot access content at: %s.\nMake sure your token "
                "has the correct permissions." % (message, url))
    server = [message] if message else []
    try:
        error = json.loads(data or b"{}").get("error")
        server += error if isinstance(error, list) else [error] if error else []
    except (ValueError, AttributeError):
        pass
    server = "\n".join(dict.fromkeys(str(s).strip() for s in server if str(s).strip()))
    text = head
    if server and server.lower() not in head.lower():
        text += ("\n" if "\n\n" in head else "\n\n") + server
    request_id = headers.get("x-request-id")
    if request_id:
        first, newline, rest = text.partition("\n")
        text = first + " (Request ID: %s)" % request_id + newline + rest
    return HubError(kind, text.strip())


def repo_info(hub, repo, revision):
    """GET /api/models/{repo}/revision/{revision}: the commit and the files of a revision."""
    url = "%s/api/models/%s/revision/%s" % (
        hub.endpoint, repo, urllib.parse.quote(revision, safe=""))
    _status, _headers, data = hub_request(hub, "GET", url)
    return json.loads(data)


def download(hub, repo, commit, filename, cache, progress=False):
    """hf_hub_download into the cache layout: blobs/<etag> (written as <etag>.incomplete
    first, resumed with a Range), snapshots/<commit>/<file> -> ../../blobs/<etag>."""
    folder = Hub.repo_dir(cache, repo)
    pointer = os.path.join(folder, "snapshots", commit, filename)
    if os.path.exists(pointer):
        return pointer
    url = "%s/%s/resolve/%s/%s" % (hub.endpoint, repo, commit, urllib.parse.quote(filename))
    _status, headers, _data = hub_request(
        hub, "HEAD", url, {"Accept-Encoding": "identity"}, body=False)
    location = headers.get("Location")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/")
    etag = etag.strip('"')
    size = int(headers.get("X-Linked-Size") or headers.get("Content-Length") or 0)
    blob = os.path.join(folder, "blobs", etag)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    if not os.path.exists(blob):
        incomplete = blob + ".incomplete"
        have = os.path.getsize(incomplete) if os.path.exists(incomplete) else 0
        started = time.time()
        target = urllib.parse.urljoin(url, location) if location else url
        wanted = {"Accept-Encoding": "identity"}
        if have:
            wanted["Range"] = "bytes=%d-" % have
        with open(incomplete, "ab") as handle:  # left behind by a cut: the next one resumes
            hub_request(hub, "GET", target, wanted, sink=handle)
        got = os.path.getsize(incomplete)
        if got != size:
            shown = filename if len(filename) <= 40 else "(…)" + filename[-40:]
            raise HubError("OSError", "Consistency check failed: file should be of size %d but "
                           "has size %d (%s).\nThis is usually due to network issues while "
                           "downloading the file. Please retry with `force_download=True`."
                           % (size, got, shown))
        os.rename(incomplete, blob)
        if progress:  # tqdm's line, as transformers' downloads show it
            took = max(time.time() - started, 1e-3)
            sys.stderr.write("%s: 100%%|%s| %s/%s [00:00<00:00, %sB/s]\n" % (
                filename, "\u2588" * 10, _si(size), _si(size), _si(got / took)))
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
    return pointer


def _si(size):
    """tqdm's format_sizeof: 660, 1.21k, 3.45M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if size >= scale * 0.9995:
            return "%.2f%s" % (size / scale, unit)
    return "%d" % size


def _write_ref(cache, repo, revision, commit):
    if revision != commit:
        path = os.path.join(Hub.repo_dir(cache, repo), "refs", revision)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(commit)


INVALID_REPO = (
    "Invalid repository ID or local directory specified: '{model}'.\nPlease verify the "
    "following requirements:\n1. Provide a valid Hugging Face repository ID.\n2. Specify a "
    "local directory that contains a recognized configuration file.\n   - For Hugging Face "
    "models: ensure the presence of a 'config.json'.\n   - For Mistral models: ensure the "
    "presence of a 'params.json'.\n3. For GGUF: pass the local path of the GGUF checkpoint.\n"
    "   Loading GGUF from a remote repo directly is not yet supported.\n")
NO_CONFIG = ("Could not detect config format for no config file found. Ensure your model has "
             "either config.json (HF format) or params.json (Mistral format).")
CONFIG_FRAME = ("%s/transformers_utils/config.py" % VLLM, "get_config")


class Source:
    """Where the model comes from: a local directory (given, or the cached snapshot with
    HF_HUB_OFFLINE), or a hub repository (its info: commit, files)."""

    def __init__(self, model, local=None, info=None, revision="main"):
        self.model, self.local, self.info, self.revision = model, local, info, revision


def resolve(args, hub):
    """What vLLM does with MODEL before it starts an engine (no GPU touched; dies on error):
    EngineArgs.__post_init__ with HF_HUB_OFFLINE (vllm/engine/arg_utils.py: get_model_path,
    snapshot_download(local_files_only=True)), then get_config (config.json, over the hub
    when online: vllm/transformers_utils/config.py) and the tokenizer files."""
    model, revision = args.model, args.revision or "main"
    if not os.path.isdir(model) and hub.offline:
        path = hub.snapshot(hub.cache, model, revision)
        if path is None:
            die([("huggingface_hub.errors.LocalEntryNotFoundError",
                  "Cannot find an appropriate cached snapshot folder for the specified revision "
                  "on the local disk and outgoing traffic has been disabled. To enable repo "
                  "look-ups and downloads online, pass 'local_files_only=False' as input.",
                  ("%s/_snapshot_download.py" % HF, "snapshot_download"))])
        standin.log("arg_utils.py", "HF_HUB_OFFLINE is True, replace model_id [%s] to "
                    "model_path [%s]" % (model, path))
        model = path
    if os.path.isdir(model):
        if not any(os.path.isfile(os.path.join(model, f)) for f in ("config.json", "params.json")):
            die([("ValueError", NO_CONFIG, CONFIG_FRAME),
                 ("ValueError", INVALID_REPO.format(model=model), CONFIG_FRAME)])
        return Source(model, local=model, revision=revision)
    cached = hub.snapshot(hub.cache, model, revision)
    if cached and os.path.isfile(os.path.join(cached, "config.json")):
        # try_to_load_from_cache finds it; transformers falls back to the cached files when
        # the hub cannot be asked whether they changed
        return Source(model, revision=revision)
    info = error = None
    for attempt in (1, 2):  # vLLM's with_retry around the file listing: 2 tries, 2 s apart
        try:
            info = repo_info(hub, model, revision)
            break
        except HubError as exc:
            error = exc
            if attempt == 1:
                standin.log("config.py", "Error retrieving file list: %s, retrying 1 of 2" % exc)
                time.sleep(float(standin.setting("GPUFLEET_STANDIN_VLLM_RETRY_SECONDS", "2")))
            else:
                standin.log("config.py", "Error retrieving file list: %s" % exc)
    if info is None:
        die([(error.exc_type, str(error), ("%s/utils/_http.py" % HF, "hf_raise_for_status")),
             ("ValueError", INVALID_REPO.format(model=model), CONFIG_FRAME)])
    files = [s["rfilename"] for s in info.get("siblings") or []]
    if "config.json" not in files and "params.json" not in files:
        die([("ValueError", NO_CONFIG, CONFIG_FRAME),
             ("ValueError", INVALID_REPO.format(model=model), CONFIG_FRAME)])
    commit = info["sha"]
    for name in files:  # config, tokenizer, generation config: transformers fetches them
        if name.endswith(NOT_DOWNLOADED_EARLY):
            continue
        try:
            download(hub, model, commit, name, hub.cache, progress=True)
        except HubError as exc:
            die([(exc.exc_type, str(exc), ("%s/file_download.py" % HF, "hf_hub_download")),
                 ("OSError", _transformers_error(model, exc),
                  ("/usr/local/lib/python3.12/dist-packages/transformers/utils/hub.py",
                   "cached_files"))])
    _write_ref(hub.cache, model, revision, commit)
    return Source(model, info=info, revision=revision)


def _transformers_error(repo, exc):
    """transformers/utils/hub.py cached_files: how it rewords a hub error."""
    if exc.exc_type.endswith("GatedRepoError"):
        return ("You are trying to access a gated repo.\nMake sure to have access to it at "
                "https://huggingface.co/%s.\n%s" % (repo, exc))
    if exc.exc_type.endswith("RepositoryNotFoundError"):
        return ("%s is not a local folder and is not a valid model identifier listed on "
                "'https://huggingface.co/models'\nIf this is a private repository, make sure to "
                "pass a token having permission to this repo either by logging in with "
                "`huggingface-cli login` or by passing `token=<your_token>`" % repo)
    if exc.exc_type.endswith("ConnectionError"):
        return ("We couldn't connect to 'https://huggingface.co' to load the files, and "
                "couldn't find them in the cached files.\nCheck your internet connection or see "
                "how to run the library in offline mode at "
                "'https://huggingface.co/docs/transformers/installation#offline-mode'.")
    return "There was a specific connection error when trying to load %s:\n%s" % (repo, exc)


def fetch_weights(args, hub, source):
    """The engine core's weights step (model_executor/model_loader/default_loader.py
    _prepare_weights, weight_utils.download_weights_from_hf): a local directory must hold
    weights; a repository's are downloaded (snapshot_download) into --download-dir or the hub
    cache, without progress bars (DisabledTqdm), with a line when that took over 0.5 s; a hub
    that cannot be reached leaves the cached snapshot, if any. Crashes on error."""
    loader = ("%s/model_executor/model_loader/default_loader.py" % VLLM, "_prepare_weights")
    folder = source.local
    if not folder:
        cache = args.download_dir or hub.cache
        patterns, info = list(WEIGHT_PATTERNS), None
        try:  # HfFileSystem().ls: which format the repository has
            info = repo_info(hub, source.model, source.revision)
            files = [s["rfilename"] for s in info.get("siblings") or []]
            patterns = [next((p for p in patterns if fnmatch.filter(files, p)), patterns[0])]
        except HubError as exc:
            standin.log("weight_utils.py", "Failed to get file list for '%s'. Trying each "
                        "pattern in allow_patterns individually until weights have been "
                        "downloaded. Error: %s" % (source.model, exc))
        standin.log("weight_utils.py", "Using model weights format %s" % patterns)
        started = time.time()
        for pattern in patterns:
            folder = snapshot_download(hub, source, cache, pattern, info)
            if glob.glob(os.path.join(folder, pattern)):
                break
        took = time.time() - started
        if took > 0.5:
            standin.log("weight_utils.py", "Time spent downloading weights for %s: %.6f "
                        "seconds" % (source.model, took))
    if not any(glob.glob(os.path.join(folder, p)) for p in WEIGHT_PATTERNS):
        crash("RuntimeError", "Cannot find any model weights with `%s`" % source.model, loader)


def snapshot_download(hub, source, cache, pattern, info):
    """huggingface_hub's snapshot_download of the files matching pattern: the folder of the
    revision's snapshot; without the hub, the cached one; else the error (crash)."""
    frame = ("%s/_snapshot_download.py" % HF, "snapshot_download")
    error = None
    if info is None:
        try:
            info = repo_info(hub, source.model, source.revision)
        except HubError as exc:
            error = exc
    if info is None:
        folder = hub.snapshot(cache, source.model, source.revision)
        if folder:
            return folder
        if error.exc_type.endswith(("RepositoryNotFoundError", "GatedRepoError",
                                    "RevisionNotFoundError")) or str(error).startswith("401"):
            crash(error.exc_type, str(error), frame)
        crash("huggingface_hub.errors.LocalEntryNotFoundError",
              "An error happened while trying to locate the files on the Hub and we cannot find "
              "the appropriate snapshot folder for the specified revision on the local disk. "
              "Please check your internet connection and try again.", frame)
    files = fnmatch.filter([s["rfilename"] for s in info.get("siblings") or []], pattern)
    for name in files:
        try:
            download(hub, source.model, info["sha"], name, cache)
        except HubError as exc:
            crash(exc.exc_type, str(exc), ("%s/file_download.py" % HF, "hf_hub_download"))
    _write_ref(cache, source.model, source.revision, info["sha"])
    return os.path.join(Hub.repo_dir(cache, source.model), "snapshots", info["sha"])


PYDANTIC = "/usr/local/lib/python3.12/dist-packages/pydantic/_internal/_dataclasses.py"
WORLD_SIZE = (
    "World size ({world}) is larger than the number of available GPUs ({gpus}) in this node. "
    "If this is intentional and you are using:\n- ray, set '--distributed-executor-backend "
    "ray'.\n- multiprocessing, set '--nnodes' appropriately.")
HEADS = ("Total number of attention heads ({heads}) must be divisible by tensor parallel size "
         "({tp}).")


def _validation_error(config_class, message, fields):
    """pydantic's report of a ValueError raised in a config dataclass's __post_init__ (vLLM's
    configs are pydantic dataclasses): one 'Value error' line item."""
    shown = ", ".join("%r: %s" % item for item in fields)
    return ("1 validation error for %s\n  Value error, %s [type=value_error, "
            "input_value=ArgsKwargs((), {%s, ...}), input_type=ArgsKwargs]\n    For further "
            "information visit https://errors.pydantic.dev/2.11/v/value_error"
            % (config_class, message, shown))


def model_config(hub, source):
    """The model's config.json (resolve() found or fetched it), {} when it cannot be read."""
    folder = source.local or hub.snapshot(hub.cache, source.model, source.revision)
    try:
        with open(os.path.join(folder or "", "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def check_parallel(args, hub, source, visible):
    """EngineArgs.create_engine_config, before any engine starts (dies, no GPU touched):
    ParallelConfig.__post_init__ refuses a world size (here the tensor parallel size) over
    the GPUs the process sees (vllm/config/parallel.py, PR 30140); VllmConfig.__post_init__
    then wants the model's attention heads (its text config's num_attention_heads, 0 when
    unset) divisible by it (ModelConfig.verify_with_parallel_config, vllm/config/model.py).
    Fewer than visible is fine: the ranks take the first GPUs."""
    tp = args.tensor_parallel_size
    if tp > 1 and visible < tp:
        die([("pydantic_core._pydantic_core.ValidationError", _validation_error(
            "ParallelConfig", WORLD_SIZE.format(world=tp, gpus=visible),
            [("pipeline_parallel_size", "1"), ("tensor_parallel_size", str(tp))]),
            (PYDANTIC, "__init__"))])
    config = model_config(hub, source)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    heads = text.get("num_attention_heads") or 0
    if isinstance(heads, int) and heads % tp:
        die([("pydantic_core._pydantic_core.ValidationError", _validation_error(
            "VllmConfig", HEADS.format(heads=heads, tp=tp),
            [("model_config", "ModelConfig(model=%r, ...)" % args.model)]),
            (PYDANTIC, "__init__"))])


class Workers:
    """Tensor parallel: one process per GPU, titled <prefix>::Worker_TP<n> (kernel comm
    "VLLM::Worker_TP"), holds that GPU's memory (vLLM PR 22205); the engine core holds none.
    The workers only wait: this process registers their memory under their pids, and they
    exit when it does (their stdin closes)."""

    def __init__(self, gpus):
        self.regs = {}
        prefix = os.environ.get("VLLM_PROCESS_NAME_PREFIX") or "VLLM"
        self.procs = []
        for rank, gpu in enumerate(gpus):
            proc = subprocess.Popen(
                [sys.executable, os.path.realpath(__file__), "--worker",
                 "%s::Worker_TP%d" % (prefix, rank)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            proc.stdout.readline()  # titled
            self.procs.append(proc)
            self.regs[gpu["index"]] = gpuview.Registration(pid=proc.pid)

    def set(self, index, mib):
        self.regs[index].set(index, mib)

    def release(self):
        for reg in self.regs.values():
            reg.release()
        for proc in self.procs:
            proc.stdin.close()


def worker(title):
    standin.set_process_name(title)
    standin.hold_until_stdin_closes()
    return 0


# --- sleep mode (vLLM 0.10: vllm/entrypoints/openai/api_server.py development endpoints,
# vllm/v1/executor/abstract.py sleep / wake_up, vllm/v1/worker/gpu_worker.py, the cumem
# allocator's pools "weights" and "kv_cache"; docs/features/sleep_mode.md) -----------------
TAGS = ("weights", "kv_cache")


def dev_mode():
    """vllm.envs: VLLM_SERVER_DEV_MODE is bool(int(value)); a value int() refuses kills the
    server as vLLM's import of it does."""
    value = os.environ.get("VLLM_SERVER_DEV_MODE", "0")
    try:
        return bool(int(value))
    except ValueError:
        die([("ValueError", "invalid literal for int() with base 10: %r" % value,
              ("%s/envs.py" % VLLM, "<lambda>"))])
    return False


class Sleeper:
    """What the engine holds while it sleeps, and how long a sleep or a wake takes.

    Per GPU: ``held`` is everything (weights + KV cache + the rest); the rest
    (GPUFLEET_STANDIN_VLLM_SLEEP_KEEP_MIB: CUDA context, CUDA graphs, activations, outside
    the sleep allocator's pools) stays while asleep. With --enable-sleep-mode the weights and
    the KV cache live in the allocator's pools: level 1 copies the weights to pinned host
    memory (on a unified-memory GPU that copy is the same memory, so it still counts) and
    drops the KV cache; any other level drops both (gpu_worker.py offloads only at level 1).
    Without the flag the pools are empty: the sleep is answered and is_sleeping turns true,
    but nothing is freed and the engine keeps serving."""

    def __init__(self, reg, gpus, held, weights, enabled):
        self.lock = threading.Lock()
        self.reg, self.held, self.weights, self.enabled = reg, held, weights, enabled
        self.unified = {g["index"]: bool(g.get("unified")) for g in gpus}
        self.asleep = set()  # sleeping tags
        self.level = None
        self.weights_lost = False  # woken after level 2 without reload_weights
        self.workers = len(held)

    @staticmethod
    def _rate(name, default):
        return max(1.0, float(standin.setting(name, default)))

    def _copy_s(self):
        """Seconds to move the weights between GPU and host memory (both ways alike)."""
        return self.weights / self._rate("GPUFLEET_STANDIN_VLLM_OFFLOAD_MIB_PER_S", "10240")

    def mib(self, index):
        """What GPU ``index`` holds now."""
        total = self.held[index]
        if not self.enabled or not self.asleep:
            return total
        keep = min(int(standin.setting("GPUFLEET_STANDIN_VLLM_SLEEP_KEEP_MIB", "512")),
                   max(0, total - self.weights))
        kv_pool = max(0, total - self.weights - keep)
        mib = keep
        mib += self.weights if "weights" not in self.asleep else 0
        mib += kv_pool if "kv_cache" not in self.asleep else 0
        if "weights" in self.asleep and self.level == 1 and self.unified.get(index):
            mib += self.weights  # the host copy: the same memory on a unified GPU
        return mib

    def _apply(self):
        for index in self.held:
            self.reg.set(index, self.mib(index))

    def sleep(self, level):
        with self.lock:
            if self.asleep:
                standin.log("abstract.py", "Executor is already sleeping.")
                return
            started = time.time()
            before = sum(self.mib(i) for i in self.held)
            wait = float(standin.setting("GPUFLEET_STANDIN_VLLM_SLEEP_SECONDS", "0.05"))
            if self.enabled and level == 1:
                wait += self._copy_s()
            time.sleep(wait)
            self.asleep, self.level = set(TAGS), level
            self._apply()
            after = sum(self.mib(i) for i in self.held)
            standin.log("gpu_worker.py", "Sleep mode freed %.2f GiB memory, %.2f GiB memory is "
                        "still in use." % ((before - after) / GIB, after / GIB))
            standin.log("abstract.py", "It took %.6f seconds to fall asleep."
                        % (time.time() - started))

    def wake_up(self, tags):
        with self.lock:
            if not self.asleep:
                standin.log("abstract.py", "Executor is not sleeping.")
                return
            for tag in tags or ():
                if tag not in self.asleep:
                    standin.log("abstract.py", "Tag %s is not in sleeping tags %s"
                                % (tag, sorted(self.asleep)))
                    return
            waking = set(tags or self.asleep)
            started = time.time()
            wait = float(standin.setting("GPUFLEET_STANDIN_VLLM_SLEEP_SECONDS", "0.05"))
            if self.enabled and "weights" in waking and self.level == 1:
                wait += self._copy_s()
            time.sleep(wait)
            if self.enabled and "weights" in waking and self.level != 1:
                self.weights_lost = True  # memory mapped again, its content is gone
            self.asleep -= waking
            self._apply()
            if not self.asleep:
                self.level = None
            standin.log("abstract.py", "It took %.6f seconds to wake up tags %s."
                        % (time.time() - started, sorted(waking)))

    def reload_weights(self):
        """Worker.reload_weights: the weights read again from disk into their memory."""
        with self.lock:
            if self.enabled and "weights" in self.asleep:
                return False  # their memory is unmapped: the worker faults
            time.sleep(self.weights / self._rate("GPUFLEET_STANDIN_VLLM_RELOAD_MIB_PER_S",
                                                 "4096"))
            self.weights_lost = False
            standin.log("gpu_model_runner.py", "Reloading weights inplace...")
            return True

    def faults(self):
        """A forward pass now touches unmapped memory (weights or KV cache asleep)."""
        return self.enabled and bool(self.asleep)


def engine_dead(handler):
    """A forward pass on unmapped memory: CUDA's illegal memory access kills the engine core
    (its memory goes with it); the request answers 500 with no body (the server's
    EngineDeadError handler) and the server shuts down (vllm#15483, #45520)."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    sys.stderr.write("ERROR %s [core.py] EngineCore encountered a fatal error.\n" % stamp)
    sys.stderr.write(_traceback([("RuntimeError", "CUDA error: an illegal memory access was "
                                  "encountered", ("%s/v1/worker/gpu_model_runner.py" % VLLM,
                                                  "execute_model"))]))
    sys.stderr.write("ERROR %s [async_llm.py] AsyncLLM output_handler failed.\n"
                     "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an "
                     "issue. See stack trace (above) for the root cause.\n" % stamp)
    sys.stderr.write("ERROR %s [launcher.py] Engine is dead, terminating server process\n"
                     % stamp)
    sys.stderr.flush()
    if REG is not None:
        REG.release()
    handler.send_json(500, b"", "text/plain; charset=utf-8")
    handler.wfile.flush()
    os._exit(1)


class Handler(standin.JSONHandler):
    component = COMPONENT
    args = None
    sleeper = None

    def _dispatch(self, method):
        """FastAPI's answers for a path it does not serve (404) or a method it does not
        serve there (405), as JSON; the rest as the shared handler does."""
        path = self.path.split("?", 1)[0]
        if (method, path) in self.routes or (method == "HEAD" and ("GET", path) in self.routes):
            super()._dispatch(method)
        elif any(known == path for _method, known in self.routes):
            self.send_json(405, {"detail": "Method Not Allowed"})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def _query(self, name):
        return urllib.parse.parse_qs(self.path.partition("?")[2]).get(name, [])

    def sleep(self, _body):
        level = (self._query("level") or ["1"])[0]
        try:
            level = int(level)
        except ValueError:
            self.send_text(500, "Internal Server Error")
            return
        self.sleeper.sleep(level)
        self.send_json(200, b"", "text/plain; charset=utf-8")

    def wake_up(self, _body):
        tags = self._query("tags") or None
        standin.log(COMPONENT, "wake up the engine with tags: %s" % tags)
        self.sleeper.wake_up(tags)
        self.send_json(200, b"", "text/plain; charset=utf-8")

    def is_sleeping(self, _body):
        self.send_json(200, {"is_sleeping": bool(self.sleeper.asleep)})

    def collective_rpc(self, body):
        method = body.get("method") if isinstance(body, dict) else None
        if method is None:
            self.send_json(400, {"detail": "Missing 'method' in request body"})
            return
        if method != "reload_weights":  # the workers have no such method: the call fails
            self.send_text(500, "Internal Server Error")
            return
        if not self.sleeper.reload_weights():
            engine_dead(self)
        self.send_json(200, {"results": [None] * self.sleeper.workers})

    def health(self, _body):
        self.send_json(200, b"", "application/json")

    def version(self, _body):
        self.send_json(200, {"version": standin.setting("GPUFLEET_STANDIN_VLLM_VERSION")})

    def models(self, _body):
        a = self.args
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": a.model,
                        "parent": None,
                        "max_model_len": a.max_model_len,
                    }
                    for name in a.names
                ],
            },
        )

    def _check(self, body):
        if body.get("model") not in self.args.names:
            self.send_json(
                404,
                {
                    "object": "error",
                    "type": "NotFoundError",
                    "code": 404,
                    "message": "The model `%s` does not exist." % body.get("model"),
                },
            )
            return False
        return True

    def _text(self, text):
        """What the model says: its memory unmapped kills the engine (None); weights
        discarded at level 2 and not reloaded produce garbage."""
        if self.sleeper is not None and self.sleeper.faults():
            engine_dead(self)
        if self.sleeper is not None and self.sleeper.weights_lost:
            return "!!!!!!!!"
        return text

    def completions(self, body):
        if self._check(body):
            text = self._text(" stand-in completion by %s" % body["model"])
            self.send_json(
                200,
                {
                    "id": "cmpl-standin",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
                },
            )

    def chat(self, body):
        if self._check(body):
            text = self._text("stand-in chat reply by %s" % body["model"])
            self.send_json(
                200,
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
                },
            )

    def metrics(self, _body):
        self.send_text(
            200, '# stand-in\nvllm:num_requests_running{model_name="%s"} 0\n' % self.args.names[0]
        )

    def info(self, _body):
        self.send_json(
            200,
            {
                "standin": "vllm",
                "gpus": standin.gpu_summary(self.gpus),
                "pid": os.getpid(),
                "held_mib": self.held,
                "sleep": None if self.sleeper is None else {
                    "enabled": self.sleeper.enabled,
                    "asleep": sorted(self.sleeper.asleep),
                    "level": self.sleeper.level,
                    "gpu_mib": {i: self.sleeper.mib(i) for i in self.held},
                },
            },
        )


Handler.routes = {
    ("GET", "/health"): Handler.health,
    ("GET", "/ping"): Handler.health,
    ("GET", "/version"): Handler.version,
    ("GET", "/v1/models"): Handler.models,
    ("POST", "/v1/completions"): Handler.completions,
    ("POST", "/v1/chat/completions"): Handler.chat,
    ("GET", "/metrics"): Handler.metrics,
    ("GET", "/standin"): Handler.info,
}
# Served only with VLLM_SERVER_DEV_MODE=1 (vLLM 0.10's api_server.py), sleep mode or not.
DEV_ROUTES = {
    ("POST", "/sleep"): Handler.sleep,
    ("POST", "/wake_up"): Handler.wake_up,
    ("GET", "/is_sleeping"): Handler.is_sleeping,
    ("POST", "/collective_rpc"): Handler.collective_rpc,
}


def process_title():
    """What real vLLM calls this process (vllm.utils.system_utils.set_process_title, PRs
    21445 and 22205): ``<VLLM_PROCESS_NAME_PREFIX>::EngineCore``, prefix ``VLLM`` by default.
    The stand-in is one process (real vLLM: ``VLLM::APIServer`` plus the ``VLLM::EngineCore``
    that holds the GPU memory), so it takes the engine core's name."""
    return "%s::EngineCore" % (os.environ.get("VLLM_PROCESS_NAME_PREFIX") or "VLLM")


def main():
    if sys.argv[1:2] == ["--worker"]:
        return worker(sys.argv[2])
    args, unknown = parse(sys.argv[1:])
    args.names = args.served_model_name or [args.model]
    dev = dev_mode()
    # The kernel keeps 15 characters: NVML and nvidia-smi show "VLLM::EngineCor".
    standin.set_process_name(process_title())
    standin.log(
        COMPONENT,
        "vLLM API server version %s (lab stand-in)"
        % standin.setting("GPUFLEET_STANDIN_VLLM_VERSION"),
    )
    standin.log(
        COMPONENT,
        "args",
        model=args.model,
        port=args.port,
        gpu_memory_utilization=args.gpu_memory_utilization,
        ignored=" ".join(unknown),
    )
    time.sleep(standin.seconds("GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS"))
    # 1. the model's config and tokenizer: local, cached, or from the hub (dies on error)
    hub = Hub()
    source = resolve(args, hub)

    # the engine's configuration, still in this process (no GPU touched): the world size
    # against the visible GPUs, then the model's attention heads against it
    visible = gpuview.visible_gpus()
    check_parallel(args, hub, source, len(visible))
    # ranks 0..N-1 take the first N visible GPUs (local rank = device ordinal)
    gpus = visible[: args.tensor_parallel_size]
    if not gpus:
        crash("RuntimeError", "No CUDA GPUs are available")
    # 2. device init: the snapshot every later check compares with.
    init = {g["index"]: g for g in gpus}
    requested = {i: g["total_mib"] * args.gpu_memory_utilization for i, g in init.items()}
    for index, gpu in init.items():
        if gpu["free_mib"] < requested[index]:
            crash(
                "ValueError",
                "Free memory on device (%.2f/%.2f GiB) on startup is less than desired GPU memory "
                "utilization (%s, %.2f GiB). Decrease GPU memory utilization or reduce GPU memory "
                "used by other processes."
                % (
                    gpu["free_mib"] / GIB,
                    gpu["total_mib"] / GIB,
                    args.gpu_memory_utilization,
                    requested[index] / GIB,
                ),
            )
    global REG  # noqa: PLW0603 - crash() frees it
    reg = REG = gpuview.Registration() if len(gpus) == 1 else Workers(gpus)
    # 3. weights: found (or downloaded) first, then held
    fetch_weights(args, hub, source)
    weights = weights_of(args.model) // len(gpus)
    for index in init:
        reg.set(index, weights)
    standin.log("gpu_model_runner.py", "Model loading took %.2f GiB" % (weights / GIB))
    time.sleep(standin.seconds("GPUFLEET_STANDIN_VLLM_LOAD_SECONDS"))
    # 4. profiling window
    standin.log("gpu_worker.py", "Memory profiling started")
    time.sleep(standin.seconds("GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS"))
    now = {g["index"]: g for g in gpuview.visible_gpus(gpuview.View())}
    for index, gpu in init.items():
        current = now[index]["free_mib"] if index in now else gpu["free_mib"]
        if not gpu["free_mib"] > current:
            crash(
                "AssertionError",
                "Error in memory profiling. Initial free memory %s GiB, current free memory %s GiB. "  # noqa: E501
                "This happens when other processes sharing the same container release GPU memory while "  # noqa: E501
                "vLLM is profiling during initialization. To fix this, ensure consistent GPU memory "  # noqa: E501
                "allocation or isolate vLLM in its own container."
                % (round(gpu["free_mib"] / GIB, 2), round(current / GIB, 2)),
            )
    # 5. KV cache: the rest of the budget
    held = {}
    for index in init:
        if args.kv_cache_memory:
            held[index] = weights + args.kv_cache_memory // (1024 * 1024)
        else:
            held[index] = int(requested[index])
        reg.set(index, held[index])
    standin.log(
        "gpu_worker.py",
        "Available KV cache memory: %.2f GiB" % ((max(held.values()) - weights) / GIB),
    )
    Handler.args, Handler.gpus, Handler.held = args, gpus, held
    if dev:
        standin.log(COMPONENT, "SECURITY WARNING: Development endpoints are enabled! This "
                    "should NOT be used in production!")
        Handler.routes = {**Handler.routes, **DEV_ROUTES}
    Handler.sleeper = Sleeper(reg, gpus, held, weights, args.enable_sleep_mode)
    standin.log("launcher.py", "Starting vLLM API server on http://%s:%d" % (args.host, args.port))
    standin.log("on.py", "Application startup complete.")
    try:
        standin.serve(Handler, args.host, args.port, on_stop=reg.release)
    except Exception:
        traceback.print_exc()
        reg.release()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
