"""The model's memory layout in-process: one forward and backward pass to the input (what the
gradient methods run) for torchvision architectures with random weights, contiguous against
channels_last (`[[models]] memory_format`), alternated in one run, and how far apart the two
gradients are.

    .venv/bin/python bench/memory_format.py --size 112 --batch 8 --out bench/results/memory_format.json

Prints a table and writes JSON: the median milliseconds of each layout, their ratio, and the
largest difference of the input gradients over their largest magnitude.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

ARCHS = "resnet18,resnet50,vgg11,densenet121,mobilenet_v3_small,efficientnet_b0,convnext_tiny"


def step(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one forward and backward pass to the input, and the input's gradient."""
    t0 = time.perf_counter()
    xx = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xx)
        score = out[torch.arange(len(x)), torch.arange(len(x)) % out.shape[1]].sum()
        (grad,) = torch.autograd.grad(score, xx)
    return time.perf_counter() - t0, grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", default=ARCHS)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4, help="timed passes of each layout")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(
        f"{'arch':20s} {'contiguous ms':>14s} {'channels_last ms':>17s} {'speed-up':>9s} {'max diff':>9s}"
    )
    for arch in args.archs.split(","):
        plain = torchvision.models.get_model(arch, num_classes=1000).eval().requires_grad_(False)
        last = torchvision.models.get_model(arch, num_classes=1000).eval().requires_grad_(False)
        last.load_state_dict(plain.state_dict())
        last.to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, 3, args.size, args.size)
        x_last = x.contiguous(memory_format=torch.channels_last)
        step(plain, x), step(last, x_last)  # warm-up
        times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        for _ in range(args.repeats):  # alternated, so that a slower spell hits both
            s, g_plain = step(plain, x)
            times["contiguous"].append(s)
            s, g_last = step(last, x_last)
            times["channels_last"].append(s)
        a, b = (statistics.median(times[k]) * 1000 for k in ("contiguous", "channels_last"))
        diff = float((g_plain - g_last).abs().max() / g_plain.abs().max())
        rows.append(
            {
                "arch": arch,
                "contiguous_ms": round(a, 1),
                "channels_last_ms": round(b, 1),
                "speedup": round(a / b, 2),
                "max_abs_diff_over_max": diff,
            }
        )
        print(f"{arch:20s} {a:14.1f} {b:17.1f} {a / b:8.2f}x {diff:9.1e}", flush=True)
    report = {
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "device": f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "archs": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
