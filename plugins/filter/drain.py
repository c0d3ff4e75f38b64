# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain filters: thin wrappers of module_utils/_leaving.py (docs: drain_targets.yml,
sleep_actions.yml, switch_order.yml)."""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _leaving
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        return {"drain_targets": filter_function("drain_targets", _leaving.drain_targets),
                "sleep_actions": filter_function("sleep_actions", _leaving.sleep_actions),
                "switch_order": filter_function("switch_order", _leaving.switch_order)}
