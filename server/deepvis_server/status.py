"""Domain errors as gRPC statuses: codes, messages, error details, and the RPC wrapper."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from . import errors

log = logging.getLogger(__name__)

# The one place domain errors become gRPC status codes.
_STATUS: dict[type[errors.DeepvisError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# How long a client refused with UNAVAILABLE (full queue, full render batch) should wait.
RETRY_DELAY_S = 0.2

_INTERNAL_MESSAGE = "internal error; the server logged the traceback"

Handler = TypeVar("Handler", bound=Callable[..., Any])


def status_of(exc: errors.DeepvisError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


def status_details(
    exc: errors.DeepvisError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The status code, message and `grpc-status-details-bin` trailer (google.rpc.Status with
    BadRequest naming the field, or RetryInfo for a retryable refusal) for a domain error."""
    code = status_of(exc)
    details = []
    if isinstance(exc, errors.InvalidArgument) and exc.field:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=exc.field, description=exc.message
                )
            ]
        )
        details.append(bad)
    if isinstance(exc, errors.Unavailable):
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
    if isinstance(exc, errors.DeepvisError):
        code = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("internal error in %s: %s", rpc, exc.message)
        return code, exc.message
    log.error("unexpected error in %s", rpc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, rpc: str) -> NoReturn:
    """Ends the call with the status for `exc` (see `failure`), with its details trailer."""
    code, message = failure(exc, rpc)
    trailer = status_details(exc)[2] if isinstance(exc, errors.DeepvisError) else ()
    await context.abort(code, message, trailing_metadata=trailer)
    raise AssertionError("unreachable")  # abort raises


def rpc_errors(handler: Handler) -> Handler:
    """Ends an RPC that raised with its status (see `abort`), so no request takes the server
    down and every error keeps its precise status, message and details.

    Wraps a unary handler (a coroutine function) or a streaming one (an async generator
    function, or a plain function that returns an async generator; messages already sent
    stay sent); the RPC's name in the log is the handler's. Cancellation (the client went
    away, or its deadline passed) is not an Exception and passes through.
    """
    rpc = handler.__name__
    if not inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                # aclosing: whatever ends this stream (the client going away included) ends
                # the handler's own at once, running its clean-up.
                async with contextlib.aclosing(handler(self, request, context)) as messages:
                    async for message in cast(AsyncIterator[Any], messages):
                        yield message
            except grpc.aio.AbortError:
                raise  # the call has its status already
            except Exception as e:  # noqa: BLE001 - never let a request take the server down
                await abort(context, e, rpc)

        return cast(Handler, stream)

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise  # the call has its status already
        except Exception as e:  # noqa: BLE001 - never let a request take the server down
            await abort(context, e, rpc)

    return cast(Handler, unary)
