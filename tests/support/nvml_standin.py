# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build and drive the stand-in libnvidia-ml.so.1 (lab/nvml) from tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NVML_BUILD_SCRIPT = REPO_ROOT / "lab" / "nvml" / "build.sh"


def build_standin(out_dir, *flags):
    """Compile the stand-in into ``out_dir``; returns the path of libnvidia-ml.so.1."""
    result = subprocess.run(
        ["sh", str(NVML_BUILD_SCRIPT), str(out_dir), "-Werror", *flags],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, "building the stand-in failed:\n" + result.stderr
    return str(Path(out_dir) / "libnvidia-ml.so.1")


class NvmlState:
    """The stand-in's state file; every write replaces it by rename."""

    def __init__(self, path):
        self.path = str(path)
        self.procs_dir = self.path + ".d"
        os.makedirs(self.procs_dir, exist_ok=True)

    @staticmethod
    def _replace(path, text):
        tmp = "%s.tmp.%d" % (path, os.getpid())
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)

    def write(self, text):
        self._replace(self.path, text)

    def write_gpus(self, gpus, driver_version="590.48.01", cuda_driver_version=13010,
                   **settings):
        """Render GPUs given as dicts; a list value repeats its key (process, mig_device)."""
        lines = ["driver_version %s" % driver_version,
                 "cuda_driver_version %s" % cuda_driver_version]
        lines.extend(_lines(settings))
        for gpu in gpus:
            lines.append("gpu")
            lines.extend(_lines(gpu))
        self.write("\n".join(lines) + "\n")

    def register(self, gpu_index, pid, mib, **extra):
        """What a process writes to say it holds ``mib`` MiB on GPU ``gpu_index``."""
        lines = [str(mib)] + ["%s %s" % item for item in extra.items()]
        path = os.path.join(self.procs_dir, "gpu%d-%d" % (gpu_index, pid))
        self._replace(path, "\n".join(lines) + "\n")
        return path


def _lines(values):
    lines = []
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append("%s %s" % (key, item))
    return lines
