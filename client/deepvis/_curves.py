"""Line plots of an evaluation's curves, drawn with Pillow alone (no matplotlib)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["curve_plot"]

# One colour per series, then again; each input's own curve is drawn faded.
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
_BACKGROUND = (255, 255, 255)
_AXES = (90, 90, 90)
_MARGIN = (34, 10, 10, 28)  # left, top, right, bottom


def _faded(colour: tuple[int, int, int], alpha: float = 0.25) -> tuple[int, int, int]:
    r, g, b = (int(c * alpha + 255 * (1 - alpha)) for c in colour)
    return (r, g, b)


def _rows(values: np.ndarray | Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"a series must be [points] or [inputs, points], got {arr.shape}")
    return arr


def curve_plot(
    series: Mapping[str, np.ndarray | Sequence[float]],
    *,
    x: np.ndarray | Sequence[float] | None = None,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (320, 200),
) -> Image.Image:
    """Draws curves as an RGB line plot.

    Args:
        series: Name -> values, [points] or [inputs, points]: each input's curve is drawn
            faded and their mean (NaN points left out) in full colour, named in the legend.
        x: The x value of each point; None: 0, 1, 2, ...
        title: Drawn at the top.
        x_label: Drawn under the x axis.
        y_label: Drawn beside the legend.
        size: (width, height) in pixels.

    Returns:
        The picture. The y axis spans [0, 1], widened to the data's range when it leaves it
        (a correlation down to -1).

    Raises:
        ValueError: No series, a series of another shape, or `x` of another length.
    """
    if not series:
        raise ValueError("curve_plot needs at least one series")
    rows = {name: _rows(v) for name, v in series.items()}
    points = {r.shape[1] for r in rows.values()}
    if len(points) != 1:
        raise ValueError(f"every series needs the same number of points, got {sorted(points)}")
    n = points.pop()
    xs = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    if xs.shape != (n,):
        raise ValueError(f"x has {xs.shape} values for {n} points")
    finite = np.concatenate([r[np.isfinite(r)] for r in rows.values()] + [np.zeros(0)])
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    x_lo, x_hi = float(xs.min()), float(xs.max())
    if x_hi == x_lo:
        x_hi = x_lo + 1.0

    width, height = size
    image = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = _MARGIN
    if title:
        top += 12
    x0, y0, x1, y1 = left, top, width - right, height - bottom

    def px(xv: float, yv: float) -> tuple[float, float]:
        return (
            x0 + (xv - x_lo) / (x_hi - x_lo) * (x1 - x0),
            y1 - (yv - lo) / (hi - lo) * (y1 - y0),
        )

    draw.rectangle((x0, y0, x1, y1), outline=_AXES)
    for yv in sorted({lo, 0.0, hi} | ({0.5} if lo <= 0.5 <= hi else set())):
        _, yp = px(x_lo, yv)
        draw.line((x0 - 3, yp, x0, yp), fill=_AXES)
        draw.text((2, yp - 5), f"{yv:.2g}", fill=_AXES, font=font)
    for xv in (x_lo, x_hi):
        xp, _ = px(xv, lo)
        draw.line((xp, y1, xp, y1 + 3), fill=_AXES)
        text = f"{xv:g}"
        draw.text((xp - 3 * len(text), y1 + 4), text, fill=_AXES, font=font)
    if x_label:
        draw.text(((x0 + x1) / 2 - 3 * len(x_label), y1 + 14), x_label, fill=_AXES, font=font)
    if title:
        draw.text((x0, 2), title, fill=(0, 0, 0), font=font)

    def polyline(values: np.ndarray, colour: tuple[int, int, int], width_px: int) -> None:
        segment: list[tuple[float, float]] = []
        for xv, yv in zip(xs, values, strict=True):
            if np.isfinite(yv):
                segment.append(px(float(xv), float(yv)))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=colour, width=width_px)
            segment = []
        if len(segment) > 1:
            draw.line(segment, fill=colour, width=width_px)
        elif len(segment) == 1:
            cx, cy = segment[0]
            draw.ellipse((cx - 1, cy - 1, cx + 1, cy + 1), fill=colour)

    legend_y = y0 + 3
    for i, (name, r) in enumerate(rows.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        if r.shape[0] > 1:
            for row in r:
                polyline(row, _faded(colour), 1)
        with warnings.catch_warnings():  # "mean of empty slice": an all-NaN point stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(r, axis=0) if np.isfinite(r).any() else r[0]
        polyline(mean, colour, 2)
        draw.line((x1 - 70, legend_y + 5, x1 - 58, legend_y + 5), fill=colour, width=2)
        draw.text((x1 - 54, legend_y), name[:12], fill=(0, 0, 0), font=font)
        legend_y += 11
    if y_label:
        draw.text((x1 - 70, legend_y), y_label[:14], fill=_AXES, font=font)
    return image
