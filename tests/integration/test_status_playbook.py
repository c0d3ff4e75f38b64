# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/status.yml and health.yml on localhost: the recorded mode, its services, a conflict.

A stand-in ``docker`` on PATH answers the listing of the project's running containers with the
services of RUNNING (and nothing else: service_verify then finds no container, so the services
of the mode are reported unhealthy); the host's .env records the mode, as the services role
writes it.
"""

from __future__ import annotations

import os

import pytest

from .playbook_helpers import gpu, run_playbook

DOCKER = """#!/bin/sh
# The running containers' compose service labels, only for the listing status.yml asks.
case "$*" in
  *com.docker.compose.service*) cat "%s" ;;
esac
exit 0
"""


def status(tmp_path, mode, running, playbook="status.yml", **extra):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (tmp_path / "running.txt").write_text("".join(name + "\n" for name in running))
    docker = bindir / "docker"
    docker.write_text(DOCKER % (tmp_path / "running.txt"))
    docker.chmod(0o755)
    env_file = tmp_path / "project" / ".env"
    env_file.parent.mkdir(exist_ok=True)
    env_file.write_text("INFERENCE_MODE=%s\n" % mode)
    extra_vars = {"services_gather_gpu_facts": False,
                  "services_gpus": [dict(gpu(0, total=124610), name="NVIDIA GB10")],
                  "services_env_file": str(env_file), "status_wait": 1, **extra}
    return run_playbook(playbook, tmp_path, extra_vars,
                        env={"PATH": "%s:%s" % (bindir, os.environ["PATH"])})


@pytest.mark.parametrize("mode, running, fail, rc, said, conflict", [
    ("ingestion", ["vllm", "docling"], True, 0,
     "localhost: mode ingestion (exclusive), profile single-gpu: vllm on GPU 0 UNHEALTHY (it "
     "has no container", False),
    ("ingestion", ["ollama", "vllm", "docling"], False, 0,
     "CONFLICT, not in mode ingestion but running: ollama", True),
    ("ingestion", ["ollama", "vllm", "docling"], True, 2,
     "CONFLICT, not in mode ingestion but running: ollama", True),
    ("chat", ["ollama", "vllm"], False, 0,
     "localhost: mode chat (exclusive), profile single-gpu: ollama on GPU 0 UNHEALTHY", True),
], ids=["ingestion", "conflict-reported", "conflict-fails-when-asked", "chat"])
def test_status_says_the_recorded_mode_and_its_conflicts(tmp_path, mode, running, fail, rc,
                                                         said, conflict):
    code, output, recap = status(tmp_path, mode, running, status_fail_on_conflict=fail)
    assert code == rc, output
    assert said in output, output
    assert ("WARNING: localhost runs" in output) is conflict, output
    assert recap["changed"] == 0, output


@pytest.mark.parametrize("mode, checked, not_checked", [
    ("ingestion", ["vllm", "docling"], ["ollama"]),
    ("chat", ["ollama"], ["vllm", "docling"]),
])
def test_health_playbook_checks_the_services_of_the_recorded_mode(tmp_path, mode, checked,
                                                                  not_checked):
    """health.yml alone: the health role plans the recorded mode (the services role) first."""
    code, output, _recap = status(tmp_path, mode, [], "health.yml",
                                  health_fail_when_unhealthy=False)
    assert code == 0, output
    table = output[output.index("localhost: UNHEALTHY"):]
    table = table[:table.index("TASK [")]
    for name in checked:
        assert '"%s ' % name in table, table
    for name in not_checked:
        assert '"%s ' % name not in table, table
