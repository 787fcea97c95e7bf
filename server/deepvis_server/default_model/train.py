"""Reproduces the embedded default model's weights from scikit-learn's load_digits."""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from deepvis_server.default_model import DigitsNet

PACKAGE_DIR = Path(__file__).resolve().parent
SIZE = 32
NUM_CLASSES = 10
SPLIT_SEED = 0  # fixed apart from --seed so the held-out set never changes
TEST_SIZE = 0.2
MAX_SHIFT = 2
BATCH_SIZE = 64
LEARNING_RATE = 1e-2  # peak of the one-cycle schedule; 3e-3 underfits in 30 epochs
DEFAULT_EPOCHS = 30
DEFAULT_SEED = 0

# Built from pieces only to keep the source within the line-length limit.
CONFIG_TEMPLATE = (
    (
        "# The embedded default model: a small CNN trained on scikit-learn's load_digits\n"
        "# (real handwritten digits, 8x8 upsampled to 32x32)."
        " Reproduce: python -m deepvis_server.default_model.train\n"
    )
    + """\
[[models]]
name = "digits"
arch = "deepvis_server.default_model:DigitsNet"
weights = "digits_cnn.safetensors"
num_classes = 10
channels = 1
input_size = [32, 32]
mean = [{mean}]
std = [{std}]
labels = "labels.txt"
max_batch_size = 32
"""
)


@dataclass(frozen=True)
class Split:
    """The digits as 32x32 uint8 pictures, split into training and held-out sets."""

    train_images: np.ndarray  # [N, 32, 32] uint8
    train_labels: np.ndarray  # [N] int64
    test_images: np.ndarray
    test_labels: np.ndarray


def digit_to_image(img8x8: np.ndarray) -> Image.Image:
    """One 8x8 digit (values 0..16) as the 32x32 grayscale picture the server would be sent."""
    pixels = np.round(np.asarray(img8x8, dtype=np.float64) / 16 * 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def load_split() -> Split:
    """Loads load_digits and makes the stratified 80/20 split every consumer must share."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images,
        digits.target,
        test_size=TEST_SIZE,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )

    def pictures(images: np.ndarray) -> np.ndarray:
        # Through PIL, exactly as for the sample PNGs, so training sees the server's pixels.
        return np.stack([np.asarray(digit_to_image(img)) for img in images])

    return Split(
        pictures(x_train), y_train.astype(np.int64), pictures(x_test), y_test.astype(np.int64)
    )


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of pixels/255, rounded to 4 decimals as they are written to config.toml."""
    x = images.astype(np.float64) / 255.0
    return round(float(x.mean()), 4), round(float(x.std()), 4)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] pictures as float32 [N, 1, H, W] in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def preprocess(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 pictures as the model's input: pixels/255, then normalised as the server does."""
    return (to_unit(images) - mean) / std


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class indices for already-preprocessed inputs."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, mean: float, std: float
) -> float:
    """Fraction of uint8 pictures classified as their label."""
    pred = predict(model, preprocess(images, mean, std))
    return float((pred == torch.from_numpy(labels)).double().mean())


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shifts each [0, 1] picture by up to MAX_SHIFT pixels, filling with background (0)."""
    n, _, h, w = x.shape
    # Pad before normalising so the revealed border is true background, not the mean.
    padded = nn.functional.pad(x, (MAX_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def seed_everything(seed: int) -> torch.Generator:
    """Fixes every source of randomness the training touches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def train(split: Split, mean: float, std: float, epochs: int, seed: int) -> DigitsNet:
    """Trains DigitsNet with Adam, a one-cycle schedule and random shifts."""
    gen = seed_everything(seed)
    model = DigitsNet(NUM_CLASSES)
    x = to_unit(split.train_images)
    y = torch.from_numpy(split.train_labels)
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LEARNING_RATE, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            inputs = (random_shift(x[idx], gen) - mean) / std
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), y[idx])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def write_outputs(
    model: DigitsNet,
    split: Split,
    out_dir: Path,
    mean: float,
    std: float,
    acc: float,
    seed: int,
    epochs: int,
) -> None:
    """Writes the weights, labels, config, metrics and one correctly classified sample per class."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    weights = out_dir / "digits_cnn.safetensors"
    save_file(state, str(weights))
    # safetensors writes owner-only files; a packaged model must be readable by the server's user.
    weights.chmod(0o644)
    (out_dir / "labels.txt").write_text("".join(f"{i}\n" for i in range(NUM_CLASSES)))
    (out_dir / "config.toml").write_text(CONFIG_TEMPLATE.format(mean=mean, std=std))
    metrics = {
        "heldout_accuracy": round(acc, 6),
        "n_train": len(split.train_labels),
        "n_test": len(split.test_labels),
        "seed": seed,
        "epochs": epochs,
        "mean": mean,
        "std": std,
        "torch_version": torch.__version__,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    samples = out_dir / "samples"
    samples.mkdir(exist_ok=True)
    pred = predict(model, preprocess(split.test_images, mean, std)).numpy()
    for label in range(NUM_CLASSES):
        hits = np.flatnonzero((split.test_labels == label) & (pred == label))
        if len(hits) == 0:
            raise RuntimeError(f"no held-out {label} is classified correctly")
        Image.fromarray(split.test_images[hits[0]], mode="L").save(samples / f"digit_{label}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=PACKAGE_DIR)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    # Pinned so the result and the timing do not depend on the machine's core count.
    torch.set_num_threads(2)
    split = load_split()
    mean, std = pixel_stats(split.train_images)
    t0 = time.perf_counter()
    model = train(split, mean, std, args.epochs, args.seed)
    elapsed = time.perf_counter() - t0
    acc = accuracy(model, split.test_images, split.test_labels, mean, std)
    write_outputs(model, split, args.out_dir, mean, std, acc, args.seed, args.epochs)
    print(
        f"held-out accuracy: {acc:.4f} ({len(split.test_labels)} images), "
        f"mean={mean} std={std}, trained in {elapsed:.1f} s -> {args.out_dir}"
    )


if __name__ == "__main__":
    main()
