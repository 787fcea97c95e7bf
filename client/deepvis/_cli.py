"""The deepvis command line: a thin shell over `deepvis.Client`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from deepvis import __version__
from deepvis._client import Client
from deepvis._convert import methods, parameterizations, presets
from deepvis._exceptions import DeepvisError, Unavailable
from deepvis._models import (
    DreamProgress,
    Explanation,
    Layer,
    LayerInfo,
    ModelDescription,
    ModelInfo,
    Neuron,
    ObjectiveLike,
    Progress,
    Rollout,
)
from deepvis._transport import channel_target

__all__ = ["main"]

_DEFAULT_SERVER = "127.0.0.1:50051"
_SERVER_ENV = "DEEPVIS_SERVER"
_TOKEN_ENV = "DEEPVIS_TOKEN"
_MAX_WORKERS = 8

# Errors a user can act on; anything else is a bug and keeps its traceback.
_REPORTED = (DeepvisError, OSError, ValueError, TypeError)


# Characters a server-given or derived name may keep in a file name; others become "_".
_UNSAFE_FILE_CHARS = re.compile(r"[^\w.\-]")

_HEALTHY = "SERVING"


def _cli_name(method: str) -> str:
    return method.replace("_", "-")


def _index(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{what} must be >= 0, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _index(text, "the value")


def _parse_neuron(text: str) -> Neuron:
    """Parses LAYER:C (a whole channel) or LAYER:C:Y:X (one neuron)."""
    parts = text.split(":")
    if len(parts) not in (2, 4) or not parts[0]:
        raise argparse.ArgumentTypeError(
            f"expected LAYER:C or LAYER:C:Y:X (e.g. conv3:12 or conv3:12:4:4), not {text!r}"
        )
    channel = _index(parts[1], "the channel")
    if len(parts) == 2:
        return Neuron(parts[0], channel)
    return Neuron(parts[0], channel, y=_index(parts[2], "y"), x=_index(parts[3], "x"))


def _parse_channel(text: str) -> Neuron:
    """Parses LAYER:C, a whole channel."""
    parts = text.split(":")
    if len(parts) != 2 or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected LAYER:C (e.g. conv3:12), not {text!r}")
    return Neuron(parts[0], _index(parts[1], "the channel"))


def _parse_size(text: str) -> tuple[int, int]:
    """Parses HxW (e.g. 128x96), or N for a square N x N."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 128x96), not {text!r}")
    height, width = (_index(part, "the size") for part in parts)
    if height == 0 or width == 0:
        raise argparse.ArgumentTypeError(f"the size must be positive, not {text!r}")
    return height, width


def _file_part(name: str) -> str:
    return _UNSAFE_FILE_CHARS.sub("_", name)


