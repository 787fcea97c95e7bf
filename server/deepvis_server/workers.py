"""Several server processes on one address: `deepvis-server --workers N`.

One server process answers every call on one event loop: its gRPC and protobuf work per call
(~1 ms of one core for a 224x224 guided-backprop answer on a 2-core VM, `bench/overhead.py`)
caps the calls a second it can answer, however fast the device. With `workers = N` this
process becomes a supervisor: it starts N full servers on the same address (the kernel's
SO_REUSEPORT, which gRPC sets on its listening sockets, spreads connections over them), each
with its own event loop, batcher and copy of the models on the same device. While one
worker's batch computes, the others receive, batch and answer, so the host work of one
overlaps the device work of another.

Contract, the same as one process's: the supervisor prints one "serving" line when every
worker serves; SIGTERM or SIGINT drains all of them and exits 0; if any worker exits (a
fatal device error's 3, a crash, a kill), the supervisor stops the others and exits with
that worker's code (1 when a signal killed it), so that whatever restarts a failed server
restarts the whole set; a worker whose supervisor dies (even by SIGKILL) drains and exits.
Worker i serves /metrics on metrics_port + i (when metrics are on).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

MAX_WORKERS = 64
SUPERVISOR_PID_ENV = "DEEPVIS_SUPERVISOR_PID"


def die_with_supervisor() -> None:
    """In a worker: ask Linux to send SIGTERM (a drain) when the supervisor dies, however it
    dies (a SIGKILL included), so that no worker outlives it holding the port; exits at once
    if the supervisor is already gone. Elsewhere than Linux, nothing."""
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(expected):  # it died before the request took effect
        sys.exit(1)


def address_port(address: str) -> int:
    """The port of a HOST:PORT address; 0 when there is none (a Unix socket) or it is 0."""
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0


class Supervisor:
    """Runs `n` worker processes (`command` + `--worker-index i`) until a signal or a failure."""

    def __init__(self, command: Sequence[str], n: int, out: IO[str]) -> None:
        self.command = list(command)
        self.n = n
        self.out = out
        self.procs: list[subprocess.Popen[str]] = []
        self._serving: list[str] = []
        self._changed = threading.Condition()
        self._stopping = False

    def _forward(self, i: int, proc: subprocess.Popen[str]) -> None:
        """Copies a worker's stdout to ours, noting its "serving" line."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("deepvis-server: serving "):
                with self._changed:
                    self._serving.append(line)
                    self._changed.notify_all()
                continue  # the supervisor prints one line for all of them
            self.out.write(f"[worker {i}] {line}")
            self.out.flush()
        with self._changed:
            self._changed.notify_all()  # it exited: wake the supervisor

    def _exited(self) -> subprocess.Popen[str] | None:
        return next((p for p in self.procs if p.poll() is not None), None)

    def _signal(self, signum: int, frame: object) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        for i in range(self.n):
            proc = subprocess.Popen(
                [*self.command, "--worker-index", str(i)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())},
            )
            self.procs.append(proc)
            threading.Thread(target=self._forward, args=(i, proc), daemon=True).start()
        announced = False
        with self._changed:
            while True:
                if self._stopping:
                    break
                if self._exited() is not None:
                    break
                if not announced and len(self._serving) == self.n:
                    # "deepvis-server: serving <models> on <address> (<access>)"
                    line = self._serving[0].rstrip("\n")
                    if line.endswith(")"):
                        line = f"{line[:-1]}, {self.n} workers)"
                    self.out.write(line + "\n")
                    self.out.flush()
                    announced = True
                self._changed.wait(timeout=1.0)  # also polls for a worker that exited
        return self._stop_all()

    def _stop_all(self) -> int:
        failed = self._exited()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # each drains its calls in flight
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if failed is None:  # a signal asked us to stop: the workers' own exit codes count
            failed = next((p for p in self.procs if p.returncode != 0), None)
            if failed is None:
                return 0
        code = failed.returncode
        index = self.procs.index(failed)
        print(
            f"deepvis-server: worker {index} exited with {code}; stopped the others",
            file=sys.stderr,
            flush=True,
        )
        return code if code and code > 0 else 1
