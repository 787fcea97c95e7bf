"""memory_format = "channels_last": the model's weights and batches laid out channels-last,
fp32 still, and equal to Captum on a channels-last copy of the same model."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop

import deepvis
from deepvis_server.config import ConfigError, load_config, parse_config
from deepvis_server.models import load_model
from deepvis_server.preprocess import batch_to_model_input, pixels_chw
from deepvis_server.server import serve_in_thread
from oracles import TOL, preprocess_digit, relative_error

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def both():
    """One server with the default model twice: as it is, and channels-last."""
    cfg = load_config()
    plain = cfg.models[0]
    last = dataclasses.replace(plain, name="digits_cl", memory_format="channels_last")
    with serve_in_thread(dataclasses.replace(cfg, models=(plain, last)), "127.0.0.1:0") as server:
        yield server


def _channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


def test_the_default_is_contiguous_and_channels_last_lays_out_every_4d_weight(both) -> None:
    plain, last = both.engine.models["digits"], both.engine.models["digits_cl"]
    assert plain.spec.memory_format == "contiguous" and not plain.channels_last
    assert all(p.is_contiguous() for p in plain.module.parameters())
    assert last.channels_last
    weights = [p for p in last.module.parameters() if p.dim() == 4]
    assert weights and all(_channels_last(p) for p in weights)
    # (A weight with one input channel is both; the others are not contiguous any more.)
    assert any(not p.is_contiguous() for p in weights)


def test_channels_last_answers_equal_captum_on_a_channels_last_copy(
    both, digits_twin, sample_paths
) -> None:
    twin = copy.deepcopy(digits_twin).to(memory_format=torch.channels_last)
    with deepvis.Client(both.bound_address, timeout=60) as client:
        for i, path in enumerate(sample_paths[:4]):
            got = client.explain(str(path), model="digits_cl", target=i, render=False)
            x = torch.from_numpy(preprocess_digit(path))[None]
            ref = GuidedBackprop(twin).attribute(
                x.contiguous(memory_format=torch.channels_last), target=i
            )
            assert relative_error(got.array, ref[0].detach().numpy()) <= TOL


@pytest.mark.parametrize("method", ["guided_backprop", "grad_cam", "saliency", "activations"])
def test_channels_last_answers_agree_with_contiguous_ones(both, sample_paths, method) -> None:
    with deepvis.Client(both.bound_address, timeout=60) as client:
        for path in sample_paths[:4]:
            a = client.explain(str(path), model="digits", method=method, render=False)
            b = client.explain(str(path), model="digits_cl", method=method, render=False)
            assert a.target == b.target
            assert a.array is not None and b.array is not None
            assert a.array.shape == b.array.shape and a.array.flags.c_contiguous
            # Sums in another order: rounding apart, and a ReLU whose input is within
            # rounding of zero may pass its gradient in one and not the other.
            assert np.abs(a.array - b.array).mean() <= 1e-5 * np.abs(a.array).max()


def test_batches_are_laid_out_channels_last_with_the_same_values() -> None:
    mean = torch.tensor([0.5, 0.4, 0.3])[:, None, None]
    std = torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    rng = np.random.default_rng(0)
    pixels = [pixels_chw(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)) for _ in range(3)]
    floats = [torch.from_numpy(rng.standard_normal((3, 6, 5), dtype=np.float32)) for _ in range(3)]
    for items in (pixels, floats):
        plain = batch_to_model_input(items, CPU, mean, std)
        last = batch_to_model_input(items, CPU, mean, std, channels_last=True)
        assert plain.is_contiguous() and _channels_last(last) and not last.is_contiguous()
        assert torch.equal(plain, last)


def test_a_forward_that_needs_contiguous_memory_is_refused_channels_last(tmp_path: Path) -> None:
    table = {
        "name": "viewnet",
        "arch": "toy_models:ViewNet",
        "num_classes": 4,
        "input_size": [8, 8],
        "memory_format": "channels_last",
    }
    spec = parse_config({"models": [table]}, tmp_path).models[0]
    with pytest.raises(ConfigError, match=r"fails on a channels_last batch .*view.*contiguous"):
        load_model(spec, CPU)
    plain = dataclasses.replace(spec, memory_format="contiguous")
    assert not load_model(plain, CPU).channels_last


def test_an_unknown_memory_format_names_the_valid_ones(tmp_path: Path) -> None:
    table = {"name": "m", "arch": "resnet18", "num_classes": 4, "input_size": [8, 8]}
    with pytest.raises(
        ConfigError,
        match=r"model 'm'\.memory_format must be one of 'contiguous', 'channels_last', got 'nhwc'",
    ):
        parse_config({"models": [{**table, "memory_format": "nhwc"}]}, tmp_path)
