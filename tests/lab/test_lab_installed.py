# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as a user installs it, on the lab's third dual box (lab-dual3), new and empty.

`ansible-galaxy collection build` makes the tarball; `ansible-galaxy collection install --offline`
puts it, with the collections galaxy.yml declares (community.docker and what that one needs, given
as tarballs on the same command line: Galaxy is unreachable here), into an empty collections path.
Then, from an empty working directory, with a configuration, an inventory and variables the test
writes and no repository file in reach (no ANSIBLE_* or PYTHONPATH of the caller, no sys.path
scan): `gpufleet.inference.site`, `gpufleet.inference.switch_mode -e inference_mode=vllm` and
`gpufleet.inference.report` by their names. The services run as planned, the collection's callback
prints its table, and the report lands in the working directory, not in the installed collection.

lab-dual3 is recreated empty first: a host that never had anything, as a user's new box (the
first-run tests of the same host group recreate it again for themselves).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
import yaml
from conftest import LAB, ROOT
from dual import DUAL3_GPU0, DUAL3_GPU1, MANAGED, PROJECT, assert_compose_state, modes

sys.path.insert(0, LAB)
import ee as lab_ee  # lab/ee.py: collections packed as Galaxy artifacts

BOX = "lab-dual3"
MODES = modes(DUAL3_GPU0, DUAL3_GPU1)
BIN = os.path.join(ROOT, ".venv", "bin")
# Where `make collections` (lab/vendor-collections.sh) put community.docker and what it needs.
VENDORED = os.path.join(ROOT, ".build", "collections", "ansible_collections")
DEPENDENCIES = ("community/docker", "community/library_inventory_filtering_v1")
# What the tarball must not carry (galaxy.yml's build_ignore).
REPOSITORY_ONLY = ("lab", "bench", "molecule", "inventory", "tests", "ee", "requirements",
                   "Makefile", "ansible.cfg", "site.yml", "execution-environment.yml")
CONFIG = """[defaults]
collections_path = {collections}
collections_scan_sys_path = False
callbacks_enabled = gpufleet.inference.fleet_outcome
interpreter_python = auto_silent
retry_files_enabled = False

[connection]
pipelining = True
"""


