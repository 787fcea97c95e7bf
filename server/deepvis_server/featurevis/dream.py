"""DeepDream on a picture (google/deepdream's dream.ipynb), many jobs sharing one batch.

The original algorithm: the picture is shrunk `octaves - 1` times by `octave_scale` (order-1
zoom, each side round(side / scale) of the previous octave's); from the smallest octave on,
each octave runs `steps_per_octave` steps of

    r = roll(x, (oy, ox))  (a random shift in [-jitter, jitter] on each axis)
    g = d objective / d r
    x = clip(roll^-1(r + s * g / mean|g|), 0, 1)  (s = step_size / 255: pixels in [0, 1])

and the detail it added (its result minus the octave's base) is enlarged (order 1) to the
next octave's size and added to that octave's base. The objectives are the original's L2 of a
layer's activations (half their sum of squares), the same over one channel, or a class logit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..methods.hooks import capture_output
from ..models import ServedModel
from .objectives import Channel, ClassLogit, Layer, Objective
from .optimization import (
    RenderEvent,
    RenderImages,
    RenderResult,
    normalization,
    row_generator,
    to_uint8,
)

log = logging.getLogger(__name__)

__all__ = [
    "DREAM_JITTER",
    "DREAM_OCTAVES",
    "DREAM_OCTAVE_SCALE",
    "DREAM_STEPS_PER_OCTAVE",
    "DREAM_STEP_SIZE",
    "DreamBatch",
    "DreamJob",
    "dream",
    "dream_objective",
    "octave_sizes",
    "zoom",
]

# The original notebook's defaults: deepdream(iter_n=10, octave_n=4, octave_scale=1.4) and
# make_step(step_size=1.5, jitter=32), the step in 0-255 pixel units.
DREAM_OCTAVES = 4
DREAM_OCTAVE_SCALE = 1.4
DREAM_STEPS_PER_OCTAVE = 10
DREAM_STEP_SIZE = 1.5
DREAM_JITTER = 32
# Bounds of a request.
MAX_OCTAVES = 8
MAX_OCTAVE_SCALE = 4.0
MAX_STEPS_PER_OCTAVE = 100
MAX_STEP_SIZE = 100.0
MAX_JITTER = 256
# The smallest octave's shorter side may not be smaller: below it most networks' maps vanish.
MIN_OCTAVE_SIDE = 8


def octave_sizes(size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """Each octave's (height, width), smallest first: each side round(side / scale) of the
    next larger octave's, as scipy.ndimage.zoom rounds its output shape."""
    sizes = [(int(size[0]), int(size[1]))]
    for _ in range(octaves - 1):
        h, w = sizes[-1]
        sizes.append((max(1, round(h / scale)), max(1, round(w / scale))))
    return sizes[::-1]


def zoom(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, C, h, w] resampled to `size` like scipy.ndimage.zoom(order=1): bilinear with the
    corner pixels' centres on each other (align_corners)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def dream_objective(objective: Objective, model: ServedModel) -> None:
    """Refuses an objective DeepDream does not serve, or one outside the model."""
    if not isinstance(objective, Layer | Channel | ClassLogit):
        raise InvalidArgument(
            "DeepDream's objective is a layer, a channel (objective.neuron without y and x) "
            "or a class_index; one neuron (y, x) is not served",
            field="objective",
        )
    objective.validate(model)
    if isinstance(objective, Layer | Channel):
        layout = model.layer_layouts.get(objective.layer)
        if layout is not None and layout.kind == "tokens":
            raise InvalidArgument(
                f"layer '{objective.layer}' is a token layer, whose patch grid is fixed at the "
                "model's input size: DeepDream resizes the picture by octaves; choose a "
                "channels-first or channels-last layer",
                field="objective",
            )


