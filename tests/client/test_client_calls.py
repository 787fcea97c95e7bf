"""Client and AsyncClient calls against an in-process fake server: models, Explain,
DescribeModel, health and Visualize, errors and cancellation."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

import deepvis
from deepvis.v1 import deepvis_pb2

from .fakes import (
    DEAD_ADDRESS,
    FakeExplainer,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


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
