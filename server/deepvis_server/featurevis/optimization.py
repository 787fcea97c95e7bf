"""The feature-visualization runner: many render jobs share one optimization batch, row by row."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InvalidArgument
from ..methods.hooks import capture_output
from ..models import ServedModel
from .objectives import (
    ClassLogit,
    Objective,
    ObjectivePlan,
    diversity_layer,
    diversity_penalty,
)
from .param import MODEL_SPACE, PARAM_KINDS, init_params, params_to_image
from .transforms import LUCID_TRANSFORMS, TransformConfig, transform_rows

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "RenderBatch",
    "RenderEvent",
    "RenderImages",
    "RenderJob",
    "RenderResult",
    "adam_update",
    "normalization",
    "render",
    "row_generator",
    "to_uint8",
]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Lucid's feature-visualization defaults: 512 steps of Adam at this learning rate.
LUCID_STEPS = 512
LUCID_LEARNING_RATE = 0.05
# The class-model preset's defaults (Simonyan et al. 2013 give none): CS231n's L2-regularised
# class visualization on ImageNet-normalised inputs, lambda 1e-3 and a step of 25. Where the
# ascent settles, x = (dS_c/dx) / (2 lambda): lambda sets how far the image strays from the
# mean image, and with this one a class score's gradient (1e-3 to 1e-2 a normalised pixel on
# ImageNet classifiers) gives pixels within about a standard deviation of the mean.
CLASS_MODEL_L2 = 1e-3
CLASS_MODEL_LEARNING_RATE = 25.0
PRESETS = ("lucid", "class_model")


@dataclass(frozen=True)
class RenderJob:
    """One feature visualization: `batch` images optimised to maximise `objective`.

    Defaults are Lucid's: LUCID_STEPS steps of Adam at LUCID_LEARNING_RATE on a decorrelated
    FFT image with transformation robustness. `check` refuses values no batch can run; the
    errors name the VisualizeRequest's fields (`lr` is its learning_rate, `param` its
    parameterization, `size` its height and width).
    """

    objective: Objective
    size: tuple[int, int] | None = None  # None: the model's input size
    steps: int = LUCID_STEPS
    lr: float = LUCID_LEARNING_RATE
    seed: int = 0
    batch: int = 1  # images of this job, pushed apart by `diversity`
    diversity: float = 0.0
    param: str = "fft"  # "fft" (decorrelated FFT) | "pixel" | "model" (class model)
    transforms: bool = True
    progress_every: int = 0  # 0: no intermediate images
    # "lucid", or "class_model": Simonyan et al.'s class model, the model-space image from
    # zero by gradient ascent on S_c - l2_penalty * ||x||^2 (param "model", no transforms).
    preset: str = "lucid"
    l2_penalty: float = 0.0

    def check(self) -> None:
        """Raises InvalidArgument for a value no optimization can run, whatever the model."""
        if not isinstance(self.objective, Objective):
            raise InvalidArgument("objective must be an Objective", field="objective")
        if self.steps < 1:
            raise InvalidArgument(f"steps must be at least 1, got {self.steps}", field="steps")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgument(
                f"learning_rate must be a finite number > 0, got {self.lr}", field="learning_rate"
            )
        if self.batch < 1:
            raise InvalidArgument(f"batch must be at least 1, got {self.batch}", field="batch")
        if not (math.isfinite(self.diversity) and self.diversity >= 0):
            raise InvalidArgument(
                f"diversity must be a finite number >= 0, got {self.diversity}", field="diversity"
            )
        if self.preset not in PRESETS:
            raise InvalidArgument(
                f"preset must be one of {', '.join(PRESETS)}, got '{self.preset}'", field="preset"
            )
        if self.preset == "class_model":
            self._check_class_model()
        elif self.param not in PARAM_KINDS:
            raise InvalidArgument(
                f"parameterization must be one of {', '.join(PARAM_KINDS)}, got '{self.param}'",
                field="parameterization",
            )
        elif self.l2_penalty:
            raise InvalidArgument(
                "l2_penalty is the class-model preset's; the Lucid preset takes none",
                field="l2_penalty",
            )
        if self.progress_every < 0:
            raise InvalidArgument(
                f"progress_every must be >= 0, got {self.progress_every}", field="progress_every"
            )
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise InvalidArgument(
                f"height and width must be positive, got {tuple(self.size)}", field="height"
            )

    def _check_class_model(self) -> None:
        if not isinstance(self.objective, ClassLogit):
            raise InvalidArgument(
                "the class-model preset maximises a class score: set objective.class_index",
                field="objective",
            )
        if self.param != MODEL_SPACE:
            raise InvalidArgument(
                "the class-model preset optimises the image itself in the model's input space: "
                "leave parameterization unset",
                field="parameterization",
            )
        if self.transforms:
            raise InvalidArgument(
                "the class-model preset applies no transforms", field="no_transforms"
            )
        if not (math.isfinite(self.l2_penalty) and self.l2_penalty >= 0):
            raise InvalidArgument(
                f"l2_penalty must be a finite number >= 0, got {self.l2_penalty}",
                field="l2_penalty",
            )


@dataclass(frozen=True)
class RenderImages:
    """Images of one job: uint8 HxWxC (HxW for one channel) and float32 [B, C, H, W] in [0, 1]."""

    images: list[np.ndarray]
    pixels: np.ndarray


@dataclass(frozen=True)
class RenderResult:
    """A finished job.

    `objective` is the mean over the job's images of the objective (before negation) of the
    final images as returned, shown to the model without random transforms; `objectives`
    is the same per image.
    """

    images: list[np.ndarray]
    pixels: np.ndarray
    objective: float
    objectives: np.ndarray
    steps: int


@dataclass(frozen=True)
class RenderEvent:
    """What one step did for one job.

    `objective` is the mean over the job's images of the objective value (before negation)
    at this step, as the model saw the (transformed) images the step's gradient came from.
    """

    handle: int
    step: int
    steps: int
    objective: float
    progress: RenderImages | None = None
    result: RenderResult | None = None
    # What ended this job alone (its batch goes on without it): sent to its stream.
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


def row_generator(seed: int, image: int) -> torch.Generator:
    """The CPU generator of one image of a job: a function of (seed, image index) only.

    SeedSequence spreads (seed, index) over the generator's whole state, so image 1 of
    seed s and image 0 of seed s + 1 are unrelated streams.
    """
    state = np.random.SeedSequence(seed % 2**64, spawn_key=(image,)).generate_state(1, np.uint64)
    return torch.Generator(device="cpu").manual_seed(int(state[0]))


def to_uint8(pixels: np.ndarray) -> list[np.ndarray]:
    """[B, C, H, W] floats in [0, 1] to B uint8 images, HxWxC, or HxW for one channel."""
    u8 = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return [
        img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0)) for img in u8
    ]


def normalization(model: ServedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input mean and std, [1, C, 1, 1] on its device: its input is
    (pixels - mean) / std."""
    shape = (1, model.spec.channels, 1, 1)
    mean = torch.tensor(model.spec.mean, device=model.device).view(shape)
    return mean, torch.tensor(model.spec.std, device=model.device).view(shape)


