"""One evaluation: what it computes (checked before it runs), its cost, and the coroutine that
issues its device work to the model's Evaluator and assembles the result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..batch_step import FAST_MODE_WARNING
from ..errors import InvalidArgument
from ..methods import ClassTarget, IntegratedGradients, Method, MethodRequest
from ..methods.options import IgOptions
from ..methods.targets import check_target
from ..models import ServedModel
from ..preprocess import batch_to_model_input
from .metrics import (
    blur,
    curve_auc,
    generator,
    group_ends,
    ranking_positions,
    rise_kernel,
    saliency_2d,
    similarity,
)
from .randomization import CASCADING, INDEPENDENT, CopyState, SeedSet
from .scheduler import Evaluator, JobState, Work

RANDOMIZATION = "randomization"
DELETION = "deletion"
INSERTION = "insertion"
INFIDELITY = "infidelity"
SENSITIVITY = "sensitivity"
METRICS = (RANDOMIZATION, DELETION, INSERTION, INFIDELITY, SENSITIVITY)

# Defaults of the request's 0 values: RISE's 224 steps, Captum's 10 samples and radius 0.02.
DEFAULT_STEPS = 224
DEFAULT_PERTURBATIONS = 10
MAX_PERTURBATIONS = 1000
DEFAULT_NOISE_STD = 0.1
DEFAULT_RADIUS = 0.02
# Methods whose result is no attribution of a class in the input's space.
NOT_ATTRIBUTIONS = ("activations",)


@dataclass(frozen=True)
class EvaluateSpec:
    """What one evaluation computes, as `convert.parse_evaluate` reads it off the wire."""

    methods: tuple[str, ...]
    metrics: tuple[str, ...] = METRICS
    classes: tuple[int, ...] = ()  # (): predicted; one: for all; else one per input
    layer: str | None = None
    steps: int = 0  # 0: min(DEFAULT_STEPS, H * W)
    seed: int = 0
    modes: tuple[str, ...] = (CASCADING, INDEPENDENT)
    perturbations: int = 0
    noise_std: float = 0.0
    radius: float = 0.0
    return_maps: bool = False


@dataclass(frozen=True)
class EvaluatePlan:
    """An evaluation checked against its model: prepared requests and every default filled."""

    methods: tuple[tuple[Method, MethodRequest], ...]
    metrics: frozenset[str]
    inputs: int
    classes: tuple[int, ...]
    steps: int
    seed: int
    modes: tuple[str, ...]
    perturbations: int
    noise_std: float
    radius: float
    layers: tuple[str, ...]  # randomized, top-down (empty without randomization)
    return_maps: bool = False

    def work(self) -> int:
        """Device work in rows (one input through a forward pass, or through an explanation
        times its passes): what max_evaluate_work bounds and progress counts."""
        n, m = self.inputs, self.metrics
        rows = n  # the forward pass that finds each input's class
        curve_rows = n * (self.steps + 1)
        if INFIDELITY in m:
            rows += n * self.perturbations
        for method, _ in self.methods:
            explained = n
            if RANDOMIZATION in m:
                explained += n * len(self.layers) * len(self.modes)
            if SENSITIVITY in m:
                explained += n * self.perturbations
            rows += explained * passes(method)
            rows += curve_rows * ((DELETION in m) + (INSERTION in m))
        return rows


def passes(method: Method) -> int:
    """How many passes of the model one explanation row costs (evaluations explain with each
    method's default options)."""
    return IgOptions().passes if isinstance(method, IntegratedGradients) else 1


def plan_evaluation(
    model: ServedModel,
    methods: Sequence[Method],
    spec: EvaluateSpec,
    n_inputs: int,
    randomized: Sequence[str],
) -> EvaluatePlan:
    """Checks an evaluation against its model (every value, before anything runs).

    Raises:
        InvalidArgument: a method, class, layer or option that cannot be served.
    """
    h, w = model.spec.input_size
    pixels = h * w
    prepared = []
    for method in methods:
        if method.name in NOT_ATTRIBUTIONS:
            raise InvalidArgument(
                f"method {method.name} is no attribution of a class in the input's space; "
                "evaluate takes the methods whose result is [C, H, W] or [H, W]",
                field="methods",
            )
        layers = (spec.layer,) if spec.layer and method.uses_layers else ()
        prepared.append((method, method.prepare(model, MethodRequest(target=None, layers=layers))))
    if spec.classes and len(spec.classes) not in (1, n_inputs):
        raise InvalidArgument(
            f"class_indices has {len(spec.classes)} entries for {n_inputs} inputs; give none "
            "(each input's predicted class), one (for every input) or one per input",
            field="class_indices",
        )
    for c in spec.classes:
        check_target(model, ClassTarget(c), "class_indices")
    steps = spec.steps or min(DEFAULT_STEPS, pixels)
    if not 1 <= steps <= pixels:
        raise InvalidArgument(
            f"steps must be in [1, {pixels}] (the model's {h}x{w} pixels) or 0 for "
            f"{min(DEFAULT_STEPS, pixels)}, got {spec.steps}",
            field="steps",
        )
    perturbations = spec.perturbations or DEFAULT_PERTURBATIONS
    if not 1 <= perturbations <= MAX_PERTURBATIONS:
        raise InvalidArgument(
            f"perturbations must be in [1, {MAX_PERTURBATIONS}] or 0 for "
            f"{DEFAULT_PERTURBATIONS}, got {spec.perturbations}",
            field="perturbations",
        )
    for name, value in (("noise_std", spec.noise_std), ("sensitivity_radius", spec.radius)):
        if not (np.isfinite(value) and value >= 0):
            raise InvalidArgument(
                f"{name} must be a finite number >= 0 (0: the default), got {value}", field=name
            )
    metrics = frozenset(spec.metrics)
    if RANDOMIZATION in metrics:
        if not randomized:
            raise InvalidArgument(
                f"model '{model.name}' has no layer with parameters and reset_parameters() to "
                "re-initialize; leave randomization out of metrics",
                field="metrics",
            )
        if min(h, w) < 7:
            raise InvalidArgument(
                f"randomization's SSIM needs maps of at least 7x7 pixels; model "
                f"'{model.name}' takes {h}x{w}",
                field="metrics",
            )
    return EvaluatePlan(
        methods=tuple(prepared),
        metrics=metrics,
        inputs=n_inputs,
        classes=tuple(spec.classes),
        steps=steps,
        seed=spec.seed,
        modes=spec.modes,
        perturbations=perturbations,
        noise_std=spec.noise_std or DEFAULT_NOISE_STD,
        radius=spec.radius or DEFAULT_RADIUS,
        layers=tuple(randomized) if RANDOMIZATION in metrics else (),
        return_maps=spec.return_maps,
    )


@dataclass
class MethodScores:
    """One method's metrics on every input (float32 numpy arrays; None when not asked for)."""

    method: str
    layer: str | None
    deletion_curve: np.ndarray | None = None  # [N, steps + 1]
    deletion_auc: np.ndarray | None = None  # [N]
    insertion_curve: np.ndarray | None = None
    insertion_auc: np.ndarray | None = None
    spearman: np.ndarray | None = None  # [N, L], cascading
    ssim: np.ndarray | None = None
    independent_spearman: np.ndarray | None = None  # [N, L]
    independent_ssim: np.ndarray | None = None
    infidelity: np.ndarray | None = None  # [N]
    sensitivity: np.ndarray | None = None  # [N]
    maps: np.ndarray | None = None  # [N, ...] the method's results the metrics came from


@dataclass
class EvaluationResult:
    """A finished evaluation."""

    classes: list[int]
    layers: tuple[str, ...]
    steps: int
    methods: list[MethodScores]
    work: int
    warnings: tuple[str, ...] = ()
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    max_batch_jobs: int = 1


def _cpu(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@dataclass(eq=False)
class Evaluation:
    """The coroutine side of one evaluation: it awaits its device work piece by piece; every
    tensor it touches is made and used on the device thread (in the works' and calls'
    functions), none on the event loop."""

    ev: Evaluator
    job: JobState
    plan: EvaluatePlan
    inputs: list[torch.Tensor]  # [C, H, W] on the CPU: uint8 pixels or float32 tensors
    x: torch.Tensor = field(init=False)  # the model input [N, C, H, W] on the device
    classes: torch.Tensor = field(init=False)  # [N] on the device
    class_list: list[int] = field(init=False)
    requests: list[MethodRequest] = field(init=False)
    f_x: torch.Tensor = field(init=False)  # [N] the explained class's logit, on the device
    originals: list[torch.Tensor] = field(init=False)  # per method, [N, ...] on the device
    warnings: set[str] = field(default_factory=set)

    @property
    def model(self) -> ServedModel:
        return self.ev.model

    def _call(self, fn: Callable[[], object]) -> asyncio.Future[object]:
        return self.ev.call(self.job, fn)

    async def run(self) -> EvaluationResult:
        plan, n = self.plan, self.plan.inputs
        await self._call(self._model_input)
        logits = await self._forward("prediction", n, lambda a, b: self.x[a:b], keep="logits")
        await self._call(lambda: self._resolve_classes(logits))
        self.originals = list(
            await asyncio.gather(
                *(
                    self._explain(f"{method.name} maps", method, request, n, None)
                    for method, request in plan.methods
                )
            )
        )
        await self._call(self._check_maps)
        jobs: list = []
        infidelity = (
            asyncio.ensure_future(self._infidelity()) if INFIDELITY in plan.metrics else None
        )
        for i, (method, request) in enumerate(plan.methods):
            jobs.append(asyncio.gather(*self._method_metrics(i, method, request)))
        try:
            per_method = await asyncio.gather(*jobs)
            infidelities = await infidelity if infidelity is not None else None
        finally:
            if infidelity is not None and not infidelity.done():
                infidelity.cancel()
        scores = []
        for i, ((method, request), parts) in enumerate(zip(plan.methods, per_method, strict=True)):
            s = MethodScores(method.name, request.layers[0] if request.layers else None)
            for part in parts:
                for key, value in part.items():
                    setattr(s, key, value)
            if infidelities is not None:
                s.infidelity = infidelities[i]
            scores.append(s)
        if plan.return_maps:
            maps = await self._call(lambda: [_cpu(m) for m in self.originals])
            for s, m in zip(scores, maps, strict=True):  # type: ignore[call-overload]
                s.maps = m
        if self.model.spec.fast:
            self.warnings.add(FAST_MODE_WARNING)
        queue_ms, compute_ms = self.job.timing()
        return EvaluationResult(
            classes=self.class_list,
            layers=plan.layers,
            steps=plan.steps,
            methods=scores,
            work=self.job.total,
            warnings=tuple(sorted(self.warnings)),
            queue_ms=queue_ms,
            compute_ms=compute_ms,
            max_batch_jobs=self.job.max_batch_jobs,
        )

    # --- device-thread steps ---------------------------------------------------------------

    def _model_input(self) -> None:
        spec, dev = self.model.spec, self.model.device
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=dev)[:, None, None]
        std = torch.tensor(spec.std, dtype=torch.float32, device=dev)[:, None, None]
        # One at a time: a request may mix pixels (uint8) and preprocessed tensors.
        self.x = torch.cat([batch_to_model_input([t], dev, mean, std) for t in self.inputs])

    def _resolve_classes(self, logits: torch.Tensor) -> None:
        n, given = self.plan.inputs, self.plan.classes
        if given:
            chosen = [given[0]] * n if len(given) == 1 else list(given)
            self.classes = torch.tensor(chosen, device=self.model.device)
        else:
            self.classes = logits.argmax(dim=1)
        self.class_list = [int(c) for c in self.classes.tolist()]
        self.f_x = logits.gather(1, self.classes[:, None])[:, 0]  # the explained class's logit
        self.requests = [MethodRequest(target=ClassTarget(c)) for c in self.class_list]

    def _check_maps(self) -> None:
        c, h, w = self.model.input_shape
        for (method, _), maps in zip(self.plan.methods, self.originals, strict=True):
            shape = tuple(maps.shape[1:])
            if shape not in ((c, h, w), (h, w)):
                raise InvalidArgument(
                    f"method {method.name} gives maps of shape {list(shape)}; evaluate needs "
                    f"maps in the input's space, [{c}, {h}, {w}] or [{h}, {w}]",
                    field="methods",
                )

    # --- work ----------------------------------------------------------------------------------

    async def _forward(
        self, stage: str, rows: int, build: Callable[[int, int], torch.Tensor], keep: str
    ) -> torch.Tensor:
        """Forward passes of `rows` rows; keeps the logits [rows, K] or ("prob") the
        explained class's probability [rows] of each row's input (row r is input
        r // (rows / N))."""
        out: dict[str, torch.Tensor] = {}
        per_input = rows // self.plan.inputs

        def consume(a: int, b: int, logits: torch.Tensor) -> None:
            if keep == "logits":
                if "t" not in out:
                    out["t"] = logits.new_empty((rows, logits.shape[1]))
                out["t"][a:b] = logits
                return
            if "t" not in out:
                out["t"] = logits.new_empty((rows,))
            idx = torch.arange(a, b, device=logits.device) // per_input
            probs = logits.softmax(dim=1)
            out["t"][a:b] = probs.gather(1, self.classes[idx][:, None])[:, 0]

        await self.ev.run(Work(self.job, stage, rows, build, consume))
        return out["t"]

    async def _explain(
        self,
        stage: str,
        method: Method,
        request: MethodRequest,
        rows: int,
        state: CopyState | None,
        build: Callable[[int, int], torch.Tensor] | None = None,
        consume: Callable[[int, int, torch.Tensor], None] | None = None,
        seeds: SeedSet | None = None,
    ) -> torch.Tensor:
        """Explanations of `rows` rows (row r: input r // (rows / N), for its class); with
        `consume`, each slice goes there; else the maps [rows, ...] are returned."""
        per_input = rows // self.plan.inputs
        requests = [
            replace(request, target=self.requests[r // per_input].target) for r in range(rows)
        ]
        out: dict[str, torch.Tensor] = {}

        def keep(a: int, b: int, maps: torch.Tensor) -> None:
            if "t" not in out:
                out["t"] = maps.new_empty((rows, *maps.shape[1:]))
            out["t"][a:b] = maps

        work = Work(
            self.job,
            stage,
            rows,
            build or (lambda a, b: self.x[a:b]),
            consume or keep,
            method=method,
            requests=requests,
            state=state,
            seeds=seeds,
            passes=passes(method),
        )
        await self.ev.run(work)
        self.warnings.update(work.warnings)
        return out.get("t", torch.empty(0))

    def _method_metrics(self, i: int, method: Method, request: MethodRequest) -> list:
        m = self.plan.metrics
        parts = []
        for kind in (DELETION, INSERTION):
            if kind in m:
                parts.append(self._curve(kind, i, method))
        if RANDOMIZATION in m:
            parts.append(self._randomization(i, method, request))
        if SENSITIVITY in m:
            parts.append(self._sensitivity(i, method, request))
        return parts

    async def _curve(self, kind: str, i: int, method: Method) -> dict[str, np.ndarray]:
        """Deletion or insertion of method i's ranking, all inputs' steps as forward rows."""
        n, steps = self.plan.inputs, self.plan.steps
        points = steps + 1
        prep: dict[str, torch.Tensor] = {}

        def prepare() -> None:
            saliency = saliency_2d(self.originals[i]).reshape(n, -1)
            prep["positions"] = ranking_positions(saliency)
            prep["ends"] = torch.tensor(
                group_ends(saliency.shape[1], steps), device=self.model.device
            )
            if kind == INSERTION:
                prep["substrate"] = blur(self.x, torch.from_numpy(rise_kernel()).float())

        def build(a: int, b: int) -> torch.Tensor:
            rows = torch.arange(a, b, device=self.model.device)
            j, t = rows // points, rows % points
            changed = prep["positions"][j] < prep["ends"][t][:, None]
            changed = changed.reshape(len(rows), 1, *self.x.shape[2:])
            x = self.x[j]
            if kind == DELETION:
                return x.masked_fill(changed, 0.0)
            return torch.where(changed, x, prep["substrate"][j])

        await self._call(prepare)
        probs = await self._forward(f"{kind} {method.name}", n * points, build, keep="prob")
        curves = probs.reshape(n, points)
        curve = await self._call(lambda: _cpu(curves))
        auc = await self._call(lambda: _cpu(curve_auc(curves)))
        return {f"{kind}_curve": curve, f"{kind}_auc": auc}  # type: ignore[dict-item]

    async def _randomization(
        self, i: int, method: Method, request: MethodRequest
    ) -> dict[str, np.ndarray]:
        """Method i's maps on every step of re-initialization, compared with the trained
        model's; the steps go to the device all at once, in order, and batch with other
        evaluations' steps at the same seed."""
        plan, n = self.plan, self.plan.inputs
        seeds = next(s for s in self.job.seeds if s.seed == plan.seed)
        await self._call(lambda: self.ev.copies.build(seeds))
        layers = len(plan.layers)
        found = {
            mode: (
                torch.empty((n, layers), dtype=torch.float64),
                torch.empty((n, layers), dtype=torch.float64),
            )
            for mode in plan.modes
        }

        def scorer(mode: str, k: int) -> Callable[[int, int, torch.Tensor], None]:
            def consume(a: int, b: int, maps: torch.Tensor) -> None:
                rho, s = similarity(self.originals[i][a:b], maps)
                found[mode][0][a:b, k] = rho.cpu()
                found[mode][1][a:b, k] = s.cpu()

            return consume

        await asyncio.gather(
            *(
                self._explain(
                    f"randomization {method.name} {mode} {plan.layers[k]}",
                    method,
                    request,
                    n,
                    (plan.seed, mode, k),
                    consume=scorer(mode, k),
                    seeds=seeds,
                )
                for mode in plan.modes
                for k in range(layers)
            )
        )
        out: dict[str, np.ndarray] = {}
        for mode, (rho, s) in found.items():
            prefix = "" if mode == CASCADING else "independent_"
            out[f"{prefix}spearman"] = rho.float().numpy()
            out[f"{prefix}ssim"] = s.float().numpy()
        return out

    async def _sensitivity(
        self, i: int, method: Method, request: MethodRequest
    ) -> dict[str, np.ndarray]:
        """Max-sensitivity: method i run again on every perturbed input."""
        plan, n, k = self.plan, self.plan.inputs, self.plan.perturbations
        ratios: dict[str, torch.Tensor] = {}

        def build(a: int, b: int) -> torch.Tensor:
            shape = self.x.shape[1:]
            r = plan.radius
            noise = torch.stack(
                [
                    torch.rand(
                        shape, generator=generator("sensitivity", plan.seed, row // k, row % k)
                    )
                    * (2 * r)
                    - r
                    for row in range(a, b)
                ]
            ).to(self.x.device)
            j = torch.arange(a, b, device=self.x.device) // k
            return self.x[j] + noise

        def consume(a: int, b: int, maps: torch.Tensor) -> None:
            if "t" not in ratios:
                ratios["t"] = torch.empty(n * k, device=maps.device)
            original = self.originals[i].float()
            j = torch.arange(a, b, device=maps.device) // k
            norms = original.reshape(n, -1).norm(dim=1)
            norms = torch.where(norms == 0, torch.ones_like(norms), norms)
            diff = (original[j] - maps).reshape(b - a, -1).norm(dim=1)
            ratios["t"][a:b] = diff / norms[j]

        await self._explain(
            f"sensitivity {method.name}", method, request, n * k, None, build, consume
        )
        result = await self._call(lambda: _cpu(ratios["t"].reshape(n, k).max(dim=1).values))
        return {"sensitivity": result}  # type: ignore[dict-item]

    async def _infidelity(self) -> list[np.ndarray]:
        """Infidelity of every method at once: one forward row per perturbed input, each
        perturbation's dot product with every method's map taken as its row is built."""
        plan, n, k = self.plan, self.plan.inputs, self.plan.perturbations
        rows = n * k
        dots: dict[str, torch.Tensor] = {}

        def build(a: int, b: int) -> torch.Tensor:
            shape = self.x.shape[1:]
            noise = torch.stack(
                [
                    torch.randn(
                        shape, generator=generator("infidelity", plan.seed, row // k, row % k)
                    )
                    * plan.noise_std
                    for row in range(a, b)
                ]
            ).to(self.x.device)
            if "t" not in dots:
                dots["t"] = torch.empty(
                    (len(self.originals), rows), dtype=torch.float64, device=self.x.device
                )
            j = torch.arange(a, b, device=self.x.device) // k
            for m, maps in enumerate(self.originals):
                a_j = maps[j].double()
                if a_j.dim() == 3:  # a [H, W] map counts once per channel
                    a_j = a_j[:, None]
                dots["t"][m, a:b] = (a_j * noise.double()).reshape(b - a, -1).sum(dim=1)
            return self.x[j] - noise

        logits = await self._forward("infidelity", rows, build, keep="logits")

        def finish() -> list[np.ndarray]:
            j = torch.arange(rows, device=logits.device) // k
            f_pert = logits.gather(1, self.classes[j][:, None])[:, 0].double()
            diffs = self.f_x.double()[j] - f_pert
            return [
                _cpu(((dots["t"][m] - diffs) ** 2).reshape(n, k).mean(dim=1))
                for m in range(len(self.originals))
            ]

        return await self._call(finish)  # type: ignore[return-value]
