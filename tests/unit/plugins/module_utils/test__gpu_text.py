# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lines playbooks/gpu_summary.yml and playbooks/place_example.yml print.

The expected lines are what the playbooks' former Jinja printed for the same facts
(tests/integration/test_gpu_summary_playbook.py pins the summary through ansible-playbook).
"""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_text

A5500 = {"index": 0, "name": "NVIDIA RTX A5500", "memory_kind": "dedicated",
         "memory_total_mib": 24564, "memory_used_mib": 23987, "memory_free_mib": 247,
         "compute_capability": "8.6", "healthy": True, "errors": [],
         "processes": [{"pid": 4242, "name": "ollama", "used_memory_mib": 4683}]}
LOST = {"index": 1, "name": None, "memory_kind": "dedicated", "memory_total_mib": None,
        "memory_used_mib": None, "memory_free_mib": None, "compute_capability": None,
        "healthy": False, "processes": [],
        "errors": ["nvmlDeviceGetHandleByIndex failed: GPU is lost (NVML error 15)"]}
SUMMARY = {"count": 2, "total_memory_mib": 24564, "free_memory_mib": 247,
           "recommended_profile": "single-gpu", "backend": "nvml", "driver_version": "590.48.01",
           "warnings": ["GPU 1 (identity unknown) is unhealthy: nvmlDeviceGetHandleByIndex failed"]}
HEAD = ("lab: 2 GPU(s), 24564 MiB total, 247 MiB free, recommended profile: single-gpu "
        "(backend: nvml, driver: 590.48.01)")
A5500_LINE = ("GPU 0  NVIDIA RTX A5500         dedicated  24564 MiB total   23987 used     247 free"
              "  cc 8.6  healthy")
LOST_LINE = ("GPU 1  -                        dedicated      - MiB total       - used       - free"
             "  cc -    UNHEALTHY: nvmlDeviceGetHandleByIndex failed: GPU is lost (NVML error 15)")


@pytest.mark.parametrize("summary, gpus, expected", [
    (SUMMARY, [A5500, LOST], [
        HEAD, A5500_LINE, "      pid 4242  ollama  4683 MiB", LOST_LINE,
        "warning: GPU 1 (identity unknown) is unhealthy: nvmlDeviceGetHandleByIndex failed"]),
    (dict(SUMMARY, count=0, total_memory_mib=0, free_memory_mib=0, recommended_profile="cpu",
          backend="", driver_version=None, warnings=[]), [],
     ["lab: 0 GPU(s), 0 MiB total, 0 MiB free, recommended profile: cpu (backend: none, "
      "driver: none)"]),
    (dict(SUMMARY, warnings=["a", "b"]),
     [dict(A5500, processes=[{"pid": 7, "name": None, "used_memory_mib": None}]),
      dict(LOST, errors=["x", "y"])],
     [HEAD, A5500_LINE, "      pid 7  -  - MiB",
      LOST_LINE.partition("UNHEALTHY: ")[0] + "UNHEALTHY: x; y", "warning: a", "warning: b"]),
    ({"count": 1}, [{"healthy": True}],
     ["lab: 1 GPU(s), None MiB total, None MiB free, recommended profile: None (backend: none, "
      "driver: none)",
      "GPU -  -                        -              - MiB total       - used       - free"
      "  cc -    healthy"]),
], ids=["healthy-and-lost", "no-gpu", "processes-and-errors", "facts-left-out"])
def test_summary_lines(summary, gpus, expected):
    assert _gpu_text.summary_lines(summary, gpus, "lab") == expected


@pytest.mark.parametrize("summary, gpus, message", [
    (None, [], "gpu_summary must be a dict; got: None"),
    ({"count": "2"}, [], "gpu_summary.count must be an integer; got: '2'"),
    ({"count": True}, [], "gpu_summary.count must be an integer; got: True"),
    (SUMMARY, {"0": A5500}, "gpus must be a list; got: {'0':"),
    (SUMMARY, ["GPU 0"], "gpus[0] must be a dict; got: 'GPU 0'"),
    (SUMMARY, [dict(LOST, errors="lost")], "gpus[0].errors must be a list; got: 'lost'"),
    (SUMMARY, [dict(A5500, processes={"pid": 1})], "gpus[0].processes must be a list; got: "),
    (SUMMARY, [A5500, dict(A5500, processes=[4242])],
     "gpus[1].processes[0] must be a dict; got: 4242"),
    (dict(SUMMARY, warnings="careful"), [], "gpu_summary.warnings must be a list; got: 'careful'"),
])
def test_summary_lines_bad_input(summary, gpus, message):
    with pytest.raises(ValueError) as err:
        _gpu_text.summary_lines(summary, gpus, "lab")
    assert str(err.value).startswith(message)


UUID = "GPU-a5500000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("assignments, expected", [
    ([], []),
    ([{"service": "ai-llm", "gpu": 0, "vram_budget_mib": 22221,
       "environment": {"CUDA_VISIBLE_DEVICES": UUID}, "host": "lab-ws"}],
     ["ai-llm  0  22221  {'CUDA_VISIBLE_DEVICES': '%s'}" % UUID]),
    ([{"service": "ai-clip", "gpu": None, "vram_budget_mib": 1229, "environment": {}},
      {"service": "ai-yolo26", "gpu": 1, "vram_budget_mib": 650,
       "environment": {"CUDA_VISIBLE_DEVICES": "GPU-1", "X": "1"}}],
     ["ai-clip  None  1229  {}",
      "ai-yolo26  1  650  {'CUDA_VISIBLE_DEVICES': 'GPU-1', 'X': '1'}"]),
])
def test_placement_lines(assignments, expected):
    assert _gpu_text.placement_lines(assignments) == expected


@pytest.mark.parametrize("assignments, message", [
    (None, "assignments must be a list; got: None"),
    ({"ai-llm": {}}, "assignments must be a list; got: {'ai-llm': {}}"),
    (["ai-llm"], "assignments[0] must be a dict; got: 'ai-llm'"),
    ([{"service": "a", "gpu": 0, "vram_budget_mib": 1, "environment": {}}, {"service": "b"}],
     "assignments[1] lacks gpu, vram_budget_mib, environment; got: {'service': 'b'}"),
])
def test_placement_lines_bad_input(assignments, message):
    with pytest.raises(ValueError) as err:
        _gpu_text.placement_lines(assignments)
    assert str(err.value) == message
