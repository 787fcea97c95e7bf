"""Where the time between two batches goes: one `load.py` run of the batching targets' load
(16 closed-loop clients, float32 tensors in, default outputs, the server's defaults) against
a server that timestamps each batch's compute, each answer's drawing, each Explain call and
each item's entry into the batcher (`bench/_turnaround/sitecustomize.py`).

    .venv/bin/python bench/turnaround.py --method grad_cam --out bench/results/turnaround-grad_cam.json

Prints, as medians over the run's batches (the first and last three left out), how long a
batch computed and how long the device then waited for the next one, and when in that wait
the first and last pictures were done, the first returning client's call began and the last
item entered the batcher; and each picture's wall and CPU milliseconds.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cycles(events: list[list]) -> list[dict[str, float]]:
    """Each wait between a batch's end and the next batch's start, in ms after the end."""
    events = sorted(events)
    starts = [e[0] for e in events if e[1] == "compute_start"]
    ends = [e[0] for e in events if e[1] == "compute_end"]
    rows = []
    for k in range(min(len(starts), len(ends)) - 1):
        t, nxt = ends[k], starts[k + 1]
        inside = [e for e in events if t <= e[0] <= nxt]

        def at(kind: str, pick=max, t: float = t, inside: list = inside) -> float:
            times = [(e[0] - t) * 1000 for e in inside if e[1] == kind]
            return pick(times) if times else float("nan")

        rows.append(
            {
                "compute_ms": (t - starts[k]) * 1000,
                "wait_ms": (nxt - t) * 1000,
                "first_picture_done_ms": at("draw_end", min),
                "last_picture_done_ms": at("draw_end"),
                "first_call_ms": at("call_start", min),
                "last_submit_ms": at("submit"),
            }
        )
    return rows


def pictures(events: list[list]) -> tuple[list[float], list[float]]:
    """Each picture's wall and CPU milliseconds (per drawing thread)."""
    started: dict[str, list] = {}
    wall, cpu = [], []
    for e in sorted(events):
        if e[1] == "draw_start":
            started[e[2]] = e
        elif e[1] == "draw_end" and e[2] in started:
            s = started.pop(e[2])
            wall.append((e[0] - s[0]) * 1000)
            cpu.append((e[3] - s[3]) * 1000)
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", default="grad_cam")
    p.add_argument("--requests", type=int, default=640)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stem = os.path.join(tmp, "events")
        env = {
            **os.environ,
            "DEEPVIS_TURNAROUND": stem,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(HERE / "_turnaround"), os.environ.get("PYTHONPATH")])
            ),
        }
        load = [
            *(sys.executable, str(HERE / "load.py"), "--clients", "16", "--processes", "4"),
            *("--defaults", "--requests", str(args.requests), "--rounds", "1"),
            *("--render-steps", "0", "--inputs", "float32", "--outputs", "default"),
            *("--methods", args.method, "--out", os.path.join(tmp, "load.json")),
        ]
        subprocess.run(load, env=env, check=True, stdout=subprocess.DEVNULL)
        (path,) = glob.glob(stem + ".*.json")  # the server process's
        events = json.loads(Path(path).read_text())
        served = json.loads(Path(tmp, "load.json").read_text())["methods"][args.method]["served"]
    rows = cycles(events)[3:-3]
    wall, cpu = pictures(events)
    summary = {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}
    summary["picture_wall_ms"] = round(statistics.median(wall), 2)
    summary["picture_cpu_ms"] = round(statistics.median(cpu), 2)
    for key, value in summary.items():
        print(f"{key:24s} {value:8.1f}")
    print(f"served {served['images_per_s']} img/s, mean batch {served['mean_batch_size']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "method": args.method,
            "batches": len(rows),
            "medians": summary,
            "served": served,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv),
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