def _add_connection_flags(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """How to reach the server; accepted before the command and after it."""
    # After the command a flag not given must not reset one given before it, hence SUPPRESS.
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--server",
        metavar="ADDR",
        default=default,
        help=(
            "server host:port; several replicas as a comma-separated list of IP:port, "
            "balanced round robin, or a gRPC target such as dns:///NAME:PORT "
            f"(default: ${_SERVER_ENV}, else {_DEFAULT_SERVER})"
        ),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=default,
        help="deadline of each call in seconds",
    )
    parser.add_argument(
        "--token",
        default=default,
        help=f"bearer token sent with every call (default: ${_TOKEN_ENV}, kept out of ps)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="connect over TLS (implied by --tls-ca, --tls-cert)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=default,
        help="PEM CA certificate to check the server's certificate against",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=default,
        help="PEM client certificate, for servers that require one (with --tls-key)",
    )
    parser.add_argument(
        "--tls-key", metavar="FILE", default=default, help="PEM private key of --tls-cert"
    )


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_flags(common, top_level=False)

    parser = argparse.ArgumentParser(
        prog="deepvis", description="Show what an image classifier served by deepvis sees."
    )
    parser.add_argument("--version", action="version", version=f"deepvis {__version__}")
    _add_connection_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "models",
        parents=[common],
        help="list the served models",
        description="List the served models.",
    )

    explain = sub.add_parser(
        "explain",
        parents=[common],
        help="explain images and write the rendered results",
        description=(
            "Explain images and write DIR/<stem>.<method>.png for each, plus "
            "DIR/<stem>.<method>.<name>.png for each further picture (e.g. conv3.grid)."
        ),
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    explain.add_argument("--model", help="model name (default: the server's first model)")
    choices = [_cli_name(m) for m in methods()]
    explain.add_argument(
        "--method",
        choices=choices,
        default=_cli_name("guided_backprop"),
        help="interpretability method (default: %(default)s)",
    )
    explain.add_argument(
        "--layer",
        action="append",
        dest="layers",
        metavar="L",
        help=(
            "layer for layer methods (activations, grad-cam, guided-grad-cam); repeat for "
            "several activation layers (default: the model's Grad-CAM layer)"
        ),
    )
    explain.add_argument(
        "--top-k-channels",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="activations: keep the K channels of largest mean activation (default: all)",
    )
    which = explain.add_mutually_exclusive_group()
    which.add_argument(
        "--target",
        type=int,
        metavar="N",
        help="class index to explain (default: the predicted class)",
    )
    which.add_argument(
        "--neuron",
        type=_parse_neuron,
        metavar="LAYER:C[:Y:X]",
        help="explain a channel of a layer, or one neuron of it with :Y:X",
    )
    explain.add_argument(
        "--head-fusion",
        choices=("mean", "max", "min"),
        help="attention-rollout: how each block's heads are fused (default: mean)",
    )
    explain.add_argument(
        "--discard-ratio",
        type=float,
        metavar="F",
        help="attention-rollout: fraction of the smallest attention weights dropped, in [0, 1) "
        "(default: 0)",
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output directory")
    explain.add_argument(
        "--save-array",
        action="store_true",
        help="also write the raw results as .npy (float32; index arrays int64)",
    )
    explain.add_argument(
        "--float16", action="store_true", help="receive the raw result as float16 (half the bytes)"
    )

    layers = sub.add_parser(
        "layers",
        parents=[common],
        help="list a model's layers",
        description="List a model's layers: name, type, output shape and calls when > 1.",
    )
    layers.add_argument(
        "model", nargs="?", metavar="MODEL", help="model name (default: the server's first model)"
    )

    _add_visualize_parser(sub, common)
    _add_dream_parser(sub, common)

    health = sub.add_parser(
        "health",
        parents=[common],
        help="ask the server's health service; exit 0 when SERVING",
        description="Print the server's health status; exit 0 when SERVING, else 1.",
    )
    health.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help='service to ask about, e.g. deepvis.v1.Explainer (default: "", the server)',
    )
    return parser


def _add_visualize_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    vis = sub.add_parser(
        "visualize",
        parents=[common],
        help="synthesize the images that maximize a class, neuron, channel or layer",
        description=(
            "Feature visualization: write DIR/<name>_<i>.png for each synthesized image "
            "(and DIR/<name>.attribution.png with --input)."
        ),
    )
    vis.add_argument("--model", help="model name (default: the server's first model)")
    objective = vis.add_mutually_exclusive_group(required=True)
    objective.add_argument(
        "--class", dest="class_index", type=int, metavar="N", help="maximize class N's logit"
    )
    objective.add_argument(
        "--neuron",
        type=_parse_neuron,
        metavar="LAYER:C[:Y:X]",
        help="maximize a channel's mean, or one neuron of it with :Y:X",
    )
    objective.add_argument(
        "--channel", type=_parse_channel, metavar="LAYER:C", help="maximize a channel's mean"
    )
    objective.add_argument(
        "--layer-objective",
        metavar="LAYER",
        help="maximize a whole layer (DeepDream: the mean of its squares)",
    )
    vis.add_argument("--negate", action="store_true", help="minimize instead")
    vis.add_argument(
        "--steps",
        type=_non_negative_int,
        default=512,
        metavar="N",
        help="optimization steps (default: 512)",
    )
    vis.add_argument(
        "--lr",
        type=float,
        metavar="F",
        help="learning rate (default: the preset's: 0.05 for lucid, 25 for class-model)",
    )
    vis.add_argument(
        "--size", type=_parse_size, metavar="HxW", help="image size (default: the model's input)"
    )
    vis.add_argument(
        "--batch",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="images to synthesize (default: 1)",
    )
    vis.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        metavar="F",
        help="weight of the diversity term (default: 0)",
    )
    vis.add_argument(
        "--seed", type=_non_negative_int, default=0, metavar="S", help="random seed (default: 0)"
    )
    vis.add_argument(
        "--progress-every",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="have the server report progress with a picture every N steps",
    )
    vis.add_argument(
        "--param",
        choices=parameterizations(),
        help="image parameterization of the lucid preset (default: fft)",
    )
    vis.add_argument(
        "--preset",
        choices=[_cli_name(p) for p in presets()],
        default="lucid",
        help=(
            "lucid: Olah et al.'s feature visualization; class-model: Simonyan et al.'s, the "
            "image from zero by gradient ascent on a class score minus --l2 * ||x||^2 "
            "(with --class; default: %(default)s)"
        ),
    )
    vis.add_argument(
        "--l2",
        type=float,
        metavar="F",
        help="class-model: the L2 penalty's lambda (default: the server's, 1e-3)",
    )
    vis.add_argument(
        "--no-transforms",
        action="store_true",
        help="turn off transformation robustness (pad, jitter, scale, rotate)",
    )
    vis.add_argument(
        "--input",
        metavar="IMAGE",
        help="an image to attribute the objective on (guided backpropagation)",
    )
    vis.add_argument("--out", required=True, metavar="DIR", help="output directory")
    vis.add_argument(
        "--save-array", action="store_true", help="also write the float32 arrays as .npy"
    )
    vis.add_argument(
        "--name",
        help="file name prefix (default: from the objective, e.g. class-3 or conv3-c12)",
    )


