# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: a small client of the OCI distribution API.

Not a public API: the leading underscore says so. Standard library only (urllib), no
AnsibleModule: it runs on the managed host inside gpufleet.inference.downloads, which reads
image and Ollama model manifests with it to tell what a pull would fetch. It never pulls an
image itself (``docker pull`` does, with the CLI's logins).

Vocabulary
  reference   what ``docker pull`` takes: ``[registry/]repository[:tag][@digest]``.
  registry    the host[:port] of the reference as Docker normalises it: ``docker.io`` for
              Docker Hub (its API answers at ``registry-1.docker.io``).
  manifest    a schema-2 or OCI image manifest: a config blob and layers (digest, size).
  index       a manifest list or OCI index: one manifest per platform.

Choices (sources: the distribution spec, ``docs/spec/api.md`` and ``docs/spec/auth/token.md``
of distribution/distribution; distribution/reference ``normalize.go`` for the names)
  - References are normalised like Docker: the first path component is a registry only when
    it holds a ``.`` or a ``:`` or is ``localhost``; Docker Hub names without a ``/`` are in
    ``library/``; no tag and no digest means ``latest``.
  - One Accept header names the four manifest types; an index is resolved to the manifest
    of this host's platform (``linux`` and the machine's architecture, as the engine does).
  - Authentication is the registry token flow: a ``401`` with ``WWW-Authenticate: Bearer
    realm=...,service=...,scope=...`` is answered by asking the realm for a token (with the
    Basic credentials ``docker login`` stored in ``config.json`` when there are any, else
    anonymously) and retrying once. A ``Basic`` challenge is answered with those
    credentials only.
  - The Authorization header follows a redirect only to the same host: blob downloads are
    redirected to storage (S3, a CDN) whose signed URLs refuse a second credential.
  - ``insecure`` registries are spoken to in plain HTTP (what the engine does for an
    ``insecure-registries`` entry that has no TLS); every other one in HTTPS with the
    system's certificate store.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import platform
import re
import urllib.error
import urllib.parse
import urllib.request

MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPES = (MANIFEST_LIST, OCI_INDEX)
ACCEPT = ", ".join((OCI_INDEX, MANIFEST_LIST, OCI_MANIFEST, SCHEMA2))

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
# The key ``docker login`` uses for Docker Hub in config.json.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"

# The distribution spec lets registries refuse manifests over 4 MiB; configs are small too.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(r"^%s(?:/%s)*$" % (_COMPONENT, _COMPONENT))
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}\Z")
_CHALLENGE_PARAM_RE = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')
_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
             "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class RegistryError(Exception):
    """A registry that cannot be read; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class NotFound(RegistryError):
    """The registry answered that the repository, tag or blob does not exist (404)."""


class AccessDenied(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we have.

    ``has_login`` is true when ``docker login`` left credentials for the registry that this
    client cannot use (a credential helper), so ``docker pull`` may still succeed."""

    def __init__(self, message, status=None, code=None, has_login=False):
        super().__init__(message, status, code)
        self.has_login = has_login


# ---- references -------------------------------------------------------------------------

def parse_reference(reference):
    """``{registry, api_host, repository, tag, digest}`` of an image reference (normalised
    like Docker's); ValueError naming the reference when it is not one."""
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError("an image reference must be a non-empty string; got: %r"
                         % (reference,))
    rest, _at, digest = reference.strip().partition("@")
    if _at and not _DIGEST_RE.match(digest):
        raise ValueError("image reference %s: the digest must be sha256:<64 hex>; got: %s"
                         % (reference, digest))
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise ValueError("image reference %s has a bad tag: %r" % (reference, tag))
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry = first
    else:
        registry, path = DOCKER_HUB, rest
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = "library/" + path
    if not _REPOSITORY_RE.match(path):
        raise ValueError("image reference %s: %r is not a repository name (lower case "
                         "letters, digits and . _ - separators)" % (reference, path))
    if tag is None and not digest:
        tag = "latest"
    return {"registry": registry, "api_host": api_host(registry), "repository": path,
            "tag": tag, "digest": digest or None}


