"""Time to draw one picture with deepvis.render (what the server spends per picture asked for,
and what a client spends redrawing), in process, median of repeated runs.

    .venv/bin/python bench/render.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from deepvis import render


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: colormap tables, font
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like RGB image: smooth gradients and a little noise (pure noise would make PNG
    encoding, not drawing, the whole cost)."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([np.sin(6 * xx) * 0.5 + 0.5, yy, np.cos(4 * (xx + yy)) * 0.5 + 0.5], -1)
    noisy = rgb * 230 + rng.normal(0, 4, rgb.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    grad32 = rng.normal(size=(1, 32, 32)).astype(np.float32)
    grad224 = rng.normal(size=(3, 224, 224)).astype(np.float32)
    cam224 = rng.random((224, 224)).astype(np.float32)
    maps = rng.random((64, 7, 7)).astype(np.float32)
    photo_vga, photo_12mp = photo(480, 640, rng), photo(3000, 4000, rng)
    crop_vga = (80.0, 0.0, 480.0, 480.0)
    crop_12mp = (500.0, 0.0, 3000.0, 3000.0)
    deco = render.Options(colorbar=True, caption=True)
    cases: dict[str, Callable[[], object]] = {
        "guided_backprop 1x32x32, map alone": lambda: render.to_png(
            render.draw("guided_backprop", grad32).image
        ),
        "integrated_gradients 3x224x224, colorbar and caption": lambda: render.to_png(
            render.draw("integrated_gradients", grad224, deco, title="ig").image
        ),
        "grad_cam 224x224 over a 640x480 photo": lambda: render.to_png(
            render.draw("grad_cam", cam224, image=photo_vga, region=crop_vga).image
        ),
        "grad_cam 224x224 over a 4000x3000 photo": lambda: render.to_png(
            render.draw("grad_cam", cam224, image=photo_12mp, region=crop_12mp).image
        ),
        "activations grid of 64 7x7 maps": lambda: render.to_png(render.grid(maps).image),
    }
    for name, fn in cases.items():
        repeat = max(3, args.repeat // 5) if "4000" in name else args.repeat
        print(f"{name:55s} {median_ms(fn, repeat):8.2f} ms (median of {repeat}, PNG included)")
    big = render.draw("grad_cam", cam224, image=photo_12mp, region=crop_12mp).image
    draw_only = median_ms(
        lambda: render.draw("grad_cam", cam224, image=photo_12mp, region=crop_12mp), 3
    )
    print(f"{'  of which drawing (no PNG), 4000x3000':55s} {draw_only:8.2f} ms")
    print(
        f"{'  its PNG (compress_level 1)':55s} {median_ms(lambda: render.to_png(big), 3):8.2f} ms"
    )


if __name__ == "__main__":
    main()
