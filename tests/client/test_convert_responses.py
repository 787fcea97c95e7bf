"""Explain and DescribeModel answers as the client decodes them: arrays, named arrays and
pictures, targets, model information and layers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import deepvis
from deepvis import _cli, _convert, render
from deepvis.v1 import deepvis_pb2

from .fakes import (
    png_bytes,
    tensor_pb,
    tiny_description,
    tiny_info,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


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
        _response(original, wire, png_bytes("RGB", (6, 8))).SerializeToString()
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


def test_explanation_pictures_decode_on_first_use() -> None:
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    good = render.to_png(Image.fromarray(pixels))
    # The IDAT chunk's body cut short: the header still reads, the pixels cannot decode.
    cut = good[: good.index(b"IDAT") + 12] + good[good.index(b"IEND") - 4 :]
    exp = _convert.explanation_from_pb(_response(None, 0, good))
    assert exp.image is not None and exp.image.size == (6, 8)
    assert np.array_equal(np.asarray(exp.image), pixels)
    broken = _convert.explanation_from_pb(_response(None, 0, cut))  # opened, not decoded
    assert broken.image is not None and broken.image.size == (6, 8)
    with pytest.raises(OSError):
        broken.image.load()


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


def test_explanation_named_arrays_and_images() -> None:
    feats = np.arange(2 * 3 * 4, dtype="<f2").reshape(2, 3, 4)
    channels = np.array([7, 2**40, -1], dtype="<i8")
    cam = np.linspace(0, 1, 12, dtype="<f4").reshape(3, 4)
    resp = _response(None, 0)
    resp.method = deepvis_pb2.METHOD_ACTIVATIONS
    resp.arrays.extend(
        [
            deepvis_pb2.NamedTensor(
                name="conv3", tensor=tensor_pb(feats, deepvis_pb2.DTYPE_FLOAT16)
            ),
            deepvis_pb2.NamedTensor(
                name="conv3.channels", tensor=tensor_pb(channels, deepvis_pb2.DTYPE_INT64)
            ),
            deepvis_pb2.NamedTensor(
                name="cam", tensor=tensor_pb(cam, deepvis_pb2.DTYPE_UNSPECIFIED)
            ),
        ]
    )
    resp.images.extend(
        [
            deepvis_pb2.NamedImage(name="conv3.grid", png=png_bytes("L", (12, 6))),
            deepvis_pb2.NamedImage(name="conv3.heatmap", png=png_bytes("RGB", (8, 8))),
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
    tensor = tensor_pb(np.array([1, 256], dtype="<i8"), deepvis_pb2.DTYPE_INT64)
    resp = _response(None, 0)
    resp.arrays.add(name="idx", tensor=tensor)
    arr = _convert.explanation_from_pb(resp).arrays["idx"]
    assert arr.dtype == np.dtype(np.int64) and arr.tolist() == [1, 256]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (
            lambda r: r.arrays.add(name="x", tensor=tensor_pb(np.zeros(3, np.uint8), 3)),
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
                [deepvis_pb2.NamedTensor(name="a", tensor=tensor_pb(np.zeros(1, "<f4"), 1))] * 2
            ),
            ValueError,
            "two arrays",
        ),
        (lambda r: r.images.add(name="x", png=b""), ValueError, "empty"),
        (lambda r: r.images.add(name="x", png=b"not a png"), OSError, "cannot identify"),
        (
            lambda r: r.images.extend([deepvis_pb2.NamedImage(name="g", png=png_bytes())] * 2),
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


def test_float16_results_widen_to_numpys_float32_bit_for_bit() -> None:
    """Every float16 bit pattern (normal, subnormal, zero, inf, nan) decodes to exactly the
    float32 numpy's own cast gives, in the array's shape."""
    every = np.arange(65536, dtype="<u2").view("<f2").reshape(16, 64, 64)
    tensor = deepvis_pb2.Tensor(
        dtype=deepvis_pb2.DTYPE_FLOAT16, shape=list(every.shape), data=every.tobytes()
    )
    resp = deepvis_pb2.ExplainResponse(array=tensor)
    arr = _convert.explanation_from_pb(resp).array
    assert arr is not None
    assert arr.dtype == np.float32 and arr.shape == (16, 64, 64)
    assert np.array_equal(arr.view(np.uint32), every.astype(np.float32).view(np.uint32))
    arr[0, 0, 0] = 1.0  # a plain writable array of its own


def test_model_description_from_pb() -> None:
    desc = _convert.model_description_from_pb(tiny_description())
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


def test_crop_preprocessing_reaches_the_client() -> None:
    """ModelInfo.resize and ExplainResponse.input_region become `resize` and `input_region`;
    a server that does not send a region leaves it None, one without resize says 0."""
    info = tiny_info()
    assert _convert.model_info_from_pb(info).resize == 0
    info.resize = 256
    assert _convert.model_info_from_pb(info).resize == 256
    resp = deepvis_pb2.ExplainResponse(model="tiny", method=deepvis_pb2.METHOD_GUIDED_BACKPROP)
    assert _convert.explanation_from_pb(resp).input_region is None
    resp.input_region.CopyFrom(deepvis_pb2.InputRegion(x=62.5, y=12.5, width=175, height=175))
    assert _convert.explanation_from_pb(resp).input_region == (62.5, 12.5, 175.0, 175.0)
    line = _cli._format_model(_convert.model_info_from_pb(info))
    assert "input=3x8x8  resize=256  methods=" in line


def test_layouts_reach_the_client_and_the_layers_listing() -> None:
    resp = deepvis_pb2.DescribeModelResponse(
        model=tiny_info(),
        layers=[
            deepvis_pb2.LayerInfo(
                name="conv_proj", type="Conv2d", output_shape=[768, 14, 14], calls=1,
                layout=deepvis_pb2.LAYOUT_CHANNELS_FIRST, map_shape=[768, 14, 14],
            ),
            deepvis_pb2.LayerInfo(
                name="ln_1", type="LayerNorm", output_shape=[197, 768], calls=1,
                layout=deepvis_pb2.LAYOUT_TOKENS, map_shape=[768, 14, 14], class_tokens=1,
            ),
            deepvis_pb2.LayerInfo(
                name="stage", type="Sequential", output_shape=[7, 7, 768], calls=1,
                layout=deepvis_pb2.LAYOUT_CHANNELS_LAST, map_shape=[768, 7, 7],
            ),
            deepvis_pb2.LayerInfo(
                name="mix", type="Linear", output_shape=[35, 8], calls=1,
                layout=deepvis_pb2.LAYOUT_TOKENS,
            ),
            deepvis_pb2.LayerInfo(
                name="head", type="Linear", output_shape=[3], calls=1,
                layout=deepvis_pb2.LAYOUT_VECTOR,
            ),
            deepvis_pb2.LayerInfo(name="split", type="Split", calls=1),
            deepvis_pb2.LayerInfo(name="newer", type="X", output_shape=[2], calls=1, layout=42),  # type: ignore[arg-type]
        ],
        default_cam_layer="ln_1",
        default_cam_layer_note="the input of the last attention block",
        attention_layers=["attn"],
    )  # fmt: skip
    desc = _convert.model_description_from_pb(resp)
    layouts = [(x.layout, x.map_shape, x.class_tokens) for x in desc.layers]
    assert layouts == [
        ("channels_first", (768, 14, 14), 0),
        ("tokens", (768, 14, 14), 1),
        ("channels_last", (768, 7, 7), 0),
        ("tokens", (), 0),
        ("vector", (), 0),
        ("", (), 0),
        ("layout_42", (), 0),  # a newer server's layout, named by its number
    ]
    assert desc.default_cam_layer_note == "the input of the last attention block"
    assert desc.attention_layers == ("attn",)
    lines = [line.split() for line in _cli._format_layers(desc)]
    assert [line[3:] for line in lines[:7]] == [
        ["channels-first"],
        ["tokens:1+14x14"],
        ["channels-last->768x7x7"],
        ["tokens:0+no-grid"],
        ["vector"],
        [],
        ["layout-42"],
    ]
    assert lines[7] == [
        "default-cam-layer=ln_1", "non-relu-activations=-", "attention-layers=1"
    ]  # fmt: skip
    assert " ".join(lines[8]) == "default-cam-layer: the input of the last attention block"
