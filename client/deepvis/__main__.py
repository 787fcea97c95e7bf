"""Runs the deepvis command line: python -m deepvis."""

from __future__ import annotations

from deepvis._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
