"""Pictures of deepvis results: the one renderer of the server, the client, the CLI and reports.

Everything here is numpy and Pillow. The server draws the PNGs it sends with these functions,
and the client redraws raw arrays with them, so a picture drawn locally from a result's array
is the server's picture, pixel for pixel, and can be redrawn with another colormap, scale or
overlay without computing the result again.

Two families of maps:

- unsigned maps (Grad-CAM, saliency, mean activation, |attribution|) are drawn in a
  perceptually uniform sequential colormap (`inferno` by default), from 0 at the bottom of
  the colormap to the scale's bound at its top;
- signed maps (guided backpropagation, deconvolution, guided Grad-CAM, integrated gradients)
  in a diverging colormap (`RdBu_r` by default), symmetric: zero is the colormap's middle
  entry, -bound and +bound its ends.

The bound is the 99th percentile of |a| by default (`clip`; None or 100 take the largest
|a|), or a `Scale` shared by several maps (`shared_scale`). A map that is zero everywhere
(largest |a| below `ZERO_BELOW`) is drawn neutral (the colormap's zero colour) with a note
that says so, instead of having its noise stretched over the whole colormap.

The colormaps are matplotlib's own tables (vendored in colormaps.json by tools/colormaps.py;
a test checks them against matplotlib), so a picture uses the same colours matplotlib would.

    >>> from deepvis import render
    >>> pic = render.draw("grad_cam", cam)                 # cam: a [H, W] map
    >>> pic.image, pic.scale.vmax, pic.note
    >>> render.draw("grad_cam", cam, image=photo, region=region)  # over the photo sent
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CLIP",
    "DEFAULT_SIGNED_CMAP",
    "DEFAULT_UNSIGNED_CMAP",
    "ZERO_BELOW",
    "FlatMapWarning",
    "Map",
    "MapStyle",
    "Options",
    "Picture",
    "Region",
    "Scale",
    "caption",
    "color_base",
    "colorbar",
    "colorize",
    "colormap",
    "colormaps",
    "composite",
    "data_uri",
    "draw",
    "eight_bit",
    "figure",
    "gray_base",
    "grid",
    "map_of",
    "pixels_image",
    "resample",
    "scale_of",
    "shared_scale",
    "strip",
    "style_of",
    "shown",
    "to_png",
    "zoom",
]

DEFAULT_UNSIGNED_CMAP = "inferno"
DEFAULT_SIGNED_CMAP = "RdBu_r"
# Percentile of |a| that maps to the colormap's end (PAIR saliency's choice): one outlier
# pixel then does not make the rest of the map dark.
DEFAULT_CLIP = 99.0
# A map whose largest |a| is below this is zero for the picture: drawn neutral, with a note.
ZERO_BELOW = 1e-7
# How much of the colour an overlay shows over its base (pytorch-grad-cam, Captum, Xplique).
DEFAULT_ALPHA = 0.5

# The part of an image a map covers, in the image's own pixels: x, y of the top-left
# corner, width, height (an answer's input_region).
Region = tuple[float, float, float, float]


class FlatMapWarning(UserWarning):
    """A map is zero everywhere (below `ZERO_BELOW`), so its picture is drawn neutral."""


# --- colormaps ------------------------------------------------------------------------------


@functools.cache
def _tables() -> dict[str, tuple[str, str, np.ndarray]]:
    """lower-case name -> (name, kind, uint8 RGB table [N, 3]), read once from the package."""
    text = resources.files("deepvis").joinpath("colormaps.json").read_text(encoding="utf-8")
    out = {}
    for name, entry in json.loads(text)["maps"].items():
        rgb = np.frombuffer(bytes.fromhex(entry["rgb"]), dtype=np.uint8).reshape(-1, 3)
        rgb.setflags(write=False)
        out[name.lower()] = (name, entry["kind"], rgb)
    return out


def colormaps() -> list[str]:
    """The colormaps pictures can use: sequential ones first, then diverging ones.

    Returns:
        matplotlib's names: inferno, viridis, magma, gray, jet, RdBu_r, bwr, coolwarm.
    """
    return [name for name, _, _ in _tables().values()]


def _cmap_entry(name: str) -> tuple[str, str, np.ndarray]:
    entry = _tables().get(str(name).lower()) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown colormap {name!r}; valid: {', '.join(colormaps())}")
    return entry


def colormap(name: str) -> np.ndarray:
    """The colormap's table: uint8 RGB [N, 3], the bottom of the map first.

    Sequential maps have matplotlib's 256 entries; diverging maps 255, so that zero is one
    entry, the middle one (index 127).

    Raises:
        ValueError: `name` is none of `colormaps()` (case does not matter).
    """
    return _cmap_entry(name)[2]


# --- maps and their scales ------------------------------------------------------------------


@dataclass(frozen=True)
class MapStyle:
    """How a method's result becomes one 2-D map, and how it is drawn by default.

    Attributes:
        signed: True for a signed map (diverging colormap, zero in the middle), False for an
            unsigned one (|a|, sequential colormap), None to decide per map (signed when it
            has negative values).
        reduce: How [C, H, W] becomes [H, W]: "sum" (signed sum, or sum of |a| when drawn
            unsigned), "max" (the largest |a| over channels) or "mean" (the mean).
        overlay: Whether the picture is laid over the input by default.
    """

    signed: bool | None
    reduce: str = "sum"
    overlay: bool = False


# By method name (the client's and the proto's spelling). A method missing here is drawn as
# a signed sum over channels when it has negative values, as |a| otherwise.
_STYLES: dict[str, MapStyle] = {
    "guided_backprop": MapStyle(signed=True),
    "deconvolution": MapStyle(signed=True),
    "guided_grad_cam": MapStyle(signed=True),
    "integrated_gradients": MapStyle(signed=True),
    "lrp": MapStyle(signed=True),
    "input_x_gradient": MapStyle(signed=True),
    # Simonyan et al. 2014: the largest |gradient| over the colour channels.
    "saliency": MapStyle(signed=False, reduce="max"),
    "grad_cam": MapStyle(signed=False, overlay=True),
    "attention_rollout": MapStyle(signed=False, overlay=True),
    "activations": MapStyle(signed=None, reduce="mean", overlay=True),
}
_AUTO = MapStyle(signed=None)


def style_of(method: str) -> MapStyle:
    """The `MapStyle` of a method, by its name ("grad_cam" or "grad-cam")."""
    return _STYLES.get(str(method).replace("-", "_").lower(), _AUTO)


@dataclass(frozen=True)
class Map:
    """A 2-D map ready to draw: its values, its family and how it was made from the result.

    Attributes:
        values: float32 [H, W].
        signed: Drawn with a symmetric diverging scale (True) or from zero up (False).
        reduction: How the result's channels became one map, in words ("" for a 2-D result).
    """

    values: np.ndarray
    signed: bool
    reduction: str = ""


_SIGNS = ("signed", "unsigned")


def map_of(method: str, array: np.ndarray, sign: str | None = None) -> Map:
    """The 2-D map a method's result is drawn as.

    Args:
        method: The method's name; its `MapStyle` says how to reduce channels.
        array: The raw result: [H, W] or [C, H, W].
        sign: "signed" or "unsigned" to override the method's family; None keeps it.

    Returns:
        The `Map`: an unsigned map holds |a| (for [C, H, W]: summed over channels, or the
        largest over channels for saliency); a signed map the signed sum over channels;
        activations the mean over channels.

    Raises:
        ValueError: The array is not 2-D or 3-D, or `sign` is not one of the two names.
    """
    if sign is not None and sign not in _SIGNS:
        raise ValueError(f"sign must be 'signed', 'unsigned' or None, not {sign!r}")
    a = np.asarray(array, dtype=np.float32)
    if a.ndim not in (2, 3) or 0 in a.shape:
        raise ValueError(f"a map is drawn from an [H, W] or [C, H, W] array, not {list(a.shape)}")
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    style = style_of(method)
    signed = style.signed if sign is None else sign == "signed"
    if signed is None:
        signed = bool(a.min() < 0)
    reduction = ""
    if a.ndim == 3:
        several = a.shape[0] > 1
        if style.reduce == "mean":
            a, reduction = a.mean(axis=0), "mean over channels" if several else ""
        elif signed:
            a, reduction = a.sum(axis=0), "signed sum over channels" if several else ""
        elif style.reduce == "max":
            a, reduction = np.abs(a).max(axis=0), "max |a| over channels" if several else ""
        else:
            a, reduction = np.abs(a).sum(axis=0), "sum of |a| over channels" if several else ""
    if not signed:
        a = np.abs(a)
    return Map(np.ascontiguousarray(a, dtype=np.float32), signed, reduction)


@dataclass(frozen=True)
class Scale:
    """The values a picture's colours stand for.

    Attributes:
        signed: Symmetric [-vmax, vmax] around zero (True), or [0, vmax] (False).
        vmax: The bound, drawn as the colormap's end; values beyond it are clipped to it.
        peak: The largest |a| of the map(s) the scale was taken from.
        clip: The percentile of |a| that gave vmax; None when it is the largest |a| (no
            clipping) or was given.
        cmap: The colormap's name.
    """

    signed: bool
    vmax: float
    peak: float
    clip: float | None = DEFAULT_CLIP
    cmap: str = DEFAULT_UNSIGNED_CMAP

    @property
    def vmin(self) -> float:
        """The value at the colormap's bottom: -vmax for a signed scale, else 0."""
        return -self.vmax if self.signed else 0.0

    @property
    def flat(self) -> bool:
        """Whether the map is zero everywhere (drawn neutral)."""
        return self.vmax == 0.0

    @property
    def clipped(self) -> bool:
        """Whether some values lie beyond the bound (drawn at the colormap's end)."""
        return self.peak > self.vmax

    @property
    def note(self) -> str | None:
        """What a reader must know that the colours do not show: the map is zero everywhere."""
        if self.flat:
            return f"map is zero everywhere (max |a| = {self.peak:.3g}): drawn neutral"
        return None

    def describe(self) -> str:
        """The scale in words, e.g. "0 .. 0.0123 (p99 of |a|; max 0.2), inferno"."""
        if self.flat:
            return f"zero everywhere (max |a| = {self.peak:.3g}), {self.cmap}"
        how = f"p{self.clip:g} of |a|" if self.clip is not None else "max |a|"
        if self.clipped:
            how += f"; max {self.peak:.3g}"
        return f"{_number(self.vmin)} .. {_number(self.vmax)} ({how}), {self.cmap}"

    def with_cmap(self, cmap: str) -> Scale:
        """The same bounds drawn in another colormap."""
        return replace(self, cmap=_cmap_entry(cmap)[0])


