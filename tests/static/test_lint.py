# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The linters of `make lint`, as tests: ruff, yamllint --strict, ansible-lint --offline.

They run inside the suite (`make test`, `make test-quick`) beside the other tests rather than
before them, so the linters' single-threaded minutes overlap with the rest. Each runs from the
repository root with the repository's own configuration, exactly as `make lint` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

LINTERS = {
    "ruff": ["ruff", "check", "."],
    "yamllint": ["yamllint", "--strict", "."],
    "ansible-lint": ["ansible-lint", "--offline"],
}


@pytest.mark.parametrize("linter", sorted(LINTERS))
def test_linter_passes(linter):
    command = LINTERS[linter]
    env = dict(os.environ, PATH=str(BIN) + os.pathsep + os.environ["PATH"], NO_COLOR="1",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=str(REPO), env=env,
                          capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, "%s failed (rc %d):\n%s" % (
        " ".join(command), proc.returncode, (proc.stdout + proc.stderr)[-8000:])
