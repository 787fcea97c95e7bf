"""The gRPC server: Explainer, standard health and reflection, on one grpc.aio front."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

from .config import ServerConfig
from .engine import Engine
from .observability import Observability
from .reflection import add_reflection
from .security import BearerTokenInterceptor, check_listen_address, server_credentials
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name


def model_health_service(model: str) -> str:
    """The health service name that reports one model: `deepvis.v1.Explainer/<model>`."""
    return f"{SERVICE_NAME}/{model}"


class DeepvisServer:
    """One deepvis server process: start() loads the models, then listens; stop() drains."""

    def __init__(
        self,
        config: ServerConfig,
        address: str = "127.0.0.1:50051",
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.config = config
        self.address = address
        # Authentication first: no later interceptor (or handler) runs for a refused call.
        auth: list[grpc.aio.ServerInterceptor] = []
        if config.access.auth_tokens_file is not None:
            auth.append(BearerTokenInterceptor.from_file(config.access.auth_tokens_file))
        self.observability = Observability(config)
        # Request ids and metrics first, so calls that auth refuses are counted and traceable.
        self.interceptors = [self.observability.interceptor, *auth, *interceptors]
        self.engine = Engine(config, metrics=self.observability)
        self.observability.bind(self.engine)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        # Set when the device fails beyond repair: whoever runs the server should exit non-zero.
        self.failed = threading.Event()
        self.engine.on_fatal = self._device_failed

    @property
    def health_services(self) -> list[str]:
        """Every health service name this server reports: "", the Explainer, one per model."""
        return ["", SERVICE_NAME, *(model_health_service(m.name) for m in self.config.models)]

    async def start(self) -> None:
        # Refused before any model loads, so a misconfigured listener fails in a second.
        credentials = server_credentials(self.config.access)
        check_listen_address(
            self.address,
            tls=credentials is not None,
            allow_insecure_remote=self.config.access.allow_insecure_remote,
        )
        self.observability.start()  # a taken metrics port fails here, before models load
        # Health says NOT_SERVING until the models are loaded and warmed up.
        for service in self.health_services:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        limit = self.config.limits.max_message_bytes
        server = grpc.aio.server(
            interceptors=self.interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Workers share their port on purpose (SO_REUSEPORT); a single server must not
                # share it by accident with another process, which gRPC allows by default.
                ("grpc.so_reuseport", 1 if self.config.workers > 1 else 0),
            ],
        )
        pb_grpc.add_ExplainerServicer_to_server(ExplainerServicer(self.engine), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        # grpc.reflection.v1 and v1alpha, deepvis.proto with its comments (grpcurl describe).
        add_reflection(
            server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        )
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.address)
            else:
                self.port = server.add_secure_port(self.address, credentials)
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {self.address}: the port is in use or the host is not "
                "an address of this machine"
            )
        self._server = server
        await self.engine.start()
        await server.start()
        status = health_pb2.HealthCheckResponse
        # Each model first, so a probe that sees the server SERVING also sees which models are.
        for spec in self.config.models:
            serving = spec.name in self.engine.models
            await self.health.set(
                model_health_service(spec.name), status.SERVING if serving else status.NOT_SERVING
            )
        # engine.start() raised unless at least one model serves: the server as a whole does.
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status.SERVING)
        log.info("deepvis listening on %s (port %d, %s)", self.address, self.port, self.access)

    @property
    def access(self) -> str:
        """How callers are let in, in words: transport and credentials."""
        access = self.config.access
        parts = ["plaintext" if access.tls_cert is None else "TLS"]
        if access.tls_client_ca is not None:
            parts.append("client certificates")
        if access.auth_tokens_file is not None:
            parts.append("bearer tokens")
        return ", ".join(parts)

    @property
    def bound_address(self) -> str:
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def _device_failed(self, error: BaseException) -> None:
        """Called on the event loop by the engine: go NOT_SERVING at once, then let the owner stop."""
        for service in self.health_services:
            asyncio.get_running_loop().create_task(
                self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            )
        self.failed.set()

    async def stop(self, grace: float | None = 5.0) -> None:
        self.engine.close()
        for service in self.health_services:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        await self.engine.stop()
        await asyncio.to_thread(self.observability.stop)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


@contextmanager
def serve_in_thread(
    config: ServerConfig,
    address: str = "127.0.0.1:0",
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> Iterator[DeepvisServer]:
    """Runs a server on its own event loop in a background thread (tests, embedding, demos)."""
    loop = asyncio.new_event_loop()
    server = DeepvisServer(config, address, interceptors)
    ready = threading.Event()
    error: list[BaseException] = []
    stop_requested = asyncio.Event()

    async def main() -> None:
        try:
            await server.start()
        except BaseException as e:  # noqa: BLE001 - reported to the caller below
            error.append(e)
            await server.stop(grace=None)
            return
        finally:
            ready.set()
        await stop_requested.wait()
        await server.stop(grace=1.0)

    thread = threading.Thread(
        target=loop.run_until_complete, args=(main(),), name="deepvis-server", daemon=True
    )
    thread.start()
    ready.wait()
    try:
        if error:
            raise error[0]
        yield server
    finally:
        loop.call_soon_threadsafe(stop_requested.set)
        thread.join()
        loop.close()
