"""The CLI's progress on a terminal: one bar redrawn in place on stderr, not a line per step;
nothing at all when stderr is not a terminal or with --quiet. A real server, the CLI as a
process, stderr on a pseudo-terminal."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pty = pytest.importorskip("pty")
fcntl = pytest.importorskip("fcntl")
termios = pytest.importorskip("termios")


def on_a_terminal(cmd: list[str]) -> tuple[int, str, str]:
    """Runs `cmd` with stderr on a pseudo-terminal; its exit status, stdout and stderr."""
    master, slave = pty.openpty()
    # A terminal 100 columns wide, as a real one has a size (tqdm draws to fit it).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(timeout=120)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepvis", *args]


def test_visualize_shows_one_bar_of_step_and_objective(digits_server, tmp_path: Path) -> None:
    address = digits_server.bound_address
    rc, _, err = on_a_terminal(
        cli("visualize", "--class", "3", "--steps", "24", "--progress-every", "4")
        + ["--server", address, "--out", str(tmp_path / "v")]
    )
    assert rc == 0, err
    assert "24/24" in err and "objective=" in err
    # Redrawn in place (carriage returns), ending in one line: not a line per step.
    assert err.count("\r") >= 2 and err.strip("\r\n").count("\n") == 0, repr(err)
    quiet = on_a_terminal(
        cli("visualize", "--class", "3", "--steps", "8", "--progress-every", "4", "--quiet")
        + ["--server", address, "--out", str(tmp_path / "q")]
    )
    assert quiet[0] == 0 and quiet[2] == ""


def test_explain_shows_one_bar_of_inputs_and_none_in_a_pipe(
    digits_server, sample_paths: list[Path], tmp_path: Path
) -> None:
    argv = cli("explain", *map(str, sample_paths[:6]), "--server", digits_server.bound_address)
    rc, stdout, err = on_a_terminal([*argv, "-o", str(tmp_path / "a")])
    assert rc == 0, err
    assert len(stdout.splitlines()) == 6  # the results' lines stay on stdout
    assert "6/6" in err and err.strip("\r\n").count("\n") == 0, repr(err)
    piped = subprocess.run([*argv, "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == "" and len(piped.stdout.splitlines()) == 6
