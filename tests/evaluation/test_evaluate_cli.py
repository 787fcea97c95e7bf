"""`deepvis evaluate` and the curve plots against the default model's server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepvis
from deepvis._cli import main


def test_cli_evaluate_prints_a_table_json_and_plots(
    digits_server, sample_paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [str(p) for p in sample_paths[:3]]
    args = ["--server", digits_server.bound_address, "evaluate", *images]
    args += ["--method", "grad-cam,saliency", "--steps", "16", "--perturbations", "3"]
    assert main([*args, "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert header == [
        "method",
        "deletion",
        "insertion",
        "spearman",
        "ssim",
        "infidelity",
        "sensitivity",
    ]
    assert out[1].split()[0] == "grad-cam@conv3" and out[2].split()[0] == "saliency"
    assert all(float(v) == float(v) for v in out[1].split()[1:])  # numbers, no "-"
    assert "3 images" in out[3]
    for method in ("grad-cam", "saliency"):
        for kind in ("deletion", "insertion", "randomization"):
            with Image.open(tmp_path / f"{method}.{kind}.png") as picture:
                assert picture.size == (320, 200)

    assert main([*args, "--metrics", "deletion,infidelity", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "digits" and data["steps"] == 16 and len(data["classes"]) == 3
    grad_cam = data["methods"]["grad_cam"]
    assert set(grad_cam) == {"layer", "deletion", "infidelity"}
    assert len(grad_cam["deletion"]["curve"]) == 3 and len(grad_cam["deletion"]["curve"][0]) == 17
    with deepvis.Client(digits_server.bound_address, timeout=300) as client:
        ev = client.evaluate(images, method="grad_cam", metrics="deletion", steps=16)
    assert ev.deletion is not None
    np.testing.assert_allclose(grad_cam["deletion"]["auc"], ev.deletion.auc, rtol=1e-6)


def test_cli_evaluate_refuses_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "x.png", "--method", "activations"])
    assert info.value.code == 2 and "grad-cam" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "x.png", "--metrics", "accuracy"])


def test_curve_plot_draws_each_series_and_skips_nan() -> None:
    curves = np.array([[1.0, 0.5, np.nan, 0.0], [0.9, 0.6, 0.2, 0.1]])
    image = deepvis.curve_plot({"a": curves, "b": [-1.0, 0.0, 0.5, 1.0]}, size=(200, 120))
    assert image.size == (200, 120) and image.mode == "RGB"
    counted = image.getcolors(200 * 120)
    assert counted is not None
    colours = {c for _, c in counted}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours
    with pytest.raises(ValueError, match="same number of points"):
        deepvis.curve_plot({"a": [1.0, 2.0], "b": [1.0]})