def _check_clip(clip: float | None) -> float | None:
    if clip is None:
        return None
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.integer, np.floating)):
        raise ValueError(f"clip must be a percentile in (0, 100] or None, not {clip!r}")
    if not 0 < float(clip) <= 100:
        raise ValueError(f"clip must be a percentile in (0, 100] or None, not {clip!r}")
    return None if float(clip) == 100 else float(clip)


def _default_cmap(signed: bool, cmap: str | None) -> str:
    if cmap is None:
        return DEFAULT_SIGNED_CMAP if signed else DEFAULT_UNSIGNED_CMAP
    return _cmap_entry(cmap)[0]


def scale_of(
    maps: np.ndarray | Sequence[np.ndarray],
    *,
    signed: bool,
    clip: float | None = DEFAULT_CLIP,
    cmap: str | None = None,
    zero_below: float = ZERO_BELOW,
) -> Scale:
    """The scale of one map, or one scale shared by several.

    Args:
        maps: A map, or several (their values pooled).
        signed: A symmetric scale around zero, or one from zero up.
        clip: The percentile of |a| to draw at the colormap's end; None or 100: the
            largest |a| (no clipping).
        cmap: The colormap; None: inferno for unsigned maps, RdBu_r for signed ones.
        zero_below: Maps whose largest |a| is below this are flat (vmax 0, drawn neutral).

    Raises:
        ValueError: `clip` is not in (0, 100], or `cmap` is unknown.
    """
    clip = _check_clip(clip)
    name = _default_cmap(signed, cmap)
    parts = [maps] if isinstance(maps, np.ndarray) else list(maps)
    flat = np.concatenate([np.abs(np.asarray(m, dtype=np.float64)).ravel() for m in parts])
    flat = flat[np.isfinite(flat)]
    peak = float(flat.max()) if flat.size else 0.0
    if peak < zero_below:
        return Scale(signed=signed, vmax=0.0, peak=peak, clip=clip, cmap=name)
    vmax = peak if clip is None else float(np.percentile(flat, clip))
    if vmax <= 0.0:
        # Fewer nonzero values than the percentile leaves out: the map is sparse, not flat.
        vmax, clip = peak, None
    return Scale(signed=signed, vmax=vmax, peak=peak, clip=clip, cmap=name)


