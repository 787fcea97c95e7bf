"""Evaluate against real servers: deletion/insertion, randomization, infidelity and
max-sensitivity each recomputed here by an independent implementation (the RISE protocol
written out, scipy, scikit-image, Captum) on the default model and a torchvision model."""

from __future__ import annotations

import copy
import hashlib
import warnings

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from captum.metrics import infidelity, sensitivity_max
from skimage.metrics import structural_similarity

import deepvis
from deepvis_server.methods import REGISTRY, ClassTarget, MethodRequest
from deepvis_server.models import ServedModel
from oracles import preprocess_digit

STEPS = 32  # deletion/insertion steps where the default (224) would only cost time


def seed_of(*parts: object) -> int:
    """The contract's seeds: the first 8 bytes, little-endian, of SHA-256 of the parts."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def digits_inputs(sample_paths) -> np.ndarray:
    return np.stack([preprocess_digit(p) for p in sample_paths])


@pytest.fixture(scope="module")
def resnet(zoo):
    """resnet18 (random weights, 64x64) from the zoo, two random model inputs."""
    server, twins = zoo
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    return server, twins["resnet18"].module, x


def cases(digits_server, digits_twin, sample_paths, resnet):
    server, twin, x = resnet
    return {
        "digits": (digits_server.bound_address, "digits", digits_twin, digits_inputs(sample_paths)),
        "resnet18": (server.bound_address, "resnet18", twin, x),
    }


def served_twin(module: torch.nn.Module, server, name: str) -> ServedModel:
    """A ServedModel over the test's own module, for the methods' public `run`."""
    spec = server.engine.models[name].spec
    return ServedModel(
        spec=spec,
        module=module,
        device=torch.device("cpu"),
        labels=(),
        layers={n: m for n, m in module.named_modules() if n},
    )


def own_maps(served: ServedModel, method: str, x: np.ndarray, classes, layer=None) -> np.ndarray:
    requests = [
        MethodRequest(target=ClassTarget(int(c)), layers=(layer,) if layer else ()) for c in classes
    ]
    out = REGISTRY[method].run(served, torch.from_numpy(x), requests)
    return out.arrays.detach().numpy()


# --- deletion and insertion: the RISE protocol written out -------------------------------


def rise_curves(twin, x: np.ndarray, maps: np.ndarray, classes, steps: int, mode: str):
    """Petsiuk et al.'s deletion/insertion on each input: rank the channel-summed map (highest
    first, stable), change the first round((i+1)HW/steps) pixels, read the class softmax."""
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    kernel = scipy.ndimage.gaussian_filter(impulse, 5)
    rows_of: list[np.ndarray] = []
    for xi, mi, c in zip(x, maps, classes, strict=True):
        c_, h, w = xi.shape
        s = (mi.sum(axis=0) if mi.ndim == 3 else mi).reshape(-1)
        order = np.argsort(-s, kind="stable")
        if mode == "deletion":
            start, finish = xi, np.zeros_like(xi)
        else:
            blurred = np.stack(
                [
                    scipy.ndimage.correlate(ch.astype(np.float64), kernel, mode="constant")
                    for ch in xi
                ]
            )
            start, finish = blurred.astype(np.float32), xi
        rows = []
        for i in range(steps + 1):
            n = 0 if i == 0 else round(i * h * w / steps)
            flat = start.reshape(c_, -1).copy()
            flat[:, order[:n]] = finish.reshape(c_, -1)[:, order[:n]]
            rows.append(flat.reshape(c_, h, w))
        with torch.no_grad():
            probs = twin(torch.from_numpy(np.stack(rows))).softmax(1)[:, int(c)]
        rows_of.append(probs.double().numpy())
    curves = np.stack(rows_of)
    auc = (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / (curves.shape[1] - 1)
    return curves, auc


@pytest.mark.parametrize("case", ["digits", "resnet18"])
def test_deletion_and_insertion_match_the_protocol(
    case, digits_server, digits_twin, sample_paths, resnet
) -> None:
    address, model, twin, x = cases(digits_server, digits_twin, sample_paths, resnet)[case]
    methods = ["grad_cam", "saliency"] if case == "digits" else ["grad_cam"]
    with deepvis.Client(address, timeout=600) as client:
        ev = client.evaluate(
            list(x),
            model=model,
            method=methods,
            metrics=("deletion", "insertion"),
            steps=STEPS,
            return_maps=True,
        )
    assert ev.steps == STEPS and len(ev.classes) == len(x)
    with torch.no_grad():
        predicted = twin(torch.from_numpy(x)).argmax(1).tolist()
    assert ev.classes == predicted
    for name in methods:
        e = ev[name]
        assert e.maps is not None and e.deletion is not None
        for mode in ("deletion", "insertion"):
            curve, auc = rise_curves(twin, x, e.maps, ev.classes, STEPS, mode)
            served = getattr(e, mode)
            assert served.curve.shape == (len(x), STEPS + 1)
            np.testing.assert_allclose(served.auc, auc, rtol=0, atol=1e-6, err_msg=f"{name} {mode}")
            np.testing.assert_allclose(served.curve, curve, rtol=0, atol=1e-5)
        # The curves end where the protocol says: deletion at the all-zero input.
        with torch.no_grad():
            zero = twin(torch.zeros(1, *x.shape[1:])).softmax(1)[0, ev.classes].numpy()
        np.testing.assert_allclose(e.deletion.curve[:, -1], zero, atol=1e-6)


def test_a_random_ranking_deletes_worse_than_grad_cam(
    digits_server, digits_twin, sample_paths
) -> None:
    x = digits_inputs(sample_paths)
    with deepvis.Client(digits_server.bound_address, timeout=600) as client:
        ev = client.evaluate(sample_paths, method="grad_cam", metrics="deletion")
    rng = np.random.default_rng(0)
    random_maps = rng.random((len(x), *x.shape[2:]))
    _, random_auc = rise_curves(digits_twin, x, random_maps, ev.classes, ev.steps, "deletion")
    assert ev.steps == 224 and ev.deletion is not None
    # Lower is better for deletion: Grad-CAM's ranking kills the class faster.
    assert ev.deletion.auc.mean() < random_auc.mean(), (ev.deletion.auc, random_auc)


# --- randomization: the same seeded copies rebuilt here ------------------------------------


def reset(module: torch.nn.Module, seed: int, name: str) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of("randomization", seed, name))
        module.reset_parameters()  # type: ignore[operator]  # checked by the caller


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The contract's two similarities: Spearman of |a| (scipy), SSIM of the max-normalised
    channel-summed |a| (scikit-image, data_range 1)."""
    a, b = np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64))
    with warnings.catch_warnings():  # a constant map: NaN, with scipy's warning
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        rho = scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic
    two = [m.sum(axis=0) if m.ndim == 3 else m for m in (a, b)]
    two = [m / m.max() if m.max() > 0 else m for m in two]
    return float(rho), float(structural_similarity(two[0], two[1], data_range=1.0))


