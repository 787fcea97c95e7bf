"""Layer-wise relevance propagation and Deep Taylor decomposition, on a BN-folded view of the model.

How it works. Relevance travels backwards as the gradient does: during one forward pass of the
model, a thread-local torch function mode (`_LrpMode`) puts the calls that need a rule in
custom autograd functions whose backward is that rule (`_LayerRule` for convolutions and
linear layers, `_Norm` for average pooling, `_Sum` for residual additions, `_Pass` for
activation functions and batch norms that follow no convolution), whether the model calls them
through modules or functionally; every other call keeps its gradient, which is LRP's rule for
max pooling (the winner takes it) and the reshaping, slicing, padding and concatenating ops.
The backward pass from the logits, started with each item's logit at its target, then
delivers the relevance at the input.

Nothing is set on the served model: no hook, no swapped module, no changed weight; the mode
lives for one forward pass on the device thread and is gone afterwards, whatever happened.
Batch norms are folded into the convolution before them on a private copy of the model (see
`LrpModel`), built once per served model and kept: the rules modify weights only in the
backward's own temporaries (W+ = W.clamp(min=0) and the like, fresh tensors per call), so the
copy is never written to after it is built and any number of batches may use it at once.

The rules are Zennit's (zennit.rules, 0.5.1), written out here from their definitions.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode

from ..errors import InvalidArgument
from ..models import ServedModel
from .base import BatchOutput, Method, MethodRequest
from .gradients import pixel_bounds
from .options import LrpOptions
from .targets import ClassTarget, NeuronTarget, resolve_class_targets

log = logging.getLogger(__name__)

# Zennit's stabilizer of every rule's denominators other than epsilon's.
STABILIZER = 1e-6


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + epsilon * sign(z), with sign(0) = +1: Zennit's `stabilize`."""
    return z + epsilon * ((z == 0).to(z.dtype) + z.sign())


# --- the rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One call of a linear map (conv or linear) as the model made it: func(x, weight, bias,
    *rest, **kwargs)."""

    func: Callable[..., torch.Tensor]
    rest: tuple[Any, ...]
    kwargs: dict[str, Any] = field(hash=False)

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return self.func(x, weight, bias, *self.rest, **self.kwargs)


@dataclass(frozen=True)
class Rule:
    """One LRP rule for a conv or linear layer: its name and parameters."""

    kind: str  # epsilon | zplus | zplus_nobias | alpha_beta | gamma | zbox | flat
    epsilon: float = STABILIZER
    gamma: float = 0.25
    low: torch.Tensor | None = field(default=None, compare=False)  # zbox: [1, C, 1, 1]
    high: torch.Tensor | None = field(default=None, compare=False)

    def relevance(
        self,
        call: _Call,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        r: torch.Tensor,
    ) -> torch.Tensor:
        """The relevance of the layer's input from that of its output `r` (Zennit's rule)."""
        return _RULES[self.kind](self, call, x, weight, bias, r)


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def _terms(
    call: _Call,
    terms: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    grads_of: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Runs the layer on each (input, weight, bias) term with the inputs requiring grad; returns
    the inputs and the gradients of sum_i <out_i, g_i> with the g_i `grads_of(outputs)` gives
    (detached): the W_i^T g_i that every rule combines."""
    with torch.enable_grad():
        inputs = [t[0].detach().requires_grad_(True) for t in terms]
        outputs = [call(xi, w, b) for xi, (_, w, b) in zip(inputs, terms, strict=True)]
        grads = [g.detach() for g in grads_of(outputs)]
        got = torch.autograd.grad(outputs, inputs, grads)
    return [i.detach() for i in inputs], list(got)


def _epsilon(
    rule: Rule, call: _Call, x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor
) -> Tensor:
    (xi,), (g,) = _terms(call, [(x, weight, bias)], lambda o: [r / stabilize(o[0], rule.epsilon)])
    return xi * g


def _zplus(
    rule: Rule,
    call: _Call,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    r: Tensor,
    *,
    bias_on: bool = True,
) -> Tensor:
    terms = [
        (x.clamp(min=0), weight.clamp(min=0), _pos(bias) if bias_on else None),
        (x.clamp(max=0), weight.clamp(max=0), None),
    ]
    ins, gs = _terms(call, terms, lambda o: [r / stabilize(o[0] + o[1], STABILIZER)] * 2)
    return ins[0] * gs[0] + ins[1] * gs[1]


