"""The guided and deconvnet ReLU rules: hooks on the ReLU nodes of one autograd graph."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..models import ServedModel

# The autograd nodes whose backward is a ReLU's: `threshold_backward(grad, x, threshold)`,
# whether the forward was nn.ReLU, F.relu, torch.relu, Tensor.relu, their in-place forms or
# F.threshold, however often one module is reused.
RELU_BACKWARD_NODES = frozenset(
    {"ReluBackward0", "ReluBackward1", "ThresholdBackward0", "ThresholdBackward1"}
)
# Hardtanh's nodes (nn.ReLU6, F.relu6 and nn.Hardtanh reach aten as hardtanh): the ReLU rule
# covers those with min_val 0, ReLUs with a cap, whose backward passes the gradient where
# 0 < x < cap, as a ReLU's does where 0 < x.
HARDTANH_BACKWARD_NODES = frozenset({"HardtanhBackward0", "HardtanhBackward1"})


def _is_relu_node(node: Any) -> bool:
    name = node.name()
    if name in RELU_BACKWARD_NODES:
        return True
    return name in HARDTANH_BACKWARD_NODES and getattr(node, "_saved_min_val", None) == 0


def relu_backward_nodes(output: torch.Tensor) -> list[Any]:
    """Every ReLU node of the autograd graph that produced `output`, ReLU6-like Hardtanh
    nodes (min_val 0) included."""
    seen: set[Any] = set()
    stack, found = [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)  # keeps each node's Python object, hence its identity, alive
        if _is_relu_node(node):
            found.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _guided(grad_outputs: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    # Before the node: only positive gradient comes in; the node then masks it by the
    # forward's positive inputs, as always.
    return tuple(None if g is None else g.clamp(min=0) for g in grad_outputs)


def _deconv(
    grad_inputs: tuple[torch.Tensor | None, ...], grad_outputs: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor | None, ...]:
    # Instead of the node's result: the positive part of the incoming gradient, unmasked.
    return tuple(None if g is None else g.clamp(min=0) for g in grad_outputs)


@contextmanager
def relu_rule(output: torch.Tensor, rule: str) -> Iterator[None]:
    """Backward passes from `output` inside the context use a modified ReLU gradient:
    - guided: pass back only positive gradient at positive inputs (for ReLU6 and
      Hardtanh(0, cap): at inputs in (0, cap), the node's own mask);
    - deconv: pass back the positive part of the gradient, ignoring the forward mask.

    Hooks on the ReLU nodes of this one graph, found by walking it: exact for every way a
    model calls ReLU, nothing is changed on (or hooked into) the model, and Python runs once
    per ReLU node of the backward, not once per op. (A dispatch mode that rewrote
    threshold_backward did the same arithmetic but ran Python for every backward op, each
    taking the GIL back; on CUDA the plain backward runs in C++ without it.)
    """
    if rule not in ("guided", "deconv"):
        raise ValueError(f"rule must be 'guided' or 'deconv', got {rule!r}")
    handles = [
        node.register_prehook(_guided) if rule == "guided" else node.register_hook(_deconv)
        for node in relu_backward_nodes(output)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def relu_rule_warnings(model: ServedModel, method: str) -> tuple[str, ...]:
    """Says so when the model has activations the ReLU rule does not cover."""
    if not model.non_relu_activations:
        return ()
    acts = ", ".join(model.non_relu_activations)
    return (
        f"{method}: model '{model.name}' also uses {acts}; the rule modifies only the "
        "gradients of ReLU and ReLU6 (Hardtanh from 0), so those activations pass plain "
        "gradients",
    )