# gRPC's words for a connection the server closed during its handshake: what a TLS port does
# to a plaintext client (a port where nothing listens says "Connection refused" instead).
_CLOSED_AT_HANDSHAKE = ("socket closed", "connection reset")
_TLS_HINT = "the server may need TLS: pass --tls / --tls-ca"


def _report(err: BaseException, prefix: str = "", *, tls: bool = True) -> None:
    # One line, so that scripts can grep it and a batch of errors stays readable.
    message = " ".join(str(err).split())
    if (
        not tls
        and isinstance(err, Unavailable)
        and any(words in message.lower() for words in _CLOSED_AT_HANDSHAKE)
    ):
        message += f" ({_TLS_HINT})"
    print(f"{type(err).__name__}: {prefix}{message}", file=sys.stderr)


def _format_model(info: ModelInfo) -> str:
    names = ",".join(_cli_name(m) for m in info.methods) or "-"
    # Pictures of another size: shorter side to `resize`, then the centre crop.
    resize = f"  resize={info.resize}" if info.resize else ""
    return (
        f"{info.name}  arch={info.arch}  classes={info.num_classes}  "
        f"input={info.channels}x{info.height}x{info.width}{resize}  methods={names}"
    )


def _format_target(target: int | Neuron | None) -> str:
    if isinstance(target, Neuron):
        where = "" if target.y is None else f"[{target.y},{target.x}]"
        return f"{target.layer}:{target.channel}{where}"
    return "-" if target is None else str(target)


def _run_models(client: Client) -> int:
    for info in client.models():
        print(_format_model(info))
    return 0


def _output_paths(images: Sequence[str], out: Path, method: str) -> list[Path]:
    paths = [out / f"{Path(image).stem}.{method}.png" for image in images]
    seen: dict[Path, str] = {}
    for image, path in zip(images, paths, strict=True):
        if path in seen:
            # Two inputs with one stem would silently overwrite each other's result.
            raise ValueError(f"{seen[path]} and {image} would both write {path}")
        seen[path] = image
    return paths


def _extra_path(png: Path, name: str, suffix: str) -> Path:
    # DIR/<stem>.<method>.png -> DIR/<stem>.<method>.<name><suffix>
    return png.with_name(f"{png.name.removesuffix('.png')}.{_file_part(name)}{suffix}")


def _explain_one(
    client: Client, image: str, png: Path, args: argparse.Namespace
) -> tuple[Explanation, list[Path]]:
    result = client.explain(
        image,
        model=args.model,
        method=args.method,
        target=args.neuron if args.neuron is not None else args.target,
        layer=args.layers,
        top_k_channels=args.top_k_channels,
        render=True,
        array_dtype="float16" if args.float16 else "float32",
        array=args.save_array,
        rollout=args.rollout,
    )
    if result.image is None and not result.images:
        raise ValueError("the server sent no rendered picture")
    written: list[Path] = []
    if result.image is not None:
        result.image.save(png, format="PNG")
        written.append(png)
    for name, picture in result.images.items():
        path = _extra_path(png, name, ".png")
        picture.save(path, format="PNG")
        written.append(path)
    if args.save_array:
        if result.array is None and not result.arrays:
            raise ValueError("the server sent no result array")
        if result.array is not None:
            npy = png.with_suffix(".npy")
            np.save(npy, result.array)
            written.append(npy)
        for name, arr in result.arrays.items():
            if arr is result.array:  # activations' first layer: written above already
                continue
            path = _extra_path(png, name, ".npy")
            np.save(path, arr)
            written.append(path)
    return result, written


