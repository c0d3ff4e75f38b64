# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/apply.yml on the lab's dual box: the systemd path, rollbacks, a GPU lost.

The compose path of each dual-GPU mode is converged by site.yml (test_lab_site.py). Every case
asserts real state: the containers' DeviceRequests, Ollama's /api/ps, the instances'
environment, the processes NVML reports on each GPU.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml
from conftest import ROOT
from dual import (
    HEALTH,
    MODES,
    apply,
    assert_compose_state,
    clear_compose,
    clear_systemd,
    converge,
    gpu_processes,
    sha256s,
)


def test_compose_rollback_restores_files_and_services(dual_lab, tmp_path):
    host = dual_lab["lab-dual"]
    clear_systemd(host)
    rc, out, recap = apply(tmp_path, "lab-dual", {"services_dual_gpu_mode": "ollama"})
    assert rc == 0, out
    before = sha256s(host)
    with open(os.path.join(ROOT, "roles", "services", "defaults", "main.yml")) as handle:
        catalog = yaml.safe_load(handle)["services_catalog"]
    # A vLLM that cannot start: two-way tensor parallelism on the one GPU it is given.
    catalog["vllm"]["command"] = ["--tensor-parallel-size", "2"]
    rc, out, recap = apply(tmp_path, "lab-dual", {
        "services_dual_gpu_mode": "vllm", "services_catalog": catalog,
        "compose_verify_timeout": 15})
    assert rc != 0, out
    assert recap["lab-dual"][2] == 1, out
    assert re.search(r"compose: Wait for the health endpoint of each service: vllm: .*"
                     r"rolled back to the previous files and services "
                     r"\(docling, ollama, ollama_research, vision\)", out), out
    assert sha256s(host) == before
    assert_compose_state(host, MODES["ollama"])


@pytest.mark.parametrize("mode", ["ollama", "vllm"])
def test_systemd_dual_gpu_mode(dual_lab, tmp_path, mode):
    host = dual_lab["lab-dual"]
    clear_compose(host)
    converge(tmp_path, "lab-dual", {"gpufleet_runtime": "systemd",
                                    "services_dual_gpu_mode": mode})
    expected = {name: uuid for name, uuid in MODES[mode].items()
                if name in ("ollama", "ollama_research", "vllm")}
    units = host.sh("systemctl list-units --plain --no-legend --state=active"
                    " 'ollama@*' 'vllm@*'").stdout.split()
    wanted = {"%s@%s.service" % ("vllm" if name == "vllm" else "ollama", name)
              for name in expected}
    assert wanted == {unit for unit in units if unit.endswith(".service")}
    procs = gpu_processes(host)
    for name, uuid in expected.items():
        unit = "%s@%s.service" % ("vllm" if name == "vllm" else "ollama", name)
        show = host.sh("systemctl show -p ActiveState -p MainPID %s" % unit).stdout
        assert "ActiveState=active" in show, show
        pid = re.search(r"MainPID=(\d+)", show).group(1)
        environ = host.sh("tr '\\0' '\\n' < /proc/%s/environ" % pid).stdout.split()
        assert "CUDA_VISIBLE_DEVICES=%s" % uuid in environ, (unit, environ)
        if name == "vllm":
            assert any("vllm" in p for p in procs[uuid]), (name, procs)
            continue
        status, payload = host.http("http://127.0.0.1:%d/api/ps" % HEALTH[name])
        assert status == 200, payload
        models = payload["models"]
        assert len(models) == 1 and models[0]["size_vram"] == models[0]["size"], payload
        assert any("ollama.py runner" in p for p in procs[uuid]), (name, procs)
