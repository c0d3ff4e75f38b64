# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _model_catalog, _vram

SEED_MODELS = [
    "llama3.2:3b", "llama3.2:1b", "moondream2", "qwen2.5:1.5b", "qwen2.5:7b", "gpt-oss:20b",
    "qwen3-vl:32b", "nemotron-3-nano:30b", "florence-2-large", "clip-vit-large", "yolo26",
]


@pytest.mark.parametrize("model", SEED_MODELS)
def test_every_seed_model_is_in_the_catalog_with_a_source(model):
    entry = _model_catalog.CATALOG[model]
    assert entry["source"]
    assert _vram.estimate(model)["total_mib"] > 0


@pytest.mark.parametrize(("model", "engine", "expected"), [
    # Seed 001's own numbers, GB read as GiB.
    ("nemotron-3-nano:30b", "ollama", 22221),
    ("Nemotron-30B", "ollama", 22221),  # alias, any case
    ("yolo26", "other", 650),
    ("florence-2-large", "other", 1536),
    ("clip-vit-large", "other", 1229),
    ("model-zoo", "other", 6963),
    # 1,907 MiB weights + 28 x 8 x 128 x 2 x 2 bytes x 4,096 = 448 MiB + 512 + 5 % of weights.
    ("llama3.2:3b", "ollama", 1907 + 448 + 512 + 96),
    ("llama3.2", "ollama", 1907 + 448 + 512 + 96),
    # vLLM's base overhead is twice Ollama's.
    ("llama3.2:3b", "vllm", 1907 + 448 + 1024 + 96),
])
def test_estimate_totals(model, engine, expected):
    assert _vram.estimate(model, engine=engine)["total_mib"] == expected


def test_kv_cache_formula_matches_the_domain_note():
    # 2 (K and V) x layers x kv_heads x head_dim x bytes x context x parallel.
    assert _vram.kv_cache_mib(32, 8, 128, 8192) == 1024
    assert _vram.kv_cache_mib(32, 8, 128, 8192, parallel=4) == 4096
    assert _vram.kv_cache_mib(32, 8, 128, 8192, bytes_per_element=1) == 512


@pytest.mark.parametrize(("params_b", "bits", "expected"), [
    (7.0, 16.0, 13352),  # 7e9 x 2 bytes = 13,351.4 MiB, rounded up
    (7.0, 4.85, 4048),
    (1.0, 8.5, 1014),
])
def test_weights(params_b, bits, expected):
    assert _vram.weights_mib(params_b, bits) == expected


def test_context_and_parallel_grow_the_kv_cache():
    base = _vram.estimate("qwen2.5:7b", engine="ollama")
    long = _vram.estimate("qwen2.5:7b", engine="ollama", context_length=32768, parallel=2)
    assert long["kv_cache_mib"] == base["kv_cache_mib"] * 16
    assert long["total_mib"] - base["total_mib"] == long["kv_cache_mib"] - base["kv_cache_mib"]
    assert long["method"] == "formula"


def test_stated_total_ignores_context_and_says_so():
    result = _vram.estimate("yolo26", context_length=8192)
    assert result["total_mib"] == 650
    assert result["method"] == "stated"
    assert "do not change it" in result["notes"][0]


@pytest.mark.parametrize(("model", "engine", "params", "quant_note"), [
    ("mistral:7b", "ollama", 7.0, True),
    ("Some-Org/Foo-13B-AWQ", "vllm", 13.0, False),
    ("phi3:3.8b", "ollama", 3.8, True),
])
def test_unknown_models_are_estimated_from_their_name(model, engine, params, quant_note):
    result = _vram.estimate(model, engine=engine)
    assert result["method"] == "name"
    assert any("KV cache not estimated" in note for note in result["notes"])
    assert any("no quantization known" in note for note in result["notes"]) is quant_note
    assert result["weights_mib"] > params * 400  # at least ~3.3 bits per weight


def test_unknown_model_without_size_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"^services\[3\]\.model is not in the model catalog .*"
                                         r"got: 'mystery'$"):
        _vram.estimate("mystery", what="services[3].model")


def test_catalog_extension_as_list_and_dict_overrides_and_adds():
    catalog = _vram.build_catalog([
        {"name": "my-llm:8b", "params_b": 8.0, "quantization": "Q8_0", "layers": 32,
         "kv_heads": 8, "head_dim": 128, "aliases": ["mine"]},
        {"name": "yolo26", "vram_mib": 900},
    ])
    mine = _vram.estimate("MINE", catalog, engine="ollama")
    assert mine["model"] == "my-llm:8b"
    assert mine["weights_mib"] == _vram.weights_mib(8.0, 8.5)
    assert mine["source"] == "inventory (catalog option)"
    assert _vram.estimate("yolo26", catalog)["total_mib"] == 900
    as_dict = _vram.build_catalog({"yolo26": {"vram_mib": 700}})
    assert _vram.estimate("yolo", as_dict)["total_mib"] == 700


@pytest.mark.parametrize(("catalog", "message"), [
    ("nope", "catalog must be a list or a dict; got: 'nope'"),
    ([{"name": "x"}], "catalog[0] needs vram_mib, weights_mib or params_b; got none of them"),
    ([{"name": "x", "params_b": 0}], "catalog[0].params_b must be a number > 0; got: 0"),
    ([{"name": "x", "vram_mib": -5}], "catalog[0].vram_mib must be an integer > 0; got: -5"),
    ([{"name": "x", "vram_mib": 5, "colour": 1}], "catalog[0] has unknown key(s): colour"),
    ([{"name": "", "vram_mib": 5}], "catalog[0].name must be a non-empty string; got: ''"),
    ([{"name": "x", "params_b": 1, "quantization": "q9"}],
     "catalog[0].quantization must be one of"),
    ([{"name": "x", "params_b": 1, "layers": 4}],
     "catalog[0] needs layers, kv_heads and head_dim together; got only: layers"),
    ({"x": {"vram_mib": True}}, "catalog['x'].vram_mib must be an integer > 0; got: True"),
    ({"x": 3}, "catalog['x'] must be a dict; got: 3"),
])
def test_bad_catalog_entries_name_the_field(catalog, message):
    with pytest.raises(ValueError) as caught:
        _vram.build_catalog(catalog)
    assert str(caught.value).startswith(message)
