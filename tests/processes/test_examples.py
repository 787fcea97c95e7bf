"""The MNIST and CIFAR-10 case studies end to end, on tiny datasets in torchvision's formats."""

from __future__ import annotations

import builtins
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits

import deepvis
from deepvis_server.config import load_config
from deepvis_server.server import serve_in_thread

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHAPES = ("disc", "square", "ring", "cross", "hbar", "vbar", "diag", "triangle", "dots", "frame")


# --- MNIST: idx files, as torchvision.datasets.MNIST reads them -------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: 0, 0, type 0x08 (uint8), ndim; big-endian dimensions; the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def digits_as_mnist(n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Real handwritten digits (scikit-learn's 8x8 load_digits) drawn MNIST-style: scaled to
    20x20 and centred on a 28x28 black field."""
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))[: n_train + n_test]
    pictures = np.zeros((len(order), 28, 28), dtype=np.uint8)
    for i, j in enumerate(order):
        small = Image.fromarray(np.round(digits.images[j] / 16 * 255).astype(np.uint8))
        pictures[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    labels = digits.target[order].astype(np.uint8)
    return {
        "train-images-idx3-ubyte": pictures[:n_train],
        "train-labels-idx1-ubyte": labels[:n_train],
        "t10k-images-idx3-ubyte": pictures[n_train:],
        "t10k-labels-idx1-ubyte": labels[n_train:],
    }


# --- CIFAR-10: pickled batches, as torchvision.datasets.CIFAR10 keeps them ----------------------


def shape_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 boolean mask of one shape, at a random position and size."""
    yy, xx = np.mgrid[:32, :32]
    cy, cx = rng.integers(11, 21, size=2)
    r = int(rng.integers(6, 10))
    dy, dx = yy - cy, xx - cx
    masks = {
        "disc": dy**2 + dx**2 <= r**2,
        "square": (abs(dy) <= r) & (abs(dx) <= r),
        "ring": (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (r - 3) ** 2),
        "cross": ((abs(dy) <= 1) & (abs(dx) <= r)) | ((abs(dx) <= 1) & (abs(dy) <= r)),
        "hbar": (abs(dy) <= 2) & (abs(dx) <= r + 4),
        "vbar": (abs(dx) <= 2) & (abs(dy) <= r + 4),
        "diag": (abs(dy - dx) <= 1) & (abs(dy) <= r),
        "triangle": (dy <= r) & (dy >= -r) & (abs(dx) <= (dy + r) / 2),
        "dots": ((dy % 6 < 2) & (dx % 6 < 2)) & (abs(dy) <= r) & (abs(dx) <= r),
        "frame": ((abs(dy) <= r) & (abs(dx) <= r)) & ~((abs(dy) <= r - 2) & (abs(dx) <= r - 2)),
    }
    return masks[kind]


def shapes_as_cifar(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """n 32x32 RGB pictures of coloured shapes on noisy backgrounds, as CIFAR rows [n, 3072]."""
    rng = np.random.default_rng(seed)
    labels = [int(k) for k in rng.integers(0, len(SHAPES), size=n)]
    rows = np.empty((n, 3072), dtype=np.uint8)
    for i, k in enumerate(labels):
        img = rng.normal(90, 25, size=(32, 32, 3)) + rng.integers(-40, 40, size=3)
        img[shape_mask(SHAPES[k], rng)] = rng.integers(150, 256, size=3)
        rows[i] = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1).reshape(-1)
    return rows, labels


