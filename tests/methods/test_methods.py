"""Activations, Grad-CAM, Guided Grad-CAM, deconvolution, neuron guided backprop, saliency and
integrated gradients, served in batches with mixed targets, equal Captum's on the default model
and five torchvision models (integrated gradients, 50 passes a batch: on three of them)."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerActivation,
    LayerAttribution,
    LayerGradCam,
    NeuronGuidedBackprop,
    Saliency,
)
from torch import nn

import deepvis
from oracles import relative_error
from zoo import METHOD_MODELS

TOL = 1e-5
IG_TOL = 2e-3
N_ITEMS = 4
TARGETS = [3, None, 7, 3]


class DenseNetModuleReLU(torchvision.models.DenseNet):
    """torchvision's DenseNet with its final functional ReLU as a module: Captum's hooks see
    only modules, so this twin is the oracle for what the guided rule must give on DenseNet."""

    def __init__(self, **kwargs) -> None:
        super().__init__(32, (6, 12, 24, 16), 64, **kwargs)
        self.final_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final_relu(self.features(x))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def oracle_twin(zoo_model) -> nn.Module:
    if zoo_model.name != "densenet121":
        return zoo_model.module
    twin = DenseNetModuleReLU(num_classes=10)
    twin.load_state_dict(zoo_model.module.state_dict())
    return twin.eval()


def serve_batch(address: str, model: str, xs: list[np.ndarray], **kwargs) -> list:
    """Sends the items in one ExplainBatch call, each with its own target, so that they run
    as one batch: the oracle's batch. (Sent as concurrent Explain calls, a loaded machine can
    split them, and a near-tie at a ReLU or max-pool flips with the last bit of a
    convolution, which differs between batch sizes; that sharing is tested on its own in
    tests/methods/test_guided_backprop.py.)"""
    with deepvis.Client(address, timeout=120) as client:
        return client.explain_batch(xs, model=model, targets=TARGETS, render=False, **kwargs)


@pytest.fixture(scope="module")
def matrix(zoo, digits_server, digits_twin):
    """(address, model name, oracle twin, inputs, resolved targets, default CAM layer) per model."""
    server, twins = zoo
    cases = {}
    rng = np.random.default_rng(7)
    for name in METHOD_MODELS:
        twin = oracle_twin(twins[name])
        xs = [
            rng.standard_normal(twins[name].input_shape).astype(np.float32) for _ in range(N_ITEMS)
        ]
        cases[name] = (server.bound_address, name, twin, xs)
    xs = [rng.standard_normal((1, 32, 32)).astype(np.float32) for _ in range(N_ITEMS)]
    cases["digits"] = (digits_server.bound_address, "digits", digits_twin, xs)
    # The oracle runs on the server's device: on a GPU host, CPU and CUDA kernels round
    # differently and can flip a ReLU mask at a near-zero input, which is not what is tested.
    device = server.engine.device
    out = {}
    for key, (address, name, twin, xs) in cases.items():
        with deepvis.Client(address, timeout=60) as client:
            layer = client.describe(name).default_cam_layer
        twin = twin if device.type == "cpu" else copy.deepcopy(twin).to(device)
        batch = torch.from_numpy(np.stack(xs)).to(device)
        with torch.no_grad():
            predicted = twin(batch).argmax(1).tolist()
        targets = [t if t is not None else p for t, p in zip(TARGETS, predicted, strict=True)]
        out[key] = (address, name, twin, batch, targets, layer)
    return out


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


ALL = ["digits", *METHOD_MODELS]


def stacked(results, attr: str = "array", key: str | None = None) -> np.ndarray:
    return np.stack([getattr(r, attr) if key is None else r.arrays[key] for r in results])


def check_batched(results, targets) -> None:
    assert [r.target for r in results] == targets
    assert max(r.batch_size for r in results) > 1, "the concurrent requests never shared a batch"


@pytest.mark.parametrize("key", ALL)
def test_activations_equal_layer_activation(matrix, key) -> None:
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="activations", layer=layer)
    assert max(r.batch_size for r in results) > 1
    ref = LayerActivation(twin, dict(twin.named_modules())[layer]).attribute(batch.clone())
    assert relative_error(stacked(results), np_(ref)) <= TOL
    assert relative_error(stacked(results, key=layer), np_(ref)) <= TOL


@pytest.mark.parametrize("key", ALL)
def test_grad_cam_equals_layer_grad_cam(matrix, key) -> None:
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="grad_cam", layer=layer)
    check_batched(results, targets)
    gc = LayerGradCam(twin, dict(twin.named_modules())[layer])
    raw = gc.attribute(batch.clone(), target=targets, relu_attributions=True).detach()
    up = LayerAttribution.interpolate(raw, tuple(batch.shape[2:]), interpolate_mode="bilinear")
    assert relative_error(stacked(results), np_(up[:, 0])) <= TOL
    assert relative_error(stacked(results, key="cam"), np_(raw[:, 0])) <= TOL


@pytest.mark.parametrize("key", ALL)
def test_guided_grad_cam_equals_captum(matrix, key) -> None:
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="guided_grad_cam", layer=layer)
    check_batched(results, targets)
    ref = GuidedGradCam(twin, dict(twin.named_modules())[layer]).attribute(
        batch.clone(), target=targets, interpolate_mode="bilinear"
    )
    assert relative_error(stacked(results), np_(ref)) <= TOL


@pytest.mark.parametrize("key", ALL)
def test_deconvolution_equals_captum(matrix, key) -> None:
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="deconvolution")
    check_batched(results, targets)
    ref = Deconvolution(twin).attribute(batch.clone(), target=targets)
    assert relative_error(stacked(results), np_(ref)) <= TOL


@pytest.mark.parametrize("key", ALL)
def test_guided_backprop_equals_captum(matrix, key) -> None:
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="guided_backprop")
    check_batched(results, targets)
    ref = GuidedBackprop(twin).attribute(batch.clone(), target=targets)
    assert relative_error(stacked(results), np_(ref)) <= TOL


@pytest.mark.parametrize("key", ALL)
def test_saliency_equals_captum(matrix, key) -> None:
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="saliency")
    check_batched(results, targets)
    ref = Saliency(twin).attribute(batch.clone(), target=targets, abs=True)
    assert relative_error(stacked(results), np_(ref)) <= TOL


@pytest.mark.parametrize("key", ["digits", "resnet18", "vgg11_bn"])
def test_integrated_gradients_equal_captum(matrix, key) -> None:
    """From the all-zero input, 50 Gauss-Legendre steps: Captum's defaults. The predicted
    class (target None) is the input's, not that of a scaled copy."""
    address, name, twin, batch, targets, layer = matrix[key]
    results = serve_batch(address, name, list(np_(batch)), method="integrated_gradients")
    check_batched(results, targets)
    ref = IntegratedGradients(twin).attribute(
        batch.clone(), target=targets, n_steps=50, method="gausslegendre"
    )
    # Looser than the other methods' 1e-5: the 50 scaled copies run near zero, where the
    # convolution kernels a batch size picks round differently enough to flip a few ReLU
    # masks (vgg11_bn: 4e-5 to 7e-4 of the largest value, by how the server batched them).
    assert relative_error(stacked(results), np_(ref)) <= IG_TOL


