"""The batcher's pipeline, on a device thread held by the test: while a batch computes, the next
full batch is staged (inputs stacked and normalised off the device thread) and queued behind
it, so that the device thread goes from one batch to the next while the event loop is busy;
anything less than a full batch waits for the device to free. Each staged batch must answer
exactly what the same items computed alone give."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from deepvis_server.batch_step import BatchStep
from deepvis_server.batcher import Batcher, WorkItem
from deepvis_server.config import load_config
from deepvis_server.methods import REGISTRY, ClassTarget, MethodRequest
from deepvis_server.models import load_model

pytestmark = pytest.mark.fast

BATCH = 4


class HeldDevice(ThreadPoolExecutor):
    """The device thread: holds its jobs until the test opens the gate, and records when each
    job started and ended on the thread (time.monotonic, the loop's clock)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.gate = threading.Event()
        self.submitted = threading.Semaphore(0)
        self.spans: list[tuple[float, float]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted.release()

        def held() -> Any:
            self.gate.wait()
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans.append((t0, time.monotonic()))

        return super().submit(held)


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_model(load_config().models[0], torch.device("cpu"))


def request_of(digits: Any, method: str, target: int) -> MethodRequest:
    m = REGISTRY[method]
    layers = () if method in ("saliency", "guided_backprop") else (digits.default_cam_layer,)
    target_ = None if method == "activations" else ClassTarget(target)
    return m.prepare(digits, MethodRequest(target=target_, layers=layers))


def items(digits: Any, method: str, seeds: range) -> list[WorkItem]:
    loop = asyncio.get_running_loop()
    out = []
    for s in seeds:
        x = torch.from_numpy(
            np.random.default_rng(s).integers(0, 256, (1, *digits.spec.input_size), np.uint8)
        )
        out.append(
            WorkItem(
                x,
                REGISTRY[method],
                request_of(digits, method, s % 10),
                3,
                None,
                loop.create_future(),
            )
        )
    return out


def alone(digits: Any, its: list[WorkItem]) -> list[np.ndarray]:
    """Each item's array computed on its own, without staging: the oracle."""
    step = BatchStep(digits)
    return [step(it.method, [it.x], [it.request], [it.top_k], half=False)[0].array for it in its]


async def wait_submitted(device: HeldDevice) -> None:
    """Until the next batch is handed to the device thread (queued there, held)."""
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, device.submitted.acquire, True, 30)


@contextlib.asynccontextmanager
async def held_batcher(digits: Any) -> AsyncIterator[tuple[Batcher, HeldDevice]]:
    """A started batcher of BATCH items on a held device, with its staging thread; stopped,
    and both threads shut down, on the way out."""
    device = HeldDevice()
    staging = ThreadPoolExecutor(max_workers=1)
    batcher = Batcher(digits, device, max_batch_size=BATCH, staging=staging)
    batcher.start()
    try:
        yield batcher, device
    finally:
        await batcher.stop()
        device.shutdown()
        staging.shutdown()


@pytest.mark.parametrize("method", ["guided_backprop", "saliency", "grad_cam", "activations"])
def test_a_full_batch_is_staged_while_one_computes_and_runs_while_the_loop_is_busy(
    digits, method
) -> None:
    async def scenario() -> tuple[list[Any], list[WorkItem], float, Batcher, HeldDevice]:
        async with held_batcher(digits) as (batcher, device):
            its = items(digits, method, range(2 * BATCH))
            futures = [batcher.submit(it) for it in its[:BATCH]]
            await wait_submitted(device)  # the first batch is on the (held) device thread
            futures += [batcher.submit(it) for it in its[BATCH:]]
            await wait_submitted(device)  # ... and the second, staged, is queued behind it
            assert batcher.queue_depth == 0 and batcher.staged_batches == 1
            device.gate.set()
            time.sleep(1.0)  # the event loop is busy: nothing of the batcher can run
            busy_until = time.monotonic()
            results = await asyncio.gather(*futures)
            return results, its, busy_until, batcher, device

    results, its, busy_until, batcher, device = asyncio.run(scenario())
    assert [r.batch_size for r in results] == [BATCH] * (2 * BATCH)
    # The second batch started and finished on the device thread while the loop was blocked.
    assert len(device.spans) == 2
    assert device.spans[1][1] < busy_until, (device.spans, busy_until)
    for got, want in zip(results, alone(digits, its), strict=True):
        np.testing.assert_allclose(got.array, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_items_gone_from_a_staged_batch_are_dropped_and_the_rest_answered_right(digits) -> None:
    async def scenario() -> tuple[list[Any], list[WorkItem], list[asyncio.Future[Any]]]:
        async with held_batcher(digits) as (batcher, device):
            its = items(digits, "saliency", range(2 * BATCH))
            first = [batcher.submit(it) for it in its[:BATCH]]
            await wait_submitted(device)
            second = [batcher.submit(it) for it in its[BATCH:]]
            await wait_submitted(device)  # staged and queued
            second[1].cancel()  # its client goes away before the batch computes
            device.gate.set()
            await asyncio.gather(*first)
            done = await asyncio.gather(*second, return_exceptions=True)
            return done, its[BATCH:], second

    done, its, second = asyncio.run(scenario())
    assert second[1].cancelled()
    kept = [(r, it) for i, (r, it) in enumerate(zip(done, its, strict=True)) if i != 1]
    assert [r.batch_size for r, _ in kept] == [BATCH - 1] * (BATCH - 1)
    for (got, _), want in zip(kept, alone(digits, [it for _, it in kept]), strict=True):
        np.testing.assert_allclose(got.array, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_a_full_batch_whose_clients_all_left_is_never_launched(digits, caplog) -> None:
    async def scenario() -> tuple[list[Any], int]:
        async with held_batcher(digits) as (batcher, device):
            its = items(digits, "saliency", range(2 * BATCH))
            first = [batcher.submit(it) for it in its[:BATCH]]
            await wait_submitted(device)
            # A full batch queues behind the held one, and every client of it goes away.
            for it in its[BATCH:]:
                batcher.submit(it).cancel()
            await asyncio.sleep(0.05)  # the batcher sees a full count of dead items
            device.gate.set()
            done = await asyncio.gather(*first)
            await asyncio.sleep(0.05)
            return done, batcher.staged_batches

    done, staged = asyncio.run(scenario())
    assert [r.batch_size for r in done] == [BATCH] * BATCH
    assert staged == 0  # nothing was left to stage
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_less_than_a_full_batch_waits_for_the_device_to_free(digits) -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        async with held_batcher(digits) as (batcher, device):
            its = items(digits, "saliency", range(BATCH + 2))
            first = [batcher.submit(it) for it in its[:BATCH]]
            await wait_submitted(device)
            rest = [batcher.submit(it) for it in its[BATCH:]]
            await asyncio.sleep(0.2)  # far past any gathering window
            queued, staged = batcher.queue_depth, batcher.staged_batches
            device.gate.set()
            results = await asyncio.gather(*first, *rest)
            return queued, staged, [r.batch_size for r in results]

    queued, staged, sizes = asyncio.run(scenario())
    # Two of four could still be joined by more: they stay queued until the device frees.
    assert (queued, staged) == (2, 0)
    assert sizes == [BATCH] * BATCH + [2, 2]


def test_explain_batch_items_are_staged_beside_a_render_and_answer_as_alone() -> None:
    """On a real server: ExplainBatch calls whose items fill several batches, while a
    Visualize render takes its steps on the same device thread. The items queued while a
    batch computes are staged behind it, the render finishes, and every item answers what
    it answers alone."""
    import dataclasses

    import deepvis
    from deepvis_server.server import serve_in_thread

    cfg = load_config()
    spec = dataclasses.replace(cfg.models[0], max_batch_size=BATCH)
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (28, 28), np.uint8) for _ in range(6 * BATCH)]
    targets = [int(t) for t in rng.integers(0, 10, len(images))]
    with (
        serve_in_thread(dataclasses.replace(cfg, models=(spec,))) as server,
        deepvis.Client(server.bound_address, timeout=120) as client,
    ):
        batcher = server.engine.batchers[spec.name]
        render: list[Any] = []
        job = threading.Thread(
            target=lambda: render.append(client.visualize(3, model=spec.name, steps=64))
        )
        job.start()
        answers: list[list[Any]] = [[], []]
        calls = [
            threading.Thread(
                target=lambda k=k: answers[k].extend(
                    client.explain_batch(
                        images[k::2], model=spec.name, method="saliency", targets=targets[k::2]
                    )
                )
            )
            for k in range(2)
        ]
        for t in calls:
            t.start()
        for t in [*calls, job]:
            t.join(120)
        alone = [
            client.explain(image, model=spec.name, method="saliency", target=target)
            for image, target in zip(images, targets, strict=True)
        ]
    assert render and render[0].array.shape[0] == 1  # the render finished beside the batches
    assert batcher.staged_batches >= 1
    got = [answers[i % 2][i // 2] for i in range(len(images))]
    assert max(g.batch_size for g in got) == BATCH
    for g, a in zip(got, alone, strict=True):
        assert g.array is not None and a.array is not None
        np.testing.assert_allclose(g.array, a.array, rtol=1e-4, atol=1e-6 * np.abs(a.array).max())
