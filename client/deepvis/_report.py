"""`deepvis report`: one self-contained HTML page comparing methods on images.

Everything the page shows is inside the file: pictures as data: URIs, inline CSS, and a
scale toggle made of radio buttons and CSS (no script); it requests nothing from anywhere.
With `--checks`, one `evaluate` call adds each method's deletion and insertion curves beside
its picture of every image, and its randomization curve with its reading once per method.
"""

from __future__ import annotations

import argparse
import datetime
import html
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepvis import __version__, render
from deepvis._cli_args import Arg, switch
from deepvis._cli_explain import (
    _check_server,
    _load,
    _progress,
    atomic_write,
    cli_name,
    collect_inputs,
)
from deepvis._client import Client
from deepvis._models import Comparison, Evaluation, PerturbationCurve

__all__ = ["CHECK_ARGS", "build_report", "run_report"]

# A method passes the randomization check when its map, once the top layer is re-initialized,
# keeps a Spearman correlation with the trained model's below this (as the README's table).
PASS_BELOW = 0.5
# The metrics `--checks` computes, and its default deletion and insertion steps: few enough to
# stay quick on small models, enough for the curves' shape.
CHECK_METRICS = ("randomization", "deletion", "insertion")
DEFAULT_CHECK_STEPS = 16
# Methods that attribute no class, which evaluate refuses: shown without checks.
NOT_CHECKED = ("activations",)
_PLOT_SIZE = (240, 150)

# The scales a reader can switch between, by the toggle's value.
SCALES = {
    "own": "each map its own scale",
    "images": "one scale per method, across images",
    "methods": "one scale per family (signed, unsigned), across methods",
}

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       padding: 16px; color: #1a1a1a; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 6px; overflow-wrap: anywhere; }
.meta, .legend, .toggle { margin: 8px 0 12px; }
.meta dt { font-weight: 600; float: left; clear: left; margin-right: 6px; }
.meta dd { margin: 0 0 2px; overflow-wrap: anywhere; }
.toggle label { margin: 0 8px 6px 0; padding: 3px 8px; border: 1px solid #888;
                border-radius: 4px; display: inline-block; cursor: pointer; }
