"""Blocking and asyncio clients of the deepvis Explainer service."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from deepvis import _convert
from deepvis._convert import Explanation, InputLike, ModelInfo, TargetLike
from deepvis._exceptions import NotFound, from_rpc_error
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

__all__ = ["AsyncClient", "Client"]

_DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _channel_options(
    max_message_bytes: int, options: Sequence[tuple[str, Any]] | None
) -> list[tuple[str, Any]]:
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": max_message_bytes,
        "grpc.max_receive_message_length": max_message_bytes,
    }
    # A dict, not a concatenation, so that a caller's option replaces ours rather than
    # depending on which of two duplicate channel args gRPC honours.
    merged.update(options or ())
    return list(merged.items())


def _models_from_pb(response: deepvis_pb2.ListModelsResponse) -> list[ModelInfo]:
    return [_convert.model_info_from_pb(m) for m in response.models]


def _no_models() -> NotFound:
    return NotFound("the server lists no models", grpc.StatusCode.NOT_FOUND)


class _Base:
    def __init__(self, address: str, timeout: float | None) -> None:
        self._address = address
        self._timeout = timeout
        self._default_model: str | None = None

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _remember(self, models: list[ModelInfo]) -> None:
        if self._default_model is None and models:
            self._default_model = models[0].name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._address!r})"


class Client(_Base):
    """A blocking client of a deepvis server; safe to share between threads.

    Use it as a context manager, or call `close()` when done::

        with deepvis.Client("127.0.0.1:50051") as client:
            result = client.explain("cat.jpg")
            result.image.save("cat.guided-backprop.png")
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        """Opens an insecure channel to a server; the connection is made on the first call.

        Args:
            address: The server's "host:port".
            timeout: Default deadline of each call in seconds; None waits indefinitely.
            max_message_bytes: Largest message sent or received, in bytes.
            options: Extra gRPC channel options as (name, value) pairs; they override ours.
        """
        super().__init__(address, timeout)
        self._channel = grpc.insecure_channel(
            address, options=_channel_options(max_message_bytes, options)
        )
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        self._model_lock = threading.Lock()

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models the server serves.

        Args:
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            One `ModelInfo` per model, in the server's configuration order.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
        """
        try:
            response = self._stub.ListModels(
                deepvis_pb2.ListModelsRequest(), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        models = _models_from_pb(response)
        self._remember(models)
        return models

    def _resolve_model(self, timeout: float | None) -> str:
        # The lock keeps a burst of first calls from threads to one ListModels.
        with self._model_lock:
            if self._default_model is None:
                self.models(timeout=timeout)
            if self._default_model is None:
                raise _no_models()
            return self._default_model

    def explain(
        self,
        input: InputLike,
        *,
        model: str | None = None,
        method: str = "guided_backprop",
        target: TargetLike = None,
        layer: str | None = None,
        render: bool = True,
        array_dtype: str = "float32",
        top_k: int = 5,
        timeout: float | None = None,
        array: bool = True,
    ) -> Explanation:
        """Runs an interpretability method on one input.

        Args:
            input: A path of an image file, encoded image bytes, a PIL image, a uint8 pixel
                array [H, W] or [H, W, C] (C in 1, 3, 4), or a float32/float16 array
                [C, H, W] already preprocessed for the model.
            model: A served model's name; None uses the server's first listed model.
            method: One of `deepvis.methods()`; hyphens may replace underscores.
            target: The class index or `Neuron` to explain; None explains the predicted class.
            layer: Layer to work on, for layer methods; None for the others.
            render: Have the server render the result as a picture (`Explanation.image`).
            array_dtype: "float32" or "float16", the precision the raw result travels in;
                `Explanation.array` is float32 either way.
            top_k: How many top predictions to return; 0 means the server's default (5).
            timeout: Deadline of this call in seconds; None uses the client's default.
            array: Return the raw result; False leaves it out of the response (and
                `Explanation.array` None), which saves bandwidth when only the picture is used.

        Returns:
            The `Explanation`: raw result, picture, predictions, target and server timing.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        # Built before the model is resolved so that a bad argument fails without a call.
        request = _convert.request_to_pb(
            input,
            model=model or "",
            method=method,
            target=target,
            layer=layer,
            render=render,
            array_dtype=array_dtype,
            top_k=top_k,
            array=array,
        )
        if model is None:
            _convert.set_model(request, self._resolve_model(timeout))
        try:
            response = self._stub.Explain(request, timeout=self._deadline(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.explanation_from_pb(response)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio client of a deepvis server, with the API of `Client` as coroutines.

    Create and use it inside one event loop::

        async with deepvis.AsyncClient("127.0.0.1:50051") as client:
            results = await asyncio.gather(*(client.explain(p) for p in paths))
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        """Opens an insecure grpc.aio channel to a server; the connection is made on the first call.

        Args:
            address: The server's "host:port".
            timeout: Default deadline of each call in seconds; None waits indefinitely.
            max_message_bytes: Largest message sent or received, in bytes.
            options: Extra gRPC channel options as (name, value) pairs; they override ours.
        """
        super().__init__(address, timeout)
        self._channel = grpc.aio.insecure_channel(
            address, options=_channel_options(max_message_bytes, options)
        )
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        self._model_lock = asyncio.Lock()

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models the server serves.

        Args:
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            One `ModelInfo` per model, in the server's configuration order.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
        """
        try:
            response = await self._stub.ListModels(
                deepvis_pb2.ListModelsRequest(), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        models = _models_from_pb(response)
        self._remember(models)
        return models

    async def _resolve_model(self, timeout: float | None) -> str:
        # The lock keeps a burst of concurrent first calls to one ListModels.
        async with self._model_lock:
            if self._default_model is None:
                await self.models(timeout=timeout)
            if self._default_model is None:
                raise _no_models()
            return self._default_model

    async def explain(
        self,
        input: InputLike,
        *,
        model: str | None = None,
        method: str = "guided_backprop",
        target: TargetLike = None,
        layer: str | None = None,
        render: bool = True,
        array_dtype: str = "float32",
        top_k: int = 5,
        timeout: float | None = None,
        array: bool = True,
    ) -> Explanation:
        """Runs an interpretability method on one input.

        Args:
            input: A path of an image file, encoded image bytes, a PIL image, a uint8 pixel
                array [H, W] or [H, W, C] (C in 1, 3, 4), or a float32/float16 array
                [C, H, W] already preprocessed for the model. A path is read synchronously.
            model: A served model's name; None uses the server's first listed model.
            method: One of `deepvis.methods()`; hyphens may replace underscores.
            target: The class index or `Neuron` to explain; None explains the predicted class.
            layer: Layer to work on, for layer methods; None for the others.
            render: Have the server render the result as a picture (`Explanation.image`).
            array_dtype: "float32" or "float16", the precision the raw result travels in;
                `Explanation.array` is float32 either way.
            top_k: How many top predictions to return; 0 means the server's default (5).
            timeout: Deadline of this call in seconds; None uses the client's default.
            array: Return the raw result; False leaves it out of the response (and
                `Explanation.array` None), which saves bandwidth when only the picture is used.

        Returns:
            The `Explanation`: raw result, picture, predictions, target and server timing.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        request = _convert.request_to_pb(
            input,
            model=model or "",
            method=method,
            target=target,
            layer=layer,
            render=render,
            array_dtype=array_dtype,
            top_k=top_k,
            array=array,
        )
        if model is None:
            _convert.set_model(request, await self._resolve_model(timeout))
        try:
            response = await self._stub.Explain(request, timeout=self._deadline(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.explanation_from_pb(response)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
