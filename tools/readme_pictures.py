"""Copies the README's pictures from `make demo`'s out/ into docs/images/ (small PNGs).

The demo's pictures are at the digits' own 32x32; for the README the small ones are enlarged
by a whole factor, nearest neighbour (each pixel a block), and the README says so.

    make demo && .venv/bin/python tools/readme_pictures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from deepvis import render

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out"
IMAGES = ROOT / "docs" / "images"

# docs/images name -> the demo's file (relative to out/), enlarged when small.
PICTURES = {
    "digit-5.panel.png": "explain/digit_5/panel.png",
    "digit-5.activations.conv2.grid.png": "activations/digit_5/activations-conv2+conv3.conv2.grid.png",
    "class-5.visualize.png": "visualize/class-5_0.png",
    "conv3-c5-y4-x4.visualize.png": "visualize/conv3-c5-y4-x4_0.png",
    "conv3-c5-y4-x4.attribution.png": "visualize/conv3-c5-y4-x4.attribution.png",
}


def readme_picture(out: Path, src: str) -> tuple[Image.Image, int]:
    """The README's copy of the demo's picture `src` (under `out`): enlarged by a whole
    factor when small, and that factor."""
    with Image.open(out / src) as img:
        return render.zoom(img.convert("RGB"))


def main() -> int:
    missing = [src for src in PICTURES.values() if not (OUT / src).exists()]
    if missing:
        print(f"run `make demo` first: {', '.join(missing)} missing under out/", file=sys.stderr)
        return 1
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, src in PICTURES.items():
        big, factor = readme_picture(OUT, src)
        big.save(IMAGES / name, optimize=True)
        print(f"{IMAGES / name}  {big.size[0]}x{big.size[1]} (x{factor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