def _rollout(args: argparse.Namespace) -> Rollout | None:
    """Attention rollout's options from --head-fusion and --discard-ratio; None when neither
    is given (the server's defaults)."""
    if args.head_fusion is None and args.discard_ratio is None:
        return None
    return Rollout(
        head_fusion=args.head_fusion or "mean",
        discard_ratio=0.0 if args.discard_ratio is None else args.discard_ratio,
    )


def _run_explain(client: Client, args: argparse.Namespace) -> int:
    args.rollout = _rollout(args)  # checked once, before any call
    out = Path(args.out)
    paths = _output_paths(args.images, out, args.method)
    out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        # Resolve the default model once up front: an unreachable server then gives one error
        # line instead of one per image.
        client.models()

    failed = 0
    workers = min(_MAX_WORKERS, len(args.images))
    # Concurrent calls over one channel let the server batch the images together.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deepvis") as pool:
        futures = [
            pool.submit(_explain_one, client, image, png, args)
            for image, png in zip(args.images, paths, strict=True)
        ]
        for image, future in zip(args.images, futures, strict=True):
            try:
                result, written = future.result()
            except _REPORTED as err:
                failed += 1
                _report(err, prefix=f"{image}: ", tls=_uses_tls(args))
                continue
            top = result.predictions[0] if result.predictions else None
            top_text = f"{top.label} ({top.score:.3f})" if top else "-"
            print(
                f"{image}  top={top_text}  target={_format_target(result.target)}  "
                f"-> {', '.join(str(p) for p in written)}  batch={result.batch_size}"
            )
    return 1 if failed else 0


def _format_layout(layer: LayerInfo) -> str:
    """The layout column: how the methods read the layer, e.g. tokens:1+14x14 (one class
    token and a 14x14 patch grid) or channels-last->768x7x7; "" when unknown."""
    read = "x".join(str(d) for d in layer.map_shape)
    if layer.layout == "channels_last" and read:
        return f"channels-last->{read}"
    if layer.layout == "tokens":
        grid = "x".join(str(d) for d in layer.map_shape[1:]) or "no-grid"
        return f"tokens:{layer.class_tokens}+{grid}"
    return layer.layout.replace("_", "-")


def _format_layers(desc: ModelDescription) -> list[str]:
    names = [layer.name or "-" for layer in desc.layers]
    name_width = max(map(len, names), default=0)
    type_width = max((len(layer.type) for layer in desc.layers), default=0)
    shapes = ["x".join(str(d) for d in layer.output_shape) or "-" for layer in desc.layers]
    shape_width = max(map(len, shapes), default=0)
    lines = []
    for name, shape, layer in zip(names, shapes, desc.layers, strict=True):
        line = f"{name:<{name_width}}  {layer.type:<{type_width}}  {shape:<{shape_width}}"
        layout = _format_layout(layer)
        if layout:
            line += f"  {layout}"
        if layer.calls > 1:
            line += f"  calls={layer.calls}"
        lines.append(line.rstrip())
    activations = ",".join(desc.non_relu_activations) or "-"
    footer = (
        f"default-cam-layer={desc.default_cam_layer or '-'}  non-relu-activations={activations}"
    )
    if desc.attention_layers:
        footer += f"  attention-layers={len(desc.attention_layers)}"
    lines.append(footer)
    if desc.default_cam_layer_note:
        lines.append(f"default-cam-layer: {desc.default_cam_layer_note}")
    return lines


def _run_layers(client: Client, args: argparse.Namespace) -> int:
    for line in _format_layers(client.describe(args.model)):
        print(line)
    return 0


