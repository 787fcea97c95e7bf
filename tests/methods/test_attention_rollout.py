"""Attention rollout (Abnar & Zuidema 2020) against two oracles on the zoo's small
torchvision ViT: the formula written out here on attention recomputed from each block's
input, and a hand-patched copy of the model that asks its attention for need_weights=True
(what the served model never does); its options, its refusals, and the served model left as
it was."""

from __future__ import annotations

import copy
import types
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from leftovers import hooks_and_grads
from oracles import relative_error

TOL = 1e-5
TARGETS = [3, None, 7, 1]


def vit_inputs(n: int = 4, seed: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def written_attention(vit: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention softmax(Q K^T / sqrt(d)) [N, heads, T, T], written out from
    torchvision's VisionTransformer forward: Q and K the in-projection of ln_1's output."""
    tokens = vit._process_input(x)
    tokens = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    h = tokens + vit.encoder.pos_embedding
    out = []
    for block in vit.encoder.layers:
        y = block.ln_1(h)
        mha = block.self_attention
        e, heads = mha.embed_dim, mha.num_heads
        d = e // heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = (y @ w[:e].T + b[:e]).reshape(x.shape[0], -1, heads, d).transpose(1, 2)
        k = (y @ w[e : 2 * e].T + b[e : 2 * e]).reshape(x.shape[0], -1, heads, d).transpose(1, 2)
        out.append(torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1))
        attended, _ = mha(y, y, y, need_weights=False)
        h = h + attended
        h = h + block.mlp(block.ln_2(h))
    return out


def patched_attention(vit: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The same, from a copy whose blocks call their attention with need_weights=True and
    per-head weights (average_attn_weights=False)."""
    copied: Any = copy.deepcopy(vit)
    weights: list[torch.Tensor] = []

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(input)
        attended, w = self.self_attention(y, y, y, need_weights=True, average_attn_weights=False)
        weights.append(w)
        h = self.dropout(attended) + input
        return h + self.mlp(self.ln_2(h))

    for block in copied.encoder.layers:
        block.forward = types.MethodType(forward, block)
    copied(x)
    return weights


def written_rollout(attentions, fusion: str = "mean", discard: float = 0.0) -> torch.Tensor:
    """Abnar & Zuidema's rollout as jacobgil/vit-explain writes it (per item, and with the
    renormalisation's keepdim that vit-explain#16 asks for): the class token's row over the
    16 patch tokens, [N, 4, 4]."""
    n, _, t, _ = attentions[0].shape
    result = torch.eye(t).expand(n, t, t)
    for attention in attentions:
        if fusion == "mean":
            fused = attention.mean(dim=1)
        elif fusion == "max":
            fused = attention.max(dim=1).values
        else:
            fused = attention.min(dim=1).values
        fused = fused.clone()
        for i in range(n):
            flat = fused[i].view(-1)
            _, indices = flat.topk(int(flat.size(-1) * discard), -1, False)
            indices = indices[indices != 0]
            flat[indices] = 0
        a = (fused + torch.eye(t)) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result[:, 0, 1:].reshape(n, 4, 4)


@pytest.fixture(scope="module")
def vit(zoo):
    server, twins = zoo
    return server.bound_address, twins["vit"].module


@pytest.mark.parametrize(
    ("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.9), ("max", 0.5)]
)
def test_rollout_equals_the_written_formula_and_the_need_weights_copy(vit, fusion, discard):
    address, twin = vit
    xs = vit_inputs()
    with deepvis.Client(address, timeout=120) as client:
        results = client.explain_batch(
            list(xs), model="vit", method="attention_rollout", targets=TARGETS,
            rollout=deepvis.Rollout(head_fusion=fusion, discard_ratio=discard), render=True,
        )  # fmt: skip
    x = torch.from_numpy(xs)
    with torch.no_grad():
        written = written_attention(twin, x)
        patched = patched_attention(twin, x)
        logits = twin(x)
    for w, p in zip(written, patched, strict=True):
        assert relative_error(w.numpy(), p.numpy()) <= TOL  # the two oracles agree
    expected = written_rollout(patched, fusion, discard).numpy()
    got = np.stack([r.arrays["rollout"] for r in results])
    assert got.shape == (4, 4, 4)
    assert relative_error(got, expected) <= TOL
    assert relative_error(got, written_rollout(written, fusion, discard).numpy()) <= TOL
    up = F.interpolate(torch.from_numpy(expected)[:, None], size=(32, 32), mode="bilinear")
    assert relative_error(np.stack([r.array for r in results]), up[:, 0].numpy()) <= TOL
    assert max(r.batch_size for r in results) > 1
    # Class-agnostic: the targets are echoed (the predicted class where none was given).
    predicted = logits.argmax(1).tolist()
    assert [r.target for r in results] == [t if t is not None else p for t, p in
                                           zip(TARGETS, predicted, strict=True)]  # fmt: skip
    assert all(r.image is not None for r in results)


def test_the_target_changes_nothing_and_the_default_is_the_mean_without_discard(vit) -> None:
    address, twin = vit
    x = vit_inputs(1)[0]
    with deepvis.Client(address, timeout=60) as client:
        a = client.explain(x, model="vit", method="attention_rollout", target=2, render=False)
        b = client.explain(x, model="vit", method="attention_rollout", target=5, render=False,
                           rollout=deepvis.Rollout())  # fmt: skip
    assert a.array is not None and b.array is not None
    assert np.array_equal(a.array, b.array) and (a.target, b.target) == (2, 5)
    with torch.no_grad():
        expected = written_rollout(written_attention(twin, torch.from_numpy(x[None])))
    assert relative_error(a.arrays["rollout"], expected[0].numpy()) <= TOL


def refusal(address: str, request: pb.ExplainRequest) -> tuple[grpc.StatusCode, str, str]:
    with grpc.insecure_channel(address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ExplainerStub(ch).Explain(request, timeout=60)
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(info.value)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    return info.value.code(), bad.field_violations[0].field, info.value.details()


def tensor_input(x: np.ndarray) -> pb.Input:
    return pb.Input(tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=x.shape, data=x.tobytes()))


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v3_small"])
def test_models_without_vit_attention_are_refused(zoo, model) -> None:
    server, twins = zoo
    x = np.zeros(twins[model].input_shape, np.float32)
    req = pb.ExplainRequest(model=model, method=pb.METHOD_ATTENTION_ROLLOUT, input=tensor_input(x))
    code, field, details = refusal(server.bound_address, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "method"
    assert "needs a vision transformer's self-attention (torch.nn.MultiheadAttention" in details
    assert f"model '{model}' has none" in details
    with deepvis.Client(server.bound_address, timeout=30) as client:
        listed = {m.name: m.methods for m in client.models()}
        assert "attention_rollout" not in listed[model] and "grad_cam" in listed[model]
        assert "attention_rollout" in listed["vit"]
        assert client.describe(model).attention_layers == ()
        assert client.describe("vit").attention_layers == (
            "encoder.layers.encoder_layer_0.self_attention",
            "encoder.layers.encoder_layer_1.self_attention",
        )


REFUSED_OPTIONS = [
    # (method, rollout options, field, fragment)
    ("attention_rollout", pb.RolloutOptions(discard_ratio=1.0), "rollout.discard_ratio",
     "must be in [0, 1), got 1.0"),
    ("attention_rollout", pb.RolloutOptions(discard_ratio=-0.1), "rollout.discard_ratio",
     "must be in [0, 1)"),
    ("attention_rollout", pb.RolloutOptions(head_fusion=7), "rollout.head_fusion",  # type: ignore[arg-type]
     "valid: MEAN, MAX, MIN"),
    ("grad_cam", pb.RolloutOptions(), "rollout",
     "rollout options are for method attention_rollout; method grad_cam takes none"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "options", "field", "fragment"), REFUSED_OPTIONS)
def test_bad_options_are_refused_naming_the_field(vit, method, options, field, fragment) -> None:
    address, _ = vit
    req = pb.ExplainRequest(
        model="vit",
        method=getattr(pb, f"METHOD_{method.upper()}"),
        input=tensor_input(vit_inputs(1)[0]),
        rollout=options,
    )
    code, got, details = refusal(address, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and got == field
    assert fragment in details, details


def test_neuron_targets_are_refused(vit) -> None:
    address, _ = vit
    neuron = pb.Target(neuron=pb.Neuron(layer="encoder.ln", channel=1))
    req = pb.ExplainRequest(
        model="vit", method=pb.METHOD_ATTENTION_ROLLOUT, input=tensor_input(vit_inputs(1)[0]),
        target=neuron,
    )  # fmt: skip
    code, field, details = refusal(address, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "target.neuron"
    assert "is class-agnostic and takes no neuron target" in details


def test_the_served_model_keeps_need_weights_false_and_no_hook(zoo, vit) -> None:
    server, _ = zoo
    address, _ = vit
    model = server.engine.models["vit"].module
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with deepvis.Client(address, timeout=60) as client:
        client.explain(vit_inputs(1)[0], model="vit", method="attention_rollout")
    assert hooks_and_grads(model) == []
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    # torchvision's block still asks for no weights: nothing was patched in.
    block = model.encoder.layers[0]
    assert type(block).forward is torchvision_block_forward()
    assert "forward" not in vars(block)


def torchvision_block_forward():
    from torchvision.models.vision_transformer import EncoderBlock

    return EncoderBlock.forward
