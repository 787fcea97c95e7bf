"""deepvis.v1 requests to the engine's plain dataclasses, and its answers back to messages."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import torch

from deepvis import render
from deepvis.v1 import deepvis_pb2 as pb

from . import featurevis as fv
from .engine import (
    DEFAULT_TOP_K,
    DreamQuery,
    EvaluateAnswer,
    EvaluateQuery,
    ExplainAnswer,
    ExplainQuery,
    VisualizeAnswer,
    VisualizeQuery,
)
from .errors import InvalidArgument
from .evaluation.job import METRICS, EvaluateSpec, MethodScores
from .evaluation.randomization import CASCADING, INDEPENDENT
from .evaluation.scheduler import Progress as EvaluateProgress
from .featurevis.dream import (
    DREAM_JITTER,
    DREAM_OCTAVE_SCALE,
    DREAM_OCTAVES,
    DREAM_STEP_SIZE,
    DREAM_STEPS_PER_OCTAVE,
    octave_sizes,
)
from .featurevis.optimization import (
    CLASS_MODEL_L2,
    CLASS_MODEL_LEARNING_RATE,
    LUCID_LEARNING_RATE,
    LUCID_STEPS,
    RenderJob,
)
from .featurevis.scheduler import Progress, Rendered
from .methods import (
    ClassTarget,
    IgOptions,
    LrpOptions,
    Method,
    MethodRequest,
    NeuronTarget,
    RolloutOptions,
    SmoothOptions,
    Target,
)
from .methods import options as opt
from .methods.base import MAX_LAYERS_PER_REQUEST
from .models import ServedModel
from .preprocess import RawInput, Region

_DTYPE_NAMES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_FLOAT16: "float16", pb.DTYPE_UINT8: "uint8"}
_WIRE_DTYPES: dict[str, tuple[Any, np.dtype[Any]]] = {
    "float32": (pb.DTYPE_FLOAT32, np.dtype("<f4")),
    "float16": (pb.DTYPE_FLOAT16, np.dtype("<f2")),
}


def method_name(value: int) -> str:
    """'guided_backprop' for METHOD_GUIDED_BACKPROP: registry keys derive from the schema."""
    return pb.Method.Name(value).removeprefix("METHOD_").lower()


# Every schema method by value and by name, read once (the enum wrapper's values() builds a
# new list on each call, and parsing checks every request's method). Keyed by number, so
# each method is here once although the enum spells it twice (GRAD_CAM aliases
# METHOD_GRAD_CAM); Name() gives the METHOD_ spelling, the first one defined.
_METHODS: dict[int, str] = {
    v: method_name(v) for v in sorted(set(pb.Method.values())) if v != pb.METHOD_UNSPECIFIED
}
_METHOD_VALUES: dict[str, Any] = {name: v for v, name in _METHODS.items()}
# How every message that lists the methods names them: the registry's (and the client's)
# snake-case names, said once to be the enum's METHOD_<NAME> values.
_VALID_METHODS = ", ".join(_METHODS.values()) + " (the Method enum's values METHOD_<NAME>)"


def method_value(name: str) -> Any:  # the enum type exists only in the .pyi
    return _METHOD_VALUES[name]


def _raw_input(msg: pb.Input) -> RawInput:
    kind = msg.WhichOneof("kind")
    if kind is None:
        return RawInput(
            "", b""
        )  # refused after the model name is checked, so NOT_FOUND comes first
    if kind == "image":
        return RawInput("image", msg.image)
    t: pb.Tensor = getattr(msg, kind)
    name = _DTYPE_NAMES.get(t.dtype, "")
    if t.dtype != pb.DTYPE_UNSPECIFIED and not name:
        raise InvalidArgument(
            f"input.{kind}.dtype {t.dtype} is not a DType", field=f"input.{kind}.dtype"
        )
    if len(t.shape) > 8:
        raise InvalidArgument(
            f"input.{kind}.shape has {len(t.shape)} dimensions; at most 3",
            field=f"input.{kind}.shape",
        )
    return RawInput(kind, t.data, name, tuple(int(d) for d in t.shape))


def _target(msg: pb.ExplainRequest) -> Target | None:
    if not msg.HasField("target"):
        return None
    kind = msg.target.WhichOneof("kind")
    if kind == "class_index":
        return ClassTarget(int(msg.target.class_index))
    if kind == "neuron":
        n = msg.target.neuron
        return NeuronTarget(
            layer=n.layer,
            channel=int(n.channel),
            y=int(n.y) if n.HasField("y") else None,
            x=int(n.x) if n.HasField("x") else None,
        )
    return None  # an empty Target message: the predicted class


def _enum_names(enum: Any, prefix: str) -> dict[int, str]:
    """Lowercase names of an enum's values without its prefix, UNSPECIFIED left out."""
    return {
        number: name.removeprefix(prefix).lower()
        for name, number in enum.items()
        if name != f"{prefix}UNSPECIFIED"
    }


