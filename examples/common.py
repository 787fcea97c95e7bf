"""What the case studies share: training, export for deepvis-server, serving and explaining."""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import deepvis
from deepvis_server.process import ServerProcess

EXAMPLES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Dataset:
    """Both splits in memory as uint8 [N, C, H, W] pictures with int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    labels: tuple[str, ...]
    note: str = ""  # what was read, for the log and metrics.json


@dataclass(frozen=True)
class CaseStudy:
    """One classic case study: its data, its network and how to train it."""

    name: str  # model name on the server, file names
    arch: str  # 'example_nets:<Class>', as the server imports it
    net: Callable[[int], nn.Module]
    load: Callable[[Path, bool], Dataset]  # (root, download) -> Dataset
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # on [0, 1] batches
    activation_layers: tuple[str, ...]  # shown by the activations method
    epochs: int
    learning_rate: float
    batch_size: int = 128
    weight_decay: float = 0.0


def parse_args(case: CaseStudy, argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=f"Train the {case.name} case study, export it for deepvis-server, serve it "
        "and write guided backprop, activation, Grad-CAM and feature visualization pictures."
    )
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="dataset root (torchvision layout)"
    )
    p.add_argument(
        "--download", action="store_true", help="fetch the dataset into --data if absent"
    )
    p.add_argument("--out", type=Path, default=Path("out") / case.name, help="output directory")
    p.add_argument("--epochs", type=int, default=case.epochs)
    p.add_argument(
        "--limit", type=int, default=0, help="use at most K images of each split (0: all)"
    )
    p.add_argument("--batch-size", type=int, default=case.batch_size)
    p.add_argument(
        "--lr", type=float, default=case.learning_rate, help="peak one-cycle learning rate"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda[:N], for training and serving"
    )
    p.add_argument("--steps", type=int, default=256, help="feature visualization steps")
    p.add_argument("--address", default="", help="serve on HOST:PORT (default: a free local port)")
    p.add_argument("--no-serve", action="store_true", help="train and export only")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.limit < 0 or args.batch_size < 1 or args.steps < 1:
        p.error("--epochs, --batch-size and --steps must be positive, --limit not negative")
    return args


def limit_split(
    x: torch.Tensor, y: torch.Tensor, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most k items, drawn at random (fixed by the seed); all when k is 0."""
    if k <= 0 or k >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]
    return x[idx], y[idx]


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 [N, C, H, W] pictures scaled to [0, 1], 4 decimals."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double() / 255.0
    return (
        [round(float(v), 4) for v in flat.mean(1)],
        [round(float(v), 4) for v in flat.std(1)],
    )


