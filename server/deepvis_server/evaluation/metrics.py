"""The metrics' arithmetic on the device: ranks, Spearman, SSIM, RISE's blur, curves and areas."""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

# RISE's insertion substrate: an 11x11 Gaussian of sigma 5 (eclique/RISE evaluation.py gkern).
BLUR_SIZE = 11
BLUR_SIGMA = 5.0
# scipy.ndimage.gaussian_filter's default truncation: the 1-D kernel reaches 4 sigma.
_GAUSSIAN_TRUNCATE = 4.0
# skimage.metrics.structural_similarity's defaults (uniform window, sample covariance).
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def derived_seed(*parts: object) -> int:
    """A 64-bit seed from a label and its parts: the first 8 bytes, little-endian, of
    SHA-256 of the parts joined by ':' (e.g. "infidelity:<seed>:<j>:<k>")."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with `derived_seed(*parts)`: the same numbers on every device."""
    return torch.Generator().manual_seed(derived_seed(*parts))


def rise_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """RISE's blur kernel: scipy.ndimage.gaussian_filter(delta, sigma) of a size x size unit
    impulse at the centre, written out so that the server needs no scipy. The filter is
    separable, so the kernel is the outer product of the 1-D filter of a 1-D impulse, with
    scipy's 'reflect' boundary (d c b a | a b c d | d c b a) folding the Gaussian's tails
    back in: the kernel sums to 1 but is not a sampled Gaussian."""
    radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * taps**2 / sigma**2)
    weights /= weights.sum()
    centre = size // 2
    line = np.zeros(size, dtype=np.float64)
    for i in range(size):
        for tap, w in zip(taps.astype(int), weights, strict=True):
            p = (i + tap) % (2 * size)  # scipy's 'reflect' has period 2 * size
            if p >= size:
                p = 2 * size - 1 - p
            if p == centre:
                line[i] += w
    return np.outer(line, line)


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel of x [N, C, H, W] convolved with `kernel` [k, k], zero padding."""
    c = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, padding=kernel.shape[-1] // 2, groups=c)


def group_ends(pixels: int, steps: int) -> list[int]:
    """How many ranked pixels are changed at each of the steps + 1 points of a curve: 0 at
    the start, then round((i + 1) * pixels / steps) (half to even, as Python's round)."""
    return [0, *(round(Fraction((i + 1) * pixels, steps)) for i in range(steps))]


def ranking_positions(saliency: torch.Tensor) -> torch.Tensor:
    """Each pixel's place in the ranking of `saliency` [N, H * W]: highest first, ties in
    pixel order (a stable sort); [N, H * W] int64."""
    order = torch.argsort(-saliency, dim=1, stable=True)
    positions = torch.empty_like(order)
    rank = torch.arange(order.shape[1], device=order.device).expand_as(order)
    positions.scatter_(1, order, rank)
    return positions


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """RISE's area of each curve [N, n]: (sum - first/2 - last/2) / (n - 1), in float64."""
    c = curves.double()
    n = c.shape[1]
    return (c.sum(dim=1) - c[:, 0] / 2 - c[:, -1] / 2) / (n - 1)


def saliency_2d(maps: torch.Tensor) -> torch.Tensor:
    """The 2-D map of each result: [N, C, H, W] summed over channels, [N, H, W] as it is."""
    return maps.sum(dim=1) if maps.dim() == 4 else maps


def max_normalised(maps: torch.Tensor) -> torch.Tensor:
    """Each [N, ...] map divided by its maximum; an all-zero map stays zero (no NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    top = flat.max(dim=1).values
    scale = torch.where(top > 0, top, torch.ones_like(top))
    return (flat / scale[:, None]).reshape(maps.shape)


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of v [N, D], ties given their average rank (scipy's
    rankdata(method='average')); float64."""
    n, d = v.shape
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    place = torch.arange(d, device=v.device).expand(n, d)
    first = torch.full((n, d), d, device=v.device, dtype=torch.long)
    first = first.scatter_reduce(1, group, place, reduce="amin")
    last = torch.zeros((n, d), device=v.device, dtype=torch.long)
    last = last.scatter_reduce(1, group, place, reduce="amax")
    mean_rank = (first + last).double() / 2 + 1
    ranks = torch.empty((n, d), device=v.device, dtype=torch.float64)
    ranks.scatter_(1, order, mean_rank.gather(1, group))
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each row pair of a, b [N, D] (float64 [N]): the Pearson
    correlation of their average ranks, as scipy.stats.spearmanr; NaN where a row is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    num = (ra * rb).sum(dim=1)
    den = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), math.nan)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each map pair a, b [N, H, W] (float64 [N]), as
    skimage.metrics.structural_similarity(a, b, data_range=data_range) with its defaults: a
    7x7 uniform window, sample covariance, K1 0.01, K2 0.03, the border where the window
    does not fit left out."""
    x, y = a.double()[:, None], b.double()[:, None]

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WINDOW, stride=1)

    ux, uy = mean(x), mean(y)
    n = SSIM_WINDOW * SSIM_WINDOW
    cov = n / (n - 1)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def similarity(original: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomization's two comparisons of maps [N, ...]: Spearman of |a| over all elements and
    SSIM of the max-normalised 2-D maps sum_c |a_c| (data_range 1); float64 [N] each."""
    a, b = original.detach().float().abs(), other.detach().float().abs()
    rho = spearman(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
    s = ssim(max_normalised(saliency_2d(a)), max_normalised(saliency_2d(b)))
    return rho, s
