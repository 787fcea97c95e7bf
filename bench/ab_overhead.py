"""A/B of the serving path's CPU per call between two checkouts, runs alternated.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/ab_overhead.py /tmp/before . --rounds 3 --requests 3200

On a shared machine whose speed drifts over minutes, two figures taken ten minutes apart
say little about a change worth 10 %. This runs `bench/overhead.py`'s served measurement
(a near-free model at 224x224, N client processes, one Explain call per image, uint8 pixels
in, float16 out) against a server started from each checkout's `server/` in turn, round
after round, and reports each checkout's median over the rounds: images/s, the server's
CPU ms per call and its event loop's CPU ms per call. Only `server/` comes from the
checkouts; the clients, the model and this script are the current ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from load import start_server
from overhead import served, write_config

HERE = Path(__file__).resolve().parent


def run(tree: Path, cfg: Path, clients: int, requests: int, per_call: int) -> dict:
    """One served run against a server whose code comes from `tree`/server."""
    # Ahead of the installed (editable) package: this checkout's deepvis_server is imported.
    server = start_server(cfg, pythonpath=[tree / "server", HERE])
    try:
        return served(server.address, server.pid, clients, requests, per_call)
    finally:
        server.stop(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("a", type=Path, help="a checkout (its server/ is served)")
    p.add_argument("b", type=Path, help="another checkout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=3200)
    p.add_argument("--per-call", type=int, default=0, help="ExplainBatch items a call (0: Explain)")
    p.add_argument("--out", type=Path, default=Path("bench/results/ab-overhead.json"))
    args = p.parse_args()
    trees = [args.a.resolve(), args.b.resolve()]
    for tree in trees:
        if not (tree / "server" / "deepvis_server").is_dir():
            p.error(f"{tree} has no server/deepvis_server")
    cfg = write_config(Path(tempfile.mkdtemp()), args.clients)
    runs: dict[str, list[dict]] = {str(t): [] for t in trees}
    for r in range(args.rounds):
        for tree in trees:
            res = run(tree, cfg, args.clients, args.requests, args.per_call)
            runs[str(tree)].append(res)
            print(
                f"round {r + 1} {tree}: {res['images_per_s']} img/s, server "
                f"{res['server_cpu_ms_per_image']} ms/call, loop "
                f"{res['server_loop_cpu_ms_per_image']} ms/call",
                flush=True,
            )
    keys = ("images_per_s", "server_cpu_ms_per_image", "server_loop_cpu_ms_per_image")
    medians = {
        tree: {k: statistics.median(x[k] for x in rs) for k in keys} for tree, rs in runs.items()
    }
    for tree, m in medians.items():
        print("median", tree, m, flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": f"{os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "runs": runs,
        "medians": medians,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
