"""`deepvis explain` against the in-process fake server: how inputs are collected and named,
several methods and panels, runs refused up front, the drawing flags. Resumed runs, calls in
flight, a bad input among many and --json run against a real server in
tests/processes/test_cli_at_scale.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from deepvis._cli import main

from .fakes import FakeExplainer, err_lines, png_bytes


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
            assert img.mode == "RGB"
    assert sizes["a"] == (9, 7)  # over the input as sent
    assert sizes["b"] == (40, 24)  # alone, at the size asked
    assert sizes["c"][0] > 9  # with its colorbar
