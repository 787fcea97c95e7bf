"""The background task each of a model's queues runs on the event loop (the Explain batcher,
the Visualize and Evaluate schedulers): started with the server, stopped with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar

from .models import ServedModel


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancels a background loop and waits until it has really stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


class ModelLoop:
    """One model's background loop: `_loop` runs from `start` until `stop`, which then calls
    `_stopped` to fail whatever still waits on it."""

    kind: ClassVar[str]  # names the task, "<kind>-<model>"

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self._task: asyncio.Task[None] | None = None
        # Called (on the event loop) when the device fails beyond repair.
        self.on_fatal: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"{self.kind}-{self.model.name}"
        )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._stopped()

    async def _loop(self) -> None:
        raise NotImplementedError

    def _stopped(self) -> None:
        """Fails what still waits, once the loop has stopped (the server is shutting down)."""

    def _device_lost(self, error: BaseException) -> None:
        if self.on_fatal is not None:
            self.on_fatal(error)
