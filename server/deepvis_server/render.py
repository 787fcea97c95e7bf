"""Pictures of raw method results, for people; the raw arrays are what programs should use."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Inputs as small as 28-32 px make unreadable pictures: scale them up (nearest, so pixels
# stay honest) until the shorter side is at least this.
MIN_RENDER_SIDE = 128


def upscale(img: Image.Image) -> Image.Image:
    w, h = img.size
    factor = min(8, math.ceil(MIN_RENDER_SIDE / max(1, min(w, h))))
    return img if factor <= 1 else img.resize((w * factor, h * factor), Image.NEAREST)


def render_gradient(array: np.ndarray) -> Image.Image:
    """An input-space gradient [C, H, W] as a picture: centred, scaled by its spread, grey at zero.

    This is the usual way to show guided backprop (as in pytorch-grad-cam's deprocess):
    (g - mean) / std * 0.1 + 0.5, clipped to [0, 1]. One channel gives a grayscale picture,
    three give RGB; any other count is averaged to one.
    """
    g = np.asarray(array, dtype=np.float32)
    if g.ndim == 2:
        g = g[None]
    if g.shape[0] not in (1, 3):
        g = g.mean(axis=0, keepdims=True)
    g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
    pixels = (np.clip(g, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    return upscale(img)


def to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # speed over size: these are short-lived
    return buf.getvalue()