_COMPOSITES = _enum_names(pb.LrpComposite, "LRP_COMPOSITE_")
_SMOOTH_KINDS = _enum_names(pb.SmoothKind, "SMOOTH_KIND_")
# The schema's GAUSS_LEGENDRE is Captum's "gausslegendre".
_INTEGRATION = {
    n: name.replace("gauss_legendre", "gausslegendre")
    for n, name in _enum_names(pb.IntegrationMethod, "INTEGRATION_METHOD_").items()
}
_BASELINES = _enum_names(pb.BaselineKind, "BASELINE_KIND_")


def _enum_value(value: int, names: dict[int, str], default: str, field: str, enum: str) -> str:
    if value == 0:
        return default
    name = names.get(value)
    if name is None:
        valid = ", ".join(names.values())
        raise InvalidArgument(
            f"{field} {value} is not a value of {enum}; valid: {valid}", field=field
        )
    return name


def _bounded(value: float, low: float, high: float, field: str) -> float:
    # The wire's floats are float32: a bound is met by its own float32 value (1e-9 is sent as
    # 9.99999972e-10).
    if not (float(np.float32(low)) <= value <= float(np.float32(high))):  # NaN fails too
        raise InvalidArgument(f"{field} must be in [{low:g}, {high:g}], got {value:g}", field=field)
    return float(value)


def _count(value: int, default: int, high: int, field: str, low: int = 1) -> int:
    number = value or default
    if not low <= number <= high:
        raise InvalidArgument(
            f"{field} must be from {low} to {high} (0 means {default}), got {value}", field=field
        )
    return int(number)


# The LRP rules' parameters: default, bounds, and the composites whose rules take it; setting
# one for another composite is refused with its message.
_LRP_PARAMETERS = {
    "epsilon": (opt.DEFAULT_EPSILON, opt.EPSILON_RANGE, opt.EPSILON_COMPOSITES),
    "gamma": (opt.DEFAULT_GAMMA, opt.GAMMA_RANGE, opt.GAMMA_COMPOSITES),
}
_LRP_REFUSALS = {
    "epsilon": "lrp.epsilon: composite {} has no epsilon rule; leave it unset",
    "gamma": "lrp.gamma applies to composite epsilon_gamma_box only, not {}",
}


def _lrp_parameter(o: pb.LrpOptions, name: str, composite: str) -> float:
    """lrp.<name> as set (checked against its bounds and the composite), or its default."""
    default, bounds, composites = _LRP_PARAMETERS[name]
    if not o.HasField(name):
        return default
    if composite not in composites:
        raise InvalidArgument(_LRP_REFUSALS[name].format(composite), field=f"lrp.{name}")
    return _bounded(getattr(o, name), *bounds, f"lrp.{name}")


def _lrp_options(msg: pb.ExplainRequest) -> LrpOptions | None:
    if not msg.HasField("lrp"):
        return None
    o = msg.lrp
    composite = _enum_value(
        o.composite, _COMPOSITES, opt.LRP_COMPOSITES[0], "lrp.composite", "LrpComposite"
    )
    return LrpOptions(
        composite=composite,
        epsilon=_lrp_parameter(o, "epsilon", composite),
        gamma=_lrp_parameter(o, "gamma", composite),
    )


def _smooth_options(msg: pb.ExplainRequest) -> SmoothOptions | None:
    if not msg.HasField("smooth"):
        return None
    o = msg.smooth
    noise = opt.DEFAULT_NOISE
    if o.HasField("noise"):
        noise = _bounded(o.noise, *opt.NOISE_RANGE, "smooth.noise")
    return SmoothOptions(
        samples=_count(
            o.samples, opt.DEFAULT_SMOOTH_SAMPLES, opt.MAX_SMOOTH_SAMPLES, "smooth.samples"
        ),
        noise=noise,
        kind=_enum_value(o.kind, _SMOOTH_KINDS, "smoothgrad", "smooth.kind", "SmoothKind"),
        seed=int(o.seed),
    )


