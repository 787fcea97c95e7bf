"""Domain exceptions of the server; status.py maps each to one gRPC status."""

from __future__ import annotations


class DeepvisError(Exception):
    """Base class: a request could not be served. `field` names the request field at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(DeepvisError):
    """The request itself is wrong (INVALID_ARGUMENT)."""


class NotFound(DeepvisError):
    """A named thing (a model) does not exist (NOT_FOUND)."""


class ResourceExhausted(DeepvisError):
    """The request needs more than the server allows or has (RESOURCE_EXHAUSTED)."""


class Unavailable(DeepvisError):
    """The server cannot take the request now; retrying later may work (UNAVAILABLE)."""


class DeadlineExceeded(DeepvisError):
    """The request's deadline passed before it could run (DEADLINE_EXCEEDED)."""
