"""Unit tests of the thin client: conversions, errors and CLI, against no or a fake server."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import typing
from collections.abc import AsyncGenerator, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

import deepvis
from deepvis import _cli, _convert
from deepvis._cli import main
from deepvis._exceptions import from_rpc_error
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
# Nothing listens on port 1, so connecting fails at once with UNAVAILABLE.
DEAD_ADDRESS = "127.0.0.1:1"


def _png_bytes(mode: str = "RGB", size: tuple[int, int] = (5, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


# --- input_to_pb ---------------------------------------------------------------------------


def test_input_path_and_pathlike_send_file_bytes(tmp_path: Path) -> None:
    data = _png_bytes()
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    for value in (path, str(path)):
        msg = _convert.input_to_pb(value)
        assert msg.WhichOneof("kind") == "image"
        assert msg.image == data


def test_input_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _convert.input_to_pb(tmp_path / "missing.png")


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_input_bytes_like_sends_image(wrap: Any) -> None:
    data = _png_bytes()
    msg = _convert.input_to_pb(wrap(data))
    assert msg.WhichOneof("kind") == "image"
    assert msg.image == data


def test_input_empty_bytes_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        _convert.input_to_pb(b"")


@pytest.mark.parametrize(
    ("mode", "shape"), [("L", [4, 5]), ("RGB", [4, 5, 3]), ("RGBA", [4, 5, 4])]
)
def test_input_pil_pixel_modes_send_uint8_pixels(mode: str, shape: list[int]) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    msg = _convert.input_to_pb(Image.fromarray(arr, mode))
    assert msg.WhichOneof("kind") == "pixels"
    assert msg.pixels.dtype == deepvis_pb2.DTYPE_UINT8
    assert list(msg.pixels.shape) == shape
    assert msg.pixels.data == arr.tobytes()


def test_input_pil_palette_sent_as_png() -> None:
    img = Image.new("P", (5, 4))
    img.putpalette([0, 0, 0, 255, 0, 0] * 128)
    msg = _convert.input_to_pb(img)
    assert msg.WhichOneof("kind") == "image"
    decoded = Image.open(io.BytesIO(msg.image))
    assert decoded.format == "PNG"
    assert decoded.mode == "P"
    assert decoded.size == (5, 4)


def test_input_pil_mode_png_cannot_hold_is_converted_to_pixels() -> None:
    msg = _convert.input_to_pb(Image.new("CMYK", (5, 4)))
    assert msg.WhichOneof("kind") == "pixels"
    assert list(msg.pixels.shape) == [4, 5, 3]


@pytest.mark.parametrize("shape", [[4, 5], [4, 5, 1], [4, 5, 3], [4, 5, 4]])
def test_input_uint8_array_sends_pixels(shape: list[int]) -> None:
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    msg = _convert.input_to_pb(arr)
    assert msg.WhichOneof("kind") == "pixels"
    assert msg.pixels.dtype == deepvis_pb2.DTYPE_UINT8
    assert list(msg.pixels.shape) == shape
    assert msg.pixels.data == arr.tobytes()


def test_input_non_contiguous_array_sent_in_c_order() -> None:
    base = np.arange(4 * 10 * 3, dtype=np.uint8).reshape(4, 10, 3)
    view = base[:, ::2]
    msg = _convert.input_to_pb(view)
    assert list(msg.pixels.shape) == [4, 5, 3]
    assert msg.pixels.data == np.ascontiguousarray(view).tobytes()


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [(np.float32, deepvis_pb2.DTYPE_FLOAT32), (np.float16, deepvis_pb2.DTYPE_FLOAT16)],
)
def test_input_float_chw_sends_tensor(dtype: Any, wire: int) -> None:
    arr = np.linspace(-2, 2, 3 * 4 * 5).astype(dtype).reshape(3, 4, 5)
    msg = _convert.input_to_pb(arr)
    assert msg.WhichOneof("kind") == "tensor"
    assert msg.tensor.dtype == wire
    assert list(msg.tensor.shape) == [3, 4, 5]
    assert msg.tensor.data == arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def test_input_big_endian_float_sent_little_endian() -> None:
    arr = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    msg = _convert.input_to_pb(arr)
    assert msg.tensor.dtype == deepvis_pb2.DTYPE_FLOAT32
    back = np.frombuffer(msg.tensor.data, dtype="<f4").reshape(2, 3, 4)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.zeros((3, 4, 5), np.float64), TypeError, "float32"),
        (np.zeros((4, 5), np.int32), TypeError, "uint8"),
        (np.zeros((4, 5), np.bool_), TypeError, "uint8"),
        (np.zeros((4, 5, 2), np.uint8), ValueError, r"\[H, W, C\]"),
        (np.zeros((1, 4, 5, 3), np.uint8), ValueError, r"\[H, W\]"),
        (np.zeros((0, 5), np.uint8), ValueError, "empty"),
        (np.zeros((4, 5), np.float32), ValueError, r"\[C, H, W\]"),
        (np.zeros((1, 3, 4, 5), np.float16), ValueError, r"\[C, H, W\]"),
        ([[0, 1], [2, 3]], TypeError, "file path"),
        (42, TypeError, "PIL image"),
    ],
)
def test_input_rejected(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _convert.input_to_pb(value)


# --- targets and requests ------------------------------------------------------------------


def test_target_to_pb() -> None:
    assert _convert.target_to_pb(None) is None
    assert _convert.target_to_pb(7).class_index == 7  # type: ignore[union-attr]
    assert _convert.target_to_pb(np.int64(3)).class_index == 3  # type: ignore[union-attr]
    channel = _convert.target_to_pb(deepvis.Neuron("layer4.1", 12))
    assert channel is not None and channel.WhichOneof("kind") == "neuron"
    assert channel.neuron.layer == "layer4.1" and channel.neuron.channel == 12
    assert not channel.neuron.HasField("y") and not channel.neuron.HasField("x")
    element = _convert.target_to_pb(deepvis.Neuron("conv1", 0, y=2, x=3))
    assert element is not None
    assert element.neuron.HasField("y") and (element.neuron.y, element.neuron.x) == (2, 3)
    # y = 0 is a real row, not "unset".
    zero = _convert.target_to_pb(deepvis.Neuron("conv1", 0, y=0, x=0))
    assert zero is not None and zero.neuron.HasField("y") and zero.neuron.HasField("x")


@pytest.mark.parametrize("bad", [True, 1.5, "3"])
def test_target_rejected(bad: Any) -> None:
    with pytest.raises(TypeError, match="class index"):
        _convert.target_to_pb(bad)


def test_neuron_needs_y_and_x_together() -> None:
    with pytest.raises(ValueError, match="together"):
        deepvis.Neuron("conv1", 0, y=1)


def _request(**overrides: Any) -> deepvis_pb2.ExplainRequest:
    kwargs: dict[str, Any] = dict(
        model="m",
        method="guided_backprop",
        target=None,
        layer=None,
        render=True,
        array_dtype="float32",
        top_k=5,
    )
    kwargs.update(overrides)
    return _convert.request_to_pb(np.zeros((4, 5), np.uint8), **kwargs)


def test_request_to_pb_fields() -> None:
    req = _request(target=3, array_dtype="float16", top_k=2, render=False)
    assert req.model == "m"
    assert req.method == deepvis_pb2.METHOD_GUIDED_BACKPROP
    assert req.input.WhichOneof("kind") == "pixels"
    assert req.target.class_index == 3
    assert list(req.layers) == []
    assert req.top_k_channels == 0
    assert req.output.array_dtype == deepvis_pb2.DTYPE_FLOAT16
    assert req.output.top_k == 2
    assert not req.output.render
    assert not req.output.omit_array
    assert not _request().HasField("target")
    assert _request(array=False).output.omit_array


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"array_dtype": "float64"}, "array_dtype"),
        ({"top_k": -1}, "top_k"),
        ({"method": "lime"}, "guided_backprop"),
    ],
)
def test_request_to_pb_rejects(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _request(**overrides)


# --- methods -------------------------------------------------------------------------------


def test_methods_derived_from_enum() -> None:
    assert deepvis.methods() == [
        "guided_backprop",
        "activations",
        "grad_cam",
        "guided_grad_cam",
        "deconvolution",
        "saliency",
        "integrated_gradients",
    ]
    # One name per number: the enum's first (METHOD_) name, not its short alias.
    by_number = deepvis_pb2.Method.DESCRIPTOR.values_by_number
    expected = [
        by_number[number].name.removeprefix("METHOD_").lower()
        for number in sorted(set(by_number))
        if number
    ]
    assert deepvis.methods() == expected
    for name in deepvis.methods():
        assert _convert.method_from_pb(_convert.method_to_pb(name)) == name
        assert _convert.method_to_pb(name.replace("_", "-")) == _convert.method_to_pb(name)


@pytest.mark.parametrize(
    "name", ["guided_backprop", "guided-backprop", "Guided-Backprop", "GUIDED_BACKPROP"]
)
def test_method_names_parsed(name: str) -> None:
    assert _convert.method_to_pb(name) == deepvis_pb2.METHOD_GUIDED_BACKPROP


@pytest.mark.parametrize("name", ["", "unspecified", "method_guided_backprop", "guided backprop"])
def test_unknown_method_lists_valid_names(name: str) -> None:
    with pytest.raises(ValueError, match="valid methods: guided_backprop"):
        _convert.method_to_pb(name)


def test_method_from_pb() -> None:
    assert _convert.method_from_pb(deepvis_pb2.METHOD_GUIDED_BACKPROP) == "guided_backprop"
    assert _convert.method_from_pb(99) == "method_99"


# --- responses -----------------------------------------------------------------------------


def _response(array: np.ndarray | None, wire: Any, png: bytes = b"") -> deepvis_pb2.ExplainResponse:
    resp = deepvis_pb2.ExplainResponse(
        model="resnet18",
        method=deepvis_pb2.METHOD_GUIDED_BACKPROP,
        image_png=png,
        predictions=[
            deepvis_pb2.Prediction(index=281, label="tabby", score=0.75),
            deepvis_pb2.Prediction(index=282, label="tiger cat", score=0.125),
        ],
        target=deepvis_pb2.Target(class_index=281),
        timing=deepvis_pb2.Timing(queue_ms=1.5, compute_ms=20.0, batch_size=4),
        warnings=["approximate"],
    )
    if array is not None:
        resp.array.CopyFrom(
            deepvis_pb2.Tensor(dtype=wire, shape=list(array.shape), data=array.tobytes())
        )
    return resp


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [
        ("<f4", deepvis_pb2.DTYPE_FLOAT32),
        ("<f2", deepvis_pb2.DTYPE_FLOAT16),
        ("<f4", deepvis_pb2.DTYPE_UNSPECIFIED),
    ],
)
def test_explanation_round_trip(dtype: str, wire: int) -> None:
    rng = np.random.default_rng(1)
    original = rng.standard_normal((3, 8, 6)).astype(dtype)
    # Through the wire format, as the server would send it.
    resp = deepvis_pb2.ExplainResponse.FromString(
        _response(original, wire, _png_bytes("RGB", (6, 8))).SerializeToString()
    )
    exp = _convert.explanation_from_pb(resp)
    assert exp.array is not None
    assert exp.array.dtype == np.float32
    assert exp.array.shape == (3, 8, 6)
    np.testing.assert_array_equal(exp.array, original.astype(np.float32))
    assert exp.image is not None and exp.image.size == (6, 8) and exp.image.mode == "RGB"
    assert exp.model == "resnet18"
    assert exp.method == "guided_backprop"
    assert exp.predictions == [
        deepvis.Prediction(281, "tabby", 0.75),
        deepvis.Prediction(282, "tiger cat", 0.125),
    ]
    assert exp.target == 281
    assert (exp.batch_size, exp.queue_ms, exp.compute_ms) == (4, 1.5, 20.0)
    assert exp.warnings == ["approximate"]
    assert "float32 [3, 8, 6]" in repr(exp)


def test_explanation_without_array_or_image() -> None:
    exp = _convert.explanation_from_pb(_response(None, deepvis_pb2.DTYPE_FLOAT32))
    assert exp.array is None
    assert exp.image is None


def test_explanation_neuron_target() -> None:
    resp = _response(None, 0)
    resp.target.CopyFrom(
        deepvis_pb2.Target(neuron=deepvis_pb2.Neuron(layer="layer1", channel=5, y=0, x=2))
    )
    assert _convert.explanation_from_pb(resp).target == deepvis.Neuron("layer1", 5, 0, 2)
    resp.target.neuron.ClearField("y")
    resp.target.neuron.ClearField("x")
    assert _convert.explanation_from_pb(resp).target == deepvis.Neuron("layer1", 5)
    resp.ClearField("target")
    assert _convert.explanation_from_pb(resp).target is None


def test_explanation_rejects_inconsistent_array() -> None:
    resp = _response(np.zeros((2, 3), "<f4"), deepvis_pb2.DTYPE_FLOAT32)
    resp.array.shape[:] = [2, 4]
    with pytest.raises(ValueError, match="bytes"):
        _convert.explanation_from_pb(resp)
    resp = _response(np.zeros((2, 3), np.uint8), deepvis_pb2.DTYPE_UINT8)
    with pytest.raises(ValueError, match="DTYPE_UINT8"):
        _convert.explanation_from_pb(resp)


def test_model_info_from_pb() -> None:
    info = _convert.model_info_from_pb(
        deepvis_pb2.ModelInfo(
            name="resnet18",
            arch="resnet18",
            num_classes=2,
            channels=3,
            height=224,
            width=224,
            mean=[0.5, 0.25, 0.125],
            std=[1.0, 2.0, 4.0],
            labels=["cat", "dog"],
            methods=[deepvis_pb2.METHOD_GUIDED_BACKPROP],
        )
    )
    assert info == deepvis.ModelInfo(
        "resnet18",
        "resnet18",
        2,
        3,
        224,
        224,
        (0.5, 0.25, 0.125),
        (1.0, 2.0, 4.0),
        ("cat", "dog"),
        ("guided_backprop",),
    )


# --- layers and top-k channels -------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (None, []),
        ("", []),
        ("layer4.1", ["layer4.1"]),
        (["conv1", "conv2"], ["conv1", "conv2"]),
        (("conv1",), ["conv1"]),
        ([], []),
    ],
)
def test_request_layers(layer: Any, expected: list[str]) -> None:
    assert list(_request(method="activations", layer=layer).layers) == expected


@pytest.mark.parametrize("bad", [b"conv1", 3, ["conv1", 2], ["conv1", ""], {"conv1"}])
def test_request_layers_rejected(bad: Any) -> None:
    with pytest.raises(TypeError, match="layer"):
        _request(layer=bad)


def test_request_new_methods_and_top_k_channels() -> None:
    for name, number in [
        ("activations", deepvis_pb2.METHOD_ACTIVATIONS),
        ("grad-cam", deepvis_pb2.METHOD_GRAD_CAM),
        ("guided_grad_cam", deepvis_pb2.METHOD_GUIDED_GRAD_CAM),
        ("Deconvolution", deepvis_pb2.METHOD_DECONVOLUTION),
    ]:
        assert _request(method=name).method == number
    req = _request(method="activations", layer=["conv1", "conv2"], top_k_channels=4)
    assert req.top_k_channels == 4
    # Through the wire: `layers` took field number 5 of the old single `layer`.
    again = deepvis_pb2.ExplainRequest.FromString(req.SerializeToString())
    assert list(again.layers) == ["conv1", "conv2"] and again.top_k_channels == 4
    assert _request(top_k_channels=np.int32(2)).top_k_channels == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", 2**31])
def test_request_top_k_channels_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="top_k_channels"):
        _request(top_k_channels=bad)


# --- named arrays and pictures -------------------------------------------------------------


def _tensor(arr: np.ndarray, wire: Any) -> deepvis_pb2.Tensor:
    return deepvis_pb2.Tensor(dtype=wire, shape=list(arr.shape), data=arr.tobytes())


def test_explanation_named_arrays_and_images() -> None:
    feats = np.arange(2 * 3 * 4, dtype="<f2").reshape(2, 3, 4)
    channels = np.array([7, 2**40, -1], dtype="<i8")
    cam = np.linspace(0, 1, 12, dtype="<f4").reshape(3, 4)
    resp = _response(None, 0)
    resp.method = deepvis_pb2.METHOD_ACTIVATIONS
    resp.arrays.extend(
        [
            deepvis_pb2.NamedTensor(name="conv3", tensor=_tensor(feats, deepvis_pb2.DTYPE_FLOAT16)),
            deepvis_pb2.NamedTensor(
                name="conv3.channels", tensor=_tensor(channels, deepvis_pb2.DTYPE_INT64)
            ),
            deepvis_pb2.NamedTensor(name="cam", tensor=_tensor(cam, deepvis_pb2.DTYPE_UNSPECIFIED)),
        ]
    )
    resp.images.extend(
        [
            deepvis_pb2.NamedImage(name="conv3.grid", png=_png_bytes("L", (12, 6))),
            deepvis_pb2.NamedImage(name="conv3.heatmap", png=_png_bytes("RGB", (8, 8))),
        ]
    )
    resp = deepvis_pb2.ExplainResponse.FromString(resp.SerializeToString())
    exp = _convert.explanation_from_pb(resp)
    assert exp.method == "activations"
    assert list(exp.arrays) == ["conv3", "conv3.channels", "cam"]
    assert exp.arrays["conv3"].dtype == np.float32
    np.testing.assert_array_equal(exp.arrays["conv3"], feats.astype(np.float32))
    assert exp.arrays["conv3.channels"].dtype == np.int64
    np.testing.assert_array_equal(exp.arrays["conv3.channels"], [7, 2**40, -1])
    np.testing.assert_array_equal(exp.arrays["cam"], cam)
    assert list(exp.images) == ["conv3.grid", "conv3.heatmap"]
    assert exp.images["conv3.grid"].size == (12, 6) and exp.images["conv3.grid"].mode == "L"
    assert exp.images["conv3.heatmap"].mode == "RGB"
    assert "conv3.channels" in repr(exp) and "conv3.grid" in repr(exp)


def test_explanation_without_named_arrays() -> None:
    exp = _convert.explanation_from_pb(_response(None, 0))
    assert exp.arrays == {} and exp.images == {}


def test_int64_array_decoded_as_native_int64() -> None:
    # The wire is little-endian; the decoded array is native int64 whatever the host.
    tensor = _tensor(np.array([1, 256], dtype="<i8"), deepvis_pb2.DTYPE_INT64)
    resp = _response(None, 0)
    resp.arrays.add(name="idx", tensor=tensor)
    arr = _convert.explanation_from_pb(resp).arrays["idx"]
    assert arr.dtype == np.dtype(np.int64) and arr.tolist() == [1, 256]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (
            lambda r: r.arrays.add(name="x", tensor=_tensor(np.zeros(3, np.uint8), 3)),
            ValueError,
            "DTYPE_UINT8",
        ),
        (
            lambda r: r.arrays.add(
                name="x",
                tensor=deepvis_pb2.Tensor(
                    dtype=deepvis_pb2.DTYPE_INT64, shape=[3], data=b"\0" * 16
                ),
            ),
            ValueError,
            "needs 24 bytes",
        ),
        (
            lambda r: r.arrays.add(
                name="x",
                tensor=deepvis_pb2.Tensor(dtype=42, shape=[1], data=b"\0" * 4),  # type: ignore[arg-type]
            ),
            ValueError,
            "dtype 42",
        ),
        (
            lambda r: r.arrays.extend(
                [deepvis_pb2.NamedTensor(name="a", tensor=_tensor(np.zeros(1, "<f4"), 1))] * 2
            ),
            ValueError,
            "two arrays",
        ),
        (lambda r: r.images.add(name="x", png=b""), ValueError, "empty"),
        (lambda r: r.images.add(name="x", png=b"not a png"), OSError, "cannot identify"),
        (
            lambda r: r.images.extend([deepvis_pb2.NamedImage(name="g", png=_png_bytes())] * 2),
            ValueError,
            "two pictures",
        ),
    ],
)
def test_explanation_rejects_bad_named_items(
    mutate: Any, error: type[Exception], match: str
) -> None:
    resp = _response(None, 0)
    mutate(resp)
    with pytest.raises(error, match=match):
        _convert.explanation_from_pb(resp)


def test_main_array_must_be_float() -> None:
    resp = _response(np.zeros(3, "<i8"), deepvis_pb2.DTYPE_INT64)
    with pytest.raises(ValueError, match="DTYPE_INT64; expected FLOAT16 or FLOAT32"):
        _convert.explanation_from_pb(resp)


# --- DescribeModel -------------------------------------------------------------------------


def _tiny_info() -> deepvis_pb2.ModelInfo:
    return deepvis_pb2.ModelInfo(
        name="tiny",
        arch="tests:tiny",
        num_classes=3,
        channels=3,
        height=8,
        width=8,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        labels=["a", "b", "c"],
        methods=[deepvis_pb2.METHOD_GUIDED_BACKPROP, deepvis_pb2.METHOD_ACTIVATIONS],
    )


def _tiny_description() -> deepvis_pb2.DescribeModelResponse:
    return deepvis_pb2.DescribeModelResponse(
        model=_tiny_info(),
        layers=[
            deepvis_pb2.LayerInfo(name="conv1", type="Conv2d", output_shape=[64, 8, 8], calls=1),
            deepvis_pb2.LayerInfo(name="act", type="ReLU", output_shape=[64, 8, 8], calls=3),
            deepvis_pb2.LayerInfo(name="branches", type="Split", output_shape=[], calls=1),
            deepvis_pb2.LayerInfo(name="fc", type="Linear", output_shape=[3], calls=1),
        ],
        default_cam_layer="conv1",
        non_relu_activations=["silu", "gelu"],
    )


def test_model_description_from_pb() -> None:
    desc = _convert.model_description_from_pb(_tiny_description())
    assert desc.model.name == "tiny"
    assert desc.model.methods == ("guided_backprop", "activations")
    assert desc.layers == [
        deepvis.LayerInfo("conv1", "Conv2d", (64, 8, 8), 1),
        deepvis.LayerInfo("act", "ReLU", (64, 8, 8), 3),
        deepvis.LayerInfo("branches", "Split", (), 1),
        deepvis.LayerInfo("fc", "Linear", (3,), 1),
    ]
    assert desc.default_cam_layer == "conv1"
    assert desc.non_relu_activations == ("silu", "gelu")
    assert "layers=<4>" in repr(desc)
    assert _convert.describe_request_to_pb("tiny").model == "tiny"


# --- Visualize requests --------------------------------------------------------------------


def _vis_request(objective: Any, **overrides: Any) -> deepvis_pb2.VisualizeRequest:
    kwargs: dict[str, Any] = dict(
        model="m",
        negate=False,
        steps=512,
        learning_rate=0.05,
        size=None,
        batch=1,
        diversity=0.0,
        seed=0,
        progress_every=0,
        parameterization="fft",
        transforms=True,
        input=None,
        array_dtype="float32",
    )
    kwargs.update(overrides)
    return _convert.visualize_request_to_pb(objective, **kwargs)


def test_objective_kinds() -> None:
    cls = _vis_request(3).objective
    assert cls.WhichOneof("kind") == "class_index" and cls.class_index == 3 and not cls.negate
    assert _vis_request(np.int64(0)).objective.WhichOneof("kind") == "class_index"
    channel = _vis_request(deepvis.Neuron("conv3", 12)).objective
    assert channel.WhichOneof("kind") == "neuron"
    assert (channel.neuron.layer, channel.neuron.channel) == ("conv3", 12)
    assert not channel.neuron.HasField("y") and not channel.neuron.HasField("x")
    neuron = _vis_request(deepvis.Neuron("conv3", 12, y=0, x=4)).objective
    assert neuron.neuron.HasField("y") and (neuron.neuron.y, neuron.neuron.x) == (0, 4)
    layer = _vis_request(deepvis.Layer("layer3.1"), negate=True).objective
    assert layer.WhichOneof("kind") == "layer" and layer.layer == "layer3.1" and layer.negate


@pytest.mark.parametrize("bad", [True, 1.0, "conv3", None, ("conv3", 1)])
def test_objective_rejected(bad: Any) -> None:
    with pytest.raises(TypeError, match="objective"):
        _vis_request(bad)


def test_layer_needs_a_name() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        deepvis.Layer("")
    assert deepvis.Layer("conv3") == deepvis.Layer("conv3")


def test_visualize_request_defaults() -> None:
    req = _vis_request(1)
    assert req.model == "m"
    assert req.steps == 512
    assert req.learning_rate == pytest.approx(0.05)
    assert (req.height, req.width) == (0, 0)
    assert req.batch == 1 and req.diversity == 0 and req.seed == 0 and req.progress_every == 0
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_FFT
    assert not req.no_transforms
    assert not req.HasField("input")
    assert req.array_dtype == deepvis_pb2.DTYPE_FLOAT32


def test_visualize_request_options() -> None:
    req = _vis_request(
        deepvis.Neuron("conv3", 1),
        negate=True,
        steps=64,
        learning_rate=0.1,
        size=(96, np.int64(128)),
        batch=4,
        diversity=0.5,
        seed=2**64 - 1,
        progress_every=16,
        parameterization="Pixel",
        transforms=False,
        input=np.zeros((8, 8, 3), np.uint8),
        array_dtype="float16",
    )
    req = deepvis_pb2.VisualizeRequest.FromString(req.SerializeToString())
    assert req.objective.negate
    assert req.steps == 64 and req.learning_rate == pytest.approx(0.1)
    assert (req.height, req.width) == (96, 128)
    assert req.batch == 4 and req.diversity == pytest.approx(0.5)
    assert req.seed == 2**64 - 1
    assert req.progress_every == 16
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_PIXEL
    assert req.no_transforms
    assert req.input.WhichOneof("kind") == "pixels" and list(req.input.pixels.shape) == [8, 8, 3]
    assert req.array_dtype == deepvis_pb2.DTYPE_FLOAT16


def test_parameterizations_derived_from_enum() -> None:
    assert _convert.parameterizations() == ["fft", "pixel"]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"steps": -1}, ValueError, "steps"),
        ({"steps": 2.5}, ValueError, "steps"),
        ({"batch": True}, ValueError, "batch"),
        ({"progress_every": -4}, ValueError, "progress_every"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"learning_rate": -0.1}, ValueError, "learning_rate"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
        ({"learning_rate": "0.1"}, ValueError, "learning_rate"),
        ({"diversity": float("inf")}, ValueError, "diversity"),
        ({"size": (0, 8)}, ValueError, "height"),
        ({"size": (8,)}, ValueError, "size"),
        ({"size": "8x8"}, ValueError, "size"),
        ({"size": (8, 8.5)}, ValueError, "width"),
        ({"parameterization": "unspecified"}, ValueError, "fft, pixel"),
        ({"parameterization": ""}, ValueError, "parameterization"),
        ({"parameterization": None}, ValueError, "parameterization"),
        ({"array_dtype": "int64"}, ValueError, "array_dtype"),
        ({"input": 42}, TypeError, "cannot explain"),
    ],
)
def test_visualize_request_rejects(
    overrides: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _vis_request(1, **overrides)


# --- Visualize responses -------------------------------------------------------------------


def _vis_result(n: int = 2, wire: Any = deepvis_pb2.DTYPE_FLOAT32) -> deepvis_pb2.VisualizeResult:
    dtype = "<f2" if wire == deepvis_pb2.DTYPE_FLOAT16 else "<f4"
    arr = np.linspace(0, 1, n * 3 * 6 * 5, dtype=dtype).reshape(n, 3, 6, 5)
    return deepvis_pb2.VisualizeResult(
        array=_tensor(arr, wire),
        images_png=[_png_bytes("RGB", (5, 6))] * n,
        objective=2.5,
        steps=64,
        queue_ms=1.5,
        compute_ms=300.0,
        max_batch_jobs=3,
    )


def test_visualize_progress_decoding() -> None:
    msg = deepvis_pb2.VisualizeResponse(
        progress=deepvis_pb2.VisualizeProgress(step=16, steps=64, objective=1.25)
    )
    item = _convert.visualize_item_from_pb(msg)
    assert isinstance(item, deepvis.Progress)
    assert (item.step, item.steps, item.objective, item.image) == (16, 64, 1.25, None)
    msg.progress.image_png = _png_bytes("RGB", (10, 6))
    item = _convert.visualize_item_from_pb(msg)
    assert isinstance(item, deepvis.Progress) and item.image is not None
    assert item.image.size == (10, 6)
    assert "step=16" in repr(item)


@pytest.mark.parametrize("wire", [deepvis_pb2.DTYPE_FLOAT32, deepvis_pb2.DTYPE_FLOAT16])
def test_visualize_result_decoding(wire: int) -> None:
    msg = deepvis_pb2.VisualizeResponse(result=_vis_result(2, wire))
    msg = deepvis_pb2.VisualizeResponse.FromString(msg.SerializeToString())
    vis = _convert.visualize_item_from_pb(msg)
    assert isinstance(vis, deepvis.Visualization)
    assert vis.array.dtype == np.float32 and vis.array.shape == (2, 3, 6, 5)
    assert float(vis.array.min()) == 0.0 and float(vis.array.max()) == 1.0
    assert [img.size for img in vis.images] == [(5, 6), (5, 6)]
    assert (vis.objective, vis.steps, vis.max_batch_jobs) == (2.5, 64, 3)
    assert (vis.queue_ms, vis.compute_ms) == (1.5, 300.0)
    assert vis.attribution is None and vis.attribution_image is None
    assert "float32 [2, 3, 6, 5]" in repr(vis)


def test_visualize_result_with_attribution() -> None:
    result = _vis_result(1)
    attribution = np.full((3, 8, 8), -0.5, "<f4")
    result.attribution.CopyFrom(_tensor(attribution, deepvis_pb2.DTYPE_FLOAT32))
    result.attribution_png = _png_bytes("RGB", (8, 8))
    vis = _convert.visualize_item_from_pb(deepvis_pb2.VisualizeResponse(result=result))
    assert isinstance(vis, deepvis.Visualization)
    assert vis.attribution is not None and vis.attribution.shape == (3, 8, 8)
    np.testing.assert_array_equal(vis.attribution, attribution)
    assert vis.attribution_image is not None and vis.attribution_image.size == (8, 8)


def test_visualize_unknown_kind_is_skipped_and_bad_result_rejected() -> None:
    assert _convert.visualize_item_from_pb(deepvis_pb2.VisualizeResponse()) is None
    result = _vis_result(1)
    result.ClearField("array")
    with pytest.raises(ValueError, match="no image array"):
        _convert.visualize_item_from_pb(deepvis_pb2.VisualizeResponse(result=result))
    result = _vis_result(1)
    result.images_png.append(b"")
    with pytest.raises(ValueError, match="empty picture"):
        _convert.visualize_item_from_pb(deepvis_pb2.VisualizeResponse(result=result))


# --- health messages -----------------------------------------------------------------------


def test_health_request_encoding() -> None:
    assert _convert.health_request_to_bytes("") == b""
    assert _convert.health_request_to_bytes("deepvis.v1.Explainer") == (
        b"\x0a\x14deepvis.v1.Explainer"
    )
    long = "s" * 300  # length 300 = varint 0xAC 0x02
    assert _convert.health_request_to_bytes(long) == b"\x0a\xac\x02" + long.encode()
    assert _convert.health_request_to_bytes("é") == b"\x0a\x02\xc3\xa9"
    with pytest.raises(TypeError, match="service"):
        _convert.health_request_to_bytes(b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "UNKNOWN"),
        (b"\x08\x00", "UNKNOWN"),
        (b"\x08\x01", "SERVING"),
        (b"\x08\x02", "NOT_SERVING"),
        (b"\x08\x03", "SERVICE_UNKNOWN"),
        (b"\x08\x07", "STATUS_7"),
        (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "STATUS_-1"),
        # Unknown fields of every wire type are skipped; the last status wins.
        (b"\x10\x05\x1a\x03abc\x21" + b"\0" * 8 + b"\x2d\0\0\0\0\x08\x02\x08\x01", "SERVING"),
        # A status of another wire type is an unknown field to protobuf, as to grpc_health.
        (b"\x0a\x01x", "UNKNOWN"),
    ],
)
def test_health_response_decoding(data: bytes, status: str) -> None:
    assert _convert.health_status_from_bytes(data) == status


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # truncated inside a varint
        b"\x08\x80",
        b"\x1a\x05ab",  # truncated inside a length-delimited field
        b"\x0b",  # a group start (wire type 3)
        b"\x00\x01",  # field number 0
        b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
    ],
)
def test_health_response_rejected(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a health response"):
        _convert.health_status_from_bytes(data)


def test_health_codec_matches_grpc_health_checking(tmp_path: Path) -> None:
    # The thin client has no grpcio-health-checking: its own stub must encode and decode as
    # grpc_health does.
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    services = ["", "deepvis.v1.Explainer", "x" * 200, "ünï"]
    statuses = {
        name: health_pb2.HealthCheckResponse(status=number).SerializeToString().hex()
        for name, number in health_pb2.HealthCheckResponse.ServingStatus.items()
    }
    code = (
        "import json, sys; from deepvis import _convert; "
        f"requests = [_convert.health_request_to_bytes(s).hex() for s in {services!r}]; "
        f"names = {{n: _convert.health_status_from_bytes(bytes.fromhex(d)) for n, d in {statuses!r}.items()}}; "
        "stub = [m for m in sys.modules if m.endswith('health_pb2')]; "
        "print(json.dumps([requests, names, stub]))"
    )
    proc = _run_python("-c", code, **_HIDE_GRPC_HEALTH)
    assert proc.returncode == 0, proc.stderr
    requests, names, stub = json.loads(proc.stdout)
    assert requests == [
        health_pb2.HealthCheckRequest(service=s).SerializeToString().hex() for s in services
    ]
    assert names == {name: name for name in statuses}
    assert stub == ["deepvis.v1.health_pb2"]


# --- CLI parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "neuron"),
    [
        ("conv3:12", deepvis.Neuron("conv3", 12)),
        ("layer4.1.conv2:0:3:4", deepvis.Neuron("layer4.1.conv2", 0, 3, 4)),
        ("conv3:12:0:0", deepvis.Neuron("conv3", 12, 0, 0)),
    ],
)
def test_cli_parse_neuron(text: str, neuron: deepvis.Neuron) -> None:
    assert _cli._parse_neuron(text) == neuron


@pytest.mark.parametrize(
    "text",
    ["conv3", "conv3:", ":3", "conv3:a", "conv3:1:2", "conv3:1:2:3:4", "conv3:-1", "c:1:y:2"],
)
def test_cli_parse_neuron_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _cli._parse_neuron(text)


def test_cli_parse_channel() -> None:
    assert _cli._parse_channel("conv3:5") == deepvis.Neuron("conv3", 5)
    for bad in ("conv3", "conv3:5:1:1", ":5", "conv3:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _cli._parse_channel(bad)


@pytest.mark.parametrize(
    ("text", "size"), [("128x96", (128, 96)), ("64X64", (64, 64)), ("32", (32, 32))]
)
def test_cli_parse_size(text: str, size: tuple[int, int]) -> None:
    assert _cli._parse_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "0x8", "8x0", "8x8x8", "-8x8", "8xa", "8.5x8"])
def test_cli_parse_size_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _cli._parse_size(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    return _cli._build_parser().parse_args(argv)


def test_cli_explain_arguments() -> None:
    args = _parse(
        ["explain", "a.png", "--out", "o", "--method", "grad-cam", "--neuron", "conv3:1:2:3"]
    )
    assert args.method == "grad-cam" and args.neuron == deepvis.Neuron("conv3", 1, 2, 3)
    assert args.target is None and args.layers is None and args.top_k_channels == 0
    args = _parse(
        ["explain", "a.png", "--out", "o", "--method", "activations", "--layer", "c1"]
        + ["--layer", "c2", "--top-k-channels", "3", "--target", "2"]
    )
    assert args.layers == ["c1", "c2"] and args.top_k_channels == 3 and args.target == 2
    for name in deepvis.methods():
        hyphenated = name.replace("_", "-")
        assert _parse(["explain", "a.png", "--out", "o", "--method", hyphenated]).method == (
            hyphenated
        )


def test_cli_visualize_arguments() -> None:
    args = _parse(["visualize", "--class", "3", "--out", "o"])
    assert args.class_index == 3 and args.steps == 512 and args.lr == 0.05
    assert args.size is None and args.batch == 1 and args.param == "fft"
    assert _cli._objective(args) == 3
    args = _parse(["visualize", "--channel", "conv3:12", "--out", "o", "--size", "64x48"])
    assert _cli._objective(args) == deepvis.Neuron("conv3", 12) and args.size == (64, 48)
    args = _parse(["visualize", "--layer-objective", "conv3", "--out", "o", "--param", "pixel"])
    assert _cli._objective(args) == deepvis.Layer("conv3") and args.param == "pixel"
    args = _parse(["visualize", "--neuron", "conv3:12:4:4", "--out", "o", "--no-transforms"])
    assert _cli._objective(args) == deepvis.Neuron("conv3", 12, 4, 4) and args.no_transforms


@pytest.mark.parametrize(
    ("objective", "negate", "name"),
    [
        (3, False, "class-3"),
        (deepvis.Neuron("conv3", 12), False, "conv3-c12"),
        (deepvis.Neuron("conv3", 12, 4, 4), False, "conv3-c12-y4-x4"),
        (deepvis.Layer("conv3"), False, "layer-conv3"),
        (deepvis.Layer("layer1.0/odd name"), True, "layer-layer1.0_odd_name-neg"),
    ],
)
def test_cli_default_visualization_name(objective: Any, negate: bool, name: str) -> None:
    assert _cli._objective_name(objective, negate) == name


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "x.png", "--out", "o", "--target", "1", "--neuron", "c:1"],
        ["explain", "x.png", "--out", "o", "--neuron", "conv3"],
        ["explain", "x.png", "--out", "o", "--top-k-channels", "-1"],
        ["visualize", "--out", "o"],
        ["visualize", "--class", "1", "--channel", "c:1", "--out", "o"],
        ["visualize", "--class", "1"],
        ["visualize", "--class", "1", "--out", "o", "--size", "0x8"],
        ["visualize", "--class", "1", "--out", "o", "--param", "rgb"],
        ["visualize", "--class", "1", "--out", "o", "--steps", "-2"],
        ["layers", "a", "b"],
    ],
)
def test_cli_new_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


# --- errors --------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, deepvis.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, deepvis.NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, deepvis.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, deepvis.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, deepvis.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, deepvis.Cancelled),
        (grpc.StatusCode.UNAUTHENTICATED, deepvis.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, deepvis.PermissionDenied),
        (grpc.StatusCode.UNIMPLEMENTED, deepvis.Unimplemented),
        (grpc.StatusCode.INTERNAL, deepvis.Internal),
        (grpc.StatusCode.DATA_LOSS, deepvis.Internal),
        (grpc.StatusCode.UNKNOWN, deepvis.Internal),
        (grpc.StatusCode.FAILED_PRECONDITION, deepvis.Internal),
    ],
)
def test_error_mapping_keeps_code_and_details(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(FakeRpcError(code, "model 'x' not served"))
    assert type(err) is cls
    assert isinstance(err, deepvis.DeepvisError)
    assert err.code is code
    assert err.details == "model 'x' not served"
    assert str(err) == "model 'x' not served"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls and again.code is code and again.details == err.details


def test_error_without_details_names_code() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, None))
    assert err.details == ""
    assert str(err) == "UNAVAILABLE"


def test_error_from_bare_rpc_error() -> None:
    err = from_rpc_error(grpc.RpcError())
    assert type(err) is deepvis.Internal
    assert err.code is grpc.StatusCode.UNKNOWN


# --- package -------------------------------------------------------------------------------


def test_public_api() -> None:
    assert deepvis.__all__ == sorted(deepvis.__all__)
    assert deepvis.__version__ == "0.1.0"
    for name in deepvis.__all__:
        assert hasattr(deepvis, name), name


def test_private_modules_behind_a_sorted_all() -> None:
    modules = sorted(p.stem for p in (CLIENT_DIR / "deepvis").glob("_*.py") if p.stem[1] != "_")
    assert {"_client", "_convert", "_models", "_plans", "_transport", "_version"} <= set(modules)
    for name in modules:
        module = importlib.import_module(f"deepvis.{name}")
        assert module.__all__ == sorted(module.__all__), name
        assert all(hasattr(module, n) for n in module.__all__), name
    # ... and the package says it is typed, in the wheel too (package-data).
    assert (CLIENT_DIR / "deepvis" / "py.typed").is_file()
    import tomllib

    pyproject = tomllib.loads((CLIENT_DIR.parent / "pyproject.toml").read_text())
    assert {"py.typed", "v1/*.pyi"} <= set(
        pyproject["tool"]["setuptools"]["package-data"]["deepvis"]
    )


_RESULTS = {
    "models": list[deepvis.ModelInfo],
    "explain": deepvis.Explanation,
    "explain_batch": list[Any],
    "health": str,
    "describe": deepvis.ModelDescription,
    "visualize": deepvis.Visualization,
}


@pytest.mark.parametrize("name", [*_RESULTS, "visualize_stream"])
def test_clients_share_each_calls_signature_and_docstring(name: str) -> None:
    sync, aio = getattr(deepvis.Client, name), getattr(deepvis.AsyncClient, name)
    assert sync.__name__ == aio.__name__ == name
    assert (sync.__qualname__, aio.__qualname__) == (f"Client.{name}", f"AsyncClient.{name}")
    assert sync.__doc__ and sync.__doc__ == aio.__doc__
    assert "Args:" in sync.__doc__ and "Raises:" in sync.__doc__
    signature, aio_signature = inspect.signature(sync), inspect.signature(aio)
    assert list(signature.parameters) == list(aio_signature.parameters)
    assert list(signature.parameters.values()) == list(aio_signature.parameters.values())
    # What help() and IDEs show is the method's result, for Client and after await.
    hints, aio_hints = typing.get_type_hints(sync), typing.get_type_hints(aio)
    if name == "visualize_stream":
        item = deepvis.Progress | deepvis.Visualization
        assert hints["return"] == Generator[item, None, None]
        assert aio_hints["return"] == AsyncGenerator[item, None]
        assert not inspect.iscoroutinefunction(aio)
    else:
        assert hints["return"] == aio_hints["return"] == _RESULTS[name]
        assert inspect.iscoroutinefunction(aio)
    assert not inspect.iscoroutinefunction(sync)
    assert {k: v for k, v in hints.items() if k != "return"} == {
        k: v for k, v in aio_hints.items() if k != "return"
    }


def test_client_argument_errors_name_the_argument() -> None:
    with deepvis.Client(DEAD_ADDRESS) as client:
        with pytest.raises(TypeError, match="bogus"):
            client.explain(np.zeros((4, 4), np.uint8), bogus=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="objective"):
            client.visualize_stream()  # type: ignore[call-arg]


def _run_python(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(CLIENT_DIR), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# A Python without grpcio-health-checking, as a thin client install is (see tests/hide).
_HIDE_GRPC_HEALTH = {
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "hide"), str(CLIENT_DIR)]
    ),
    "DEEPVIS_TEST_HIDE": "grpc_health",
}


def test_import_does_not_import_torch() -> None:
    # Nor grpc_health.v1: the thin client encodes the health protocol itself. (grpc imports the
    # bare grpc_health package when it is installed, to alias it as grpc.health.)
    code = (
        "import sys, deepvis, deepvis._cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') "
        "or m.startswith('grpc_health.')); "
        "assert not bad, bad; print('ok')"
    )
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_python_m_deepvis() -> None:
    proc = _run_python("-m", "deepvis", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deepvis 0.1.0"


# --- CLI without a server ------------------------------------------------------------------


def _err_lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


def test_cli_explain_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(_png_bytes())
    rc = main(
        [
            "explain",
            str(image),
            "--server",
            DEAD_ADDRESS,
            "--timeout",
            "2",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    out, err = _err_lines(capsys)
    assert rc == 1
    assert out == []
    assert len(err) == 1, err
    assert err[0].startswith("Unavailable: ")


def test_cli_models_unreachable_server_from_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEEPVIS_SERVER", DEAD_ADDRESS)
    assert main(["models", "--timeout", "2"]) == 1
    _, err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("Unavailable: ")


def test_cli_missing_image_fails_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "explain",
            str(tmp_path / "nope.png"),
            "--server",
            DEAD_ADDRESS,
            "--model",
            "m",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    _, err = _err_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("FileNotFoundError: "), err


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in (
        ["explain", "x.png", "--out", str(tmp_path), "--method", "lime"],
        ["explain", "x.png"],
        ["explain", "--out", str(tmp_path)],
        [],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_cli_rejects_colliding_output_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["explain", "a/cat.png", "b/cat.jpg", "--server", DEAD_ADDRESS, "--out", str(tmp_path)]
    )
    _, err = _err_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("ValueError: ")


# --- against an in-process fake server -----------------------------------------------------


class FakeHealth:
    """grpc.health.v1.Health/Check on raw bytes: no grpcio-health-checking needed."""

    # Requests as the health protocol encodes them, by hand: field 1 (service), a string.
    ANSWERS = {
        b"": b"\x08\x01",  # "": SERVING
        b"\x0a\x14deepvis.v1.Explainer": b"\x08\x01",  # SERVING
        b"\x0a\x04sick": b"\x08\x02",  # NOT_SERVING
    }

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def check(self, request: bytes, context: Any) -> bytes:
        self.requests.append(request)
        answer = self.ANSWERS.get(request)
        if answer is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return answer  # type: ignore[return-value]  # abort raises

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(self.check)}
        )


class FakeExplainer(deepvis_pb2_grpc.ExplainerServicer):
    """Answers like the real server in shape only: fixed model, arrays of constants."""

    def __init__(self) -> None:
        self.list_calls = 0
        self.requests: list[deepvis_pb2.ExplainRequest] = []
        self.describe_requests: list[deepvis_pb2.DescribeModelRequest] = []
        self.visualize_requests: list[deepvis_pb2.VisualizeRequest] = []
        # Set when a Visualize call of the "endless" model ends, which only a cancel does.
        self.endless_ended = threading.Event()
        self.health = FakeHealth()
        self._lock = threading.Lock()

    def ListModels(self, request: Any, context: Any) -> deepvis_pb2.ListModelsResponse:
        with self._lock:
            self.list_calls += 1
        return deepvis_pb2.ListModelsResponse(
            models=[
                _tiny_info(),
                deepvis_pb2.ModelInfo(name="other", arch="x", num_classes=2, channels=1),
            ]
        )

    def Explain(self, request: Any, context: Any) -> deepvis_pb2.ExplainResponse:
        with self._lock:
            self.requests.append(request)
        if request.model == "slow":
            time.sleep(2)
        if request.model not in ("tiny", "slow"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.model!r}")
        f16 = request.output.array_dtype == deepvis_pb2.DTYPE_FLOAT16
        arr = np.full((3, 8, 8), 0.5, dtype="<f2" if f16 else "<f4")
        resp = deepvis_pb2.ExplainResponse(
            model=request.model,
            method=request.method,
            predictions=[deepvis_pb2.Prediction(index=1, label="b", score=0.9)],
            timing=deepvis_pb2.Timing(batch_size=len(self.requests)),
        )
        if request.HasField("target"):
            resp.target.CopyFrom(request.target)
        else:
            resp.target.class_index = 1
        if not request.output.omit_array:
            resp.array.CopyFrom(
                deepvis_pb2.Tensor(
                    dtype=request.output.array_dtype, shape=list(arr.shape), data=arr.tobytes()
                )
            )
        if request.output.render:
            resp.image_png = _png_bytes("RGB", (8, 8))
        if request.method == deepvis_pb2.METHOD_ACTIVATIONS:
            k = request.top_k_channels or 4
            for layer in request.layers or ["conv1"]:
                if not request.output.omit_array:
                    feats = np.full((k, 4, 4), 2.0, "<f4")
                    channels = np.arange(k, dtype="<i8")[::-1].copy()
                    resp.arrays.add(name=layer, tensor=_tensor(feats, deepvis_pb2.DTYPE_FLOAT32))
                    resp.arrays.add(
                        name=f"{layer}.channels", tensor=_tensor(channels, deepvis_pb2.DTYPE_INT64)
                    )
                if request.output.render:
                    resp.images.add(name=f"{layer}.grid", png=_png_bytes("L", (16, 4)))
                    resp.images.add(name=f"{layer}.heatmap", png=_png_bytes("RGB", (8, 8)))
        return resp

    def DescribeModel(self, request: Any, context: Any) -> deepvis_pb2.DescribeModelResponse:
        with self._lock:
            self.describe_requests.append(request)
        if request.model != "tiny":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.model!r}")
        return _tiny_description()

    def Visualize(self, request: Any, context: Any) -> Iterator[deepvis_pb2.VisualizeResponse]:
        with self._lock:
            self.visualize_requests.append(request)
        if request.model == "endless":
            context.add_callback(self.endless_ended.set)
            step = 0
            while True:
                step += 1
                yield deepvis_pb2.VisualizeResponse(
                    progress=deepvis_pb2.VisualizeProgress(step=step, steps=10**6, objective=1.0)
                )
                time.sleep(0.01)
        if request.model not in ("tiny", "noresult"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.model!r}")
        if request.objective.WhichOneof("kind") == "class_index":
            if request.objective.class_index >= 3:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "class index out of range")
        steps = request.steps or 512
        every = request.progress_every
        for step in range(every, steps + 1, every) if every else ():
            yield deepvis_pb2.VisualizeResponse(
                progress=deepvis_pb2.VisualizeProgress(
                    step=step, steps=steps, objective=step / 8, image_png=_png_bytes("RGB", (8, 4))
                )
            )
        if request.model == "noresult":
            return
        n = request.batch or 1
        height, width = request.height or 8, request.width or 8
        f16 = request.array_dtype == deepvis_pb2.DTYPE_FLOAT16
        arr = np.full((n, 3, height, width), 0.25, "<f2" if f16 else "<f4")
        result = deepvis_pb2.VisualizeResult(
            array=_tensor(arr, request.array_dtype),
            images_png=[_png_bytes("RGB", (width, height))] * n,
            objective=-1.5 if request.objective.negate else 1.5,
            steps=steps,
            queue_ms=2.0,
            compute_ms=30.0,
            max_batch_jobs=2,
        )
        if request.HasField("input") and request.objective.WhichOneof("kind") != "layer":
            attribution = np.full((3, 8, 8), 0.125, "<f4")
            result.attribution.CopyFrom(_tensor(attribution, deepvis_pb2.DTYPE_FLOAT32))
            result.attribution_png = _png_bytes("RGB", (8, 8))
        yield deepvis_pb2.VisualizeResponse(result=result)


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeExplainer]]:
    servicer = FakeExplainer()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    deepvis_pb2_grpc.add_ExplainerServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((servicer.health.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_client_models_and_default_model_cached(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address, timeout=10) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: client.explain(np.zeros((8, 8), np.uint8)), range(6)))
        assert servicer.list_calls == 1
        assert {r.model for r in results} == {"tiny"}
        models = client.models()
    assert [m.name for m in models] == ["tiny", "other"]
    assert models[0].methods == ("guided_backprop", "activations")
    assert models[0].labels == ("a", "b", "c")


def test_an_empty_model_name_goes_to_the_server(fake_server: tuple[str, FakeExplainer]) -> None:
    # Only None asks for the server's first model; "" is sent as given, and refused there.
    address, servicer = fake_server

    async def run() -> None:
        async with deepvis.AsyncClient(address, timeout=10) as client:
            with pytest.raises(deepvis.NotFound):
                await client.describe("")

    with deepvis.Client(address, timeout=10) as client:
        with pytest.raises(deepvis.NotFound, match="no model named ''"):
            client.explain(np.zeros((8, 8), np.uint8), model="")
        with pytest.raises(deepvis.NotFound, match="no model named ''"):
            client.describe("")
    asyncio.run(run())
    assert servicer.list_calls == 0
    assert [r.model for r in servicer.requests] == [""]
    assert [r.model for r in servicer.describe_requests] == ["", ""]


def test_client_explain_options(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address) as client:
        exp = client.explain(
            Image.new("RGB", (8, 8)),
            model="tiny",
            method="guided-backprop",
            target=deepvis.Neuron("layer1", 2),
            array_dtype="float16",
            render=False,
            top_k=1,
        )
    assert servicer.list_calls == 0
    assert exp.array is not None and exp.array.dtype == np.float32 and exp.array.shape == (3, 8, 8)
    assert float(exp.array[0, 0, 0]) == 0.5
    assert exp.image is None
    assert exp.target == deepvis.Neuron("layer1", 2)
    assert [(p.index, p.label) for p in exp.predictions] == [(1, "b")]
    assert exp.predictions[0].score == pytest.approx(0.9)
    req = servicer.requests[-1]
    assert req.output.top_k == 1 and req.output.array_dtype == deepvis_pb2.DTYPE_FLOAT16


def test_client_maps_server_errors(fake_server: tuple[str, FakeExplainer]) -> None:
    address, _ = fake_server
    with deepvis.Client(address) as client:
        with pytest.raises(deepvis.NotFound) as exc:
            client.explain(np.zeros((8, 8), np.uint8), model="nope")
        assert exc.value.code is grpc.StatusCode.NOT_FOUND
        assert exc.value.details == "no model named 'nope'"
        with pytest.raises(deepvis.DeadlineExceeded):
            client.explain(np.zeros((8, 8), np.uint8), model="slow", timeout=0.2)


def test_client_bad_argument_sends_nothing(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address) as client:
        with pytest.raises(TypeError):
            client.explain(np.zeros((8, 8), np.float64))
    assert servicer.list_calls == 0 and servicer.requests == []


def test_async_client(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server

    async def run() -> list[deepvis.Explanation]:
        async with deepvis.AsyncClient(address, timeout=10) as client:
            results = await asyncio.gather(
                *(client.explain(np.zeros((8, 8, 3), np.uint8)) for _ in range(4))
            )
            with pytest.raises(deepvis.NotFound):
                await client.explain(b"png", model="nope")
            models = await client.models()
            assert models[0].name == "tiny"
            return list(results)

    results = asyncio.run(run())
    assert servicer.list_calls == 2  # one to resolve the default model, one explicit
    assert all(r.model == "tiny" and r.image is not None for r in results)


def test_crop_preprocessing_reaches_the_client() -> None:
    """ModelInfo.resize and ExplainResponse.input_region become `resize` and `input_region`;
    a server that does not send a region leaves it None, one without resize says 0."""
    info = _tiny_info()
    assert _convert.model_info_from_pb(info).resize == 0
    info.resize = 256
    assert _convert.model_info_from_pb(info).resize == 256
    resp = deepvis_pb2.ExplainResponse(model="tiny", method=deepvis_pb2.METHOD_GUIDED_BACKPROP)
    assert _convert.explanation_from_pb(resp).input_region is None
    resp.input_region.CopyFrom(deepvis_pb2.InputRegion(x=62.5, y=12.5, width=175, height=175))
    assert _convert.explanation_from_pb(resp).input_region == (62.5, 12.5, 175.0, 175.0)
    line = _cli._format_model(_convert.model_info_from_pb(info))
    assert "input=3x8x8  resize=256  methods=" in line


def test_cli_models(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    assert main(["models", "--server", address]) == 0
    out, err = _err_lines(capsys)
    assert err == []
    assert out[0].split() == [
        "tiny",
        "arch=tests:tiny",
        "classes=3",
        "input=3x8x8",
        "methods=guided-backprop,activations",
    ]
    assert len(out) == 2


def test_cli_explain_writes_outputs(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    images = []
    for name in ("cat", "dog", "owl"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(_png_bytes())
        images.append(str(path))
    out_dir = tmp_path / "out" / "nested"
    rc = main(
        [
            "explain",
            *images,
            "--server",
            address,
            "--out",
            str(out_dir),
            "--save-array",
            "--float16",
        ]
        + ["--target", "2"]
    )
    out, err = _err_lines(capsys)
    assert rc == 0, err
    assert err == []
    assert len(out) == 3
    for line, name in zip(out, ("cat", "dog", "owl"), strict=True):
        assert line.startswith(str(tmp_path / f"{name}.png"))
        assert "top=b (0.900)" in line and "target=2" in line and "batch=" in line
        png = out_dir / f"{name}.guided-backprop.png"
        assert Image.open(png).size == (8, 8)
        arr = np.load(out_dir / f"{name}.guided-backprop.npy")
        assert arr.dtype == np.float32 and arr.shape == (3, 8, 8)
    assert all(r.output.array_dtype == deepvis_pb2.DTYPE_FLOAT16 for r in servicer.requests)
    assert servicer.list_calls == 1


def test_cli_explain_reports_each_failure(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    good = tmp_path / "good.png"
    good.write_bytes(_png_bytes())
    missing = tmp_path / "missing.png"
    rc = main(["explain", str(good), str(missing), "--server", address, "--out", str(tmp_path)])
    out, err = _err_lines(capsys)
    assert rc == 1
    assert len(out) == 1 and out[0].startswith(str(good))
    assert len(err) == 1 and err[0].startswith(f"FileNotFoundError: {missing}: ")
    # Without --save-array the array is not even sent.
    assert servicer.requests[0].output.omit_array
    assert not (tmp_path / "good.guided-backprop.npy").exists()


# --- new calls against the fake server ------------------------------------------------------


def test_client_explain_activations(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address, timeout=10) as client:
        exp = client.explain(
            np.zeros((8, 8), np.uint8),
            model="tiny",
            method="activations",
            layer=["conv1", "act"],
            top_k_channels=2,
        )
        one = client.explain(np.zeros((8, 8), np.uint8), model="tiny", method="grad-cam", layer="c")
    req = servicer.requests[0]
    assert req.method == deepvis_pb2.METHOD_ACTIVATIONS
    assert list(req.layers) == ["conv1", "act"] and req.top_k_channels == 2
    assert list(servicer.requests[1].layers) == ["c"]
    assert one.method == "grad_cam"
    assert exp.method == "activations"
    assert list(exp.arrays) == ["conv1", "conv1.channels", "act", "act.channels"]
    assert exp.arrays["conv1"].shape == (2, 4, 4) and exp.arrays["conv1"].dtype == np.float32
    assert exp.arrays["act.channels"].dtype == np.int64
    assert exp.arrays["act.channels"].tolist() == [1, 0]
    assert list(exp.images) == ["conv1.grid", "conv1.heatmap", "act.grid", "act.heatmap"]


def test_client_describe(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address, timeout=10) as client:
        desc = client.describe()
        assert client.describe("tiny") == desc
        with pytest.raises(deepvis.NotFound, match="no model named 'nope'"):
            client.describe("nope")
    assert servicer.list_calls == 1  # the default model, resolved once
    assert [r.model for r in servicer.describe_requests] == ["tiny", "tiny", "nope"]
    assert desc.default_cam_layer == "conv1"
    assert [layer.name for layer in desc.layers] == ["conv1", "act", "branches", "fc"]


def test_client_health(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address, timeout=10) as client:
        assert client.health() == "SERVING"
        assert client.health("deepvis.v1.Explainer") == "SERVING"
        assert client.health("sick") == "NOT_SERVING"
        with pytest.raises(deepvis.NotFound, match="unknown service"):
            client.health("nope")
    assert servicer.health.requests[0] == b""


def test_client_health_unreachable_and_unimplemented() -> None:
    with deepvis.Client(DEAD_ADDRESS, timeout=2) as client:
        with pytest.raises(deepvis.Unavailable):
            client.health()
    # A server without a health service answers UNIMPLEMENTED.
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with deepvis.Client(f"127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(deepvis.Unimplemented):
                client.health()
    finally:
        server.stop(None)


def test_client_health_against_grpc_health_checking() -> None:
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    servicer = health.HealthServicer()
    servicer.set("deepvis.v1.Explainer", health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with deepvis.Client(f"127.0.0.1:{port}", timeout=5) as client:
            assert client.health() == "SERVING"
            assert client.health("deepvis.v1.Explainer") == "NOT_SERVING"
            with pytest.raises(deepvis.NotFound):
                client.health("nope")

        async def run() -> str:
            async with deepvis.AsyncClient(f"127.0.0.1:{port}", timeout=5) as aclient:
                return await aclient.health("deepvis.v1.Explainer")

        assert asyncio.run(run()) == "NOT_SERVING"
    finally:
        server.stop(None)


def test_client_visualize(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    seen: list[deepvis.Progress] = []
    with deepvis.Client(address, timeout=10) as client:
        vis = client.visualize(
            deepvis.Neuron("conv1", 2, y=1, x=1),
            steps=8,
            progress_every=2,
            batch=2,
            size=(6, 5),
            input=np.zeros((8, 8, 3), np.uint8),
            on_progress=seen.append,
        )
    req = servicer.visualize_requests[0]
    assert req.model == "tiny" and servicer.list_calls == 1
    assert req.objective.neuron.layer == "conv1" and req.objective.neuron.y == 1
    assert (req.height, req.width, req.batch, req.steps) == (6, 5, 2, 8)
    assert [(p.step, p.steps) for p in seen] == [(2, 8), (4, 8), (6, 8), (8, 8)]
    assert seen[-1].objective == 1.0 and seen[0].image is not None
    assert vis.array.shape == (2, 3, 6, 5) and vis.array.dtype == np.float32
    assert [img.size for img in vis.images] == [(5, 6), (5, 6)]
    assert (vis.objective, vis.steps, vis.max_batch_jobs) == (1.5, 8, 2)
    assert (vis.queue_ms, vis.compute_ms) == (2.0, 30.0)
    assert vis.attribution is not None and vis.attribution.shape == (3, 8, 8)
    assert vis.attribution_image is not None


def test_client_visualize_stream(fake_server: tuple[str, FakeExplainer]) -> None:
    address, _ = fake_server
    with deepvis.Client(address, timeout=10) as client:
        items = list(
            client.visualize_stream(
                deepvis.Layer("conv1"), model="tiny", steps=4, progress_every=1, negate=True
            )
        )
    assert [type(item) for item in items] == [deepvis.Progress] * 4 + [deepvis.Visualization]
    last = items[-1]
    assert isinstance(last, deepvis.Visualization)
    assert last.objective == -1.5 and last.attribution is None


def test_client_visualize_errors(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address, timeout=10) as client:
        # Arguments are checked when visualize_stream is called, before any iteration.
        with pytest.raises(TypeError, match="objective"):
            client.visualize_stream("conv1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="steps"):
            client.visualize(1, model="tiny", steps=-1)
        assert servicer.visualize_requests == [] and servicer.list_calls == 0
        with pytest.raises(deepvis.InvalidArgument, match="out of range"):
            client.visualize(7, model="tiny", steps=2)
        with pytest.raises(deepvis.NotFound):
            list(client.visualize_stream(1, model="nope"))
        with pytest.raises(deepvis.Internal, match="without a result") as exc:
            client.visualize(1, model="noresult", steps=4, progress_every=2)
        assert exc.value.code is grpc.StatusCode.INTERNAL
        with pytest.raises(deepvis.DeadlineExceeded):
            client.visualize(1, model="endless", timeout=0.3)


def test_client_visualize_stream_close_cancels(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server
    with deepvis.Client(address, timeout=30) as client:
        stream = client.visualize_stream(1, model="endless")
        for item in stream:
            assert isinstance(item, deepvis.Progress)
            if item.step == 3:
                break
        stream.close()
        assert servicer.endless_ended.wait(5), "the server job was not cancelled"


def test_client_visualize_callback_error_cancels(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server

    def stop(progress: deepvis.Progress) -> None:
        if progress.step == 2:
            raise RuntimeError("enough")

    with deepvis.Client(address, timeout=30) as client:
        with pytest.raises(RuntimeError, match="enough"):
            client.visualize(1, model="endless", on_progress=stop)
        assert servicer.endless_ended.wait(5), "the server job was not cancelled"


def test_async_client_new_calls(fake_server: tuple[str, FakeExplainer]) -> None:
    address, servicer = fake_server

    async def run() -> None:
        async with deepvis.AsyncClient(address, timeout=10) as client:
            assert await client.health() == "SERVING"
            assert await client.health("sick") == "NOT_SERVING"
            with pytest.raises(deepvis.NotFound):
                await client.health("nope")
            desc = await client.describe()
            assert desc.model.name == "tiny" and desc.layers[1].calls == 3
            seen: list[deepvis.Progress] = []
            vis = await client.visualize(
                2, steps=4, progress_every=2, parameterization="pixel", on_progress=seen.append
            )
            assert [p.step for p in seen] == [2, 4]
            assert vis.array.shape == (1, 3, 8, 8) and vis.objective == 1.5
            items = [
                item
                async for item in client.visualize_stream(
                    deepvis.Neuron("conv1", 0), steps=2, progress_every=1
                )
            ]
            assert [type(i) for i in items] == [deepvis.Progress] * 2 + [deepvis.Visualization]
            with pytest.raises(TypeError):
                client.visualize_stream(True)
            with pytest.raises(deepvis.Internal, match="without a result"):
                await client.visualize(1, model="noresult", steps=2)
            with pytest.raises(deepvis.InvalidArgument):
                async for _ in client.visualize_stream(5, steps=2):
                    pass
            stream = client.visualize_stream(1, model="endless")
            async for item in stream:
                if isinstance(item, deepvis.Progress) and item.step == 3:
                    break
            await stream.aclose()
            ended = await asyncio.get_running_loop().run_in_executor(
                None, servicer.endless_ended.wait, 5
            )
            assert ended, "the server job was not cancelled"

    asyncio.run(run())
    assert servicer.list_calls == 1
    assert servicer.visualize_requests[0].parameterization == deepvis_pb2.PARAMETERIZATION_PIXEL


def test_cli_explain_activations_writes_extras(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(_png_bytes())
    out_dir = tmp_path / "out"
    rc = main(
        ["explain", str(image), "--server", address, "--model", "tiny", "--out", str(out_dir)]
        + ["--method", "activations", "--layer", "conv1", "--layer", "act"]
        + ["--top-k-channels", "2", "--save-array"]
    )
    out, err = _err_lines(capsys)
    assert rc == 0, err
    assert len(out) == 1
    req = servicer.requests[0]
    assert list(req.layers) == ["conv1", "act"] and req.top_k_channels == 2
    for name in ("", ".conv1.grid", ".conv1.heatmap", ".act.grid", ".act.heatmap"):
        assert (out_dir / f"cat.activations{name}.png").is_file(), name
    assert np.load(out_dir / "cat.activations.npy").shape == (3, 8, 8)
    assert np.load(out_dir / "cat.activations.conv1.npy").shape == (2, 4, 4)
    channels = np.load(out_dir / "cat.activations.act.channels.npy")
    assert channels.dtype == np.int64 and channels.tolist() == [1, 0]
    assert str(out_dir / "cat.activations.act.channels.npy") in out[0]


def test_cli_explain_neuron(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(_png_bytes())
    rc = main(
        ["explain", str(image), "--server", address, "--out", str(tmp_path)]
        + ["--method", "deconvolution", "--neuron", "conv1:2:0:3"]
    )
    out, _ = _err_lines(capsys)
    assert rc == 0
    target = servicer.requests[0].target.neuron
    assert (target.layer, target.channel, target.y, target.x) == ("conv1", 2, 0, 3)
    assert "target=conv1:2[0,3]" in out[0]
    assert (tmp_path / "cat.deconvolution.png").is_file()


def test_cli_layers(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    assert main(["layers", "--server", address]) == 0
    out, err = _err_lines(capsys)
    assert err == []
    assert [line.split() for line in out] == [
        ["conv1", "Conv2d", "64x8x8"],
        ["act", "ReLU", "64x8x8", "calls=3"],
        ["branches", "Split", "-"],
        ["fc", "Linear", "3"],
        ["default-cam-layer=conv1", "non-relu-activations=silu,gelu"],
    ]
    assert main(["layers", "nope", "--server", address]) == 1
    _, err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("NotFound: ")
    assert [r.model for r in servicer.describe_requests] == ["tiny", "nope"]


def test_cli_visualize_writes_outputs(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(_png_bytes())
    out_dir = tmp_path / "vis"
    rc = main(
        ["visualize", "--server", address, "--neuron", "conv1:2:0:1", "--steps", "4"]
        + ["--progress-every", "2", "--batch", "2", "--size", "6x5", "--lr", "0.1"]
        + ["--diversity", "0.5", "--seed", "7", "--input", str(image), "--out", str(out_dir)]
        + ["--save-array"]
    )
    out, err = _err_lines(capsys)
    assert rc == 0, err
    assert err == ["step 2/4 objective 0.25", "step 4/4 objective 0.5"]
    req = servicer.visualize_requests[0]
    assert req.model == "tiny" and req.objective.neuron.x == 1 and not req.objective.negate
    assert (req.steps, req.progress_every, req.batch, req.height, req.width) == (4, 2, 2, 6, 5)
    assert req.learning_rate == pytest.approx(0.1) and req.diversity == pytest.approx(0.5)
    assert req.seed == 7 and not req.no_transforms
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_FFT
    assert req.input.WhichOneof("kind") == "image"
    name = "conv1-c2-y0-x1"
    for i in range(2):
        assert Image.open(out_dir / f"{name}_{i}.png").size == (5, 6)
    assert (out_dir / f"{name}.attribution.png").is_file()
    assert np.load(out_dir / f"{name}.npy").shape == (2, 3, 6, 5)
    assert np.load(out_dir / f"{name}.attribution.npy").shape == (3, 8, 8)
    assert len(out) == 1
    assert out[0].startswith(f"{name}  objective=1.5  steps=4  -> ")
    assert str(out_dir / f"{name}_1.png") in out[0]


@pytest.mark.parametrize(
    ("objective", "name", "check"),
    [
        (["--class", "1", "--negate"], "class-1-neg", lambda o: o.class_index == 1 and o.negate),
        (["--channel", "conv1:3"], "conv1-c3", lambda o: not o.neuron.HasField("y")),
        (["--layer-objective", "conv1"], "layer-conv1", lambda o: o.layer == "conv1"),
        (["--class", "0", "--name", "mine"], "mine", lambda o: o.class_index == 0),
    ],
)
def test_cli_visualize_objectives(
    fake_server: tuple[str, FakeExplainer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    objective: list[str],
    name: str,
    check: Any,
) -> None:
    address, servicer = fake_server
    rc = main(
        ["visualize", "--server", address, "--model", "tiny", *objective, "--steps", "2"]
        + ["--param", "pixel", "--no-transforms", "--out", str(tmp_path)]
    )
    out, err = _err_lines(capsys)
    assert rc == 0, err
    assert err == []  # no progress messages without --progress-every
    req = servicer.visualize_requests[0]
    assert check(req.objective)
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_PIXEL and req.no_transforms
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}_0.png"]
    assert out[0].startswith(f"{name}  ")


def test_cli_visualize_errors(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    argv = ["visualize", "--server", address, "--out", str(tmp_path), "--steps", "2"]
    assert main([*argv, "--class", "9"]) == 1
    _, err = _err_lines(capsys)
    assert err == ["InvalidArgument: class index out of range"]
    assert main([*argv, "--class", "1", "--model", "noresult"]) == 1
    _, err = _err_lines(capsys)
    assert err == ["Internal: the Visualize stream ended without a result"]
    assert main([*argv, "--class", "1", "--lr", "nan"]) == 1
    _, err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("ValueError: learning_rate")


def test_cli_health(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    assert main(["health", "--server", address]) == 0
    assert _err_lines(capsys) == (["SERVING"], [])
    assert main(["health", "--server", address, "--service", "deepvis.v1.Explainer"]) == 0
    assert _err_lines(capsys) == (["SERVING"], [])
    assert main(["health", "--server", address, "--service", "sick"]) == 1
    assert _err_lines(capsys) == (["NOT_SERVING"], [])
    assert main(["health", "--server", address, "--service", "nope"]) == 1
    assert _err_lines(capsys) == ([], ["NotFound: unknown service"])
    assert main(["health", "--server", DEAD_ADDRESS, "--timeout", "2"]) == 1
    out, err = _err_lines(capsys)
    assert out == [] and len(err) == 1 and err[0].startswith("Unavailable: ")


def test_float16_results_widen_to_numpys_float32_bit_for_bit() -> None:
    """Every float16 bit pattern (normal, subnormal, zero, inf, nan) decodes to exactly the
    float32 numpy's own cast gives, in the array's shape."""
    every = np.arange(65536, dtype="<u2").view("<f2").reshape(16, 64, 64)
    tensor = deepvis_pb2.Tensor(
        dtype=deepvis_pb2.DTYPE_FLOAT16, shape=list(every.shape), data=every.tobytes()
    )
    resp = deepvis_pb2.ExplainResponse(array=tensor)
    arr = _convert.explanation_from_pb(resp).array
    assert arr.dtype == np.float32 and arr.shape == (16, 64, 64)
    assert np.array_equal(arr.view(np.uint32), every.astype(np.float32).view(np.uint32))
    arr[0, 0, 0] = 1.0  # a plain writable array of its own
