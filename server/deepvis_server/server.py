"""The gRPC server: Explainer, standard health and reflection, on one grpc.aio front."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

from .config import ServerConfig
from .engine import Engine
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name


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
        self.interceptors = list(interceptors)
        self.engine = Engine(config)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        # Health says NOT_SERVING until every model is loaded and warmed up.
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            interceptors=self.interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        pb_grpc.add_ExplainerServicer_to_server(ExplainerServicer(self.engine), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self.port = server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        self._server = server
        await self.engine.start()
        await server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("deepvis listening on %s (port %d)", self.address, self.port)

    @property
    def bound_address(self) -> str:
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = 5.0) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        await self.engine.stop()

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
