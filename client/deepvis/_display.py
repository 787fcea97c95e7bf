"""How results show themselves in Jupyter: MIME bundles of inline PNGs, and one display updated
in place while a feature visualization runs. IPython is optional: it is imported only by
`LiveProgress`, and only when it is there."""

from __future__ import annotations

import base64
import html
import importlib
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from deepvis import render

__all__ = ["LiveProgress", "bundle", "load_image"]


def load_image(image: Any) -> Image.Image:
    """The image an overlay is laid on: a path, encoded bytes, a PIL image or uint8 pixels.

    Raises:
        ValueError: A float array (a preprocessed tensor is no picture of what was sent).
        OSError: The file cannot be read or decoded.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            img.load()
            return img
    if isinstance(image, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(image)))
        img.load()
        return img
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return render._as_image(image)
    raise ValueError(
        "an overlay is drawn on the image as sent: a path, encoded bytes, a PIL image or uint8 "
        f"pixels, not {type(image).__name__}"
        + (f" {image.dtype}" if isinstance(image, np.ndarray) else "")
    )


def _img_tag(image: Image.Image, alt: str) -> str:
    # Pixelated: small maps stay honest blocks instead of the browser's blur when enlarged.
    return (
        f'<img src="{render.data_uri(image)}" alt="{html.escape(alt)}" '
        f'width="{image.width}" height="{image.height}" style="image-rendering: pixelated">'
    )


def bundle(
    summary: str,
    panels: Sequence[tuple[str, Image.Image]],
    *,
    rows: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    include: Any = None,
    exclude: Any = None,
) -> dict[str, str]:
    """A result's MIME bundle: text/plain (`summary`), image/png (the panels side by side,
    titled) and text/html (a labelled grid of the panels as inline PNGs, a table of `rows`
    and the notes; no script, no URL but data: ones)."""
    out: dict[str, str] = {"text/plain": summary}

    def wanted(kind: str) -> bool:
        return (include is None or kind in include) and (exclude is None or kind not in exclude)

    if panels and wanted("image/png"):
        out["image/png"] = base64.b64encode(
            render.to_png(render.composite(panels), compress_level=6)
        ).decode()
    if wanted("text/html"):
        cells = "".join(
            '<figure style="margin:0 12px 8px 0;display:inline-block;vertical-align:top">'
            f"{_img_tag(img, title)}"
            f'<figcaption style="font:12px sans-serif">{html.escape(title)}</figcaption></figure>'
            for title, img in panels
        )
        table = "".join(
            f"<tr><th style='text-align:left;padding-right:8px'>{html.escape(k)}</th>"
            f"<td>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        note_html = "".join(
            f"<p style='font:12px sans-serif;color:#a00'>{html.escape(n)}</p>" for n in notes
        )
        out["text/html"] = (
            f"<div><p style='font:bold 13px sans-serif'>{html.escape(summary)}</p>"
            f"<div>{cells}</div>"
            + (f"<table style='font:12px sans-serif'>{table}</table>" if table else "")
            + note_html
            + "</div>"
        )
    return out


class LiveProgress:
    """Shows a running feature visualization in one notebook output, updated in place.

    Pass it as `on_progress`: each `Progress` replaces the last in the same display (IPython's
    `display(..., display_id=True)` and `update`), so no widget and no JavaScript is needed::

        vis = client.visualize(3, progress_every=16, on_progress=deepvis.LiveProgress())

    Outside a running IPython (or without IPython installed) it only keeps `last`, the
    latest progress.
    """

    def __init__(self) -> None:
        self.last: Any = None
        self.updates = 0  # how often the display was drawn or updated
        self._handle: Any = None

    def __call__(self, progress: Any) -> None:
        self.last = progress
        display = _ipython_display()
        if display is None:
            return
        if self._handle is None:
            self._handle = display.display(progress, display_id=True)
        else:
            self._handle.update(progress)
        self.updates += 1


def _ipython_display() -> Any:
    """IPython.display when a running IPython shell will show what it is given, else None."""
    try:
        ipython = importlib.import_module("IPython")
    except ImportError:
        return None
    if ipython.get_ipython() is None:  # IPython installed, but this is no IPython session
        return None
    return importlib.import_module("IPython.display")
