# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's registry content and Hugging Face hub, without a lab (lab/README.md, "Registry
and hub").

The Ollama models lab/lab.py pushes have the manifest and config shapes of Ollama's registry
(ollama/ollama server/images.go, types/model/config.go); the hub (lab/servers/hf_hub.py),
run here on loopback over a tree lab.py generates from lab/content.yml, answers with the real
hub's status codes, X-Error-Code headers and messages (huggingface_hub utils/_http.py).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import struct
import threading
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[2] / "lab"


def _load(name, path):
    # Under names of their own: a plain "import lab" could find the tests/lab folder.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = _load("gpufleet_lab_cli_registry", LAB / "lab.py")
hf_hub = _load("gpufleet_lab_hf_hub", LAB / "servers" / "hf_hub.py")

CONTENT = lab.load_content()
TOKEN = "hf_lablabLABlab0123456789"
NO_ACCESS = "hf_lablabNOACCESS98765432"
GATED = "meta-llama/Llama-3.2-3B-Instruct"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def model_spec(name):
    return next(m for m in CONTENT["ollama_models"] if m["name"] == name)


# --- Ollama models -----------------------------------------------------------------------------


def test_content_has_the_models_and_repositories_the_collection_and_tests_use():
    names = {m["name"] for m in CONTENT["ollama_models"]}
    names |= {a for m in CONTENT["ollama_models"] for a in m.get("also") or []}
    assert {"llama3.2:3b", "llama3.2:1b", "qwen2.5:1.5b", "qwen2.5:7b", "moondream:latest",
            "tinyllama:latest", "llama3.2:latest", "qwen2.5:latest"} <= names
    assert "nope:1b" not in names  # tests/lab use it as the unknown model
    repos = {r["id"]: r for r in CONTENT["hf_repos"]}
    assert {"Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "facebook/opt-125m",
            GATED} <= set(repos)
    assert repos[GATED]["gated"] == "manual"
    assert CONTENT["hf_tokens"][TOKEN]["gated"] == [GATED]


def test_ollama_manifest_has_the_shape_of_ollamas_registry():
    manifest, blobs = lab.ollama_model(model_spec("llama3.2:3b"), CONTENT)
    doc = json.loads(manifest)
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [layer["mediaType"] for layer in doc["layers"]] == [
        "application/vnd.ollama.image.model",
        "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.license",
        "application/vnd.ollama.image.params",
    ]
    # Every descriptor names a blob that is pushed with it, by digest and size.
    described = [doc["config"], *doc["layers"]]
    assert [(d["digest"], d["size"]) for d in described] == [
        (sha256(data), len(data)) for _media, data in blobs
    ]
    config = json.loads(blobs[0][1])
    assert config == {
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": "3.2B", "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in doc["layers"]]},
    }
    model = blobs[1][1]
    assert model[:4] == b"GGUF" and struct.unpack("<I", model[4:8]) == (3,)
    assert b"general.architecture" in model[:512] and b"llama" in model[:512]
    assert len(model) == 6 * lab.MIB
    assert json.loads(blobs[4][1])["stop"][-1] == "<|eot_id|>"
    assert "<|start_header_id|>" in blobs[2][1].decode()


def test_ollama_model_is_deterministic_and_differs_per_model():
    first = lab.ollama_model(model_spec("qwen2.5:7b"), CONTENT)
    again = lab.ollama_model(model_spec("qwen2.5:7b"), CONTENT)
    other = lab.ollama_model(model_spec("qwen2.5:1.5b"), CONTENT)
    assert first == again
    assert sha256(first[0]) != sha256(other[0])
    assert first[1][1][1] != other[1][1][1]


def test_vision_model_has_a_projector_layer():
    manifest, blobs = lab.ollama_model(model_spec("moondream:latest"), CONTENT)
    media = [layer["mediaType"] for layer in json.loads(manifest)["layers"]]
    assert media[:2] == ["application/vnd.ollama.image.model",
                         "application/vnd.ollama.image.projector"]
    assert json.loads(blobs[0][1])["model_families"] == ["phi2", "clip"]


