# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the mode_switch role: thin wrappers of module_utils/_mode_switch.py.

One documentation file per filter name next to this file (as ansible-doc looks them up).
mode_switch_check is in checks.py with the other preflight checks.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _mode_switch
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        functions = {
            "mode_switch_compose": _mode_switch.compose_document,
            "mode_switch_downloads": _mode_switch.downloads,
            "mode_switch_active_modes": _mode_switch.active_modes,
            "mode_switch_devices": _mode_switch.devices,
            "mode_switch_drain_targets": _mode_switch.drain_targets,
            "mode_switch_verify_checks": _mode_switch.verify_checks,
            "mode_switch_preloads": _mode_switch.preloads,
            "mode_switch_record": _mode_switch.record,
            "mode_switch_state": _mode_switch.state,
            "mode_switch_status": _mode_switch.status,
        }
        return {name: filter_function(name, function) for name, function in functions.items()}
