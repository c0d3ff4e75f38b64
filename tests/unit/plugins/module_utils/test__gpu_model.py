# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shape of a GPU fact and the value parsers every backend shares."""

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils._gpu_model import (
    GPU_KEYS,
    clean_text,
    fill_free,
    is_known_unified,
    new_gpu,
    normalize_pci_bus_id,
    parse_int,
    parse_number,
    to_mib,
)


def test_new_gpu_has_every_key_and_safe_defaults():
    gpu = new_gpu(index=0)
    assert tuple(gpu) == GPU_KEYS
    assert gpu["memory_total_mib"] is None
    assert gpu["processes"] == [] and gpu["errors"] == [] and gpu["mig_devices"] == []
    assert gpu["healthy"] is True and gpu["memory_kind"] == "dedicated"
    assert GPU_KEYS[:2] == ("index", "vendor_index") and gpu["vendor_index"] is None


def test_new_gpu_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown GPU fact key.*vram"):
        new_gpu(vram=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("230.00 W", 230.0), ("45 C", 45.0), ("12 %", 12.0), ("81559 MiB", 81559.0),
     (7, 7.0), ("[N/A]", None), ("[Not Supported]", None), ("N/A", None), (None, None),
     ("  ", None), ("-3.5", -3.5),
     # what a JSON float of 2^64-1 bytes prints as; check_values then drops it
     ("1.8446744073709552e+19 B", 1.8446744073709552e19), ("2E3", 2000.0),
     # bare, as nvidia-smi -q -x writes them (the CSV brackets them)
     ("Insufficient Permissions", None), ("Requested functionality has been deprecated", None)],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text", ["fast", "12 W W", True])
def test_parse_number_rejects_garbage_naming_the_value(text):
    with pytest.raises(ValueError, match=r"power is not a number; got: "):
        parse_number(text, "power")


def test_parse_int_rounds():
    assert parse_int("44.6 C") == 45
    assert parse_int("[N/A]") is None


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [("81559 MiB", "MiB", 81559), ("24 GiB", "MiB", 24576), ("68702699520", "B", 65520),
     ("4096 KiB", "MiB", 4), (1024, "MiB", 1024), ("[Not Supported]", "MiB", None)],
)
def test_to_mib(text, unit, expected):
    assert to_mib(text, default_unit=unit) == expected


@pytest.mark.parametrize(("name", "known"), [
    ("NVIDIA GB10", True), ("Orin (nvgpu)", True), ("NVIDIA Jetson AGX Thor", True),
    ("Xavier", True), ("NVIDIA RTX A5500", False), ("NVIDIA GeForce RTX 4090", False),
    ("NVIDIA GB100", False), (None, False),
])
def test_is_known_unified(name, known):
    assert is_known_unified(name) is known


def test_to_mib_rejects_unknown_unit():
    with pytest.raises(ValueError, match=r"fb has an unknown unit 'parsecs'"):
        to_mib("3 parsecs", what="fb")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("00000000:01:00.0", "0000:01:00.0"), ("0000:C1:00.0", "0000:c1:00.0"),
     ("01:00.0", "0000:01:00.0"), ("[N/A]", None)],
)
def test_normalize_pci_bus_id(text, expected):
    assert normalize_pci_bus_id(text) == expected


def test_normalize_pci_bus_id_rejects_garbage():
    with pytest.raises(ValueError, match=r"pci_bus_id is not a PCI address; got: 'slot 3'"):
        normalize_pci_bus_id("slot 3")


def test_clean_text_and_fill_free():
    assert clean_text("  RTX A400 ") == "RTX A400"
    assert clean_text("[Unknown Error]") is None
    gpu = fill_free(new_gpu(memory_total_mib=4094, memory_used_mib=329, memory_reserved_mib=65))
    assert gpu["memory_free_mib"] == 3700
