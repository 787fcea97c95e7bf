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
    Staged,
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
    `max_delay_s`), and runs each on the executor that owns the device.

    While a batch computes, a full batch of queued items (`max_batch_size` of them) is taken
    at once, its inputs staged on `staging` (stacked and normalised, or pinned for a GPU), and
    queued on the device executor behind the running one: the device thread goes from one to
    the next without waiting on the event loop, whose answers to the first batch are sent
    meanwhile. Anything less than a full batch waits for the device to free, when the policy
    decides whether more of its clients are worth waiting for."""

    kind = "batcher"
    # Batches on the device executor at once: the one computing and the one staged behind it.
    DEPTH = 2

    def __init__(
        self,
        model: ServedModel,
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float | None = None,
        max_queue_size: int = 1024,
        metrics: BatchMetrics | None = None,
        staging: Executor | None = None,
    ) -> None:
        super().__init__(model)
        self.max_batch_size = max_batch_size
        self.policy = BatchPolicy(max_batch_size, fixed_delay_s=max_delay_s)
        self.max_queue_size = max_queue_size
        self._executor = executor
        self._staging = staging  # None: the event loop's default executor
        self._pending: deque[WorkItem] = deque()
        self._changed = asyncio.Event()  # an item arrived or a batch finished
        self._running: set[asyncio.Task[None]] = set()
        # Items that reached the device: a request dropped before compute never counts here.
        self.computed_items = 0
        # Batches that were staged while another computed (a measure of the pipelining).
        self.staged_batches = 0
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
        self._changed.set()
        return item.future

    async def _loop(self) -> None:
        try:
            while True:
                await self._next_batch()
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _changes(self, timeout: float | None = None) -> None:
        """Waits until an item arrives or a batch finishes (or `timeout` seconds pass)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def _next_batch(self) -> None:
        """Sends one batch to the device, or waits for something to change."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            await self._changes()
            return
        first = self._pending[0]
        if self._running:  # the device is busy: only a full batch goes now, staged
            if len(self._running) < self.DEPTH and self._count(first.key) >= self.max_batch_size:
                # The count includes items whose client left: what is taken may be fewer, or none.
                batch = self._take(first.key, loop.time())
                if batch:
                    self._launch(batch, staged=True)
            else:
                await self._changes()
            return
        while not first.future.done():
            remaining = self._wait_for(first, loop.time())
            if remaining <= 0:
                break
            await self._changes(remaining)  # the policy is asked again: the wait may grow
        batch = self._take(first.key, loop.time())
        if batch:
            self._launch(batch, staged=False)

    def _launch(self, batch: list[WorkItem], *, staged: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._batch(batch, staged))
        self._running.add(task)

    async def _batch(self, batch: list[WorkItem], staged: bool) -> None:
        """Runs one batch (staging it first when `staged`); when the device frees with it,
        tells the policy how it went and sends the next batch at once if that is due."""
        loop = asyncio.get_running_loop()
        compute_s = 0.0
        try:
            prepared = await self._stage(batch) if staged else None
            compute_s = await self._run(batch, prepared)
        except asyncio.CancelledError:
            for it in batch:
                _fail(it, Unavailable("server is shutting down"))
            raise
        except Exception:  # noqa: BLE001 - the loop must outlive any one batch
            log.exception("batch of %d failed outside the method", len(batch))
            for it in batch:
                _fail(it, DeepvisError("internal error while running the batch"))
        finally:
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type]
        if not self._running:  # the device frees now
            now = loop.time()
            self.policy.ran(len(batch), self._count(batch[0].key), compute_s, now)
            self._send_if_due(now)
        self._changed.set()

    def _send_if_due(self, now: float) -> None:
        """As the device frees: the next batch leaves in the same step if the policy says it is
        due, before the answers just given are sent or new requests read."""
        first = self._pending[0] if self._pending else None
        if first is None or first.future.done():
            return  # the loop sees to it
        if self._wait_for(first, now) <= 0:
            batch = self._take(first.key, now)
            if batch:
                self._launch(batch, staged=False)

    async def _stage(self, batch: list[WorkItem]) -> Staged | None:
        """The batch's inputs staged off the device thread; None where that failed (the
        device thread then prepares them, and reports any error as it always does)."""
        self.staged_batches += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._staging, self._step.stage, [it.x for it in batch]
            )
        except Exception:  # noqa: BLE001 - e.g. no page-locked memory: prepared later instead
            log.warning("staging a batch of %d failed; preparing it on the device", len(batch))
            return None

    def _count(self, key: Hashable) -> int:
        return sum(1 for it in self._pending if it.key == key)

    def _wait_for(self, first: WorkItem, now: float) -> float:
        """How long the batch that `first` heads may still wait, as the policy says: one pass
        over the queue for its compatible items' count and newest arrival."""
        queued, newest = 0, first.arrival
        for it in self._pending:
            if it.key == first.key:
                queued, newest = queued + 1, it.arrival
        return self.policy.wants_more(now, queued, first.arrival, first.deadline, newest)

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
        self, batch: list[WorkItem], staged: Staged | None
    ) -> tuple[list[tuple[WorkItem, ItemResult]], list[WorkItem], float]:
        """Runs on the device thread: one method call for the live items of the batch; with
        the items dropped and when the compute started (the event loop's clock).

        Items whose client went away or whose deadline passed while the device thread was
        busy elsewhere are dropped here, before any device work.
        """
        now = time.monotonic()  # the event loop's clock: deadlines are loop.time() values
        keep = [
            i
            for i, it in enumerate(batch)
            if not it.future.done() and (it.deadline is None or now < it.deadline)
        ]
        live = [batch[i] for i in keep]
        dead = [it for it in batch if it not in live and not it.future.done()]
        if not live:
            return [], dead, now
        if staged is not None and len(keep) < len(batch):
            staged = staged.rows(keep)
        results = self._step(
            live[0].method,
            [it.x for it in live],
            [it.request for it in live],
            [it.top_k for it in live],
            half=all(it.half for it in live),
            staged=staged,
        )
        self.computed_items += len(live)
        return list(zip(live, results, strict=True)), dead, now

    async def _run(self, batch: list[WorkItem], staged: Staged | None = None) -> float:
        """Runs a batch on the device and answers its items; the seconds it computed."""
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._executor, self._compute, batch, staged)
        except FatalDeviceError as e:
            for it in batch:
                _fail(it, Unavailable("the device failed; this server is going down"))
            self._device_lost(e)
            return 0.0
        except WrongResultCount as e:
            log.error("%s; failing the batch's %d item(s)", e, len(batch))
            for it in batch:
                _fail(it, DeepvisError("internal error while running the method"))
            return 0.0
        except DeviceOutOfMemory:
            if len(batch) == 1:
                _fail(
                    batch[0],
                    ResourceExhausted(
                        f"the device ran out of memory on this one input of model '{self.model.name}'; "
                        "send a smaller input or use a smaller model"
                    ),
                )
                return 0.0
            # Split and retry: halves often fit where the whole batch did not.
            log.warning("out of device memory on a batch of %d; splitting", len(batch))
            half = len(batch) // 2
            return await self._run(batch[:half]) + await self._run(batch[half:])
        except DeepvisError as e:
            if len(batch) == 1:
                _fail(batch[0], e)
                return 0.0
            outcome = None
        except Exception:  # noqa: BLE001
            if len(batch) == 1:
                log.exception("method %s failed on model %s", batch[0].method.name, self.model.name)
                _fail(batch[0], DeepvisError("internal error while running the method"))
                return 0.0
            log.warning(
                "batch of %d failed; retrying item by item to isolate the cause", len(batch)
            )
            outcome = None
        if outcome is None:
            # Only the guilty item fails: rerun each one alone.
            return sum([await self._run([it]) for it in batch])
        results, dead, started = outcome
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
        return results[0][1].compute_ms / 1000.0 if results else 0.0


def _fail(item: WorkItem, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
