"""The deepvis command line: a thin shell over `deepvis.Client`."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepvis import __version__
from deepvis._cli_args import Arg, Command, OneOf, add, switch
from deepvis._cli_explain import (
    EXPLAIN_ARGS,
    MODEL_ARG,
    PICTURE_ARGS,
    QUIET_ARG,
    Interrupted,
    atomic_write,
    cli_name,
    neuron_arg,
    parse_methods,
    run_explain,
)
from deepvis._cli_explain import _index as _index
from deepvis._cli_explain import _non_negative_int as _non_negative_int
from deepvis._cli_explain import _parse_neuron as _parse_neuron
from deepvis._client import Client
from deepvis._convert import methods, metrics, parameterizations, presets
from deepvis._exceptions import DeepvisError, Unavailable
from deepvis._models import (
    DreamProgress,
    Evaluation,
    EvaluationProgress,
    Layer,
    LayerInfo,
    ModelDescription,
    ModelInfo,
    Neuron,
    ObjectiveLike,
    Progress,
    Visualization,
)
from deepvis._report import CHECK_ARGS, run_report
from deepvis._transport import channel_target

__all__ = ["main"]

_DEFAULT_SERVER = "127.0.0.1:50051"
_SERVER_ENV = "DEEPVIS_SERVER"
_TOKEN_ENV = "DEEPVIS_TOKEN"

# Errors a user can act on; anything else is a bug and keeps its traceback.
_REPORTED = (DeepvisError, OSError, ValueError, TypeError)


# Characters a server-given or derived name may keep in a file name; others become "_".
_UNSAFE_FILE_CHARS = re.compile(r"[^\w.\-]")

_HEALTHY = "SERVING"


def _cli_name(method: str) -> str:
    return cli_name(method)


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


def _passed_on(args: argparse.Namespace, names: str) -> dict[str, Any]:
    """The flags `names` (separated by spaces), each as the call's option of the same name."""
    return {name: getattr(args, name) for name in names.split()}


def _name_list(choices: Sequence[str], what: str) -> Any:
    """An argparse type: a comma-separated list of `choices` (hyphens or underscores)."""

    def parse(text: str) -> list[str]:
        names = [part.strip().replace("-", "_") for part in text.split(",") if part.strip()]
        bad = [n for n in names if n not in choices]
        if not names or bad:
            valid = ",".join(_cli_name(c) for c in choices)
            raise argparse.ArgumentTypeError(f"expected {what} from {valid}, not {text!r}")
        return names

    return parse


# --- the commands' arguments, as data (see _cli_args) --------------------------------------------

# How to reach the server; accepted before the command and after it.
_CONNECTION_ARGS = (
    Arg(
        "--server",
        "ADDR",
        help=(
            "server host:port; several replicas as a comma-separated list of IP:port, "
            "balanced round robin, or a gRPC target such as dns:///NAME:PORT "
            f"(default: ${_SERVER_ENV}, else {_DEFAULT_SERVER})"
        ),
    ),
    Arg("--timeout", "S", float, help="deadline of each call in seconds"),
    Arg(
        "--token",
        help=f"bearer token sent with every call (default: ${_TOKEN_ENV}, kept out of ps)",
    ),
    switch("--tls", "connect over TLS (implied by --tls-ca, --tls-cert)"),
    Arg("--tls-ca", "FILE", help="PEM CA certificate to check the server's certificate against"),
    Arg(
        "--tls-cert",
        "FILE",
        help="PEM client certificate, for servers that require one (with --tls-key)",
    ),
    Arg("--tls-key", "FILE", help="PEM private key of --tls-cert"),
)

# What visualize, evaluate and dream share.
_SEED_ARG = Arg("--seed", "S", _non_negative_int, 0, "random seed (default: 0)")
_OUT_DIR_ARG = Arg("--out", "DIR", help="output directory", required=True)
_NEGATE_ARG = switch("--negate", "minimize instead")


def _class_arg(help: str) -> Arg:
    """--class N, a class index, which `help` says what for."""
    return Arg("--class", "N", int, help=help, dest="class_index")


