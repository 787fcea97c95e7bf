"""Conversions between Python values and deepvis.v1 messages; no other client module builds them."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import io
import math
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image

from deepvis import _models, render
from deepvis._compat import Unpack
from deepvis._exceptions import DeepvisError, Internal, from_status
from deepvis._options import ExplainOptions
from deepvis.render import DEFAULT_CLIP
from deepvis.render import Options as PictureOptions
from deepvis.v1 import deepvis_pb2

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "MAX_BATCH_ITEMS",
    "baseline_kinds",
    "batch_requests_to_pb",
    "batch_targets",
    "composites",
    "describe_request_to_pb",
    "dream_item_from_pb",
    "dream_request_to_pb",
    "evaluate_item_from_pb",
    "evaluate_request_to_pb",
    "explanation_from_pb",
    "explanations_from_batch_pb",
    "health_request_to_bytes",
    "health_status_from_bytes",
    "input_to_pb",
    "integration_methods",
    "layout_from_pb",
    "method_from_pb",
    "method_name",
    "method_to_pb",
    "methods",
    "metrics",
    "model_description_from_pb",
    "model_info_from_pb",
    "models_from_pb",
    "objective_to_pb",
    "overlay_source",
    "parameterizations",
    "picture_to_pb",
    "presets",
    "request_to_pb",
    "rollout_to_pb",
    "same_input_batch_pb",
    "set_model",
    "smooth_kinds",
    "target_to_pb",
    "visualize_item_from_pb",
    "visualize_request_to_pb",
]

_V = TypeVar("_V")
_D = TypeVar("_D", bound="DataclassInstance")

_METHOD_PREFIX = "METHOD_"
_PARAMETERIZATION_PREFIX = "PARAMETERIZATION_"

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
# Named arrays may also hold indices (e.g. "<layer>.channels").
_WIRE_NAMED_DTYPES: dict[int, np.dtype[Any]] = {
    **_WIRE_FLOAT_DTYPES,
    deepvis_pb2.DTYPE_INT64: np.dtype("<i8"),
}

_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1

# Items one ExplainBatch call may carry (the server's limit).
MAX_BATCH_ITEMS = 256

_ACCEPTED_INPUTS = (
    "a file path, encoded image bytes, a PIL image, a uint8 array of shape [H, W] or "
    "[H, W, C] with C in (1, 3, 4), or a preprocessed float32/float16 array of shape [C, H, W]"
)


def methods() -> list[str]:
    """Returns the names of the methods this client knows, e.g. ["guided_backprop", ...].

    Returns:
        One name per value of the proto `Method` enum except METHOD_UNSPECIFIED, in enum order.
    """
    # sorted(set(...)): each number once, whatever aliases (GRAD_CAM beside METHOD_GRAD_CAM)
    # the enum has.
    return [
        method_from_pb(number)
        for number in sorted(set(deepvis_pb2.Method.values()))
        if number != deepvis_pb2.METHOD_UNSPECIFIED
    ]


def parameterizations() -> list[str]:
    """Returns the names of the feature-visualization parameterizations, e.g. ["fft", "pixel"].

    Returns:
        One name per value of the proto `Parameterization` enum except UNSPECIFIED, in enum
        order.
    """
    return [
        name.removeprefix(_PARAMETERIZATION_PREFIX).lower()
        for name, number in sorted(deepvis_pb2.Parameterization.items(), key=lambda item: item[1])
        if number != deepvis_pb2.PARAMETERIZATION_UNSPECIFIED
    ]


def _enum_names(enum: Any, prefix: str) -> list[str]:
    """An enum's value names without `prefix`, lowercased, in number order, UNSPECIFIED left
    out."""
    return [
        name.removeprefix(prefix).lower()
        for name, number in sorted(enum.items(), key=lambda item: item[1])
        if name != prefix + "UNSPECIFIED"
    ]


def _enum_to_pb(
    enum: Any, prefix: str, what: str, name: object, valid: list[str], spelled: dict[str, str]
) -> Any:  # the enum types exist only in the .pyi
    """The value of `name` (any case, hyphens for underscores; `spelled` maps client spellings
    to the schema's) in `enum`; ValueError listing the `valid` names otherwise."""
    if isinstance(name, str):
        key = name.strip().replace("-", "_").lower()
        full = prefix + spelled.get(key, key).upper()
        if full != prefix + "UNSPECIFIED" and full in enum.keys():
            return enum.Value(full)
    raise ValueError(f"{what} must be one of {', '.join(valid)}, not {name!r}")


# Captum's spelling of Gauss-Legendre, the schema's INTEGRATION_METHOD_GAUSS_LEGENDRE.
_GAUSS_LEGENDRE = {"gausslegendre": "gauss_legendre"}


def composites() -> list[str]:
    """Returns the names of LRP's rule sets, e.g. ["epsilon_plus_flat", ...], the default first.

    Returns:
        One name per value of the proto `LrpComposite` enum except UNSPECIFIED, in enum order.
    """
    return _enum_names(deepvis_pb2.LrpComposite, "LRP_COMPOSITE_")


def smooth_kinds() -> list[str]:
    """Returns SmoothGrad's aggregations: ["smoothgrad", "smoothgrad_sq", "vargrad"]."""
    return _enum_names(deepvis_pb2.SmoothKind, "SMOOTH_KIND_")


def integration_methods() -> list[str]:
    """Returns integrated gradients' methods, Captum's names: ["gausslegendre", ...,
    "expected_gradients"]."""
    names = _enum_names(deepvis_pb2.IntegrationMethod, "INTEGRATION_METHOD_")
    return [n.replace("gauss_legendre", "gausslegendre") for n in names]


def baseline_kinds() -> list[str]:
    """Returns integrated gradients' baselines: ["zero", "black", "blur", "uniform", "images"]."""
    return _enum_names(deepvis_pb2.BaselineKind, "BASELINE_KIND_")


def _parameterization_to_pb(name: str) -> deepvis_pb2.Parameterization:
    if isinstance(name, str):
        key = _PARAMETERIZATION_PREFIX + name.strip().upper()
        unspecified = _PARAMETERIZATION_PREFIX + "UNSPECIFIED"
        if key != unspecified and key in deepvis_pb2.Parameterization.keys():
            return deepvis_pb2.Parameterization.Value(key)
    valid = ", ".join(parameterizations())
    raise ValueError(f"parameterization must be one of {valid}, not {name!r}")


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


def method_name(name: str) -> str:
    """The canonical name of a method ("grad-cam" -> "grad_cam").

    Raises:
        ValueError: The name is not one of `methods()`.
    """
    return method_from_pb(method_to_pb(name))


def overlay_source(input: _models.InputLike) -> _models.InputLike | None:
    """What an explanation keeps of its input for overlays: the image as sent (a path, bytes,
    a PIL image, uint8 pixels); None for a preprocessed float tensor, which is no image."""
    if isinstance(input, np.ndarray) and input.dtype != np.uint8:
        return None
    return input


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


def input_to_pb(input: _models.InputLike) -> deepvis_pb2.Input:
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


def target_to_pb(target: _models.TargetLike) -> deepvis_pb2.Target | None:
    """Converts a class index or a `Neuron` into a `Target`; None means the predicted class.

    Raises:
        TypeError: The target is neither an int (bools excluded) nor a `Neuron`.
    """
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return deepvis_pb2.Target(class_index=int(target))
    if isinstance(target, _models.Neuron):
        return deepvis_pb2.Target(neuron=_neuron_to_pb(target))
    raise TypeError(
        f"target must be a class index (int), a Neuron or None, not {type(target).__name__}"
    )


def _neuron_to_pb(target: _models.Neuron) -> deepvis_pb2.Neuron:
    neuron = deepvis_pb2.Neuron(layer=target.layer, channel=int(target.channel))
    if target.y is not None and target.x is not None:
        neuron.y = int(target.y)
        neuron.x = int(target.x)
    return neuron


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: object, *, minimum: int = 0, maximum: int = _INT32_MAX) -> int:
    if not _is_int(value) or not minimum <= int(value) <= maximum:  # type: ignore[call-overload]
        raise ValueError(f"{name} must be an int in [{minimum}, {maximum}], not {value!r}")
    return int(value)  # type: ignore[call-overload]


