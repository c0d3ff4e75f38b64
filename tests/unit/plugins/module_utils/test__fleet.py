# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/_fleet.py: GPU expectations and the rollout outcome table."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _fleet


def gpu(name="NVIDIA L4", mib=23034, cc="8.9", healthy=True, index=0, error=None):
    return {"index": index, "name": name, "memory_total_mib": mib, "compute_capability": cc,
            "healthy": healthy, "error": error}


L4 = gpu()
TWO_3090 = [gpu("NVIDIA GeForce RTX 3090", 24576, "8.6", index=0),
            gpu("NVIDIA GeForce RTX 3090", 24576, "8.6", index=1)]


@pytest.mark.parametrize("gpus, expected, problems", [
    ([L4], None, []),
    ([L4], {}, []),
    ([L4], 1, []),
    ([], 0, []),
    ([], {"count": 0}, []),
    (TWO_3090, {"count": 2, "name": "*RTX 3090", "min_memory_mib": 24000,
                "min_compute_capability": "8.6"}, []),
    (TWO_3090, {"names": ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3090"]}, []),
    ([L4], 2, ["expected 2 GPU(s), found 1"]),
    ([], {"count": 1, "name": "NVIDIA L4"}, ["expected 1 GPU(s), found 0"]),
    ([L4], {"name": "NVIDIA H100*"}, ["GPU 0 (NVIDIA L4): expected name 'NVIDIA H100*'"]),
    (TWO_3090, {"names": ["NVIDIA GeForce RTX 3090", "NVIDIA RTX A400"]},
     ["GPU 1 (NVIDIA GeForce RTX 3090): expected name 'NVIDIA RTX A400'"]),
    ([L4], {"min_memory_mib": 24000},
     ["GPU 0 (NVIDIA L4): 23034 MiB, expected at least 24000 MiB"]),
    ([gpu(mib=None)], {"min_memory_mib": 1}, ["GPU 0 (NVIDIA L4): unknown MiB, expected at "
                                              "least 1 MiB"]),
    ([L4], {"min_compute_capability": "9.0"},
     ["GPU 0 (NVIDIA L4): compute capability 8.9, expected at least 9.0"]),
    ([gpu(cc="10.0")], {"min_compute_capability": "9.0"}, []),
    ([gpu(healthy=False, error="GPU is lost")], 1, ["GPU 0 (NVIDIA L4): unhealthy (GPU is lost)"]),
    ([gpu(healthy=False)], {"count": 1, "healthy": False}, []),
])
def test_check_expectation(gpus, expected, problems):
    result = _fleet.check_expectation(gpus, expected)
    assert result["problems"] == problems
    assert result["ok"] is (not problems)


def test_summary_names_each_gpu():
    assert _fleet.check_expectation(TWO_3090, None)["summary"] == (
        "2 GPU(s): NVIDIA GeForce RTX 3090 (24576 MiB), NVIDIA GeForce RTX 3090 (24576 MiB)")
    assert _fleet.check_expectation([], 0)["summary"] == "no GPU"


@pytest.mark.parametrize("expected, message", [
    (-1, "gpufleet_expected_gpus.count must be an integer >= 0; got: -1"),
    ("two", "gpufleet_expected_gpus must be a GPU count or a dict; got: 'two'"),
    (True, "gpufleet_expected_gpus must be a GPU count or a dict; got: True"),
    ({"count": "2"}, "gpufleet_expected_gpus.count must be an integer >= 0; got: '2'"),
    ({"gpus": 2}, "gpufleet_expected_gpus has unknown key(s) gpus (known: count, names, name, "
                  "min_memory_mib, min_compute_capability, healthy)"),
    ({"min_memory_mib": 1.5}, "gpufleet_expected_gpus.min_memory_mib must be an integer >= 0;"
                              " got: 1.5"),
    ({"names": "NVIDIA L4"}, "gpufleet_expected_gpus.names must be a list of GPU names (globs);"
                             " got: 'NVIDIA L4'"),
    ({"count": 2, "names": ["NVIDIA L4"]},
     "gpufleet_expected_gpus.count (2) and the length of gpufleet_expected_gpus.names (1) "
     "disagree"),
    ({"name": ""}, "gpufleet_expected_gpus.name must be a GPU name (glob); got: ''"),
    ({"min_compute_capability": "ampere"},
     "gpufleet_expected_gpus.min_compute_capability must be a compute capability like '8.6';"
     " got: 'ampere'"),
    ({"healthy": "yes"}, "gpufleet_expected_gpus.healthy must be true or false; got: 'yes'"),
    ({"min_compute_capability": "\uff18.6"},
     "gpufleet_expected_gpus.min_compute_capability must be a compute capability like '8.6';"
     " got: '\uff18.6'"),
])
def test_bad_expectations_name_the_field_and_value(expected, message):
    with pytest.raises(ValueError) as err:
        _fleet.check_expectation([L4], expected)
    assert str(err.value) == message


def test_gpus_must_be_the_facts_list():
    with pytest.raises(ValueError, match=r"^gpus must be the list of gpu_facts; got: 'x'$"):
        _fleet.check_expectation("x", 1)


@pytest.mark.parametrize("seen, outcome, note", [
    ({"changed": 3}, "changed", ""),
    ({"changed": 0}, "unchanged", ""),
    ({"changed": 1, "failed": "Apply: boom"}, "failed", "Apply: boom"),
    ({"failed": "Apply: boom", "outcome": "rolled_back"}, "rolled back", "Apply: boom"),
    ({"unreachable": "Ping: gone", "failed": "x"}, "unreachable", "Ping: gone"),
    ({"stopped": True}, "not reached", "rollout stopped before this host"),
    ({"not_reached": True}, "not reached", "rollout stopped before this host"),
    ({"stopped": True, "changed": 2}, "changed", "rollout stopped while this host was changing"),
    ({"stopped": True, "failed": "Reach: lost"}, "failed", "Reach: lost"),
])
def test_outcomes(seen, outcome, note):
    [row] = _fleet.outcomes({"h1": seen})
    assert (row["host"], row["outcome"], row["note"]) == ("h1", outcome, note)


def test_outcome_table():
    rows = _fleet.outcomes({"lab-fleet-01": {"changed": 12}, "b": {"failed": "Reach: " + "x" * 200},
                            "c": {"not_reached": True}})
    lines = _fleet.outcome_table(rows)
    assert lines[0].split() == ["HOST", "OUTCOME", "CHANGED", "NOTE"]
    assert lines[1].split() == ["lab-fleet-01", "changed", "12"]
    assert len(lines[2]) == 100 and lines[2].endswith("...")
    assert lines[3].split()[:3] == ["c", "not", "reached"]
    assert lines[-1] == "1 changed, 1 failed, 1 not reached"
    assert _fleet.outcome_table([]) == ["HOST  OUTCOME      CHANGED  NOTE", "no hosts"]


LOST = {"index": None, "uuid": "GPU-5f3c", "pci_bus_id": "00000000:65:00.0", "name": None,
        "memory_total_mib": None, "compute_capability": None, "healthy": False,
        "errors": ["nvidia-smi cannot open the GPU: Unknown Error"]}


@pytest.mark.parametrize("gpus, expected, problems", [
    # A GPU that fell off the bus has no index: it is named by its bus id and its errors read.
    ([L4, LOST], 2, ["GPU 00000000:65:00.0 (unknown): unhealthy (uuid GPU-5f3c; nvidia-smi "
                     "cannot open the GPU: Unknown Error)"]),
    ([L4, dict(LOST, pci_bus_id=None)], {"count": 2, "min_memory_mib": 1},
     ["GPU GPU-5f3c (unknown): unknown MiB, expected at least 1 MiB",
      "GPU GPU-5f3c (unknown): unhealthy (nvidia-smi cannot open the GPU: Unknown Error)"]),
    ([L4, dict(LOST, pci_bus_id=None, uuid=None, errors=[])], 2,
     ["GPU #1 (unknown): unhealthy (no detail)"]),
    ([gpu(healthy=False) | {"errors": ["Xid 79", "fell off the bus"]}], 1,
     ["GPU 0 (NVIDIA L4): unhealthy (Xid 79; fell off the bus)"]),
])
def test_check_expectation_names_a_lost_gpu_and_its_errors(gpus, expected, problems):
    result = _fleet.check_expectation(gpus, expected)
    assert result["problems"] == problems
    assert result["ok"] is False
