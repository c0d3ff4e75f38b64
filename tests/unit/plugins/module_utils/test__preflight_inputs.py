# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory values checked before anything is written: the paths a systemd unit carries
(_preflight.check_unit_paths) and the rollout's batches (_preflight.check_serial)."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _preflight as pf

# ---- paths a unit carries ------------------------------------------------------------------

GOOD_PATHS = {
    "systemd_units_dir": "/etc/systemd/system",
    "systemd_units_env_dir": "/etc/gpufleet/instances",
    "systemd_units_ollama_bin": "/usr/local/bin/ollama",
    "systemd_units_vllm_bin": "/opt/vllm-0.11/bin/vllm",
    "systemd_units_models_dir": "/srv/gpufleet/models/ollama",
    "services_hf_home": "/srv/gpufleet/models/huggingface/",
}


def test_unit_paths_accept_plain_absolute_paths():
    assert pf.check_unit_paths(GOOD_PATHS) is True
    assert pf.check_unit_paths({"systemd_units_models_dir": "/srv/modèles/ollama_v2.1+x@y"})


RULE = ("must be an absolute path without whitespace, control characters, '..' or any of "
        "% $ ' \" ; \\")


@pytest.mark.parametrize("name, value, why", [
    # A newline would start a new unit line: ExecStartPre=+... runs as root.
    ("systemd_units_ollama_bin", "/usr/bin/ollama\nExecStartPre=+/bin/sh -c id",
     "'\\n' is not allowed"),
    ("systemd_units_env_dir", "/etc/gpufleet\r\nExecStartPre=+/tmp/x", "'\\r' is not allowed"),
    # A space splits ExecStart= (and ReadWritePaths= lists) into two words.
    ("systemd_units_vllm_bin", "/opt/my vllm/bin/vllm", "' ' is not allowed"),
    ("systemd_units_models_dir", "/srv/models\tother", "'\\t' is not allowed"),
    ("systemd_units_models_dir", "/srv/models\u00a0x", "'\\xa0' is not allowed"),
    ("systemd_units_dir", "/etc/systemd/system\x00", "'\\x00' is not allowed"),
    ("systemd_units_dir", "/etc/systemd/\x1b[0m", "'\\x1b' is not allowed"),
    ("systemd_units_dir", "/etc/\u200bsystemd", "'\\u200b' is not allowed"),
    # Characters systemd reads specially in a unit's values.
    ("systemd_units_ollama_bin", "/usr/bin/ollama%i", "'%' is not allowed"),
    ("systemd_units_ollama_bin", "/usr/bin/${SHELL}", "'$' is not allowed"),
    ("systemd_units_vllm_bin", "/opt/'vllm'/bin/vllm", "\"'\" is not allowed"),
    ("systemd_units_vllm_bin", '/opt/"vllm"/bin/vllm', "'\"' is not allowed"),
    ("systemd_units_vllm_bin", "/opt/vllm;/bin/sh", "';' is not allowed"),
    ("services_hf_home", "/srv/hf\\x20home", "'\\\\' is not allowed"),
    # A '..' component: systemd ignores a ReadWritePaths= that is not normalized.
    ("systemd_units_models_dir", "/srv/gpufleet/../models", "'..' is not allowed"),
])
def test_unit_paths_reject_what_systemd_reads_specially(name, value, why):
    with pytest.raises(ValueError) as info:
        pf.check_unit_paths(dict(GOOD_PATHS, **{name: value}))
    assert str(info.value) == "%s %s; got: %r (%s)" % (name, RULE, value, why)


@pytest.mark.parametrize("value", ["usr/local/bin/ollama", "", "~/bin/ollama", None, 5,
                                   ["/usr/bin/ollama"]])
def test_unit_paths_must_be_absolute(value):
    with pytest.raises(ValueError) as info:
        pf.check_unit_paths({"systemd_units_ollama_bin": value})
    assert str(info.value) == ("systemd_units_ollama_bin must be an absolute path; got: %r"
                               % (value,))


@pytest.mark.parametrize("paths", [None, "/usr/bin", ["/usr/bin"]])
def test_unit_paths_input_is_a_dict(paths):
    with pytest.raises(ValueError) as info:
        pf.check_unit_paths(paths)
    assert str(info.value) == "paths must be a dict of variable name: path; got: %r" % (paths,)


# ---- the rollout's batches -------------------------------------------------------------------

@pytest.mark.parametrize("serial", [
    1, 5, "3", "1%", "25%", "100%", [1, "25%", "100%"], [1, 5, "50%"], ["2"], (1, "100%")])
def test_serial_accepts_counts_and_percentages(serial):
    assert pf.check_serial(serial) is True


SERIAL_RULE = ("gpufleet_serial must be a count, a percentage like '25%' or a list of them "
               "(a count at least 1, a percentage 1-100%)")


@pytest.mark.parametrize("serial, shown", [
    # Ansible runs every host at once for these: no canary, no batches.
    (0, "0"),
    ("0", "0"),
    ("150%", "150%"),
    ("0%", "0%"),
    ([1, "150%"], "[1, '150%'] (item 1: '150%')"),
    ([0, "25%"], "[0, '25%'] (item 0: 0)"),
    ([], "[] (an empty list)"),
    # Shapes Ansible itself would fail on, or read otherwise.
    (-1, "-1"),
    ("x%", "x%"),
    ("25 %", "25 %"),
    ([1, "25 %"], "[1, '25 %'] (item 1: '25 %')"),
    ("", "''"),
    ("3\n", "'3\\n'"),
    ("\u0663", "\u0663"),
    ("25.5%", "25.5%"),
    (1.5, "1.5"),
    (True, "True"),
    (None, "None"),
    ({"a": 1}, "{'a': 1}"),
    ([[1]], "[[1]] (item 0: [1])"),
])
def test_serial_rejects(serial, shown):
    with pytest.raises(ValueError) as info:
        pf.check_serial(serial)
    assert str(info.value) == "%s; got: gpufleet_serial=%s" % (SERIAL_RULE, shown)


def test_serial_names_the_variable_it_read():
    with pytest.raises(ValueError) as info:
        pf.check_serial(0, "switch_serial")
    assert str(info.value).startswith("switch_serial must be a count") \
        and str(info.value).endswith("; got: switch_serial=0")