def _check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return number


def _array_dtype_to_pb(array_dtype: str) -> deepvis_pb2.DType:
    dtype_pb = _ARRAY_DTYPES.get(str(array_dtype).lower())
    if dtype_pb is None:
        valid = ", ".join(_ARRAY_DTYPES)
        raise ValueError(f"array_dtype must be one of {valid}, not {array_dtype!r}")
    return dtype_pb


def _layers_to_list(layer: _models.LayersLike) -> list[str]:
    if layer is None:
        return []
    if isinstance(layer, str):
        # A str is one layer name, not a sequence of one-letter names; "" names none.
        return [layer] if layer else []
    if isinstance(layer, (bytes, bytearray)) or not isinstance(layer, Sequence):
        raise TypeError(
            f"layer must be a layer name, a sequence of them or None, not {type(layer).__name__}"
        )
    names = list(layer)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"layer names must be non-empty str, not {name!r}")
    return names


_SIGNS_PB = {
    None: deepvis_pb2.MAP_SIGN_UNSPECIFIED,
    "signed": deepvis_pb2.MAP_SIGN_SIGNED,
    "unsigned": deepvis_pb2.MAP_SIGN_UNSIGNED,
}
_OVERLAYS_PB = {
    None: deepvis_pb2.OVERLAY_UNSPECIFIED,
    True: deepvis_pb2.OVERLAY_INPUT,
    False: deepvis_pb2.OVERLAY_NONE,
}


def picture_to_pb(picture: render.Options, out: deepvis_pb2.OutputOptions) -> None:
    """Writes what the server draws by (size, colormap, clip, sign, overlay, colorbar, caption)
    into `out`.

    Raises:
        ValueError: `picture` has options only a local drawing has (alpha, base, scale).
    """
    local = render.Options()
    for name in ("alpha", "base", "scale"):
        if getattr(picture, name) != getattr(local, name):
            raise ValueError(
                f"{name} is a local drawing option: the server draws with the default; draw "
                "locally with Explanation.overlay or Explanation.heatmap"
            )
    if picture.size is not None:
        out.picture_width, out.picture_height = picture.size
    if picture.cmap is not None:
        out.colormap = picture.cmap
    if picture.clip != render.DEFAULT_CLIP:
        out.clip_percentile = 100.0 if picture.clip is None else picture.clip
    out.sign = _SIGNS_PB[picture.sign]
    out.overlay = _OVERLAYS_PB[picture.overlay]
    out.colorbar = picture.colorbar
    out.caption = picture.caption


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, not {value!r}")
    return number


def lrp_to_pb(
    method: deepvis_pb2.Method,
    composite: str | None,
    epsilon: float | None,
    gamma: float | None,
) -> deepvis_pb2.LrpOptions | None:
    """LRP's options, or None when none is given (the server's defaults).

    Raises:
        ValueError: An option is invalid, or given to a method other than lrp.
    """
    if composite is None and epsilon is None and gamma is None:
        return None
    if method != deepvis_pb2.METHOD_LRP:
        raise ValueError("composite, epsilon and gamma are options of method lrp")
    options = deepvis_pb2.LrpOptions()
    if composite is not None:
        options.composite = _enum_to_pb(
            deepvis_pb2.LrpComposite, "LRP_COMPOSITE_", "composite", composite, composites(), {}
        )
    if epsilon is not None:
        options.epsilon = _finite("epsilon", epsilon)
    if gamma is not None:
        options.gamma = _finite("gamma", gamma)
    return options


