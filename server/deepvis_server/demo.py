"""`make demo`: start a server on the embedded model, explain the sample digits with the CLI, write
out/report.html, stop."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .config import DEFAULT_MODEL_DIR
from .process import ServerProcess


def cli(*args: str) -> list[str]:
    """The command line of `deepvis ARGS` in this interpreter."""
    return [sys.executable, "-m", "deepvis", *args]


def run_cli(*args: str) -> None:
    print("$ deepvis " + " ".join(args), flush=True)
    subprocess.run(cli(*args), check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepvis-demo", description=__doc__)
    p.add_argument(
        "--address", default="127.0.0.1:50077", help="HOST:PORT of the server (port 0: a free one)"
    )
    p.add_argument("--out", default="out", type=Path)
    args = p.parse_args(argv)
    samples = sorted(str(s) for s in (DEFAULT_MODEL_DIR / "samples").glob("digit_*.png"))
    # Its log (warnings and errors) goes to the terminal; HOST:0 takes a free port.
    server = ServerProcess("--log-level", "WARNING", address=args.address, log=False)
    print(server.serving_line, flush=True)
    address = server.address

    def writing(command: str, *options: str, to: str) -> list[str]:
        """A command's arguments against the server, quiet, writing under out/`to`."""
        return [command, *options, "--server", address, "--quiet", "--out", str(args.out / to)]

    try:
        run_cli("models", "--server", address)
        run_cli("layers", "digits", "--server", address)
        samples_dir = str(DEFAULT_MODEL_DIR / "samples")
        four_methods = "guided-backprop,grad-cam,integrated-gradients,saliency"
        # 1. Guided backpropagation, and the methods it is compared with, side by side on
        #    one scale per family: which pixels each decision rests on, and where.
        run_cli(
            *writing(
                "explain", samples_dir, "--method", four_methods, "--panel", "--format", "png,npy",
                to="explain",
            )
        )  # fmt: skip
        # 2. Activation visualization: the 16 strongest feature maps of conv2 and conv3, and
        #    where each layer fires.
        run_cli(
            *writing(
                "explain", samples_dir, "--method", "activations", "--layer", "conv2",
                "--layer", "conv3", "--top-k-channels", "16",
                to="activations",
            )
        )  # fmt: skip
        # 3. Neuron-level visualization: what each class logit wants to see, ten renders at
        #    once (they share one optimization batch), and one conv3 neuron with where it
        #    fires on a real digit.
        renders = [
            subprocess.Popen(
                cli(*writing("visualize", "--class", str(k), "--steps", "256", to="visualize"))
            )
            for k in range(10)
        ]
        print("$ deepvis visualize --class K --steps 256 (K = 0..9, concurrently)", flush=True)
        if any(p.wait() != 0 for p in renders):
            raise RuntimeError("a visualize command failed")
        run_cli(
            *writing(
                "visualize", "--neuron", "conv3:5:4:4", "--steps", "256", "--input", samples[5],
                to="visualize",
            )
        )  # fmt: skip
        # 4. One page with it all: every sample, four methods, their scales, the timings, and their
        # sanity checks (deletion, insertion, randomization) beside the pictures.
        run_cli(
            *writing(
                "report", samples_dir, "--method", four_methods, "--checks", to="report.html"
            )
        )  # fmt: skip
    finally:
        code = server.stop(timeout=30)
    written = sorted(args.out.rglob("*.png"))
    print(
        f"demo: wrote {len(written)} pictures to {args.out}/ and {args.out}/report.html "
        f"(server exited with {code})"
    )
    return 0 if code == 0 and written else 1


if __name__ == "__main__":
    sys.exit(main())
