# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: a Hugging Face hub client that fills the
cache vLLM reads, in huggingface_hub's own layout.

Not a public API: the leading underscore says so. Standard library only (urllib), no
AnsibleModule: gpufleet.inference.downloads runs it on the managed host, so the weights are in
the cache before the vLLM container or unit starts (and ``HF_HUB_OFFLINE=1`` can hold).

Vocabulary
  hf_home     HF_HOME on the host; the cache is ``<hf_home>/hub`` (huggingface_hub's
              HF_HUB_CACHE default, ``constants.py``).
  repo folder ``hub/models--<org>--<name>``: ``blobs/<etag>`` (the bytes),
              ``snapshots/<commit>/<file>`` (relative symlinks to ``../../blobs/<etag>``),
              ``refs/<revision>`` (the commit the revision resolved to). The etag is the
              sha256 of an LFS file's content and the git blob sha1 of any other file
              (huggingface_hub ``file_download.py``: ``repo_folder_name``, ``_create_symlink``,
              ``_cache_commit_hash_for_specific_revision``; blobs are written to
              ``<etag>.incomplete`` and renamed).
  listing     ``GET <endpoint>/api/models/<repo>/revision/<revision>?blobs=true``: the
              commit (``sha``), ``gated`` and ``siblings`` (``rfilename``, ``size``,
              ``blobId``, ``lfs.sha256``) (huggingface_hub ``hf_api.py`` ``model_info``).

Which files (the rule vLLM's own loader follows, vllm-project/vllm
``model_executor/model_loader/default_loader.py`` ``_prepare_weights`` and
``weight_utils.py`` ``download_weights_from_hf``; only files at the top of the repo, which is
where vLLM globs for weights and transformers looks for configs):
  - weights: with ``load_format=auto`` a repo holding ``consolidated*.safetensors`` is in
    Mistral's format and only those are loaded; otherwise the first of ``*.safetensors``,
    ``*.bin``, ``*.pt`` that matches any file, and nothing of the others (so no ``*.bin``
    when safetensors exist), without the trainer's files vLLM drops
    (``filter_files_not_needed_for_inference``). GGUF, ONNX, TF/Flax weights and every
    subdirectory (``original/``, ``onnx/``...) are never fetched.
  - metadata the engine and the tokenizer read: ``*.json`` (config, generation config,
    tokenizer files, safetensors index, ``params.json``, ``tekken.json``), ``*.jinja`` (chat
    templates), ``*.txt`` (merges, vocab), ``*.model`` and ``tokenizer.model.*``
    (sentencepiece), ``*.tiktoken``. Remote code (``*.py``) is not fetched: the collection
    does not run vLLM with ``--trust-remote-code``.

Presence, without asking the hub (so a host without internet knows it is complete): the
revision resolves (``refs/<revision>``, or a snapshot named by the commit), the snapshot has
``config.json`` (or Mistral's ``params.json``) and its weights, every file of the safetensors
index when there is one. This module writes ``refs/<revision>`` last, after every file.

Errors follow huggingface_hub's ``hf_raise_for_status`` (``utils/_http.py``): the
``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``) first; a 401 ``Invalid credentials in Authorization header`` is a bad token; any
other 401 is a repo not found (the hub answers 401 for missing and private repos alike); a 403
is a token without access. The token only ever goes into the Authorization header: it is in no
message, no result and no file this module writes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.gpufleet.inference.plugins.module_utils import _registry

ENDPOINT = "https://huggingface.co"
MISTRAL_WEIGHTS = "consolidated*.safetensors"
MISTRAL_INDEX = "consolidated.safetensors.index.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
INDEXES = {"*.safetensors": "model.safetensors.index.json",
           "*.bin": "pytorch_model.bin.index.json"}
NOT_FOR_INFERENCE = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt",
                     "scaler.pt")
METADATA_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "tokenizer.model.*", "*.tiktoken")
CONFIGS = ("config.json", "params.json")
INVALID_TOKEN = "Invalid credentials in Authorization header"
CHUNK = 1024 * 1024
MAX_LISTING_BYTES = 32 * 1024 * 1024

_REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
_ETAG_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")


