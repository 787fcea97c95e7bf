"""Feature-visualization engine core: parameterization, transforms, objectives, batched runner."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepvis_server.config import load_config
from deepvis_server.errors import InvalidArgument
from deepvis_server.featurevis import (
    Channel,
    ClassLogit,
    Layer,
    Neuron,
    RenderBatch,
    RenderJob,
    RenderResult,
)
from deepvis_server.featurevis.objectives import diversity_penalty, last_spatial_layer
from deepvis_server.featurevis.optimization import adam_update, render, row_generator
from deepvis_server.featurevis.param import (
    COLOR_CORRELATION_SVD_SQRT,
    fft_scale,
    init_params,
    params_to_image,
)
from deepvis_server.featurevis.transforms import (
    TransformConfig,
    affine_matrices,
    apply_affine,
    transform_rows,
)
from deepvis_server.models import ServedModel, load_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def digits() -> ServedModel:
    torch.manual_seed(0)
    return load_model(load_config().models[0], torch.device("cpu"))


def run_batch(batch: RenderBatch) -> dict[int, RenderResult]:
    """Steps `batch` until it is empty; the result of every job by handle."""
    results: dict[int, RenderResult] = {}
    while batch.handles:
        for e in batch.step():
            if e.result is not None:
                results[e.handle] = e.result
    return results


def classify(model: ServedModel, pixels: np.ndarray) -> torch.Tensor:
    """The model's logits for [0, 1] pixels, preprocessed with its own mean and std."""
    spec = model.spec
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model.module((torch.from_numpy(pixels) - mean) / std)


def hooks_on(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def snapshot(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], bool]:
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    flags = {k: p.requires_grad for k, p in module.named_parameters()}
    return state, flags, module.training


def assert_unchanged(module: nn.Module, before: tuple) -> None:
    state, flags, training = snapshot(module)
    assert flags == before[1]
    assert training == before[2]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)


# -- parameterization and transforms ----------------------------------------------------------


def test_fft_parameterization_matches_lucid_formulas() -> None:
    g = row_generator(0, 0)
    p = init_params("fft", 3, (24, 20), g)
    assert p.shape == (3, 24, 11, 2)
    assert abs(float(p.std()) - 0.01) < 0.002
    scale = fft_scale(24, 20)
    assert float(scale[0, 0]) == pytest.approx(24.0)  # DC: 1 / (1 / max(h, w))
    assert float(scale[0, 1]) == pytest.approx(20.0)  # |f| = 1/20
    # The image is Lucid's: irfft2 (ortho) of the scaled spectrum / 4, decorrelated, sigmoid.
    spectrum = torch.view_as_complex(p[None].contiguous()) * scale
    spatial = torch.fft.irfft2(spectrum, s=(24, 20), norm="ortho") / 4.0
    m = COLOR_CORRELATION_SVD_SQRT / np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0).max()
    expected = torch.sigmoid(torch.einsum("ij,njhw->nihw", torch.from_numpy(m), spatial))
    image = params_to_image("fft", p[None], (24, 20))
    assert image.shape == (1, 3, 24, 20)
    torch.testing.assert_close(image, expected)
    # One channel: no colour to decorrelate.
    p1 = init_params("fft", 1, (24, 20), g)[None]
    spatial1 = torch.fft.irfft2(torch.view_as_complex(p1) * scale, s=(24, 20), norm="ortho") / 4
    torch.testing.assert_close(params_to_image("fft", p1, (24, 20)), torch.sigmoid(spatial1))
    pixel = init_params("pixel", 3, (24, 20), g)[None]
    torch.testing.assert_close(params_to_image("pixel", pixel, (24, 20)), torch.sigmoid(pixel))


