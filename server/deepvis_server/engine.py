"""The engine: served models, their batchers and render schedulers, the device and CPU threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch

from deepvis.render import Options as PictureOptions
from deepvis.render import caption

from .batch_step import ItemResult
from .batcher import Batcher, BatchMetrics, WorkItem
from .config import ConfigError, ServerConfig
from .errors import (
    DeadlineExceeded,
    DeepvisError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from .evaluation.job import (
    RANDOMIZATION,
    EvaluateSpec,
    Evaluation,
    EvaluationResult,
    plan_evaluation,
)
from .evaluation.scheduler import Evaluator, JobState
from .evaluation.scheduler import Progress as EvaluateProgress
from .featurevis.dream import DreamJob
from .featurevis.objectives import Objective, explain_target
from .featurevis.optimization import RenderJob
from .featurevis.scheduler import Dreamer, Progress, Rendered, Visualizer
from .loops import ModelLoop
from .methods import REGISTRY, ClassTarget, ItemShare, Method, MethodRequest, Output, Target
from .models import ServedModel, load_model, select_device
from .pictures import Scene, caption_predictions, input_image
from .preprocess import (
    RawInput,
    Region,
    input_to_tensor,
    model_region,
    picture_pixels,
    wire_pixels,
)
from .response_cache import ResponseCache

log = logging.getLogger(__name__)
Loop = TypeVar("Loop", bound=ModelLoop)
# Predictions an answer lists when the request leaves output.top_k 0.
DEFAULT_TOP_K = 5
# What clients hear of a model that failed to load for a reason without a public account.
_LOAD_FAILED = "it could not be loaded when the server started (the server's log says why)"


@dataclass(frozen=True)
class ExplainQuery:
    """One explanation to compute: what `convert.parse_explain` reads off the wire (everything
    checked that needs no model), and the request's deadline."""

    model: str
    method: str
    input: RawInput
    request: MethodRequest
    deadline: float  # on the event loop's clock
    top_k: int = DEFAULT_TOP_K  # predictions to return
    render: bool = False  # draw pictures
    picture: PictureOptions = PictureOptions()  # how (OutputOptions' picture fields)
    array_dtype: str = "float32"  # "float32" | "float16": the arrays' wire precision
    omit_array: bool = False  # send no arrays
    # Integrated gradients' baseline images, as they came off the wire.
    baseline_inputs: tuple[RawInput, ...] = ()

    @property
    def half_result(self) -> bool:
        """With no picture to draw from it, the main array may come off the device as float16."""
        return self.array_dtype == "float16" and not self.render


@dataclass(frozen=True)
class ExplainAnswer:
    """One finished explanation and how it was computed."""

    query: ExplainQuery
    model: ServedModel
    request: MethodRequest  # as the method prepared it: defaults (the layer) filled in
    output: Output
    target: Target  # what was explained: the predicted class when the query named none
    predictions: list[tuple[int, float]]  # (class index, probability), best first
    warnings: tuple[str, ...]
    queue_ms: float
    compute_ms: float
    batch_size: int
    region: Region  # the part of the input the model saw
    # (attribution sum, score, baseline score) for LRP and integrated gradients, else None.
    completeness: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class VisualizeQuery:
    """One feature visualization: what `convert.parse_visualize` reads off the wire."""

    model: str
    job: RenderJob
    input: RawInput | None  # an image to attribute the objective on, if any
    array_dtype: str = "float32"


@dataclass(frozen=True)
class DreamQuery:
    """One DeepDream: what `convert.parse_dream` reads off the wire; the picture is decoded
    (at its own size) as the job is submitted."""

    model: str
    input: RawInput
    objective: Objective
    octaves: int
    octave_scale: float
    steps_per_octave: int
    step_size: float
    jitter: int
    seed: int = 0
    progress_every: int = 0
    array_dtype: str = "float32"

    def job(self, image: torch.Tensor) -> DreamJob:
        """The job on `image`; its other fields are the query's own, named alike."""
        shared = {f.name: getattr(self, f.name) for f in fields(DreamJob) if hasattr(self, f.name)}
        return DreamJob(image=image, **shared)