def smooth_to_pb(smooth: _models.Smooth | None) -> deepvis_pb2.SmoothGradOptions | None:
    """SmoothGrad's options from a `Smooth`, or None.

    Raises:
        TypeError: `smooth` is not a `Smooth`; ValueError: one of its values is invalid.
    """
    if smooth is None:
        return None
    if not isinstance(smooth, _models.Smooth):
        raise TypeError(f"smooth must be a deepvis.Smooth or None, not {type(smooth).__name__}")
    return deepvis_pb2.SmoothGradOptions(
        samples=_check_int("smooth.samples", smooth.samples, maximum=256),
        noise=_finite("smooth.noise", smooth.noise),
        kind=_enum_to_pb(
            deepvis_pb2.SmoothKind, "SMOOTH_KIND_", "smooth.kind", smooth.kind, smooth_kinds(), {}
        ),
        seed=_check_int("smooth.seed", smooth.seed, maximum=_UINT64_MAX),
    )


def integrated_gradients_to_pb(
    method: deepvis_pb2.Method, options: _models.IntegratedGradients | None
) -> deepvis_pb2.IntegratedGradientsOptions | None:
    """Integrated gradients' options from an `IntegratedGradients`, or None.

    Raises:
        TypeError: `options` is not an `IntegratedGradients`, or a baseline image is no input;
        ValueError: a value is invalid, or the method is not integrated_gradients;
        OSError: a baseline image file cannot be read.
    """
    if options is None:
        return None
    if not isinstance(options, _models.IntegratedGradients):
        raise TypeError(
            "integrated_gradients must be a deepvis.IntegratedGradients or None, not "
            f"{type(options).__name__}"
        )
    if method != deepvis_pb2.METHOD_INTEGRATED_GRADIENTS:
        raise ValueError("integrated_gradients options are for method integrated_gradients")
    images = options.images
    if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, Sequence):
        raise TypeError("integrated_gradients.images must be a list or tuple of inputs")
    baseline = (
        options.baseline if options.baseline is not None else ("images" if images else "zero")
    )
    msg = deepvis_pb2.IntegratedGradientsOptions(
        steps=_check_int("integrated_gradients.steps", options.steps, maximum=1024),
        method=_enum_to_pb(
            deepvis_pb2.IntegrationMethod,
            "INTEGRATION_METHOD_",
            "integrated_gradients.method",
            options.method,
            integration_methods(),
            _GAUSS_LEGENDRE,
        ),
        baseline=_enum_to_pb(
            deepvis_pb2.BaselineKind,
            "BASELINE_KIND_",
            "integrated_gradients.baseline",
            baseline,
            baseline_kinds(),
            {},
        ),
        blur_sigma=_check_float("integrated_gradients.blur_sigma", options.blur_sigma),
        seed=_check_int("integrated_gradients.seed", options.seed, maximum=_UINT64_MAX),
    )
    if baseline == "uniform":
        msg.baseline_samples = _check_int(
            "integrated_gradients.samples", options.samples, minimum=1, maximum=16
        )
    for image in images:
        msg.baseline_images.append(input_to_pb(image))
    return msg


def request_to_pb(
    input: _models.InputLike,
    *,
    model: str | None = None,
    method: str = "guided_backprop",
    target: _models.TargetLike = None,
    layer: _models.LayersLike = None,
    render: bool = True,
    array_dtype: str = "float32",
    top_k: int = 5,
    array: bool = True,
    top_k_channels: int = 0,
    picture_size: tuple[int, int] | None = None,
    cmap: str | None = None,
    clip: float | None = DEFAULT_CLIP,
    sign: str | None = None,
    overlay: bool | None = None,
    colorbar: bool = False,
    caption: bool = False,
    composite: str | None = None,
    epsilon: float | None = None,
    gamma: float | None = None,
    smooth: _models.Smooth | None = None,
    integrated_gradients: _models.IntegratedGradients | None = None,
    rollout: _models.Rollout | None = None,
) -> deepvis_pb2.ExplainRequest:
    """Builds an `ExplainRequest`; see `Client.explain` for the arguments and their defaults.

    Raises:
        TypeError, ValueError: An argument is invalid; OSError: the input file cannot be read.
    """
    picture = PictureOptions(
        size=picture_size,
        cmap=cmap,
        clip=clip,
        sign=sign,
        overlay=overlay,
        colorbar=colorbar,
        caption=caption,
    )
    method_pb = method_to_pb(method)
    lrp_pb = lrp_to_pb(method_pb, composite, epsilon, gamma)
    smooth_pb = smooth_to_pb(smooth)
    ig_pb = integrated_gradients_to_pb(method_pb, integrated_gradients)
    dtype_pb = _array_dtype_to_pb(array_dtype)
    if not _is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 means the server's default), not {top_k!r}")
    if not _is_int(top_k_channels) or not 0 <= top_k_channels <= _INT32_MAX:
        raise ValueError(
            f"top_k_channels must be an int >= 0 (0 keeps all), not {top_k_channels!r}"
        )
    layers = _layers_to_list(layer)
    target_pb = target_to_pb(target)
    if rollout is not None and not isinstance(rollout, _models.Rollout):
        raise TypeError(f"rollout must be a deepvis.Rollout or None, not {type(rollout).__name__}")
    request = deepvis_pb2.ExplainRequest(
        model=model or "",
        method=method_pb,
        input=input_to_pb(input),
        layers=layers,
        output=deepvis_pb2.OutputOptions(
            array_dtype=dtype_pb, omit_array=not array, render=bool(render), top_k=int(top_k)
        ),
        top_k_channels=int(top_k_channels),
    )
    picture_to_pb(picture, request.output)
    if target_pb is not None:
        request.target.CopyFrom(target_pb)
    if lrp_pb is not None:
        request.lrp.CopyFrom(lrp_pb)
    if smooth_pb is not None:
        request.smooth.CopyFrom(smooth_pb)
    if ig_pb is not None:
        request.integrated_gradients.CopyFrom(ig_pb)
    if rollout is not None:
        request.rollout.CopyFrom(rollout_to_pb(rollout))
    return request


