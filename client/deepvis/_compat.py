"""What the client needs from typing on every Python it supports (3.10 and later)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # Python 3.10: PEP 692's Unpack of a TypedDict
    from typing_extensions import Unpack

__all__ = ["Unpack"]
