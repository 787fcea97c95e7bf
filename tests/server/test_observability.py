"""Prometheus metrics, request ids and structured logs, seen from outside a real server."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import DEFAULT_CONFIG, load_config
from deepvis_server.observability import (
    Observability,
    configure_logging,
    current_request_id,
    rpc_label,
)
from deepvis_server.server import DeepvisServer, serve_in_thread
from ports import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PIXELS = np.zeros((32, 32), np.uint8)
T = TypeVar("T")


class _LogInHandler(grpc.aio.ServerInterceptor):
    """Logs from inside the call, below the observability interceptor and without `extra=`:
    the request id can only come from the ContextVar the interceptor set."""

    async def intercept_service(
        self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            logging.getLogger("tests.in_handler").info("handling %s", details.method)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            logged, handler.request_deserializer, handler.response_serializer
        )


class _Refuser(grpc.aio.ServerInterceptor):
    """Refuses calls marked `x-test-refuse` the way an authentication interceptor does: a
    handler that aborts, for any path, without calling the continuation."""

    async def intercept_service(
        self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if ("x-test-refuse", "1") not in tuple(details.invocation_metadata or ()):
            return await continuation(details)

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused")

        return grpc.unary_unary_rpc_method_handler(refuse)


@dataclass
class Observed:
    server: DeepvisServer
    obs: Observability
    inner: Observability  # a second observability interceptor below the first
    address: str

    def scrape(self) -> Samples:
        assert self.obs.port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.obs.port}/metrics", timeout=5) as r:
            assert r.status == 200
            return parse(r.read().decode())


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def eventually(get: Callable[[], T], ok: Callable[[T], bool], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while not ok(got := get()):
        assert time.monotonic() < deadline, f"still not there after {timeout} s: {got!r}"
        time.sleep(0.02)
    return got


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def observed() -> Iterator[Observed]:
    # The server builds its own Observability (outermost interceptor) and serves /metrics on
    # the configured port; a second one below it checks that stacked interceptors agree.
    observability = replace(load_config().observability, metrics_port=free_port())
    config = replace(load_config(), observability=observability)
    inner = Observability(load_config(), access_log=False)
    interceptors = [inner.interceptor, _Refuser(), _LogInHandler()]
    with serve_in_thread(config, "127.0.0.1:0", interceptors) as server:
        obs = server.observability
        assert obs.port == observability.metrics_port  # the configured port, not a random one
        inner.bind(server.engine)  # it had to exist before the server; the engine only now
        yield Observed(server, obs, inner, server.bound_address)


def test_requests_batches_and_gauges_reach_metrics(observed: Observed) -> None:
    before = observed.scrape()
    with deepvis.Client(observed.address, timeout=30) as client:
        client.models()
        for _ in range(3):
            client.explain(PIXELS, model="digits")
        for _ in range(2):
            with pytest.raises(deepvis.NotFound):
                client.explain(PIXELS, model="nope")
        client.visualize(3, model="digits", steps=8)
        with pytest.raises(deepvis.NotFound):  # an abort inside a streaming handler
            client.visualize(3, model="nope", steps=8)
        assert client.health() == "SERVING"

    # An aborted call is counted just after its status went out (see the JSON log test).
    def refused(samples: Samples, method: str) -> float:
        return value(samples, "deepvis_requests_total", method=method, code="NOT_FOUND")

    after = eventually(
        observed.scrape,
        lambda a: (
            refused(a, "Explain") - refused(before, "Explain") >= 2
            and refused(a, "Visualize") - refused(before, "Visualize") >= 1
        ),
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("deepvis_requests_total", method="Explain", code="OK") == 3
    assert delta("deepvis_requests_total", method="Explain", code="NOT_FOUND") == 2
    assert delta("deepvis_requests_total", method="ListModels", code="OK") == 1
    assert delta("deepvis_requests_total", method="Visualize", code="OK") == 1
    assert delta("deepvis_requests_total", method="Visualize", code="NOT_FOUND") == 1
    assert delta("deepvis_requests_total", method="grpc.health.v1.Health/Check", code="OK") == 1
    assert delta("deepvis_request_seconds_count", method="Explain") == 5
    # Per OK Explain call: the size of the batch it ran in, and its queue and compute time.
    assert delta("deepvis_batch_size_count", model="digits") == 3
    assert delta("deepvis_batch_size_sum", model="digits") >= 3
    assert delta("deepvis_queue_seconds_count", model="digits") == 3
    assert delta("deepvis_compute_seconds_count", model="digits") == 3
    assert delta("deepvis_compute_seconds_sum", model="digits") > 0
    # Scrape-time gauges and memory.
    assert ("deepvis_queue_depth", frozenset({("model", "digits")})) in after
    assert value(after, "deepvis_queue_depth", model="digits") == 0
    assert ("deepvis_render_jobs", frozenset({("model", "digits")})) in after
    assert value(after, "deepvis_dream_jobs", model="digits") == 0
    memory = {
        dict(labels)["kind"]: v
        for (n, labels), v in after.items()
        if n == "deepvis_device_memory_bytes"
    }
    device = observed.server.engine.device
    # On a CPU host the process's memory is process_resident_memory_bytes, reported once.
    assert set(memory) == ({"allocated", "reserved"} if device.type == "cuda" else set())
    assert value(after, "process_resident_memory_bytes") > 0
    if memory:
        assert max(memory.values()) > 0
    # The second interceptor on the same calls counted them in its own registry.
    inner = parse(observed.inner.exposition().decode())
    assert value(inner, "deepvis_requests_total", method="Explain", code="OK") == value(
        after, "deepvis_requests_total", method="Explain", code="OK"
    )


def test_a_cancelled_stream_is_counted_as_cancelled(observed: Observed) -> None:
    labels = {"method": "Visualize", "code": "CANCELLED"}
    before = value(observed.scrape(), "deepvis_requests_total", **labels)
    with deepvis.Client(observed.address, timeout=30) as client:
        stream = client.visualize_stream(3, model="digits", steps=4096, progress_every=1)
        assert isinstance(next(stream), deepvis.Progress)
        stream.close()  # cancels the call
    eventually(observed.scrape, lambda a: value(a, "deepvis_requests_total", **labels) > before)
    # The job left the optimization batch: the gauge goes back to zero.
    eventually(observed.scrape, lambda a: value(a, "deepvis_render_jobs", model="digits") == 0)


def _explain_request() -> pb.ExplainRequest:
    png = (DEFAULT_CONFIG.parent / "samples" / "digit_3.png").read_bytes()
    return pb.ExplainRequest(
        model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(image=png)
    )


def test_request_id_is_echoed_and_logged_as_json(observed: Observed) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", "INFO", stream=stream)
    try:
        with grpc.insecure_channel(observed.address) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            response, call = stub.Explain.with_call(
                _explain_request(), metadata=[("x-request-id", "req-42.abc")], timeout=30
            )
            assert response.model == "digits"
            assert call.initial_metadata() == (("x-request-id", "req-42.abc"),)
            # Without an id (or with one that is unfit for a log line) the server makes one.
            for rid in (None, 'two "words"', "x" * 129):
                metadata = [] if rid is None else [("x-request-id", rid)]
                _, call = stub.Explain.with_call(_explain_request(), metadata=metadata)
                (key, made), *_ = call.initial_metadata()
                assert key == "x-request-id" and len(made) == 32 and int(made, 16) >= 0
            # A failed call carries its id too, so a client can report it.
            bad = _explain_request()
            bad.model = "nope"
            with pytest.raises(grpc.RpcError) as e:
                stub.Explain.with_call(bad, metadata=[("x-request-id", "req-43")])
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert ("x-request-id", "req-43") in e.value.initial_metadata()
        # A failed call's status reaches the client inside context.abort(), a moment before
        # the interceptor sees the exception and logs it.
        records = eventually(
            lambda: [json.loads(line) for line in stream.getvalue().splitlines()],
            lambda rs: any(r.get("request_id") == "req-43" and "code" in r for r in rs),
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    mine = [r for r in records if r.get("request_id") == "req-42.abc"]
    # Logged from inside the handler without extra=: the id came through the ContextVar.
    assert any(r["logger"] == "tests.in_handler" for r in mine), records
    (access,) = [r for r in mine if r["logger"] == "deepvis_server.access"]
    assert access["rpc"] == "Explain" and access["code"] == "OK" and access["duration_ms"] > 0
    assert access["message"].startswith("Explain OK") and access["level"] == "INFO"
    assert {"ts", "level", "logger", "message"} <= set(access)
    (failed,) = [
        r for r in records if r.get("request_id") == "req-43" and r["logger"].endswith("access")
    ]
    assert failed["code"] == "NOT_FOUND"
    assert current_request_id() is None  # the server's ids never leak into this thread


def test_configure_logging_formats_and_is_idempotent() -> None:
    root = logging.getLogger()
    level, count = root.level, len(root.handlers)
    text, jsonl = io.StringIO(), io.StringIO()
    try:
        configure_logging("json", "DEBUG", stream=io.StringIO())
        configure_logging("text", "INFO", stream=text)
        assert len(root.handlers) == count + 1  # the second call replaced the first
        log = logging.getLogger("tests.fmt")
        log.info("with id", extra={"request_id": "abc"})
        log.info("without id")
        lines = text.getvalue().splitlines()
        assert lines[0].endswith(" INFO tests.fmt [abc]: with id")
        assert lines[1].endswith(" INFO tests.fmt: without id")
        configure_logging("json", logging.INFO, stream=jsonl)
        try:
            raise ValueError("broken\nacross lines")
        except ValueError:
            log.exception("failed", extra={"model": "digits"})
        (line,) = jsonl.getvalue().splitlines()  # one object a line, newlines escaped
        record = json.loads(line)
        assert record["message"] == "failed" and record["level"] == "ERROR"
        assert "ValueError: broken" in record["exc"] and record["model"] == "digits"
        assert "request_id" not in record
        with pytest.raises(ValueError, match="log_format"):
            configure_logging("xml", "INFO")
    finally:
        for h in root.handlers[count:]:
            root.removeHandler(h)
        root.setLevel(level)


def test_metrics_port_zero_is_off_and_stop_closes_the_socket() -> None:
    config = load_config()  # metrics_port = 0
    obs = Observability(config)
    assert obs.start() is None and obs.port is None
    port = obs.start(port=0)  # an explicit 0: any free port
    assert port is not None and obs.port == port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    # Without an engine: the families are declared, with no samples yet.
    assert "# TYPE deepvis_queue_depth gauge" in body
    assert "deepvis_requests_total" in body
    obs.stop()
    assert obs.port is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    # Closed, not merely idle: the port can be listened on again. (SO_REUSEADDR passes over
    # the scrape's TIME_WAIT connection, never over a socket still listening.)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    obs.stop()  # a second stop is harmless


def test_method_labels() -> None:
    assert rpc_label("/deepvis.v1.Explainer/Explain") == "Explain"
    assert rpc_label("/grpc.health.v1.Health/Check") == "grpc.health.v1.Health/Check"
    assert rpc_label("/deepvis.v1.Explainer/Nope") == "unknown"
    assert rpc_label("/any/thing") == "unknown"


def test_refused_and_unknown_calls_are_counted_under_bounded_labels(observed: Observed) -> None:
    before = observed.scrape()
    refuse = [("x-test-refuse", "1"), ("x-request-id", "refused-1")]
    with grpc.insecure_channel(observed.address) as channel:
        for path, metadata, code in [
            ("/deepvis.v1.Explainer/ListModels", refuse, grpc.StatusCode.PERMISSION_DENIED),
            ("/made/up", refuse, grpc.StatusCode.PERMISSION_DENIED),
            ("/made/up", [], grpc.StatusCode.UNIMPLEMENTED),
            ("/deepvis.v1.Explainer/Nope", [], grpc.StatusCode.UNIMPLEMENTED),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(path)(b"", metadata=metadata, timeout=10)
            assert e.value.code() == code
            if metadata:  # a refused call still carries its request id
                assert ("x-request-id", "refused-1") in e.value.initial_metadata()
    after = eventually(
        observed.scrape,
        lambda a: (
            value(a, "deepvis_requests_total", method="unknown", code="PERMISSION_DENIED")
            > value(before, "deepvis_requests_total", method="unknown", code="PERMISSION_DENIED")
        ),
    )

    def delta(method: str, code: str) -> float:
        return value(after, "deepvis_requests_total", method=method, code=code) - value(
            before, "deepvis_requests_total", method=method, code=code
        )

    assert delta("ListModels", "PERMISSION_DENIED") == 1
    assert delta("unknown", "PERMISSION_DENIED") == 1
    assert delta("unknown", "UNIMPLEMENTED") == 2
    methods = {dict(labels).get("method") for (name, labels) in after if "requests" in name}
    assert not {m for m in methods if m and ("made" in m or "Nope" in m)}


def test_batch_size_buckets_follow_the_configured_batch_size() -> None:
    config = load_config()
    models = (replace(config.models[0], max_batch_size=48),)
    obs = Observability(replace(config, models=models))
    bounds = [b for b in obs.batch_size._upper_bounds if b != float("inf")]
    assert bounds == [1, 2, 4, 8, 16, 32, 48]


def test_explain_batch_items_are_counted_apart_from_explain_calls(observed: Observed) -> None:
    before = observed.scrape()
    inputs = [PIXELS, PIXELS + 1, PIXELS + 2, PIXELS]
    with deepvis.Client(observed.address, timeout=30) as client:
        results = client.explain_batch(
            inputs, model="digits", targets=[1, 2, 3, 12], render=False, return_errors=True
        )
    assert [r.target for r in results[:3]] == [1, 2, 3]
    assert isinstance(results[3], deepvis.InvalidArgument)  # class 12 of 10: that item alone
    after = eventually(
        observed.scrape,
        lambda a: (
            value(a, "deepvis_requests_total", method="ExplainBatch", code="OK")
            > value(before, "deepvis_requests_total", method="ExplainBatch", code="OK")
        ),
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("deepvis_requests_total", method="ExplainBatch", code="OK") == 1
    assert delta("deepvis_request_seconds_count", method="ExplainBatch") == 1
    assert delta("deepvis_explain_batch_items_total", code="OK") == 3
    assert delta("deepvis_explain_batch_items_total", code="INVALID_ARGUMENT") == 1
    # No Explain call was made; the items that ran are in the stage histograms.
    assert delta("deepvis_request_seconds_count", method="Explain") == 0
    for stage in ("deepvis_queue_seconds", "deepvis_compute_seconds", "deepvis_batch_size"):
        assert delta(f"{stage}_count", model="digits") == 3, stage
    families = families_of(observed)
    for stage in ("deepvis_queue_seconds", "deepvis_compute_seconds", "deepvis_batch_size"):
        assert families[stage].documentation.endswith(
            "every Explain call and every ExplainBatch item alike"
        ), families[stage].documentation
    assert families["deepvis_explain_batch_items"].type == "counter"


def families_of(observed: Observed) -> dict[str, Any]:
    assert observed.obs.port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{observed.obs.port}/metrics", timeout=5) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def test_metrics_are_served_on_metrics_only(observed: Observed) -> None:
    base = f"http://127.0.0.1:{observed.obs.port}"
    for path in ("/", "/metric", "/metrics/", "/favicon.ico", "/metrics/../x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=5)
        assert info.value.code == 404, path
        assert info.value.read() == b"Not Found: the metrics are at /metrics\n"
    # The query string still selects series, as prometheus_client's app does.
    with urllib.request.urlopen(base + "/metrics?name[]=deepvis_requests_total", timeout=5) as r:
        names = {f.name for f in text_string_to_metric_families(r.read().decode())}
    assert names == {"deepvis_requests"}


def test_no_created_series(observed: Observed) -> None:
    with deepvis.Client(observed.address, timeout=30) as client:
        client.models()  # a counter and a histogram child exist
    samples = observed.scrape()
    assert ("deepvis_requests_total", frozenset({("method", "ListModels"), ("code", "OK")})) in (
        samples
    )
    created = sorted({name for name, _ in samples if name.endswith("_created")})
    assert created == []


def test_unknown_methods_get_a_duration_sample(observed: Observed) -> None:
    before = observed.scrape()
    with grpc.insecure_channel(observed.address) as channel:
        for path in ("/made/up", "/deepvis.v1.Explainer/Nope"):
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(path)(b"", timeout=10)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = eventually(
        observed.scrape,
        lambda a: (
            value(a, "deepvis_requests_total", method="unknown", code="UNIMPLEMENTED")
            >= value(before, "deepvis_requests_total", method="unknown", code="UNIMPLEMENTED") + 2
        ),
    )
    counted = value(after, "deepvis_request_seconds_count", method="unknown") - value(
        before, "deepvis_request_seconds_count", method="unknown"
    )
    assert counted == 2
    # Every finished call has its duration: the histogram's count matches the counter's.
    calls = sum(
        v
        for (n, labels), v in after.items()
        if n == "deepvis_requests_total" and ("method", "unknown") in labels
    )
    assert value(after, "deepvis_request_seconds_count", method="unknown") == calls
