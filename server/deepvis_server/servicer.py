"""The Explainer servicer: validate, convert, await the batcher, convert back. No torch here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

from . import convert
from .engine import Engine
from .errors import (
    DeadlineExceeded,
    DeepvisError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from .methods import MethodRequest, Output
from .models import ServedModel
from .render import render_images, render_strip

log = logging.getLogger(__name__)

# The one place domain errors become gRPC status codes.
_STATUS: dict[type[DeepvisError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: DeepvisError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


class ExplainerServicer(pb_grpc.ExplainerServicer):
    """Serves deepvis.v1.Explainer over an Engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        try:
            return await self._explain(request, context)
        except DeepvisError as e:
            code, message = status_of(e), e.message
            if code == grpc.StatusCode.INTERNAL:
                log.error("internal error: %s", message)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - never let a request take the server down
            log.exception("unexpected error in Explain")
            code, message = (
                grpc.StatusCode.INTERNAL,
                "internal error; the server logged the traceback",
            )
        await context.abort(code, message)
        raise AssertionError("unreachable")  # abort raises

    async def _explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        parsed = convert.parse_explain(request)
        remaining = context.time_remaining()
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        model, result, output = await self.engine.explain(
            parsed.model,
            parsed.method,
            parsed.input,
            parsed.request,
            top_k=parsed.top_k,
            render=parsed.render,
            deadline=deadline,
        )
        return convert.explain_response(parsed, model, result, output)

    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeModelResponse:
        try:
            model = self.engine.model(request.model)
        except DeepvisError as e:
            await context.abort(status_of(e), e.message)
        return convert.describe_model(model, list(self.engine.methods))

    async def Visualize(
        self, request: pb.VisualizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VisualizeResponse]:
        try:
            parsed = convert.parse_visualize(request)
            model = self.engine.model(parsed.model)
            visualizer = self.engine.visualizers[model.name]
            state = visualizer.submit(parsed.job)
        except DeepvisError as e:
            await context.abort(status_of(e), e.message)
        attribution = None
        if parsed.input is not None:
            attribution = asyncio.ensure_future(self._attribution(parsed, model))
        code = None
        try:
            job = parsed.job
            stride = max(1, job.steps // 64)  # about 64 progress messages a job, plus pictures
            async for ev in state.stream():
                if ev.result is not None:
                    res = ev.result
                    pngs = await self.engine.run_cpu(render_images, res.images)
                    attr = await attribution if attribution is not None else None
                    first = state.first_step or state.arrival
                    yield convert.visualize_result(
                        parsed,
                        res.pixels,
                        pngs,
                        res.objective,
                        res.steps,
                        attr,
                        queue_ms=(first - state.arrival) * 1000.0,
                        compute_ms=((state.last_step or first) - first) * 1000.0,
                        max_jobs=state.max_jobs,
                    )
                    return
                png = None
                if ev.progress is not None:
                    png = await self.engine.run_cpu(render_strip, ev.progress.images)
                if png is not None or ev.step % stride == 0:
                    yield convert.visualize_progress(ev.step, ev.steps, ev.objective, png)
        except DeepvisError as e:
            code, message = status_of(e), e.message
        finally:
            # A client that went away (or any exit) stops the job at the next step.
            visualizer.cancel(state)
            if attribution is not None and not attribution.done():
                attribution.cancel()
        if code is not None:
            await context.abort(code, message)

    async def _attribution(
        self, parsed: convert.ParsedVisualize, model: ServedModel
    ) -> Output | None:
        """Guided backprop of the objective's neuron or class on the request's input."""
        target = convert.objective_target(parsed.job.objective)
        if target is None or parsed.input is None:
            return None
        _, _, output = await self.engine.explain(
            model.name,
            "guided_backprop",
            parsed.input,
            MethodRequest(target=target),
            top_k=1,
            render=True,
            deadline=None,
        )
        return output

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        methods = list(self.engine.methods)
        return pb.ListModelsResponse(
            models=[convert.model_info(m, methods) for m in self.engine.models.values()]
        )
