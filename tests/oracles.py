"""Independent oracles shared by the tests: Captum's guided backprop, the digits' preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import GuidedBackprop
from PIL import Image

from deepvis_server.config import load_config

TOL = 1e-5


def captum_gbp(model: torch.nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    out = GuidedBackprop(model).attribute(torch.from_numpy(x)[None].clone(), target=target)
    return out[0].detach().numpy()


def preprocess_digit(path) -> np.ndarray:
    """The default model's preprocessing, written out by hand: pixels / 255, then mean and std."""
    spec = load_config().models[0]
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    return ((pixels - spec.mean[0]) / spec.std[0])[None].astype(np.float32)