_REPORT = Command(
    "report",
    "write one self-contained HTML page comparing methods on images",
    "Explain images with several methods and write one HTML file that needs nothing else: a "
    "method x image grid (with a shared-scale toggle), each image's top-5 predictions and "
    "target, the colormap legend, timings and the server and model.",
    (
        Arg("inputs", "INPUT", help="image files, folders, globs, or - (stdin)", nargs="+"),
        MODEL_ARG,
        Arg(
            "--method -m",
            "A,B,...",
            parse_methods,
            ["guided_backprop", "grad_cam", "integrated_gradients"],
            "methods, comma-separated (default: guided-backprop,grad-cam,integrated-gradients)",
        ),
        OneOf(
            (
                Arg("--target", "N", int, help="class index to explain"),
                neuron_arg("explain a neuron"),
            )
        ),
        Arg("--layer", "L", action="append", dest="layers"),
        *PICTURE_ARGS,
        Arg("--out -o", "FILE", help="the HTML file to write", required=True),
        Arg("--title", help="the page's title (default: from the model)"),
        QUIET_ARG,
        *CHECK_ARGS,
    ),
)

_VISUALIZE = Command(
    "visualize",
    "synthesize the images that maximize a class, neuron, channel or layer",
    "Feature visualization: write DIR/<name>_<i>.png for each synthesized image "
    "(and DIR/<name>.attribution.png with --input).",
    (
        MODEL_ARG,
        OneOf(
            (
                _class_arg("maximize class N's logit"),
                neuron_arg("maximize a channel's mean, or one neuron of it with :Y:X"),
                Arg("--channel", "LAYER:C", _parse_channel, help="maximize a channel's mean"),
                Arg(
                    "--layer-objective",
                    "LAYER",
                    help="maximize a whole layer (DeepDream: the mean of its squares)",
                ),
            ),
            required=True,
        ),
        _NEGATE_ARG,
        Arg("--steps", "N", _non_negative_int, 512, "optimization steps (default: 512)"),
        Arg(
            "--lr",
            "F",
            float,
            help="learning rate (default: the preset's: 0.05 for lucid, 25 for class-model)",
        ),
        Arg("--size", "HxW", _parse_size, help="image size (default: the model's input)"),
        Arg("--batch", "N", _non_negative_int, 1, "images to synthesize (default: 1)"),
        Arg("--diversity", "F", float, 0.0, "weight of the diversity term (default: 0)"),
        _SEED_ARG,
        Arg(
            "--progress-every",
            "N",
            _non_negative_int,
            0,
            "have the server report progress with a picture every N steps",
        ),
        Arg(
            "--param",
            help="image parameterization of the lucid preset (default: fft)",
            choices=parameterizations(),
        ),
        Arg(
            "--preset",
            default="lucid",
            help=(
                "lucid: Olah et al.'s feature visualization; class-model: Simonyan et al.'s, the "
                "image from zero by gradient ascent on a class score minus --l2 * ||x||^2 "
                "(with --class; default: %(default)s)"
            ),
            choices=[_cli_name(p) for p in presets()],
        ),
        Arg(
            "--l2",
            "F",
            float,
            help="class-model: the L2 penalty's lambda (default: the server's, 1e-3)",
        ),
        switch(
            "--no-transforms", "turn off transformation robustness (pad, jitter, scale, rotate)"
        ),
        Arg(
            "--input",
            "IMAGE",
            help="an image to attribute the objective on (guided backpropagation)",
        ),
        _OUT_DIR_ARG,
        switch("--save-array", "also write the float32 arrays as .npy"),
        Arg(
            "--name",
            help="file name prefix (default: from the objective, e.g. class-3 or conv3-c12)",
        ),
        QUIET_ARG,
    ),
)

_ATTRIBUTIONS = [m for m in methods() if m != "activations"]

