"""The class-model preset (Simonyan et al. 2013): each step is x + lr * (dS_c/dx - 2 lambda x)
from the zero image, written out here on an independently built twin; the pre-softmax score
is what rises (a constant added to the logits changes nothing, while the log-softmax it is
not would change); lambda bounds the image; and its refusals."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deepvis
import toy_models
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import parse_config
from deepvis_server.server import serve_in_thread
from oracles import relative_error

TOL = 1e-5
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SIZE = (16, 16)
# name: builder kwargs; one weights file for all.
OFFSETS = {"base": {}, "all7": {"offset": 7.0}, "one7": {"offset": 7.0, "only": 4}}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("class_model")
    torch.manual_seed(3)
    twin = toy_models.OffsetLogitsNet(5).eval().requires_grad_(False)
    save_file(
        {k: v.contiguous() for k, v in twin.state_dict().items()}, str(root / "w.safetensors")
    )
    tables = [
        {
            "name": name,
            "arch": "toy_models:OffsetLogitsNet",
            "weights": str(root / "w.safetensors"),
            "num_classes": 5,
            "input_size": list(SIZE),
            "mean": MEAN,
            "std": STD,
            "kwargs": kwargs,
        }
        for name, kwargs in OFFSETS.items()
    ]
    config = parse_config({"server": {"device": "cpu"}, "models": tables}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server.bound_address, twin


def to_model_space(pixels: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    return (torch.from_numpy(pixels.copy()) - mean) / std


def ascent(twin, c: int, steps: int, lr: float, lam: float, log_softmax: bool = False):
    """The class model written out: x0 = 0, x <- x + lr * (dS_c/dx - 2 lam x)."""
    x = torch.zeros(1, 3, *SIZE)
    for _ in range(steps):
        xg = x.clone().requires_grad_(True)
        out = twin(xg)
        score = (out.log_softmax(1) if log_softmax else out)[0, c]
        (g,) = torch.autograd.grad(score, xg)
        x = x + lr * (g - 2 * lam * x)
    return x


def class_model(address: str, model: str = "base", **kwargs) -> deepvis.Visualization:
    kwargs.setdefault("steps", 2)
    with deepvis.Client(address, timeout=120) as client:
        return client.visualize(kwargs.pop("c", 2), model=model, preset="class_model", **kwargs)


def test_each_step_is_x_plus_lr_times_the_score_gradient_minus_2_lambda_x(served) -> None:
    address, twin = served
    # A step this long makes x a few hundredths, well above float32's resolution of the
    # pixels (x * std + mean) it travels as; 2 * lambda * lr = 0.5 halves x each step.
    res = class_model(address, steps=3, learning_rate=50.0, l2_penalty=0.005)
    expected = ascent(twin, 2, steps=3, lr=50.0, lam=0.005)
    assert res.array.shape == (1, 3, *SIZE) and res.steps == 3
    # The result is x * std + mean, unclipped: x comes back exactly.
    assert relative_error(to_model_space(res.array[0])[None].numpy(), expected.numpy()) <= TOL
    # The second and third steps' penalty term matters here: without it the image differs.
    assert relative_error(ascent(twin, 2, 3, 50.0, 0.0).numpy(), expected.numpy()) > 1e-2
    with torch.no_grad():
        assert res.objective == pytest.approx(float(twin(expected)[0, 2]), rel=1e-5)


def test_the_defaults_are_lambda_1e_3_and_a_step_of_25(served) -> None:
    address, twin = served
    default = class_model(address)
    explicit = class_model(address, learning_rate=25.0, l2_penalty=1e-3)
    assert np.array_equal(default.array, explicit.array)
    expected = ascent(twin, 2, steps=2, lr=25.0, lam=1e-3)
    assert relative_error(to_model_space(default.array[0])[None].numpy(), expected.numpy()) <= TOL


def test_a_constant_added_to_the_logits_changes_nothing(served) -> None:
    """The score is the pre-softmax logit: a constant added to every logit, or to another
    class's alone, leaves its gradient and so the image as they were. Under the log-softmax
    (what the class model is not), the second would change the image: the test can fail."""
    address, twin = served
    runs = {
        m: class_model(address, m, steps=4, learning_rate=2.0, l2_penalty=0.01) for m in OFFSETS
    }
    for name in ("all7", "one7"):
        assert relative_error(runs[name].array, runs["base"].array) <= 1e-6, name
    assert runs["all7"].objective == pytest.approx(runs["base"].objective + 7.0, abs=1e-4)
    shifted = toy_models.OffsetLogitsNet(5, offset=7.0, only=4).eval().requires_grad_(False)
    shifted.load_state_dict(twin.state_dict())
    soft_base = ascent(twin, 2, 4, 2.0, 0.01, log_softmax=True)
    soft_shift = ascent(shifted, 2, 4, 2.0, 0.01, log_softmax=True)
    assert relative_error(soft_shift.numpy(), soft_base.numpy()) > 1e-3


def test_the_score_rises_and_a_larger_lambda_keeps_the_image_nearer_the_mean(served) -> None:
    address, twin = served
    with torch.no_grad():
        at_zero = float(twin(torch.zeros(1, 3, *SIZE))[0, 2])
    runs = {lam: class_model(address, steps=40, learning_rate=200.0, l2_penalty=lam)
            for lam in (1e-4, 1e-3)}  # fmt: skip
    norms = {lam: float(to_model_space(r.array[0]).norm()) for lam, r in runs.items()}
    assert all(r.objective > at_zero + 0.01 for r in runs.values()), (at_zero, runs)
    assert norms[1e-3] < norms[1e-4]
    assert runs[1e-4].objective > runs[1e-3].objective


def test_a_class_model_joining_a_running_job_matches_its_solo_run(served) -> None:
    address, _ = served
    solo = class_model(address, c=1, steps=30, learning_rate=1.0)
    results: dict[str, deepvis.Visualization] = {}
    started = threading.Event()

    def long_job() -> None:
        with deepvis.Client(address, timeout=300) as client:
            for item in client.visualize_stream(3, model="base", preset="class_model",
                                                steps=2000, learning_rate=0.5):  # fmt: skip
                started.set()
                if isinstance(item, deepvis.Visualization):
                    results["long"] = item

    thread = threading.Thread(target=long_job)
    thread.start()
    assert started.wait(60)
    joined = class_model(address, c=1, steps=30, learning_rate=1.0)
    thread.join(300)
    assert joined.max_batch_jobs == 2 and solo.max_batch_jobs == 1
    assert relative_error(joined.array, solo.array) <= TOL


def refusal(address: str, request: pb.VisualizeRequest) -> tuple[grpc.StatusCode, str, str]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc.ExplainerStub(ch).Visualize(request, timeout=60))
    bad = error_details_pb2.BadRequest()
    status = rpc_status.from_call(info.value)
    assert status is not None and status.details[0].Unpack(bad)
    return info.value.code(), bad.field_violations[0].field, info.value.details()


REFUSALS = [
    ({"objective": pb.Objective(neuron=pb.Neuron(layer="conv2", channel=1)),
      "preset": pb.PRESET_CLASS_MODEL}, "objective", "maximises a class score"),
    ({"objective": pb.Objective(layer="conv2"), "preset": pb.PRESET_CLASS_MODEL},
     "objective", "set objective.class_index"),
    ({"parameterization": pb.PARAMETERIZATION_FFT, "preset": pb.PRESET_CLASS_MODEL},
     "parameterization", "leave parameterization unset"),
    ({"preset": pb.PRESET_CLASS_MODEL, "l2_penalty": -1.0}, "l2_penalty", ">= 0"),
    ({"l2_penalty": 0.1}, "l2_penalty", "the class-model preset's (preset CLASS_MODEL)"),
    ({"preset": 9}, "preset", "LUCID or CLASS_MODEL"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "field", "fragment"), REFUSALS)
def test_bad_class_model_requests_are_refused_naming_the_field(served, fields, field, fragment):
    address, _ = served
    request = pb.VisualizeRequest(model="base", objective=pb.Objective(class_index=2), steps=2)
    for key, value in fields.items():
        if isinstance(value, pb.Objective):
            request.objective.CopyFrom(value)
        else:
            setattr(request, key, value)
    code, got, details = refusal(address, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and got == field, (got, details)
    assert fragment in details, details