def qualified(reference):
    """The fully qualified form of an image reference: ``docker.io/library/python:3.11`` for
    ``python:3.11``, as Docker normalises it. Podman resolves a short name through
    ``unqualified-search-registries`` (and refuses one it would have to ask about without a
    terminal), so what Podman pulls and runs is named in full."""
    ref = parse_reference(reference)
    text = "%s/%s" % (ref["registry"], ref["repository"])
    if ref["tag"]:
        text += ":" + ref["tag"]
    if ref["digest"]:
        text += "@" + ref["digest"]
    return text


def api_host(registry):
    """The host[:port] whose /v2/ API serves a registry (Docker Hub's is not docker.io)."""
    return DOCKER_HUB_API if registry in DOCKER_HUB_ALIASES else registry


def host_platform(machine=None):
    """(os, architecture) the engine of this host pulls: linux and the machine's arch."""
    machine = (machine or platform.machine() or "x86_64").lower()
    return "linux", _MACHINES.get(machine, machine)


def choose_platform(manifests, wanted):
    """The index entry for ``wanted`` (os, architecture); RegistryError listing what the
    index has otherwise. Attestation entries (``unknown/unknown``) never match."""
    want_os, want_arch = wanted
    offered = []
    for entry in manifests or ():
        plat = entry.get("platform") or {}
        entry_os, entry_arch = plat.get("os"), plat.get("architecture")
        if (entry_os, entry_arch) == (want_os, want_arch):
            variant = plat.get("variant")
            if want_arch != "arm64" or variant in (None, "", "v8"):
                return entry
        if entry_os and entry_os != "unknown":
            offered.append("%s/%s" % (entry_os, entry_arch))
    raise NotFound("the index has no %s/%s image (it has: %s)"
                   % (want_os, want_arch, ", ".join(offered) or "none"))


# ---- HTTP -------------------------------------------------------------------------------

class SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, keeping the Authorization header only on the same host:port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth:
            old_host = urllib.parse.urlsplit(req.full_url).netloc
            if urllib.parse.urlsplit(newurl).netloc == old_host:
                new.add_unredirected_header("Authorization", auth)
        return new


def build_opener():
    """A urllib opener that honours proxies from the environment and the redirect rule."""
    return urllib.request.build_opener(SameHostAuthRedirect)


def read_limited(response, limit, what):
    """The body, at most ``limit`` bytes; RegistryError when it is longer."""
    body = response.read(limit + 1)
    if len(body) > limit:
        raise RegistryError("%s is larger than %d bytes" % (what, limit))
    return body


def error_text(exc):
    """What an HTTPError's body says (the distribution error list, Ollama's or the hub's
    ``{"error": ...}``), else its reason."""
    try:
        body = exc.read(MAX_ERROR_BYTES)
    except Exception:  # the body may be gone already
        body = b""
    code = None
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"]:
        first = doc["errors"][0] if isinstance(doc["errors"][0], dict) else {}
        code = first.get("code")
        text = "; ".join(str(e.get("message") or e.get("code"))
                         for e in doc["errors"] if isinstance(e, dict))
    elif isinstance(doc, dict) and doc.get("error"):
        text = str(doc["error"])
    return code, (text[:500] or str(exc.reason))


def reason_text(exc):
    """A connection failure in a few words (``[Errno 111] Connection refused``...)."""
    reason = getattr(exc, "reason", exc)
    return str(reason) or type(reason).__name__


# ---- docker login's credentials --------------------------------------------------------

