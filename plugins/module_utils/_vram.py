# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: VRAM estimates for models.

Not a public API: the leading underscore says so. Pure functions, stdlib only.

An estimate is, in MiB:

    weights   = parameters x bits per weight / 8          (or the stated download size)
    kv cache  = 2 (K and V) x layers x kv_heads x head_dim x bytes per element
                x context_length x parallel sequences
    overhead  = engine base (CUDA context, compute buffers, CUDA graphs) + 5 % of weights
    total     = weights + kv cache + overhead

unless the catalog states a measured total (``vram_mib``), which is used as is. Every
estimate says how it was made (``method``) and where its numbers come from (``source``).
"""

from __future__ import annotations

import math
import re

from ansible_collections.gpufleet.inference.plugins.module_utils._common import is_int
from ansible_collections.gpufleet.inference.plugins.module_utils._model_catalog import CATALOG

MIB = 1024 * 1024

# Bits per weight of the common formats, from their block layouts:
#   GGUF (llama.cpp ggml-common.h): Q8_0 = 32 x int8 + fp16 scale = 34 bytes / 32 weights;
#   Q4_0 = 18 bytes / 32; Q4_K = 144 bytes / 256 = 4.5, and Q4_K_M keeps some tensors in Q6_K
#   (210 bytes / 256 = 6.5625): llama.cpp's quantize table gives ~4.85 bpw for Q4_K_M, ~5.7 for
#   Q5_K_M, ~3.9 for Q3_K_M. MXFP4 = 32 x 4 bit + 8-bit shared exponent = 4.25 (OCP MX spec);
#   NVFP4 = 16 x 4 bit + FP8 scale = 4.5. AWQ / GPTQ int4 with group size 128 and fp16
#   scales and zeros: 4 + 32 / 128 = 4.25.
BITS_PER_WEIGHT = {
    "f32": 32.0, "fp32": 32.0,
    "f16": 16.0, "fp16": 16.0, "bf16": 16.0,
    "fp8": 8.0, "int8": 8.0, "q8_0": 8.5,
    "q6_k": 6.5625, "q5_k_m": 5.7, "q5_0": 5.5,
    "q4_k_m": 4.85, "q4_k_s": 4.6, "q4_0": 4.5,
    "q3_k_m": 3.9, "q2_k": 3.35,
    "mxfp4": 4.25, "nvfp4": 4.5, "awq": 4.25, "gptq": 4.25, "int4": 4.25,
}

# What each engine loads when the model name says nothing: Ollama's library tags are Q4_K_M,
# vLLM serves Hugging Face checkpoints in bf16.
DEFAULT_QUANTIZATION = {"ollama": "q4_k_m", "vllm": "bf16", "other": "f16"}

# Runtime overhead on top of weights and KV cache. A CUDA context alone holds 300-500 MiB on
# Ampere and later (what nvidia-smi shows for an idle process); llama.cpp (Ollama) adds its
# compute graph buffers, vLLM adds CUDA graph capture and the PyTorch allocator's slack, hence
# twice the base. Plus 5 % of the weights for activations. Estimates, not measurements.
ENGINE_OVERHEAD_MIB = {"ollama": 512, "vllm": 1024, "other": 512}
OVERHEAD_WEIGHTS_FRACTION = 0.05

# Ollama's default context (OLLAMA_CONTEXT_LENGTH) and parallel slots (OLLAMA_NUM_PARALLEL).
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_PARALLEL = 1
KV_BYTES_PER_ELEMENT = 2  # f16 / bf16 KV cache

# Beyond these a number is a typo, not a wish: no GPU or unified-memory box holds 2 TiB
# (the largest, GB300 and MI355X, hold 288 GB); no model has a context of 16 M tokens; no
# engine serves 4,096 sequences at once on one GPU.
MAX_VRAM_MIB = 2 * 1024 * 1024
MAX_CONTEXT_LENGTH = 16 * 1024 * 1024
MAX_PARALLEL = 4096
LIMITS = {"vram_mib": MAX_VRAM_MIB, "vram_budget_mib": MAX_VRAM_MIB,
          "weights_mib": MAX_VRAM_MIB, "context_length": MAX_CONTEXT_LENGTH,
          "parallel": MAX_PARALLEL}

# A model name as Ollama (``llama3.2:3b``, ``hf.co/org/repo:Q4_K_M``), Hugging Face
# (``Qwen/Qwen2.5-1.5B-Instruct``) or a local checkpoint path (``/models/qwen``) write it: no
# spaces, quotes or shell characters (it lands in an EnvironmentFile and on a command line).
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._:/@+-]{0,254}\Z")

ENTRY_KEYS = (
    "name", "aliases", "params_b", "quantization", "bits_per_weight", "weights_mib", "vram_mib",
    "layers", "kv_heads", "head_dim", "context_length", "role", "source",
)
_INT_KEYS = ("weights_mib", "vram_mib", "layers", "kv_heads", "head_dim", "context_length")

_PARAMS_RE = re.compile(r"(?:^|[:\-_/ .])(\d+(?:\.\d+)?)\s*[bB](?=$|[\-_:. ])")
_QUANT_RE = re.compile(
    r"(q\d_k_[ms]|q\d_k|q\d_\d|fp8|fp16|bf16|f16|f32|mxfp4|nvfp4|awq|gptq|int4|int8)",
    re.IGNORECASE,
)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_model_name(model, where):
    """``model`` if it is a model name (see _MODEL_NAME_RE), else ValueError naming ``where``."""
    if not isinstance(model, str) or not _MODEL_NAME_RE.match(model) or "//" in model:
        raise ValueError("%s must be a model name like llama3.2:3b or Qwen/Qwen2.5-1.5B-Instruct "
                         "(letters, digits and . _ : / @ + -, no spaces); got: %r"
                         % (where, model))
    return model


def check_limit(value, key, where):
    """``value`` when it is within the LIMITS of ``key``, else ValueError naming ``where``."""
    limit = LIMITS.get(key)
    if limit is not None and value > limit:
        raise ValueError("%s.%s must be at most %d; got: %r" % (where, key, limit, value))
    return value


def check_entry(entry, where):
    """Return a clean copy of one catalog entry; raise ValueError naming ``where`` and the field."""
    if not isinstance(entry, dict):
        raise ValueError("%s must be a dict; got: %r" % (where, entry))
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (where, ", ".join(unknown)))
    clean = {key: value for key, value in entry.items() if value is not None}
    for key in _INT_KEYS:
        if key in clean and (not is_int(clean[key]) or clean[key] <= 0):
            raise ValueError("%s.%s must be an integer > 0; got: %r" % (where, key, clean[key]))
        if key in clean:
            check_limit(clean[key], key, where)
    for key in ("params_b", "bits_per_weight"):
        if key in clean and (not _is_number(clean[key]) or clean[key] <= 0):
            raise ValueError("%s.%s must be a number > 0; got: %r" % (where, key, clean[key]))
    if "quantization" in clean:
        quant = clean["quantization"]
        if not isinstance(quant, str) or quant.lower() not in BITS_PER_WEIGHT:
            raise ValueError(
                "%s.quantization must be one of %s; got: %r"
                % (where, ", ".join(sorted(BITS_PER_WEIGHT)), quant))
        clean["quantization"] = quant.lower()
    aliases = clean.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError("%s.aliases must be a list of names; got: %r" % (where, aliases))
    clean["aliases"] = list(aliases)
    for key in ("role", "source"):
        if key in clean and not isinstance(clean[key], str):
            raise ValueError("%s.%s must be a string; got: %r" % (where, key, clean[key]))
    if not any(key in clean for key in ("vram_mib", "weights_mib", "params_b")):
        raise ValueError("%s needs vram_mib, weights_mib or params_b; got none of them" % where)
    arch = [key for key in ("layers", "kv_heads", "head_dim") if key in clean]
    if arch and len(arch) != 3:
        raise ValueError(
            "%s needs layers, kv_heads and head_dim together; got only: %s"
            % (where, ", ".join(arch)))
    return clean


def build_catalog(extra=None):
    """The built-in catalog extended (and overridden, name by name) by ``extra``.

    ``extra`` is a list of entries with a ``name``, or a dict of name -> entry, as inventory
    writes it. An entry replaces the built-in one of the same name (its aliases are kept
    unless it gives its own). Returns ``{"entries": {name: entry}, "index": {lower-case name
    or alias: name}}``.
    """
    entries = {}
    for name, entry in CATALOG.items():
        entries[name] = dict(check_entry(entry, "built-in catalog[%r]" % name), name=name)
    if extra is None:
        extra = []
    if isinstance(extra, dict):
        items = []
        for name, entry in extra.items():
            where = "catalog[%r]" % name
            if not isinstance(entry, dict):
                raise ValueError("%s must be a dict; got: %r" % (where, entry))
            items.append((where, dict(entry, name=entry.get("name") or name)))
    elif isinstance(extra, list):
        items = [("catalog[%d]" % i, entry) for i, entry in enumerate(extra)]
    else:
        raise ValueError("catalog must be a list or a dict; got: %r" % (extra,))
    for where, entry in items:
        clean = check_entry(entry, where)
        name = clean.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("%s.name must be a non-empty string; got: %r" % (where, name))
        clean["name"] = check_model_name(name.strip(), where + ".name")
        clean.setdefault("source", "inventory (catalog option)")
        if not entry.get("aliases") and clean["name"] in entries:  # keep the built-in aliases
            clean["aliases"] = entries[clean["name"]]["aliases"]
        entries[clean["name"]] = clean
    index = {}
    for name, entry in entries.items():  # aliases first, names last: a name always wins
        for alias in entry["aliases"]:
            index[alias.lower()] = name
    for name in entries:
        index[name.lower()] = name
    return {"entries": entries, "index": index}


def lookup(catalog, model):
    """The catalog entry for a model name or alias (case-insensitive), or None. An Ollama
    name's ``:latest`` tag is its default: ``moondream:latest`` is ``moondream``."""
    key = str(model).strip().lower()
    name = catalog["index"].get(key)
    if name is None and key.endswith(":latest"):
        name = catalog["index"].get(key[:-len(":latest")])
    return None if name is None else catalog["entries"][name]


