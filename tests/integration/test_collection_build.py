# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`ansible-galaxy collection build` gives a tarball that installs and whose modules run."""

from __future__ import annotations

import subprocess
import tarfile

from .conftest import BIN, REPO, ansible_env, run_module


def test_build_install_and_run(tmp_path):
    build = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", str(REPO), "--output-path",
         str(tmp_path)], capture_output=True, text=True, check=False, env=ansible_env())
    assert build.returncode == 0, build.stderr
    tarballs = list(tmp_path.glob("gpufleet-inference-*.tar.gz"))
    assert len(tarballs) == 1
    with tarfile.open(tarballs[0]) as archive:
        names = set(archive.getnames())
    assert "plugins/modules/gpu_facts.py" in names
    assert "meta/runtime.yml" in names
    assert not any(name.startswith((".venv", ".build", ".git/")) for name in names)

    install_root = tmp_path / "installed"
    install = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--force", str(tarballs[0]), "-p",
         str(install_root)], capture_output=True, text=True, check=False, env=ansible_env())
    assert install.returncode == 0, install.stderr
    assert (install_root / "ansible_collections/gpufleet/inference/MANIFEST.json").is_file()

    # Run the installed copy, not the checkout: no GPU tool on PATH, no NVML library.
    rc, result = run_module(
        "gpufleet.inference.gpu_facts", "backend=sysfs sysfs_root=%s" % tmp_path,
        collections_path=install_root,
        env={"PATH": "/usr/bin:/bin"})
    assert rc == 0, result
    assert result["ansible_facts"]["gpus"] == []
    assert result["ansible_facts"]["gpu_summary"]["recommended_profile"] == "cpu"
