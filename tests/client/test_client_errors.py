"""gRPC statuses become deepvis exceptions that keep the code and the details."""

from __future__ import annotations

import pickle

import grpc
import pytest

import deepvis
from deepvis._exceptions import from_rpc_error

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, deepvis.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, deepvis.NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, deepvis.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, deepvis.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, deepvis.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, deepvis.Cancelled),
        (grpc.StatusCode.UNAUTHENTICATED, deepvis.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, deepvis.PermissionDenied),
        (grpc.StatusCode.UNIMPLEMENTED, deepvis.Unimplemented),
        (grpc.StatusCode.INTERNAL, deepvis.Internal),
        (grpc.StatusCode.DATA_LOSS, deepvis.Internal),
        (grpc.StatusCode.UNKNOWN, deepvis.Internal),
        (grpc.StatusCode.FAILED_PRECONDITION, deepvis.Internal),
    ],
)
def test_error_mapping_keeps_code_and_details(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(FakeRpcError(code, "model 'x' not served"))
    assert type(err) is cls
    assert isinstance(err, deepvis.DeepvisError)
    assert err.code is code
    assert err.details == "model 'x' not served"
    assert str(err) == "model 'x' not served"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls and again.code is code and again.details == err.details


def test_error_without_details_names_code() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, None))
    assert err.details == ""
    assert str(err) == "UNAVAILABLE"


def test_error_from_bare_rpc_error() -> None:
    err = from_rpc_error(grpc.RpcError())
    assert type(err) is deepvis.Internal
    assert err.code is grpc.StatusCode.UNKNOWN