def shared_scale(scales: Sequence[Scale]) -> Scale:
    """One scale for maps drawn with `scales`: the widest bound and the largest peak."""
    if not scales:
        raise ValueError("shared_scale needs at least one scale")
    first = scales[0]
    return replace(
        first,
        vmax=max(s.vmax for s in scales),
        peak=max(s.peak for s in scales),
        clip=first.clip if all(s.clip == first.clip for s in scales) else None,
    )


def colorize(values: np.ndarray, scale: Scale) -> np.ndarray:
    """A map's values in the scale's colormap: uint8 RGB [H, W, 3].

    Each value goes to the nearest of the colormap's entries: 0 (unsigned) or -vmax (signed)
    to the first, vmax to the last, and for a signed scale 0 to the middle one. Values beyond
    the bound take the end's colour; a flat scale gives the zero colour everywhere.
    """
    table = colormap(scale.cmap)
    top = len(table) - 1
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if scale.vmax <= 0:
        t = np.full(v.shape, top / 2.0 if scale.signed else 0.0, np.float32)
    elif scale.signed:  # [-vmax, vmax] -> [0, top]
        t = v * np.float32(top / (2.0 * scale.vmax)) + np.float32(top / 2.0)
    else:  # [0, vmax] -> [0, top]
        t = v * np.float32(top / scale.vmax)
    np.clip(t, 0.0, top, out=t)
    t += np.float32(0.5)
    return np.take(table, t.astype(np.uint8), axis=0)


# --- geometry ---------------------------------------------------------------------------------


