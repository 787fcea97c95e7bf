"""Makes the top-level packages named in $DEEPVIS_TEST_HIDE (comma-separated) not installed.

On PYTHONPATH, Python imports this at start-up: every finder then fails to find those
packages, so `import torch` raises ModuleNotFoundError and `importlib.util.find_spec` returns
None, as on a machine without them (a client-only install).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

_HIDDEN = frozenset(filter(None, os.environ.get("DEEPVIS_TEST_HIDE", "").split(",")))


class _Hiding:
    """A finder that finds what `finder` finds, except the hidden packages."""

    def __init__(self, finder: Any) -> None:
        self._finder = finder

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] in _HIDDEN:
            return None
        return self._finder.find_spec(name, path, target)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._finder, name)


if _HIDDEN:
    sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