def same_input_batch_pb(
    base: deepvis_pb2.ExplainRequest, methods: Sequence[str]
) -> deepvis_pb2.ExplainBatchRequest:
    """One ExplainBatch of `base` once per method: the input encoded once, copied."""
    batch = deepvis_pb2.ExplainBatchRequest()
    for name in methods:
        item = batch.requests.add()
        item.CopyFrom(base)
        item.method = method_to_pb(name)
    return batch


def rollout_to_pb(rollout: _models.Rollout) -> deepvis_pb2.RolloutOptions:
    """Converts a `Rollout` into `RolloutOptions`."""
    return deepvis_pb2.RolloutOptions(
        head_fusion=deepvis_pb2.HeadFusion.Value("HEAD_FUSION_" + rollout.head_fusion.upper()),
        discard_ratio=float(rollout.discard_ratio),
    )


def batch_targets(
    targets: _models.TargetLike | Sequence[_models.TargetLike], n: int
) -> list[_models.TargetLike]:
    """One target per input: a list or tuple gives each its own, anything else applies to all."""
    if isinstance(targets, (list, tuple)):
        if len(targets) != n:
            raise ValueError(f"targets has {len(targets)} entries for {n} inputs; give one each")
        return list(targets)
    return [targets] * n  # type: ignore[list-item]  # not a list or tuple: one target


def explanations_from_batch_pb(
    resp: deepvis_pb2.ExplainBatchResponse,
    n: int,
    source: _models.InputLike | None = None,
    sources: Sequence[_models.InputLike | None] | None = None,
) -> list[_models.Explanation | DeepvisError]:
    """Each item's `Explanation`, or the exception its error stands for, in order; each keeps
    `source` (or its own of `sources`) for overlays."""
    if len(resp.items) != n:
        raise Internal(f"the server answered {len(resp.items)} items for {n} requests")
    out: list[_models.Explanation | DeepvisError] = []
    for i, item in enumerate(resp.items):
        if item.HasField("response"):
            kept = sources[i] if sources is not None else source
            out.append(explanation_from_pb(item.response, source=kept))
        else:
            err = item.error
            details = f"{err.message} (field {err.field})" if err.field else err.message
            out.append(from_status(err.code, details))
    return out


