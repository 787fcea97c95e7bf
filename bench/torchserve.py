"""TorchServe baseline for the load benchmark (load.py): TorchServe 0.12 from PyPI serving
Captum's guided backprop on the same model and load as deepvis's served guided backprop.

    .venv/bin/python bench/torchserve.py --requests 480 --out bench/results/torchserve.json

What it measures: explained images per second and per-request latency of TorchServe's
explanations endpoint (`POST /explanations/{model}`) under closed-loop load. The model is a
torchvision model with random weights (torch.manual_seed(seed), as load.py builds it), archived
with torch-model-archiver beside a custom handler (torchserve_handler.py, a BaseHandler
subclass) that runs `captum.attr.GuidedBackprop(model).attribute(batch, target=[each
request's own target])` on every batch TorchServe forms. One worker, TorchServe's dynamic
batching at batch_size 16 and max_batch_delay 5 ms, the worker's torch threads left at torch's
default (deepvis's server sets none either). The load: P client processes x T threads, each
thread its own keep-alive HTTP connection sending one float32 image per request, sequentially
(JSON: the target and the image as base64 float32; answers the attribution as base64 float32),
after a warm-up request per thread and a common start time. Before the timed run, one answer is
checked against Captum in-process on the same weights (≤ 1e-4 of the largest magnitude);
every timed answer is checked for its shape and finiteness.

Setup (idempotent): a venv at bench/.torchserve/venv with torchserve==0.12.0 and
torch-model-archiver==0.12.0 from PyPI; a .pth file there adds this interpreter's site-packages
(torch, torchvision, captum, numpy: the versions deepvis is measured with), so nothing heavy is
installed twice. TorchServe runs from a temporary directory (model store, logs, its pid file
and sockets) that is removed afterwards, with its frontend and workers stopped.

Prints and writes JSON: the served figures in load.py's summary() form (images/s, p50/p90/p99
latency, mean batch size, device_busy: the handler's Captum time over the wall time), the mean
size of the batches TorchServe formed, the server's CPU per image, the check's error and the
time setup took. `torchserve_run()` is the same run for load.py to call.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
VENV = HERE / ".torchserve" / "venv"
HANDLER = HERE / "torchserve_handler.py"
PINS = {"torchserve": "0.12.0", "torch-model-archiver": "0.12.0"}
MODEL = "m"

# The archive's model file: BaseHandler instantiates its one class and loads the state dict.
MODEL_PY = '''"""torchvision's {arch} with 1000 classes; its weights are the archive's state dict."""
import torch
import torchvision


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.get_model("{arch}", weights=None, num_classes=1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
'''


# ---------------------------------------------------------------- setup


def _venv_versions(venv: Path) -> dict[str, str] | None:
    """The versions the venv's interpreter sees, or None where it has no TorchServe."""
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    code = (
        "import importlib.metadata as m, json\n"
        "names = ['torchserve', 'torch-model-archiver', 'torch', 'torchvision', 'captum']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else None


def ensure_torchserve(venv: Path = VENV) -> tuple[dict[str, str], float]:
    """The venv with TorchServe and its model archiver at the pinned versions, made where
    missing: its versions, and the seconds this call spent setting it up (0 when present)."""
    t0 = time.perf_counter()
    have = _venv_versions(venv)
    if have and all(have.get(k) == v for k, v in PINS.items()) and "captum" in have:
        return have, 0.0
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # This interpreter's packages (torch, captum, ...) for the workers, after the venv's own.
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deepvis-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        + [f"{k}=={v}" for k, v in PINS.items()],
        check=True,
    )
    have = _venv_versions(venv)
    if not have or any(have.get(k) != v for k, v in PINS.items()) or "captum" not in have:
        raise RuntimeError(f"TorchServe setup failed: {have}")
    return have, time.perf_counter() - t0


