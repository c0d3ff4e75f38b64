# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fakes for the downloads tests, on loopback: NOT the real registry, hub, Ollama or docker.

Each answers the calls gpufleet.inference.downloads makes, with the status codes, headers and
error bodies of the real thing (sources in each class), and records what it was asked:
- FakeRegistry: the distribution API (manifests by tag or digest, blobs, optional redirect of
  blobs to another host, optional Bearer token flow with anonymous or Basic-authenticated
  tokens), holding images (schema 2, OCI, indexes) and Ollama models.
- FakeHub: the Hugging Face hub's model listing and resolve endpoints, gated repos, tokens,
  Range requests, an LFS redirect to a CDN host, and a download cut off midway.
- FakeOllama: ``/api/version``, ``/api/pull`` (streams Ollama's lines while really pulling
  from a FakeRegistry into a models directory) and ``/api/copy``.
- write_fake_docker: a ``docker`` CLI script answering ``info``, ``image ls``, ``image
  inspect`` and ``pull`` (non-TTY output) from a JSON state file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def dumps(doc):
    return json.dumps(doc).encode()


class FakeServer:
    """A threaded HTTP/1.1 server on 127.0.0.1; subclasses answer ``handle``."""

    def __init__(self):
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.requests.append({"method": self.command, "path": self.path,
                                      "headers": dict(self.headers), "body": body})
                status, headers, payload = fake.handle(self.command, self.path, self.headers,
                                                       body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if isinstance(payload, bytes):
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in payload:
                    self.wfile.write(chunk)
                    self.wfile.flush()

            do_GET = do_HEAD = do_POST = do_DELETE = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        self.url = "http://" + self.host
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def handle(self, method, path, headers, body):
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.server.shutdown()
        self.server.server_close()

    def seen(self, method=None, contains=""):
        return [r for r in self.requests
                if (method is None or r["method"] == method) and contains in r["path"]]


def distribution_error(status, code, message):
    """The distribution API's error body (docs/spec/api.md "Errors")."""
    body = dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return status, {"Content-Type": "application/json",
                    "Docker-Distribution-API-Version": "registry/2.0"}, body


class FakeRegistry(FakeServer):
    """A distribution registry. ``auth``: None (open), "anonymous" (Bearer tokens for anyone)
    or "basic" (tokens only for ``users``). ``redirect_to``: a FakeServer whose
    ``/storage/<digest>`` blobs are redirected to (as registries redirect to S3/CDNs)."""

    def __init__(self, auth=None, users=None, redirect_to=None):
        super().__init__()
        self.auth = auth
        self.users = users or {}
        self.redirect_to = redirect_to
        self.manifests = {}
        self.blobs = {}
        self.tokens = set()

    # -- content --

    def add_blob(self, data):
        digest = sha256(data)
        self.blobs[digest] = data
        if self.redirect_to is not None:
            self.redirect_to.blobs[digest] = data
        return digest

    def add_manifest(self, repo, refs, media_type, doc):
        data = dumps(doc)
        digest = sha256(data)
        for ref in [*refs, digest]:
            self.manifests[(repo, ref)] = (media_type, data)
        return digest

    def add_image(self, repo, tag, layers, oci=False, index=False, archs=("amd64",)):
        """An image whose layers are the given bytes; returns {layers: [{digest, size,
        diff_id}], digest}. ``index``: one manifest per arch in ``archs`` behind an index."""
        described = []
        for data in layers:
            described.append({"digest": self.add_blob(data), "size": len(data),
                              "diff_id": sha256(b"uncompressed:" + data)})
        manifest_type = OCI_MANIFEST if oci else SCHEMA2
        entries = []
        for arch in archs:
            config = dumps({"architecture": arch, "os": "linux",
                            "rootfs": {"type": "layers",
                                       "diff_ids": [d["diff_id"] for d in described]}})
            doc = {"schemaVersion": 2, "mediaType": manifest_type,
                   "config": {"mediaType": IMAGE_CONFIG, "digest": self.add_blob(config),
                              "size": len(config)},
                   "layers": [{"mediaType": LAYER, "digest": d["digest"], "size": d["size"]}
                              for d in described]}
            digest = self.add_manifest(repo, [] if index else [tag], manifest_type, doc)
            entries.append({"mediaType": manifest_type, "digest": digest,
                            "size": len(dumps(doc)),
                            "platform": {"architecture": arch, "os": "linux"}})
        if index:
            entries.append({"mediaType": manifest_type, "digest": sha256(b"attestation"),
                            "size": 1, "platform": {"architecture": "unknown", "os": "unknown"}})
            index_type = OCI_INDEX if oci else MANIFEST_LIST
            self.add_manifest(repo, [tag], index_type,
                              {"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
        return {"layers": described, "digest": entries[0]["digest"]}

    def add_ollama(self, repo, tag, model=b"GGUF model bytes", template=b"{{ .Prompt }}",
                   params=b'{"stop": ["<|eot_id|>"]}'):
        """An Ollama model as Ollama's registry stores it (ollama/ollama server/images.go:
        a schema-2 manifest, config image.v1, layers by application/vnd.ollama.image.*)."""
        layers = []
        for kind, data in (("model", model), ("template", template), ("params", params)):
            layers.append({"mediaType": "application/vnd.ollama.image." + kind,
                           "digest": self.add_blob(data), "size": len(data)})
        config = dumps({"model_format": "gguf", "model_family": "llama",
                        "file_type": "Q4_K_M", "rootfs": {"type": "layers", "diff_ids": []}})
        doc = {"schemaVersion": 2, "mediaType": SCHEMA2,
               "config": {"mediaType": IMAGE_CONFIG, "digest": self.add_blob(config),
                          "size": len(config)},
               "layers": layers}
        self.add_manifest(repo, [tag], SCHEMA2, doc)
        return doc

    # -- answers --

    def authorized(self, headers, repo):
        if self.auth is None:
            return True
        value = headers.get("Authorization") or ""
        return value.startswith("Bearer ") and value[7:] in self.tokens

    def challenge(self, repo):
        status, headers, body = distribution_error(401, "UNAUTHORIZED", "authentication required")
        headers["WWW-Authenticate"] = ('Bearer realm="%s/token",service="fake-registry",'
                                       'scope="repository:%s:pull"' % (self.url, repo))
        return status, headers, body

    def handle(self, method, path, headers, body):
        parsed = urllib.parse.urlsplit(path)
        if parsed.path == "/token":
            return self.token(headers, urllib.parse.parse_qs(parsed.query))
        if parsed.path.startswith("/storage/"):
            return self.storage(headers, parsed.path[len("/storage/"):])
        if not parsed.path.startswith("/v2/"):
            return 404, {}, b"404 page not found\n"
        rest = parsed.path[4:]
        for kind in ("/manifests/", "/blobs/"):
            if kind in rest:
                repo, ref = rest.split(kind, 1)
                break
        else:
            return distribution_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        if not self.authorized(headers, repo):
            return self.challenge(repo)
        if kind == "/manifests/":
            found = self.manifests.get((repo, ref))
            if not found:
                return distribution_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            media_type, data = found
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)}, data
        if ref not in self.blobs:
            return distribution_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if self.redirect_to is not None:
            return 307, {"Location": "%s/storage/%s" % (self.redirect_to.url, ref)}, b""
        return 200, {"Content-Type": "application/octet-stream"}, self.blobs[ref]

    def storage(self, headers, digest):
        """Blobs redirected to this same host (the Authorization header may follow)."""
        if digest not in self.blobs:
            return 404, {}, b"NoSuchKey"
        return 200, {"Content-Type": "application/octet-stream"}, self.blobs[digest]

    def token(self, headers, query):
        if self.auth == "basic":
            value = headers.get("Authorization") or ""
            try:
                user, _sep, password = base64.b64decode(value[6:]).decode().partition(":")
            except ValueError:
                user = password = None
            if not value.startswith("Basic ") or self.users.get(user) != password:
                return 401, {"Content-Type": "application/json"}, dumps(
                    {"details": "incorrect username or password"})
        token = "tok-%d" % len(self.tokens)
        self.tokens.add(token)
        return 200, {"Content-Type": "application/json"}, dumps(
            {"token": token, "access_token": token, "expires_in": 300})


class FakeStorage(FakeServer):
    """Blob storage a registry or the hub redirects to; refuses an Authorization header."""

    def __init__(self):
        super().__init__()
        self.blobs = {}

    def handle(self, method, path, headers, body):
        name = path.rsplit("/", 1)[-1]
        if headers.get("Authorization"):
            return 400, {}, b"Only one auth mechanism allowed"
        if name not in self.blobs:
            return 404, {}, b"NoSuchKey"
        return 200, {"Content-Type": "application/octet-stream"}, self.blobs[name]


GATED_MESSAGE = ("Access to model %s is restricted. You must have access to it and be "
                 "authenticated to access it. Please log in.")
NOT_GRANTED = ("Access to model %s is restricted and you are not in the authorized list. "
               "Visit https://huggingface.co/%s to ask for access.")


class FakeHub(FakeServer):
    """The Hugging Face hub's API and resolve endpoints (codes, X-Error-Code and
    X-Error-Message as huggingface_hub's ``utils/_http.py`` reads them)."""

    def __init__(self, tokens=None, cdn=None):
        super().__init__()
        self.repos = {}
        self.tokens = tokens or {}  # token -> set of gated repos it may read
        self.cdn = cdn
        self.cut = {}  # (repo, file) -> bytes served before the connection drops

    def add_repo(self, repo_id, files, gated=False, lfs=(".safetensors", ".bin", ".pt")):
        commit = hashlib.sha1(repo_id.encode() + b"@main").hexdigest()
        entries = {}
        for name, data in files.items():
            is_lfs = name.endswith(tuple(lfs))
            etag = hashlib.sha256(data).hexdigest() if is_lfs else git_blob_id(data)
            entries[name] = {"data": data, "lfs": is_lfs, "etag": etag}
            if is_lfs and self.cdn is not None:
                self.cdn.blobs[etag] = data
        self.repos[repo_id] = {"commit": commit, "gated": gated, "files": entries}
        return commit

    def error(self, status, code, message, json_body=True):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if json_body:
            headers["Content-Type"] = "application/json"
            return status, headers, dumps({"error": message})
        return status, headers, message.encode()

    def who(self, headers):
        """(ok, token): ok False when a token is given that the hub does not know."""
        value = headers.get("Authorization") or ""
        if not value:
            return True, None
        token = value[7:] if value.startswith("Bearer ") else value
        return token in self.tokens, token

    def handle(self, method, path, headers, body):
        parsed = urllib.parse.urlsplit(path)
        known, token = self.who(headers)
        if not known:
            return self.error(401, None, "Invalid credentials in Authorization header")
        route = parsed.path
        if route.startswith("/api/models/"):
            repo_id, sep, revision = route[len("/api/models/"):].partition("/revision/")
            if not sep:
                return 404, {}, b"Not Found"
            return self.listing(repo_id, urllib.parse.unquote(revision), token, parsed.query)
        if "/resolve/" in route:
            repo_id, _sep, rest = route.lstrip("/").partition("/resolve/")
            revision, _sep, name = rest.partition("/")
            return self.resolve(method, repo_id, revision, urllib.parse.unquote(name), token,
                                headers)
        return 404, {}, b"Not Found"

    def find(self, repo_id, revision, token):
        repo = self.repos.get(repo_id)
        if repo is None:
            if token is None:  # missing and private repos alike, without a token
                return None, self.error(401, None, "Invalid username or password.")
            return None, self.error(404, "RepoNotFound", "Repository not found")
        if revision not in ("main", repo["commit"]):
            return None, self.error(404, "RevisionNotFound", "Invalid rev id: %s" % revision)
        return repo, None

    def listing(self, repo_id, revision, token, query):
        repo, failure = self.find(repo_id, revision, token)
        if failure:
            return failure
        blobs = "blobs=true" in query
        siblings = []
        for name, entry in sorted(repo["files"].items()):
            sibling = {"rfilename": name}
            if blobs:
                sibling.update(size=len(entry["data"]),
                               blobId=git_blob_id(b"pointer " + entry["data"]) if entry["lfs"]
                               else entry["etag"])
                if entry["lfs"]:
                    sibling["lfs"] = {"sha256": entry["etag"], "size": len(entry["data"]),
                                      "pointerSize": 134}
            siblings.append(sibling)
        doc = {"_id": "x" * 24, "id": repo_id, "modelId": repo_id, "sha": repo["commit"],
               "private": False, "gated": repo["gated"], "disabled": False,
               "siblings": siblings}
        return 200, {"Content-Type": "application/json"}, dumps(doc)

    def resolve(self, method, repo_id, revision, name, token, headers):
        repo, failure = self.find(repo_id, revision, token)
        if failure:
            return failure
        if repo["gated"]:
            if token is None:
                return self.error(401, "GatedRepo", GATED_MESSAGE % repo_id, json_body=False)
            if repo_id not in self.tokens.get(token, ()):
                return self.error(403, "GatedRepo", NOT_GRANTED % (repo_id, repo_id),
                                  json_body=False)
        entry = repo["files"].get(name)
        if entry is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                         "X-Repo-Commit": repo["commit"]}, b"Entry not found"
        data = entry["data"]
        common = {"X-Repo-Commit": repo["commit"], "ETag": '"%s"' % entry["etag"]}
        if entry["lfs"]:
            common.update({"X-Linked-Etag": '"%s"' % entry["etag"],
                           "X-Linked-Size": str(len(data))})
            if self.cdn is not None:
                common["Location"] = "%s/cdn/%s" % (self.cdn.url, entry["etag"])
                return 302, common, b""
        start = 0
        wanted = headers.get("Range") or ""
        if wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1])
        cut = self.cut.get((repo_id, name))
        if start:
            common["Content-Range"] = "bytes %d-%d/%d" % (start, len(data) - 1, len(data))
        status = 206 if start else 200
        if cut is not None and method == "GET":
            common["Content-Length"] = str(len(data) - start)
            return status, common, iter([data[start:cut]])
        return status, common, data[start:]