def batch_requests_to_pb(
    inputs: Sequence[_models.InputLike],
    *,
    chunk: int,
    targets: _models.TargetLike | Sequence[_models.TargetLike],
    **options: Unpack[ExplainOptions],
) -> list[deepvis_pb2.ExplainBatchRequest]:
    """Builds the `ExplainBatchRequest`s of `explain_batch`, `chunk` items each, in order.

    Raises:
        TypeError, ValueError: An argument is invalid; OSError: an input file cannot be read.
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= MAX_BATCH_ITEMS:
        raise ValueError(f"chunk must be an int from 1 to {MAX_BATCH_ITEMS}, not {chunk!r}")
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise TypeError(
            f"inputs must be a sequence (list or tuple) of inputs, not {type(inputs).__name__}"
        )
    if not inputs:
        raise ValueError("inputs is empty; give at least one input")
    per_item = batch_targets(targets, len(inputs))
    requests = [
        request_to_pb(x, target=t, **options) for x, t in zip(inputs, per_item, strict=True)
    ]
    return [
        deepvis_pb2.ExplainBatchRequest(requests=requests[i : i + chunk])
        for i in range(0, len(requests), chunk)
    ]


def set_model(
    request: deepvis_pb2.ExplainRequest
    | deepvis_pb2.DescribeModelRequest
    | deepvis_pb2.VisualizeRequest,
    model: str,
) -> None:
    """Names the model of a request built before the model was known."""
    request.model = model


def _decode_tensor(
    tensor: deepvis_pb2.Tensor, what: str, dtypes: dict[int, np.dtype[Any]]
) -> np.ndarray:
    dtype = dtypes.get(tensor.dtype)
    if dtype is None:
        known = tensor.dtype in deepvis_pb2.DType.values()
        name = deepvis_pb2.DType.Name(tensor.dtype) if known else str(tensor.dtype)
        expected_types = " or ".join(
            sorted({deepvis_pb2.DType.Name(d).removeprefix("DTYPE_") for d in dtypes if d})
        )
        raise ValueError(f"{what} has dtype {name}; expected {expected_types}")
    shape = tuple(tensor.shape)
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(
            f"{what} of shape {list(shape)} and dtype {dtype} needs {expected} bytes, "
            f"got {len(tensor.data)}"
        )
    if dtype == np.float16:
        # Widened for easier use, through a table of every float16's float32: numpy's own
        # cast takes a slow path for subnormals, which most of a gradient is (1.5 ms against
        # 0.17 ms for a 3x224x224 result); the table holds numpy's values, bit for bit.
        bits = np.frombuffer(tensor.data, dtype="<u2")
        return np.take(_float16_table(), bits).reshape(shape)
    # Zero-copy for float32 and int64 on little-endian hosts.
    native = np.int64 if dtype.kind == "i" else np.float32
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(native, copy=False)


_FLOAT16_TABLE: list[np.ndarray] = []


def _float16_table() -> np.ndarray:
    """float32 value of each of the 65,536 float16 bit patterns (256 KB, built once)."""
    if not _FLOAT16_TABLE:
        _FLOAT16_TABLE.append(np.arange(65536, dtype="<u2").view("<f2").astype(np.float32))
    return _FLOAT16_TABLE[0]


def _array_from_pb(tensor: deepvis_pb2.Tensor, what: str = "result array") -> np.ndarray | None:
    # An unset tensor (no shape) means the array was left out.
    if not tensor.shape:
        return None
    return _decode_tensor(tensor, what, _WIRE_FLOAT_DTYPES)


def _png_from_bytes(data: bytes) -> Image.Image | None:
    if not data:
        return None
    # Opened, not decoded: Pillow reads the header now (bytes that are no picture fail here)
    # and the pixels on first use, so a caller that never looks at a picture does not pay
    # for decoding it.
    return Image.open(io.BytesIO(data))


# What a message's scalar field becomes, by the type the `_models` field of its name declares.
_SCALARS: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "str": str, "bool": bool}


def _from_fields(cls: type[_D], msg: Any, **given: Any) -> _D:
    """The `_models` dataclass `cls` from the message fields of its fields' names, each made the
    int, float, str or bool its field declares; the fields of other types are `given`."""
    # The annotations are strings (`from __future__ import annotations` in _models).
    fields = [f for f in dataclasses.fields(cls) if f.name not in given]
    read = {f.name: _SCALARS[str(f.type)](getattr(msg, f.name)) for f in fields}
    return cls(**read, **given)


def _by_name(named: Sequence[Any], kind: str, decode: Callable[[Any], _V]) -> dict[str, _V]:
    """Decodes named items (NamedTensor, NamedImage) by name; `kind` names them in errors."""
    out: dict[str, _V] = {}
    for item in named:
        if item.name in out:
            raise ValueError(f"the response names two {kind} {item.name!r}")
        out[item.name] = decode(item)
    return out


def _named_array(item: deepvis_pb2.NamedTensor) -> np.ndarray:
    return _decode_tensor(item.tensor, f"array {item.name!r}", _WIRE_NAMED_DTYPES)


def _named_image(item: deepvis_pb2.NamedImage) -> Image.Image:
    image = _png_from_bytes(item.png)
    if image is None:
        raise ValueError(f"picture {item.name!r} is empty")
    return image


def _target_from_pb(target: deepvis_pb2.Target) -> int | _models.Neuron | None:
    kind = target.WhichOneof("kind")
    if kind == "class_index":
        return int(target.class_index)
    if kind == "neuron":
        n = target.neuron
        has_yx = n.HasField("y") and n.HasField("x")
        return _models.Neuron(
            layer=n.layer,
            channel=int(n.channel),
            y=int(n.y) if has_yx else None,
            x=int(n.x) if has_yx else None,
        )
    return None


def explanation_from_pb(
    resp: deepvis_pb2.ExplainResponse, source: _models.InputLike | None = None
) -> _models.Explanation:
    """Converts an `ExplainResponse` into an `Explanation` (keeping `source`, the input as
    sent, for overlays).

    Raises:
        ValueError: An array is inconsistent with its shape or has an unexpected dtype (the
            result array must be float, named arrays float or int64), or two share a name.
        OSError: A rendered picture is not a picture Pillow can open.
    """
    array = _array_from_pb(resp.array)
    arrays = _by_name(resp.arrays, "arrays", _named_array)
    layer = resp.layer
    if resp.method == deepvis_pb2.METHOD_ACTIVATIONS and array is not None and layer:
        if layer not in arrays:
            # The first layer's maps travel once, as `array`; arrays[<layer>] is the same
            # array, after its "<layer>.channels" as the other layers' are.
            channels = f"{layer}.channels"
            first = {channels: arrays[channels]} if channels in arrays else {}
            arrays = {**first, layer: array, **arrays}
    return _models.Explanation(
        model=resp.model,
        method=method_from_pb(resp.method),
        array=array,
        image=_png_from_bytes(resp.image_png),
        predictions=[_from_fields(_models.Prediction, p) for p in resp.predictions],
        target=_target_from_pb(resp.target),
        batch_size=int(resp.timing.batch_size),
        queue_ms=float(resp.timing.queue_ms),
        compute_ms=float(resp.timing.compute_ms),
        cached=bool(resp.timing.cached),
        warnings=list(resp.warnings),
        arrays=arrays,
        images=_by_name(resp.images, "pictures", _named_image),
        input_region=_region_from_pb(resp, "input_region"),
        layer=resp.layer,
        source=source,
        completeness=_completeness_from_pb(resp),
    )


def _completeness_from_pb(resp: deepvis_pb2.ExplainResponse) -> _models.Completeness | None:
    if not resp.HasField("completeness"):
        return None
    c = resp.completeness
    return _from_fields(_models.Completeness, c)


def _region_from_pb(msg: Any, name: str) -> tuple[float, float, float, float] | None:
    """A message's InputRegion field `name` as (x, y, width, height); None when unset."""
    if not msg.HasField(name):
        return None
    r = getattr(msg, name)
    return (float(r.x), float(r.y), float(r.width), float(r.height))


def model_info_from_pb(info: deepvis_pb2.ModelInfo) -> _models.ModelInfo:
    """Converts a `ModelInfo` message into a `ModelInfo`."""
    return _models.ModelInfo(
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
        resize=int(info.resize),
    )


def models_from_pb(resp: deepvis_pb2.ListModelsResponse) -> list[_models.ModelInfo]:
    """Converts a `ListModelsResponse` into one `ModelInfo` per model, in order."""
    return [model_info_from_pb(m) for m in resp.models]


def describe_request_to_pb(model: str) -> deepvis_pb2.DescribeModelRequest:
    """Builds a `DescribeModelRequest` for a served model's name."""
    return deepvis_pb2.DescribeModelRequest(model=model)


def layout_from_pb(number: int) -> str:
    """Names a proto `Layout` value: "channels_first", "channels_last", "tokens", "vector",
    "other"; "" for UNSPECIFIED (no tensor output), "layout_<n>" for one this client does not
    know (a newer server's)."""
    if number == deepvis_pb2.LAYOUT_UNSPECIFIED:
        return ""
    try:
        return deepvis_pb2.Layout.Name(number).removeprefix("LAYOUT_").lower()
    except ValueError:
        return f"layout_{number}"


