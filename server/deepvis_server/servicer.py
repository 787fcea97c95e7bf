"""The Explainer servicer: each RPC converts its request, asks the engine, converts back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

from . import convert
from .engine import Engine
from .errors import DeepvisError, InvalidArgument
from .status import failure, rpc_errors

# Items one ExplainBatch call may carry: each holds an input and a queue slot until answered.
MAX_BATCH_ITEMS = 256


class ExplainerServicer(pb_grpc.ExplainerServicer):
    """Serves deepvis.v1.Explainer over an Engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc_errors
    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        return await self._explain_by(request, self.deadline(context))

    @rpc_errors
    async def ExplainBatch(
        self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainBatchResponse:
        n = len(request.requests)
        if not 1 <= n <= MAX_BATCH_ITEMS:
            raise InvalidArgument(
                f"requests has {n} items; send 1 to {MAX_BATCH_ITEMS} per call", field="requests"
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

    async def _explain_by(self, request: pb.ExplainRequest, deadline: float) -> pb.ExplainResponse:
        answer = await self.engine.explain(convert.parse_explain(request, deadline))
        return convert.explain_response(answer)

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
        return convert.describe_model(self.engine.model(request.model), list(self.engine.methods))

    @rpc_errors
    async def Visualize(
        self, request: pb.VisualizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VisualizeResponse]:
        query = convert.parse_visualize(request)
        # aclosing: a client that went away stops the job (and its attribution) at once.
        async with contextlib.aclosing(self.engine.visualize(query)) as events:
            async for event in events:
                yield convert.visualize_response(query, event)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        methods = list(self.engine.methods)
        return pb.ListModelsResponse(
            models=[convert.model_info(m, methods) for m in self.engine.models.values()]
        )
