"""`deepvis-server`: serve the configured models (or the embedded default) over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import DEFAULT_CONFIG, ConfigError, load_config
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
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


async def serve(server: DeepvisServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before the models load, so a SIGTERM during start-up also ends cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(
        f"deepvis-server: serving {', '.join(server.engine.models)} on {server.bound_address}",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=10.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        if args.device:
            from dataclasses import replace

            config = replace(config, device=args.device)
        asyncio.run(serve(DeepvisServer(config, args.address)))
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"OSError: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
