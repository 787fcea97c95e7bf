"""Case study 1: a small CNN on MNIST handwritten digits, served and explained by deepvis."""

from __future__ import annotations

import sys
from pathlib import Path

import torchvision
from common import CaseStudy, Dataset, random_shift, run
from example_nets import MnistNet


def load_mnist(root: Path, download: bool) -> Dataset:
    """MNIST as torchvision keeps it: ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    (plain idx files, no pickle). With `download`, torchvision fetches the .gz files and
    checks their MD5 sums first."""
    try:
        train = torchvision.datasets.MNIST(str(root), train=True, download=download)
        test = torchvision.datasets.MNIST(str(root), train=False, download=download)
    except RuntimeError as e:
        raise SystemExit(
            f"mnist: {e} (looked for {root}/MNIST/raw/*-ubyte; pass --download to fetch it)"
        ) from None
    return Dataset(
        train_x=train.data.unsqueeze(1).contiguous(),  # uint8 [N, 1, 28, 28]
        train_y=train.targets.long(),
        test_x=test.data.unsqueeze(1).contiguous(),
        test_y=test.targets.long(),
        labels=tuple(str(k) for k in range(10)),
        note=f"MNIST from {root}/MNIST/raw",
    )


CASE = CaseStudy(
    name="mnist",
    arch="example_nets:MnistNet",
    net=MnistNet,
    load=load_mnist,
    # Digits are centred by their centre of mass: small shifts are the useful augmentation
    # (no flips: a mirrored 2 is not a 2).
    augment=lambda x, gen: random_shift(x, gen, pad=2),
    activation_layers=("relu2", "relu4"),
    epochs=3,
    learning_rate=1e-2,
)


if __name__ == "__main__":
    sys.exit(run(CASE))
