"""What a long streamed job (Visualize, Evaluate) holds for its reader: bounded whatever the
reader does.

A job posts progress as it goes, then a result or an error; its stream takes them. Only the
newest progress not yet taken is kept (a newer one replaces it), so a reader that falls behind
gets the latest state when it reads again, never a backlog, and a reader that never reads holds
one message, the result, or the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class Mailbox(Generic[P, R]):
    """The newest progress not yet taken, the result, the error: used on the event loop only."""

    __slots__ = ("_changed", "_error", "_pending", "_result")

    def __init__(self) -> None:
        self._pending: P | None = None
        self._result: R | None = None
        self._error: BaseException | None = None
        self._changed = asyncio.Event()

    def progress(self, item: P) -> None:
        """Replaces the progress not yet taken, if any."""
        self._pending = item
        self._changed.set()

    def result(self, item: R) -> None:
        """The stream ends with `item` once it has taken the progress before it."""
        self._result = item
        self._changed.set()

    def error(self, error: BaseException) -> None:
        """The stream raises `error` once it has taken the progress before it."""
        self._error = error
        self._changed.set()

    async def stream(self) -> AsyncGenerator[P | R, None]:
        """Progress as it comes (the latest when the reader falls behind), then the result;
        raises the error that ended the job."""
        while True:
            if self._pending is not None:
                item, self._pending = self._pending, None
                yield item
                continue
            if self._error is not None:
                raise self._error
            if self._result is not None:
                yield self._result
                return
            self._changed.clear()
            await self._changed.wait()