def _ig_options(msg: pb.ExplainRequest) -> tuple[IgOptions | None, tuple[RawInput, ...]]:
    """Integrated gradients' options, and its baseline images as they came (the engine
    preprocesses them as it does the input)."""
    if not msg.HasField("integrated_gradients"):
        return None, ()
    o = msg.integrated_gradients
    f = "integrated_gradients"
    method = _enum_value(
        o.method, _INTEGRATION, "gausslegendre", f"{f}.method", "IntegrationMethod"
    )
    steps = _count(o.steps, opt.DEFAULT_STEPS, opt.MAX_STEPS, f"{f}.steps")
    if method.startswith("riemann") and steps < 2:
        raise InvalidArgument(
            f"{f}.steps must be at least 2 for method {method}, got {steps}", field=f"{f}.steps"
        )
    images = len(o.baseline_images)
    baseline = _enum_value(
        o.baseline, _BASELINES, "images" if images else "zero", f"{f}.baseline", "BaselineKind"
    )
    if o.blur_sigma and baseline != "blur":
        raise InvalidArgument(
            f"{f}.blur_sigma applies to BASELINE_KIND_BLUR only, not {baseline}",
            field=f"{f}.blur_sigma",
        )
    sigma = 0.0
    if baseline == "blur" and o.blur_sigma:
        sigma = _bounded(o.blur_sigma, 1e-3, opt.MAX_BLUR_SIGMA, f"{f}.blur_sigma")
    if o.baseline_samples and baseline != "uniform":
        raise InvalidArgument(
            f"{f}.baseline_samples applies to BASELINE_KIND_UNIFORM only, not {baseline}",
            field=f"{f}.baseline_samples",
        )
    samples = 1
    if baseline == "uniform":
        samples = _count(o.baseline_samples, 1, opt.MAX_BASELINES, f"{f}.baseline_samples")
    if baseline == "images":
        _count(images, 0, opt.MAX_BASELINES, f"{f}.baseline_images (items)")
    elif images:
        raise InvalidArgument(
            f"{f}.baseline_images are used with BASELINE_KIND_IMAGES only, not {baseline}",
            field=f"{f}.baseline_images",
        )
    raws = tuple(_raw_input(image) for image in o.baseline_images)
    for i, raw in enumerate(raws):
        if not raw.kind:
            raise InvalidArgument(
                f"{f}.baseline_images[{i}] sets no image, pixels or tensor",
                field=f"{f}.baseline_images[{i}]",
            )
    options = IgOptions(
        steps=steps,
        method=method,
        baseline=baseline,
        blur_sigma=sigma,
        baseline_samples=samples,
        seed=int(o.seed),
        image_count=images,
    )
    return options, raws


# Items one ExplainBatch call may carry: each holds an input and a queue slot until answered.
MAX_BATCH_ITEMS = 256


def parse_explain_batch(msg: pb.ExplainBatchRequest) -> list[pb.ExplainRequest]:
    """The items of an ExplainBatchRequest, each to be read (and refused) on its own."""
    n = len(msg.requests)
    if not 1 <= n <= MAX_BATCH_ITEMS:
        raise InvalidArgument(
            f"requests has {n} items; send 1 to {MAX_BATCH_ITEMS} per call", field="requests"
        )
    return list(msg.requests)


# A picture's size: at most this many pixels a side and in all (the input image's own limit).
MAX_PICTURE_SIDE = 8192
MAX_PICTURE_PIXELS = 4096 * 4096
_SIGNS = {
    pb.MAP_SIGN_UNSPECIFIED: None,
    pb.MAP_SIGN_SIGNED: "signed",
    pb.MAP_SIGN_UNSIGNED: "unsigned",
}
_OVERLAYS = {pb.OVERLAY_UNSPECIFIED: None, pb.OVERLAY_INPUT: True, pb.OVERLAY_NONE: False}


