"""The Explainer servicer: validate, convert, await the batcher, convert back. No torch here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2

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
from .pictures import images_to_pngs, strip_png

if TYPE_CHECKING:
    from .preprocess import Region

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


# Items one ExplainBatch call may carry: each holds an input and a queue slot until answered.
MAX_BATCH_ITEMS = 256

# How long a client refused with UNAVAILABLE (full queue, full render batch) should wait.
RETRY_DELAY_S = 0.2


def status_details(exc: DeepvisError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The status code, message and `grpc-status-details-bin` trailer (google.rpc.Status with
    BadRequest naming the field, or RetryInfo for a retryable refusal) for a domain error."""
    code = status_of(exc)
    details = []
    if isinstance(exc, InvalidArgument) and exc.field:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=exc.field, description=exc.message
                )
            ]
        )
        details.append(bad)
    if isinstance(exc, Unavailable):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(RETRY_DELAY_S * 1000))
        details.append(retry)
    if not details:
        return code, exc.message, ()
    st = status_pb2.Status(code=code.value[0], message=exc.message)
    for d in details:
        st.details.add().Pack(d)
    return code, exc.message, (("grpc-status-details-bin", st.SerializeToString()),)


def failure(exc: BaseException, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call (or one ExplainBatch item) that raised `exc` ends
    with. Anything that is not a domain error is INTERNAL: logged with its traceback, never
    shown to the client."""
    if isinstance(exc, DeepvisError):
        code = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("internal error in %s: %s", rpc, exc.message)
        return code, exc.message
    log.error("unexpected error in %s", rpc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server logged the traceback"


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, rpc: str) -> NoReturn:
    """Ends the call with the status for `exc` (see `failure`), with its details trailer."""
    code, message = failure(exc, rpc)
    trailer = status_details(exc)[2] if isinstance(exc, DeepvisError) else ()
    await context.abort(code, message, trailing_metadata=trailer)
    raise AssertionError("unreachable")  # abort raises


class ExplainerServicer(pb_grpc.ExplainerServicer):
    """Serves deepvis.v1.Explainer over an Engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        try:
            return await self._explain(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never let a request take the server down
            error: BaseException = e
        await abort(context, error, "Explain")

    async def ExplainBatch(
        self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainBatchResponse:
        n = len(request.requests)
        if not 1 <= n <= MAX_BATCH_ITEMS:
            await abort(
                context,
                InvalidArgument(
                    f"requests has {n} items; send 1 to {MAX_BATCH_ITEMS} per call",
                    field="requests",
                ),
                "ExplainBatch",
            )
        deadline = self.deadline(context)
        # Every item enters its model's batcher now, beside other clients' requests; the
        # call answers when the last one is done. Cancelling the call cancels them all.
        items = await asyncio.gather(*(self._explain_item(r, deadline) for r in request.requests))
        return pb.ExplainBatchResponse(items=self._within_message_limit(items))

    def _within_message_limit(self, items: list[pb.ExplainBatchItem]) -> list[pb.ExplainBatchItem]:
        """Answers that would push the response past max_message_bytes become per-item
        RESOURCE_EXHAUSTED errors, so the items that fit still arrive (instead of gRPC
        failing the whole call after all the work)."""
        limit = self.engine.config.limits.max_message_bytes - 1024  # the envelope's few bytes
        total, out = 0, []
        for i, item in enumerate(items):
            size = item.ByteSize() + 8  # the item's tag and length prefix
            if item.HasField("response") and total + size > limit:
                item = pb.ExplainBatchItem(
                    error=pb.ItemError(
                        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                        message=(
                            f"item {i} does not fit in this answer: the server's "
                            f"max_message_bytes is {self.engine.config.limits.max_message_bytes} and "
                            f"the items before it took {total} bytes; send fewer items per "
                            "call, float16 arrays or no pictures"
                        ),
                    )
                )
                size = item.ByteSize() + 8
            total += size
            out.append(item)
        return out

    async def _explain_item(
        self, request: pb.ExplainRequest, deadline: float
    ) -> pb.ExplainBatchItem:
        try:
            return pb.ExplainBatchItem(response=await self._explain_by(request, deadline))
        except Exception as e:  # noqa: BLE001 - one item never fails the others
            code, message = failure(e, "an ExplainBatch item")
            field = e.field if isinstance(e, DeepvisError) else None
            error = pb.ItemError(code=code.value[0], message=message, field=field or "")
        return pb.ExplainBatchItem(error=error)

    async def _explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        return await self._explain_by(request, self.deadline(context))

    async def _explain_by(self, request: pb.ExplainRequest, deadline: float) -> pb.ExplainResponse:
        parsed = convert.parse_explain(request)
        model, result, output, region = await self.engine.explain(
            parsed.model,
            parsed.method,
            parsed.input,
            parsed.request,
            top_k=parsed.top_k,
            render=parsed.render,
            deadline=deadline,
            # No pictures to draw from it: the device may hand the result over as float16.
            half_result=parsed.array_dtype == "float16" and not parsed.render,
        )
        return convert.explain_response(parsed, model, result, output, region)

    def deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The request's deadline on the loop clock: the client's, capped at max_timeout_s, or
        default_timeout_s when the client set none. A client can only shorten it."""
        cfg = self.engine.config.limits
        remaining = context.time_remaining()
        budget = cfg.default_timeout_s if remaining is None else min(remaining, cfg.max_timeout_s)
        return asyncio.get_running_loop().time() + budget

    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeModelResponse:
        try:
            model = self.engine.model(request.model)
        except DeepvisError as e:
            await abort(context, e, "DescribeModel")
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
            await abort(context, e, "Visualize")
        attribution = None
        if parsed.input is not None:
            attribution = asyncio.ensure_future(self._attribution(parsed, model))
        error: DeepvisError | None = None
        try:
            async for ev in state.stream():
                if ev.result is not None:
                    res = ev.result
                    pngs = await self.engine.run_cpu(images_to_pngs, res.images)
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
                    png = await self.engine.run_cpu(strip_png, ev.progress.images)
                yield convert.visualize_progress(ev.step, ev.steps, ev.objective, png)
        except DeepvisError as e:
            error = e
        finally:
            # A client that went away (or any exit) stops the job at the next step.
            visualizer.cancel(state)
            if attribution is not None and not attribution.done():
                attribution.cancel()
        if error is not None:
            await abort(context, error, "Visualize")

    async def _attribution(
        self, parsed: convert.ParsedVisualize, model: ServedModel
    ) -> tuple[Output, Region] | None:
        """Guided backprop of the objective's neuron or class on the request's input, and the
        region of the input it covers."""
        target = convert.objective_target(parsed.job.objective)
        if target is None or parsed.input is None:
            return None
        _, _, output, region = await self.engine.explain(
            model.name,
            "guided_backprop",
            parsed.input,
            MethodRequest(target=target),
            top_k=1,
            render=True,
            deadline=asyncio.get_running_loop().time() + self.engine.config.limits.max_timeout_s,
        )
        return output, region

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        methods = list(self.engine.methods)
        return pb.ListModelsResponse(
            models=[convert.model_info(m, methods) for m in self.engine.models.values()]
        )
