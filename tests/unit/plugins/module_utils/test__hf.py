# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_hf: the files vLLM loads, the cache in huggingface_hub's layout, and the hub's errors,
against a fake hub on loopback (tests/support/download_fakes.py)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _hf
from tests.support.download_fakes import FakeHub, FakeStorage

TOKEN = "hf_lablabLABlab0123456789"
GATED = "meta-llama/Llama-3.2-3B-Instruct"
PUBLIC = "Qwen/Qwen2.5-0.5B-Instruct"
INDEX = json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                   "b": "model-00002-of-00002.safetensors"}})


def files(**extra):
    base = {"config.json": b'{"model_type": "qwen2"}', "generation_config.json": b'{"g": 1}',
            "tokenizer.json": b'{"version": "1.0"}', "tokenizer_config.json": b'{"t": 1}',
            "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"w" * 3000}
    base.update(extra)
    return base


@pytest.mark.parametrize("names, weights", [
    (["model.safetensors", "pytorch_model.bin", "model.gguf"], ["model.safetensors"]),
    (["pytorch_model.bin", "training_args.bin"], ["pytorch_model.bin"]),
    (["model.pt", "optimizer.pt"], ["model.pt"]),
    (["consolidated.safetensors", "model-00001-of-00002.safetensors"],
     ["consolidated.safetensors"]),
    (["onnx/model.safetensors", "original/consolidated.00.pth", "model.gguf"], []),
])
def test_weight_files_follow_vllm(names, weights):
    assert _hf.weight_files(names) == weights


def sibling(name, lfs=False):
    entry = {"rfilename": name, "size": 10, "blobId": "a" * 40}
    if lfs:
        entry["lfs"] = {"sha256": "b" * 64, "size": 20, "pointerSize": 134}
    return entry


def test_choose_files():
    chosen = _hf.choose_files([
        sibling("config.json"), sibling("generation_config.json"), sibling("tokenizer.json"),
        sibling("tokenizer.model", lfs=True), sibling("merges.txt"), sibling("README.md"),
        sibling("chat_template.jinja"), sibling("model.safetensors.index.json"),
        sibling("model-00001-of-00002.safetensors", lfs=True),
        sibling("model-00002-of-00002.safetensors", lfs=True),
        sibling("pytorch_model.bin", lfs=True), sibling("onnx/model.onnx", lfs=True),
        sibling("original/params.json"), sibling(".gitattributes"), sibling("modeling_x.py"),
    ])
    assert [c["name"] for c in chosen] == [
        "chat_template.jinja", "config.json", "generation_config.json", "merges.txt",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer.model"]
    lfs = next(c for c in chosen if c["name"] == "tokenizer.model")
    assert (lfs["etag"], lfs["size"], lfs["lfs"]) == ("b" * 64, 20, True)
    plain = next(c for c in chosen if c["name"] == "config.json")
    assert (plain["etag"], plain["size"], plain["lfs"]) == ("a" * 40, 10, False)
    with pytest.raises(_hf.HubError, match="has no weights vLLM can load") as error:
        _hf.choose_files([sibling("config.json"), sibling("model.gguf", lfs=True)])
    assert error.value.kind == "no_weights"
    with pytest.raises(_hf.HubError, match="needs \\?blobs=true"):
        _hf.choose_files([{"rfilename": "model.safetensors"}])


@pytest.mark.parametrize("repo_id", ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "org/name.v1"])
def test_repo_folder(repo_id):
    assert _hf.repo_folder("/h", repo_id) == "/h/hub/models--" + repo_id.replace("/", "--")


@pytest.mark.parametrize("repo_id", ["", "a/b/c", "../x", "a/..", "/abs", None])
def test_repo_id_refused(repo_id):
    with pytest.raises(ValueError, match="repo id"):
        _hf.check_repo_id(repo_id)


def download(hub, hf_home, repo_id=PUBLIC, revision="main", token=None, seen=None):
    client = _hf.Hub(hub.url, token=token, timeout=5)
    listing = client.listing(repo_id, revision)
    progress = (lambda done, count: seen.append((done, count))) if seen is not None else None
    return listing, client.download(repo_id, revision, str(hf_home), listing, progress)


def test_download_writes_huggingface_hub_layout(tmp_path):
    content = files(**{"model.safetensors.index.json": INDEX.encode(),
                       "model-00001-of-00002.safetensors": b"A" * 2000,
                       "model-00002-of-00002.safetensors": b"B" * 2000,
                       "pytorch_model.bin": b"C" * 5000, "README.md": b"# readme"})
    del content["model.safetensors"]
    seen = []
    with FakeHub() as hub:
        commit = hub.add_repo(PUBLIC, content)
        assert _hf.cached(str(tmp_path), PUBLIC, "main")["complete"] is False
        listing, fetched = download(hub, tmp_path, seen=seen)
    folder = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct"
    assert (folder / "refs" / "main").read_text() == commit
    snapshot = folder / "snapshots" / commit
    names = sorted(os.listdir(snapshot))
    assert names == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                     "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        link = snapshot / name
        assert os.path.islink(link)
        target = os.readlink(link)
        assert target.startswith("../../blobs/")
        assert link.read_bytes() == content[name]
        etag = os.path.basename(target)
        data = content[name]
        expected = (hashlib.sha256(data).hexdigest() if name.endswith(".safetensors")
                    else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        assert etag == expected
    assert fetched == sum(len(content[n]) for n in names)
    assert seen[-1] == (fetched, len(names))
    assert not [p for p in (folder / "blobs").iterdir() if p.name.endswith(".incomplete")]
    state = _hf.cached(str(tmp_path), PUBLIC, "main")
    assert (state["commit"], state["complete"]) == (commit, True)
    assert _hf.cached(str(tmp_path), PUBLIC, commit)["complete"] is True
    assert _hf.missing_files(str(tmp_path), PUBLIC, listing["files"]) == []


def test_cached_needs_config_weights_and_every_indexed_shard(tmp_path):
    content = files(**{"model.safetensors.index.json": INDEX.encode(),
                       "model-00001-of-00002.safetensors": b"A" * 20,
                       "model-00002-of-00002.safetensors": b"B" * 20})
    del content["model.safetensors"]
    with FakeHub() as hub:
        commit = hub.add_repo(PUBLIC, content)
        download(hub, tmp_path)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / commit
    os.unlink(snapshot / "model-00002-of-00002.safetensors")
    assert _hf.cached(str(tmp_path), PUBLIC, "main")["complete"] is False
    assert _hf.cached(str(tmp_path), PUBLIC, "v2")["commit"] is None


def test_second_download_fetches_nothing_and_skips_present_blobs(tmp_path):
    with FakeHub() as hub:
        hub.add_repo(PUBLIC, files())
        download(hub, tmp_path)
        before = len(hub.seen("GET", "/resolve/"))
        _listing, fetched = download(hub, tmp_path)
        assert (fetched, len(hub.seen("GET", "/resolve/"))) == (0, before)


def test_a_download_cut_off_resumes_with_a_range(tmp_path):
    with FakeHub() as hub:
        hub.add_repo(PUBLIC, files())
        hub.cut[(PUBLIC, "model.safetensors")] = 1000
        with pytest.raises(_hf.HubError, match=r"model\.safetensors broke off after 1000 of "
                           r"3016 bytes .*the next run resumes it") as broken:
            download(hub, tmp_path)
        assert broken.value.kind == "unreachable"
        folder = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct"
        assert not (folder / "refs" / "main").exists()
        assert _hf.cached(str(tmp_path), PUBLIC, "main")["complete"] is False
        del hub.cut[(PUBLIC, "model.safetensors")]
        _listing, fetched = download(hub, tmp_path)
        ranged = [r for r in hub.seen("GET", "model.safetensors") if "Range" in r["headers"]]
    assert ranged and ranged[-1]["headers"]["Range"] == "bytes=1000-"
    after = ("tokenizer.json", "tokenizer_config.json")  # sorted after the cut-off file
    assert fetched == 2016 + sum(len(files()[name]) for name in after)
    assert _hf.cached(str(tmp_path), PUBLIC, "main")["complete"] is True


def test_a_corrupt_file_is_removed(tmp_path):
    with FakeHub() as hub:
        hub.add_repo(PUBLIC, files())
        client = _hf.Hub(hub.url, timeout=5)
        listing = client.listing(PUBLIC)
        bad = next(f for f in listing["files"] if f["name"] == "config.json")
        bad["etag"] = "0" * 40
        with pytest.raises(_hf.HubError, match=r"config\.json arrived with .* wrong checksum"):
            client.download(PUBLIC, "main", str(tmp_path), listing)
    assert not list((tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "blobs").glob(
        "0000*"))


def test_lfs_redirect_to_a_cdn_drops_the_token(tmp_path):
    with FakeStorage() as cdn, FakeHub(tokens={TOKEN: set()}, cdn=cdn) as hub:
        hub.add_repo(PUBLIC, files())
        download(hub, tmp_path, token=TOKEN)  # the CDN refuses an Authorization header
        assert cdn.seen("GET", "/cdn/")
        assert all(r["headers"].get("Authorization") == "Bearer " + TOKEN
                   for r in hub.seen("GET", "/resolve/"))


@pytest.mark.parametrize("repo_id, token, kind, words", [
    (GATED, None, "gated", ["is gated: set HF_TOKEN", "HTTP 401", "Please log in."]),
    (GATED, "hf_other", "no_access", ["account of HF_TOKEN has no access", "HTTP 403",
                                      "not in the authorized list"]),
    (PUBLIC, "hf_invalid", "token_invalid",
     ["refused HF_TOKEN as invalid", "Invalid credentials in Authorization header"]),
    ("nobody/nothing", None, "not_found", ["is not on http", "private and needs HF_TOKEN",
                                           "HTTP 401: Invalid username or password."]),
    ("nobody/nothing", TOKEN, "not_found", ["HF_TOKEN cannot see it", "HTTP 404"]),
])
def test_hub_errors(tmp_path, repo_id, token, kind, words):
    with FakeHub(tokens={TOKEN: {GATED}, "hf_other": set()}) as hub:
        hub.add_repo(PUBLIC, files())
        hub.add_repo(GATED, files(), gated="manual")
        client = _hf.Hub(hub.url, token=token, timeout=5)
        with pytest.raises(_hf.HubError) as error:
            listing = client.listing(repo_id)  # a gated repo's listing is public
            client.check_access(repo_id, listing["commit"], "config.json")
    assert error.value.kind == kind
    for word in words:
        assert word in str(error.value)
    if token:
        assert token not in str(error.value)


def test_gated_repo_with_a_granted_token(tmp_path):
    with FakeHub(tokens={TOKEN: {GATED}}) as hub:
        commit = hub.add_repo(GATED, files(), gated="manual")
        listing, _fetched = download(hub, tmp_path, repo_id=GATED, token=TOKEN)
    assert (listing["commit"], listing["gated"]) == (commit, "manual")
    assert _hf.cached(str(tmp_path), GATED, "main")["complete"] is True


def test_unknown_revision_and_unreachable_hub():
    with FakeHub() as hub:
        hub.add_repo(PUBLIC, files())
        with pytest.raises(_hf.HubError, match=r"revision does not exist .*Invalid rev id: v9"):
            _hf.Hub(hub.url, timeout=5).listing(PUBLIC, "v9")
        url = hub.url
    with pytest.raises(_hf.HubError, match="cannot reach %s" % url) as error:
        _hf.Hub(url, timeout=5).listing(PUBLIC)
    assert error.value.kind == "unreachable"
