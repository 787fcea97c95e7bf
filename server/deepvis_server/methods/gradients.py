"""Input gradients (plain, or under a ReLU rule), saliency maps, gradient x input and integrated
gradients with their quadratures, baselines and expected gradients."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ResourceExhausted
from ..models import ServedModel
from .base import BatchOutput, Method, MethodRequest
from .options import MAX_PASSES_PER_ITEM, QUADRATURES, IgOptions
from .relu_rules import relu_rule
from .targets import (
    ClassTarget,
    NeuronTarget,
    Target,
    forward_and_score,
    item_scores,
    resolve_class_targets,
    target_scores,
)


def input_gradient(
    model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest], rule: str | None
) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    """Input gradient of each item's target, under the ReLU rule `rule` (None: the plain
    gradient); also the logits and the resolved targets."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, score, resolved, _ = forward_and_score(model, x, [r.target for r in requests])
        with relu_rule(score, rule) if rule is not None else nullcontext():
            (grad,) = torch.autograd.grad(score, x)
    return logits.detach(), grad, resolved


def resolved_requests(
    model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
) -> tuple[torch.Tensor, list[MethodRequest]]:
    """The logits of `x` (no gradient) and the requests with every class target resolved on
    `x` itself: methods that run the model on other inputs (scaled or noisy copies) explain
    the class predicted for the input, not the one predicted for each copy."""
    x = x.detach()
    with torch.no_grad():
        logits = model.module(x)
    if isinstance(requests[0].target, NeuronTarget):
        return logits, list(requests)
    classes = resolve_class_targets(logits, [r.target for r in requests])
    return logits, [
        replace(r, target=ClassTarget(int(c)))
        for r, c in zip(requests, classes.tolist(), strict=True)
    ]


def rows_per_pass(model: ServedModel) -> int:
    """How many rows (inputs) one forward and backward pass may hold: the model's configured
    batch size, what the operator sized the device for."""
    return max(1, model.spec.max_batch_size)


