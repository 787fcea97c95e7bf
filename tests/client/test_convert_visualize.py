"""Visualize requests as the client builds them and the stream's messages as it decodes them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import deepvis
from deepvis import _convert
from deepvis.v1 import deepvis_pb2

from .fakes import (
    png_bytes,
    tensor_pb,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


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
        ({"parameterization": 3}, ValueError, "parameterization"),
        ({"preset": "lucent"}, ValueError, "lucid, class_model"),
        ({"preset": None}, ValueError, "preset"),
        ({"l2_penalty": -1.0}, ValueError, "l2_penalty"),
        ({"l2_penalty": float("nan")}, ValueError, "l2_penalty"),
        ({"array_dtype": "int64"}, ValueError, "array_dtype"),
        ({"input": 42}, TypeError, "cannot explain"),
    ],
)
def test_visualize_request_rejects(
    overrides: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _vis_request(1, **overrides)


def _vis_result(n: int = 2, wire: Any = deepvis_pb2.DTYPE_FLOAT32) -> deepvis_pb2.VisualizeResult:
    dtype = "<f2" if wire == deepvis_pb2.DTYPE_FLOAT16 else "<f4"
    arr = np.linspace(0, 1, n * 3 * 6 * 5, dtype=dtype).reshape(n, 3, 6, 5)
    return deepvis_pb2.VisualizeResult(
        array=tensor_pb(arr, wire),
        images_png=[png_bytes("RGB", (5, 6))] * n,
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
    msg.progress.image_png = png_bytes("RGB", (10, 6))
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
    result.attribution.CopyFrom(tensor_pb(attribution, deepvis_pb2.DTYPE_FLOAT32))
    result.attribution_png = png_bytes("RGB", (8, 8))
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


def test_the_class_model_preset_and_its_penalty_travel_and_defaults_stay_unset() -> None:
    req = _vis_request(
        3, preset="class-model", l2_penalty=0.01, learning_rate=None, parameterization=None
    )
    assert req.preset == deepvis_pb2.PRESET_CLASS_MODEL
    assert req.HasField("l2_penalty") and req.l2_penalty == pytest.approx(0.01)
    # Left to the server: the preset's learning rate (0 on the wire) and no parameterization.
    assert req.learning_rate == 0.0
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_UNSPECIFIED
    plain = _vis_request(3)
    assert plain.preset == deepvis_pb2.PRESET_LUCID and not plain.HasField("l2_penalty")
    assert _vis_request(3, preset="class_model", l2_penalty=0.0).HasField("l2_penalty")
    assert _convert.presets() == ["lucid", "class_model"]
