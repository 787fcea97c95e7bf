"""Unit tests of the thin client: conversions, errors and CLI, against no or a fake server."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

import deepvis
from deepvis import _convert
from deepvis._cli import main
from deepvis._exceptions import from_rpc_error
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

CLIENT_DIR = Path(__file__).resolve().parents[1] / "client"
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
    assert req.layer == ""
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
        ({"method": "saliency"}, "guided_backprop"),
    ],
)
def test_request_to_pb_rejects(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _request(**overrides)


# --- methods -------------------------------------------------------------------------------


def test_methods_derived_from_enum() -> None:
    assert deepvis.methods() == ["guided_backprop"]


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


def _run_python(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(CLIENT_DIR), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, deepvis, deepvis._cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')); "
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
        ["explain", "x.png", "--out", str(tmp_path), "--method", "saliency"],
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


class FakeExplainer(deepvis_pb2_grpc.ExplainerServicer):
    """Answers like the real server in shape only: fixed model, arrays of zeros."""

    def __init__(self) -> None:
        self.list_calls = 0
        self.requests: list[deepvis_pb2.ExplainRequest] = []
        self._lock = threading.Lock()

    def ListModels(self, request: Any, context: Any) -> deepvis_pb2.ListModelsResponse:
        with self._lock:
            self.list_calls += 1
        return deepvis_pb2.ListModelsResponse(
            models=[
                deepvis_pb2.ModelInfo(
                    name="tiny",
                    arch="tests:tiny",
                    num_classes=3,
                    channels=3,
                    height=8,
                    width=8,
                    mean=[0.5] * 3,
                    std=[0.25] * 3,
                    labels=["a", "b", "c"],
                    methods=[deepvis_pb2.METHOD_GUIDED_BACKPROP],
                ),
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
        return resp


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeExplainer]]:
    servicer = FakeExplainer()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    deepvis_pb2_grpc.add_ExplainerServicer_to_server(servicer, server)
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
    assert models[0].methods == ("guided_backprop",)
    assert models[0].labels == ("a", "b", "c")


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
        "methods=guided-backprop",
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