@dataclass(frozen=True)
class DreamJob:
    """One DeepDream: `image` (float32 [C, H, W], pixels in [0, 1]) dreamt at its own size.

    The field names follow DeepDreamRequest's; `check` refuses values no batch can run.
    `batch` is 1 (one picture a job) and `steps` the steps of all octaves, as the scheduler
    counts them.
    """

    image: torch.Tensor
    objective: Objective
    octaves: int = DREAM_OCTAVES
    octave_scale: float = DREAM_OCTAVE_SCALE
    steps_per_octave: int = DREAM_STEPS_PER_OCTAVE
    step_size: float = DREAM_STEP_SIZE
    jitter: int = DREAM_JITTER
    seed: int = 0
    progress_every: int = 0  # 0: one progress message at the end of each octave but the last
    batch: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.image.shape[-2]), int(self.image.shape[-1]))

    @property
    def steps(self) -> int:
        return self.octaves * self.steps_per_octave

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return octave_sizes(self.size, self.octaves, self.octave_scale)

    def progress_stride(self) -> int:
        return self.progress_every or self.steps_per_octave

    def check(self) -> None:
        """Raises InvalidArgument for a value outside its bounds, whatever the model."""
        # (field, whether its value is in bounds, the bounds as the refusal says them); NaN
        # and infinities fail every comparison here.
        bounds = (
            ("octaves", 1 <= self.octaves <= MAX_OCTAVES, f"1 to {MAX_OCTAVES}"),
            (
                "octave_scale",
                1.0 < self.octave_scale <= MAX_OCTAVE_SCALE,
                f"above 1 and at most {MAX_OCTAVE_SCALE:g}",
            ),
            (
                "steps_per_octave",
                1 <= self.steps_per_octave <= MAX_STEPS_PER_OCTAVE,
                f"1 to {MAX_STEPS_PER_OCTAVE}",
            ),
            (
                "step_size",
                0.0 <= self.step_size <= MAX_STEP_SIZE,
                f"0 to {MAX_STEP_SIZE:g} (0-255 pixel units)",
            ),
            ("jitter", 0 <= self.jitter <= MAX_JITTER, f"0 to {MAX_JITTER} pixels"),
            ("progress_every", self.progress_every >= 0, ">= 0"),
        )
        for name, ok, valid in bounds:
            if not ok:
                value = getattr(self, name)
                raise InvalidArgument(f"{name} must be {valid}, got {value}", field=name)
        smallest = self.sizes[0]
        if min(smallest) < MIN_OCTAVE_SIDE:
            h, w = self.size
            raise InvalidArgument(
                f"a {h}x{w} picture in {self.octaves} octaves at scale {self.octave_scale:g} "
                f"gives a {smallest[0]}x{smallest[1]} smallest octave; its sides must be at "
                f"least {MIN_OCTAVE_SIDE}: use fewer octaves, a smaller scale or a larger picture",
                field="octaves",
            )


@dataclass(eq=False)
class _Row:
    handle: int
    job: DreamJob
    generator: torch.Generator
    bases: list[torch.Tensor]  # each octave's base picture [1, C, h, w], smallest first
    x: torch.Tensor  # the current picture [1, C, h, w]
    octave: int = 0
    t: int = 0  # steps done, over all octaves
    octave_objectives: list[float] = field(default_factory=list)