def model_description_from_pb(resp: deepvis_pb2.DescribeModelResponse) -> _models.ModelDescription:
    """Converts a `DescribeModelResponse` into a `ModelDescription`."""
    return _models.ModelDescription(
        model=model_info_from_pb(resp.model),
        layers=[
            _models.LayerInfo(
                name=layer.name,
                type=layer.type,
                output_shape=tuple(int(d) for d in layer.output_shape),
                calls=int(layer.calls),
                layout=layout_from_pb(layer.layout),
                map_shape=tuple(int(d) for d in layer.map_shape),
                class_tokens=int(layer.class_tokens),
            )
            for layer in resp.layers
        ],
        default_cam_layer=resp.default_cam_layer,
        non_relu_activations=tuple(resp.non_relu_activations),
        default_cam_layer_note=resp.default_cam_layer_note,
        attention_layers=tuple(resp.attention_layers),
    )


# --- feature visualization -----------------------------------------------------------------


def objective_to_pb(
    objective: _models.ObjectiveLike, *, negate: bool = False
) -> deepvis_pb2.Objective:
    """Converts what `visualize` maximizes into an `Objective`.

    Args:
        objective: A class index (int) for its logit; a `Neuron` for one neuron (with y and x)
            or a whole channel (without); a `Layer` for the whole layer (DeepDream).
        negate: Minimize instead of maximize.

    Returns:
        The message, with exactly one of `class_index`, `neuron` or `layer` set.

    Raises:
        TypeError: The objective is none of those.
    """
    if isinstance(objective, _models.Layer):
        return deepvis_pb2.Objective(layer=objective.name, negate=bool(negate))
    if isinstance(objective, _models.Neuron):
        return deepvis_pb2.Objective(neuron=_neuron_to_pb(objective), negate=bool(negate))
    if _is_int(objective):
        return deepvis_pb2.Objective(class_index=int(objective), negate=bool(negate))
    raise TypeError(
        f"objective must be a class index (int), a Neuron or a Layer, "
        f"not {type(objective).__name__}"
    )


def visualize_request_to_pb(
    objective: _models.ObjectiveLike,
    *,
    model: str | None = None,
    negate: bool = False,
    steps: int = 512,
    learning_rate: float | None = None,
    size: tuple[int, int] | None = None,
    batch: int = 1,
    diversity: float = 0.0,
    seed: int = 0,
    progress_every: int = 0,
    parameterization: str | None = None,
    transforms: bool = True,
    input: _models.InputLike | None = None,
    array_dtype: str = "float32",
    preset: str = "lucid",
    l2_penalty: float | None = None,
) -> deepvis_pb2.VisualizeRequest:
    """Builds a `VisualizeRequest`; see `Client.visualize_stream` for the arguments and their
    defaults.

    Raises:
        TypeError, ValueError: An argument is invalid; OSError: the input file cannot be read.
    """
    objective_pb = objective_to_pb(objective, negate=negate)
    height = width = 0
    if size is not None:
        if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
            raise ValueError(f"size must be (height, width) or None, not {size!r}")
        height = _check_int("size height", size[0], minimum=1)
        width = _check_int("size width", size[1], minimum=1)
    request = deepvis_pb2.VisualizeRequest(
        model=model or "",
        objective=objective_pb,
        steps=_check_int("steps", steps),
        learning_rate=0.0
        if learning_rate is None
        else _check_float("learning_rate", learning_rate),
        height=height,
        width=width,
        batch=_check_int("batch", batch),
        diversity=_check_float("diversity", diversity),
        seed=_check_int("seed", seed, maximum=_UINT64_MAX),
        progress_every=_check_int("progress_every", progress_every),
        parameterization=(
            deepvis_pb2.PARAMETERIZATION_UNSPECIFIED
            if parameterization is None
            else _parameterization_to_pb(parameterization)
        ),
        no_transforms=not transforms,
        array_dtype=_array_dtype_to_pb(array_dtype),
        preset=_preset_to_pb(preset),
    )
    if l2_penalty is not None:
        request.l2_penalty = _check_float("l2_penalty", l2_penalty)
    if input is not None:
        request.input.CopyFrom(input_to_pb(input))
    return request


def presets() -> list[str]:
    """Returns the names of Visualize's presets: ["lucid", "class_model"]."""
    return [
        name.removeprefix("PRESET_").lower()
        for name, number in sorted(deepvis_pb2.Preset.items(), key=lambda item: item[1])
        if number != deepvis_pb2.PRESET_UNSPECIFIED
    ]


def _preset_to_pb(name: str) -> deepvis_pb2.Preset:
    if isinstance(name, str):
        key = "PRESET_" + name.strip().replace("-", "_").upper()
        if key != "PRESET_UNSPECIFIED" and key in deepvis_pb2.Preset.keys():
            return deepvis_pb2.Preset.Value(key)
    raise ValueError(f"preset must be one of {', '.join(presets())}, not {name!r}")


def _progress_from_pb(msg: deepvis_pb2.VisualizeProgress) -> _models.Progress:
    return _from_fields(_models.Progress, msg, image=_png_from_bytes(msg.image_png))


def _visualization_from_pb(msg: deepvis_pb2.VisualizeResult) -> _models.Visualization:
    array = _array_from_pb(msg.array, "visualization array")
    if array is None:
        raise ValueError("the visualization result carries no image array")
    images = [_png_from_bytes(png) for png in msg.images_png]
    if any(image is None for image in images):
        raise ValueError("the visualization result carries an empty picture")
    return _models.Visualization(
        array=array,
        images=[image for image in images if image is not None],
        objective=float(msg.objective),
        steps=int(msg.steps),
        attribution=_array_from_pb(msg.attribution, "attribution array"),
        attribution_image=_png_from_bytes(msg.attribution_png),
        attribution_region=_region_from_pb(msg, "attribution_region"),
        queue_ms=float(msg.queue_ms),
        compute_ms=float(msg.compute_ms),
        max_batch_jobs=int(msg.max_batch_jobs),
    )