def parse_picture(opts: pb.OutputOptions) -> render.Options:
    """The OutputOptions' picture fields as the renderer's options, refused field by field."""
    width, height = opts.picture_width, opts.picture_height
    if (width == 0) != (height == 0):
        raise InvalidArgument(
            "output.picture_width and output.picture_height go together: set both, or neither "
            "for the natural size",
            field="output.picture_width" if width == 0 else "output.picture_height",
        )
    for name, side in (("picture_width", width), ("picture_height", height)):
        if not 0 <= side <= MAX_PICTURE_SIDE:
            raise InvalidArgument(
                f"output.{name} must be in [1, {MAX_PICTURE_SIDE}] (or 0 for the natural size), "
                f"got {side}",
                field=f"output.{name}",
            )
    if width * height > MAX_PICTURE_PIXELS:
        raise InvalidArgument(
            f"output.picture_width x picture_height is {width}x{height} = {width * height} "
            f"pixels; at most {MAX_PICTURE_PIXELS}",
            field="output.picture_width",
        )
    cmap = opts.colormap or None
    if cmap is not None and cmap.lower() not in (n.lower() for n in render.colormaps()):
        raise InvalidArgument(
            f"output.colormap {cmap[:100]!r} is not served; valid: {', '.join(render.colormaps())} "
            "(or empty for the map's default)",
            field="output.colormap",
        )
    clip: float | None = render.DEFAULT_CLIP
    if opts.HasField("clip_percentile"):
        clip = float(opts.clip_percentile)
        if not (math.isfinite(clip) and 0 < clip <= 100):
            raise InvalidArgument(
                f"output.clip_percentile must be in (0, 100] (100: no clipping), got {clip:g}",
                field="output.clip_percentile",
            )
    if opts.sign not in _SIGNS:
        raise InvalidArgument(
            f"output.sign {opts.sign} is not a MapSign; valid: MAP_SIGN_UNSPECIFIED, "
            "MAP_SIGN_SIGNED, MAP_SIGN_UNSIGNED",
            field="output.sign",
        )
    if opts.overlay not in _OVERLAYS:
        raise InvalidArgument(
            f"output.overlay {opts.overlay} is not an Overlay; valid: OVERLAY_UNSPECIFIED, "
            "OVERLAY_INPUT, OVERLAY_NONE",
            field="output.overlay",
        )
    return render.Options(
        size=(width, height) if width else None,
        cmap=cmap,
        clip=clip,
        sign=_SIGNS[opts.sign],
        overlay=_OVERLAYS[opts.overlay],
        colorbar=opts.colorbar,
        caption=opts.caption,
    )


def parse_explain(msg: pb.ExplainRequest, deadline: float) -> ExplainQuery:
    """Reads an ExplainRequest into plain values; refuses what is wrong whatever the model."""
    method = _METHODS.get(msg.method)
    if method is None:
        if msg.method == pb.METHOD_UNSPECIFIED:
            raise InvalidArgument(
                f"method is required: set it to one of {_VALID_METHODS}", field="method"
            )
        raise InvalidArgument(
            f"method {msg.method} is not a method of this server's schema; valid: {_VALID_METHODS}",
            field="method",
        )
    opts = msg.output
    if opts.array_dtype in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_FLOAT32):
        array_dtype = "float32"
    elif opts.array_dtype == pb.DTYPE_FLOAT16:
        array_dtype = "float16"
    else:
        raise InvalidArgument(
            "output.array_dtype must be FLOAT32 or FLOAT16", field="output.array_dtype"
        )
    if len(msg.layers) > MAX_LAYERS_PER_REQUEST:
        raise InvalidArgument(
            f"layers names {len(msg.layers)} layers; at most {MAX_LAYERS_PER_REQUEST}",
            field="layers",
        )
    if opts.top_k < 0:
        raise InvalidArgument(f"output.top_k must be >= 0, got {opts.top_k}", field="output.top_k")
    ig, baselines = _ig_options(msg)
    rollout = None
    if msg.HasField("rollout"):
        if method != "attention_rollout":
            raise InvalidArgument(
                f"rollout options are for method attention_rollout; method {method} takes none",
                field="rollout",
            )
        rollout = _rollout(msg.rollout)
    return ExplainQuery(
        model=msg.model,
        method=method,
        input=_raw_input(msg.input),
        request=MethodRequest(
            target=_target(msg),
            layers=tuple(msg.layers),
            top_k_channels=msg.top_k_channels,
            lrp=_lrp_options(msg),
            smooth=_smooth_options(msg),
            ig=ig,
            rollout=rollout,
        ),
        baseline_inputs=baselines,
        deadline=deadline,
        top_k=opts.top_k or DEFAULT_TOP_K,
        render=opts.render,
        picture=parse_picture(opts),
        array_dtype=array_dtype,
        omit_array=opts.omit_array,
    )


_HEAD_FUSIONS = {
    pb.HEAD_FUSION_UNSPECIFIED: "mean",
    pb.HEAD_FUSION_MEAN: "mean",
    pb.HEAD_FUSION_MAX: "max",
    pb.HEAD_FUSION_MIN: "min",
}


def _rollout(msg: pb.RolloutOptions) -> RolloutOptions:
    fusion = _HEAD_FUSIONS.get(msg.head_fusion)
    if fusion is None:
        raise InvalidArgument(
            f"rollout.head_fusion {msg.head_fusion} is not a HeadFusion; valid: MEAN, MAX, MIN",
            field="rollout.head_fusion",
        )
    options = RolloutOptions(head_fusion=fusion, discard_ratio=float(msg.discard_ratio))
    options.check()
    return options


def target_to_pb(target: Target) -> pb.Target:
    if isinstance(target, ClassTarget):
        return pb.Target(class_index=target.index)
    neuron = pb.Neuron(layer=target.layer, channel=target.channel)
    if target.y is not None and target.x is not None:
        neuron.y, neuron.x = target.y, target.x
    return pb.Target(neuron=neuron)


