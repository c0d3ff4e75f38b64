# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the service catalog and one placement into what runs the services.

services_catalog_check, services_placement_input and services_plan wrap
module_utils/_plan.py; compose_document, gpu_assignments_document and systemd_instances wrap
module_utils/_render.py; k8s_manifests, k8s_manifest_files, k8s_fleet_hosts, k8s_fleet_plan and
k8s_node_commands wrap module_utils/_k8s.py; dotenv_merge wraps module_utils/_common.py. One
documentation file per filter name next to this file (as ansible-doc looks them up). The roles
compose, systemd_units and k8s_manifests use them so that their templates stay thin.
"""

from __future__ import annotations

import yaml
from ansible.parsing.yaml.dumper import AnsibleDumper

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _common,
    _k8s,
    _plan,
    _render,
)
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


def services_catalog_check(catalog, extra_profiles=None):
    """``services_catalog | gpufleet.inference.services_catalog_check(services_extra_profiles)``."""
    return _plan.check_catalog(catalog, extra_profiles)


def _yaml_dump(document, **options):
    # Ansible's dumper, as to_nice_yaml uses: the documents hold strings from templated vars.
    return yaml.dump(document, Dumper=AnsibleDumper, **options)


def k8s_manifest_files(files, directory):
    """``render.files | gpufleet.inference.k8s_manifest_files(k8s_manifests_dir)``."""
    return _k8s.manifest_files(files, directory, _yaml_dump)


class FilterModule:
    def filters(self):
        functions = {
            "services_catalog_check": services_catalog_check,
            "services_placement_input": _plan.placement_input,
            "services_plan": _plan.plan,
            "compose_document": _render.compose_document,
            "dotenv_merge": _common.dotenv_merge,
            "gpu_assignments_document": _render.gpu_assignments_document,
            "systemd_instances": _render.systemd_instances,
            "k8s_manifests": _k8s.k8s_manifests,
            "k8s_manifest_files": k8s_manifest_files,
            "k8s_fleet_hosts": _k8s.fleet_hosts,
            "k8s_fleet_plan": _k8s.fleet_plan,
            "k8s_node_commands": _k8s.node_commands,
        }
        return {name: filter_function(name, function) for name, function in functions.items()}
