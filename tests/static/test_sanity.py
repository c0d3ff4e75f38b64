# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`ansible-test sanity` on the collection, as a test (what `make sanity` runs).

ansible-test wants the collection under ansible_collections/<namespace>/<name>, outside any
other git work tree: the files git tracks or would track are copied into a temporary one.
`make sanity-deps` (a step of `make test`) puts its offline pip bootstrap in place first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ansible_test_sanity_passes(tmp_path):
    dest = tmp_path / "ansible_collections" / "gpufleet" / "inference"
    dest.mkdir(parents=True)
    copy = subprocess.run(
        "git ls-files -co --exclude-standard | tar -T - -cf - | tar -xf - -C %s" % dest,
        shell=True, cwd=str(REPO), capture_output=True, text=True, check=False)
    assert copy.returncode == 0, copy.stderr
    env = dict(os.environ, PATH=str(BIN) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--venv", "--python",
         "%d.%d" % sys.version_info[:2], "--color", "no"],
        cwd=str(dest), env=env, capture_output=True, text=True, check=False, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, "ansible-test sanity failed (rc %d):\n%s" % (
        proc.returncode, out[-10000:])
    assert "Running sanity test \"validate-modules\"" in out, out[-3000:]