def resample(
    values: np.ndarray, size: tuple[int, int], region: Region | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A map's values on a grid of `size` pixels, placed on the box `region` of it.

    Bilinear with correct pixel centres (each output pixel takes the value at its centre, as
    torch's align_corners=False does; past the last sample's centre, the edge value),
    averaging when the map is shrunk (the triangle filter widened, as PIL's bilinear resize
    does; it is PIL's resize that runs). A non-square map or box stays exact.

    Args:
        values: float [h, w].
        size: (width, height) of the output grid.
        region: (x, y, width, height) of the box the map covers, in output pixels;
            None: all of it.

    Returns:
        float32 [height, width] values (0 outside the box) and a bool mask of the pixels
        whose centre lies inside the box.
    """
    width, height = size
    a = np.ascontiguousarray(values, dtype=np.float32)
    h, w = a.shape
    x0, y0, rw, rh = region if region is not None else (0.0, 0.0, float(width), float(height))
    if rw <= 0 or rh <= 0:
        raise ValueError(f"region must have a positive width and height, not {region!r}")
    out = np.zeros((height, width), np.float32)
    inside = np.zeros((height, width), bool)
    # The output pixels whose centre (o + 0.5) lies in [x0, x0 + rw).
    ox0, ox1 = max(0, math.ceil(x0 - 0.5)), min(width, math.ceil(x0 + rw - 0.5))
    oy0, oy1 = max(0, math.ceil(y0 - 0.5)), min(height, math.ceil(y0 + rh - 0.5))
    if ox1 <= ox0 or oy1 <= oy0:
        return out, inside
    sx, sy = w / rw, h / rh  # samples per output pixel
    box = [(ox0 - x0) * sx, (oy0 - y0) * sy, (ox1 - x0) * sx, (oy1 - y0) * sy]
    if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
        # The box pokes past the map by under half an output pixel: edge values there.
        pad = math.ceil(max(1.0, sx, sy)) + 1
        a = np.pad(a, pad, mode="edge")
        box = [b + pad for b in box]
    picture = Image.fromarray(a, "F").resize(
        (ox1 - ox0, oy1 - oy0), Image.Resampling.BILINEAR, box=tuple(box)
    )
    out[oy0:oy1, ox0:ox1] = np.asarray(picture)
    inside[oy0:oy1, ox0:ox1] = True
    return out, inside


def eight_bit(img: Image.Image) -> Image.Image:
    """An image of any decoded mode as 8-bit L, LA, RGB or RGBA: 16-bit and 32-bit samples
    scaled to 0..255 over their full range, palettes expanded (as the server preprocesses)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own I;16 -> L conversion clips at 255; scale the full range instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8))
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        return img.convert("RGBA" if img.mode.endswith(("A", "a")) else "RGB")
    return img


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if (
        arr.dtype != np.uint8
        or arr.ndim not in (2, 3)
        or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4))
    ):
        raise ValueError(
            "an image to draw on is a PIL image or uint8 pixels [H, W] or [H, W, C] with C in "
            f"(1, 3, 4), not {arr.dtype} {list(arr.shape)}"
        )
    return Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def gray_base(image: Image.Image | np.ndarray) -> np.ndarray:
    """The grayscale copy of an image that overlays are laid on: uint8 [H, W] (ITU-R 601 luma,
    Pillow's "L"), so that the image's own colours never mix with the colormap's."""
    return np.asarray(eight_bit(_as_image(image)).convert("L"))


def color_base(image: Image.Image | np.ndarray) -> np.ndarray:
    """An image as the RGB base of an overlay in colour: uint8 [H, W, 3]."""
    return np.asarray(eight_bit(_as_image(image)).convert("RGB"))


