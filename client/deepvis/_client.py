"""Blocking and asyncio clients of the deepvis Explainer service."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from deepvis import _convert
from deepvis._compat import Unpack
from deepvis._exceptions import DeepvisError
from deepvis._models import (
    Comparison,
    Dream,
    DreamProgress,
    Evaluation,
    EvaluationProgress,
    Explanation,
    InputLike,
    ModelDescription,
    ModelInfo,
    ObjectiveLike,
    Progress,
    TargetLike,
    Visualization,
)
from deepvis._options import (
    CompareOptions,
    DreamOptions,
    EvaluateOptions,
    ExplainOptions,
    VisualizeOptions,
)
from deepvis._plans import (
    Call,
    Plan,
    ProgressT,
    Public,
    ResultT,
    Stream,
    StreamRun,
    T,
    batch_results,
    evaluate_stream,
    folded,
    no_result,
    single,
    streaming,
    unary,
)
from deepvis._transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AddressLike,
    Attempts,
    channel_options,
    channel_target,
    security,
)
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

__all__ = ["AsyncClient", "Client"]

# The standard health service; its messages travel as the bytes _convert encodes, so that the
# channel needs no stub of it.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


# --- the one definition of every public call -----------------------------------------------------


class _BaseClient:
    """What `Client` and `AsyncClient` share: every call's signature, docs, checks and requests.

    Each public call is defined here once, as `_<name>`: it checks its arguments and returns a
    plan (see `_plans`) of the requests to send and what to make of the answers; beside it,
    `<name> = unary(_<name>)` (or `streaming`, `folded`) says how the clients run that plan.
    The clients run plans with their own I/O (the grpc or grpc.aio channel, the replay and
    stream loops): each gets every call as a method with this signature and docstring.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if _BaseClient in cls.__bases__:  # Client and AsyncClient, not classes made from them
            for name, call in vars(_BaseClient).items():
                if isinstance(call, Public):
                    setattr(cls, name, call.method_for(cls))

    def __init__(
        self,
        address: AddressLike,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
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
        self._address = channel_target(address)
        self._timeout = timeout
        self._default_model: str | None = None
        credentials, self._metadata = security(
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
        )
        options = channel_options(max_message_bytes, options, self._address)
        self._channel = self._open(self._address, credentials, options)
        self._model_lock = self._lock()
        self._stub = deepvis_pb2_grpc.ExplainerStub(self._channel)
        # No (de)serializers: the request and response travel as the bytes _convert makes.
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )

    def _open(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[Any]
    ) -> Any:
        """The channel to `target`: secure with `credentials`, else plaintext."""
        raise NotImplementedError

    def _lock(self) -> Any:
        """The lock that keeps a burst of first calls to one ListModels."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._address!r})"

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _streaming(self, plan: Stream[Any, Any]) -> StreamRun:
        return StreamRun(
            plan,
            method=getattr(self._stub, plan.rpc),
            metadata=self._metadata,
            timeout=self._deadline(plan.timeout),
        )

    def _listed(self, response: deepvis_pb2.ListModelsResponse) -> list[ModelInfo]:
        models = _convert.models_from_pb(response)
        if self._default_model is None and models:
            self._default_model = models[0].name
        return models

    def _models(self, *, timeout: float | None = None) -> Call[list[ModelInfo]]:
        """Lists the models the server serves.

        Args:
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            One `ModelInfo` per model, in the server's configuration order.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
        """
        request = deepvis_pb2.ListModelsRequest()
        return single(self._stub.ListModels, request, self._listed, timeout=timeout)

    models = unary(_models)

    def _explain(
        self,
        input: InputLike,
        *,
        target: TargetLike = None,
        timeout: float | None = None,
        **options: Unpack[ExplainOptions],
    ) -> Call[Explanation]:
        """Runs an interpretability method on one input.

        To run several methods on one input, in one call, use `compare`.

        Args:
            input: A path of an image file, encoded image bytes, a PIL image, a uint8 pixel
                array [H, W] or [H, W, C] (C in 1, 3, 4), or a float32/float16 array
                [C, H, W] already preprocessed for the model. `AsyncClient` too reads a path
                synchronously.
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
            picture_size: (width, height) of the server's map pictures, as PIL's
                `Image.size`; None: an overlay at the input image's size, a map alone at
                its array's size. Never enlarged unasked.
            cmap: The pictures' colormap, one of `deepvis.render.colormaps()`; None:
                inferno for unsigned maps, RdBu_r for signed ones.
            clip: The percentile of |a| drawn at the colormap's end; None or 100: no
                clipping.
            sign: "signed" or "unsigned" to draw maps so; None: the method's own.
            overlay: Lay map pictures over the input (True) or not (False); None: the
                method's own (Grad-CAM and activation heatmaps over the input).
            colorbar: Draw a colorbar with the real values beside each map picture.
            caption: Draw a caption (method · target · layer) above each map picture.
                The same options given to `Explanation.heatmap` / `overlay` redraw the
                server's picture locally, pixel for pixel (from a float32 array).
            composite: For lrp, the rule set: one of `deepvis.composites()`; None uses
                "epsilon_plus_flat" (Zennit's names: flat first layer, z+ convolutions,
                epsilon linear layers).
            epsilon: For lrp, the epsilon rule's stabilizer, in [1e-9, 100]; None: 1e-6.
            gamma: For lrp with composite "epsilon_gamma_box", the gamma rule's weight, in
                [0, 100]; None: 0.25.
            smooth: A `Smooth` to aggregate the result over noisy copies of the input
                (SmoothGrad, SmoothGrad-squared, VarGrad), for guided_backprop,
                deconvolution, saliency, integrated_gradients, input_x_gradient and lrp;
                None: the plain method.
            integrated_gradients: For integrated_gradients, an `IntegratedGradients` with its
                steps, integration method and baseline; None: 50 Gauss-Legendre steps from
                the zero model input.
            rollout: For attention_rollout, a `Rollout` (head fusion, discard ratio); None
                uses its defaults. Refused with other methods.

        Returns:
            The `Explanation`: raw result, picture, further named arrays and pictures,
            predictions, target and server timing; for lrp and integrated_gradients, its
            `completeness`.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status).
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        if not isinstance(method := options.get("method", ""), str):
            raise TypeError(
                f"method must be one method's name, not {type(method).__name__}; to run "
                "several on one input use compare(input, methods=[...])"
            )
        # Built before the model is resolved so that a bad argument fails without a call.
        request = _convert.request_to_pb(input, target=target, **options)
        source = _convert.overlay_source(input)
        return single(
            self._stub.Explain,
            request,
            lambda response: _convert.explanation_from_pb(response, source=source),
            timeout=timeout,
            unnamed=options.get("model") is None,
        )

    explain = unary(_explain)

    def _compare(
        self,
        input: InputLike,
        methods: Sequence[str] = ("guided_backprop", "grad_cam", "integrated_gradients"),
        *,
        target: TargetLike = None,
        render: bool = False,
        timeout: float | None = None,
        **options: Unpack[CompareOptions],
    ) -> Call[Comparison]:
        """Runs several methods on one input, in one call, for side-by-side pictures.

        The methods go out as the items of one ExplainBatch call, which the server batches
        (with every other client's requests); their float32 arrays come back, and the
        `Comparison` draws them locally, on one shared scale per family by default.

        Args:
            input: Anything `explain` accepts; read once.
            methods: Two or more of `deepvis.methods()` (hyphens may replace underscores),
                each once.
            model, target, top_k, timeout, array_dtype, top_k_channels: As for `explain`.
            layer: For the layer methods among them (ignored by the others).
            render: Also have the server draw each method's picture (`Explanation.image`).

        Returns:
            The `Comparison`, one `Explanation` per method.

        Raises:
            DeepvisError: The call failed, or one method failed (its error, naming it).
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        if isinstance(methods, str) or not isinstance(methods, Sequence):
            raise TypeError(
                f"methods must be a list or tuple of method names, not {type(methods).__name__}"
            )
        # The request takes all of explain's options; compare, only its own.
        if unknown := sorted(options.keys() - CompareOptions.__optional_keys__):
            raise TypeError(f"compare() got an unexpected keyword argument {unknown[0]!r}")
        names = [_convert.method_name(m) for m in methods]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"methods must name each method once, at least one: {list(methods)}")
        base = _convert.request_to_pb(
            input, method=names[0], target=target, render=render, **options
        )
        batch = _convert.same_input_batch_pb(base, names)
        source = _convert.overlay_source(input)

        def answer(_request: Any, response: Any) -> Comparison:
            items = _convert.explanations_from_batch_pb(response, len(names), source=source)
            for name, item in zip(names, items, strict=True):
                if isinstance(item, DeepvisError):
                    raise type(item)(f"{name}: {item.details}", item.code)
            return Comparison(dict(zip(names, items, strict=True)), source=source)  # type: ignore[arg-type]

        return Call(
            method=self._stub.ExplainBatch,
            requests=[batch],
            answer=answer,
            unnamed=list(batch.requests) if options.get("model") is None else [],
            timeout=timeout,
        )

    compare = unary(_compare)

    def _explain_batch(
        self,
        inputs: Sequence[InputLike],
        *,
        targets: TargetLike | Sequence[TargetLike] = None,
        timeout: float | None = None,
        return_errors: bool = False,
        chunk: int = 64,
        **options: Unpack[ExplainOptions],
    ) -> Call[list[Any]]:
        """Runs an interpretability method on many inputs, a few calls for all of them.

        The inputs travel in ExplainBatch calls of up to `chunk` items; the server batches
        them with every other client's requests. Cheaper than one `explain` call per
        input when there are many (a call's fixed cost is paid once per chunk). `Client`
        sends the chunks one after another, `AsyncClient` all at once.

        Args:
            inputs: The inputs, each anything `explain` accepts.
            targets: One target for all inputs, or a list or tuple with one per input
                (None entries explain the predicted class).
            return_errors: False raises the first failed item's error; True puts each
                failed item's exception (a `DeepvisError`) in its place in the result.
            chunk: Items per call, 1 to 256.
            **options: As for `explain`, the same for every input (with `Smooth`, each
                input's noise is drawn from the same seed).
            timeout: Deadline of each call in seconds; None uses the client's default.

        Returns:
            One `Explanation` per input, in order (or its exception, with return_errors).

        Raises:
            DeepvisError: A call failed as a whole, or (without return_errors) an item
                failed: the first one's error, its message naming the item.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: An input file cannot be read.
        """
        batches = _convert.batch_requests_to_pb(inputs, chunk=chunk, targets=targets, **options)
        sources = [_convert.overlay_source(x) for x in inputs]
        starts = dict(zip(map(id, batches), range(0, len(inputs), chunk), strict=True))

        def answer(batch: Any, response: Any) -> list[Any]:
            start = starts[id(batch)]
            chunk_sources = sources[start : start + len(batch.requests)]
            return _convert.explanations_from_batch_pb(
                response, len(batch.requests), sources=chunk_sources
            )

        items = [r for batch in batches for r in batch.requests]
        return Call(
            method=self._stub.ExplainBatch,
            requests=batches,
            answer=answer,
            result=functools.partial(batch_results, return_errors),
            unnamed=items if options.get("model") is None else [],
            timeout=timeout,
        )

    explain_batch = unary(_explain_batch)

    def _health(self, service: str = "", *, timeout: float | None = None) -> Call[str]:
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
        status = _convert.health_status_from_bytes
        return single(self._health_check, request, status, timeout=timeout)

    health = unary(_health)

    def _describe(
        self, model: str | None = None, *, timeout: float | None = None
    ) -> Call[ModelDescription]:
        """Describes one model's layers: names, types, output shapes, layouts (and the map
        [C, h, w] the methods read each as), the suggested Grad-CAM layer and why, and the
        attention layers attention rollout chains.

        Args:
            model: A served model's name; None uses the server's first listed model.
            timeout: Deadline of this call in seconds; None uses the client's default.

        Returns:
            The `ModelDescription`.

        Raises:
            DeepvisError: The call failed (a subclass per gRPC status), e.g. `NotFound` for a
                model the server does not serve.
        """
        request = _convert.describe_request_to_pb(model or "")
        description = _convert.model_description_from_pb
        return single(
            self._stub.DescribeModel, request, description, timeout=timeout, unnamed=model is None
        )

    describe = unary(_describe)

    def _visualize_stream(
        self,
        objective: ObjectiveLike,
        *,
        timeout: float | None = None,
        **options: Unpack[VisualizeOptions],
    ) -> Stream[Progress, Visualization]:
        """Runs a feature visualization, yielding its progress and finally its result.

        Arguments are checked at once; the call starts on the first iteration. Closing the
        iterator cancels the call, which stops the job on the server: with `Client`,
        `close()` (or `contextlib.closing`, or dropping it after leaving a `for` loop early);
        with `AsyncClient`, `await it.aclose()` (or `contextlib.aclosing`), and one left
        unfinished is closed when garbage-collected.

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
            learning_rate: The step's learning rate (Adam's for the Lucid preset); None or 0
                means the preset's default on the server (Lucid: 0.05; class model: 25).
            size: (height, width) of the images in pixels; None uses the model's input size.
            batch: Number of images to synthesize together; 0 means 1.
            diversity: Weight of the diversity term across the batch; 0 disables it.
            seed: Random seed in [0, 2**64); the same seed gives the same images.
            progress_every: Send a progress message, with the current images, every this
                many steps; 0 sends about 64 progress messages without pictures. A reader
                that falls behind gets the latest progress, not every message it missed.
            parameterization: "fft" (decorrelated Fourier spectrum, natural-looking images)
                or "pixel" (plain pixels, for comparison); None uses "fft" (the class-model
                preset takes none).
            transforms: Apply transformation robustness (pad, jitter, scale, rotate).
            input: Optional image, of any kind `explain` accepts (a path is read at once);
                for a neuron or class objective the result then also carries the objective's
                guided backpropagation on it (`Visualization.attribution`).
            array_dtype: "float32" or "float16", the precision arrays travel in; the
                `Visualization` arrays are float32 either way.
            preset: "lucid" (Olah et al.'s feature visualization: the parameterization,
                Adam, transformation robustness, diversity) or "class_model" (Simonyan et
                al. 2013: the model-space image from zero by gradient ascent on the class's
                pre-softmax score minus l2_penalty * ||x||^2, each step x + lr * (dS/dx -
                2 * l2_penalty * x), no transforms; `objective` must be a class index).
            l2_penalty: The class model's lambda; None uses the server's default (1e-3).
                Refused with the Lucid preset.
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
        request = _convert.visualize_request_to_pb(objective, **options)
        unnamed = [request] if options.get("model") is None else []
        return Stream(request=request, unnamed=unnamed, timeout=timeout)

    visualize_stream = streaming(_visualize_stream)

    def _visualize(
        self,
        objective: ObjectiveLike,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[VisualizeOptions],
    ) -> Stream[Progress, Visualization]:
        """Synthesizes the images that maximize an objective (feature visualization).

        Returns:
            The `Visualization`: images, arrays, final objective and server timing.
        """
        plan = self._visualize_stream(objective, timeout=timeout, **options)
        plan.on_progress = on_progress
        return plan

    visualize = folded(_visualize)

    def _dream_stream(
        self,
        input: InputLike,
        objective: ObjectiveLike,
        *,
        timeout: float | None = None,
        **options: Unpack[DreamOptions],
    ) -> Stream[DreamProgress, Dream]:
        """Runs DeepDream on a picture, yielding its progress and finally its result.

        The original algorithm (google/deepdream): the picture is shrunk `octaves - 1` times
        by `octave_scale`; from the smallest octave up, each runs `steps_per_octave` steps of
        gradient ascent on the objective, each step randomly shifted by up to `jitter`
        pixels, its gradient divided by its mean absolute value, the pixels clipped to
        [0, 1]; the detail each octave added is carried, enlarged, into the next. The
        server batches concurrent jobs of the same picture size. Close the iterator (or
        break out of the loop) to stop the job; it then frees its place at once.

        Args:
            input: The picture, of any kind `explain` accepts but a model tensor (a path is
                read at once); it is dreamt at its own size.
            objective: What to amplify: a `Layer` (half the sum of its squared activations,
                the original's L2 objective), a `Neuron` without y and x (the same over that
                channel) or a class index (its pre-softmax logit).
            model: Model name; None uses the server's first listed model.
            negate: Minimize the objective instead.
            octaves: Octaves, 1 to 8 (0 means 4).
            octave_scale: Ratio of one octave's sides to the next smaller one's, above 1 and
                at most 4 (0 means 1.4).
            steps_per_octave: Steps per octave, 1 to 100 (0 means 10).
            step_size: The step in 0-255 pixel units; None uses the server's 1.5.
            jitter: The largest random shift per step in pixels; None uses the server's 32.
            seed: Seeds the shifts: the same request and seed give the same picture.
            progress_every: 0 sends a progress message, with the picture, at the end of
                each octave but the last; N every N steps. A reader that falls behind gets
                the latest progress, not every message it missed.
            array_dtype: "float32" or "float16", the precision the array travels in.
            timeout: Deadline of the whole job in seconds; None uses the client's default.

        Returns:
            An iterator (an async one for `AsyncClient`) of `DreamProgress` messages, then
            the `Dream` as its last item.

        Raises:
            DeepvisError: While iterating: the call failed (a subclass per gRPC status), e.g.
                `InvalidArgument` naming the field out of range, or (`Internal`) the stream
                ended without a result.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: The input file cannot be read.
        """
        request = _convert.dream_request_to_pb(input, objective, **options)
        return Stream(
            request=request,
            unnamed=[request] if options.get("model") is None else [],
            timeout=timeout,
            rpc="DeepDream",
            decode=_convert.dream_item_from_pb,
            result_type=Dream,
        )

    dream_stream = streaming(_dream_stream)

    def _dream(
        self,
        input: InputLike,
        objective: ObjectiveLike,
        *,
        on_progress: Callable[[DreamProgress], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[DreamOptions],
    ) -> Stream[DreamProgress, Dream]:
        """Runs DeepDream on a picture (the original algorithm, google/deepdream).

        Returns:
            The `Dream`: the picture at the input's own size, its array, the objective per
            octave and server timing.
        """
        plan = self._dream_stream(input, objective, timeout=timeout, **options)
        plan.on_progress = on_progress
        return plan

    dream = folded(_dream)

    def _evaluate_stream(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        timeout: float | None = None,
        **options: Unpack[EvaluateOptions],
    ) -> Stream[EvaluationProgress, Evaluation]:
        """Evaluates methods on inputs, yielding the evaluation's progress and finally its result.

        Arguments are checked at once; the call starts on the first iteration. Closing the
        iterator cancels the call, which stops the evaluation on the server (as for
        `visualize_stream`). A call that fails with UNAVAILABLE before its first message is
        replayed on the next replica; after it, it fails with `Unavailable` (call again: the
        same seed gives the same numbers).

        Args:
            inputs: One input or a sequence of them, each anything `explain` accepts (paths
                are read at once).
            model: A served model's name; None uses the server's first listed model.
            method: A method of `deepvis.methods()` or a sequence of them, each evaluated on
                every input (not activations: it attributes no class).
            metrics: Names of `deepvis.metrics()` (one or a sequence); None computes all:
                "randomization" (Adebayo et al. 2018: Spearman and SSIM of each map against
                the trained model's as layers are re-initialized top-down, cascading and
                independent), "deletion" and "insertion" (Petsiuk et al. 2018: the class
                probability as pixels are removed, or revealed on a blurred copy, in map
                order, and the area under it), "infidelity" and "sensitivity" (Captum's
                `infidelity` and `sensitivity_max`).
            classes: The class each input's maps explain: None, each input's predicted
                class; an int, that class for all; a sequence, one per input.
            layer: The layer of the layer methods (grad_cam, guided_grad_cam); None uses the
                model's Grad-CAM layer.
            steps: Deletion and insertion steps, up to H * W; 0 means min(224, H * W).
            seed: Seeds the re-initialized layers and the perturbations, in [0, 2**64).
            randomization: "both", "cascading" or "independent".
            perturbations: Samples per input for infidelity and max-sensitivity; 0 means 10.
            noise_std: Infidelity's Gaussian noise std in the model's input space; 0 means 0.1.
            sensitivity_radius: Max-sensitivity's radius in the model's input space; 0 means
                0.02.
            return_maps: Also return each method's maps, the ones every metric was computed
                from (`MethodEvaluation.maps`).
            timeout: Deadline of the whole evaluation in seconds; None uses the client's
                default.

        Returns:
            An iterator of `EvaluationProgress` items, then one `Evaluation`, the last item.

        Raises:
            DeepvisError: While iterating: the call failed (a subclass per gRPC status), e.g.
                `ResourceExhausted` for an evaluation beyond the server's limits, or
                (`Internal`) the stream ended without a result.
            TypeError, ValueError: An argument is invalid; nothing was sent.
            OSError: An input file cannot be read.
        """
        request = _convert.evaluate_request_to_pb(inputs, **options)
        return evaluate_stream(request, timeout=timeout)

    evaluate_stream = streaming(_evaluate_stream)

    def _evaluate(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        on_progress: Callable[[EvaluationProgress], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[EvaluateOptions],
    ) -> Stream[EvaluationProgress, Evaluation]:
        """Sanity checks and faithfulness metrics of methods on inputs, computed by the server.

        Returns:
            The `Evaluation`: per method, its curves and scores on every input.
        """
        plan = self._evaluate_stream(inputs, timeout=timeout, **options)
        plan.on_progress = on_progress
        return plan

    evaluate = folded(_evaluate)


# --- the two transports ------------------------------------------------------------------------


class Client(_BaseClient):
    """A blocking client of a deepvis server; safe to share between threads.

    Use it as a context manager, or call `close()` when done::

        with deepvis.Client("127.0.0.1:50051") as client:
            result = client.explain("cat.jpg")
            result.image.save("cat.guided-backprop.png")
    """

    _channel: grpc.Channel

    def _open(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[Any]
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def _lock(self) -> threading.Lock:
        return threading.Lock()

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        attempts = Attempts(self._deadline(timeout))
        while True:
            with attempts:
                return method(request, timeout=attempts.remaining(), metadata=self._metadata)
            time.sleep(attempts.backoff)

    def _name(self, plan: Plan) -> None:
        if plan.unnamed:
            # The lock keeps a burst of first calls from threads to one ListModels.
            with self._model_lock:
                if self._default_model is None:
                    self.models(timeout=plan.timeout)
            plan.name(self._default_model)

    def _run(self, plan: Call[T]) -> T:
        self._name(plan)
        # One call after another, each answer made as soon as its response arrives.
        answers = [plan.answer(r, self._unary(plan.method, r, plan.timeout)) for r in plan.requests]
        return plan.result(answers)

    def _stream(
        self, plan: Stream[ProgressT, ResultT]
    ) -> Generator[ProgressT | ResultT, None, None]:
        self._name(plan)
        run = self._streaming(plan)
        while True:
            call = run.call()
            with run.attempt(call):
                for response in call:
                    if (progress := run.take(response)) is not None:
                        yield progress
                break
            time.sleep(run.backoff)
        yield run.result()

    def _fold(self, plan: Stream[ProgressT, ResultT]) -> ResultT:
        items = self._stream(plan)
        with contextlib.closing(items):
            for item in items:
                if (result := plan.fold(item)) is not None:
                    return result  # type: ignore[no-any-return]
        raise no_result(plan.rpc)

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


class AsyncClient(_BaseClient):
    """An asyncio client of a deepvis server, with the API of `Client` as coroutines.

    Create and use it inside one event loop::

        async with deepvis.AsyncClient("127.0.0.1:50051") as client:
            results = await asyncio.gather(*(client.explain(p) for p in paths))
    """

    _channel: grpc.aio.Channel

    def _open(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[Any]
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    def _lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        attempts = Attempts(self._deadline(timeout))
        while True:
            with attempts:
                return await method(request, timeout=attempts.remaining(), metadata=self._metadata)
            await asyncio.sleep(attempts.backoff)

    async def _name(self, plan: Plan) -> None:
        if plan.unnamed:
            # The lock keeps a burst of concurrent first calls to one ListModels.
            async with self._model_lock:
                if self._default_model is None:
                    await self.models(timeout=plan.timeout)
            plan.name(self._default_model)

    async def _answer(self, plan: Call[Any], request: Any) -> Any:
        return plan.answer(request, await self._unary(plan.method, request, plan.timeout))

    async def _run(self, plan: Call[T]) -> T:
        await self._name(plan)
        if len(plan.requests) == 1:
            return plan.result([await self._answer(plan, plan.requests[0])])
        # The chunks of explain_batch go out together: the server batches them as one client's
        # many calls.
        answers = await asyncio.gather(*(self._answer(plan, r) for r in plan.requests))
        return plan.result(list(answers))

    async def _stream(
        self, plan: Stream[ProgressT, ResultT]
    ) -> AsyncGenerator[ProgressT | ResultT, None]:
        await self._name(plan)
        run = self._streaming(plan)
        while True:
            call = run.call()
            with run.attempt(call):
                async for response in call:
                    if (progress := run.take(response)) is not None:
                        yield progress
                break
            await asyncio.sleep(run.backoff)
        yield run.result()

    async def _fold(self, plan: Stream[ProgressT, ResultT]) -> ResultT:
        items = self._stream(plan)
        async with contextlib.aclosing(items):
            async for item in items:
                if (result := plan.fold(item)) is not None:
                    return result  # type: ignore[no-any-return]
        raise no_result(plan.rpc)

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
