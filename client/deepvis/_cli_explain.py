"""`deepvis explain` at scale: many inputs, several methods, calls in flight, resumable output.

A thin shell over the library: each input is one `Client.explain` (one method) or one
`Client.compare` (several, one ExplainBatch call) and its pictures are drawn locally by
`deepvis.render` from the arrays, as the server would draw them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from deepvis import render
from deepvis._cli_args import Arg, Group, OneOf, switch
from deepvis._client import Client
from deepvis._convert import (
    baseline_kinds,
    composites,
    integration_methods,
    method_name,
    methods,
    smooth_kinds,
)
from deepvis._exceptions import DeepvisError, InvalidArgument, NotFound
from deepvis._models import (
    Comparison,
    Explanation,
    IntegratedGradients,
    ModelInfo,
    Neuron,
    Rollout,
    Smooth,
)

__all__ = [
    "EXPLAIN_ARGS",
    "IMAGE_SUFFIXES",
    "Interrupted",
    "MODEL_ARG",
    "PICTURE_ARGS",
    "QUIET_ARG",
    "Work",
    "atomic_write",
    "collect_inputs",
    "neuron_arg",
    "parse_methods",
    "record_of",
    "run_explain",
]

# Files a folder argument contributes (any case): the formats the server decodes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# Calls in flight by default: the default model's batch (ModelSpec.max_batch_size).
DEFAULT_JOBS = 32
MANIFEST = "manifest.jsonl"


class Interrupted(Exception):
    """The run was stopped (Ctrl-C, or stdout closed) after what was in flight finished."""

    def __init__(self, done: int, left: int, *, pipe: bool = False) -> None:
        super().__init__(f"{done} done, {left} not started")
        self.done, self.left, self.pipe = done, left, pipe


# --- arguments ---------------------------------------------------------------------------------


def cli_name(method: str) -> str:
    return method.replace("_", "-")


def parse_methods(text: str) -> list[str]:
    """A comma-separated list of methods, in either spelling (grad_cam or grad-cam)."""
    names = []
    for part in text.split(","):
        try:
            names.append(method_name(part.strip()))
        except ValueError:
            valid = ", ".join(cli_name(m) for m in methods())
            raise argparse.ArgumentTypeError(
                f"unknown method {part.strip()!r}; valid: {valid}"
            ) from None
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is named twice in {text!r}")
    return names


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "npy")]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"formats are png and npy, comma-separated; not {text!r}")
    return formats


def parse_clip(text: str) -> float | None:
    if text.lower() in ("none", "off", "100"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"clip is a percentile in (0, 100] or none, not {text!r}")
    return value


def parse_picture_size(text: str) -> tuple[int, int]:
    """WxH (e.g. 640x480) in pixels, as PIL's Image.size."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH (e.g. 640x480), not {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"the size must be positive, not {text!r}")
    return width, height


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"the value must be >= 0, not {text}")
    return value


def _rollout(args: argparse.Namespace) -> Rollout | None:
    """Attention rollout's options from --head-fusion and --discard-ratio; None when neither
    is given (the server's defaults)."""
    if args.head_fusion is None and args.discard_ratio is None:
        return None
    return Rollout(
        head_fusion=args.head_fusion or "mean",
        discard_ratio=0.0 if args.discard_ratio is None else args.discard_ratio,
    )


def _smooth(args: argparse.Namespace) -> Smooth | None:
    given = (args.smooth_samples, args.smooth_noise, args.smooth_kind, args.smooth_seed)
    if all(v is None for v in given):
        return None
    default = Smooth()
    return Smooth(
        samples=default.samples if args.smooth_samples is None else args.smooth_samples,
        noise=default.noise if args.smooth_noise is None else args.smooth_noise,
        kind=args.smooth_kind or default.kind,
        seed=args.smooth_seed or 0,
    )


def _integrated_gradients(args: argparse.Namespace) -> IntegratedGradients | None:
    given = (
        args.ig_steps,
        args.ig_method,
        args.ig_baseline,
        args.ig_blur_sigma,
        args.ig_samples,
        args.ig_images,
        args.ig_seed,
    )
    if all(v is None for v in given):
        return None
    default = IntegratedGradients()
    return IntegratedGradients(
        steps=default.steps if args.ig_steps is None else args.ig_steps,
        method=args.ig_method or default.method,
        baseline=args.ig_baseline,
        blur_sigma=args.ig_blur_sigma or 0.0,
        samples=default.samples if args.ig_samples is None else args.ig_samples,
        images=tuple(args.ig_images or ()),
        seed=args.ig_seed or 0,
    )


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