def _add_dream_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    dream = sub.add_parser(
        "dream",
        parents=[common],
        help="DeepDream a picture: amplify what a layer, channel or class sees in it",
        description=(
            "DeepDream (the original algorithm: octaves, jitter, steps normalised by the mean "
            "|gradient|) on IMAGE at its own size: write DIR/<image>.<objective>.dream.png."
        ),
    )
    dream.add_argument("image", metavar="IMAGE", help="the picture to dream on")
    dream.add_argument("--model", help="model name (default: the server's first model)")
    objective = dream.add_mutually_exclusive_group(required=True)
    objective.add_argument(
        "--layer", metavar="LAYER", help="amplify a whole layer (the L2 of its activations)"
    )
    objective.add_argument(
        "--channel", type=_parse_channel, metavar="LAYER:C", help="amplify one channel (its L2)"
    )
    objective.add_argument(
        "--class", dest="class_index", type=int, metavar="N", help="amplify class N's logit"
    )
    dream.add_argument("--negate", action="store_true", help="minimize instead")
    dream.add_argument(
        "--octaves", type=_non_negative_int, default=4, metavar="N", help="octaves (default: 4)"
    )
    dream.add_argument(
        "--octave-scale",
        type=float,
        default=1.4,
        metavar="F",
        help="size ratio between octaves (default: 1.4)",
    )
    dream.add_argument(
        "--steps",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="steps per octave (default: 10)",
    )
    dream.add_argument(
        "--step-size",
        type=float,
        metavar="F",
        help="step in 0-255 pixel units (default: the server's, 1.5)",
    )
    dream.add_argument(
        "--jitter",
        type=_non_negative_int,
        metavar="PX",
        help="largest random shift per step (default: the server's, 32)",
    )
    dream.add_argument("--seed", type=_non_negative_int, default=0, metavar="N", help="seed")
    dream.add_argument("--out", required=True, metavar="DIR", help="output directory")
    dream.add_argument(
        "--save-octaves",
        action="store_true",
        help="also write the picture at the end of each octave but the last",
    )
    dream.add_argument("--save-array", action="store_true", help="also write the float32 .npy")


def _run_dream(client: Client, args: argparse.Namespace) -> int:
    objective: ObjectiveLike
    if args.class_index is not None:
        objective = int(args.class_index)
    elif args.channel is not None:
        objective = args.channel
    else:
        objective = Layer(args.layer)
    name = f"{_file_part(Path(args.image).stem)}.{_objective_name(objective, args.negate)}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    result = None
    for item in client.dream_stream(
        args.image,
        objective,
        model=args.model,
        negate=args.negate,
        octaves=args.octaves,
        octave_scale=args.octave_scale,
        steps_per_octave=args.steps,
        step_size=args.step_size,
        jitter=args.jitter,
        seed=args.seed,
    ):
        if isinstance(item, DreamProgress):
            print(
                f"octave {item.octave}/{item.octaves} step {item.step}/{item.steps} "
                f"objective {item.objective:.4g}",
                file=sys.stderr,
                flush=True,
            )
            if args.save_octaves and item.image is not None:
                path = out / f"{name}.octave{item.octave}.png"
                item.image.save(path, format="PNG")
                written.append(path)
        else:
            result = item
    assert result is not None  # the stream ends with its result, or raises
    path = out / f"{name}.dream.png"
    result.image.save(path, format="PNG")
    written.insert(0, path)
    if args.save_array:
        path = out / f"{name}.dream.npy"
        np.save(path, result.array)
        written.append(path)
    objectives = " ".join(f"{v:.4g}" for v in result.octave_objectives)
    print(
        f"{name}  octave objectives: {objectives}  steps={result.steps}  "
        f"-> {', '.join(str(p) for p in written)}"
    )
    return 0


def _objective(args: argparse.Namespace) -> ObjectiveLike:
    if args.class_index is not None:
        return int(args.class_index)
    if args.neuron is not None:
        return args.neuron
    if args.channel is not None:
        return args.channel
    return Layer(args.layer_objective)


def _objective_name(objective: ObjectiveLike, negate: bool) -> str:
    if isinstance(objective, Layer):
        name = f"layer-{objective.name}"
    elif isinstance(objective, Neuron):
        name = f"{objective.layer}-c{objective.channel}"
        if objective.y is not None:
            name += f"-y{objective.y}-x{objective.x}"
    else:
        name = f"class-{objective}"
    return _file_part(name + ("-neg" if negate else ""))


def _print_progress(progress: Progress) -> None:
    print(
        f"step {progress.step}/{progress.steps} objective {progress.objective:.4g}",
        file=sys.stderr,
        flush=True,
    )


