"""ExplainBatch: many inputs in one call, each item answered on its own, against a real server."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from oracles import TOL, captum_gbp, preprocess_digit, relative_error

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


def test_items_equal_captum_share_batches_and_keep_their_order(
    digits_server, digits_twin, sample_paths
) -> None:
    images = [str(p) for p in sample_paths]
    targets = [(i * 7 + 2) % 10 for i in range(len(images))]
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        results = client.explain_batch(images, targets=targets, render=False)
    assert len(results) == len(images)
    assert max(r.batch_size for r in results) > 1, "the items never shared a batch"
    for path, target, res in zip(sample_paths, targets, results, strict=True):
        assert res.target == target and res.image is None
        expected = captum_gbp(digits_twin, preprocess_digit(path), target)
        assert relative_error(res.array, expected) <= TOL


def test_one_bad_item_fails_alone(digits_server, sample_paths) -> None:
    good = [str(p) for p in sample_paths[:3]]
    wrong_size = np.zeros((4, 4, 5), dtype=np.uint8)  # 5 channels: not an image
    inputs: list[str | np.ndarray] = [good[0], wrong_size, good[1], good[2]]
    targets = [1, 1, 99, None]  # 99: beyond the digits model's 10 classes
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        with pytest.raises(ValueError, match=r"C in \(1, 3, 4\)"):
            # The client refuses the 5-channel array itself, before any call.
            client.explain_batch(inputs, targets=targets)
        inputs[1] = np.zeros((200, 300), dtype=np.uint8)  # valid pixels, resized by the server
        results = client.explain_batch(inputs, targets=targets, render=False, return_errors=True)
        assert isinstance(results[0], deepvis.Explanation) and results[0].target == 1
        assert isinstance(results[1], deepvis.Explanation) and results[1].target == 1
        assert isinstance(results[2], deepvis.InvalidArgument)
        assert results[2].code == grpc.StatusCode.INVALID_ARGUMENT
        assert "99" in str(results[2]) and "target" in str(results[2])
        assert isinstance(results[3], deepvis.Explanation)
        solo = client.explain(good[2], render=False)
        assert results[3].target == solo.target
        assert relative_error(results[3].array, solo.array) <= TOL
        # Without return_errors the first failed item is raised, named by its index.
        with pytest.raises(deepvis.InvalidArgument, match=r"^item 2: .*99"):
            client.explain_batch(inputs, targets=targets, render=False)


def test_items_name_unknown_models_and_methods_each(digits_server, sample_paths) -> None:
    img = sample_paths[0].read_bytes()
    ok = pb.ExplainRequest(model="digits", method=pb.METHOD_GRAD_CAM, input=pb.Input(image=img))
    unknown = pb.ExplainRequest(
        model="nope", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(image=img)
    )
    no_method = pb.ExplainRequest(model="digits", input=pb.Input(image=img))
    with grpc.insecure_channel(digits_server.bound_address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        resp = stub.ExplainBatch(
            pb.ExplainBatchRequest(requests=[ok, unknown, no_method, ok]), timeout=60
        )
        assert [i.WhichOneof("outcome") for i in resp.items] == [
            "response",
            "error",
            "error",
            "response",
        ]
        assert resp.items[0].response.method == pb.METHOD_GRAD_CAM
        assert resp.items[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert resp.items[1].error.field == "model"
        assert "served models: digits" in resp.items[1].error.message
        assert resp.items[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        # An empty call, and one over the limit, fail as a whole.
        for n in (0, 257):
            with pytest.raises(grpc.RpcError) as info:
                stub.ExplainBatch(pb.ExplainBatchRequest(requests=[ok] * n), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1 to 256" in info.value.details()


def test_chunks_and_the_async_client(digits_server, sample_paths) -> None:
    images = [str(p) for p in sample_paths]
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        whole = client.explain_batch(images, render=False)
        chunked = client.explain_batch(images, render=False, chunk=3)
        with pytest.raises(ValueError, match="chunk"):
            client.explain_batch(images, chunk=0)
        with pytest.raises(ValueError, match="one each"):
            client.explain_batch(images, targets=[1, 2])
        with pytest.raises(ValueError, match="empty"):
            client.explain_batch([])
        with pytest.raises(TypeError, match="sequence"):
            client.explain_batch(images[0])

    async def run() -> list:
        async with deepvis.AsyncClient(digits_server.bound_address, timeout=60) as client:
            return await client.explain_batch(images, render=True, chunk=4, targets=3)

    via_async = asyncio.run(run())
    for a, b, c in zip(whole, chunked, via_async, strict=True):
        assert a.target == b.target
        assert relative_error(b.array, a.array) <= TOL
        assert c.target == 3 and c.image is not None


def test_answers_beyond_the_message_limit_fail_alone(sample_paths) -> None:
    import dataclasses

    from deepvis_server.config import load_config
    from deepvis_server.server import serve_in_thread

    config = load_config()
    config = dataclasses.replace(
        config, limits=dataclasses.replace(config.limits, max_message_bytes=40_000)
    )
    images = [str(p) for p in sample_paths]
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            one = client.explain(images[0])  # float32 array and a picture: several KB
            results = client.explain_batch(images, return_errors=True)
    fitted = [r for r in results if isinstance(r, deepvis.Explanation)]
    refused = [r for r in results if not isinstance(r, deepvis.Explanation)]
    assert fitted and refused, "the limit should cut this batch in two"
    # The answers that fit come first and are whole; the rest say why and what to do.
    assert all(isinstance(r, deepvis.Explanation) for r in results[: len(fitted)])
    assert relative_error(fitted[0].array, one.array) <= TOL
    for err in refused:
        assert isinstance(err, deepvis.ResourceExhausted)
        assert "max_message_bytes is 40000" in str(err) and "fewer items" in str(err)