def test_one_affine_equals_lucids_chain_of_transforms() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    cfg = TransformConfig()
    # Pad 12 with 0.5, crop at jitter (3, 5), no scale/rotation, crop at jitter (2, 1): exact.
    draws = np.array([[3, 5, 1.0, 0.0, 2, 1]])
    theta = torch.from_numpy(affine_matrices(draws, np.ones(1, bool), (32, 32), (44, 44), cfg))
    padded = F.pad(x, (12, 12, 12, 12), value=0.5)
    chain = padded[:, :, 5 : 5 + 48, 3 : 3 + 48][:, :, 1 : 1 + 44, 2 : 2 + 44]
    torch.testing.assert_close(apply_affine(x, theta, (44, 44), cfg), chain)
    # A rotation by 90 degrees about the centre of the crop is a rot90.
    cfg90 = TransformConfig(pad=0, jitter1=1, jitter2=1)
    draws = np.array([[0, 0, 1.0, 90.0, 0, 0]])
    theta = torch.from_numpy(affine_matrices(draws, np.ones(1, bool), (31, 31), (29, 29), cfg90))
    rotated = torch.rot90(x[:, :, :30, :30], -1, (2, 3))[:, :, :29, :29]
    torch.testing.assert_close(apply_affine(x[:, :, :31, :31], theta, (29, 29), cfg90), rotated)
    # Scale 2 is a bilinear upsampling (away from the border, where F.interpolate clamps).
    cfg2 = TransformConfig(pad=0, jitter1=1, jitter2=1, scales=(2.0,))
    draws = np.array([[0, 0, 2.0, 0.0, 0, 0]])
    small = x[:, :, :16, :16]
    theta = torch.from_numpy(affine_matrices(draws, np.ones(1, bool), (16, 16), (29, 29), cfg2))
    up = F.interpolate(small[:, :, :15, :15], scale_factor=2.0, mode="bilinear")[:, :, :29, :29]
    out = apply_affine(small, theta, (29, 29), cfg2)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], up[..., 1:-1, 1:-1])
    # Disabled: the identity.
    theta = torch.from_numpy(affine_matrices(draws, np.zeros(1, bool), (32, 32), (32, 32)))
    torch.testing.assert_close(apply_affine(x, theta, (32, 32)), x)


def test_random_transforms_of_a_row_do_not_depend_on_other_rows() -> None:
    torch.manual_seed(0)
    images = torch.rand(5, 3, 40, 40)
    alone = transform_rows(images[2:3], [row_generator(7, 0)], (32, 32))
    gens = [row_generator(s, 0) for s in (1, 2, 7, 3, 4)]
    gens[3] = None  # type: ignore[call-overload]  # a neighbour without transforms
    together = transform_rows(images, gens, (32, 32))
    assert together.shape == (5, 3, 32, 32)
    torch.testing.assert_close(together[2:3], alone)


def test_row_adam_equals_torch_adam_per_row() -> None:
    torch.manual_seed(0)
    # Two rows at different step counts and learning rates, against torch.optim.Adam each.
    refs = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    opts = [torch.optim.Adam([refs[0]], lr=0.05), torch.optim.Adam([refs[1]], lr=0.01)]
    params = torch.stack([r.detach().clone() for r in refs])
    m, v = torch.zeros_like(params), torch.zeros_like(params)
    ts, lrs = [0, 0], [0.05, 0.01]
    for step in range(12):
        grads = torch.randn(2, 4, 3)
        active = [0, 1] if step >= 5 else [0]  # row 1 joins at step 5
        for i in active:
            refs[i].grad = grads[i].clone()
            opts[i].step()
            ts[i] += 1
        rows = torch.tensor(active)
        p, mm, vv = params[rows], m[rows], v[rows]
        adam_update(
            p,
            grads[rows],
            mm,
            vv,
            torch.tensor([lrs[i] / (1 - 0.9 ** ts[i]) for i in active]),
            torch.tensor([math.sqrt(1 - 0.999 ** ts[i]) for i in active]),
        )
        params[rows], m[rows], v[rows] = p, mm, vv
    for i in range(2):
        torch.testing.assert_close(params[i], refs[i].detach(), rtol=1e-6, atol=1e-7)


# -- the runner -------------------------------------------------------------------------------


