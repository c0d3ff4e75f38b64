# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters health_probes, health_verify_checks, health_report, health_table and
health_services over module_utils/_health.py.

Their documentation is in health_probes.yml, health_verify_checks.yml, health_report.yml,
health_table.yml and health_services.yml.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _health
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        return {
            "health_probes": filter_function("health_probes", _health.probes),
            "health_verify_checks": filter_function("health_verify_checks",
                                                    _health.verify_checks),
            "health_report": filter_function("health_report", _health.report),
            "health_table": filter_function("health_table", _health.table),
            "health_services": filter_function("health_services", _health.from_plan),
        }
