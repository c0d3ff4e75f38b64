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

import pytest

from tests.support.nvml_standin import NvmlState, build_standin

NVML_ERROR_UNINITIALIZED = 1


@pytest.fixture(scope="session")
def nvml_lib(tmp_path_factory):
    """Build the stand-in with extra gcc flags; returns the path of libnvidia-ml.so.1."""
    built = {}

    def build(*flags):
        if flags not in built:
            built[flags] = build_standin(tmp_path_factory.mktemp("nvml"), *flags)
        return built[flags]

    return build


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
