"""A `deepvis-server` in a process of its own, for tests, benchmarks, the demo and examples.

    with ServerProcess("--config", "models.toml") as server:   # --address 127.0.0.1:0
        client = deepvis.Client(server.address)
        ...
    server.stop()  # SIGTERM (a drain), then the exit code; also at the `with` block's end

It starts `python -m deepvis_server ARGS --address ADDRESS` and reads the address the
server bound from its "serving" line, which it prints once its models are loaded and warmed
up (a supervisor of `--workers N`: once every worker serves), so `HOST:0` works. Only the
standard library is imported here: a script can use it without the server's dependencies.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["ServerDidNotStart", "ServerProcess"]

_SERVING = re.compile(r"^deepvis-server: serving .* on (\S+) \(")


class ServerDidNotStart(RuntimeError):
    """The server exited, or was killed for taking too long, before it served."""

    def __init__(self, message: str, code: int | None, log: str) -> None:
        super().__init__(f"{message}\n{log[-4000:]}" if log else message)
        self.code = code
        self.log = log


class ServerProcess:
    """Runs `python -m deepvis_server *args --address address` until `stop()`.

    Args:
        *args: the server's arguments, but for `--address`.
        address: HOST:PORT to listen on; port 0 takes a free one (`address` then says which).
            `--workers N` needs a fixed port.
        env: variables to set over this process's environment; a value of None unsets one.
        pythonpath: folders put ahead of PYTHONPATH, e.g. where a configuration's
            `module:Class` architectures are.
        log: where the server's stderr (its log) goes: True, a temporary file that `log()`
            reads; a path, that file (kept); False, this process's stderr (the terminal).
        timeout: seconds to wait for the "serving" line before killing the server.
        wait: False returns at once; then call `wait_serving()` (to start several at a time).

    Raises:
        ServerDidNotStart: it exited before serving, or did not serve within `timeout`.
    """

    def __init__(
        self,
        *args: str,
        address: str = "127.0.0.1:0",
        env: Mapping[str, str | None] | None = None,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
        log: bool | str | os.PathLike[str] = True,
        timeout: float = 120.0,
        wait: bool = True,
    ) -> None:
        environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        if pythonpath:
            paths = [os.fspath(p) for p in pythonpath]
            environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [*paths, environ.get("PYTHONPATH")])
            )
        self._log_file: IO[str] | None = None
        self._log_path: Path | None = None
        if log is True:
            self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
                "w+", prefix="deepvis-server-", suffix=".log"
            )
            self._log_path = Path(self._log_file.name)
        elif log is not False:
            self._log_path = Path(log)
            self._log_file = self._log_path.open("w")
        self._final_log = ""
        self.command = [sys.executable, "-m", "deepvis_server", *args, "--address", address]
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=environ
        )
        self._timeout = timeout
        self.serving_line = ""
        self.address = ""
        self.stdout_lines: list[str] = []
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float | None = None) -> str:
        """Waits for the "serving" line; returns the address the server serves on."""
        if self.address:
            return self.address
        assert self.proc.stdout is not None
        limit = self._timeout if timeout is None else timeout
        late = threading.Event()

        def too_late() -> None:
            late.set()
            self.proc.kill()

        timer = threading.Timer(limit, too_late)
        timer.daemon = True
        timer.start()
        try:
            for line in self.proc.stdout:
                found = _SERVING.match(line)
                if found:
                    self.serving_line = line.rstrip("\n")
                    self.address = found.group(1)
                    break
                self.stdout_lines.append(line)
        finally:
            timer.cancel()
        if not self.address:
            code = self.proc.wait()
            why = f" (killed after {limit:g} s without serving)" if late.is_set() else ""
            log = self.log()
            self.stop()
            raise ServerDidNotStart(
                f"deepvis-server exited with {code} before serving{why}: {' '.join(self.command)}",
                code,
                log,
            )
        # Drained from now on, so that a server printing more never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self.address

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
        except ValueError:  # closed by stop()
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        """The port it serves on (0 before it serves)."""
        return int(self.address.rsplit(":", 1)[1]) if self.address else 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/{self.pid}/status has no VmRSS line")

    def log(self) -> str:
        """What the server wrote to stderr so far (all of it, once stopped); "" when its
        stderr is this process's."""
        if self._log_file is None or self._log_path is None:
            return ""
        if self._log_file.closed:
            return self._final_log
        self._log_file.flush()
        return self._log_path.read_text()

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once the server exits (subprocess.TimeoutExpired after `timeout`)."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> int:
        """SIGKILL (no drain), then the exit code."""
        self.send_signal(signal.SIGKILL)
        return self.stop()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a drain), then the exit code; SIGKILL if it has not exited in `timeout`."""
        self.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if self._log_file is not None and not self._log_file.closed:
            self._final_log = self.log()
            self._log_file.close()
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
