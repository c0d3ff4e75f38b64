# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import pathlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import report
from ansible_collections.gpufleet.inference.plugins.module_utils import _metrics, _report

FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "report" / "fleet.json"
HOSTS = json.loads(FIXTURE.read_text())["hosts"]
FILTERS = report.FilterModule().filters()


def test_filters_are_registered_with_their_docs():
    assert sorted(FILTERS) == ["fleet_host", "fleet_metrics", "fleet_report", "fleet_report_html",
                               "fleet_report_table", "fleet_slurped_json"]
    docs = pathlib.Path(report.__file__).parent
    for name in FILTERS:
        assert "name: %s\n" % name in (docs / ("%s.yml" % name)).read_text()


def test_filters_equal_the_functions():
    assert FILTERS["fleet_report"](HOSTS) == _report.fleet(HOSTS)
    assert FILTERS["fleet_report_table"](HOSTS) == _report.table(HOSTS)
    assert FILTERS["fleet_report_html"](HOSTS, title="t", generated_at="now") == \
        _report.html_page(HOSTS, title="t", generated_at="now")
    assert FILTERS["fleet_metrics"](HOSTS[0]) == _metrics.textfile(HOSTS[0])
    assert FILTERS["fleet_host"]({}, "h", {"unreachable": True}) == _report.host_entry(
        {}, "h", {"unreachable": True})
    assert FILTERS["fleet_slurped_json"]({"content": "bnVsbA=="}) is None


def test_bad_input_is_a_filter_error_naming_the_filter():
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS["fleet_report_html"]([{"host": "x", "status": "down"}])
    assert str(err.value) == ("fleet_report_html: hosts[0].status must be one of ok, failed, "
                              "unreachable; got: 'down'")
    with pytest.raises(AnsibleFilterError, match=r"^fleet_metrics: host lab-gone is unreachable"):
        FILTERS["fleet_metrics"](HOSTS[3])
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS["fleet_slurped_json"]({"content": "e30=x", "source": "/m.json"})
    assert str(err.value) == ("fleet_slurped_json: /m.json: its content is not base64 text; "
                              "got: 'e30=x'")
