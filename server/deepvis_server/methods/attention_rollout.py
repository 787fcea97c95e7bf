"""Attention rollout (Abnar & Zuidema 2020) for vision transformers, batched, hooks only."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from ..models import ServedModel
from .base import BatchOutput, Method, MethodRequest
from .targets import ClassTarget, NeuronTarget, check_target, resolve_class_targets

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class RolloutOptions:
    """How each block's attention heads are fused, and the fraction of the smallest fused
    weights discarded before the identity is added (jacobgil/vit-explain's discard_ratio)."""

    head_fusion: str = "mean"
    discard_ratio: float = 0.0

    def check(self) -> None:
        """Raises InvalidArgument naming the `rollout` field at fault."""
        if self.head_fusion not in HEAD_FUSIONS:
            raise InvalidArgument(
                f"rollout.head_fusion must be one of {', '.join(HEAD_FUSIONS)}, "
                f"got '{self.head_fusion}'",
                field="rollout.head_fusion",
            )
        if not (math.isfinite(self.discard_ratio) and 0.0 <= self.discard_ratio < 1.0):
            raise InvalidArgument(
                f"rollout.discard_ratio must be in [0, 1), got {self.discard_ratio}",
                field="rollout.discard_ratio",
            )


def attention_weights(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention weights [B, heads, T, S] that `module` computes for (query, key):
    softmax(Q K^T / sqrt(d) + mask) with Q and K its own in-projections of them, as
    torch.nn.functional.multi_head_attention_forward computes them (without dropout: the
    served model is in eval mode), for modules without bias_k or add_zero_attn."""
    if not module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    e = module.embed_dim
    heads = module.num_heads
    d = e // heads
    bias = module.in_proj_bias
    b_q, b_k = (bias[:e], bias[e : 2 * e]) if bias is not None else (None, None)
    if module._qkv_same_embed_dim:
        w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e : 2 * e]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    q = F.linear(query, w_q, b_q)
    k = F.linear(key, w_k, b_k)
    n, t, s = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(n, t, heads, d).transpose(1, 2)
    k = k.reshape(n, s, heads, d).transpose(1, 2)
    scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)  # [B, heads, T, S]
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(n, heads, t, s)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            scores = scores + mask
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
    return scores.softmax(dim=-1)


def fuse_heads(weights: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """[B, heads, T, T] -> [B, T, T] by the mean, max or min over heads."""
    if head_fusion == "mean":
        return weights.mean(dim=1)
    if head_fusion == "max":
        return weights.amax(dim=1)
    return weights.amin(dim=1)


def discard_smallest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Each item's int(T * T * ratio) smallest entries set to 0, except entry (0, 0), the
    first class token's attention to itself, as jacobgil/vit-explain does (per item, where
    it does item 0 only). A stable sort picks among equal entries by position, so an item's
    result does not depend on its batch."""
    n = fused.shape[0]
    flat = fused.reshape(n, -1)
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return fused
    order = torch.sort(flat, dim=1, stable=True).indices[:, :count]
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    drop[:, 0] = False
    return flat.masked_fill(drop, 0.0).reshape(fused.shape)


def rollout_step(fused: torch.Tensor) -> torch.Tensor:
    """(A + I) / 2 with each row renormalised to sum to 1 (the residual connection's share)."""
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    a = (fused + eye) / 2
    return a / a.sum(dim=-1, keepdim=True)


@contextmanager
def attention_recorded(
    model: ServedModel, record: Callable[[torch.Tensor], None]
) -> Iterator[None]:
    """Hands each attention layer's weights [B, heads, T, T], in call order, to `record`
    while the block runs, computed from the module's own inputs in a forward hook: the
    served model calls its attention with need_weights=False and is not changed. Every hook
    is removed on exit, whatever happened."""

    def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        assert isinstance(m, nn.MultiheadAttention)
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        pad = args[3] if len(args) > 3 else kwargs.get("key_padding_mask")
        mask = args[5] if len(args) > 5 else kwargs.get("attn_mask")
        record(attention_weights(m, query, key, mask, pad))

    with ExitStack() as stack:
        for name in model.attention_layers:
            handle = model.layers[name].register_forward_hook(hook, with_kwargs=True)
            stack.callback(handle.remove)
        yield


def upsample(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(grid[:, None], size=tuple(size), mode="bilinear", align_corners=False)[
        :, 0
    ]


class AttentionRollout(Method):
    """Attention rollout (Abnar & Zuidema 2020): result [H, W], the first class token's
    rolled-out attention over the patch grid, up-sampled (bilinear); extras["rollout"] on the
    grid [gh, gw]. Class-agnostic: the target is resolved and echoed, and changes nothing.
    """

    name: ClassVar[str] = "attention_rollout"

    def serves(self, model: ServedModel) -> bool:
        return bool(model.attention_layers)

    def prepare(self, model: ServedModel, request: MethodRequest) -> MethodRequest:
        if not self.serves(model):
            raise InvalidArgument(
                f"method {self.name} needs a vision transformer's self-attention "
                "(torch.nn.MultiheadAttention blocks over a class token and a patch grid, "
                f"as torchvision's vit_b_16 has); model '{model.name}' has none",
                field="method",
            )
        if isinstance(request.target, NeuronTarget):
            raise InvalidArgument(
                f"method {self.name} is class-agnostic and takes no neuron target; leave "
                "target unset or give a class_index",
                field="target.neuron",
            )
        check_target(model, request.target)
        options = request.rollout or RolloutOptions()
        options.check()
        return replace(request, layers=(), rollout=options)

    def batch_key(self, request: MethodRequest) -> Any:
        return (self.name, request.rollout)

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        options = requests[0].rollout or RolloutOptions()
        rolled: list[torch.Tensor] = []

        def record(weights: torch.Tensor) -> None:
            fused = discard_smallest(
                fuse_heads(weights, options.head_fusion), options.discard_ratio
            )
            a = rollout_step(fused)
            # Chained from the first block to the last: A_L ... A_2 A_1.
            rolled[:] = [a if not rolled else a @ rolled[0]]

        with torch.no_grad(), attention_recorded(model, record):
            logits = model.module(x)
        if not rolled:
            raise RuntimeError(f"model '{model.name}': no attention layer ran in the forward pass")
        first = model.attention_layers[0]
        layout = model.attention_layout
        assert layout is not None and layout.grid is not None, first
        gh, gw = layout.grid
        grid = rolled[0][:, 0, layout.class_tokens :].reshape(x.shape[0], gh, gw)
        classes = resolve_class_targets(logits, [r.target for r in requests])
        return BatchOutput(
            logits=logits,
            arrays=upsample(grid, x.shape[2:]),
            targets=[ClassTarget(int(c)) for c in classes.tolist()],
            extras={"rollout": grid},
        )
