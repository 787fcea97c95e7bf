"""Observability: Prometheus metrics, request ids on every RPC, and structured logs."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import re
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from deepvis.v1 import deepvis_pb2 as pb

from .config import ServerConfig

if TYPE_CHECKING:
    from .engine import Engine
    from .response_cache import ResponseCache

__all__ = [
    "REQUEST_ID_KEY",
    "JsonFormatter",
    "Observability",
    "RequestIdFilter",
    "RequestInterceptor",
    "TextFormatter",
    "configure_logging",
    "current_request_id",
    "rpc_label",
]

REQUEST_ID_KEY = "x-request-id"
ACCESS_LOG = "deepvis_server.access"
_access = logging.getLogger(ACCESS_LOG)

# The id of the RPC this task is serving; every record logged while it runs carries it.
# grpc.aio runs each RPC (its interceptors, then its handler) in a task of its own, started
# from a context where this is unset: set once per call, it never leaks into another call.
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "deepvis_request_id", default=None
)
# A client's id lands in log lines and response metadata: keep it short and free of spaces,
# quotes and control characters, else replace it with our own.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_EXPLAINER = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
_REQUEST_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),  # Visualize streams run for minutes
)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_labels: dict[str, str] = {}  # RPC path -> label, only for methods protobuf knows (bounded)


def current_request_id() -> str | None:
    """The request id of the RPC the calling task is serving, or None outside of one."""
    return _request_id.get()


def rpc_label(full_method: str) -> str:
    """The `method` label of an RPC path: "Explain" for deepvis.v1.Explainer's RPCs,
    "grpc.health.v1.Health/Check" (the path without its leading slash) for other services,
    "unknown" for a path no registered protobuf service defines (a path is the client's
    text: as a label it would let any client grow the metrics without bound)."""
    label = _labels.get(full_method)
    if label is None:
        service, _, name = full_method.lstrip("/").rpartition("/")
        try:
            descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
        except KeyError:
            return "unknown"
        label = _labels[full_method] = name if service == _EXPLAINER else f"{service}/{name}"
    return label


def _incoming_request_id(metadata: Sequence[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def _code_name(code: Any, default: str) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions hand back the raw integer
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c.name
    return default


def _failure_code(exc: BaseException, context: grpc.aio.ServicerContext, call: _Call) -> str:
    if isinstance(exc, grpc.aio.AbortError):
        # context.abort() stored the code on the context (Python state) before raising.
        return _code_name(context.code(), "UNKNOWN")
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # grpc cancels the handler's task both when the client goes away and at its deadline.
        expired = call.deadline is not None and time.perf_counter() >= call.deadline
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
    return "UNKNOWN"  # what grpc answers for an exception that escapes a handler


@dataclass
class _Outcome:
    """How a call ended, as its handler's wrapper saw it."""

    code: str = "UNKNOWN"
    response: Any = None


