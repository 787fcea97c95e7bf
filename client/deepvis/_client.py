"""Blocking and asyncio clients of the deepvis Explainer service."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import re
import threading
import time
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
from deepvis._exceptions import DeepvisError, Internal, NotFound, from_rpc_error
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

__all__ = ["SERVICE_CONFIG", "AddressLike", "AsyncClient", "Client", "channel_target"]

_DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# The standard health service; its messages are encoded by hand (see _convert) so that the
# thin client does not need grpcio-health-checking.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_AUTHORIZATION = "authorization"


AddressLike = str | Sequence[str]
"""A server's "host:port", several of them (a sequence, or one string joined by commas), or a
gRPC target such as "dns:///name:port" or "ipv4:10.0.0.1:50051,10.0.0.2:50051"."""

# gRPC's own resolvers: a string that starts with one of these schemes is a target already.
_TARGET_SCHEMES = frozenset(
    {"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"}
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

_SERVICE = "deepvis.v1.Explainer"
_MAX_ATTEMPTS = 5
_INITIAL_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0
_BACKOFF_MULTIPLIER = 2
# The default service config of every channel (gRPC uses it unless the caller's `options`
# set "grpc.service_config"). round_robin spreads calls over every address the target
# resolves to, and only over those that are connected. The retry policy replays a call that
# failed with UNAVAILABLE (a replica that is down or went away, a full queue) after a
# jittered exponential backoff, and round_robin picks the next ready replica for it. gRPC
# retries only until the call is committed, i.e. until the server's response headers arrive.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": _SERVICE}],
            "retryPolicy": {
                "maxAttempts": _MAX_ATTEMPTS,
                "initialBackoff": f"{_INITIAL_BACKOFF_S:g}s",
                "maxBackoff": f"{_MAX_BACKOFF_S:g}s",
                "backoffMultiplier": _BACKOFF_MULTIPLIER,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
# Room for a request's metadata beside its largest message in the retry buffer.
_RETRY_BUFFER_SLACK = 64 * 1024


def _split_host_port(address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (an IPv6 host in brackets: [::1]:port)")
    return host, port


def channel_target(address: AddressLike) -> str:
    """The gRPC target that reaches `address`, as `Client` and `AsyncClient` accept it.

    One "host:port" stays as it is (gRPC resolves the name through DNS); several become one
    `ipv4:` (or `ipv6:`) target listing them, so that gRPC's round_robin balances over them;
    a string that starts with a gRPC resolver scheme ("dns:", "ipv4:", "ipv6:", "unix:", ...)
    or contains "://" is already a target and passes through.

    Raises:
        ValueError: No address, a malformed one, or several that are not all IPv4 or all
            IPv6 literals (a name that resolves to several replicas: "dns:///name:port").
        TypeError: `address` is neither a str nor a sequence of str.
    """
    if isinstance(address, str):
        text = address.strip()
        match = _SCHEME.match(text)
        if "://" in text or (match is not None and match.group(1).lower() in _TARGET_SCHEMES):
            return text
        items = text.split(",")
    elif isinstance(address, Sequence) and all(isinstance(a, str) for a in address):
        items = list(address)
    else:
        raise TypeError(f"address must be a str or a sequence of str, not {type(address).__name__}")
    addresses = [a.strip() for a in items if a.strip()]
    if not addresses:
        raise ValueError("no server address given")
    if len(addresses) == 1:
        return addresses[0]
    versions = set()
    for item in addresses:
        host, _ = _split_host_port(item)
        try:
            versions.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"several addresses must be IP literals, not {host!r}: use "
                '"dns:///name:port" for a name that resolves to every replica'
            ) from None
    if len(versions) > 1:
        raise ValueError("several addresses must be all IPv4 or all IPv6")
    return f"ipv{versions.pop()}:" + ",".join(addresses)


def _default_authority(target: str) -> str | None:
    """The authority of a target listing several IP addresses: the first one.

    gRPC's own default is the whole list, which no server certificate names; the first
    address is what TLS then checks every replica's certificate against (the option
    "grpc.ssl_target_name_override" names another), and the `:authority` each call carries.
    """
    scheme, _, rest = target.partition(":")
    if scheme.lower() not in ("ipv4", "ipv6") or "," not in rest:
        return None
    return rest.split(",", 1)[0].strip() or None


def _channel_options(
    max_message_bytes: int,
    options: Sequence[tuple[str, Any]] | None,
    target: str | None = None,
) -> list[tuple[str, Any]]:
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": max_message_bytes,
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.service_config": json.dumps(SERVICE_CONFIG),
        # Our config, not one a DNS TXT record might carry.
        "grpc.service_config_disable_resolution": 1,
        "grpc.enable_retries": 1,
        # gRPC keeps a call's request to replay it only up to this size (256 KiB by default):
        # beyond it the call is committed at once and never retried.
        "grpc.per_rpc_retry_buffer_size": max_message_bytes + _RETRY_BUFFER_SLACK,
    }
    authority = None if target is None else _default_authority(target)
    if authority is not None:
        merged["grpc.default_authority"] = authority
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


def _committed_unavailable(err: grpc.RpcError) -> bool:
    """Whether `err` is UNAVAILABLE that came after the server's response headers.

    A deepvis server sends its headers (x-request-id) as soon as a call reaches the servicer,
    which commits the call: gRPC's retry policy then no longer replays it, e.g. when the
    replica dies while computing. The clients replay such a unary call (all of them are
    idempotent), or a Visualize call that has sent no message yet, themselves, with the
    policy's budget; UNAVAILABLE before the headers was already retried by gRPC.
    """
    try:
        return err.code() == grpc.StatusCode.UNAVAILABLE and bool(err.initial_metadata())
    except Exception:  # noqa: BLE001 - an RpcError that is not a Call: nothing to replay
        return False


class _Attempts:
    """The deadline and backoff of one call across its replays."""

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._backoff = _INITIAL_BACKOFF_S
        self._attempt = 1

    def remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def replay_after(self, err: grpc.RpcError) -> float | None:
        """Seconds to wait before replaying the call that failed with `err`; None: give up."""
        if self._attempt >= _MAX_ATTEMPTS or not _committed_unavailable(err):
            return None
        delay = random.uniform(0.0, self._backoff)
        self._backoff = min(self._backoff * _BACKOFF_MULTIPLIER, _MAX_BACKOFF_S)
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        self._attempt += 1
        return delay


# Items one ExplainBatch call may carry (the server's limit).
MAX_BATCH_ITEMS = 256


def _batch_requests(
    inputs: Sequence[InputLike],
    model: str | None,
    method: str,
    targets: TargetLike | Sequence[TargetLike],
    layer: LayersLike,
    render: bool,
    array_dtype: str,
    top_k: int,
    array: bool,
    top_k_channels: int,
    chunk: int,
) -> list[deepvis_pb2.ExplainRequest]:
    """Checks the arguments of explain_batch and builds one request per input."""
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= MAX_BATCH_ITEMS:
        raise ValueError(f"chunk must be an int from 1 to {MAX_BATCH_ITEMS}, not {chunk!r}")
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise TypeError(
            f"inputs must be a sequence (list or tuple) of inputs, not {type(inputs).__name__}"
        )
    if not inputs:
        raise ValueError("inputs is empty; give at least one input")
    per_item = _convert.batch_targets(targets, len(inputs))
    return [
        _convert.request_to_pb(
            x,
            model=model or "",
            method=method,
            target=t,
            layer=layer,
            render=render,
            array_dtype=array_dtype,
            top_k=top_k,
            array=array,
            top_k_channels=top_k_channels,
        )
        for x, t in zip(inputs, per_item, strict=True)
    ]


def _batch_results(results: list[Any], return_errors: bool) -> list[Any]:
    if not return_errors:
        for i, r in enumerate(results):
            if isinstance(r, DeepvisError):
                raise type(r)(f"item {i}: {r.details}", r.code)
    return results


def _models_from_pb(response: deepvis_pb2.ListModelsResponse) -> list[ModelInfo]:
    return [_convert.model_info_from_pb(m) for m in response.models]


def _no_models() -> NotFound:
    return NotFound("the server lists no models", grpc.StatusCode.NOT_FOUND)


def _no_result() -> Internal:
    return Internal("the Visualize stream ended without a result", grpc.StatusCode.INTERNAL)


class _Base:
    def __init__(self, address: AddressLike, timeout: float | None) -> None:
        self._address = channel_target(address)
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
        address: AddressLike,
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
            address: The server's "host:port"; or several replicas, as a sequence of
                "IP:port" or one string joining them with commas, or a gRPC target such as
                "dns:///name:port" (every address the name resolves to) or
                "ipv4:10.0.0.1:50051,10.0.0.2:50051". The channel balances calls over them
                with gRPC's round_robin and replays a call that fails with UNAVAILABLE on
                the next replica (up to 5 attempts in all, within the deadline). Unary calls
                are replayed even after a replica died while computing them; a Visualize
                stream only until its first message (see `visualize_stream`).
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
            ValueError, TypeError: The address, the token or the certificate arguments are
                invalid.
        """
        super().__init__(address, timeout)
        credentials, self._metadata = _security(
            token, tls, root_certificates, client_certificate, client_key
        )
        channel_options = _channel_options(max_message_bytes, options, self._address)
        if credentials is None:
            self._channel = grpc.insecure_channel(self._address, options=channel_options)
        else:
            self._channel = grpc.secure_channel(self._address, credentials, options=channel_options)
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        # No (de)serializers: the request and response travel as the bytes we encode.
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
        self._model_lock = threading.Lock()

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        attempts = _Attempts(self._deadline(timeout))
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                delay = attempts.replay_after(err)
                if delay is None:
                    raise from_rpc_error(err) from None
            time.sleep(delay)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models the server serves.

        Args:
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            One `ModelInfo` per model, in the server's configuration order.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
        """
        response = self._unary(self._stub.ListModels, deepvis_pb2.ListModelsRequest(), timeout)
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
            array: Return the raw results; False leaves every array out of the response:
                `Explanation.array` is None and `Explanation.arrays` empty (pictures,
                predictions and target still come), which saves bandwidth when only the
                pictures are used.
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
        response = self._unary(self._stub.Explain, request, timeout)
        return _convert.explanation_from_pb(response)

    def explain_batch(
        self,
        inputs: Sequence[InputLike],
        *,
        model: str | None = None,
        method: str = "guided_backprop",
        targets: TargetLike | Sequence[TargetLike] = None,
        layer: LayersLike = None,
        render: bool = True,
        array_dtype: str = "float32",
        top_k: int = 5,
        timeout: float | None = None,
        array: bool = True,
        top_k_channels: int = 0,
        return_errors: bool = False,
        chunk: int = 64,
    ) -> list[Any]:
        """Runs an interpretability method on many inputs, a few calls for all of them.

        The inputs travel in ExplainBatch calls of up to `chunk` items; the server batches
        them with every other client's requests. Cheaper than one `explain` call per
        input when there are many (a call's fixed cost is paid once per chunk).

        Args:
            inputs: The inputs, each anything `explain` accepts.
            targets: One target for all inputs, or a list or tuple with one per input
                (None entries explain the predicted class).
            return_errors: False raises the first failed item's error; True puts each
                failed item's exception (a `DeepvisError`) in its place in the result.
            chunk: Items per call, 1 to 256.
            model, method, layer, render, array_dtype, top_k, array, top_k_channels:
                As for `explain`, the same for every input.
            timeout: Deadline of each call in seconds; None uses the client's default.

        Returns:
            One `Explanation` per input, in order (or its exception, with return_errors).

        Raises:
            DeepvisError: A call failed as a whole, or (without return_errors) an item
                failed: the first one's error, its message naming the item.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: An input file cannot be read.
        """
        requests = _batch_requests(
            inputs,
            model,
            method,
            targets,
            layer,
            render,
            array_dtype,
            top_k,
            array,
            top_k_channels,
            chunk,
        )
        if model is None:
            name = self._resolve_model(timeout)
            for r in requests:
                _convert.set_model(r, name)
        results: list[Explanation | DeepvisError] = []
        for start in range(0, len(requests), chunk):
            part = requests[start : start + chunk]
            batch = deepvis_pb2.ExplainBatchRequest(requests=part)
            response = self._unary(self._stub.ExplainBatch, batch, timeout)
            results += _convert.explanations_from_batch_pb(response, len(part))
        return _batch_results(results, return_errors)

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
        response = self._unary(self._health_check, request, timeout)
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
        response = self._unary(self._stub.DescribeModel, request, timeout)
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
            progress_every: Send a progress message, with the current images, every this
                many steps; 0 sends about 64 progress messages without pictures. A reader
                that falls behind gets the latest progress, not every message it missed.
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

        A call that fails with UNAVAILABLE before its first message (a replica that is down,
        full, or dies while rendering) is replayed from the start on the next replica, like
        a unary call; after the first message it fails with `Unavailable` instead, as a
        replay would repeat the messages already yielded: call again (the same seed gives
        the same images).

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
            progress_every: Send a progress message, with the current images, every this
                many steps; 0 sends about 64 progress messages without pictures. A reader
                that falls behind gets the latest progress, not every message it missed.
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
        attempts = _Attempts(self._deadline(timeout))
        result: Visualization | None = None
        while True:
            call = self._stub.Visualize(
                request, timeout=attempts.remaining(), metadata=self._metadata
            )
            started = False
            try:
                for response in call:
                    item = _convert.visualize_item_from_pb(response)
                    started = True
                    if isinstance(item, Progress):
                        yield item
                    elif isinstance(item, Visualization):
                        # The stream ends after the result; reading on collects the status.
                        result = item
                break
            except grpc.RpcError as err:
                # Replayed only while nothing came: a replay starts the job over.
                delay = None if started else attempts.replay_after(err)
                if delay is None:
                    raise from_rpc_error(err) from None
            finally:
                # A no-op once the call has ended; otherwise (the consumer stopped early, a
                # message failed to decode) it tells the server to stop the job.
                call.cancel()
            time.sleep(delay)
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
        address: AddressLike,
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
            address: The server's "host:port"; or several replicas, as a sequence of
                "IP:port" or one string joining them with commas, or a gRPC target such as
                "dns:///name:port" (every address the name resolves to) or
                "ipv4:10.0.0.1:50051,10.0.0.2:50051". The channel balances calls over them
                with gRPC's round_robin and replays a call that fails with UNAVAILABLE on
                the next replica (up to 5 attempts in all, within the deadline). Unary calls
                are replayed even after a replica died while computing them; a Visualize
                stream only until its first message (see `visualize_stream`).
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
            ValueError, TypeError: The address, the token or the certificate arguments are
                invalid.
        """
        super().__init__(address, timeout)
        credentials, self._metadata = _security(
            token, tls, root_certificates, client_certificate, client_key
        )
        channel_options = _channel_options(max_message_bytes, options, self._address)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self._address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._address, credentials, options=channel_options
            )
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        # No (de)serializers: the request and response travel as the bytes we encode.
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
        self._model_lock = asyncio.Lock()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        attempts = _Attempts(self._deadline(timeout))
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                delay = attempts.replay_after(err)
                if delay is None:
                    raise from_rpc_error(err) from None
            await asyncio.sleep(delay)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models the server serves.

        Args:
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            One `ModelInfo` per model, in the server's configuration order.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
        """
        response = await self._unary(
            self._stub.ListModels, deepvis_pb2.ListModelsRequest(), timeout
        )
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
            array: Return the raw results; False leaves every array out of the response:
                `Explanation.array` is None and `Explanation.arrays` empty (pictures,
                predictions and target still come), which saves bandwidth when only the
                pictures are used.
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
        response = await self._unary(self._stub.Explain, request, timeout)
        return _convert.explanation_from_pb(response)

    async def explain_batch(
        self,
        inputs: Sequence[InputLike],
        *,
        model: str | None = None,
        method: str = "guided_backprop",
        targets: TargetLike | Sequence[TargetLike] = None,
        layer: LayersLike = None,
        render: bool = True,
        array_dtype: str = "float32",
        top_k: int = 5,
        timeout: float | None = None,
        array: bool = True,
        top_k_channels: int = 0,
        return_errors: bool = False,
        chunk: int = 64,
    ) -> list[Any]:
        """Runs an interpretability method on many inputs, a few calls for all of them.

        The inputs travel in ExplainBatch calls of up to `chunk` items; the server batches
        them with every other client's requests. Cheaper than one `explain` call per
        input when there are many (a call's fixed cost is paid once per chunk).

        Args:
            inputs: The inputs, each anything `explain` accepts.
            targets: One target for all inputs, or a list or tuple with one per input
                (None entries explain the predicted class).
            return_errors: False raises the first failed item's error; True puts each
                failed item's exception (a `DeepvisError`) in its place in the result.
            chunk: Items per call, 1 to 256.
            model, method, layer, render, array_dtype, top_k, array, top_k_channels:
                As for `explain`, the same for every input.
            timeout: Deadline of each call in seconds; None uses the client's default.

        Returns:
            One `Explanation` per input, in order (or its exception, with return_errors).

        Raises:
            DeepvisError: A call failed as a whole, or (without return_errors) an item
                failed: the first one's error, its message naming the item.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: An input file cannot be read.
        """
        requests = _batch_requests(
            inputs,
            model,
            method,
            targets,
            layer,
            render,
            array_dtype,
            top_k,
            array,
            top_k_channels,
            chunk,
        )
        if model is None:
            name = await self._resolve_model(timeout)
            for r in requests:
                _convert.set_model(r, name)
        # The chunks go out together: the server batches them as one client's many calls.
        parts = [requests[i : i + chunk] for i in range(0, len(requests), chunk)]
        responses = await asyncio.gather(
            *(
                self._unary(
                    self._stub.ExplainBatch, deepvis_pb2.ExplainBatchRequest(requests=p), timeout
                )
                for p in parts
            )
        )
        results: list[Explanation | DeepvisError] = []
        for part, response in zip(parts, responses, strict=True):
            results += _convert.explanations_from_batch_pb(response, len(part))
        return _batch_results(results, return_errors)

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
        response = await self._unary(self._health_check, request, timeout)
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
        response = await self._unary(self._stub.DescribeModel, request, timeout)
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
            progress_every: Send a progress message, with the current images, every this
                many steps; 0 sends about 64 progress messages without pictures. A reader
                that falls behind gets the latest progress, not every message it missed.
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

        A call that fails with UNAVAILABLE before its first message (a replica that is down,
        full, or dies while rendering) is replayed from the start on the next replica, like
        a unary call; after the first message it fails with `Unavailable` instead, as a
        replay would repeat the messages already yielded: call again (the same seed gives
        the same images).

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
            progress_every: Send a progress message, with the current images, every this
                many steps; 0 sends about 64 progress messages without pictures. A reader
                that falls behind gets the latest progress, not every message it missed.
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
        attempts = _Attempts(self._deadline(timeout))
        result: Visualization | None = None
        while True:
            call = self._stub.Visualize(
                request, timeout=attempts.remaining(), metadata=self._metadata
            )
            started = False
            try:
                async for response in call:
                    item = _convert.visualize_item_from_pb(response)
                    started = True
                    if isinstance(item, Progress):
                        yield item
                    elif isinstance(item, Visualization):
                        # The stream ends after the result; reading on collects the status.
                        result = item
                break
            except grpc.RpcError as err:
                # Replayed only while nothing came: a replay starts the job over.
                delay = None if started else attempts.replay_after(err)
                if delay is None:
                    raise from_rpc_error(err) from None
            finally:
                # A no-op once the call has ended; otherwise (the consumer stopped early, a
                # message failed to decode) it tells the server to stop the job.
                call.cancel()
            await asyncio.sleep(delay)
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