_EVALUATE = Command(
    "evaluate",
    "sanity checks and faithfulness metrics of methods on images",
    "Evaluate methods on images: model-parameter randomization (Spearman and SSIM once every "
    "layer is re-initialized, cascading), deletion and insertion AUCs, infidelity and "
    "max-sensitivity, each the mean over the images. --json prints every value per image "
    "instead.",
    (
        Arg("images", "IMAGE", help="image files to evaluate on", nargs="+"),
        MODEL_ARG,
        Arg(
            "--method",
            "A,B,...",
            _name_list(_ATTRIBUTIONS, "methods"),
            ["guided_backprop"],
            "methods to evaluate, comma-separated (default: guided-backprop)",
        ),
        Arg(
            "--metrics",
            "M,N,...",
            _name_list(metrics(), "metrics"),
            help=f"metrics to compute, from {','.join(metrics())} (default: all)",
        ),
        Arg("--layer", "L", help="layer of grad-cam and guided-grad-cam"),
        _class_arg("class to explain on every image (default: each image's predicted class)"),
        Arg(
            "--steps",
            "N",
            _non_negative_int,
            0,
            "deletion and insertion steps (default: min(224, H*W))",
        ),
        _SEED_ARG,
        Arg(
            "--randomization",
            default="both",
            help="randomization curves to compute (default: %(default)s)",
            choices=("both", "cascading", "independent"),
        ),
        Arg(
            "--perturbations",
            "N",
            _non_negative_int,
            0,
            "infidelity and sensitivity samples per image (default: 10)",
        ),
        switch("--json", "print every value per image as JSON"),
        Arg(
            "--plots",
            "DIR",
            help="write DIR/<method>.{deletion,insertion,randomization}.png curve plots",
        ),
        switch("--progress", "print the evaluation's progress on stderr"),
    ),
)

_DREAM = Command(
    "dream",
    "DeepDream a picture: amplify what a layer, channel or class sees in it",
    "DeepDream (the original algorithm: octaves, jitter, steps normalised by the mean "
    "|gradient|) on IMAGE at its own size: write DIR/<image>.<objective>.dream.png.",
    (
        Arg("image", "IMAGE", help="the picture to dream on"),
        MODEL_ARG,
        OneOf(
            (
                Arg("--layer", "LAYER", help="amplify a whole layer (the L2 of its activations)"),
                Arg("--channel", "LAYER:C", _parse_channel, help="amplify one channel (its L2)"),
                _class_arg("amplify class N's logit"),
            ),
            required=True,
        ),
        _NEGATE_ARG,
        Arg("--octaves", "N", _non_negative_int, 4, "octaves (default: 4)"),
        Arg("--octave-scale", "F", float, 1.4, "size ratio between octaves (default: 1.4)"),
        Arg("--steps", "N", _non_negative_int, 10, "steps per octave (default: 10)"),
        Arg(
            "--step-size", "F", float, help="step in 0-255 pixel units (default: the server's, 1.5)"
        ),
        Arg(
            "--jitter",
            "PX",
            _non_negative_int,
            help="largest random shift per step (default: the server's, 32)",
        ),
        Arg("--seed", "N", _non_negative_int, 0, "seed"),
        _OUT_DIR_ARG,
        switch("--save-octaves", "also write the picture at the end of each octave but the last"),
        switch("--save-array", "also write the float32 .npy"),
    ),
)

_UI = Command(
    "ui",
    "explore a served model in the browser (needs the ui extra)",
    "Start the explorer: a local web page over the server (predictions, a grid of methods on "
    "one scale, a layer browser, live feature visualization). Prints its URL as the first "
    "line on stdout and serves until interrupted.",
    (
        Arg(
            "--host",
            default="127.0.0.1",
            help="address to bind (default: %(default)s; others need --allow-remote)",
        ),
        Arg("--port", type=_non_negative_int, default=0, help="port (default: 0, a free one)"),
        switch(
            "--allow-remote",
            "bind a non-loopback --host: anyone who reaches it uses the server as you",
        ),
        Arg(
            "--allow-host",
            "NAME",
            default=[],
            help=(
                "also answer requests whose Host header names NAME (a proxy in front that sends "
                "its own name); by default only 127.0.0.1, localhost and ::1"
            ),
            action="append",
        ),
        switch("--open", "open the page in the default browser"),
        Arg(
            "--samples",
            "DIR",
            help=(
                "a folder of images the page offers as samples (default: the default model's "
                "digits, where the server package is installed)"
            ),
        ),
    ),
)

