"""The Explainer servicer: validate, convert, await the batcher, convert back. No torch here."""

from __future__ import annotations

import asyncio
import logging

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

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        methods = list(self.engine.methods)
        return pb.ListModelsResponse(
            models=[convert.model_info(m, methods) for m in self.engine.models.values()]
        )