def visualize_item_from_pb(
    resp: deepvis_pb2.VisualizeResponse,
) -> _models.Progress | _models.Visualization | None:
    """Converts one message of a Visualize stream.

    Returns:
        A `Progress` for a progress message, the `Visualization` for the result message, or
        None for a message of a kind this client does not know (a newer server's).

    Raises:
        ValueError: An array is inconsistent with its shape or dtype, or the result lacks one.
        OSError: A picture is not a picture Pillow can open.
    """
    kind = resp.WhichOneof("kind")
    if kind == "progress":
        return _progress_from_pb(resp.progress)
    if kind == "result":
        return _visualization_from_pb(resp.result)
    return None


def dream_request_to_pb(
    input: _models.InputLike,
    objective: _models.ObjectiveLike,
    *,
    model: str | None = None,
    negate: bool = False,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps_per_octave: int = 10,
    step_size: float | None = None,
    jitter: int | None = None,
    seed: int = 0,
    progress_every: int = 0,
    array_dtype: str = "float32",
) -> deepvis_pb2.DeepDreamRequest:
    """Builds a `DeepDreamRequest`; see `Client.dream_stream` for the arguments and their
    defaults.

    Raises:
        ValueError, TypeError: An argument is out of range or of the wrong type.
    """
    request = deepvis_pb2.DeepDreamRequest(
        model=model or "",
        input=input_to_pb(input),
        objective=objective_to_pb(objective, negate=negate),
        octaves=_check_int("octaves", octaves),
        octave_scale=_check_float("octave_scale", octave_scale),
        steps_per_octave=_check_int("steps_per_octave", steps_per_octave),
        seed=_check_int("seed", seed, maximum=_UINT64_MAX),
        progress_every=_check_int("progress_every", progress_every),
        array_dtype=_array_dtype_to_pb(array_dtype),
    )
    if step_size is not None:
        request.step_size = _check_float("step_size", step_size)
    if jitter is not None:
        request.jitter = _check_int("jitter", jitter)
    return request


def dream_item_from_pb(
    resp: deepvis_pb2.DeepDreamResponse,
) -> _models.DreamProgress | _models.Dream | None:
    """Converts one message of a DeepDream stream: a `DreamProgress`, the `Dream`, or None for
    a message of a kind this client does not know (a newer server's).

    Raises:
        ValueError: The result lacks its array or picture, or they are inconsistent.
        OSError: A picture is not a picture Pillow can open.
    """
    kind = resp.WhichOneof("kind")
    if kind == "progress":
        p = resp.progress
        return _from_fields(_models.DreamProgress, p, image=_png_from_bytes(p.image_png))
    if kind != "result":
        return None
    msg = resp.result
    array = _array_from_pb(msg.array, "dream array")
    image = _png_from_bytes(msg.image_png)
    if array is None or image is None:
        raise ValueError("the DeepDream result carries no picture")
    sides = [int(v) for v in msg.octave_sizes]
    return _models.Dream(
        array=array,
        image=image,
        octave_objectives=[float(v) for v in msg.octave_objectives],
        octave_sizes=list(zip(sides[0::2], sides[1::2], strict=True)),
        steps=int(msg.steps),
        queue_ms=float(msg.queue_ms),
        compute_ms=float(msg.compute_ms),
        max_batch_jobs=int(msg.max_batch_jobs),
    )


# --- grpc.health.v1 -----------------------------------------------------------------------


@functools.cache
def _health_pb2() -> ModuleType:
    """The grpc.health.v1 messages, imported on first use (`import deepvis` needs neither).

    grpcio-health-checking's own where it is installed (the server's extra): protobuf keeps one
    grpc_health/v1/health.proto per process, and one release's copy of that file does not load
    beside another's. Elsewhere the stub generated beside deepvis_pb2, so that the thin client
    needs nothing beyond grpcio for health checks.
    """
    if importlib.util.find_spec("grpc_health") is not None:
        return importlib.import_module("grpc_health.v1.health_pb2")
    return importlib.import_module("deepvis.v1.health_pb2")


def health_request_to_bytes(service: str) -> bytes:
    """Encodes a `grpc.health.v1.HealthCheckRequest`.

    Args:
        service: The service to check; "" asks about the server as a whole.

    Returns:
        The serialized message (empty for "", as proto3 leaves defaults out).

    Raises:
        TypeError: `service` is not a str.
    """
    if not isinstance(service, str):
        raise TypeError(f"service must be a str, not {type(service).__name__}")
    return _health_pb2().HealthCheckRequest(service=service).SerializeToString()


def health_status_from_bytes(data: bytes) -> str:
    """Decodes a `grpc.health.v1.HealthCheckResponse` into its status name.

    Args:
        data: The serialized message; unknown fields are skipped.

    Returns:
        "UNKNOWN", "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN"; "STATUS_<n>" for a number
        this client does not know.

    Raises:
        ValueError: The bytes are not a well-formed message.
    """
    response = _health_pb2().HealthCheckResponse
    try:
        status = response.FromString(data).status
    except DecodeError as e:
        raise ValueError(f"the server's answer is not a health response: {e}") from None
    if status in response.ServingStatus.values():
        return response.ServingStatus.Name(status)
    return f"STATUS_{status}"


# --- Evaluate -----------------------------------------------------------------------------

_METRIC_PREFIX = "METRIC_"
_RANDOMIZATION_MODES = {
    "both": deepvis_pb2.RANDOMIZATION_MODE_BOTH,
    "cascading": deepvis_pb2.RANDOMIZATION_MODE_CASCADING,
    "independent": deepvis_pb2.RANDOMIZATION_MODE_INDEPENDENT,
}


