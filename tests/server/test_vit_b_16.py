"""torchvision's vit_b_16 at its own 224x224, random weights: DescribeModel reports its token
layers (197 tokens: a class token and a 14x14 patch grid), suggests the last block's first
norm, and Grad-CAM there equals pytorch-grad-cam with its documented ViT reshape."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

import deepvis
from deepvis_server.config import parse_config
from deepvis_server.server import serve_in_thread
from oracles import pytorch_grad_cam, relative_error, vit_reshape_transform

LAST_NORM = "encoder.layers.encoder_layer_11.ln_1"


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Iterator[tuple[str, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("vit_b_16")
    torch.manual_seed(0)
    twin = torchvision.models.vit_b_16(weights=None, num_classes=10).eval().requires_grad_(False)
    # torchvision zeroes the head, which would make every gradient zero.
    torch.nn.init.normal_(twin.heads.head.weight, std=0.05)
    save_file(
        {k: v.contiguous() for k, v in twin.state_dict().items()}, str(root / "w.safetensors")
    )
    table = {"name": "vit_b_16", "arch": "vit_b_16", "weights": str(root / "w.safetensors"),
             "num_classes": 10, "input_size": [224, 224]}  # fmt: skip
    config = parse_config({"server": {"device": "cpu"}, "models": [table]}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server.bound_address, twin


def test_describe_model_reports_tokens_on_a_14x14_grid_and_suggests_the_last_ln_1(vit) -> None:
    address, _ = vit
    with deepvis.Client(address, timeout=120) as client:
        desc = client.describe("vit_b_16")
    layers = {layer.name: layer for layer in desc.layers}
    assert desc.default_cam_layer == LAST_NORM
    assert "class token" in desc.default_cam_layer_note
    for name in (LAST_NORM, "encoder.layers.encoder_layer_0", "encoder.ln"):
        info = layers[name]
        assert info.output_shape == (197, 768) and info.layout == "tokens", name
        assert info.class_tokens == 1 and info.map_shape == (768, 14, 14), name
    assert layers["conv_proj"].layout == "channels_first"
    assert layers["conv_proj"].map_shape == (768, 14, 14)
    assert layers["heads.head"].layout == "vector"
    assert len(desc.attention_layers) == 12


def test_grad_cam_at_the_suggested_layer_equals_pytorch_grad_cam(vit) -> None:
    address, twin = vit
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype("f4"))
    with deepvis.Client(address, timeout=300) as client:
        res = client.explain(x[0].numpy(), model="vit_b_16", method="grad_cam", target=4)
    module = dict(twin.named_modules())[LAST_NORM]
    ref = pytorch_grad_cam(twin, module, x, [4], vit_reshape_transform(14, 14))
    got = res.arrays["cam"]
    assert got.shape == (14, 14) and np.abs(ref).max() > 0
    assert relative_error(got[None], ref) <= 1e-5
