# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml: `ansible-builder create` writes a build context that holds the
collection's tarball and its Python, Galaxy and system dependencies (no image is built here;
tests/lab/test_lab_ee.py builds and runs it). The lab's definition (lab/ee.py) is the same EE
with only what the lab cannot fetch swapped."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import yaml

from .conftest import BIN, REPO, ansible_env


def _lines(path):
    return [line.split("#")[0].strip() for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]


def test_builder_creates_the_context(tmp_path):
    # The definition with its files, as in the repository, and the collection built beside it.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "execution-environment.yml", src)
    shutil.copytree(REPO / "ee", src / "ee")
    build = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", str(REPO), "--output-path",
         str(src / "dist")], capture_output=True, text=True, check=False, env=ansible_env())
    assert build.returncode == 0, build.stdout + build.stderr
    tarballs = [p.name for p in (src / "dist").glob("gpufleet-inference-*.tar.gz")]
    assert len(tarballs) == 1

    context = tmp_path / "context"
    proc = subprocess.run(
        [str(BIN / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c",
         str(context), "--output-filename", "Containerfile"],
        capture_output=True, text=True, check=False, cwd=str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No matches" not in proc.stdout + proc.stderr

    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==2.19.14 ansible-runner==2.4.3"' \
        in containerfile
    assert "ansible-galaxy collection install" in containerfile

    build_dir = context / "_build"
    # Python: the EE's own list, and the same pins as the test venv for what both have.
    python = _lines(build_dir / "requirements.txt")
    assert python == _lines(REPO / "ee" / "requirements.txt")
    names = {line.split("==")[0].lower() for line in python}
    assert {"nvidia-ml-py", "pyyaml", "jinja2", "docker"} <= names
    tested = {line.lower() for line in _lines(REPO / "requirements" / "test.txt")}
    tested |= {line.lower() for line in _lines(REPO / "requirements" / "lab.txt")}
    for line in python:
        assert line.lower() in tested, "%s is not the version the tests use" % line

    # Galaxy: community.docker, ansible.posix, and this collection from the copied tarball,
    # whose name carries galaxy.yml's version.
    galaxy = yaml.safe_load((build_dir / "requirements.yml").read_text())["collections"]
    by_name = {c["name"]: c for c in galaxy}
    assert "community.docker" in by_name and "ansible.posix" in by_name
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    ours = "collections/gpufleet-inference-%s.tar.gz" % version
    assert by_name[ours]["type"] == "file"
    assert (build_dir / ours).is_file()
    assert [ours.split("/")[1]] == tarballs

    # System: the ssh client, for rpm-based images like the base image.
    assert "openssh-clients [platform:rpm]" in _lines(build_dir / "bindep.txt")
    assert "procps [platform:dpkg]" in _lines(build_dir / "bindep.txt")


def _lab_ee():
    spec = importlib.util.spec_from_file_location("lab_ee", REPO / "lab" / "ee.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lab_base_has_every_system_package_the_ee_asks_for():
    """The lab's build has no package mirror: bindep must find every Debian package installed
    in the base image (lab/ee-base-packages.txt), or its install step would fail."""
    base = set(_lines(REPO / "lab" / "ee-base-packages.txt"))
    dpkg = [line.split()[0] for line in _lines(REPO / "ee" / "bindep.txt")
            if "platform:dpkg" in line]
    assert dpkg and set(dpkg) <= base, (dpkg, base)
    assert {"python3", "python3-pip", "python3-venv"} <= base


def test_the_lab_definition_swaps_only_what_the_lab_cannot_fetch(tmp_path):
    ee = _lab_ee()
    vendored = ee.collections(str(tmp_path))
    path, lab = ee.lab_definition(str(tmp_path), "gpufleet-ee-base:test", vendored)
    user = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert yaml.safe_load(open(path, encoding="utf-8")) == lab
    # The same EE: Python and system requirements, ansible-core, ansible-runner, version.
    for key in ("python", "system", "ansible_core", "ansible_runner"):
        assert lab["dependencies"][key] == user["dependencies"][key], key
    assert lab["version"] == user["version"]
    assert user["additional_build_files"][0] in lab["additional_build_files"]
    # Swapped: the base image and its package manager and pip, the Galaxy source.
    assert lab["images"]["base_image"]["name"] == "gpufleet-ee-base:test"
    assert lab["dependencies"]["python_interpreter"]["python_path"] == "/usr/bin/python3"
    assert lab["options"] == {"package_manager_path": "/usr/bin/apt-get",
                              "skip_pip_install": True}
    # Every collection of ee/requirements.yml, as an artifact of that name beside this one's.
    wanted = yaml.safe_load((REPO / "ee" / "requirements.yml").read_text())["collections"]
    given = yaml.safe_load((tmp_path / lab["dependencies"]["galaxy"]).read_text())["collections"]
    assert all(req["type"] == "file" for req in given)
    files = {req["name"] for req in given}
    for req in wanted:
        if req.get("type") == "file":
            assert req["name"] in files
        else:
            assert vendored[req["name"]]["name"] in files, req["name"]
            assert (tmp_path / "deps" / vendored[req["name"]]["name"].split("/")[1]).is_file()

    proc = subprocess.run(
        [str(BIN / "ansible-builder"), "create", "-f", path, "-c", str(tmp_path / "context"),
         "--output-filename", "Containerfile"],
        capture_output=True, text=True, check=False, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (tmp_path / "context" / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="gpufleet-ee-base:test"' in containerfile
    assert 'ARG PKGMGR="/usr/bin/apt-get"' in containerfile
    assert "pip_install" not in containerfile  # Debian's pip, not ensurepip
    # The wheelhouse's pip.conf: written first in the base stage, removed in the final one.
    base = containerfile[containerfile.index("AS base"):containerfile.index("AS galaxy")]
    assert "> /etc/pip.conf" in base
    final = containerfile[containerfile.index("AS final"):]
    assert final.index("RUN rm -f /etc/pip.conf") < final.index("USER 1000")
    built = sorted(p.name for p in (tmp_path / "context" / "_build" / "collections").iterdir())
    assert built == sorted(name.split("/")[1] for name in files)
