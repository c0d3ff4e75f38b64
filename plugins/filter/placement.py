# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters gpu_placement and gpu_fleet_placement: the placement engine on the controller.

Their documentation is in gpu_placement.yml and gpu_fleet_placement.yml next to this file
(one file per filter name, as ansible-doc looks them up). Both are thin wrappers of
module_utils/_placement.py, the function the gpu_placement module runs too.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function

# ansible_facts.gpus | gpufleet.inference.gpu_placement(services, strategy=...)
gpu_placement = filter_function("gpu_placement", _placement.place)
# hosts | gpufleet.inference.gpu_fleet_placement(services, strategy=...)
gpu_fleet_placement = filter_function("gpu_fleet_placement", _placement.place_fleet)


class FilterModule:
    def filters(self):
        return {
            "gpu_placement": gpu_placement,
            "gpu_fleet_placement": gpu_fleet_placement,
        }