def lab_vars():
    """The lab's group variables (how Ansible reaches a lab host and where it fetches from),
    without the lab tool's own lab_* settings."""
    with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "lab.yml"),
              encoding="utf-8") as handle:
        group = yaml.safe_load(handle)
    return {key: value for key, value in group.items() if not key.startswith("lab_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The built tarball installed with its dependencies into an empty collections path;
    returns what a user has: a config, an inventory and an empty working directory."""
    base = tmp_path_factory.mktemp("installed")
    dist, deps, collections, work = (base / name for name in ("dist", "deps", "colls", "work"))
    for path in (dist, deps, collections, work):
        path.mkdir()
    t0 = time.time()
    build = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", ROOT,
                            "--output-path", str(dist)],
                           capture_output=True, text=True, check=False, cwd=str(base),
                           env=clean_env(), timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = next(dist.iterdir())
    with tarfile.open(tarball) as tar:
        tops = {name.split("/", 1)[0] for name in tar.getnames()}
    assert not tops & set(REPOSITORY_ONLY), sorted(tops)
    assert {"plugins", "roles", "playbooks", "meta", "README.md"} <= tops, sorted(tops)
    # lab/ee.py packs them so for the execution environment too.
    names = [lab_ee.artifact(os.path.join(VENDORED, dep), str(deps))[1] for dep in DEPENDENCIES]
    artifacts = [os.path.join(str(deps), name) for name in names]
    config = base / "ansible.cfg"
    config.write_text(CONFIG.format(collections=collections))
    env = clean_env(ANSIBLE_CONFIG=str(config), ANSIBLE_COLLECTIONS_PATH=str(collections))

    def install(*tarballs):
        proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install",
                               "--offline", "-p", str(collections), *tarballs],
                              capture_output=True, text=True, check=False, cwd=str(work),
                              env=env, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr

    # Alone, the tarball asks for what galaxy.yml declares, which is not there yet.
    rc, out = install(str(tarball))
    assert rc != 0 and "* community.docker:" in out, out
    assert "(dependency of gpufleet.inference:" in out, out
    rc, out = install(str(tarball), *artifacts)
    assert rc == 0, out
    sys.stderr.write("build and install: %.1f s\n" % (time.time() - t0))
    inventory = base / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {BOX: {}}, "vars": lab_vars()}}))
    return {"env": env, "work": work, "inventory": inventory, "base": base,
            "collections": collections / "ansible_collections"}


def clean_env(**extra):
    """The caller's environment without anything that points Ansible or Python at the
    repository (make exports ANSIBLE_CONFIG and PYTHONPATH=.build/collections)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ANSIBLE_") and key != "PYTHONPATH"}
    env.update(ANSIBLE_NOCOLOR="1", **extra)
    return env


def playbook(installed, name, variables):
    """`ansible-playbook gpufleet.inference.<name>` from the empty working directory."""
    extra = installed["base"] / ("vars-%d.json" % time.monotonic_ns())
    extra.write_text(json.dumps(dict(MANAGED, **variables)))
    t0 = time.time()
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "gpufleet.inference." + name,
                           "-i", str(installed["inventory"]), "-e", "@%s" % extra],
                          capture_output=True, text=True, check=False, cwd=str(installed["work"]),
                          env=dict(installed["env"], DOCKER_HOST=os.environ["DOCKER_HOST"]),
                          timeout=600)
    sys.stderr.write("gpufleet.inference.%s %s: %.1f s\n" % (name, variables, time.time() - t0))
    return proc.returncode, proc.stdout + proc.stderr


def test_installed_collection_resolves_only_from_the_empty_path(installed):
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "list",
                           "--format", "json"],
                          capture_output=True, text=True, check=False, cwd=str(installed["work"]),
                          env=installed["env"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = json.loads(proc.stdout)
    path = str(installed["collections"])
    # Besides ansible-core's own internal collection (inside its package), only the tmp path.
    others = {where: names for where, names in listed.items() if where != path}
    assert all(name.startswith("ansible._") for names in others.values() for name in names), \
        listed
    assert sorted(listed[path]) == ["community.docker", "community.library_inventory_filtering_v1",
                                    "gpufleet.inference"], listed
    own = installed["collections"] / "gpufleet" / "inference"
    assert not own.is_symlink()
    assert not set(os.listdir(own)) & set(REPOSITORY_ONLY), sorted(os.listdir(own))


def test_installed_site_switch_mode_and_report_from_an_empty_directory(installed, empty_dual3):
    dual = empty_dual3
    rc, out = playbook(installed, "site", {"dual_gpu_mode": "ollama"})
    assert rc == 0, out
    assert "FLEET OUTCOME" in out, out
    assert_compose_state(dual, MODES["ollama"])

    rc, out = playbook(installed, "switch_mode", {"inference_mode": "vllm"})
    assert rc == 0, out
    assert_compose_state(dual, MODES["vllm"])
    assert "INFERENCE_MODE=vllm" in dual.sh("cat %s/.env" % PROJECT).stdout.split()

    # The report: its page in the working directory (report_html_path's default), nothing
    # written in the installed collection.
    rc, out = playbook(installed, "report", {})
    assert rc == 0, out
    page = installed["work"] / "fleet-report.html"
    assert "page: %s" % page in out, out
    assert 'data-host="%s"' % BOX in page.read_text()
    assert os.listdir(installed["work"]) == ["fleet-report.html"]
    written = [os.path.join(top, name) for top, _dirs, files in os.walk(installed["collections"])
               for name in files if name.endswith(".html")]
    assert written == [], written