@dataclass
class _Call:
    method: str
    request_id: str
    announce: bool  # this interceptor took the id, so it sends it back
    start: float = 0.0
    # Read from the context when the handler starts, while the call is alive: grpc's peer
    # string belongs to the transport, and reading it after the client went away reads freed
    # memory (grpc/grpc#29069, #29927: a segfault of the whole server). Nothing in the
    # handler's `finally` may ask the context for it.
    peer: str = ""
    deadline: float | None = None  # perf_counter() time of the call's deadline, if any


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Gives every RPC a request id (the client's `x-request-id`, or a new uuid4 hex), sends
    it back as initial metadata before the handler runs, makes it visible to logging through
    a ContextVar, and records the RPC's status and duration (and ExplainBatch items' codes)
    in `Observability`'s metrics. Handlers must not send initial metadata themselves.

    Put it first among the server's interceptors: the later ones (authentication) then log
    with the request id, and the calls they refuse are counted. A second RequestInterceptor
    on the same call reuses the first one's id and sends nothing.
    """

    def __init__(self, observability: Observability) -> None:
        self._obs = observability

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        outer = _request_id.get()
        if outer is None:
            request_id = _incoming_request_id(handler_call_details.invocation_metadata)
            _request_id.set(request_id)  # before continuation: later interceptors log with it
        else:
            request_id = outer
        start = time.perf_counter()
        handler = await continuation(handler_call_details)
        method = rpc_label(handler_call_details.method)
        if handler is None:  # grpc answers UNIMPLEMENTED
            self._obs.requests.labels(method, "UNIMPLEMENTED").inc()
            self._obs.request_seconds.labels(method).observe(time.perf_counter() - start)
            return None
        return self._wrap(handler, _Call(method, request_id, announce=outer is None))

    def _wrap(self, handler: grpc.RpcMethodHandler, call: _Call) -> grpc.RpcMethodHandler:
        if handler.request_streaming and handler.response_streaming:
            behavior, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            behavior, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            behavior, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            behavior, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        # The wrapper must be the same kind of callable as the behavior: grpc.aio awaits a
        # coroutine function (a streaming one writes with context.write), iterates an async
        # generator, and runs anything else on its thread pool.
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = self._wrap_stream(behavior, call)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._wrap_coroutine(behavior, call)
        else:
            return handler  # a synchronous servicer (none in deepvis): left as it is
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _observed(
        self, call: _Call, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_Outcome]:
        """Around one handler: begins the call's record, and ends it with the status the call
        ended with (and the unary response, for the metrics that read it)."""
        outcome = _Outcome()
        try:
            await self._begin(call, context)
            yield outcome
            outcome.code = _code_name(context.code(), "OK")  # a handler may set_code()
        except BaseException as e:
            outcome.code = _failure_code(e, context, call)
            raise
        finally:
            self._end(call, outcome.code, outcome.response)

    def _wrap_coroutine(self, behavior: Callable[..., Any], call: _Call) -> Callable[..., Any]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._observed(call, context) as outcome:
                outcome.response = await behavior(request, context)
            return outcome.response

        return observed

    def _wrap_stream(self, behavior: Callable[..., Any], call: _Call) -> Callable[..., Any]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # aclosing: when the client goes away, the inner stream's own clean-up (e.g.
            # Visualize cancelling its render job) runs now, not whenever GC gets to it.
            async with (
                self._observed(call, context),
                contextlib.aclosing(behavior(request, context)) as stream,
            ):
                async for response in stream:
                    yield response

        return observed

    async def _begin(self, call: _Call, context: grpc.aio.ServicerContext) -> None:
        call.start = time.perf_counter()
        # Everything the record needs from the context, taken now (see _Call.peer).
        call.peer = context.peer() if self._obs.access_log else ""
        remaining = context.time_remaining()
        call.deadline = None if remaining is None else call.start + remaining
        if _request_id.get() is None:  # should grpc ever run the handler in another task
            _request_id.set(call.request_id)
        if call.announce:
            await context.send_initial_metadata(((REQUEST_ID_KEY, call.request_id),))

    def _end(self, call: _Call, code: str, response: Any) -> None:
        # Runs in the handler's `finally`, when the call may be over: it gets no context to
        # touch. An error here would replace the call's own.
        try:
            self._record(call, code, response)
        except Exception:  # noqa: BLE001 - metrics must never fail a call
            logging.getLogger(__name__).exception("recording %s failed", call.method)

    def _record_batch_items(self, response: pb.ExplainBatchResponse) -> None:
        items = self._obs.batch_items
        for item in response.items:
            # OK, or the item's own status: a bounded set of names.
            code = "OK" if item.HasField("response") else _code_name(item.error.code, "UNKNOWN")
            items.labels(code).inc()

    def _record(self, call: _Call, code: str, response: Any) -> None:
        seconds = time.perf_counter() - call.start if call.start else 0.0
        obs = self._obs
        obs.requests.labels(call.method, code).inc()
        obs.request_seconds.labels(call.method).observe(seconds)
        if isinstance(response, pb.ExplainBatchResponse):
            self._record_batch_items(response)
        # Health probes and reflection succeed every few seconds: only worth a debug line.
        level = logging.DEBUG if code == "OK" and "/" in call.method else logging.INFO
        if obs.access_log and _access.isEnabledFor(level):  # the peer and fields only if logged
            _access.log(
                level,
                "%s %s %.1f ms",
                call.method,
                code,
                seconds * 1000.0,
                extra={
                    "request_id": call.request_id,
                    "rpc": call.method,
                    "code": code,
                    "duration_ms": round(seconds * 1000.0, 3),
                    "peer": call.peer,
                },
            )


class _EngineCollector(Collector):
    """Gauges read from the engine at scrape time, on the HTTP server's thread: only reads
    that are safe without the event loop (copies of dicts, len() of deques, allocator stats)."""

    def __init__(self, observability: Observability) -> None:
        self._obs = observability

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        queue, jobs, dreams, memory = self._families()
        engine = self._obs.engine
        cache = [] if engine is None or engine.cache is None else _cache_metrics(engine.cache)
        if engine is not None:
            for name, batcher in dict(engine.batchers).items():
                queue.add_metric([name], batcher.queue_depth)
            for name, visualizer in dict(engine.visualizers).items():
                jobs.add_metric([name], visualizer.active_jobs)
            for name, dreamer in dict(engine.dreamers).items():
                dreams.add_metric([name], dreamer.active_jobs)
            for device, kind, value in _device_memory(engine):
                memory.add_metric([device, kind], value)
        return iter((queue, jobs, dreams, memory, *cache))

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                "deepvis_queue_depth",
                "Explain requests waiting in the model's batcher",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "deepvis_render_jobs",
                "Visualize jobs joining or in the model's optimization batch",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "deepvis_dream_jobs",
                "DeepDream jobs joining or in the model's DeepDream batch",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "deepvis_device_memory_bytes",
                "CUDA device memory: torch's allocated and reserved bytes (none on a CPU host, "
                "where process_resident_memory_bytes is the process's memory)",
                labels=["device", "kind"],
            ),
        )


def _cache_metrics(cache: ResponseCache) -> list[Metric]:
    """The response cache's figures, when it is on ([server] cache_bytes)."""
    hits = CounterMetricFamily(
        "deepvis_response_cache_hits", "Explain answers (calls and batch items) from the cache"
    )
    hits.add_metric([], cache.hits)
    misses = CounterMetricFamily(
        "deepvis_response_cache_misses", "Explain answers computed while the cache was on"
    )
    misses.add_metric([], cache.misses)
    held = GaugeMetricFamily(
        "deepvis_response_cache_bytes", "Bytes the cache holds, of at most [server] cache_bytes"
    )
    held.add_metric([], cache.bytes)
    return [hits, misses, held]


