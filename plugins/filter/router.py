# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the router role: thin wrappers of module_utils/_router.py.

router_config, router_llm_yaml_with_keys, router_litellm_env, router_probe_targets,
router_probed, router_app_env and router_file_writes, one documentation file per filter name
next to this file (as ansible-doc looks them up). router_llm_yaml_with_keys and
router_litellm_env return API keys: use them only in tasks with no_log (or in the secret_files
of config_files). router_options_check is in checks.py with the other preflight checks.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _router
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        functions = {
            "router_config": _router.router_config,
            "router_llm_yaml_with_keys": _router.apply_api_keys,
            "router_litellm_env": _router.litellm_env,
            "router_probe_targets": _router.probe_targets,
            "router_probed": _router.probed,
            "router_app_env": _router.app_env,
            "router_file_writes": _router.file_writes,
        }
        return {name: filter_function(name, function) for name, function in functions.items()}
