"""The serving path's own cost: a near-free model at 224x224, so what is measured is deepvis.

    .venv/bin/python bench/overhead.py --clients 8 --requests 768 --out bench/results/overhead.json

The model (average pooling, ReLU, one linear layer) costs next to nothing, so CPU time the
server spends per request is the serving path: receiving 150 KB of uint8 pixels, batching,
the guided-backprop machinery, casting the 3x224x224 result to float16 and sending 300 KB.
On a GPU host that cost, not the device, bounds how many requests one server answers.

Measured, in one run: the engine in-process (no gRPC, 8 concurrent callers), then a real
server process driven by N client processes, with one Explain call per image and with
ExplainBatch calls of --per-call images, then the same clients against gRPC's floor: a bare
grpc.aio server whose Explain answers a prebuilt response of the same size. Reports images/s
and the server's CPU ms per image
(user + system time of the server process, from /proc, over the timed part only), and the
same for its main thread alone, the event loop's: 1000 / that figure is the most calls a
second one server process could answer on this CPU, whatever the device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from load import cpu_seconds, free_port, server_cpu, start_server  # bench/ is on the path

SIZE = 224


def near_free(num_classes: int = 1000):  # noqa: ANN201 - torch is imported lazily
    """A model that costs next to nothing: avg-pool 32x32, ReLU, linear."""
    from torch import nn

    return nn.Sequential(
        nn.AvgPool2d(32), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 7 * 7, num_classes)
    )


def write_config(tmp: Path, clients: int, gil_switch_interval_ms: float = 0.5) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(near_free().state_dict(), str(tmp / "m.safetensors"))
    cfg = tmp / "m.toml"
    cfg.write_text(
        '[server]\ndevice = "cpu"\nmax_queue_size = 4096\n'
        f"gil_switch_interval_ms = {gil_switch_interval_ms}\n"
        '[[models]]\nname = "m"\n'
        'arch = "overhead:near_free"\nweights = "m.safetensors"\nnum_classes = 1000\n'
        f"input_size = [{SIZE}, {SIZE}]\nmax_batch_size = {clients * 8}\nmax_delay_ms = 5\n"
    )
    return cfg


def client_proc(address: str, n: int, per_call: int, seed: int, start: float, q) -> None:  # noqa: ANN001
    import deepvis

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)]
    opts: dict[str, Any] = {"model": "m", "render": False, "array_dtype": "float16"}
    with deepvis.Client(address, timeout=600) as client:
        client.explain(images[0], **opts)  # connected before the clock starts
        while time.time() < start:
            time.sleep(0.001)
        if per_call:
            for i in range(n // per_call):
                batch = [images[(i + j) % 4] for j in range(per_call)]
                client.explain_batch(batch, targets=list(range(per_call)), **opts)
        else:
            for i in range(n):
                client.explain(images[i % 4], target=i % 1000, **opts)
    q.put(time.time())


def served(address: str, pid: int, clients: int, requests: int, per_call: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 6.0
    per = requests // clients
    procs = [
        ctx.Process(target=client_proc, args=(address, per, per_call, i, start, q))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    (c0, l0), t0 = server_cpu(pid), time.time()
    for _ in procs:
        q.get(timeout=1800)
    (c1, l1), t1 = server_cpu(pid), time.time()
    loops = [b - a for a, b in zip(l0, l1, strict=True)]  # each worker's event loop
    for p in procs:
        p.join()
    n = per * clients if not per_call else (per // per_call) * per_call * clients
    return {
        "images": n,
        "images_per_s": round(n / (t1 - t0), 1),
        "server_cpu_ms_per_image": round((c1 - c0) * 1000 / n, 3),
        # The main thread runs the event loop: every call's gRPC and protobuf work is there.
        "server_loop_cpu_ms_per_image": round(sum(loops) * 1000 / n, 3),
        "server_loop_busy": round(max(loops) / (t1 - t0), 3),
    }


def floor_server(address: str, ready) -> None:  # noqa: ANN001
    """gRPC's own floor: an Explainer whose Explain answers a prebuilt response of the same
    size as deepvis's (a float16 3x224x224 array, five predictions) and does nothing else."""
    import grpc

    from deepvis.v1 import deepvis_pb2 as pb
    from deepvis.v1 import deepvis_pb2_grpc as pb_grpc

    resp = pb.ExplainResponse(
        model="m",
        method=pb.METHOD_GUIDED_BACKPROP,
        array=pb.Tensor(
            dtype=pb.DTYPE_FLOAT16,
            shape=[3, SIZE, SIZE],
            data=np.zeros((3, SIZE, SIZE), np.float16).tobytes(),
        ),
        predictions=[pb.Prediction(index=i, label=str(i), score=0.2) for i in range(5)],
        target=pb.Target(class_index=1),
    )

    class Floor(pb_grpc.ExplainerServicer):
        async def Explain(self, request, context):  # noqa: ANN001, ANN202, N802
            return resp

    async def serve() -> None:
        limit = 64 * 1024 * 1024
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        pb_grpc.add_ExplainerServicer_to_server(Floor(), server)
        server.add_insecure_port(address)
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