def _positive_int(text: str) -> int:
    value = _index(text, "the value")
    if value == 0:
        raise argparse.ArgumentTypeError("the value must be >= 1")
    return value


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


# What each argument of `deepvis explain` (and of `report`, which shares some) is; see _cli_args.

MODEL_ARG = Arg("--model", help="model name (default: the server's first model)")
QUIET_ARG = switch("--quiet -q", "no progress bar")


def neuron_arg(help: str) -> Arg:
    """--neuron LAYER:C[:Y:X], a channel or one neuron of it, which `help` says what for."""
    return Arg("--neuron", "LAYER:C[:Y:X]", _parse_neuron, help=help)


# How pictures are drawn: shared by explain and report.
PICTURE_ARGS = (
    Arg(
        "--cmap",
        "NAME",
        str.lower,
        help=f"colormap: {', '.join(render.colormaps())} (default: inferno for unsigned maps, "
        "rdbu_r for signed ones)",
        choices=[c.lower() for c in render.colormaps()],
    ),
    Arg(
        "--clip",
        "P",
        parse_clip,
        render.DEFAULT_CLIP,
        "percentile of |a| at the colormap's end, or none (default: 99)",
    ),
)

# LRP's rule set, SmoothGrad's, integrated gradients' and attention rollout's options.
_METHOD_OPTION_ARGS = (
    Group(
        "lrp",
        None,
        (
            Arg(
                "--composite",
                help=f"LRP rule set (default: {composites()[0]})",
                choices=composites(),
            ),
            Arg("--epsilon", "F", float, help="LRP epsilon rule's stabilizer (default: 1e-6)"),
            Arg("--gamma", "F", float, help="epsilon_gamma_box's gamma (default: 0.25)"),
        ),
    ),
    Group(
        "smoothing",
        "SmoothGrad / VarGrad over noisy copies (on when any of these is given)",
        (
            Arg("--smooth-samples", "N", _non_negative_int, help="noisy copies (default: 25)"),
            Arg(
                "--smooth-noise",
                "F",
                _non_negative_float,
                help="noise std as a fraction of the input's range (default: 0.15)",
            ),
            Arg("--smooth-kind", help="aggregation (default: smoothgrad)", choices=smooth_kinds()),
            Arg("--smooth-seed", "S", _non_negative_int, help="noise seed (default: 0)"),
        ),
    ),
    Group(
        "integrated gradients",
        None,
        (
            Arg("--ig-steps", "N", _non_negative_int, help="steps or draws (default: 50)"),
            Arg(
                "--ig-method",
                help="integration method (default: gausslegendre)",
                choices=integration_methods(),
            ),
            Arg(
                "--ig-baseline",
                help="baseline (default: zero, or images with --ig-baseline-image)",
                choices=baseline_kinds(),
            ),
            Arg(
                "--ig-blur-sigma",
                "PX",
                _non_negative_float,
                help="blur baseline's sigma in pixels (default: a tenth of the shorter side)",
            ),
            Arg(
                "--ig-samples",
                "N",
                _non_negative_int,
                help="uniform baseline: noise images (default: 1)",
            ),
            Arg(
                "--ig-baseline-image",
                "IMAGE",
                help="a baseline image (repeat for several)",
                action="append",
                dest="ig_images",
            ),
            Arg("--ig-seed", "S", _non_negative_int, help="seed of random baselines, draws"),
        ),
    ),
    Group(
        "attention rollout",
        None,
        (
            Arg(
                "--head-fusion",
                help="how each block's heads are fused (default: mean)",
                choices=("mean", "max", "min"),
            ),
            Arg(
                "--discard-ratio",
                "F",
                float,
                help="fraction of the smallest attention weights dropped, in [0, 1) (default: 0)",
            ),
        ),
    ),
)

