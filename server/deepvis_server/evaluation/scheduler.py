"""The Evaluate scheduler: evaluations' device work in small batches, shared across clients,
between other requests; each stream keeps only its latest progress."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch

from ..batch_step import is_fatal_device_error
from ..errors import DeadlineExceeded, DeepvisError, ResourceExhausted, Unavailable
from ..loops import ModelLoop
from ..mailbox import Mailbox
from ..methods import Method, MethodRequest
from ..models import ServedModel
from .randomization import CopyState, RandomizedCopies, SeedSet

log = logging.getLogger(__name__)
T = TypeVar("T")


class Progress(NamedTuple):
    """How far an evaluation is: work rows done of all, and what the last piece was part of."""

    done: int
    total: int
    stage: str


@dataclass(eq=False)
class JobState:
    """One evaluation as the scheduler and its stream see it.

    What waits for the stream is bounded whatever its reader does: the newest progress not yet
    taken (a newer one replaces it), the result, or the error that ended the job.
    """

    total: int  # work rows in all
    deadline: float  # on the event loop's clock
    arrival: float = field(default_factory=time.perf_counter)
    done: int = 0
    max_batch_jobs: int = 1  # the most jobs whose work shared one of its batches
    first_work: float | None = None
    last_work: float | None = None
    cancelled: bool = False
    finished: bool = False
    task: asyncio.Task[None] | None = None
    seeds: list[SeedSet] = field(default_factory=list)  # randomization seeds it holds
    _mail: Mailbox[Progress, Any] = field(default_factory=Mailbox, repr=False)

    @property
    def ended(self) -> bool:
        return self.cancelled or self.finished

    def progress(self, rows: int, stage: str) -> None:
        """Counts rows of work done; the latest progress replaces one not yet sent."""
        now = time.perf_counter()
        if self.first_work is None:
            self.first_work = now
        self.last_work = now
        self.done += rows
        self._mail.progress(Progress(self.done, self.total, stage))

    def finish(self, result: Any) -> None:
        self.finished = True
        self._mail.result(result)

    def fail(self, error: BaseException) -> None:
        if self.finished:
            return
        self.finished = True
        self._mail.error(error)

    def timing(self) -> tuple[float, float]:
        """Milliseconds from arrival to the first piece of work, and from it to the last."""
        first = self.first_work or self.arrival
        return (first - self.arrival) * 1000.0, ((self.last_work or first) - first) * 1000.0

    def stream(self) -> AsyncGenerator[Progress | Any, None]:
        """Progress as it comes (the latest when the reader falls behind), then the result;
        raises what failed the job."""
        return self._mail.stream()


# How a piece of work's rows come out of a batch: a forward pass gives logits [k, classes];
# an explanation gives the method's maps [k, ...].
Consume = Callable[[int, int, torch.Tensor], None]


@dataclass(eq=False)
class Work:
    """Rows of device work of one job: inputs `build` makes (on the device thread, rows
    [start, stop) as model input [k, C, H, W]) run through the model (`method` None: a forward
    pass) or through a method (on the served model, or on a randomized copy at `state`), the
    outputs handed to `consume` (also on the device thread)."""

    job: JobState
    stage: str
    rows: int
    build: Callable[[int, int], torch.Tensor]
    consume: Consume
    method: Method | None = None
    requests: Sequence[MethodRequest] = ()  # explanations: one per row
    state: CopyState | None = None
    seeds: SeedSet | None = None  # the seed set of `state`
    passes: int = 1  # work rows per row (integrated gradients: its quadrature points)
    next: int = 0  # rows handed to a batch so far
    future: asyncio.Future[None] | None = None
    warnings: set[str] = field(default_factory=set)  # the method's, about the model
    key: Hashable = field(init=False)

    def __post_init__(self) -> None:
        if self.method is None:
            self.key = ("forward",)
        else:
            self.key = ("explain", self.state, self.method.batch_key(self.requests[0]))


@dataclass(eq=False)
class Call:
    """A function a job runs on the device thread between batches (small work: rankings,
    similarities, building a seed's re-initialized layers)."""

    job: JobState
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


Slice = tuple[Work, int, int]


class Evaluator(ModelLoop):
    """Runs the device work of every evaluation of one model.

    One asyncio task loops: take the calls due and one batch, run them as one call on the
    executor that owns the device, resolve what finished. A batch holds rows of works that
    can run together (forward passes; or one method on one copy with one batch key), from the
    job whose turn it is first, then from any other job: evaluations of several clients share
    batches. Each round is one call on the device thread, so Explain batches and render steps
    interleave with evaluations instead of waiting for them. Work of a job that was cancelled
    or whose deadline passed is dropped before it reaches the device.
    """

    kind = "evaluator"

    def __init__(
        self,
        model: ServedModel,
        executor: Executor,
        *,
        forward_batch: int,
        explain_batch: int,
        max_randomized_bytes: int,
    ) -> None:
        super().__init__(model)
        self.forward_batch = forward_batch
        self.explain_batch = explain_batch
        self.copies = RandomizedCopies(model, max_randomized_bytes)
        self._executor = executor
        self._works: list[Work] = []
        self._calls: list[Call] = []
        self._jobs: list[JobState] = []  # running, in turn order
        self._turn = 0
        self._wake = asyncio.Event()

    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    def _stopped(self) -> None:
        for job in list(self._jobs):
            job.fail(Unavailable("server is shutting down"))
            self.cancel(job)

    def admit(self, job: JobState, seeds: Sequence[int]) -> None:
        """Takes a job in, holding the randomization seeds it needs (refused here, before
        anything runs, when they do not fit)."""
        held: list[SeedSet] = []
        try:
            for seed in seeds:
                held.append(self.copies.acquire(seed))
        except DeepvisError:
            for entry in held:
                self.copies.release(entry)
            raise
        job.seeds = held
        self._jobs.append(job)

    def cancel(self, job: JobState) -> None:
        """Stops a job: its work not yet run is dropped, its seeds released, its task
        cancelled. Safe to call more than once."""
        if job not in self._jobs:
            return
        self._jobs.remove(job)
        job.cancelled = True
        for entry in job.seeds:
            self.copies.release(entry)
        job.seeds = []
        if job.task is not None and not job.task.done():
            job.task.cancel()
        self._wake.set()

    # --- what a job's coroutine awaits ----------------------------------------------------

    def run(self, work: Work) -> asyncio.Future[None]:
        """Queues a piece of work; the future resolves once all its rows are consumed."""
        work.future = asyncio.get_running_loop().create_future()
        if work.rows == 0:
            work.future.set_result(None)
            return work.future
        self._works.append(work)
        self._wake.set()
        return work.future

    def call(self, job: JobState, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Runs `fn` on the device thread before the next batch; resolves with its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append(Call(job, fn, future))
        self._wake.set()
        return future

    # --- the loop --------------------------------------------------------------------------

    def _drop_dead(self, now: float) -> None:
        for job in list(self._jobs):
            if not job.ended and now >= job.deadline:
                job.fail(DeadlineExceeded("the evaluation's deadline passed"))
                self.cancel(job)
        live_works = []
        for w in self._works:
            if w.job.ended or w.future is None or w.future.done():
                if w.future is not None and not w.future.done():
                    w.future.cancel()
                continue
            live_works.append(w)
        self._works = live_works
        live_calls = []
        for c in self._calls:
            if c.job.ended or c.future.done():
                if not c.future.done():
                    c.future.cancel()
                continue
            live_calls.append(c)
        self._calls = live_calls

    def _plan(self) -> list[Slice]:
        """One batch: the first pending work of the job whose turn it is leads; rows of any
        job's works with the same key fill the rest, in queue order."""
        if not self._works:
            return []
        jobs = [j for j in self._jobs if any(w.job is j for w in self._works)]
        if not jobs:
            return []
        self._turn = (self._turn + 1) % len(jobs)
        lead_job = jobs[self._turn]
        lead = next(w for w in self._works if w.job is lead_job)
        room = self.forward_batch if lead.method is None else self.explain_batch
        slices: list[Slice] = []
        for w in [lead, *(w for w in self._works if w is not lead and w.key == lead.key)]:
            if room <= 0:
                break
            take = min(room, w.rows - w.next)
            if take <= 0:
                continue
            slices.append((w, w.next, w.next + take))
            w.next += take
            room -= take
        return slices

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead(loop.time())
            if not self._works and not self._calls:
                self._wake.clear()
                timeout = min((j.deadline for j in self._jobs), default=None)
                try:
                    if timeout is None:
                        await self._wake.wait()
                    else:
                        await asyncio.wait_for(self._wake.wait(), max(0.0, timeout - loop.time()))
                except TimeoutError:
                    pass
                continue
            calls, self._calls = self._calls, []
            slices = self._plan()
            try:
                outcome = await loop.run_in_executor(self._executor, self._round, calls, slices)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one round
                log.exception("evaluation round failed on model %s", self.model.name)
                outcome = ([e] * len(calls), e)
            self._resolve(calls, slices, *outcome)

    def _round(
        self, calls: list[Call], slices: list[Slice]
    ) -> tuple[list[Any], BaseException | None]:
        """Device thread: the calls, then one batch. Returns each call's result (or the
        exception it raised) and the batch's exception, if any."""
        results: list[Any] = []
        for c in calls:
            if c.job.ended:
                results.append(None)
                continue
            try:
                results.append(c.fn())
            except Exception as e:  # noqa: BLE001 - fails the call's job alone
                results.append(self._device_error(e))
        live = [(w, a, b) for w, a, b in slices if not w.job.ended]
        if not live:
            return results, None
        try:
            self._batch(live)
        except Exception as e:  # noqa: BLE001 - fails the batch's jobs
            return results, self._device_error(e)
        return results, None

    def _device_error(self, e: BaseException) -> BaseException:
        if isinstance(e, torch.OutOfMemoryError):
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            return ResourceExhausted(
                f"the device ran out of memory evaluating model '{self.model.name}'; the "
                "server's evaluate_batch may be too large for it, or send fewer inputs"
            )
        if isinstance(e, RuntimeError) and is_fatal_device_error(e):
            return _Fatal(e)
        return e

    def _batch(self, slices: list[Slice]) -> None:
        """Device thread: builds the rows, runs them (forward or the method), hands the
        outputs back slice by slice."""
        lead = slices[0][0]
        x = torch.cat([w.build(a, b) for w, a, b in slices])
        if self.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fast = self.model.spec.fast
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=fast):
            if lead.method is None:
                with torch.no_grad():
                    out = self.model.module(x).float()
            else:
                model = self.model
                if lead.state is not None:
                    assert lead.seeds is not None
                    model = self.copies.model_at(lead.state, lead.seeds)
                requests = [r for w, a, b in slices for r in w.requests[a:b]]
                result = lead.method.run(model, x, requests)
                out = result.arrays.detach().float()
                for w, _, _ in slices:
                    w.warnings.update(result.warnings)
        at = 0
        for w, a, b in slices:
            w.consume(a, b, out[at : at + b - a])
            at += b - a

    def _resolve(
        self,
        calls: list[Call],
        slices: list[Slice],
        results: list[Any],
        batch_error: BaseException | None,
    ) -> None:
        for c, r in zip(calls, results, strict=True):
            if c.future.done():
                continue
            if isinstance(r, BaseException):
                self._fail_job(c.job, r)
            else:
                c.future.set_result(r)
        sharing = len({w.job for w, _, _ in slices})
        for w, a, b in slices:
            if w.job.ended:
                continue
            w.job.max_batch_jobs = max(w.job.max_batch_jobs, sharing)
            if batch_error is not None:
                self._fail_job(w.job, batch_error)
                continue
            w.job.progress((b - a) * w.passes, w.stage)
            if b == w.rows and w.future is not None and not w.future.done():
                self._works.remove(w)
                w.future.set_result(None)

    def _fail_job(self, job: JobState, error: BaseException) -> None:
        if isinstance(error, _Fatal):
            job.fail(Unavailable("the device failed; this server is going down"))
            self.cancel(job)
            self._device_lost(error.error)
            return
        if not isinstance(error, DeepvisError):
            log.error("evaluation failed on model %s", self.model.name, exc_info=error)
            error = DeepvisError("internal error while evaluating; the server logged it")
        job.fail(error)
        self.cancel(job)


class _Fatal(Exception):
    """A device error after which nothing runs (see batch_step.is_fatal_device_error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