def random_shift(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Shifts each image by up to `pad` pixels (zero padding, then a random crop)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    )


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirrors each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    case: CaseStudy, data: Dataset, mean: list[float], std: list[float], args: argparse.Namespace
) -> nn.Module:
    """Adam with a one-cycle schedule and the case's augmentation, on `args.device`."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = select_device(args.device)
    model = case.net(len(data.labels)).to(device)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    n, bs = len(data.train_x), args.batch_size
    steps_per_epoch = (n + bs - 1) // bs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=case.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            x = case.augment(data.train_x[idx].float() / 255.0, gen).to(device)
            y = data.train_y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model((x - m) / s), y)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total / n:.4f} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    return model.eval().cpu()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Predicted classes of uint8 [N, C, H, W] pictures, preprocessed as the server does."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return torch.cat(
        [model((x[i : i + 512].float() / 255.0 - m) / s).argmax(1) for i in range(0, len(x), 512)]
    )


def toml_value(v: object) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(e) for e in v) + "]"
    return repr(v)


def export(
    case: CaseStudy, model: nn.Module, data: Dataset, mean: list[float], std: list[float], out: Path
) -> Path:
    """Writes the weights (safetensors), labels.txt and config.toml; returns the config path."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{case.name}.safetensors"
    save_file(
        {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(weights)
    )
    weights.chmod(0o644)  # safetensors writes owner-only files; the server may run as another user
    (out / "labels.txt").write_text("".join(f"{label}\n" for label in data.labels))
    _, channels, height, width = data.train_x.shape
    table = {
        "name": case.name,
        "arch": case.arch,
        "weights": weights.name,
        "num_classes": len(data.labels),
        "channels": channels,
        "input_size": [height, width],
        "mean": mean,
        "std": std,
        "labels": "labels.txt",
        "max_batch_size": 32,
    }
    config = out / "config.toml"
    config.write_text(
        f"# {case.name} case study, written by examples/{case.name}.py. The arch is imported from\n"
        f"# examples/example_nets.py, so serve it with examples/ on PYTHONPATH:\n"
        f"#   PYTHONPATH={EXAMPLES_DIR} deepvis-server --config {config.resolve()}\n"
        "[[models]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    )
    return config


def save_samples(data: Dataset, pred: torch.Tensor, out: Path) -> list[Path]:
    """One held-out picture per class (a correctly classified one when there is one)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, label in enumerate(data.labels):
        of_class = torch.nonzero(data.test_y == k).flatten()
        if len(of_class) == 0:
            continue
        hits = of_class[pred[of_class] == k]
        i = int((hits if len(hits) else of_class)[0])
        pixels = data.test_x[i].permute(1, 2, 0).numpy()
        img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        path = out / f"{k}_{re.sub(r'[^A-Za-z0-9]+', '-', label)}.png"
        img.save(path)
        paths.append(path)
    return paths


def start_server(config: Path, address: str, device: str) -> ServerProcess:
    """`deepvis-server --config config` in its own process, examples/ on its PYTHONPATH;
    returns once it serves (its log goes to this terminal)."""
    print("$ PYTHONPATH=examples deepvis-server --config", config, "--address", address, flush=True)
    server = ServerProcess(
        *("--config", str(config), "--device", device, "--log-level", "WARNING"),
        address=address,
        pythonpath=[EXAMPLES_DIR],
        log=False,
        timeout=180.0,
    )
    print(server.serving_line, flush=True)
    return server


def explain_all(
    client: deepvis.Client,
    case: CaseStudy,
    num_classes: int,
    samples: list[Path],
    out: Path,
    steps: int,
) -> list[Path]:
    """The three methods on every sample, one folder per method, the server's pictures,
    and feature visualizations of every class and of one neuron."""
    written: list[Path] = []

    def save(img: Image.Image | None, path: Path) -> None:
        if img is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            written.append(path)

    runs = [
        # 1. Guided backpropagation: which pixels each decision rests on.
        ("guided-backprop", "guided_backprop", {}),
        # 2. Activations of the chosen layers (the 16 strongest maps each, and where the layer
        #    fires) and Grad-CAM, their class-discriminative form, on the default layer.
        (
            "activations",
            "activations",
            {"layer": list(case.activation_layers), "top_k_channels": 16},
        ),
        ("grad-cam", "grad_cam", {}),
    ]
    acts: list[deepvis.Explanation] = []
    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent: the server batches them
        for sub, method, kwargs in runs:
            results = list(
                pool.map(
                    lambda p, m=method, kw=kwargs: client.explain(
                        str(p), model=case.name, method=m, **kw
                    ),
                    samples,
                )
            )
            for path, res in zip(samples, results, strict=True):
                save(res.image, out / sub / f"{path.stem}.{sub}.png")
                for name, img in res.images.items():
                    save(img, out / sub / f"{path.stem}.{sub}.{name}.png")
                print(
                    f"{sub}: {path.name} -> {res.predictions[0].label} "
                    f"({res.predictions[0].score:.2f}), batch of {res.batch_size}",
                    flush=True,
                )
            if method == "activations":
                acts = results
        # 3. Feature visualization: what each class logit wants to see (the renders share
        #    one optimization batch on the server), and the strongest channel of the last
        #    activation layer on the first sample, at its centre, with where it fires there.
        vis = list(
            pool.map(
                lambda k: client.visualize(k, model=case.name, steps=steps, seed=0),
                range(num_classes),
            )
        )
    for k, v in enumerate(vis):
        save(v.images[0], out / "visualize" / f"class-{k}_0.png")
    layer = case.activation_layers[-1]
    channel = int(acts[0].arrays[f"{layer}.channels"][0])
    _, h, w = acts[0].arrays[layer].shape
    neuron = deepvis.Neuron(layer, channel, h // 2, w // 2)
    v = client.visualize(neuron, model=case.name, steps=steps, seed=0, input=str(samples[0]))
    stem = f"{layer}-c{channel}-y{h // 2}-x{w // 2}"
    save(v.images[0], out / "visualize" / f"{stem}_0.png")
    save(v.attribution_image, out / "visualize" / f"{stem}.attribution.png")
    print(f"visualize: classes 0..{len(vis) - 1} and {stem} ({steps} steps)", flush=True)
    return written


def run(case: CaseStudy, argv: Sequence[str] | None = None) -> int:
    """The whole case study: load, train, evaluate, export, serve, explain."""
    args = parse_args(case, argv)
    data = case.load(args.data, args.download)
    train_x, train_y = limit_split(data.train_x, data.train_y, args.limit, args.seed)
    test_x, test_y = limit_split(data.test_x, data.test_y, args.limit, args.seed + 1)
    data = Dataset(train_x, train_y, test_x, test_y, data.labels, data.note)
    print(
        f"{case.name}: {data.note}; {len(train_x)} training, {len(test_x)} test images", flush=True
    )
    mean, std = channel_stats(train_x)
    t0 = time.perf_counter()
    model = train(case, data, mean, std, args)
    elapsed = time.perf_counter() - t0
    pred = predict(model, test_x, mean, std)
    accuracy = float((pred == test_y).double().mean())
    per_class = {
        label: round(float((pred[test_y == k] == k).double().mean()), 4)
        for k, label in enumerate(data.labels)
        if bool((test_y == k).any())
    }
    print(f"test accuracy: {accuracy:.4f} ({len(test_x)} images), trained in {elapsed:.1f} s")
    out: Path = args.out
    config = export(case, model, data, mean, std, out)
    metrics = {
        "test_accuracy": round(accuracy, 4),
        "per_class_accuracy": per_class,
        "n_train": len(train_x),
        "n_test": len(test_x),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(elapsed, 1),
        "mean": mean,
        "std": std,
        "data": data.note,
        "torch_version": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    samples = save_samples(data, pred, out / "samples")
    print(f"wrote {config}, {out / 'metrics.json'} and {len(samples)} samples", flush=True)
    if args.no_serve:
        return 0
    from deepvis_server.config import load_config

    load_config(config)  # a bad config fails here, with the key it names
    server = start_server(config, args.address or "127.0.0.1:0", args.device)
    try:
        with deepvis.Client(server.address, timeout=600) as client:
            written = explain_all(
                client, case, len(data.labels), samples, out / "pictures", args.steps
            )
    finally:
        code = server.stop(timeout=60)
    print(f"wrote {len(written)} pictures to {out / 'pictures'} (server exited with {code})")
    return 0 if code == 0 and written else 1