def _device_memory(engine: Engine) -> list[tuple[str, str, float]]:
    device = engine.device
    if device.type == "cuda":
        import torch

        # Never the first CUDA call of the process from the scrape thread: before the
        # models load there is nothing to report.
        if not torch.cuda.is_initialized():
            return []
        index = device.index if device.index is not None else torch.cuda.current_device()
        label = f"cuda:{index}"
        return [
            (label, "allocated", float(torch.cuda.memory_allocated(index))),
            (label, "reserved", float(torch.cuda.memory_reserved(index))),
        ]
    return []  # the CPU's share is the process's RSS: process_resident_memory_bytes


def _size_buckets(config: ServerConfig) -> tuple[float, ...]:
    """Powers of two up to the largest max_batch_size, and that size itself."""
    largest = max((m.max_batch_size for m in config.models), default=1)
    sizes = {largest}
    n = 1
    while n < largest:
        sizes.add(n)
        n *= 2
    return tuple(float(s) for s in sorted(sizes))


class Observability:
    """One server's metrics (its own CollectorRegistry, so several servers can share a
    process), its request interceptor, and its /metrics HTTP endpoint.

    The interceptor needs no engine, so it can be built before the server; the engine's
    gauges are read through `engine`, which `bind()` sets once the server has built it. The
    engine's batchers report each batch they run to `record_batch`.

    Args:
        config: The server's configuration (its observability settings, the batch sizes).
        engine: The engine whose queues, render jobs and device to report; None until bind().
        access_log: Log one line per RPC on the "deepvis_server.access" logger.
    """

    def __init__(
        self, config: ServerConfig, engine: Engine | None = None, *, access_log: bool = True
    ) -> None:
        self.config = config
        self.engine = engine
        self.access_log = access_log
        # No `_created` series: a timestamp sample beside every counter and histogram child,
        # which most scrapers store as a series of its own. prometheus_client's switch is
        # process-wide; a server owns its process's metrics.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "deepvis_requests",
            "RPCs finished, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "deepvis_request_seconds",
            "RPC duration as the server saw it",
            ["method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.batch_items = Counter(
            "deepvis_explain_batch_items",
            "ExplainBatch items answered, by each item's own status (OK, or its error's code)",
            ["code"],
            registry=r,
        )
        # Per item that ran: an Explain call is one item, an ExplainBatch call one per item.
        self.queue_seconds = Histogram(
            "deepvis_queue_seconds",
            "Time from arrival at the batcher to its batch's start, per item: every Explain "
            "call and every ExplainBatch item alike",
            ["model"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "deepvis_compute_seconds",
            "Compute time of the batch each item ran in: every Explain call and every "
            "ExplainBatch item alike",
            ["model"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "deepvis_batch_size",
            "Size of the batch each item ran in: every Explain call and every ExplainBatch "
            "item alike",
            ["model"],
            buckets=_size_buckets(config),
            registry=r,
        )
        r.register(_EngineCollector(self))
        # The global registry has these by default; a private one must add them itself.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.interceptor = RequestInterceptor(self)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def record_batch(
        self, model: str, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        """A batch ran (the batcher's BatchMetrics): each item's queue time, and for each item
        the batch's compute time and size. `model` is a served model's name, never client
        text, so the labels stay bounded."""
        queue = self.queue_seconds.labels(model)
        for seconds in queue_seconds:
            queue.observe(seconds)
        compute, size, n = (
            self.compute_seconds.labels(model),
            self.batch_size.labels(model),
            len(queue_seconds),
        )
        for _ in range(n):
            compute.observe(compute_seconds)
            size.observe(n)

    def bind(self, engine: Engine) -> None:
        """Reports this engine's queues, render jobs and device memory from now on."""
        self.engine = engine

    def start(self, port: int | None = None) -> int | None:
        """Serves /metrics on config.observability.metrics_address in a daemon thread.

        Args:
            port: None uses config.observability.metrics_port, where 0 means off; an explicit 0 picks a
                free port (tests).

        Returns:
            The bound port, or None when metrics are off.
        """
        if self._httpd is not None:
            return self.port
        if port is None:
            port = self.config.observability.metrics_port
            if port == 0:
                return None
        self._httpd, self._thread = _serve_metrics(
            self.config.observability.metrics_address, port, self.registry
        )
        logging.getLogger(__name__).info(
            "metrics on http://%s:%d/metrics", self.config.observability.metrics_address, self.port
        )
        return self.port

    @property
    def port(self) -> int | None:
        """The port /metrics is served on, or None when it is not."""
        return None if self._httpd is None else int(self._httpd.server_address[1])

    def stop(self) -> None:
        """Stops the /metrics server and closes its socket. Blocks up to half a second (the
        server's poll interval): from the event loop, call it with asyncio.to_thread."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        return generate_latest(self.registry)


_NOT_FOUND = b"Not Found: the metrics are at /metrics\n"


def _metrics_only(app: Callable[..., Any]) -> Callable[..., Any]:
    """The WSGI app on /metrics (its query string selects series: ?name[]=...); 404 elsewhere."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)
        start_response(
            "404 Not Found",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(_NOT_FOUND))),
            ],
        )
        return [_NOT_FOUND]

    return serve


