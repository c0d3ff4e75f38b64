# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for Ollama (not Ollama): `ollama serve` with the behaviour the collection needs.

* OLLAMA_HOST (default 127.0.0.1:11434), OLLAMA_MODELS, OLLAMA_KEEP_ALIVE (5m; -1 never),
  OLLAMA_MAX_LOADED_MODELS, OLLAMA_SCHED_SPREAD, OLLAMA_GPU_OVERHEAD (bytes), OLLAMA_NOPRUNE;
* GET / ("Ollama is running"), /api/version, /api/tags, /api/ps (size, size_vram,
  expires_at), POST /api/generate, /api/chat, /api/pull, /api/copy, /api/show,
  DELETE /api/delete, /v1/models, /v1/chat/completions;
* the models are what is on disk, in Ollama's layout under OLLAMA_MODELS (default
  ~/.ollama/models): manifests/<host>/<namespace>/<model>/<tag> and blobs/sha256-<hex>. It
  starts with none; /api/pull fetches one from its registry (https, http with "insecure")
  the way Ollama 0.12.5 does (server/images.go PullModel, server/download.go): the same
  stream lines, the same error texts, partial files that a later pull resumes;
* a model loads on its first request (or a request without prompt: preload), taking
  GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS; each loaded model is a runner subprocess that holds
  its VRAM (the size of the model in CATALOGUE, not of its blobs, which are small filler in
  the lab) on the GPUs this server sees (CUDA_VISIBLE_DEVICES, the container's GPUs) and
  registers it with the simulated driver; keep_alive expiry or keep_alive 0 stops the runner
  (keep_alive 0 is answered first, the runner stops GPUFLEET_STANDIN_OLLAMA_UNLOAD_SECONDS
  later, as Ollama's scheduler unloads after the answer)
  and the driver frees its memory after its drain delay; the server and the runner take the
  kernel name "ollama" (the real runner is the ollama binary run as `ollama runner`), so a
  GPU process of this server is found by its cgroup, not by a name;
* no GPU seen: it says "no compatible GPUs were discovered" and "entering low vram mode"
  and runs models on CPU (size_vram 0): the failure of seed 004.
GET /api/standin (stand-in only) reports what it sees. Sources: lab/README.md.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.client import HTTPConnection, HTTPException, IncompleteRead

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import gpuview
import standin

COMPONENT = "server.go"
MIB = 1024 * 1024
# Approximate on-disk size (MiB) of common models: what they hold in VRAM, plus the context.
CATALOGUE = {
    "tinyllama:latest": 638,
    "qwen2.5:0.5b": 398,
    "qwen2.5:1.5b": 986,
    "qwen2.5:3b": 1929,
    "qwen2.5:7b": 4683,
    "qwen2.5:14b": 9000,
    "llama3.2:1b": 1321,
    "llama3.2:3b": 2019,
    "llama3.1:8b": 4920,
    "mistral:7b": 4113,
    "gemma3:4b": 3338,
    "moondream:latest": 1738,
    "gpt-oss:20b": 13793,
    "qwen3-vl:32b": 21000,
    "nemotron-3-nano:128k": 24000,
}
CONTEXT_MIB = 300  # KV cache and graph of a default 4096-token context


def size_of(name):
    """VRAM (MiB) of a model, by its model:tag whatever registry it came from."""
    key = "%s:%s" % (name.model, name.tag)
    if key in CATALOGUE:
        return CATALOGUE[key]
    digits = "".join(c for c in name.tag if c.isdigit() or c == ".")
    try:
        return int(float(digits) * 620) if name.tag.endswith("b") and digits else 2000
    except ValueError:
        return 2000


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%06dZ" % int((ts % 1) * 1e6)


# --- model names, as types/model/name.go parses them ------------------------------------
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MISSING = "!MISSING!"


class Name:
    def __init__(self, host="", namespace="", model="", tag="", scheme=""):
        self.host, self.namespace, self.model, self.tag = host, namespace, model, tag
        self.scheme = scheme

    @property
    def parts(self):
        return [self.host, self.namespace, self.model, self.tag]

    def valid(self):
        return all(_valid_part(i, p) for i, p in enumerate(self.parts))

    def display(self):
        """DisplayShortest: llama3.2:3b, ns/model:tag, host/ns/model:tag."""
        short = "%s:%s" % (self.model, self.tag)
        if self.host.lower() != DEFAULT_HOST:
            return "%s/%s/%s" % (self.host, self.namespace, short)
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return "%s/%s" % (self.namespace, short)
        return short

    def __str__(self):
        return "%s/%s/%s:%s" % tuple(self.parts)


def _cut(text, sep):
    before, found, after = text.rpartition(sep)
    if not found:
        return text, "", False
    return before or MISSING, after or MISSING, True


def parse_name(text):
    """ParseName: defaults registry.ollama.ai / library / latest, https."""
    name, rest = Name(), text or ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, name.tag, _promised = _cut(rest, ":")
    rest, name.model, promised = _cut(rest, "/")
    if not promised:
        name.model = rest
    else:
        rest, name.namespace, promised = _cut(rest, "/")
        if not promised:
            name.namespace = rest
        else:
            scheme, found, host = rest.partition("://")
            name.scheme, name.host = (scheme, host) if found else ("", rest)
    name.host = name.host or DEFAULT_HOST
    name.namespace = name.namespace or DEFAULT_NAMESPACE
    name.tag = name.tag or DEFAULT_TAG
    name.scheme = name.scheme or "https"
    return name


def _valid_part(kind, part):  # kind: 0 host, 1 namespace, 2 model, 3 tag
    if not 1 <= len(part) <= (350 if kind == 0 else 80):
        return False
    for i, char in enumerate(part):
        if char.isascii() and (char.isalnum() or char == "_"):
            continue
        if i == 0:
            return False
        if char == "-" or (char == "." and kind != 1) or (char == ":" and kind == 0):
            continue
        return False
    return True


# --- the model store on disk (server/manifest.go, server/modelpath.go) -------------------
DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


class PullError(Exception):
    """An error of a pull, worded as Ollama words it."""


class Store:
    def __init__(self, root):
        self.root = root
        self.manifests = os.path.join(root, "manifests")
        self.blobs = os.path.join(root, "blobs")

    def manifest_path(self, name):
        return os.path.join(self.manifests, name.host, name.namespace, name.model, name.tag)

    def blob_path(self, digest):
        if not DIGEST.match(digest or ""):
            raise PullError("invalid digest format")
        return os.path.join(self.blobs, digest.replace(":", "-"))

    def names(self):
        """Every valid name with a manifest file (Manifests: manifests/*/*/*/*)."""
        found = []
        for path in glob.glob(os.path.join(self.manifests, "*", "*", "*", "*")):
            if os.path.isfile(path):
                name = Name(*os.path.relpath(path, self.manifests).split(os.sep))
                if name.valid():
                    found.append(name)
        return found

    def existing(self, name):
        """getExistingName: each part takes the case of a stored name that matches it."""
        done = [False] * 4
        parts = name.parts
        for stored in self.names():
            for i, part in enumerate(stored.parts):
                if not done[i] and part.lower() == parts[i].lower():
                    parts[i], done[i] = part, True
        return Name(*parts, scheme=name.scheme)

    def manifest(self, name):
        """(manifest dict, raw bytes) of a stored model, or None."""
        try:
            with open(self.manifest_path(name), "rb") as handle:
                raw = handle.read()
            return json.loads(raw), raw
        except (OSError, ValueError):
            return None

    def layers(self, manifest):
        config = manifest.get("config") or {}
        return list(manifest.get("layers") or []) + ([config] if config.get("digest") else [])

    def config(self, manifest):
        """The config blob's JSON ({} without a config), None when it cannot be read."""
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            return {}
        try:
            with open(self.blob_path(digest), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError, PullError):
            return None

    def missing(self, manifest):
        """{media type: digest} of the config and model layers whose blob is not on disk."""
        found = {}
        for layer in self.layers(manifest):
            kind = layer.get("mediaType", "")
            if kind.endswith(("image.v1+json", "image.model")):
                try:
                    if not os.path.exists(self.blob_path(layer.get("digest"))):
                        found[kind] = layer.get("digest")
                except PullError:
                    found[kind] = layer.get("digest")
        return found

    def in_use(self, digest):
        for name in self.names():
            stored = self.manifest(name)
            if stored and digest in [layer.get("digest") for layer in self.layers(stored[0])]:
                return True
        return False

    def remove_unused(self, digests):
        for digest in digests:
            if digest and not self.in_use(digest):
                try:
                    os.unlink(self.blob_path(digest))
                except (OSError, PullError):
                    pass

    def delete(self, name):
        """DeleteHandler: the manifest, empty directories, then layers no model uses."""
        stored = self.manifest(name)
        if stored is None:
            return False
        os.unlink(self.manifest_path(name))
        for root, _dirs, _files in sorted(os.walk(self.manifests), reverse=True):
            if root != self.manifests and not os.listdir(root):
                os.rmdir(root)
        self.remove_unused(layer.get("digest") for layer in self.layers(stored[0]))
        return True

    def copy(self, src, dst):
        """CopyModel: the manifest file, copied; False when the source has none."""
        try:
            with open(self.manifest_path(src), "rb") as handle:
                raw = handle.read()
        except OSError:
            return False
        path = self.manifest_path(dst)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(raw)
        return True


# --- talking to a registry like Go's net/http does ---------------------------------------
def _nameserver():
    try:
        with open("/etc/resolv.conf", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1]
    except OSError:
        pass
    return None


def _hostport(ip, port):
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


def _dial(host, port, timeout):
    """A connected socket, or the text of Go's dial error."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        ns = _nameserver()
        where = " on %s" % _hostport(ns, 53) if ns else ""
        what = "no such host" if exc.errno in (socket.EAI_NONAME, -5) else "server misbehaving"
        raise PullError("dial tcp: lookup %s%s: %s" % (host, where, what)) from None
    error = None
    for family, kind, proto, _canon, address in addresses:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except TimeoutError:
            error = "dial tcp %s: i/o timeout" % _hostport(address[0], port)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            error = "dial tcp %s: connect: %s" % (_hostport(address[0], port), reason)
        sock.close()
    raise PullError(error or "dial tcp: lookup %s: no such host" % host)


def go_request(method, url, headers=None, follow=None, timeout=30.0):
    """One request as Go's http.Client makes it: redirects followed while follow(url) says so
    (all of them, at most 10, without follow), errors worded like Go's url.Error. Returns the
    http.client response (read its body, then close it)."""
    verb = method[:1] + method[1:].lower()
    for _redirect in range(11):
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            sock = _dial(parts.hostname, port, timeout)
            if parts.scheme == "https":
                try:
                    sock = ssl.create_default_context().wrap_socket(
                        sock, server_hostname=parts.hostname)
                except ssl.SSLCertVerificationError:
                    raise PullError("tls: failed to verify certificate: x509: certificate "
                                    "signed by unknown authority") from None
                except ssl.SSLError:
                    raise PullError("http: server gave HTTP response to HTTPS client") from None
            conn = HTTPConnection(parts.hostname, port, timeout=timeout)
            conn.sock = sock
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request(method, path, headers=dict(headers or {}, **{
                "User-Agent": "ollama/%s (amd64 linux) Go/go1.24.1"
                              % standin.setting("GPUFLEET_STANDIN_OLLAMA_VERSION")}))
            resp = conn.getresponse()
        except PullError as exc:
            raise PullError('%s "%s": %s' % (verb, url, exc)) from None
        except (OSError, HTTPException):
            raise PullError('%s "%s": EOF' % (verb, url)) from None
        location = resp.getheader("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return resp
        target = urllib.parse.urljoin(url, location)
        if follow is not None and not follow(target):
            return resp  # http.ErrUseLastResponse: the redirect itself
        resp.close()
        url = target
    raise PullError('%s "%s": stopped after 10 redirects' % (verb, url))


def registry_request(method, url, headers=None, follow=None):
    """makeRequestWithRetry: a 404 is os.ErrNotExist, another error status "<code>: <body>"."""
    resp = go_request(method, url, headers, follow)
    if resp.status == 404:
        resp.close()
        raise PullError("file does not exist")
    if resp.status >= 400:
        body = resp.read().decode(errors="replace")
        resp.close()
        raise PullError("%d: %s" % (resp.status, body))
    return resp


def human_bytes(size):
    """format.HumanBytes (decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == int(value):
                return "%d %s" % (int(value), unit)
            return "%.1f %s" % (value, unit)
    return "%d B" % size


# --- downloading one blob (server/download.go) ----------------------------------------------
MEGABYTE = 1000 * 1000
PART_MIN, PART_MAX, PARTS = 100 * MEGABYTE, 1000 * MEGABYTE, 16
MAX_RETRIES = 6
DOWNLOADS = {}  # digest -> BlobDownload: one download of a digest at a time, shared
DOWNLOADS_LOCK = threading.Lock()


def retry_scale():
    """Ollama's backoff (1, 2, 4... s per failed part attempt) times this; tests set 0."""
    return float(standin.setting("GPUFLEET_STANDIN_OLLAMA_RETRY_SCALE", "1"))


class BlobDownload:
    """A blob fetched into <blob>-partial (the data) and <blob>-partial-<n> (one JSON file per
    part: N, Offset, Size, Completed), renamed to the blob when complete; a failed download
    leaves both, and the next one resumes each part where it stopped."""

    def __init__(self, path, digest, url):
        self.path, self.digest, self.url = path, digest, url
        self.parts, self.total, self.completed = [], 0, 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error = None

    def _part_path(self, part):
        return "%s-partial-%d" % (self.path, part["N"])

    def _write_part(self, part):
        with open(self._part_path(part), "w", encoding="utf-8") as handle:
            handle.write(json.dumps(part, separators=(",", ":")) + "\n")

    def prepare(self):
        for part_path in sorted(glob.glob(glob.escape(self.path) + "-partial-*")):
            with open(part_path, encoding="utf-8") as handle:
                part = json.load(handle)
            self.parts.append(part)
            self.total += part["Size"]
            self.completed += part["Completed"]
        if not self.parts:
            resp = registry_request("HEAD", self.url)
            resp.close()
            self.total = int(resp.getheader("Content-Length") or 0)
            size = min(max(self.total // PARTS, PART_MIN), PART_MAX)
            offset = 0
            while offset < self.total:
                size = min(size, self.total - offset)
                part = {"N": len(self.parts), "Offset": offset, "Size": size, "Completed": 0}
                self._write_part(part)
                self.parts.append(part)
                offset += size
        if self.parts:
            standin.log("download.go", "downloading %s in %d %s part(s)" % (
                self.digest[7:19], len(self.parts), human_bytes(self.parts[0]["Size"])))

    def run(self):
        try:
            self._run()
        except PullError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = str(exc)
        finally:
            with DOWNLOADS_LOCK:
                DOWNLOADS.pop(self.digest, None)
            self.done.set()

    def _direct_url(self):
        """The blob's URL after the registry's redirect to another host (a CDN); a registry
        that serves the blob itself (200, no Location) fails the pull, as it does Ollama's
        (download.go returns resp.Location(); ollama/ollama PRs 9737, 15512, not merged)."""
        host = urllib.parse.urlsplit(self.url).hostname
        deadline, tries = time.time() + 30 * max(retry_scale(), 0.01), 0
        while True:
            try:
                resp = registry_request(
                    "GET", self.url,
                    follow=lambda target: urllib.parse.urlsplit(target).hostname == host)
                break
            except PullError as exc:
                standin.log("download.go", "failed to get direct URL; backing off and retrying",
                            err=exc)
                tries += 1
                pause = min(tries * tries * 0.01, 10) * (random.random() + 0.5)
                if time.time() + pause > deadline:
                    raise PullError("context deadline exceeded") from None
                time.sleep(pause)
        resp.close()
        if resp.status not in (200, 307):
            raise PullError("unexpected status code %d" % resp.status)
        location = resp.getheader("Location")
        if not location:
            raise PullError("http: no Location header in response")
        return urllib.parse.urljoin(self.url, location)

    def _chunk(self, handle, url, part):
        start = part["Offset"] + part["Completed"]
        stop = part["Offset"] + part["Size"]
        resp = go_request("GET", url, {"Range": "bytes=%d-%d" % (start, stop - 1)})
        # download.go copies the body whatever the status: a wrong one fails the digest check
        left, got = stop - start, 0
        try:
            while left > 0:
                try:
                    data = resp.read1(min(left, 1 << 16))
                except IncompleteRead:
                    data = b""
                if not data:
                    break
                handle.seek(start + got)
                handle.write(data)
                got += len(data)
                left -= len(data)
                with self.lock:
                    self.completed += len(data)
        except (OSError, HTTPException):
            with self.lock:
                self.completed -= got  # download.go rolls the progress of a failed copy back
            raise PullError("read: connection reset by peer") from None
        finally:
            resp.close()
        part["Completed"] += got
        self._write_part(part)
        if left > 0:
            raise PullError("unexpected EOF")  # resumable: the next try starts from here

    def _run(self):
        mode = "r+b" if os.path.exists(self.path + "-partial") else "w+b"
        with open(self.path + "-partial", mode) as handle:
            handle.truncate(self.total)
            url = self._direct_url()
            for part in self.parts:
                error = None
                for attempt in range(MAX_RETRIES):
                    if part["Completed"] >= part["Size"]:
                        error = None
                        break
                    try:
                        self._chunk(handle, url, part)
                        error = None
                    except PullError as exc:
                        error = exc
                        pause = 2 ** attempt
                        standin.log("download.go", "%s part %d attempt %d failed: %s, retrying "
                                    "in %ds" % (self.digest[7:19], part["N"], attempt, exc, pause))
                        time.sleep(pause * retry_scale())
                if error is not None:
                    raise PullError("max retries exceeded: %s" % error)
        for part in self.parts:
            os.unlink(self._part_path(part))
        os.rename(self.path + "-partial", self.path)


def download_blob(store, name, base, digest, emit):
    """downloadBlob: True for a blob already there (one progress line, no download); else
    fetch it (sharing a download of the same digest already running), a progress line every
    60 ms meanwhile (none for a blob that came faster)."""
    path = store.blob_path(digest)
    if os.path.exists(path):
        size = os.path.getsize(path)
        emit({"status": "pulling %s" % digest[7:19], "digest": digest,
              "total": size, "completed": size})
        return True
    os.makedirs(store.blobs, exist_ok=True)
    with DOWNLOADS_LOCK:
        download = DOWNLOADS.get(digest)
        fresh = download is None
        if fresh:
            url = "%s/v2/%s/%s/blobs/%s" % (base, name.namespace, name.model, digest)
            download = DOWNLOADS[digest] = BlobDownload(path, digest, url)
    if fresh:
        try:
            download.prepare()
        except PullError:
            with DOWNLOADS_LOCK:
                DOWNLOADS.pop(digest, None)
            raise
        # like Ollama's download goroutine, it goes on if the client goes away
        threading.Thread(target=download.run, daemon=True).start()
    while not download.done.wait(0.06):
        with download.lock:
            emit({"status": "pulling %s" % digest[7:19], "digest": digest,
                  "total": download.total, "completed": download.completed})
    if download.error:
        raise PullError(download.error)
    return False


def pull_model(store, name, insecure, emit):
    """PullModel: manifest, blobs, sha256 check, then the manifest is written; raises
    PullError with Ollama's text (the stream's last line is then {"error": ...})."""
    old = store.manifest(name)
    emit({"status": "pulling manifest"})
    base = "%s://%s" % ("http" if insecure else name.scheme, name.host)
    url = "%s/v2/%s/%s/manifests/%s" % (base, name.namespace, name.model, name.tag)
    try:
        resp = registry_request(
            "GET", url, {"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        raw = resp.read()
        resp.close()
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise PullError("invalid character %r looking for beginning of value"
                            % raw[:1].decode(errors="replace")) from None
    except PullError as exc:
        raise PullError("pull model manifest: %s" % exc) from None
    layers = store.layers(manifest)
    cached = {}
    for layer in layers:
        hit = download_blob(store, name, base, layer.get("digest", ""), emit)
        cached[layer["digest"]] = cached.get(layer["digest"], True) and hit
    emit({"status": "verifying sha256 digest"})
    for digest, hit in cached.items():
        if hit:
            continue
        with open(store.blob_path(digest), "rb") as handle:
            got = "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
        if got != digest:
            os.unlink(store.blob_path(digest))
            raise PullError("digest mismatch, file must be downloaded again: want %s, got %s"
                            % (digest, got))
    emit({"status": "writing manifest"})
    path = store.manifest_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(raw)
    unused = set()
    if old is not None:
        unused = {layer.get("digest") for layer in store.layers(old[0])} - set(cached)
    if unused and os.environ.get("OLLAMA_NOPRUNE", "") in ("", "0", "false"):
        emit({"status": "removing unused layers"})
        store.remove_unused(unused)
    emit({"status": "success"})


class Models:
    def __init__(self):
        self.lock = threading.RLock()
        self.loaded = {}  # display name -> {...}
        models_dir = os.environ.get("OLLAMA_MODELS") or os.path.expanduser("~/.ollama/models")
        self.store = Store(models_dir)
        self.default_keep = standin.duration(os.environ.get("OLLAMA_KEEP_ALIVE"), 300.0)
        self.spread = os.environ.get("OLLAMA_SCHED_SPREAD", "") not in ("", "0", "false")
        self.overhead = int(os.environ.get("OLLAMA_GPU_OVERHEAD", "0") or 0) // MIB
        gpus = gpuview.visible_gpus()
        self.max_loaded = int(os.environ.get("OLLAMA_MAX_LOADED_MODELS") or 3 * max(1, len(gpus)))

    # --- loading -------------------------------------------------------------------------
    def place(self, need):
        gpus = gpuview.visible_gpus()
        if not gpus:
            return {}
        gpus = sorted(gpus, key=lambda g: -g["free_mib"])
        usable = [(g, max(0, g["free_mib"] - self.overhead)) for g in gpus]
        if not self.spread:
            for gpu, free in usable:
                if free >= need:
                    return {gpu["index"]: need}
        vram, left = {}, need
        for gpu, free in usable:
            take = min(left, max(0, free - 256))
            if take > 0:
                vram[gpu["index"]] = take
                left -= take
            if left <= 0:
                break
        return vram  # partly on CPU when left > 0

    def load(self, model, digest, keep_alive):
        name = model.display()
        with self.lock:
            entry = self.loaded.get(name)
            if entry is None:
                while len(self.loaded) >= self.max_loaded:
                    oldest = min(self.loaded, key=lambda n: self.loaded[n]["used_at"])
                    self._unload(oldest, "evicted to make room")
                need = size_of(model) + CONTEXT_MIB
                vram = self.place(need)
                spec = ",".join("%d=%d" % kv for kv in sorted(vram.items()))
                runner = subprocess.Popen(
                    [
                        sys.executable,
                        os.path.realpath(__file__),
                        "runner",
                        "--model",
                        name,
                        "--vram",
                        spec,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                runner.stdout.readline()  # "ready": registered with the driver
                time.sleep(standin.seconds("GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS"))
                entry = {"size": need, "vram": vram, "runner": runner, "loaded_at": time.time(),
                         "digest": digest, "details": details(self.store, model)}
                self.loaded[name] = entry
                standin.log(
                    COMPONENT,
                    "loaded model",
                    model=name,
                    vram_mib=sum(vram.values()),
                    gpus=spec or "cpu",
                    offloaded="%d/%d" % (sum(vram.values()), need),
                )
            entry["used_at"] = time.time()
            entry["expires_at"] = None if keep_alive < 0 else time.time() + keep_alive
            return entry

    def _unload(self, name, why):
        entry = self.loaded.pop(name, None)
        if entry is None:
            return
        runner = entry["runner"]
        try:
            runner.stdin.close()  # the runner frees its VRAM and exits
            runner.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            runner.kill()
        standin.log(COMPONENT, "unloaded model", model=name, reason=why)

    def unload(self, name, why="keep_alive 0"):
        with self.lock:
            self._unload(name, why)

    def expire_now(self, name):
        """keep_alive 0 (server/sched.go expireRunner): the runner's session ends now, and
        the scheduler's loop unloads it afterwards, not before the answer: it stays in
        /api/ps, its memory held, until its runner has stopped
        (GPUFLEET_STANDIN_OLLAMA_UNLOAD_SECONDS later); a request meanwhile keeps it."""
        delay = float(standin.setting("GPUFLEET_STANDIN_OLLAMA_UNLOAD_SECONDS", "0.2"))
        with self.lock:
            entry = self.loaded.get(name)
            if entry is not None:
                entry["expires_at"] = time.time() + delay

    def expire(self):
        while True:
            time.sleep(0.1)
            now = time.time()
            with self.lock:
                for name in [
                    n
                    for n, e in self.loaded.items()
                    if e["expires_at"] is not None and e["expires_at"] <= now
                ]:
                    self._unload(name, "keep_alive expired")

    def stop(self):
        with self.lock:
            for name in list(self.loaded):
                self._unload(name, "server stopping")

    def ps(self):
        with self.lock:
            out = []
            for name, e in sorted(self.loaded.items()):
                expires = (
                    e["expires_at"]
                    if e["expires_at"] is not None
                    else time.time() + 10 * 365 * 86400
                )
                out.append(
                    {
                        "name": name,
                        "model": name,
                        "size": e["size"] * MIB,
                        "digest": e["digest"],
                        "details": e["details"],
                        "expires_at": iso(expires),
                        "size_vram": sum(e["vram"].values()) * MIB,
                        "context_length": 4096,
                        "standin_gpus": sorted(e["vram"]),
                    }
                )
            return out


MODELS = None


def details(store, name):
    """api.ModelDetails from the model's config blob (ListHandler); empty where it says nothing."""
    stored = store.manifest(name)
    config = (store.config(stored[0]) if stored else None) or {}
    return {
        "parent_model": "",
        "format": config.get("model_format", ""),
        "family": config.get("model_family", ""),
        "families": config.get("model_families"),
        "parameter_size": config.get("model_type", ""),
        "quantization_level": config.get("file_type", ""),
    }


def reply_text(name, prompt):
    gpus = gpuview.visible_gpus()
    where = ",".join(g["uuid"] for g in gpus) if gpus else "cpu"
    return "stand-in reply from %s on %s to: %s" % (name, where, (prompt or "")[:60])


def _drop_empty(progress):
    """api.ProgressResponse marshals digest, total and completed with omitempty."""
    return {k: v for k, v in progress.items() if k == "status" or v}


class Handler(standin.JSONHandler):
    component = COMPONENT

    def _model(self, body, required_400=False):
        """(Name, digest) of the model a request names, as stored; or None, answered: 404
        "model 'X' not found" with the name as the request gave it (routes.go Generate-,
        Chat-, ShowHandler, Ollama 0.3 to 0.12), 400 "model is required" where chat says so."""
        given = body.get("model") or body.get("name") or ""
        name = parse_name(given)
        if not name.valid() and required_400:
            self.send_json(400, {"error": "model is required"})
            return None
        stored = MODELS.store.existing(name) if name.valid() else None
        manifest = MODELS.store.manifest(stored) if stored else None
        missing = MODELS.store.missing(manifest[0]) if manifest else {}
        if manifest is None or any(kind.endswith("+json") for kind in missing):
            self.send_json(404, {"error": "model '%s' not found" % given})
            return None
        if missing:  # GetModel reads the config; the runner opens the model file
            path = MODELS.store.blob_path(next(iter(missing.values())))
            self.send_json(500, {"error": "llama runner process has terminated: error loading "
                                 "model: open %s: no such file or directory" % path})
            return None
        return stored, hashlib.sha256(manifest[1]).hexdigest()

    def root(self, _body):
        self.send_text(200, "Ollama is running")

    def version(self, _body):
        self.send_json(200, {"version": standin.setting("GPUFLEET_STANDIN_OLLAMA_VERSION")})

    def tags(self, _body):
        models = []
        for name in MODELS.store.names():
            stored = MODELS.store.manifest(name)
            if stored is None or MODELS.store.config(stored[0]) is None:
                standin.log(COMPONENT, "bad manifest filepath", name=name)  # skipped
                continue
            mtime = os.path.getmtime(MODELS.store.manifest_path(name))
            models.append({
                "name": name.display(),
                "model": name.display(),
                "modified_at": iso(mtime),
                "size": sum(int(layer.get("size") or 0)
                            for layer in MODELS.store.layers(stored[0])),
                "digest": hashlib.sha256(stored[1]).hexdigest(),
                "details": details(MODELS.store, name),
            })
        models.sort(key=lambda m: m["modified_at"], reverse=True)  # newest first
        self.send_json(200, {"models": models})

    def ps(self, _body):
        self.send_json(200, {"models": MODELS.ps()})

    def info(self, _body):
        gpus = gpuview.visible_gpus()
        self.send_json(
            200,
            {
                "standin": "ollama",
                "mode": "gpu" if gpus else "cpu",
                "low_vram": sum(g["total_mib"] for g in gpus) < 20 * 1024,
                "gpus": standin.gpu_summary(gpus),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "nvidia_visible_devices": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                "pid": os.getpid(),
            },
        )

    def _keep(self, body):
        try:
            return standin.duration(body.get("keep_alive"), MODELS.default_keep)
        except ValueError as exc:
            self.send_json(400, {"error": str(exc)})
            return None

    def _answer(self, body, model, text, chat):
        keep = self._keep(body)
        if keep is None:
            return
        started = time.time()
        MODELS.load(*model, keep)
        name = model[0].display()
        if keep == 0:
            MODELS.expire_now(name)
        now = iso(time.time())
        final = {
            "model": name,
            "created_at": now,
            "done": True,
            "done_reason": "stop",
            "total_duration": int((time.time() - started) * 1e9),
            "eval_count": len(text.split()),
        }
        if chat:
            final["message"] = {
                "role": "assistant",
                "content": "" if body.get("stream", True) else text,
            }
        else:
            final["response"] = "" if body.get("stream", True) else text
        if body.get("stream", True):
            words = text.split(" ")
            delay = standin.seconds("GPUFLEET_STANDIN_TOKEN_SECONDS")

            def chunks():
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    if delay:
                        time.sleep(delay)
                    part = {"model": name, "created_at": iso(time.time()), "done": False}
                    if chat:
                        part["message"] = {"role": "assistant", "content": piece}
                    else:
                        part["response"] = piece
                    yield json.dumps(part) + "\n"
                yield json.dumps(final) + "\n"

            self.stream_lines(chunks())
        else:
            self.send_json(200, final)

    def _preload(self, body, model, chat):
        keep = self._keep(body)
        if keep is None:
            return
        if keep == 0:
            MODELS.expire_now(model[0].display())
        else:
            MODELS.load(*model, keep)
        answer = {"model": model[0].display(), "created_at": iso(time.time()), "done": True,
                  "done_reason": "unload" if keep == 0 else "load"}
        if chat:
            answer["message"] = {"role": "assistant", "content": ""}
        else:
            answer["response"] = ""
        self.send_json(200, answer)

    def generate(self, body):
        model = self._model(body)
        if model is None:
            return
        if not body.get("prompt"):
            self._preload(body, model, chat=False)
            return
        self._answer(body, model, reply_text(model[0].display(), body.get("prompt")), chat=False)

    def chat(self, body):
        model = self._model(body, required_400=True)
        if model is None:
            return
        messages = body.get("messages") or []
        if not messages:
            self._preload(body, model, chat=True)
            return
        text = reply_text(model[0].display(), messages[-1].get("content", ""))
        self._answer(body, model, text, chat=True)

    def pull(self, body):
        """PullHandler: 400 "invalid model name" before anything; then a stream of progress
        lines ending with {"status":"success"} or {"error": ...} (status 200, as the first
        line is out); with "stream": false one object: the last line, or 500 {"error"}."""
        name = parse_name(body.get("model") or body.get("name") or "")
        if not name.valid():
            self.send_json(400, {"error": "invalid model name"})
            return
        name = MODELS.store.existing(name)
        insecure = bool(body.get("insecure"))
        if body.get("stream", True) is False:
            latest = {}
            try:
                pull_model(MODELS.store, name, insecure, latest.update)
            except (PullError, OSError) as exc:
                self.send_json(500, {"error": str(exc)})
                return
            self.send_json(200, {"status": latest.get("status", "")})
            return
        self.begin_stream()

        def emit(progress):
            self.send_chunk(json.dumps(_drop_empty(progress), separators=(",", ":")) + "\n")

        try:
            pull_model(MODELS.store, name, insecure, emit)
        except (PullError, OSError) as exc:
            if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                return  # the client went away: the pull stops, a blob download goes on
            emit({"error": str(exc)})
        self.end_stream()

    def copy(self, body):
        """CopyHandler: 200 with no body; 404 model "X" not found for a missing source."""
        names = []
        for key in ("source", "destination"):
            name = parse_name(body.get(key) or "")
            if not name.valid():
                self.send_json(400, {"error": '%s "%s" is invalid' % (key, body.get(key) or "")})
                return
            names.append(MODELS.store.existing(name))
        if not MODELS.store.copy(*names):
            self.send_json(404, {"error": 'model "%s" not found' % body.get("source")})
            return
        self.send_json(200, b"", "text/plain; charset=utf-8")

    def show(self, body):
        given = body.get("model") or body.get("name")
        if not given:
            self.send_json(400, {"error": "model is required"})
            return
        model = self._model(body)
        if model is not None:
            self.send_json(
                200,
                {
                    "details": details(MODELS.store, model[0]),
                    "modelfile": "# stand-in",
                    "parameters": "",
                    "model_info": {"general.parameter_count": size_of(model[0]) * 1_600_000},
                },
            )

    def delete_model(self, body):
        """DeleteHandler: 200 with no body; 404 model 'X' not found."""
        given = body.get("model") or body.get("name") or ""
        name = parse_name(given)
        if not name.valid():
            self.send_json(400, {"error": 'name "%s" is invalid' % given})
            return
        if MODELS.store.delete(MODELS.store.existing(name)):
            self.send_json(200, b"", "text/plain; charset=utf-8")
        else:
            self.send_json(404, {"error": "model '%s' not found" % given})

    def v1_models(self, _body):
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": n.display(), "object": "model", "created": int(time.time()),
                     "owned_by": "library" if n.namespace == DEFAULT_NAMESPACE else n.namespace}
                    for n in MODELS.store.names()
                ],
            },
        )

    def v1_chat(self, body):
        given = body.get("model") or ""
        name = parse_name(given)
        stored = MODELS.store.existing(name) if name.valid() else None
        manifest = MODELS.store.manifest(stored) if stored else None
        if manifest is None:  # openai.NewError over ChatHandler's 404
            self.send_json(404, {"error": {"message": "model '%s' not found" % given,
                                           "type": "not_found_error", "param": None,
                                           "code": None}})
            return
        model = (stored, hashlib.sha256(manifest[1]).hexdigest())
        text = reply_text(stored.display(), (body.get("messages") or [{}])[-1].get("content", ""))
        MODELS.load(*model, MODELS.default_keep)
        self.send_json(
            200,
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": stored.display(),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 1 + len(text.split()),
                },
            },
        )


Handler.routes = {
    ("GET", "/"): Handler.root,
    ("GET", "/api/version"): Handler.version,
    ("GET", "/api/tags"): Handler.tags,
    ("GET", "/api/ps"): Handler.ps,
    ("GET", "/api/standin"): Handler.info,
    ("POST", "/api/generate"): Handler.generate,
    ("POST", "/api/chat"): Handler.chat,
    ("POST", "/api/pull"): Handler.pull,
    ("POST", "/api/copy"): Handler.copy,
    ("POST", "/api/show"): Handler.show,
    ("DELETE", "/api/delete"): Handler.delete_model,
    ("GET", "/v1/models"): Handler.v1_models,
    ("POST", "/v1/chat/completions"): Handler.v1_chat,
}


def serve():
    global MODELS  # noqa: PLW0603 - one model store per server process
    host, port = standin.parse_host_port(os.environ.get("OLLAMA_HOST"), "127.0.0.1", 11434)
    standin.log(
        "routes.go",
        "server config",
        OLLAMA_HOST="%s:%d" % (host, port),
        CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        OLLAMA_KEEP_ALIVE=os.environ.get("OLLAMA_KEEP_ALIVE", "5m0s"),
        standin="true",
    )
    MODELS = Models()
    gpus = gpuview.visible_gpus()
    if not gpus:
        standin.log("gpu.go", "no compatible GPUs were discovered")
    for gpu in gpus:
        standin.log(
            "types.go",
            "inference compute",
            id=gpu["uuid"],
            library="cuda",
            name=gpu["name"],
            total="%.1f GiB" % (gpu["total_mib"] / 1024.0),
            available="%.1f GiB" % (gpu["free_mib"] / 1024.0),
        )
    total = sum(g["total_mib"] for g in gpus)
    if total < 20 * 1024:
        standin.log(
            "routes.go",
            "entering low vram mode",
            **{"total vram": "%.1f GiB" % (total / 1024.0), "threshold": "20.0 GiB"},
        )
    threading.Thread(target=MODELS.expire, daemon=True).start()
    standin.serve(Handler, host, port, on_stop=MODELS.stop)


def runner(args):
    """Hold VRAM for one loaded model until stdin closes (the server unloads it) or we die."""
    spec = args[args.index("--vram") + 1]  # --model: named in the command line only
    reg = gpuview.Registration()
    for item in filter(None, spec.split(",")):
        index, mib = item.split("=")
        reg.set(int(index), int(mib))
    standin.hold_until_stdin_closes()
    reg.release()


def client(command):
    host, port = standin.parse_host_port(os.environ.get("OLLAMA_HOST"), "127.0.0.1", 11434)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    path = {"list": "/api/tags", "ls": "/api/tags", "ps": "/api/ps"}[command]
    with urllib.request.urlopen("http://%s:%d%s" % (host, port, path), timeout=10) as answer:
        models = json.load(answer)["models"]
    if command == "ps":
        print("%-24s %-14s %-10s %s" % ("NAME", "ID", "SIZE", "PROCESSOR"))
        for m in models:
            share = 100 * m["size_vram"] // max(1, m["size"])
            proc = (
                "100% GPU"
                if share == 100
                else ("100% CPU" if share == 0 else "%d%%/%d%% CPU/GPU" % (100 - share, share))
            )
            print(
                "%-24s %-14s %-10s %s"
                % (m["name"], m["digest"][:12], "%.1f GB" % (m["size"] / 1e9), proc)
            )
    else:
        print("%-24s %-14s %s" % ("NAME", "ID", "SIZE"))
        for m in models:
            print("%-24s %-14s %.1f GB" % (m["name"], m["digest"][:12], m["size"] / 1e9))


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print("Usage: ollama serve | list | ps | --version   (lab stand-in, not Ollama)")
        return 0
    if args[0] in ("-v", "--version"):
        print(
            "ollama version is %s (lab stand-in)"
            % standin.setting("GPUFLEET_STANDIN_OLLAMA_VERSION")
        )
        return 0
    if args[0] in ("serve", "runner"):
        # The real server and its runner are both the `ollama` binary (`ollama runner ...` is
        # a subprocess of `ollama serve`): both have the kernel name (comm) "ollama".
        standin.set_process_name("ollama")
    if args[0] == "serve":
        serve()
        return 0
    if args[0] == "runner":
        runner(args[1:])
        return 0
    if args[0] in ("list", "ls", "ps"):
        client(args[0])
        return 0
    print('Error: unknown command %r for "ollama" (lab stand-in)' % args[0], file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
