# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helpers every step shares: integer checks, the project's .env text, /proc/meminfo."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _common


@pytest.mark.parametrize("value, want", [
    (0, True), (-3, True), (True, False), (False, False), (1.0, False), ("1", False), (None, False),
])
def test_is_int(value, want):
    assert _common.is_int(value) is want


@pytest.mark.parametrize("value, want", [(True, "true"), (False, "false"), (3, "3"), ("x", "x")])
def test_scalar_text(value, want):
    assert _common.scalar_text(value) == want


# ---- .env ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    (None, None),
    ("", None),
    ("TOKEN=x\n# DUAL_GPU_MODE=vllm\n", None),
    ("DUAL_GPU_MODE=vllm\n", "vllm"),
    ('export DUAL_GPU_MODE="mixed"\n', "mixed"),
    ("DUAL_GPU_MODE='ollama'\nDUAL_GPU_MODE = vllm  \n", "vllm"),
    ("DUAL_GPU_MODE=\n", ""),
])
def test_dotenv_get(text, want):
    assert _common.dotenv_get(text, "DUAL_GPU_MODE") == want


@pytest.mark.parametrize("text, want", [
    # Compose reads these so: a value never continues on the next line, a quoted one may.
    ("DUAL_GPU_MODE=vllm2\n", "vllm2"),
    ("DUAL_GPU_MODE=\nmixed_cache=1\n", ""),
    ("DUAL_GPU_MODE= \nmixed=1\n", ""),
    ("DUAL_GPU_MODE=vllm # the default\n", "vllm"),
    ("DUAL_GPU_MODE=x#y\n", "x#y"),
    ("DUAL_GPU_MODE='a\\nb' # c\n", "a\\nb"),
    ('DUAL_GPU_MODE="a\\nb\\\\n\\t\\$x\\"q\\q"\n', 'a\nb\\n\t$x"q\\q'),
    ('DUAL_GPU_MODE="line1\nline2"\nX=1\n', "line1\nline2"),
    ('A="DUAL_GPU_MODE=vllm\n"\n', None),
    ("DUAL_GPU_MODE=ollama\r\n", "ollama"),
    ("DUAL_GPU_MODE=a\x0cb\n", "a\x0cb"),
])
def test_dotenv_get_reads_as_compose_does(text, want):
    assert _common.dotenv_get(text, "DUAL_GPU_MODE") == want


@pytest.mark.parametrize("value", [
    "x\n", "line1\nline2", "a\r\nb", 'q"uo\\te\\', "pa$word ${HOME}", "100%", "tab\there",
    "\x0c\x0b\x1c\u2028", " lead and trail ", "", "# not a comment", "'single'",
])
def test_dotenv_value_round_trips(value):
    """Written, read back equal, merged again unchanged (no growth, no broken line)."""
    text = _common.dotenv_merge("X=1\n", {"A": value})
    assert _common.dotenv_get(text, "A") == value
    assert _common.dotenv_get(text, "X") == "1"
    assert "\n" not in text.rstrip("\n").replace("\nA=", "")
    assert _common.dotenv_merge(text, {"A": value}) == text


def test_dotenv_merge_replaces_a_multi_line_value_whole():
    existing = 'A="line1\nline2"\nX=1\nA="again\nmore"\n'
    assert _common.dotenv_merge(existing, {"A": "new"}) == "A=new\nX=1\n"


def test_dotenv_get_rejects_what_is_not_text():
    with pytest.raises(ValueError) as error:
        _common.dotenv_get(["DUAL_GPU_MODE=vllm"], "DUAL_GPU_MODE")
    assert str(error.value) == \
        "text must be the content of the .env file; got: ['DUAL_GPU_MODE=vllm']"


HEADER = "#\n# Ansible managed\n#"


@pytest.mark.parametrize("existing,owned,expected", [
    ("", {"A": "1"}, "A=1\n"),
    (None, {"A": "1", "B": "x y"}, 'A=1\nB="x y"\n'),
    ("TOKEN=secret\nDUAL_GPU_MODE=vllm\n", {"DUAL_GPU_MODE": "mixed"},
     "TOKEN=secret\nDUAL_GPU_MODE=mixed\n"),
    ("# mine\nexport DUAL_GPU_MODE=vllm\n\nX=1\nDUAL_GPU_MODE=ollama\n", {"DUAL_GPU_MODE": "mixed"},
     "# mine\nDUAL_GPU_MODE=mixed\n\nX=1\n"),
    (HEADER + "\nX=1\nA=0\n", {"A": 2}, "X=1\nA=2\n"),
    ("X=1", {"P": 'say "$hi"'}, 'X=1\nP="say \\"\\$hi\\""\n'),
    ("", {"ON": True}, "ON=true\n"),
])
def test_dotenv_merge_keeps_foreign_keys(existing, owned, expected):
    assert _common.dotenv_merge(existing, owned, header=HEADER) == expected


@pytest.mark.parametrize("existing, owned, message", [
    ("", {"A-B": 1}, "owned has a bad variable name; got: 'A-B'"),
    ("", {"A": None}, "owned.A must be a string or number; got: None"),
    ("", ["A"], "owned must be a dict of NAME: value; got: ['A']"),
    (b"A=1", {"A": 1}, "existing must be the text of the .env file; got: b'A=1'"),
    ("", {"A": "x\x00y"}, "owned.A must not hold a NUL character; got: 'x\\x00y'"),
])
def test_dotenv_merge_rejects(existing, owned, message):
    with pytest.raises(ValueError) as error:
        _common.dotenv_merge(existing, owned)
    assert str(error.value) == message


# ---- /proc/meminfo ------------------------------------------------------------------------

MEMINFO = "MemTotal:       127600640 kB\nMemFree:         1000 kB\nMemAvailable:   107198464 kB\n"


def test_parse_meminfo():
    assert _common.parse_meminfo(MEMINFO) == dict(total_mib=124610, available_mib=104686)


def test_parse_meminfo_needs_only_what_is_asked():
    assert _common.parse_meminfo("MemTotal: 1048576 kB\n", need=("MemTotal",)) == \
        dict(total_mib=1024, available_mib=None)


@pytest.mark.parametrize("text, message", [
    ("MemTotal: 1024 kB\n", "/m has no MemAvailable line"),
    ("MemAvailable: 1024 kB\n", "/m has no MemTotal line"),
    ("MemTotal: 1024 kB\nMemAvailable: lots kB\n",
     "/m: MemAvailable must be a number of kB; got: 'lots kB'"),
    ("MemTotal: 1024 MB\nMemAvailable: 1024 kB\n",
     "/m: MemTotal must be a number of kB; got: '1024 MB'"),
])
def test_parse_meminfo_bad_input(text, message):
    with pytest.raises(ValueError) as err:
        _common.parse_meminfo(text, "/m")
    assert str(err.value) == message


@pytest.mark.parametrize("value, expected", [(None, {}), ({"a": 1}, {"a": 1})])
def test_known_keys_passes_a_dict_of_known_keys(value, expected):
    assert _common.known_keys(value, ("a", "b"), "options") == expected


@pytest.mark.parametrize("value, message", [
    ("x", "options must be a dict; got: 'x'"),
    ({"c": 1, "a": 2, "d": 3}, "options has unknown key(s): c, d"),
])
def test_known_keys_names_the_bad_value(value, message):
    with pytest.raises(ValueError) as err:
        _common.known_keys(value, ("a", "b"), "options")
    assert str(err.value) == message