def metrics() -> list[str]:
    """Returns the names of the metrics `evaluate` computes, e.g. ["randomization", ...].

    Returns:
        One name per value of the proto `Metric` enum except METRIC_UNSPECIFIED, in enum order.
    """
    return list(_metric_numbers())


def _metric_numbers() -> dict[str, int]:
    return {
        deepvis_pb2.Metric.Name(n).removeprefix(_METRIC_PREFIX).lower(): n
        for n in sorted(deepvis_pb2.Metric.values())
        if n != deepvis_pb2.METRIC_UNSPECIFIED
    }


def _names(value: str | Sequence[str], what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{what} must be a name or a non-empty sequence of names, not {value!r}")
    return [n.replace("-", "_") for n in names]


def evaluate_request_to_pb(
    inputs: _models.InputLike | Sequence[_models.InputLike],
    *,
    model: str | None = None,
    method: str | Sequence[str] = "guided_backprop",
    metrics: str | Sequence[str] | None = None,
    classes: _models.TargetLike | Sequence[_models.TargetLike] = None,
    layer: str | None = None,
    steps: int = 0,
    seed: int = 0,
    randomization: str = "both",
    perturbations: int = 0,
    noise_std: float = 0.0,
    sensitivity_radius: float = 0.0,
    return_maps: bool = False,
) -> deepvis_pb2.EvaluateRequest:
    """Builds an `EvaluateRequest`; see `Client.evaluate_stream` for the arguments and their
    defaults.

    Raises:
        TypeError, ValueError: An argument is invalid; OSError: an input file cannot be read.
    """
    one = isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) or (
        isinstance(inputs, np.ndarray)
    )
    items: list[Any] = [inputs] if one else list(inputs)  # type: ignore[arg-type]
    if not items:
        raise ValueError("inputs is empty: give at least one input")
    request = deepvis_pb2.EvaluateRequest(
        model=model or "",
        methods=[method_to_pb(m) for m in _names(method, "method")],
        layer=layer or "",
        steps=_check_int("steps", steps),
        seed=_check_int("seed", seed, maximum=_UINT64_MAX),
        perturbations=_check_int("perturbations", perturbations),
        noise_std=_check_float("noise_std", noise_std),
        sensitivity_radius=_check_float("sensitivity_radius", sensitivity_radius),
        return_maps=bool(return_maps),
    )
    if metrics is not None:
        known = _metric_numbers()
        for name in _names(metrics, "metrics"):
            if name not in known:
                raise ValueError(f"unknown metric {name!r}; valid: {', '.join(known)}")
            request.metrics.append(known[name])  # type: ignore[arg-type]
    if randomization not in _RANDOMIZATION_MODES:
        raise ValueError(
            f"randomization must be one of {', '.join(_RANDOMIZATION_MODES)}, not {randomization!r}"
        )
    request.randomization = _RANDOMIZATION_MODES[randomization]
    if classes is not None:
        given = [classes] if _is_int(classes) else list(classes)  # type: ignore[arg-type]
        for c in given:
            if not _is_int(c):
                raise TypeError(f"classes must be class indices (int), not {c!r}")
        request.class_indices.extend(int(c) for c in given)  # type: ignore[arg-type]
    for item in items:
        request.inputs.append(input_to_pb(item))
    return request


def _f32(tensor: deepvis_pb2.Tensor, what: str) -> np.ndarray | None:
    return _array_from_pb(tensor, what)


def _curve_from_pb(
    msg: deepvis_pb2.PerturbationCurve, what: str
) -> _models.PerturbationCurve | None:
    curve = _f32(msg.curve, f"{what} curve")
    auc = _f32(msg.auc, f"{what} AUC")
    if curve is None or auc is None:
        return None
    return _models.PerturbationCurve(curve=curve, auc=auc)


def _method_evaluation_from_pb(
    msg: deepvis_pb2.MethodEvaluation, layers: tuple[str, ...]
) -> _models.MethodEvaluation:
    name = method_from_pb(msg.method)
    rand = msg.randomization
    parts = {
        k: _f32(getattr(rand, k), f"{name} {k}")
        for k in ("spearman", "ssim", "independent_spearman", "independent_ssim")
    }
    return _models.MethodEvaluation(
        method=name,
        layer=msg.layer or None,
        deletion=_curve_from_pb(msg.deletion, f"{name} deletion"),
        insertion=_curve_from_pb(msg.insertion, f"{name} insertion"),
        randomization=_models.Randomization(layers=layers, **parts)
        if any(v is not None for v in parts.values())
        else None,
        infidelity=_f32(msg.infidelity, f"{name} infidelity"),
        sensitivity=_f32(msg.sensitivity, f"{name} sensitivity"),
        maps=_f32(msg.maps, f"{name} maps"),
    )


def evaluate_item_from_pb(
    resp: deepvis_pb2.EvaluateResponse,
) -> _models.EvaluationProgress | _models.Evaluation | None:
    """Converts one message of an Evaluate stream.

    Returns:
        An `EvaluationProgress`, the `Evaluation` for the result message, or None for a
        message of a kind this client does not know (a newer server's).

    Raises:
        ValueError: An array is inconsistent with its shape or dtype.
    """
    kind = resp.WhichOneof("kind")
    if kind == "progress":
        p = resp.progress
        return _from_fields(_models.EvaluationProgress, p)
    if kind != "result":
        return None
    r = resp.result
    layers = tuple(r.layers)
    methods = [_method_evaluation_from_pb(m, layers) for m in r.methods]
    return _models.Evaluation(
        model=r.model,
        classes=[int(c) for c in r.class_indices],
        steps=int(r.steps),
        methods={m.method: m for m in methods},
        layers=layers,
        work=int(r.work),
        queue_ms=float(r.queue_ms),
        compute_ms=float(r.compute_ms),
        warnings=list(r.warnings),
        max_batch_jobs=int(r.max_batch_jobs),
    )
