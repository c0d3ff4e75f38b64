# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_downloads: plan and fetch images, Ollama models and Hugging Face weights against fakes on
loopback (a registry, a hub, an Ollama server) and a fake docker CLI
(tests/support/download_fakes.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _downloads
from tests.support.download_fakes import GATED, HF_FILES, TOKEN, FakeDocker, FakeWorld


class World(FakeWorld):
    """The fakes of one test and a way to run the core against them."""

    def options(self, **more):
        options = {"state": "present", "ollama_registry": self.registry.host,
                   "ollama_insecure": True, "ollama_source_dir": None,
                   "hf_endpoint": self.hub.url, "hf_token": None, "timeout": 60}
        options.update(more)
        return options

    def host(self, **more):
        def run(argv):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            return done.returncode, done.stdout, done.stderr
        return _downloads.Host(run, self.docker.path, login=lambda registry: None, **more)

    def run(self, items=None, progress_file=None, host=None, **options):
        progress = _downloads.Progress(progress_file, interval=0) if progress_file else None
        return _downloads.run(self.items() if items is None else items, self.options(**options),
                              host or self.host(), progress)


@pytest.fixture
def world(tmp_path, monkeypatch):
    made = World(tmp_path)
    monkeypatch.setenv("FAKE_DOCKER_STATE", made.docker.state_file)
    yield made
    made.close()


def by_kind(result):
    return {entry["kind"]: entry for entry in result["downloads"]}


def test_first_run_fetches_what_it_planned_and_the_next_changes_nothing(world):
    planned, failure = world.run(state="planned")
    assert failure is None and planned["changed"] is False
    entries = by_kind(planned)
    image_bytes = sum(d["size"] for d in world.image["layers"])
    model_bytes = sum(b["size"] for b in [world.model["config"], *world.model["layers"]])
    hf_bytes = sum(len(v) for k, v in HF_FILES.items() if k != "pytorch_model.bin")
    assert [entries[k]["bytes"] for k in ("image", "ollama", "huggingface")] == [
        image_bytes, model_bytes, hf_bytes]
    assert not any(e["present"] for e in planned["downloads"])
    mount = _downloads.mount_point(str(world.tmp))
    assert {e["filesystem"] for e in planned["downloads"]} == {mount}
    assert planned["by_filesystem"][mount]["bytes"] == planned["total_bytes"] == (
        image_bytes + model_bytes + hf_bytes)
    assert planned["by_filesystem"][mount]["free_bytes"] > 0
    assert world.pulls() == [] and world.ollama.pulls == []
    assert not os.path.exists(world.hf_home)

    progress = str(world.tmp / "progress.jsonl")
    fetched, failure = world.run(progress_file=progress)
    assert failure is None and fetched["changed"] is True
    for entry in fetched["downloads"]:
        assert entry["fetched_bytes"] == entry["bytes"], entry  # the plan told the truth
    assert world.pulls() == [["pull", world.image_ref]]
    assert world.ollama.pulls == [("%s/library/llama3.2:3b" % world.registry.host, True)]
    plain = os.path.join(world.models, "manifests", "registry.ollama.ai", "library", "llama3.2",
                         "3b")
    assert json.load(open(plain))["layers"] == world.model["layers"]
    events = [json.loads(line) for line in open(progress)]
    finals = [e for e in events if e["final"]]
    assert [(e["item"], e["kind"]) for e in finals] == [
        (0, "image"), (1, "ollama"), (2, "huggingface")]
    assert finals[0]["text"].startswith("pulled %s (0.0 MiB in " % world.image_ref)
    assert any(e["text"].startswith("pulling %s 3/3 layers" % world.image_ref) for e in events)

    again, failure = world.run()
    assert failure is None and again["changed"] is False
    assert all(e["present"] and e["bytes"] == e["fetched_bytes"] == 0
               for e in again["downloads"])
    assert len(world.pulls()) == 1 and len(world.ollama.pulls) == 1


def test_image_bytes_count_only_layer_chains_the_engine_lacks(world):
    layers = world.image["layers"]
    world.docker.have("base:1", [layers[0]["diff_id"]])
    world.docker.have("other:1", [layers[1]["diff_id"]])  # same layer, another chain: no reuse
    planned, _failure = world.run(items=world.items()[:1], state="planned")
    assert planned["downloads"][0]["bytes"] == layers[1]["size"] + layers[2]["size"]
    fetched, failure = world.run(items=world.items()[:1])
    assert failure is None
    assert fetched["downloads"][0]["fetched_bytes"] == layers[1]["size"] + layers[2]["size"]


def test_what_an_earlier_item_brings_is_counted_once(world):
    layers = [b"base" * 300, b"runtime" * 500]  # the two first layers of ollama/ollama
    vllm = world.registry.add_image("vllm/vllm-openai", "latest", [*layers, b"vllm" * 700])
    vllm_ref = "%s/vllm/vllm-openai:latest" % world.registry.host
    world.docker.remote(vllm_ref, "vllm/vllm-openai", vllm)
    tiny = world.registry.add_ollama("library/tiny", "1b", model=b"T" * 3000)  # same params
    items = [world.items()[0],
             {"kind": "image", "name": vllm_ref, "insecure": True, "services": ["vllm"]},
             world.items()[1],
             dict(world.items()[1], name="tiny:1b", services=["ollama_research"])]
    planned, failure = world.run(items=items, state="planned")
    assert failure is None

    def blobs(model):
        return [model["config"], *model["layers"]]

    shared = {b["digest"] for b in blobs(tiny)} & {b["digest"] for b in blobs(world.model)}
    assert len(shared) == 3  # the config, the template and the params
    assert [e["bytes"] for e in planned["downloads"]] == [
        sum(d["size"] for d in world.image["layers"]), 700 * 4,
        sum(b["size"] for b in blobs(world.model)), 3000]
    fetched, failure = world.run(items=items)
    assert failure is None
    assert [e["fetched_bytes"] for e in fetched["downloads"]] == [
        e["bytes"] for e in planned["downloads"]]


def test_planned_reports_every_problem_together_and_changes_nothing(world):
    items = [
        *world.items(),
        {"kind": "ollama", "name": "nosuchmodel:7b", "services": ["ollama_research"],
         "models_dir": world.models, "url": world.ollama.url},
        {"kind": "image", "name": "%s/gpufleet/vision:latest" % world.registry.host,
         "insecure": True, "services": ["vision"]},
        {"kind": "huggingface", "name": GATED, "services": ["vllm", "vllm_b"],
         "hf_home": world.hf_home},
    ]
    result, failure = world.run(items=items, state="planned")
    problems = failure.split("; ")
    assert problems == [
        'ollama model "nosuchmodel:7b" (service ollama_research) is not in %s: manifest unknown'
        % world.registry.host,
        'image "%s/gpufleet/vision:latest" (service vision) is not in %s: manifest unknown'
        % (world.registry.host, world.registry.host),
        'huggingface repo "%s" (services vllm, vllm_b) is gated: set HF_TOKEN (hf_token_file) '
        "to a token of an account that was granted access (HTTP 401: Access to model %s is "
        "restricted. You must have access to it and be authenticated to access it. Please "
        "log in.)" % (GATED, GATED),
    ]
    assert [e.get("error") for e in result["downloads"]] == [None, None, None, *problems]
    assert result["changed"] is False

    _result, failure = world.run(items=items)  # present plans first: nothing is fetched
    assert failure.split("; ") == problems
    assert world.pulls() == [] and world.ollama.pulls == []
    assert not os.path.exists(world.hf_home)


def test_gated_repo_with_a_token(world):
    item = {"kind": "huggingface", "name": GATED, "services": ["vllm"], "hf_home": world.hf_home}
    result, failure = world.run(items=[item], hf_token=TOKEN)
    assert failure is None and result["downloads"][0]["fetched_bytes"] > 0
    _result, failure = world.run(items=[dict(item, hf_home=str(world.tmp / "hf2"))],
                                 hf_token="hf_invalid")
    assert failure.startswith('huggingface repo "%s" (service vllm): the hub refused HF_TOKEN as '
                              "invalid" % GATED)
    assert "hf_invalid" not in failure


def test_a_pull_cut_off_midway_fails_naming_the_image_and_the_next_run_completes_it(world):
    world.docker.state["fail"][world.image_ref] = {
        "after": 1, "stderr": "error pulling image: blob unknown: blob unknown to registry"}
    world.docker.save()
    result, failure = world.run()
    assert failure == ('image "%s" (service ollama): docker pull failed (rc 1): error pulling '
                       "image: blob unknown: blob unknown to registry" % world.image_ref)
    assert result["changed"] is True
    assert world.ollama.pulls == []  # the items after it wait for the next run
    state = world.docker.load()
    del state["fail"][world.image_ref]
    world.docker.save()
    result, failure = world.run()
    assert failure is None
    assert [e["present"] for e in result["downloads"]] == [False, False, False]
    assert world.image_ref in world.docker.load()["images"]


def test_podman_names_images_in_full_reads_its_storage_root_and_shows_its_blobs(
        world, monkeypatch):
    podman = FakeDocker(str(world.tmp / "podman"), root_dir=str(world.tmp), name="podman")
    monkeypatch.setenv("FAKE_DOCKER_STATE", podman.state_file)
    host = world.host(engine="podman")
    host.docker = podman.path
    # A short name is Docker Hub's: podman is asked for the full one (present: no registry).
    podman.have("docker.io/ollama/ollama:0.6.2", ["sha256:" + "1" * 64])
    short = dict(world.items()[0], name="ollama/ollama:0.6.2", insecure=False)
    result, failure = world.run(items=[short], host=host, state="planned")
    assert failure is None
    assert (result["downloads"][0]["name"], result["downloads"][0]["present"]) == (
        "docker.io/ollama/ollama:0.6.2", True)
    assert ["info", "--format", "{{.Store.GraphRoot}}"] in podman.calls()
    assert ["image", "inspect", "--format", "{{.Id}}", "docker.io/ollama/ollama:0.6.2"] in (
        podman.calls())

    podman.remote(world.image_ref, "ollama/ollama", world.image)
    podman.state["fail"][world.image_ref] = {
        "after": 2, "stderr": "Error: reading blob sha256:0ec3: unexpected EOF"}
    podman.save()
    progress = str(world.tmp / "progress.jsonl")
    _result, failure = world.run(items=world.items()[:1], host=host, progress_file=progress)
    assert failure == ('image "%s" (service ollama): podman pull failed (rc 125): Copying blob '
                       "%s Copying blob %s Error: reading blob sha256:0ec3: unexpected EOF"
                       % (world.image_ref, world.image["layers"][0]["digest"],
                          world.image["layers"][1]["digest"]))
    state = podman.load()
    del state["fail"][world.image_ref]
    podman.save()
    result, failure = world.run(items=world.items()[:1], host=host, progress_file=progress)
    assert failure is None and result["changed"] is True
    texts = [json.loads(line)["text"] for line in open(progress)]
    assert "pulling %s: copying blob 3/3 (%s MiB in all)" % (
        world.image_ref, "0.0") in texts, texts
    assert texts[-1].startswith("pulled %s" % world.image_ref)


def test_an_ollama_error_line_fails_naming_the_model(world):
    world.ollama.fail_blob = world.model["layers"][0]["digest"]
    _result, failure = world.run(items=world.items()[1:2])
    assert failure == ('ollama model "llama3.2:3b" (service ollama): the pull from %s failed: '
                       "max retries exceeded: unexpected EOF" % world.registry.host)
    assert not os.path.exists(os.path.join(world.models, "manifests", "registry.ollama.ai"))


def test_ollama_from_the_default_registry_is_pulled_by_its_own_name(world):
    # An explicit host is pulled as named, without a copy.
    name = "%s/library/llama3.2:3b" % world.registry.host
    item = dict(world.items()[1], name=name)
    result, failure = world.run(items=[item])
    assert failure is None and result["changed"] is True
    assert world.ollama.pulls == [(name, True)]
    assert world.ollama.seen("POST", "/api/copy") == []


def test_ollama_source_dir_is_copied_without_a_server(world):
    source = world.tmp / "source"
    manifest_dir = source / "manifests" / "registry.ollama.ai" / "library" / "llama3.2"
    manifest_dir.mkdir(parents=True)
    (manifest_dir / "3b").write_text(json.dumps(world.model))
    (source / "blobs").mkdir()
    for blob in [world.model["config"], *world.model["layers"]]:
        (source / "blobs" / blob["digest"].replace(":", "-")).write_bytes(
            world.registry.blobs[blob["digest"]])
    item = dict(world.items()[1], url=None)
    result, failure = world.run(items=[item], ollama_source_dir=str(source))
    assert failure is None and result["changed"] is True
    assert result["downloads"][0]["fetched_bytes"] == result["downloads"][0]["bytes"] > 0
    target = os.path.join(world.models, "manifests", "registry.ollama.ai", "library",
                          "llama3.2", "3b")
    assert json.load(open(target)) == world.model
    assert world.ollama.requests == []
    again, failure = world.run(items=[item], ollama_source_dir=str(source))
    assert (failure, again["changed"], again["downloads"][0]["present"]) == (None, False, True)

    shutil.rmtree(world.models)
    layer = world.model["layers"][0]["digest"].replace(":", "-")
    (source / "blobs" / layer).write_bytes(b"tampered")
    _result, failure = world.run(items=[item], ollama_source_dir=str(source))
    assert failure.endswith("%s in ollama_source_dir does not match its digest"
                            % (source / "blobs" / layer))
    assert not os.path.exists(target)
    _result, failure = world.run(items=[dict(item, name="nosuch:1b")],
                                 ollama_source_dir=str(source), state="planned")
    assert failure.startswith('ollama model "nosuch:1b" (service ollama) is not in '
                              "ollama_source_dir %s" % source)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_the_ollama_server_is_waited_for_until_the_timeout(world):
    clock = FakeClock()
    item = dict(world.items()[1], url="http://127.0.0.1:9")  # the discard port: nothing answers
    progress = world.tmp / "progress.jsonl"
    _result, failure = _downloads.run([item], world.options(timeout=5), world.host(
        clock=clock, sleep=clock.sleep), _downloads.Progress(str(progress), clock=clock))
    assert failure.startswith('ollama model "llama3.2:3b" (service ollama): the Ollama server at '
                              "http://127.0.0.1:9 did not answer within 5 s: ")
    assert clock.now >= 5
    texts = [json.loads(line)["text"] for line in progress.read_text().splitlines()]
    assert len(texts) == 5 and texts[0].startswith(
        "waiting for the Ollama server at http://127.0.0.1:9 to pull llama3.2:3b (")


def test_a_server_that_never_answers_ends_the_wait_long_before_the_fetch_timeout(world):
    """A crashed Ollama container: the pull gives up after SERVER_WAIT_S, not after the
    hour the whole fetch may take."""
    clock = FakeClock()
    item = dict(world.items()[1], url="http://127.0.0.1:9")
    _result, failure = _downloads.run([item], world.options(timeout=3600), world.host(
        clock=clock, sleep=clock.sleep), _downloads.Progress(None, clock=clock))
    assert "did not answer within %d s" % _downloads.SERVER_WAIT_S in failure, failure
    assert _downloads.SERVER_WAIT_S <= clock.now < _downloads.SERVER_WAIT_S + 30


def test_a_docker_engine_that_does_not_answer(world):
    world.docker.state["down"] = True
    world.docker.save()
    _result, failure = world.run(items=world.items()[:1], state="planned")
    assert failure == ('image "%s" (service ollama): the docker engine does not answer: Cannot '
                       "connect to the Docker daemon at unix:///var/run/docker.sock. Is the "
                       "docker daemon running?" % world.image_ref)


def test_progress_is_throttled_per_item_but_never_the_last_line(tmp_path):
    clock = FakeClock()
    path = tmp_path / "p.jsonl"
    progress = _downloads.Progress(str(path), clock=clock)
    item = {"kind": "image", "name": "x:1"}
    for step in range(5):
        progress.emit(0, item, "step %d" % step)
        progress.emit(1, item, "other %d" % step)
        clock.now += 0.4
    progress.emit(0, item, "done", final=True)
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert texts == ["step 0", "other 0", "step 3", "other 3", "done"]
    _downloads.Progress(str(tmp_path / "no" / "dir" / "p"), clock=clock).emit(0, item, "x")


@pytest.mark.parametrize("name, expected", [
    ("llama3.2:3b", ("registry.ollama.ai", "library", "llama3.2", "3b", False)),
    ("tinyllama", ("registry.ollama.ai", "library", "tinyllama", "latest", False)),
    ("user/model:q4_K_M", ("registry.ollama.ai", "user", "model", "q4_K_M", False)),
    ("registry.lab:5000/library/qwen2.5:1.5b",
     ("registry.lab:5000", "library", "qwen2.5", "1.5b", True)),
    ("registry.lab:5000/library/qwen2.5", ("registry.lab:5000", "library", "qwen2.5", "latest",
                                           True)),
])
def test_ollama_name(name, expected):
    parts = _downloads.ollama_name(name)
    assert tuple(parts[k] for k in ("host", "namespace", "model", "tag", "explicit_host")) == (
        expected)


@pytest.mark.parametrize("items, message", [
    ("x", "items must be a list"),
    ([{"kind": "pip", "name": "x"}], "items[0].kind must be one of image, ollama, huggingface"),
    ([{"kind": "image", "name": ""}], "items[0].name must be a non-empty string"),
    ([{"kind": "image", "name": "a", "services": "svc"}], "items[0].services must be a list"),
    ([{"kind": "ollama", "name": "m:1"}], "items[0].models_dir must be an absolute path"),
    ([{"kind": "ollama", "name": "a/b/c/d", "models_dir": "/m"}], "has too many parts"),
    ([{"kind": "huggingface", "name": "a/b", "hf_home": "rel"}],
     "items[0].hf_home must be an absolute path"),
    ([{"kind": "huggingface", "name": "a/b", "hf_home": "/h", "revision": "../x"}],
     "items[0].revision must be a branch, tag or commit"),
    ([{"kind": "image", "name": "UPPER/case"}], "is not a repository name"),
])
def test_check_items_refuses(items, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _downloads.check_items(items)


def test_read_token(tmp_path):
    env = tmp_path / "hf.env"
    env.write_text("# comment\nOTHER=1\nexport HF_TOKEN='%s'\n" % TOKEN)
    assert _downloads.read_token(str(env)) == TOKEN
    env.write_text("HF_TOKEN=\n")
    assert _downloads.read_token(str(env)) is None
    assert _downloads.read_token(str(tmp_path / "missing.env")) is None
    assert _downloads.read_token(None) is None


def test_mount_point_of_a_path_not_there_yet(tmp_path):
    assert _downloads.mount_point(str(tmp_path / "a" / "b")) == _downloads.mount_point(
        str(tmp_path))
    assert os.path.ismount(_downloads.mount_point(str(tmp_path)))


def test_bad_options():
    host = _downloads.Host(lambda argv: (0, "", ""))
    with pytest.raises(ValueError, match="state must be one of planned, present"):
        _downloads.run([], {"state": "absent", "timeout": 1}, host)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        _downloads.run([], {"state": "planned", "timeout": 0}, host)


# ---- a plan's downloads as the roles pass them ------------------------------------------------

PLAN_DOWNLOADS = {
    "items": [
        {"kind": "image", "name": "registry.lab:5000/ollama/ollama:latest", "insecure": True,
         "services": ["ollama"]},
        {"kind": "ollama", "name": "llama3.2:3b", "models_dir": "/srv/m",
         "url": "http://127.0.0.1:11434", "services": ["ollama"]},
        {"kind": "huggingface", "name": "Qwen/Qwen2.5-1.5B-Instruct", "revision": "main",
         "hf_home": "/srv/hf", "services": ["vllm"]}],
    "options": {"ollama_registry": "registry.lab:5000", "ollama_insecure": True,
                "ollama_source_dir": None, "hf_endpoint": "http://hub.lab:8080",
                "hf_token_file": None}}


def test_expand_takes_the_kinds_and_the_plans_options():
    params = _downloads.expand({"downloads": PLAN_DOWNLOADS, "kinds": ["ollama"],
                                "models_dir": "/srv/units", "state": "present",
                                "hf_endpoint": "http://mirror:1"})
    assert params["items"] == [dict(PLAN_DOWNLOADS["items"][1], models_dir="/srv/units")]
    assert params["ollama_registry"] == "registry.lab:5000" and params["ollama_insecure"]
    assert params["hf_endpoint"] == "http://mirror:1"  # the task's own option wins
    assert "hf_token_file" not in params and "downloads" not in params
    everything = _downloads.expand({"downloads": PLAN_DOWNLOADS})
    assert [i["kind"] for i in everything["items"]] == ["image", "ollama", "huggingface"]
    assert PLAN_DOWNLOADS["items"][1]["models_dir"] == "/srv/m"  # the plan is left alone


@pytest.mark.parametrize("params, message", [
    ({}, "items or downloads is required; got neither"),
    ({"items": [], "downloads": PLAN_DOWNLOADS}, "items and downloads are exclusive"),
    ({"items": [], "kinds": ["image"]}, "kinds and models_dir go with downloads"),
    ({"downloads": {"items": "x"}}, "downloads must be services_plan.downloads"),
    ({"downloads": PLAN_DOWNLOADS, "kinds": ["model"]}, "kinds must be some of image, ollama, "
                                                        "huggingface; got: ['model']"),
])
def test_expand_refuses_naming_what(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _downloads.expand(params)