class FakeOllama(FakeServer):
    """An Ollama server's pull and copy (ollama/ollama server/routes.go PullHandler and
    CopyHandler, server/images.go PullModel): it really pulls from ``registries`` (host ->
    FakeRegistry) into ``models_dir`` in Ollama's layout and streams Ollama's lines."""

    def __init__(self, models_dir, registries):
        super().__init__()
        self.models_dir = models_dir
        self.registries = registries
        self.fail_blob = None  # a digest whose download fails midway
        self.pulls = []

    def handle(self, method, path, headers, body):
        if path == "/api/version":
            return 200, {"Content-Type": "application/json"}, dumps({"version": "0.6.0"})
        if path == "/api/pull" and method == "POST":
            request = json.loads(body)
            return 200, {"Content-Type": "application/x-ndjson"}, self.pull(
                request.get("model") or request.get("name"), bool(request.get("insecure")))
        if path == "/api/copy" and method == "POST":
            return self.copy(json.loads(body))
        return 404, {}, b"404 page not found"

    @staticmethod
    def parse(name):
        """host, namespace, model, tag of a name (its own parser, not the module's)."""
        rest, tag = name, "latest"
        if ":" in name.rsplit("/", 1)[-1]:
            rest, tag = name.rsplit(":", 1)
        parts = rest.split("/")
        parts = ["registry.ollama.ai", "library"][:3 - len(parts)] + parts
        return dict(zip(("host", "namespace", "model"), parts), tag=tag)

    def manifest_path(self, name):
        parts = self.parse(name)
        return os.path.join(self.models_dir, "manifests", parts["host"], parts["namespace"],
                            parts["model"], parts["tag"])

    def pull(self, name, insecure):
        self.pulls.append((name, insecure))
        parts = self.parse(name)

        def line(doc):
            return dumps(doc) + b"\n"

        yield line({"status": "pulling manifest"})
        registry = self.registries.get(parts["host"])
        if registry is None:
            yield line({"error": 'pull model manifest: Get "https://%s/v2/%s/%s/manifests/%s": '
                        'dial tcp: lookup %s: no such host'
                        % (parts["host"], parts["namespace"], parts["model"], parts["tag"],
                           parts["host"].split(":")[0])})
            return
        base = "%s/v2/%s/%s" % (registry.url, parts["namespace"], parts["model"])
        request = urllib.request.Request(base + "/manifests/" + parts["tag"],
                                         headers={"Accept": SCHEMA2})
        try:
            with urllib.request.urlopen(request) as answer:
                data = answer.read()
        except urllib.error.HTTPError:
            yield line({"error": "pull model manifest: file does not exist"})
            return
        manifest = json.loads(data)
        blobs_dir = os.path.join(self.models_dir, "blobs")
        os.makedirs(blobs_dir, exist_ok=True)
        for blob in [manifest["config"], *manifest["layers"]]:
            digest, size = blob["digest"], blob["size"]
            status = "pulling %s" % digest.split(":")[1][:12]
            target = os.path.join(blobs_dir, digest.replace(":", "-"))
            if os.path.exists(target):
                yield line({"status": status, "digest": digest, "total": size,
                            "completed": size})
                continue
            yield line({"status": status, "digest": digest, "total": size, "completed": 0})
            if digest == self.fail_blob:
                yield line({"error": "max retries exceeded: unexpected EOF"})
                return
            with urllib.request.urlopen(base + "/blobs/" + digest) as answer:
                content = answer.read()
            with open(target + "-partial", "wb") as out:
                out.write(content)
            os.replace(target + "-partial", target)
            yield line({"status": status, "digest": digest, "total": size, "completed": size})
        yield line({"status": "verifying sha256 digest"})
        yield line({"status": "writing manifest"})
        target = self.manifest_path(name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(data)
        yield line({"status": "success"})

    def copy(self, request):
        source = self.manifest_path(request["source"])
        if not os.path.exists(source):
            return 404, {"Content-Type": "application/json"}, dumps(
                {"error": 'model "%s" not found' % request["source"]})
        target = self.manifest_path(request["destination"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
        return 200, {}, b""


# ---- a fake docker CLI ----------------------------------------------------------------------

FAKE_DOCKER = r'''#!%(python)s
"""A fake docker CLI for the downloads tests: NOT docker. State in $FAKE_DOCKER_STATE."""
import json, os, sys

path = os.environ["FAKE_DOCKER_STATE"]
with open(path) as handle:
    state = json.load(handle)
state.setdefault("calls", []).append(sys.argv[1:])
args = sys.argv[1:]
# Called as podman: its pull prints what podman 5 prints without a terminal (on stderr).
podman = os.path.basename(sys.argv[0]) == "podman"


def save():
    with open(path, "w") as handle:
        json.dump(state, handle)


def chains():
    found = set()
    for image in state["images"].values():
        layers = image["layers"]
        found.update(tuple(layers[:n]) for n in range(1, len(layers) + 1))
    return found


save()
if state.get("down"):
    sys.stderr.write("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                     "Is the docker daemon running?\n")
    sys.exit(1)
if args[:1] == ["info"]:
    print(state["root_dir"])
elif args[:2] == ["image", "ls"]:
    for image in state["images"].values():
        print(image["id"])
elif args[:2] == ["image", "inspect"]:
    fmt, names = args[3], args[4:]
    for name in names:
        image = state["images"].get(name) or next(
            (i for i in state["images"].values() if i["id"] == name), None)
        if image is None:
            sys.stderr.write("Error: No such image: %%s\n" %% name)
            sys.exit(1)
        print(json.dumps(image["layers"]) if "RootFS" in fmt else image["id"])
elif args[:1] == ["pull"]:
    ref = args[1]
    remote = state["remote"].get(ref)
    if remote is None:
        sys.stderr.write("Error response from daemon: manifest for %%s not found: manifest "
                         "unknown: manifest unknown\n" %% ref)
        sys.exit(1)
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    if podman:
        fail = state.get("fail", {}).get(ref)
        sys.stderr.write("Trying to pull %%s...\nGetting image source signatures\n" %% ref)
        for count, (digest, diff_id) in enumerate(remote["layers"]):
            if fail is not None and count == fail["after"]:
                sys.stderr.write(fail["stderr"] + "\n")
                sys.exit(125)
            sys.stderr.write("Copying blob %%s\n" %% digest)
        sys.stderr.write("Copying config %%s\nWriting manifest to image destination\n"
                         %% remote["digest"])
        state["images"][ref] = {"id": "sha256:" + remote["digest"][-64:],
                                "layers": [d for _g, d in remote["layers"]]}
        print(state["images"][ref]["id"][7:])
        save()
        sys.exit(0)
    print("%%s: Pulling from %%s" %% (tag, remote["repository"]))
    have, chain, todo = chains(), (), []
    for digest, diff_id in remote["layers"]:
        chain += (diff_id,)
        short = digest.split(":")[1][:12]
        if chain in have and not todo:
            print("%%s: Already exists" %% short)
        else:
            todo.append(short)
            print("%%s: Pulling fs layer" %% short)
    fail = state.get("fail", {}).get(ref)
    for short in todo[3:]:  # the engine downloads three layers at a time
        print("%%s: Waiting" %% short)
    for count, short in enumerate(todo):
        if fail is not None and count == fail["after"]:
            sys.stderr.write(fail["stderr"] + "\n")
            sys.exit(1)
        print("%%s: Verifying Checksum" %% short)
        print("%%s: Download complete" %% short)
    for short in todo:
        print("%%s: Pull complete" %% short)
    print("Digest: %%s" %% remote["digest"])
    print("Status: Downloaded newer image for %%s" %% ref)
    print(ref)
    state["images"][ref] = {"id": "sha256:" + remote["digest"][-64:],
                            "layers": [d for _g, d in remote["layers"]]}
    save()
else:
    sys.stderr.write("fake docker: unknown command %%s\n" %% " ".join(args))
    sys.exit(2)
'''


class FakeDocker:
    """The fake docker CLI in ``bin_dir`` and its state (``images`` the engine has by
    reference, ``remote`` what a pull of a reference fetches, ``fail`` pulls that break)."""

    def __init__(self, directory, root_dir="/", name="docker"):
        self.bin_dir = os.path.join(directory, "bin")
        os.makedirs(self.bin_dir, exist_ok=True)
        self.path = os.path.join(self.bin_dir, name)
        with open(self.path, "w") as out:
            out.write(FAKE_DOCKER % {"python": sys.executable})
        os.chmod(self.path, os.stat(self.path).st_mode | stat.S_IXUSR | stat.S_IXGRP)
        self.state_file = os.path.join(directory, "docker-state.json")
        self.state = {"root_dir": root_dir, "images": {}, "remote": {}, "fail": {}}
        self.save()

    def save(self):
        with open(self.state_file, "w") as out:
            json.dump(self.state, out)

    def load(self):
        with open(self.state_file) as handle:
            self.state = json.load(handle)
        return self.state

    def remote(self, ref, repository, image):
        """What ``docker pull ref`` fetches: an image FakeRegistry.add_image described."""
        self.state["remote"][ref] = {
            "repository": repository, "digest": image["digest"],
            "layers": [[d["digest"], d["diff_id"]] for d in image["layers"]]}
        self.save()

    def have(self, ref, diff_ids):
        self.state["images"][ref] = {"id": sha256(ref.encode()), "layers": list(diff_ids)}
        self.save()

    def env(self):
        return {"FAKE_DOCKER_STATE": self.state_file,
                "PATH": self.bin_dir + os.pathsep + os.environ.get("PATH", "")}

    def calls(self):
        return self.load().get("calls", [])


# ---- all of them, with content --------------------------------------------------------------

TOKEN = "hf_lablabLABlab0123456789"
GATED = "meta-llama/Llama-3.2-3B-Instruct"
PUBLIC = "Qwen/Qwen2.5-0.5B-Instruct"
HF_FILES = {"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": b'{"v": 1}',
            "generation_config.json": b'{"g": 1}', "model.safetensors": b"W" * 5000,
            "pytorch_model.bin": b"P" * 7000}


class FakeWorld:
    """A registry (an image and an Ollama model), a hub (a public and a gated repo, TOKEN
    granted the gated one), an Ollama server pulling from the registry, and a fake docker
    whose pull fetches the image; ``items()`` are the three things a host needs."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.registry = FakeRegistry().__enter__()
        self.hub = FakeHub(tokens={TOKEN: {GATED}}).__enter__()
        self.models = str(tmp_path / "models")
        self.hf_home = str(tmp_path / "hf")
        self.ollama = FakeOllama(self.models, {self.registry.host: self.registry}).__enter__()
        self.docker = FakeDocker(str(tmp_path / "docker"), root_dir=str(tmp_path))
        self.image_ref = "%s/ollama/ollama:latest" % self.registry.host
        self.image = self.registry.add_image("ollama/ollama", "latest",
                                             [b"base" * 300, b"runtime" * 500, b"ollama" * 900])
        self.docker.remote(self.image_ref, "ollama/ollama", self.image)
        self.model = self.registry.add_ollama("library/llama3.2", "3b", model=b"G" * 4000)
        self.hub.add_repo(PUBLIC, HF_FILES)
        self.hub.add_repo(GATED, HF_FILES, gated="manual")

    def close(self):
        for server in (self.registry, self.hub, self.ollama):
            server.__exit__(None, None, None)

    def items(self):
        return [
            {"kind": "image", "name": self.image_ref, "insecure": True, "services": ["ollama"]},
            {"kind": "ollama", "name": "llama3.2:3b", "services": ["ollama"],
             "models_dir": self.models, "url": self.ollama.url},
            {"kind": "huggingface", "name": PUBLIC, "services": ["vllm"],
             "hf_home": self.hf_home},
        ]

    def pulls(self):
        return [call for call in self.docker.calls() if call[:1] == ["pull"]]