@pytest.mark.parametrize("name, repo, tag", [
    ("llama3.2:3b", "library/llama3.2", "3b"),
    ("tinyllama", "library/tinyllama", "latest"),
    ("someone/model:q4", "someone/model", "q4"),
])
def test_ollama_repository(name, repo, tag):
    assert lab.ollama_repository(name) == (repo, tag)


def test_every_model_of_the_content_builds_small():
    for spec in CONTENT["ollama_models"]:
        manifest, blobs = lab.ollama_model(spec, CONTENT)
        assert sum(len(data) for _m, data in blobs) < 16 * lab.MIB, spec["name"]
        assert json.loads(manifest)["layers"][0]["size"] == int(spec["size_mib"] * lab.MIB)


# --- Hugging Face repositories -------------------------------------------------------------------


def test_safetensors_file_is_valid():
    data = lab.safetensors_file("x", 3 * lab.MIB, 768, "F16")
    (length,) = struct.unpack("<Q", data[:8])
    assert length % 8 == 0
    header = json.loads(data[8:8 + length])
    tensor = header["model.embed_tokens.weight"]
    assert tensor["dtype"] == "F16" and tensor["shape"][1] == 768
    start, end = tensor["data_offsets"]
    assert start == 0 and end == len(data) - 8 - length == tensor["shape"][0] * 768 * 2


def test_repository_files_carry_the_real_config():
    spec = next(r for r in CONTENT["hf_repos"] if r["id"] == "Qwen/Qwen2.5-1.5B-Instruct")
    files = lab.hf_repo_files(spec, CONTENT)
    assert set(files) == {".gitattributes", "README.md", "config.json", "generation_config.json",
                          "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
    config = json.loads(files["config.json"])
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["hidden_size"] == 1536
    tokenizer = json.loads(files["tokenizer.json"])
    assert tokenizer["model"]["type"] == "BPE" and len(tokenizer["model"]["vocab"]) == 256
    assert [t["content"] for t in tokenizer["added_tokens"]][1] == "<|im_start|>"
    assert json.loads(files["tokenizer_config.json"])["eos_token"] == "<|im_end|>"
    assert "*.safetensors" in hf_hub.lfs_patterns(files[".gitattributes"].decode())


# --- the hub, on loopback ------------------------------------------------------------------------


BLOB = b"a registry blob"
BLOB_PATH = "docker/registry/v2/blobs/sha256/%s/%s/data" % (
    hashlib.sha256(BLOB).hexdigest()[:2], hashlib.sha256(BLOB).hexdigest())


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root, _digest = lab.write_hub_tree(CONTENT, build=str(tmp_path_factory.mktemp("build")))
    storage = tmp_path_factory.mktemp("registry")
    (storage / BLOB_PATH).parent.mkdir(parents=True)
    (storage / BLOB_PATH).write_bytes(BLOB)
    (storage.parent / "secret").write_text("outside")
    server = hf_hub.make_server(root, "127.0.0.1", 0, storage=str(storage))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], root
    server.shutdown()
    server.server_close()