# In the order the top-level --help lists them.
_COMMANDS = (
    Command(
        "models",
        "list the served models",
        "List the served models.",
        (switch("--json", "print them as one JSON array"),),
    ),
    Command(
        "explain",
        "explain images and write the pictures (and arrays) of each",
        "Explain images with one or more methods and write DIR/<input>/<method>.png for each "
        "(over the input for map methods), DIR/<input>/<method>.npy with --format npy, and "
        "DIR/manifest.jsonl, one JSON line per input and method. Files are written whole or "
        "not at all; --skip-existing makes a rerun finish an interrupted one.",
        EXPLAIN_ARGS,
    ),
    Command(
        "layers",
        "list a model's layers",
        "List a model's layers: name, type, output shape and calls when > 1.",
        (
            Arg("model", "MODEL", help="model name (default: the server's first model)", nargs="?"),
            switch("--json", "print them as one JSON object"),
        ),
    ),
    _REPORT,
    _VISUALIZE,
    _EVALUATE,
    _DREAM,
    _UI,
    Command(
        "health",
        "ask the server's health service; exit 0 when SERVING",
        "Print the server's health status; exit 0 when SERVING, else 1.",
        (
            Arg(
                "--service",
                "NAME",
                default="",
                help='service to ask about, e.g. deepvis.v1.Explainer (default: "", the server)',
            ),
        ),
    ),
)


