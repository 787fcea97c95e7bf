"""`deepvis explain` at scale against a real server on the default model, which counts every
call it receives and how many Explain/ExplainBatch calls it holds at once: resumed runs make
no call, --jobs bounds the calls in flight, one bad input fails alone, --json parses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np
import pytest
from PIL import Image

from deepvis._cli import main
from deepvis_server.config import load_config
from deepvis_server.server import serve_in_thread

EXPLAIN_CALLS = ("/deepvis.v1.Explainer/Explain", "/deepvis.v1.Explainer/ExplainBatch")


class CallCounter(grpc.aio.ServerInterceptor):
    """Every RPC the server receives, by method; the Explain calls it holds at once, each kept
    `delay` seconds before the real handler runs, so that concurrency is visible."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0

    def explain_calls(self) -> int:
        return sum(1 for c in self.calls if c in EXPLAIN_CALLS)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        # All on the server's one event loop: no lock needed.
        self.calls.append(details.method)
        handler = await continuation(details)
        if handler is None or details.method not in EXPLAIN_CALLS:
            return handler
        inner = handler.unary_unary

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                return await inner(request, context)
            finally:
                self.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.fixture(scope="module")
def counted_server() -> Iterator[tuple[str, CallCounter]]:
    counter = CallCounter()
    with serve_in_thread(load_config(), "127.0.0.1:0", [counter]) as server:
        yield server.bound_address, counter


class Rig(NamedTuple):
    """What each test drives: the counted server's address, its call counter (reset), the
    sample digits and a temporary folder."""

    address: str
    counter: CallCounter
    samples: list[Path]
    tmp: Path


@pytest.fixture
def rig(counted_server: tuple[str, CallCounter], sample_paths: list[Path], tmp_path: Path) -> Rig:
    address, c = counted_server
    c.calls.clear()
    c.max_in_flight, c.delay = 0, 0.0
    return Rig(address, c, sample_paths, tmp_path)


def digits(
    folder: Path, sample_paths: list[Path], n: int, corrupt: int | None = None
) -> list[Path]:
    """`n` digit pictures (the samples, with a little noise so each differs), one of them
    (`corrupt`) a PNG header followed by garbage."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"d{i:02d}.png"
        if i == corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
        else:
            sample = Image.open(sample_paths[i % len(sample_paths)]).convert("L")
            base = np.asarray(sample, np.int16)
            noisy = base + rng.integers(-20, 20, base.shape)
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_second_run_with_skip_existing_makes_no_rpc(
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, counter, sample_paths, tmp_path = rig
    paths = digits(tmp_path / "in", sample_paths, 6)
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "in"), "--server", address, "-o", str(out), "--quiet"]
    argv += ["--method", "grad-cam,integrated_gradients", "--format", "png,npy", "--skip-existing"]
    assert main(argv) == 0, capsys.readouterr().err
    assert counter.explain_calls() == 6  # one ExplainBatch per input for the two methods
    first = files(out)
    # Per input two pictures, two arrays and Grad-CAM's coarse cam; and the manifest.
    assert len(first) == 6 * 5 + 1
    counter.calls.clear()
    capsys.readouterr()
    assert main(argv) == 0
    assert counter.calls == []  # not one RPC: not ListModels, not a health check
    assert capsys.readouterr().err == f"deepvis: all 6 inputs' outputs exist in {out}/\n"
    assert files(out) == first
    # One output removed: only its input is asked again, and only for that method.
    (out / paths[2].stem / "grad-cam.png").unlink()
    assert main(argv) == 0
    assert counter.explain_calls() == 1
    assert (out / paths[2].stem / "grad-cam.png").read_bytes() == first[
        out / paths[2].stem / "grad-cam.png"
    ]


@pytest.mark.parametrize("jobs", [4, 1])
def test_jobs_bounds_the_calls_in_flight(
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    jobs: int,
) -> None:
    address, counter, sample_paths, tmp_path = rig
    counter.delay = 0.3  # each call held long enough for the others to arrive
    digits(tmp_path / "in", sample_paths, 16)
    argv = ["explain", str(tmp_path / "in"), "--server", address, "-o", str(tmp_path / "o")]
    assert main([*argv, "--jobs", str(jobs), "--quiet"]) == 0, capsys.readouterr().err
    assert counter.explain_calls() == 16
    # Never more than asked; and the bound is reached, so the check could fail.
    assert counter.max_in_flight == jobs, counter.max_in_flight
    assert len(list((tmp_path / "o").glob("d*/guided-backprop.png"))) == 16


def test_one_corrupt_input_among_ten_fails_alone(
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, counter, sample_paths, tmp_path = rig
    paths = digits(tmp_path / "in", sample_paths, 10, corrupt=6)
    out = tmp_path / "out"
    rc = main(["explain", str(tmp_path / "in"), "--server", address, "-o", str(out), "-j", "3"])
    captured = capsys.readouterr()
    stdout, err = captured.out.splitlines(), captured.err.splitlines()
    assert rc == 1
    assert len(stdout) == 9 and len(err) == 2, err
    assert err[0].startswith(f"UnidentifiedImageError: {paths[6]}: "), err
    assert err[1] == "deepvis: 1 of 10 inputs failed; 9 written"
    written = sorted(out.glob("*/guided-backprop.png"))
    assert [p.parent.name for p in written] == [p.stem for i, p in enumerate(paths) if i != 6]
    for p in written:
        with Image.open(p) as img:
            img.load()
            assert img.size == (32, 32)
    assert not (out / paths[6].stem).exists()
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in records) == [str(p) for i, p in enumerate(paths) if i != 6]
    assert counter.explain_calls() == 9  # the corrupt file was never sent


def test_json_output_parses(
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, counter, sample_paths, tmp_path = rig
    assert main(["models", "--server", address, "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert models[0]["name"] == "digits" and len(models[0]["labels"]) == 10
    assert "grad_cam" in models[0]["methods"]
    assert main(["layers", "digits", "--server", address, "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["model"]["name"] == "digits" and desc["default_cam_layer"]
    assert {"name", "type", "output_shape"} <= set(desc["layers"][0])
    paths = digits(tmp_path / "in", sample_paths, 3)
    argv = ["explain", *map(str, paths), "--server", address, "-o", str(tmp_path / "o")]
    assert main([*argv, "--method", "grad_cam", "--json", "--quiet"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in sorted(records, key=lambda r: r["input"])] == list(map(str, paths))
    for r in records:
        assert r["model"] == "digits" and r["method"] == "grad_cam"
        assert len(r["predictions"]) >= 1 and r["target"] == r["predictions"][0]["index"]
        assert all(Path(f).is_file() for f in r["files"])


def test_a_run_refused_up_front_creates_no_folder_and_sends_nothing(
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, counter, sample_paths, tmp_path = rig
    out = tmp_path / "out"
    argv = ["explain", str(sample_paths[0]), "--server", address, "-o", str(out)]
    assert main([*argv, "--model", "nope"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["NotFound: model 'nope' is not served; served models: digits"], err
    assert not out.exists()
    # A path that names nothing refuses the run before any call, whatever else is there.
    missing = tmp_path / "missing.png"
    rc = main(["explain", str(sample_paths[0]), str(missing), "--server", address, "-o", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and len(err) == 1 and str(missing) in err[0], err
    assert not out.exists()
    assert counter.explain_calls() == 0
