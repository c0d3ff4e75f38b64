# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the preflight role: thin wrappers of module_utils/_preflight.py.

preflight_dual_gpu_mode_plan, preflight_service_ports and preflight_report, one documentation
file per filter name next to this file (as ansible-doc looks them up).
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _preflight
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


def dual_gpu_mode_plan(gpus, existing_text, default="ollama", remote=False):
    """``gpus | gpufleet.inference.preflight_dual_gpu_mode_plan(env_text, default, remote)``."""
    if not isinstance(gpus, list):
        raise ValueError("preflight_gpus must be a list of GPU facts; got: %r" % (gpus,))
    healthy = [g for g in gpus if isinstance(g, dict) and g.get("healthy") is not False]
    return _preflight.dual_gpu_mode_plan(len(healthy), existing_text, default, remote)


def report(services_plan, host, gpus, host_facts, dual_gpu_mode=None, options=None,
           downloads=None):
    """``services_plan | gpufleet.inference.preflight_report(host, gpus, facts, mode, options,
    downloads)``."""
    return _preflight.build_report(host, services_plan, gpus, host_facts, dual_gpu_mode,
                                   options, downloads)


class FilterModule:
    def filters(self):
        functions = {
            "preflight_dual_gpu_mode_plan": dual_gpu_mode_plan,
            "preflight_service_ports": _preflight.service_ports,
            "preflight_report": report,
        }
        return {name: filter_function(name, function) for name, function in functions.items()}
