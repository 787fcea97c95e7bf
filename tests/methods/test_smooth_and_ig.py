"""SmoothGrad / SmoothGrad-squared / VarGrad, integrated gradients with its quadratures and
baselines, expected gradients and gradient x input, served in one batch with mixed targets,
equal Captum's (NoiseTunnel with the server's noise injected, IntegratedGradients,
InputBaselineXGradient with the server's draws injected, InputXGradient) on the digits model
and three torchvision models whose batch norms have random statistics (resnet18, vgg11_bn,
densenet121)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.ndimage
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from captum.attr._core import gradient_shap

import deepvis
from deepvis_server.methods import REGISTRY
from deepvis_server.methods.gradients import gaussian_blur
from oracles import relative_error, zennit_composite, zennit_lrp

TOL = 1e-5
TARGETS = [3, None, 7, 1]
ZOO_KEYS = ["resnet18", "vgg11_bn", "densenet121"]
KEYS = ["digits", *ZOO_KEYS]
ATTEMPTS = 3


@dataclass(frozen=True)
class Case:
    address: str
    name: str
    module: torch.nn.Module  # the model as the server has it, loaded here independently
    xs: np.ndarray  # [4, C, H, W] model inputs
    mean: tuple[float, ...]
    std: tuple[float, ...]


@pytest.fixture(scope="module")
def cases(bn_zoo, digits_server, digits_twin) -> dict[str, Case]:
    server, twins = bn_zoo
    rng = np.random.default_rng(23)
    out = {}
    for name in ZOO_KEYS:
        model = twins[name]
        xs = rng.standard_normal((4, *model.input_shape)).astype(np.float32)
        out[name] = Case(
            server.bound_address,
            name,
            model.module,
            xs,
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
        )
    spec = digits_server.engine.models["digits"].spec
    xs = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
    out["digits"] = Case(
        digits_server.bound_address, "digits", digits_twin, xs, tuple(spec.mean), tuple(spec.std)
    )
    return out


def served(case: Case, method: str, **kwargs) -> list[deepvis.Explanation]:
    """The 4 items in one ExplainBatch call, each with its own target; sent again (up to
    ATTEMPTS times) if a late item split the batch on a loaded machine."""
    with deepvis.Client(case.address, timeout=300) as client:
        for _ in range(ATTEMPTS):
            results = client.explain_batch(
                list(case.xs),
                model=case.name,
                method=method,
                targets=TARGETS,
                render=False,
                **kwargs,
            )
            if max(r.batch_size for r in results) > 1:
                return results
    raise AssertionError(f"the items never shared a batch in {ATTEMPTS} calls")


def resolved(results: list[deepvis.Explanation], case: Case) -> list[int]:
    """The targets explained: the given ones, and the class the model predicts for the input
    itself (not for a noisy or scaled copy) where none was given."""
    with torch.no_grad():
        predicted = case.module(torch.from_numpy(case.xs)).argmax(1).tolist()
    expected = [t if t is not None else p for t, p in zip(TARGETS, predicted, strict=True)]
    assert [r.target for r in results] == expected
    return expected


def array(result: deepvis.Explanation) -> np.ndarray:
    assert result.array is not None
    return result.array


def stacked(results: list[deepvis.Explanation]) -> np.ndarray:
    return np.stack([array(r) for r in results])


# --- gradient x input --------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_input_x_gradient_equals_captum(cases, key) -> None:
    case = cases[key]
    results = served(case, "input_x_gradient")
    targets = resolved(results, case)
    ref = InputXGradient(case.module).attribute(torch.from_numpy(case.xs), target=targets)
    assert relative_error(stacked(results), ref.detach().numpy()) <= TOL
    assert all(r.completeness is None for r in results)


# --- integrated gradients ----------------------------------------------------------------------


def pixel_bounds(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-space images [1, C, 1, 1] of black (0) and white (1) pixels."""
    mean = torch.tensor(case.mean)[None, :, None, None]
    std = torch.tensor(case.std)[None, :, None, None]
    return (0.0 - mean) / std, (1.0 - mean) / std


