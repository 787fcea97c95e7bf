"""Transformation robustness (Lucid's pad, jitter, scale, rotate, jitter) as one affine per row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LUCID_TRANSFORMS",
    "N_DRAWS",
    "TransformConfig",
    "affine_matrices",
    "apply_affine",
    "draw_transform",
    "transform_rows",
]


@dataclass(frozen=True)
class TransformConfig:
    """The random transforms applied before every forward pass, Lucid's defaults.

    Lucid's `standard_transforms`: pad 12 (constant 0.5), jitter 8, scale from
    1 + (i - 5) / 50 for i in 0..10, rotate by a whole degree in -10..10 with 0 weighted
    six times, jitter 4; the result is resized to the model's input size.
    """

    pad: int = 12
    # "constant" pads with `pad_value`, as Lucid and Lucent do; "reflect" mirrors the image
    # about its border (grid_sample's reflection, which repeats the edge pixel, whereas
    # F.pad's reflect does not: a half-pixel difference at the border).
    pad_mode: str = "constant"
    pad_value: float = 0.5
    jitter1: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50.0 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5
    jitter2: int = 4

    def __post_init__(self) -> None:
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got '{self.pad_mode}'")
        if self.pad < 0 or self.jitter1 < 1 or self.jitter2 < 1:
            raise ValueError("pad must be >= 0 and jitters >= 1")
        if not self.scales or not self.angles or min(self.scales) <= 0:
            raise ValueError("scales must be positive and angles non-empty")


LUCID_TRANSFORMS = TransformConfig()

# Random numbers one row draws per step: jitter1 (dx, dy), scale, angle, jitter2 (dx, dy).
N_DRAWS = 6


def draw_transform(
    generator: torch.Generator, config: TransformConfig = LUCID_TRANSFORMS
) -> np.ndarray:
    """One row's random choices for one step, [dx1, dy1, scale, angle, dx2, dy2].

    Always exactly N_DRAWS numbers from the row's own generator, so a row's stream of
    transforms depends only on its seed and how many steps it has taken.
    """
    u = torch.rand(N_DRAWS, generator=generator, dtype=torch.float64).numpy()

    def choice(x: float, n: int) -> int:
        return min(int(x * n), n - 1)

    return np.array(
        [
            choice(u[0], config.jitter1),
            choice(u[1], config.jitter1),
            config.scales[choice(u[2], len(config.scales))],
            config.angles[choice(u[3], len(config.angles))],
            choice(u[4], config.jitter2),
            choice(u[5], config.jitter2),
        ],
        dtype=np.float64,
    )


def _translate(tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    m = np.zeros((len(tx), 3, 3))
    m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = 1.0
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale(sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    m = np.zeros((len(sx), 3, 3))
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1.0
    return m


def _rotate(radians: np.ndarray) -> np.ndarray:
    c, s = np.cos(radians), np.sin(radians)
    m = np.zeros((len(radians), 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = c, -s, s, c, 1.0
    return m


def affine_matrices(
    draws: np.ndarray,
    enabled: np.ndarray,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    config: TransformConfig = LUCID_TRANSFORMS,
) -> np.ndarray:
    """The sampling matrix [N, 2, 3] of each row, for F.affine_grid(align_corners=False).

    Each matrix maps an output pixel (normalised coordinates) back to where it samples the
    row's image: the inverse of pad -> crop(jitter1) -> scale -> rotate about the centre ->
    crop(jitter2) -> resize to `out_size`, composed in pixel coordinates (so rotation stays
    a rotation on non-square images). One bilinear sampling replaces Lucid's chain of three
    resamplings. Rows with `enabled` False only resize their image to `out_size`.

    Args:
        draws: [N, N_DRAWS] from draw_transform (ignored where not enabled).
        enabled: [N] bool.
        image_size: (H, W) of the rows' images.
        out_size: (H, W) the model sees.
    """
    n = len(enabled)
    h, w = (float(v) for v in image_size)
    ho, wo = (float(v) for v in out_size)
    draws = np.where(enabled[:, None], draws, np.array([0, 0, 1, 0, 0, 0], dtype=np.float64))
    dx1, dy1, s, deg, dx2, dy2 = draws.T
    on = enabled.astype(np.float64)
    p = config.pad * on
    # Sizes along the chain; crops shrink by their jitter range, as Lucid's jitter does.
    w1, h1 = w + 2 * p - config.jitter1 * on, h + 2 * p - config.jitter1 * on
    w2, h2 = w1 * s, h1 * s
    w3, h3 = w2 - config.jitter2 * on, h2 - config.jitter2 * on
    ones = np.ones(n)
    out_to_px = _scale(ones * wo / 2, ones * ho / 2) @ _translate(ones, ones)
    px_to_in = _translate(-ones, -ones) @ _scale(ones * 2 / w, ones * 2 / h)
    m = (
        px_to_in
        @ _translate(dx1 - p, dy1 - p)
        @ _scale(1 / s, 1 / s)
        @ _translate(w2 / 2, h2 / 2)
        @ _rotate(-np.deg2rad(deg))
        @ _translate(-w2 / 2, -h2 / 2)
        @ _translate(dx2, dy2)
        @ _scale(w3 / wo, h3 / ho)
        @ out_to_px
    )
    return m[:, :2, :].astype(np.float32)


def apply_affine(
    images: torch.Tensor,
    theta: torch.Tensor,
    out_size: tuple[int, int],
    config: TransformConfig = LUCID_TRANSFORMS,
) -> torch.Tensor:
    """Samples every row of `images` [N, C, H, W] through its matrix in one grid_sample call."""
    n, c = images.shape[:2]
    grid = F.affine_grid(theta, [n, c, *out_size], align_corners=False)
    if config.pad_mode == "constant":
        # Outside the image grid_sample reads zeros; shifting by the pad value makes that
        # zero the pad colour, blended with the border exactly as padding-then-sampling is.
        shifted = images - config.pad_value
        out = F.grid_sample(shifted, grid, "bilinear", "zeros", align_corners=False)
        return out + config.pad_value
    return F.grid_sample(images, grid, "bilinear", "reflection", align_corners=False)


def transform_rows(
    images: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    out_size: tuple[int, int],
    config: TransformConfig = LUCID_TRANSFORMS,
) -> torch.Tensor:
    """Random transforms per row, each from its own generator (None: no transform, resize only).

    The scalars are drawn on the CPU and only the [N, 2, 3] matrices go to the device.
    """
    n = images.shape[0]
    draws = np.zeros((n, N_DRAWS))
    enabled = np.zeros(n, dtype=bool)
    for i, g in enumerate(generators):
        if g is not None:
            draws[i] = draw_transform(g, config)
            enabled[i] = True
    size = (int(images.shape[-2]), int(images.shape[-1]))
    theta = affine_matrices(draws, enabled, size, out_size, config)
    theta_t = torch.from_numpy(theta).to(device=images.device, dtype=images.dtype)
    return apply_affine(images, theta_t, out_size, config)
