"""Image parameterizations for feature visualization: Lucid's decorrelated FFT, and plain pixels."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "FFT_MAGIC",
    "MODEL_SPACE",
    "PARAM_KINDS",
    "fft_scale",
    "fft_to_image",
    "init_params",
    "param_shape",
    "params_to_image",
    "pixel_to_image",
    "to_valid_rgb",
]

PARAM_KINDS = ("fft", "pixel")
# The class-model preset's parameters: the image itself in the model's input space (normalised
# pixels), from zero; RenderBatch maps it to pixels with the model's own mean and std.
MODEL_SPACE = "model"

# Lucid's colour correlation of ImageNet, square root of its SVD (lucid/optvis/param/color.py).
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
# Normalised by its largest column norm, so decorrelation does not change the overall scale.
_COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / np.max(
    np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)
)
# Lucid divides the spatial image by 4; "increasing this seems to reduce saturation" (Lucent).
FFT_MAGIC = 4.0
INIT_SD = 0.01


def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """|frequency| of each coefficient of an rfft2 of an h x w image, shape [h, w // 2 + 1]."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


@lru_cache(maxsize=64)
def _fft_scale_np(h: int, w: int, decay_power: float) -> np.ndarray:
    freqs = _rfft2d_freqs(h, w)
    # 1/f spectrum: natural images' amplitude falls as 1/f, so every frequency learns at a rate
    # matched to its natural energy; the floor at 1/max(h, w) keeps the DC term finite.
    return (1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power).astype(np.float32)


def fft_scale(
    h: int, w: int, device: torch.device | str = "cpu", decay_power: float = 1.0
) -> torch.Tensor:
    """The spectrum scale [h, w // 2 + 1]: 1 / max(|f|, 1 / max(h, w)) ** decay_power."""
    return torch.from_numpy(_fft_scale_np(h, w, float(decay_power))).to(device)


def param_shape(kind: str, channels: int, size: tuple[int, int]) -> tuple[int, ...]:
    """Shape of one image's parameters (no batch dim)."""
    h, w = size
    if kind == "fft":
        # Real and imaginary parts of each rfft2 coefficient, last so view_as_complex works.
        return (channels, h, w // 2 + 1, 2)
    if kind in ("pixel", MODEL_SPACE):
        return (channels, h, w)
    raise ValueError(f"unknown parameterization '{kind}', expected one of {PARAM_KINDS}")


def init_params(
    kind: str,
    channels: int,
    size: tuple[int, int],
    generator: torch.Generator,
    sd: float = INIT_SD,
) -> torch.Tensor:
    """One image's initial parameters, N(0, sd), drawn on the CPU from `generator`.

    Drawn on the CPU so the same seed gives the same image on every device. The model-space
    image starts at zero (the mean image), drawing nothing.
    """
    if kind == MODEL_SPACE:
        return torch.zeros(param_shape(kind, channels, size))
    return torch.randn(param_shape(kind, channels, size), generator=generator) * sd


def to_valid_rgb(image: torch.Tensor, decorrelate: bool = True) -> torch.Tensor:
    """Unconstrained [N, C, H, W] to pixels in (0, 1): decorrelated colour (3 channels), sigmoid.

    Decorrelation maps the optimised channels through ImageNet's colour correlation, so a
    step in one parameter moves colours the way natural images vary (Lucent `to_valid_rgb`).
    One-channel images have no colour to decorrelate.
    """
    if decorrelate and image.shape[1] == 3:
        m = torch.as_tensor(_COLOR_CORRELATION_NORMALIZED, device=image.device, dtype=image.dtype)
        image = torch.einsum("ij,njhw->nihw", m, image)
    return torch.sigmoid(image)


def fft_to_image(
    params: torch.Tensor, size: tuple[int, int], decay_power: float = 1.0
) -> torch.Tensor:
    """Spectrum parameters [N, C, H, W // 2 + 1, 2] to the pre-sigmoid spatial image [N, C, H, W]."""
    h, w = size
    scale = fft_scale(h, w, params.device, decay_power)
    spectrum = torch.view_as_complex(params.contiguous()) * scale
    # norm="ortho" is Lucid's irfft2d times its sqrt(h * w) factor.
    return torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / FFT_MAGIC


def pixel_to_image(params: torch.Tensor) -> torch.Tensor:
    """Pixel parameters [N, C, H, W] are the pre-sigmoid image itself (Lucid's naive param)."""
    return params


def params_to_image(
    kind: str, params: torch.Tensor, size: tuple[int, int], decorrelate: bool | None = None
) -> torch.Tensor:
    """Parameters of N images to pixels in (0, 1), [N, C, H, W].

    Args:
        kind: "fft" (decorrelated FFT, Lucid's default) or "pixel" (plain pixels, no
            decorrelation, as Lucid's `image(fft=False, decorrelate=False)`).
        params: [N, *param_shape(kind, C, size)].
        size: the image's (height, width).
        decorrelate: override the kind's colour decorrelation.
    """
    if kind == "fft":
        image = fft_to_image(params, size)
        return to_valid_rgb(image, decorrelate=True if decorrelate is None else decorrelate)
    if kind == "pixel":
        return to_valid_rgb(pixel_to_image(params), decorrelate=bool(decorrelate))
    raise ValueError(f"unknown parameterization '{kind}', expected one of {PARAM_KINDS}")
