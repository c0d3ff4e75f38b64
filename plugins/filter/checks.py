# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that check the variables of a role (in its preflight) or of a playbook, before
anything changes.

preflight_options_check, unit_paths_check and rollout_serial_check (module_utils/_preflight.py),
router_options_check
(module_utils/_router.py), one documentation file per filter name next to this file (as
ansible-doc looks them up). Each returns true, or fails naming the field and the value.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _preflight,
    _router,
)
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        functions = {
            "preflight_options_check": _preflight.check_options,
            "router_options_check": _router.check_role,
            "unit_paths_check": _preflight.check_unit_paths,
            "rollout_serial_check": _preflight.check_serial,
        }
        return {name: filter_function(name, function) for name, function in functions.items()}