def adam_update(
    params: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step_size: torch.Tensor,
    bias2_sqrt: torch.Tensor,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> None:
    """One Adam step for every row of `params` [N, ...] in place, each row with its own t.

    torch.optim.Adam's arithmetic, vectorised over rows: `step_size` [N] is lr / (1 - b1**t)
    and `bias2_sqrt` [N] is sqrt(1 - b2**t) for each row's own step count t. Every op is
    elementwise within a row, so rows cannot influence each other.
    """
    b1, b2 = betas
    shape = (-1,) + (1,) * (params.dim() - 1)
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v.sqrt() / bias2_sqrt.view(shape)).add_(eps)
    params.addcdiv_(m * step_size.view(shape), denom, value=-1.0)


@dataclass(eq=False)
class _Job:
    handle: int
    job: RenderJob
    generators: list[torch.Generator]
    div_layer: str | None
    t: int = 0  # steps taken; every row of the job shares it
    rows: torch.Tensor | None = field(default=None, repr=False)  # global rows, set on rebuild
    row_range: tuple[int, int] = (0, 0)  # in the batch
    local_range: tuple[int, int] = (0, 0)  # in its parameterization's group


@dataclass(eq=False)
class _ParamGroup:
    """Optimizer state of every row with one parameterization: parameters, Adam's m and v."""

    params: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor


class RenderBatch:
    """The rows of all active render jobs on one model, at one image size.

    A job joins with `add` (its rows take part from the next `step`), leaves when done or
    with `remove`. Each `step` runs one optimization step of every row: one forward and one
    backward pass of the whole batch. A row's result does not depend on its neighbours:
    its initial parameters and its random transforms come from its own generator, seeded by
    (job.seed, image index) and advanced only by its own steps; the model runs in eval mode
    (no batch statistics); the loss is a sum of per-row terms, so each row's gradient is
    that of its own term; and Adam keeps m, v and the step count per row. Only the images of
    one job are coupled, on purpose, by its diversity term.

    Jobs of a different image size cannot share a batch (their parameter tensors and images
    would not stack); run one RenderBatch per size. Not thread-safe: one worker thread owns
    a batch, as it owns the device.
    """

    def __init__(
        self,
        model: ServedModel,
        size: tuple[int, int] | None = None,
        transforms: TransformConfig = LUCID_TRANSFORMS,
    ) -> None:
        self.model = model
        self.size = (int(size[0]), int(size[1])) if size is not None else model.spec.input_size
        self.transforms = transforms
        self.device = model.device
        self._mean, self._std = normalization(model)
        self._jobs: dict[int, _Job] = {}
        self._groups: dict[str, _ParamGroup] = {}
        self._next_handle = 0
        self._dirty = True

    # -- membership -------------------------------------------------------------------

    def __len__(self) -> int:
        """Rows (images) in the batch."""
        return sum(j.job.batch for j in self._jobs.values())

    @property
    def handles(self) -> list[int]:
        return list(self._jobs)

    def accepts(self, job: RenderJob) -> bool:
        """Whether `job` can join this batch (same image size)."""
        return (
            tuple(job.size) if job.size is not None else self.model.spec.input_size
        ) == self.size

    def add(self, job: RenderJob) -> int:
        """Checks a job (its values, its objective against the model, its size against this
        batch's), adds its rows from the next step on and returns its handle."""
        job.check()
        job.objective.validate(self.model)
        return self.join(job)

    def join(self, job: RenderJob) -> int:
        """`add` for a job already checked (the Visualize scheduler checks each job once, as
        it admits it): refuses only a size other than this batch's."""
        if not self.accepts(job):
            h, w = job.size or self.model.spec.input_size
            raise InvalidArgument(
                f"height x width {h}x{w} differs from this batch's {self.size[0]}x"
                f"{self.size[1]}: jobs of different sizes need different batches",
                field="height",
            )
        generators = [row_generator(job.seed, i) for i in range(job.batch)]
        # Initial parameters first, from each row's own stream, on the CPU: the same seed
        # gives the same start on every device and whoever else is in the batch.
        init = torch.stack(
            [init_params(job.param, self.model.spec.channels, self.size, g) for g in generators]
        ).to(self.device)
        div = (
            diversity_layer(job.objective, self.model)
            if job.diversity > 0 and job.batch > 1
            else None
        )
        handle = self._next_handle
        self._next_handle += 1
        self._jobs[handle] = _Job(handle, job, generators, div)
        group = self._groups.get(job.param)
        zeros = torch.zeros_like(init)
        if group is None:
            self._groups[job.param] = _ParamGroup(init, zeros, zeros.clone())
        else:
            group.params = torch.cat([group.params, init])
            group.m = torch.cat([group.m, zeros])
            group.v = torch.cat([group.v, zeros.clone()])
        self._dirty = True
        return handle

    def remove(self, handle: int) -> bool:
        """Drops a job's rows and optimizer state; False when it is not (or no longer) here."""
        if handle not in self._jobs:
            return False
        self._remove_many([handle])
        return True

    def _remove_many(self, handles: Sequence[int]) -> None:
        gone = set(handles)
        for kind, group in list(self._groups.items()):
            keep: list[int] = []
            offset = 0
            for h, j in self._jobs.items():
                if j.job.param != kind:
                    continue
                if h not in gone:
                    keep.extend(range(offset, offset + j.job.batch))
                offset += j.job.batch
            if not keep:
                del self._groups[kind]
                continue
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            group.params, group.m, group.v = (
                group.params[idx],
                group.m[idx],
                group.v[idx],
            )
        for h in gone:
            del self._jobs[h]
        self._dirty = True

    def _rebuild(self) -> None:
        """Row bookkeeping after a join or leave: rows are grouped by parameterization."""
        row = 0
        objectives: list[Objective] = []
        self._row_generators: list[torch.Generator | None] = []
        self._negate: list[bool] = []
        for kind in self._groups:
            local = 0
            for j in self._jobs.values():
                if j.job.param != kind:
                    continue
                j.row_range = (row, row + j.job.batch)
                j.local_range = (local, local + j.job.batch)
                local += j.job.batch
                j.rows = torch.arange(row, row + j.job.batch, device=self.device)
                row += j.job.batch
                objectives.extend([j.job.objective] * j.job.batch)
                self._negate.extend([j.job.objective.negate] * j.job.batch)
                self._row_generators.extend(
                    j.generators if j.job.transforms else [None] * j.job.batch
                )
        self._plan = ObjectivePlan(objectives, self.model, self.device)
        self._sign = torch.tensor([-1.0 if n else 1.0 for n in self._negate], device=self.device)
        self._diverse = [j for j in self._jobs.values() if j.div_layer is not None]
        self._penalised = [
            j for j in self._jobs.values() if j.job.param == MODEL_SPACE and j.job.l2_penalty
        ]
        self._layers = self._plan.layers | {j.div_layer for j in self._diverse if j.div_layer}
        self._dirty = False

    # -- the step ---------------------------------------------------------------------

    def _images(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self._image(kind, p) for kind, p in params.items()])

    def _image(self, kind: str, params: torch.Tensor) -> torch.Tensor:
        """A group's images in pixel units: a model-space image (the class model) through the
        model's own mean and std, unclipped; the others through their parameterization."""
        if kind == MODEL_SPACE:
            return params * self._std + self._mean
        return params_to_image(kind, params, self.size)

    def _forward(
        self, x: torch.Tensor, layers: frozenset[str] | set[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model on model-space inputs, capturing `layers`; every hook removed on exit."""
        with ExitStack() as stack:
            saved = {
                name: stack.enter_context(capture_output(self.model.layers[name]))
                for name in sorted(layers)
            }
            logits = self.model.module(x)
        outputs = {}
        for name, out in saved.items():
            if not out:
                raise RuntimeError(f"layer '{name}' produced no tensor output in the forward pass")
            # As the methods read it: channels-last and token maps as [N, C, h, w], so that
            # objectives and the diversity term index channels and places, never tokens.
            outputs[name] = self.model.view(name, out[0])
        return logits, outputs

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self._mean) / self._std

    def step(self) -> list[RenderEvent]:
        """One optimization step of every active row; the events of every job in the batch.

        Jobs that reach their step count come back with their result and leave the batch.
        If the step raises (the model failed), no parameter or step count has changed, but
        the rows' generators have advanced: fail the batch's jobs rather than retry them.
        """
        if not self._jobs:
            return []
        if self._dirty:
            self._rebuild()
        out_size = self.model.spec.input_size
        kinds = list(self._groups)
        # The server turns grad mode off on its threads; the optimization needs it here only.
        with torch.enable_grad():
            leaves = {k: self._groups[k].params.detach().requires_grad_(True) for k in kinds}
            pixels = self._images(leaves)
            x = transform_rows(pixels, self._row_generators, out_size, self.transforms)
            logits, outputs = self._forward(self._normalize(x), self._layers)
            values = self._plan.values(outputs, logits)
            score = values * self._sign
            for j in self._penalised:
                assert j.rows is not None
                lo, hi = j.local_range
                image = leaves[MODEL_SPACE][lo:hi]
                penalty = image.pow(2).flatten(1).sum(1)
                score = score.index_add(0, j.rows, penalty, alpha=-j.job.l2_penalty)
            for j in self._diverse:
                assert j.rows is not None and j.div_layer is not None
                penalty = diversity_penalty(outputs[j.div_layer][j.rows])
                score = score.index_add(0, j.rows, penalty, alpha=-j.job.diversity)
            # A sum, not a mean: each row's gradient is its own term's, whatever N is.
            grads = torch.autograd.grad(-score.sum(), [leaves[k] for k in kinds])
        with torch.no_grad():
            for kind, grad in zip(kinds, grads, strict=True):
                if kind == MODEL_SPACE:
                    self._ascent(grad)
                else:
                    self._adam(kind, grad)
        step_values = values.detach().cpu().numpy().astype(np.float64)
        return self._events(step_values)

    def _adam(self, kind: str, grad: torch.Tensor) -> None:
        b1, b2 = ADAM_BETAS
        step_size: list[float] = []
        bias2_sqrt: list[float] = []
        for j in self._jobs.values():
            if j.job.param != kind:
                continue
            t = j.t + 1  # bias correction in float64 on the host, as torch.optim.Adam does
            step_size += [j.job.lr / (1 - b1**t)] * j.job.batch
            bias2_sqrt += [math.sqrt(1 - b2**t)] * j.job.batch
        group = self._groups[kind]
        dtype = group.params.dtype
        adam_update(
            group.params,
            grad,
            group.m,
            group.v,
            torch.tensor(step_size, dtype=dtype, device=self.device),
            torch.tensor(bias2_sqrt, dtype=dtype, device=self.device),
        )

    def _ascent(self, grad: torch.Tensor) -> None:
        """The class model's plain gradient step, x <- x + lr * d(score)/dx for each row with
        its job's learning rate; `grad` is that of the negated score."""
        lrs: list[float] = []
        for j in self._jobs.values():
            if j.job.param == MODEL_SPACE:
                lrs += [j.job.lr] * j.job.batch
        group = self._groups[MODEL_SPACE]
        lr = torch.tensor(lrs, dtype=group.params.dtype, device=self.device)
        group.params.sub_(grad * lr.view(-1, 1, 1, 1))

    def _job_pixels(self, j: _Job) -> torch.Tensor:
        lo, hi = j.local_range
        with torch.no_grad():
            return self._image(j.job.param, self._groups[j.job.param].params[lo:hi])

    def _events(self, step_values: np.ndarray) -> list[RenderEvent]:
        events: dict[int, RenderEvent] = {}
        finished: list[_Job] = []
        for h, j in self._jobs.items():
            j.t += 1
            lo, hi = j.row_range
            progress = None
            if j.t >= j.job.steps:
                finished.append(j)
            elif j.job.progress_every > 0 and j.t % j.job.progress_every == 0:
                px = self._job_pixels(j).float().cpu().numpy()
                progress = RenderImages(to_uint8(px), px)
            events[h] = RenderEvent(h, j.t, j.job.steps, float(step_values[lo:hi].mean()), progress)
        if finished:
            for j, result in zip(finished, self._finish(finished), strict=True):
                e = events[j.handle]
                events[j.handle] = RenderEvent(e.handle, e.step, e.steps, e.objective, None, result)
            self._remove_many([j.handle for j in finished])
        return list(events.values())

    def _finish(self, jobs: Sequence[_Job]) -> list[RenderResult]:
        """Final images of finished jobs and their objective, seen without random transforms."""
        pixels = [self._job_pixels(j) for j in jobs]
        objectives = [j.job.objective for j in jobs for _ in range(j.job.batch)]
        plan = ObjectivePlan(objectives, self.model, self.device)
        with torch.no_grad():
            batch = torch.cat(pixels)
            x = transform_rows(
                batch, [None] * batch.shape[0], self.model.spec.input_size, self.transforms
            )
            logits, outputs = self._forward(self._normalize(x), plan.layers)
            values = plan.values(outputs, logits).cpu().numpy().astype(np.float64)
        results = []
        row = 0
        for j, px in zip(jobs, pixels, strict=True):
            arr = px.float().cpu().numpy()
            per_image = values[row : row + j.job.batch]
            row += j.job.batch
            results.append(
                RenderResult(to_uint8(arr), arr, float(per_image.mean()), per_image, j.t)
            )
        return results


def render(
    model: ServedModel, job: RenderJob, transforms: TransformConfig = LUCID_TRANSFORMS
) -> RenderResult:
    """Runs one job alone to completion."""
    batch = RenderBatch(model, job.size, transforms)
    handle = batch.add(job)
    while True:
        for event in batch.step():
            if event.handle == handle and event.result is not None:
                return event.result
