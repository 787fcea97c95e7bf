"""Writes client/deepvis/colormaps.json: matplotlib's colormap tables, for the thin client.

The client draws every picture from these tables and never imports matplotlib. Sequential
maps keep matplotlib's 256 entries; diverging maps are resampled to 255 entries so that zero
falls on one entry, the middle one (matplotlib's own `resampled`). Each entry is what
matplotlib itself draws for it (`cmap(x, bytes=True)`), as RGB.

    .venv/bin/python tools/colormaps.py        # rewrite the file
    .venv/bin/python tools/colormaps.py --check  # exit 1 when it differs from matplotlib's
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps

OUT = Path(__file__).resolve().parents[1] / "client" / "deepvis" / "colormaps.json"

# name -> entries. Sequential first (unsigned maps), then diverging (signed maps).
SEQUENTIAL = {"inferno": 256, "viridis": 256, "magma": 256, "gray": 256, "jet": 256}
DIVERGING = {"RdBu_r": 255, "bwr": 255, "coolwarm": 255}


def table(name: str, entries: int) -> np.ndarray:
    """matplotlib's colormap `name` at `entries` evenly spaced points, uint8 RGB [entries, 3]."""
    cmap = colormaps[name].resampled(entries)
    return np.asarray(cmap(np.linspace(0.0, 1.0, entries), bytes=True))[:, :3]


def build() -> dict[str, object]:
    maps = {
        name: {"kind": kind, "rgb": table(name, n).tobytes().hex()}
        for kind, group in (("sequential", SEQUENTIAL), ("diverging", DIVERGING))
        for name, n in group.items()
    }
    return {
        "source": f"matplotlib {matplotlib.__version__}: colormaps[name].resampled(n)",
        "maps": maps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    data = build()
    if args.check:
        have = json.loads(OUT.read_text())
        same = have["maps"] == data["maps"]
        print("colormaps.json matches matplotlib" if same else "colormaps.json differs")
        return 0 if same else 1
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
