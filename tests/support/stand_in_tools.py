# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the stand-in vendor tools (tests/stand_ins/bin) the way the collectors run real ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"


def stand_in_run(timeout=20, **env):
    """A ``run(argv)`` executing the stand-ins with the given GPUFLEET_* variables."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("GPUFLEET_")}
    base["PATH"] = str(STAND_INS / "bin") + os.pathsep + base.get("PATH", "")
    base.update({key: str(value) for key, value in env.items()})
    calls = []

    def run(argv):
        calls.append(list(argv))
        done = subprocess.run(argv, env=base, capture_output=True, text=True, timeout=timeout,
                              check=False)
        return done.returncode, done.stdout, done.stderr

    run.calls = calls
    return run


def pick(gpu, keys):
    return {key: gpu[key] for key in keys}