def fill_tensor(msg: pb.Tensor, array: np.ndarray, dtype_name: str) -> None:
    """Writes `array` into `msg` as raw little-endian bytes: integer arrays as INT64, float ones
    as asked (float32/float16). In place: a Tensor built apart and then copied into its parent
    message would copy the bytes once more."""
    if np.issubdtype(array.dtype, np.integer):
        enum, dtype = pb.DTYPE_INT64, np.dtype("<i8")  # type: ignore[assignment]
    else:
        enum, dtype = _WIRE_DTYPES[dtype_name]
    msg.dtype = enum
    msg.shape.extend(array.shape)
    msg.data = wire_bytes(array, dtype)


def wire_bytes(array: np.ndarray, dtype: np.dtype[Any]) -> bytes:
    """`array` as contiguous little-endian bytes of `dtype`.

    float32 to float16 goes through torch: numpy's cast sets the FPU's underflow flag
    (feraiseexcept) for every element too small for float16, as most of a gradient's are,
    which made one 3x224x224 guided-backprop result take 13 ms on the event loop; torch's
    vectorised cast takes 0.06 ms and gives the same bits (round to nearest even).
    """
    if dtype == np.float16 and array.dtype == np.float32:
        half = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float16)
        return half.numpy().astype("<f2", copy=False).tobytes()
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def region_to_pb(region: Region) -> pb.InputRegion:
    x, y, width, height = region
    return pb.InputRegion(x=x, y=y, width=width, height=height)


def explain_response(answer: ExplainAnswer) -> pb.ExplainResponse:
    query, model, output = answer.query, answer.model, answer.output
    resp = pb.ExplainResponse(
        model=model.name,
        method=method_value(query.method),
        predictions=[
            pb.Prediction(index=i, label=model.label(i), score=p) for i, p in answer.predictions
        ],
        target=target_to_pb(answer.target),
        timing=pb.Timing(
            queue_ms=answer.queue_ms, compute_ms=answer.compute_ms, batch_size=answer.batch_size
        ),
        warnings=list(answer.warnings),
        images=[pb.NamedImage(name=k, png=v) for k, v in output.pngs.items()],
        input_region=region_to_pb(answer.region),
        layer=answer.request.layers[0] if answer.request.layers else "",
    )
    if not query.omit_array:
        fill_tensor(resp.array, output.array, query.array_dtype)
        for k, v in output.arrays.items():
            fill_tensor(resp.arrays.add(name=k).tensor, v, query.array_dtype)
    if output.png is not None:
        resp.image_png = output.png
    if answer.completeness is not None:
        total, score, baseline = answer.completeness
        resp.completeness.attribution_sum = total
        resp.completeness.score = score
        resp.completeness.baseline_score = baseline
        resp.completeness.delta = total - (score - baseline)
    return resp


def batch_item(response: pb.ExplainResponse) -> pb.ExplainBatchItem:
    return pb.ExplainBatchItem(response=response)


def item_error(code: grpc.StatusCode, message: str, field: str | None) -> pb.ExplainBatchItem:
    """An ExplainBatch item that failed alone, with its status and the field at fault."""
    return pb.ExplainBatchItem(
        error=pb.ItemError(code=code.value[0], message=message, field=field or "")
    )


def explain_batch_response(
    items: list[pb.ExplainBatchItem], max_message_bytes: int
) -> pb.ExplainBatchResponse:
    """The answer to an ExplainBatch call. Answers that would push it past max_message_bytes
    become per-item RESOURCE_EXHAUSTED errors, so the items that fit still arrive (instead of
    gRPC failing the whole call after all the work)."""
    limit = max_message_bytes - 1024  # the envelope's few bytes
    total, out = 0, []
    for i, item in enumerate(items):
        size = item.ByteSize() + 8  # the item's tag and length prefix
        if item.HasField("response") and total + size > limit:
            item = item_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"item {i} does not fit in this answer: the server's max_message_bytes is "
                f"{max_message_bytes} and the items before it took {total} bytes; send fewer "
                "items per call, float16 arrays or no pictures",
                None,
            )
            size = item.ByteSize() + 8
        total += size
        out.append(item)
    return pb.ExplainBatchResponse(items=out)


def model_info(model: ServedModel, methods: Mapping[str, Method]) -> pb.ModelInfo:
    """The model as ListModels describes it, with the methods it serves (`Method.serves`)."""
    s = model.spec
    return pb.ModelInfo(
        name=s.name,
        arch=s.arch,
        num_classes=s.num_classes,
        channels=s.channels,
        height=s.input_size[0],
        width=s.input_size[1],
        mean=s.mean,
        std=s.std,
        labels=list(model.labels),
        methods=[method_value(name) for name, m in methods.items() if m.serves(model)],
        resize=s.resize,
    )