@pytest.mark.parametrize(
    ("case", "method", "layer"),
    [
        ("digits", "guided_backprop", None),
        ("digits", "grad_cam", None),
        ("resnet18", "saliency", None),
    ],
)
def test_randomization_matches_curves_rebuilt_from_the_seeds(
    case, method, layer, digits_server, digits_twin, sample_paths, resnet
) -> None:
    address, model, twin, x = cases(digits_server, digits_twin, sample_paths, resnet)[case]
    if case == "digits":
        x = x[:4]
    server = digits_server if case == "digits" else resnet[0]
    seed = 7
    with deepvis.Client(address, timeout=600) as client:
        ev = client.evaluate(
            list(x),
            model=model,
            method=method,
            metrics="randomization",
            seed=seed,
            return_maps=True,
        )
    layers = [
        n
        for n, m in twin.named_modules()
        if n and hasattr(m, "reset_parameters") and list(m.parameters(recurse=False))
    ][::-1]
    assert list(ev.layers) == layers
    r, layer = ev.randomization, ev.layer
    assert r is not None and r.spearman is not None and r.ssim is not None
    assert r.independent_spearman is not None and r.independent_ssim is not None
    assert r.spearman.shape == r.ssim.shape == r.independent_spearman.shape == (len(x), len(layers))
    original = ev[method].maps
    assert original is not None
    np.testing.assert_allclose(
        original,
        own_maps(served_twin(twin, server, model), method, x, ev.classes, layer),
        rtol=0,
        atol=1e-5 * np.abs(original).max(),
    )
    cascading = copy.deepcopy(twin)
    by_name = dict(cascading.named_modules())
    for k, name in enumerate(layers):
        reset(by_name[name], seed, name)
        maps = own_maps(served_twin(cascading, server, model), method, x, ev.classes, layer)
        for j in range(len(x)):
            rho, s = compare(original[j], maps[j])
            np.testing.assert_allclose(r.spearman[j, k], rho, atol=1e-5, equal_nan=True)
            np.testing.assert_allclose(r.ssim[j, k], s, atol=1e-5)
        independent = copy.deepcopy(twin)
        reset(dict(independent.named_modules())[name], seed, name)
        maps = own_maps(served_twin(independent, server, model), method, x, ev.classes, layer)
        for j in range(len(x)):
            rho, s = compare(original[j], maps[j])
            np.testing.assert_allclose(r.independent_spearman[j, k], rho, atol=1e-5, equal_nan=True)
            np.testing.assert_allclose(r.independent_ssim[j, k], s, atol=1e-5)


