"""`deepvis-server`: serve the configured models (or the embedded default) over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from deepvis._grpc_log import default_grpc_verbosity

# A client-only install (`pip install deepvis`) has this command but not the server's
# dependencies (torch & co.); main() then says what to install instead of a traceback.
_MISSING: ModuleNotFoundError | None = None
try:
    import torch  # noqa: F401 - the server's first need (it does not import grpc)

    from .config import DEFAULT_CONFIG, ConfigError, ServerConfig, load_config
    from .workers import MAX_WORKERS, Supervisor, address_port, die_with_supervisor
except ModuleNotFoundError as e:
    if (e.name or "deepvis").partition(".")[0] in ("deepvis", "deepvis_server"):
        raise  # a module of our own: a broken install, not a missing extra
    _MISSING = e

# Nothing above imports grpc: main() sets GRPC_VERBOSITY first (see default_grpc_verbosity).
if TYPE_CHECKING:
    from .server import DeepvisServer

log = logging.getLogger("deepvis_server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="deepvis-server", description=__doc__)
    p.add_argument(
        "--config",
        help=f"TOML model configuration (default: the embedded digits model, {DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--address", default="127.0.0.1:50051", help="HOST:PORT to listen on (default %(default)s)"
    )
    p.add_argument("--device", help="override [server].device: auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--workers",
        type=int,
        help="override [server].workers: server processes sharing the address, each with its "
        f"own event loop and copy of the models (1 to {MAX_WORKERS}; needs a fixed port)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    access = p.add_argument_group("access (each overrides its [server] key)")
    access.add_argument("--tls-cert", metavar="PEM", help="server certificate chain: TLS on")
    access.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    access.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    access.add_argument(
        "--auth-tokens-file",
        metavar="FILE",
        help="require 'authorization: Bearer <token>' with a token from FILE (one a line)",
    )
    access.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        help="allow plaintext on a non-loopback address (only on a network you trust)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


EXIT_DEVICE_FAILED = 3  # a fatal device error: the supervisor should restart the process


async def serve(server: DeepvisServer) -> int:
    """Serves until SIGTERM/SIGINT (exit 0) or a fatal device error (exit 3)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before the models load, so a SIGTERM during start-up also ends cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # A model that failed to load was logged (an error line with the cause) as it failed.
    print(
        f"deepvis-server: serving {', '.join(server.engine.models)} on {server.bound_address} "
        f"({server.access})",
        flush=True,
    )
    failed = asyncio.ensure_future(asyncio.to_thread(server.failed.wait))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = EXIT_DEVICE_FAILED if server.failed.is_set() else 0
    if code:
        log.critical("device failed: %s; stopping", server.engine.fatal_error)
    else:
        log.info("shutting down")
    server.failed.set()  # ends the waiting thread
    stopping.cancel()
    await server.stop(grace=10.0)
    return code


def _override(flag: str | None, current: Path | None) -> Path | None:
    # A flag's path is relative to the working directory, as a shell user expects.
    return current if flag is None else Path(flag)


def apply_overrides(config: ServerConfig, args: argparse.Namespace) -> ServerConfig:
    """The configuration with the command line's overrides applied."""
    access = config.access
    return replace(
        config,
        device=args.device or config.device,
        access=replace(
            access,
            tls_cert=_override(args.tls_cert, access.tls_cert),
            tls_key=_override(args.tls_key, access.tls_key),
            tls_client_ca=_override(args.tls_client_ca, access.tls_client_ca),
            auth_tokens_file=_override(args.auth_tokens_file, access.auth_tokens_file),
            allow_insecure_remote=access.allow_insecure_remote or args.allow_insecure_remote,
        ),
        workers=config.workers if args.workers is None else args.workers,
    )


def _missing_extra(error: ModuleNotFoundError) -> int:
    print(
        f"deepvis-server: the server needs {error.name}, which is not installed; "
        "install the server with: pip install 'deepvis[server]'",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    if _MISSING is not None:
        return _missing_extra(_MISSING)
    args = parse_args(argv)
    # gRPC's C core reads its log level when grpc is first imported: set it before that, so
    # its own lines (TLS handshake failures of clients) stay out of the server's log.
    default_grpc_verbosity()
    try:
        from .observability import configure_logging
        from .server import DeepvisServer
    except ModuleNotFoundError as e:
        if (e.name or "deepvis").partition(".")[0] in ("deepvis", "deepvis_server"):
            raise
        return _missing_extra(e)

    configure_logging("text", args.log_level)  # until the configuration is read
    try:
        config = apply_overrides(load_config(args.config), args)
        if not 1 <= config.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be 1 to {MAX_WORKERS}, got {config.workers}")
        if args.worker_index is None and config.workers > 1:
            if address_port(args.address) == 0:
                raise ConfigError(
                    f"--address {args.address}: workers share one TCP port, so give "
                    "HOST:PORT with a fixed port (not 0, which gives each worker its own, and "
                    "not a Unix socket)"
                )
            command = [
                sys.executable,
                "-m",
                "deepvis_server",
                *(sys.argv[1:] if argv is None else argv),
            ]
            return Supervisor(command, config.workers, sys.stdout).run()
        if args.worker_index is not None:
            die_with_supervisor()
            obs = config.observability
            if obs.metrics_port:  # each worker its own: worker i on metrics_port + i
                port = obs.metrics_port + args.worker_index
                config = replace(config, observability=replace(obs, metrics_port=port))
        configure_logging(config.observability.log_format, args.log_level)
        # The device thread takes the GIL back after every op: a short switch interval keeps
        # a busy event loop from holding it for 5 ms each time (bench/gil_convoy.py).
        sys.setswitchinterval(config.gil_switch_interval_ms / 1000.0)
        log.info("GIL switch interval %g ms", config.gil_switch_interval_ms)
        return asyncio.run(serve(DeepvisServer(config, args.address)))
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"OSError: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
