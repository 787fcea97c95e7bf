"""The architectures people explain today, random weights and small inputs: a small
torchvision ViT, swin_t, convnext_tiny, a RegNet, an EfficientNet and a MobileNetV3. Every
method of the registry, DeepDream and the class-model preset either answer (finite arrays of
the input's or the suggested layer's shape, the guided methods' warning on GELU/SiLU/Hardswish
models) or refuse with INVALID_ARGUMENT and a message that says what is valid; never an
internal error. The served models keep no hook and no parameter needing grad afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import deepvis
from deepvis_server.config import parse_config
from deepvis_server.methods import REGISTRY
from deepvis_server.server import serve_in_thread
from leftovers import hooks_and_grads
from zoo import build_oracle_twin, saved_table

# name: (arch, classes, input size)
ARCHS = {
    "vit": ("toy_models:tiny_vit", 10, (32, 32)),
    "swin_t": ("swin_t", 10, (64, 64)),
    "convnext_tiny": ("convnext_tiny", 10, (64, 64)),
    "regnet_y_400mf": ("regnet_y_400mf", 10, (64, 64)),
    "efficientnet_b0": ("efficientnet_b0", 10, (64, 64)),
    "mobilenet_v3_small": ("mobilenet_v3_small", 10, (64, 64)),
}
# Models whose activations are not ReLUs: the guided methods' rule does not apply there.
NOT_RELU = {"vit", "swin_t", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small"}
GUIDED = {"guided_backprop", "deconvolution", "guided_grad_cam"}
# Methods made for one kind of model, and the phrase their refusal elsewhere uses.
ONLY_VIT = {"attention_rollout": "attention"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, dict]]:
    root = tmp_path_factory.mktemp("architectures")
    torch.manual_seed(5)
    tables = []
    for name, (arch, k, size) in ARCHS.items():
        twin = build_oracle_twin(arch, k)
        tables.append(saved_table(root, name, arch, twin, k, size))
    config = parse_config({"server": {"device": "cpu"}, "models": tables}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server.bound_address, server.engine.models


def picture(name: str) -> np.ndarray:
    h, w = ARCHS[name][2]
    rng = np.random.default_rng(len(name))
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_answers_or_refuses_clearly(served, name, method) -> None:
    address, models = served
    model = models[name]
    with deepvis.Client(address, timeout=300) as client:
        try:
            result = client.explain(picture(name), model=name, method=method, target=3)
        except deepvis.InvalidArgument as e:
            refusal: str | None = str(e)
        else:
            refusal = None
    assert hooks_and_grads(model.module) == [], (name, method)
    only = ONLY_VIT.get(method)
    if only is not None and not model.attention_layers:
        assert refusal is not None and only in refusal, refusal
        return
    assert refusal is None, f"{method} on {name} refused: {refusal}"
    assert result.array is not None
    assert np.isfinite(result.array).all() and result.array.size > 0
    h, w = ARCHS[name][2]
    if method not in ("activations", "grad_cam"):  # the others: the input's size
        assert result.array.shape[-2:] == (h, w), result.array.shape
    elif method == "grad_cam":
        # On the suggested layer, a spatial map (never tokens taken for channels).
        layout = model.layer_layouts[model.default_cam_layer]
        assert layout.map_shape is not None
        assert result.array.shape[-2:] in ((h, w), tuple(layout.map_shape[1:]))
    if method in GUIDED and name in NOT_RELU:
        assert any("ReLU" in w or "relu" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize("name", list(ARCHS))
def test_deepdream_and_the_class_model_answer_or_refuse_clearly(served, name) -> None:
    address, models = served
    model = models[name]
    with deepvis.Client(address, timeout=300) as client:
        cm = client.visualize(3, model=name, preset="class_model", steps=2)
        assert np.isfinite(cm.array).all() and cm.steps == 2
        if model.attention_layers:
            with pytest.raises(deepvis.InvalidArgument, match="vision transformer"):
                client.dream(picture(name), 3, model=name, octaves=2, steps_per_octave=1)
            # At its own input size, in one octave, it dreams.
            dreamt = client.dream(picture(name), 3, model=name, octaves=1, steps_per_octave=2)
        else:
            dreamt = client.dream(picture(name), 3, model=name, octaves=2, steps_per_octave=2)
    assert dreamt.array.shape == (1, 3, *ARCHS[name][2]) and np.isfinite(dreamt.array).all()
    assert hooks_and_grads(model.module) == []
