# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real host's first run on the lab's third dual box (lab-dual3), started empty: no image,
no Ollama model, no Hugging Face weights (the lab's registry and hub stand in for Docker Hub,
quay.io, Ollama's registry and huggingface.co).

site.yml alone converges it, printing pull progress; what preflight said it would fetch is
what the run fetched (and what landed on disk); a re-run fetches nothing. An unknown Ollama
model and a gated model without HF_TOKEN stop the host in preflight, before anything changes;
the token never shows. A pull cut off midway fails naming the model, the previous services go
on serving, and the next run completes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import yaml
from conftest import LAB, ROOT, lab_py
from dual import apply, sha256s

sys.path.insert(0, LAB)
import lab as lab_tool  # lab/lab.py: the registry's address, blob deletion

BOX = "lab-dual3"
GATED = "meta-llama/Llama-3.2-3B-Instruct"
# Granted the gated repository by the lab hub (lab/content.yml).
TOKEN = "hf_lablabLABlab0123456789"
# A model no other lab test pulls: its blob is deleted from the shared registry for a while.
CUT_MODEL = "tinyllama:latest"
MODELS_DIR = "/srv/gpufleet/models/ollama"
HF_HOME = "/srv/gpufleet/models/huggingface"


def run_json(tmp_path, extra, *args):
    """site.yml with the json callback: (rc, progress lines, {task name: [results]})."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    extra_file = tmp_path / ("vars-%d.json" % time.monotonic_ns())
    extra_file.write_text(json.dumps(extra))
    proc = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i",
         os.path.join(ROOT, "inventory", "lab"), "site.yml", "--limit", BOX,
         "-e", "@%s" % extra_file, *args],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=600,
        env=dict(env, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1"))
    start = proc.stdout.index("\n{") + 1
    progress = proc.stdout[:start].splitlines()
    # The fleet outcome table (the collection's callback) follows the document.
    doc, _end = json.JSONDecoder().raw_decode(proc.stdout[start:])
    tasks = {}
    for play in doc["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get(BOX)
            if result is not None:
                tasks.setdefault(task["task"]["name"], []).append(result)
    return proc.returncode, progress, tasks


def results(tasks, prefix):
    # A role's task is "<role> : <name>" in the json callback.
    found = [r for name, rs in tasks.items() if name.split(" : ")[-1].startswith(prefix)
             for r in rs]
    assert found, (prefix, sorted(tasks))
    return found


def blob_bytes(host, path):
    out = host.sh("find %s -type f -printf '%%s\\n' 2>/dev/null || true" % path).stdout
    return sum(int(n) for n in out.split())


def test_an_empty_host_converges_and_preflight_said_what_it_fetched(empty_dual3, tmp_path):
    host = empty_dual3
    rc, progress, tasks = run_json(tmp_path, {"dual_gpu_mode": "mixed"})
    assert rc == 0, (progress, {k: v for k, v in tasks.items() if any(
        r.get("failed") for r in v)})
    planned = results(tasks, "Tell what the run will fetch")[0]["downloads"]
    fetched = [item for result in results(tasks, "Fetch the images and Hugging Face weights")
               + results(tasks, "Pull the Ollama models") for item in result["downloads"]]
    # Everything of the mixed mode, none of it there before.
    kinds = sorted((item["kind"], item["name"]) for item in planned)
    assert kinds == sorted([
        ("image", "registry.lab:5000/ollama/ollama:latest"),
        ("image", "registry.lab:5000/vllm/vllm-openai:latest"),
        ("image", "registry.lab:5000/quay.io/docling-project/docling-serve:latest"),
        ("ollama", "llama3.2:3b"), ("ollama", "moondream:latest"),
        ("huggingface", "Qwen/Qwen2.5-1.5B-Instruct")]), planned
    assert not any(item["present"] for item in planned), planned
    # The table preflight printed is what the run then fetched, item by item.
    assert {(i["kind"], i["name"]): i["bytes"] for i in planned} == {
        (i["kind"], i["name"]): i["fetched_bytes"] for i in fetched}, (planned, fetched)
    assert sum(i["bytes"] for i in planned) > 0
    # ... and what landed on disk: Ollama's blobs, the Hugging Face cache's blobs.
    for kind, path in (("ollama", MODELS_DIR + "/blobs"), ("huggingface", HF_HOME + "/hub")):
        want = sum(i["bytes"] for i in planned if i["kind"] == kind)
        assert blob_bytes(host, path) >= want > 0, (kind, path, want)
    assert blob_bytes(host, MODELS_DIR + "/blobs") == sum(
        i["bytes"] for i in planned if i["kind"] == "ollama")
    # Progress was shown while the run went (the action prints as each item comes).
    assert "%s: pulling registry.lab:5000/ollama/ollama:latest" % BOX in "\n".join(progress), \
        progress
    assert any(line.startswith("%s: pulled ollama model llama3.2:3b" % BOX)
               for line in progress), progress
    # The re-run fetches nothing and changes nothing.
    rc, out, recap = apply(tmp_path, BOX, {"dual_gpu_mode": "mixed"}, playbook="site.yml")
    assert rc == 0 and recap[BOX][1] == 0, out
    assert "Total: nothing to fetch (6 of 6 already present)" in out, out
    assert "%s: pull" % BOX not in out and "%s: download" % BOX not in out, out


def test_an_unknown_ollama_model_stops_preflight_naming_it(empty_dual3, tmp_path):
    host = empty_dual3
    before = sha256s(host)
    containers = host.sh("docker ps -q --no-trunc | sort").stdout
    catalog = default_catalog()
    catalog["ollama"]["model"] = "nosuchmodel:1b"
    rc, out, recap = apply(tmp_path, BOX, {"dual_gpu_mode": "mixed",
                                           "services_catalog": catalog}, playbook="site.yml")
    assert rc != 0 and recap[BOX][2] == 1, out
    assert 'ollama model "nosuchmodel:1b" (service ollama' in out, out
    assert "preflight" in out[out.index('ollama model "nosuchmodel:1b"') - 3000:].lower()
    assert sha256s(host) == before
    assert host.sh("docker ps -q --no-trunc | sort").stdout == containers


def gated_catalog():
    catalog = default_catalog()
    catalog["vllm"]["model"] = GATED
    return catalog


def test_a_gated_model_needs_hf_token_which_never_shows(empty_dual3, tmp_path):
    host = empty_dual3
    before = sha256s(host)
    extra = {"dual_gpu_mode": "vllm", "services_catalog": gated_catalog()}
    rc, out, recap = apply(tmp_path, BOX, extra, playbook="site.yml")
    assert rc != 0 and recap[BOX][2] == 1, out
    assert "HF_TOKEN" in out and GATED in out, out
    assert sha256s(host) == before
    # With the token: it converges, and the token is nowhere but the 0600 env file.
    rc, out, recap = apply(tmp_path, BOX, dict(extra, services_hf_token=TOKEN),
                           "-v", "--diff", playbook="site.yml")
    assert rc == 0, out
    assert TOKEN not in out
    holders = host.sh("grep -rlF %s /opt/gpufleet /etc /srv/gpufleet /root 2>/dev/null || true"
                      % TOKEN).stdout.split()
    assert holders == ["/etc/gpufleet/huggingface.env"], holders
    assert host.sh("stat -c '%a %U' /etc/gpufleet/huggingface.env").stdout.split() == [
        "600", "root"]
    # vLLM reads the fetched weights offline: the container never gets the token.
    env = json.loads(host.sh("docker inspect gpufleet-vllm-1").stdout)[0]["Config"]["Env"]
    assert "HF_HUB_OFFLINE=1" in env and not any(TOKEN in e for e in env), env
    assert host.sh("grep -rlF %s /var/lib/docker/containers || true" % TOKEN).stdout == ""


def test_a_pull_cut_off_midway_fails_keeps_serving_and_completes_next_time(
        empty_dual3, tmp_path):
    """From the converged state the test above left: only Ollama's models change."""
    host = empty_dual3
    catalog = gated_catalog()
    catalog["ollama"]["models"] = [CUT_MODEL]
    extra = {"dual_gpu_mode": "vllm", "services_catalog": catalog, "services_hf_token": TOKEN}
    model, tag = CUT_MODEL.split(":")
    request = urllib.request.Request(
        "%s/v2/library/%s/manifests/%s" % (lab_tool.registry_url(), model, tag),
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        manifest = json.load(answer)
    layer = next(layer["digest"] for layer in manifest["layers"]
                 if layer["mediaType"] == "application/vnd.ollama.image.model")
    lab_tool.delete_blob_data(layer)
    try:
        rc, out, _recap = apply(tmp_path, BOX, extra, playbook="site.yml")
        assert rc != 0, out
        assert 'ollama model "%s"' % CUT_MODEL in out, out
        record = json.loads(host.sh("cat /etc/gpufleet/apply.json").stdout)
        assert record["result"] == "rolled_back", record
        # The previous services serve as before.
        status, payload = host.http("http://127.0.0.1:11434/api/generate",
                                    body={"model": "llama3.2:3b", "prompt": "hi",
                                          "stream": False})
        assert status == 200, payload
    finally:
        lab_tool.restore_blob(layer)
        lab_py("up", "--hosts", BOX)  # puts the blob back
    rc, out, _recap = apply(tmp_path, BOX, extra, playbook="site.yml")
    assert rc == 0, out
    status, tags = host.http("http://127.0.0.1:11434/api/tags")
    assert CUT_MODEL in [m["name"] for m in tags["models"]], tags


def default_catalog():
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        return yaml.safe_load(handle)["services_catalog"]