EXPLAIN_ARGS = (
    Arg(
        "inputs",
        "INPUT",
        help="image files, folders (their images, recursively), globs, or - for paths on stdin",
        nargs="+",
    ),
    MODEL_ARG,
    Arg(
        "--method -m",
        "A,B,...",
        parse_methods,
        ["guided_backprop"],
        "one or more methods, comma-separated; grad-cam and grad_cam both work "
        f"({', '.join(cli_name(m) for m in methods())}; default: guided-backprop)",
    ),
    Arg(
        "--layer",
        "L",
        help=(
            "layer for layer methods (activations, grad-cam, guided-grad-cam); repeat for "
            "several activation layers (default: the model's Grad-CAM layer)"
        ),
        action="append",
        dest="layers",
    ),
    Arg(
        "--top-k-channels",
        "K",
        _non_negative_int,
        0,
        "activations: keep the K channels of largest mean activation (default: all)",
    ),
    OneOf(
        (
            Arg("--target", "N", int, help="class index to explain (default: the predicted)"),
            neuron_arg("explain a channel of a layer, or one neuron of it with :Y:X"),
        )
    ),
    Arg("--out -o", "DIR", help="output directory: DIR/<input>/...", required=True),
    Arg(
        "--format",
        "F,...",
        parse_formats,
        ["png"],
        "what to write: png (pictures), npy (raw arrays); default: png",
    ),
    switch("--save-array", "also write the raw arrays (as --format png,npy)"),
    switch("--float16", "receive the raw results as float16 (half the bytes)"),
    switch("--no-overlay", "draw maps alone in the model's input space, not over the input"),
    Arg("--size", "WxH", parse_picture_size, help="picture size (default: natural)"),
    switch("--colorbar", "draw each map's colorbar"),
    switch("--caption", "draw each map's caption"),
    switch("--panel", "also write DIR/<input>/panel.png: the input and every method side by side"),
    Arg(
        "--scale",
        default="shared",
        help="several methods: one scale per family (signed, unsigned) or each its own "
        "(default: shared)",
        choices=("shared", "own"),
    ),
    *PICTURE_ARGS,
    *_METHOD_OPTION_ARGS,
    Arg(
        "--jobs -j",
        "N",
        _positive_int,
        DEFAULT_JOBS,
        f"calls in flight, which the server batches (default: {DEFAULT_JOBS})",
    ),
    switch(
        "--skip-existing",
        "skip inputs whose outputs are all there (a rerun finishes an interrupted run)",
    ),
    QUIET_ARG,
    switch("--json", "print one JSON object per input and method (as manifest.jsonl has it)"),
)


# --- inputs and output names ---------------------------------------------------------------------


def collect_inputs(arguments: Sequence[str], stdin: IO[str] | None = None) -> list[Path]:
    """The image files the arguments name, in order, each once: files as they are, folders'
    images (recursively, sorted), glob matches (sorted), and for "-" the paths on stdin.

    Raises:
        FileNotFoundError: An argument names nothing (no file, folder or glob match).
        ValueError: There is no image at all.
    """
    found: list[Path] = []
    for arg in arguments:
        if arg == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            found.extend(_expand(line.strip()) for line in lines if line.strip())
            continue
        found.append(_expand(arg))
    seen: set[Path] = set()
    out: list[Path] = []
    for group in found:
        for path in group if isinstance(group, list) else [group]:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(path)
    if not out:
        raise ValueError(
            f"no images to explain in {' '.join(arguments)} (folders contribute their "
            f"{', '.join(IMAGE_SUFFIXES)} files)"
        )
    return out


def _expand(arg: str) -> Any:
    path = Path(arg)
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    if path.exists():
        return path
    if glob.has_magic(arg):
        matches = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        if matches:
            return matches
        raise FileNotFoundError(2, "no file matches the pattern", arg)
    raise FileNotFoundError(2, "No such file or directory", arg)


_UNSAFE = str.maketrans({c: "_" for c in '/\\:*?"<>| \t\n'})


def _file_part(name: str) -> str:
    return name.translate(_UNSAFE)


def output_keys(inputs: Sequence[Path]) -> list[str]:
    """Each input's folder name: its stem, or its stem and a hash of its path where two
    inputs share a stem, so that no two inputs ever write the same file."""
    stems = [_file_part(p.stem) or "input" for p in inputs]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [
        s if counts[s] == 1 else f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
        for s, p in zip(stems, inputs, strict=True)
    ]


