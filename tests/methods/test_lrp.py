"""LRP and Deep Taylor decomposition, served in one batch with mixed targets, equal Zennit's
rules on the digits model and four torchvision models whose batch norms have random statistics
(folded here by hand for Zennit); LRP-epsilon equals Captum's LRP, and as epsilon tends to 0,
gradient x input; the completeness figures are the relevance's sum and the logit; the served
model is never touched."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import LRP, InputXGradient

import deepvis
from oracles import (
    DenseNetModulePool,
    bn_pairs,
    folded_copy,
    relative_error,
    zennit_composite,
    zennit_lrp,
)
from zoo import BN_ZOO_SPECS

TOL = 1e-5
TARGETS = [3, None, 7, 1]
KEYS = ["digits", *BN_ZOO_SPECS]


@pytest.fixture(scope="module")
def cases(bn_zoo, digits_server, digits_twin):
    """key -> (address, model name, the model as the server has it, its Zennit twin (batch
    norms folded by hand), the 4 inputs [4, C, H, W], mean, std)."""
    server, twins = bn_zoo
    rng = np.random.default_rng(11)
    out = {}
    for name, zoo_model in twins.items():
        module = zoo_model.module
        twin = folded_copy(module, bn_pairs(module, name))
        if name == "densenet121":
            twin = DenseNetModulePool(twin).eval()
        xs = rng.standard_normal((4, *zoo_model.input_shape)).astype(np.float32)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        out[name] = (server.bound_address, name, module, twin, xs, mean, std)
    info = digits_server.engine.models["digits"].spec
    xs = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
    out["digits"] = (
        digits_server.bound_address,
        "digits",
        digits_twin,
        digits_twin,
        xs,
        info.mean,
        info.std,
    )
    return out


def served(address: str, name: str, xs: np.ndarray, **kwargs) -> list[deepvis.Explanation]:
    """The items in one ExplainBatch call, each with its own target, so that they batch."""
    with deepvis.Client(address, timeout=120) as client:
        return client.explain_batch(
            list(xs), model=name, method="lrp", targets=TARGETS, render=False, **kwargs
        )


def array(result: deepvis.Explanation) -> np.ndarray:
    assert result.array is not None
    return result.array


def stacked(results: list[deepvis.Explanation]) -> np.ndarray:
    return np.stack([array(r) for r in results])


def bounds(xs: np.ndarray, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-space images of all-black and all-white pixels, shaped like the batch."""
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    ones = torch.ones(xs.shape)
    return (0.0 - m) / s * ones, (1.0 - m) / s * ones


def resolved(results, module: torch.nn.Module, xs: np.ndarray) -> list[int]:
    """The targets the server explained, the predicted class checked against the model."""
    targets = [r.target for r in results]
    with torch.no_grad():
        predicted = module(torch.from_numpy(xs)).argmax(1).tolist()
    assert targets[1] == predicted[1]
    assert [targets[i] for i in (0, 2, 3)] == [TARGETS[i] for i in (0, 2, 3)]
    return targets


@pytest.mark.parametrize("composite", deepvis.composites())
@pytest.mark.parametrize("key", KEYS)
def test_lrp_equals_zennit(cases, key, composite) -> None:
    address, name, module, twin, xs, mean, std = cases[key]
    results = served(address, name, xs, composite=composite)
    assert max(r.batch_size for r in results) > 1, "the items never shared a batch"
    targets = resolved(results, module, xs)
    low, high = bounds(xs, mean, std)
    comp = zennit_composite(composite, low, high, resnet=name.startswith("resnet"))
    ref = zennit_lrp(twin, torch.from_numpy(xs), targets, comp)
    assert relative_error(stacked(results), ref) <= TOL


