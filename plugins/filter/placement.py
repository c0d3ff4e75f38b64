# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters gpu_placement and gpu_fleet_placement: the placement engine on the controller.

Their documentation is in gpu_placement.yml and gpu_fleet_placement.yml next to this file
(one file per filter name, as ansible-doc looks them up). Both are thin wrappers of
module_utils/_placement.py, the function the gpu_placement module runs too.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement


def gpu_placement(gpus, services, **options):
    """``ansible_facts.gpus | gpufleet.inference.gpu_placement(services, strategy=...)``."""
    try:
        return _placement.place(gpus, services, **options)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("gpu_placement: %s" % exc) from exc


def gpu_fleet_placement(hosts, services, **options):
    """``hosts | gpufleet.inference.gpu_fleet_placement(services, strategy=...)``."""
    try:
        return _placement.place_fleet(hosts, services, **options)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("gpu_fleet_placement: %s" % exc) from exc


class FilterModule:
    def filters(self):
        return {
            "gpu_placement": gpu_placement,
            "gpu_fleet_placement": gpu_fleet_placement,
        }
