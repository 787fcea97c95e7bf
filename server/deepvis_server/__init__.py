"""deepvis server: batches interpretability requests of many clients onto one device."""

from __future__ import annotations

__version__ = "0.1.0"
