"""A real `deepvis-server` process for tests that need one: its address, pid, memory, logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from deepvis_server.config import DEFAULT_CONFIG

TESTS = Path(__file__).resolve().parent
_SERVING = re.compile(r"^deepvis-server: serving .* on (\S+) \(")


def default_model_config(path: Path, server: str = "") -> Path:
    """Writes a configuration serving the embedded digits model (its files by absolute path)
    after a `[server]` table holding `server`'s lines; returns its path."""
    text = DEFAULT_CONFIG.read_text()
    for name in ("digits_cnn.safetensors", "labels.txt"):
        text = text.replace(f'"{name}"', f'"{DEFAULT_CONFIG.parent / name}"')
    path.write_text(f"[server]\n{server}\n{text}")
    return path


class ServerProcess:
    """Runs `python -m deepvis_server ARGS --address HOST:0` until `stop()` (or the `with`
    block's end), and reads the address it serves on from its "serving" line.

    stderr goes to a file (`log()` reads it); `tests/` is on the server's PYTHONPATH, so
    configurations may name `toy_models:...` architectures.
    """

    def __init__(self, *args: str, host: str = "127.0.0.1", timeout: float = 120.0) -> None:
        self._stderr = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="deepvis-server-", suffix=".log"
        )
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deepvis_server", *args, "--address", f"{host}:0"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self._final_log = ""
        self.address = self._wait_serving(timeout)

    def _wait_serving(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        timer = _Watchdog(self.proc, timeout)
        try:
            for line in self.proc.stdout:
                found = _SERVING.match(line)
                if found:
                    return found.group(1)
        finally:
            timer.cancel()
        code = self.proc.wait()
        raise AssertionError(f"deepvis-server exited with {code} before serving:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def log(self) -> str:
        """What the server wrote to stderr so far (all of it, once stopped)."""
        if self._stderr.closed:
            return self._final_log
        self._stderr.flush()
        return Path(self._stderr.name).read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a drain), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._final_log = self.log()
            self._stderr.close()
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


class _Watchdog:
    """Kills a process that has not started serving within `timeout` seconds."""

    def __init__(self, proc: subprocess.Popen[str], timeout: float) -> None:
        import threading

        self._timer = threading.Timer(timeout, proc.kill)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()