def test_each_class_logit_renders_an_image_of_its_class(digits: ServedModel) -> None:
    # All ten classes in one batch, with Lucid's FFT parameterization and transforms.
    steps = 256
    batch = RenderBatch(digits)
    handles = {batch.add(RenderJob(ClassLogit(k), steps=steps)): k for k in range(10)}
    assert len(batch) == 10
    seen_steps: dict[int, list[int]] = {h: [] for h in handles}
    results: dict[int, RenderResult] = {}
    while batch.handles:
        for e in batch.step():
            seen_steps[e.handle].append(e.step)
            if e.result is not None:
                results[e.handle] = e.result
    for h, k in handles.items():
        assert seen_steps[h] == list(range(1, steps + 1))
        r = results[h]
        assert r.pixels.shape == (1, 1, 32, 32) and r.pixels.dtype == np.float32
        assert 0.0 <= r.pixels.min() and r.pixels.max() <= 1.0
        assert len(r.images) == 1 and r.images[0].shape == (32, 32)
        assert r.images[0].dtype == np.uint8
        logits = classify(digits, r.pixels)
        assert int(logits.argmax()) == k, f"class {k} rendered as {int(logits.argmax())}"
        assert float(logits[0, k]) == pytest.approx(r.objective, rel=1e-4)


def test_fft_reaches_more_class_logit_than_pixel_adam_in_the_same_steps(
    digits: ServedModel,
) -> None:
    """The Done-when comparison: each class logit of the digits model, the service's recipe
    (Adam at lr 0.05 with Lucid's transformation robustness) for both parameterizations, the
    same 128 steps and seeds; the objective is the final image's logit, shown untransformed.

    Summed over the ten classes the decorrelated FFT reaches more (about 11 % more at 128
    steps, 5-7 % at 256 and 512: `bench/fft_vs_pixel.py`); pixel-space Adam loses class 7
    outright (logit near 0) and wins a few classes by up to 10 %.
    """
    batch = RenderBatch(digits)
    jobs = {}
    for k in range(10):
        for param in ("fft", "pixel"):
            for seed in (0, 1):
                jobs[batch.add(RenderJob(ClassLogit(k), steps=128, seed=seed, param=param))] = (
                    k,
                    param,
                )
    results = run_batch(batch)
    reached = {"fft": np.zeros(10), "pixel": np.zeros(10)}
    for h, (k, param) in jobs.items():
        reached[param][k] += results[h].objective
    assert reached["fft"].sum() >= 1.05 * reached["pixel"].sum(), reached
    # Not a trade of a few big wins for many losses: no class falls far behind either.
    assert np.all(reached["fft"] >= 0.8 * reached["pixel"]), reached


def test_fft_parameterization_optimizes_as_well_as_pixels(digits: ServedModel) -> None:
    """Decorrelated FFT against plain pixel-space Adam without transforms, on hidden units.

    Fair terms: the same 128 steps, lr 0.05, seed, and no random transforms for either, so
    both optimise the very same function of the image; eight channels of conv3 (every 8th,
    not picked). On this small 32x32 grayscale model the pixel parameterization reaches a
    few per cent more on the channel-mean objective (high-frequency patterns pay off there),
    while the FFT reaches more on the centre-neuron objective.
    """
    channels = range(0, 64, 8)
    batch = RenderBatch(digits)
    jobs = {}
    for c in channels:
        for obj in (Channel("conv3", c), Neuron("conv3", c)):
            for param in ("fft", "pixel"):
                job = RenderJob(obj, steps=128, param=param, transforms=False)
                jobs[batch.add(job)] = (obj, param)
    results = run_batch(batch)
    total: dict[tuple[str, str], float] = {}
    for h, (obj, param) in jobs.items():
        key = (type(obj).__name__, param)
        total[key] = total.get(key, 0.0) + results[h].objective
    assert total[("Neuron", "fft")] >= total[("Neuron", "pixel")]
    assert total[("Channel", "fft")] >= 0.9 * total[("Channel", "pixel")]


def _mixed_neighbours(batch: RenderBatch) -> None:
    batch.add(RenderJob(ClassLogit(2), steps=300, seed=9))
    batch.add(RenderJob(Neuron("conv2", 3), steps=50, seed=5, param="pixel"))
    batch.add(RenderJob(Channel("conv3", 1), steps=300, seed=4, batch=3, diversity=1.0))
    batch.add(RenderJob(Layer("conv1"), steps=300, seed=6, transforms=False))