def _build_parser() -> argparse.ArgumentParser:
    # After the command a flag not given must not reset one given before it, hence SUPPRESS.
    common = argparse.ArgumentParser(add_help=False)
    add(common, [a._replace(default=argparse.SUPPRESS) for a in _CONNECTION_ARGS])

    parser = argparse.ArgumentParser(
        prog="deepvis", description="Show what an image classifier served by deepvis sees."
    )
    parser.add_argument("--version", action="version", version=f"deepvis {__version__}")
    add(parser, _CONNECTION_ARGS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in _COMMANDS:
        # Every command takes the connection flags.
        add(
            sub.add_parser(c.name, help=c.help, description=c.description, parents=[common]), c.args
        )
    return parser


def _run_ui(args: argparse.Namespace, server: str, token: str | None) -> int:
    try:
        from deepvis.ui import Gateway, is_loopback, serve
        from deepvis.ui._gateway import LOOPBACK_NAMES, default_samples
    except ImportError as err:
        print(
            f"deepvis ui needs the ui extra ({err.name} is missing): pip install 'deepvis[ui]'",
            file=sys.stderr,
        )
        return 1
    if not is_loopback(args.host) and not args.allow_remote:
        print(
            f"deepvis ui: refusing to bind {args.host}, which is not a loopback address: anyone "
            "who reaches it would use the deepvis server with your credentials. Bind 127.0.0.1 "
            "(the default), or pass --allow-remote if that is meant.",
            file=sys.stderr,
        )
        return 2
    samples = Path(args.samples) if args.samples else default_samples()
    if samples is not None and not samples.is_dir():
        raise ValueError(f"--samples {samples} is not a folder")
    options = {"timeout": args.timeout, "token": token, **_tls_arguments(args)}
    # Bound elsewhere on purpose, the page is reached by whatever name the machine has.
    hosts = None if not is_loopback(args.host) else [*LOOPBACK_NAMES, *args.allow_host]
    gateway = Gateway(server, options, samples, hosts)
    serve(gateway, args.host, args.port, open_browser=args.open)
    return 0


# gRPC's words for a connection the server closed during its handshake: what a TLS port does
# to a plaintext client (a port where nothing listens says "Connection refused" instead).
_CLOSED_AT_HANDSHAKE = ("socket closed", "connection reset")
_TLS_HINT = "the server may need TLS: pass --tls / --tls-ca"


def _report(err: BaseException, prefix: str = "", *, tls: bool = True) -> None:
    print(_report_line(err, prefix, tls=tls), file=sys.stderr)


def _report_line(err: BaseException, prefix: str = "", *, tls: bool = True) -> str:
    # One line, so that scripts can grep it and a batch of errors stays readable.
    message = " ".join(str(err).split())
    if (
        not tls
        and isinstance(err, Unavailable)
        and any(words in message.lower() for words in _CLOSED_AT_HANDSHAKE)
    ):
        message += f" ({_TLS_HINT})"
    return f"{type(err).__name__}: {prefix}{message}"


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


def _run_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        print(json.dumps([dataclasses.asdict(m) for m in models], indent=1))
        return 0
    for info in models:
        print(_format_model(info))
    return 0


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
    desc = client.describe(args.model)
    if args.json:
        print(json.dumps(dataclasses.asdict(desc), indent=1))
        return 0
    for line in _format_layers(desc):
        print(line)
    return 0


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
        steps_per_octave=args.steps,
        **_passed_on(args, "model negate octaves octave_scale step_size jitter seed"),
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


class _ProgressBar:
    """One progress bar on stderr for a feature visualization: step, and the objective."""

    def __init__(self, steps: int, quiet: bool) -> None:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal.
        self.bar = tqdm(total=steps, unit="step", file=sys.stderr, disable=True if quiet else None)

    def __call__(self, progress: Progress) -> None:
        if progress.steps and self.bar.total != progress.steps:
            self.bar.total = progress.steps
        self.bar.update(max(0, progress.step - self.bar.n))
        self.bar.set_postfix(objective=f"{progress.objective:.4g}", refresh=False)

    def finish(self, result: Visualization) -> None:
        """The bar at the result's last step and objective: the last progress may come
        before it (progress_every need not divide the steps)."""
        self(Progress(step=result.steps, steps=result.steps, objective=result.objective))

    def close(self) -> None:
        self.bar.close()


def _run_visualize(client: Client, args: argparse.Namespace) -> int:
    objective = _objective(args)
    name = args.name or _objective_name(objective, args.negate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = _ProgressBar(args.steps or 512, args.quiet)
    try:
        result = _visualize(client, args, objective, bar)
        bar.finish(result)
    finally:
        bar.close()
    written: list[Path] = []
    for i, picture in enumerate(result.images):
        path = out / f"{name}_{i}.png"
        _save(path, picture)
        written.append(path)
    if result.attribution_image is not None:
        path = out / f"{name}.attribution.png"
        _save(path, result.attribution_image)
        written.append(path)
    if args.save_array:
        path = out / f"{name}.npy"
        atomic_write(path, lambda f: np.save(f, result.array))
        written.append(path)
        if result.attribution is not None:
            path = out / f"{name}.attribution.npy"
            atomic_write(path, lambda f: np.save(f, result.attribution))
            written.append(path)
    print(
        f"{name}  objective={result.objective:.4g}  steps={result.steps}  "
        f"-> {', '.join(str(p) for p in written) or '-'}"
    )
    return 0


def _save(path: Path, picture: Any) -> None:
    atomic_write(path, lambda f: picture.save(f, format="PNG"))


def _visualize(client: Client, args: argparse.Namespace, objective: ObjectiveLike, bar: Any) -> Any:
    return client.visualize(
        objective,
        learning_rate=args.lr,
        parameterization=args.param,
        transforms=not args.no_transforms,
        preset=args.preset.replace("-", "_"),
        l2_penalty=args.l2,
        on_progress=bar,
        **_passed_on(args, "model negate steps size batch diversity seed progress_every input"),
    )


def _mean(values: np.ndarray | None) -> float | None:
    if values is None:
        return None
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _cell(value: float | None) -> str:
    return "-" if value is None else ("nan" if math.isnan(value) else f"{value:.3f}")


# The table's columns: header, and the value of a method's evaluation (a mean over images).
_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("deletion", lambda m: _mean(None if m.deletion is None else m.deletion.auc)),
    ("insertion", lambda m: _mean(None if m.insertion is None else m.insertion.auc)),
    (
        "spearman",
        lambda m: _mean(None if m.randomization is None else m.randomization.final_spearman),
    ),
    ("ssim", lambda m: _mean(None if m.randomization is None else m.randomization.final_ssim)),
    ("infidelity", lambda m: _mean(m.infidelity)),
    ("sensitivity", lambda m: _mean(m.sensitivity)),
)


def _format_evaluation(ev: Evaluation) -> list[str]:
    names = [_cli_name(m) + (f"@{e.layer}" if e.layer else "") for m, e in ev.methods.items()]
    width = max(len("method"), *map(len, names))
    header = f"{'method':<{width}}" + "".join(f"  {h:>11}" for h, _ in _COLUMNS)
    lines = [header]
    for name, e in zip(names, ev.methods.values(), strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"  {_cell(f(e)):>11}" for _, f in _COLUMNS))
    lines.append(
        f"{len(ev.classes)} images, model {ev.model}, deletion/insertion AUC over {ev.steps} "
        "steps (deletion lower is better, insertion higher); spearman and ssim after "
        f"re-initializing all {len(ev.layers)} layers, cascading (lower: the map depends on "
        "the weights); infidelity and sensitivity lower is better"
    )
    return lines


