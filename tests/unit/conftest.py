# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared unit-test fixtures: the stand-in libnvidia-ml.so.1 (lab/nvml) under the real pynvml.

``nvml_lib(*flags)`` builds the stand-in with gcc (once per set of flags and session);
``nvml_state`` writes its state file (atomically, as the library expects) and points
``GPUFLEET_NVML_STATE`` at it; ``use_nvml_lib(path)`` makes the imported pynvml talk to
that library and, after the test, checks that NVML was shut down again.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NVML_BUILD_SCRIPT = REPO_ROOT / "lab" / "nvml" / "build.sh"
NVML_ERROR_UNINITIALIZED = 1


@pytest.fixture(scope="session")
def nvml_lib(tmp_path_factory):
    """Build the stand-in with extra gcc flags; returns the path of libnvidia-ml.so.1."""
    built = {}

    def build(*flags):
        if flags not in built:
            out = tmp_path_factory.mktemp("nvml")
            result = subprocess.run(
                ["sh", str(NVML_BUILD_SCRIPT), str(out), "-Werror", *flags],
                capture_output=True, text=True, check=False,
            )
            assert result.returncode == 0, "building the stand-in failed:\n" + result.stderr
            built[flags] = str(out / "libnvidia-ml.so.1")
        return built[flags]

    return build


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


@pytest.fixture
def nvml_state(tmp_path, monkeypatch):
    state = NvmlState(tmp_path / "nvml.state")
    monkeypatch.setenv("GPUFLEET_NVML_STATE", state.path)
    return state


def _forget_library(pynvml):
    with pynvml.libLoadLock:
        pynvml.nvmlLib = None
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlLib_refcount = 0


@pytest.fixture
def use_nvml_lib():
    """Point the imported pynvml at a library; afterwards NVML must be shut down again."""
    import pynvml  # noqa: PLC0415  (a pinned test dependency: a missing one must fail)

    loaded = []

    def use(path):
        _forget_library(pynvml)
        lib = ctypes.CDLL(path)
        pynvml.nvmlLib = lib
        loaded.append(lib)
        return pynvml

    yield use
    _forget_library(pynvml)
    still_initialised = 0
    for lib in loaded:
        while lib.nvmlShutdown() != NVML_ERROR_UNINITIALIZED and still_initialised < 100:
            still_initialised += 1
    assert still_initialised == 0, "NVML was left initialised %d time(s)" % still_initialised