class HubError(Exception):
    """The hub refused or failed. ``kind``: gated (no token), token_invalid, no_access,
    not_found, revision, entry, no_weights, unreachable, corrupt, timeout or http."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def check_repo_id(repo_id):
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise ValueError("a Hugging Face repo id is <org>/<name>; got: %r" % (repo_id,))
    return repo_id


def repo_folder(hf_home, repo_id):
    """``<hf_home>/hub/models--<org>--<name>``, as huggingface_hub names it."""
    return os.path.join(hf_home, "hub", "models--" + check_repo_id(repo_id).replace("/", "--"))


# ---- which files --------------------------------------------------------------------------

def _matching(names, pattern):
    return sorted(name for name in names if fnmatch.fnmatchcase(name, pattern))


def weight_files(names):
    """The weight files vLLM loads among a repo's top-level file names (see the docstring)."""
    names = [name for name in names if "/" not in name]
    mistral = _matching(names, MISTRAL_WEIGHTS)
    if mistral:
        return mistral
    for pattern in WEIGHT_PATTERNS:
        found = [name for name in _matching(names, pattern) if name not in NOT_FOR_INFERENCE]
        if found:
            return found
    return []


def choose_files(siblings):
    """The files to fetch, from the listing's siblings: ``[{name, size, etag, lfs}]`` sorted
    by name; HubError(no_weights) when the repo has no weights vLLM can load."""
    by_name = {}
    for sibling in siblings or ():
        if isinstance(sibling, dict) and isinstance(sibling.get("rfilename"), str):
            by_name[sibling["rfilename"]] = sibling
    top = [name for name in by_name if "/" not in name]
    weights = weight_files(top)
    if not weights:
        raise HubError("no_weights", "has no weights vLLM can load (top-level %s, or %s)"
                       % (", ".join(WEIGHT_PATTERNS), MISTRAL_WEIGHTS))
    wanted = set(weights)
    for pattern in METADATA_PATTERNS:
        wanted.update(_matching(top, pattern))
    chosen = []
    for name in sorted(wanted):
        sibling = by_name[name]
        lfs = sibling.get("lfs") if isinstance(sibling.get("lfs"), dict) else None
        etag = (lfs or {}).get("sha256") or (lfs or {}).get("oid") or sibling.get("blobId")
        size = (lfs or {}).get("size", sibling.get("size"))
        if not isinstance(etag, str) or not _ETAG_RE.match(etag) or not isinstance(size, int):
            raise HubError("http", "the listing gives no blob id or size for %s (the API "
                           "needs ?blobs=true)" % name)
        chosen.append({"name": name, "size": size, "etag": etag, "lfs": lfs is not None})
    return chosen


# ---- the cache on disk --------------------------------------------------------------------

def resolved_commit(hf_home, repo_id, revision):
    """The commit ``revision`` resolves to in the cache, or None."""
    folder = repo_folder(hf_home, repo_id)
    if _COMMIT_RE.match(revision):
        return revision if os.path.isdir(os.path.join(folder, "snapshots", revision)) else None
    try:
        with open(os.path.join(folder, "refs", revision), encoding="utf-8") as handle:
            commit = handle.read().strip()
    except OSError:
        return None
    return commit if _COMMIT_RE.match(commit) else None


