# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health filters are the functions of _health, with their documentation."""

from __future__ import annotations

import pathlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import health
from ansible_collections.gpufleet.inference.plugins.module_utils import _health

FILTERS = health.FilterModule().filters()
SERVICES = [{"name": "ollama", "engine": "ollama", "port": 11434, "gpu": "0",
             "project": "gpufleet", "service": "ollama"}]


def test_filters_are_registered_with_their_docs():
    assert sorted(FILTERS) == ["health_probes", "health_report", "health_services",
                               "health_table", "health_verify_checks"]
    docs = pathlib.Path(health.__file__).parent
    for name in FILTERS:
        assert "name: %s\n" % name in (docs / ("%s.yml" % name)).read_text()


@pytest.mark.parametrize("args", [("compose", "stack"), ("systemd",), ()])
def test_health_verify_checks_is_verify_checks(args):
    services = SERVICES
    assert FILTERS["health_verify_checks"](services, *args) == \
        _health.verify_checks(services, *args)


def test_health_report_takes_service_verifys_services():
    services = SERVICES
    verified = [{"name": "ollama", "healthy": True, "device_ok": True, "gpu_used": True,
                 "gpu_processes": [{"pid": 7, "name": "ollama", "used_memory_mib": 900}],
                 "problems": []}]
    result = FILTERS["health_report"](services, [{"status": 200, "json": {"models": []}}],
                                      verified)
    assert result == _health.report(services, [{"status": 200, "json": {"models": []}}],
                                    verified)
    assert result["healthy"] and result["services"][0]["vram_mib"] == 900
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS["health_report"](services, [{"status": 200}], [])
    assert str(err.value) == ("health_report: verified must have an entry per service; "
                              "missing: ollama")


def test_bad_input_is_a_filter_error_naming_the_filter():
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS["health_probes"]([{"name": "ollama", "engine": "ollama", "port": "x"}])
    assert str(err.value) == "health_probes: services[0].port must be 1-65535; got: 'x'"
