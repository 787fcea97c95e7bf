"""Exceptions of the deepvis client, one per gRPC status a call can end with.

Our exception hierarchy:

* DeepvisError
  + InvalidArgument
  + NotFound
  + ResourceExhausted
  + Unavailable
  + DeadlineExceeded
  + Cancelled
  + Unauthenticated
  + PermissionDenied
  + Unimplemented
  + Internal
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "DeepvisError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
    "from_status",
]

# Filled as each subclass is defined (DeepvisError.__init_subclass__).
_BY_CODE: dict[grpc.StatusCode, type[DeepvisError]] = {}


class DeepvisError(Exception):
    """A call to the server failed; `code` is its gRPC status, `details` the server's message."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init_subclass__(cls, *, code: grpc.StatusCode | None = None, **kwargs: Any) -> None:
        # Each status's own class says its code once, here; from_rpc_error finds it by it.
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.default_code = code
            _BY_CODE[code] = cls

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details: str = details
        self.code: grpc.StatusCode = code if code is not None else self.default_code

    def __str__(self) -> str:
        # An empty status message would print as a bare "ClassName:", so name the code instead.
        return self.details or self.code.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.details!r}, code={self.code})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling replays only `args`, which would lose a fallback `code`.
        return (type(self), (self.details, self.code))


class InvalidArgument(DeepvisError, code=grpc.StatusCode.INVALID_ARGUMENT):
    """The request is malformed: a bad input, target, layer or option (INVALID_ARGUMENT)."""


class NotFound(DeepvisError, code=grpc.StatusCode.NOT_FOUND):
    """The named model or layer does not exist on the server (NOT_FOUND)."""


class ResourceExhausted(DeepvisError, code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """The request is too large or the server's queue is full (RESOURCE_EXHAUSTED)."""


class Unavailable(DeepvisError, code=grpc.StatusCode.UNAVAILABLE):
    """The server cannot be reached or cannot take the call now; retrying may work (UNAVAILABLE)."""


class DeadlineExceeded(DeepvisError, code=grpc.StatusCode.DEADLINE_EXCEEDED):
    """The call's timeout passed before the server answered (DEADLINE_EXCEEDED)."""


class Cancelled(DeepvisError, code=grpc.StatusCode.CANCELLED):
    """The call was cancelled, by the client or the server (CANCELLED)."""


class Unauthenticated(DeepvisError, code=grpc.StatusCode.UNAUTHENTICATED):
    """The call lacks valid credentials (UNAUTHENTICATED)."""


class PermissionDenied(DeepvisError, code=grpc.StatusCode.PERMISSION_DENIED):
    """The caller may not make this call (PERMISSION_DENIED)."""


class Unimplemented(DeepvisError, code=grpc.StatusCode.UNIMPLEMENTED):
    """The server does not implement the call or the method (UNIMPLEMENTED)."""


class Internal(DeepvisError, code=grpc.StatusCode.INTERNAL):
    """The server failed (INTERNAL); also any status without a class of its own, kept in `code`."""


def from_rpc_error(err: grpc.RpcError) -> DeepvisError:
    """Turns a failed gRPC call into the matching deepvis exception.

    Args:
        err: The error a stub call raised; call errors carry `code()` and `details()`.

    Returns:
        An instance of the subclass for the status code (`Internal` for codes without one),
        with `code` and `details` taken from `err`.
    """
    # A bare grpc.RpcError has neither method; only the Call objects gRPC raises do.
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, Internal)
    return cls(details or "", code)


_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def from_status(code: int, details: str) -> DeepvisError:
    """The exception for a status given by number, as in one failed item of an ExplainBatch.

    Args:
        code: The gRPC status code's number (google.rpc.Code), e.g. 3 for INVALID_ARGUMENT.
        details: The server's message.

    Returns:
        An instance of the subclass for the code (`Internal` for codes without one).
    """
    status = _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(status, Internal)(details, status)
