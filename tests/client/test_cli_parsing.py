"""The `deepvis` command without a server: its argument parsing, usage errors, and what it
says when the server is unreachable or an input is missing."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import deepvis
from deepvis import _cli, _cli_explain
from deepvis._cli import main

from .fakes import (
    DEAD_ADDRESS,
    err_lines,
    png_bytes,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


@pytest.mark.parametrize(
    ("text", "neuron"),
    [
        ("conv3:12", deepvis.Neuron("conv3", 12)),
        ("layer4.1.conv2:0:3:4", deepvis.Neuron("layer4.1.conv2", 0, 3, 4)),
        ("conv3:12:0:0", deepvis.Neuron("conv3", 12, 0, 0)),
    ],
)
def test_cli_parse_neuron(text: str, neuron: deepvis.Neuron) -> None:
    assert _cli._parse_neuron(text) == neuron


@pytest.mark.parametrize(
    "text",
    ["conv3", "conv3:", ":3", "conv3:a", "conv3:1:2", "conv3:1:2:3:4", "conv3:-1", "c:1:y:2"],
)
def test_cli_parse_neuron_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _cli._parse_neuron(text)


def test_cli_parse_channel() -> None:
    assert _cli._parse_channel("conv3:5") == deepvis.Neuron("conv3", 5)
    for bad in ("conv3", "conv3:5:1:1", ":5", "conv3:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _cli._parse_channel(bad)


@pytest.mark.parametrize(
    ("text", "size"), [("128x96", (128, 96)), ("64X64", (64, 64)), ("32", (32, 32))]
)
def test_cli_parse_size(text: str, size: tuple[int, int]) -> None:
    assert _cli._parse_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "0x8", "8x0", "8x8x8", "-8x8", "8xa", "8.5x8"])
def test_cli_parse_size_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _cli._parse_size(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    return _cli._build_parser().parse_args(argv)


def test_cli_explain_arguments() -> None:
    args = _parse(
        ["explain", "a.png", "--out", "o", "--method", "grad-cam", "--neuron", "conv3:1:2:3"]
    )
    assert args.method == ["grad_cam"] and args.neuron == deepvis.Neuron("conv3", 1, 2, 3)
    assert args.target is None and args.layers is None and args.top_k_channels == 0
    args = _parse(
        ["explain", "a.png", "--out", "o", "--method", "activations", "--layer", "c1"]
        + ["--layer", "c2", "--top-k-channels", "3", "--target", "2"]
    )
    assert args.layers == ["c1", "c2"] and args.top_k_channels == 3 and args.target == 2
    for name in deepvis.methods():
        for spelling in (name, name.replace("_", "-"), name.upper()):
            assert _parse(["explain", "a.png", "-o", "o", "--method", spelling]).method == [name]
    several = _parse(["explain", "a.png", "-o", "o", "-m", "grad-cam,saliency, guided_backprop"])
    assert several.method == ["grad_cam", "saliency", "guided_backprop"]


def test_cli_visualize_arguments() -> None:
    args = _parse(["visualize", "--class", "3", "--out", "o"])
    # The learning rate and parameterization left to the server: the preset's defaults.
    assert args.class_index == 3 and args.steps == 512 and args.lr is None
    assert args.size is None and args.batch == 1 and args.param is None
    assert args.preset == "lucid" and args.l2 is None
    assert _cli._objective(args) == 3
    args = _parse(["visualize", "--channel", "conv3:12", "--out", "o", "--size", "64x48"])
    assert _cli._objective(args) == deepvis.Neuron("conv3", 12) and args.size == (64, 48)
    args = _parse(["visualize", "--layer-objective", "conv3", "--out", "o", "--param", "pixel"])
    assert _cli._objective(args) == deepvis.Layer("conv3") and args.param == "pixel"
    args = _parse(["visualize", "--neuron", "conv3:12:4:4", "--out", "o", "--no-transforms"])
    assert _cli._objective(args) == deepvis.Neuron("conv3", 12, 4, 4) and args.no_transforms
    args = _parse(["visualize", "--class", "3", "--out", "o", "--preset", "class-model"]
                  + ["--l2", "0.01"])  # fmt: skip
    assert args.preset == "class-model" and args.l2 == 0.01


@pytest.mark.parametrize(
    ("objective", "negate", "name"),
    [
        (3, False, "class-3"),
        (deepvis.Neuron("conv3", 12), False, "conv3-c12"),
        (deepvis.Neuron("conv3", 12, 4, 4), False, "conv3-c12-y4-x4"),
        (deepvis.Layer("conv3"), False, "layer-conv3"),
        (deepvis.Layer("layer1.0/odd name"), True, "layer-layer1.0_odd_name-neg"),
    ],
)
def test_cli_default_visualization_name(objective: Any, negate: bool, name: str) -> None:
    assert _cli._objective_name(objective, negate) == name


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "x.png", "--out", "o", "--target", "1", "--neuron", "c:1"],
        ["explain", "x.png", "--out", "o", "--neuron", "conv3"],
        ["explain", "x.png", "--out", "o", "--top-k-channels", "-1"],
        ["visualize", "--out", "o"],
        ["visualize", "--class", "1", "--channel", "c:1", "--out", "o"],
        ["visualize", "--class", "1"],
        ["visualize", "--class", "1", "--out", "o", "--size", "0x8"],
        ["visualize", "--class", "1", "--out", "o", "--param", "rgb"],
        ["visualize", "--class", "1", "--out", "o", "--steps", "-2"],
        ["layers", "a", "b"],
    ],
)
def test_cli_new_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_cli_explain_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    rc = main(
        [
            "explain",
            str(image),
            "--server",
            DEAD_ADDRESS,
            "--timeout",
            "2",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    out, err = err_lines(capsys)
    assert rc == 1
    assert out == []
    assert len(err) == 1, err
    assert err[0].startswith("Unavailable: ")


def test_cli_models_unreachable_server_from_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEEPVIS_SERVER", DEAD_ADDRESS)
    assert main(["models", "--timeout", "2"]) == 1
    _, err = err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("Unavailable: ")


def test_cli_missing_image_fails_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "explain",
            str(tmp_path / "nope.png"),
            "--server",
            DEAD_ADDRESS,
            "--model",
            "m",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    _, err = err_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("FileNotFoundError: "), err


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in (
        ["explain", "x.png", "--out", str(tmp_path), "--method", "lime"],
        ["explain", "x.png", "--out", str(tmp_path), "--method", "grad_cam,grad-cam"],
        ["explain", "x.png", "--out", str(tmp_path), "--jobs", "0"],
        ["explain", "x.png", "--out", str(tmp_path), "--format", "jpg"],
        ["explain", "x.png", "--out", str(tmp_path), "--clip", "0"],
        ["explain", "x.png"],
        ["explain", "--out", str(tmp_path)],
        [],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_cli_output_names_never_collide(tmp_path: Path) -> None:
    from deepvis._cli_explain import output_keys

    paths = [Path("a/cat.png"), Path("b/cat.jpg"), Path("dog.png"), Path("c/we ird:name.png")]
    keys = output_keys(paths)
    assert len(set(keys)) == 4 and keys[2] == "dog" and keys[3] == "we_ird_name"
    assert keys[0].startswith("cat-") and keys[1].startswith("cat-") and keys[0] != keys[1]
    assert output_keys(paths) == keys  # the same every run: a rerun finds its files


def test_cli_refuses_a_path_that_names_nothing_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["explain", "a/cat.png", "--server", DEAD_ADDRESS, "--out", str(tmp_path / "o")])
    _, err = err_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("FileNotFoundError: ")
    assert not (tmp_path / "o").exists()


def test_cli_rollout_flags() -> None:
    args = _parse(["explain", "a.png", "--out", "o", "--method", "attention-rollout"])
    assert _cli_explain._rollout(args) is None  # the server's defaults
    args = _parse(
        ["explain", "a.png", "--out", "o", "--method", "attention-rollout", "--head-fusion", "max"]
        + ["--discard-ratio", "0.9"]
    )
    assert _cli_explain._rollout(args) == deepvis.Rollout("max", 0.9)
    args = _parse(["explain", "a.png", "--out", "o", "--discard-ratio", "0.5"])
    assert _cli_explain._rollout(args) == deepvis.Rollout("mean", 0.5)
    with pytest.raises(SystemExit):
        _parse(["explain", "a.png", "--out", "o", "--head-fusion", "median"])
