# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mode_switch filters are the functions of _mode_switch, with their documentation."""

from __future__ import annotations

import pathlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.inference.plugins.filter import mode_switch
from ansible_collections.gpufleet.inference.plugins.module_utils import _mode_switch

FILTERS = mode_switch.FilterModule().filters()
MODES = {"chat": {"services": ["ollama"]}}
SERVICES = {"ollama": {"image": "ollama/ollama:latest", "port": 11434, "container_port": 11434}}


def test_filters_are_registered_with_their_docs():
    assert sorted(FILTERS) == ["mode_switch_active_modes", "mode_switch_compose",
                               "mode_switch_devices", "mode_switch_downloads",
                               "mode_switch_drain_targets",
                               "mode_switch_preloads", "mode_switch_record",
                               "mode_switch_state", "mode_switch_status",
                               "mode_switch_verify_checks"]
    docs = pathlib.Path(mode_switch.__file__).parent
    for name in FILTERS:
        assert "name: %s\n" % name in (docs / ("%s.yml" % name)).read_text()


def test_filters_equal_the_functions():
    assert FILTERS["mode_switch_compose"](MODES, SERVICES, "p", ["0"]) == \
        _mode_switch.compose_document(MODES, SERVICES, "p", ["0"])
    assert FILTERS["mode_switch_active_modes"](MODES, ["ollama"]) == ["chat"]
    assert FILTERS["mode_switch_devices"](['ollama [{"DeviceIDs":["0"]}]']) == {"ollama": ["0"]}
    state = FILTERS["mode_switch_state"](["a1 ollama"], "", MODES, "chat")
    assert state == _mode_switch.state(["a1 ollama"], "", MODES, "chat")
    assert FILTERS["mode_switch_status"](state, "h", []) == _mode_switch.status(state, "h", [])
    assert FILTERS["mode_switch_preloads"](SERVICES, ["ollama"]) == []


@pytest.mark.parametrize("name, args, message", [
    ("mode_switch_compose", (MODES, SERVICES, "p", []),
     "mode_switch_compose: mode_switch_gpu_ids must be a non-empty list of GPU indexes or UUIDs; "
     "got: []"),
    ("mode_switch_active_modes", (MODES, "ollama"),
     "mode_switch_active_modes: running must be a list of compose service names; got: 'ollama'"),
    ("mode_switch_devices", (["ollama"],),
     "mode_switch_devices: lines[0] must be '<service> <DeviceRequests JSON>'; got: 'ollama'"),
    ("mode_switch_state", ([], "{", MODES, "chat"),
     "mode_switch_state: the mode state file must hold a JSON object; got: text that is not "
     "JSON"),
    ("mode_switch_preloads", (SERVICES, ["vllm"]),
     "mode_switch_preloads: 'vllm' is not a service of mode_switch_services (ollama)"),
])
def test_bad_input_is_a_filter_error_naming_the_filter(name, args, message):
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS[name](*args)
    assert str(err.value) == message
