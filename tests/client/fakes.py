"""What the client's unit tests share: messages as a server sends them, an in-process fake
server (the `fake_server` fixture serves it), and how they run a fresh Python or read the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
# Nothing listens on port 1, so connecting fails at once with UNAVAILABLE.
DEAD_ADDRESS = "127.0.0.1:1"


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (5, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def tensor_pb(arr: np.ndarray, wire: Any) -> deepvis_pb2.Tensor:
    return deepvis_pb2.Tensor(dtype=wire, shape=list(arr.shape), data=arr.tobytes())


def tiny_info() -> deepvis_pb2.ModelInfo:
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


def tiny_description() -> deepvis_pb2.DescribeModelResponse:
    return deepvis_pb2.DescribeModelResponse(
        model=tiny_info(),
        layers=[
            deepvis_pb2.LayerInfo(name="conv1", type="Conv2d", output_shape=[64, 8, 8], calls=1),
            deepvis_pb2.LayerInfo(name="act", type="ReLU", output_shape=[64, 8, 8], calls=3),
            deepvis_pb2.LayerInfo(name="branches", type="Split", output_shape=[], calls=1),
            deepvis_pb2.LayerInfo(name="fc", type="Linear", output_shape=[3], calls=1),
        ],
        default_cam_layer="conv1",
        non_relu_activations=["silu", "gelu"],
    )


def run_python(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(CLIENT_DIR), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# A Python without grpcio-health-checking, as a thin client install is (see tests/hide).
HIDE_GRPC_HEALTH = {
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "hide"), str(CLIENT_DIR)]
    ),
    "DEEPVIS_TEST_HIDE": "grpc_health",
}


def err_lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


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
        # Explain and ExplainBatch calls: how many, how many at once at most, and how long
        # each takes (seconds), so that a test can see concurrency.
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0

    def ListModels(self, request: Any, context: Any) -> deepvis_pb2.ListModelsResponse:
        with self._lock:
            self.list_calls += 1
        return deepvis_pb2.ListModelsResponse(
            models=[
                tiny_info(),
                deepvis_pb2.ModelInfo(name="other", arch="x", num_classes=2, channels=1),
            ]
        )

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def Explain(self, request: Any, context: Any) -> deepvis_pb2.ExplainResponse:
        self._enter()
        try:
            if self.delay:
                time.sleep(self.delay)
            return self._explain(request, context)
        finally:
            self._leave()

    def ExplainBatch(self, request: Any, context: Any) -> deepvis_pb2.ExplainBatchResponse:
        self._enter()
        try:
            if self.delay:
                time.sleep(self.delay)
            items = []
            for item in request.requests:
                if item.model not in ("tiny", "slow"):
                    error = deepvis_pb2.ItemError(code=5, message=f"no model {item.model!r}")
                    items.append(deepvis_pb2.ExplainBatchItem(error=error))
                    continue
                response = self._explain(item, context)
                items.append(deepvis_pb2.ExplainBatchItem(response=response))
            return deepvis_pb2.ExplainBatchResponse(items=items)
        finally:
            self._leave()

    def _explain(self, request: Any, context: Any) -> deepvis_pb2.ExplainResponse:
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
            resp.image_png = png_bytes("RGB", (8, 8))
        if request.method == deepvis_pb2.METHOD_ACTIVATIONS:
            k = request.top_k_channels or 4
            for layer in request.layers or ["conv1"]:
                if not request.output.omit_array:
                    feats = np.full((k, 4, 4), 2.0, "<f4")
                    channels = np.arange(k, dtype="<i8")[::-1].copy()
                    resp.arrays.add(name=layer, tensor=tensor_pb(feats, deepvis_pb2.DTYPE_FLOAT32))
                    resp.arrays.add(
                        name=f"{layer}.channels",
                        tensor=tensor_pb(channels, deepvis_pb2.DTYPE_INT64),
                    )
                if request.output.render:
                    resp.images.add(name=f"{layer}.grid", png=png_bytes("L", (16, 4)))
                    resp.images.add(name=f"{layer}.heatmap", png=png_bytes("RGB", (8, 8)))
        return resp

    def DescribeModel(self, request: Any, context: Any) -> deepvis_pb2.DescribeModelResponse:
        with self._lock:
            self.describe_requests.append(request)
        if request.model != "tiny":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.model!r}")
        return tiny_description()

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
                    step=step, steps=steps, objective=step / 8, image_png=png_bytes("RGB", (8, 4))
                )
            )
        if request.model == "noresult":
            return
        n = request.batch or 1
        height, width = request.height or 8, request.width or 8
        f16 = request.array_dtype == deepvis_pb2.DTYPE_FLOAT16
        arr = np.full((n, 3, height, width), 0.25, "<f2" if f16 else "<f4")
        result = deepvis_pb2.VisualizeResult(
            array=tensor_pb(arr, request.array_dtype),
            images_png=[png_bytes("RGB", (width, height))] * n,
            objective=-1.5 if request.objective.negate else 1.5,
            steps=steps,
            queue_ms=2.0,
            compute_ms=30.0,
            max_batch_jobs=2,
        )
        if request.HasField("input") and request.objective.WhichOneof("kind") != "layer":
            attribution = np.full((3, 8, 8), 0.125, "<f4")
            result.attribution.CopyFrom(tensor_pb(attribution, deepvis_pb2.DTYPE_FLOAT32))
            result.attribution_png = png_bytes("RGB", (8, 8))
        yield deepvis_pb2.VisualizeResponse(result=result)


@contextmanager
def serving(
    servicer: deepvis_pb2_grpc.ExplainerServicer,
    *handlers: grpc.GenericRpcHandler,
    workers: int = 8,
) -> Iterator[str]:
    """An in-process gRPC server on port 0 answering with `servicer` (and `handlers`); yields
    its address and stops it at the end."""

    def add(server: grpc.Server) -> None:
        deepvis_pb2_grpc.add_ExplainerServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers(handlers)

    with grpc_server(add, workers) as address:
        yield address


@contextmanager
def grpc_server(add: Callable[[grpc.Server], None], workers: int = 8) -> Iterator[str]:
    """An in-process gRPC server on port 0 with what `add` registers on it; yields its
    address and stops it at the end."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers))
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
