"""ReLU6 and Hardtanh(0, cap) get the guided and deconvnet rules (they are ReLUs with a cap);
Hardtanh(-1, 1) keeps its plain gradient and its warning. The oracle is a twin of each model
whose ReLU and capped-ReLU modules call autograd Functions with the rules written out."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

import deepvis
import toy_models
from deepvis_server.config import parse_config
from deepvis_server.server import serve_in_thread
from oracles import relative_error
from zoo import build_oracle_twin, saved_table

TOL = 1e-5
TARGETS = [3, None, 1, 3, 0, None]

# name: (arch, classes, input size, factor on the BatchNorm (or conv) weights): the factor
# makes random pre-activations reach the cap of 6, so the cap's mask is exercised.
SPECS = {
    "mobilenet_v2": ("mobilenet_v2", 10, (64, 64), 3.0),
    "capped": ("toy_models:CappedReLUNet", 5, (16, 16), 6.0),
    "hardtanh": ("toy_models:HardtanhNet", 5, (16, 16), 3.0),
}


class _Rule(torch.autograd.Function):
    """y = clamp(x, low, cap); the backward by `rule`:
    guided: the positive part of the incoming gradient where low < x < cap (where x > low
    only, with mask_cap False), zero elsewhere;
    deconv: the positive part of the incoming gradient, wherever x is."""

    @staticmethod
    def forward(ctx, x, low: float, cap: float, rule: str, mask_cap: bool):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.low, ctx.cap, ctx.rule, ctx.mask_cap = low, cap, rule, mask_cap
        return x.clamp(min=low) if math.isinf(cap) else x.clamp(low, cap)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        positive = torch.where(grad > 0, grad, torch.zeros_like(grad))
        if ctx.rule == "guided":
            inside = (x > ctx.low) & (x < ctx.cap) if ctx.mask_cap else x > ctx.low
            positive = torch.where(inside, positive, torch.zeros_like(grad))
        return positive, None, None, None, None


class RuleAct(nn.Module):
    """clamp(x, low, cap) whose backward is the rule (a ReLU: low 0, cap inf); counts where
    its inputs fell."""

    def __init__(self, low: float, cap: float, rule: str, mask_cap: bool = True) -> None:
        super().__init__()
        self.low, self.cap, self.rule, self.mask_cap = low, cap, rule, mask_cap
        self.at_cap = 0
        self.inside = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.at_cap += int((x >= self.cap).sum())
        self.inside += int(((x > self.low) & (x < self.cap)).sum())
        return _Rule.apply(x, self.low, self.cap, self.rule, self.mask_cap)


class CappedReLUTwin(toy_models.CappedReLUNet):
    """CappedReLUNet with its functional F.relu6 as a module, so the twin can replace it."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__(num_classes)
        self.fn_relu6 = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.fn_relu6(self.conv1(x)))
        x = self.pool(self.cap(self.conv2(x)))
        x = self.relu(self.relu6(self.conv3(x)) - 1.0)
        return self.fc(torch.flatten(x, 1))


def rule_twin(model: nn.Module, rule: str) -> nn.Module:
    """A copy of `model` whose ReLU, ReLU6 and Hardtanh(0, cap) modules apply `rule`; other
    Hardtanh modules stay as they are."""
    if isinstance(model, toy_models.CappedReLUNet) and not isinstance(model, CappedReLUTwin):
        twin: nn.Module = CappedReLUTwin(model.fc.out_features)
        twin.load_state_dict(model.state_dict())
    else:
        twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, RuleAct(0.0, math.inf, rule))
            elif isinstance(child, nn.Hardtanh) and child.min_val == 0:
                setattr(parent, name, RuleAct(0.0, float(child.max_val), rule))
    return twin.eval()


def rule_acts(twin: nn.Module) -> list[RuleAct]:
    return [m for m in twin.modules() if isinstance(m, RuleAct)]


