"""The server over real gRPC: listing, health, reflection, input kinds, statuses, process lifecycle."""

from __future__ import annotations

import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.process import ServerProcess
from oracles import relative_error


def test_list_models_describes_the_default_model(digits_server) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=10) as client:
        (info,) = client.models()
    assert info.name == "digits"
    assert (info.channels, info.height, info.width, info.num_classes) == (1, 32, 32, 10)
    assert info.labels == tuple(str(i) for i in range(10))
    assert "guided_backprop" in info.methods


def test_health_is_serving_and_reflection_lists_services(digits_server) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "deepvis.v1.Explainer"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in replies[0].list_services_response.service}
    assert {"deepvis.v1.Explainer", "grpc.health.v1.Health"} <= names


def test_every_input_kind_gives_the_same_result(digits_server, sample_paths) -> None:
    path = sample_paths[3]
    png = path.read_bytes()
    img = Image.open(path)
    pixels = np.asarray(img)
    rgb = img.convert("RGB")  # the server converts it back to the model's one channel
    with deepvis.Client(digits_server.bound_address, timeout=10) as client:
        base = client.explain(str(path), target=3)
        for variant in (png, img, pixels, pixels[:, :, None], rgb):
            other = client.explain(variant, target=3)
            assert relative_error(other.array, base.array) <= 1e-6
        # A larger picture is resized to the model's 32x32 on the server.
        big = io.BytesIO()
        img.resize((96, 96), Image.Resampling.BILINEAR).save(big, format="JPEG", quality=95)
        resized = client.explain(big.getvalue(), target=3)
        assert resized.array is not None and resized.array.shape == (1, 32, 32)
        assert resized.predictions[0].index == 3


def test_float16_array_and_top_k(digits_server, sample_paths) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=10) as client:
        full = client.explain(str(sample_paths[5]), top_k=3)
        half = client.explain(str(sample_paths[5]), array_dtype="float16", top_k=10, render=False)
    assert len(full.predictions) == 3 and len(half.predictions) == 10
    assert half.image is None
    assert half.array is not None and full.array is not None
    assert half.array.dtype == np.float32
    assert relative_error(half.array, full.array) <= 1e-3
    # It is the float32 answer rounded to float16: bit for bit on the CPU; on a GPU (cast
    # there, per batch) within one float16 step, as two CUDA runs may differ in the last bit.
    assert full.batch_size == half.batch_size == 1
    rounded = full.array.astype(np.float16).astype(np.float32)
    if digits_server.engine.device.type == "cpu":
        assert np.array_equal(half.array.view(np.uint32), rounded.view(np.uint32))
    else:
        assert np.allclose(half.array, rounded, rtol=2**-10, atol=2**-24)
    scores = [p.score for p in half.predictions]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4


def test_float16_wire_bytes_are_numpy_cast_bits() -> None:
    """The fast float16 cast gives exactly numpy's bits: every magnitude a result can have
    (gradients far below float16's smallest normal, subnormals, overflow, inf, nan, -0)."""
    from deepvis_server.convert import fill_tensor, wire_bytes

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(2000) * s for s in (1e-9, 1e-7, 3e-5, 1e-3, 1.0, 1e3, 6e4, 1e6)]
    special = [np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, -0.0]
    a = np.concatenate([*parts, special]).astype(np.float32).reshape(2, -1)
    with np.errstate(over="ignore"):
        expected = np.ascontiguousarray(a, dtype="<f2").tobytes()
    assert wire_bytes(a, np.dtype("<f2")) == expected
    # A non-contiguous view travels as its logical contents.
    with np.errstate(over="ignore"):
        assert wire_bytes(a.T, np.dtype("<f2")) == a.T.astype("<f2").tobytes()
    assert wire_bytes(a, np.dtype("<f4")) == a.tobytes()
    t = pb.Tensor()
    fill_tensor(t, a[:, :8], "float16")
    assert t.dtype == pb.DTYPE_FLOAT16 and list(t.shape) == [2, 8]
    assert np.array_equal(np.frombuffer(t.data, "<f2").reshape(2, 8), a[:, :8].astype("<f2"))
    ints = pb.Tensor()
    fill_tensor(ints, np.arange(3, dtype=np.int32), "float16")
    assert ints.dtype == pb.DTYPE_INT64 and np.frombuffer(ints.data, "<i8").tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("request_kwargs", "code", "fragment"),
    [
        (
            {"model": "nope", "method": pb.METHOD_GUIDED_BACKPROP},
            grpc.StatusCode.NOT_FOUND,
            "served models: digits",
        ),
        ({"model": "digits"}, grpc.StatusCode.INVALID_ARGUMENT, "method is required"),
        ({"model": "digits", "method": 999}, grpc.StatusCode.INVALID_ARGUMENT, "valid"),
        (
            {"model": "digits", "method": pb.METHOD_GUIDED_BACKPROP},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "input": pb.Input(image=b"not an image"),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "PNG",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "input": pb.Input(
                    tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 32, 32], data=b"\0" * 12288)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "[1, 32, 32]",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "input": pb.Input(
                    tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 32, 32], data=b"\0" * 10)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 4096",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "target": pb.Target(class_index=10),
                "input": pb.Input(
                    pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=b"\0" * 1024)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "[0, 10)",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "target": pb.Target(class_index=-(2**63)),
                "input": pb.Input(
                    pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=b"\0" * 1024)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "[0, 10)",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "target": pb.Target(neuron=pb.Neuron(layer="__class__", channel=0)),
                "input": pb.Input(
                    pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=b"\0" * 1024)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "conv1",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "target": pb.Target(neuron=pb.Neuron(layer="conv3", channel=3, y=8, x=0)),
                "input": pb.Input(
                    pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=b"\0" * 1024)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "[0, 8) x [0, 8)",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "target": pb.Target(neuron=pb.Neuron(layer="conv3", channel=2**63 - 1)),
                "input": pb.Input(
                    pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=b"\0" * 1024)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "[0, 64)",
        ),
        (
            {
                "model": "digits",
                "method": pb.METHOD_GUIDED_BACKPROP,
                "target": pb.Target(neuron=pb.Neuron(layer="conv3", channel=64)),
                "input": pb.Input(
                    pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=b"\0" * 1024)
                ),
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "[0, 64)",
        ),
    ],
)
def test_bad_requests_get_precise_statuses(digits_server, request_kwargs, code, fragment) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(pb.ExplainRequest(**request_kwargs), timeout=10)
        assert info.value.code() == code
        assert fragment in info.value.details()
        # ... and the server still serves.
        assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models


def test_client_exceptions_keep_code_and_details(digits_server) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=10) as client:
        with pytest.raises(deepvis.NotFound) as info:
            client.explain(np.zeros((32, 32), np.uint8), model="resnet1000")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "resnet1000" in info.value.details


def test_server_process_serves_and_stops_cleanly_on_sigterm(tmp_path, sample_paths) -> None:
    with ServerProcess() as server:
        assert f"serving digits on {server.address}" in server.serving_line
        with deepvis.Client(server.address, timeout=30) as client:
            assert client.explain(str(sample_paths[0])).target == 0
        assert server.stop() == 0


def test_server_refuses_a_bad_config(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[models]]\nname = "m"\narch = "resnet18"\nnum_classes = 10\n')
    proc = subprocess.run(
        [sys.executable, "-m", "deepvis_server", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "ConfigError: model 'm': missing required key 'input_size'" in proc.stderr
