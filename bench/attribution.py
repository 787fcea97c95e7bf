"""LRP and SmoothGrad(25) served against Zennit and Captum in-process, side by side.

    .venv/bin/python bench/attribution.py --arch resnet18 --size 64 --clients 8 \\
        --requests 64 --rounds 3 --out bench/results/attribution-cpu.json

One torchvision model with random weights (its batch norms given random statistics, so that
folding them is real work) is saved and served by a `deepvis-server` process; N client
processes, each with its own channel, send one Explain call per image (uint8 pixels in,
float16 arrays out, no pictures, a random class target each). In the same run, beside each
served round, the same model and inputs in this process:

- LRP (composite epsilon_plus_flat, relevance from the target logit): Zennit's `Gradient`
  attributor with `EpsilonPlusFlat` (and its ResNet block canonizer) on a copy whose batch
  norms are folded with torch.nn.utils.fusion.fuse_conv_bn_eval, at batch N;
- SmoothGrad(25) over saliency (noise 0.15 of each input's range): Captum's
  `NoiseTunnel(Saliency)` with nt_samples=25, at batch N, its 25 x N rows in passes of
  `--rows` rows (nt_samples_batch_size = rows // N), the server's pass size.

Each figure is images/s: the median over the rounds, and each ratio served / in-process the
median of the rounds' own ratios (a machine whose speed drifts is compared with itself). The
in-process figures are each a batch of N timed `--repeats` times after one warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from load import start_server  # bench/ is on the path

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SETTINGS: dict[str, dict[str, Any]] = {
    "lrp": {"method": "lrp", "composite": "epsilon_plus_flat"},
    "smoothgrad25": {"method": "saliency", "smooth": ("smoothgrad", 25, 0.15)},
}


def build_model(arch: str, seed: int = 0):  # noqa: ANN201 - torch is imported lazily
    """The torchvision model with random weights and random batch-norm statistics."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.4 * torch.rand(c, generator=g) - 0.2)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def client_proc(
    address: str, setting: str, n: int, size: int, seed: int, start: float, queue
) -> None:  # noqa: ANN001
    """One client: its own channel, n sequential Explain calls."""
    import deepvis

    kw = dict(SETTINGS[setting])
    if "smooth" in kw:
        kind, samples, noise = kw.pop("smooth")
        kw["smooth"] = deepvis.Smooth(samples=samples, noise=noise, kind=kind, seed=seed)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
    opts = {"model": "m", "render": False, "array_dtype": "float16", **kw}
    batches = []
    with deepvis.Client(address, timeout=900) as client:
        client.explain(images[0], **opts)  # connected and warm before the clock starts
        while time.time() < start:
            time.sleep(0.001)
        began = time.time()  # later than `start` if this process came up late
        for i in range(n):
            res = client.explain(images[i % 4], target=int(rng.integers(0, 1000)), **opts)
            batches.append(res.batch_size)
    queue.put((began, time.time(), batches))


