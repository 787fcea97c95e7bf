"""Explain requests as the client builds them: targets, methods by name, layers, top-k channels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import deepvis
from deepvis import _convert
from deepvis.v1 import deepvis_pb2

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


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


def test_methods_derived_from_enum() -> None:
    assert deepvis.methods() == [
        "guided_backprop",
        "activations",
        "grad_cam",
        "guided_grad_cam",
        "deconvolution",
        "saliency",
        "integrated_gradients",
        "lrp",
        "input_x_gradient",
        "attention_rollout",
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


def test_rollout_options_travel_as_rollout_options() -> None:
    req = _request(method="attention_rollout", rollout=deepvis.Rollout("max", 0.9))
    assert req.method == deepvis_pb2.METHOD_ATTENTION_ROLLOUT
    assert req.rollout.head_fusion == deepvis_pb2.HEAD_FUSION_MAX
    assert req.rollout.discard_ratio == pytest.approx(0.9)
    assert not _request(method="attention_rollout").HasField("rollout")
    # The defaults, sent explicitly, are the server's defaults too: MEAN, nothing discarded.
    default = _request(method="attention_rollout", rollout=deepvis.Rollout())
    assert (
        default.HasField("rollout") and default.rollout.head_fusion == deepvis_pb2.HEAD_FUSION_MEAN
    )
    batches = _convert.batch_requests_to_pb(
        [np.zeros((4, 5), np.uint8)] * 3, chunk=2, targets=None, model="m",
        method="attention_rollout", layer=None, render=False, array_dtype="float32", top_k=5,
        array=True, top_k_channels=0, rollout=deepvis.Rollout("min"),
    )  # fmt: skip
    assert [r.rollout.head_fusion for b in batches for r in b.requests] == [
        deepvis_pb2.HEAD_FUSION_MIN
    ] * 3


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"head_fusion": "median"}, "head_fusion must be 'mean', 'max' or 'min'"),
        ({"discard_ratio": 1.0}, r"discard_ratio must be a number in \[0, 1\)"),
        ({"discard_ratio": -0.5}, r"discard_ratio must be a number in \[0, 1\)"),
        ({"discard_ratio": True}, "discard_ratio must be a number"),
    ],
)
def test_rollout_rejects_bad_options(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        deepvis.Rollout(**kwargs)


def test_rollout_must_be_a_rollout() -> None:
    with pytest.raises(TypeError, match="rollout must be a deepvis.Rollout"):
        _request(method="attention_rollout", rollout={"head_fusion": "max"})
