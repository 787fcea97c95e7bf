"""The batching targets over the consecutive runs of bench/batching.sh: one line per run, each
target met or not, and (with --history) the figures as rows of bench/history.csv.

    .venv/bin/python bench/batching_report.py                 # reads bench/results/batching-*
    .venv/bin/python bench/batching_report.py --history bench/history.csv --code abc1234 \\
        --machine "2-core CPU VM, no GPU"

Targets, at the default settings, on the load batching.sh drives (ratios within one run, the
median of its rounds'):
mean batch >= 14 of 16; served guided backprop >= 1.5x Captum at batch 1, >= 0.85x Captum at
batch 16 and >= 1.3x TorchServe's explanations endpoint; Grad-CAM and activations >= 0.85x
their in-process batch-16 rate (deepvis's engine, and Captum's beside it); p99 latency no
worse than with max_delay_ms = 30 (guided backprop, the run's paired server).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

TARGETS = {
    "mean batch": 14.0,
    "/captum b1": 1.5,
    "/captum b16": 0.85,
    "/torchserve": 1.3,
    "grad_cam /in-process b16": 0.85,
    "activations /in-process b16": 0.85,
}


def figures(defaults: dict[str, Any], arrays: dict[str, Any] | None) -> dict[str, float]:
    """One run's figures, named as TARGETS names them (and the p99s apart); `arrays`: the
    Grad-CAM and activations run without pictures, reported beside the targets. Grad-CAM's
    and activations' ratios to the engine in-process are the median of the rounds' own."""
    gb = defaults["methods"]["guided_backprop"]
    out = {
        "mean batch": gb["served"]["mean_batch_size"],
        "/captum b1": gb["served_over_unbatched"],
        "/captum b16": gb["served_over_ceiling"],
        "/torchserve": defaults["torchserve"]["served_guided_backprop_over_torchserve"],
        "served img/s": gb["served"]["images_per_s"],
        "torchserve img/s": defaults["torchserve"]["images_per_s"],
        "p99 ms": gb["served"]["latency_ms"]["p99"],
        "p99 ms, max_delay_ms 30": gb["paired"]["served"]["latency_ms"]["p99"],
        # How much of the machine's cores the server and clients kept busy: the CPUs' limit.
        "machine cpu busy": gb["served"]["machine_cpu_busy"],
    }
    for method in ("grad_cam", "activations"):
        m = defaults["methods"][method]
        out[f"{method} /in-process b16"] = m["served_over_engine"]
        out[f"{method} /captum b16"] = m["served_over_ceiling"]
        out[f"{method} mean batch"] = m["served"]["mean_batch_size"]
        out[f"{method} machine cpu busy"] = m["served"]["machine_cpu_busy"]
        if arrays is not None:
            a = arrays["methods"][method]
            out[f"{method} arrays only /in-process b16"] = a["served_over_engine"]
    return out


def met(f: dict[str, float]) -> dict[str, bool]:
    ok = {name: f[name] >= bound for name, bound in TARGETS.items()}
    ok["p99 <= max_delay_ms 30"] = f["p99 ms"] <= f["p99 ms, max_delay_ms 30"]
    return ok


def history_rows(run: int, defaults: dict, f: dict[str, float], code: str, machine: str) -> list:
    """The run's figures as history.csv rows (its header names the columns)."""
    command = "bench/batching.sh; " + defaults["command"]
    rows = []
    for name, value in f.items():
        method = next(
            (m for m in ("grad_cam", "activations") if name.startswith(m)), "guided_backprop"
        )
        metric = name.removeprefix(method).strip()
        unit = (
            "ms"
            if metric.startswith("p99")
            else "images/s"
            if "img/s" in metric
            else "items"
            if metric.endswith("batch")
            else "share"
            if metric.endswith("busy")
            else "x"
        )
        rows.append(
            [
                *(defaults["date"], "batching", "CPU (2 cores)", machine, command, code, code),
                f"{defaults['arch']} {defaults['size']}x{defaults['size']}",
                defaults["clients"],
                method,
                "server defaults; 4 processes x 4 threads; float32 in; default outputs",
                run,
                metric,
                "pooled over the run",
                value,
                unit,
                "",
            ]
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--history", type=Path, help="append the figures to this history.csv")
    p.add_argument("--code", default="", help="the commit the runs measured")
    p.add_argument("--machine", default="2-core CPU VM, no GPU")
    args = p.parse_args()
    runs = sorted(
        int(m.group(1))
        for path in args.results.glob("batching-*-defaults.json")
        if (m := re.fullmatch(r"batching-(\d+)-defaults\.json", path.name))
    )
    if not runs:
        print(f"no batching-*-defaults.json in {args.results}", file=sys.stderr)
        return 1
    rows, passed = [], 0
    for run in runs:
        defaults = json.loads((args.results / f"batching-{run}-defaults.json").read_text())
        arrays_path = args.results / f"batching-{run}-arrays.json"
        arrays = json.loads(arrays_path.read_text()) if arrays_path.exists() else None
        f = figures(defaults, arrays)
        ok = met(f)
        passed += all(ok.values())
        print(f"run {run}: " + ", ".join(f"{k} {v}" for k, v in f.items()))
        print("        " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in ok.items()))
        rows += history_rows(run, defaults, f, args.code, args.machine)
    print(f"{passed} of {len(runs)} runs met every target")
    if args.history:
        with args.history.open("a", newline="") as out:
            csv.writer(out).writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
