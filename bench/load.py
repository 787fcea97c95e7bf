"""Load benchmark: a real server driven by N client processes, beside in-process baselines on
the same model and inputs (Captum at batch 1 and batch N, deepvis's engine at batch N).

    .venv/bin/python bench/load.py --arch resnet18 --size 112 --clients 16 --requests 480 \\
        --device cpu --out bench/results/load-cpu.json

Prints a table and writes JSON: requests/s, images/s, p50/p90/p99 latency, mean batch size,
and the ratios served/ceiling (Captum at batch N) and served/unbatched (Captum at batch 1),
for guided backprop, Grad-CAM and activations; and feature-visualization renders per second
with continuous batching against one at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepvis_server.process import ServerProcess

METHODS = ("guided_backprop", "grad_cam", "activations")


def free_port() -> int:
    """A free port, for servers that must be told one: workers share a fixed port, and the
    bare gRPC floor server (overhead.py) reports none back from its own process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Load:
    """What each closed-loop client of a timed run sends: n sequential images (uint8 pixels,
    or float32 model tensors with `inputs="float32"`), one Explain call each, or ExplainBatch
    calls of `per_call` images; `outputs="float16"`: float16 arrays and no pictures,
    `"default"`: what a call asks for by default (a picture and a float32 array)."""

    address: str
    method: str
    layer: str
    n: int
    size: int
    per_call: int = 0
    inputs: str = "uint8"
    outputs: str = "float16"


def client_proc(load: Load, seed: int, start: float, queue: mp.Queue, threads: int = 1) -> None:
    """One client process of `threads` closed-loop clients, each its own channel."""
    import threading

    out: list[tuple[list[float], list[int], list[float]]] = []
    workers = [
        threading.Thread(target=lambda k=k: out.append(one_client(load, seed * threads + k, start)))
        for k in range(threads)
    ]
    for w in workers:
        w.start()
    while time.time() < start:  # the clients connect first; their CPU counts from the start
        time.sleep(0.001)
    cpu0 = time.process_time()
    for w in workers:
        w.join()
    lat = [x for o in out for x in o[0]]
    batches = [x for o in out for x in o[1]]
    device_ms = [x for o in out for x in o[2]]
    queue.put((time.time(), lat, batches, device_ms, time.process_time() - cpu0))


