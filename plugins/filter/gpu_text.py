# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters gpu_summary_lines and gpu_placement_lines over module_utils/_gpu_text.py.

Their documentation is in gpu_summary_lines.yml and gpu_placement_lines.yml.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_text
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        functions = {
            "gpu_summary_lines": _gpu_text.summary_lines,
            "gpu_placement_lines": _gpu_text.placement_lines,
        }
        return {name: filter_function(name, function) for name, function in functions.items()}
