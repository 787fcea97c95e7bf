"""Imported at start-up by every Python process whose PYTHONPATH holds this folder
(`bench/turnaround.py` sets it for one load run); does something only in a deepvis-server
process with DEEPVIS_TURNAROUND set: timestamps of each batch's compute (device thread), each
answer's drawing (CPU threads), each Explain call's start and end and each item's entry into
the batcher, written at exit to DEEPVIS_TURNAROUND.<pid>.json."""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time

_EVENTS: list[tuple[float, str, str, float]] = []


def _record(kind: str) -> None:
    # (wall clock, event, thread, the thread's CPU seconds); list.append is atomic.
    _EVENTS.append((time.perf_counter(), kind, threading.current_thread().name, time.thread_time()))


def _dump() -> None:
    with open(f"{os.environ['DEEPVIS_TURNAROUND']}.{os.getpid()}.json", "w") as f:
        json.dump(_EVENTS, f)


def _wrap() -> None:
    from deepvis_server import batcher, engine, servicer

    compute, submit, draw = batcher.Batcher._compute, batcher.Batcher.submit, engine.Engine._draw
    explain = servicer.ExplainerServicer.Explain

    def _compute(self, batch, staged):
        _record("compute_start")
        try:
            return compute(self, batch, staged)
        finally:
            _record("compute_end")

    def _submit(self, item):
        _record("submit")
        return submit(self, item)

    def _draw(self, *args):
        _record("draw_start")
        try:
            return draw(self, *args)
        finally:
            _record("draw_end")

    async def _explain(self, request, context):
        _record("call_start")
        try:
            return await explain(self, request, context)
        finally:
            _record("call_end")

    batcher.Batcher._compute = _compute
    batcher.Batcher.submit = _submit
    engine.Engine._draw = _draw
    servicer.ExplainerServicer.Explain = _explain


class _AfterEngine(importlib.abc.MetaPathFinder):
    """Wraps the server's functions once deepvis_server.engine has been imported."""

    def find_spec(self, name, path, target=None):
        if name != "deepvis_server.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _wrap()

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("DEEPVIS_TURNAROUND") and "deepvis_server" in getattr(sys, "orig_argv", []):
    sys.meta_path.insert(0, _AfterEngine())
    atexit.register(_dump)