def twin_gradient(twin: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """The plain input gradient of each item's target through the twin."""
    x = x.clone().requires_grad_(True)
    out = twin(x)
    out.gather(1, torch.tensor(targets)[:, None]).sum().backward()
    assert x.grad is not None
    return x.grad.numpy()


def scaled(model: nn.Module, factor: float) -> nn.Module:
    with torch.no_grad():
        layers: list[nn.BatchNorm2d | nn.Conv2d]
        layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        for m in layers:
            m.weight.mul_(factor)
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, dict[str, nn.Module]]]:
    """The three models with random weights (scaled) saved to files and served by config."""
    root = tmp_path_factory.mktemp("relu6")
    torch.manual_seed(6)
    tables, models = [], {}
    for name, (arch, k, size, factor) in SPECS.items():
        model = scaled(build_oracle_twin(arch, k).eval().requires_grad_(False), factor)
        table = saved_table(root, name, arch, model, k, size, max_batch_size=8, max_delay_ms=50.0)
        tables.append(table)
        models[name] = model
    # On the CPU, as the oracles run: CUDA kernels round differently, which is not what is
    # tested here.
    config = parse_config({"server": {"device": "cpu"}, "models": tables}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server.bound_address, models


def inputs(model_name: str, n: int = len(TARGETS)) -> torch.Tensor:
    size = SPECS[model_name][2]
    rng = np.random.default_rng(len(model_name))
    return torch.from_numpy(rng.standard_normal((n, 3, *size)).astype(np.float32))


def resolved(model: nn.Module, x: torch.Tensor) -> list[int]:
    """TARGETS for the items of x, None resolved to the predicted class."""
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    return [t if t is not None else p for t, p in zip(TARGETS, predicted, strict=False)]


@pytest.mark.parametrize("rule", ["guided", "deconv"])
@pytest.mark.parametrize("name", ["mobilenet_v2", "capped"])
def test_capped_relus_get_the_rule(served, name, rule) -> None:
    address, models = served
    model = models[name]
    x = inputs(name)
    method = "guided_backprop" if rule == "guided" else "deconvolution"
    with deepvis.Client(address, timeout=120) as client:
        assert client.describe(name).non_relu_activations == ()
        results = client.explain_batch(
            list(x.numpy()), model=name, method=method, targets=TARGETS, render=False
        )
    targets = resolved(model, x)
    assert [r.target for r in results] == targets
    assert max(r.batch_size for r in results) > 1, "the items never shared a batch"
    assert all(r.warnings == [] for r in results), results[0].warnings
    twin = rule_twin(model, rule)
    expected = twin_gradient(twin, x, targets)
    got = np.stack([r.array for r in results])
    assert relative_error(got, expected) <= TOL
    # Not vacuous: capped inputs and inputs inside (0, cap) both occurred, and the rule
    # differs from the plain gradient of the served model.
    capped = [a for a in rule_acts(twin) if not math.isinf(a.cap)]
    assert sum(a.at_cap for a in capped) > 0 and sum(a.inside for a in capped) > 0
    plain = twin_gradient(model, x, targets)
    assert relative_error(got, plain) > 1e-2
    if rule == "guided":
        # Masking the capped ReLUs by x > 0 alone (as for a ReLU) is a different answer too.
        uncapped = rule_twin(model, rule)
        for a in rule_acts(uncapped):
            a.mask_cap = False
        assert relative_error(got, twin_gradient(uncapped, x, targets)) > 1e-3


def test_guided_grad_cam_uses_the_capped_rule(served) -> None:
    address, models = served
    name = "mobilenet_v2"
    model = models[name]
    x = inputs(name, 4)
    with deepvis.Client(address, timeout=120) as client:
        layer = client.describe(name).default_cam_layer
        results = client.explain_batch(
            list(x.numpy()),
            model=name,
            method="guided_grad_cam",
            targets=TARGETS[:4],
            layer=layer,
            render=False,
        )
    assert layer == "features.18"  # the last stage of `features`, its output
    targets = resolved(model, x)
    assert [r.target for r in results] == targets
    assert max(r.batch_size for r in results) > 1
    assert all(r.warnings == [] for r in results)
    guided = twin_gradient(rule_twin(model, "guided"), x, targets)
    cam = LayerGradCam(model, dict(model.named_modules())[layer]).attribute(
        x.clone(), target=targets, relu_attributions=True
    )
    up = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[2:]), interpolate_mode="bilinear")
    expected = guided * up.numpy()
    assert relative_error(np.stack([r.array for r in results]), expected) <= TOL


@pytest.mark.parametrize("method", ["guided_backprop", "deconvolution"])
def test_hardtanh_from_minus_one_stays_plain_and_is_reported(served, method) -> None:
    address, models = served
    model = models["hardtanh"]
    x = inputs("hardtanh")
    with deepvis.Client(address, timeout=60) as client:
        assert client.describe("hardtanh").non_relu_activations == ("hardtanh",)
        results = client.explain_batch(
            list(x.numpy()), model="hardtanh", method=method, targets=TARGETS, render=False
        )
    targets = resolved(model, x)
    assert max(r.batch_size for r in results) > 1
    for r in results:
        assert any("hardtanh" in w for w in r.warnings), r.warnings
    # The twin applies the rule to its ReLU only: its Hardtanh(-1, 1) keeps the plain gradient.
    twin = rule_twin(model, "guided" if method == "guided_backprop" else "deconv")
    assert len(rule_acts(twin)) == 1 and isinstance(twin.tanh, nn.Hardtanh)
    expected = twin_gradient(twin, x, targets)
    got = np.stack([r.array for r in results])
    assert relative_error(got, expected) <= TOL
    # Had Hardtanh(-1, 1) been given the rule, the answer would differ.
    rule = "guided" if method == "guided_backprop" else "deconv"
    ruled = rule_twin(model, rule)
    ruled.tanh = RuleAct(-1.0, 1.0, rule)
    assert relative_error(got, twin_gradient(ruled, x, targets)) > 1e-3
