"""`deepvis explain` as a process, stopped the ways runs get stopped: Ctrl-C mid-run (then
resumed), and a reader that closes the pipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def digits(folder: Path, sample_paths: list[Path], n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = np.asarray(Image.open(sample_paths[i % len(sample_paths)]).convert("L"), np.int16)
        noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"d{i:02d}.png")
    return folder


def command(address: str, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deepvis",
        "explain",
        str(inputs),
        "--server",
        address,
        "-o",
        str(out),
        "--method",
        "integrated_gradients",
        "--format",
        "png,npy",
        *extra,
    ]


def outputs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in out.rglob("*") if p.suffix in (".png", ".npy")}


def running(cmd: list[str], out: Path, done: int) -> tuple[subprocess.Popen[str], Path]:
    """`deepvis explain` started, once its manifest lists `done` finished inputs; and the
    manifest's path."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= done:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    return proc, manifest


def assert_whole(out: Path) -> None:
    """Every file there is whole; nothing half-written is left behind."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for p in outputs(out).values():
        np.load(p) if p.suffix == ".npy" else Image.open(p).load()


def test_ctrl_c_finishes_what_is_in_flight_and_a_rerun_completes_the_same(
    digits_server, sample_paths, tmp_path: Path
) -> None:
    inputs = digits(tmp_path / "in", sample_paths, 24)
    address = digits_server.bound_address
    out = tmp_path / "out"
    proc, manifest = running(command(address, inputs, out, "--jobs", "2"), out, done=3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepvis: interrupted: "), stderr
    done = len(manifest.read_text().splitlines())
    assert 3 <= done < 24 and len(stdout.strip().splitlines()) == done
    assert_whole(out)

    rerun = subprocess.run(
        command(address, inputs, out, "--skip-existing"), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(rerun.stdout.strip().splitlines()) == 24 - done
    clean = tmp_path / "clean"
    full = subprocess.run(command(address, inputs, clean), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    resumed, fresh = outputs(out), outputs(clean)
    assert sorted(resumed) == sorted(fresh) and len(fresh) == 48
    for name, path in fresh.items():
        if path.suffix == ".npy":
            np.testing.assert_allclose(np.load(resumed[name]), np.load(path), rtol=1e-4, atol=1e-6)
        else:
            a, b = (np.asarray(Image.open(p)) for p in (resumed[name], path))
            # Batched differently the floats may differ in their last bits: a palette step.
            assert a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 8
            assert (a != b).any(axis=2).mean() <= 0.01


def test_a_second_ctrl_c_ends_the_run_with_every_file_whole_and_recorded_ones_printed(
    digits_server, sample_paths, tmp_path: Path
) -> None:
    inputs = digits(tmp_path / "in", sample_paths, 24)
    out = tmp_path / "out"
    proc, manifest = running(
        command(digits_server.bound_address, inputs, out, "--jobs", "2"), out, done=1
    )
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("deepvis: interrupted"), stderr
    done = len(manifest.read_text().splitlines())
    assert 1 <= done < 24 and len(stdout.strip().splitlines()) == done
    assert_whole(out)


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash for PIPESTATUS")
def test_a_closed_pipe_ends_the_run_quietly(digits_server, sample_paths, tmp_path: Path) -> None:
    inputs = digits(tmp_path / "in", sample_paths, 16)
    cmd = " ".join(
        f"'{c}'" for c in command(digits_server.bound_address, inputs, tmp_path / "o", "--json")
    )
    proc = subprocess.run(
        ["/bin/bash", "-c", f"{cmd} --jobs 1 | head -n 1; echo status=${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("{") and lines[1] == "status=141", proc.stdout
    assert proc.stderr == ""
