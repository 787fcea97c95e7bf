"""Objective reached by the decorrelated FFT parameterization against plain pixel-space Adam.

    .venv/bin/python bench/fft_vs_pixel.py --out bench/results/fft-vs-pixel.json

For the embedded digits model: the ten class logits, and conv3 channels and centre neurons
(every 8th channel), each rendered with both parameterizations under the same steps, lr,
seeds and transform setting, in one continuous batch. The figure is the objective of the
final image shown to the model untransformed, summed over the objectives and averaged over
the seeds; the ratio FFT / pixel > 1 means the FFT reached more.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepvis_server.config import load_config
from deepvis_server.featurevis import Channel, ClassLogit, Neuron, RenderBatch, RenderJob
from deepvis_server.models import load_model

PARAMS = ("fft", "pixel")


def objectives() -> dict[str, list]:
    return {
        "class logits": [ClassLogit(k) for k in range(10)],
        "conv3 channels": [Channel("conv3", c) for c in range(0, 64, 8)],
        "conv3 neurons": [Neuron("conv3", c) for c in range(0, 64, 8)],
    }


def run(model, steps: int, transforms: bool, seeds: list[int]) -> list[dict]:
    """One batch holding every (objective, parameterization, seed) job of one setting."""
    batch = RenderBatch(model)
    jobs = {}
    for family, objs in objectives().items():
        for i, obj in enumerate(objs):
            for param in PARAMS:
                for seed in seeds:
                    job = RenderJob(obj, steps=steps, seed=seed, param=param, transforms=transforms)
                    jobs[batch.add(job)] = (family, i, param)
    reached: dict[tuple[str, str], np.ndarray] = {}
    while batch.handles:
        for event in batch.step():
            if event.result is None:
                continue
            family, i, param = jobs[event.handle]
            per = reached.setdefault((family, param), np.zeros(len(objectives()[family])))
            per[i] += event.result.objective / len(seeds)
    rows = []
    for family in objectives():
        fft, pixel = reached[(family, "fft")], reached[(family, "pixel")]
        rows.append(
            {
                "objectives": family,
                "steps": steps,
                "transforms": transforms,
                "fft": float(fft.sum()),
                "pixel": float(pixel.sum()),
                "ratio": float(fft.sum() / pixel.sum()),
                "fft_ahead": int((fft >= pixel).sum()),
                "of": len(fft),
                "worst_ratio": float(np.min(fft / pixel)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(load_config().models[0], torch.device("cpu"))
    rows = []
    t0 = time.perf_counter()
    for steps in args.steps:
        for transforms in (True, False):
            rows += run(model, steps, transforms, args.seeds)
    print(
        f"{'objectives':<15} {'steps':>5} {'transforms':>10} {'FFT':>8} {'pixel':>8} "
        f"{'FFT/pixel':>9} {'FFT ahead':>9} {'worst':>6}"
    )
    for r in rows:
        print(
            f"{r['objectives']:<15} {r['steps']:>5} {str(r['transforms']):>10} {r['fft']:8.1f} "
            f"{r['pixel']:8.1f} {r['ratio']:9.3f} {r['fft_ahead']:>5}/{r['of']:<3} "
            f"{r['worst_ratio']:6.2f}"
        )
    print(f"({time.perf_counter() - t0:.0f} s, seeds {args.seeds})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
