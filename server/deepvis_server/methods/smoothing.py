"""SmoothGrad, SmoothGrad-squared and VarGrad over any input-space method, its noisy copies
run as rows of the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ..models import ServedModel
from .base import BatchOutput, MethodRequest
from .gradients import resolved_requests, rows_per_pass
from .options import SmoothOptions

if TYPE_CHECKING:
    from .base import Method


def noise_scale(x: torch.Tensor, noise: float) -> torch.Tensor:
    """Each item's noise standard deviation [N, 1, 1, 1]: `noise` times its range, the maximum
    minus the minimum over every channel and pixel (Smilkov et al.; PAIR's saliency library)."""
    flat = x.reshape(x.shape[0], -1)
    return (noise * (flat.max(dim=1).values - flat.min(dim=1).values)).view(-1, 1, 1, 1)


def smooth_run(
    method: Method, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
) -> BatchOutput:
    """The method's result aggregated over `samples` noisy copies of each item.

    The copies are rows: item-major, they run through `method.run` in passes of at most the
    model's batch size (rows_per_pass), each pass's results folded into per-item sums of the
    results and of their squares (float64), so the device holds one pass's rows at a time
    whatever the samples. Item i's k-th copy is x_i + sigma_i * e_k, where e_k is
    `torch.randn((C, H, W))` from torch's CPU generator seeded with the item's seed, drawn in
    the order k = 0, 1, ...: the same seed gives the same copies on any device and in any
    batch. Class targets are resolved on the input itself, once, before the copies run.
    """
    opts = requests[0].smooth or SmoothOptions()
    x = x.detach()
    logits, resolved = resolved_requests(model, x, requests)
    inner = [replace(r, smooth=None) for r in resolved]
    n, s = x.shape[0], opts.samples
    sigma = noise_scale(x, opts.noise)
    generators = [
        torch.Generator().manual_seed(r.smooth.seed if r.smooth is not None else 0)
        for r in requests
    ]
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    completeness: torch.Tensor | None = None
    warnings: tuple[str, ...] = ()
    rows, per_pass = n * s, rows_per_pass(model)
    for start in range(0, rows, per_pass):
        items = [r // s for r in range(start, min(rows, start + per_pass))]
        noise = torch.stack([torch.randn(x.shape[1:], generator=generators[i]) for i in items])
        index = torch.tensor(items, device=x.device)
        noisy = x[index] + sigma[index] * noise.to(x.device, x.dtype)
        out = method.run(model, noisy, [inner[i] for i in items])
        a = out.arrays.detach().double()
        total.index_add_(0, index, a)
        squares.index_add_(0, index, a * a)
        if out.completeness is not None:
            if completeness is None:
                completeness = torch.zeros((n, 3), dtype=torch.float64, device=x.device)
            completeness.index_add_(0, index, out.completeness.double())
        warnings = warnings or out.warnings
    mean = total / s
    if opts.kind == "smoothgrad":
        result = mean
    elif opts.kind == "smoothgrad_sq":
        result = squares / s
    else:  # vargrad: the population variance, as Captum's NoiseTunnel
        result = (squares / s - mean * mean).clamp(min=0.0)
    if completeness is not None and opts.kind == "smoothgrad":
        completeness = completeness / s
    else:
        completeness = None
    return BatchOutput(
        logits=logits,
        arrays=result.to(x.dtype),
        targets=[r.target for r in resolved if r.target is not None],
        warnings=warnings,
        completeness=completeness,
    )
