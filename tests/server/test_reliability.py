"""Load and time: bounded queues, deadlines, cancellation, device OOM, shutdown and fatal errors,
each driven through a real server."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import deepvis
from configs import TESTS
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import load_config
from deepvis_server.process import ServerProcess
from deepvis_server.server import serve_in_thread
from toy_models import POISON


class DeviceGate:
    """Holds the device thread busy until released: whatever is queued meanwhile waits."""

    def __init__(self, server) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

        def hold() -> None:
            self.entered.set()
            self.release.wait(60)

        server.engine.device_executor.submit(hold)
        assert self.entered.wait(10)


def request(x: np.ndarray, model: str = "digits", **kw) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model=model,
        method=pb.METHOD_GUIDED_BACKPROP,
        input=pb.Input(
            tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=list(x.shape), data=x.tobytes())
        ),
        **kw,
    )


def xs(n: int, shape=(1, 32, 32)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.fixture()
def small_queue_server():
    cfg = load_config()
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, max_queue_size=4))
    spec = dataclasses.replace(cfg.models[0], max_batch_size=2, max_delay_ms=0.0)
    with serve_in_thread(dataclasses.replace(cfg, models=(spec,)), "127.0.0.1:0") as server:
        yield server


def test_full_queue_refuses_at_once_with_a_retry_hint(small_queue_server) -> None:
    server = small_queue_server
    gate = DeviceGate(server)
    inputs = xs(12)
    with grpc.insecure_channel(server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        calls = [stub.Explain.future(request(x), timeout=60) for x in inputs]
        # One batch (of 1 or 2, as they arrive) waits for the device, a full one of 2 is
        # staged behind it, and 4 wait in the queue: every other call is refused at once,
        # without waiting for the device.
        time.sleep(1.0)
        refused = [c.exception() for c in calls if c.done()]
        assert 4 <= len(refused) <= 5, [e.code() for e in refused]
        for e in refused:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "retry" in e.details()
            retry = error_details_pb2.RetryInfo()
            assert rpc_status.from_call(e).details[0].Unpack(retry)
            assert retry.retry_delay.ToMilliseconds() > 0
        assert server.engine.batchers["digits"].queue_depth == 4
        gate.release.set()
        done = [c.result(timeout=60) for c in calls if not c.exception(timeout=60)]
    assert len(done) == 12 - len(refused)


def test_a_request_whose_deadline_passes_in_the_queue_costs_no_compute(digits_server) -> None:
    batcher = digits_server.engine.batchers["digits"]
    gate = DeviceGate(digits_server)
    before = batcher.computed_items
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(request(xs(1)[0]), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.release.set()
        # The next request runs alone: the expired one never reached the device.
        ok = stub.Explain(request(xs(2)[1]), timeout=30)
    assert ok.timing.batch_size == 1
    assert batcher.computed_items == before + 1


def test_server_caps_the_deadline(tmp_path) -> None:
    cfg = load_config()
    limits = dataclasses.replace(cfg.limits, default_timeout_s=0.5, max_timeout_s=1.0)
    cfg = dataclasses.replace(cfg, limits=limits)
    with serve_in_thread(cfg, "127.0.0.1:0") as server:
        batcher = server.engine.batchers["digits"]
        with grpc.insecure_channel(server.bound_address) as ch:
            stub = pb_grpc.ExplainerStub(ch)
            for timeout in (None, 30.0):  # no deadline: the default; a long one: the cap
                gate = DeviceGate(server)
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    stub.Explain(request(xs(1)[0]), timeout=timeout)
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - t0 < 5
                gate.release.set()
        assert batcher.computed_items == 0


def test_a_cancelled_request_leaves_its_batch_mates_alone(digits_server) -> None:
    batcher = digits_server.engine.batchers["digits"]
    gate = DeviceGate(digits_server)
    before = batcher.computed_items
    a, b = xs(2)
    with (
        grpc.insecure_channel(digits_server.bound_address) as ch1,
        grpc.insecure_channel(digits_server.bound_address) as ch2,
    ):
        gone = pb_grpc.ExplainerStub(ch1).Explain.future(request(a), timeout=60)
        stays = pb_grpc.ExplainerStub(ch2).Explain.future(
            request(b, target=pb.Target(class_index=4)), timeout=60
        )
        time.sleep(0.3)
        assert gone.cancel()
        time.sleep(0.3)
        gate.release.set()
        res = stays.result(timeout=60)
    assert res.target.class_index == 4 and res.timing.batch_size == 1
    assert batcher.computed_items == before + 1


def test_device_oom_splits_the_batch_and_fails_only_what_cannot_fit(zoo) -> None:
    server, _ = zoo
    inputs = xs(6, (3, 16, 16))
    inputs[5][0, 0, 0] = POISON  # too big for the device even alone
    gate = DeviceGate(server)
    with grpc.insecure_channel(server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        calls = [stub.Explain.future(request(x, "oom"), timeout=60) for x in inputs]
        time.sleep(0.3)
        gate.release.set()
        outcomes = []
        for c in calls:
            try:
                outcomes.append(c.result(timeout=60).timing.batch_size)
            except grpc.RpcError as e:
                outcomes.append(e.code())
    assert outcomes[5] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(isinstance(o, int) and o <= 2 for o in outcomes[:5]), outcomes
    with deepvis.Client(server.bound_address, timeout=30) as client:
        answer = client.explain(inputs[0], model="oom").array
        assert answer is not None and answer.shape == (3, 16, 16)


def write_toy_config(tmp_path, arch: str) -> str:
    import torch
    from safetensors.torch import save_file

    import toy_models

    net = getattr(toy_models, arch)(num_classes=4)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    cfg = tmp_path / "models.toml"
    cfg.write_text(
        f'[[models]]\nname = "toy"\narch = "toy_models:{arch}"\nweights = "w.safetensors"\n'
        "num_classes = 4\ninput_size = [16, 16]\nmax_delay_ms = 1.0\n"
    )
    del torch
    return str(cfg)


def start_process(config: str) -> ServerProcess:
    """A server process on `config`, toy_models importable."""
    return ServerProcess("--config", config, pythonpath=[TESTS])


def test_a_method_that_returns_a_wrong_count_fails_its_batch_with_internal(
    monkeypatch, caplog
) -> None:
    """A method that answers one item short is a bug the batcher catches: every item of its
    batch fails INTERNAL (none is paired with another item's result), the log says why, and
    the server goes on serving."""
    from deepvis_server.methods import REGISTRY, BatchOutput, Saliency

    class OneShort(Saliency):
        def run(self, model, x, requests):
            out = super().run(model, x, requests)
            return BatchOutput(logits=out.logits, arrays=out.arrays[:-1], targets=out.targets)

    monkeypatch.setitem(REGISTRY, "saliency", OneShort())
    cfg = load_config()
    # The three items fill one batch at once.
    spec = dataclasses.replace(cfg.models[0], max_batch_size=3, max_delay_ms=2000.0)
    cfg = dataclasses.replace(cfg, models=(spec,))
    with serve_in_thread(cfg, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=30) as client:
            with caplog.at_level("ERROR", logger="deepvis_server.batcher"):
                results = client.explain_batch(
                    xs(3), model="digits", method="saliency", return_errors=True
                )
            assert all(isinstance(r, deepvis.Internal) for r in results), results
            assert all("internal error while running the method" in str(r) for r in results)
            logged = [r.getMessage() for r in caplog.records if r.name == "deepvis_server.batcher"]
            assert any(
                "method saliency returned 2 arrays for a batch of 3 items" in m for m in logged
            ), logged
            # The server still serves, the same model and input included.
            good = client.explain(xs(1)[0], model="digits", method="guided_backprop")
            assert good.array is not None and good.array.shape == (1, 32, 32)


def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones(tmp_path) -> None:
    proc = start_process(write_toy_config(tmp_path, "SlowNet"))
    try:
        x = np.ones((3, 16, 16), np.float32)
        with grpc.insecure_channel(proc.address) as ch:
            stub = pb_grpc.ExplainerStub(ch)
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            in_flight = stub.Explain.future(request(x, "toy"), timeout=30)
            time.sleep(0.2)  # it is computing now (each forward pass takes 0.6 s)
            proc.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            time.sleep(0.1)
            with pytest.raises(grpc.RpcError) as info:
                stub.Explain(request(x, "toy"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert in_flight.result(timeout=30).array.shape == [3, 16, 16]
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_fatal_device_error_marks_not_serving_and_exits_nonzero(tmp_path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc = start_process(write_toy_config(tmp_path, "FatalNet"))
    try:
        x = np.zeros((3, 16, 16), np.float32)
        x[0, 0, 0] = POISON
        with grpc.insecure_channel(proc.address) as ch:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.ExplainerStub(ch).Explain(request(x, "toy"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            try:
                status = (
                    health_pb2_grpc.HealthStub(ch)
                    .Check(health_pb2.HealthCheckRequest(), timeout=5)
                    .status
                )
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.RpcError:
                pass  # already gone
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