def write_cifar(folder: Path, per_batch: int, n_test: int) -> None:
    """data_batch_1..5, test_batch and batches.meta, pickled as the published files are."""
    folder.mkdir(parents=True)
    for b, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        rows, labels = shapes_as_cifar(n_test if name == "test_batch" else per_batch, seed=b)
        batch = {
            "batch_label": f"{name} of a tiny test copy",
            "labels": labels,
            "data": rows,
            "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"num_cases_per_batch": per_batch, "label_names": list(SHAPES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


# --- running the examples ------------------------------------------------------------------


def run_example(script: str, data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(EXAMPLES / script), "--data", str(data), "--out", str(out)]
    cmd += ["--epochs", "1", "--limit", "300", "--steps", "8", "--device", "cpu"]
    cmd += ["--address", "127.0.0.1:0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def mnist_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnist-data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in digits_as_mnist(n_train=400, n_test=100).items():
        write_idx(raw / name, array)
    out = tmp_path_factory.mktemp("mnist-out")
    proc = run_example("mnist.py", root, out)
    assert "300 training, 100 test images" in proc.stdout
    return out


@pytest.fixture(scope="module")
def cifar_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar-data")
    write_cifar(root / "cifar-10-batches-py", per_batch=80, n_test=100)
    out = tmp_path_factory.mktemp("cifar-out")
    proc = run_example("cifar10.py", root, out)
    assert "300 training, 100 test images" in proc.stdout
    assert "not the published files" in proc.stdout
    return out


@pytest.fixture
def examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs name `example_nets:...`: the server needs examples/ on its path."""
    monkeypatch.syspath_prepend(str(EXAMPLES))


CASES = {
    # name: (arch, channels, input size, labels, layers shown by the activations method)
    "mnist": ("example_nets:MnistNet", 1, (28, 28), tuple("0123456789"), ("relu2", "relu4")),
    "cifar10": ("example_nets:CifarNet", 3, (32, 32), SHAPES, ("relu2", "relu4", "relu6")),
}


def check_outputs(name: str, out: Path) -> None:
    arch, channels, size, labels, layers = CASES[name]
    assert (out / "labels.txt").read_text().splitlines() == list(labels)
    state = load_file(str(out / f"{name}.safetensors"))
    assert state and all(t.dtype.is_floating_point or "num_batches" in k for k, t in state.items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["n_train"] == 300
    samples = sorted((out / "samples").glob("*.png"))
    assert len(samples) == len(labels)
    with Image.open(samples[0]) as img:
        assert img.size == size[::-1] and img.mode == ("L" if channels == 1 else "RGB")
    pictures = out / "pictures"
    for sample in samples:
        stem = sample.stem
        assert (pictures / "guided-backprop" / f"{stem}.guided-backprop.png").is_file()
        assert (pictures / "grad-cam" / f"{stem}.grad-cam.png").is_file()
        for layer in layers:
            for kind in ("grid", "heatmap"):
                assert (
                    pictures / "activations" / f"{stem}.activations.{layer}.{kind}.png"
                ).is_file()
    vis = pictures / "visualize"
    assert sorted(p.name for p in vis.glob("class-*_0.png")) == sorted(
        f"class-{k}_0.png" for k in range(len(labels))
    )
    assert len(list(vis.glob(f"{layers[-1]}-c*-y*-x*_0.png"))) == 1
    assert len(list(vis.glob(f"{layers[-1]}-c*-y*-x*.attribution.png"))) == 1
    with Image.open(vis / "class-0_0.png") as img:  # rendered at least at the input size
        assert img.size[0] >= size[1] and img.size[1] >= size[0]


def check_served(name: str, out: Path) -> None:
    arch, channels, size, labels, _ = CASES[name]
    config = load_config(out / "config.toml")
    (spec,) = config.models
    assert (spec.name, spec.arch, spec.channels, spec.input_size) == (name, arch, channels, size)
    assert spec.weights == out / f"{name}.safetensors" and spec.labels == out / "labels.txt"
    assert len(spec.mean) == len(spec.std) == channels
    sample = sorted((out / "samples").glob("*.png"))[1]
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            (info,) = client.models()
            assert info.labels == labels
            gb = client.explain(str(sample), model=name, method="guided_backprop", target=1)
            cam = client.explain(str(sample), model=name, method="grad_cam", target=1)
            desc = client.describe(name)
    assert gb.target == 1 and gb.predictions[0].label in labels
    assert gb.array is not None and gb.array.shape == (channels, *size)
    assert np.isfinite(gb.array).all() and np.abs(gb.array).max() > 0
    assert cam.array is not None and cam.array.shape == size
    assert desc.default_cam_layer == CASES[name][4][-1]


def test_mnist_trains_exports_and_explains(mnist_out: Path, examples_importable: None) -> None:
    check_outputs("mnist", mnist_out)
    check_served("mnist", mnist_out)


def test_cifar10_trains_exports_and_explains(cifar_out: Path, examples_importable: None) -> None:
    check_outputs("cifar10", cifar_out)
    check_served("cifar10", cifar_out)


class CodePayload:
    """Unpickling this calls open(marker, "w"): code run by reading a 'batch'."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.marker), "w"))


def test_cifar_batches_are_read_without_running_code(
    tmp_path: Path, examples_importable: None
) -> None:
    import cifar10

    marker = tmp_path / "payload-ran"
    rows, labels = shapes_as_cifar(4, seed=0)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": rows, "labels": labels, "x": CodePayload(marker)}))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (builtins|io)\.open"):
        cifar10.read_batch(path)
    assert not marker.exists()
    # Arrays pickled by today's numpy (protocol 2 and the default) read back exactly.
    for protocol in (2, pickle.DEFAULT_PROTOCOL):
        path.write_bytes(pickle.dumps({"data": rows, "labels": labels}, protocol=protocol))
        entry = cifar10.read_batch(path)
        np.testing.assert_array_equal(entry["data"], rows)
        assert entry["labels"] == labels


def test_a_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    for script, hint in (("mnist.py", "MNIST/raw"), ("cifar10.py", "cifar-10-batches-py")):
        cmd = [sys.executable, str(EXAMPLES / script), "--data", str(tmp_path), "--no-serve"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert hint in proc.stderr and "--download" in proc.stderr, proc.stderr
