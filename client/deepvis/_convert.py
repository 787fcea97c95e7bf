"""Conversions between Python values and deepvis.v1 messages; no other client module builds them."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from PIL import Image

from deepvis.v1 import deepvis_pb2

__all__ = [
    "Explanation",
    "InputLike",
    "ModelInfo",
    "Neuron",
    "Prediction",
    "TargetLike",
    "explanation_from_pb",
    "input_to_pb",
    "method_from_pb",
    "method_to_pb",
    "methods",
    "model_info_from_pb",
    "request_to_pb",
    "set_model",
    "target_to_pb",
]

_METHOD_PREFIX = "METHOD_"

# Pillow modes whose pixels travel as a uint8 tensor; the server takes C = 1, 3 or 4.
_PIXEL_MODES = ("L", "RGB", "RGBA")

_ARRAY_DTYPES = {
    "float32": deepvis_pb2.DTYPE_FLOAT32,
    "float16": deepvis_pb2.DTYPE_FLOAT16,
}

# DTYPE_UNSPECIFIED on output means FLOAT32 (see the proto).
_WIRE_FLOAT_DTYPES: dict[int, np.dtype[Any]] = {
    deepvis_pb2.DTYPE_UNSPECIFIED: np.dtype("<f4"),
    deepvis_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    deepvis_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
}

_ACCEPTED_INPUTS = (
    "a file path, encoded image bytes, a PIL image, a uint8 array of shape [H, W] or "
    "[H, W, C] with C in (1, 3, 4), or a preprocessed float32/float16 array of shape [C, H, W]"
)


@dataclass(frozen=True)
class Prediction:
    """A class the model predicts for the input.

    Attributes:
        index: Class index.
        label: Class label, or the index as text when the model has no labels.
        score: Softmax probability.
    """

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Neuron:
    """A unit inside the network to explain instead of a class.

    Attributes:
        layer: Layer name as in the model's `named_modules()`.
        channel: Channel index of the layer's output (feature index for [N, F] outputs).
        y: Row in the layer's output map; with `x`, selects one element. None: the whole
            channel (its sum).
        x: Column in the layer's output map; set together with `y`.
    """

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def __post_init__(self) -> None:
        if (self.y is None) != (self.x is None):
            raise ValueError("Neuron: set y and x together, or neither (the whole channel)")


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves, with what a client needs to feed it.

    Attributes:
        name: The name requests use.
        arch: Architecture it was built from.
        num_classes: Number of output classes.
        channels: Input channels (C of [C, H, W]).
        height: Input height in pixels.
        width: Input width in pixels.
        mean: Per-channel normalisation mean applied to images and pixels.
        std: Per-channel normalisation std applied to images and pixels.
        labels: Class labels in index order; empty when the model has none.
        methods: Names of the methods the model serves, as in `methods()`.
    """

    name: str
    arch: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    methods: tuple[str, ...]

    def __repr__(self) -> str:
        # Spelling out a thousand labels would drown the useful fields.
        return (
            f"ModelInfo(name={self.name!r}, arch={self.arch!r}, num_classes={self.num_classes}, "
            f"input={self.channels}x{self.height}x{self.width}, methods={self.methods!r})"
        )


@dataclass(eq=False)
class Explanation:
    """The result of one explain call.

    Attributes:
        model: The model that ran.
        method: The method that ran, as in `methods()`.
        array: The raw result as float32 (for guided backpropagation [C, H, W] in the model's
            input space), or None when it was left out. A float32 result may be a read-only
            view of the response bytes; copy it before writing to it.
        image: The rendered result, or None when rendering was not asked for.
        predictions: The model's top predictions, best first.
        target: The class index or neuron that was explained.
        batch_size: Number of requests in the server batch this one ran in.
        queue_ms: Milliseconds the request waited on the server before its batch started.
        compute_ms: Milliseconds that batch spent computing.
        warnings: Caveats the server attached to the result.
    """

    model: str
    method: str
    array: np.ndarray | None
    image: Image.Image | None
    predictions: list[Prediction] = field(default_factory=list)
    target: int | Neuron | None = None
    batch_size: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        array = None if self.array is None else f"<{self.array.dtype} {list(self.array.shape)}>"
        image = None if self.image is None else f"<{self.image.mode} {self.image.size}>"
        top = self.predictions[0] if self.predictions else None
        return (
            f"Explanation(model={self.model!r}, method={self.method!r}, array={array}, "
            f"image={image}, top={top!r}, target={self.target!r}, batch_size={self.batch_size})"
        )


InputLike: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
)
TargetLike: TypeAlias = int | np.integer | Neuron | None


def methods() -> list[str]:
    """Returns the names of the methods this client knows, e.g. ["guided_backprop"].

    Returns:
        One name per value of the proto `Method` enum except METHOD_UNSPECIFIED, in enum order.
    """
    return [
        method_from_pb(number)
        for _, number in sorted(deepvis_pb2.Method.items(), key=lambda item: item[1])
        if number != deepvis_pb2.METHOD_UNSPECIFIED
    ]