def _blend(color: np.ndarray, base: np.ndarray, inside: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * color + (1 - alpha) * base inside the box; outside it the base at half
    brightness, which marks what the model did not see. Integer arithmetic: the same bytes
    on every machine."""
    if base.ndim == 2:
        base = base[:, :, None]
    a = round(alpha * 256)
    # At most 255 * 256 + 128: uint16 holds it (explicit, whatever numpy's casting rules).
    mixed = color.astype(np.uint16) * np.uint16(a)
    mixed += base.astype(np.uint16) * np.uint16(256 - a)
    mixed += np.uint16(128)
    mixed >>= 8
    out = np.broadcast_to(base >> 1, mixed.shape).astype(np.uint8)
    np.copyto(out, mixed.astype(np.uint8), where=inside[:, :, None])
    return out


# --- text: captions and colorbars ---------------------------------------------------------------


@functools.cache
def _font(size: int = 11) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=4096)
def _text_size(text: str, size: int = 11) -> tuple[int, int]:
    left, top, right, bottom = _font(size).getbbox(text)
    return int(math.ceil(right - min(0, left))), int(math.ceil(bottom))


@functools.lru_cache(maxsize=4096)
def _label(text: str, size: int) -> np.ndarray:
    """A short label in `_INK` on white, uint8 [h, w, 3], drawn once (a grid redraws the same
    channel numbers for every answer): `_ink_on_white` lays it where `ImageDraw.text` would
    draw it. Read-only, so threads may share it."""
    left, top, right, bottom = _font(size).getbbox(text)
    patch = Image.new("RGB", (max(1, math.ceil(right)), max(1, math.ceil(bottom))), _WHITE)
    ImageDraw.Draw(patch).text((0, 0), text, fill=_INK, font=_font(size))
    out = np.asarray(patch)
    out.flags.writeable = False
    return out


def _ink_on_white(canvas: np.ndarray, label: np.ndarray, x: int, y: int) -> None:
    """Lays a `_label` on an RGB canvas [H, W, 3] at (x, y), clipped to the canvas: on white,
    the pixels `ImageDraw.text((x, y), ...)` draws (the darker of the two, and ink is darker
    than white), for one numpy call where a Pillow call per label took twice as long."""
    h, w = label.shape[:2]
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(canvas.shape[0], y + h), min(canvas.shape[1], x + w)
    if y1 > y0 and x1 > x0:
        region = canvas[y0:y1, x0:x1]
        np.minimum(region, label[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def _number(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"


def caption(
    method: str,
    target: Any = None,
    predictions: Sequence[Any] = (),
    layer: str = "",
) -> str:
    """A picture's caption: method · target (label and probability) · layer.

    Args:
        method: The method's name.
        target: The class index or neuron explained (an object with layer and channel, and
            y and x); None leaves it out.
        predictions: The answer's predictions (objects with index, label and score): the
            target's label and probability come from them when it is among them.
        layer: The layer a layer method read; "" leaves it out.

    Returns:
        e.g. "grad_cam · class 5 (p=0.998) · conv3", "guided_backprop · tabby [281] (p=0.41)".
    """
    parts = [str(method)]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        index = int(target)
        found = next((p for p in predictions if int(p.index) == index), None)
        label = found.label if found is not None else ""
        text = f"class {index}" if label in ("", str(index)) else f"{label} [{index}]"
        if found is not None:
            text += f" (p={float(found.score):.3f})"
        parts.append(text)
    elif target is not None and hasattr(target, "layer") and hasattr(target, "channel"):
        where = "" if getattr(target, "y", None) is None else f"[{target.y},{target.x}]"
        parts.append(f"neuron {target.layer}:{target.channel}{where}")
    if layer:
        parts.append(layer)
    return " · ".join(parts)


_PAD = 4
_LINE = 14
_BAR = 12
_WHITE = (255, 255, 255)
_INK = (20, 20, 20)


def colorbar(scale: Scale, height: int) -> Image.Image:
    """The scale as a vertical bar with its real values: the bound at the top, the bottom's
    value at the bottom, 0 in the middle of a signed bar, and how the bound was chosen.

    Args:
        scale: What the colours stand for.
        height: The bar's height in pixels (at least 64 are drawn, for the labels).

    Returns:
        An RGB image on white.
    """
    bar_h = max(int(height), 64)
    rows = (np.arange(bar_h, dtype=np.float64) + 0.5) / bar_h
    # Top row: the bound; bottom row: vmin. Drawn through `colorize`, so the bar shows the
    # very colours the picture uses.
    values = scale.vmax - rows * (scale.vmax - scale.vmin)
    colours = colorize(np.repeat(values[:, None], _BAR, axis=1), scale)
    # ASCII: the default font has no glyph for the mathematical signs.
    top = (">= " if scale.clipped else "") + _number(scale.vmax)
    bottom = ("<= " if scale.clipped and scale.signed else "") + _number(scale.vmin)
    how = "flat" if scale.flat else (f"p{scale.clip:g}" if scale.clip is not None else "max")
    labels = [top, bottom, how] + (["0"] if scale.signed else [])
    label_w = max(_text_size(t, 10)[0] for t in labels)
    img = Image.new("RGB", (_BAR + _PAD + label_w + _PAD, bar_h + _LINE), _WHITE)
    img.paste(Image.fromarray(colours), (0, 0))
    draw = ImageDraw.Draw(img)
    font = _font(10)
    x = _BAR + _PAD
    draw.text((x, 0), top, fill=_INK, font=font)
    draw.text((x, bar_h - 11), bottom, fill=_INK, font=font)
    if scale.signed:
        draw.text((x, bar_h // 2 - 6), "0", fill=_INK, font=font)
    draw.text((0, bar_h + 1), how, fill=_INK, font=font)
    return img


def figure(
    image: Image.Image,
    *,
    title: str | None = None,
    note: str | None = None,
    scale: Scale | None = None,
) -> Image.Image:
    """A picture with what it needs to be read: a caption line (and a note) above it and,
    with `scale`, its colorbar to the right. The picture itself is pasted unscaled.

    Args:
        image: The picture.
        title: The caption line; None for none.
        note: A second line (e.g. that the map is flat); None for none.
        scale: Draw this scale's colorbar beside the picture; None for none.

    Returns:
        `image` itself when there is nothing to add, else a new RGB image on white.
    """
    lines = [line for line in (title, note) if line]
    if not lines and scale is None:
        return image
    bar = colorbar(scale, image.height) if scale is not None else None
    text_h = len(lines) * _LINE + (_PAD if lines else 0)
    body_w = image.width + (_PAD + bar.width if bar is not None else 0)
    text_w = max((_text_size(line)[0] + 2 * _PAD for line in lines), default=0)
    width = max(body_w, text_w)
    height = text_h + max(image.height, bar.height if bar is not None else 0)
    out = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((_PAD, _PAD // 2 + i * _LINE), line, fill=_INK, font=_font())
    out.paste(image.convert("RGB"), (0, text_h))
    if bar is not None:
        out.paste(bar, (image.width + _PAD, text_h))
    return out


# --- pictures of maps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How to draw a map; every field's default is the server's.

    Attributes:
        size: (width, height) of the picture in pixels; None: an overlay at the size of the
            image it is laid on, a map alone at its own size (the model's input size).
        cmap: A colormap of `colormaps()`; None: inferno (unsigned) or RdBu_r (signed).
        clip: The percentile of |a| drawn at the colormap's end; None or 100: no clipping.
        sign: "signed" or "unsigned" to override the method's family; None keeps it.
        overlay: Lay the map over the image (True) or draw it alone (False); None: the
            method's default (Grad-CAM and activation heatmaps over the image).
        alpha: How much of the map's colour an overlay shows, 0 to 1.
        base: "gray" (a grayscale copy of the image) or "color" (the image as it is).
        colorbar: Draw the colorbar with the scale's real values beside the picture.
        caption: Draw the caption (method · target · layer) above the picture.
        scale: Draw on this scale (e.g. one shared by several maps) instead of the map's own.
    """

    size: tuple[int, int] | None = None
    cmap: str | None = None
    clip: float | None = DEFAULT_CLIP
    sign: str | None = None
    overlay: bool | None = None
    alpha: float = DEFAULT_ALPHA
    base: str = "gray"
    colorbar: bool = False
    caption: bool = False
    scale: Scale | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
            ):
                raise ValueError(f"size must be (width, height) in pixels, not {self.size!r}")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if self.cmap is not None:
            _cmap_entry(self.cmap)
        _check_clip(self.clip)
        if self.sign is not None and self.sign not in _SIGNS:
            raise ValueError(f"sign must be 'signed', 'unsigned' or None, not {self.sign!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be a number from 0 to 1, not {self.alpha!r}")
        if self.base not in ("gray", "color"):
            raise ValueError(f"base must be 'gray' or 'color', not {self.base!r}")