def _zplus_nobias(
    rule: Rule, call: _Call, x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor
) -> Tensor:
    return _zplus(rule, call, x, weight, bias, r, bias_on=False)


def _alpha_beta(
    rule: Rule, call: _Call, x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor
) -> Tensor:
    alpha, beta = 2.0, 1.0
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), weight.clamp(min=0), weight.clamp(max=0)
    terms = [(xp, wp, _pos(bias)), (xn, wn, None), (xp, wn, _neg(bias)), (xn, wp, None)]

    def grads(o: list[torch.Tensor]) -> list[torch.Tensor]:
        a = r / stabilize(o[0] + o[1], STABILIZER)
        b = r / stabilize(o[2] + o[3], STABILIZER)
        return [a, a, b, b]

    ins, gs = _terms(call, terms, grads)
    return alpha * (ins[0] * gs[0] + ins[1] * gs[1]) - beta * (ins[2] * gs[2] + ins[3] * gs[3])


def _gamma(
    rule: Rule, call: _Call, x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor
) -> Tensor:
    g = rule.gamma
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    w_up, w_down = weight + g * weight.clamp(min=0), weight + g * weight.clamp(max=0)
    b_up = None if bias is None else bias + g * bias.clamp(min=0)
    b_down = None if bias is None else bias + g * bias.clamp(max=0)
    with torch.no_grad():
        z = call(x, weight, bias)
    terms = [(xp, w_up, b_up), (xn, w_down, None), (xp, w_down, b_down), (xn, w_up, None)]

    def grads(o: list[torch.Tensor]) -> list[torch.Tensor]:
        # Outputs with z > 0 favour positive contributions, those with z < 0 negative ones.
        up = (z > 0).to(r.dtype) * r / stabilize(o[0] + o[1], STABILIZER)
        down = (z < 0).to(r.dtype) * r / stabilize(o[2] + o[3], STABILIZER)
        return [up, up, down, down]

    ins, gs = _terms(call, terms, grads)
    return ins[0] * gs[0] + ins[1] * gs[1] + ins[2] * gs[2] + ins[3] * gs[3]


def _zbox(
    rule: Rule, call: _Call, x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor
) -> Tensor:
    assert rule.low is not None and rule.high is not None
    low, high = rule.low.expand_as(x).to(x), rule.high.expand_as(x).to(x)
    terms = [(x, weight, bias), (low, weight.clamp(min=0), _pos(bias))]
    terms.append((high, weight.clamp(max=0), _neg(bias)))
    ins, gs = _terms(call, terms, lambda o: [r / stabilize(o[0] - o[1] - o[2], STABILIZER)] * 3)
    return ins[0] * gs[0] - ins[1] * gs[1] - ins[2] * gs[2]


def _flat(
    rule: Rule, call: _Call, x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor
) -> Tensor:
    ones = torch.ones_like(x)
    _, (g,) = _terms(
        call,
        [(ones, torch.ones_like(weight), None)],
        lambda o: [r / stabilize(o[0], STABILIZER)],
    )
    return g


_RULES: dict[str, Callable[..., torch.Tensor]] = {
    "epsilon": _epsilon,
    "zplus": _zplus,
    "zplus_nobias": _zplus_nobias,
    "alpha_beta": _alpha_beta,
    "gamma": _gamma,
    "zbox": _zbox,
    "flat": _flat,
}


class _LayerRule(torch.autograd.Function):
    """A conv or linear call whose backward is its LRP rule."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        call: _Call,
        rule: Rule,
    ) -> torch.Tensor:
        ctx.call, ctx.rule = call, rule
        ctx.save_for_backward(x, weight, bias)
        return call(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        return ctx.rule.relevance(ctx.call, x, weight, bias, r), None, None, None, None


class _Pass(torch.autograd.Function):
    """An elementwise call (an activation, a batch norm) that passes relevance unchanged:
    Zennit's Pass rule."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:  # type: ignore[override]
        return fn(x)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return r, None


