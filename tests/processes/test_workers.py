"""`deepvis-server --workers N`: N server processes on one address, under one supervisor.

Real processes on a real port: connections spread over the workers, every worker answers
the same as the others, SIGTERM drains them all, and one worker's death stops the set.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import deepvis
from deepvis_server.config import DEFAULT_CONFIG
from deepvis_server.process import ServerProcess
from ports import free_port

PIXELS = (load_digits().images[:4] * 16).clip(0, 255).astype(np.uint8)


def two_free_ports() -> int:
    """A port p with p + 1 also free (worker i serves metrics on metrics_port + i)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two adjacent free ports")


def write_config(tmp_path: Path, metrics_port: int) -> Path:
    """The embedded digits model, with /metrics on (worker i on metrics_port + i), and a
    GIL switch interval other than the default."""
    text = DEFAULT_CONFIG.read_text()
    for name in ("digits_cnn.safetensors", "labels.txt"):
        text = text.replace(f'"{name}"', f'"{DEFAULT_CONFIG.parent / name}"')
    cfg = tmp_path / "workers.toml"
    cfg.write_text(
        f"[server]\nmetrics_port = {metrics_port}\ngil_switch_interval_ms = 0.25\n{text}"
    )
    return cfg


def start(*args: str, address: str) -> ServerProcess:
    """A supervisor of two workers on `address`, once it says all of them serve."""
    server = ServerProcess(*args, "--workers", "2", address=address)
    assert "2 workers" in server.serving_line, server.serving_line
    return server


def worker_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        # A zombie (exited, not yet reaped) is not alive either.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def explain_ok(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    total = 0.0
    for labels, value in re.findall(
        r"^deepvis_requests_total\{([^}]*)\} (\S+)$", body.decode(), re.M
    ):
        if '"Explain"' in labels and 'code="OK"' in labels:
            total += float(value)
    return total


def test_workers_share_the_address_answer_alike_and_drain_on_sigterm(tmp_path) -> None:
    metrics = two_free_ports()
    address = f"127.0.0.1:{free_port()}"
    with start("--config", str(write_config(tmp_path, metrics)), address=address) as server:
        workers = worker_pids(server.pid)
        assert len(workers) == 2
        answers = []
        # Each client its own connection (no shared subchannel), so the kernel picks a
        # worker per client: go on until both have answered (each try: 1 in 2).
        for _ in range(40):
            with deepvis.Client(
                address, timeout=30, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as client:
                answer = client.explain(PIXELS[1], target=1, render=False).array
                assert answer is not None
                answers.append(answer)
            if explain_ok(metrics) >= 1 and explain_ok(metrics + 1) >= 1:
                break
        counts = (explain_ok(metrics), explain_ok(metrics + 1))
        assert min(counts) >= 1, f"one worker answered every call: {counts}"
        assert sum(counts) == len(answers)
        # Both workers serve the same model: every answer is the same array.
        assert all(np.array_equal(answers[0], a) for a in answers[1:])
        assert np.abs(answers[0]).max() > 0
        assert server.stop(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(w) for w in workers)
        # Each worker process runs with the configured GIL switch interval.
        assert server.log().count("GIL switch interval 0.25 ms") == 2


def test_one_worker_dying_stops_the_others_and_the_supervisor_fails(tmp_path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with start(address=address) as server:
        first, second = worker_pids(server.pid)
        os.kill(first, signal.SIGKILL)
        # Whatever restarts a failed server then restarts the whole set: non-zero exit.
        assert server.wait(timeout=60) == 1
        deadline = time.monotonic() + 10
        while alive(second) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(second)
        with pytest.raises(deepvis.Unavailable):
            with deepvis.Client(address, timeout=2) as client:
                client.explain(PIXELS[0], render=False)


def test_workers_do_not_outlive_a_killed_supervisor() -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start(address=address)
    workers = worker_pids(server.pid)
    try:
        server.kill()  # SIGKILL: no chance to stop them itself
        deadline = time.monotonic() + 30
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(w) for w in workers)
    finally:
        server.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


def test_a_single_server_refuses_a_port_another_one_serves() -> None:
    """gRPC lets processes share a port by default; only workers do, on purpose."""
    address = f"127.0.0.1:{free_port()}"
    with start(address=address) as server:
        done = subprocess.run(
            [sys.executable, "-m", "deepvis_server", "--address", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert f"OSError: cannot listen on {address}: the port is in use" in done.stderr
        assert "Traceback" not in done.stderr
        assert server.stop(timeout=60) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "127.0.0.1:0", "--workers", "2"], "with a fixed port"),
        (["--address", "unix:/tmp/deepvis.sock", "--workers", "2"], "not a Unix socket"),
        (["--address", "127.0.0.1:50051", "--workers", "0"], "workers must be 1 to 64"),
        (["--address", "127.0.0.1:50051", "--workers", "65"], "workers must be 1 to 64"),
    ],
)
def test_workers_refuse_port_zero_and_out_of_range_counts(args, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deepvis_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
