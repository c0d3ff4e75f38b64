# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter host_status over module_utils/_status.py (documentation: host_status.yml)."""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _status
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        return {
            "host_status": filter_function("host_status", _status.status),
        }
