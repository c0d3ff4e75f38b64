# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""services_plan facts of the services role's default catalog, built as the role builds them
(catalog -> placement_input -> gpu placement -> plan), for the unit tests of what reads one."""

from __future__ import annotations

import copy
import pathlib

import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = "/srv/test/models"


def default_catalog():
    """The role's default catalog and extra profiles, with services_models_dir filled in."""
    text = (REPO / "roles/services/defaults/main.yml").read_text()
    defaults = yaml.safe_load(text.replace("{{ services_models_dir }}", MODELS))
    return defaults["services_catalog"], defaults["services_extra_profiles"]


def gpu(index, total=24576, vendor="nvidia"):
    return {"index": index, "uuid": "GPU-%04d" % index, "name": "GPU%d" % index,
            "vendor": vendor, "memory_total_mib": total, "memory_used_mib": 0,
            "memory_free_mib": total, "compute_capability": "8.6", "processes": [],
            "mig_devices": [], "healthy": True}


TWO_GPUS = [gpu(0), gpu(1)]


def make_plan(profile="dual-gpu", mode="ollama", gpus=None, catalog=None, extra=None,
              change=None):
    """The plan; ``change(catalog)`` edits a copy of the default catalog first."""
    gpus = TWO_GPUS if gpus is None else gpus
    default, default_extra = default_catalog()
    catalog = copy.deepcopy(default if catalog is None else catalog)
    if change is not None:
        change(catalog)
    extra = default_extra if extra is None else extra
    placement = _plan.place_in_two_passes(catalog, profile, mode, extra, gpus,
                                          lambda services: place(gpus, services))
    return _plan.plan(catalog, placement, gpus, profile, mode, extra)
