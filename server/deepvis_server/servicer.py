"""The Explainer servicer: each RPC converts its request, asks the engine, converts back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

import grpc

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

from . import convert
from .engine import Engine
from .errors import DeepvisError
from .status import failure, rpc_errors

Query = TypeVar("Query")
Event = TypeVar("Event")
Message = TypeVar("Message")


async def _stream(
    query: Query,
    run: Callable[[Query], AsyncGenerator[Event, None]],
    message: Callable[[Query, Event], Message],
) -> AsyncIterator[Message]:
    """A streaming RPC's answer: the engine runs `query`, and each of its events goes out as
    its response message. Closing this stream (rpc_errors does, whatever ends the call: a
    client that went away included) closes the engine's at once, stopping the job."""
    async with contextlib.aclosing(run(query)) as events:
        async for event in events:
            yield message(query, event)


class ExplainerServicer(pb_grpc.ExplainerServicer):
    """Serves deepvis.v1.Explainer over an Engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc_errors
    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        return await self._explain_by(request, self.deadline(context), self._scope(context))

    @rpc_errors
    async def ExplainBatch(
        self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainBatchResponse:
        requests = convert.parse_explain_batch(request)
        deadline = self.deadline(context)
        # Every item enters its model's batcher now, beside other clients' requests; the
        # call answers when the last one is done. Cancelling the call cancels them all.
        scope = self._scope(context)
        items = await asyncio.gather(*(self._explain_item(r, deadline, scope) for r in requests))
        return convert.explain_batch_response(items, self.engine.config.limits.max_message_bytes)

    async def _explain_item(
        self, request: pb.ExplainRequest, deadline: float, scope: bytes
    ) -> pb.ExplainBatchItem:
        try:
            return convert.batch_item(await self._explain_by(request, deadline, scope))
        except Exception as e:  # noqa: BLE001 - one item never fails the others
            code, message = failure(e, "an ExplainBatch item")
            return convert.item_error(
                code, message, e.field if isinstance(e, DeepvisError) else None
            )

    async def _explain_by(
        self, request: pb.ExplainRequest, deadline: float, scope: bytes
    ) -> pb.ExplainResponse:
        cache = self.engine.cache
        if cache is None:
            return await self._explained(request, deadline)
        key = cache.key(scope, request.SerializeToString(deterministic=True))
        kept = cache.get(key)
        if kept is not None:
            response = pb.ExplainResponse.FromString(kept)
            response.timing.CopyFrom(pb.Timing(cached=True))
            return response
        response = await self._explained(request, deadline)
        cache.put(key, response.SerializeToString())
        return response

    async def _explained(self, request: pb.ExplainRequest, deadline: float) -> pb.ExplainResponse:
        answer = await self.engine.explain(convert.parse_explain(request, deadline))
        return convert.explain_response(answer)

    def _scope(self, context: grpc.aio.ServicerContext) -> bytes:
        """Whose cached answers a call may see: its bearer token's when the server checks
        tokens (the interceptor has checked it by now), everyone's otherwise."""
        if self.engine.config.access.auth_tokens_file is None:
            return b""
        metadata = context.invocation_metadata() or ()
        token = next((v for k, v in metadata if k == "authorization"), "")
        return token.encode() if isinstance(token, str) else bytes(token)

    def deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The request's deadline on the loop clock: the client's, capped at max_timeout_s, or
        default_timeout_s when the client set none. A client can only shorten it."""
        limits = self.engine.config.limits
        remaining = context.time_remaining()
        budget = (
            limits.default_timeout_s if remaining is None else min(remaining, limits.max_timeout_s)
        )
        return asyncio.get_running_loop().time() + budget

    @rpc_errors
    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeModelResponse:
        return convert.describe_model(self.engine.model(request.model), self.engine.methods)

    @rpc_errors
    def Visualize(
        self, request: pb.VisualizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VisualizeResponse]:
        # A client that went away stops the job (and its attribution) at once.
        query = convert.parse_visualize(request)
        return _stream(query, self.engine.visualize, convert.visualize_response)

    @rpc_errors
    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EvaluateResponse]:
        # A client that went away stops the evaluation before its next piece.
        query = convert.parse_evaluate(request, self.deadline(context))
        return _stream(query, self.engine.evaluate, convert.evaluate_response)

    @rpc_errors
    def DeepDream(
        self, request: pb.DeepDreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DeepDreamResponse]:
        # A client that went away stops the job and frees its row at once.
        return _stream(convert.parse_dream(request), self.engine.dream, convert.dream_response)

    @rpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return convert.list_models(list(self.engine.models.values()), self.engine.methods)
