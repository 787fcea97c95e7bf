"""Time to draw one picture with deepvis.render (what the server spends per picture asked for,
and what a client spends redrawing), in process, median of repeated runs; and with
`--threads`, how many pictures a second T threads draw at once against one thread (the
server draws on a pool of `cpu_threads` threads, which share one interpreter lock).

    .venv/bin/python bench/render.py [--repeat 20]
    .venv/bin/python bench/render.py --threads 2 --seconds 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
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


def per_second(fn: Callable[[], object], threads: int, seconds: float) -> float:
    """Pictures a second that `threads` threads drawing `fn` at once keep up for `seconds`."""
    fn()
    deadline = time.perf_counter() + seconds

    def drawer() -> int:
        n = 0
        while time.perf_counter() < deadline:
            fn()
            n += 1
        return n

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: drawer(), range(threads)))
    return total / (time.perf_counter() - t0)


def served_cases(rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    """The pictures of the batching benchmark's load (resnet18 at 112x112, default outputs):
    what the server draws for each answer there."""
    photo112 = photo(112, 112, rng)
    gradient = rng.normal(size=(3, 112, 112)).astype(np.float32)
    cam = rng.random((4, 4)).astype(np.float32)
    maps = np.maximum(rng.normal(size=(512, 4, 4)), 0).astype(np.float32)

    def activations() -> object:  # all 512 maps sent: the grid shows the 64 of largest mean
        grid = render.grid(maps)
        return render.to_png(render.figure(grid.image)), render.to_png(
            render.draw("activations", maps, image=photo112).image
        )

    return {
        "served: guided_backprop 3x112x112": lambda: render.to_png(
            render.draw("guided_backprop", gradient).image
        ),
        "served: grad_cam 4x4 over 112x112": lambda: render.to_png(
            render.draw("grad_cam", cam, image=photo112).image
        ),
        "served: activations grid of 64 of 512 4x4 maps + mean": activations,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="instead: pictures/s drawn by this many threads at once against one thread",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="with --threads: per measurement")
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
    if args.threads:
        cases = {**served_cases(rng), **{k: v for k, v in cases.items() if "4000" not in k}}
        print(f"{'picture':55s} {'1 thread':>10s} {f'{args.threads} threads':>10s} {'ratio':>6s}")
        for name, fn in cases.items():
            one = per_second(fn, 1, args.seconds)
            many = per_second(fn, args.threads, args.seconds)
            print(f"{name:55s} {one:8.1f}/s {many:8.1f}/s {many / one:6.2f}")
        return
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
