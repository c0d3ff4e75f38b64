# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GPU text filters are the functions of _gpu_text, with their documentation."""

from __future__ import annotations

import pathlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import gpu_text
from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_text

FILTERS = gpu_text.FilterModule().filters()
SUMMARY = {"count": 0, "total_memory_mib": 0, "free_memory_mib": 0, "recommended_profile": "cpu",
           "backend": "nvml", "driver_version": "590.48.01", "warnings": []}
ASSIGNMENTS = [{"service": "a", "gpu": 0, "vram_budget_mib": 1, "environment": {}}]


def test_filters_are_registered_with_their_docs():
    assert sorted(FILTERS) == ["gpu_placement_lines", "gpu_summary_lines"]
    docs = pathlib.Path(gpu_text.__file__).parent
    for name in FILTERS:
        assert "name: %s\n" % name in (docs / ("%s.yml" % name)).read_text()


def test_filters_equal_the_functions():
    assert FILTERS["gpu_summary_lines"](SUMMARY, [], "h") == \
        _gpu_text.summary_lines(SUMMARY, [], "h")
    assert FILTERS["gpu_placement_lines"](ASSIGNMENTS) == ["a  0  1  {}"]


@pytest.mark.parametrize("name, args, message", [
    ("gpu_summary_lines", ({}, [], "h"),
     "gpu_summary_lines: gpu_summary.count must be an integer; got: None"),
    ("gpu_placement_lines", ([{}],),
     "gpu_placement_lines: assignments[0] lacks service, gpu, vram_budget_mib, environment; "
     "got: {}"),
])
def test_bad_input_is_a_filter_error_naming_the_filter(name, args, message):
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS[name](*args)
    assert str(err.value) == message