def weights_mib(params_b, bits_per_weight):
    """Weights of ``params_b`` billion parameters at ``bits_per_weight``, in MiB (rounded up)."""
    return math.ceil(params_b * 1e9 * bits_per_weight / 8.0 / MIB)


def kv_cache_mib(layers, kv_heads, head_dim, context_length, *, parallel=1,
                 bytes_per_element=KV_BYTES_PER_ELEMENT):
    """KV cache: 2 x layers x kv_heads x head_dim x bytes x context x parallel, in MiB (up)."""
    per_token = 2 * layers * kv_heads * head_dim * bytes_per_element
    return math.ceil(per_token * context_length * parallel / float(MIB))


def overhead_mib(engine, weights):
    base = ENGINE_OVERHEAD_MIB.get(engine, ENGINE_OVERHEAD_MIB["other"])
    return base + math.ceil(weights * OVERHEAD_WEIGHTS_FRACTION)


def _from_name(model, engine):
    """A catalog-like entry guessed from the model name ('mistral:7b', 'Foo-13B-AWQ')."""
    match = _PARAMS_RE.search(str(model))
    if not match:
        return None
    entry = {"name": str(model), "params_b": float(match.group(1)), "aliases": []}
    quant = _QUANT_RE.search(str(model))
    if quant:
        entry["quantization"] = quant.group(1).lower()
    entry["source"] = "parameter count read from the name %r" % str(model)
    return entry


