"""DeepDream: time per step of one DreamBatch, 1 row against N rows of the same picture size.

    .venv/bin/python bench/dream_step.py --rows 16 --steps 20

Rows are jobs of different seeds on the same picture, all at one octave (octaves 1), so each
step is one forward and one backward pass of the whole batch: what concurrent DeepDream jobs
of one picture size share. The embedded digits model (one channel) and a torchvision resnet18
with random weights; the median over the steps after two warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

from deepvis_server.config import load_config, parse_config
from deepvis_server.featurevis import Layer
from deepvis_server.featurevis.dream import DreamBatch, DreamJob
from deepvis_server.models import load_model


def models(device: str, root: Path) -> dict:
    digits = load_config().models[0]
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "r18.safetensors")
    )
    spec = parse_config(
        {
            "models": [
                {
                    "name": "resnet18",
                    "arch": "resnet18",
                    "weights": "r18.safetensors",
                    "num_classes": 10,
                    "input_size": [64, 64],
                }
            ]
        },  # fmt: skip
        root,
    ).models[0]
    dev = torch.device(device)
    return {
        ("digits", 64, "conv2"): load_model(digits, dev, Path(str(digits.weights)).parent),
        ("resnet18", 64, "layer3"): load_model(spec, dev, root),
    }


def time_step(model, side: int, layer: str, rows: int, steps: int) -> float:
    batch = DreamBatch(model, (side, side))
    picture = torch.rand(
        model.spec.channels, side, side, generator=torch.Generator().manual_seed(0)
    )
    for seed in range(rows):
        batch.join(DreamJob(picture, Layer(layer), octaves=1, steps_per_octave=100, seed=seed))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        batch.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for (name, side, layer), model in models(args.device, Path(tmp)).items():
            one = time_step(model, side, layer, 1, args.steps)
            many = time_step(model, side, layer, args.rows, args.steps)
            print(f"{name} {side}x{side} {layer}: 1 row {one:.2f} ms, {args.rows} rows "
                  f"{many:.2f} ms, per row {many / args.rows:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
