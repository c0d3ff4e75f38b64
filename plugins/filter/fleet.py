# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpu_expectation over module_utils/_fleet.py (documentation: gpu_expectation.yml)."""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _fleet
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        return {
            "gpu_expectation": filter_function("gpu_expectation", _fleet.check_expectation),
        }
