# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters fleet_report, fleet_report_html, fleet_report_table, fleet_metrics, fleet_host and
fleet_slurped_json.

One documentation file per filter name next to this file (as ansible-doc looks them up). Thin
wrappers of module_utils/_report.py and _metrics.py.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _metrics, _report
from ansible_collections.gpufleet.inference.plugins.plugin_utils._filters import filter_function


class FilterModule:
    def filters(self):
        return {
            "fleet_report": filter_function("fleet_report", _report.fleet),
            "fleet_report_html": filter_function("fleet_report_html", _report.html_page),
            "fleet_report_table": filter_function("fleet_report_table", _report.table),
            "fleet_metrics": filter_function("fleet_metrics", _metrics.textfile),
            "fleet_host": filter_function("fleet_host", _report.host_entry),
            "fleet_slurped_json": filter_function("fleet_slurped_json", _report.slurped_json),
        }
