"""Blocking and asyncio clients of the deepvis Explainer service."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from deepvis import _convert
from deepvis._convert import (
    Explanation,
    InputLike,
    LayersLike,
    ModelDescription,
    ModelInfo,
    ObjectiveLike,
    Progress,
    TargetLike,
    Visualization,
)
from deepvis._exceptions import Internal, NotFound, from_rpc_error
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

__all__ = ["AsyncClient", "Client"]

_DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# The standard health service; its messages are encoded by hand (see _convert) so that the
# thin client does not need grpcio-health-checking.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_AUTHORIZATION = "authorization"


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


_Metadata = tuple[tuple[str, str], ...]


def _check_token(token: str | None) -> None:
    if token is None:
        return
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    # gRPC metadata values are printable ASCII; a newline would also split the header.
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("token must be non-empty printable ASCII without spaces")


def _security(
    token: str | None,
    tls: bool,
    root_certificates: bytes | None,
    client_certificate: bytes | None,
    client_key: bytes | None,
) -> tuple[grpc.ChannelCredentials | None, _Metadata | None]:
    """Channel credentials (None: plaintext) and the metadata to send with every call."""
    _check_token(token)
    if (client_certificate is None) != (client_key is None):
        raise ValueError("client_certificate and client_key go together")
    if not tls and root_certificates is None and client_certificate is None:
        # Call credentials need a secure channel, so on plaintext the token rides in each
        # call's metadata instead; the server only allows plaintext on loopback by default.
        return None, None if token is None else ((_AUTHORIZATION, f"Bearer {token}"),)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=client_key,
        certificate_chain=client_certificate,
    )
    if token is not None:
        # Sent as "authorization: Bearer <token>", and only ever over this TLS channel.
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return credentials, None


def _models_from_pb(response: deepvis_pb2.ListModelsResponse) -> list[ModelInfo]:
    return [_convert.model_info_from_pb(m) for m in response.models]


def _no_models() -> NotFound:
    return NotFound("the server lists no models", grpc.StatusCode.NOT_FOUND)


def _no_result() -> Internal:
    return Internal("the Visualize stream ended without a result", grpc.StatusCode.INTERNAL)


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
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        """Opens a channel to a server; the connection is made on the first call.

        Args:
            address: The server's "host:port".
            timeout: Default deadline of each call in seconds; None waits indefinitely.
            max_message_bytes: Largest message sent or received, in bytes.
            options: Extra gRPC channel options as (name, value) pairs; they override ours.
            token: A bearer token, sent as `authorization: Bearer <token>` metadata with
                every call, for a server started with an auth tokens file.
            tls: Connect over TLS, checking the server's certificate against the system's
                roots (or `root_certificates`). Implied by any of the three PEM arguments.
            root_certificates: PEM CA certificate(s) to check the server's certificate
                against, e.g. a private CA's.
            client_certificate: PEM certificate chain to present to a server that asks for
                client certificates (mutual TLS); needs `client_key`.
            client_key: PEM private key of `client_certificate`.

        Raises:
            ValueError, TypeError: The token or the certificate arguments are invalid.
        """
        super().__init__(address, timeout)
        credentials, self._metadata = _security(
            token, tls, root_certificates, client_certificate, client_key
        )
        channel_options = _channel_options(max_message_bytes, options)
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=channel_options)
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        # No (de)serializers: the request and response travel as the bytes we encode.
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
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
                deepvis_pb2.ListModelsRequest(),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
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
        layer: LayersLike = None,
        render: bool = True,
        array_dtype: str = "float32",
        top_k: int = 5,
        timeout: float | None = None,
        array: bool = True,
        top_k_channels: int = 0,
    ) -> Explanation:
        """Runs an interpretability method on one input.

        Args:
            input: A path of an image file, encoded image bytes, a PIL image, a uint8 pixel
                array [H, W] or [H, W, C] (C in 1, 3, 4), or a float32/float16 array
                [C, H, W] already preprocessed for the model.
            model: A served model's name; None uses the server's first listed model.
            method: One of `deepvis.methods()`; hyphens may replace underscores.
            target: The class index or `Neuron` to explain; None explains the predicted class.
            layer: Layer to work on, for layer methods (activations, grad_cam,
                guided_grad_cam): a name, or a sequence of names for activations; None uses
                the model's default Grad-CAM layer. Ignored by the other methods.
            render: Have the server render the result as a picture (`Explanation.image`).
            array_dtype: "float32" or "float16", the precision the raw result travels in;
                `Explanation.array` is float32 either way.
            top_k: How many top predictions to return; 0 means the server's default (5).
            timeout: Deadline of this call in seconds; None uses the client's default.
            array: Return the raw result; False leaves it out of the response (and
                `Explanation.array` None), which saves bandwidth when only the picture is used.
            top_k_channels: For activations, keep only this many channels per layer, those
                with the largest mean activation, best first (their indices are in
                `Explanation.arrays["<layer>.channels"]`); 0 keeps all channels.

        Returns:
            The `Explanation`: raw result, picture, further named arrays and pictures,
            predictions, target and server timing.

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
            top_k_channels=top_k_channels,
        )
        if model is None:
            _convert.set_model(request, self._resolve_model(timeout))
        try:
            response = self._stub.Explain(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.explanation_from_pb(response)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Asks the server's standard gRPC health service (grpc.health.v1) how it is.

        Args:
            service: The service to ask about, e.g. "deepvis.v1.Explainer"; "" asks about the
                server as a whole.
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            The status name: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".

        Raises:
            DeepvisError: The call failed, e.g. `NotFound` for a service the server does not
                know, `Unimplemented` when it has no health service, `Unavailable` when it
                cannot be reached.
            ValueError: The server's answer is not a health response.
        """
        request = _convert.health_request_to_bytes(service)
        try:
            response = self._health_check(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.health_status_from_bytes(response)

    def describe(
        self, model: str | None = None, *, timeout: float | None = None
    ) -> ModelDescription:
        """Describes one model's layers: names, types, output shapes and the Grad-CAM default.

        Args:
            model: A served model's name; None uses the server's first listed model.
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            The `ModelDescription`.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status), e.g. `NotFound` for a
                model the server does not serve.
        """
        name = model if model is not None else self._resolve_model(timeout)
        request = _convert.describe_request_to_pb(name)
        try:
            response = self._stub.DescribeModel(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.model_description_from_pb(response)

    def visualize(
        self,
        objective: ObjectiveLike,
        *,
        model: str | None = None,
        negate: bool = False,
        steps: int = 512,
        learning_rate: float = 0.05,
        size: tuple[int, int] | None = None,
        batch: int = 1,
        diversity: float = 0.0,
        seed: int = 0,
        progress_every: int = 0,
        parameterization: str = "fft",
        transforms: bool = True,
        input: InputLike | None = None,
        array_dtype: str = "float32",
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
    ) -> Visualization:
        """Synthesizes the images that maximize an objective (feature visualization).

        Args:
            objective: What to maximize: a class index (int) for its logit; a `Neuron` for
                one neuron (with y and x) or the mean of a whole channel (without); a
                `Layer` for a whole layer (DeepDream: the mean of its squared activations).
            model: A served model's name; None uses the server's first listed model.
            negate: Minimize the objective instead.
            steps: Optimization steps (at most the server's limit); 0 means the server's
                default (512).
            learning_rate: Adam learning rate; 0 means the server's default (0.05).
            size: (height, width) of the images in pixels; None uses the model's input size.
            batch: Number of images to synthesize together; 0 means 1.
            diversity: Weight of the diversity term across the batch; 0 disables it.
            seed: Random seed in [0, 2**64); the same seed gives the same images.
            progress_every: Send a progress message with the current images every this many
                steps; 0 sends no pictures.
            parameterization: "fft" (decorrelated Fourier spectrum, natural-looking images)
                or "pixel" (plain pixels, for comparison).
            transforms: Apply transformation robustness (pad, jitter, scale, rotate).
            input: Optional image, of any kind `explain` accepts; for a neuron or class
                objective the result then also carries the objective's guided
                backpropagation on it (`Visualization.attribution`).
            array_dtype: "float32" or "float16", the precision arrays travel in; the
                `Visualization` arrays are float32 either way.
            on_progress: Called with each `Progress` message as it arrives; an exception it
                raises cancels the job and propagates.
            timeout: Deadline of the whole job in seconds; None uses the client's default.

        Returns:
            The `Visualization`: images, arrays, final objective and server timing.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status), or (`Internal`) the
                stream ended without a result.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        stream = self.visualize_stream(
            objective,
            model=model,
            negate=negate,
            steps=steps,
            learning_rate=learning_rate,
            size=size,
            batch=batch,
            diversity=diversity,
            seed=seed,
            progress_every=progress_every,
            parameterization=parameterization,
            transforms=transforms,
            input=input,
            array_dtype=array_dtype,
            timeout=timeout,
        )
        with contextlib.closing(stream):
            for item in stream:
                if isinstance(item, Visualization):
                    return item
                if on_progress is not None:
                    on_progress(item)
        raise _no_result()

    def visualize_stream(
        self,
        objective: ObjectiveLike,
        *,
        model: str | None = None,
        negate: bool = False,
        steps: int = 512,
        learning_rate: float = 0.05,
        size: tuple[int, int] | None = None,
        batch: int = 1,
        diversity: float = 0.0,
        seed: int = 0,
        progress_every: int = 0,
        parameterization: str = "fft",
        transforms: bool = True,
        input: InputLike | None = None,
        array_dtype: str = "float32",
        timeout: float | None = None,
    ) -> Generator[Progress | Visualization, None, None]:
        """Runs a feature visualization, yielding its progress and finally its result.

        Arguments are checked at once; the call starts on the first iteration. Closing the
        generator (`close()`, or dropping it after leaving a `for` loop early) cancels the
        call, which stops the job on the server; `contextlib.closing` cancels it promptly.

        Args:
            objective: What to maximize: a class index (int) for its logit; a `Neuron` for
                one neuron (with y and x) or the mean of a whole channel (without); a
                `Layer` for a whole layer (DeepDream: the mean of its squared activations).
            model: A served model's name; None uses the server's first listed model.
            negate: Minimize the objective instead.
            steps: Optimization steps (at most the server's limit); 0 means the server's
                default (512).
            learning_rate: Adam learning rate; 0 means the server's default (0.05).
            size: (height, width) of the images in pixels; None uses the model's input size.
            batch: Number of images to synthesize together; 0 means 1.
            diversity: Weight of the diversity term across the batch; 0 disables it.
            seed: Random seed in [0, 2**64); the same seed gives the same images.
            progress_every: Send a progress message with the current images every this many
                steps; 0 sends no pictures.
            parameterization: "fft" (decorrelated Fourier spectrum, natural-looking images)
                or "pixel" (plain pixels, for comparison).
            transforms: Apply transformation robustness (pad, jitter, scale, rotate).
            input: Optional image, of any kind `explain` accepts; for a neuron or class
                objective the result then also carries the objective's guided
                backpropagation on it (`Visualization.attribution`).
            array_dtype: "float32" or "float16", the precision arrays travel in; the
                `Visualization` arrays are float32 either way.
            timeout: Deadline of the whole job in seconds; None uses the client's default.

        Returns:
            An iterator of `Progress` items, then one `Visualization`, the last item.

        Raises:
            DeepvisError: While iterating: the call failed (a subclass per gRPC status), or
                (`Internal`) the stream ended without a result.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        # Built before the model is resolved so that a bad argument fails without a call.
        request = _convert.visualize_request_to_pb(
            objective,
            model=model or "",
            negate=negate,
            steps=steps,
            learning_rate=learning_rate,
            size=size,
            batch=batch,
            diversity=diversity,
            seed=seed,
            progress_every=progress_every,
            parameterization=parameterization,
            transforms=transforms,
            input=input,
            array_dtype=array_dtype,
        )
        return self._visualize_items(request, model is None, timeout)

    def _visualize_items(
        self, request: deepvis_pb2.VisualizeRequest, resolve: bool, timeout: float | None
    ) -> Generator[Progress | Visualization, None, None]:
        if resolve:
            _convert.set_visualize_model(request, self._resolve_model(timeout))
        call = self._stub.Visualize(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        result: Visualization | None = None
        try:
            for response in call:
                item = _convert.visualize_item_from_pb(response)
                if isinstance(item, Progress):
                    yield item
                elif isinstance(item, Visualization):
                    # The stream ends after the result; reading on collects the call's status.
                    result = item
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            # A no-op once the call has ended; otherwise (the consumer stopped early, a
            # message failed to decode) it tells the server to stop the job.
            call.cancel()
        if result is None:
            raise _no_result()
        yield result

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
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        """Opens a grpc.aio channel to a server; the connection is made on the first call.

        Args:
            address: The server's "host:port".
            timeout: Default deadline of each call in seconds; None waits indefinitely.
            max_message_bytes: Largest message sent or received, in bytes.
            options: Extra gRPC channel options as (name, value) pairs; they override ours.
            token: A bearer token, sent as `authorization: Bearer <token>` metadata with
                every call, for a server started with an auth tokens file.
            tls: Connect over TLS, checking the server's certificate against the system's
                roots (or `root_certificates`). Implied by any of the three PEM arguments.
            root_certificates: PEM CA certificate(s) to check the server's certificate
                against, e.g. a private CA's.
            client_certificate: PEM certificate chain to present to a server that asks for
                client certificates (mutual TLS); needs `client_key`.
            client_key: PEM private key of `client_certificate`.

        Raises:
            ValueError, TypeError: The token or the certificate arguments are invalid.
        """
        super().__init__(address, timeout)
        credentials, self._metadata = _security(
            token, tls, root_certificates, client_certificate, client_key
        )
        channel_options = _channel_options(max_message_bytes, options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=channel_options)
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        # No (de)serializers: the request and response travel as the bytes we encode.
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
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
                deepvis_pb2.ListModelsRequest(),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
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
        layer: LayersLike = None,
        render: bool = True,
        array_dtype: str = "float32",
        top_k: int = 5,
        timeout: float | None = None,
        array: bool = True,
        top_k_channels: int = 0,
    ) -> Explanation:
        """Runs an interpretability method on one input.

        Args:
            input: A path of an image file, encoded image bytes, a PIL image, a uint8 pixel
                array [H, W] or [H, W, C] (C in 1, 3, 4), or a float32/float16 array
                [C, H, W] already preprocessed for the model. A path is read synchronously.
            model: A served model's name; None uses the server's first listed model.
            method: One of `deepvis.methods()`; hyphens may replace underscores.
            target: The class index or `Neuron` to explain; None explains the predicted class.
            layer: Layer to work on, for layer methods (activations, grad_cam,
                guided_grad_cam): a name, or a sequence of names for activations; None uses
                the model's default Grad-CAM layer. Ignored by the other methods.
            render: Have the server render the result as a picture (`Explanation.image`).
            array_dtype: "float32" or "float16", the precision the raw result travels in;
                `Explanation.array` is float32 either way.
            top_k: How many top predictions to return; 0 means the server's default (5).
            timeout: Deadline of this call in seconds; None uses the client's default.
            array: Return the raw result; False leaves it out of the response (and
                `Explanation.array` None), which saves bandwidth when only the picture is used.
            top_k_channels: For activations, keep only this many channels per layer, those
                with the largest mean activation, best first (their indices are in
                `Explanation.arrays["<layer>.channels"]`); 0 keeps all channels.

        Returns:
            The `Explanation`: raw result, picture, further named arrays and pictures,
            predictions, target and server timing.

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
            top_k_channels=top_k_channels,
        )
        if model is None:
            _convert.set_model(request, await self._resolve_model(timeout))
        try:
            response = await self._stub.Explain(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.explanation_from_pb(response)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Asks the server's standard gRPC health service (grpc.health.v1) how it is.

        Args:
            service: The service to ask about, e.g. "deepvis.v1.Explainer"; "" asks about the
                server as a whole.
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            The status name: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".

        Raises:
            DeepvisError: The call failed, e.g. `NotFound` for a service the server does not
                know, `Unimplemented` when it has no health service, `Unavailable` when it
                cannot be reached.
            ValueError: The server's answer is not a health response.
        """
        request = _convert.health_request_to_bytes(service)
        try:
            response = await self._health_check(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.health_status_from_bytes(response)

    async def describe(
        self, model: str | None = None, *, timeout: float | None = None
    ) -> ModelDescription:
        """Describes one model's layers: names, types, output shapes and the Grad-CAM default.

        Args:
            model: A served model's name; None uses the server's first listed model.
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            The `ModelDescription`.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status), e.g. `NotFound` for a
                model the server does not serve.
        """
        name = model if model is not None else await self._resolve_model(timeout)
        request = _convert.describe_request_to_pb(name)
        try:
            response = await self._stub.DescribeModel(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _convert.model_description_from_pb(response)

    async def visualize(
        self,
        objective: ObjectiveLike,
        *,
        model: str | None = None,
        negate: bool = False,
        steps: int = 512,
        learning_rate: float = 0.05,
        size: tuple[int, int] | None = None,
        batch: int = 1,
        diversity: float = 0.0,
        seed: int = 0,
        progress_every: int = 0,
        parameterization: str = "fft",
        transforms: bool = True,
        input: InputLike | None = None,
        array_dtype: str = "float32",
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
    ) -> Visualization:
        """Synthesizes the images that maximize an objective (feature visualization).

        Args:
            objective: What to maximize: a class index (int) for its logit; a `Neuron` for
                one neuron (with y and x) or the mean of a whole channel (without); a
                `Layer` for a whole layer (DeepDream: the mean of its squared activations).
            model: A served model's name; None uses the server's first listed model.
            negate: Minimize the objective instead.
            steps: Optimization steps (at most the server's limit); 0 means the server's
                default (512).
            learning_rate: Adam learning rate; 0 means the server's default (0.05).
            size: (height, width) of the images in pixels; None uses the model's input size.
            batch: Number of images to synthesize together; 0 means 1.
            diversity: Weight of the diversity term across the batch; 0 disables it.
            seed: Random seed in [0, 2**64); the same seed gives the same images.
            progress_every: Send a progress message with the current images every this many
                steps; 0 sends no pictures.
            parameterization: "fft" (decorrelated Fourier spectrum, natural-looking images)
                or "pixel" (plain pixels, for comparison).
            transforms: Apply transformation robustness (pad, jitter, scale, rotate).
            input: Optional image, of any kind `explain` accepts (a path is read
                synchronously); for a neuron or class objective the result then also carries
                the objective's guided backpropagation on it (`Visualization.attribution`).
            array_dtype: "float32" or "float16", the precision arrays travel in; the
                `Visualization` arrays are float32 either way.
            on_progress: Called with each `Progress` message as it arrives; an exception it
                raises cancels the job and propagates.
            timeout: Deadline of the whole job in seconds; None uses the client's default.

        Returns:
            The `Visualization`: images, arrays, final objective and server timing.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status), or (`Internal`) the
                stream ended without a result.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        stream = self.visualize_stream(
            objective,
            model=model,
            negate=negate,
            steps=steps,
            learning_rate=learning_rate,
            size=size,
            batch=batch,
            diversity=diversity,
            seed=seed,
            progress_every=progress_every,
            parameterization=parameterization,
            transforms=transforms,
            input=input,
            array_dtype=array_dtype,
            timeout=timeout,
        )
        async with contextlib.aclosing(stream):
            async for item in stream:
                if isinstance(item, Visualization):
                    return item
                if on_progress is not None:
                    on_progress(item)
        raise _no_result()

    def visualize_stream(
        self,
        objective: ObjectiveLike,
        *,
        model: str | None = None,
        negate: bool = False,
        steps: int = 512,
        learning_rate: float = 0.05,
        size: tuple[int, int] | None = None,
        batch: int = 1,
        diversity: float = 0.0,
        seed: int = 0,
        progress_every: int = 0,
        parameterization: str = "fft",
        transforms: bool = True,
        input: InputLike | None = None,
        array_dtype: str = "float32",
        timeout: float | None = None,
    ) -> AsyncGenerator[Progress | Visualization, None]:
        """Runs a feature visualization, yielding its progress and finally its result.

        Arguments are checked at once; the call starts on the first iteration. Closing the
        iterator (`await it.aclose()`, or `contextlib.aclosing`) cancels the call, which
        stops the job on the server; one left unfinished is closed when garbage-collected.

        Args:
            objective: What to maximize: a class index (int) for its logit; a `Neuron` for
                one neuron (with y and x) or the mean of a whole channel (without); a
                `Layer` for a whole layer (DeepDream: the mean of its squared activations).
            model: A served model's name; None uses the server's first listed model.
            negate: Minimize the objective instead.
            steps: Optimization steps (at most the server's limit); 0 means the server's
                default (512).
            learning_rate: Adam learning rate; 0 means the server's default (0.05).
            size: (height, width) of the images in pixels; None uses the model's input size.
            batch: Number of images to synthesize together; 0 means 1.
            diversity: Weight of the diversity term across the batch; 0 disables it.
            seed: Random seed in [0, 2**64); the same seed gives the same images.
            progress_every: Send a progress message with the current images every this many
                steps; 0 sends no pictures.
            parameterization: "fft" (decorrelated Fourier spectrum, natural-looking images)
                or "pixel" (plain pixels, for comparison).
            transforms: Apply transformation robustness (pad, jitter, scale, rotate).
            input: Optional image, of any kind `explain` accepts (a path is read
                synchronously); for a neuron or class objective the result then also carries
                the objective's guided backpropagation on it (`Visualization.attribution`).
            array_dtype: "float32" or "float16", the precision arrays travel in; the
                `Visualization` arrays are float32 either way.
            timeout: Deadline of the whole job in seconds; None uses the client's default.

        Returns:
            An iterator of `Progress` items, then one `Visualization`, the last item.

        Raises:
            DeepvisError: While iterating: the call failed (a subclass per gRPC status), or
                (`Internal`) the stream ended without a result.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        # Built before the model is resolved so that a bad argument fails without a call.
        request = _convert.visualize_request_to_pb(
            objective,
            model=model or "",
            negate=negate,
            steps=steps,
            learning_rate=learning_rate,
            size=size,
            batch=batch,
            diversity=diversity,
            seed=seed,
            progress_every=progress_every,
            parameterization=parameterization,
            transforms=transforms,
            input=input,
            array_dtype=array_dtype,
        )
        return self._visualize_items(request, model is None, timeout)

    async def _visualize_items(
        self, request: deepvis_pb2.VisualizeRequest, resolve: bool, timeout: float | None
    ) -> AsyncGenerator[Progress | Visualization, None]:
        if resolve:
            _convert.set_visualize_model(request, await self._resolve_model(timeout))
        call = self._stub.Visualize(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        result: Visualization | None = None
        try:
            async for response in call:
                item = _convert.visualize_item_from_pb(response)
                if isinstance(item, Progress):
                    yield item
                elif isinstance(item, Visualization):
                    # The stream ends after the result; reading on collects the call's status.
                    result = item
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            # A no-op once the call has ended; otherwise (the consumer stopped early, a
            # message failed to decode) it tells the server to stop the job.
            call.cancel()
        if result is None:
            raise _no_result()
        yield result

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