def list_models(models: list[ServedModel], methods: Mapping[str, Method]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(m, methods) for m in models])


_LAYOUTS = {
    "nchw": pb.LAYOUT_CHANNELS_FIRST,
    "nhwc": pb.LAYOUT_CHANNELS_LAST,
    "tokens": pb.LAYOUT_TOKENS,
    "vector": pb.LAYOUT_VECTOR,
    "other": pb.LAYOUT_OTHER,
}


def layer_info(model: ServedModel, name: str, module: torch.nn.Module) -> pb.LayerInfo:
    info = pb.LayerInfo(
        name=name,
        type=type(module).__name__,
        output_shape=model.layer_shapes.get(name, ()),
        calls=model.layer_calls.get(name, 0),
    )
    layout = model.layer_layouts.get(name)
    if layout is not None:
        info.layout = _LAYOUTS[layout.kind]
        info.map_shape.extend(layout.map_shape or ())
        info.class_tokens = layout.class_tokens
    return info


def describe_model(model: ServedModel, methods: Mapping[str, Method]) -> pb.DescribeModelResponse:
    return pb.DescribeModelResponse(
        model=model_info(model, methods),
        layers=[layer_info(model, name, module) for name, module in model.layers.items()],
        default_cam_layer=model.default_cam_layer,
        non_relu_activations=list(model.non_relu_activations),
        default_cam_layer_note=model.default_cam_note,
        attention_layers=list(model.attention_layers),
    )


def _objective(msg: pb.Objective) -> fv.Objective:
    kind = msg.WhichOneof("kind")
    if kind == "class_index":
        return fv.ClassLogit(index=int(msg.class_index), negate=msg.negate)
    if kind == "layer":
        return fv.Layer(layer=msg.layer, negate=msg.negate)
    if kind == "neuron":
        n = msg.neuron
        if n.HasField("y") != n.HasField("x"):
            raise InvalidArgument(
                "objective.neuron: set both y and x, or neither", field="objective.neuron"
            )
        if n.HasField("y"):
            return fv.Neuron(
                layer=n.layer, channel=int(n.channel), y=int(n.y), x=int(n.x), negate=msg.negate
            )
        return fv.Channel(layer=n.layer, channel=int(n.channel), negate=msg.negate)
    raise InvalidArgument(
        "objective must set one of neuron (a channel, or one neuron with y and x), class_index or layer",
        field="objective",
    )


def parse_visualize(msg: pb.VisualizeRequest) -> VisualizeQuery:
    """Reads a VisualizeRequest into a RenderJob, refusing what is wrong whatever the model
    (the wire's own rules here, the job's values in RenderJob.check); the model and the
    server's limits are checked as the job is submitted."""
    if (msg.height == 0) != (msg.width == 0):
        raise InvalidArgument("set both height and width, or neither", field="height")
    if msg.parameterization not in pb.Parameterization.values():
        raise InvalidArgument("parameterization must be FFT or PIXEL", field="parameterization")
    if msg.array_dtype not in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16):
        raise InvalidArgument("array_dtype must be FLOAT32 or FLOAT16", field="array_dtype")
    if msg.preset not in pb.Preset.values():
        raise InvalidArgument("preset must be LUCID or CLASS_MODEL", field="preset")
    class_model = msg.preset == pb.PRESET_CLASS_MODEL
    param = "pixel" if msg.parameterization == pb.PARAMETERIZATION_PIXEL else "fft"
    if class_model:
        if msg.parameterization != pb.PARAMETERIZATION_UNSPECIFIED:
            raise InvalidArgument(
                "the class-model preset optimises the image itself in the model's input "
                "space: leave parameterization unset",
                field="parameterization",
            )
        param = "model"
        l2 = float(msg.l2_penalty) if msg.HasField("l2_penalty") else CLASS_MODEL_L2
        lr = float(msg.learning_rate) or CLASS_MODEL_LEARNING_RATE
    else:
        if msg.HasField("l2_penalty"):
            raise InvalidArgument(
                "l2_penalty is the class-model preset's (preset CLASS_MODEL); the Lucid "
                "preset takes none",
                field="l2_penalty",
            )
        l2 = 0.0
        lr = float(msg.learning_rate) or LUCID_LEARNING_RATE
    # proto3 has no "unset": 0 asks for the default.
    job = RenderJob(
        objective=_objective(msg.objective),
        size=(int(msg.height), int(msg.width)) if msg.height else None,
        steps=msg.steps or LUCID_STEPS,
        lr=lr,
        seed=int(msg.seed),
        batch=msg.batch or 1,
        diversity=float(msg.diversity),
        param=param,
        transforms=not msg.no_transforms and not class_model,
        progress_every=msg.progress_every,
        preset="class_model" if class_model else "lucid",
        l2_penalty=l2,
    )
    job.check()
    return VisualizeQuery(
        model=msg.model,
        job=job,
        input=_raw_input(msg.input) if msg.HasField("input") else None,
        array_dtype="float16" if msg.array_dtype == pb.DTYPE_FLOAT16 else "float32",
    )