@dataclass(frozen=True)
class VisualizeAnswer:
    """A finished feature visualization, with the objective's attribution on the query's input."""

    rendered: Rendered
    attribution: ExplainAnswer | None


@dataclass(frozen=True)
class EvaluateQuery:
    """One evaluation: what `convert.parse_evaluate` reads off the wire, and its deadline."""

    model: str
    spec: EvaluateSpec
    inputs: tuple[RawInput, ...]
    deadline: float  # on the event loop's clock


@dataclass(frozen=True)
class EvaluateAnswer:
    """A finished evaluation, with the model it ran on."""

    model: ServedModel
    result: EvaluationResult


class Engine:
    """Owns every model and runs requests through validation, batching and rendering."""

    def __init__(
        self,
        config: ServerConfig,
        methods: dict[str, Method] | None = None,
        metrics: BatchMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics  # where the batchers report each batch they ran
        self.methods = dict(REGISTRY if methods is None else methods)
        self.device = select_device(config.device)
        # One thread owns the device: torch work for every model is serialised through it.
        self.device_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="deepvis-device"
        )
        # Decoding and PNG encoding run here, off the event loop and off the device thread.
        self.cpu_executor = ThreadPoolExecutor(
            max_workers=config.cpu_threads, thread_name_prefix="deepvis-cpu"
        )
        # Answers of identical Explain requests, when the operator turns it on.
        limit = config.limits.cache_bytes
        self.cache = ResponseCache(limit) if limit > 0 else None
        self.models: dict[str, ServedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        self.visualizers: dict[str, Visualizer] = {}
        self.evaluators: dict[str, Evaluator] = {}
        self.dreamers: dict[str, Dreamer] = {}
        # Model name -> why it failed to load, as clients are told (one clause, no paths).
        self.failed: dict[str, str] = {}
        # Model name -> the operator's account of it (paths and all), as logged.
        self.failure_details: dict[str, str] = {}
        # Set once the device has failed beyond repair; the server then goes NOT_SERVING and
        # the process exits non-zero so that a supervisor restarts it.
        self.fatal_error: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None

    async def start(self) -> None:
        """Loads and warms every configured model on the device thread, then starts the batchers.

        A model that fails to load is left out and remembered in `failed` (requests naming it
        get UNAVAILABLE with that reason, which names no server path) and in
        `failure_details` (the logged account), so one bad weights file does not take the
        other models down; only when no model loads at all does this raise ConfigError.
        """
        loop = asyncio.get_running_loop()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.config.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.config.allow_tf32
        for spec in self.config.models:
            try:
                model = await loop.run_in_executor(
                    self.device_executor, load_model, spec, self.device, self.config.model_root
                )
            except Exception as e:  # noqa: BLE001 - isolate the failure to this one model
                detail = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
                public = e.public if isinstance(e, ConfigError) else None
                self.failed[spec.name] = public or _LOAD_FAILED
                self.failure_details[spec.name] = detail
                # A ConfigError says all there is; anything else is unexpected: keep its trace.
                log.error(
                    "model %s failed to load, not serving it: %s",
                    spec.name,
                    detail,
                    exc_info=not isinstance(e, ConfigError),
                )
                continue
            self.models[spec.name] = model
            # Feature visualizations and DeepDreams: the device steps them, the CPU threads
            # encode their pictures.
            render = (model, self.device_executor, self.cpu_executor, self.config.render)
            tf32 = self.config.render_tf32
            limits = self.config.evaluate
            self.batchers[spec.name] = self._started(
                Batcher(
                    model,
                    self.device_executor,
                    max_batch_size=spec.max_batch_size,
                    max_delay_s=None if spec.max_delay_ms is None else spec.max_delay_ms / 1000.0,
                    max_queue_size=self.config.limits.max_queue_size,
                    metrics=self.metrics,
                    staging=self.cpu_executor,
                )
            )
            self.visualizers[spec.name] = self._started(Visualizer(*render, tf32=tf32))
            self.evaluators[spec.name] = self._started(
                Evaluator(
                    model,
                    self.device_executor,
                    forward_batch=limits.batch,
                    explain_batch=spec.max_batch_size,
                    max_randomized_bytes=limits.max_randomized_mb * 2**20,
                )
            )
            self.dreamers[spec.name] = self._started(Dreamer(*render, tf32=tf32))
            log.info("serving model %s (%s) on %s", spec.name, spec.arch, self.device)
        if not self.models:
            raise ConfigError(
                "no model could be loaded: "
                + "; ".join(f"model '{name}': {why}" for name, why in self.failure_details.items())
            )

    def _started(self, loop: Loop) -> Loop:
        """A model's background loop, started, telling the engine when the device fails."""
        loop.on_fatal = self._device_failed
        loop.start()
        return loop

    def _device_failed(self, error: BaseException) -> None:
        if self.fatal_error is not None:
            return
        log.critical("fatal device error, refusing all requests from now on: %s", error)
        self.fatal_error = error
        self.close()
        if self.on_fatal is not None:
            self.on_fatal(error)

    def close(self) -> None:
        """Refuses new requests (UNAVAILABLE) from now on; those queued still run."""
        for b in self.batchers.values():
            b.closed = True

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()
        for v in [*self.visualizers.values(), *self.dreamers.values()]:
            await v.stop()
        for e in self.evaluators.values():
            await e.stop()
        # Joining the threads blocks: do it off the event loop.
        for ex in (self.device_executor, self.cpu_executor):
            await asyncio.to_thread(ex.shutdown, wait=True, cancel_futures=True)

    def model(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            why = self.failed.get(name)
            if why is not None:
                raise Unavailable(
                    f"model '{name}' is not available: {why}", field="model"
                ) from None
            raise NotFound(
                f"model '{name[:200]}' is not served; served models: {', '.join(self.models)}",
                field="model",
            ) from None

    def method(self, name: str) -> Method:
        try:
            return self.methods[name]
        except KeyError:
            raise InvalidArgument(
                f"method '{name}' is not served; served: {', '.join(self.methods)}", field="method"
            ) from None

    async def explain(self, query: ExplainQuery) -> ExplainAnswer:
        """Validates, preprocesses and queues one request; returns its share of its batch,
        finished (arrays and, when asked, pictures), with the region of the input the model
        saw. With `query.half_result` the main array may come back as float16 (when its
        whole batch wants that), cast on the device."""
        model = self.model(query.model)
        method = self.method(query.method)
        request = method.prepare(model, query.request)
        loop = asyncio.get_running_loop()
        if query.baseline_inputs and request.ig is not None:
            images = await loop.run_in_executor(
                self.cpu_executor, self._baseline_images, query.baseline_inputs, model
            )
            request = replace(request, ig=replace(request.ig, images=images))
        # Pixels already at the model's size take one copy of their bytes: cheaper here than
        # the hop to a worker thread and back. Anything to decode or resize takes the hop.
        ready = wire_pixels(query.input, model.spec, self.config.limits)
        if ready is not None:
            x, region = ready, model_region(model.spec)
        else:
            x, region = await loop.run_in_executor(
                self.cpu_executor, input_to_tensor, query.input, model.spec, self.config.limits
            )
        item = WorkItem(
            x=x,
            method=method,
            request=request,
            top_k=min(query.top_k, model.spec.num_classes),
            deadline=query.deadline,
            future=loop.create_future(),
            half=query.half_result,
        )
        batcher = self.batchers[model.name]
        future = batcher.submit(item)
        # At the deadline the future fails, so the batcher drops the item before compute: one
        # timer handle, where asyncio.wait_for added a waiter future and callbacks as well.
        timer = loop.call_at(query.deadline, _expire, future, batcher)
        try:
            result = await future
        finally:
            timer.cancel()
        share = ItemShare(result.array, result.extras, request, x)
        if query.render:  # pictures: drawing and PNG encoding belong off the loop
            output = await loop.run_in_executor(
                self.cpu_executor, self._draw, query, model, method, share, result, region
            )
        else:  # arrays only: slicing, cheaper than the hop to a thread and back
            output = method.finish(model, share)
        return ExplainAnswer(
            query=query,
            model=model,
            request=request,
            output=output,
            target=result.target,
            predictions=result.predictions,
            warnings=result.warnings + tuple(output.notes),
            queue_ms=result.queue_ms,
            compute_ms=result.compute_ms,
            batch_size=result.batch_size,
            region=region,
            completeness=result.completeness,
        )

    def _draw(
        self,
        query: ExplainQuery,
        model: ServedModel,
        method: Method,
        share: ItemShare,
        result: ItemResult,
        region: Region,
    ) -> Output:
        """One item's arrays and pictures (CPU thread), drawn as the client draws them."""
        output = method.finish(model, share)
        target = result.target
        scene = Scene(
            options=query.picture,
            region=region,
            title=caption(
                method.name,
                target.index if isinstance(target, ClassTarget) else target,
                caption_predictions(result.predictions, model.label),
                share.request.layers[0] if share.request.layers else "",
            ),
            load_image=lambda: input_image(query.input, share.x, model.spec, self.config.limits),
        )
        drawn = method.draw(model, share, output, scene)
        output.png, output.pngs, output.notes = drawn.png, drawn.pngs, scene.notes
        return output

    def _baseline_images(
        self, raws: tuple[RawInput, ...], model: ServedModel
    ) -> tuple[torch.Tensor, ...]:
        """Integrated gradients' baseline images, preprocessed as an input is, in model space
        (float32 [C, H, W] on the CPU); their errors name the baseline at fault."""
        spec = model.spec
        mean = torch.tensor(spec.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(spec.std, dtype=torch.float32)[:, None, None]
        out = []
        for i, raw in enumerate(raws):
            where = f"integrated_gradients.baseline_images[{i}]"
            try:
                x, _ = input_to_tensor(raw, spec, self.config.limits)
            except DeepvisError as e:
                field = where + (e.field or "input").removeprefix("input")
                message = e.message.replace("input", where, 1)
                raise type(e)(message, field=field) from None
            out.append((x.float() / 255.0 - mean) / std if x.dtype == torch.uint8 else x.float())
        return tuple(out)

    async def visualize(
        self, query: VisualizeQuery
    ) -> AsyncGenerator[Progress | VisualizeAnswer, None]:
        """Runs one feature-visualization job: its progress as it is due, then its result
        with, when the query has an input, the guided attribution of the objective's neuron or
        class on it (computed meanwhile). Closing the stream stops the job at its next step."""
        model = self.model(query.model)
        scheduler = self.visualizers[model.name]
        state = scheduler.submit(query.job)  # refused here, before anything is sent
        attribution: asyncio.Future[ExplainAnswer] | None = None
        target = explain_target(query.job.objective)
        if query.input is not None and target is not None:
            loop = asyncio.get_running_loop()
            attribution = asyncio.ensure_future(
                self.explain(
                    ExplainQuery(
                        model=model.name,
                        method="guided_backprop",
                        input=query.input,
                        request=MethodRequest(target=target),
                        deadline=loop.time() + self.config.limits.max_timeout_s,
                        top_k=1,
                        render=True,
                    )
                )
            )
        try:
            async with contextlib.aclosing(scheduler.events(state)) as events:
                async for event in events:
                    if isinstance(event, Rendered):
                        attributed = await attribution if attribution is not None else None
                        yield VisualizeAnswer(event, attributed)
                        return
                    yield event
        finally:
            if attribution is not None and not attribution.done():
                attribution.cancel()

    async def dream(self, query: DreamQuery) -> AsyncGenerator[Progress | Rendered, None]:
        """Runs one DeepDream job: its picture decoded at its own size (off the loop), its
        progress as it is due, then its result. Closing the stream stops the job at its next
        step and frees its row."""
        model = self.model(query.model)
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(
            self.cpu_executor,
            picture_pixels,
            query.input,
            model.spec.channels,
            self.config.limits,
        )
        job = query.job(image)
        job.check()
        scheduler = self.dreamers[model.name]
        state = scheduler.submit(job)  # refused here, before anything is sent
        async with contextlib.aclosing(scheduler.events(state)) as events:
            async for event in events:
                yield event

    async def evaluate(
        self, query: EvaluateQuery
    ) -> AsyncGenerator[EvaluateProgress | EvaluateAnswer, None]:
        """Runs one evaluation: its progress as its work is done (the latest when the reader
        falls behind), then its result. Everything a request can get wrong is refused before
        anything runs; closing the stream stops the work before its next piece."""
        model = self.model(query.model)
        evaluator = self.evaluators[model.name]
        limits = self.config.evaluate
        n = len(query.inputs)
        if n > limits.max_images:
            raise ResourceExhausted(
                f"inputs has {n} inputs; the server's max_evaluate_images is {limits.max_images}",
                field="inputs",
            )
        methods = [self.method(name) for name in query.spec.methods]
        plan = plan_evaluation(model, methods, query.spec, n, evaluator.copies.layer_names)
        work = plan.work()
        if work > limits.max_work:
            raise ResourceExhausted(
                f"this evaluation is {work} rows of device work (inputs x methods x (steps + "
                f"1, layers x modes, perturbations)); the server's max_evaluate_work is "
                f"{limits.max_work}: send fewer inputs, methods, metrics or steps",
                field="inputs",
            )
        inputs = [await self._evaluate_input(model, raw, j) for j, raw in enumerate(query.inputs)]
        job = JobState(total=work, deadline=query.deadline)
        evaluator.admit(job, [plan.seed] if RANDOMIZATION in plan.metrics else [])
        evaluation = Evaluation(evaluator, job, plan, inputs)
        job.task = asyncio.ensure_future(_run_evaluation(evaluation))
        try:
            async with contextlib.aclosing(job.stream()) as events:
                async for event in events:
                    if isinstance(event, EvaluationResult):
                        yield EvaluateAnswer(model, event)
                        return
                    yield event
        finally:
            evaluator.cancel(job)

    async def _evaluate_input(self, model: ServedModel, raw: RawInput, j: int) -> torch.Tensor:
        """Input j of an evaluation at the model's size, [C, H, W] on the CPU; its errors name
        it (inputs[j])."""
        try:
            ready = wire_pixels(raw, model.spec, self.config.limits)
            if ready is not None:
                return ready
            loop = asyncio.get_running_loop()
            x, _ = await loop.run_in_executor(
                self.cpu_executor, input_to_tensor, raw, model.spec, self.config.limits
            )
            return x
        except DeepvisError as e:
            field = f"inputs[{j}]" + (e.field.removeprefix("input") if e.field else "")
            raise type(e)(f"inputs[{j}]: {e.message}", field=field) from None


async def _run_evaluation(evaluation: Evaluation) -> None:
    job = evaluation.job
    try:
        job.finish(await evaluation.run())
    except asyncio.CancelledError:
        raise
    except DeepvisError as e:
        job.fail(e)
    except Exception:  # noqa: BLE001 - the job fails alone
        log.exception("evaluation failed on model %s", evaluation.model.name)
        job.fail(DeepvisError("internal error while evaluating; the server logged it"))


def _expire(future: asyncio.Future[ItemResult], batcher: Batcher) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceeded(
                f"no result within the request's deadline (queue depth now {batcher.queue_depth})"
            )
        )