class _QuietHandler(WSGIRequestHandler):
    """Logs no request line to stderr (it would break a JSON log), and drops a connection
    that sends nothing for 30 s, so one left idle does not keep its thread."""

    timeout = 30.0

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_metrics(
    address: str, port: int, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's exposition app, on /metrics only, in a daemon thread (a thread per
    connection, as prometheus_client's start_http_server does)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True  # a connection's thread never holds up shutdown

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A scraper that timed out or hung up: socketserver would print a traceback to
            # stderr, past the log's format.
            logging.getLogger(__name__).debug(
                "metrics connection from %s failed", client_address, exc_info=True
            )

    httpd = make_server(
        str(sockaddr[0]), port, _metrics_only(make_wsgi_app(registry)), Server, _QuietHandler
    )
    thread = threading.Thread(target=httpd.serve_forever, name="deepvis-metrics", daemon=True)
    thread.start()
    return httpd, thread


# Every attribute a bare LogRecord has: whatever else a record carries came from `extra=`.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` from the RPC being served, unless `extra=` already did."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """`2024-05-01 12:00:00,123 INFO deepvis_server.access [3f2a...]: Explain OK 4.2 ms`;
    the bracketed request id only when the record has one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        tag = f" [{rid}]" if rid else ""
        return f"{record.asctime} {record.levelname} {record.name}{tag}: {record.message}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ISO 8601), level, logger, message, request_id and
    exc when present, then the record's `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in out and key != "request_id":
                out[key] = value
        # json.dumps escapes newlines inside strings, so a record stays one line.
        return json.dumps(out, default=str, ensure_ascii=False)


class _DeepvisHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure_logging() owns, so calling it again replaces it."""


def configure_logging(
    log_format: str = "text", level: str | int = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Sends every log record to `stream` (stderr by default) as text or JSON lines, with
    the request id of the RPC being served. Calling it again replaces its handler.

    Args:
        log_format: "text" (human lines) or "json" (one object a line).
        level: The root logger's level, a name such as "INFO" or a number.
        stream: Where the lines go; None is sys.stderr.

    Returns:
        The installed handler.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _DeepvisHandler)]:
        root.removeHandler(old)
    handler = _DeepvisHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