@dataclass(eq=False)
class Picture:
    """A drawn map with what it means.

    Attributes:
        image: The picture, RGB (with its caption and colorbar when they were asked for).
        scale: The scale its colours stand for.
        map: The 2-D map it was drawn from.
        note: Set when the colours cannot say it: the map is zero everywhere.
        caption: The caption text (drawn only when asked for).
    """

    image: Image.Image
    scale: Scale
    map: Map
    note: str | None = None
    caption: str = ""


def draw(
    method: str,
    array: np.ndarray,
    options: Options | None = None,
    *,
    image: Image.Image | np.ndarray | None = None,
    region: Region | None = None,
    title: str = "",
) -> Picture:
    """Draws a method's result, alone or over the image it was computed on.

    Args:
        method: The method's name (its `MapStyle`: family, channel reduction, overlay).
        array: The raw result, [H, W] or [C, H, W], in the model's input space.
        options: How to draw it; None: the defaults.
        image: The image as sent (PIL, or uint8 pixels); needed for an overlay.
        region: The part of `image` the model saw (the answer's input_region), in its
            pixels; None: all of it.
        title: The caption text, drawn when options.caption is set.

    Returns:
        The `Picture`.

    Raises:
        ValueError: The array is not a map, an overlay has no image, or an option is invalid.
    """
    opts = options or Options()
    m = map_of(method, array, opts.sign)
    scale = opts.scale
    if scale is None:
        scale = scale_of(m.values, signed=m.signed, clip=opts.clip, cmap=opts.cmap)
    elif opts.cmap is not None:
        scale = scale.with_cmap(opts.cmap)
    overlay = style_of(method).overlay if opts.overlay is None else opts.overlay
    if overlay:
        if image is None:
            raise ValueError("an overlay needs the image the result was computed on")
        pil = _as_image(image)
        base = gray_base(pil) if opts.base == "gray" else color_base(pil)
        src_h, src_w = base.shape[:2]
        width, height = opts.size or (src_w, src_h)
        if (width, height) != (src_w, src_h):
            mode = "L" if base.ndim == 2 else "RGB"
            resized = Image.fromarray(base, mode).resize((width, height), Image.Resampling.BILINEAR)
            base = np.asarray(resized)
        x, y, rw, rh = region if region is not None else (0.0, 0.0, float(src_w), float(src_h))
        sx, sy = width / src_w, height / src_h
        values, inside = resample(m.values, (width, height), (x * sx, y * sy, rw * sx, rh * sy))
        pixels = _blend(colorize(values, scale), base, inside, float(opts.alpha))
    else:
        h, w = m.values.shape
        width, height = opts.size or (w, h)
        values = m.values if (width, height) == (w, h) else resample(m.values, (width, height))[0]
        pixels = colorize(values, scale)
    picture = Image.fromarray(pixels, "RGB")
    note = scale.note
    if opts.caption or opts.colorbar:
        picture = figure(
            picture,
            title=title if opts.caption else None,
            note=note,
            scale=scale if opts.colorbar else None,
        )
    return Picture(picture, scale, m, note, title)


