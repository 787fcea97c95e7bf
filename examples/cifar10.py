"""Case study 2: a small CNN on CIFAR-10 colour images, served and explained by deepvis."""

from __future__ import annotations

import codecs
import hashlib
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from common import CaseStudy, Dataset, random_flip, random_shift, run
from example_nets import CifarNet

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # The batches were pickled by Python 2's numpy; newer writers use numpy._core.
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        # How Python 3 writes bytes at pickle protocol 2 (a pure str -> bytes function).
        ("_codecs", "encode"): codecs.encode,
    }


class BatchUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches allowing only numpy arrays, lists, dicts, str, bytes and
    numbers: any other global (a function to call, a class to build) is refused, so a
    tampered file cannot run code. torchvision's CIFAR10 uses plain pickle.load."""

    ALLOWED = _numpy_reconstructors()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR batch holds only arrays and lists"
            ) from None


def read_batch(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        entry = BatchUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a {type(entry).__name__})")
    return entry


def read_split(folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in files:
        entry = read_batch(folder / name)
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(f"{folder / name}: expected data [N, 3072] and N labels")
        xs.append(data.reshape(-1, 3, 32, 32))  # stored as R, G, B planes of 32x32
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def is_official(folder: Path) -> bool:
    """Whether the batch files are the published ones (torchvision's MD5 sums)."""
    known = torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list
    return all(
        hashlib.md5((folder / name).read_bytes(), usedforsecurity=False).hexdigest() == md5
        for name, md5 in known
    )


def load_cifar10(root: Path, download: bool) -> Dataset:
    """CIFAR-10 as torchvision keeps it: ROOT/cifar-10-batches-py/{data_batch_1..5,
    test_batch, batches.meta}, Python pickles of numpy arrays, read by BatchUnpickler.
    With `download`, torchvision fetches and MD5-checks the archive and extracts it."""
    folder = root / BASE_FOLDER
    if download and not folder.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        c = torchvision.datasets.CIFAR10
        download_and_extract_archive(c.url, str(root), filename=c.filename, md5=c.tgz_md5)
    missing = [n for n in (*TRAIN_FILES, *TEST_FILES, "batches.meta") if not (folder / n).is_file()]
    if missing:
        raise SystemExit(
            f"cifar10: {folder} lacks {', '.join(missing)}; pass --download to fetch CIFAR-10"
        )
    train_x, train_y = read_split(folder, TRAIN_FILES)
    test_x, test_y = read_split(folder, TEST_FILES)
    names = read_batch(folder / "batches.meta")["label_names"]
    official = "the published files" if is_official(folder) else "not the published files"
    labels = tuple(str(n) for n in names)
    note = f"CIFAR-10 from {folder} ({official})"
    return Dataset(train_x, train_y, test_x, test_y, labels, note)


CASE = CaseStudy(
    name="cifar10",
    arch="example_nets:CifarNet",
    net=CifarNet,
    load=load_cifar10,
    # The classic CIFAR augmentation: shifts of up to 4 pixels and left-right mirroring.
    augment=lambda x, gen: random_flip(random_shift(x, gen, pad=4), gen),
    activation_layers=("relu2", "relu4", "relu6"),
    epochs=15,
    learning_rate=3e-3,
    weight_decay=5e-4,
)


if __name__ == "__main__":
    sys.exit(run(CASE))