def uniform_baselines(case: Case, seed: int, k: int) -> torch.Tensor:
    """[N, K, C, H, W]: what the server's documented draw gives (torch's CPU generator seeded
    with the item's seed, one torch.rand((C, H, W)) per baseline: pixels in [0, 1],
    normalised). Normalised as black + u (white - black), in the same float32 operations as
    the server: a ReLU network's gradient jumps where a unit crosses zero, and a baseline one
    rounding away can move a path point across (1e-3 of the result on resnet18)."""
    black, white = pixel_bounds(case)
    c, h, w = case.xs.shape[1:]
    per_item = []
    for _ in case.xs:
        g = torch.Generator().manual_seed(seed)
        u = torch.stack([torch.rand((c, h, w), generator=g) for _ in range(k)])
        per_item.append(black[0] + u * (white[0] - black[0]))
    return torch.stack(per_item)


def captum_ig(
    case: Case, targets: list[int], baselines: torch.Tensor, steps: int, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Captum's attributions and convergence deltas averaged over the baselines
    [N, K, C, H, W] (the k-th of every item in one call)."""
    x = torch.from_numpy(case.xs)
    ig = IntegratedGradients(case.module)
    attrs, deltas = [], []
    for k in range(baselines.shape[1]):
        a, d = ig.attribute(
            x,
            baselines=baselines[:, k].contiguous(),
            target=targets,
            n_steps=steps,
            method=method,
            return_convergence_delta=True,
        )
        attrs.append(a.detach().double())
        deltas.append(d.detach().double())
    return torch.stack(attrs).mean(0).numpy(), torch.stack(deltas).mean(0).numpy()


def baselines_for(case: Case, baseline: str, options: dict) -> torch.Tensor:
    """The baselines [N, K, C, H, W] the options name, built here from their definitions."""
    x = torch.from_numpy(case.xs)
    n = x.shape[0]
    if baseline == "zero":
        return torch.zeros_like(x)[:, None]
    if baseline == "black":
        return pixel_bounds(case)[0].expand_as(x).clone()[:, None]
    if baseline == "blur":
        # The server's float32 blur, checked against scipy's on its own (test_blur_is_scipys):
        # a ReLU network's gradient jumps where a unit crosses zero, so a baseline a rounding
        # away (scipy computes in float64) can move a path point across (2e-3 on vgg11_bn).
        sigma = options.get("blur_sigma") or min(case.xs.shape[2:]) / 10.0
        return gaussian_blur(x, sigma)[:, None]
    if baseline == "uniform":
        return uniform_baselines(case, options.get("seed", 0), options.get("samples", 1))
    if baseline == "images":
        images = torch.from_numpy(np.stack(options["images"]))
        return images[None].expand(n, *images.shape).clone()
    raise AssertionError(baseline)


def baseline_images(case: Case, k: int) -> list[np.ndarray]:
    """k model-space images the client sends as baselines."""
    rng = np.random.default_rng(99)
    return [rng.uniform(-1, 1, case.xs.shape[1:]).astype(np.float32) for _ in range(k)]


IG_CASES = [
    # Every quadrature from the zero baseline, and every baseline, on the default model.
    *[("digits", m, "zero", {}) for m in ("gausslegendre", "riemann_left", "riemann_right")],
    ("digits", "riemann_middle", "zero", {}),
    ("digits", "riemann_trapezoid", "zero", {}),
    ("digits", "gausslegendre", "black", {}),
    ("digits", "gausslegendre", "blur", {}),
    ("digits", "riemann_right", "blur", {"blur_sigma": 1.5}),
    ("digits", "gausslegendre", "uniform", {"samples": 3, "seed": 5}),
    ("digits", "riemann_middle", "images", {"images": 2}),
    # A mix of them on each torchvision model, with fewer steps.
    ("resnet18", "riemann_trapezoid", "black", {"steps": 8}),
    ("resnet18", "gausslegendre", "uniform", {"steps": 6, "samples": 2, "seed": 1}),
    ("vgg11_bn", "gausslegendre", "blur", {"steps": 8, "blur_sigma": 2.0}),
    ("vgg11_bn", "riemann_left", "zero", {"steps": 8}),
    ("densenet121", "riemann_middle", "images", {"steps": 6, "images": 2}),
    ("densenet121", "gausslegendre", "zero", {"steps": 8}),
]


@pytest.mark.parametrize(("key", "method", "baseline", "options"), IG_CASES)
def test_integrated_gradients_equal_captum(cases, key, method, baseline, options) -> None:
    """Attributions and convergence deltas, averaged over the item's baselines where it has
    several; the completeness figures are the attribution's sum, F(x) and the mean F(b)."""
    case = cases[key]
    steps = options.get("steps", 16)
    opts = dict(options)
    if "images" in opts:
        opts["images"] = baseline_images(case, opts["images"])
    wire = {k: v for k, v in opts.items() if k != "steps"}
    results = served(
        case,
        "integrated_gradients",
        integrated_gradients=deepvis.IntegratedGradients(
            steps=steps, method=method, baseline=baseline, **wire
        ),
    )
    targets = resolved(results, case)
    bases = baselines_for(case, baseline, opts)
    ref, ref_delta = captum_ig(case, targets, bases, steps, method)
    assert relative_error(stacked(results), ref) <= TOL
    if baseline == "blur":  # F at scipy's blur, to 1e-5 as below
        sigma = opts.get("blur_sigma") or min(case.xs.shape[2:]) / 10.0
        blurred = scipy.ndimage.gaussian_filter(
            case.xs.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
        )
        bases = torch.from_numpy(blurred.astype(np.float32))[:, None]
    with torch.no_grad():
        scores = case.module(torch.from_numpy(case.xs)).double()
        base_scores = torch.stack(
            [case.module(bases[:, k]).double() for k in range(bases.shape[1])]
        ).mean(0)
    for i, r in enumerate(results):
        c = r.completeness
        assert c is not None
        assert c.attribution_sum == pytest.approx(float(array(r).sum(dtype=np.float64)), rel=1e-5)
        assert c.score == pytest.approx(float(scores[i, targets[i]]), rel=1e-5, abs=1e-6)
        assert c.baseline_score == pytest.approx(
            float(base_scores[i, targets[i]]), rel=1e-5, abs=1e-6
        )
        # Captum's delta, to 1e-5 of the score's scale.
        scale = max(abs(c.score), abs(c.baseline_score), 1e-3)
        assert abs(c.delta - float(ref_delta[i])) <= 1e-5 * scale, (i, c, ref_delta[i])


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.2, 9.0])
def test_blur_is_scipys(sigma) -> None:
    """The blur baseline is scipy.ndimage.gaussian_filter(mode="nearest", truncate=4) per
    channel, to float32 rounding, at sigmas whose kernel is wider than the image too."""
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 24)).astype(np.float32)
    ref = scipy.ndimage.gaussian_filter(
        x.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
    )
    assert relative_error(gaussian_blur(torch.from_numpy(x), sigma).numpy(), ref) <= 1e-6