class DreamBatch:
    """The rows (one a job) of all active DeepDream jobs on one model.

    A job joins with `join` (from the next `step`), leaves when done or with `remove`. Each
    `step` runs one step of every row: one forward and one backward pass for all the rows
    whose current octave has the same size. A row's result does not depend on its
    neighbours: its shifts come from its own generator, seeded by the job's seed and
    advanced only by its own steps; the model runs in eval mode; the loss is a sum of
    per-row terms, and the step's normalisation (mean |g|) is per row. Not thread-safe: the
    device thread owns it.
    """

    def __init__(self, model: ServedModel, size: tuple[int, int] | None = None) -> None:
        self.model = model
        self.size = size
        self.device = model.device
        self._mean, self._std = normalization(model)
        self._rows: dict[int, _Row] = {}
        self._next_handle = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def handles(self) -> list[int]:
        return list(self._rows)

    def join(self, job: DreamJob) -> int:
        """Adds a checked job from the next step on; returns its handle."""
        image = job.image.to(self.device, torch.float32).unsqueeze(0)
        bases = [image]
        for h, w in job.sizes[::-1][1:]:
            bases.append(zoom(bases[-1], (h, w)))
        bases.reverse()
        handle = self._next_handle
        self._next_handle += 1
        self._rows[handle] = _Row(handle, job, row_generator(job.seed, 0), bases, bases[0].clone())
        return handle

    def remove(self, handle: int) -> bool:
        """Drops a job's row; False when it is not (or no longer) here."""
        return self._rows.pop(handle, None) is not None

    def _shift(self, row: _Row) -> tuple[int, int]:
        j = row.job.jitter
        if j == 0:
            return (0, 0)
        oy, ox = torch.randint(-j, j + 1, (2,), generator=row.generator).tolist()
        return (int(oy), int(ox))

    def _values(self, rows: Sequence[_Row], x: torch.Tensor) -> torch.Tensor:
        """Each row's objective (before negation) on the pixels x [N, C, h, w]."""
        layers = {
            r.job.objective.source for r in rows if not isinstance(r.job.objective, ClassLogit)
        }
        with ExitStack() as stack:
            saved = {
                name: stack.enter_context(capture_output(self.model.layers[name]))
                for name in sorted(layers)
            }
            logits = self.model.module((x - self._mean) / self._std)
        values = []
        for i, r in enumerate(rows):
            obj = r.job.objective
            if isinstance(obj, ClassLogit):
                values.append(logits[i, obj.index])
                continue
            out = saved[obj.source]
            if not out:
                raise RuntimeError(f"layer '{obj.source}' produced no tensor output")
            act = self.model.view(obj.source, out[0][i : i + 1])
            if isinstance(obj, Channel):
                act = act[:, obj.channel]
            values.append(0.5 * act.pow(2).sum())
        return torch.stack(values)

    def step(self) -> list[RenderEvent]:
        """One step of every row; the events of every job. Finished jobs come back with
        their result and leave the batch."""
        groups: dict[tuple[int, int], list[_Row]] = {}
        for r in self._rows.values():
            groups.setdefault(tuple(r.x.shape[-2:]), []).append(r)  # type: ignore[arg-type]
        events: list[RenderEvent] = []
        for rows in groups.values():
            events.extend(self._isolated(rows))
        return events

    def _isolated(self, rows: list[_Row]) -> list[RenderEvent]:
        """A group's step; when the model fails on it, each row's step alone, so that only the
        rows the model fails on leave, with an error naming their octave's size. A row's
        generator is restored before its retry: its shifts stay its solo run's."""
        states = [r.generator.get_state() for r in rows]
        try:
            return self._step_group(rows)
        except Exception as e:  # noqa: BLE001 - isolate the failure to the rows it is in
            if len(rows) == 1:
                return [self._failed(rows[0], e)]
        events: list[RenderEvent] = []
        for r, state in zip(rows, states, strict=True):
            r.generator.set_state(state)
            try:
                events.extend(self._step_group([r]))
            except Exception as e:  # noqa: BLE001
                events.append(self._failed(r, e))
        return events

    def _failed(self, r: _Row, error: Exception) -> RenderEvent:
        if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
            raise error  # the device's, not the row's: the scheduler fails the batch
        del self._rows[r.handle]
        h, w = r.x.shape[-2:]
        log.warning("DeepDream row failed on model %s at %dx%d", self.model.name, h, w,
                    exc_info=error)  # fmt: skip
        detail = " ".join(str(error).split())[:200]
        return RenderEvent(
            r.handle,
            r.t,
            r.job.steps,
            float("nan"),
            error=InvalidArgument(
                f"model '{self.model.name}' fails on this picture's {h}x{w} octave "
                f"(octave {r.octave + 1} of {r.job.octaves}: {type(error).__name__}: {detail}); "
                "it may take only some input sizes: use fewer octaves, a smaller "
                "octave_scale, or a picture of its input size",
                field="octaves",
            ),
        )

    def _step_group(self, rows: list[_Row]) -> list[RenderEvent]:
        shifts = [self._shift(r) for r in rows]
        with torch.enable_grad():
            rolled = torch.cat(
                [torch.roll(r.x, s, dims=(2, 3)) for r, s in zip(rows, shifts, strict=True)]
            ).requires_grad_(True)
            values = self._values(rows, rolled)
            sign = torch.tensor(
                [-1.0 if r.job.objective.negate else 1.0 for r in rows], device=self.device
            )
            (grad,) = torch.autograd.grad((values * sign).sum(), [rolled])
        step_values = values.detach().cpu().numpy().astype(np.float64)
        ends: list[_Row] = []
        pictures: dict[int, RenderImages] = {}
        with torch.no_grad():
            for i, (r, (oy, ox)) in enumerate(zip(rows, shifts, strict=True)):
                g = grad[i : i + 1]
                mean = g.abs().mean()
                scale = (r.job.step_size / 255.0) / torch.where(mean > 0, mean, 1.0)
                stepped = rolled[i : i + 1].detach() + scale * g
                r.x = torch.roll(stepped, (-oy, -ox), dims=(2, 3)).clamp_(0.0, 1.0)
                r.t += 1
                if r.t < r.job.steps and r.t % r.job.progress_stride() == 0:
                    pictures[r.handle] = self._images(r.x)  # before it moves on an octave
                if r.t % r.job.steps_per_octave == 0:
                    ends.append(r)
            if ends:
                self._end_octaves(ends)
        events: list[RenderEvent] = []
        for r, value in zip(rows, step_values, strict=True):
            result = None
            if r.t >= r.job.steps:
                result = self._result(r)
                del self._rows[r.handle]
            events.append(
                RenderEvent(
                    r.handle, r.t, r.job.steps, float(value), pictures.get(r.handle), result
                )
            )
        return events

    def _end_octaves(self, rows: list[_Row]) -> None:
        """Records each row's octave objective (its picture unshifted) and moves it to its next
        octave: that octave's base plus the detail enlarged to its size."""
        by_size: dict[tuple[int, int], list[_Row]] = {}
        for r in rows:
            by_size.setdefault(tuple(r.x.shape[-2:]), []).append(r)  # type: ignore[arg-type]
        for group in by_size.values():
            values = self._values(group, torch.cat([r.x for r in group])).cpu().tolist()
            for r, v in zip(group, values, strict=True):
                r.octave_objectives.append(float(v))
        for r in rows:
            if r.octave + 1 < r.job.octaves:
                detail = r.x - r.bases[r.octave]
                r.octave += 1
                base = r.bases[r.octave]
                r.x = base + zoom(detail, tuple(base.shape[-2:]))  # type: ignore[arg-type]

    def _images(self, x: torch.Tensor) -> RenderImages:
        px = x.float().cpu().numpy()
        return RenderImages(to_uint8(px), px)

    def _result(self, r: _Row) -> RenderResult:
        px = r.x.float().cpu().numpy()
        objectives = np.asarray(r.octave_objectives, dtype=np.float64)
        return RenderResult(to_uint8(px), px, float(objectives[-1]), objectives, r.t)


def dream(model: ServedModel, job: DreamJob) -> RenderResult:
    """Runs one job alone to completion."""
    job.check()
    dream_objective(job.objective, model)
    batch = DreamBatch(model, job.size)
    handle = batch.join(job)
    while True:
        for event in batch.step():
            if event.handle == handle and event.result is not None:
                return event.result