@pytest.mark.parametrize(
    ("key", "composite", "epsilon", "gamma"),
    [
        ("resnet18", "epsilon_gamma_box", 0.01, 0.5),
        ("digits", "epsilon_gamma_box", 1e-3, 2.0),
        ("vgg11_bn", "epsilon_plus", 0.1, None),
        ("densenet121", "epsilon", 0.05, None),
    ],
)
def test_epsilon_and_gamma_equal_zennits(cases, key, composite, epsilon, gamma) -> None:
    address, name, module, twin, xs, mean, std = cases[key]
    kwargs = {"epsilon": epsilon} | ({"gamma": gamma} if gamma is not None else {})
    results = served(address, name, xs, composite=composite, **kwargs)
    targets = resolved(results, module, xs)
    low, high = bounds(xs, mean, std)
    comp = zennit_composite(
        composite, low, high, name.startswith("resnet"), epsilon=epsilon, gamma=gamma or 0.25
    )
    ref = zennit_lrp(twin, torch.from_numpy(xs), targets, comp)
    assert relative_error(stacked(results), ref) <= TOL


@pytest.mark.parametrize("key", KEYS)
def test_completeness_is_the_sum_and_the_logit(cases, key) -> None:
    """The figures are the relevance's own sum and the model's logit at the target; Deep
    Taylor's rules (z+ without biases, z^B, proportional splits) each conserve relevance, so
    its sum is the logit: to 1e-4 of it, as a few units with a zero denominator give theirs to
    the 1e-6 stabilizer."""
    address, name, module, _, xs, _, _ = cases[key]
    for composite in ("epsilon_plus_flat", "deep_taylor"):
        results = served(address, name, xs, composite=composite)
        with torch.no_grad():
            logits = module(torch.from_numpy(xs)).double()
        for i, r in enumerate(results):
            c = r.completeness
            assert c is not None
            total = float(array(r).astype(np.float64).sum())
            assert c.attribution_sum == pytest.approx(total, rel=1e-5, abs=1e-7)
            assert c.score == pytest.approx(float(logits[i, r.target]), rel=1e-5, abs=1e-6)
            assert c.baseline_score == 0.0
            assert c.delta == pytest.approx(c.attribution_sum - c.score, abs=1e-9)
            if composite == "deep_taylor":
                assert abs(c.delta) <= 1e-4 * max(abs(c.score), 1e-3), (i, c)


def test_lrp_epsilon_equals_captums_lrp(cases) -> None:
    """Captum's LRP (epsilon 1e-9 on every layer) on the one zoo model whose every module it
    has a rule for (vgg11: conv, ReLU, max pool, adaptive average pool, linear, dropout)."""
    address, name, module, _, xs, _, _ = cases["vgg11"]
    results = served(address, name, xs, composite="epsilon", epsilon=1e-9)
    targets = resolved(results, module, xs)
    # Average pooling takes Zennit's Norm rule, whose stabilizer is 1e-6 whatever the epsilon:
    # Captum's pool gets the same (its rules are set again before every call).
    from captum.attr._utils.lrp_rules import EpsilonRule

    module.avgpool.rule = EpsilonRule(epsilon=1e-6)
    ref = LRP(module).attribute(torch.from_numpy(xs), target=targets).detach().numpy()
    assert relative_error(stacked(results), ref) <= TOL


@pytest.mark.parametrize("key", ["digits", "resnet18", "vgg11_bn"])
def test_lrp_zero_equals_gradient_times_input(cases, key) -> None:
    """On a ReLU network with its batch norms folded, LRP-epsilon with epsilon -> 0 equals
    gradient x input, biases included: a check of the folding and of the residual split
    against Captum's InputXGradient on the model as loaded, which shares nothing with LRP."""
    address, name, module, _, xs, _, _ = cases[key]
    lrp = served(address, name, xs, composite="epsilon", epsilon=1e-9)
    with deepvis.Client(address, timeout=120) as client:
        ixg = client.explain_batch(
            list(xs), model=name, method="input_x_gradient", targets=TARGETS, render=False
        )
    targets = resolved(lrp, module, xs)
    assert [r.target for r in ixg] == targets
    ref = InputXGradient(module).attribute(torch.from_numpy(xs), target=targets)
    ref = ref.detach().numpy()
    assert relative_error(stacked(ixg), ref) <= TOL
    # 1e-4: each epsilon (1e-9) moves a unit's share by eps/z, and units with tiny z exist.
    # 1e-3 on the torchvision models: their average pooling (and resnet18's residual sums)
    # take Zennit's Norm rule, whose stabilizer stays 1e-6 whatever epsilon, so a unit whose
    # sum is within 1e-3 of zero keeps up to 1e-3 of its share.
    tol = 1e-4 if key == "digits" else 1e-3
    assert relative_error(stacked(lrp), ref) <= tol


