"""The version of deepvis: its one spelling, which pyproject.toml reads too."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