def file_stem(method: str, args: argparse.Namespace) -> str:
    """<method>[-t<target>|-n<neuron>][-<layer>]: what the files of one method are called."""
    name = cli_name(method)
    if args.target is not None:
        name += f"-t{args.target}"
    elif args.neuron is not None:
        n = args.neuron
        name += f"-n{n.layer}-c{n.channel}" + ("" if n.y is None else f"-y{n.y}-x{n.x}")
    if args.layers and method in ("activations", "grad_cam", "guided_grad_cam"):
        name += "-" + "+".join(args.layers)
    options = method_options(args)
    if any(v is not None for v in options.values()):
        # Options change the result: their own files, named by a digest of what was asked.
        digest = hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[:8]
        name += f"-o{digest}"
    return _file_part(name)


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of lrp, SmoothGrad and integrated gradients given on the command line."""
    return {
        "composite": args.composite,
        "epsilon": args.epsilon,
        "gamma": args.gamma,
        "smooth": _smooth(args),
        "integrated_gradients": _integrated_gradients(args),
        "rollout": _rollout(args),
    }


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Writes a file whole or not at all: into a hidden temporary file beside it, then renamed
    over it, so that an interrupted run leaves no truncated file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda f: image.save(f, format="PNG", compress_level=6))


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


# --- one input ---------------------------------------------------------------------------------


@dataclass
class Work:
    """One input and the methods still to run on it."""

    path: Path
    key: str
    methods: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)


def _target_json(target: Any) -> Any:
    if isinstance(target, Neuron):
        return {"layer": target.layer, "channel": target.channel, "y": target.y, "x": target.x}
    return target


def record_of(path: Path, exp: Explanation, files: Sequence[Path]) -> dict[str, Any]:
    """What the manifest (and --json) says of one input and method."""
    return {
        "input": str(path),
        "model": exp.model,
        "method": exp.method,
        "target": _target_json(exp.target),
        "layer": exp.layer,
        "predictions": [
            {"index": p.index, "label": p.label, "score": round(p.score, 6)}
            for p in exp.predictions
        ],
        "input_region": list(exp.input_region) if exp.input_region else None,
        "files": [str(f) for f in files],
        "warnings": list(exp.warnings),
        "batch_size": exp.batch_size,
        "queue_ms": round(exp.queue_ms, 3),
        "compute_ms": round(exp.compute_ms, 3),
        "completeness": None if exp.completeness is None else dataclasses.asdict(exp.completeness),
    }


class Explainer:
    """Runs one `Work` item: its call, its pictures and arrays, its files."""

    def __init__(self, client: Client, args: argparse.Namespace, out: Path) -> None:
        self.client, self.args, self.out = client, args, out
        self.formats = set(args.format) | ({"npy"} if args.save_array else set())

    def main_file(self, work: Work, method: str) -> Path:
        """The file written last for a method: its existence means the method is done."""
        ext = ".png" if "png" in self.formats else ".npy"
        return self.out / work.key / f"{file_stem(method, self.args)}{ext}"

    def panel_file(self, work: Work) -> Path:
        return self.out / work.key / f"panel{_panel_suffix(self.args)}.png"

    def todo(self, work: Work, all_methods: Sequence[str]) -> list[str]:
        """The methods whose outputs are not all there (the panel needs every method)."""
        missing = [m for m in all_methods if not self.main_file(work, m).exists()]
        if self.args.panel and len(all_methods) > 1 and not self.panel_file(work).exists():
            return list(all_methods)
        return missing

    def run(self, work: Work) -> Work:
        args = self.args
        common: dict[str, Any] = {
            "model": args.model,
            "target": args.neuron if args.neuron is not None else args.target,
            "layer": args.layers,
        }
        dtype = "float16" if args.float16 else "float32"
        image = _load(work.path)  # a file that is no image fails here, before any call
        if len(work.methods) == 1:
            options = {k: v for k, v in method_options(args).items() if v is not None}
            exp = self.client.explain(
                str(work.path),
                method=work.methods[0],
                render=False,
                array_dtype=dtype,
                top_k_channels=args.top_k_channels,
                **common,
                **options,
            )
            results = Comparison({exp.method: exp}, source=str(work.path))
        else:
            results = self.client.compare(
                str(work.path),
                work.methods,
                array_dtype=dtype,
                top_k_channels=args.top_k_channels,
                **common,
            )
        folder = self.out / work.key
        folder.mkdir(parents=True, exist_ok=True)
        scales = results.scales(
            "shared" if args.scale == "shared" else None, cmap=args.cmap, clip=args.clip
        )
        for method, exp in results.explanations.items():
            files = self._write(folder, method, exp, image, scales[method])
            work.records.append(record_of(work.path, exp, files))
        if args.panel and len(results) > 1:
            panel = self.panel_file(work)
            _save_png(panel, results.composite(image, None if args.scale == "own" else "shared"))
            for record in work.records:
                record["panel"] = str(panel)
        return work

    def _write(
        self, folder: Path, method: str, exp: Explanation, image: Image.Image, scale: render.Scale
    ) -> list[Path]:
        args = self.args
        stem = file_stem(method, args)
        files: list[Path] = []
        later: list[tuple[Path, Callable[[], None]]] = []  # the main file goes last
        if "npy" in self.formats:
            assert exp.array is not None
            main_npy = folder / f"{stem}.npy"
            for name, arr in exp.arrays.items():
                if arr is exp.array:
                    continue
                path = folder / f"{stem}.{_file_part(name)}.npy"
                _save_npy(path, arr)
                files.append(path)
            later.append((main_npy, lambda: _save_npy(main_npy, exp.array)))  # type: ignore[arg-type]
        if "png" in self.formats:
            overlay = not args.no_overlay
            opts: dict[str, Any] = {
                "size": args.size,
                "colorbar": args.colorbar,
                "caption": args.caption,
                "scale": scale,
            }
            pic = exp.picture(image, overlay=overlay, **opts).image
            if method == "activations":
                layers = [n for n, a in exp.arrays.items() if a.ndim == 3 and ".channels" not in n]
                for name in layers:
                    grid = exp.grid(
                        name,
                        cmap=args.cmap,
                        clip=args.clip,
                        colorbar=args.colorbar,
                        caption=args.caption,
                    )
                    path = folder / f"{stem}.{_file_part(name)}.grid.png"
                    _save_png(path, grid)
                    files.append(path)
                    if name != exp.layer:
                        heat = _layer_heatmap(exp, name, image, overlay, args, scale=None)
                        path = folder / f"{stem}.{_file_part(name)}.png"
                        _save_png(path, heat)
                        files.append(path)
            main_png = folder / f"{stem}.png"
            later.append((main_png, lambda: _save_png(main_png, pic)))
        for path, write in later:
            write()
            files.append(path)
        return files


def _layer_heatmap(
    exp: Explanation,
    layer: str,
    image: Image.Image,
    overlay: bool,
    args: argparse.Namespace,
    scale: render.Scale | None,
) -> Image.Image:
    opts = render.Options(
        size=args.size,
        cmap=args.cmap,
        clip=args.clip,
        overlay=overlay,
        colorbar=args.colorbar,
        caption=args.caption,
        scale=scale,
    )
    title = f"{render.caption('activations', layer=layer)} · mean"
    return render.draw(
        "activations",
        exp.arrays[layer],
        opts,
        image=image if overlay else None,
        region=exp.input_region,
        title=title,
    ).image


def _panel_suffix(args: argparse.Namespace) -> str:
    stem = file_stem("x", args)
    return stem[1:]


def _load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


# --- the run -----------------------------------------------------------------------------------


def _check_server(client: Client, args: argparse.Namespace) -> ModelInfo:
    """Refuses the run up front, before any output exists: the model and methods served."""
    models = client.models()
    if not models:
        raise NotFound("the server lists no models")
    if args.model is None:
        info = models[0]
    else:
        info = next((m for m in models if m.name == args.model), None)  # type: ignore[assignment]
        if info is None:
            served = ", ".join(m.name for m in models)
            raise NotFound(f"model '{args.model}' is not served; served models: {served}")
    unserved = [m for m in args.method if info.methods and m not in info.methods]
    if unserved:
        raise InvalidArgument(
            f"model '{info.name}' does not serve {', '.join(cli_name(m) for m in unserved)}; "
            f"it serves {', '.join(cli_name(m) for m in info.methods)}"
        )
    return info


def _progress(total: int, quiet: bool, unit: str) -> Any:
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, CI).
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=True if quiet else None)


def _print(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def _ctrl_c_stops_the_queue() -> Iterator[threading.Event]:
    """While the block runs, a first Ctrl-C only sets the event it yields: the run loop sees
    it between steps and starts nothing more. A KeyboardInterrupt raised at any bytecode
    could land between a finished input's files and its manifest line, or inside the
    executor's `submit` while it holds the lock that `shutdown` then waits for forever. A
    second Ctrl-C raises KeyboardInterrupt: what is still in flight then goes unrecorded (its
    files are written whole or not at all) and the run ends once those calls return. (Off
    the main thread, where no signal handler can be set, Ctrl-C is not this loop's to see.)"""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def on_sigint(signum: int, frame: object) -> None:
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def run_explain(
    client: Client,
    args: argparse.Namespace,
    report: Callable[[BaseException, str], str],
) -> int:
    """Runs `deepvis explain`; returns the exit status (0, or 1 when any input failed).

    Raises:
        Interrupted: Ctrl-C, or stdout closed: what was in flight finished first.
    """
    given = [k for k, v in method_options(args).items() if v is not None]
    if given and len(args.method) > 1:
        raise ValueError(
            f"{', '.join(given)} apply to one method: give a single --method with them"
        )
    inputs = collect_inputs(args.inputs)
    keys = output_keys(inputs)
    out = Path(args.out)
    explainer = Explainer(client, args, out)
    work: list[Work] = []
    skipped = 0
    for path, key in zip(inputs, keys, strict=True):
        item = Work(path, key, list(args.method))
        todo = explainer.todo(item, args.method) if args.skip_existing else list(args.method)
        if not todo:
            skipped += 1
            continue
        item.methods = todo
        work.append(item)
    if not work:
        print(f"deepvis: all {len(inputs)} inputs' outputs exist in {out}/", file=sys.stderr)
        return 0
    _check_server(client, args)  # may refuse the run: nothing written yet
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    failed, done = 0, 0
    lock = threading.Lock()
    bar = _progress(len(work), args.quiet, "input")

    def finished(item: Work) -> None:
        with manifest.open("a", encoding="utf-8") as f:
            for record in item.records:
                f.write(json.dumps(record) + "\n")
        for record in item.records:
            if args.json:
                _print(json.dumps(record))
            else:
                top = record["predictions"][0] if record["predictions"] else None
                top_text = f"{top['label']} ({top['score']:.3f})" if top else "-"
                c = record["completeness"]
                # LRP's conservation, integrated gradients' completeness.
                sums = (
                    ""
                    if c is None
                    else f"  sum={c['attribution_sum']:.6g} score={c['score']:.6g} "
                    f"baseline={c['baseline_score']:.6g} delta={c['delta']:.3g}"
                )
                _print(
                    f"{record['input']}  {cli_name(record['method'])}  top={top_text}  "
                    f"target={_format_target(record['target'])}{sums}  "
                    f"-> {', '.join(record['files'])}"
                )

    pending: dict[Future[Work], Work] = {}
    queue = iter(work)
    stop: BaseException | None = None
    with (
        _ctrl_c_stops_the_queue() as ctrl_c,
        ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="deepvis") as pool,
    ):
        try:
            while True:
                if stop is None and ctrl_c.is_set():
                    # What is in flight finishes (each file whole) and is recorded; after a
                    # second Ctrl-C it is no longer recorded.
                    stop = KeyboardInterrupt()
                while stop is None and len(pending) < args.jobs:
                    upcoming = next(queue, None)
                    if upcoming is None:
                        break
                    pending[pool.submit(explainer.run, upcoming)] = upcoming
                if not pending:
                    break
                ready, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in ready:
                    item = pending.pop(future)
                    try:
                        future.result()
                    except (DeepvisError, OSError, ValueError, TypeError) as err:
                        failed += 1
                        with lock:
                            bar.write(report(err, f"{item.path}: "), file=sys.stderr)
                    else:
                        done += 1
                        try:
                            finished(item)
                        except BrokenPipeError:
                            stop = BrokenPipeError()
                    bar.update(1)
        except KeyboardInterrupt as e:  # the second Ctrl-C: what is in flight goes unrecorded
            stop = e
            pool.shutdown(wait=False, cancel_futures=True)
        finally:
            bar.close()
        if stop is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            left = len(work) - done - failed
            raise Interrupted(done + skipped, left, pipe=isinstance(stop, BrokenPipeError))
    if failed:
        print(
            f"deepvis: {failed} of {len(work)} inputs failed; {done} written"
            + (f", {skipped} skipped (already there)" if skipped else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def _format_target(target: Any) -> str:
    if isinstance(target, dict):
        where = "" if target["y"] is None else f"[{target['y']},{target['x']}]"
        return f"{target['layer']}:{target['channel']}{where}"
    return "-" if target is None else str(target)


def read_json_lines(data: str) -> Iterable[dict[str, Any]]:
    """Reads back what --json printed (for scripts and tests)."""
    return (json.loads(line) for line in io.StringIO(data) if line.strip())
