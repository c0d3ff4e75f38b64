# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters health_probes, health_report and health_table over module_utils/_health.py.

Their documentation is in health_probes.yml, health_report.yml and health_table.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.module_utils import _health


def health_probes(services, host="127.0.0.1"):
    try:
        return _health.probes(services, host=host)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("health_probes: %s" % exc) from exc


def health_report(services, answers, gpus):
    try:
        return _health.report(services, answers, gpus)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("health_report: %s" % exc) from exc


def health_table(result, host=""):
    try:
        return _health.table(result, host=host)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnsibleFilterError("health_table: %s" % exc) from exc


class FilterModule:
    def filters(self):
        return {
            "health_probes": health_probes,
            "health_report": health_report,
            "health_table": health_table,
        }
