"""The opt-in fast mode (bf16 autocast, channels_last): close to fp32, never silent about it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import deepvis
from deepvis_server.config import load_config
from deepvis_server.server import serve_in_thread


@pytest.fixture(scope="module")
def exact_and_fast():
    cfg = load_config()
    exact = cfg.models[0]
    fast = dataclasses.replace(exact, name="digits_fast", fast=True)
    with serve_in_thread(dataclasses.replace(cfg, models=(exact, fast)), "127.0.0.1:0") as server:
        yield server


@pytest.mark.parametrize(
    "method", ["guided_backprop", "grad_cam", "guided_grad_cam", "activations"]
)
def test_fast_mode_is_close_to_fp32_and_says_so(exact_and_fast, sample_paths, method) -> None:
    with deepvis.Client(exact_and_fast.bound_address, timeout=60) as client:
        for path in sample_paths[:4]:
            exact = client.explain(str(path), model="digits", method=method, render=False)
            fast = client.explain(str(path), model="digits_fast", method=method, render=False)
            assert not any("fast mode" in w for w in exact.warnings)
            assert any("fast mode" in w for w in fast.warnings)
            assert fast.target == exact.target
            assert fast.array is not None and exact.array is not None
            a, b = fast.array.ravel(), exact.array.ravel()
            # bf16 keeps ~3 significant digits and can flip a ReLU mask at a near-zero input:
            # the maps agree in shape and on average, not to 1e-5 everywhere.
            assert np.corrcoef(a, b)[0, 1] > 0.95
            assert np.abs(a - b).mean() <= 0.01 * np.abs(b).max()


def test_fast_mode_keeps_the_model_unchanged_for_other_requests(exact_and_fast) -> None:
    served = exact_and_fast.engine.models["digits_fast"]
    assert all(
        p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in served.module.parameters()
    )
    assert exact_and_fast.engine.models["digits"].spec.fast is False
