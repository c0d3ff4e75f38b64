# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's Hugging Face hub: a STAND-IN for huggingface.co (stdlib only).

  hf_hub.py --root DIR [--storage DIR] [--host 0.0.0.0] [--port 8080]

Serves the model repositories that lab/lab.py generates from lab/content.yml into DIR:

  DIR/hub.json                 {"repos": {repo_id: {gated, created_at, ...}},
                                "tokens": {token: {"name": ..., "gated": [repo_id, ...]}}}
  DIR/files/<org>/<name>/...   the files of each repository (branch main, one commit)

with the answers, status codes, headers and error texts of the real hub that clients read
(huggingface_hub's file_download.py, hf_api.py and utils/_http.py; lab/README.md, "Registry
and hub", cites each one):

  GET  /api/models/{repo_id}[/revision/{revision}]   model info (?blobs=true: sizes, LFS)
  GET  /api/models/{repo_id}/tree/{revision}[/{path}] the file tree (?recursive=true)
  GET  /api/whoami-v2                                  the token's owner
  GET|HEAD /{repo_id}/resolve/{revision}/{filename}   a file; an LFS file redirects (302) to
                                                       /cdn-lfs/<sha256> on another origin,
                                                       as the real hub redirects to its CDN
  GET|HEAD /cdn-lfs/<sha256>                           an LFS object (Range requests too)
  GET|HEAD /docker/registry/v2/...                     with --storage: the lab registry's
                                                       storage, read-only (Range too): where
                                                       the registry redirects blob downloads,
                                                       as ollama.com's redirects to its
                                                       object storage

The "CDN" is this same server under another name (CDN_NAMES: cdn-lfs.lab for hub.lab,
localhost for 127.0.0.1 and back), so that clients treat it as the real one: huggingface_hub
follows no redirect off the hub's origin on HEAD, and reads the file's metadata from the 302.

Revisions: ``main`` and the commit id. LFS files: those .gitattributes marks filter=lfs.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import itertools
import json
import os
import re
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COPY_CHUNK = 1 << 20
CREATED_AT = "2024-09-18T15:12:47.000Z"
# The name of the "CDN" for each name the hub is reached by (another origin, same server).
CDN_NAMES = {"hub.lab": "cdn-lfs.lab", "127.0.0.1": "localhost", "localhost": "127.0.0.1"}
_REQUEST_IDS = itertools.count(1)


# --- repositories --------------------------------------------------------------------------


def git_blob_sha1(data):
    """The id git gives a file's content (what the hub reports as a regular file's ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256, size):
    return "version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
        sha256,
        size,
    )


def lfs_patterns(gitattributes):
    """The patterns a .gitattributes text stores with Git LFS (``filter=lfs``)."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def is_lfs(path, patterns):
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


class Repo:
    """One repository as the hub sees it: files with their ids, one commit on main."""

    def __init__(self, repo_id, meta, directory):
        self.id = repo_id
        self.meta = meta
        self.directory = directory
        self.gated = meta.get("gated", False)
        self.files = {}
        paths = []
        for top, _dirs, names in os.walk(directory):
            for name in names:
                full = os.path.join(top, name)
                paths.append(os.path.relpath(full, directory).replace(os.sep, "/"))
        paths.sort()
        attributes = os.path.join(directory, ".gitattributes")
        patterns = []
        if os.path.exists(attributes):
            with open(attributes, encoding="utf-8") as handle:
                patterns = lfs_patterns(handle.read())
        for path in paths:
            with open(os.path.join(directory, path), "rb") as handle:
                data = handle.read()
            entry = {"path": path, "size": len(data)}
            if is_lfs(path, patterns):
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = lfs_pointer(sha256, len(data)).encode()
                entry.update(sha256=sha256, blob_id=git_blob_sha1(pointer),
                             pointer_size=len(pointer))
            else:
                entry["blob_id"] = git_blob_sha1(data)
            self.files[path] = entry
        listing = "".join("%s %s\n" % (p, e["blob_id"]) for p, e in self.files.items())
        self.sha = hashlib.sha1(
            ("lab commit of %s\n%s" % (repo_id, listing)).encode()
        ).hexdigest()

    def revision_ok(self, revision):
        return revision in ("main", self.sha)

    def sibling(self, entry, blobs):
        out = {"rfilename": entry["path"]}
        if blobs:
            out.update(blobId=entry["blob_id"], size=entry["size"])
            if "sha256" in entry:
                out["lfs"] = {"sha256": entry["sha256"], "size": entry["size"],
                              "pointerSize": entry["pointer_size"]}
        return out

    def info(self, blobs):
        org = self.id.split("/", 1)[0] if "/" in self.id else None
        config = {}
        if "config.json" in self.files:
            with open(os.path.join(self.directory, "config.json"), encoding="utf-8") as handle:
                full = json.load(handle)
            config = {k: full[k] for k in ("architectures", "model_type") if k in full}
        out = {
            "_id": hashlib.sha1(self.id.encode()).hexdigest()[:24],
            "id": self.id,
            "modelId": self.id,
            "author": org,
            "sha": self.sha,
            "lastModified": self.meta.get("last_modified", CREATED_AT),
            "createdAt": self.meta.get("created_at", CREATED_AT),
            "private": False,
            "disabled": False,
            "gated": self.gated,
            "downloads": 0,
            "likes": 0,
            "library_name": self.meta.get("library_name", "transformers"),
            "tags": self.meta.get("tags", []),
            "pipeline_tag": self.meta.get("pipeline_tag", "text-generation"),
            "config": config,
            "siblings": [self.sibling(e, blobs) for e in self.files.values()],
            "spaces": [],
            "usedStorage": sum(e["size"] for e in self.files.values()),
        }
        return out

    def tree(self, path, recursive):
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        out, seen_dirs = [], set()
        for entry in self.files.values():
            if not entry["path"].startswith(prefix):
                continue
            rest = entry["path"][len(prefix):]
            if "/" in rest and not recursive:
                directory = prefix + rest.split("/", 1)[0]
                if directory not in seen_dirs:
                    seen_dirs.add(directory)
                    out.append({"type": "directory", "oid": git_blob_sha1(directory.encode()),
                                "size": 0, "path": directory})
                continue
            item = {"type": "file", "oid": entry["blob_id"], "size": entry["size"],
                    "path": entry["path"]}
            if "sha256" in entry:
                item["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                               "pointerSize": entry["pointer_size"]}
            out.append(item)
        return out


class Hub:
    """Everything under --root, read once at start; --storage is read on each request."""

    def __init__(self, root, storage=None):
        self.storage = os.path.realpath(storage) if storage else None
        with open(os.path.join(root, "hub.json"), encoding="utf-8") as handle:
            spec = json.load(handle)
        self.tokens = spec.get("tokens", {})
        self.repos = {}
        self.lfs = {}  # sha256 -> path on disk
        for repo_id, meta in spec.get("repos", {}).items():
            repo = Repo(repo_id, meta, os.path.join(root, "files", repo_id))
            self.repos[repo_id] = repo
            for entry in repo.files.values():
                if "sha256" in entry:
                    self.lfs[entry["sha256"]] = os.path.join(repo.directory, entry["path"])


# --- HTTP ----------------------------------------------------------------------------------


class HubError(Exception):
    """An answer of the hub's own error shape: status, X-Error-Code, X-Error-Message."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def split_repo(parts):
    """(repo_id, rest) of a path split on /: repo ids are 'name' or 'org/name'."""
    for width in (2, 1):
        if len(parts) > width and parts[width] in ("resolve", "revision", "tree"):
            return "/".join(parts[:width]), parts[width:]
    return "/".join(parts), []


class Handler(BaseHTTPRequestHandler):
    server_version = "lab-hf-hub"
    protocol_version = "HTTP/1.1"
    hub = None  # set by make_server

    def log_message(self, fmt, *args):
        sys.stderr.write("hf_hub: %s %s\n" % (self.address_string(), fmt % args))

    # -- answers --

    def _start(self, status, headers, length):
        self.send_response(status)
        self.send_header("X-Request-Id", "Root=1-lab-%06d" % next(_REQUEST_IDS))
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def send_body(self, status, body, content_type, headers=()):
        self._start(status, [("Content-Type", content_type), *headers], len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, payload, headers=()):
        body = json.dumps(payload).encode()
        self.send_body(status, body, "application/json; charset=utf-8", headers)

    def send_error_answer(self, error):
        headers = [("X-Error-Message", error.message)]
        if error.code:
            headers.insert(0, ("X-Error-Code", error.code))
        self.send_json(error.status, {"error": error.message}, headers)

    def send_file(self, path, headers):
        """A file from disk; honours one Range (bytes=a-b, a-, -n) as the hub and CDN do."""
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if not match or match.groups() == ("", ""):
                raise HubError(416, "Requested Range Not Satisfiable")
            first, last = match.groups()
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:
                start = max(size - int(last), 0)
            if start >= size or start > end:
                self._start(416, [("Content-Range", "bytes */%d" % size)], 0)
                return
            status = 206
            headers = [*headers, ("Content-Range", "bytes %d-%d/%d" % (start, end, size))]
        headers = [("Accept-Ranges", "bytes"), *headers]
        self._start(status, [("Content-Type", content_type_of(path)), *headers],
                    end - start + 1)
        if self.command == "HEAD":
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = handle.read(min(COPY_CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    # -- access --

    def token(self):
        """The token's grants, None without a token; an unknown token is refused outright."""
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _sep, value = header.partition(" ")
        grants = self.hub.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if grants is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return grants

    def repo(self, repo_id, token):
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            # Anonymous: 401, so that a private repo's existence does not show; with a
            # token: 404. Both RepoNotFound (huggingface_hub utils/_http.py).
            if token is None:
                raise HubError(401, "Invalid username or password.", "RepoNotFound")
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def check_revision(self, repo, revision):
        if not repo.revision_ok(revision):
            raise HubError(404, "Invalid rev id: %s" % revision, "RevisionNotFound")

    def check_gate(self, repo, token):
        if not repo.gated:
            return
        if token is None:
            raise HubError(
                401,
                "Access to model %s is restricted. You must have access to it and be "
                "authenticated to access it. Please log in." % repo.id,
                "GatedRepo",
            )
        if repo.id not in token.get("gated", []):
            raise HubError(
                403,
                "Access to model %s is restricted and you are not in the authorized list. "
                "Visit %s/%s to ask for access." % (repo.id, self.base_url(), repo.id),
                "GatedRepo",
            )

    def base_url(self):
        return "http://%s" % (self.headers.get("Host") or "hub.lab:8080")

    def cdn_url(self):
        name, sep, port = (self.headers.get("Host") or "hub.lab:8080").partition(":")
        return "http://%s%s%s" % (CDN_NAMES.get(name, name), sep, port)

    # -- routes --

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            if parts[:2] == ["api", "models"] and len(parts) > 2:
                self.api_models(parts[2:], query)
            elif parts == ["api", "whoami-v2"]:
                self.whoami()
            elif len(parts) == 2 and parts[0] == "cdn-lfs":
                self.cdn(parts[1])
            elif parts[:3] == ["docker", "registry", "v2"] and self.hub.storage:
                self.registry_storage("/".join(parts))
            else:
                repo_id, rest = split_repo(parts)
                if len(rest) >= 3 and rest[0] == "resolve":
                    self.resolve(repo_id, rest[1], "/".join(rest[2:]))
                else:
                    raise HubError(404, "Sorry, we can't find the page you are looking for.")
        except HubError as error:
            self.send_error_answer(error)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def api_models(self, parts, query):
        token = self.token()
        repo_id, rest = split_repo(parts)
        repo = self.repo(repo_id, token)
        if rest and rest[0] == "revision" and len(rest) >= 2:
            self.check_revision(repo, "/".join(rest[1:]))
        elif rest and rest[0] == "tree" and len(rest) >= 2:
            self.check_revision(repo, rest[1])
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            self.send_json(200, repo.tree("/".join(rest[2:]), recursive))
            return
        elif rest:
            raise HubError(404, "Sorry, we can't find the page you are looking for.")
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        self.send_json(200, repo.info(blobs))

    def whoami(self):
        token = self.token()
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        name = token.get("name", "lab-user")
        self.send_json(200, {"type": "user", "id": hashlib.sha1(name.encode()).hexdigest()[:24],
                             "name": name, "auth": {"type": "access_token", "accessToken": {
                                 "displayName": name, "role": "read"}}})

    def resolve(self, repo_id, revision, filename):
        token = self.token()
        repo = self.repo(repo_id, token)
        self.check_gate(repo, token)
        self.check_revision(repo, revision)
        entry = repo.files.get(filename)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        headers = [("X-Repo-Commit", repo.sha)]
        if "sha256" in entry:
            # The real hub answers an LFS file with a redirect to its CDN, and says what is
            # behind it in X-Linked-Etag / X-Linked-Size (file_download.py reads those).
            location = "%s/cdn-lfs/%s" % (self.cdn_url(), entry["sha256"])
            body = ("Found. Redirecting to %s" % location).encode()
            headers += [
                ("ETag", '"%s"' % entry["blob_id"]),
                ("X-Linked-Etag", '"%s"' % entry["sha256"]),
                ("X-Linked-Size", str(entry["size"])),
                ("Location", location),
            ]
            self.send_body(302, body, "text/plain; charset=utf-8", headers)
            return
        headers.append(("ETag", '"%s"' % entry["blob_id"]))
        self.send_file(os.path.join(repo.directory, filename), headers)

    def cdn(self, sha256):
        path = self.hub.lfs.get(sha256)
        if path is None:
            self.no_such_key()
            return
        self.send_file(path, [("ETag", '"%s"' % sha256)])

    def registry_storage(self, path):
        full = os.path.realpath(os.path.join(self.hub.storage, path))
        if not full.startswith(self.hub.storage + os.sep) or not os.path.isfile(full):
            self.no_such_key()
            return
        self.send_file(full, [])

    def no_such_key(self):
        self.send_body(404, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
                       b"NoSuchKey</Code><Message>The specified key does not exist."
                       b"</Message></Error>", "application/xml")


def content_type_of(path):
    if path.endswith(".json"):
        return "application/json; charset=utf-8"
    if path.endswith((".md", ".txt", ".gitattributes")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def make_server(root, host, port, storage=None):
    handler = type("HubHandler", (Handler,), {"hub": Hub(root, storage)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--storage", help="the registry's storage root, served read-only")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = make_server(args.root, args.host, args.port, args.storage)
    sys.stderr.write("hf_hub: %d repositories, listening on %s:%d\n"
                     % (len(server.RequestHandlerClass.hub.repos), args.host, args.port))
    sys.stderr.flush()
    # PID 1 of its container: end on SIGTERM (docker stop) as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
