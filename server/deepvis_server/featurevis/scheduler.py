"""The Visualize scheduler: continuous batching of feature-visualization jobs, and their streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ..config import RenderLimits
from ..errors import DeepvisError, InvalidArgument, ResourceExhausted, Unavailable
from ..loops import ModelLoop
from ..mailbox import Mailbox
from ..models import ServedModel
from ..pictures import pixel_pngs, strip_png
from .dream import DreamBatch, DreamJob, dream_objective
from .optimization import RenderBatch, RenderEvent, RenderJob

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """A job's state at one step, as its stream sends it: the picture only when asked for."""

    step: int
    steps: int
    objective: float  # the mean over the job's images, before negation
    png: bytes | None  # the job's images side by side


@dataclass(frozen=True)
class Rendered:
    """A finished job, ready to send: its images as PNGs and how it was scheduled."""

    pixels: np.ndarray  # float32 [B, C, H, W] in [0, 1]
    pngs: list[bytes]
    objective: float
    steps: int
    queue_ms: float  # from submission to its first step
    compute_ms: float  # from its first step to its last
    max_batch_jobs: int  # the most jobs its optimization batch held at one step
    # Visualize: the final objective of each image; DeepDream: that of each octave's result.
    objectives: tuple[float, ...] = ()


# Progress messages a job sends when it asks for no pictures: about this many in all.
PROGRESS_MESSAGES = 64