def test_convergence_delta_shrinks_with_more_gauss_legendre_steps(cases) -> None:
    """On the default model (ReLU, piecewise linear: the integral is exact only in the limit)
    the mean |delta| over the items falls as the steps grow."""
    case = cases["digits"]
    deltas = []
    for steps in (2, 8, 64):
        results = served(
            case,
            "integrated_gradients",
            integrated_gradients=deepvis.IntegratedGradients(steps=steps, baseline="black"),
        )
        sums = [r.completeness for r in results]
        assert all(c is not None for c in sums)
        deltas.append(np.mean([abs(c.delta) for c in sums if c is not None]))
    assert deltas[0] > deltas[1] > deltas[2], deltas


@pytest.mark.parametrize(
    ("key", "baseline", "options"),
    [
        ("digits", "uniform", {"samples": 4, "seed": 3}),
        ("digits", "images", {"images": 3, "seed": 8}),
        ("resnet18", "uniform", {"samples": 3, "seed": 2}),
        ("vgg11_bn", "images", {"images": 2, "seed": 4}),
    ],
)
def test_expected_gradients_equal_gradient_shaps_core(cases, key, baseline, options) -> None:
    """Expected gradients: Captum's GradientShap without input noise is the mean over draws of
    InputBaselineXGradient at a drawn baseline and point; the server's documented draws
    (torch's CPU generator seeded with the item's seed: the uniform baselines, then
    randint(K, (S,)) and rand(S)) are injected into Captum's in place of NumPy's."""
    case = cases[key]
    steps = 12
    opts = dict(options)
    if "images" in opts:
        opts["images"] = baseline_images(case, opts["images"])
    results = served(
        case,
        "integrated_gradients",
        integrated_gradients=deepvis.IntegratedGradients(
            steps=steps, method="expected_gradients", baseline=baseline, **opts
        ),
    )
    targets = resolved(results, case)
    bases = baselines_for(case, baseline, opts)  # [N, K, C, H, W]
    n, k = bases.shape[:2]
    x = torch.from_numpy(case.xs)
    rows, alphas = [], []
    for i in range(n):
        g = torch.Generator().manual_seed(opts["seed"])
        if baseline == "uniform":
            for _ in range(k):
                torch.rand(x.shape[1:], generator=g)  # the uniform baselines came first
        idx = torch.randint(k, (steps,), generator=g)
        rows.append(bases[i, idx])
        alphas.append(torch.rand(steps, generator=g))
    drawn = torch.cat(rows)  # [N * S, C, H, W], item-major
    alpha = torch.cat(alphas).double().numpy()
    original = gradient_shap.np.random.uniform
    gradient_shap.np.random.uniform = lambda low, high, size: alpha[:size]
    try:
        attr = gradient_shap.InputBaselineXGradient(case.module).attribute(
            x.repeat_interleave(steps, dim=0),
            baselines=drawn,
            target=[t for t in targets for _ in range(steps)],
        )
    finally:
        gradient_shap.np.random.uniform = original
    ref = attr.detach().double().reshape(n, steps, *x.shape[1:]).mean(1).numpy()
    assert relative_error(stacked(results), ref) <= TOL
    with torch.no_grad():
        base_scores = case.module(drawn).double().reshape(n, steps, -1).mean(1)
    for i, r in enumerate(results):
        assert r.completeness is not None
        assert r.completeness.baseline_score == pytest.approx(
            float(base_scores[i, targets[i]]), rel=1e-5, abs=1e-6
        )


