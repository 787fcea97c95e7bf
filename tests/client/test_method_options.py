"""LRP's, SmoothGrad's and integrated gradients' options in the client and the CLI: what
reaches the wire, what the client refuses before sending (saying what is valid), and the CLI's
flags giving what the library gives, against a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import deepvis
from deepvis import _convert
from deepvis._cli import main
from deepvis.v1 import deepvis_pb2 as pb

X = np.zeros((1, 32, 32), np.float32)


def build(method: str, **kwargs) -> pb.ExplainRequest:
    args = {
        "model": "digits",
        "target": None,
        "layer": None,
        "render": False,
        "array_dtype": "float32",
        "top_k": 5,
    }
    return _convert.request_to_pb(X, method=method, **(args | kwargs))


def test_the_name_lists_are_the_schemas() -> None:
    assert deepvis.composites()[0] == "epsilon_plus_flat"
    assert set(deepvis.composites()) == {
        n.removeprefix("LRP_COMPOSITE_").lower()
        for n in pb.LrpComposite.keys()
        if n != "LRP_COMPOSITE_UNSPECIFIED"
    }
    assert deepvis.smooth_kinds() == ["smoothgrad", "smoothgrad_sq", "vargrad"]
    assert "gausslegendre" in deepvis.integration_methods()
    assert "expected_gradients" in deepvis.integration_methods()
    assert deepvis.baseline_kinds() == ["zero", "black", "blur", "uniform", "images"]


def test_options_reach_the_wire() -> None:
    msg = build("lrp", composite="epsilon_gamma_box", epsilon=0.01, gamma=0.5)
    assert msg.method == pb.METHOD_LRP
    assert msg.lrp.composite == pb.LRP_COMPOSITE_EPSILON_GAMMA_BOX
    assert msg.lrp.epsilon == pytest.approx(0.01)
    assert msg.lrp.gamma == 0.5
    assert not build("lrp").HasField("lrp")  # unset: the server's defaults
    assert not build("lrp", composite="deep_taylor").lrp.HasField("epsilon")

    msg = build("saliency", smooth=deepvis.Smooth(samples=7, noise=0.2, kind="vargrad", seed=3))
    assert (msg.smooth.samples, msg.smooth.kind, msg.smooth.seed) == (
        7,
        pb.SMOOTH_KIND_VARGRAD,
        3,
    )
    assert msg.smooth.noise == pytest.approx(0.2)
    assert not build("saliency").HasField("smooth")

    baseline = np.ones((1, 32, 32), np.float32)
    msg = build(
        "integrated_gradients",
        integrated_gradients=deepvis.IntegratedGradients(
            steps=12, method="riemann_middle", images=[baseline, baseline], seed=5
        ),
    )
    ig = msg.integrated_gradients
    assert (ig.steps, ig.method, ig.baseline, ig.seed) == (
        12,
        pb.INTEGRATION_METHOD_RIEMANN_MIDDLE,
        pb.BASELINE_KIND_IMAGES,  # images given, no baseline named
        5,
    )
    assert len(ig.baseline_images) == 2
    assert ig.baseline_images[0].tensor.shape == [1, 32, 32]
    msg = build(
        "integrated_gradients",
        integrated_gradients=deepvis.IntegratedGradients(baseline="uniform", samples=4),
    )
    assert msg.integrated_gradients.baseline == pb.BASELINE_KIND_UNIFORM
    assert msg.integrated_gradients.baseline_samples == 4
    assert msg.integrated_gradients.method == pb.INTEGRATION_METHOD_GAUSS_LEGENDRE


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "words"),
    [
        ("lrp", {"composite": "zplus"}, ValueError, ["composite", "epsilon_plus_flat", "zplus"]),
        ("saliency", {"composite": "epsilon"}, ValueError, ["options of method lrp"]),
        ("lrp", {"epsilon": float("nan")}, ValueError, ["epsilon", "finite"]),
        ("saliency", {"smooth": deepvis.Smooth(kind="mean")}, ValueError, ["vargrad", "mean"]),
        ("saliency", {"smooth": deepvis.Smooth(samples=300)}, ValueError, ["smooth.samples"]),
        ("saliency", {"smooth": {"samples": 3}}, TypeError, ["deepvis.Smooth"]),
        (
            "integrated_gradients",
            {"integrated_gradients": deepvis.IntegratedGradients(method="simpson")},
            ValueError,
            ["riemann_trapezoid", "simpson"],
        ),
        (
            "integrated_gradients",
            {"integrated_gradients": deepvis.IntegratedGradients(images="base.png")},  # type: ignore[arg-type]
            TypeError,
            ["list or tuple"],
        ),
        (
            "lrp",
            {"integrated_gradients": deepvis.IntegratedGradients()},
            ValueError,
            ["for method integrated_gradients"],
        ),
    ],
)
def test_bad_options_fail_before_sending(method, kwargs, error, words) -> None:
    with pytest.raises(error) as info:
        build(method, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def run_cli(
    address: str, image: Path, out: Path, flags: list[str], capsys
) -> tuple[str, np.ndarray]:
    rc = main(
        ["explain", str(image), "--server", address, "--model", "digits", "--out", str(out)]
        + ["--save-array", *flags]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (npy,) = out.rglob("*.npy")  # OUT/<input>/<method>[...].npy
    return printed, np.load(npy)


@pytest.mark.parametrize(
    ("flags", "kwargs"),
    [
        (
            ["--method", "lrp", "--composite", "epsilon_gamma_box", "--gamma", "0.5"],
            {"method": "lrp", "composite": "epsilon_gamma_box", "gamma": 0.5},
        ),
        (
            ["--method", "saliency", "--smooth-samples", "3", "--smooth-kind", "vargrad"]
            + ["--smooth-noise", "0.2", "--smooth-seed", "4"],
            {
                "method": "saliency",
                "smooth": deepvis.Smooth(samples=3, noise=0.2, kind="vargrad", seed=4),
            },
        ),
        (
            ["--method", "integrated-gradients", "--ig-steps", "8", "--ig-method"]
            + ["riemann_trapezoid", "--ig-baseline", "black"],
            {
                "method": "integrated_gradients",
                "integrated_gradients": deepvis.IntegratedGradients(
                    steps=8, method="riemann_trapezoid", baseline="black"
                ),
            },
        ),
        (
            ["--method", "input-x-gradient"],
            {"method": "input_x_gradient"},
        ),
    ],
)
def test_cli_flags_give_what_the_library_gives(
    digits_server, sample_paths, tmp_path, capsys, flags, kwargs
) -> None:
    address = digits_server.bound_address
    image = sample_paths[0]
    printed, array = run_cli(address, image, tmp_path, flags, capsys)
    with deepvis.Client(address, timeout=60) as client:
        expected = client.explain(str(image), model="digits", render=False, **kwargs)
    assert expected.array is not None and np.array_equal(array, expected.array)
    if expected.completeness is not None:  # lrp and integrated gradients print it
        c = expected.completeness
        assert f"sum={c.attribution_sum:.6g} score={c.score:.6g}" in printed, printed
        assert "delta=" in printed
    else:
        assert "delta=" not in printed
