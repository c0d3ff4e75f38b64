# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbook behind `make run` prints one readable block per host."""

from __future__ import annotations

import os
import subprocess

from tests.support.nvml_standin import NvmlState, build_standin

from .conftest import BIN, REPO, ansible_env
from .test_gpu_facts_module import A400, A5500, BARE_PATH


def test_summary_lists_each_gpu_and_the_profile(tmp_path):
    lib = build_standin(tmp_path / "lib")
    state = NvmlState(tmp_path / "nvml.state")
    state.write_gpus([A5500, dict(A400, lost=1)])
    env = ansible_env(PATH=BARE_PATH, GPUFLEET_NVML_STATE=state.path,
                      LD_LIBRARY_PATH=os.path.dirname(lib))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventory/localhost.yml"),
         str(REPO / "playbooks/gpu_summary.yml")],
        capture_output=True, text=True, check=False, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert ("localhost: 2 GPU(s), 24564 MiB total, 4930 MiB free, recommended profile: "
            "single-gpu (backend: nvml, driver: 590.48.01)") in out
    assert "GPU 0  NVIDIA RTX A5500" in out and "24564 MiB total" in out
    assert "UNHEALTHY: " in out and "GPU is lost" in out
    assert "GPU 1  -" in out and "None" not in out
    assert ("warning: GPU 1 (identity unknown) is unhealthy: "
            "nvmlDeviceGetHandleByIndex failed") in out
