# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_registry: references as Docker normalises them, and manifests read from a fake
distribution registry on loopback (tests/support/download_fakes.py)."""

from __future__ import annotations

import base64
import json
import socket

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _registry
from tests.support.download_fakes import FakeRegistry, FakeStorage


@pytest.mark.parametrize("reference, expected", [
    ("ollama/ollama:latest",
     ("docker.io", "registry-1.docker.io", "ollama/ollama", "latest", None)),
    ("python:3.11", ("docker.io", "registry-1.docker.io", "library/python", "3.11", None)),
    ("python", ("docker.io", "registry-1.docker.io", "library/python", "latest", None)),
    ("docker.io/library/busybox:1", ("docker.io", "registry-1.docker.io", "library/busybox", "1",
                                     None)),
    ("index.docker.io/vllm/vllm-openai:v0.9.1",
     ("docker.io", "registry-1.docker.io", "vllm/vllm-openai", "v0.9.1", None)),
    ("quay.io/docling-project/docling-serve:latest",
     ("quay.io", "quay.io", "docling-project/docling-serve", "latest", None)),
    ("registry.lab:5000/quay.io/docling-project/docling-serve:latest",
     ("registry.lab:5000", "registry.lab:5000", "quay.io/docling-project/docling-serve",
      "latest", None)),
    ("host:5000/a/b:t", ("host:5000", "host:5000", "a/b", "t", None)),
    ("localhost/a", ("localhost", "localhost", "a", "latest", None)),
    ("ghcr.io/o/r@sha256:" + "a" * 64, ("ghcr.io", "ghcr.io", "o/r", None, "sha256:" + "a" * 64)),
    ("o/r:t@sha256:" + "b" * 64, ("docker.io", "registry-1.docker.io", "o/r", "t",
                                  "sha256:" + "b" * 64)),
])
def test_parse_reference(reference, expected):
    ref = _registry.parse_reference(reference)
    assert (ref["registry"], ref["api_host"], ref["repository"], ref["tag"],
            ref["digest"]) == expected


@pytest.mark.parametrize("reference, message", [
    ("", "must be a non-empty string"),
    ("Ollama/Ollama", "is not a repository name"),
    ("a/b:bad tag", "has a bad tag"),
    ("a/b@sha256:1234", "the digest must be sha256:<64 hex>"),
    ("a//b", "is not a repository name"),
])
def test_parse_reference_refuses(reference, message):
    with pytest.raises(ValueError, match=message):
        _registry.parse_reference(reference)


@pytest.mark.parametrize("reference, expected", [
    ("ollama/ollama:0.6.2", "docker.io/ollama/ollama:0.6.2"),
    ("python", "docker.io/library/python:latest"),
    ("index.docker.io/vllm/vllm-openai:v0.9.1", "docker.io/vllm/vllm-openai:v0.9.1"),
    ("registry.lab:5000/ollama/ollama:latest", "registry.lab:5000/ollama/ollama:latest"),
    ("localhost/a", "localhost/a:latest"),
    ("o/r:t@sha256:" + "b" * 64, "docker.io/o/r:t@sha256:" + "b" * 64),
    ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io/o/r@sha256:" + "a" * 64),
])
def test_qualified(reference, expected):
    assert _registry.qualified(reference) == expected


def entry(os_name, arch, variant=None):
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"digest": "sha256:%s-%s" % (arch, variant), "platform": platform}


def test_choose_platform():
    index = [entry("unknown", "unknown"), entry("linux", "arm", "v7"),
             entry("linux", "arm64", "v8"), entry("linux", "amd64")]
    assert _registry.choose_platform(index, ("linux", "amd64"))["digest"] == "sha256:amd64-None"
    assert _registry.choose_platform(index, ("linux", "arm64"))["digest"] == "sha256:arm64-v8"
    with pytest.raises(_registry.NotFound, match=r"no linux/s390x image \(it has: linux/arm, "
                       r"linux/arm64, linux/amd64\)"):
        _registry.choose_platform(index, ("linux", "s390x"))
    assert _registry.host_platform("x86_64") == ("linux", "amd64")
    assert _registry.host_platform("aarch64") == ("linux", "arm64")


def write_config(tmp_path, doc):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return str(path)


def auth(user, password):
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def test_docker_login(tmp_path):
    config = write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": auth("hubuser", "pw:with:colons")},
        "registry.lab:5000": {"auth": auth("lab", "secret")},
        "https://ghcr.io": {},
    }, "credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud"}})
    assert _registry.docker_login("docker.io", config) == ("hubuser", "pw:with:colons")
    assert _registry.docker_login("registry.lab:5000", config) == ("lab", "secret")
    assert _registry.docker_login("ghcr.io", config) == "helper"
    assert _registry.docker_login("gcr.io", config) == "helper"
    # a credsStore answers for every registry (docker_login writes no auths entry there)
    assert _registry.docker_login("quay.io", config) == "helper"
    plain = write_config(tmp_path, {"auths": {"registry.lab:5000": {"auth": auth("l", "s")}}})
    assert _registry.docker_login("quay.io", plain) is None
    assert _registry.docker_login("quay.io", str(tmp_path / "missing.json")) is None


def client(registry, login=None, machine="x86_64", insecure=True):
    return _registry.Client(insecure={registry.host} if insecure else (), timeout=5,
                            login=login or (lambda host: None), machine=machine)


@pytest.mark.parametrize("oci, index", [(False, False), (True, False), (False, True),
                                        (True, True)])
def test_image_reads_layers_and_diff_ids(oci, index):
    with FakeRegistry() as registry:
        made = registry.add_image("ollama/ollama", "latest", [b"layer-one", b"layer-two"],
                                  oci=oci, index=index, archs=("arm64", "amd64"))
        image = client(registry).image("%s/ollama/ollama:latest" % registry.host)
    assert image["layers"] == [{"digest": d["digest"], "size": d["size"]}
                               for d in made["layers"]]
    assert image["diff_ids"] == [d["diff_id"] for d in made["layers"]]
    assert image["registry"] == registry.host


def test_index_resolves_to_the_host_architecture():
    with FakeRegistry() as registry:
        registry.add_image("a/b", "t", [b"x"], index=True, archs=("amd64", "arm64"))
        arm = client(registry, machine="aarch64").manifest(registry.host, "a/b", "t")
        amd = client(registry, machine="x86_64").manifest(registry.host, "a/b", "t")
        configs = {json.loads(registry.blobs[m["config"]["digest"]])["architecture"]
                   for m in (arm, amd)}
    assert configs == {"arm64", "amd64"}


def test_bearer_token_flow_anonymous_then_cached():
    with FakeRegistry(auth="anonymous") as registry:
        registry.add_image("a/b", "t", [b"x"])
        reader = client(registry)
        reader.image("%s/a/b:t" % registry.host)
        reader.image("%s/a/b:t" % registry.host)
    assert len(registry.seen("GET", "/token")) == 1
    token_request = registry.seen("GET", "/token")[0]
    assert "scope=repository%3Aa%2Fb%3Apull" in token_request["path"]
    assert "service=fake-registry" in token_request["path"]
    assert "Authorization" not in token_request["headers"]
    manifests = registry.seen("GET", "/manifests/")
    assert manifests[0]["headers"].get("Authorization") is None
    assert all(r["headers"]["Authorization"].startswith("Bearer tok-") for r in manifests[1:])
    assert "application/vnd.oci.image.index.v1+json" in manifests[0]["headers"]["Accept"]


def test_bearer_token_with_docker_login_credentials():
    with FakeRegistry(auth="basic", users={"lab": "secret"}) as registry:
        registry.add_image("a/b", "t", [b"x"])
        client(registry, login=lambda host: ("lab", "secret")).image("%s/a/b:t" % registry.host)
        sent = registry.seen("GET", "/token")[0]["headers"]["Authorization"]
        assert sent == "Basic " + auth("lab", "secret")
        with pytest.raises(_registry.AccessDenied, match="refused a token for a/b") as denied:
            client(registry).image("%s/a/b:t" % registry.host)
        assert denied.value.has_login is False
        with pytest.raises(_registry.AccessDenied) as helper:
            client(registry, login=lambda host: "helper").image("%s/a/b:t" % registry.host)
        assert helper.value.has_login is True


def test_not_found_and_unreachable():
    with FakeRegistry() as registry:
        with pytest.raises(_registry.NotFound, match="manifest unknown") as missing:
            client(registry).manifest(registry.host, "library/nothing", "1b")
        assert (missing.value.status, missing.value.code) == (404, "MANIFEST_UNKNOWN")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = "127.0.0.1:%d" % port
    reader = _registry.Client(insecure={dead}, timeout=5, login=lambda host: None)
    with pytest.raises(_registry.RegistryError, match="cannot reach http://%s/v2/a/b/manifests/t"
                       % dead):
        reader.manifest(dead, "a/b", "t")


def test_https_unless_insecure():
    with FakeRegistry() as registry:
        registry.add_image("a/b", "t", [b"x"])
        with pytest.raises(_registry.RegistryError, match="https://%s/v2/" % registry.host):
            client(registry, insecure=False).manifest(registry.host, "a/b", "t")


def test_redirect_keeps_authorization_only_on_the_same_host():
    with FakeStorage() as storage, \
            FakeRegistry(auth="anonymous", redirect_to=storage) as registry:
        registry.add_image("a/b", "t", [b"x"])
        client(registry).image("%s/a/b:t" % registry.host)  # storage refuses a credential
        assert storage.seen("GET", "/storage/")
    with FakeRegistry(auth="anonymous") as registry:
        registry.redirect_to = registry
        registry.add_image("a/b", "t", [b"x"])
        client(registry).image("%s/a/b:t" % registry.host)
        redirected = registry.seen("GET", "/storage/")
        assert redirected and redirected[0]["headers"]["Authorization"].startswith("Bearer ")


def test_blob_and_manifest_digests_are_checked():
    with FakeRegistry() as registry:
        made = registry.add_image("a/b", "t", [b"x"])
        config = next(d for d, data in registry.blobs.items() if b"rootfs" in data)
        registry.blobs[config] = b'{"rootfs": {"diff_ids": []}}'
        with pytest.raises(_registry.RegistryError, match="does not match its digest"):
            client(registry).image("%s/a/b:t" % registry.host)
        assert made["layers"]


def test_schema1_is_refused():
    with FakeRegistry() as registry:
        registry.add_manifest("a/b", ["old"],
                              "application/vnd.docker.distribution.manifest.v1+json",
                              {"schemaVersion": 1, "fsLayers": []})
        with pytest.raises(_registry.RegistryError, match="schema 1"):
            client(registry).image("%s/a/b:old" % registry.host)


def test_ollama_manifest():
    with FakeRegistry() as registry:
        doc = registry.add_ollama("library/llama3.2", "3b")
        reader = client(registry)
        got = reader.manifest(registry.host, "library/llama3.2", "3b", accept=_registry.SCHEMA2)
    assert got["layers"] == doc["layers"]
    assert registry.seen("GET")[0]["headers"]["Accept"] == _registry.SCHEMA2
