"""Dynamic batching: one asyncio task per model groups compatible requests for the device thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .batch_policy import BatchPolicy
from .batch_step import (
    BatchStep,
    DeviceOutOfMemory,
    FatalDeviceError,
    ItemResult,
    WrongResultCount,
)
from .errors import DeadlineExceeded, DeepvisError, ResourceExhausted, Unavailable
from .loops import ModelLoop
from .methods import Method, MethodRequest
from .models import ServedModel

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkItem:
    """A validated, preprocessed request waiting for a batch."""

    x: torch.Tensor  # [C, H, W] on the CPU: uint8 pixels, or a float32 model tensor
    method: Method
    request: MethodRequest
    top_k: int
    deadline: float | None  # loop.time() after which it is no longer worth computing
    future: asyncio.Future[ItemResult]
    half: bool = False  # the main result is wanted as float16 (and drawn into no picture)
    arrival: float = 0.0
    key: Hashable = field(init=False)

    def __post_init__(self) -> None:
        # Pixels and float tensors batch apart: a batch is stacked, then normalised as one.
        self.key = (self.method.batch_key(self.request), tuple(self.x.shape), self.x.dtype)


class BatchMetrics(Protocol):
    """Where a batcher reports each batch it ran (Observability, on a server)."""

    def record_batch(
        self, model: str, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        """A batch of `len(queue_seconds)` items of `model` ran: how long each item waited
        from its arrival to the batch's start, and how long the batch computed."""


class Batcher(ModelLoop):
    """Groups compatible items of one model (same method, graph-changing parameters and shape;
    targets may differ) into batches, sent when `BatchPolicy` says (adaptive, or after a fixed
    `max_delay_s`), and runs each on the executor that owns the device."""

    kind = "batcher"

    def __init__(
        self,
        model: ServedModel,
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float | None = None,
        max_queue_size: int = 1024,
        metrics: BatchMetrics | None = None,
    ) -> None:
        super().__init__(model)
        self.max_batch_size = max_batch_size
        self.policy = BatchPolicy(max_batch_size, fixed_delay_s=max_delay_s)
        self.max_queue_size = max_queue_size
        self._executor = executor
        self._pending: deque[WorkItem] = deque()
        self._arrived = asyncio.Event()
        # Items that reached the device: a request dropped before compute never counts here.
        self.computed_items = 0
        self.closed = False
        self.metrics = metrics
        self._step = BatchStep(model)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def _stopped(self) -> None:
        while self._pending:
            _fail(self._pending.popleft(), Unavailable("server is shutting down"))

    def submit(self, item: WorkItem) -> asyncio.Future[ItemResult]:
        """Queues an item; refuses at once when the queue is full."""
        if len(self._pending) >= self.max_queue_size:
            raise Unavailable(
                f"model '{self.model.name}' has {len(self._pending)} requests queued (the limit); "
                "retry with backoff"
            )
        if self.closed:
            raise Unavailable("server is shutting down; retry on another replica")
        item.arrival = asyncio.get_running_loop().time()
        self._pending.append(item)
        self._arrived.set()
        return item.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._pending[0]
            while not first.future.done():
                remaining = self.policy.wants_more(
                    loop.time(), self._count(first.key), first.arrival, first.deadline
                )
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    pass  # the policy is asked again: the wait may have been extended
            batch = self._take(first.key, loop.time())
            if batch:
                started = loop.time()
                try:
                    await self._run(batch)
                except asyncio.CancelledError:
                    for it in batch:
                        _fail(it, Unavailable("server is shutting down"))
                    raise
                except Exception:  # noqa: BLE001 - the loop must outlive any one batch
                    log.exception("batch of %d failed outside the method", len(batch))
                    for it in batch:
                        _fail(it, DeepvisError("internal error while running the batch"))
                now = loop.time()
                self.policy.ran(len(batch), self._count(first.key), now - started, now)

    def _count(self, key: Hashable) -> int:
        return sum(1 for it in self._pending if it.key == key)

    def _take(self, key: Hashable, now: float) -> list[WorkItem]:
        """Removes up to max_batch_size live items with `key`, in arrival order; drops dead ones."""
        batch: list[WorkItem] = []
        keep: deque[WorkItem] = deque()
        for it in self._pending:
            if it.future.done():  # cancelled: the client went away
                continue
            if it.deadline is not None and now >= it.deadline:
                _fail(it, DeadlineExceeded("deadline passed while queued; nothing was computed"))
                continue
            if it.key == key and len(batch) < self.max_batch_size:
                batch.append(it)
            else:
                keep.append(it)
        self._pending = keep
        return batch

    def _compute(
        self, batch: list[WorkItem]
    ) -> tuple[list[tuple[WorkItem, ItemResult]], list[WorkItem]]:
        """Runs on the device thread: one method call for the live items of the batch.

        Items whose client went away or whose deadline passed while the device thread was
        busy elsewhere are dropped here, before any device work.
        """
        now = time.monotonic()  # the event loop's clock: deadlines are loop.time() values
        live = [
            it
            for it in batch
            if not it.future.done() and (it.deadline is None or now < it.deadline)
        ]
        dead = [it for it in batch if it not in live and not it.future.done()]
        if not live:
            return [], dead
        results = self._step(
            live[0].method,
            [it.x for it in live],
            [it.request for it in live],
            [it.top_k for it in live],
            half=all(it.half for it in live),
        )
        self.computed_items += len(live)
        return list(zip(live, results, strict=True)), dead

    async def _run(self, batch: list[WorkItem]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outcome = await loop.run_in_executor(self._executor, self._compute, batch)
        except FatalDeviceError as e:
            for it in batch:
                _fail(it, Unavailable("the device failed; this server is going down"))
            self._device_lost(e)
            return
        except WrongResultCount as e:
            log.error("%s; failing the batch's %d item(s)", e, len(batch))
            for it in batch:
                _fail(it, DeepvisError("internal error while running the method"))
            return
        except DeviceOutOfMemory:
            if len(batch) == 1:
                _fail(
                    batch[0],
                    ResourceExhausted(
                        f"the device ran out of memory on this one input of model '{self.model.name}'; "
                        "send a smaller input or use a smaller model"
                    ),
                )
                return
            # Split and retry: halves often fit where the whole batch did not.
            log.warning("out of device memory on a batch of %d; splitting", len(batch))
            half = len(batch) // 2
            await self._run(batch[:half])
            await self._run(batch[half:])
            return
        except DeepvisError as e:
            if len(batch) == 1:
                _fail(batch[0], e)
                return
            outcome = None
        except Exception:  # noqa: BLE001
            if len(batch) == 1:
                log.exception("method %s failed on model %s", batch[0].method.name, self.model.name)
                _fail(batch[0], DeepvisError("internal error while running the method"))
                return
            log.warning(
                "batch of %d failed; retrying item by item to isolate the cause", len(batch)
            )
            outcome = None
        if outcome is None:
            # Only the guilty item fails: rerun each one alone.
            for it in batch:
                await self._run([it])
            return
        results, dead = outcome
        for it in dead:
            _fail(it, DeadlineExceeded("deadline passed while queued; nothing was computed"))
        for it, res in results:
            res.queue_ms = (started - it.arrival) * 1000.0
            if not it.future.done():
                it.future.set_result(res)
        if results and self.metrics is not None:
            self.metrics.record_batch(
                self.model.name,
                [res.queue_ms / 1000.0 for _, res in results],
                results[0][1].compute_ms / 1000.0,
            )


def _fail(item: WorkItem, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