def _jsonable(value: Any) -> Any:
    """numpy arrays as nested lists; NaN as null (JSON has no NaN)."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": ev.model,
        "classes": ev.classes,
        "steps": ev.steps,
        "layers": list(ev.layers),
        "work": ev.work,
        "warnings": ev.warnings,
        "methods": {},
    }
    for name, e in ev.methods.items():
        entry: dict[str, Any] = {"layer": e.layer}
        for kind in ("deletion", "insertion"):
            curve = getattr(e, kind)
            if curve is not None:
                entry[kind] = {"auc": _jsonable(curve.auc), "curve": _jsonable(curve.curve)}
        if e.randomization is not None:
            r = e.randomization
            entry["randomization"] = {
                k: _jsonable(getattr(r, k))
                for k in ("spearman", "ssim", "independent_spearman", "independent_ssim")
                if getattr(r, k) is not None
            }
        for k in ("infidelity", "sensitivity"):
            if getattr(e, k) is not None:
                entry[k] = _jsonable(getattr(e, k))
        out["methods"][name] = entry
    return out


def _print_evaluate_progress(progress: EvaluationProgress) -> None:
    print(f"{progress.done}/{progress.total} {progress.stage}", file=sys.stderr, flush=True)


def _run_evaluate(client: Client, args: argparse.Namespace) -> int:
    evaluation = client.evaluate(
        args.images,
        classes=args.class_index,
        on_progress=_print_evaluate_progress if args.progress else None,
        **_passed_on(args, "model method metrics layer steps seed randomization perturbations"),
    )
    if args.plots:
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        for name, e in evaluation.methods.items():
            for kind in ("deletion", "insertion", "randomization"):
                part = getattr(e, kind)
                if part is not None:
                    title = f"{kind} {_cli_name(name)}"
                    part.plot(title).save(out / f"{_cli_name(name)}.{kind}.png", format="PNG")
    if args.json:
        print(json.dumps(_evaluation_json(evaluation)))
    else:
        for line in _format_evaluation(evaluation):
            print(line)
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


# The commands that need only the client and their arguments; ui, report and explain take more.
_RUNS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "models": _run_models,
    "layers": _run_layers,
    "visualize": _run_visualize,
    "dream": _run_dream,
    "health": _run_health,
    "evaluate": _run_evaluate,
}


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
        if args.command == "ui":
            return _run_ui(args, server, token)
        with Client(server, timeout=args.timeout, token=token, **_tls_arguments(args)) as client:
            run = _RUNS.get(args.command)
            if run is not None:
                return run(client, args)
            if args.command == "report":
                return run_report(client, args, server)
            return run_explain(client, args, lambda e, p: _report_line(e, p, tls=tls))
    except Interrupted as stop:
        if stop.pipe:
            return _closed_pipe()
        print(
            f"deepvis: interrupted: {stop.done} inputs done, {stop.left} not started "
            "(rerun with --skip-existing to finish)",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("deepvis: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except _REPORTED as err:
        _report(err, tls=tls)
        return 1


def _closed_pipe() -> int:
    """stdout was closed by its reader (`| head`): stop quietly, as a killed pipe does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    return 141
