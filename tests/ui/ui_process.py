"""A `deepvis ui` process for tests: started on port 0, its URL read from its first line."""

from __future__ import annotations

import subprocess
import sys


class Explorer:
    """A `deepvis ui` process and the URL it printed first."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "deepvis", "ui", "--port", "0", *args]
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            self.process.wait(10)
            err = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"deepvis ui printed no URL (rc={self.process.returncode}): {err}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