def _run_visualize(client: Client, args: argparse.Namespace) -> int:
    objective = _objective(args)
    name = args.name or _objective_name(objective, args.negate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = client.visualize(
        objective,
        model=args.model,
        negate=args.negate,
        steps=args.steps,
        learning_rate=args.lr,
        size=args.size,
        batch=args.batch,
        diversity=args.diversity,
        seed=args.seed,
        progress_every=args.progress_every,
        parameterization=args.param,
        transforms=not args.no_transforms,
        input=args.input,
        preset=args.preset.replace("-", "_"),
        l2_penalty=args.l2,
        on_progress=_print_progress,
    )
    written: list[Path] = []
    for i, picture in enumerate(result.images):
        path = out / f"{name}_{i}.png"
        picture.save(path, format="PNG")
        written.append(path)
    if result.attribution_image is not None:
        path = out / f"{name}.attribution.png"
        result.attribution_image.save(path, format="PNG")
        written.append(path)
    if args.save_array:
        path = out / f"{name}.npy"
        np.save(path, result.array)
        written.append(path)
        if result.attribution is not None:
            path = out / f"{name}.attribution.npy"
            np.save(path, result.attribution)
            written.append(path)
    print(
        f"{name}  objective={result.objective:.4g}  steps={result.steps}  "
        f"-> {', '.join(str(p) for p in written) or '-'}"
    )
    return 0


def _run_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    print(status)
    return 0 if status == _HEALTHY else 1


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _read_pem(path: str | None, flag: str, kind: str, marker: re.Pattern[bytes]) -> bytes | None:
    """The file's bytes, checked here: gRPC would only fail the handshake, saying less."""
    if path is None:
        return None
    data = Path(path).read_bytes()
    if marker.search(data) is None:
        begin = marker.pattern.decode().replace("[A-Z ]*", "")
        raise ValueError(f"{flag} {path} is not a PEM {kind} (it has no {begin} line)")
    return data


def _uses_tls(args: argparse.Namespace) -> bool:
    return bool(args.tls or args.tls_ca or args.tls_cert)


def _tls_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tls": args.tls,
        "root_certificates": _read_pem(args.tls_ca, "--tls-ca", "certificate", _PEM_CERTIFICATE),
        "client_certificate": _read_pem(
            args.tls_cert, "--tls-cert", "certificate", _PEM_CERTIFICATE
        ),
        "client_key": _read_pem(args.tls_key, "--tls-key", "private key", _PEM_PRIVATE_KEY),
    }


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve off this machine


def _host(address: str) -> str:
    if address.startswith("["):  # [v6]:port
        return address[1:].partition("]")[0]
    return address.rpartition(":")[0] if address.count(":") == 1 else address


def _stays_on_this_machine(server: str) -> bool:
    """Whether every address `server` names is a loopback address or a Unix socket."""
    try:
        target = channel_target(server)
    except (TypeError, ValueError):
        return False  # Client reports it
    scheme, _, rest = target.partition(":")
    scheme = scheme.lower()
    if scheme in ("unix", "unix-abstract"):
        return True
    if scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    elif scheme == "dns":  # dns:[//authority]/host:port
        addresses = [rest.lstrip("/").rpartition("/")[2]]
    elif "://" in target:
        return False
    else:
        addresses = [target]
    return all(_is_loopback_host(_host(a.strip())) for a in addresses)


def main(argv: list[str] | None = None) -> int:
    """Runs the deepvis command line.

    Args:
        argv: The arguments after the program name; None reads `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 1 when a call or a file failed (argparse exits 2 on
        usage errors).
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    server = args.server or os.environ.get(_SERVER_ENV) or _DEFAULT_SERVER
    # An empty variable means no token, as an unset one does.
    token = args.token or os.environ.get(_TOKEN_ENV, "").strip() or None
    tls = _uses_tls(args)
    if token is not None and not tls and not _stays_on_this_machine(server):
        print(
            f"warning: sending the bearer token to {server} unencrypted (no TLS): anyone on "
            "the way can read it; pass --tls or --tls-ca",
            file=sys.stderr,
        )
    try:
        with Client(server, timeout=args.timeout, token=token, **_tls_arguments(args)) as client:
            if args.command == "models":
                return _run_models(client)
            if args.command == "layers":
                return _run_layers(client, args)
            if args.command == "visualize":
                return _run_visualize(client, args)
            if args.command == "dream":
                return _run_dream(client, args)
            if args.command == "health":
                return _run_health(client, args)
            return _run_explain(client, args)
    except _REPORTED as err:
        _report(err, tls=tls)
        return 1
