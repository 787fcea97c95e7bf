"""DeepDream over the DeepDream stream, against a real server and the original algorithm
written out here (google/deepdream's make_step and deepdream, with scipy.ndimage.zoom): one
step, a whole run without jitter, the octave sizes, the objective rising, seeds, continuous
batching (a joined job equals its solo run), cancellation freeing its row, and refusals."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest
import scipy.ndimage as nd
import torch
import torch.nn.functional as F

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import load_config, parse_config
from deepvis_server.server import serve_in_thread
from oracles import relative_error

TOL = 1e-5
SPEC = load_config().models[0]  # the digits model: one channel


def picture(h: int = 40, w: int = 36, seed: int = 0) -> np.ndarray:
    """A smooth uint8 picture (the digits model reads one channel)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(3.0, 8.0, 2)
    img = 0.5 + 0.35 * np.sin(xx / f[0]) * np.cos(yy / f[1]) + rng.normal(0, 0.05, (h, w))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def conv2(twin: Any, x: torch.Tensor) -> torch.Tensor:
    """The digits model's conv2 output (before its ReLU), written out from its layers."""
    return twin.conv2(twin.pool(F.relu(twin.conv1(x))))


def objective(twin: torch.nn.Module, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    x = (pixels - SPEC.mean[0]) / SPEC.std[0]
    if kind == "layer":
        return 0.5 * conv2(twin, x).pow(2).sum()
    if kind == "channel":
        return 0.5 * conv2(twin, x)[:, 5].pow(2).sum()
    return twin(x)[0, 3]


OBJECTIVES = {"layer": deepvis.Layer("conv2"), "channel": deepvis.Neuron("conv2", 5), "class": 3}


def make_step(twin, x: np.ndarray, kind: str, step_size: float = 1.5) -> np.ndarray:
    """The original make_step with jitter 0, on pixels in [0, 1]: x + s * g / mean|g| with
    s = step_size / 255, g the gradient of the objective, clipped to [0, 1]."""
    t = torch.tensor(x[None, None], dtype=torch.float32, requires_grad=True)
    (g,) = torch.autograd.grad(objective(twin, t, kind), t)
    grad = g[0, 0].numpy().astype(np.float64)
    return np.clip(x + step_size / 255.0 * grad / np.abs(grad).mean(), 0.0, 1.0)


def deepdream(twin, base: np.ndarray, kind: str, octaves: int, scale: float, steps: int):
    """The original deepdream(), jitter 0: octaves by nd.zoom(order=1), detail carried."""
    bases = [base]
    for _ in range(octaves - 1):
        bases.append(nd.zoom(bases[-1], (1.0 / scale, 1.0 / scale), order=1))
    detail = np.zeros_like(bases[-1])
    for i, octave_base in enumerate(bases[::-1]):
        h, w = octave_base.shape
        if i > 0:
            h1, w1 = detail.shape
            detail = nd.zoom(detail, (h / h1, w / w1), order=1)
        x = octave_base + detail
        for _ in range(steps):
            x = make_step(twin, x, kind)
        detail = x - octave_base
    return x, [b.shape for b in bases[::-1]]


@pytest.mark.parametrize("kind", list(OBJECTIVES))
def test_one_step_equals_the_written_formula_with_jitter_0(digits_server, digits_twin, kind):
    img = picture()
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        res = client.dream(img, OBJECTIVES[kind], octaves=1, steps_per_octave=1, jitter=0)
    expected = make_step(digits_twin, img / 255.0, kind)
    assert res.array.shape == (1, 1, 40, 36) and res.steps == 1
    assert relative_error(res.array[0, 0], expected) <= TOL
    # The step moved the picture (the test can fail), and stayed within the pixel range.
    assert np.abs(expected - img / 255.0).max() > 1e-3
    assert res.image.size == (36, 40)
    # Pictures are RGB: a one-channel picture is its gray level three times.
    pixels = (np.clip(res.array[0, 0], 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(res.image), np.repeat(pixels[..., None], 3, axis=2))


def test_a_whole_run_without_jitter_equals_the_original_with_scipy_zoom(
    digits_server, digits_twin
) -> None:
    img = picture(45, 38, seed=1)
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        res = client.dream(img, 3, octaves=3, steps_per_octave=4, jitter=0)
    expected, shapes = deepdream(digits_twin, img / 255.0, "class", 3, 1.4, 4)
    assert res.octave_sizes == [tuple(s) for s in shapes] == [(23, 19), (32, 27), (45, 38)]
    # float32 on the server, float64 here, through 12 steps each normalised by mean|g|.
    assert relative_error(res.array[0, 0], expected) <= 1e-4
    assert res.array.min() >= 0.0 and res.array.max() <= 1.0
    with torch.no_grad():
        final = float(objective(digits_twin, torch.tensor(expected[None, None]).float(), "class"))
    assert res.octave_objectives[-1] == pytest.approx(final, rel=1e-3, abs=1e-3)


def test_step_size_0_returns_the_picture(digits_server) -> None:
    img = picture()
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        res = client.dream(img, deepvis.Layer("conv3"), step_size=0.0, seed=4)
    assert np.array_equal(res.array[0, 0], img.astype(np.float32) / 255.0)


def test_the_objective_rises_octave_by_octave_and_step_by_step(digits_server, digits_twin) -> None:
    img = picture(48, 44, seed=2)
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        events: list[Any] = list(client.dream_stream(img, deepvis.Layer("conv2"), seed=3))
        still: list[Any] = list(client.dream_stream(img, 3, jitter=0, progress_every=1, octaves=2))
    progress, res = events[:-1], events[-1]
    assert isinstance(res, deepvis.Dream) and len(res.octave_objectives) == 4
    # One progress message at the end of each octave but the last, with its picture at
    # that octave's size (enlarged when small, by a whole factor).
    assert [(p.step, p.octave) for p in progress] == [(10, 1), (20, 2), (30, 3)]
    for p, (h, w) in zip(progress, res.octave_sizes, strict=False):
        assert p.image is not None and p.image.size[0] % w == 0 and p.image.size[1] % h == 0
    # Each octave's result against the undreamt picture at that octave's size (the
    # octaves differ in size, and so in the objective's scale): the gain rises octave by
    # octave, as the detail dreamt so far is carried into each next octave.
    base = img / 255.0
    bases = [base]
    for _ in range(3):
        bases.append(nd.zoom(bases[-1], (1 / 1.4, 1 / 1.4), order=1))
    gains = []
    for value, undreamt in zip(res.octave_objectives, bases[::-1], strict=True):
        with torch.no_grad():
            before = float(
                objective(digits_twin, torch.tensor(undreamt[None, None]).float(), "layer")
            )
        gains.append(value / before)
    assert gains[0] > 1 and all(b > a for a, b in zip(gains, gains[1:], strict=False)), gains
    # Without jitter, within each octave, each step raises the class logit.
    steps = [p.objective for p in still[:-1]]
    for octave in (steps[:10], steps[10:]):
        assert all(b > a for a, b in zip(octave, octave[1:], strict=False)), steps


def test_same_seed_same_picture_other_seed_other_picture(digits_server) -> None:
    img = picture()
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        a, b, c = (client.dream(img, deepvis.Layer("conv2"), seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.array, b.array)
    assert np.abs(a.array - c.array).mean() > 1e-3


def test_a_job_joining_a_running_one_matches_its_solo_run(digits_server) -> None:
    address = digits_server.bound_address
    img = picture()
    job: dict[str, Any] = {"octaves": 1, "steps_per_octave": 60, "seed": 11}
    with deepvis.Client(address, timeout=300) as client:
        solo = client.dream(img, 2, **job)
    started = threading.Event()
    results: list = []

    def long_job() -> None:
        # Scale 1.01: every octave of a 40x36 picture is 40x36, so the two jobs' rows share
        # each forward and backward pass.
        with deepvis.Client(address, timeout=300) as client:
            for item in client.dream_stream(picture(seed=5), deepvis.Layer("conv2"), octaves=8,
                                            octave_scale=1.01, steps_per_octave=100,
                                            progress_every=5):  # fmt: skip
                started.set()
                results.append(item)

    thread = threading.Thread(target=long_job)
    thread.start()
    assert started.wait(120)
    with deepvis.Client(address, timeout=300) as client:
        joined = client.dream(img, 2, **job)
    thread.join(300)
    assert isinstance(results[-1], deepvis.Dream) and results[-1].max_batch_jobs == 2
    assert joined.max_batch_jobs == 2 and solo.max_batch_jobs == 1
    assert relative_error(joined.array, solo.array) <= 1e-4
    assert joined.octave_objectives == pytest.approx(solo.octave_objectives, rel=1e-4)


def test_a_cancelled_stream_frees_its_row(tmp_path) -> None:
    """With room for one row, a second job is refused while the first runs, and admitted as
    soon as the first one's stream is closed."""
    config = parse_config({"server": {"device": "cpu", "max_render_rows": 1}}, tmp_path)
    img = picture()
    with serve_in_thread(config, "127.0.0.1:0") as server:
        dreamer = server.engine.dreamers["digits"]
        with deepvis.Client(server.bound_address, timeout=120) as client:
            stream = client.dream_stream(img, 3, octaves=8, octave_scale=1.01,
                                         steps_per_octave=100, progress_every=1)  # fmt: skip
            first = next(iter(stream))
            assert isinstance(first, deepvis.DreamProgress) and dreamer.active_jobs == 1
            with pytest.raises(deepvis.Unavailable, match="the limit is 1"):
                client.dream(img, 3, octaves=1, steps_per_octave=1)
            stream.close()
            deadline = time.monotonic() + 10
            while (dreamer.active_jobs or dreamer._rows) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert dreamer.active_jobs == 0 and dreamer._rows == 0
            assert client.dream(img, 3, octaves=1, steps_per_octave=1).steps == 1


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


GOOD: dict[str, Any] = {"model": "digits", "objective": pb.Objective(layer="conv2")}
BAD = [
    ({"octaves": 9}, grpc.StatusCode.INVALID_ARGUMENT, "octaves", "octaves must be 1 to 8"),
    ({"octave_scale": 1.0}, grpc.StatusCode.INVALID_ARGUMENT, "octave_scale", "above 1"),
    ({"octave_scale": 4.5}, grpc.StatusCode.INVALID_ARGUMENT, "octave_scale", "at most 4"),
    ({"steps_per_octave": 101}, grpc.StatusCode.INVALID_ARGUMENT, "steps_per_octave", "1 to 100"),
    ({"step_size": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "step_size", "0 to 100"),
    ({"step_size": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "step_size", "0 to 100"),
    ({"jitter": 257}, grpc.StatusCode.INVALID_ARGUMENT, "jitter", "0 to 256"),
    ({"objective": pb.Objective(neuron=pb.Neuron(layer="conv2", channel=1, y=2, x=2))},
     grpc.StatusCode.INVALID_ARGUMENT, "objective", "one neuron (y, x) is not served"),
    ({"objective": pb.Objective(layer="nope")}, grpc.StatusCode.INVALID_ARGUMENT,
     "objective.layer", "nope"),
    ({"objective": pb.Objective(class_index=10)}, grpc.StatusCode.INVALID_ARGUMENT,
     "objective.class_index", "10"),
    ({"input": None}, grpc.StatusCode.INVALID_ARGUMENT, "input", "input is required"),
    ({"input": pb.Input(tensor=pb.Tensor(shape=[1, 32, 32], dtype=pb.DTYPE_FLOAT32))},
     grpc.StatusCode.INVALID_ARGUMENT, "input", "not a model tensor"),
    ({"input": pb.Input(image=_png(picture(12, 12)))}, grpc.StatusCode.INVALID_ARGUMENT,
     "octaves", "its sides must be at least 8"),
    ({"input": pb.Input(image=_png(picture(520, 40)))}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "input", "at most 512 pixels a side"),
    ({"octaves": 8, "steps_per_octave": 100, "octave_scale": 1.01,
      "input": pb.Input(image=_png(picture()))}, None, None, None),
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "model", "nope"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "code", "field", "fragment"), BAD)
def test_bad_dream_requests_are_refused_naming_the_field(
    digits_server, fields, code, field, fragment
) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    request = pb.DeepDreamRequest(**GOOD, input=pb.Input(image=_png(picture())))
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)
        elif isinstance(value, pb.Objective | pb.Input):
            getattr(request, key).CopyFrom(value)
        else:
            setattr(request, key, value)
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        if code is None:  # the largest job the bounds allow runs: 800 steps
            request.progress_every = 400
            replies = list(stub.DeepDream(request, timeout=300))
            assert replies[-1].result.steps == 800
            return
        with pytest.raises(grpc.RpcError) as info:
            list(stub.DeepDream(request, timeout=60))
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details(), info.value.details()
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        return  # the field is named in BadRequest details on INVALID_ARGUMENT only
    status = rpc_status.from_call(info.value)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == field, bad


def test_the_cli_dreams_a_picture_like_the_client(digits_server, tmp_path, capsys) -> None:
    from PIL import Image

    from deepvis._cli import main

    img = picture()
    path = tmp_path / "waves.png"
    Image.fromarray(img).save(path)
    out = tmp_path / "out"
    argv = ["dream", str(path), "--server", digits_server.bound_address, "--channel", "conv2:5"]
    argv += ["--octaves", "2", "--steps", "3", "--seed", "2", "--out", str(out)]
    assert main([*argv, "--save-octaves", "--save-array"]) == 0
    lines = capsys.readouterr()
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        res = client.dream(img, deepvis.Neuron("conv2", 5), octaves=2, steps_per_octave=3, seed=2)
    assert np.array_equal(np.load(out / "waves.conv2-c5.dream.npy"), res.array)
    assert np.array_equal(np.asarray(Image.open(out / "waves.conv2-c5.dream.png")),
                          np.asarray(res.image))  # fmt: skip
    assert (out / "waves.conv2-c5.octave1.png").is_file()
    assert "octave 1/2 step 3/6" in lines.err and "octave objectives" in lines.out
    # A bad value is the server's INVALID_ARGUMENT, reported in one line, exit status 1.
    assert main([*argv, "--octaves", "9"]) == 1
    assert "octaves must be 1 to 8" in capsys.readouterr().err


def test_the_async_client_dreams_as_the_blocking_one(digits_server) -> None:
    import asyncio

    img = picture()
    kwargs: dict[str, Any] = {"octaves": 2, "steps_per_octave": 2, "seed": 1}

    async def run() -> tuple[deepvis.Dream, list]:
        async with deepvis.AsyncClient(digits_server.bound_address, timeout=120) as client:
            items = [item async for item in client.dream_stream(img, 3, **kwargs)]
            return await client.dream(img, 3, **kwargs), items

    awaited, items = asyncio.run(run())
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        blocking = client.dream(img, 3, **kwargs)
    assert np.array_equal(awaited.array, blocking.array)
    assert [type(i).__name__ for i in items] == ["DreamProgress", "Dream"]
    assert np.array_equal(items[-1].array, blocking.array)


def test_a_size_the_model_fails_on_ends_that_job_alone(tmp_path) -> None:
    """A model that takes only its input size fails on a smaller octave: that job ends with
    INVALID_ARGUMENT naming the octave, while a job sharing its batch runs on, equal to its
    solo run, and the server keeps serving."""
    from safetensors.torch import save_file

    import toy_models

    torch.manual_seed(1)
    net = toy_models.FixedSizeNet(4)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    table = {"name": "fixed", "arch": "toy_models:FixedSizeNet", "weights": str(tmp_path / "w.safetensors"),
             "num_classes": 4, "input_size": [16, 16]}  # fmt: skip
    config = parse_config({"server": {"device": "cpu"}, "models": [table]}, tmp_path)
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        address = server.bound_address
        with deepvis.Client(address, timeout=120) as client:
            solo = client.dream(img, 1, octaves=1, steps_per_octave=100, seed=2)
            started = threading.Event()
            results: list = []

            def long_job() -> None:
                with deepvis.Client(address, timeout=120) as other:
                    for item in other.dream_stream(img, 1, octaves=1, steps_per_octave=100,
                                                   seed=2, progress_every=1):  # fmt: skip
                        started.set()
                        results.append(item)

            thread = threading.Thread(target=long_job)
            thread.start()
            assert started.wait(60)
            with pytest.raises(deepvis.InvalidArgument, match=r"fails on this picture's 11x11"):
                client.dream(img, 1, octaves=2, octave_scale=1.4)
            thread.join(120)
            assert np.array_equal(results[-1].array, solo.array)
            assert client.dream(img, 1, octaves=1, steps_per_octave=1).steps == 1
        assert server.engine.dreamers["fixed"].active_jobs == 0


def test_a_jittered_step_is_the_step_of_the_rolled_picture_rolled_back(
    digits_server, digits_twin
) -> None:
    """With jitter, one step is roll⁻¹(step(roll(x))): the shift (oy, ox) drawn in
    [-jitter, jitter] from the job's generator, a function of its seed alone."""
    from deepvis_server.featurevis.optimization import row_generator

    img = picture()
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        res = client.dream(img, deepvis.Layer("conv2"), octaves=1, steps_per_octave=1,
                           jitter=8, seed=21)  # fmt: skip
    oy, ox = torch.randint(-8, 9, (2,), generator=row_generator(21, 0)).tolist()
    assert (oy, ox) != (0, 0)
    rolled = np.roll(img / 255.0, (oy, ox), axis=(0, 1))
    expected = np.roll(make_step(digits_twin, rolled, "layer"), (-oy, -ox), axis=(0, 1))
    assert relative_error(res.array[0, 0], expected) <= TOL
    # The shift matters: the unshifted step is another picture.
    assert relative_error(make_step(digits_twin, img / 255.0, "layer"), expected) > 1e-3
