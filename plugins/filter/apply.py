# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the apply step: apply_failure (module_utils/_outcome.py), one documentation file per
filter name next to this file (as ansible-doc looks them up)."""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _outcome
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        functions = {"apply_failure": _outcome.failure_summary}
        return {name: filter_function(name, function) for name, function in functions.items()}
