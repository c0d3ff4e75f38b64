# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalog's vendor_images: a service on an AMD GPU runs its engine's ROCm image."""

from __future__ import annotations

import re

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _plan, _render
from tests.support.plans import gpu, make_plan


def _by_name(plan):
    return {s["name"]: s for s in plan["services"]}


def _mixed():
    # An NVIDIA GPU 0 and an AMD GPU numbered 1 on the host (vendor_index 0).
    amd = dict(gpu(1, total=49136, vendor="amd"), vendor_index=0, uuid=None)
    return [gpu(0), amd]


@pytest.mark.parametrize("gpus, images", [
    # Two NVIDIA GPUs: the catalog's image everywhere.
    ([gpu(0), gpu(1)], {"ollama": "ollama/ollama:latest", "vllm": "vllm/vllm-openai:latest"}),
    # Two AMD GPUs: the ROCm builds.
    ([dict(gpu(0, vendor="amd"), vendor_index=0), dict(gpu(1, vendor="amd"), vendor_index=1)],
     {"ollama": "ollama/ollama:rocm", "vllm": "vllm/vllm-openai-rocm:latest"}),
    # NVIDIA GPU 0, AMD GPU 1: each service the image of the GPU it is placed on.
    (_mixed(), {"ollama": "ollama/ollama:latest", "vllm": "vllm/vllm-openai-rocm:latest"}),
])
def test_the_image_follows_the_vendor_of_the_placement(gpus, images):
    services = _by_name(make_plan("dual-gpu", "mixed", gpus=gpus))
    assert {name: services[name]["image"] for name in images} == images
    assert services["docling"]["image"] == "quay.io/docling-project/docling-serve:latest"


def test_amd_placement_renders_rocm_image_devices_and_rocr_visible_devices():
    plan = make_plan("dual-gpu", "mixed", gpus=_mixed())
    base = _render.compose_document(plan, "base")["services"]
    overlay = _render.compose_document(plan, "gpu")["services"]
    assert base["vllm"]["image"] == "vllm/vllm-openai-rocm:latest"
    assert overlay["vllm"]["devices"] == ["/dev/kfd", "/dev/dri"]
    assert overlay["vllm"]["environment"]["ROCR_VISIBLE_DEVICES"] == "0"
    assert "deploy" not in overlay["vllm"]
    assert overlay["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] \
        == "nvidia"


def test_vendor_images_pass_through_the_mirror():
    def mirror(catalog):
        catalog["vllm"]["vendor_images"] = {"amd": "docker.io/vllm/vllm-openai-rocm:v0.11.0"}
    plan = make_plan("dual-gpu", "mixed", gpus=_mixed(), change=mirror)
    assert _by_name(plan)["vllm"]["image"] == "docker.io/vllm/vllm-openai-rocm:v0.11.0"


@pytest.mark.parametrize("value, message", [
    ("ollama/ollama:rocm", "services_catalog.ollama.vendor_images must be a dict of vendor: "
     "image (vendors nvidia, amd, intel); got: 'ollama/ollama:rocm'"),
    ({"rocm": "ollama/ollama:rocm"}, "services_catalog.ollama.vendor_images keys must be GPU "
     "vendors (nvidia, amd, intel); got: 'rocm'"),
    ({"amd": "Ollama/Ollama:rocm"}, "services_catalog.ollama.vendor_images.amd must be an "
     "image reference like ollama/ollama:latest (repository in lower case); got: "
     "'Ollama/Ollama:rocm'"),
])
def test_bad_vendor_images_name_field_and_value(value, message):
    def change(catalog):
        catalog["ollama"]["vendor_images"] = value
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        make_plan(change=change)


def test_vendor_images_is_a_catalog_key():
    assert "vendor_images" in _plan.CATALOG_KEYS