def test_the_served_model_is_untouched_and_the_copy_private(bn_zoo, cases) -> None:
    """The folded copy is LRP's own: the served module keeps its batch norms, its weights and
    no hook; the copy shares no storage with it. A model with nothing to fold gets no copy."""
    server, _ = bn_zoo
    from deepvis_server.methods import REGISTRY, Lrp

    lrp = REGISTRY["lrp"]
    assert isinstance(lrp, Lrp)
    address, name, module, _, xs, _, _ = cases["resnet18"]
    served(address, name, xs)
    model = server.engine.models["resnet18"]
    view = lrp.models.get(model)
    assert view.module is not model.module
    assert len(view.folded) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()
    )  # every batch norm of resnet18 follows a conv
    expected = module.state_dict()
    state = model.module.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    served_ptrs = {t.data_ptr() for t in [*model.module.parameters(), *model.module.buffers()]}
    copy_ptrs = {t.data_ptr() for t in [*view.module.parameters(), *view.module.buffers()]}
    assert not served_ptrs & copy_ptrs
    assert view.bytes > 0
    address, name, *_ = cases["vgg11"]
    served(address, name, cases["vgg11"][4])
    plain = lrp.models.get(server.engine.models["vgg11"])
    assert plain.module is server.engine.models["vgg11"].module and plain.bytes == 0


def test_interleaved_composites_each_equal_their_own_alone(cases) -> None:
    """Concurrent requests with different rule sets and epsilons on one model: each answer is
    its own, as when it runs alone (the rules keep no state between batches)."""
    address, name, _, _, xs, _, _ = cases["resnet18"]
    settings: list[dict[str, Any]] = [
        {"composite": "epsilon_plus_flat"},
        {"composite": "epsilon_gamma_box", "gamma": 1.0},
        {"composite": "epsilon", "epsilon": 0.5},
        {"composite": "deep_taylor"},
    ] * 2
    with deepvis.Client(address, timeout=120) as client:
        alone = [
            client.explain(xs[i % 4], model=name, method="lrp", target=2, render=False, **kw)
            for i, kw in enumerate(settings)
        ]
        together: list = [None] * len(settings)

        def call(i: int) -> None:
            together[i] = client.explain(
                xs[i % 4], model=name, method="lrp", target=2, render=False, **settings[i]
            )

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(settings))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for a, b in zip(alone, together, strict=True):
        assert relative_error(array(b), array(a)) <= TOL


def test_what_no_rule_covers_is_named(zoo) -> None:
    """SiLU and sigmoid-gated products (EfficientNet) and batch norms after concatenations
    (DenseNet) get warnings naming them; ResNet's residual additions and batch norms are
    covered, and say nothing."""
    server, twins = zoo
    with deepvis.Client(server.bound_address, timeout=120) as client:

        def warnings(name: str) -> list[str]:
            x = np.zeros(twins[name].input_shape, np.float32)
            return client.explain(x, model=name, method="lrp", render=False).warnings

        efficient = " ".join(warnings("efficientnet_b0"))
        assert "mul" in efficient and "silu" in efficient and "sigmoid" in efficient
        dense = " ".join(warnings("densenet121"))
        assert "batch norm(s) that follow no convolution" in dense
        assert "features.denseblock1.denselayer1.norm1" in dense
        assert warnings("resnet18") == []