input[name=scale] { position: absolute; opacity: 0; width: 1px; height: 1px; }
#s-own:checked ~ header label[for=s-own], #s-images:checked ~ header label[for=s-images],
#s-methods:checked ~ header label[for=s-methods] { background: #1a1a1a; color: #fff; }
#s-own:focus-visible ~ header label[for=s-own],
#s-images:focus-visible ~ header label[for=s-images],
#s-methods:focus-visible ~ header label[for=s-methods] { outline: 2px solid #06c; }
.legend figure { display: inline-block; margin: 0 16px 8px 0; vertical-align: top; }
.image { border-top: 1px solid #ddd; padding: 12px 0; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; image-rendering: pixelated; display: block; }
figcaption { font-size: 12px; color: #333; max-width: 320px; overflow-wrap: anywhere; }
.preds { font-size: 12px; margin: 4px 0 0; padding-left: 18px; }
.cell .v { display: none; }
#s-own:checked ~ main .v-own, #s-images:checked ~ main .v-images,
#s-methods:checked ~ main .v-methods { display: block; }
.note { color: #a00; font-size: 12px; }
.checks figure, figure.checks { display: inline-block; margin: 0 12px 8px 0; vertical-align: top; }
.pass { color: #060; font-weight: 600; }
.fail { color: #a00; font-weight: 600; }
"""


# `deepvis report`'s sanity-check options (see _cli_args).
CHECK_ARGS = (
    switch(
        "--checks",
        "also evaluate the methods on the images (randomization, cascading; deletion; "
        "insertion) and show the curves beside the pictures, with AUCs and pass/fail",
    ),
    Arg(
        "--check-steps",
        "N",
        int,
        DEFAULT_CHECK_STEPS,
        "deletion and insertion steps of --checks (default: %(default)s)",
    ),
    Arg("--seed", "N", int, 0, "seed of --checks' re-initialized layers (default: %(default)s)"),
)


def _one(curve: PerturbationCurve, i: int) -> PerturbationCurve:
    return PerturbationCurve(curve=curve.curve[i : i + 1], auc=curve.auc[i : i + 1])


def _auc(value: float, method: str, image: int, kind: str) -> str:
    return (
        f'<span class="auc" data-method="{html.escape(method)}" data-image="{image}" '
        f'data-kind="{kind}" data-value="{value!r}">{value:.3f}</span>'
    )


def _verdict(rho: float) -> str:
    if rho != rho:  # NaN: a constant map has no rank correlation
        return '<span class="fail">no reading (a constant map)</span>'
    if rho < PASS_BELOW:
        return f'<span class="pass">passes</span> (below {PASS_BELOW:g})'
    return f'<span class="fail">fails</span> (not below {PASS_BELOW:g})'


def _check_figures(checks: Evaluation, method: str, image: int, name: str) -> str:
    """The deletion and insertion curves of one method on one image, with their AUCs."""
    ev = checks.methods.get(method)
    if ev is None:
        return ""
    out = []
    for kind, curve, better in (
        ("deletion", ev.deletion, "lower is better"),
        ("insertion", ev.insertion, "higher is better"),
    ):
        if curve is None:
            continue
        plot = _one(curve, image).plot(f"{kind}: {cli_name(method)}", size=_PLOT_SIZE)
        auc = float(curve.auc[image])
        out.append(
            f'<figure class="checks">{_img(plot, f"{kind} curve of {cli_name(method)} on {name}")}'
            f"<figcaption>{kind} AUC {_auc(auc, method, image, kind)} ({better})"
            "</figcaption></figure>"
        )
    return "".join(out)


def _randomization_section(checks: Evaluation, methods: list[str], n_images: int) -> str:
    """Once per method: its cascading randomization curve and the pass/fail reading."""
    figures = []
    for m in methods:
        r = checks.methods[m].randomization if m in checks.methods else None
        if r is None or r.spearman is None:
            continue
        top = r.spearman[:, 0].astype(np.float64)
        finite = top[np.isfinite(top)]
        rho = float(finite.mean()) if finite.size else float("nan")
        plot = r.plot(f"randomization: {cli_name(m)}", size=_PLOT_SIZE)
        figures.append(
            f"<figure>{_img(plot, f'randomization curve of {cli_name(m)}')}<figcaption>"
            f"{html.escape(cli_name(m))}: Spearman after the top layer "
            f"({html.escape(r.layers[0])}) re-initialized, mean of {finite.size} of "
            f'{n_images} images: <span class="rho" data-method="{html.escape(m)}" '
            f'data-value="{rho!r}">{rho:.2f}</span> — {_verdict(rho)}'
            "</figcaption></figure>"
        )
    layers = " → ".join(checks.layers)
    return (
        '<div class="checks"><h2>Sanity checks</h2><p class="legend">'
        f"model-parameter randomization, cascading top-down ({html.escape(layers)}); a method "
        f"passes when its map's Spearman correlation with the trained model's, once the top "
        f"layer is re-initialized, is below {PASS_BELOW:g}. Deletion and insertion in "
        f"{checks.steps} steps, beside each picture.</p>{''.join(figures)}</div>"
    )


def _img(image: Image.Image, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<img{klass} src="{render.data_uri(image)}" alt="{html.escape(alt)}" '
        f'width="{image.width}" height="{image.height}">'
    )


def _cell_picture(
    comparison: Comparison,
    method: str,
    scale: render.Scale,
    source: Image.Image,
    args: argparse.Namespace,
) -> Image.Image:
    exp = comparison[method]
    pic = exp.picture(source, scale=scale)
    big, _ = render.zoom(pic.image)
    return render.figure(big, scale=pic.scale, note=pic.note)


def build_report(
    results: list[tuple[Path, Comparison, float]],
    args: argparse.Namespace,
    *,
    server: str,
    model: Any,
    seconds: float,
    checks: Evaluation | None = None,
) -> str:
    """The page: a card per image, with its predictions and target, and its methods' maps in
    each of the scales (one shown at a time by the toggle); with `checks` (an evaluation of
    the methods on the same images, in order), each method's deletion and insertion curves
    beside its picture and its randomization curve once."""
    methods = list(args.method)
    own: dict[tuple[int, str], render.Scale] = {}
    across_methods: dict[tuple[int, str], render.Scale] = {}
    for i, (_, comparison, _) in enumerate(results):
        for m, s in comparison.scales(None, cmap=args.cmap, clip=args.clip).items():
            own[(i, m)] = s
        for m, s in comparison.scales("shared", cmap=args.cmap, clip=args.clip).items():
            across_methods[(i, m)] = s
    across_images = {
        m: render.shared_scale([own[(i, m)] for i in range(len(results))]) for m in methods
    }
    cards = []
    for i, (path, comparison, took) in enumerate(results):
        source = _load(path)
        first = next(iter(comparison))
        target = render.caption("", first.target, first.predictions).lstrip(" ·") or "-"
        preds = "".join(
            f"<li>{html.escape(p.label)} [{p.index}] — {p.score:.3f}</li>"
            for p in first.predictions[:5]
        )
        thumb, factor = render.zoom(source.convert("RGB"))
        figures = [
            f"<figure>{_img(thumb, f'input {path.name}')}"
            f"<figcaption>{html.escape(render.shown('input', factor))}"
            f"<br>target: {html.escape(target)}</figcaption>"
            f'<ol class="preds">{preds}</ol></figure>'
        ]
        for m in methods:
            exp = comparison[m]
            variants = {
                "own": own[(i, m)],
                "images": across_images[m].with_cmap(own[(i, m)].cmap),
                "methods": across_methods[(i, m)],
            }
            imgs = "".join(
                _img(
                    _cell_picture(comparison, m, scale, source, args),
                    f"{cli_name(m)} of {path.name}, {SCALES[key]}",
                    f"v v-{key}",
                )
                for key, scale in variants.items()
            )
            pic = exp.picture(source)
            shown = render.zoom(pic.image)[1]
            notes = "".join(f'<div class="note">{html.escape(w)}</div>' for w in exp.warnings)
            timing = (
                f"batch of {exp.batch_size}, queued {exp.queue_ms:.1f} ms, "
                f"computed {exp.compute_ms:.1f} ms"
            )
            figures.append(
                f'<figure class="cell">{imgs}<figcaption>'
                f"{html.escape(render.shown(exp.caption(), shown))}"
                + (f"<br>{html.escape(pic.map.reduction)}" if pic.map.reduction else "")
                + f"<br>{html.escape(timing)}</figcaption>{notes}</figure>"
            )
            if checks is not None:
                figures.append(_check_figures(checks, m, i, path.name))
        cards.append(
            f'<section class="image"><h2>{html.escape(str(path))}</h2>'
            f'<div class="row">{"".join(figures)}</div>'
            f'<div class="meta">round trip {took * 1000:.0f} ms</div></section>'
        )
    legend = []
    for signed in (False, True):
        cmap = args.cmap or (render.DEFAULT_SIGNED_CMAP if signed else render.DEFAULT_UNSIGNED_CMAP)
        scale = render.Scale(signed=signed, vmax=1.0, peak=1.0, cmap=render.colormaps()[0])
        scale = scale.with_cmap(cmap)
        bar = render.colorbar(scale, 96)
        what = "signed maps: -bound .. 0 .. +bound" if signed else "unsigned maps: 0 .. bound"
        legend.append(
            f"<figure>{_img(bar, f'{cmap} colormap legend')}"
            f"<figcaption>{html.escape(cmap)} — {html.escape(what)}; bound = "
            f"{'p' + format(args.clip, 'g') + ' of |a|' if args.clip else 'max |a|'}"
            "</figcaption></figure>"
        )
    toggles = "".join(
        f'<input type="radio" name="scale" id="s-{key}"{" checked" if key == "own" else ""}>'
        for key in SCALES
    )
    labels = "".join(
        f'<label for="s-{key}">{html.escape(text)}</label>' for key, text in SCALES.items()
    )
    title = args.title or f"deepvis: {', '.join(cli_name(m) for m in methods)} on {model.name}"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = [
        ("server", server),
        (
            "model",
            f"{model.name} ({model.arch}), input {model.channels}x{model.height}x"
            f"{model.width}" + (f", resize {model.resize} + centre crop" if model.resize else ""),
        ),
        ("methods", ", ".join(cli_name(m) for m in methods)),
        ("images", str(len(results))),
        ("time", f"{seconds:.2f} s for all; written {when} by deepvis {__version__}"),
    ]
    if checks is not None:
        meta.insert(
            -1,
            (
                "checks",
                f"evaluate: {', '.join(CHECK_METRICS)}, {checks.steps} steps, seed "
                f"{getattr(args, 'seed', 0)}, computed {checks.compute_ms / 1000:.2f} s",
            ),
        )
    section = "" if checks is None else _randomization_section(checks, methods, len(results))
    meta_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in meta)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"{toggles}<header><h1>{html.escape(title)}</h1>"
        f'<dl class="meta">{meta_html}</dl>'
        f'<div class="toggle">scale: {labels}</div>'
        f'<div class="legend">{"".join(legend)}</div></header>'
        f"<main>{section}{''.join(cards)}</main></body></html>\n"
    )


def run_report(client: Client, args: argparse.Namespace, server: str) -> int:
    """Runs `deepvis report`: every image compared across the methods, one HTML file."""
    inputs = collect_inputs(args.inputs)
    if len(args.method) < 1:
        raise ValueError("name at least one method")
    checking = bool(getattr(args, "checks", False))
    if checking and args.neuron is not None:
        raise ValueError("--checks evaluates a class's maps; use --target, not --neuron")
    checked = [m for m in args.method if m not in NOT_CHECKED]
    if checking and not checked:
        raise ValueError("--checks needs a method that attributes a class (not activations alone)")
    model = _check_server(client, args)
    target = args.neuron if args.neuron is not None else args.target
    bar = _progress(len(inputs), args.quiet, "image")
    start = time.perf_counter()

    def one(path: Path) -> tuple[Path, Comparison, float]:
        t0 = time.perf_counter()
        result = client.compare(
            str(path), args.method, model=model.name, target=target, layer=args.layers
        )
        bar.update(1)
        return path, result, time.perf_counter() - t0

    try:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="deepvis") as pool:
            results = list(pool.map(one, inputs))
    finally:
        bar.close()
    checks = None
    if checking:
        layers = args.layers or []
        checks = client.evaluate(
            [str(p) for p in inputs],
            model=model.name,
            method=checked,
            metrics=list(CHECK_METRICS),
            classes=target,
            layer=layers[0] if len(layers) == 1 else None,
            steps=args.check_steps,
            seed=args.seed,
            randomization="cascading",
        )
    page = build_report(
        results,
        args,
        server=server,
        model=model,
        seconds=time.perf_counter() - start,
        checks=checks,
    )
    out = Path(args.out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(page.encode("utf-8")))
    print(f"{out}  {len(results)} images x {len(args.method)} methods", file=sys.stdout)
    return 0