# --- SmoothGrad, SmoothGrad-squared, VarGrad ---------------------------------------------------


class InjectedNoiseTunnel(NoiseTunnel):
    """Captum's NoiseTunnel with given noise in place of its own draw (torch.normal, which it
    says is hard to make deterministic): rows item-major, as its own are."""

    def __init__(self, attribution, noise: torch.Tensor) -> None:
        super().__init__(attribution)
        self.noise = noise

    def _add_noise_to_input(  # type: ignore[override]
        self, input: torch.Tensor, stdev: float, nt_samples_partition: int
    ) -> torch.Tensor:
        assert input.shape[0] * nt_samples_partition == self.noise.shape[0]
        return input.repeat_interleave(nt_samples_partition, dim=0) + self.noise


def server_noise(xs: np.ndarray, samples: int, noise: float, seed: int) -> torch.Tensor:
    """The noise the server documents, [N * S, C, H, W] item-major: item i's k-th copy adds
    sigma_i e_k, sigma_i = noise x (max - min of x_i), e_k the k-th torch.randn((C, H, W)) of
    torch's CPU generator seeded with the item's seed."""
    x = torch.from_numpy(xs)
    flat = x.reshape(x.shape[0], -1)
    sigma = noise * (flat.max(1).values - flat.min(1).values)
    rows = []
    for i in range(x.shape[0]):
        g = torch.Generator().manual_seed(seed)
        rows += [sigma[i] * torch.randn(x.shape[1:], generator=g) for _ in range(samples)]
    return torch.stack(rows)


CAPTUM = {
    "saliency": (Saliency, {}),
    "guided_backprop": (GuidedBackprop, {}),
    "deconvolution": (Deconvolution, {}),
    "input_x_gradient": (InputXGradient, {}),
    "integrated_gradients": (IntegratedGradients, {"n_steps": 6}),
}
KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
SMOOTH_CASES = [
    *[("digits", m, kind) for m in CAPTUM for kind in KINDS],
    ("resnet18", "saliency", "vargrad"),
    ("resnet18", "input_x_gradient", "smoothgrad"),
    ("resnet18", "integrated_gradients", "smoothgrad_sq"),
    ("vgg11_bn", "guided_backprop", "smoothgrad"),
    ("vgg11_bn", "input_x_gradient", "vargrad"),
    ("densenet121", "saliency", "smoothgrad_sq"),
    ("densenet121", "input_x_gradient", "smoothgrad"),
]


