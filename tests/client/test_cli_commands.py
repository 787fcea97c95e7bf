"""The `deepvis` commands against an in-process fake server: what they send, print and write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deepvis._cli import main
from deepvis.v1 import deepvis_pb2

from .fakes import (
    DEAD_ADDRESS,
    FakeExplainer,
    err_lines,
    png_bytes,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


def test_cli_models(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    assert main(["models", "--server", address]) == 0
    out, err = err_lines(capsys)
    assert err == []
    assert out[0].split() == [
        "tiny",
        "arch=tests:tiny",
        "classes=3",
        "input=3x8x8",
        "methods=guided-backprop,activations",
    ]
    assert len(out) == 2


def test_cli_explain_writes_outputs(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    images = []
    for name in ("cat", "dog", "owl"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes())
        images.append(str(path))
    out_dir = tmp_path / "out" / "nested"
    rc = main(
        ["explain", *images, "--server", address, "--out", str(out_dir)]
        + ["--format", "png,npy", "--float16", "--target", "2"]
    )
    out, err = err_lines(capsys)
    assert rc == 0, err
    assert err == []
    assert len(out) == 3
    for line in out:
        name = Path(line.split()[0]).stem
        assert line.startswith(str(tmp_path / f"{name}.png"))
        assert "guided-backprop  top=b (0.900)  target=2  -> " in line
        # OUT/<input>/<method>-t<target>: the map over the input as sent (5x4), and the array.
        png = out_dir / name / "guided-backprop-t2.png"
        with Image.open(png) as img:
            assert img.size == (5, 4) and img.mode == "RGB"
        arr = np.load(out_dir / name / "guided-backprop-t2.npy")
        assert arr.dtype == np.float32 and arr.shape == (3, 8, 8)
    assert all(r.output.array_dtype == deepvis_pb2.DTYPE_FLOAT16 for r in servicer.requests)
    assert all(not r.output.render for r in servicer.requests)  # drawn here, from the arrays
    assert servicer.list_calls == 1


def test_cli_explain_reports_each_failure(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes())
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    out_dir = tmp_path / "out"
    rc = main(["explain", str(good), str(corrupt), "--server", address, "--out", str(out_dir)])
    out, err = err_lines(capsys)
    assert rc == 1
    assert len(out) == 1 and out[0].startswith(str(good))
    assert len(err) == 2 and err[0].startswith(f"UnidentifiedImageError: {corrupt}: ")
    assert err[1] == "deepvis: 1 of 2 inputs failed; 1 written"
    # A file that is no image fails before its call; only png was asked: no array file.
    assert len(servicer.requests) == 1
    assert sorted(p.name for p in (out_dir / "good").iterdir()) == ["guided-backprop.png"]
    assert not (out_dir / "corrupt").exists()


def test_cli_explain_activations_writes_extras(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    out_dir = tmp_path / "out"
    rc = main(
        ["explain", str(image), "--server", address, "--model", "tiny", "--out", str(out_dir)]
        + ["--method", "activations", "--layer", "conv1", "--layer", "act"]
        + ["--top-k-channels", "2", "--save-array"]
    )
    out, err = err_lines(capsys)
    assert rc == 0, err
    assert len(out) == 1
    req = servicer.requests[0]
    assert list(req.layers) == ["conv1", "act"] and req.top_k_channels == 2
    stem = out_dir / "cat" / "activations-conv1+act"
    # The first layer's mean over the input; each layer's grid; the further layer's mean.
    for name in ("", ".conv1.grid", ".act.grid", ".act"):
        assert Path(f"{stem}{name}.png").is_file(), name
    assert np.load(f"{stem}.npy").shape == (3, 8, 8)
    assert np.load(f"{stem}.act.npy").shape == (2, 4, 4)
    channels = np.load(f"{stem}.act.channels.npy")
    assert channels.dtype == np.int64 and channels.tolist() == [1, 0]
    assert f"{stem}.act.channels.npy" in out[0]


def test_cli_explain_neuron(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    rc = main(
        ["explain", str(image), "--server", address, "--out", str(tmp_path / "o")]
        + ["--method", "guided_backprop", "--neuron", "conv1:2:0:3"]
    )
    out, _ = err_lines(capsys)
    assert rc == 0
    target = servicer.requests[0].target.neuron
    assert (target.layer, target.channel, target.y, target.x) == ("conv1", 2, 0, 3)
    assert "target=conv1:2[0,3]" in out[0]
    assert (tmp_path / "o" / "cat" / "guided-backprop-nconv1-c2-y0-x3.png").is_file()


def test_cli_layers(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    assert main(["layers", "--server", address]) == 0
    out, err = err_lines(capsys)
    assert err == []
    assert [line.split() for line in out] == [
        ["conv1", "Conv2d", "64x8x8"],
        ["act", "ReLU", "64x8x8", "calls=3"],
        ["branches", "Split", "-"],
        ["fc", "Linear", "3"],
        ["default-cam-layer=conv1", "non-relu-activations=silu,gelu"],
    ]
    assert main(["layers", "nope", "--server", address]) == 1
    _, err = err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("NotFound: ")
    assert [r.model for r in servicer.describe_requests] == ["tiny", "nope"]


def test_cli_visualize_writes_outputs(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    out_dir = tmp_path / "vis"
    rc = main(
        ["visualize", "--server", address, "--neuron", "conv1:2:0:1", "--steps", "4"]
        + ["--progress-every", "2", "--batch", "2", "--size", "6x5", "--lr", "0.1"]
        + ["--diversity", "0.5", "--seed", "7", "--input", str(image), "--out", str(out_dir)]
        + ["--save-array"]
    )
    out, err = err_lines(capsys)
    assert rc == 0, err
    assert err == []  # the progress bar is off when stderr is no terminal
    req = servicer.visualize_requests[0]
    assert req.model == "tiny" and req.objective.neuron.x == 1 and not req.objective.negate
    assert (req.steps, req.progress_every, req.batch, req.height, req.width) == (4, 2, 2, 6, 5)
    assert req.learning_rate == pytest.approx(0.1) and req.diversity == pytest.approx(0.5)
    assert req.seed == 7 and not req.no_transforms
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_UNSPECIFIED  # the server: FFT
    assert req.input.WhichOneof("kind") == "image"
    name = "conv1-c2-y0-x1"
    for i in range(2):
        assert Image.open(out_dir / f"{name}_{i}.png").size == (5, 6)
    assert (out_dir / f"{name}.attribution.png").is_file()
    assert np.load(out_dir / f"{name}.npy").shape == (2, 3, 6, 5)
    assert np.load(out_dir / f"{name}.attribution.npy").shape == (3, 8, 8)
    assert len(out) == 1
    assert out[0].startswith(f"{name}  objective=1.5  steps=4  -> ")
    assert str(out_dir / f"{name}_1.png") in out[0]


@pytest.mark.parametrize(
    ("objective", "name", "check"),
    [
        (["--class", "1", "--negate"], "class-1-neg", lambda o: o.class_index == 1 and o.negate),
        (["--channel", "conv1:3"], "conv1-c3", lambda o: not o.neuron.HasField("y")),
        (["--layer-objective", "conv1"], "layer-conv1", lambda o: o.layer == "conv1"),
        (["--class", "0", "--name", "mine"], "mine", lambda o: o.class_index == 0),
    ],
)
def test_cli_visualize_objectives(
    fake_server: tuple[str, FakeExplainer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    objective: list[str],
    name: str,
    check: Any,
) -> None:
    address, servicer = fake_server
    rc = main(
        ["visualize", "--server", address, "--model", "tiny", *objective, "--steps", "2"]
        + ["--param", "pixel", "--no-transforms", "--out", str(tmp_path)]
    )
    out, err = err_lines(capsys)
    assert rc == 0, err
    assert err == []  # no progress messages without --progress-every
    req = servicer.visualize_requests[0]
    assert check(req.objective)
    assert req.parameterization == deepvis_pb2.PARAMETERIZATION_PIXEL and req.no_transforms
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}_0.png"]
    assert out[0].startswith(f"{name}  ")


def test_cli_visualize_errors(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    argv = ["visualize", "--server", address, "--out", str(tmp_path), "--steps", "2"]
    assert main([*argv, "--class", "9"]) == 1
    _, err = err_lines(capsys)
    assert err == ["InvalidArgument: class index out of range"]
    assert main([*argv, "--class", "1", "--model", "noresult"]) == 1
    _, err = err_lines(capsys)
    assert err == ["Internal: the Visualize stream ended without a result"]
    assert main([*argv, "--class", "1", "--lr", "nan"]) == 1
    _, err = err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("ValueError: learning_rate")


def test_cli_health(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    assert main(["health", "--server", address]) == 0
    assert err_lines(capsys) == (["SERVING"], [])
    assert main(["health", "--server", address, "--service", "deepvis.v1.Explainer"]) == 0
    assert err_lines(capsys) == (["SERVING"], [])
    assert main(["health", "--server", address, "--service", "sick"]) == 1
    assert err_lines(capsys) == (["NOT_SERVING"], [])
    assert main(["health", "--server", address, "--service", "nope"]) == 1
    assert err_lines(capsys) == ([], ["NotFound: unknown service"])
    assert main(["health", "--server", DEAD_ADDRESS, "--timeout", "2"]) == 1
    out, err = err_lines(capsys)
    assert out == [] and len(err) == 1 and err[0].startswith("Unavailable: ")