def one_client(load: Load, seed: int, start: float) -> tuple[list[float], list[int], list[float]]:
    """One closed-loop client, its first request at `start`: its latencies, batch sizes and
    device milliseconds per item."""
    address, method, layer, n, size = load.address, load.method, load.layer, load.n, load.size
    per_call = load.per_call
    import deepvis

    rng = np.random.default_rng(seed)
    images: list[np.ndarray]
    if load.inputs == "float32":
        images = [rng.standard_normal((3, size, size), dtype=np.float32) for _ in range(4)]
    else:
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
    wire: dict[str, Any] = (
        {} if load.outputs == "default" else {"render": False, "array_dtype": "float16"}
    )
    lat, batches, device_ms = [], [], []
    with deepvis.Client(address, timeout=600) as client:
        kw: dict[str, Any] = {"layer": layer} if method != "guided_backprop" else {}
        client.explain(images[0], model="m", method=method, render=False, **kw)  # connect
        while time.time() < start:
            time.sleep(0.001)
        for i in range(n // per_call if per_call else 0):
            t0 = time.perf_counter()
            many = client.explain_batch(
                [images[(i + j) % 4] for j in range(per_call)],
                model="m",
                method=method,
                targets=[int(t) for t in rng.integers(0, 1000, per_call)]
                if method != "activations"
                else None,
                **wire,
                **kw,
            )
            lat.append(time.perf_counter() - t0)
            batches += [r.batch_size for r in many]
            device_ms += [r.compute_ms / r.batch_size for r in many]
        for i in range(0 if per_call else n):
            t0 = time.perf_counter()
            res = client.explain(
                images[i % 4],
                model="m",
                method=method,
                target=int(rng.integers(0, 1000)) if method != "activations" else None,
                **wire,
                **kw,
            )
            lat.append(time.perf_counter() - t0)
            batches.append(res.batch_size)
            device_ms.append(res.compute_ms / res.batch_size)
    return lat, batches, device_ms


def start_server(
    config: Path,
    address: str | None = None,
    workers: int = 1,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> ServerProcess:
    """`deepvis-server` on `config` as its own process (quiet logs), once it serves (models
    loaded, warmed up). Without `address`: a free port (port 0; workers share a fixed one)."""
    if address is None:
        address = f"127.0.0.1:{free_port()}" if workers > 1 else "127.0.0.1:0"
    return ServerProcess(
        *("--config", str(config), "--log-level", "WARNING", "--workers", str(workers)),
        address=address,
        pythonpath=pythonpath,
        log=False,
    )


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> tuple[float, list[float]]:
    """CPU seconds of a server: all its processes (a supervisor and its workers, or the one
    process), and each serving process's main thread (its event loop) apart."""
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: the process alone
        kids = []
    return (
        sum(cpu_seconds(p) for p in [pid, *kids]),
        [cpu_seconds(p, p) for p in kids or [pid]],
    )


def served(
    address: str,
    method: str,
    layer: str,
    clients: int,
    requests: int,
    size: int,
    per_call: int = 0,
    server_pid: int | None = None,
    processes: int = 0,
    inputs: str = "uint8",
    outputs: str = "float16",
) -> dict:
    """One timed run of `requests` images from `clients` closed-loop clients in `processes`
    processes (0: one each) of clients / processes threads; raw figures (see summary).

    With `server_pid`, also the server's CPU over the timed part: the whole process, and its
    main thread alone, which runs the event loop that every call's gRPC and protobuf work
    shares, so its busy share says how close one server process is to its own limit."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    start = time.time() + 8.0  # every process imported and connected by then
    per = requests // clients
    processes = processes or clients
    threads = clients // processes
    load = Load(address, method, layer, per, size, per_call, inputs, outputs)
    procs = [
        ctx.Process(target=client_proc, args=(load, i, start, queue, threads))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    cpu0 = server_cpu(server_pid) if server_pid else None
    outs = [queue.get(timeout=1800) for _ in procs]
    cpu1 = server_cpu(server_pid) if server_pid else None
    for p in procs:
        p.join()
    return {
        "per_call": per_call,
        "images": (per // per_call * per_call if per_call else per) * clients,
        "seconds": max(o[0] for o in outs) - start,
        "latency_ms": np.concatenate([o[1] for o in outs]) * 1000,
        "batches": np.concatenate([o[2] for o in outs]),
        # Each item's share of its batch's compute: summed, the device's busy time.
        "device_s": sum(sum(o[3]) for o in outs) / 1000,
        "server_cpu_s": (cpu1[0] - cpu0[0], [b - a for a, b in zip(cpu0[1], cpu1[1], strict=True)])
        if cpu0 and cpu1
        else None,
        "client_cpu_s": sum(o[4] for o in outs),
    }


def summary(runs: list[dict]) -> dict:
    """Served figures pooled over timed runs (rounds) of the same method."""
    n = sum(r["images"] for r in runs)
    wall = sum(r["seconds"] for r in runs)
    per_call = runs[0]["per_call"]
    lat = np.concatenate([r["latency_ms"] for r in runs])
    out = {
        "images_per_call": per_call or 1,
        "images": int(n),
        "requests": int(n // (per_call or 1)),
        "seconds": round(wall, 3),
        "requests_per_s": round(n / (per_call or 1) / wall, 2),
        "images_per_s": round(n / wall, 2),
        "latency_ms": {
            q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p90", "p99")
        },
        # Over requests: a request answered in a batch of 16 counts once, as does one alone.
        "mean_batch_size": round(float(np.concatenate([r["batches"] for r in runs]).mean()), 2),
        # Requests answered in batches of each size.
        "requests_by_batch_size": {
            int(b): int(c)
            for b, c in zip(
                *np.unique(np.concatenate([r["batches"] for r in runs]), return_counts=True),
                strict=True,
            )
        },
        # The share of the wall time the device thread spent computing batches: near 1, the
        # device limits; well below, batches wait on the serving path or the clients.
        "device_busy": round(sum(r["device_s"] for r in runs) / wall, 3),
    }
    if all(r["server_cpu_s"] for r in runs):
        proc = sum(r["server_cpu_s"][0] for r in runs)
        loops = np.sum([r["server_cpu_s"][1] for r in runs], axis=0)  # per worker
        out["server_cpu_ms_per_image"] = round(proc * 1000 / n, 3)
        out["server_loop_thread_cpu_ms_per_image"] = round(float(loops.sum()) * 1000 / n, 3)
        # The busiest event loop's share of the wall time: near 1, it is the limit.
        out["server_loop_thread_busy"] = round(float(loops.max()) / wall, 3)
        clients = sum(r["client_cpu_s"] for r in runs)
        out["client_cpu_ms_per_image"] = round(clients * 1000 / n, 3)
        # The share of the machine's cores the server and its clients kept busy: near 1 where
        # they share the machine, its CPUs are the limit, whatever the batching does.
        out["machine_cpu_busy"] = round((proc + clients) / (wall * (os.cpu_count() or 1)), 3)
    if len(runs) > 1:
        out["rounds_images_per_s"] = [round(r["images"] / r["seconds"], 2) for r in runs]
    return out


def timeit(fn, n_items: int, min_seconds: float = 3.0) -> float:
    """Items per second of fn (which processes n_items), after one warm-up call."""
    import torch

    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        sync()
        if time.perf_counter() - t0 >= min_seconds:
            break
    return reps * n_items / (time.perf_counter() - t0)


def fast_mode(method, served_model, xn, reqs, n: int) -> dict:
    """The engine in fast mode (channels_last + bf16 autocast): speed and error against fp32."""
    import copy

    import torch

    exact = method.run(served_model, xn, reqs).arrays.float()
    fast_model = copy.copy(served_model)
    fast_model.module = copy.deepcopy(served_model.module).to(memory_format=torch.channels_last)
    fast_model.layers = dict(fast_model.module.named_modules())
    x = xn.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.autocast(xn.device.type, dtype=torch.bfloat16):
            return method.run(fast_model, x, reqs).arrays.float()

    approx = run()
    a, b = approx.flatten().cpu().double(), exact.flatten().cpu().double()
    return {
        f"engine_fast_batch{n}_images_per_s": round(timeit(run, n), 2),
        "fast_max_abs_error_over_max": round(float((a - b).abs().max() / b.abs().max()), 4),
        "fast_mean_abs_error_over_max": round(float((a - b).abs().mean() / b.abs().max()), 5),
        "fast_correlation": round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 4),
    }


def baselines(
    module, layer: str, size: int, n: int, device: str, served_model, fast: bool, methods
) -> dict:
    import warnings

    import torch
    from captum.attr import GuidedBackprop, LayerActivation, LayerGradCam

    warnings.filterwarnings("ignore", module="captum")

    from deepvis_server.methods import REGISTRY, ClassTarget, MethodRequest

    dev = torch.device(device)
    module = module.to(dev).eval()
    layer_mod = dict(module.named_modules())[layer]
    x1 = torch.randn(1, 3, size, size, device=dev)
    xn = torch.randn(n, 3, size, size, device=dev)
    tn = list(range(n))
    captum = {
        "guided_backprop": lambda x, t: GuidedBackprop(module).attribute(x, target=t),
        "grad_cam": lambda x, t: LayerGradCam(module, layer_mod).attribute(
            x, target=t, relu_attributions=True
        ),
        "activations": lambda x, t: LayerActivation(module, layer_mod).attribute(x),
    }
    out = {}
    for method in methods:
        m = REGISTRY[method]
        reqs = [
            MethodRequest(
                target=ClassTarget(i) if method != "activations" else None,
                layers=(layer,) if method != "guided_backprop" else (),
            )
            for i in range(n)
        ]
        reqs = [m.prepare(served_model, r) for r in reqs]
        attr = captum[method]
        t1 = None if method == "activations" else 0
        tn_ = None if method == "activations" else tn
        out[method] = {
            "captum_batch1_images_per_s": round(
                timeit(lambda a=attr, t=t1: a(x1.clone(), t), 1), 2
            ),
            f"captum_batch{n}_images_per_s": round(
                timeit(lambda a=attr, t=tn_: a(xn.clone(), t), n), 2
            ),
            f"engine_batch{n}_images_per_s": round(
                timeit(lambda m=m, r=reqs: m.run(served_model, xn, r), n), 2
            ),
        }
        if fast:
            out[method].update(fast_mode(m, served_model, xn, reqs, n))
    return out


def renders(address: str, jobs: int, steps: int) -> dict:
    import threading

    import deepvis

    def one(k: int, out: list) -> None:
        with deepvis.Client(address, timeout=3600) as c:
            out.append(c.visualize(k, model="m", steps=steps, seed=k))

    res: list = []
    t0 = time.perf_counter()
    one(0, res)
    alone = time.perf_counter() - t0
    res.clear()
    threads = [threading.Thread(target=one, args=(k, res)) for k in range(jobs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = time.perf_counter() - t0
    return {
        "jobs": jobs,
        "steps": steps,
        "one_render_s": round(alone, 2),
        f"{jobs}_concurrent_s": round(together, 2),
        "concurrent_over_one": round(together / alone, 2),
        "renders_per_s_concurrent": round(jobs / together, 3),
        "renders_per_s_one_at_a_time": round(1 / alone, 3),
        "max_batch_jobs": max(r.max_batch_jobs for r in res),
    }


def combine(runs: list[dict], bases: list[dict], n: int) -> dict:
    """One method's report: served figures pooled over the rounds, each baseline figure the
    median over the rounds, and each ratio the median of the rounds' own ratios (a round's
    served images/s over the baselines measured right after it)."""
    r: dict = {"served": summary(runs)}
    for key in bases[0]:
        vals = [b[key] for b in bases]
        r[key] = round(float(np.median(vals)), 4 if "error" in key or "corr" in key else 2)
    b1, bn, en = (
        "captum_batch1_images_per_s",
        f"captum_batch{n}_images_per_s",
        f"engine_batch{n}_images_per_s",
    )
    rounds = [
        {
            "served_images_per_s": round(run["images"] / run["seconds"], 2),
            b1: b[b1],
            bn: b[bn],
            "served_over_unbatched": round(run["images"] / run["seconds"] / b[b1], 2),
            "served_over_ceiling": round(run["images"] / run["seconds"] / b[bn], 2),
            "served_over_engine": round(run["images"] / run["seconds"] / b[en], 2),
        }
        for run, b in zip(runs, bases, strict=True)
    ]
    for key in ("served_over_unbatched", "served_over_ceiling", "served_over_engine"):
        r[key] = round(float(np.median([x[key] for x in rounds])), 2)
    r[f"engine_over_captum_batch{n}"] = round(float(np.median([b[en] / b[bn] for b in bases])), 2)
    if len(rounds) > 1:
        r["rounds"] = rounds
    return r


def against_torchserve(ts_rounds: list[dict], gb_runs: list[dict]) -> dict:
    """TorchServe's figures per round, and served guided backprop over TorchServe: the median
    of the rounds' ratios (each round's two runs minutes apart)."""
    out: dict[str, Any] = {
        "images_per_s": round(
            float(np.median([t["served"]["images_per_s"] for t in ts_rounds])), 2
        ),
        "rounds": [
            {k: t[k] for k in ("served", "mean_batch_size_per_batch", "other_cpu_share", "check")}
            for t in ts_rounds
        ],
        "config": ts_rounds[0]["torchserve_config"],
        "versions": ts_rounds[0]["versions"],
    }
    if gb_runs:
        out["served_guided_backprop_over_torchserve"] = round(
            float(
                np.median(
                    [
                        g["images"] / g["seconds"] / t["served"]["images_per_s"]
                        for g, t in zip(gb_runs, ts_rounds, strict=True)
                    ]
                )
            ),
            2,
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="client processes, each running clients / processes threads (default: --clients)",
    )
    p.add_argument(
        "--inputs",
        choices=("uint8", "float32"),
        default="uint8",
        help="what clients send: uint8 pixels, or float32 tensors already preprocessed",
    )
    p.add_argument(
        "--outputs",
        choices=("float16", "default"),
        default="float16",
        help="what clients ask for: float16 arrays and no pictures, or a call's defaults "
        "(a picture and a float32 array)",
    )
    p.add_argument(
        "--defaults",
        action="store_true",
        help="serve at the server's default settings: max_batch_size and "
        "gil_switch_interval_ms left out of the config, and max_delay_ms unless given "
        "(baselines at batch --clients)",
    )
    p.add_argument("--requests", type=int, default=480)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-batch", type=int, default=0, help="server max_batch_size (default: --clients)"
    )
    p.add_argument(
        "--render-jobs", type=int, default=0, help="concurrent renders (default: --clients)"
    )
    p.add_argument("--render-steps", type=int, default=512)
    p.add_argument("--fast", action="store_true", help="serve in fast mode; report its error")
    p.add_argument(
        "--memory-format",
        choices=("contiguous", "channels_last"),
        default=None,
        help="the model's memory_format (default: unset, the server's contiguous); the "
        "engine's in-process baseline is loaded the same way, Captum's is the stock module",
    )
    p.add_argument(
        "--render-fp32",
        action="store_true",
        help="renders in plain fp32 (render_tf32 = false; the server's default uses TF32 on CUDA)",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="server cpu_threads, the pool that decodes inputs and draws pictures (default: "
        "unset, the server's min(8, CPU count))",
    )
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=None,
        help="server max_delay_ms (default: unset, the adaptive batching policy)",
    )
    p.add_argument(
        "--paired-delay-ms",
        type=float,
        default=None,
        help="also serve the model from a second server with this max_delay_ms, and in each "
        "round run every method's load on it right after the first server's: the two "
        "servers' latencies compared within one run",
    )
    p.add_argument(
        "--gil-switch-interval-ms",
        type=float,
        default=0.5,
        help="the server's gil_switch_interval_ms (Python's own default: 5)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the address (deepvis-server --workers)",
    )
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--per-call",
        type=int,
        default=0,
        help="images per ExplainBatch call (0: one Explain call per image); latency is per call",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split the requests into R rounds, each followed by its own baselines; "
        "ratios are the median of the rounds' ratios",
    )
    p.add_argument(
        "--torchserve",
        action="store_true",
        help="in each round, also time TorchServe 0.12's explanations endpoint (Captum's "
        "guided backprop, batch --clients, 5 ms; bench/torchserve.py) on the same load",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = p.parse_args()
    import torch
    import torchvision
    from safetensors.torch import save_file

    from deepvis_server.config import parse_config
    from deepvis_server.models import load_model

    torch.manual_seed(0)
    module = torchvision.models.get_model(args.arch, weights=None, num_classes=1000).eval()
    tmp = Path(tempfile.mkdtemp())
    save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / "m.safetensors")
    )
    if args.defaults and args.max_batch:
        p.error("--defaults leaves max_batch_size to the server")
    n = args.max_batch or args.clients  # the baselines' batch size
    tuned = "" if args.defaults else f"max_batch_size = {n}\n"
    switch = "" if args.defaults else f"gil_switch_interval_ms = {args.gil_switch_interval_ms}\n"
    threads = "" if args.cpu_threads is None else f"cpu_threads = {args.cpu_threads}\n"
    layout = "" if args.memory_format is None else f'memory_format = "{args.memory_format}"\n'

    def write_config(name: str, max_delay_ms: float | None) -> Path:
        delay = "" if max_delay_ms is None else f"max_delay_ms = {max_delay_ms}\n"
        (tmp / name).write_text(
            f'[server]\ndevice = "{args.device}"\nmax_queue_size = 4096\n{threads}'
            f"render_tf32 = {str(not args.render_fp32).lower()}\n{switch}"
            f'[[models]]\nname = "m"\narch = "{args.arch}"\n'
            f'weights = "m.safetensors"\nnum_classes = 1000\ninput_size = [{args.size}, {args.size}]\n'
            f"mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n{tuned}{delay}"
            f"fast = {str(args.fast).lower()}\n{layout}"
        )
        return tmp / name

    write_config("m.toml", args.max_delay_ms)
    spec = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "arch": args.arch,
                    "weights": str(tmp / "m.safetensors"),
                    "num_classes": 1000,
                    "input_size": [args.size, args.size],
                    **({"memory_format": args.memory_format} if args.memory_format else {}),
                }
            ]
        },
        tmp,
    ).models[0]
    served_model = load_model(spec, torch.device(args.device))
    layer = served_model.default_cam_layer
    server = start_server(tmp / "m.toml", workers=args.workers)
    address = server.address
    paired = None  # started in the try below, so that a failed start stops the first one
    report: dict = {
        "arch": args.arch,
        "size": args.size,
        "clients": args.clients,
        "requests": args.requests,
        "processes": args.processes or args.clients,
        "inputs": args.inputs,
        "outputs": args.outputs,
        "server_defaults": args.defaults,
        "workers": args.workers,
        "cpu_threads": args.cpu_threads,
        "memory_format": args.memory_format or "contiguous",
        "gil_switch_interval_ms": args.gil_switch_interval_ms,
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "layer": layer,
        "methods": {},
    }
    methods = list(filter(None, args.methods.split(",")))  # "": renders only
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    paired_runs: dict[str, list[dict]] = {m: [] for m in methods}
    base_rounds: list[dict] = []
    ts_rounds: list[dict] = []
    try:
        if args.paired_delay_ms is not None:
            # The paired server idles while the first one serves, and the other way round.
            paired = start_server(
                write_config("paired.toml", args.paired_delay_ms), workers=args.workers
            )
        for r in range(args.rounds):
            for method in methods:
                for on, into in ((server, runs), (paired, paired_runs)):
                    if on is None:
                        continue
                    run = served(
                        on.address,
                        method,
                        layer,
                        args.clients,
                        args.requests // args.rounds,
                        args.size,
                        args.per_call,
                        on.pid,
                        args.processes,
                        args.inputs,
                        args.outputs,
                    )
                    into[method].append(run)
                    which = "" if on is server else f" (max_delay_ms {args.paired_delay_ms:g})"
                    print(
                        f"round {r + 1}/{args.rounds}", method + which, summary([run]), flush=True
                    )
            if args.torchserve:
                from torchserve import torchserve_run  # torch and all: not in client processes

                ts_rounds.append(
                    torchserve_run(
                        args.arch,
                        args.size,
                        args.processes or args.clients,
                        args.clients // (args.processes or args.clients),
                        args.requests // args.rounds,
                        batch_size=n,
                        max_delay_ms=5,
                    )
                )
                print(
                    f"round {r + 1}/{args.rounds} torchserve", ts_rounds[-1]["served"], flush=True
                )
            if methods:
                # The baselines of this round, measured now, beside its served runs (the
                # server idles meanwhile): on a shared machine whose speed drifts, each
                # served figure is compared with baselines taken minutes, not runs, apart.
                base_rounds.append(
                    baselines(
                        module, layer, args.size, n, args.device, served_model, args.fast, methods
                    )
                )
                print(f"round {r + 1}/{args.rounds} baselines", base_rounds[-1], flush=True)
        if args.render_steps:
            report["feature_visualization"] = renders(
                address, args.render_jobs or args.clients, args.render_steps
            )
            print(report["feature_visualization"], flush=True)
    finally:
        server.stop(timeout=60)
        if paired is not None:
            paired.stop(timeout=60)
    for method in methods:
        report["methods"][method] = combine(runs[method], [b[method] for b in base_rounds], n)
        if paired_runs[method]:
            report["methods"][method]["paired"] = {
                "max_delay_ms": args.paired_delay_ms,
                "served": summary(paired_runs[method]),
            }
    if ts_rounds:
        report["torchserve"] = against_torchserve(ts_rounds, runs.get("guided_backprop", []))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(
        f"\n{'method':16} {'served img/s':>12} {'captum b1':>10} {'captum bN':>10} {'engine bN':>10} {'/unbatched':>10} {'/ceiling':>9} {'batch':>6} {'p50 ms':>7} {'p99 ms':>7} {'device busy':>11} {'loop busy':>9} {'cpu busy':>8}"
    )
    for method, r in report["methods"].items():
        s = r["served"]
        print(
            f"{method:16} {s['images_per_s']:12.1f} {r['captum_batch1_images_per_s']:10.1f} {r[f'captum_batch{n}_images_per_s']:10.1f} "
            f"{r[f'engine_batch{n}_images_per_s']:10.1f} {r['served_over_unbatched']:10.2f} {r['served_over_ceiling']:9.2f} "
            f"{s['mean_batch_size']:6.1f} {s['latency_ms']['p50']:7.1f} {s['latency_ms']['p99']:7.1f} {s['device_busy']:11.2f} {s.get('server_loop_thread_busy', 0):9.2f} {s.get('machine_cpu_busy', 0):8.2f}"
        )
        for i, x in enumerate(r.get("rounds", []), 1):
            print(
                f"  round {i}: served {x['served_images_per_s']:.1f}, /unbatched {x['served_over_unbatched']:.2f}, /ceiling {x['served_over_ceiling']:.2f}"
            )
        if "paired" in r:
            q = r["paired"]["served"]
            print(
                f"  max_delay_ms {r['paired']['max_delay_ms']:g}: served {q['images_per_s']:.1f}, "
                f"batch {q['mean_batch_size']:.1f}, p50 {q['latency_ms']['p50']:.1f} ms, "
                f"p99 {q['latency_ms']['p99']:.1f} ms"
            )
    if "torchserve" in report:
        t = report["torchserve"]
        print(
            f"torchserve {t['images_per_s']:.1f} images/s; served guided backprop / torchserve "
            f"{t.get('served_guided_backprop_over_torchserve', float('nan')):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