def floor(clients: int, requests: int) -> dict:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    address = f"127.0.0.1:{free_port()}"
    proc = ctx.Process(target=floor_server, args=(address, ready), daemon=True)
    proc.start()
    try:
        ready.wait(timeout=120)
        assert proc.pid is not None  # started
        return served(address, proc.pid, clients, requests, 0)
    finally:
        proc.terminate()
        proc.join()


def in_process(cfg: Path, callers: int, requests: int) -> dict:
    """The engine without gRPC: parse, preprocess, batch, compute, build the response."""
    from deepvis.v1 import deepvis_pb2 as pb
    from deepvis_server import convert
    from deepvis_server.config import load_config
    from deepvis_server.engine import Engine

    async def main() -> dict:
        engine = Engine(load_config(cfg))
        await engine.start()
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        data = pb.ExplainRequest(
            model="m",
            method=pb.METHOD_GUIDED_BACKPROP,
            input=pb.Input(
                pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[SIZE, SIZE, 3], data=img.tobytes())
            ),
            output=pb.OutputOptions(array_dtype=pb.DTYPE_FLOAT16),
        ).SerializeToString()
        loop = asyncio.get_running_loop()

        async def caller(n: int) -> None:
            for _ in range(n):
                query = convert.parse_explain(pb.ExplainRequest.FromString(data), loop.time() + 600)
                answer = await engine.explain(query)
                convert.explain_response(answer).SerializeToString()

        await asyncio.gather(*(caller(4) for _ in range(callers)))
        c0, t0 = cpu_seconds(os.getpid()), time.time()
        await asyncio.gather(*(caller(requests // callers) for _ in range(callers)))
        c1, t1 = cpu_seconds(os.getpid()), time.time()
        await engine.stop()
        n = requests // callers * callers
        return {
            "images": n,
            "images_per_s": round(n / (t1 - t0), 1),
            "cpu_ms_per_image": round((c1 - c0) * 1000 / n, 3),
        }

    return asyncio.run(main())


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=768)
    p.add_argument("--per-call", type=int, default=8, help="images per ExplainBatch call (0: none)")
    p.add_argument(
        "--workers", type=int, default=1, help="server processes (deepvis-server --workers)"
    )
    p.add_argument(
        "--gil-switch-interval-ms",
        type=float,
        default=0.5,
        help="the server's gil_switch_interval_ms (Python's own default: 5)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/overhead.json"))
    args = p.parse_args()
    here = str(Path(__file__).resolve().parent)
    import torch

    tmp = Path(tempfile.mkdtemp())
    cfg = write_config(tmp, args.clients, args.gil_switch_interval_ms)
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": f"{os.cpu_count()} cores",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "workers": args.workers,
        "gil_switch_interval_ms": args.gil_switch_interval_ms,
        "in_process": in_process(cfg, args.clients, args.requests),
    }
    print("in-process", report["in_process"], flush=True)
    server = start_server(cfg, workers=args.workers, pythonpath=[here])
    address = server.address
    try:
        runs = [("explain", 0)]
        if args.per_call:  # 0: one call per image only
            runs.append((f"explain_batch_{args.per_call}", args.per_call))
        for label, per_call in runs:
            report[label] = served(address, server.pid, args.clients, args.requests, per_call)
            print(label, report[label], flush=True)
    finally:
        server.stop(timeout=60)
    report["grpc_floor"] = floor(args.clients, args.requests)
    print("grpc floor (prebuilt answers)", report["grpc_floor"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
