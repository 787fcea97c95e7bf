"""The deepvis command line: a thin shell over `deepvis.Client`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deepvis import __version__
from deepvis._client import Client
from deepvis._convert import Explanation, ModelInfo, Neuron, methods
from deepvis._exceptions import DeepvisError

__all__ = ["main"]

_DEFAULT_SERVER = "127.0.0.1:50051"
_SERVER_ENV = "DEEPVIS_SERVER"
_MAX_WORKERS = 8

# Errors a user can act on; anything else is a bug and keeps its traceback.
_REPORTED = (DeepvisError, OSError, ValueError, TypeError)


def _cli_name(method: str) -> str:
    return method.replace("_", "-")


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="ADDR",
        help=f"server host:port (default: ${_SERVER_ENV}, else {_DEFAULT_SERVER})",
    )
    common.add_argument(
        "--timeout", type=float, metavar="S", help="deadline of each call in seconds"
    )

    parser = argparse.ArgumentParser(
        prog="deepvis", description="Show what an image classifier served by deepvis sees."
    )
    parser.add_argument("--version", action="version", version=f"deepvis {__version__}")
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
        description="Explain images and write DIR/<stem>.<method>.png for each.",
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
        "--target",
        type=int,
        metavar="N",
        help="class index to explain (default: the predicted class)",
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output directory")
    explain.add_argument(
        "--save-array", action="store_true", help="also write the raw float32 result as .npy"
    )
    explain.add_argument(
        "--float16", action="store_true", help="receive the raw result as float16 (half the bytes)"
    )
    return parser


def _report(err: BaseException, prefix: str = "") -> None:
    # One line, so that scripts can grep it and a batch of errors stays readable.
    message = " ".join(str(err).split())
    print(f"{type(err).__name__}: {prefix}{message}", file=sys.stderr)


def _format_model(info: ModelInfo) -> str:
    names = ",".join(_cli_name(m) for m in info.methods) or "-"
    return (
        f"{info.name}  arch={info.arch}  classes={info.num_classes}  "
        f"input={info.channels}x{info.height}x{info.width}  methods={names}"
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


def _explain_one(
    client: Client, image: str, png: Path, args: argparse.Namespace
) -> tuple[Explanation, list[Path]]:
    result = client.explain(
        image,
        model=args.model,
        method=args.method,
        target=args.target,
        render=True,
        array_dtype="float16" if args.float16 else "float32",
        array=args.save_array,
    )
    if result.image is None:
        raise ValueError("the server sent no rendered picture")
    result.image.save(png, format="PNG")
    written = [png]
    if args.save_array:
        if result.array is None:
            raise ValueError("the server sent no result array")
        npy = png.with_suffix(".npy")
        np.save(npy, result.array)
        written.append(npy)
    return result, written


def _run_explain(client: Client, args: argparse.Namespace) -> int:
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
                _report(err, prefix=f"{image}: ")
                continue
            top = result.predictions[0] if result.predictions else None
            top_text = f"{top.label} ({top.score:.3f})" if top else "-"
            print(
                f"{image}  top={top_text}  target={_format_target(result.target)}  "
                f"-> {', '.join(str(p) for p in written)}  batch={result.batch_size}"
            )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Runs the deepvis command line.

    Args:
        argv: The arguments after the program name; None reads `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 1 when a call or a file failed (argparse exits 2 on
        usage errors).
    """
    args = _build_parser().parse_args(argv)
    server = args.server or os.environ.get(_SERVER_ENV) or _DEFAULT_SERVER
    try:
        with Client(server, timeout=args.timeout) as client:
            if args.command == "models":
                return _run_models(client)
            return _run_explain(client, args)
    except _REPORTED as err:
        _report(err)
        return 1
