# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what a host's first run downloads (images,
Ollama models, Hugging Face weights), how much, onto which filesystem, and the download.

Not a public API: the leading underscore says so. No AnsibleModule: the module
plugins/modules/downloads.py wraps :func:`run`; commands, the clock and HTTP come in through
:class:`Host`, so tests drive everything with fake servers on loopback and a fake ``docker``.

Vocabulary
  item        one thing a service needs: ``kind`` image (a reference the engine pulls),
              ollama (a model name as the catalog gives it) or huggingface (a repo id and a
              revision), its ``name`` and the ``services`` that need it (for messages).
  present     already on the host: the engine has the image (``docker image inspect``);
              Ollama's models directory has the model's manifest and every blob it names;
              the Hugging Face cache resolves the revision to a complete snapshot (_hf.py).
  bytes       what fetching the item transfers, planned: image - the compressed layers whose
              layer chain the engine does not have (moby ``distribution/xfer/download.go``
              reuses a layer when the chain of diff_ids up to it exists: "Already exists");
              ollama - the config and layer blobs not in ``blobs/``; huggingface - the chosen
              files whose blob is not in the cache. Items are fetched in order, so what an
              earlier item brings (a base image's layers, a blob two models share) is counted
              for that item only. 0 when present; None when the registry could not be read but
              ``docker pull`` may (a credential helper's login).
  filesystem  the mount point the bytes land on: the engine's DockerRootDir, the models
              directory, HF_HOME (the nearest existing parent when it does not exist yet).

Choices
  - ``planned`` reads and never writes; every item is checked and all problems are reported
    together. ``present`` plans first and fails before anything changes when the plan has a
    problem (an unknown model name stops the run before any pull), then fetches the missing
    items in order; a failure stops there, naming the item, and what was fetched stays (the
    next run skips it; a partial Hugging Face file is resumed).
  - Images are pulled by ``docker pull`` (the CLI's logins and credential helpers apply);
    its non-TTY output prints one line per layer state, never bytes (moby
    ``pkg/jsonmessage``: progress bars are dropped when the output is not a terminal), so the
    bytes come from the manifest's layer sizes as layers complete. With the engine
    ``podman`` the same commands go to the podman CLI (its storage root is ``podman info``'s
    ``Store.GraphRoot``), image references are named in full (``docker.io/...``, as Docker
    reads a short name; Podman would resolve it through its search registries) and the
    progress counts the blobs ``podman pull`` starts to copy (its non-TTY output prints
    ``Copying blob sha256:<digest>`` once per blob, containers/image ``copy/progress_bars.go``).
  - Ollama models are pulled by the Ollama server (``POST /api/pull``, streamed); from a
    registry other than registry.ollama.ai the model is pulled under that registry's name and
    copied to the catalog's name (``POST /api/copy``), as Ollama names models by host. An
    offline source directory in Ollama's layout is copied into the models directory instead
    (blobs checked against their sha256, the manifest written last), no server needed.
  - Progress: one JSON line per event appended to ``progress_file`` (at most one a second
    per item, and always one at the end of each item): ``{"item", "kind", "name", "text",
    "final", "done_bytes", "total_bytes"}``; ``text`` is the line the controller shows.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from ansible_collections.gpufleet.inference.plugins.module_utils import _hf, _registry
from ansible_collections.gpufleet.inference.plugins.module_utils._progress_file import (
    append as append_line,
)

KINDS = ("image", "ollama", "huggingface")
ENGINES = ("docker", "podman")
# The storage root of each engine's images (the filesystem their bytes land on).
ENGINE_ROOT_FORMAT = {"docker": "{{.DockerRootDir}}", "podman": "{{.Store.GraphRoot}}"}
STATES = ("planned", "present")
OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_NAMESPACE = "library"
MIB = 1024 * 1024
COMMAND_TIMEOUT_S = 120
HTTP_TIMEOUT_S = 30
PROGRESS_INTERVAL_S = 1.0
# How long an Ollama server may take to answer once started (its verify waits as long).
SERVER_WAIT_S = 180

_OLLAMA_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_OLLAMA_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]+)?\Z")
_LAYER_LINE_RE = re.compile(r"^([0-9a-f]{12}): (.+?)\s*\Z")
_PODMAN_BLOB_RE = re.compile(r"^Copying blob (?:sha256:)?([0-9a-f]{12})")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")


class FetchError(Exception):
    """A fetch that failed; the message names the item and quotes the tool or server."""


# ---- items ------------------------------------------------------------------------------

def ollama_name(name):
    """``{host, namespace, model, tag, explicit_host}`` of an Ollama model name
    (ollama/ollama ``types/model/name.go``: ``[host/][namespace/]model[:tag]``, defaults
    registry.ollama.ai, library, latest); ValueError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("an Ollama model name must be a non-empty string; got: %r" % (name,))
    rest, tag = name.strip(), "latest"
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
    parts = rest.split("/")
    if len(parts) > 3:
        raise ValueError("Ollama model name %s has too many parts ([host/][namespace/]model"
                         "[:tag])" % name)
    explicit_host = len(parts) == 3
    parts = [OLLAMA_REGISTRY, OLLAMA_NAMESPACE][:3 - len(parts)] + parts
    host, namespace, model = parts
    if not _OLLAMA_HOST_RE.match(host) or not all(
            _OLLAMA_PART_RE.match(part) for part in (namespace, model, tag)):
        raise ValueError("Ollama model name %s is not [host/][namespace/]model[:tag] of "
                         "letters, digits, _ . -" % name)
    return {"host": host, "namespace": namespace, "model": model, "tag": tag,
            "explicit_host": explicit_host}


def label(item):
    """How messages name an item: ``ollama model "llama3.2:3b" (service ollama)``."""
    noun = {"image": "image", "ollama": "ollama model", "huggingface": "huggingface repo"}
    services = item.get("services") or []
    said = '%s "%s"' % (noun.get(item.get("kind"), "item"), item.get("name"))
    if services:
        said += " (service%s %s)" % ("s" if len(services) > 1 else "", ", ".join(services))
    return said


def check_items(items):
    """The items with defaults filled in; ValueError naming ``items[i].key`` otherwise."""
    if not isinstance(items, list):
        raise ValueError("items must be a list; got: %r" % (items,))
    checked = []
    for index, raw in enumerate(items):
        where = "items[%d]" % index
        if not isinstance(raw, dict):
            raise ValueError("%s must be a dict; got: %r" % (where, raw))
        kind, name = raw.get("kind"), raw.get("name")
        if kind not in KINDS:
            raise ValueError("%s.kind must be one of %s; got: %r" % (where, ", ".join(KINDS), kind))
        if not isinstance(name, str) or not name.strip():
            raise ValueError("%s.name must be a non-empty string; got: %r" % (where, name))
        services = raw.get("services") or []
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise ValueError("%s.services must be a list of service names; got: %r"
                             % (where, services))
        item = {"kind": kind, "name": name.strip(), "services": list(services)}
        if kind == "image":
            _registry.parse_reference(item["name"])
            item["insecure"] = bool(raw.get("insecure"))
        elif kind == "ollama":
            ollama_name(item["name"])
            item["models_dir"] = _absolute(raw.get("models_dir"), where + ".models_dir")
            item["url"] = (raw.get("url") or "").rstrip("/") or None
        else:
            _hf.check_repo_id(item["name"])
            item["hf_home"] = _absolute(raw.get("hf_home"), where + ".hf_home")
            revision = raw.get("revision") or "main"
            if not isinstance(revision, str) or ".." in revision or revision.startswith("/"):
                raise ValueError("%s.revision must be a branch, tag or commit; got: %r"
                                 % (where, revision))
            item["revision"] = revision
        checked.append(item)
    return checked


PLAN_OPTIONS = ("ollama_registry", "ollama_insecure", "ollama_source_dir", "hf_endpoint",
                "hf_token_file")


def expand(params):
    """``downloads`` (a plan's ``downloads``: ``{items, options}``), ``kinds`` and
    ``models_dir`` turned into ``items`` and the options: the items of those kinds (all three
    by default), an Ollama item's ``models_dir`` replaced by ``models_dir`` when given, and the
    plan's options where the task gives none. Returns new params; raises ValueError."""
    params = dict(params)
    plan = params.pop("downloads", None)
    kinds = params.pop("kinds", None)
    models_dir = params.pop("models_dir", None)
    if plan is None:
        if kinds or models_dir:
            raise ValueError("kinds and models_dir go with downloads (a plan's downloads); "
                             "got: kinds=%r, models_dir=%r" % (kinds, models_dir))
        if params.get("items") is None:
            raise ValueError("items or downloads is required; got neither")
        return params
    if params.get("items") is not None:
        raise ValueError("items and downloads are exclusive; got both")
    if not isinstance(plan, dict) or not isinstance(plan.get("items"), list) \
            or not isinstance(plan.get("options") or {}, dict):
        raise ValueError("downloads must be services_plan.downloads ({items, options}); got: %r"
                         % (plan,))
    kinds = list(KINDS) if kinds is None else kinds
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError("kinds must be some of %s; got: %r" % (", ".join(KINDS), kinds))
    items = []
    for planned in plan["items"]:
        if not isinstance(planned, dict):
            raise ValueError("downloads.items must be a list of dicts; got: %r" % (planned,))
        if planned.get("kind") in kinds:
            item = dict(planned)
            if models_dir and item["kind"] == "ollama":
                item["models_dir"] = models_dir
            items.append(item)
    params["items"] = items
    for key in PLAN_OPTIONS:
        value = (plan.get("options") or {}).get(key)
        if params.get(key) in (None, "") and value not in (None, ""):
            params[key] = value
    return params


def _absolute(path, where):
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError("%s must be an absolute path; got: %r" % (where, path))
    return os.path.normpath(path)


def read_token(path):
    """HF_TOKEN of an env file (``HF_TOKEN=...``), or None when there is no file or no
    value. The token is returned to the caller only, never put in a message."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError("hf_token_file %s cannot be read: %s" % (path, exc.strerror)) from None
    token = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip().replace("export ", "").strip() == "HF_TOKEN":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            token = value or None
    return token


# ---- the host -----------------------------------------------------------------------------

def mount_point(path):
    """The mount point ``path`` is on (its nearest existing parent when it does not exist)."""
    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def free_bytes(path):
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def stream_command(argv, on_line, deadline, clock=time.monotonic, env=None, from_stderr=False):
    """Run ``argv``, calling ``on_line`` for each line of its stdout (``from_stderr``: of its
    stderr, where ``podman pull`` writes its progress) as it comes; returns (rc, stderr).
    Killed, raising FetchError, when ``clock()`` passes ``deadline``."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, text=True, errors="replace")
    lines, errors = queue.Queue(), []
    streamed, other = ((process.stderr, process.stdout) if from_stderr
                       else (process.stdout, process.stderr))

    def pump():
        for line in streamed:
            if from_stderr:
                errors.append(line)
            lines.put(line)
        lines.put(None)

    def drain():
        text = other.read()
        if not from_stderr:
            errors.append(text)

    threading.Thread(target=pump, daemon=True).start()
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise FetchError("%s did not finish in time and was stopped" % " ".join(argv))
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            on_line(line.rstrip("\n"))
        rc = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    return rc, "".join(errors)


class Host:
    """What the core asks of the host.

    ``run(argv) -> (rc, out, err)`` runs a short command (the module's run_command with a
    timeout); ``docker`` is the docker CLI's path (None: not installed); ``opener`` a urllib
    opener for registries and the hub (proxies from the environment apply), ``local_opener``
    one for the Ollama server (never through a proxy); ``login`` the registry credentials
    lookup; ``clock``/``sleep`` the time; ``stream`` runs ``docker pull``; ``engine`` is
    ``docker`` or ``podman``, whose CLI ``docker`` is.
    """

    def __init__(self, run, docker=None, opener=None, local_opener=None,
                 login=_registry.docker_login, clock=time.monotonic, sleep=time.sleep,
                 machine=None, stream=stream_command, engine="docker"):
        if engine not in ENGINES:
            raise ValueError("engine must be one of %s; got: %r" % (", ".join(ENGINES), engine))
        self.run = run
        self.docker = docker
        self.engine = engine
        self.opener = opener or _registry.build_opener()
        self.local_opener = local_opener or urllib.request.build_opener(
            urllib.request.ProxyHandler({}))
        self.login = login
        self.clock = clock
        self.sleep = sleep
        self.machine = machine
        self.stream = stream


class Progress:
    """Appends progress events to a file as JSON lines (none when ``path`` is None)."""

    def __init__(self, path=None, clock=time.monotonic, interval=PROGRESS_INTERVAL_S):
        self.path = path
        self.clock = clock
        self.interval = interval
        self._last = {}

    def emit(self, index, item, text, final=False, done_bytes=None, total_bytes=None):
        now = self.clock()
        if not final and now - self._last.get(index, -1e9) < self.interval:
            return
        self._last[index] = now
        if not self.path:
            return
        event = {"item": index, "kind": item["kind"], "name": item["name"], "text": text,
                 "final": final, "done_bytes": done_bytes, "total_bytes": total_bytes}
        try:
            append_line(self.path, json.dumps(event))
        except OSError:
            self.path = None  # progress is a courtesy: a file that cannot be written ends it


def _mib(count):
    return "%.1f" % ((count or 0) / MIB)


def _own_like(paths, reference):
    """As root, give ``paths`` the owner of ``reference`` (the directory an engine that does
    not run as root reads and writes: Ollama's models, the Hugging Face cache)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        owner = os.stat(reference)
    except OSError:
        return
    if (owner.st_uid, owner.st_gid) == (0, 0):
        return
    for path in paths:
        try:
            os.lchown(path, owner.st_uid, owner.st_gid)
        except OSError:
            pass


def _tree(root):
    paths = [root]
    for base, dirs, files in os.walk(root):
        paths.extend(os.path.join(base, name) for name in dirs + files)
    return paths


# ---- the run ------------------------------------------------------------------------------

class _Run:
    """One call of :func:`run`: the items, the options and what the plan learnt."""

    def __init__(self, items, options, host, progress):
        self.items = items
        self.options = options
        self.host = host
        self.progress = progress or Progress()
        self.deadline = host.clock() + options["timeout"]
        self.entries = [{"kind": i["kind"], "name": i["name"], "services": i["services"],
                         "present": False, "bytes": 0, "fetched_bytes": 0,
                         "filesystem": None} for i in items]
        self.work = [{} for _item in items]
        self.changed = False
        self._engine = None
        self._local_chains = None
        self._planned_blobs = {}
        insecure = {_registry.parse_reference(i["name"])["registry"]
                    for i in items if i["kind"] == "image" and i.get("insecure")}
        if options["ollama_insecure"]:
            insecure.add(options["ollama_registry"])
        self.registry = _registry.Client(insecure, HTTP_TIMEOUT_S, login=host.login,
                                         opener=host.opener, machine=host.machine)
        self.hub = _hf.Hub(options["hf_endpoint"], options.get("hf_token"), HTTP_TIMEOUT_S,
                           opener=host.opener)

    # -- docker --

    def docker(self, *args):
        if not self.host.docker:
            raise FetchError("the %s CLI is not installed (docker_bin)" % self.host.engine)
        rc, out, err = self.host.run([self.host.docker, *args])
        return rc, out, err

    def engine(self):
        """The engine's storage root (FetchError when the engine does not answer)."""
        if self._engine is None:
            rc, out, err = self.docker("info", "--format",
                                       ENGINE_ROOT_FORMAT[self.host.engine])
            if rc != 0 or not out.strip():
                raise FetchError("the %s engine does not answer: %s" % (
                    self.host.engine, (err or out).strip() or "rc %d" % rc))
            self._engine = out.strip()
        return self._engine

    def local_chains(self):
        """Every layer chain (tuple of diff_ids from the base) the engine has."""
        if self._local_chains is None:
            chains = set()
            rc, out, err = self.docker("image", "ls", "--all", "--quiet", "--no-trunc")
            if rc != 0:
                raise FetchError("docker image ls failed: %s" % (err or out).strip())
            ids = sorted(set(out.split()))
            if ids:
                rc, out, err = self.docker("image", "inspect", "--format",
                                           "{{json .RootFS.Layers}}", *ids)
                if rc != 0:
                    raise FetchError("docker image inspect failed: %s" % (err or out).strip())
                for line in out.splitlines():
                    try:
                        layers = json.loads(line) or []
                    except ValueError:
                        continue
                    chains.update(tuple(layers[:n]) for n in range(1, len(layers) + 1))
            self._local_chains = chains
        return self._local_chains

    # -- plan --

    def plan(self):
        """Fill the entries; returns the problems (one message per item that failed)."""
        problems = []
        planners = {"image": self.plan_image, "ollama": self.plan_ollama,
                    "huggingface": self.plan_hf}
        for index, item in enumerate(self.items):
            try:
                planners[item["kind"]](item, self.entries[index], self.work[index])
            except (FetchError, _registry.RegistryError, _hf.HubError, OSError) as exc:
                message = _join(label(item), str(exc))
                self.entries[index]["error"] = message
                problems.append(message)
        return problems

    def plan_image(self, item, entry, work):
        entry["filesystem"] = mount_point(self.engine())
        rc, _out, _err = self.docker("image", "inspect", "--format", "{{.Id}}", item["name"])
        if rc == 0:
            entry["present"] = True
            return
        ref = _registry.parse_reference(item["name"])
        try:
            image = self.registry.image(item["name"])
        except _registry.NotFound as exc:
            raise FetchError("is not in %s: %s" % (ref["registry"], exc)) from None
        except _registry.AccessDenied as exc:
            if not exc.has_login:
                raise FetchError("%s; repository does not exist or may require 'docker login'"
                                 % exc) from None
            entry["bytes"] = None  # docker pull has a login this client cannot use
            work["warning"] = "%s: sizes unknown (%s)" % (label(item), exc)
            return
        chains, chain, missing, seen = self.local_chains(), (), [], set()
        for layer, diff_id in zip(image["layers"], image["diff_ids"]):
            chain += (diff_id,)
            if chain not in chains and layer["digest"] not in seen:
                seen.add(layer["digest"])
                missing.append(layer)
        # Pulled in order, this image gives the engine its chains: a later image built on the
        # same base finds them there ("Already exists"), so they are counted once.
        chains.update(tuple(image["diff_ids"][:n]) for n in range(1, len(image["diff_ids"]) + 1))
        work["layers"] = {layer["digest"].split(":")[-1][:12]: layer for layer in image["layers"]}
        entry["bytes"] = sum(layer["size"] for layer in missing)

    def ollama_source(self, item):
        """(pull name, registry host, repository, tag, copy needed) for an Ollama item."""
        name = ollama_name(item["name"])
        repository = "%s/%s" % (name["namespace"], name["model"])
        explicit = name["explicit_host"]
        registry = name["host"] if explicit else self.options["ollama_registry"]
        if explicit or registry == OLLAMA_REGISTRY:
            return item["name"], registry, repository, name["tag"], False
        return ("%s/%s:%s" % (registry, repository, name["tag"]), registry, repository,
                name["tag"], True)

    def plan_ollama(self, item, entry, work):
        models = item["models_dir"]
        entry["filesystem"] = mount_point(models)
        name = ollama_name(item["name"])
        manifest_path = os.path.join(models, "manifests", name["host"], name["namespace"],
                                     name["model"], name["tag"])
        work["manifest_path"] = manifest_path
        local = _read_manifest(manifest_path)
        if local is not None and not _missing_blobs(models, local):
            entry["present"] = True
            return
        source_dir = self.options.get("ollama_source_dir")
        if source_dir:
            source_path = os.path.join(source_dir, os.path.relpath(manifest_path, models))
            manifest = _read_manifest(source_path)
            if manifest is None:
                raise FetchError("is not in ollama_source_dir %s (no %s)"
                                 % (source_dir, source_path))
            absent = [b for b in _blobs(manifest) if not os.path.isfile(
                os.path.join(source_dir, "blobs", _blob_name(b["digest"])))]
            if absent:
                raise FetchError("has a manifest in ollama_source_dir %s but not its blob %s"
                                 % (source_dir, absent[0]["digest"]))
            work.update(source_manifest=source_path, manifest=manifest)
        else:
            pull, registry, repository, tag, _copy = self.ollama_source(item)
            try:
                manifest = self.registry.manifest(registry, repository, tag,
                                                  accept=_registry.SCHEMA2)
            except _registry.NotFound as exc:
                raise FetchError("is not in %s: %s" % (registry, exc)) from None
            if not isinstance(manifest.get("layers"), list):
                raise FetchError("has no Ollama manifest in %s (no layers)" % registry)
            work.update(manifest=manifest, pull=pull)
        # Blobs an earlier item brings into the same models directory are counted once.
        planned = self._planned_blobs.setdefault(models, set())
        missing = [b for b in _missing_blobs(models, work["manifest"])
                   if b["digest"] not in planned]
        planned.update(b["digest"] for b in missing)
        entry["bytes"] = sum(b["size"] for b in missing)

    def plan_hf(self, item, entry, work):
        entry["filesystem"] = mount_point(item["hf_home"])
        if _hf.cached(item["hf_home"], item["name"], item["revision"])["complete"]:
            entry["present"] = True
            return
        listing = self.hub.listing(item["name"], item["revision"])
        names = [f["name"] for f in listing["files"]]
        self.hub.check_access(item["name"], listing["commit"],
                              "config.json" if "config.json" in names else names[0])
        work["listing"] = listing
        entry["bytes"] = sum(f["size"] for f in _hf.missing_files(
            item["hf_home"], item["name"], listing["files"]))

    # -- fetch --

    def fetch(self):
        """Fetch every missing item in order; FetchError at the first that fails."""
        for index, item in enumerate(self.items):
            entry = self.entries[index]
            if entry["present"]:
                continue
            fetchers = {"image": self.fetch_image, "ollama": self.fetch_ollama,
                        "huggingface": self.fetch_hf}
            self.changed = True  # from here on something may be written
            try:
                fetchers[item["kind"]](index, item, entry, self.work[index])
            except (FetchError, _registry.RegistryError, _hf.HubError, OSError) as exc:
                raise FetchError(_join(label(item), str(exc))) from None

    def fetch_image(self, index, item, entry, work):
        layers = work.get("layers") or {}
        seen, finished, downloaded = set(), set(), set()
        total = entry["bytes"]

        def on_podman_line(line):
            match = _PODMAN_BLOB_RE.match(line)
            if not match:
                return
            seen.add(match.group(1))
            self.progress.emit(index, item, "pulling %s: copying blob %d/%d (%s MiB in all)"
                               % (item["name"], len(seen), len(layers) or len(seen),
                                  _mib(total)), done_bytes=0, total_bytes=total)

        def on_line(line):
            match = _LAYER_LINE_RE.match(line)
            if not match:
                return
            short, status = match.groups()
            seen.add(short)
            if status == "Already exists":
                finished.add(short)
            elif status == "Download complete":
                downloaded.add(short)
            elif status == "Pull complete":
                finished.add(short)
                downloaded.add(short)
            else:
                return
            done = sum(layers.get(s, {}).get("size", 0) for s in downloaded)
            self.progress.emit(index, item, "pulling %s %d/%d layers %s/%s MiB"
                               % (item["name"], len(finished), len(layers) or len(seen),
                                  _mib(done), _mib(total)), done_bytes=done, total_bytes=total)

        self.progress.emit(index, item, "pulling %s (%s MiB)" % (item["name"], _mib(total)),
                           done_bytes=0, total_bytes=total)
        started = self.host.clock()
        env = dict(os.environ, LANG="C", LC_ALL="C")
        podman = self.host.engine == "podman"
        rc, err = self.host.stream([self.host.docker, "pull", item["name"]],
                                   on_podman_line if podman else on_line,
                                   self.deadline, self.host.clock, env, from_stderr=podman)
        if rc != 0:
            said = " ".join(line.strip() for line in err.strip().splitlines()[-3:])
            raise FetchError("%s pull failed (rc %d): %s"
                             % (self.host.engine, rc, said or "no message"))
        fetched = sum(layers.get(s, {}).get("size", 0) for s in downloaded)
        entry["fetched_bytes"] = fetched if layers else None
        self.progress.emit(index, item, "pulled %s (%s MiB in %d s)"
                           % (item["name"], _mib(fetched), self.host.clock() - started),
                           final=True, done_bytes=fetched, total_bytes=total)

    def fetch_ollama(self, index, item, entry, work):
        models = item["models_dir"]
        manifest = work["manifest"]
        missing = {b["digest"] for b in _missing_blobs(models, manifest)}
        started = self.host.clock()
        if work.get("source_manifest"):
            self.copy_ollama(index, item, entry, work)
        else:
            self.pull_ollama(index, item, entry, work)
        if _read_manifest(work["manifest_path"]) is None:
            raise FetchError("was pulled, yet %s is missing: is models_dir the server's "
                             "OLLAMA_MODELS?" % work["manifest_path"])
        fetched = sum(b["size"] for b in _blobs(manifest) if b["digest"] in missing
                      and os.path.isfile(os.path.join(models, "blobs", _blob_name(b["digest"]))))
        entry["fetched_bytes"] = fetched
        self.progress.emit(index, item, "pulled ollama model %s (%s MiB in %d s)"
                           % (item["name"], _mib(fetched), self.host.clock() - started),
                           final=True, done_bytes=fetched, total_bytes=entry["bytes"])

    def _http(self, url, body=None, timeout=HTTP_TIMEOUT_S):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        if data:
            request.add_header("Content-Type", "application/json")
        return self.host.local_opener.open(request, timeout=timeout)

    def wait_server(self, index, item, url):
        """Wait (SERVER_WAIT_S at most, and not past the deadline) for the Ollama server to
        answer /api/version, saying so in the progress (a server that does not start shows
        there, not as a silent wait; one that crashed ends the wait in minutes, not hours)."""
        reason = "no answer"
        started = self.host.clock()
        give_up = min(self.deadline, started + SERVER_WAIT_S)
        while True:
            try:
                with self._http(url + "/api/version", timeout=5) as answer:
                    answer.read()
                    return
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = _registry.reason_text(exc)
            if self.host.clock() >= give_up:
                raise FetchError("the Ollama server at %s did not answer within %d s: %s"
                                 % (url, give_up - started, reason))
            self.progress.emit(index, item, "waiting for the Ollama server at %s to pull %s "
                               "(%s)" % (url, item["name"], reason))
            self.host.sleep(1)

    def pull_ollama(self, index, item, entry, work):
        url = item.get("url")
        if not url:
            raise FetchError("needs the url of an Ollama server to pull with")
        pull, registry, _repository, _tag, copy = self.ollama_source(item)
        self.wait_server(index, item, url)
        insecure = bool(self.options["ollama_insecure"]) and registry != OLLAMA_REGISTRY
        body = {"model": pull, "insecure": insecure, "stream": True}
        blobs = {}
        self.progress.emit(index, item, "pulling ollama model %s from %s (%s MiB)"
                           % (item["name"], registry, _mib(entry["bytes"])), done_bytes=0,
                           total_bytes=entry["bytes"])
        success = False
        try:
            remaining = max(1, self.deadline - self.host.clock())
            with self._http(url + "/api/pull", body, timeout=min(300, remaining)) as answer:
                for raw in answer:
                    if self.host.clock() > self.deadline:
                        raise FetchError("the pull from %s did not finish in time" % registry)
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(line, dict):
                        continue
                    if line.get("error"):
                        raise FetchError("the pull from %s failed: %s"
                                         % (registry, line["error"]))
                    if line.get("digest") and isinstance(line.get("total"), int):
                        blobs[line["digest"]] = (line.get("completed") or 0, line["total"])
                        done = sum(c for c, _t in blobs.values())
                        total = sum(t for _c, t in blobs.values())
                        count = sum(1 for c, t in blobs.values() if c >= t)
                        self.progress.emit(
                            index, item, "pulling ollama model %s %d/%d blobs %s/%s MiB"
                            % (item["name"], count, len(_blobs(work["manifest"])), _mib(done),
                               _mib(total)), done_bytes=done, total_bytes=total)
                    success = success or line.get("status") == "success"
        except urllib.error.HTTPError as exc:
            raise FetchError("the pull from %s failed (HTTP %d): %s"
                             % (registry, exc.code, _registry.error_text(exc)[1])) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise FetchError("the pull from %s broke off: %s"
                             % (registry, _registry.reason_text(exc))) from None
        if not success:
            raise FetchError("the pull from %s ended without success" % registry)
        if copy:
            try:
                with self._http(url + "/api/copy", {"source": pull,
                                                    "destination": item["name"]}) as answer:
                    answer.read()
            except urllib.error.HTTPError as exc:
                raise FetchError("copying %s to %s failed (HTTP %d): %s"
                                 % (pull, item["name"], exc.code,
                                    _registry.error_text(exc)[1])) from None
            except (urllib.error.URLError, OSError) as exc:
                raise FetchError("copying %s to %s failed: %s"
                                 % (pull, item["name"], _registry.reason_text(exc))) from None

    def copy_ollama(self, index, item, entry, work):
        """Copy the model from ollama_source_dir: blobs checked, the manifest last."""
        source_dir, models = self.options["ollama_source_dir"], item["models_dir"]
        blob_dir = os.path.join(models, "blobs")
        os.makedirs(blob_dir, exist_ok=True)
        todo = _missing_blobs(models, work["manifest"])
        total, done, written = entry["bytes"], 0, []
        self.progress.emit(index, item, "copying ollama model %s from %s (%s MiB)"
                           % (item["name"], source_dir, _mib(total)), done_bytes=0,
                           total_bytes=total)
        for count, blob in enumerate(todo, 1):
            if self.host.clock() > self.deadline:
                raise FetchError("the copy from %s did not finish in time" % source_dir)
            name = _blob_name(blob["digest"])
            written.append(_copy_checked(os.path.join(source_dir, "blobs", name),
                                         os.path.join(blob_dir, name), blob["digest"]))
            done += blob["size"]
            self.progress.emit(index, item, "copying ollama model %s %d/%d blobs %s/%s MiB"
                               % (item["name"], count, len(todo), _mib(done), _mib(total)),
                               done_bytes=done, total_bytes=total)
        target = work["manifest_path"]
        created = _makedirs(os.path.dirname(target), models)
        with open(work["source_manifest"], "rb") as source:
            _hf.write_atomic(target, source.read())
        _own_like([blob_dir, *written, *created, target], models)

    def fetch_hf(self, index, item, entry, work):
        listing = work["listing"]
        total = sum(f["size"] for f in listing["files"])
        started = self.host.clock()

        def report(done, files):
            self.progress.emit(index, item, "downloading %s %d/%d files %s/%s MiB"
                               % (item["name"], files, len(listing["files"]), _mib(done),
                                  _mib(total)), done_bytes=done, total_bytes=total)

        self.progress.emit(index, item, "downloading %s (%s MiB)"
                           % (item["name"], _mib(entry["bytes"])), done_bytes=0,
                           total_bytes=total)
        hf_home = item["hf_home"]
        created = _makedirs(os.path.join(hf_home, "hub"), hf_home)
        fetched = self.hub.download(item["name"], item["revision"], hf_home, listing, report,
                                    self.deadline, self.host.clock)
        _own_like(created + _tree(_hf.repo_folder(hf_home, item["name"])), hf_home)
        entry["fetched_bytes"] = fetched
        self.progress.emit(index, item, "downloaded %s (%s MiB in %d s)"
                           % (item["name"], _mib(fetched), self.host.clock() - started),
                           final=True, done_bytes=fetched, total_bytes=total)

    # -- the result --

    def result(self):
        by_fs = {}
        for entry in self.entries:
            mount = entry["filesystem"]
            if mount is None:
                continue
            if mount not in by_fs:
                by_fs[mount] = {"bytes": 0, "free_bytes": free_bytes(mount)}
            by_fs[mount]["bytes"] += entry["bytes"] or 0
        warnings = [w["warning"] for w in self.work if w.get("warning")]
        return {"downloads": self.entries, "by_filesystem": by_fs,
                "total_bytes": sum(e["bytes"] or 0 for e in self.entries),
                "changed": self.changed, "warnings": warnings}


def _join(prefix, message):
    return "%s %s" % (prefix, message) if message.startswith("is ") else "%s: %s" % (
        prefix, message)


# ---- Ollama's layout -----------------------------------------------------------------------

def _read_manifest(path):
    """An Ollama manifest (a dict), or None when the file is not there or not a manifest."""
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("layers"), list) else None


def _blobs(manifest):
    """The config and the layers of a manifest: [{digest, size}], each digest once."""
    found, seen = [], set()
    for blob in [manifest.get("config") or {}, *manifest.get("layers", [])]:
        digest = blob.get("digest") if isinstance(blob, dict) else None
        if digest and digest not in seen and _DIGEST_RE.match(digest):
            seen.add(digest)
            found.append({"digest": digest, "size": int(blob.get("size") or 0)})
    return found


def _blob_name(digest):
    return digest.replace(":", "-")


def _missing_blobs(models, manifest):
    return [b for b in _blobs(manifest)
            if not os.path.isfile(os.path.join(models, "blobs", _blob_name(b["digest"])))]


def _makedirs(path, top):
    """Create ``path`` and its missing parents; returns those created (top first)."""
    created, probe = [], path
    while not os.path.isdir(probe) and probe not in ("", os.sep):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(path, exist_ok=True)
    return [p for p in reversed(created) if p.startswith(top)]


def _copy_checked(source, target, digest):
    """Copy a blob through a temporary file, checked against its sha256 digest."""
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
    sha = hashlib.sha256()
    try:
        with open(source, "rb") as src, os.fdopen(handle, "wb") as out:
            for chunk in iter(lambda: src.read(MIB), b""):
                sha.update(chunk)
                out.write(chunk)
        if "sha256:" + sha.hexdigest() != digest:
            raise FetchError("the blob %s in ollama_source_dir does not match its digest"
                             % source)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


# ---- the entry point -------------------------------------------------------------------------

def run(items, options, host, progress=None):
    """Plan, and with ``options["state"] == "present"`` fetch, the items.

    ``options``: state, ollama_registry, ollama_insecure, ollama_source_dir, hf_endpoint,
    hf_token (the token itself, never returned), timeout (seconds for the whole fetch).
    Returns (result, failure): the result as documented in the module, and None or the
    failure message (every problem of the plan, or the fetch that failed).
    """
    if options.get("state") not in STATES:
        raise ValueError("state must be one of %s; got: %r"
                         % (", ".join(STATES), options.get("state")))
    timeout = options.get("timeout")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise ValueError("timeout must be a number of seconds > 0; got: %r" % (timeout,))
    items = check_items(items)
    if host.engine == "podman":
        for item in items:
            if item["kind"] == "image":
                item["name"] = _registry.qualified(item["name"])
    job = _Run(items, options, host, progress)
    problems = job.plan()
    if problems:
        return job.result(), "; ".join(problems)
    if options["state"] == "present":
        try:
            job.fetch()
        except FetchError as exc:
            return job.result(), str(exc)
    return job.result(), None
