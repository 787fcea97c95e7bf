"""How a busy event loop slows the device thread through the GIL, and what the interpreter's
switch interval does to it.

    .venv/bin/python bench/gil_convoy.py --out bench/results/gil-convoy.json

Every PyTorch op called from Python lets go of the GIL while it runs and takes it back after;
so does every Python hook in a backward pass (guided backprop's ReLU rule is one per ReLU). When
another thread of the process (the server's event loop, answering calls) runs Python without
pause, each of those take-backs waits until the interpreter makes that thread yield: up to
`sys.getswitchinterval()`, 5 ms by default. A batch of a few hundred ops then takes seconds.

Measured here: guided backprop (resnet18, batch 4, 64x64, one intra-op thread, so the two
threads do not also fight over cores) on a thread, first alone, then beside a thread that
runs Python in 0.5 ms slices at a given duty (1.0: without pause), for several switch
intervals. Plain autograd (no ReLU rule) beside it for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--intervals-ms", default="5,0.5,0.1", help="switch intervals to try")
    p.add_argument("--duties", default="1.0,0.5", help="busy shares of the other thread")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=HERE / "results" / "gil-convoy.json")
    args = p.parse_args()
    import torch
    import torchvision

    sys.path.insert(0, str(HERE.parent / "server"))
    from deepvis_server.methods.relu_rules import relu_rule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    x = torch.randn(4, 3, 64, 64)

    def step(rule: bool) -> None:
        xx = x.clone().requires_grad_(True)
        score = model(xx)[:, 0].sum()
        if rule:
            with relu_rule(score, "guided"):
                torch.autograd.grad(score, xx)
        else:
            torch.autograd.grad(score, xx)

    def ms_per_batch(rule: bool) -> float:
        step(rule)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            step(rule)
        return (time.perf_counter() - t0) / args.repeats * 1000

    def measure(duty: float | None) -> dict:
        stop = threading.Event()

        def busy() -> None:  # Python work in 0.5 ms slices, idle between them
            while not stop.is_set():
                t = time.perf_counter()
                while time.perf_counter() - t < 0.0005:
                    sum(range(100))
                if duty is not None and duty < 1:
                    time.sleep(0.0005 * (1 - duty) / duty)

        other = threading.Thread(target=busy) if duty is not None else None
        if other is not None:
            other.start()
        try:
            return {
                "guided_backprop_ms": round(ms_per_batch(True), 1),
                "plain_autograd_ms": round(ms_per_batch(False), 1),
            }
        finally:
            stop.set()
            if other is not None:
                other.join()

    rows = []
    for interval in [float(v) for v in args.intervals_ms.split(",")]:
        sys.setswitchinterval(interval / 1000)
        alone = measure(None)
        for duty in [float(v) for v in args.duties.split(",")]:
            row: dict[str, Any] = {
                "switch_interval_ms": interval,
                "other_thread_duty": duty,
                "alone": alone,
            }
            row["beside_busy_thread"] = measure(duty)
            row["guided_backprop_slowdown"] = round(
                row["beside_busy_thread"]["guided_backprop_ms"] / alone["guided_backprop_ms"], 2
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
