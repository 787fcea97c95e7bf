"""Layer layouts recorded at load time (channels-first, channels-last, tokens, vectors), and
the methods' answers by layout: channels-last (Swin) and token (ViT) layers are refused where
a method would read their first axis as channels, and still answered where it would not."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
import torchvision
from captum.attr import LayerActivation, LayerAttribution, LayerGradCam, NeuronGuidedBackprop
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from safetensors.torch import save_file

import deepvis
import toy_models
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import parse_config
from deepvis_server.models import LayerLayout, ServedModel, infer_layout
from deepvis_server.server import serve_in_thread
from oracles import relative_error

TOL = 1e-5
TARGETS = [3, None, 7, 3]

# name: (arch, classes, input size); random weights saved to files and served by config.
SPECS = {
    "vit": ("toy_models:tiny_vit", 10, (32, 32)),
    "swin": ("toy_models:tiny_swin", 10, (32, 32)),
    "convnext": ("toy_models:tiny_convnext", 10, (32, 32)),
    "swin_t": ("swin_t", 10, (64, 64)),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, dict[str, ServedModel], dict]]:
    """(address, the server's loaded models, the twins: the same weights built here)."""
    root = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(11)
    tables, twins = [], {}
    for name, (arch, k, size) in SPECS.items():
        if ":" in arch:
            twin = getattr(toy_models, arch.partition(":")[2])(num_classes=k)
        else:
            twin = torchvision.models.get_model(arch, weights=None, num_classes=k)
        twin = twin.eval().requires_grad_(False)
        path = root / f"{name}.safetensors"
        save_file({n: t.contiguous() for n, t in twin.state_dict().items()}, str(path))
        tables.append(
            {
                "name": name,
                "arch": arch,
                "weights": str(path),
                "num_classes": k,
                "input_size": list(size),
                "max_batch_size": 8,
                "max_delay_ms": 50.0,
            }
        )
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
    assert layouts["features.1"] == LayerLayout(
        "nhwc", (h // 4, w // 4, embed), grid=(h // 4, w // 4)
    )
    assert layouts["features.1"].channels == embed
    assert layouts["permute"] == LayerLayout("nchw", (last[2], *last[:2]), grid=last[:2])
    assert layouts["head"].kind == "vector"
    assert model.default_cam_layer == "permute"
    assert model.last_feature_layer == "permute"


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
    assert layouts["encoder.layers.encoder_layer_0.mlp.0"].channels == 64
    assert layouts["conv_proj"] == LayerLayout("nchw", (32, 4, 4), grid=(4, 4))
    assert layouts["heads.head"].kind == "vector"
    # Its only channels-first map is the patch embedding, before every block: no default.
    assert model.default_cam_layer == ""
    assert model.channels_first_layer == "conv_proj"
    assert model.last_feature_layer == "encoder"


def test_convnext_stages_are_channels_first(served) -> None:
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
    assert model.default_cam_layer == "features"


def test_convolutional_models_are_channels_first_everywhere_spatial(zoo, digits_server) -> None:
    server, _ = zoo
    for model in (server.engine.models["resnet18"], digits_server.engine.models["digits"]):
        kinds = {n: lay.kind for n, lay in model.layer_layouts.items()}
        assert set(kinds) == set(model.layer_shapes)
        for layer, shape in model.layer_shapes.items():
            assert kinds[layer] == ("nchw" if len(shape) == 3 else "vector"), (layer, shape)
    assert server.engine.models["resnet18"].default_cam_layer == "layer4"
    assert digits_server.engine.models["digits"].default_cam_layer == "conv3"


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
    assert infer_layout((198, 768), (224, 224)).class_tokens == 2
    assert infer_layout((50, 768), (224, 224)).grid == (7, 7)
    # A non-square input: 4x8 patches of 16 on 64x128, no class token.
    assert infer_layout((32, 96), (64, 128)) == LayerLayout("tokens", (32, 96), grid=(4, 8))
    # Token counts that no patch grid of the input explains (35 - k is no square for k up
    # to 8): other.
    assert infer_layout((35, 64), (224, 224)).kind == "other"
    # The same with a second input size in which T follows the input and C does not:
    # tokens without a grid.
    assert infer_layout((35, 64), (224, 224), (77, 64), (336, 336)) == LayerLayout(
        "tokens", (35, 64)
    )
    assert infer_layout((10,), (32, 32)).kind == "vector"


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


CAM_REFUSALS = [
    # (model, layer, fragments of the message)
    ("swin", "features.3", ["channels-last [h, w, C]", "[4, 4, 32]", "use 'permute' instead"]),
    ("swin", "norm", ["channels-last [h, w, C]", "'permute'", "[32, 4, 4]"]),
    ("swin_t", "features.5", ["channels-last [h, w, C]", "[4, 4, 384]", "'permute'"]),
    (
        "vit",
        "encoder.layers.encoder_layer_1",
        ["tokens [T, C] (1 class token and a 4x4 patch grid)", "[17, 32]", "'conv_proj'"],
    ),
    ("convnext", "features.1.0.block.3", ["channels-last", "[8, 8, 64]", "use 'features'"]),
    ("vit", "encoder.layers.encoder_layer_0.mlp.0", ["tokens", "[17, 64]"]),
]


@pytest.mark.parametrize("method", ["grad_cam", "guided_grad_cam"])
@pytest.mark.parametrize(("model", "layer", "fragments"), CAM_REFUSALS)
def test_cam_methods_refuse_channels_last_and_token_layers(
    served, method, model, layer, fragments
) -> None:
    address, _, _ = served
    code, field, details = refusal(
        address, "Explain", explain_request(model, method, layers=[layer])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field == "layers"
    assert f"method {method} needs a channels-first feature map [C, h, w]" in details
    assert f"'{layer}'" in details
    for fragment in fragments:
        assert fragment in details, details


@pytest.mark.parametrize("method", ["grad_cam", "guided_grad_cam", "activations"])
def test_vit_has_no_default_layer_and_says_why(served, method) -> None:
    address, _, _ = served
    code, field, details = refusal(address, "Explain", explain_request("vit", method))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "layers"
    for fragment in (
        f"method {method} needs a layer and model 'vit' has none to default to",
        "last feature maps are tokens [T, C] (1 class token and a 4x4 patch grid)",
        "'encoder' gives [17, 32]",
        "'conv_proj' [32, 4, 4], which runs before its token layers",
    ):
        assert fragment in details, details
    with deepvis.Client(address, timeout=30) as client:
        assert client.describe("vit").default_cam_layer == ""


@pytest.mark.parametrize(
    ("model", "layer", "fragment"),
    [
        ("swin", "features.1", "[8, 8, 16], channels-last [h, w, C]"),
        ("vit", "encoder.ln", "[17, 32], tokens [T, C]"),
    ],
)
def test_top_k_channels_is_refused_on_channels_last_and_token_layers(
    served, model, layer, fragment
) -> None:
    address, _, _ = served
    req = explain_request(model, "activations", layers=[layer], top_k_channels=3)
    code, field, details = refusal(address, "Explain", req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "top_k_channels"
    assert "top_k_channels ranks the first axis of a channels-first layer" in details
    assert fragment in details and "whose first axis is not its channels" in details


NEURON_REFUSALS = [
    ("swin", "features.1", "[8, 8, 16], channels-last [h, w, C]", "use 'permute' instead"),
    ("swin_t", "norm", "[2, 2, 768], channels-last [h, w, C]", "use 'permute' instead"),
    ("vit", "encoder.ln", "[17, 32], tokens [T, C]", "'conv_proj'"),
]


@pytest.mark.parametrize(("model", "layer", "fragment", "hint"), NEURON_REFUSALS)
@pytest.mark.parametrize("method", ["guided_backprop", "saliency"])
def test_neuron_targets_are_refused_on_channels_last_and_token_layers(
    served, model, layer, fragment, hint, method
) -> None:
    address, _, _ = served
    for neuron in (pb.Neuron(layer=layer, channel=1), pb.Neuron(layer=layer, channel=1, y=1, x=1)):
        req = explain_request(model, method, target=pb.Target(neuron=neuron))
        code, field, details = refusal(address, "Explain", req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field == "target.neuron.layer"
        assert "a neuron's channel indexes the first axis of a channels-first layer" in details
        assert fragment in details and hint in details, details


@pytest.mark.parametrize(("model", "layer", "fragment", "hint"), NEURON_REFUSALS)
def test_neuron_objectives_are_refused_on_channels_last_and_token_layers(
    served, model, layer, fragment, hint
) -> None:
    address, _, _ = served
    for neuron in (pb.Neuron(layer=layer, channel=1), pb.Neuron(layer=layer, channel=1, y=1, x=1)):
        req = pb.VisualizeRequest(model=model, objective=pb.Objective(neuron=neuron), steps=2)
        code, field, details = refusal(address, "Visualize", req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert field == "objective.neuron.layer", field
        assert fragment in details and hint in details, details


# ---------------------------------------------------------------------------- answers


@pytest.mark.parametrize(("model", "layer"), [("swin", "permute"), ("swin_t", "permute")])
def test_grad_cam_on_swin_permute_equals_layer_grad_cam(served, model, layer) -> None:
    address, _, twins = served
    twin = twins[model]
    x = inputs(model)
    with deepvis.Client(address, timeout=120) as client:
        results = client.explain_batch(
            list(x.numpy()), model=model, method="grad_cam", targets=TARGETS, render=False
        )
    targets = resolved(twin, x)
    assert [r.target for r in results] == targets
    assert max(r.batch_size for r in results) > 1
    raw = LayerGradCam(twin, dict(twin.named_modules())[layer]).attribute(
        x.clone(), target=targets, relu_attributions=True
    )
    up = LayerAttribution.interpolate(raw.detach(), tuple(x.shape[2:]), interpolate_mode="bilinear")
    assert relative_error(np.stack([r.array for r in results]), up[:, 0].numpy()) <= TOL
    assert (
        relative_error(np.stack([r.arrays["cam"] for r in results]), raw[:, 0].detach().numpy())
        <= TOL
    )


@pytest.mark.parametrize(("model", "layer"), [("convnext", "features"), ("vit", "conv_proj")])
def test_grad_cam_on_channels_first_layers_equals_layer_grad_cam(served, model, layer) -> None:
    address, _, twins = served
    twin = twins[model]
    x = inputs(model)
    with deepvis.Client(address, timeout=120) as client:
        results = client.explain_batch(
            list(x.numpy()),
            model=model,
            method="grad_cam",
            targets=TARGETS,
            layer=layer if model == "vit" else None,  # ConvNeXt: its default layer
            render=False,
        )
    targets = resolved(twin, x)
    raw = LayerGradCam(twin, dict(twin.named_modules())[layer]).attribute(
        x.clone(), target=targets, relu_attributions=True
    )
    up = LayerAttribution.interpolate(raw.detach(), tuple(x.shape[2:]), interpolate_mode="bilinear")
    assert relative_error(np.stack([r.array for r in results]), up[:, 0].numpy()) <= TOL


@pytest.mark.parametrize(
    ("model", "layer", "fragment"),
    [
        ("swin", "features.1", "[8, 8, 16], channels-last [h, w, C]"),
        ("vit", "encoder.ln", "[17, 32], tokens [T, C] (1 class token and a 4x4 patch grid)"),
    ],
)
def test_activations_of_channels_last_and_token_layers_come_back_raw(
    served, model, layer, fragment
) -> None:
    address, _, twins = served
    twin = twins[model]
    x = inputs(model)
    with deepvis.Client(address, timeout=60) as client:
        head = "head" if model == "swin" else "heads.head"
        results = client.explain_batch(
            list(x.numpy()), model=model, method="activations", layer=[layer, head]
        )
    ref = LayerActivation(twin, dict(twin.named_modules())[layer]).attribute(x.clone())
    got = np.stack([r.array for r in results])
    assert got.shape == tuple(ref.shape)
    assert relative_error(got, ref.numpy()) <= TOL
    for r in results:
        assert len(r.warnings) == 1 and fragment in r.warnings[0], r.warnings
        assert "without a grid or heatmap picture" in r.warnings[0]
        assert r.image is None and not any(k.startswith(layer) for k in r.images)


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


def test_neuron_target_on_swin_permute_equals_neuron_guided_backprop(served) -> None:
    address, _, twins = served
    twin = twins["swin"]
    x = inputs("swin", 1)
    neuron = deepvis.Neuron("permute", 5, 1, 2)
    with deepvis.Client(address, timeout=60) as client:
        res = client.explain(x[0].numpy(), model="swin", target=neuron, render=False)
    ref = NeuronGuidedBackprop(twin, twin.permute).attribute(x.clone(), (5, 1, 2))
    assert res.target == neuron
    assert relative_error(res.array, ref[0].numpy()) <= TOL
