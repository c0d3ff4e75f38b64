# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one-line status of a host's mode (playbooks/status.yml), on the real catalog's plans."""

from __future__ import annotations

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import status as status_filter
from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _status
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import REPO, TWO_GPUS, default_catalog, gpu

MODES = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text())["services_modes"]
ONE_GB10 = [dict(gpu(0, total=124610), name="NVIDIA GB10")]


def mode_plan(mode, gpus=None):
    gpus = ONE_GB10 if gpus is None else gpus
    catalog, extra = default_catalog()
    chosen = _plan.resolve_mode(mode, MODES, _plan.check_catalog(catalog, extra))
    placement = _plan.place_in_two_passes(catalog, "auto", chosen, extra, gpus,
                                          lambda services: place(gpus, services))
    return _plan.plan(catalog, placement, gpus, "auto", mode, extra, modes=MODES)


def seen(name, healthy=True, problems=()):
    return {"name": name, "healthy": healthy, "device_ok": True, "gpu_processes": [],
            "gpu_used": True, "model_in_vram": None, "problems": list(problems)}


@pytest.mark.parametrize("lines, runtime, names", [
    (["vllm", "docling", "", "vllm"], "compose", ["docling", "vllm"]),
    ([], "compose", []),
    (["ollama@ollama.service loaded active running Ollama ollama",
      "vllm@vllm.service   loaded active running vLLM vllm",
      "ollama@ollama_research.service loaded active running Ollama ollama_research",
      "docker.service loaded active running Docker"], "systemd",
     ["ollama", "ollama_research", "vllm"]),
    (["gpufleet-ollama.service loaded active running gpufleet.inference ollama (ollama)",
      "gpufleet-network.service loaded active exited gpufleet-network.service",
      "gpufleet-vllm.service loaded active running gpufleet.inference vllm (vllm)",
      "podman.service loaded active running Podman API Service"], "podman",
     ["ollama", "vllm"]),
], ids=["compose", "nothing-runs", "systemd", "podman"])
def test_running_services(lines, runtime, names):
    assert _status.running_services(lines, runtime) == names


@pytest.mark.parametrize("mode, verified, running, line, conflicts", [
    # Ingestion: Ollama stopped on purpose, not a problem; vLLM on the GB10, Docling on the CPU.
    ("ingestion", [seen("vllm"), seen("docling")], ["vllm", "docling"],
     "spark: mode ingestion (exclusive), profile single-gpu: vllm on GPU 0 healthy; "
     "docling healthy", []),
    # Ollama still runs beside vLLM in ingestion: the conflict the old status warned about.
    ("ingestion", [seen("vllm"), seen("docling")], ["ollama", "vllm", "docling"],
     "spark: mode ingestion (exclusive), profile single-gpu: vllm on GPU 0 healthy; "
     "docling healthy; CONFLICT, not in mode ingestion but running: ollama", ["ollama"]),
    ("chat", [seen("ollama", False, ["ollama: not healthy within 2 s (HTTP 503)"])], [],
     "spark: mode chat (exclusive), profile single-gpu: ollama on GPU 0 UNHEALTHY (not healthy "
     "within 2 s (HTTP 503))", []),
    # A service that is down but said nothing more; another mode's services that do not run.
    ("chat", [seen("ollama", False)], ["docling"],
     "spark: mode chat (exclusive), profile single-gpu: ollama on GPU 0 UNHEALTHY (did not "
     "answer 200); CONFLICT, not in mode chat but running: docling", ["docling"]),
], ids=["ingestion", "ingestion-with-ollama", "chat-down", "chat-docling-left"])
def test_status_of_an_exclusive_mode(mode, verified, running, line, conflicts):
    result = _status.status(mode_plan(mode), verified, running, "spark")
    assert result["line"] == line
    assert result["conflicts"] == conflicts and result["conflict"] is bool(conflicts)
    assert result["exclusive"] is True and result["mode"] == mode
    if conflicts:
        assert result["warning"].startswith("WARNING: spark runs %s, which mode %s does not run "
                                            "(an exclusive mode" % (conflicts[0], mode))
        assert "playbooks/site.yml -e inference_mode=%s" % mode in result["warning"]
    else:
        assert "warning" not in result


def test_a_service_that_sleeps_is_parked_not_a_conflict():
    """A switch parks a sleep: true service asleep (its container runs, never routed to)."""
    plan = mode_plan("chat")
    for service in plan["services"]:
        if service["name"] == "vllm":
            service["sleep"] = True
    result = _status.status(plan, [seen("ollama")], ["ollama", "vllm", "docling"], "spark")
    assert result["conflicts"] == ["docling"] and result["parked"] == ["vllm"]
    assert result["line"].endswith(
        "parked asleep (sleep: true): vllm; CONFLICT, not in mode chat but running: docling")


def test_status_of_a_dual_gpu_mode_names_each_gpu_and_skips_what_has_no_health_port():
    plan = mode_plan("vllm", TWO_GPUS)
    for service in plan["services"]:
        if service["name"] == "vision":
            service["health"] = None
            service["ports"] = []
    verified = [seen("ollama"), seen("vllm"), seen("docling")]
    result = _status.status(plan, verified, ["ollama", "vllm", "docling"], "ws")
    assert result["line"] == (
        "ws: mode vllm, profile dual-gpu: ollama on GPU 0 healthy; vision on GPU 0 not checked "
        "(no published health port); vllm on GPU 1 healthy; docling healthy")
    assert result["exclusive"] is False and result["conflicts"] == []
    assert [s["healthy"] for s in result["services"]] == [True, None, True, True]


def test_status_with_systemd_units():
    result = _status.status(mode_plan("ingestion", TWO_GPUS), [seen("vllm")],
                            ["ollama@ollama.service loaded active running Ollama",
                             "vllm@vllm.service loaded active running vLLM"], "h", "systemd")
    assert result["conflicts"] == ["ollama"] and result["running"] == ["ollama", "vllm"]


@pytest.mark.parametrize("change, args, message", [
    (lambda p: p.pop("mode"), ([], []),
     "services_plan.mode must be a dict with a name (the plan of a services role that knows the "
     "modes); got: None"),
    (None, ("nope", []), "verified must be the services of a gpufleet.inference.service_verify "
     "result (a list of dicts); got: 'nope'"),
    (None, ([], "vllm\n"), "running must be the output lines of docker ps or systemctl (a list "
     "of strings); got: 'vllm\\n'"),
    (None, ([], [], "h", "k8s"), "runtime must be one of compose, systemd, podman; got: 'k8s'"),
], ids=["plan-without-mode", "verified-not-a-list", "running-a-string", "runtime"])
def test_status_bad_input(change, args, message):
    plan = mode_plan("chat")
    if change:
        change(plan)
    with pytest.raises(ValueError) as err:
        _status.status(plan, *args)
    assert str(err.value) == message


def test_host_status_filter_is_status_and_names_itself_on_bad_input():
    host_status = status_filter.FilterModule().filters()["host_status"]
    plan = mode_plan("ingestion")
    assert host_status(plan, [seen("vllm")], ["ollama"], "h") == \
        _status.status(plan, [seen("vllm")], ["ollama"], "h")
    with pytest.raises(AnsibleFilterError) as err:
        host_status(plan, [], [], "h", "quadlet")
    assert str(err.value) == ("host_status: runtime must be one of compose, systemd, podman; "
                              "got: 'quadlet'")
