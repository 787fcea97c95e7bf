"""The `deepvis` command, invoked as a user would, against a real server."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from captum.attr import GuidedBackprop

from oracles import preprocess_digit, relative_error


def deepvis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepvis", *args], capture_output=True, text=True, timeout=120
    )


def test_models_lists_the_default_model(digits_server) -> None:
    proc = deepvis("models", "--server", digits_server.bound_address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digits")
    assert "1x32x32" in proc.stdout and "guided-backprop" in proc.stdout


def test_explain_writes_pictures_and_arrays(
    digits_server, digits_twin, sample_paths, tmp_path
) -> None:
    paths = [str(p) for p in sample_paths[:4]]
    proc = deepvis(
        "explain",
        *paths,
        "--server",
        digits_server.bound_address,
        "--model",
        "digits",
        "--method",
        "guided-backprop",
        "--target",
        "7",
        "--out",
        str(tmp_path / "o"),
        "--save-array",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 4
    for p in sample_paths[:4]:
        png = tmp_path / "o" / p.stem / "guided-backprop-t7.png"
        arr = np.load(tmp_path / "o" / p.stem / "guided-backprop-t7.npy")
        assert png.stat().st_size > 0
        ref = GuidedBackprop(digits_twin).attribute(
            torch.from_numpy(preprocess_digit(p))[None], target=7
        )
        assert relative_error(arr, ref[0].numpy()) <= 1e-5


def test_errors_print_one_line_and_exit_nonzero(digits_server, sample_paths, tmp_path) -> None:
    proc = deepvis(
        "explain",
        str(sample_paths[0]),
        "--server",
        digits_server.bound_address,
        "--model",
        "nope",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("NotFound: "), proc.stderr
    proc = deepvis(
        "explain",
        str(sample_paths[0]),
        "--server",
        digits_server.bound_address,
        "--target",
        "12",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("InvalidArgument: ") and "[0, 10)" in proc.stderr


def test_the_commands_import_no_grpc_before_they_set_its_log_level() -> None:
    # gRPC reads GRPC_VERBOSITY when grpc is first imported: the entry points' modules (and
    # the packages above them) must not import it before main() has set the default.
    code = (
        "import sys, deepvis, deepvis.__main__, deepvis_server.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'); "
        "assert not bad, bad; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr


def test_explain_activations_writes_each_layer_once(
    digits_server, digits_twin, sample_paths, tmp_path
) -> None:
    """The first layer's maps are the result array: written once, as <input>/<method>.npy,
    beside the other layers' and the channel indices, and no two files hold the same bytes."""
    from captum.attr import LayerActivation

    out = tmp_path / "o"
    proc = deepvis(
        "explain",
        str(sample_paths[2]),
        "--server",
        digits_server.bound_address,
        "--method",
        "activations",
        "--layer",
        "conv2",
        "--layer",
        "conv3",
        "--top-k-channels",
        "5",
        "--out",
        str(out),
        "--save-array",
    )
    assert proc.returncode == 0, proc.stderr
    out = out / sample_paths[2].stem
    stem = "activations-conv2+conv3"
    written = sorted(p.name for p in out.glob("*.npy"))
    assert written == sorted(
        f"{stem}{part}.npy" for part in ("", ".conv2.channels", ".conv3", ".conv3.channels")
    )
    contents = [p.read_bytes() for p in out.glob("*.npy")]
    assert len(set(contents)) == len(contents)
    inp = torch.from_numpy(preprocess_digit(sample_paths[2]))[None]
    for layer, name in (("conv2", stem), ("conv3", f"{stem}.conv3")):
        ref = LayerActivation(digits_twin, getattr(digits_twin, layer)).attribute(inp)[0]
        idx = np.load(out / f"{stem}.{layer}.channels.npy")
        assert relative_error(np.load(out / f"{name}.npy"), ref.detach().numpy()[idx]) <= 1e-5
