"""deepvis server: batches interpretability requests of many clients onto one device."""

from __future__ import annotations

# The distribution's one version, which the client package spells.
from deepvis._version import __version__ as __version__