def served(address: str, setting: str, clients: int, requests: int, size: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.time() + 20.0  # every client spawned, connected and warm
    per = max(1, requests // clients)
    procs = [
        ctx.Process(target=client_proc, args=(address, setting, per, size, 100 + i, start, queue))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    outs = [queue.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    late = max(b for b, _, _ in outs) - start
    wall = max(t for _, t, _ in outs) - min(b for b, _, _ in outs)
    batches = [b for _, _, bs in outs for b in bs]
    return {
        "images": len(batches),
        "seconds": wall,
        "images_per_s": len(batches) / wall,
        "mean_batch": float(np.mean(batches)),
        "last_client_late_s": late,  # > 0: not every client ran the whole time
    }


def zennit_lrp_runner(model, x, targets):  # noqa: ANN001, ANN201
    """Zennit's EpsilonPlusFlat from the target logit on a BN-folded copy (folded once)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    folded = copy.deepcopy(model).eval()
    modules = list(folded.named_modules())
    for (name, m), (next_name, n) in zip(modules, modules[1:], strict=False):
        # torchvision registers each batch norm right after the conv it follows
        if isinstance(m, torch.nn.Conv2d) and isinstance(n, torch.nn.BatchNorm2d):
            parent, _, child = name.rpartition(".")
            owner = folded.get_submodule(parent) if parent else folded
            setattr(owner, child, fuse_conv_bn_eval(m, n))
            parent, _, child = next_name.rpartition(".")
            owner = folded.get_submodule(parent) if parent else folded
            setattr(owner, child, torch.nn.Identity())
    composite = EpsilonPlusFlat(
        canonizers=[ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer()]
    )
    onehot = torch.eye(1000)[targets]

    def run() -> None:
        with Gradient(model=folded, composite=composite) as attributor:
            attributor(x, lambda out: out * onehot)

    return run


def captum_smooth_runner(model, x, targets, rows: int):  # noqa: ANN001, ANN201
    """Captum's NoiseTunnel(Saliency), 25 samples, noise 0.15 of each input's range."""
    from captum.attr import NoiseTunnel, Saliency

    flat = x.reshape(x.shape[0], -1)
    sigma = float((0.15 * (flat.max(1).values - flat.min(1).values)).mean())
    tunnel = NoiseTunnel(Saliency(model))
    per = max(1, rows // x.shape[0])

    def run() -> None:
        tunnel.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=25,
            nt_samples_batch_size=min(25, per),
            stdevs=sigma,
            target=targets,
        )

    return run


def timed(run, repeats: int, n: int) -> float:  # noqa: ANN001
    run()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    return repeats * n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64, help="per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="in-process batches per round")
    parser.add_argument("--rows", type=int, default=0, help="rows per pass (default: clients)")
    parser.add_argument("--max-delay-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads here (0: torch's)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.clients
    rows = args.rows or n
    model = build_model(args.arch)
    tmp = Path(tempfile.mkdtemp(prefix="deepvis-attr-"))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "m.safetensors")
    )
    (tmp / "m.toml").write_text(
        '[server]\ndevice = "cpu"\nmax_queue_size = 4096\n'
        f'[[models]]\nname = "m"\narch = "{args.arch}"\nweights = "m.safetensors"\n'
        f"num_classes = 1000\ninput_size = [{args.size}, {args.size}]\n"
        f"mean = {list(MEAN)}\nstd = {list(STD)}\n"
        f"max_batch_size = {rows}\nmax_delay_ms = {args.max_delay_ms}\n"
    )
    # The in-process inputs: N images preprocessed as the server does (pixels / 255, mean, std).
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, 3, args.size, args.size)).astype(np.float32) / 255.0
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    std = np.asarray(STD, np.float32)[:, None, None]
    x = torch.from_numpy((pixels - mean) / std)
    targets = [int(t) for t in rng.integers(0, 1000, n)]
    runners = {
        "lrp": ("zennit", zennit_lrp_runner(model, x, targets)),
        "smoothgrad25": ("captum", captum_smooth_runner(model, x, targets, rows)),
    }

    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": []}
    server = start_server(tmp / "m.toml")
    try:
        for r in range(args.rounds):
            round_ = {}
            for setting in args.settings:
                s = served(server.address, setting, n, args.requests, args.size)
                oracle, run = runners[setting]
                ips = timed(run, args.repeats, n)
                round_[setting] = {
                    "served": s,
                    oracle: ips,
                    "ratio": s["images_per_s"] / ips,
                }
                print(
                    f"round {r}  {setting:13s} served {s['images_per_s']:8.2f} img/s "
                    f"(mean batch {s['mean_batch']:.1f})  {oracle} {ips:8.2f} img/s  "
                    f"ratio {s['images_per_s'] / ips:.2f}",
                    flush=True,
                )
            report["rounds"].append(round_)
    finally:
        server.stop()

    summary = {}
    for setting in args.settings:
        oracle = runners[setting][0]
        rs = [rd[setting] for rd in report["rounds"]]
        summary[setting] = {
            "served_images_per_s": statistics.median(x["served"]["images_per_s"] for x in rs),
            f"{oracle}_images_per_s": statistics.median(x[oracle] for x in rs),
            "ratio": statistics.median(x["ratio"] for x in rs),
            "mean_batch": statistics.median(x["served"]["mean_batch"] for x in rs),
        }
    report["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