def visualize_response(
    query: VisualizeQuery, event: Progress | VisualizeAnswer
) -> pb.VisualizeResponse:
    """A progress message, or the result with its attribution."""
    if isinstance(event, Progress):
        progress = pb.VisualizeProgress(
            step=event.step,
            steps=event.steps,
            objective=event.objective,
            image_png=event.png or b"",
        )
        return pb.VisualizeResponse(progress=progress)
    done = event.rendered
    result = pb.VisualizeResult(
        images_png=done.pngs,
        objective=done.objective,
        steps=done.steps,
        queue_ms=done.queue_ms,
        compute_ms=done.compute_ms,
        max_batch_jobs=done.max_batch_jobs,
    )
    fill_tensor(result.array, done.pixels, query.array_dtype)
    if event.attribution is not None:
        attribution = event.attribution
        fill_tensor(result.attribution, attribution.output.array, query.array_dtype)
        result.attribution_region.CopyFrom(region_to_pb(attribution.region))
        if attribution.output.png is not None:
            result.attribution_png = attribution.output.png
    return pb.VisualizeResponse(result=result)


# --- Evaluate -------------------------------------------------------------------------------

_METRIC_NAMES: dict[int, str] = {
    v: pb.Metric.Name(v).removeprefix("METRIC_").lower()
    for v in pb.Metric.values()
    if v != pb.METRIC_UNSPECIFIED
}
assert sorted(_METRIC_NAMES.values()) == sorted(METRICS), "the Metric enum and METRICS differ"
_MODES = {
    pb.RANDOMIZATION_MODE_UNSPECIFIED: (CASCADING, INDEPENDENT),
    pb.RANDOMIZATION_MODE_BOTH: (CASCADING, INDEPENDENT),
    pb.RANDOMIZATION_MODE_CASCADING: (CASCADING,),
    pb.RANDOMIZATION_MODE_INDEPENDENT: (INDEPENDENT,),
}
# Methods one Evaluate call may name: each costs its own explanations of every input.
MAX_EVALUATE_METHODS = 16


def parse_evaluate(msg: pb.EvaluateRequest, deadline: float) -> EvaluateQuery:
    """Reads an EvaluateRequest into plain values; refuses what is wrong whatever the model
    (the model's own checks and the server's limits come when the engine plans it)."""
    if not msg.methods:
        raise InvalidArgument(
            f"methods is empty: name at least one of {_VALID_METHODS}", field="methods"
        )
    if len(msg.methods) > MAX_EVALUATE_METHODS:
        raise InvalidArgument(
            f"methods names {len(msg.methods)} methods; at most {MAX_EVALUATE_METHODS}",
            field="methods",
        )
    methods = []
    for value in msg.methods:
        name = _METHODS.get(value)
        if name is None:
            raise InvalidArgument(
                f"methods: {value} is not a method; valid: {_VALID_METHODS}", field="methods"
            )
        if name in methods:
            raise InvalidArgument(f"methods names {name} twice; name each once", field="methods")
        methods.append(name)
    metrics = []
    for value in msg.metrics:
        metric = _METRIC_NAMES.get(value)
        if metric is None:
            raise InvalidArgument(
                f"metrics: {value} is not a Metric; valid: "
                + ", ".join(f"METRIC_{m.upper()}" for m in _METRIC_NAMES.values()),
                field="metrics",
            )
        if metric not in metrics:
            metrics.append(metric)
    if msg.randomization not in _MODES:
        raise InvalidArgument(
            "randomization must be CASCADING, INDEPENDENT or BOTH", field="randomization"
        )
    if not msg.inputs:
        raise InvalidArgument("inputs is empty: send at least one input", field="inputs")
    for name in ("steps", "perturbations"):
        if getattr(msg, name) < 0:
            raise InvalidArgument(
                f"{name} must be >= 0 (0: the default), got {getattr(msg, name)}", field=name
            )
    spec = EvaluateSpec(
        methods=tuple(methods),
        metrics=tuple(metrics) or METRICS,
        classes=tuple(int(c) for c in msg.class_indices),
        layer=msg.layer or None,
        steps=int(msg.steps),
        seed=int(msg.seed),
        modes=_MODES[msg.randomization],
        perturbations=int(msg.perturbations),
        noise_std=float(msg.noise_std),
        radius=float(msg.sensitivity_radius),
        return_maps=msg.return_maps,
    )
    return EvaluateQuery(
        model=msg.model,
        spec=spec,
        inputs=tuple(_raw_input(i) for i in msg.inputs),
        deadline=deadline,
    )