def test_the_served_model_is_bitwise_unchanged(digits_server, sample_paths) -> None:
    served = digits_server.engine.models["digits"].module
    before = {k: v.clone() for k, v in served.state_dict().items()}
    with deepvis.Client(digits_server.bound_address, timeout=600) as client:
        ev = client.evaluate(
            sample_paths[:3], method=["guided_backprop", "grad_cam"], seed=11, steps=8
        )
        again = client.explain(sample_paths[0], method="saliency", render=False)
    randomization = ev["grad_cam"].randomization
    assert randomization is not None and randomization.final_spearman is not None
    after = served.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in served.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in served.modules())
    assert again.predictions[0].index == ev.classes[0]


# --- infidelity and max-sensitivity: Captum with the same perturbations --------------------


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    scale = float(np.abs(theirs).max())
    assert scale > 0
    return float(np.abs(ours - theirs).max()) / scale


@pytest.mark.parametrize(
    ("case", "method"),
    [
        ("digits", "saliency"),
        ("digits", "grad_cam"),
        ("digits", "integrated_gradients"),
        ("resnet18", "guided_backprop"),
    ],
)
def test_infidelity_and_sensitivity_equal_captums(
    case, method, digits_server, digits_twin, sample_paths, resnet
) -> None:
    address, model, twin, x = cases(digits_server, digits_twin, sample_paths, resnet)[case]
    x = x[:3]
    server = digits_server if case == "digits" else resnet[0]
    seed, n, std, radius = 5, 6, 0.1, 0.02
    with deepvis.Client(address, timeout=600) as client:
        ev = client.evaluate(
            list(x),
            model=model,
            method=method,
            metrics=("infidelity", "sensitivity"),
            seed=seed,
            perturbations=n,
            noise_std=std,
            sensitivity_radius=radius,
            return_maps=True,
        )
    assert ev.maps is not None and ev.infidelity is not None
    maps = torch.from_numpy(ev.maps.copy())
    xs = torch.from_numpy(x)
    shape = xs.shape[1:]
    rows = [(j, k) for j in range(len(x)) for k in range(n)]  # Captum's repeat_interleave order
    noise = torch.stack(
        [
            torch.randn(
                shape, generator=torch.Generator().manual_seed(seed_of("infidelity", seed, j, k))
            )
            * std
            for j, k in rows
        ]
    )
    delta = torch.stack(
        [
            torch.rand(
                shape, generator=torch.Generator().manual_seed(seed_of("sensitivity", seed, j, k))
            )
            * (2 * radius)
            - radius
            for j, k in rows
        ]
    )
    targets = list(ev.classes)
    attributions = maps if maps.dim() == 4 else maps[:, None].expand_as(xs)
    theirs = infidelity(
        twin,
        lambda inp: (noise, inp - noise),
        xs,
        attributions,
        target=targets,
        n_perturb_samples=n,
    )
    assert relative_error(ev.infidelity, theirs.numpy()) < 1e-5

    served = served_twin(twin, server, model)

    def explanation(inputs, target):
        # Captum's attribution methods answer a tuple of inputs with a tuple, and
        # sensitivity_max relies on it for the unperturbed inputs.
        if isinstance(inputs, tuple):
            assert torch.equal(inputs[0], xs)
            return (maps,)  # Φ(x): the served maps
        at = inputs.detach().numpy()
        return torch.from_numpy(own_maps(served, method, at, list(target), ev.layer))

    theirs = sensitivity_max(
        explanation, xs, perturb_func=lambda inp: inp + delta, n_perturb_samples=n, target=targets
    )
    assert ev.sensitivity is not None
    assert relative_error(ev.sensitivity, theirs.numpy()) < 1e-5
