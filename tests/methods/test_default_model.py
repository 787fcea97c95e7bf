"""The embedded default model: its weights load, it is accurate, and its samples are right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import deepvis_server.default_model
from deepvis_server.default_model import DigitsNet

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_DIR = Path(__file__).resolve().parents[2] / "server" / "deepvis_server" / "default_model"


@pytest.fixture(scope="module")
def config() -> dict:
    with (MODEL_DIR / "config.toml").open("rb") as f:
        return tomllib.load(f)["models"][0]


@pytest.fixture(scope="module")
def model(config: dict) -> DigitsNet:
    net = DigitsNet(config["num_classes"])
    net.load_state_dict(load_file(str(MODEL_DIR / config["weights"])), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def train_module() -> ModuleType:
    # Only the reproduction needs scikit-learn; the server itself never imports it.
    pytest.importorskip("sklearn")
    from deepvis_server.default_model import train

    return train


def test_weights_load_strictly_as_float32(model: DigitsNet) -> None:
    state = load_file(str(MODEL_DIR / "digits_cnn.safetensors"))
    assert set(state) == set(model.state_dict())
    assert all(t.dtype == torch.float32 for t in state.values())


def test_importing_the_model_does_not_import_sklearn() -> None:
    # A fresh interpreter, since this session may already have imported sklearn elsewhere;
    # it must find the same deepvis_server, however this session found it.
    root = Path(deepvis_server.default_model.__file__).resolve().parents[2]
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    code = "import sys, deepvis_server.default_model; print('sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def test_heldout_accuracy_matches_metrics(
    model: DigitsNet, config: dict, train_module: ModuleType
) -> None:
    split = train_module.load_split()
    mean, std = train_module.pixel_stats(split.train_images)
    # The config must carry exactly the statistics of the training pixels.
    assert [mean] == config["mean"] and [std] == config["std"]
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_test"]) == (
        len(split.train_labels),
        len(split.test_labels),
    )
    acc = train_module.accuracy(model, split.test_images, split.test_labels, mean, std)
    assert acc >= 0.95
    assert acc == pytest.approx(metrics["heldout_accuracy"], abs=0.005)


def test_labels_file(config: dict) -> None:
    labels = (MODEL_DIR / config["labels"]).read_text().splitlines()
    assert labels == [str(i) for i in range(10)]


@pytest.mark.parametrize("label", range(10))
def test_sample_is_classified_as_its_label(model: DigitsNet, config: dict, label: int) -> None:
    img = Image.open(MODEL_DIR / "samples" / f"digit_{label}.png")
    assert img.mode == "L" and img.size == (32, 32)
    # The server's preprocessing for a one-channel model: pixels/255, then (x - mean) / std.
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
    x = (x - config["mean"][0]) / config["std"][0]
    with torch.no_grad():
        assert int(model(x).argmax(1)) == label
