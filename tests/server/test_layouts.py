"""Layer layouts recorded at load time (channels-first, channels-last, tokens, vectors), and
the methods' answers by layout: channels-last (Swin) and token (ViT) layers are read as their
channels-first maps [C, h, w] (a permute; the class token dropped and the patch tokens laid
out on their grid), checked against pytorch-grad-cam's reshape transforms and Captum; what no
map of the input explains (tokens without a patch grid) is refused where a method needs a map.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation, NeuronGuidedBackprop
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import parse_config
from deepvis_server.featurevis import Channel, RenderBatch, RenderJob
from deepvis_server.models import LayerLayout, ServedModel, infer_layout
from deepvis_server.server import serve_in_thread
from oracles import pytorch_grad_cam, relative_error, swin_reshape_transform, vit_reshape_transform
from zoo import build_oracle_twin, saved_table

TOL = 1e-5
TARGETS = [3, None, 7, 3]

# name: (arch, classes, input size); random weights saved to files and served by config.
SPECS = {
    "vit": ("toy_models:tiny_vit", 10, (32, 32)),
    "swin": ("toy_models:tiny_swin", 10, (32, 32)),
    "convnext": ("toy_models:tiny_convnext", 10, (32, 32)),
    "swin_t": ("swin_t", 10, (64, 64)),
    "rows": ("toy_models:RowTokenNet", 4, (16, 16)),
}
VIT_LAST_NORM = "encoder.layers.encoder_layer_1.ln_1"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, dict[str, ServedModel], dict]]:
    """(address, the server's loaded models, the twins: the same weights built here)."""
    root = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(11)
    tables, twins = [], {}
    for name, (arch, k, size) in SPECS.items():
        twin = build_oracle_twin(arch, k).eval().requires_grad_(False)
        table = saved_table(root, name, arch, twin, k, size, max_batch_size=8, max_delay_ms=50.0)
        tables.append(table)
        twins[name] = twin
    # On the CPU, as the oracles run: CUDA kernels round differently, which is not what is
    # tested here.
    config = parse_config({"server": {"device": "cpu"}, "models": tables}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server.bound_address, server.engine.models, twins


def inputs(name: str, n: int = len(TARGETS)) -> torch.Tensor:
    size = SPECS[name][2]
    rng = np.random.default_rng(len(name))
    return torch.from_numpy(rng.standard_normal((n, 3, *size)).astype(np.float32))


def resolved(twin: torch.nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        predicted = twin(x).argmax(1).tolist()
    return [t if t is not None else p for t, p in zip(TARGETS, predicted, strict=False)]


def tensor_layers(model: ServedModel, prefix: str) -> list[str]:
    return [n for n in model.layer_shapes if n == prefix or n.startswith(prefix + ".")]


def module(twin: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(twin.named_modules())[name]


# ---------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", ["swin", "swin_t"])
def test_swin_stages_are_channels_last_and_its_permute_channels_first(served, name) -> None:
    _, models, twins = served
    model = models[name]
    layouts = model.layer_layouts
    stages = tensor_layers(model, "features")
    assert len(stages) > 20
    # The patch embedding's convolution is the one channels-first layer of `features`.
    for layer in stages:
        expected = "nchw" if layer == "features.0.0" else "nhwc"
        assert layouts[layer].kind == expected, (layer, layouts[layer])
    assert layouts["norm"].kind == "nhwc"
    # torchvision's Swin: stage i is [H / 4 / 2^i, W / 4 / 2^i, embed_dim * 2^i].
    embed = twins[name].features[0][0].out_channels
    h, w = SPECS[name][2]
    depth = len(twins[name].features) // 2
    last = (h // 4 // 2 ** (depth - 1), w // 4 // 2 ** (depth - 1), embed * 2 ** (depth - 1))
    assert layouts["features"] == LayerLayout("nhwc", last, grid=last[:2])
    assert layouts["features"].map_shape == (last[2], *last[:2])
    assert layouts["features.1"] == LayerLayout(
        "nhwc", (h // 4, w // 4, embed), grid=(h // 4, w // 4)
    )
    assert layouts["features.1"].channels == embed
    assert layouts["permute"] == LayerLayout("nchw", (last[2], *last[:2]), grid=last[:2])
    assert layouts["head"].kind == "vector" and layouts["head"].map_shape is None
    # The suggested layer: the last stage as the head reads it, channels-first already.
    assert model.default_cam_layer == "permute"
    assert model.last_feature_layer == "permute"
    assert model.attention_layers == ()  # windowed attention: no global attention matrix


def test_vit_encoder_layers_are_tokens_with_a_class_token_and_a_4x4_grid(served) -> None:
    _, models, _ = served
    model = models["vit"]
    layouts = model.layer_layouts
    encoder = tensor_layers(model, "encoder")
    assert len(encoder) > 10  # self_attention returns a tuple: it has no layout
    for layer in encoder:
        lay = layouts[layer]
        assert lay.kind == "tokens" and lay.class_tokens == 1 and lay.grid == (4, 4), (layer, lay)
        assert lay.shape[0] == 17 and lay.channels == lay.shape[1]
        assert lay.map_shape == (lay.shape[1], 4, 4)
    assert layouts["encoder.layers.encoder_layer_0.mlp.0"].channels == 64
    assert layouts["conv_proj"] == LayerLayout("nchw", (32, 4, 4), grid=(4, 4))
    assert layouts["heads.head"].kind == "vector"
    # The last block's first norm, as pytorch-grad-cam recommends (its blocks[-1].norm1).
    assert model.default_cam_layer == VIT_LAST_NORM
    assert "class token" in model.default_cam_note and "[32, 4, 4]" in model.default_cam_note
    assert model.channels_first_layer == "conv_proj"
    assert model.attention_layers == (
        "encoder.layers.encoder_layer_0.self_attention",
        "encoder.layers.encoder_layer_1.self_attention",
    )


def test_convnext_stages_are_channels_first_and_its_last_stage_suggested(served) -> None:
    _, models, twins = served
    model = models["convnext"]
    layouts = model.layer_layouts
    stages = ["features", *[f"features.{i}" for i in range(len(twins["convnext"].features))]]
    blocks = [n for n in model.layer_shapes if n.count(".") == 2 and n.startswith("features.")]
    for layer in stages + blocks:
        assert layouts[layer].kind == "nchw", (layer, layouts[layer])
    # Inside a CNBlock: depthwise conv [C, h, w], permuted to [h, w, C] for LayerNorm and the
    # two Linear layers, permuted back.
    inside = {f"features.1.0.block.{i}": layouts[f"features.1.0.block.{i}"].kind for i in range(7)}
    assert inside == {
        "features.1.0.block.0": "nchw",
        **{f"features.1.0.block.{i}": "nhwc" for i in range(1, 6)},
        "features.1.0.block.6": "nchw",
    }
    # `features` is the whole feature extractor: its last stage is named, the same output.
    last = f"features.{len(twins['convnext'].features) - 1}"
    assert model.default_cam_layer == last
    assert "the last stage of 'features'" in model.default_cam_note


def test_convolutional_models_are_channels_first_everywhere_spatial(zoo, digits_server) -> None:
    server, _ = zoo
    for model in (server.engine.models["resnet18"], digits_server.engine.models["digits"]):
        kinds = {n: lay.kind for n, lay in model.layer_layouts.items()}
        assert set(kinds) == set(model.layer_shapes)
        for layer, shape in model.layer_shapes.items():
            assert kinds[layer] == ("nchw" if len(shape) == 3 else "vector"), (layer, shape)
    assert server.engine.models["resnet18"].default_cam_layer == "layer4"
    assert digits_server.engine.models["digits"].default_cam_layer == "conv3"
    # VGG's `features` is fed the image: its last layer is named (pytorch-grad-cam's
    # features[-1]), whose output it is.
    assert server.engine.models["vgg11"].default_cam_layer == "features.20"


def test_ambiguous_maps_are_read_channels_first_unless_a_second_size_tells() -> None:
    # A square input and a map as deep as it is wide: both readings fit.
    assert infer_layout((16, 16, 16), (32, 32)).kind == "nchw"
    # A second input size moves the spatial axes and keeps the channels.
    assert infer_layout((16, 16, 16), (32, 32), (16, 24, 24), (48, 48)).kind == "nchw"
    assert infer_layout((16, 16, 16), (32, 32), (24, 24, 16), (48, 48)).kind == "nhwc"
    # The aspect ratio alone: a 4x2 map of a 64x32 input is [32, 4, 2] or [4, 2, 32].
    assert infer_layout((32, 4, 2), (64, 32)).kind == "nchw"
    assert infer_layout((4, 2, 32), (64, 32)).kind == "nhwc"
    # Neither reading fits the input (a 17x40 "map" of a 32x32 input): other.
    assert infer_layout((2, 17, 40), (32, 32)).kind == "other"
    # Tokens: 196 + 1 of a 224 input is a class token and a 14x14 grid; 196 + 2 (DeiT's
    # distillation token) two; 49 + 1 of ViT-B/32.
    assert infer_layout((197, 768), (224, 224)) == LayerLayout(
        "tokens", (197, 768), grid=(14, 14), class_tokens=1
    )
    assert infer_layout((197, 768), (224, 224)).map_shape == (768, 14, 14)
    assert infer_layout((198, 768), (224, 224)).class_tokens == 2
    assert infer_layout((50, 768), (224, 224)).grid == (7, 7)
    # A non-square input: 4x8 patches of 16 on 64x128, no class token.
    assert infer_layout((32, 96), (64, 128)) == LayerLayout("tokens", (32, 96), grid=(4, 8))
    # Token counts that no patch grid of the input explains (35 - k is no square for k up
    # to 8): other.
    assert infer_layout((35, 64), (224, 224)).kind == "other"
    # The same with a second input size in which T follows the input and C does not:
    # tokens without a grid, which no method can lay out on the input.
    no_grid = infer_layout((35, 64), (224, 224), (77, 64), (336, 336))
    assert no_grid == LayerLayout("tokens", (35, 64)) and no_grid.map_shape is None
    assert infer_layout((10,), (32, 32)).kind == "vector"


def test_tokens_are_laid_out_in_the_patch_embeddings_raster_order(served) -> None:
    """What torchvision's ViT does to its patch embedding (flatten, transpose, prepend the
    class token), to_maps undoes: the class token dropped, token 1 + y * gw + x at (y, x)."""
    _, models, twins = served
    twin = twins["vit"]
    x = inputs("vit", 2)
    with torch.no_grad():
        conv = twin.conv_proj(x)  # [2, 32, 4, 4]
        tokens = torch.cat([twin.class_token.expand(2, -1, -1), twin._process_input(x)], dim=1)
    layout = models["vit"].layer_layouts["encoder.ln"]
    assert torch.equal(layout.to_maps(tokens), conv)
    nhwc = models["swin"].layer_layouts["features.1"]
    t = torch.randn(2, 8, 8, 16)
    assert torch.equal(nhwc.to_maps(t), t.permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------- refusals


def refusal(address: str, call: str, request) -> tuple[grpc.StatusCode, str, str]:
    """(status, the BadRequest field, the message) of a refused Explain or Visualize."""
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            if call == "Visualize":
                list(stub.Visualize(request, timeout=60))
            else:
                stub.Explain(request, timeout=60)
    err = info.value
    status = rpc_status.from_call(err)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    return err.code(), bad.field_violations[0].field, err.details()


def explain_request(model: str, method: str, **fields) -> pb.ExplainRequest:
    x = inputs(model, 1)[0].numpy()
    return pb.ExplainRequest(
        model=model,
        method=getattr(pb, f"METHOD_{method.upper()}"),
        input=pb.Input(tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=x.shape, data=x.tobytes())),
        **fields,
    )


NO_GRID = "tokens [T, C] (no patch grid fits the input)"


def test_the_row_token_layer_is_tokens_no_grid_explains(served) -> None:
    _, models, _ = served
    model = models["rows"]
    assert model.layer_layouts["mix"] == LayerLayout("tokens", (19, 8))
    assert model.default_cam_layer == "relu"


@pytest.mark.parametrize("method", ["grad_cam", "guided_grad_cam"])
def test_cam_methods_refuse_tokens_without_a_patch_grid(served, method) -> None:
    address, _, _ = served
    code, field, details = refusal(
        address, "Explain", explain_request("rows", method, layers=["mix"])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "layers"
    for fragment in (
        f"method {method} needs a feature map of the input (channels-first [C, h, w], "
        "channels-last [h, w, C] or tokens on a patch grid)",
        "'mix' gives [19, 8]",
        NO_GRID,
        "use 'relu' instead",
    ):
        assert fragment in details, details


def test_cam_methods_refuse_vectors_naming_the_layouts_they_take(served) -> None:
    address, _, _ = served
    code, field, details = refusal(
        address, "Explain", explain_request("vit", "grad_cam", layers=["heads.head"])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "layers"
    assert "needs a layer with a spatial output [C, h, w], [h, w, C] or tokens" in details
    assert f"'heads.head' gives [10] (default: '{VIT_LAST_NORM}')" in details


def test_top_k_channels_is_refused_on_tokens_without_a_grid(served) -> None:
    address, _, _ = served
    req = explain_request("rows", "activations", layers=["mix"], top_k_channels=3)
    code, field, details = refusal(address, "Explain", req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "top_k_channels"
    assert "top_k_channels ranks the feature axis of a layer laid out on the input" in details
    assert "[19, 8], " + NO_GRID in details and "which cannot be laid out on the input" in details


@pytest.mark.parametrize("method", ["guided_backprop", "saliency"])
def test_neuron_targets_are_refused_on_tokens_without_a_grid(served, method) -> None:
    address, _, _ = served
    for neuron in (pb.Neuron(layer="mix", channel=1), pb.Neuron(layer="mix", channel=1, y=1, x=1)):
        req = explain_request("rows", method, target=pb.Target(neuron=neuron))
        code, field, details = refusal(address, "Explain", req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "target.neuron.layer"
        assert "a neuron's channel indexes the feature axis of a layer laid out" in details
        assert NO_GRID in details and "use 'relu' instead" in details, details


def test_neuron_objectives_are_refused_on_tokens_without_a_grid(served) -> None:
    address, _, _ = served
    for neuron in (pb.Neuron(layer="mix", channel=1), pb.Neuron(layer="mix", channel=1, y=1, x=1)):
        req = pb.VisualizeRequest(model="rows", objective=pb.Objective(neuron=neuron), steps=2)
        code, field, details = refusal(address, "Visualize", req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert field == "objective.neuron.layer", field
        assert NO_GRID in details, details


def test_neuron_channels_beyond_the_feature_axis_are_refused_in_its_words(served) -> None:
    address, _, _ = served
    req = explain_request(
        "swin", "saliency", target=pb.Target(neuron=pb.Neuron(layer="features.1", channel=16))
    )
    code, field, details = refusal(address, "Explain", req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "target.neuron.channel"
    assert "must be in [0, 16) for layer 'features.1' (its channels-last [h, w, C] output, " in (
        details
    )
    assert "read as [C, h, w] = [16, 8, 8])" in details


def test_activations_of_tokens_without_a_grid_come_back_raw_with_a_warning(served) -> None:
    address, _, twins = served
    twin = twins["rows"]
    x = inputs("rows", 2)
    with deepvis.Client(address, timeout=60) as client:
        results = client.explain_batch(list(x.numpy()), model="rows", method="activations",
                                       layer=["mix"])  # fmt: skip
    ref = LayerActivation(twin, twin.mix).attribute(x.clone())
    assert relative_error(np.stack([r.array for r in results]), ref.numpy()) <= TOL
    for r in results:
        assert len(r.warnings) == 1 and "'mix' gives [19, 8], " + NO_GRID in r.warnings[0]
        assert "without a grid or heatmap picture" in r.warnings[0]
        assert r.image is None and not any(k.startswith("mix") for k in r.images)


# ---------------------------------------------------------------------------- answers


CAM_CASES = [
    # (model, layer or None for the default, the oracle's reshape_transform)
    ("vit", None, vit_reshape_transform(4, 4)),  # the last block's ln_1, tokens
    # tokens, another layer (the output of the last block, or the encoder's final norm,
    # would give zero: their patch tokens reach the class token through no attention)
    ("vit", "encoder.layers.encoder_layer_0", vit_reshape_transform(4, 4)),
    ("swin", None, None),  # permute, channels-first
    ("swin", "features.3", swin_reshape_transform),  # the last stage, channels-last
    ("swin", "features.1", swin_reshape_transform),
    ("swin_t", "features.7", swin_reshape_transform),
    ("convnext", None, None),  # features.3, its last stage
    ("convnext", "features.1.0.block.3", swin_reshape_transform),  # inside a block: NHWC
]


@pytest.mark.parametrize(("model", "layer", "reshape"), CAM_CASES)
def test_grad_cam_equals_pytorch_grad_cam_with_its_reshape_transform(
    served, model, layer, reshape
) -> None:
    address, models, twins = served
    twin = twins[model]
    x = inputs(model)
    with deepvis.Client(address, timeout=120) as client:
        results = client.explain_batch(
            list(x.numpy()), model=model, method="grad_cam", targets=TARGETS, layer=layer,
            render=False,
        )  # fmt: skip
    name = layer or models[model].default_cam_layer
    targets = resolved(twin, x)
    assert [r.target for r in results] == targets
    assert max(r.batch_size for r in results) > 1
    ref = pytorch_grad_cam(twin, module(twin, name), x, targets, reshape)
    got = np.stack([r.arrays["cam"] for r in results])
    assert got.shape == ref.shape == (len(TARGETS), *models[model].view_shape(name)[1:])
    assert relative_error(got, ref) <= TOL
    up = F.interpolate(torch.from_numpy(ref)[:, None], size=x.shape[2:], mode="bilinear")
    assert relative_error(np.stack([r.array for r in results]), up[:, 0].numpy()) <= TOL


def test_guided_grad_cam_on_vit_is_the_gradient_times_the_token_map(served) -> None:
    """No ReLU in a ViT: the guided gradient is the plain one (with the GELU warning), times
    the up-sampled Grad-CAM of the token layer."""
    address, _, twins = served
    twin = twins["vit"]
    x = inputs("vit")
    with deepvis.Client(address, timeout=120) as client:
        results = client.explain_batch(
            list(x.numpy()), model="vit", method="guided_grad_cam", targets=TARGETS,
            render=False,
        )  # fmt: skip
    targets = resolved(twin, x)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(twin(xg).gather(1, torch.tensor(targets)[:, None]).sum(), xg)
    cam = pytorch_grad_cam(
        twin, module(twin, VIT_LAST_NORM), x, targets, vit_reshape_transform(4, 4)
    )
    up = F.interpolate(torch.from_numpy(cam)[:, None], size=x.shape[2:], mode="bilinear")
    assert relative_error(np.stack([r.array for r in results]), (grad * up).numpy()) <= TOL
    assert all(any("gelu" in w for w in r.warnings) for r in results)


def test_activations_of_a_channels_last_layer_come_back_permuted_with_pictures(served) -> None:
    address, _, twins = served
    twin = twins["swin"]
    x = inputs("swin")
    with deepvis.Client(address, timeout=60) as client:
        results = client.explain_batch(
            list(x.numpy()), model="swin", method="activations", layer=["features.1", "head"]
        )
        top = client.explain(x[0].numpy(), model="swin", method="activations",
                             layer="features.1", top_k_channels=4)  # fmt: skip
    ref = LayerActivation(twin, module(twin, "features.1")).attribute(x.clone())
    maps = ref.permute(0, 3, 1, 2).numpy()  # [N, 16, 8, 8]
    got = np.stack([r.array for r in results])
    assert got.shape == (len(x), 16, 8, 8)
    assert relative_error(got, maps) <= TOL
    for r in results:
        assert r.warnings == []
        assert {"features.1.grid", "features.1.heatmap"} <= set(r.images)
    # top-k ranks the feature axis: the 16 channels' means over the 8x8 map.
    means = maps[0].reshape(16, -1).mean(1)
    assert list(top.arrays["features.1.channels"]) == list(np.argsort(-means, kind="stable")[:4])
    assert relative_error(top.array, maps[0][top.arrays["features.1.channels"]]) <= TOL


def test_activations_of_a_token_layer_come_back_on_the_patch_grid(served) -> None:
    address, _, twins = served
    twin = twins["vit"]
    x = inputs("vit")
    with deepvis.Client(address, timeout=60) as client:
        results = client.explain_batch(
            list(x.numpy()), model="vit", method="activations", layer=["encoder.ln", "conv_proj"]
        )
    ref = LayerActivation(twin, twin.encoder.ln).attribute(x.clone())  # [N, 17, 32]
    grid = vit_reshape_transform(4, 4)(ref).numpy()
    got = np.stack([r.array for r in results])
    assert got.shape == (len(x), 32, 4, 4)
    assert relative_error(got, grid) <= TOL
    tokens = np.stack([r.arrays["encoder.ln.class_tokens"] for r in results])
    assert tokens.shape == (len(x), 1, 32)
    assert relative_error(tokens, ref[:, :1].numpy()) <= TOL
    # encoder.ln is a LayerNorm: the mean over its channels, which its heatmap draws, is zero
    # up to rounding, and the answer says that picture is drawn neutral.
    flat = np.abs(grid.mean(axis=1)).max(axis=(1, 2)) < deepvis.render.ZERO_BELOW
    for r, neutral in zip(results, flat, strict=True):
        notes = ["map is zero everywhere" in w for w in r.warnings]
        assert notes == ([True] if neutral else []), r.warnings
        assert "conv_proj.class_tokens" not in r.arrays
        assert {"encoder.ln.grid", "encoder.ln.heatmap", "conv_proj.grid"} <= set(r.images)


NEURON_CASES = [
    # (model, layer, the neuron, Captum's selector on the layer's own output)
    ("swin", "features.1", deepvis.Neuron("features.1", 5, 1, 2), (1, 2, 5)),
    ("swin", "features.1", deepvis.Neuron("features.1", 5), lambda out: out[..., 5].sum((1, 2))),
    ("vit", "encoder.ln", deepvis.Neuron("encoder.ln", 3, 2, 1), (1 + 2 * 4 + 1, 3)),
    ("vit", "encoder.ln", deepvis.Neuron("encoder.ln", 3), lambda out: out[:, 1:, 3].sum(1)),
    ("swin", "permute", deepvis.Neuron("permute", 5, 1, 2), (5, 1, 2)),
]


@pytest.mark.parametrize(("model", "layer", "neuron", "selector"), NEURON_CASES)
def test_neuron_targets_index_the_feature_axis_and_the_grid(
    served, model, layer, neuron, selector
) -> None:
    address, _, twins = served
    twin = twins[model]
    x = inputs(model, 2)
    with deepvis.Client(address, timeout=60) as client:
        results = client.explain_batch(list(x.numpy()), model=model, targets=neuron, render=False)
    # No ReLU in these models: Captum's guided backprop is the neuron's plain gradient.
    ref = NeuronGuidedBackprop(twin, module(twin, layer)).attribute(x.clone(), selector)
    assert all(r.target == neuron for r in results)
    assert relative_error(np.stack([r.array for r in results]), ref.numpy()) <= TOL


def test_activations_of_swin_permute_keep_top_k_and_pictures(served) -> None:
    address, _, twins = served
    twin = twins["swin"]
    x = inputs("swin", 1)
    with deepvis.Client(address, timeout=60) as client:
        res = client.explain(x[0].numpy(), model="swin", method="activations", top_k_channels=4)
    ref = LayerActivation(twin, twin.permute).attribute(x.clone())[0].numpy()
    idx = res.arrays["permute.channels"]
    means = ref.reshape(ref.shape[0], -1).mean(1)
    assert list(idx) == list(np.argsort(-means, kind="stable")[:4])
    assert relative_error(res.array, ref[idx]) <= TOL
    # The layer follows a LayerNorm: the mean over its channels, which the heatmap draws, is
    # zero up to rounding, and the answer says its picture is drawn neutral for that.
    mean_map = np.abs(ref.mean(axis=0)).max()
    if mean_map < deepvis.render.ZERO_BELOW:
        assert len(res.warnings) == 1 and "map is zero everywhere" in res.warnings[0]
    else:
        assert res.warnings == []
    assert {"permute.grid", "permute.heatmap"} <= set(res.images)


OBJECTIVES = [
    # (model, the objective, its value on an image's layer output, written out here)
    ("vit", deepvis.Neuron("encoder.ln", 3, 2, 1), lambda out: out[:, 1 + 2 * 4 + 1, 3]),
    ("vit", deepvis.Neuron("encoder.ln", 3), lambda out: out[:, 1:, 3].mean(1)),
    ("vit", deepvis.Layer("encoder.ln"), lambda out: out[:, 1:].pow(2).mean((1, 2))),
    ("swin", deepvis.Neuron("features.1", 5, 1, 2), lambda out: out[:, 1, 2, 5]),
    ("swin", deepvis.Neuron("features.1", 5), lambda out: out[..., 5].mean((1, 2))),
    ("swin", deepvis.Layer("features.1"), lambda out: out.pow(2).mean((1, 2, 3))),
]


@pytest.mark.parametrize(("model", "objective", "value"), OBJECTIVES)
def test_feature_visualization_objectives_read_the_map_of_the_layer(
    served, model, objective, value
) -> None:
    """The result's objective is that of the returned images as the twin sees them."""
    address, models, twins = served
    twin = twins[model]
    with deepvis.Client(address, timeout=120) as client:
        res = client.visualize(objective, model=model, steps=3, batch=2, seed=4)
    spec = models[model].spec
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    x = (torch.from_numpy(res.array.copy()) - mean) / std
    name = objective.name if isinstance(objective, deepvis.Layer) else objective.layer
    out = LayerActivation(twin, module(twin, name)).attribute(x)
    expected = value(out).numpy().astype(np.float64)
    assert abs(res.objective - expected.mean()) <= 1e-5 * max(1.0, abs(expected).max())


def test_the_diversity_term_compares_channels_of_the_map(served) -> None:
    """The rows a render step scores, and its diversity term compares (gram matrices of the
    channels), are the layer's map [N, C, h, w], not its tokens."""
    _, models, _ = served
    model = models["vit"]
    batch = RenderBatch(model)
    batch.add(RenderJob(Channel("encoder.ln", 3), steps=2, batch=2, diversity=1.0, seed=0))
    x = inputs("vit", 2)
    _, outputs = batch._forward(x, {"encoder.ln"})
    assert outputs["encoder.ln"].shape == (2, 32, 4, 4)
    events = batch.step() + batch.step()
    assert events[-1].result is not None and np.isfinite(events[-1].objective)


def test_describe_model_reports_each_layers_layout_and_the_suggested_layer(served) -> None:
    address, models, _ = served
    with deepvis.Client(address, timeout=30) as client:
        descs = {name: client.describe(name) for name in ("vit", "swin", "convnext", "rows")}
    for name, desc in descs.items():
        model = models[name]
        by_name = {layer.name: layer for layer in desc.layers}
        for layer, layout in model.layer_layouts.items():
            info = by_name[layer]
            kind = {"nchw": "channels_first", "nhwc": "channels_last"}.get(layout.kind)
            assert info.layout == (kind or layout.kind), (name, layer)
            assert info.map_shape == (layout.map_shape or ())
            assert info.class_tokens == layout.class_tokens
        assert desc.default_cam_layer == model.default_cam_layer
        assert desc.default_cam_layer_note == model.default_cam_note
        # Layers without a tensor output have no layout.
        assert all(x.layout == "" for x in desc.layers if not x.output_shape)
    vit = {layer.name: layer for layer in descs["vit"].layers}
    assert (vit["encoder.ln"].layout, vit["encoder.ln"].class_tokens) == ("tokens", 1)
    assert vit["encoder.ln"].map_shape == (32, 4, 4)
    assert vit["encoder.layers.encoder_layer_0.self_attention"].layout == ""  # a tuple
    assert descs["vit"].attention_layers == models["vit"].attention_layers
    swin = {layer.name: layer for layer in descs["swin"].layers}
    assert (swin["features.3"].layout, swin["features.3"].map_shape) == (
        "channels_last",
        (32, 4, 4),
    )
    rows = {layer.name: layer for layer in descs["rows"].layers}
    assert (rows["mix"].layout, rows["mix"].map_shape) == ("tokens", ())
    assert rows["fc"].layout == "vector"