def build_module(arch: str, seed: int) -> Any:
    """The benchmark's model: torchvision's `arch` with random weights, as load.py builds it."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(arch, weights=None, num_classes=1000).eval()


def archive(module: Any, arch: str, work: Path, venv: Path = VENV) -> Path:
    """The model store holding MODEL.mar: model file, state dict and handler."""
    import torch

    src = work / "src"
    store = work / "store"
    src.mkdir()
    store.mkdir()
    (src / "model.py").write_text(MODEL_PY.format(arch=arch))
    torch.save({f"net.{k}": v for k, v in module.state_dict().items()}, src / "weights.pth")
    shutil.copy(HANDLER, src / "guided_backprop_handler.py")
    subprocess.run(
        [
            str(venv / "bin" / "torch-model-archiver"),
            *("--model-name", MODEL, "--version", "1.0"),
            *("--model-file", str(src / "model.py")),
            *("--serialized-file", str(src / "weights.pth")),
            *("--handler", str(src / "guided_backprop_handler.py")),
            *("--export-path", str(store)),
        ],
        check=True,
    )
    return store


# ---------------------------------------------------------------- the server


class TorchServe:
    """TorchServe on a model store, run from `work` (its logs, pid file and worker sockets
    there, so that it touches nothing of another TorchServe's); stop() leaves no process."""

    def __init__(
        self, work: Path, store: Path, batch_size: int, max_delay_ms: int, venv: Path = VENV
    ) -> None:
        from load import free_port

        self.work, self.venv = work, venv
        self.port, self.management_port, metrics_port = free_port(), free_port(), free_port()
        models = {
            MODEL: {
                "1.0": {
                    "defaultVersion": True,
                    "marName": f"{MODEL}.mar",
                    "minWorkers": 1,
                    "maxWorkers": 1,
                    "batchSize": batch_size,
                    "maxBatchDelay": max_delay_ms,
                    "responseTimeout": 600,
                }
            }
        }
        self.config = work / "config.properties"
        self.config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{self.management_port}\n"
            f"metrics_address=http://127.0.0.1:{metrics_port}\n"
            f"model_store={store}\n"
            f"load_models={MODEL}.mar\n"
            f"models={json.dumps(models)}\n"
            "default_workers_per_model=1\n"
            "disable_token_authorization=true\n"
        )
        tmp = work / "tmp"
        tmp.mkdir()
        self.env = {
            **os.environ,
            # The launcher's pid file and the JVM's temp dir (the .mar unpacked, the worker's
            # socket): this run's own.
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),
            "LOG_LOCATION": str(work / "logs"),
            "METRICS_LOCATION": str(work / "logs"),
        }
        self.log = work / "torchserve.out"
        self.procs: list[Any] = []  # psutil.Process of the frontend and its workers
        with self.log.open("wb") as out:
            self.launcher = subprocess.Popen(
                [
                    str(venv / "bin" / "torchserve"),
                    *("--start", "--foreground", "--ncs", "--disable-token-auth"),
                    *("--model-store", str(store), "--ts-config", str(self.config)),
                ],
                cwd=work,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid_file = tmp / ".model_server.pid"

    def _get(self, port: int, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def frontend_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def record_processes(self) -> None:
        """Remember the frontend and every worker under it (stop() checks they are gone)."""
        import psutil

        pid = self.frontend_pid()
        if pid is None:
            return
        try:
            java = psutil.Process(pid)
            found = [java, *java.children(recursive=True)]
        except psutil.Error:
            return
        known = {p.pid for p in self.procs}
        self.procs += [p for p in found if p.pid not in known]

    def server_processes(self) -> list[Any]:
        """The frontend and its workers now running."""
        import psutil

        pid = self.frontend_pid()
        try:
            java = psutil.Process(pid) if pid else None
            return [java, *java.children(recursive=True)] if java else []
        except psutil.Error:
            return []

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds until the model's worker is READY; raises with the log's tail otherwise."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"TorchServe exited:\n{self.tail()}")
            try:
                status, body = self._get(self.management_port, f"/models/{MODEL}")
                if status == 200:
                    workers = json.loads(body)[0].get("workers", [])
                    if workers and all(w.get("status") == "READY" for w in workers):
                        self.record_processes()
                        return time.perf_counter() - t0
            except (OSError, http.client.HTTPException, ValueError):
                pass
            self.record_processes()
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe not ready after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for f in sorted((self.work / "logs").glob("*.log")):
            text += f"\n--- {f.name}\n" + f.read_text(errors="replace")[-n:]
        return text[-3 * n :]

    def stop(self) -> None:
        """`torchserve --stop` on this run's pid file, then any recorded process still alive
        is killed by its pid (psutil checks that it is still that process)."""
        import psutil

        self.record_processes()
        subprocess.run(
            [str(self.venv / "bin" / "torchserve"), "--stop"],
            cwd=self.work,
            env=self.env,
            capture_output=True,
        )
        try:
            self.launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait()
        _, alive = psutil.wait_procs(self.procs, timeout=30)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)


# ---------------------------------------------------------------- clients


def encode(image: np.ndarray, target: int) -> bytes:
    """A request body: the target, the shape and the float32 image as base64."""
    data = base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode("ascii")
    return json.dumps({"target": target, "shape": list(image.shape), "data": data}).encode()


def decode(body: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """An answer's attribution, checked for its shape and finiteness, and its bookkeeping."""
    res = json.loads(body)
    arr = np.frombuffer(base64.b64decode(res.pop("data")), dtype="<f4")
    if tuple(res["shape"]) != shape or arr.size != int(np.prod(shape)):
        raise ValueError(f"answer of shape {res['shape']}, expected {list(shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("answer not finite")
    return arr.reshape(shape), res


def explain(conn: http.client.HTTPConnection, body: bytes) -> bytes:
    conn.request(
        "POST", f"/explanations/{MODEL}", body=body, headers={"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:500]!r}")
    return data


def client_proc(
    port: int,
    size: int,
    seed: int,
    index: int,
    threads: int,
    per_thread: int,
    ready: mp.Queue,
    go: Any,
    start: Any,
    queue: mp.Queue,
) -> None:
    """One client process of `threads` closed-loop clients, each its own connection and 4
    random normal images (seeded by the client's number) cycled with a random target per
    request; a warm-up request each, then, from the common start time, per_thread requests."""
    shape = (3, size, size)
    barrier = threading.Barrier(threads + 1)
    results: list[tuple[float, list[float], list[int], list[float], str | None]] = []

    def one(k: int) -> None:
        rng = np.random.default_rng([seed, k])
        images = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
        lat: list[float] = []
        batches: list[int] = []
        device_ms: list[float] = []
        error = None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            try:
                decode(explain(conn, encode(images[0], 0)), shape)  # connect, warm up
            finally:
                barrier.wait()
            go.wait()
            time.sleep(max(0.0, start.value - time.time()))
            for i in range(per_thread):
                body = encode(images[i % 4], int(rng.integers(0, 1000)))
                t0 = time.perf_counter()
                answer = explain(conn, body)
                lat.append(time.perf_counter() - t0)
                _, meta = decode(answer, shape)
                batches.append(int(meta["batch_size"]))
                device_ms.append(float(meta["compute_ms"]) / int(meta["batch_size"]))
        except Exception as e:  # reported to the parent, which fails the run
            error = f"client {k}: {type(e).__name__}: {e}"
        finally:
            conn.close()
        results.append((time.time(), lat, batches, device_ms, error))

    workers = [
        threading.Thread(target=one, args=(index * threads + t,), daemon=True)
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    barrier.wait()
    ready.put(index)
    go.wait()
    cpu0 = time.process_time()
    for w in workers:
        w.join()
    queue.put(
        (
            max(r[0] for r in results),
            [x for r in results for x in r[1]],
            [x for r in results for x in r[2]],
            [x for r in results for x in r[3]],
            [r[4] for r in results if r[4]],
            time.process_time() - cpu0,
        )
    )


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def cpu_seconds(procs: list[Any]) -> float:
    """User + system CPU seconds of the processes, all their threads."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def served(
    server: TorchServe, size: int, processes: int, threads: int, requests: int, seed: int
) -> dict:
    """One timed run of `requests` images (rounded down to a multiple of the clients): raw
    figures in load.py's served() form, for its summary()."""
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()
    queue: mp.Queue = ctx.Queue()
    go = ctx.Event()
    start = ctx.Value("d", 0.0)
    per = requests // (processes * threads)
    procs = [
        ctx.Process(
            target=client_proc,
            args=(server.port, size, seed, i, threads, per, ready, go, start, queue),
            daemon=True,
        )
        for i in range(processes)
    ]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)  # every thread connected and warmed up
        start.value = time.time() + 0.5
        go.set()
        time.sleep(max(0.0, start.value - time.time()))
        server_procs = server.server_processes()
        cpu0, machine0 = cpu_seconds(server_procs), machine_cpu_seconds()
        outs = [queue.get(timeout=3600) for _ in procs]
        cpu1, machine1 = cpu_seconds(server_procs), machine_cpu_seconds()
        for p in procs:
            p.join()
    finally:
        for p in procs:  # a client left waiting after a failure
            if p.is_alive():
                p.kill()
                p.join()
    errors = [e for o in outs for e in o[4]]
    if errors:
        raise RuntimeError("; ".join(errors[:5]))
    return {
        "per_call": 0,
        "images": per * processes * threads,
        "seconds": max(o[0] for o in outs) - start.value,
        "latency_ms": np.concatenate([o[1] for o in outs]) * 1000,
        "batches": np.concatenate([o[2] for o in outs]),
        "device_s": sum(sum(o[3]) for o in outs) / 1000,
        # TorchServe has no event loop of deepvis's kind: the frontend's and the worker's CPU
        # together, reported apart from summary()'s loop-thread figures.
        "server_cpu_s": None,
        "torchserve_cpu_s": cpu1 - cpu0,
        "clients_cpu_s": sum(o[5] for o in outs),
        "machine_cpu_s": machine1 - machine0,
    }


def check(server: TorchServe, module: Any, size: int, seed: int) -> dict:
    """One image and target through TorchServe against Captum in-process on the same weights:
    the largest difference over the largest magnitude (must be ≤ 1e-4)."""
    import torch
    from captum.attr import GuidedBackprop

    rng = np.random.default_rng([seed, 10_000])
    image = rng.standard_normal((3, size, size), dtype=np.float32)
    target = int(rng.integers(0, 1000))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    try:
        got, meta = decode(explain(conn, encode(image, target)), image.shape)
    finally:
        conn.close()
    want = (
        GuidedBackprop(module)
        .attribute(torch.from_numpy(image)[None], target=target)[0]
        .detach()
        .numpy()
    )
    err = float(np.abs(got - want).max() / np.abs(want).max())
    if not err <= 1e-4:
        raise RuntimeError(f"TorchServe's answer differs from Captum's: {err:.3g} of the max")
    return {"target": target, "max_abs_error_over_max": err, "torch_threads": meta["torch_threads"]}


# ---------------------------------------------------------------- the run


def torchserve_run(
    arch: str = "resnet18",
    size: int = 112,
    processes: int = 4,
    threads: int = 4,
    requests: int = 480,
    batch_size: int = 16,
    max_delay_ms: int = 5,
    seed: int = 0,
) -> dict:
    """Set up (where needed), archive, start TorchServe, check one answer, time `requests`
    explanations from processes x threads clients, stop and clean up: the report."""
    import warnings

    import torch
    from load import summary  # here, not at the top: load.py may import this module

    warnings.filterwarnings("ignore", module="captum")
    versions, setup_s = ensure_torchserve()
    module = build_module(arch, seed)
    work = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    try:
        t0 = time.perf_counter()
        store = archive(module, arch, work)
        archive_s = time.perf_counter() - t0
        server = TorchServe(work, store, batch_size, max_delay_ms)
        try:
            ready_s = server.wait_ready()
            correct = check(server, module, size, seed)
            run = served(server, size, processes, threads, requests, seed)
        finally:
            server.stop()
        left = [p.pid for p in server.procs if p.is_running()]
        if left:
            raise RuntimeError(f"TorchServe processes left running: {left}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s = summary([run])
    return {
        "arch": arch,
        "size": size,
        "clients": processes * threads,
        "processes": processes,
        "threads": threads,
        "requests": requests,
        "seed": seed,
        "device": f"cpu ({os.cpu_count()} cores)",
        "date": time.strftime("%Y-%m-%d"),
        "versions": {**versions, "torch_driver": torch.__version__},
        "torchserve_config": {
            "workers": 1,
            "batch_size": batch_size,
            "max_batch_delay_ms": max_delay_ms,
            "worker_torch_threads": correct["torch_threads"],
            "token_auth": "disabled",
            "config_snapshots": "off (--ncs)",
        },
        "request": "JSON {target, shape, data: base64 little-endian float32}, one image",
        "response": "JSON {shape, dtype: float32, data: base64 little-endian float32, "
        "batch_size, compute_ms, torch_threads}",
        "setup_s": round(setup_s, 1),
        "archive_s": round(archive_s, 1),
        "startup_s": round(ready_s, 1),
        "check": correct,
        "served": s,
        # load.py's mean_batch_size is over requests (a request in a batch of 16 counts 16
        # times as often as one alone); this one is over the batches TorchServe formed.
        "mean_batch_size_per_batch": round(
            float(len(run["batches"]) / np.sum(1.0 / run["batches"])), 2
        ),
        # How many batches of each size TorchServe formed (a batch of b answers b requests).
        "batches_by_size": {
            int(b): int(round(n / b))
            for b, n in zip(*np.unique(run["batches"], return_counts=True), strict=True)
        },
        "cpu_ms_per_image": {
            "torchserve": round(run["torchserve_cpu_s"] * 1000 / run["images"], 1),
            "clients": round(run["clients_cpu_s"] * 1000 / run["images"], 1),
        },
        # The machine's busy CPU over the timed part that was neither TorchServe's nor the
        # clients', as a share of all its cores: near 0, the run had the machine to itself.
        "other_cpu_share": round(
            (run["machine_cpu_s"] - run["torchserve_cpu_s"] - run["clients_cpu_s"])
            / (run["seconds"] * (os.cpu_count() or 1)),
            3,
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--threads", type=int, default=4, help="client threads per process")
    p.add_argument("--requests", type=int, default=480)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-delay-ms", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed of the weights")
    p.add_argument("--out", type=Path, default=Path("bench/results/torchserve.json"))
    args = p.parse_args()
    report = torchserve_run(
        args.arch,
        args.size,
        args.processes,
        args.threads,
        args.requests,
        args.batch_size,
        args.max_delay_ms,
        args.seed,
    )
    report["command"] = " ".join(sys.argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