@pytest.mark.parametrize(("key", "method", "kind"), SMOOTH_CASES)
def test_smoothing_equals_noise_tunnel(cases, key, method, kind) -> None:
    """5 copies of 4 items: 20 rows, more than the zoo models' batch of 16, so the copies run
    in two passes."""
    case = cases[key]
    samples, noise, seed = 5, 0.15, 7
    extra = {}
    if method == "integrated_gradients":
        extra["integrated_gradients"] = deepvis.IntegratedGradients(steps=6)
    results = served(
        case,
        method,
        smooth=deepvis.Smooth(samples=samples, noise=noise, kind=kind, seed=seed),
        **extra,
    )
    targets = resolved(results, case)
    cls, kwargs = CAPTUM[method]
    tunnel = InjectedNoiseTunnel(cls(case.module), server_noise(case.xs, samples, noise, seed))
    ref = tunnel.attribute(
        torch.from_numpy(case.xs),
        nt_type=kind,
        nt_samples=samples,
        target=targets,
        **kwargs,
    )
    ref = ref.detach().numpy()
    # VarGrad is E[a^2] - E[a]^2: Captum's float32 cancels more digits than the server's float64
    # sums do, so that comparison is to 1e-4 of the largest variance.
    tol = 1e-4 if kind == "vargrad" else TOL
    assert relative_error(stacked(results), ref) <= tol
    if method == "integrated_gradients" and kind == "smoothgrad":
        assert all(r.completeness is not None for r in results)


@pytest.mark.parametrize("key", ["digits", "resnet18"])
def test_smoothed_lrp_equals_zennit_over_the_same_copies(bn_zoo, cases, key) -> None:
    """LRP smoothed: the mean of Zennit's relevance over the server's noisy copies."""
    from oracles import bn_pairs, folded_copy

    case = cases[key]
    samples, noise, seed = 3, 0.1, 4
    results = served(
        case,
        "lrp",
        composite="epsilon_plus_flat",
        smooth=deepvis.Smooth(samples=samples, noise=noise, seed=seed),
    )
    targets = resolved(results, case)
    twin = folded_copy(case.module, bn_pairs(case.module, case.name))
    noisy = torch.from_numpy(case.xs).repeat_interleave(samples, 0) + server_noise(
        case.xs, samples, noise, seed
    )
    black, white = pixel_bounds(case)
    comp = zennit_composite(
        "epsilon_plus_flat",
        black.expand_as(noisy),
        white.expand_as(noisy),
        resnet=key == "resnet18",
    )
    relevance = zennit_lrp(twin, noisy, [t for t in targets for _ in range(samples)], comp)
    ref = relevance.reshape(len(targets), samples, *case.xs.shape[1:]).mean(1)
    assert relative_error(stacked(results), ref) <= TOL


SMOOTHABLE = sorted(name for name, m in REGISTRY.items() if m.smoothable)


@pytest.mark.parametrize("method", SMOOTHABLE)
def test_one_noise_free_sample_is_the_plain_method(cases, method) -> None:
    """samples = 1 with zero noise: SmoothGrad's copy is the input, so its result is the
    method's own (every smoothable method of the registry)."""
    case = cases["digits"]
    plain = served(case, method)
    smooth = served(case, method, smooth=deepvis.Smooth(samples=1, noise=0.0))
    assert [r.target for r in smooth] == [r.target for r in plain]
    assert relative_error(stacked(smooth), stacked(plain)) <= TOL


def test_seeds_reproduce_and_differ(cases) -> None:
    """The same seed gives the same result, another seed another one; the drawn noise's
    spread is the requested fraction of the input's range."""
    case = cases["digits"]

    def run(seed: int) -> np.ndarray:
        return stacked(served(case, "saliency", smooth=deepvis.Smooth(samples=4, seed=seed)))

    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a, b)
    assert relative_error(c, a) > 1e-3
    noise = server_noise(case.xs, 64, 0.15, 0).reshape(4, 64, -1)
    x = case.xs.reshape(4, -1)
    spread = noise.std(dim=(1, 2)).numpy() / (x.max(1) - x.min(1))
    assert np.allclose(spread, 0.15, rtol=0.02), spread