def test_a_job_joining_a_running_batch_matches_its_solo_run(digits: ServedModel) -> None:
    jobs = [
        RenderJob(Channel("conv3", 16), steps=96, seed=1),
        RenderJob(ClassLogit(7), steps=96, seed=3, param="pixel"),
        RenderJob(Layer("conv2"), steps=96, seed=2, batch=2, diversity=0.5),
        # Channel 5 of conv3 is mostly dead (negative) here: near-zero gradients, which Adam
        # normalises to full steps, turn float rounding into different long runs. Checked
        # only step by step, below.
        RenderJob(Channel("conv3", 5), steps=12, seed=3),
    ]
    solo_values: list[list[float]] = []
    solo_results: list[RenderResult] = []
    for job in jobs:
        solo_batch = RenderBatch(digits)
        solo_batch.add(job)
        values: list[float] = []
        while solo_batch.handles:
            for e in solo_batch.step():
                values.append(e.objective)
                if e.result is not None:
                    solo_results.append(e.result)
        solo_values.append(values)
    # The jobs join a running batch, at different steps, among each other and jobs of other
    # objectives, parameterizations, diversity and transform settings, some of which finish
    # while they run.
    for warmup in (0, 17):
        batch = RenderBatch(digits)
        _mixed_neighbours(batch)
        handles: dict[int, int] = {}
        batch_values: dict[int, list[float]] = {i: [] for i in range(len(jobs))}
        results: dict[int, RenderResult] = {}
        step = 0
        while len(results) < len(jobs):
            for i, job in enumerate(jobs):
                if step == warmup + 5 * i:
                    handles[batch.add(job)] = i
            for e in batch.step():
                if e.handle in handles:
                    batch_values[handles[e.handle]].append(e.objective)
                    if e.result is not None:
                        results[handles[e.handle]] = e.result
            step += 1
        for i, solo in enumerate(solo_results):
            # Step by step, only float rounding separates the two (batch-size dependent
            # conv kernels); no row reads another's data.
            np.testing.assert_allclose(
                batch_values[i][:12], solo_values[i][:12], rtol=1e-4, atol=1e-4
            )
            assert results[i].objective == pytest.approx(solo.objective, rel=0.01)
            assert float(np.abs(results[i].pixels - solo.pixels).mean()) < 0.02


def test_same_seed_same_result_different_seed_different_images(digits: ServedModel) -> None:
    job = RenderJob(Channel("conv3", 16), steps=32, seed=5, batch=2)
    # The server runs its worker threads with grad mode off: the renderer must cope.
    with torch.no_grad():
        a = render(digits, job)
        b = render(digits, job)
        assert not torch.is_grad_enabled()
    c = render(digits, RenderJob(Channel("conv3", 16), steps=32, seed=6, batch=2))
    assert np.array_equal(a.pixels, b.pixels) and a.objective == b.objective
    assert float(np.abs(a.pixels - c.pixels).mean()) > 0.05
    # The two images of one job start from different streams too.
    assert float(np.abs(a.pixels[0] - a.pixels[1]).mean()) > 0.05


def test_negated_objective_scores_lower(digits: ServedModel) -> None:
    batch = RenderBatch(digits)
    pos = batch.add(RenderJob(Channel("conv3", 16), steps=32))
    neg = batch.add(RenderJob(Channel("conv3", 16, negate=True), steps=32))
    results = run_batch(batch)
    assert results[neg].objective < results[pos].objective
    assert results[neg].objective < 0 < results[pos].objective