def docker_login(registry, config_path=None):
    """(user, password) that ``docker login`` stored for ``registry`` in config.json, or
    ``"helper"`` when a credential helper keeps them (this client cannot ask it), or None."""
    if config_path is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"),
                                                               ".docker")
        config_path = os.path.join(base, "config.json")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    keys = (DOCKER_HUB_AUTH_KEY, DOCKER_HUB) if registry == DOCKER_HUB else (registry,)
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    for key, entry in auths.items():
        host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if key not in keys and host not in keys:
            continue
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if sep:
                return user, password
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    # With a credsStore the Docker CLI asks the store for every registry; community.docker's
    # docker_login stores there without an auths entry, so the entry cannot be required.
    if any(key in helpers for key in keys) or config.get("credsStore"):
        return "helper"
    return None


# ---- the client -------------------------------------------------------------------------

class Client:
    """Reads manifests and small blobs of one or more registries.

    ``insecure``: registries (host[:port]) spoken to in plain HTTP. ``login(registry)``
    returns ``docker_login``'s answer (injected by tests). ``opener`` is a urllib opener.
    """

    def __init__(self, insecure=(), timeout=30, login=docker_login, opener=None,
                 machine=None):
        self.insecure = set(insecure)
        self.timeout = timeout
        self.login = login
        self.opener = opener or build_opener()
        self.platform = host_platform(machine)
        self._auth = {}  # (api host, repository) -> Authorization header value

    # -- requests --

    def url(self, registry, path):
        scheme = "http" if registry in self.insecure else "https"
        return "%s://%s/v2/%s" % (scheme, api_host(registry), path)

    def _send(self, url, accept=None, auth=None, method="GET"):
        request = urllib.request.Request(url, method=method)
        request.add_header("User-Agent", "gpufleet.inference")
        if accept:
            request.add_header("Accept", accept)
        if auth:
            request.add_unredirected_header("Authorization", auth)
        return self.opener.open(request, timeout=self.timeout)

    def _token(self, registry, repository, challenge, credentials):
        """The Authorization value a Bearer challenge grants; AccessDenied when refused."""
        params = dict(_CHALLENGE_PARAM_RE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise RegistryError("%s sent a Bearer challenge without a realm: %s"
                                % (registry, challenge))
        query = {"scope": params.get("scope") or "repository:%s:pull" % repository}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        basic = None
        if isinstance(credentials, tuple):
            basic = "Basic " + base64.b64encode(("%s:%s" % credentials).encode()).decode()
        try:
            with self._send(url, auth=basic) as answer:
                doc = json.loads(read_limited(answer, MAX_ERROR_BYTES, "the token answer"))
        except urllib.error.HTTPError as exc:
            code, text = error_text(exc)
            raise AccessDenied("%s refused a token for %s (HTTP %d): %s"
                               % (realm, repository, exc.code, text), exc.code, code,
                               credentials == "helper") from None
        except urllib.error.URLError as exc:
            raise RegistryError("cannot reach %s: %s" % (realm, reason_text(exc))) from None
        except ValueError:
            raise RegistryError("%s did not answer a token in JSON" % realm) from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not token:
            raise RegistryError("%s answered no token" % realm)
        return "Bearer " + token

    def fetch(self, registry, repository, path, accept=None, limit=MAX_MANIFEST_BYTES):
        """(body, headers) of ``GET /v2/<repository>/<path>``, after the token flow."""
        url = self.url(registry, "%s/%s" % (repository, path))
        key = (api_host(registry), repository)
        credentials = None
        for attempt in (1, 2):
            try:
                with self._send(url, accept, self._auth.get(key)) as answer:
                    return read_limited(answer, limit, url), answer.headers
            except urllib.error.HTTPError as exc:
                code, text = error_text(exc)
                if exc.code == 404:
                    raise NotFound(text, 404, code) from None
                if exc.code in (401, 403) and attempt == 1:
                    challenge = exc.headers.get("WWW-Authenticate") or ""
                    credentials = self.login(registry)
                    scheme = challenge.split(" ", 1)[0].lower()
                    if scheme == "bearer":
                        self._auth[key] = self._token(registry, repository, challenge,
                                                      credentials)
                        continue
                    if scheme == "basic" and isinstance(credentials, tuple):
                        self._auth[key] = "Basic " + base64.b64encode(
                            ("%s:%s" % credentials).encode()).decode()
                        continue
                if exc.code in (401, 403):
                    raise AccessDenied("pull access denied for %s/%s (HTTP %d): %s"
                                       % (registry, repository, exc.code, text), exc.code,
                                       code, credentials == "helper") from None
                raise RegistryError("%s answered HTTP %d: %s" % (url, exc.code, text),
                                    exc.code, code) from None
            except urllib.error.URLError as exc:
                raise RegistryError("cannot reach %s: %s" % (url, reason_text(exc))) from None
            except (OSError, http.client.HTTPException) as exc:  # a reset, a timeout
                raise RegistryError("reading %s failed: %s" % (url, exc)) from None
        raise RegistryError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- manifests --

    def manifest(self, registry, repository, reference, accept=ACCEPT):
        """The manifest (a dict) of ``reference`` (a tag or a digest); an index is resolved
        to this host's platform. Adds ``_digest`` (sha256 of the manifest's bytes)."""
        body, headers = self.fetch(registry, repository, "manifests/" + reference, accept)
        doc = self._manifest_doc(body, registry, repository, reference)
        media_type = doc.get("mediaType") or (headers.get("Content-Type") or "").split(";")[0]
        if media_type in INDEX_TYPES or "manifests" in doc:
            entry = choose_platform(doc.get("manifests"), self.platform)
            digest = entry.get("digest") or ""
            body, _headers = self.fetch(registry, repository, "manifests/" + digest, accept)
            if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                raise RegistryError("the manifest %s of %s/%s does not match its digest"
                                    % (digest, registry, repository))
            doc = self._manifest_doc(body, registry, repository, digest)
        doc["_digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
        return doc

    @staticmethod
    def _manifest_doc(body, registry, repository, reference):
        try:
            doc = json.loads(body)
        except ValueError:
            raise RegistryError("the manifest %s of %s/%s is not JSON"
                                % (reference, registry, repository)) from None
        if not isinstance(doc, dict):
            raise RegistryError("the manifest %s of %s/%s is not a JSON object"
                                % (reference, registry, repository))
        if doc.get("schemaVersion") == 1:
            raise RegistryError("the manifest %s of %s/%s is schema 1, which Docker no longer "
                                "pulls" % (reference, registry, repository))
        return doc

    def blob(self, registry, repository, digest, limit=MAX_CONFIG_BYTES):
        """A small blob's bytes, checked against its digest."""
        body, _headers = self.fetch(registry, repository, "blobs/" + digest, None, limit)
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError("the blob %s of %s/%s does not match its digest"
                                % (digest, registry, repository))
        return body

    def image(self, reference):
        """What pulling ``reference`` fetches: ``{registry, repository, layers: [{digest,
        size}], diff_ids, config: {digest, size}}``, the layers in the manifest's order."""
        ref = parse_reference(reference)
        manifest = self.manifest(ref["registry"], ref["repository"],
                                 ref["digest"] or ref["tag"])
        config = manifest.get("config") or {}
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not config.get("digest"):
            raise RegistryError("the manifest of %s has no config or no layers" % reference)
        layers = [{"digest": layer.get("digest"), "size": int(layer.get("size") or 0)}
                  for layer in layers if isinstance(layer, dict)]
        try:
            doc = json.loads(self.blob(ref["registry"], ref["repository"], config["digest"]))
            diff_ids = list(doc["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise RegistryError("the image config of %s has no rootfs.diff_ids"
                                % reference) from None
        if len(diff_ids) != len(layers):
            raise RegistryError("the image config of %s lists %d layers, its manifest %d"
                                % (reference, len(diff_ids), len(layers)))
        return {"registry": ref["registry"], "repository": ref["repository"],
                "layers": layers, "diff_ids": diff_ids,
                "config": {"digest": config["digest"], "size": int(config.get("size") or 0)}}
