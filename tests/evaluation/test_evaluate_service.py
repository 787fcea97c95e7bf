"""Evaluate as a service: bad requests and limits get precise statuses, every method can be
evaluated, cancellation, killed clients and deadlines stop the work, Explain keeps flowing
beside an evaluation, and concurrent evaluations share batches."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import parse_config
from deepvis_server.server import DeepvisServer, serve_in_thread
from zoo import digits_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_limits() -> Iterator[DeepvisServer]:
    """The default model, and a resnet18 (random weights), with tight evaluation limits."""
    tables = [
        digits_table(),
        {"name": "big", "arch": "resnet18", "num_classes": 10, "input_size": [32, 32]},
    ]
    limits = {
        "max_evaluate_images": 3,
        "max_evaluate_work": 1000,
        "max_randomized_mb": 8,  # holds the digits model's copies, not resnet18's 45 MB
    }
    config = parse_config({"server": limits, "models": tables}, Path("."))
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server


def raw_evaluate(address: str, request: pb.EvaluateRequest, timeout: float = 60) -> list:
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.ExplainerStub(channel).Evaluate(request, timeout=timeout))


def refused(address: str, request: pb.EvaluateRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        raw_evaluate(address, request)
    return info.value


def digit(sample_paths, i: int = 0) -> pb.Input:
    return pb.Input(image=sample_paths[i].read_bytes())


def test_bad_requests_get_precise_statuses(digits_server, sample_paths) -> None:
    address = digits_server.bound_address
    good: dict[str, Any] = {
        "model": "digits",
        "methods": [pb.METHOD_SALIENCY],
        "inputs": [digit(sample_paths)],
    }
    checks: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"methods": []}, grpc.StatusCode.INVALID_ARGUMENT, "methods is empty"),
        ({"methods": [pb.METHOD_ACTIVATIONS]}, grpc.StatusCode.INVALID_ARGUMENT, "activations"),
        (
            {"methods": [pb.METHOD_SALIENCY, pb.METHOD_SALIENCY]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "twice",
        ),
        ({"inputs": []}, grpc.StatusCode.INVALID_ARGUMENT, "inputs is empty"),
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "not served"),
        ({"steps": 1025}, grpc.StatusCode.INVALID_ARGUMENT, r"steps must be in \[1, 1024\]"),
        ({"class_indices": [10]}, grpc.StatusCode.INVALID_ARGUMENT, r"\[0, 10\)"),
        ({"class_indices": [1, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "one per input"),
        ({"metrics": [42]}, grpc.StatusCode.INVALID_ARGUMENT, "METRIC_DELETION"),
        ({"perturbations": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "perturbations"),
        ({"noise_std": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "noise_std"),
        (
            {"methods": [pb.METHOD_GRAD_CAM], "layer": "fc"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "spatial",
        ),
        (
            {"inputs": [digit(sample_paths), pb.Input(image=b"not an image")]},
            grpc.StatusCode.INVALID_ARGUMENT,
            r"inputs\[1\]",
        ),
    ]
    for change, code, message in checks:
        err = refused(address, pb.EvaluateRequest(**{**good, **change}))
        assert err.code() == code, (change, err.details())
        assert re.search(message, err.details()), (change, err.details())
    # ... and the server still serves.
    items = raw_evaluate(address, pb.EvaluateRequest(**good, metrics=[pb.METRIC_DELETION]))
    assert items[-1].WhichOneof("kind") == "result"


def test_limits_are_refused_naming_them(small_limits, sample_paths) -> None:
    address = small_limits.bound_address
    base: dict[str, Any] = {"model": "digits", "methods": [pb.METHOD_SALIENCY]}
    err = refused(address, pb.EvaluateRequest(**base, inputs=[digit(sample_paths)] * 4))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_evaluate_images is 3" in err.details()
    err = refused(address, pb.EvaluateRequest(**base, inputs=[digit(sample_paths)] * 3))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # 3 x 2 x 225 curve rows alone
    assert "max_evaluate_work is 1000" in err.details()
    big = pb.Input(tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 32, 32], data=bytes(12288)))
    err = refused(
        address,
        pb.EvaluateRequest(
            model="big",
            methods=[pb.METHOD_SALIENCY],
            inputs=[big],
            metrics=[pb.METRIC_RANDOMIZATION],
            randomization=pb.RANDOMIZATION_MODE_CASCADING,
        ),
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_randomized_mb is 8" in err.details()
    fits = raw_evaluate(
        address,
        pb.EvaluateRequest(**base, inputs=[digit(sample_paths)], metrics=[pb.METRIC_RANDOMIZATION]),
    )
    assert len(fits[-1].result.layers) == 4
    ok = raw_evaluate(
        address,
        pb.EvaluateRequest(**base, inputs=[digit(sample_paths)], metrics=[pb.METRIC_DELETION]),
    )
    assert 0 < ok[-1].result.work <= 1000


def test_every_attribution_method_can_be_evaluated(digits_server, sample_paths) -> None:
    # Every attribution method the digits model serves (attention rollout needs a ViT).
    methods = [m for m in deepvis.methods() if m not in ("activations", "attention_rollout")]
    with deepvis.Client(digits_server.bound_address, timeout=600) as client:
        ev = client.evaluate(
            sample_paths[:2], method=methods, steps=8, perturbations=2, randomization="cascading"
        )
    assert list(ev.methods) == methods and len(ev.layers) == 4
    for name, e in ev.methods.items():
        assert e.deletion and e.insertion and e.randomization, name
        assert e.infidelity is not None and e.sensitivity is not None, name
        assert e.randomization.spearman is not None, name
        assert e.deletion.auc.shape == e.insertion.auc.shape == (2,), name
        assert e.randomization.spearman.shape == (2, 4) and e.randomization.independent_ssim is None
        assert e.infidelity.shape == e.sensitivity.shape == (2,)
        assert np.isfinite(e.deletion.auc).all() and (0 <= e.deletion.auc).all()
        assert (e.deletion.auc <= 1).all() and (e.sensitivity >= 0).all()
    assert ev["grad_cam"].layer == "conv3" and ev["saliency"].layer is None
    assert ev.work > 0 and ev.compute_ms > 0


def _evaluator(server: DeepvisServer, model: str = "digits"):
    return server.engine.evaluators[model]


def _wait_idle(server: DeepvisServer, seconds: float = 20.0) -> None:
    ev = _evaluator(server)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ev.active_jobs == 0 and not ev._works and not ev._calls:
            return
        time.sleep(0.05)
    raise AssertionError(f"{ev.active_jobs} evaluations still running, {len(ev._works)} works")


BIG: dict[str, Any] = {"method": ["integrated_gradients", "guided_backprop"], "perturbations": 50}


def test_closing_the_stream_stops_the_evaluation(digits_server, sample_paths) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=600) as client:
        stream = client.evaluate_stream(sample_paths, **BIG)
        first = next(stream)
        assert isinstance(first, deepvis.EvaluationProgress) and first.done < first.total
        stream.close()
    _wait_idle(digits_server)


def test_a_killed_client_stops_its_evaluation(digits_server, sample_paths) -> None:
    code = (
        "import sys, deepvis\n"
        f"c = deepvis.Client({digits_server.bound_address!r})\n"
        f"s = c.evaluate_stream({[str(p) for p in sample_paths]!r}, "
        "method=['integrated_gradients', 'guided_backprop'], perturbations=50)\n"
        "next(s); print('started', flush=True); sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "client")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"started"
        assert _evaluator(digits_server).active_jobs >= 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_idle(digits_server)


def test_a_deadline_stops_the_evaluation(digits_server, sample_paths) -> None:
    with deepvis.Client(digits_server.bound_address) as client:
        with pytest.raises(deepvis.DeadlineExceeded):
            client.evaluate(sample_paths, timeout=1.0, **BIG)
    _wait_idle(digits_server)


def test_explain_keeps_flowing_beside_an_evaluation(digits_server, sample_paths) -> None:
    address = digits_server.bound_address
    done = threading.Event()
    result: list = []

    def evaluate() -> None:
        with deepvis.Client(address, timeout=600) as client:
            result.append(client.evaluate(sample_paths, method="integrated_gradients"))
        done.set()

    thread = threading.Thread(target=evaluate)
    thread.start()
    latencies = []
    with deepvis.Client(address, timeout=60) as client:
        while _evaluator(digits_server).active_jobs == 0 and not done.is_set():
            time.sleep(0.01)
        for p in sample_paths * 2:
            t = time.perf_counter()
            client.explain(p, method="guided_backprop", render=False)
            latencies.append(time.perf_counter() - t)
        explained_while_evaluating = not done.is_set()
    thread.join(600)
    assert result and explained_while_evaluating, "the evaluation finished first: too small"
    # Each Explain waits for at most a piece of the evaluation, never for all of it.
    evaluation_s = result[0].compute_ms / 1000
    assert max(latencies) < evaluation_s / 4, (latencies, evaluation_s)


def test_concurrent_evaluations_share_batches(digits_server, sample_paths) -> None:
    address = digits_server.bound_address
    results: list = [None, None]
    # The device thread is held until both evaluations are in, so that their work meets in
    # the queue whatever else the machine is doing.
    gate = threading.Event()
    digits_server.engine.device_executor.submit(gate.wait, 60)

    def run(i: int) -> None:
        with deepvis.Client(address, timeout=600) as client:
            results[i] = client.evaluate(
                sample_paths[i * 5 : i * 5 + 5], method="saliency", metrics="deletion"
            )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while _evaluator(digits_server).active_jobs < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _evaluator(digits_server).active_jobs == 2
    finally:
        gate.set()
    for t in threads:
        t.join(600)
    assert [r.max_batch_jobs for r in results] == [2, 2]
    # Sharing a batch changes no number: each matches its evaluation alone.
    with deepvis.Client(address, timeout=600) as client:
        alone = client.evaluate(sample_paths[:5], method="saliency", metrics="deletion")
    assert alone.max_batch_jobs == 1 and alone.deletion is not None
    assert all(r.deletion is not None for r in results)
    np.testing.assert_allclose(results[0].deletion.auc, alone.deletion.auc, atol=1e-6)