def _index_files(snapshot, index_name):
    """The files a weight index names, or None when there is no readable index."""
    try:
        with open(os.path.join(snapshot, index_name), encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached(hf_home, repo_id, revision):
    """``{commit, complete, snapshot}`` of the local cache, read without the hub."""
    commit = resolved_commit(hf_home, repo_id, revision)
    if commit is None:
        return {"commit": None, "complete": False, "snapshot": None}
    snapshot = os.path.join(repo_folder(hf_home, repo_id), "snapshots", commit)
    try:
        names = [name for name in os.listdir(snapshot)
                 if os.path.exists(os.path.join(snapshot, name))]
    except OSError:
        names = []
    complete = any(name in names for name in CONFIGS)
    weights = weight_files(names)
    if not weights:
        complete = False
    elif complete:
        if _matching(weights, MISTRAL_WEIGHTS):
            index_name = MISTRAL_INDEX
        else:
            index_name = next((INDEXES.get(p) for p in WEIGHT_PATTERNS
                               if _matching(weights, p)), None)
        indexed = _index_files(snapshot, index_name) if index_name in names else None
        complete = all(name in names for name in indexed or ())
    return {"commit": commit, "complete": complete, "snapshot": snapshot}


def missing_files(hf_home, repo_id, files):
    """The chosen files whose blob is not in the cache yet."""
    blobs = os.path.join(repo_folder(hf_home, repo_id), "blobs")
    return [f for f in files if not os.path.isfile(os.path.join(blobs, f["etag"]))]


def write_atomic(path, data):
    """Write a small file (bytes) through a temporary file and a rename, mode 0644."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path, text):
    write_atomic(path, text.encode("utf-8"))


def _link(snapshot, name, blob):
    """snapshots/<commit>/<name> -> the blob, relative, replaced when it points elsewhere."""
    link = os.path.join(snapshot, name)
    target = os.path.relpath(blob, os.path.dirname(link))
    if os.path.islink(link) and os.readlink(link) == target:
        return
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = os.path.join(os.path.dirname(link), ".tmp-link-%d-%s" % (os.getpid(),
                                                                   os.path.basename(name)))
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


# ---- the hub ------------------------------------------------------------------------------

class Hub:
    """Talks to one hub endpoint with an optional token (never shown anywhere)."""

    def __init__(self, endpoint=ENDPOINT, token=None, timeout=30, opener=None):
        self.endpoint = (endpoint or ENDPOINT).rstrip("/")
        self._token = token or None
        self.timeout = timeout
        self.opener = opener or _registry.build_opener()

    @property
    def has_token(self):
        return self._token is not None

    def _open(self, url, method="GET", headers=None):
        request = urllib.request.Request(url, method=method)
        request.add_header("User-Agent", "gpufleet.inference")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if self._token:
            request.add_unredirected_header("Authorization", "Bearer " + self._token)
        try:
            return self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except urllib.error.URLError as exc:
            raise HubError("unreachable", "cannot reach %s: %s"
                           % (self.endpoint, _registry.reason_text(exc))) from None
        except OSError as exc:
            raise HubError("unreachable", "cannot reach %s: %s" % (self.endpoint, exc)) from None

    def _error(self, exc):
        code = exc.headers.get("X-Error-Code") if exc.headers else None
        said = exc.headers.get("X-Error-Message") if exc.headers else None
        if not said:
            said = _registry.error_text(exc)[1]
        detail = "HTTP %d: %s" % (exc.code, said)
        if code == "RevisionNotFound":
            return HubError("revision", "the revision does not exist (%s)" % detail)
        if code == "EntryNotFound":
            return HubError("entry", "a file is missing (%s)" % detail)
        if code == "GatedRepo":
            if not self.has_token:
                return HubError("gated", "is gated: set HF_TOKEN (hf_token_file) to a token "
                                "of an account that was granted access (%s)" % detail)
            return HubError("no_access", "is gated and the account of HF_TOKEN has no access "
                            "to it yet: request access on the repo's page (%s)" % detail)
        if exc.code == 401 and said == INVALID_TOKEN and self.has_token:
            return HubError("token_invalid", "the hub refused HF_TOKEN as invalid (%s)" % detail)
        if code == "RepoNotFound" or exc.code in (401, 404):
            hint = ("or HF_TOKEN cannot see it" if self.has_token
                    else "or it is private and needs HF_TOKEN")
            return HubError("not_found", "is not on %s, %s (%s)" % (self.endpoint, hint, detail))
        if exc.code == 403:
            return HubError("no_access", "HF_TOKEN has no access to it (%s)" % detail)
        return HubError("http", "%s answered %s" % (self.endpoint, detail))

    def listing(self, repo_id, revision="main"):
        """``{commit, gated, files}``: the commit ``revision`` is at and the chosen files."""
        url = "%s/api/models/%s/revision/%s?blobs=true" % (
            self.endpoint, check_repo_id(repo_id), urllib.parse.quote(revision, safe=""))
        with self._open(url) as answer:
            body = answer.read(MAX_LISTING_BYTES)
        try:
            doc = json.loads(body)
            commit = doc["sha"]
        except (ValueError, KeyError, TypeError):
            raise HubError("http", "%s did not answer a model listing" % self.endpoint) from None
        if not isinstance(commit, str) or not _COMMIT_RE.match(commit):
            raise HubError("http", "%s answered a bad commit: %r" % (self.endpoint, commit))
        return {"commit": commit, "gated": doc.get("gated") or False,
                "files": choose_files(doc.get("siblings"))}

    def resolve_url(self, repo_id, commit, name):
        return "%s/%s/resolve/%s/%s" % (self.endpoint, repo_id, commit,
                                        urllib.parse.quote(name))

    def check_access(self, repo_id, commit, name):
        """HEAD one file: a gated repo refuses here, not in its (public) listing."""
        with self._open(self.resolve_url(repo_id, commit, name), method="HEAD"):
            pass

    def download(self, repo_id, revision, hf_home, listing, progress=None, deadline=None,
                 clock=time.monotonic):
        """Fetch the listing's missing files into the cache; returns the bytes transferred.

        ``progress(done_bytes, done_files)`` is called as bytes arrive; ``deadline`` is a
        ``clock()`` value after which the download stops with HubError(timeout).
        """
        folder = repo_folder(hf_home, repo_id)
        blobs = os.path.join(folder, "blobs")
        snapshot = os.path.join(folder, "snapshots", listing["commit"])
        os.makedirs(blobs, exist_ok=True)
        os.makedirs(snapshot, exist_ok=True)
        fetched = done_bytes = done_files = 0
        for entry in listing["files"]:
            blob = os.path.join(blobs, entry["etag"])
            if not os.path.isfile(blob):
                fetched += self._fetch_blob(repo_id, listing["commit"], entry, blob,
                                            (progress, done_bytes, done_files), deadline, clock)
            done_bytes += entry["size"]
            done_files += 1
            _link(snapshot, entry["name"], blob)
            if progress:
                progress(done_bytes, done_files)
        if revision != listing["commit"]:
            _write_text(os.path.join(folder, "refs", revision), listing["commit"])
        return fetched

    def _fetch_blob(self, repo_id, commit, entry, blob, report, deadline, clock):
        """One file to ``<blob>.incomplete`` (resumed when a part is there), checked against
        its etag (git's blob sha1 for a file outside LFS), renamed; returns the bytes
        transferred. ``report``: (progress, bytes and files done before this file)."""
        progress, base_bytes, base_files = report
        partial = blob + ".incomplete"
        have = os.path.getsize(partial) if os.path.isfile(partial) else 0
        if have >= entry["size"]:
            have = 0
        headers = {"Range": "bytes=%d-" % have} if have else {}
        url = self.resolve_url(repo_id, commit, entry["name"])
        transferred = 0
        with self._open(url, headers=headers) as answer:
            resumed = have and answer.status == 206
            digest = hashlib.sha256() if entry["lfs"] else hashlib.sha1()
            if not entry["lfs"]:
                digest.update(b"blob %d\0" % entry["size"])
            if resumed:
                with open(partial, "rb") as old:
                    for chunk in iter(lambda: old.read(CHUNK), b""):
                        digest.update(chunk)
            else:
                have = 0
            with open(partial, "ab" if resumed else "wb") as out:
                while True:
                    if deadline is not None and clock() > deadline:
                        raise HubError("timeout", "the download of %s did not finish in time "
                                       "(%d of %d bytes; the next run resumes it)"
                                       % (entry["name"], have + transferred, entry["size"]))
                    try:
                        chunk = answer.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise self._broken(entry, have + transferred, exc) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    transferred += len(chunk)
                    if progress:
                        progress(base_bytes + have + transferred, base_files)
        size = have + transferred
        if size < entry["size"]:
            raise self._broken(entry, size, "the connection closed")
        if size != entry["size"] or digest.hexdigest() != entry["etag"]:
            os.unlink(partial)
            raise HubError("corrupt", "%s arrived with %d of %d bytes or a wrong checksum; the "
                           "partial file was removed" % (entry["name"], size, entry["size"]))
        os.chmod(partial, 0o644)
        os.replace(partial, blob)
        return transferred

    @staticmethod
    def _broken(entry, size, reason):
        return HubError("unreachable", "the download of %s broke off after %d of %d bytes (%s); "
                        "the next run resumes it" % (entry["name"], size, entry["size"], reason))
