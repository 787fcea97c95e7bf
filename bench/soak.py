"""Soak: 16 client processes send a mix of valid and invalid requests to a real server for a
fixed time; every valid answer is checked against its expected result and every invalid one
against its documented status, while the server's memory is sampled.

    .venv/bin/python bench/soak.py [--seconds 60] [--clients 16] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepvis_server.process import ServerProcess

SAMPLES = sorted(
    (Path(__file__).resolve().parents[1] / "server/deepvis_server/default_model/samples").glob(
        "*.png"
    )
)


def valid_requests() -> list[dict]:
    """Requests with a known right answer (computed alone, before the load starts)."""
    out = []
    for i, path in enumerate(SAMPLES):
        out.append({"input": str(path), "method": "guided_backprop", "target": (i * 7) % 10})
        out.append({"input": str(path), "method": "grad_cam", "target": i})
        out.append(
            {"input": str(path), "method": "activations", "layer": "conv3", "top_k_channels": 8}
        )
    return out


def invalid_requests() -> list[tuple[dict, str]]:
    nan = np.zeros((1, 32, 32), np.float32)
    nan[0, 1, 1] = np.nan
    return [
        ({"input": b"not an image", "method": "guided_backprop"}, "InvalidArgument"),
        ({"input": str(SAMPLES[0]), "method": "guided_backprop", "target": 99}, "InvalidArgument"),
        ({"input": str(SAMPLES[0]), "method": "guided_backprop", "model": "nope"}, "NotFound"),
        ({"input": nan, "method": "guided_backprop"}, "InvalidArgument"),
        ({"input": str(SAMPLES[1]), "method": "grad_cam", "layer": "fc"}, "InvalidArgument"),
        (
            {"input": np.zeros((5000, 5000), np.uint8), "method": "guided_backprop"},
            "InvalidArgument",
        ),
    ]


def call(client, spec: dict):
    kw = dict(spec)
    inp = kw.pop("input")
    kw.setdefault("model", "digits")
    return client.explain(inp, render=False, **kw)


def worker(address: str, seconds: float, seed: int, expected: list, queue: mp.Queue) -> None:
    import deepvis

    rng = random.Random(seed)
    valid, invalid = valid_requests(), invalid_requests()
    stats: dict[str, Any] = {
        "valid_ok": 0,
        "valid_wrong": 0,
        "valid_error": 0,
        "invalid_ok": 0,
        "invalid_wrong": 0,
        "errors": {},
        "latencies_ms": [],
    }
    end = time.monotonic() + seconds
    with deepvis.Client(address, timeout=30) as client:
        while time.monotonic() < end:
            if rng.random() < 0.75:
                i = rng.randrange(len(valid))
                t0 = time.perf_counter()
                try:
                    res = call(client, valid[i])
                except deepvis.DeepvisError as e:
                    stats["valid_error"] += 1
                    key = f"{type(e).__name__}: {e.details[:80]}"
                    stats["errors"][key] = stats["errors"].get(key, 0) + 1
                    continue
                stats["latencies_ms"].append((time.perf_counter() - t0) * 1000)
                ref = expected[i]
                ok = res.array.shape == ref.shape and np.abs(res.array - ref).max() <= 1e-5 * max(
                    np.abs(ref).max(), 1e-12
                )
                stats["valid_ok" if ok else "valid_wrong"] += 1
            else:
                spec, code = invalid[rng.randrange(len(invalid))]
                try:
                    call(client, spec)
                    stats["invalid_wrong"] += 1
                except deepvis.DeepvisError as e:
                    stats["invalid_ok" if type(e).__name__ == code else "invalid_wrong"] += 1
    queue.put(stats)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--port", type=int, default=0, help="the server's port (0: a free one)")
    p.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = p.parse_args()
    server = ServerProcess("--log-level", "ERROR", address=f"127.0.0.1:{args.port}", log=False)
    address = server.address
    try:
        import deepvis

        with deepvis.Client(address, timeout=60) as client:
            expected = [call(client, spec).array for spec in valid_requests()]
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()
        procs = [
            ctx.Process(target=worker, args=(address, args.seconds, i, expected, queue))
            for i in range(args.clients)
        ]
        t0 = time.monotonic()
        for pr in procs:
            pr.start()
        samples: list[tuple[float, float]] = []
        while any(pr.is_alive() for pr in procs) and len(samples) < args.seconds * 2 + 60:
            samples.append((round(time.monotonic() - t0, 1), round(rss_mb(server.pid), 1)))
            time.sleep(1.0)
        results = [queue.get(timeout=60) for _ in procs]
        for pr in procs:
            pr.join()
        elapsed = time.monotonic() - t0
        total = {
            k: sum(r[k] for r in results)
            for k in ("valid_ok", "valid_wrong", "valid_error", "invalid_ok", "invalid_wrong")
        }
        errors: dict[str, int] = {}
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        lat = (
            np.concatenate([np.asarray(r["latencies_ms"]) for r in results])
            if total["valid_ok"]
            else np.zeros(1)
        )
        warm_samples = [(t, m) for t, m in samples if t >= min(10.0, args.seconds / 3)]
        warm = [m for _, m in warm_samples]
        third = max(1, len(warm) // 3)
        slope = (
            float(np.polyfit([t for t, _ in warm_samples], warm, 1)[0]) * 60
            if len(warm) > 2
            else 0.0
        )
        report = {
            "seconds": round(elapsed, 1),
            "clients": args.clients,
            **total,
            "valid_errors": errors,
            "requests_per_s": round(sum(total.values()) / elapsed, 1),
            "valid_latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 1),
                "p99": round(float(np.percentile(lat, 99)), 1),
            },
            "server_rss_mb": {
                "first": samples[0][1],
                "after_warmup": warm[0] if warm else None,
                "last": samples[-1][1],
                "max": max(m for _, m in samples),
                "mean_first_third": round(float(np.mean(warm[:third])), 1) if warm else None,
                "mean_last_third": round(float(np.mean(warm[-third:])), 1) if warm else None,
                "trend_mb_per_min": round(slope, 1),
            },
            "rss_samples": samples,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=1))
        ok = total["valid_wrong"] == 0 and total["valid_error"] == 0 and total["invalid_wrong"] == 0
        return 0 if ok else 1
    finally:
        server.stop(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