def progress_stride(job: RenderJob | DreamJob) -> int:
    """Every how many steps a job's stream sends a progress message: `progress_every` when it
    asks for pictures (each message then carries them), else about PROGRESS_MESSAGES in all
    (a DeepDream: one at the end of each octave, with its picture)."""
    if isinstance(job, DreamJob):
        return job.progress_stride()
    return job.progress_every if job.progress_every > 0 else max(1, job.steps // PROGRESS_MESSAGES)


@dataclass(eq=False)
class JobState:
    """One submitted job as its stream sees it.

    What waits for the stream is bounded whatever its reader does: the newest progress event
    not yet taken (a newer one replaces it, so a reader that falls behind gets the latest
    state, not a backlog), the final result, or the error that ended the job.
    """

    job: RenderJob | DreamJob
    size: tuple[int, int]
    arrival: float
    handle: int | None = None  # set on the device thread once the job has joined
    cancelled: bool = False
    done: bool = False
    first_step: float | None = None
    last_step: float | None = None
    max_jobs: int = 0
    stride: int = field(init=False)
    _mail: Mailbox[RenderEvent, RenderEvent] = field(default_factory=Mailbox, repr=False)

    def __post_init__(self) -> None:
        self.stride = progress_stride(self.job)

    def post(self, ev: RenderEvent) -> None:
        """Hands a step's event to the stream (on the event loop): the result always; a
        progress event when a message is due at its step, replacing one not yet taken."""
        if ev.done:
            self._mail.result(ev)
        elif ev.step % self.stride == 0:
            self._mail.progress(ev)

    def timing(self) -> tuple[float, float]:
        """Milliseconds from submission to the first step, and from the first step to the last."""
        first = self.first_step or self.arrival
        return (first - self.arrival) * 1000.0, ((self.last_step or first) - first) * 1000.0

    def fail(self, error: BaseException) -> None:
        """Ends the stream with `error` once it has taken what came before."""
        self._mail.error(error)

    def stream(self) -> AsyncGenerator[RenderEvent, None]:
        """Progress events as they are due (the latest one when the reader falls behind),
        then the result; raises what failed the job."""
        return self._mail.stream()


@contextlib.contextmanager
def tf32_enabled(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions inside the block, the flags restored
    after it. The flags are process-wide: this is only safe on the one device thread, where
    Explain batches (which follow `allow_tf32`) never run at the same time."""
    if not enabled:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class _Batch(Protocol):
    """What the scheduler needs of a batch: RenderBatch and DreamBatch."""

    @property
    def handles(self) -> list[int]: ...

    def join(self, job: Any) -> int: ...

    def remove(self, handle: int) -> bool: ...

    def step(self) -> list[RenderEvent]: ...


class Visualizer(ModelLoop):
    """Runs every feature-visualization job of one model.

    One asyncio task loops: hand the pending joins and leaves to the device thread, run one
    step of every RenderBatch there, hand the events to the jobs' streams. Each round is one
    call on the device executor, so Explain batches interleave with render steps instead of
    waiting for whole renders.
    """

    kind = "visualizer"

    def __init__(
        self,
        model: ServedModel,
        executor: Executor,
        cpu_executor: Executor,
        limits: RenderLimits,
        *,
        tf32: bool = False,
    ) -> None:
        super().__init__(model)
        self.limits = limits
        self.tf32 = tf32  # TF32 matmuls and convolutions during render steps (CUDA only)
        self._executor = executor  # owns the device
        self._cpu_executor = cpu_executor  # encodes the PNGs
        self._batches: dict[tuple[int, int], _Batch] = {}
        self._joining: list[JobState] = []
        self._leaving: list[JobState] = []
        self._active: dict[tuple[tuple[int, int], int], JobState] = {}
        self._rows = 0  # rows admitted (joining or active), for admission control
        self._wake = asyncio.Event()

    @property
    def active_jobs(self) -> int:
        return len(self._active) + len(self._joining)

    def _stopped(self) -> None:
        for state in [*self._joining, *self._active.values()]:
            state.fail(Unavailable("server is shutting down"))

    def check(self, job: Any) -> tuple[int, int]:
        """Refuses a job beyond the limits or outside the model; returns its image size. Its
        own values were checked as it was read (`RenderJob.check`); nothing here touches the
        device, as this runs on the event loop."""
        lim = self.limits
        size = tuple(job.size) if job.size is not None else self.model.spec.input_size
        if job.steps > lim.max_steps:
            raise ResourceExhausted(f"steps is {job.steps}; at most {lim.max_steps}", field="steps")
        if max(size) > lim.max_side:
            raise ResourceExhausted(
                f"image size {size[0]}x{size[1]} exceeds {lim.max_side} pixels a side",
                field="height",
            )
        if job.batch > lim.max_images_per_job:
            raise ResourceExhausted(
                f"batch is {job.batch}; at most {lim.max_images_per_job} images a job",
                field="batch",
            )
        job.objective.validate(self.model)
        return (int(size[0]), int(size[1]))

    def submit(self, job: Any) -> JobState:
        """Admits a job; it joins the optimization at the next step."""
        size = self.check(job)
        if self._rows + job.batch > self.limits.max_rows:
            raise Unavailable(
                f"model '{self.model.name}' is rendering {self._rows} images (the limit is "
                f"{self.limits.max_rows}); retry with backoff"
            )
        state = JobState(job=job, size=size, arrival=time.perf_counter())
        self._rows += job.batch
        self._joining.append(state)
        self._wake.set()
        return state

    async def events(self, state: JobState) -> AsyncGenerator[Progress | Rendered, None]:
        """A submitted job's progress as it is due (every `progress_stride` steps, the latest
        when the reader falls behind), then its result, encoded off the event loop; raises
        what failed the job. However the stream ends, the job stops at its next step."""
        try:
            async for ev in state.stream():
                if ev.result is not None:
                    res = ev.result
                    pngs = await self._on_cpu(self._result_pngs, res.images)
                    queue_ms, compute_ms = state.timing()
                    yield Rendered(
                        res.pixels,
                        pngs,
                        res.objective,
                        res.steps,
                        queue_ms,
                        compute_ms,
                        state.max_jobs,
                        tuple(float(v) for v in res.objectives),
                    )
                    return
                png = None
                if ev.progress is not None:
                    png = await self._on_cpu(strip_png, ev.progress.images)
                yield Progress(ev.step, ev.steps, ev.objective, png)
        finally:
            self.cancel(state)

    @staticmethod
    def _result_pngs(images: list[np.ndarray]) -> list[bytes]:
        return pixel_pngs(images)

    def _new_batch(self, size: tuple[int, int]) -> _Batch:
        return RenderBatch(self.model, size)

    async def _on_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu_executor, fn, *args)

    def cancel(self, state: JobState) -> None:
        """Stops a job at the next step boundary (its client went away)."""
        if state.done or state.cancelled:
            return
        state.cancelled = True
        if state in self._joining:
            self._joining.remove(state)
            self._rows -= state.job.batch
        else:
            self._leaving.append(state)
        self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._joining and not self._active and not self._leaving:
                self._wake.clear()
                await self._wake.wait()
                continue
            joining, self._joining = self._joining, []
            leaving, self._leaving = self._leaving, []
            try:
                results = await loop.run_in_executor(self._executor, self._round, joining, leaving)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive any one round
                log.exception("feature visualization round failed")
                results = []
            self._route(results, joining, leaving)

    def _round(
        self, joining: list[JobState], leaving: list[JobState]
    ) -> list[tuple[tuple[int, int], list[RenderEvent] | BaseException, int]]:
        """Device thread: apply joins and leaves, then one step of every batch."""
        for state in leaving:
            batch = self._batches.get(state.size)
            if batch is not None and state.handle is not None:
                batch.remove(state.handle)
        for state in joining:
            batch = self._batches.get(state.size)
            if batch is None:
                batch = self._batches[state.size] = self._new_batch(state.size)
            state.handle = batch.join(state.job)  # checked when it was submitted
        out: list[tuple[tuple[int, int], list[RenderEvent] | BaseException, int]] = []
        for size, batch in list(self._batches.items()):
            if not batch.handles:
                del self._batches[size]
                continue
            n_jobs = len(batch.handles)
            try:
                with tf32_enabled(self.tf32 and self.model.device.type == "cuda"):
                    events = batch.step()
                out.append((size, events, n_jobs))
            except Exception as e:  # noqa: BLE001 - fail this batch's jobs, keep serving
                log.exception("render step failed on model %s at %s", self.model.name, size)
                for h in batch.handles:
                    batch.remove(h)
                out.append((size, e, n_jobs))
        return out

    def _route(self, results: list, joining: list[JobState], leaving: list[JobState]) -> None:
        now = time.perf_counter()
        for state in joining:  # one cancelled meanwhile is already in self._leaving
            self._active[(state.size, state.handle)] = state  # type: ignore[index]
        for state in leaving:
            if self._active.pop((state.size, state.handle), None) is not None:  # type: ignore[arg-type]
                self._rows -= state.job.batch
        for size, events, n_jobs in results:
            if isinstance(events, BaseException):
                for key in [k for k in self._active if k[0] == size]:
                    state = self._active.pop(key)
                    self._rows -= state.job.batch
                    state.fail(DeepvisError("internal error while rendering"))
                continue
            for ev in events:
                active = self._active.get((size, ev.handle))
                if active is None:
                    continue
                state = active
                if state.first_step is None:
                    state.first_step = now
                state.last_step = now
                state.max_jobs = max(state.max_jobs, n_jobs)
                if ev.error is not None:  # this job alone failed; its batch went on
                    state.done = True
                    self._active.pop((size, ev.handle))
                    self._rows -= state.job.batch
                    state.fail(ev.error)
                    continue
                if not state.cancelled:
                    state.post(ev)
                if ev.done:
                    state.done = True
                    self._active.pop((size, ev.handle))
                    self._rows -= state.job.batch


class Dreamer(Visualizer):
    """Runs every DeepDream job of one model, as Visualizer runs feature visualizations:
    jobs of the same picture size share a DreamBatch (one row each, one forward and
    backward pass a step for the rows whose octave has the same size), join and leave at
    step boundaries, and stream the latest progress; a cancelled stream frees its row."""

    kind = "dreamer"

    def check(self, job: DreamJob) -> tuple[int, int]:
        lim = self.limits
        h, w = job.size
        if max(h, w) > lim.max_side:
            raise ResourceExhausted(
                f"the picture is {h}x{w}; DeepDream takes at most {lim.max_side} pixels a side "
                "(resize it before sending)",
                field="input",
            )
        if job.steps > lim.max_steps:
            raise ResourceExhausted(
                f"octaves * steps_per_octave is {job.steps}; at most {lim.max_steps}",
                field="steps_per_octave",
            )
        dream_objective(job.objective, self.model)
        size = tuple(self.model.spec.input_size)
        if self.model.attention_layers and any(s != size for s in job.sizes):
            raise InvalidArgument(
                f"model '{self.model.name}' is a vision transformer that takes only "
                f"{size[0]}x{size[1]} inputs, and DeepDream's octaves resize the picture: send "
                f"a {size[0]}x{size[1]} picture with octaves 1",
                field="octaves",
            )
        return (h, w)

    def _new_batch(self, size: tuple[int, int]) -> _Batch:
        return DreamBatch(self.model, size)
