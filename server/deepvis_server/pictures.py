"""The server's pictures: every PNG it sends is drawn by the client's renderer, deepvis.render.

The client draws the same arrays with the same functions, so a picture it draws locally from a
float32 result is the server's, pixel for pixel; nothing here chooses a colour or a scale.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from deepvis import render

from .config import Limits, ModelSpec
from .preprocess import RawInput, Region, decode_image, pixels_array

__all__ = [
    "Drawn",
    "Scene",
    "caption_predictions",
    "input_image",
    "pixel_pngs",
    "strip_png",
    "to_png",
]


def to_png(image: Image.Image) -> bytes:
    return render.to_png(image)  # fast compression: these are short-lived


@dataclass(frozen=True)
class _Prediction:
    """What render.caption reads of a prediction (as the client's `Prediction` has it)."""

    index: int
    label: str
    score: float


def caption_predictions(
    predictions: Sequence[tuple[int, float]], label: Callable[[int], str]
) -> list[_Prediction]:
    """An answer's predictions as the caption reads them: scores rounded to float32, as they
    travel, so that a client's caption of the same answer says the same."""
    return [_Prediction(int(i), label(int(i)), float(np.float32(p))) for i, p in predictions]


@dataclass
class Scene:
    """What a method's pictures are drawn with besides its arrays.

    Attributes:
        options: How to draw (the request's OutputOptions).
        region: The part of the input the model saw, in the input's pixels.
        title: The caption (drawn when options.caption is set).
        load_image: Gives the input as sent; called at most once, by the first overlay.
    """

    options: render.Options
    region: Region
    title: str
    load_image: Callable[[], Image.Image]
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def image(self) -> Image.Image:
        return self.load_image()

    def draw(
        self, method: str, array: np.ndarray, *, title: str | None = None, sign: str | None = None
    ) -> bytes:
        """One map picture as PNG bytes; a note it carries (a flat map) joins `notes`. `sign`
        overrides the method's family unless the request chose one."""
        overlay = render.style_of(method).overlay
        if self.options.overlay is not None:
            overlay = self.options.overlay
        options = self.options
        if sign is not None and options.sign is None:
            options = dataclasses.replace(options, sign=sign)
        picture = render.draw(
            method,
            array,
            options,
            image=self.image if overlay else None,
            region=self.region,
            title=self.title if title is None else title,
        )
        if picture.note is not None and picture.note not in self.notes:
            self.notes.append(picture.note)
        return to_png(picture.image)


@dataclass
class Drawn:
    """A method's pictures: the main one and further ones by name."""

    png: bytes | None = None
    pngs: dict[str, bytes] = field(default_factory=dict)


def input_image(raw: RawInput, x: torch.Tensor, spec: ModelSpec, limits: Limits) -> Image.Image:
    """The input as the client sent it, for overlays: an image decoded again (only overlays
    pay for it), pixels as they are, and a model tensor denormalised back to pixels."""
    if raw.kind == "image":
        return decode_image(raw.data, limits)
    if raw.kind == "pixels":
        return Image.fromarray(np.ascontiguousarray(pixels_array(raw, limits)))
    arr = x.numpy()
    if arr.dtype == np.uint8:
        return render.pixels_image(arr.transpose(1, 2, 0) if arr.shape[0] > 1 else arr[0])
    c = arr.shape[0]
    mean = np.asarray(spec.mean, np.float32)[:c, None, None]
    std = np.asarray(spec.std, np.float32)[:c, None, None]
    return render.pixels_image(arr * std + mean)


def pixel_pngs(images: Sequence[np.ndarray]) -> list[bytes]:
    """uint8 images (H x W or H x W x C) as RGB PNGs at their own size."""
    return [to_png(render.pixels_image(img)) for img in images]


def strip_png(images: Sequence[np.ndarray]) -> bytes:
    """Several uint8 images side by side as one RGB PNG, 2 white pixels apart."""
    return to_png(render.strip([render.pixels_image(img) for img in images]))