def method_to_pb(name: str) -> deepvis_pb2.Method:
    """Parses a method name ("guided_backprop" or "guided-backprop", any case).

    Raises:
        ValueError: The name is not one of `methods()`.
    """
    if isinstance(name, str):
        key = _METHOD_PREFIX + name.strip().replace("-", "_").upper()
        if key != _METHOD_PREFIX + "UNSPECIFIED" and key in deepvis_pb2.Method.keys():
            return deepvis_pb2.Method.Value(key)
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(methods())}")


def method_from_pb(number: int) -> str:
    """Names a proto `Method` value as `methods()` does; unknown values become "method_<n>"."""
    try:
        name = deepvis_pb2.Method.Name(number)
    except ValueError:
        # A newer server may run a method this client's stubs do not list yet.
        return f"method_{number}"
    return name.removeprefix(_METHOD_PREFIX).lower()


def _tensor(arr: np.ndarray, dtype: deepvis_pb2.DType) -> deepvis_pb2.Tensor:
    # The wire order is little-endian whatever the host's; astype is a no-op when it already is.
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    # tobytes(order="C") copies once even when `little` is a non-contiguous view.
    return deepvis_pb2.Tensor(dtype=dtype, shape=list(arr.shape), data=little.tobytes(order="C"))


def _pil_to_pb(img: Image.Image) -> deepvis_pb2.Input:
    if img.mode in _PIXEL_MODES:
        return deepvis_pb2.Input(pixels=_tensor(np.asarray(img), deepvis_pb2.DTYPE_UINT8))
    if img.mode == "I":
        # 32-bit "I" usually holds 16-bit samples, which PNG keeps; RGB would clip them at 255.
        extrema = img.getextrema()
        if extrema[0] >= 0 and extrema[1] <= 0xFFFF:  # type: ignore[operator]
            img = img.convert("I;16")
    buf = io.BytesIO()
    try:
        # PNG keeps palette, LA and 16-bit images lossless; the server converts them.
        img.save(buf, format="PNG")
    except (OSError, ValueError, KeyError):
        # Modes PNG cannot hold (CMYK, YCbCr, LAB, HSV, F, ...): convert as the server would.
        rgb = img.convert("RGBA" if img.mode.endswith(("A", "a")) else "RGB")
        return deepvis_pb2.Input(pixels=_tensor(np.asarray(rgb), deepvis_pb2.DTYPE_UINT8))
    return deepvis_pb2.Input(image=buf.getvalue())


def _array_to_pb(arr: np.ndarray) -> deepvis_pb2.Input:
    if arr.dtype == np.uint8:
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
            if arr.size == 0:
                raise ValueError(f"uint8 pixel array is empty (shape {list(arr.shape)})")
            return deepvis_pb2.Input(pixels=_tensor(arr, deepvis_pb2.DTYPE_UINT8))
        raise ValueError(
            f"uint8 pixel array must have shape [H, W] or [H, W, C] with C in (1, 3, 4), "
            f"got {list(arr.shape)}"
        )
    # By kind and size rather than equality, so that big-endian floats are accepted too.
    if arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4):
        if arr.ndim == 3 and arr.size > 0:
            f16 = arr.dtype.itemsize == 2
            wire = deepvis_pb2.DTYPE_FLOAT16 if f16 else deepvis_pb2.DTYPE_FLOAT32
            return deepvis_pb2.Input(tensor=_tensor(arr, wire))
        raise ValueError(
            f"{arr.dtype} array must be a preprocessed model input of shape [C, H, W], "
            f"got {list(arr.shape)}"
        )
    raise TypeError(
        f"unsupported array dtype {arr.dtype}: pass uint8 pixels ([H, W] or [H, W, C]) or a "
        f"preprocessed float32/float16 tensor [C, H, W] (e.g. arr.astype(np.float32))"
    )


def input_to_pb(input: InputLike) -> deepvis_pb2.Input:
    """Converts what `explain` accepts into an `Input` message.

    Args:
        input: A path (str or os.PathLike) of an image file, which is read and sent encoded;
            encoded image bytes (bytes, bytearray, memoryview); a PIL image (L, RGB and RGBA
            are sent as raw pixels, other modes as PNG); a uint8 array [H, W] or [H, W, C]
            with C in (1, 3, 4), sent as pixels; or a float32/float16 array [C, H, W] that is
            already preprocessed for the model, sent as its input tensor.

    Returns:
        The message, with exactly one of `image`, `pixels` or `tensor` set.

    Raises:
        TypeError: The input's type or array dtype is not one of those.
        ValueError: The array's shape does not fit its dtype.
        OSError: The file cannot be read.
    """
    if isinstance(input, (str, os.PathLike)):
        with open(input, "rb") as f:
            return deepvis_pb2.Input(image=f.read())
    if isinstance(input, (bytes, bytearray, memoryview)):
        data = bytes(input)
        if not data:
            raise ValueError("image bytes are empty")
        return deepvis_pb2.Input(image=data)
    if isinstance(input, Image.Image):
        return _pil_to_pb(input)
    if isinstance(input, np.ndarray):
        return _array_to_pb(input)
    raise TypeError(f"cannot explain a {type(input).__name__}: pass {_ACCEPTED_INPUTS}")