@pytest.mark.parametrize("key", ALL)
def test_neuron_guided_backprop_equals_captum(matrix, key) -> None:
    address, name, twin, batch, _, layer = matrix[key]
    module = dict(twin.named_modules())[layer]
    with torch.no_grad():
        shape = LayerActivation(twin, module).attribute(batch[:1].clone()).shape[1:]
    neurons = [
        deepvis.Neuron(layer, c % shape[0], c % shape[1], (c + 1) % shape[2]) for c in (1, 5, 9, 13)
    ]
    results: list = [None] * N_ITEMS
    with deepvis.Client(address, timeout=120) as client:

        def call(i: int) -> None:
            results[i] = client.explain(np_(batch[i]), model=name, target=neurons[i], render=False)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(N_ITEMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(r.batch_size for r in results) > 1
    ngb = NeuronGuidedBackprop(twin, module)
    refs = [
        np_(ngb.attribute(batch[i : i + 1].clone(), (n.channel, n.y, n.x))[0])
        for i, n in enumerate(neurons)
    ]
    assert [r.target for r in results] == neurons
    assert relative_error(stacked(results), np.stack(refs)) <= TOL


def test_top_k_channels_and_several_layers(digits_server, digits_twin, sample_paths) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        res = client.explain(
            str(sample_paths[2]), method="activations", layer=["conv2", "conv3"], top_k_channels=5
        )
    full = {n: LayerActivation(digits_twin, getattr(digits_twin, n)) for n in ("conv2", "conv3")}
    from oracles import preprocess_digit

    inp = torch.from_numpy(preprocess_digit(sample_paths[2]))[None]
    for layer in ("conv2", "conv3"):
        ref = full[layer].attribute(inp.clone())[0].detach().numpy()
        idx = res.arrays[f"{layer}.channels"]
        assert idx.dtype == np.int64 and len(idx) == 5
        means = ref.reshape(ref.shape[0], -1).mean(1)
        assert list(idx) == list(np.argsort(-means, kind="stable")[:5])
        assert relative_error(res.arrays[layer], ref[idx]) <= TOL
        assert {f"{layer}.grid", f"{layer}.heatmap"} <= set(res.images)
    assert res.array is not None and res.array.shape == (5, 16, 16)  # the first layer's top-5


def test_functional_relu_twin_for_every_relu_method(zoo) -> None:
    server, _ = zoo
    x = np.random.default_rng(3).standard_normal((3, 16, 16)).astype(np.float32)
    with deepvis.Client(server.bound_address, timeout=30) as client:
        for method in ("guided_backprop", "deconvolution", "guided_grad_cam"):
            a = client.explain(
                x, model="module_relu", method=method, target=1, layer="conv3", render=False
            )
            b = client.explain(
                x, model="functional_relu", method=method, target=1, layer="conv3", render=False
            )
            assert relative_error(b.array, a.array) <= TOL, method


def test_non_relu_activations_are_reported(matrix) -> None:
    address, name, _, batch, _, _ = matrix["efficientnet_b0"]
    with deepvis.Client(address, timeout=60) as client:
        desc = client.describe(name)
        assert "silu" in desc.non_relu_activations
        res = client.explain(np_(batch[0]), model=name, method="guided_backprop", render=False)
        assert any("silu" in w for w in res.warnings)
        address, name, _, batch, _, _ = matrix["resnet18"]
    with deepvis.Client(address, timeout=60) as client:
        res = client.explain(np_(batch[0]), model=name, method="guided_backprop", render=False)
        assert res.warnings == []


def test_describe_model_lists_layers(digits_server) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        desc = client.describe("digits")
    layers = {layer.name: layer for layer in desc.layers}
    assert desc.default_cam_layer == "conv3"
    assert layers["conv3"].type == "Conv2d" and layers["conv3"].output_shape == (64, 8, 8)
    assert layers["relu"].calls == 3
    assert layers["fc"].output_shape == (10,)
    assert desc.non_relu_activations == ()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "grad_cam", "layer": "fc"}, "spatial output"),
        ({"method": "grad_cam", "layer": "nope"}, "not a layer"),
        ({"method": "grad_cam", "layer": ["conv2", "conv3"]}, "at most 1"),
        ({"method": "activations", "layer": ["conv2", "conv2"]}, "repeat"),
        ({"method": "activations", "layer": ["fc.weight"]}, "not a layer"),
        ({"method": "activations", "layer": ["..x"]}, "not a layer"),
    ],
)
def test_bad_layer_requests(digits_server, kwargs, fragment) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        with pytest.raises(deepvis.InvalidArgument) as info:
            client.explain(np.zeros((32, 32), np.uint8), **kwargs)
    assert fragment in info.value.details


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"layers": [""]}, "not a layer"),
        ({"layers": ["__class__"]}, "not a layer"),
        ({"top_k_channels": -1}, "top_k_channels"),
        ({"layers": ["conv1"] * 17}, "at most 16"),
    ],
)
def test_bad_layer_fields_over_raw_grpc(digits_server, fields, fragment) -> None:
    """What the client library refuses locally, the server refuses too (other clients exist)."""
    import grpc

    from deepvis.v1 import deepvis_pb2 as pb
    from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

    req = pb.ExplainRequest(
        model="digits",
        method=pb.METHOD_ACTIVATIONS,
        input=pb.Input(pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=bytes(1024))),
        **fields,
    )
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ExplainerStub(ch).Explain(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()
