# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the built-in model catalog for VRAM estimates.

Not a public API: the leading underscore says so. Plain data (module_utils ships only Python
to targets, so the catalog is a dict, not a YAML file). Inventory extends or overrides it
through the ``catalog`` option of ``gpu_placement``; ``_vram`` reads and checks it.

Each entry gives either
  * ``vram_mib``: a stated total footprint (weights, cache and runtime together), used as is; or
  * ``weights_mib`` (or ``params_b`` with ``quantization`` / ``bits_per_weight``) and, where
    the architecture is known, ``layers``, ``kv_heads``, ``head_dim``: the KV cache and the
    runtime overhead are then added by the formula in ``_vram.estimate``.

Units: VRAM estimates in "GB" mean GiB, as GPUs are sold (the 24,564 MiB RTX A5500 is "24 GB",
the 4,094 MiB RTX A400 "4 GB"), so they are converted at 1 GB = 1,024 MiB. Download
sizes on ollama.com are decimal (1 GB = 10^9 bytes = 953.7 MiB). Architectures are the
``config.json`` of each model's reference checkpoint on Hugging Face (num_hidden_layers,
num_key_value_heads, head_dim or hidden_size / num_attention_heads).
"""

from __future__ import annotations

CATALOG = {
    # ollama.com/library/llama3.2: tag 3b = Q4_K_M, 2.0 GB download.
    # meta-llama/Llama-3.2-3B config.json: 28 layers, 8 KV heads, 3072 / 24 heads = head_dim 128.
    "llama3.2:3b": {
        "aliases": ["llama3.2", "llama3.2:latest", "llama3.2:3b-instruct-q4_K_M"],
        "params_b": 3.21, "quantization": "q4_k_m", "weights_mib": 1907,
        "layers": 28, "kv_heads": 8, "head_dim": 128, "context_length": 4096,
        "role": "llm",
        "source": "ollama.com/library/llama3.2 (2.0 GB); meta-llama/Llama-3.2-3B config.json",
    },
    # ollama.com/library/llama3.2: tag 1b = Q8_0, 1.3 GB download.
    # meta-llama/Llama-3.2-1B config.json: 16 layers, 8 KV heads, 2048 / 32 heads = head_dim 64.
    "llama3.2:1b": {
        "aliases": ["llama3.2:1b-instruct-q8_0"],
        "params_b": 1.24, "quantization": "q8_0", "weights_mib": 1240,
        "layers": 16, "kv_heads": 8, "head_dim": 64, "context_length": 4096,
        "role": "llm",
        "source": "ollama.com/library/llama3.2 (1.3 GB); meta-llama/Llama-3.2-1B config.json",
    },
    # ollama.com/library/qwen2.5: tag 1.5b = Q4_K_M, 986 MB download.
    # Qwen/Qwen2.5-1.5B config.json: 28 layers, 2 KV heads, 1536 / 12 heads = head_dim 128.
    "qwen2.5:1.5b": {
        "aliases": ["qwen2.5:1.5b-instruct"],
        "params_b": 1.54, "quantization": "q4_k_m", "weights_mib": 940,
        "layers": 28, "kv_heads": 2, "head_dim": 128, "context_length": 4096,
        "role": "llm",
        "source": "ollama.com/library/qwen2.5 (986 MB); Qwen/Qwen2.5-1.5B config.json",
    },
    # ollama.com/library/qwen2.5: tag 7b = Q4_K_M, 4.7 GB download.
    # Qwen/Qwen2.5-7B config.json: 28 layers, 4 KV heads, 3584 / 28 heads = head_dim 128.
    "qwen2.5:7b": {
        "aliases": ["qwen2.5", "qwen2.5:latest", "qwen2.5:7b-instruct"],
        "params_b": 7.62, "quantization": "q4_k_m", "weights_mib": 4482,
        "layers": 28, "kv_heads": 4, "head_dim": 128, "context_length": 4096,
        "role": "llm",
        "source": "ollama.com/library/qwen2.5 (4.7 GB); Qwen/Qwen2.5-7B config.json",
    },
    # ollama.com/library/gpt-oss: tag 20b = MXFP4 experts, 14 GB download.
    # openai/gpt-oss-20b config.json: 24 layers, 8 KV heads, head_dim 64 (half of the layers use
    # a 128-token sliding window: the full-context formula over-estimates, on the safe side).
    "gpt-oss:20b": {
        "aliases": ["gpt-oss", "gpt-oss:latest", "openai/gpt-oss-20b"],
        "params_b": 20.9, "quantization": "mxfp4", "weights_mib": 13351,
        "layers": 24, "kv_heads": 8, "head_dim": 64, "context_length": 4096,
        "role": "llm",
        "source": "ollama.com/library/gpt-oss (14 GB); openai/gpt-oss-20b config.json",
    },
    # ollama.com/library/qwen3-vl: tag 32b = Q4_K_M, 21 GB download (vision encoder included).
    # Qwen/Qwen3-VL-32B-Instruct config.json (text_config): 64 layers, 8 KV heads, head_dim 128.
    "qwen3-vl:32b": {
        "aliases": ["Qwen/Qwen3-VL-32B-Instruct"],
        "params_b": 33.4, "quantization": "q4_k_m", "weights_mib": 20027,
        "layers": 64, "kv_heads": 8, "head_dim": 128, "context_length": 4096,
        "role": "llm",
        "source": "ollama.com/library/qwen3-vl (21 GB); Qwen/Qwen3-VL-32B-Instruct config.json",
    },
    # A VRAM estimate: Nemotron-3-Nano-30B (Q4_K_M) ~21.7 GB, weights, cache and runtime
    # included. Ollama also tags it nemotron-3-nano:128k.
    "nemotron-3-nano:30b": {
        "aliases": ["nemotron-3-nano", "nemotron-3-nano:128k", "nemotron-30b"],
        "params_b": 31.6, "quantization": "q4_k_m", "vram_mib": 22221,
        "role": "llm",
        "source": "VRAM estimate (Nemotron-3-Nano-30B Q4_K_M ~21.7 GB); Ollama tag 128k",
    },
    # The NVFP4 checkpoint, served with vLLM. Weights from 31.6 B parameters x 4.5 bits
    # (NVFP4: 4-bit values + one FP8 scale per 16); the hybrid Mamba-Transformer has few
    # attention layers, so its KV cache is not modelled here: give context via vram_budget_mib.
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-NVFP4": {
        "aliases": [],
        "params_b": 31.6, "quantization": "nvfp4",
        "role": "llm",
        "source": "huggingface.co/nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-NVFP4; NVFP4 block "
                  "layout (16 x FP4 + FP8 scale)",
    },
    # moondream2 weights: a ~1.8 GB download (decimal) into the vision container's cache;
    # vikhyatk/moondream2 has 1.93 B parameters.
    "moondream2": {
        "aliases": ["vikhyatk/moondream2", "moondream"],
        "params_b": 1.93, "weights_mib": 1717,
        "role": "vision",
        "source": "vikhyatk/moondream2 (weights ~1.8 GB download)",
    },
    # A VRAM estimate: Florence-2-Large ~1.5 GB (microsoft/Florence-2-large,
    # 0.77 B parameters).
    "florence-2-large": {
        "aliases": ["florence-2-l", "microsoft/Florence-2-large", "florence2-large"],
        "params_b": 0.77, "vram_mib": 1536,
        "role": "vision",
        "source": "VRAM estimate (Florence-2-Large ~1.5 GB)",
    },
    # A VRAM estimate: CLIP ViT-L ~1.2 GB (openai/clip-vit-large-patch14,
    # 0.43 B parameters).
    "clip-vit-large": {
        "aliases": ["clip-vit-l", "clip-vit-l-14", "openai/clip-vit-large-patch14"],
        "params_b": 0.43, "vram_mib": 1229,
        "role": "embedding",
        "source": "VRAM estimate (CLIP ViT-L ~1.2 GB)",
    },
    # A VRAM estimate: YOLO26 ~650 MB.
    "yolo26": {
        "aliases": ["yolo"],
        "vram_mib": 650,
        "role": "vision",
        "source": "VRAM estimate (YOLO26 ~650 MB)",
    },
    # Not one model: the ~6.8 GB budget an enrichment service shares among a zoo of 9 models.
    "model-zoo": {
        "aliases": ["enrichment-model-zoo"],
        "vram_mib": 6963,
        "role": "vision",
        "source": "VRAM budget (enrichment model zoo, 9 models, ~6.8 GB)",
    },
}