def target_to_pb(target: TargetLike) -> deepvis_pb2.Target | None:
    """Converts a class index or a `Neuron` into a `Target`; None means the predicted class.

    Raises:
        TypeError: The target is neither an int (bools excluded) nor a `Neuron`.
    """
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return deepvis_pb2.Target(class_index=int(target))
    if isinstance(target, Neuron):
        neuron = deepvis_pb2.Neuron(layer=target.layer, channel=int(target.channel))
        if target.y is not None and target.x is not None:
            neuron.y = int(target.y)
            neuron.x = int(target.x)
        return deepvis_pb2.Target(neuron=neuron)
    raise TypeError(
        f"target must be a class index (int), a Neuron or None, not {type(target).__name__}"
    )


def request_to_pb(
    input: InputLike,
    *,
    model: str,
    method: str,
    target: TargetLike,
    layer: str | None,
    render: bool,
    array_dtype: str,
    top_k: int,
    array: bool = True,
) -> deepvis_pb2.ExplainRequest:
    """Builds an `ExplainRequest`; see `Client.explain` for the arguments.

    Raises:
        TypeError, ValueError: An argument is invalid; OSError: the input file cannot be read.
    """
    method_pb = method_to_pb(method)
    dtype_pb = _ARRAY_DTYPES.get(str(array_dtype).lower())
    if dtype_pb is None:
        valid = ", ".join(_ARRAY_DTYPES)
        raise ValueError(f"array_dtype must be one of {valid}, not {array_dtype!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 means the server's default), not {top_k!r}")
    target_pb = target_to_pb(target)
    request = deepvis_pb2.ExplainRequest(
        model=model,
        method=method_pb,
        input=input_to_pb(input),
        layer=layer or "",
        output=deepvis_pb2.OutputOptions(
            array_dtype=dtype_pb, omit_array=not array, render=bool(render), top_k=int(top_k)
        ),
    )
    if target_pb is not None:
        request.target.CopyFrom(target_pb)
    return request


def set_model(request: deepvis_pb2.ExplainRequest, model: str) -> None:
    """Names the model of a request built before the model was known."""
    request.model = model


def _array_from_pb(tensor: deepvis_pb2.Tensor) -> np.ndarray | None:
    if not tensor.shape:
        return None
    dtype = _WIRE_FLOAT_DTYPES.get(tensor.dtype)
    if dtype is None:
        known = tensor.dtype in deepvis_pb2.DType.values()
        name = deepvis_pb2.DType.Name(tensor.dtype) if known else str(tensor.dtype)
        raise ValueError(f"result array has dtype {name}; expected FLOAT32 or FLOAT16")
    shape = tuple(tensor.shape)
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(
            f"result array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, "
            f"got {len(tensor.data)}"
        )
    # Zero-copy for float32 on little-endian hosts; float16 is widened for easier use.
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(np.float32, copy=False)


def _target_from_pb(target: deepvis_pb2.Target) -> int | Neuron | None:
    kind = target.WhichOneof("kind")
    if kind == "class_index":
        return int(target.class_index)
    if kind == "neuron":
        n = target.neuron
        has_yx = n.HasField("y") and n.HasField("x")
        return Neuron(
            layer=n.layer,
            channel=int(n.channel),
            y=int(n.y) if has_yx else None,
            x=int(n.x) if has_yx else None,
        )
    return None


def explanation_from_pb(resp: deepvis_pb2.ExplainResponse) -> Explanation:
    """Converts an `ExplainResponse` into an `Explanation`.

    Raises:
        ValueError: The result array is inconsistent with its shape or has a non-float dtype.
        OSError: The rendered picture cannot be decoded.
    """
    image: Image.Image | None = None
    if resp.image_png:
        image = Image.open(io.BytesIO(resp.image_png))
        image.load()
    return Explanation(
        model=resp.model,
        method=method_from_pb(resp.method),
        array=_array_from_pb(resp.array),
        image=image,
        predictions=[
            Prediction(index=int(p.index), label=p.label, score=float(p.score))
            for p in resp.predictions
        ],
        target=_target_from_pb(resp.target),
        batch_size=int(resp.timing.batch_size),
        queue_ms=float(resp.timing.queue_ms),
        compute_ms=float(resp.timing.compute_ms),
        warnings=list(resp.warnings),
    )


def model_info_from_pb(info: deepvis_pb2.ModelInfo) -> ModelInfo:
    """Converts a `ModelInfo` message into a `ModelInfo`."""
    return ModelInfo(
        name=info.name,
        arch=info.arch,
        num_classes=int(info.num_classes),
        channels=int(info.channels),
        height=int(info.height),
        width=int(info.width),
        mean=tuple(float(v) for v in info.mean),
        std=tuple(float(v) for v in info.std),
        labels=tuple(info.labels),
        methods=tuple(method_from_pb(m) for m in info.methods),
    )
