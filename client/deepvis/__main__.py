"""The `deepvis` command (and `python -m deepvis`): gRPC's log lines off, then the CLI."""

from __future__ import annotations

from deepvis._grpc_log import default_grpc_verbosity


def main(argv: list[str] | None = None) -> int:
    """Runs the deepvis command line; gRPC's own log lines stay off unless asked for."""
    default_grpc_verbosity()  # before grpc is imported, which is when gRPC reads it
    from deepvis._cli import main as run

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
