"""Clients that misbehave the way real ones do: killed mid-call, reading slowly, never reading.

Each test drives a real `deepvis-server` process from other real processes; the server must
stay up, keep its memory bounded and answer the next client exactly as before.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest

from configs import default_model_config
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.process import ServerProcess
from ports import free_port

# A client process per kind of call. Each prints "ready" once it has what it came for (some
# messages of a stream, or nothing at all: a call in flight), then goes on until killed.
_CLIENT = r"""
import sys, time
import grpc
import numpy as np
from deepvis.v1 import deepvis_pb2 as pb, deepvis_pb2_grpc as pb_grpc

address, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
stub = pb_grpc.ExplainerStub(grpc.insecure_channel(address))
rng = np.random.default_rng(n)

def explain_request():
    pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    tensor = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=pixels.tobytes())
    return pb.ExplainRequest(
        model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(pixels=tensor),
        output=pb.OutputOptions(render=True),
    )

if kind == "visualize":
    request = pb.VisualizeRequest(
        model="digits", objective=pb.Objective(class_index=n % 10), steps=2000,
        progress_every=1, batch=4,
    )
    for i, _ in enumerate(stub.Visualize(request)):
        if i + 1 == n:
            print("ready", flush=True)
elif kind == "dream":
    pixels = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    request = pb.DeepDreamRequest(
        model="digits", objective=pb.Objective(layer="conv2"), progress_every=1,
        input=pb.Input(pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[48, 40],
                                        data=pixels.tobytes())),
        octaves=8, octave_scale=1.05, steps_per_octave=100,
    )
    for i, _ in enumerate(stub.DeepDream(request)):
        if i + 1 == n:
            print("ready", flush=True)
elif kind == "unread":
    stream = stub.Visualize(pb.VisualizeRequest(
        model="digits", objective=pb.Objective(class_index=3), steps=2000, progress_every=1,
    ))
    print("ready", flush=True)
    time.sleep(3600)
elif kind == "explain":
    print("ready", flush=True)
    while True:
        stub.Explain(explain_request())
elif kind == "explain_batch":
    print("ready", flush=True)
    while True:
        stub.ExplainBatch(pb.ExplainBatchRequest(requests=[explain_request() for _ in range(64)]))
"""

KINDS = ("visualize", "unread", "explain", "explain_batch", "dream")


def _metric(metrics_port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body.decode(), re.M)
    return sum(float(v) for v in values)


def _reference_call(address: str) -> pb.ExplainResponse:
    pixels = (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)
    request = pb.ExplainRequest(
        model="digits",
        method=pb.METHOD_GUIDED_BACKPROP,
        input=pb.Input(
            pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=pixels.tobytes())
        ),
        output=pb.OutputOptions(render=True),
    )
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.ExplainerStub(channel).Explain(request, timeout=60)


def _spawn(address: str, kind: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CLIENT, address, kind, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_clients_killed_at_random_points_never_take_the_server_down(tmp_path) -> None:
    """Dozens of client processes SIGKILLed mid-stream (Visualize, DeepDream), mid-call,
    before and after their first message: the server stays up, cancels their work, and answers as before."""
    metrics = free_port()
    config = default_model_config(tmp_path / "faults.toml", f"metrics_port = {metrics}")
    rng = random.Random(0)
    with ServerProcess("--config", str(config)) as server:
        before = _reference_call(server.address)
        for round_ in range(3):
            clients = []
            for i in range(12):
                kind = KINDS[(i + round_) % len(KINDS)]
                clients.append(_spawn(server.address, kind, rng.randint(1, 6)))
            for proc in clients:
                assert proc.stdout is not None
                proc.stdout.readline()  # "ready", or "" if it died on its own
                time.sleep(rng.random() * 0.3)  # then at a random point of its call
                proc.kill()
            for proc in clients:
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
            assert server.alive(), f"the server died in round {round_}:\n{server.log()[-3000:]}"
        after = _reference_call(server.address)
        assert after.array.data == before.array.data and after.image_png == before.image_png
        # Every killed client's render job is gone from the optimization batch.
        deadline = time.monotonic() + 30
        while _metric(metrics, "deepvis_render_jobs") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(metrics, "deepvis_render_jobs") == 0
        while _metric(metrics, "deepvis_dream_jobs") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(metrics, "deepvis_dream_jobs") == 0
        assert _metric(metrics, "deepvis_queue_depth") == 0
        assert server.stop() == 0
    assert "Segmentation fault" not in server.log() and "Traceback" not in server.log()


@pytest.mark.timeout(180)
def test_a_slow_reader_and_a_reader_that_never_reads_keep_server_memory_bounded(
    tmp_path,
) -> None:
    """A 4096-step render of 16 images at 128 px with a picture every step, read one message
    a second for 30 s, beside a stream nobody reads: the server keeps only the latest
    progress for each, so its memory stays put; cancelling frees the jobs."""
    metrics = free_port()
    config = default_model_config(tmp_path / "slow.toml", f"metrics_port = {metrics}")
    request = pb.VisualizeRequest(
        model="digits",
        objective=pb.Objective(class_index=4),
        steps=4096,
        batch=16,
        height=128,
        width=128,
        progress_every=1,
    )
    with ServerProcess("--config", str(config)) as server:
        # No bandwidth-delay probing: the client's HTTP/2 window stays at 64 KB, so it cannot
        # buffer messages ahead of the reader and the server's writes wait for the reader.
        channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
        stub = pb_grpc.ExplainerStub(channel)
        unread = stub.Visualize(request)  # never read
        slow = stub.Visualize(request)
        first = next(slow)
        start_rss = server.rss_bytes()
        steps = [first.progress.step]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            time.sleep(1.0)
            steps.append(next(slow).progress.step)
        grown = server.rss_bytes() - start_rss
        assert grown < 200 * 1024 * 1024, f"server RSS grew {grown / 2**20:.0f} MB"
        assert steps == sorted(set(steps)), steps  # never a step twice, never backwards
        slow.cancel()
        unread.cancel()
        deadline = time.monotonic() + 30
        while _metric(metrics, "deepvis_render_jobs") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(metrics, "deepvis_render_jobs") == 0
        channel.close()


def test_a_stream_that_falls_behind_is_sent_the_latest_progress_then_the_result() -> None:
    """The rule itself, on the job's mailbox: events posted while nobody reads replace one
    another; the reader then gets the newest, and the result is never dropped."""
    import asyncio

    from deepvis_server.featurevis.objectives import ClassLogit
    from deepvis_server.featurevis.optimization import RenderEvent, RenderJob, RenderResult
    from deepvis_server.featurevis.scheduler import JobState

    async def run() -> list[int]:
        state = JobState(
            job=RenderJob(ClassLogit(1), steps=100, progress_every=5), size=(8, 8), arrival=0.0
        )
        for step in range(1, 100):
            state.post(RenderEvent(0, step, 100, float(step)))
        result = RenderResult([], np.zeros((1, 1, 8, 8), np.float32), 1.0, np.ones(1), 100)
        state.post(RenderEvent(0, 100, 100, 100.0, result=result))
        return [ev.step async for ev in state.stream()]

    # Only steps due a message (every 5) are kept, only the newest of them, then the result.
    assert asyncio.run(run()) == [95, 100]
