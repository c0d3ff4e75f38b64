# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml: `ansible-builder create` writes a build context that holds the
collection's tarball and its Python, Galaxy and system dependencies (no image is built)."""

from __future__ import annotations

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