def test_diversity_pushes_the_images_of_a_job_apart(digits: ServedModel) -> None:
    # The last spatial map; the reused ReLU is ambiguous (which call?), so conv3 it is.
    assert last_spatial_layer(digits) == "conv3"
    batch = RenderBatch(digits)
    plain = batch.add(RenderJob(ClassLogit(3), steps=64, batch=3))
    diverse = batch.add(RenderJob(ClassLogit(3), steps=64, batch=3, diversity=10.0))
    results = run_batch(batch)

    def similarity(r: RenderResult) -> float:
        captured: list[torch.Tensor] = []
        handle = digits.layers["conv3"].register_forward_hook(
            lambda _m, _i, out: captured.append(out.clone())
        )
        try:
            classify(digits, r.pixels)
        finally:
            handle.remove()
        return float(diversity_penalty(captured[-1]).mean())

    assert similarity(results[diverse]) < similarity(results[plain])


def test_progress_images_and_removal(digits: ServedModel) -> None:
    batch = RenderBatch(digits)
    h = batch.add(RenderJob(Layer("conv2"), steps=10, progress_every=4))
    other = batch.add(RenderJob(Layer("conv2"), steps=10))
    progress = {}
    for _ in range(5):
        for e in batch.step():
            if e.handle == h and e.progress is not None:
                progress[e.step] = e.progress
    assert sorted(progress) == [4]
    assert progress[4].pixels.shape == (1, 1, 32, 32) and progress[4].images[0].shape == (32, 32)
    assert batch.remove(h) and not batch.remove(h)
    assert batch.handles == [other] and len(batch) == 1
    assert [e.step for e in batch.step()] == [6]


def test_invalid_jobs_are_refused(digits: ServedModel) -> None:
    batch = RenderBatch(digits)
    for job in (
        RenderJob(Channel("nope", 0)),
        RenderJob(Channel("conv3", 64)),
        RenderJob(ClassLogit(10)),
        RenderJob(Neuron("conv3", 0, y=8, x=0)),
        RenderJob(Layer("conv1"), steps=0),
        RenderJob(Layer("conv1"), param="cppn"),
        RenderJob(Layer("conv1"), size=(48, 48)),  # this batch renders 32x32
    ):
        with pytest.raises(InvalidArgument):
            batch.add(job)
    assert len(batch) == 0
    # Another size is another batch; the model still sees its own input size.
    big = RenderBatch(digits, size=(48, 48))
    h = big.add(RenderJob(Layer("conv1"), size=(48, 48), steps=2))
    result = run_batch(big)[h]
    assert result.pixels.shape == (1, 1, 48, 48) and result.images[0].shape == (48, 48)


# -- the served model is never mutated --------------------------------------------------------


class _ExplodingNet(nn.Module):
    """The digits model's layers, failing after conv2 while hooks are registered on them."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net: Any = self.inner
        net.conv2(net.pool(net.relu(net.conv1(x))))
        raise RuntimeError("exploded mid-forward")


def test_no_hook_left_and_model_unchanged_after_render_and_errors(digits: ServedModel) -> None:
    before = snapshot(digits.module)
    assert hooks_on(digits.module) == 0
    job = RenderJob(Channel("conv3", 16), steps=3, batch=2, diversity=1.0)
    render(digits, job)
    render(digits, RenderJob(ClassLogit(1), steps=3, batch=2, diversity=1.0))
    assert hooks_on(digits.module) == 0
    assert_unchanged(digits.module, before)

    # A hook of someone else's on a captured layer raises during the forward pass.
    def bad_hook(_m: nn.Module, _i: object, _o: object) -> None:
        raise RuntimeError("hook failed")

    handle = digits.layers["conv3"].register_forward_hook(bad_hook)
    try:
        with pytest.raises(RuntimeError, match="hook failed"):
            render(digits, job)
        assert hooks_on(digits.module) == 1  # only the test's own
    finally:
        handle.remove()
    assert hooks_on(digits.module) == 0

    # The model itself raises mid-forward, after some captured layers' hooks fired.
    exploding = ServedModel(
        spec=digits.spec,
        module=_ExplodingNet(digits.module),
        device=digits.device,
        labels=digits.labels,
        layers=digits.layers,
        layer_shapes=digits.layer_shapes,
    )
    for failing in (job, RenderJob(Layer("conv1"), steps=3)):
        with pytest.raises(RuntimeError, match="exploded"):
            render(exploding, failing)
        assert hooks_on(digits.module) == 0
    assert_unchanged(digits.module, before)