def _method_evaluation(scores: MethodScores) -> pb.MethodEvaluation:
    out = pb.MethodEvaluation(method=method_value(scores.method), layer=scores.layer or "")
    for kind in ("deletion", "insertion"):
        curve = getattr(scores, f"{kind}_curve")
        if curve is not None:
            part = getattr(out, kind)
            fill_tensor(part.curve, curve, "float32")
            fill_tensor(part.auc, getattr(scores, f"{kind}_auc"), "float32")
    for name in ("spearman", "ssim", "independent_spearman", "independent_ssim"):
        value = getattr(scores, name)
        if value is not None:
            fill_tensor(getattr(out.randomization, name), value, "float32")
    for name in ("infidelity", "sensitivity", "maps"):
        value = getattr(scores, name)
        if value is not None:
            fill_tensor(getattr(out, name), value, "float32")
    return out


def evaluate_response(
    query: EvaluateQuery, event: EvaluateProgress | EvaluateAnswer
) -> pb.EvaluateResponse:
    """A progress message, or the result. The query is not read (the result carries all it
    says); it is taken as the other streams' converters take theirs."""
    if isinstance(event, EvaluateProgress):
        return pb.EvaluateResponse(
            progress=pb.EvaluateProgress(done=event.done, total=event.total, stage=event.stage)
        )
    r = event.result
    result = pb.EvaluateResult(
        model=event.model.name,
        class_indices=r.classes,
        layers=list(r.layers),
        steps=r.steps,
        methods=[_method_evaluation(m) for m in r.methods],
        queue_ms=r.queue_ms,
        compute_ms=r.compute_ms,
        work=r.work,
        warnings=list(r.warnings),
        max_batch_jobs=r.max_batch_jobs,
    )
    return pb.EvaluateResponse(result=result)


def parse_dream(msg: pb.DeepDreamRequest) -> DreamQuery:
    """Reads a DeepDreamRequest, refusing what is wrong whatever the model; the values'
    bounds are checked once the picture's size is known (DreamJob.check), the model and the
    server's limits as the job is submitted. proto3 has no "unset": 0 asks for the default."""
    if not msg.HasField("input"):
        raise InvalidArgument(
            "input is required: the picture to dream on (input.image or input.pixels)",
            field="input",
        )
    if msg.array_dtype not in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16):
        raise InvalidArgument("array_dtype must be FLOAT32 or FLOAT16", field="array_dtype")
    return DreamQuery(
        model=msg.model,
        input=_raw_input(msg.input),
        objective=_objective(msg.objective),
        octaves=msg.octaves or DREAM_OCTAVES,
        octave_scale=float(msg.octave_scale) or DREAM_OCTAVE_SCALE,
        steps_per_octave=msg.steps_per_octave or DREAM_STEPS_PER_OCTAVE,
        step_size=float(msg.step_size) if msg.HasField("step_size") else DREAM_STEP_SIZE,
        jitter=int(msg.jitter) if msg.HasField("jitter") else DREAM_JITTER,
        seed=int(msg.seed),
        progress_every=int(msg.progress_every),
        array_dtype="float16" if msg.array_dtype == pb.DTYPE_FLOAT16 else "float32",
    )


def dream_response(query: DreamQuery, event: Progress | Rendered) -> pb.DeepDreamResponse:
    """A progress message, or the result."""
    if isinstance(event, Progress):
        per = query.steps_per_octave
        progress = pb.DeepDreamProgress(
            step=event.step,
            steps=event.steps,
            octave=(event.step - 1) // per + 1,
            octaves=query.octaves,
            objective=event.objective,
            image_png=event.png or b"",
        )
        return pb.DeepDreamResponse(progress=progress)
    h, w = event.pixels.shape[-2:]
    sizes = octave_sizes((int(h), int(w)), query.octaves, query.octave_scale)
    result = pb.DeepDreamResult(
        image_png=event.pngs[0],
        octave_objectives=list(event.objectives),
        steps=event.steps,
        queue_ms=event.queue_ms,
        compute_ms=event.compute_ms,
        max_batch_jobs=event.max_batch_jobs,
        octave_sizes=[side for size in sizes for side in size],
    )
    fill_tensor(result.array, event.pixels, query.array_dtype)
    return pb.DeepDreamResponse(result=result)