def estimate(model, catalog=None, *, engine="other", context_length=None, parallel=None,
             what="model"):
    """Estimate the VRAM a model needs on ``engine``; raise ValueError when it cannot.

    Returns ``{model, total_mib, weights_mib, kv_cache_mib, overhead_mib, context_length,
    parallel, method, source, notes}``. ``method`` is ``stated`` (the catalog's measured total),
    ``formula`` (catalog parameters) or ``name`` (parameter count read from the name).
    """
    if catalog is None:
        catalog = build_catalog()
    engine = engine if engine in ENGINE_OVERHEAD_MIB else "other"
    entry = lookup(catalog, model)
    method = "formula"
    if entry is None:
        entry = _from_name(model, engine)
        method = "name"
        if entry is None:
            raise ValueError(
                "%s is not in the model catalog and its name carries no parameter count "
                "(like ':7b'); add it with the catalog option or give vram_mib; got: %r"
                % (what, model))
    notes = []
    context = context_length or entry.get("context_length") or DEFAULT_CONTEXT_LENGTH
    slots = parallel or DEFAULT_PARALLEL
    result = {
        "model": entry["name"], "weights_mib": None, "kv_cache_mib": None,
        "overhead_mib": None, "context_length": context, "parallel": slots,
        "method": method, "source": entry.get("source"), "notes": notes,
    }
    if "vram_mib" in entry:
        if context_length or parallel:
            notes.append("the catalog states a total of %d MiB for its own context; "
                         "context_length and parallel do not change it" % entry["vram_mib"])
        result.update(total_mib=entry["vram_mib"], method="stated")
        return result
    if "weights_mib" in entry:
        weights = entry["weights_mib"]
    else:
        quant = entry.get("quantization") or DEFAULT_QUANTIZATION[engine]
        bits = entry.get("bits_per_weight") or BITS_PER_WEIGHT[quant]
        if "bits_per_weight" not in entry and "quantization" not in entry:
            notes.append("no quantization known: assumed %s, the %s default" % (quant, engine))
        weights = weights_mib(entry["params_b"], bits)
    if "layers" in entry:
        kv = kv_cache_mib(entry["layers"], entry["kv_heads"], entry["head_dim"], context,
                          parallel=slots)
    else:
        kv = 0
        notes.append("KV cache not estimated (layers, kv_heads, head_dim unknown): add them "
                     "with the catalog option or set vram_budget_mib")
    overhead = overhead_mib(engine, weights)
    result.update(total_mib=weights + kv + overhead, weights_mib=weights, kv_cache_mib=kv,
                  overhead_mib=overhead)
    return result


