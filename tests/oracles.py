"""Independent oracles shared by the tests: Captum's guided backprop, the digits'
preprocessing, and the error measure every comparison uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from captum.attr import GuidedBackprop
from PIL import Image

from deepvis_server.config import load_config

TOL = 1e-5


def captum_gbp(model: torch.nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    out = GuidedBackprop(model).attribute(torch.from_numpy(x)[None].clone(), target=target)
    return out[0].detach().numpy()


def preprocess_digit(path: str | Path) -> np.ndarray:
    """The default model's preprocessing, written out by hand: pixels / 255, then mean and std."""
    spec = load_config().models[0]
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    return ((pixels - spec.mean[0]) / spec.std[0])[None].astype(np.float32)


def relative_error(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Max abs difference over the largest magnitude of the reference, `b`. (None, what an
    Explanation holds without its array, fails.)"""
    assert a is not None and b is not None, "no array to compare"
    scale = float(np.abs(b).max())
    assert scale > 0, "the oracle's result is all zeros: the comparison would prove nothing"
    return float(np.abs(a - b).max()) / scale