def grid(
    maps: np.ndarray,
    channels: Sequence[int] | np.ndarray | None = None,
    *,
    sort: bool = True,
    max_maps: int = 64,
    tile: int | None = None,
    cmap: str | None = None,
    clip: float | None = DEFAULT_CLIP,
    scale: Scale | None = None,
) -> Picture:
    """Feature maps as a near-square grid of tiles, each labelled with its channel index.

    Args:
        maps: float [K, h, w].
        channels: The channel index of each map (e.g. an answer's "<layer>.channels");
            None: 0 .. K-1.
        sort: Order the tiles by mean activation, largest first (stable).
        max_maps: Draw at most this many (the first ones after sorting).
        tile: Tile side in pixels, each map enlarged by a whole factor, nearest neighbour;
            None: the smallest factor that makes tiles at least 32 pixels (labels need room).
        cmap, clip: As for `scale_of`; one scale for every tile, so tiles compare.
        scale: Draw on this scale instead.

    Returns:
        The `Picture`; its map holds the tiles' mean activations, in the order drawn.
    """
    a = np.asarray(maps, dtype=np.float32)
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"a grid is drawn from feature maps [K, h, w], not {list(a.shape)}")
    index = np.arange(a.shape[0]) if channels is None else np.asarray(channels).astype(np.int64)
    if index.shape != (a.shape[0],):
        raise ValueError(f"channels has {index.size} indices for {a.shape[0]} maps")
    means = a.reshape(a.shape[0], -1).mean(axis=1)
    order = np.argsort(-means, kind="stable") if sort else np.arange(a.shape[0])
    order = order[: max(1, int(max_maps))]
    a, index, means = a[order], index[order], means[order]
    signed = bool(a.min() < 0)
    if scale is None:
        scale = scale_of(a, signed=signed, clip=clip, cmap=cmap)
    k, h, w = a.shape
    factor = max(1, math.ceil(32 / max(h, w))) if tile is None else max(1, int(tile) // max(h, w))
    tw, th = w * factor, h * factor
    labels = [str(int(c)) for c in index]
    cell_w = max(tw, max(_text_size(t, 10)[0] for t in labels) + 2)
    cell_h = th + 12
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    gap = 2
    # Every tile coloured and enlarged (nearest: whole blocks) at once, laid out in numpy.
    tiles = colorize(a, scale)
    if factor > 1:
        tiles = tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    canvas = np.full((rows * (cell_h + gap) + gap, cols * (cell_w + gap) + gap, 3), 255, np.uint8)
    for i in range(k):
        r, c = divmod(i, cols)
        x, y = gap + c * (cell_w + gap) + (cell_w - tw) // 2, gap + r * (cell_h + gap)
        canvas[y : y + th, x : x + tw] = tiles[i]
    for i in range(k):
        r, c = divmod(i, cols)
        x, y = gap + c * (cell_w + gap), gap + r * (cell_h + gap)
        label_w = _text_size(labels[i], 10)[0]
        _ink_on_white(canvas, _label(labels[i], 10), x + (cell_w - label_w) // 2, y + th)
    out = Image.fromarray(canvas, "RGB")
    summary = Map(means.astype(np.float32)[None, :], signed, "mean of each map")
    return Picture(out, scale, summary, scale.note, f"{k} maps, tiles x{factor} (nearest)")


def zoom(image: Image.Image, min_side: int = 96, max_factor: int = 8) -> tuple[Image.Image, int]:
    """A small picture enlarged for display by a whole factor, nearest neighbour (each pixel a
    block: nothing invented), the smallest that makes its shorter side `min_side`; the factor
    is returned so that whoever shows it says so. Larger pictures come back as they are."""
    factor = max(1, min(max_factor, math.ceil(min_side / max(1, min(image.size)))))
    if factor == 1:
        return image, 1
    w, h = image.size
    return image.resize((w * factor, h * factor), Image.Resampling.NEAREST), factor


def shown(title: str, factor: int) -> str:
    """A panel's title, saying when its picture is shown enlarged."""
    return title if factor == 1 else f"{title} (shown x{factor})"


def _wrap(title: str, width: int) -> list[str]:
    """A title in lines no wider than `width` where it can be, broken at its " · "."""
    lines: list[str] = []
    for part in title.split(" · "):
        if lines and _text_size(f"{lines[-1]} · {part}")[0] <= width:
            lines[-1] = f"{lines[-1]} · {part}"
        else:
            lines.append(part)
    return lines


def composite(
    panels: Sequence[tuple[str, Image.Image]], *, columns: int | None = None
) -> Image.Image:
    """Pictures side by side (wrapping after `columns`), each under its title (broken into
    lines at " · " to fit the picture's width), on white."""
    if not panels:
        raise ValueError("composite needs at least one picture")
    cols = len(panels) if columns is None else max(1, int(columns))
    titles = [_wrap(title, max(img.width, 96)) for title, img in panels]
    cell_w = max(
        max([img.width] + [_text_size(line)[0] + 2 * _PAD for line in lines])
        for lines, (_, img) in zip(titles, panels, strict=True)
    )
    text_h = _LINE * max(len(lines) for lines in titles) + _PAD
    cell_h = text_h + max(img.height for _, img in panels)
    rows = math.ceil(len(panels) / cols)
    gap = 8
    out = Image.new("RGB", (cols * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), _WHITE)
    draw_ = ImageDraw.Draw(out)
    for i, (lines, (_, img)) in enumerate(zip(titles, panels, strict=True)):
        r, c = divmod(i, cols)
        x, y = gap + c * (cell_w + gap), gap + r * (cell_h + gap)
        for k, line in enumerate(lines):
            draw_.text((x + _PAD, y + k * _LINE), line, fill=_INK, font=_font())
        out.paste(img.convert("RGB"), (x, y + text_h))
    return out


def pixels_image(array: np.ndarray) -> Image.Image:
    """An image array as an RGB picture at its own size: float [C, H, W] or [H, W] with
    pixels in [0, 1] (clipped), or uint8 [H, W] / [H, W, C]. One channel is drawn gray, three
    as RGB; other channel counts are averaged to gray."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        pixels = a if a.ndim == 2 else a[:, :, :3] if a.shape[2] >= 3 else a[:, :, 0]
    else:
        f = np.nan_to_num(np.asarray(a, dtype=np.float32))
        if f.ndim == 3:
            f = f if f.shape[0] == 3 else f.mean(axis=0)
            f = f.transpose(1, 2, 0) if f.ndim == 3 else f
        pixels = np.floor(np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def strip(images: Sequence[Image.Image], pad: int = 2) -> Image.Image:
    """Same-height pictures side by side, `pad` white pixels apart."""
    if not images:
        raise ValueError("strip needs at least one picture")
    width = sum(img.width for img in images) + pad * (len(images) - 1)
    out = Image.new("RGB", (width, max(img.height for img in images)), _WHITE)
    x = 0
    for img in images:
        out.paste(img.convert("RGB"), (x, 0))
        x += img.width + pad
    return out


# PNG colour types of the 8-bit modes the fast writer takes.
_PNG_COLOR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}


@functools.cache
def _deflate() -> Callable[..., bytes]:
    """zlib's compress, from ISA-L when it is installed (the server's extra installs it): at
    level 1 several times faster than zlib's own, for the same stream format."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.compress
    return isal_zlib.compress


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def to_png(image: Image.Image, *, compress_level: int = 1) -> bytes:
    """PNG bytes of a picture (fast compression by default: these are mostly short-lived).

    At compress_level 1, an 8-bit L, RGB or RGBA picture is written with every row's "Up"
    filter and deflated at level 1 (`_deflate`): several times faster than Pillow's encoder,
    which tries four filters on every row, for files at most about a tenth larger.
    Other levels and modes, and pictures with a transparent colour or an ICC profile (which
    Pillow writes), go to Pillow.
    """
    color_type = _PNG_COLOR_TYPES.get(image.mode)
    keeps = "transparency" in image.info or "icc_profile" in image.info
    if compress_level != 1 or color_type is None or keeps or 0 in image.size:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()
    width, height = image.size
    rows = np.asarray(image).reshape(height, -1)
    # Each row: filter type 2 ("Up": each byte minus the one above it; above the first row,
    # zeros), then the row.
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", _deflate()(filtered, 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def data_uri(image: Image.Image) -> str:
    """A picture as a data: URI of its PNG, for HTML that needs no other file."""
    return "data:image/png;base64," + base64.b64encode(to_png(image, compress_level=6)).decode()