class _Norm(torch.autograd.Function):
    """Average pooling: relevance split in proportion to each input's contribution,
    x * f'(x)^T (R / f(x)) (Zennit's Norm rule)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:  # type: ignore[override]
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            y = ctx.fn(xi)
            (g,) = torch.autograd.grad(y, xi, (r / stabilize(y, STABILIZER)).detach())
        return x * g, None


class _Sum(torch.autograd.Function):
    """A residual addition a + b: relevance split in proportion to each branch, a R / (a + b)
    and b R / (a + b) (Zennit's Norm rule on the Sum its ResNet canonizer inserts)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = a + b
        denominator = stabilize(out, STABILIZER)
        # The shares, not the inputs: an in-place op may overwrite `a` (out += identity).
        ctx.shares = (a / denominator, b / denominator)
        return out

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        share_a, share_b = ctx.shares
        return share_a * r, share_b * r


# --- which calls get a rule --------------------------------------------------------------------

_LINEAR_MAPS = {F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv", F.linear: "linear"}
# Activation functions (Zennit's Activation modules, however called): relevance passes through,
# ReLU's included: between rules that do not weigh by the input (a batch norm after no conv
# passes its relevance on), relevance can reach a unit that ReLU zeroed, and goes on through it.
_PASS_FUNCS = {
    F.relu,
    torch.relu,
    torch.Tensor.relu,
    F.elu,
    F.hardshrink,
    F.hardsigmoid,
    F.hardtanh,
    F.hardswish,
    F.leaky_relu,
    F.logsigmoid,
    F.prelu,
    F.relu6,
    F.rrelu,
    F.selu,
    F.celu,
    F.gelu,
    torch.sigmoid,
    torch.Tensor.sigmoid,
    F.sigmoid,
    F.silu,
    F.mish,
    F.softplus,
    F.softshrink,
    F.softsign,
    torch.tanh,
    torch.Tensor.tanh,
    F.tanh,
    F.tanhshrink,
    F.threshold,
}
# In-place forms, written back into their input as the caller expects.
_IN_PLACE_PASS_FUNCS = {torch.relu_, torch.Tensor.relu_}
# ReLU-like activations: relevance passing through them is what LRP prescribes.
_RELU_LIKE = frozenset({"relu", "relu_", "relu6"})
_POOLS = {
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
}
_ADDS = {torch.add, torch.Tensor.add}
_IN_PLACE_ADDS = {torch.Tensor.add_}


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


@dataclass
class _Trace:
    """What one traced forward pass saw: linear-map calls by layer name (in order, with whether
    their input was the model's input and their output), batch norm calls with their input,
    and the activations passed through."""

    x: torch.Tensor
    calls: list[tuple[str, str, bool, torch.Tensor]] = field(default_factory=list)
    norms: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    passed: Counter[str] = field(default_factory=Counter)


class _LrpMode(TorchFunctionMode):
    """For one forward pass: the calls that need a rule go through its autograd function.

    `layers` maps id(weight) of the conv and linear modules to their names, `rules` names to
    their rule, `norms` id(running_mean) of batch norms to their names (for the trace).
    """

    def __init__(
        self,
        layers: dict[int, str],
        rules: dict[str, Rule],
        default: Rule,
        norms: dict[int, str] | None = None,
        trace: _Trace | None = None,
    ) -> None:
        super().__init__()
        self.layers, self.rules, self.default = layers, rules, default
        self.norms, self.trace = norms or {}, trace

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return func(*args, **kwargs)
        kind = _LINEAR_MAPS.get(func)
        if kind is not None:
            return self._linear_map(func, kind, x, args, kwargs)
        if func in _PASS_FUNCS or func in _IN_PLACE_PASS_FUNCS:
            if self.trace is not None:
                name = func.__name__
                if func is F.hardtanh and _arg(args, kwargs, 1, "min_val") == 0:
                    name = "relu6"  # nn.ReLU6 and Hardtanh(0, cap): a ReLU with a cap
                self.trace.passed[name] += 1
            # On a clone: what an in-place form (ReLU(inplace=True)) would change is the
            # clone, and the autograd function returns a fresh tensor.
            out = _Pass.apply(x, lambda t: func(t.clone(), *args[1:], **kwargs))
            return x.copy_(out) if func in _IN_PLACE_PASS_FUNCS else out
        if func is F.batch_norm:
            if self.trace is not None:
                name = self.norms.get(id(_arg(args, kwargs, 1, "running_mean")), "?")
                self.trace.norms.append((name, x))
            return _Pass.apply(x, lambda t: func(t, *args[1:], **kwargs))
        if func in _POOLS:
            return _Norm.apply(x, lambda t: func(t, *args[1:], **kwargs))
        if func in _ADDS or func in _IN_PLACE_ADDS:
            other = _arg(args, kwargs, 1, "other")
            plain = len(args) == 2 and not kwargs.get("alpha", 1) != 1 and "out" not in kwargs
            if (
                plain
                and isinstance(other, torch.Tensor)
                and other.requires_grad
                and other.shape == x.shape
            ):
                total = _Sum.apply(x, other)
                return x.copy_(total) if func in _IN_PLACE_ADDS else total
        return func(*args, **kwargs)

    def _linear_map(
        self, func: Any, kind: str, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        weight = _arg(args, kwargs, 1, "weight")
        name = self.layers.get(id(weight))
        if name is None:
            return func(*args, **kwargs)
        bias = _arg(args, kwargs, 2, "bias")
        rest = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}
        call = _Call(func, tuple(args[3:]), rest)
        out = _LayerRule.apply(x, weight, bias, call, self.rules.get(name, self.default))
        if self.trace is not None:
            self.trace.calls.append((name, kind, x is self.trace.x, out))
        return out


# --- the BN-folded view of a model and its composites ------------------------------------------

_RULED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Backward nodes of ops whose gradient is LRP's rule (or passes relevance on unchanged): a
# warning names every other op the forward pass runs on the input's path.
_EXACT_OPS = re.compile(
    r"(relu|threshold|max_pool\d?d?_with_indices|adaptive_max_pool\dd|max_pool\dd|view|"
    r"unsafe_view|reshape_alias|alias|as_strided|cat|stack|split|split_with_sizes|unsafe_split|"
    r"unbind|slice|select|index|permute|transpose|t|clone|copys|copy|expand|squeeze|unsqueeze|"
    r"constant_pad_nd|reflection_pad\dd|replication_pad\dd|to_copy|narrow|flip|roll|"
    r"pixel_shuffle|pixel_unshuffle|channel_shuffle|native_dropout|dropout|"
    r"_layer_rule|_pass|_norm|_sum)"
)


def _op_name(node: Any) -> str:
    """'max_pool2d_with_indices' for MaxPool2DWithIndicesBackward0; '_sum' for _SumBackward."""
    base = re.sub(r"Backwards?\d*$", "", node.name().rsplit("::", 1)[-1])
    base = re.sub(r"(\d)D", r"\1d", base)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower()


def _nodes(output: torch.Tensor) -> tuple[list[Any], Counter[Any]]:
    """Every node of the autograd graph behind `output`, and how many edges lead to each."""
    seen: set[Any] = set()
    order: list[Any] = []
    consumers: Counter[Any] = Counter()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        order.append(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                consumers[nxt] += 1
                stack.append(nxt)
    return order, consumers


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


@dataclass
class LrpModel:
    """A served model as LRP runs it: its module with every batch norm that follows a
    convolution folded into it (a private deep copy; the served module itself when there is
    nothing to fold), what each conv and linear layer is, and what no rule covers.

    `layers`: id(weight) -> name for the conv and linear layers of `module`; `first` the
    layers that take the model's input (by kind), whose rule the composite chooses apart.
    `bytes` is what the copy holds (0 without one): parameters and buffers.
    """

    module: nn.Module
    layers: dict[int, str]
    kinds: dict[str, str]
    takes_input: list[str]
    call_order: list[str]
    folded: list[tuple[str, str]]
    warnings: tuple[str, ...]
    bytes: int = 0

    def first_layers(self, kinds: tuple[str, ...]) -> list[str]:
        """The layers of these kinds that take the input, or the first one the pass runs."""
        direct = [n for n in self.takes_input if self.kinds[n] in kinds]
        if direct:
            return direct
        later = [n for n in self.call_order if self.kinds[n] in kinds]
        return later[:1]

    def rules(self, opts: LrpOptions, low: torch.Tensor, high: torch.Tensor) -> dict[str, Rule]:
        """Each layer's rule under the composite: a dict per batch (epsilon and gamma come from
        clients, so nothing is cached per value)."""
        return composite_rules(self, opts, low, high)


def composite_rules(
    lm: LrpModel, opts: LrpOptions, low: torch.Tensor, high: torch.Tensor
) -> dict[str, Rule]:
    """The rule of every conv and linear layer under a composite (see LrpComposite)."""
    eps = Rule("epsilon", epsilon=opts.epsilon)
    c = opts.composite
    conv, first_kinds, first_rule = {
        "epsilon_plus_flat": (Rule("zplus"), ("conv", "linear"), Rule("flat")),
        "epsilon_plus": (Rule("zplus"), (), None),
        "epsilon_gamma_box": (
            Rule("gamma", gamma=opts.gamma),
            ("conv",),
            Rule("zbox", low=low, high=high),
        ),
        "epsilon_alpha2_beta1": (Rule("alpha_beta"), (), None),
        "epsilon_alpha2_beta1_flat": (Rule("alpha_beta"), ("conv", "linear"), Rule("flat")),
        "deep_taylor": (
            Rule("zplus_nobias"),
            ("conv", "linear"),
            Rule("zbox", low=low, high=high),
        ),
        "epsilon": (eps, (), None),
    }[c]
    linear = Rule("zplus_nobias") if c == "deep_taylor" else eps
    rules = {name: conv if kind == "conv" else linear for name, kind in lm.kinds.items()}
    if first_rule is not None:
        for name in lm.first_layers(first_kinds):
            rules[name] = first_rule
    return rules


def _module_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _trace(
    module: nn.Module, shape: tuple[int, ...], device: torch.device
) -> tuple[_Trace, list[Any], Counter[Any], dict[str, nn.Module], dict[int, str]]:
    """One forward pass of zeros under the mode (every layer epsilon, only to see the graph)."""
    named = dict(module.named_modules())
    layers = {id(m.weight): n for n, m in named.items() if isinstance(m, _RULED_MODULES)}
    norms = {
        id(m.running_mean): n
        for n, m in named.items()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    }
    x = torch.zeros(1, *shape, device=device, requires_grad=True)
    trace = _Trace(x)
    with torch.enable_grad(), _LrpMode(layers, {}, Rule("epsilon"), norms, trace):
        out = module(x)
    nodes, consumers = _nodes(out)
    return trace, nodes, consumers, named, layers


def build_lrp_model(model: ServedModel) -> LrpModel:
    """Traces the served model once, folds each batch norm that directly follows a conv (the
    conv's output goes to that batch norm and nowhere else, both run once) into the conv on a
    deep copy, and names what no rule covers."""
    module = model.module
    trace, nodes, consumers, named, layers = _trace(module, model.input_shape, model.device)
    calls = Counter(name for name, *_ in trace.calls)
    norm_calls = Counter(name for name, _ in trace.norms)
    folds: list[tuple[str, str]] = []
    for bn_name, bn_input in trace.norms:
        conv = next(
            (c for c in trace.calls if c[3] is bn_input and c[1] == "conv"),
            None,
        )
        if (
            conv is None
            or calls[conv[0]] != 1
            or norm_calls[bn_name] != 1
            or consumers[bn_input.grad_fn] != 1
            or not isinstance(named.get(bn_name), nn.modules.batchnorm._BatchNorm)
            or named[bn_name].training
        ):
            continue
        folds.append((conv[0], bn_name))
    unfolded = sorted({n for n, _ in trace.norms} - {bn for _, bn in folds})
    target = module
    if folds:
        target = copy.deepcopy(module)
        for conv_name, bn_name in folds:
            conv_module = target.get_submodule(conv_name)
            bn_module = target.get_submodule(bn_name)
            assert isinstance(conv_module, nn.modules.conv._ConvNd)
            assert isinstance(bn_module, nn.modules.batchnorm._BatchNorm)
            _set_submodule(target, conv_name, fuse_conv_bn_eval(conv_module, bn_module))
            _set_submodule(target, bn_name, nn.Identity())
        for p in target.parameters():
            p.requires_grad_(False)
    target_named = dict(target.named_modules())
    kinds = {
        n: "linear" if isinstance(m, nn.Linear) else "conv"
        for n, m in target_named.items()
        if isinstance(m, _RULED_MODULES)
    }
    lm = LrpModel(
        module=target,
        layers={id(m.weight): n for n, m in target_named.items() if n in kinds},
        kinds=kinds,
        takes_input=list(dict.fromkeys(n for n, _, direct, _ in trace.calls if direct)),
        call_order=list(dict.fromkeys(n for n, *_ in trace.calls)),
        folded=folds,
        warnings=_coverage_warnings(model, nodes, trace, unfolded, named),
        bytes=_module_bytes(target) if folds else 0,
    )
    log.info(
        "lrp: model %s: %d batch norm(s) folded into their convolutions%s",
        model.name,
        len(folds),
        f" on a private copy of {lm.bytes / 2**20:.1f} MiB" if folds else "",
    )
    return lm


def _examples(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(f"'{x}'" for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _coverage_warnings(
    model: ServedModel,
    nodes: list[Any],
    trace: _Trace,
    unfolded: list[str],
    named: dict[str, nn.Module],
) -> tuple[str, ...]:
    """What the rules do not cover exactly, in words: ops that keep their plain gradient,
    activations other than ReLU and batch norms after no convolution (passed through)."""
    out = []
    ops: Counter[str] = Counter()
    for node in nodes:
        name = _op_name(node)
        if name == "add" and sum(n is not None for n, _ in node.next_functions) < 2:
            continue  # a constant or parameter added (a bias): relevance passes on
        if name.endswith("accumulate_grad") or _EXACT_OPS.fullmatch(name):
            continue
        ops[name] += 1
    if ops:
        listed = ", ".join(f"{op} ({n}x)" if n > 1 else op for op, n in sorted(ops.items()))
        out.append(
            f"lrp: model '{model.name}' runs operations no LRP rule covers, which pass plain "
            f"gradients instead of conserving relevance: {listed}"
        )
    passed = {op: n for op, n in trace.passed.items() if op not in _RELU_LIKE}
    if passed:
        listed = ", ".join(f"{op} ({n}x)" if n > 1 else op for op, n in sorted(passed.items()))
        out.append(
            f"lrp: model '{model.name}' uses activations other than ReLU, through which "
            f"relevance passes unchanged (Zennit's Pass rule): {listed}"
        )
    if unfolded:
        out.append(
            f"lrp: model '{model.name}' has {len(unfolded)} batch norm(s) that follow no "
            f"convolution, through which relevance passes unchanged (Zennit's Pass rule): "
            f"{_examples(unfolded)}"
        )
    return tuple(out)


class _Models:
    """The LRP view of each served model, built on first use and kept while the model is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: weakref.WeakKeyDictionary[ServedModel, LrpModel] = weakref.WeakKeyDictionary()

    def get(self, model: ServedModel) -> LrpModel:
        with self._lock:
            lm = self._models.get(model)
            if lm is None:
                lm = build_lrp_model(model)
                self._models[model] = lm
            return lm


class Lrp(Method):
    """Layer-wise relevance propagation (Bach et al. 2015) and Deep Taylor decomposition
    (Montavon et al. 2017) under one of Zennit's composites: [C, H, W] relevance in the model
    input space, started at each item's logit at its target so that it sums to about it."""

    name: ClassVar[str] = "lrp"
    smoothable: ClassVar[bool] = True
    option_fields: ClassVar[frozenset[str]] = frozenset({"lrp"})
    models: ClassVar[_Models] = _Models()

    def prepare(self, model: ServedModel, request: MethodRequest) -> MethodRequest:
        if isinstance(request.target, NeuronTarget):
            raise InvalidArgument(
                "method lrp explains a class logit: set target.class_index, or leave the "
                "target unset for the predicted class (neuron targets: guided_backprop, "
                "saliency, input_x_gradient, integrated_gradients)",
                field="target.neuron",
            )
        request = super().prepare(model, request)
        return replace(request, lrp=request.lrp or LrpOptions())

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        lm = self.models.get(model)
        opts = requests[0].lrp or LrpOptions()
        low, high = pixel_bounds(model, x.device)
        rules = lm.rules(opts, low, high)
        # The rules are exact fp32 arithmetic: not under a fast model's bf16 autocast.
        with torch.autocast(model.device.type, enabled=False):
            xg = x.detach().float().requires_grad_(True)
            with torch.enable_grad():
                # Entered and left around the forward pass alone, on this thread only.
                with _LrpMode(lm.layers, rules, Rule("epsilon")):
                    logits = lm.module(xg)
                classes = resolve_class_targets(logits, [r.target for r in requests])
                picked = logits.gather(1, classes[:, None])
                start = torch.zeros_like(logits).scatter(1, classes[:, None], picked).detach()
                (relevance,) = torch.autograd.grad(logits, xg, start)
        n = x.shape[0]
        completeness = torch.stack(
            [
                relevance.double().reshape(n, -1).sum(1),
                picked[:, 0].detach().double(),
                torch.zeros(n, dtype=torch.float64, device=x.device),
            ],
            dim=1,
        )
        return BatchOutput(
            logits=logits.detach(),
            arrays=relevance,
            targets=[ClassTarget(int(c)) for c in classes.tolist()],
            warnings=lm.warnings,
            completeness=completeness,
        )
