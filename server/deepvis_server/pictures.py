"""Pictures of raw method results, for people; the raw arrays are what programs should use."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Inputs as small as 28-32 px make unreadable pictures: scale them up (nearest, so pixels
# stay honest) until the shorter side is at least this.
MIN_PICTURE_SIDE = 128


def upscale(img: Image.Image) -> Image.Image:
    w, h = img.size
    factor = min(8, math.ceil(MIN_PICTURE_SIDE / max(1, min(w, h))))
    return img if factor <= 1 else img.resize((w * factor, h * factor), Image.Resampling.NEAREST)


def gradient_picture(array: np.ndarray) -> Image.Image:
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


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colormap for values in [0, 1]: uint8 [..., 3] (no matplotlib on the server)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def input_pixels(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """A request's input [C, H, W] (uint8 pixels, or a normalised model tensor) in [0, 1]
    pixels, as RGB [H, W, 3]."""
    c = x.shape[0]
    if x.dtype == np.uint8:
        pixels = x.astype(np.float32) / 255.0
    else:
        pixels = (
            x * np.asarray(std, np.float32)[:c, None, None]
            + np.asarray(mean, np.float32)[:c, None, None]
        )
    pixels = np.clip(pixels, 0.0, 1.0).transpose(1, 2, 0)
    return np.repeat(pixels, 3, axis=2) if c == 1 else pixels[:, :, :3]


def normalize01(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (
        np.zeros_like(a, dtype=np.float32)
        if hi <= lo
        else ((a - lo) / (hi - lo)).astype(np.float32)
    )


def heatmap_picture(
    heat: np.ndarray, background: np.ndarray | None, alpha: float = 0.5
) -> Image.Image:
    """A map [H, W] in jet colours, scaled to its own range, over the input when given."""
    colored = jet(normalize01(heat)).astype(np.float32) / 255.0
    if background is not None:
        colored = alpha * colored + (1.0 - alpha) * background
    return upscale(Image.fromarray((np.clip(colored, 0, 1) * 255.0 + 0.5).astype(np.uint8)))


def grid_picture(maps: np.ndarray, max_maps: int = 64, pad: int = 1) -> Image.Image:
    """Feature maps [K, h, w] as a near-square grid, each scaled to its own range."""
    maps = maps[:max_maps]
    k, h, w = maps.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), np.float32)
    for i in range(k):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = normalize01(maps[i])
    img = Image.fromarray((grid * 255.0 + 0.5).astype(np.uint8))
    return upscale(img) if max(h, w) < 32 else img


def images_to_pngs(images: list[np.ndarray]) -> list[bytes]:
    """uint8 images (HxW or HxWxC) as PNGs, scaled up like every other picture."""
    return [to_png(upscale(Image.fromarray(img))) for img in images]


def strip_png(images: list[np.ndarray], pad: int = 2) -> bytes:
    """Several same-size uint8 images side by side as one PNG."""
    h, w = images[0].shape[:2]
    shape = (h, len(images) * (w + pad) - pad) + images[0].shape[2:]
    strip = np.full(shape, 255, np.uint8)
    for i, img in enumerate(images):
        strip[:, i * (w + pad) : i * (w + pad) + w] = img
    return to_png(upscale(Image.fromarray(strip)))