class _InputGradientMap(Method):
    """A map made of the plain input gradient of the target (and the input: `combine`)."""

    smoothable: ClassVar[bool] = True

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        logits, grad, targets = input_gradient(model, x, requests, None)
        return BatchOutput(logits=logits, arrays=self.combine(x.detach(), grad), targets=targets)

    @staticmethod
    @abstractmethod
    def combine(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The map of the input `x` [N, C, H, W] and its gradient `grad`, the same shape."""


class Saliency(_InputGradientMap):
    """Saliency map (Simonyan et al. 2014): |d score / d input|, [C, H, W] in the input's
    space; the picture is its maximum over channels, as in the paper."""

    name: ClassVar[str] = "saliency"

    @staticmethod
    def combine(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.abs()


class InputXGradient(_InputGradientMap):
    """Gradient x input (Shrikumar et al. 2016; Captum's InputXGradient): the input times the
    plain input gradient of the target, [C, H, W]. On a ReLU network it equals LRP-0."""

    name: ClassVar[str] = "input_x_gradient"

    @staticmethod
    def combine(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return x * grad


def gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    """Points and weights of n-point Gauss-Legendre quadrature on [0, 1]."""
    points, weights = np.polynomial.legendre.leggauss(n)
    return [float(a) for a in 0.5 * (points + 1.0)], [float(w) for w in 0.5 * weights]


def quadrature(method: str, n: int) -> tuple[list[float], list[float]]:
    """Points on [0, 1] and weights of an integration method, as Captum builds them (its
    Riemann points come from float32 `torch.linspace`; its trapezoid weights sum to (n-1)/n)."""
    if method == "gausslegendre":
        return gauss_legendre(n)
    if method not in QUADRATURES:
        raise ValueError(f"unknown quadrature {method!r}")
    kind = method.removeprefix("riemann_")
    points = {
        "left": lambda: torch.linspace(0, 1 - 1 / n, n),
        "right": lambda: torch.linspace(1 / n, 1, n),
        "middle": lambda: torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n),
        "trapezoid": lambda: torch.linspace(0, 1, n),
    }[kind]().tolist()
    weights = [1 / n] * n
    if kind == "trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    return points, weights


def default_blur_sigma(model: ServedModel) -> float:
    """The blur baseline's default standard deviation: a tenth of the input's shorter side."""
    return min(model.spec.input_size) / 10.0


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of [N, C, H, W] blurred by a Gaussian of `sigma` pixels, truncated at 4 sigma,
    the borders repeating the edge pixels: scipy.ndimage.gaussian_filter(mode="nearest")."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    n, c, h, w = x.shape
    out = x.reshape(n * c, 1, h, w)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return out.reshape(n, c, h, w)


def pixel_bounds(model: ServedModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-space images [1, C, 1, 1] of pixel value 0 and of pixel value 1."""
    mean = torch.tensor(model.spec.mean, dtype=torch.float32, device=device)[None, :, None, None]
    std = torch.tensor(model.spec.std, dtype=torch.float32, device=device)[None, :, None, None]
    return (0.0 - mean) / std, (1.0 - mean) / std


def baselines_and_draws(
    model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest], opts: IgOptions
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Each item's baselines [N, K, C, H, W] and, for expected gradients, its draws: baseline
    indices [N, S] and points [N, S].

    Random values come from torch's CPU generator seeded with the item's seed, in this order:
    the uniform baselines, one `torch.rand((C, H, W))` each, then expected gradients'
    `torch.randint(K, (S,))` and `torch.rand(S)`; the same seed gives the same draws on any
    device.
    """
    n, c, h, w = x.shape
    black, white = pixel_bounds(model, x.device)
    k = opts.baselines
    if opts.baseline == "zero":
        base = torch.zeros_like(x)[:, None]
    elif opts.baseline == "black":
        base = black.expand(n, c, h, w)[:, None]
    elif opts.baseline == "blur":
        base = gaussian_blur(x, opts.blur_sigma)[:, None]
    elif opts.baseline == "images":
        per_item = []
        for r in requests:
            images = r.ig.images if r.ig is not None else ()
            per_item.append(torch.stack([img.to(x.device, torch.float32) for img in images]))
        base = torch.stack(per_item)
    else:
        base = x.new_empty((n, k, c, h, w))
    generators = []
    for i, r in enumerate(requests):
        g = torch.Generator().manual_seed(r.ig.seed if r.ig is not None else 0)
        if opts.baseline == "uniform":
            drawn = torch.stack([torch.rand((c, h, w), generator=g) for _ in range(k)])
            # Pixels u in [0, 1] normalised: (u - mean) / std = black + u * (white - black).
            base[i] = black[0] + drawn.to(x.device) * (white[0] - black[0])
        generators.append(g)
    if opts.method != "expected_gradients":
        return base, None, None
    s = opts.steps
    idx, alpha = [], []
    for g in generators:
        idx.append(torch.randint(k, (s,), generator=g))
        alpha.append(torch.rand(s, generator=g))
    return base, torch.stack(idx).to(x.device), torch.stack(alpha).to(x.device)


class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al. 2017): (x - b) times the integral over a in
    [0, 1] of d score / d input at b + a (x - b), [C, H, W] in the input's space, averaged over
    the item's baselines b; or expected gradients (Captum's GradientShap without input noise):
    the mean over draws of a baseline and a point of (x - b) times the gradient there.
    Attributions sum to about score(x) - score(b) (completeness), reported per item.

    The scaled copies are rows: each item's steps x baselines rows run in passes of at most the
    model's batch size, whatever the items, and the target (the predicted class when none is
    given) is taken from the input itself, not from the scaled copies.
    """

    name: ClassVar[str] = "integrated_gradients"
    smoothable: ClassVar[bool] = True
    option_fields: ClassVar[frozenset[str]] = frozenset({"integrated_gradients"})

    def prepare(self, model: ServedModel, request: MethodRequest) -> MethodRequest:
        request = super().prepare(model, request)
        opts = request.ig or IgOptions()
        if opts.baseline == "blur" and not opts.blur_sigma:
            opts = replace(opts, blur_sigma=default_blur_sigma(model))
        samples = request.smooth.samples if request.smooth is not None else 1
        passes = opts.passes * samples
        if passes > MAX_PASSES_PER_ITEM:
            raise ResourceExhausted(
                f"integrated_gradients needs {passes} forward and backward passes for this "
                f"input (steps {opts.steps} x baselines {opts.baselines}"
                + (f" x smooth.samples {samples}" if samples > 1 else "")
                + f"); at most {MAX_PASSES_PER_ITEM} per input",
                field="integrated_gradients.steps",
            )
        return replace(request, ig=opts)

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        x = x.detach()
        logits, requests = resolved_requests(model, x, requests)
        opts = requests[0].ig or IgOptions()
        base, idx, alpha = baselines_and_draws(model, x, requests, opts)
        n = x.shape[0]
        if idx is not None and alpha is not None:
            attr, starts = self._expected_gradients(model, x, requests, base, idx, alpha)
        else:
            attr, starts = self._quadrature(model, x, requests, base, opts)
        targets = [r.target for r in requests if r.target is not None]
        scores = (
            item_scores(logits, targets)
            if isinstance(targets[0], ClassTarget)
            else target_scores(model, x, targets)
        )
        base_scores = self._mean_scores(model, starts, requests)
        completeness = torch.stack(
            [attr.double().reshape(n, -1).sum(1), scores.double(), base_scores.double()], dim=1
        )
        return BatchOutput(logits=logits, arrays=attr, targets=targets, completeness=completeness)

    def _quadrature(
        self,
        model: ServedModel,
        x: torch.Tensor,
        requests: Sequence[MethodRequest],
        base: torch.Tensor,
        opts: IgOptions,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over each item's K baselines of (x - b) * sum_s w_s grad(b + a_s (x - b));
        also the baselines [N, K, ...], whose scores the completeness needs."""
        n, k = base.shape[:2]
        points, weights = quadrature(opts.method, opts.steps)
        alphas = torch.tensor(points, dtype=x.dtype, device=x.device)
        w = torch.tensor(weights, dtype=x.dtype, device=x.device)
        flat_base = base.reshape(n * k, *x.shape[1:])
        totals = torch.zeros_like(flat_base)
        # Rows step-major (as Captum lays out its scaled inputs), then item and baseline.
        rows = len(points) * n * k
        per_pass = rows_per_pass(model)
        for start in range(0, rows, per_pass):
            r = torch.arange(start, min(rows, start + per_pass), device=x.device)
            step, pair = r // (n * k), r % (n * k)
            item = pair // k
            b = flat_base[pair]
            scaled = b + alphas[step].view(-1, 1, 1, 1) * (x[item] - b)
            reqs = [requests[i] for i in item.tolist()]
            _, grad, _ = input_gradient(model, scaled, reqs, None)
            totals.index_add_(0, pair, grad * w[step].view(-1, 1, 1, 1))
        diffs = x.repeat_interleave(k, dim=0) - flat_base
        attr = (diffs * totals).reshape(n, k, *x.shape[1:]).mean(dim=1)
        return attr, base

    def _expected_gradients(
        self,
        model: ServedModel,
        x: torch.Tensor,
        requests: Sequence[MethodRequest],
        base: torch.Tensor,
        idx: torch.Tensor,
        alpha: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over draws s of (x - b_s) * grad(a_s x + (1 - a_s) b_s), as Captum's
        GradientShap computes it; also the drawn baselines [N, S, ...]."""
        n, s = idx.shape
        drawn = base[torch.arange(n, device=x.device)[:, None], idx]  # [N, S, C, H, W]
        flat = drawn.reshape(n * s, *x.shape[1:])
        total = torch.zeros_like(x)
        rows = n * s
        per_pass = rows_per_pass(model)
        for start in range(0, rows, per_pass):
            r = torch.arange(start, min(rows, start + per_pass), device=x.device)
            item = r // s
            a = alpha.reshape(-1)[r].view(-1, 1, 1, 1)
            b = flat[r]
            scaled = a * x[item] + (1.0 - a) * b
            reqs = [requests[i] for i in item.tolist()]
            _, grad, _ = input_gradient(model, scaled, reqs, None)
            total.index_add_(0, item, (x[item] - b) * grad)
        return total / s, drawn

    @staticmethod
    def _mean_scores(
        model: ServedModel, starts: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> torch.Tensor:
        """Each item's mean target score over its baselines (or draws) [N, K, ...]."""
        n, k = starts.shape[:2]
        flat = starts.reshape(n * k, *starts.shape[2:])
        targets = [requests[i].target for i in range(n) for _ in range(k)]
        scores = []
        per_pass = rows_per_pass(model)
        for start in range(0, n * k, per_pass):
            chunk = [t for t in targets[start : start + per_pass] if t is not None]
            scores.append(target_scores(model, flat[start : start + per_pass], chunk))
        return torch.cat(scores).reshape(n, k).mean(dim=1)
