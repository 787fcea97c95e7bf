"""`deepvis explain` at scale against the in-process fake server: inputs, calls in flight,
resumable runs, one bad input among many, JSON output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeExplainer, err_lines, png_bytes
from PIL import Image

from deepvis._cli import main


def images(folder: Path, n: int, *, corrupt: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken" if i == corrupt else png_bytes("RGB", (9, 7)))
        paths.append(path)
    return paths


def manifest(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_a_second_run_with_skip_existing_makes_no_call(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    paths = images(tmp_path / "in", 5)
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "in"), "--server", address, "-o", str(out)]
    assert main([*argv, "--format", "png,npy", "--skip-existing"]) == 0
    calls = (servicer.calls, servicer.list_calls)
    assert calls == (5, 1)
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(manifest(out)) == 5
    capsys.readouterr()
    assert main([*argv, "--format", "png,npy", "--skip-existing"]) == 0
    assert (servicer.calls, servicer.list_calls) == calls  # not one RPC, not even ListModels
    _, err = err_lines(capsys)
    assert err == [f"deepvis: all 5 inputs' outputs exist in {out}/"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    # A removed output is made again, and only it.
    (out / paths[3].stem / "guided-backprop.png").unlink()
    assert main([*argv, "--format", "png,npy", "--skip-existing"]) == 0
    assert servicer.calls == calls[0] + 1
    assert (out / paths[3].stem / "guided-backprop.png").is_file()


def test_jobs_bounds_the_calls_in_flight(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    servicer.delay = 0.1
    images(tmp_path / "in", 16)
    rc = main(
        ["explain", str(tmp_path / "in"), "--server", address, "-o", str(tmp_path / "o")]
        + ["--jobs", "4"]
    )
    assert rc == 0, capsys.readouterr().err
    assert servicer.calls == 16
    assert 2 <= servicer.max_in_flight <= 4, servicer.max_in_flight
    servicer.max_in_flight = 0
    rc = main(
        ["explain", str(tmp_path / "in"), "--server", address, "-o", str(tmp_path / "p")]
        + ["--jobs", "1"]
    )
    assert rc == 0 and servicer.max_in_flight == 1


def test_one_corrupt_input_among_ten_fails_alone(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    paths = images(tmp_path / "in", 10, corrupt=6)
    out = tmp_path / "out"
    rc = main(["explain", str(tmp_path / "in"), "--server", address, "-o", str(out), "-j", "3"])
    stdout, err = err_lines(capsys)
    assert rc == 1
    assert len(stdout) == 9 and len(err) == 2, err
    assert err[0].startswith(f"UnidentifiedImageError: {paths[6]}: ")
    assert err[1] == "deepvis: 1 of 10 inputs failed; 9 written"
    written = sorted(p.parent.name for p in out.glob("*/guided-backprop.png"))
    assert written == sorted(p.stem for i, p in enumerate(paths) if i != 6)
    assert {r["input"] for r in manifest(out)} == {str(p) for i, p in enumerate(paths) if i != 6}


def test_inputs_from_folders_globs_and_stdin_each_once(
    fake_server: tuple[str, FakeExplainer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, servicer = fake_server
    a = images(tmp_path / "a", 3)
    b = images(tmp_path / "b" / "deep", 2)  # same names as in a/: their folders must differ
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{b[0]}\n\n{a[0]}\n"))
    out = tmp_path / "out"
    rc = main(
        ["explain", str(tmp_path / "a"), str(tmp_path / "b" / "**" / "*.png"), "-"]
        + ["--server", address, "-o", str(out), "--json"]
    )
    stdout, err = err_lines(capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in stdout]
    assert sorted(r["input"] for r in records) == sorted(str(p) for p in a + b)
    folders = {Path(f).parent for r in records for f in r["files"]}  # type: ignore[union-attr]
    assert len(folders) == 5 and len(servicer.requests) == 5
    assert all(r["method"] == "guided_backprop" and r["model"] == "tiny" for r in records)
    assert records[0]["predictions"] == [{"index": 1, "label": "b", "score": 0.9}]


def test_several_methods_are_one_call_per_input_with_a_panel(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    images(tmp_path / "in", 2)
    out = tmp_path / "out"
    rc = main(
        ["explain", str(tmp_path / "in"), "--server", address, "-o", str(out)]
        + ["--method", "guided_backprop,activations", "--panel", "--colorbar", "--caption"]
    )
    stdout, err = err_lines(capsys)
    assert rc == 0, err
    assert servicer.calls == 2 and len(servicer.requests) == 4  # one ExplainBatch per input
    assert len(stdout) == 4
    for name in ("img00", "img01"):
        files = sorted(p.name for p in (out / name).iterdir())
        assert "panel.png" in files and "guided-backprop.png" in files
        assert "activations.png" in files and "activations.conv1.grid.png" in files
        with Image.open(out / name / "panel.png") as panel:
            assert panel.width > 3 * 9
    assert {r["panel"] for r in manifest(out)} == {
        str(out / "img00" / "panel.png"),
        str(out / "img01" / "panel.png"),
    }


def test_a_run_refused_up_front_creates_no_folder(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = fake_server
    images(tmp_path / "in", 2)
    out = tmp_path / "out"
    for extra, words in (
        (["--model", "nope"], "NotFound: model 'nope' is not served; served models: tiny"),
        (["--method", "deconvolution"], "InvalidArgument: model 'tiny' does not serve"),
    ):
        rc = main(["explain", str(tmp_path / "in"), "--server", address, "-o", str(out), *extra])
        _, err = err_lines(capsys)
        assert rc == 1 and len(err) == 1 and err[0].startswith(words), err
        assert not out.exists()
    assert servicer.calls == 0


def test_json_output_parses(
    fake_server: tuple[str, FakeExplainer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    assert main(["models", "--server", address, "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in models] == ["tiny", "other"]
    assert models[0]["methods"] == ["guided_backprop", "activations"]
    assert models[0]["labels"] == ["a", "b", "c"]
    assert main(["layers", "--server", address, "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["default_cam_layer"] == "conv1" and desc["model"]["name"] == "tiny"
    assert desc["layers"][1] == {
        "name": "act",
        "type": "ReLU",
        "output_shape": [64, 8, 8],
        "calls": 3,
    }


def test_pictures_follow_the_drawing_flags(
    fake_server: tuple[str, FakeExplainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake_server
    images(tmp_path / "in", 1)
    base = ["explain", str(tmp_path / "in"), "--server", address]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    assert main([*base, "-o", str(tmp_path / "b"), "--no-overlay", "--size", "40x24"]) == 0
    assert main([*base, "-o", str(tmp_path / "c"), "--cmap", "viridis", "--colorbar"]) == 0
    sizes = {}
    for k in "abc":
        with Image.open(tmp_path / k / "img00" / "guided-backprop.png") as img:
            sizes[k] = img.size
            assert img.mode == "RGB" and np.asarray(img).std() >= 0
    assert sizes["a"] == (9, 7)  # over the input as sent
    assert sizes["b"] == (40, 24)  # alone, at the size asked
    assert sizes["c"][0] > 9  # with its colorbar