def per_gpu(whole, count, engine="other"):
    """What each of ``count`` GPUs holds of ``whole`` under tensor parallelism.

    vLLM's tensor parallel splits every layer's weights across the GPUs (each holds 1/N of
    them) and each GPU keeps the KV cache of its own share of the attention heads (1/N); the
    runtime overhead (CUDA context, CUDA graphs, allocator slack: the engine base) is paid on
    every GPU, plus 5 % of that GPU's share of the weights. A stated total keeps its base on
    every GPU and splits the rest. Returns ``{gpus, total_mib, weights_mib, kv_cache_mib,
    overhead_mib}`` (MiB, rounded up), or the estimate's own total for ``count`` 1.
    """
    engine = engine if engine in ENGINE_OVERHEAD_MIB else "other"
    if count == 1:
        return {"gpus": 1, "total_mib": whole["total_mib"],
                "weights_mib": whole.get("weights_mib"),
                "kv_cache_mib": whole.get("kv_cache_mib"),
                "overhead_mib": whole.get("overhead_mib")}
    if whole.get("weights_mib") is None:
        base = ENGINE_OVERHEAD_MIB[engine]
        rest = max(whole["total_mib"] - base, 0)
        return {"gpus": count, "total_mib": math.ceil(rest / float(count)) + base,
                "weights_mib": None, "kv_cache_mib": None, "overhead_mib": base}
    weights = math.ceil(whole["weights_mib"] / float(count))
    kv = math.ceil((whole.get("kv_cache_mib") or 0) / float(count))
    overhead = overhead_mib(engine, weights)
    return {"gpus": count, "total_mib": weights + kv + overhead, "weights_mib": weights,
            "kv_cache_mib": kv, "overhead_mib": overhead}