def call(port, path, method="GET", token=None, host=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = "Bearer " + token
    if host:
        sent["Host"] = host
    conn.request(method, path, headers=sent)
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, answer.headers, body


def test_model_info(hub):
    port, _root = hub
    status, _headers, body = call(port, "/api/models/Qwen/Qwen2.5-1.5B-Instruct")
    info = json.loads(body)
    assert status == 200
    assert info["id"] == "Qwen/Qwen2.5-1.5B-Instruct" and len(info["sha"]) == 40
    assert info["private"] is False and info["gated"] is False and info["disabled"] is False
    assert {"rfilename": "model.safetensors"} in info["siblings"]
    assert info["config"]["model_type"] == "qwen2"
    # The gated repository's info is public; its files are not.
    status, _headers, body = call(port, "/api/models/%s/revision/main" % GATED)
    assert status == 200 and json.loads(body)["gated"] == "manual"


def test_model_info_with_blobs_and_at_a_revision(hub):
    port, _root = hub
    sha = json.loads(call(port, "/api/models/facebook/opt-125m")[2])["sha"]
    for revision in ("main", sha):
        status, _h, body = call(port, "/api/models/facebook/opt-125m/revision/%s?blobs=true"
                                % revision)
        assert status == 200
        siblings = {s["rfilename"]: s for s in json.loads(body)["siblings"]}
        weights = siblings["model.safetensors"]
        assert weights["size"] == weights["lfs"]["size"] > lab.MIB
        assert len(weights["lfs"]["sha256"]) == 64 and weights["lfs"]["pointerSize"] > 100
        assert "lfs" not in siblings["config.json"] and len(siblings["config.json"]["blobId"]) == 40


def test_resolve_a_regular_file(hub):
    port, root = hub
    data = (Path(root) / "files" / "facebook" / "opt-125m" / "config.json").read_bytes()
    status, headers, body = call(port, "/facebook/opt-125m/resolve/main/config.json")
    assert status == 200 and body == data
    assert headers["ETag"] == '"%s"' % hf_hub.git_blob_sha1(data)
    assert len(headers["X-Repo-Commit"]) == 40 and headers["Content-Length"] == str(len(data))
    status, headers, body = call(port, "/facebook/opt-125m/resolve/main/config.json", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(data))


def test_resolve_an_lfs_file_redirects_to_the_cdn_on_another_origin(hub):
    port, root = hub
    data = (Path(root) / "files" / "facebook" / "opt-125m" / "model.safetensors").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    status, headers, _body = call(port, "/facebook/opt-125m/resolve/main/model.safetensors",
                                  "HEAD", host="127.0.0.1:%d" % port)
    assert status == 302
    assert headers["X-Linked-Etag"] == '"%s"' % digest
    assert headers["X-Linked-Size"] == str(len(data))
    assert len(headers["X-Repo-Commit"]) == 40
    assert headers["Location"] == "http://localhost:%d/cdn-lfs/%s" % (port, digest)
    _s, headers, _b = call(port, "/facebook/opt-125m/resolve/main/model.safetensors",
                           host="hub.lab:8080")
    assert headers["Location"].startswith("http://cdn-lfs.lab:8080/cdn-lfs/")
    status, headers, body = call(port, "/cdn-lfs/" + digest)
    assert status == 200 and body == data and headers["ETag"] == '"%s"' % digest
    # A resumed download (what an interrupted one asks for).
    status, headers, body = call(port, "/cdn-lfs/" + digest, headers={"Range": "bytes=100-"})
    assert status == 206 and body == data[100:]
    assert headers["Content-Range"] == "bytes 100-%d/%d" % (len(data) - 1, len(data))
    status, _h, _b = call(port, "/cdn-lfs/" + digest,
                          headers={"Range": "bytes=%d-" % (len(data) + 5)})
    assert status == 416


@pytest.mark.parametrize("path, token, status, code, message", [
    ("/nope/nope/resolve/main/config.json", None, 401, "RepoNotFound",
     "Invalid username or password."),
    ("/nope/nope/resolve/main/config.json", TOKEN, 404, "RepoNotFound", "Repository not found"),
    ("/api/models/nope/nope", None, 401, "RepoNotFound", "Invalid username or password."),
    ("/facebook/opt-125m/resolve/v9.9/config.json", None, 404, "RevisionNotFound",
     "Invalid rev id: v9.9"),
    ("/api/models/facebook/opt-125m/revision/v9.9", None, 404, "RevisionNotFound",
     "Invalid rev id: v9.9"),
    ("/facebook/opt-125m/resolve/main/nope.bin", None, 404, "EntryNotFound", "Entry not found"),
    ("/%s/resolve/main/config.json" % GATED, None, 401, "GatedRepo",
     "Access to model %s is restricted. You must have access to it and be authenticated to "
     "access it. Please log in." % GATED),
    ("/%s/resolve/main/config.json" % GATED, NO_ACCESS, 403, "GatedRepo",
     "Access to model %s is restricted and you are not in the authorized list. Visit "
     "http://hub.lab:8080/%s to ask for access." % (GATED, GATED)),
    ("/facebook/opt-125m/resolve/main/config.json", "hf_notatoken", 401, None,
     "Invalid credentials in Authorization header"),
])
def test_errors_are_the_real_hubs(hub, path, token, status, code, message):
    port, _root = hub
    got, headers, body = call(port, path, token=token, host="hub.lab:8080")
    assert got == status
    assert headers.get("X-Error-Code") == code
    assert headers["X-Error-Message"] == message
    assert json.loads(body) == {"error": message}
    assert headers["X-Request-Id"]


def test_a_granted_token_reads_the_gated_repository(hub):
    port, _root = hub
    status, headers, body = call(port, "/%s/resolve/main/config.json" % GATED, token=TOKEN)
    assert status == 200 and json.loads(body)["model_type"] == "llama"
    status, headers, _b = call(port, "/%s/resolve/main/model.safetensors" % GATED, token=TOKEN)
    assert status == 302 and int(headers["X-Linked-Size"]) > lab.MIB


def test_tree_and_whoami(hub):
    port, _root = hub
    status, _h, body = call(port, "/api/models/facebook/opt-125m/tree/main?recursive=true")
    entries = {e["path"]: e for e in json.loads(body)}
    assert status == 200 and entries["model.safetensors"]["lfs"]["size"] > lab.MIB
    assert entries["config.json"]["type"] == "file"
    status, _h, body = call(port, "/api/whoami-v2", token=TOKEN)
    assert status == 200 and json.loads(body)["name"] == "lab-reader"
    assert call(port, "/api/whoami-v2")[0] == 401


def test_hub_tree_is_generated_once_per_content(tmp_path):
    first, digest = lab.write_hub_tree(CONTENT, build=str(tmp_path))
    again, digest_again = lab.write_hub_tree(CONTENT, build=str(tmp_path))
    assert (first, digest) == (again, digest_again)
    changed = dict(CONTENT, hf_tokens={"hf_other": {"name": "x", "gated": []}})
    other, other_digest = lab.write_hub_tree(changed, build=str(tmp_path))
    assert other_digest != digest and not Path(first).exists() and Path(other).exists()
    assert json.loads((Path(other) / "hub.json").read_text())["tokens"] == {
        "hf_other": {"name": "x", "gated": []}}


def test_registry_storage_is_served_read_only_where_the_registry_redirects(hub):
    port, _root = hub
    status, headers, body = call(port, "/" + BLOB_PATH)
    assert status == 200 and body == BLOB and headers["Accept-Ranges"] == "bytes"
    status, _h, body = call(port, "/" + BLOB_PATH, headers={"Range": "bytes=2-"})
    assert status == 206 and body == BLOB[2:]
    assert call(port, "/docker/registry/v2/blobs/sha256/00/none/data")[0] == 404
    assert call(port, "/docker/registry/v2/../../secret")[0] == 404
    assert call(port, "/docker/registry/v2/%2e%2e/%2e%2e/%2e%2e/secret")[0] == 404


def test_storage_url_is_a_fixed_address_of_the_lab_network(monkeypatch):
    monkeypatch.setattr(lab, "SUBNET", "10.213.0.0/24")
    assert lab.storage_url() == "http://10.213.0.254:8080"
    monkeypatch.setattr(lab, "SUBNET", "10.99.0.0/16")
    assert lab.storage_url() == "http://10.99.255.254:8080"
