"""The explorer's gateway: static page, JSON endpoints and event streams over `AsyncClient`.

Endpoints (all relative to the page, so that the explorer works behind a proxy path):

- ``GET  ./``                         the page; ``GET static/<file>`` its script and style;
- ``GET  api/config``                 colormap tables, method styles and drawing defaults;
- ``GET  api/models``                 ListModels, each with its methods' drawing styles;
- ``GET  api/models/<model>/layers``  DescribeModel;
- ``GET  api/samples``, ``api/samples/<name>``   the sample images the gateway offers;
- ``POST api/explain?method=..``      one Explain call; the body is the image file's bytes;
- ``POST api/report?methods=a,b``     the view as `deepvis report`'s self-contained page;
- ``POST api/evaluate?methods=a,b``   one Evaluate call (randomization cascading, deletion,
  insertion) on the image: each method's curves, AUCs, reading and PNG plots;
- ``POST api/visualize?layer=..&channel=..``  one Visualize stream, as Server-Sent Events;
- ``POST api/jobs/<id>/cancel``       cancels a running visualization (its server job ends);
- ``GET  api/jobs``                   how many visualizations the gateway is running.

A failed call answers with an HTTP status for its gRPC status and a JSON body
``{"code": "<gRPC status name>", "message": "<the server's message>"}``; a bad argument
caught before any call answers 400 with code INVALID_ARGUMENT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import html
import importlib.util
import io
import ipaddress
import json
import re
import signal
import sys
import tempfile
import time
import uuid
import webbrowser
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from PIL import Image

from deepvis import render
from deepvis._client import AsyncClient
from deepvis._exceptions import DeepvisError
from deepvis._models import (
    Evaluation,
    Explanation,
    Neuron,
    PerturbationCurve,
    Progress,
    Randomization,
    Visualization,
)

__all__ = ["Gateway", "build_app", "is_loopback", "serve"]

STATIC = resources.files("deepvis.ui").joinpath("static")
_STATIC_FILES = {
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# Uploads: an image file, not a data set.
MAX_UPLOAD_BYTES = 32 * 1024 * 1024

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# The header the page sends with every POST: a request from a page of another origin cannot
# send it without a CORS preflight, which the gateway never grants.
PAGE_HEADER = "X-Deepvis-Page"

# The explorer's checks: the metrics asked for, the default deletion and insertion steps, and
# the randomization reading (a method passes when its map's Spearman correlation with the
# trained model's, once the top layer is re-initialized, is below PASS_BELOW).
CHECK_METRICS = ("randomization", "deletion", "insertion")
DEFAULT_CHECK_STEPS = 16
PASS_BELOW = 0.5
_PLOT_SIZE = (240, 150)

# gRPC status -> HTTP status of the gateway's answer.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the explorer on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_samples() -> Path | None:
    """The default model's sample digits, where the server package is installed beside the
    client (found without importing it, so without torch); None otherwise."""
    try:
        spec = importlib.util.find_spec("deepvis_server")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        folder = Path(root) / "default_model" / "samples"
        if folder.is_dir():
            return folder
    return None


def _array(a: np.ndarray) -> dict[str, Any]:
    """An array for the page: its shape and its little-endian float32 (or int32) bytes."""
    arr = np.asarray(a)
    kind = "int32" if arr.dtype.kind in "iu" else "float32"
    data = np.ascontiguousarray(arr, dtype="<i4" if kind == "int32" else "<f4")
    return {
        "shape": list(arr.shape),
        "dtype": kind,
        "data": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def _png_uri(img: Image.Image | None) -> str | None:
    return None if img is None else render.data_uri(img)


def _target(target: int | Neuron | None) -> dict[str, Any] | None:
    if isinstance(target, Neuron):
        return {"layer": target.layer, "channel": target.channel, "y": target.y, "x": target.x}
    return None if target is None else {"class": int(target)}


def _error(code: str, message: str, status: int, **more: Any) -> web.Response:
    return web.json_response({"code": code, "message": message, **more}, status=status)


class Gateway:
    """The explorer's endpoints, over one `AsyncClient` opened when the app starts.

    Args:
        server: The deepvis server's address, as `AsyncClient` takes it.
        client_options: Further `AsyncClient` arguments (timeout, token, TLS).
        samples: A folder of images the page offers as samples; None offers none.
        hosts: The host names requests may name in their Host header: this machine's
            loopback names, and any a proxy in front sends; None accepts any (a gateway
            bound to another address on purpose). Refusing other names keeps a web page
            elsewhere from reaching the gateway through a DNS name it points at 127.0.0.1.
    """

    def __init__(
        self,
        server: str,
        client_options: dict[str, Any] | None = None,
        samples: Path | None = None,
        hosts: Sequence[str] | None = LOOPBACK_NAMES,
    ) -> None:
        self.server = server
        self.hosts = None if hosts is None else {h.lower().strip("[]") for h in hosts}
        self.client_options = dict(client_options or {})
        self.samples = samples
        self.client: AsyncClient | None = None
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, _app: web.Application) -> None:
        self.client = AsyncClient(self.server, **self.client_options)

    async def stop(self, _app: web.Application) -> None:
        for task in list(self.jobs.values()):
            task.cancel()
        if self.client is not None:
            await self.client.close()

    @property
    def _client(self) -> AsyncClient:
        if self.client is None:
            raise RuntimeError("the gateway has not started")
        return self.client

    # --- answers -------------------------------------------------------------------------

    def _failed(self, err: BaseException) -> web.Response:
        if isinstance(err, DeepvisError):
            code = err.code
            message = " ".join(str(err).split())
            more: dict[str, Any] = {}
            if code == grpc.StatusCode.UNAVAILABLE:
                more["hint"] = (
                    f"the deepvis server at {self.server} cannot be reached or is not ready; "
                    "is it running? (deepvis ui --server HOST:PORT)"
                )
            return _error(code.name, message, _HTTP_STATUS.get(code, 502), **more)
        # Arguments the client refuses before sending anything.
        return _error("INVALID_ARGUMENT", str(err), 400)

    async def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await make()
        except (DeepvisError, ValueError, TypeError, OSError) as err:
            raise _Failed(self._failed(err)) from err

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuses requests that name another host, and POSTs that are not the page's."""
        if self.hosts is not None:
            name = _host_name(request.host)
            if name not in self.hosts:
                allowed = ", ".join(sorted(self.hosts))
                return _error(
                    "PERMISSION_DENIED",
                    f"the Host header names {name!r}; this explorer answers for {allowed} "
                    f"(deepvis ui --allow-host {name or 'NAME'} adds a name a proxy sends)",
                    403,
                )
        if request.method == "POST" and request.headers.get(PAGE_HEADER) != "1":
            return _error(
                "PERMISSION_DENIED", f"POST requests need the header {PAGE_HEADER}: 1", 403
            )
        return await handler(request)

    # --- the page ------------------------------------------------------------------------

    async def index(self, _request: web.Request) -> web.Response:
        text = STATIC.joinpath("index.html").read_text(encoding="utf-8")
        return web.Response(text=text, content_type="text/html", headers=_NO_STORE)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC_FILES:
            return _error("NOT_FOUND", f"no static file {name!r}", 404)
        body = STATIC.joinpath(name).read_bytes()
        return web.Response(body=body, content_type=_STATIC_FILES[name], headers=_NO_STORE)

    async def config(self, _request: web.Request) -> web.Response:
        kinds = json.loads(
            resources.files("deepvis").joinpath("colormaps.json").read_text(encoding="utf-8")
        )["maps"]
        maps = {
            name: {"kind": kinds[name]["kind"], "rgb": render.colormap(name).tobytes().hex()}
            for name in render.colormaps()
        }
        return web.json_response(
            {
                "server": self.server,
                "colormaps": maps,
                "defaults": {
                    "clip": render.DEFAULT_CLIP,
                    "alpha": render.DEFAULT_ALPHA,
                    "signed_cmap": render.DEFAULT_SIGNED_CMAP,
                    "unsigned_cmap": render.DEFAULT_UNSIGNED_CMAP,
                    "zero_below": render.ZERO_BELOW,
                },
                "samples": bool(self._sample_names()),
            }
        )

    # --- model calls ---------------------------------------------------------------------

    async def models(self, _request: web.Request) -> web.Response:
        try:
            listed = await self._call(lambda: self._client.models())
        except _Failed as f:
            return f.response
        out = []
        for info in listed:
            entry = asdict(info)
            entry["styles"] = {m: asdict(render.style_of(m)) for m in info.methods}
            out.append(entry)
        return web.json_response(out)

    async def layers(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        try:
            desc = await self._call(lambda: self._client.describe(model))
        except _Failed as f:
            return f.response
        return web.json_response(
            {
                "model": desc.model.name,
                "layers": [asdict(layer) for layer in desc.layers],
                "default_cam_layer": desc.default_cam_layer,
                "non_relu_activations": list(desc.non_relu_activations),
            }
        )

    async def explain(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            image, target = await _image_and_target(request)
            top_k_channels = _int(q.get("top_k_channels", "0"), "top_k_channels")
        except ValueError as err:
            return _error("INVALID_ARGUMENT", str(err), 400)
        layer = q.get("layer") or None
        try:
            exp: Explanation = await self._call(
                lambda: self._client.explain(
                    image,
                    model=q.get("model") or None,
                    method=q.get("method", ""),
                    target=target,
                    layer=layer,
                    render=False,
                    top_k=5,
                    top_k_channels=top_k_channels,
                )
            )
        except _Failed as f:
            return f.response
        return web.json_response(
            {
                "model": exp.model,
                "method": exp.method,
                "layer": exp.layer,
                "target": _target(exp.target),
                "predictions": [asdict(p) for p in exp.predictions],
                "input_region": list(exp.input_region) if exp.input_region else None,
                "warnings": list(exp.warnings),
                "batch_size": exp.batch_size,
                "queue_ms": exp.queue_ms,
                "compute_ms": exp.compute_ms,
                "array": _array(exp.array) if exp.array is not None else None,
                "arrays": {k: _array(v) for k, v in exp.arrays.items()},
            }
        )

    async def report(self, request: web.Request) -> web.Response:
        """The current view as `deepvis report`'s self-contained page, for download."""
        q = request.query
        try:
            image, target = await _image_and_target(request)
            methods = [m for m in q.get("methods", "").split(",") if m]
            if not methods:
                raise ValueError("methods must name at least one method, comma-separated")
            cmap = q.get("cmap") or None
            if cmap is not None:
                render.colormap(cmap)
        except ValueError as err:
            return _error("INVALID_ARGUMENT", str(err), 400)
        name = Path(q.get("name") or "image.png").name or "image.png"
        start = time.perf_counter()
        try:
            listed = await self._call(lambda: self._client.models())
            wanted = q.get("model") or listed[0].name
            info = next((m for m in listed if m.name == wanted), None)
            if info is None:
                raise _Failed(_error("NOT_FOUND", f"model {wanted!r} is not served", 404))
            comparison = await self._call(
                lambda: self._client.compare(
                    image, methods, model=info.name, target=target, layer=q.get("layer") or None
                )
            )
        except _Failed as f:
            return f.response
        took = time.perf_counter() - start
        page = await asyncio.to_thread(
            _report_page, image, name, comparison, methods, cmap, info, self.server, took
        )
        stem = Path(name).stem or "image"
        return web.Response(
            text=page,
            content_type="text/html",
            headers={"Content-Disposition": f'attachment; filename="{_safe(stem)}-report.html"'},
        )

    async def evaluate(self, request: web.Request) -> web.Response:
        """Sanity checks of the shown methods on the image: one Evaluate call."""
        q = request.query
        try:
            image = await _image_body(request)
            if image is None:
                raise ValueError("send the image file's bytes as the request body")
            target = parse_target(q.get("target", ""))
            if isinstance(target, Neuron):
                raise ValueError(
                    "checks evaluate a class's maps: target must be a class N or empty (the "
                    f"predicted class), not the neuron {q.get('target', '')!r}"
                )
            methods = [m for m in q.get("methods", "").split(",") if m]
            if not methods:
                raise ValueError("methods must name at least one method, comma-separated")
            steps = _int(q.get("steps", str(DEFAULT_CHECK_STEPS)), "steps")
            seed = _int(q.get("seed", "0"), "seed")
        except ValueError as err:
            return _error("INVALID_ARGUMENT", str(err), 400)
        try:
            ev: Evaluation = await self._call(
                lambda: self._client.evaluate(
                    image,
                    model=q.get("model") or None,
                    method=methods,
                    metrics=list(CHECK_METRICS),
                    classes=target,
                    layer=q.get("layer") or None,
                    steps=steps,
                    seed=seed,
                    randomization="cascading",
                )
            )
        except _Failed as f:
            return f.response
        return web.json_response(await asyncio.to_thread(_checks, ev, seed))

    # --- feature visualization -------------------------------------------------------------

    async def visualize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            image = await _image_body(request)
            objective: int | Neuron
            if q.get("class"):
                objective = _int(q["class"], "class")
            else:
                y, x = q.get("y"), q.get("x")
                objective = Neuron(
                    q.get("layer", ""),
                    _int(q.get("channel", ""), "channel"),
                    None if not y else _int(y, "y"),
                    None if not x else _int(x, "x"),
                )
            steps = _int(q.get("steps", "128"), "steps")
            every = _int(q.get("progress_every", "8"), "progress_every")
            seed = _int(q.get("seed", "0"), "seed")
            stream = self._client.visualize_stream(
                objective,
                model=q.get("model") or None,
                steps=steps,
                progress_every=every,
                seed=seed,
                input=image,
            )
        except (ValueError, TypeError) as err:
            return _error("INVALID_ARGUMENT", str(err), 400)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # proxies: pass each event on at once
            }
        )
        await response.prepare(request)
        job = uuid.uuid4().hex
        pump = asyncio.ensure_future(self._pump(job, stream, response))
        self.jobs[job] = pump
        try:
            await pump
        except asyncio.CancelledError:
            if job not in self._cancelled:
                raise  # the page went away: the stream's call is cancelled with the pump
            with contextlib.suppress(ConnectionError, RuntimeError):
                await _event(response, "cancelled", {"id": job})
        finally:
            self.jobs.pop(job, None)
            self._cancelled.discard(job)
        return response

    async def _pump(self, job: str, stream: Any, response: web.StreamResponse) -> None:
        await _event(response, "job", {"id": job})
        try:
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, Progress):
                        await _event(
                            response,
                            "progress",
                            {
                                "step": item.step,
                                "steps": item.steps,
                                "objective": item.objective,
                                "image": _png_uri(item.image),
                            },
                        )
                    elif isinstance(item, Visualization):
                        await _event(response, "result", _visualization(item))
        except DeepvisError as err:
            failed = json.loads(self._failed(err).text or "{}")
            await _event(response, "error", failed)

    async def cancel(self, request: web.Request) -> web.Response:
        job = request.match_info["job"]
        task = self.jobs.get(job)
        if task is None:
            return _error("NOT_FOUND", f"no running visualization {job!r}", 404)
        self._cancelled.add(job)
        task.cancel()
        return web.json_response({"cancelled": job})

    async def running(self, _request: web.Request) -> web.Response:
        return web.json_response({"running": len(self.jobs)})

    # --- samples ---------------------------------------------------------------------------

    def _sample_names(self) -> list[str]:
        if self.samples is None or not self.samples.is_dir():
            return []
        return sorted(
            p.name
            for p in self.samples.iterdir()
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )

    async def sample_list(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"folder": str(self.samples) if self.samples else None, "names": self._sample_names()}
        )

    async def sample(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if self.samples is None or name not in self._sample_names():
            valid = ", ".join(self._sample_names()) or "none"
            return _error("NOT_FOUND", f"no sample {name!r}; samples: {valid}", 404)
        return web.FileResponse(self.samples / name)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _report_page(
    image: bytes,
    name: str,
    comparison: Any,
    methods: list[str],
    cmap: str | None,
    model: Any,
    server: str,
    took: float,
) -> str:
    from deepvis._report import build_report

    args = argparse.Namespace(method=methods, cmap=cmap, clip=render.DEFAULT_CLIP, title=None)
    with tempfile.TemporaryDirectory(prefix="deepvis-ui-") as folder:
        path = Path(folder) / _safe(name)
        path.write_bytes(image)
        page = build_report(
            [(path, comparison, took)], args, server=server, model=model, seconds=took
        )
        # The page names the image as the page knew it, not by the temporary file.
        return page.replace(html.escape(str(path)), html.escape(name))


def _finite(values: np.ndarray) -> list[float | None]:
    """Floats for JSON: NaN (a constant map's correlation) as null, which JSON can say."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _curve(curve: PerturbationCurve | None, kind: str, method: str) -> dict[str, Any] | None:
    if curve is None:
        return None
    return {
        "curve": _finite(curve.curve[0]),
        "auc": float(curve.auc[0]),
        "plot": _png_uri(curve.plot(f"{kind}: {method}", size=_PLOT_SIZE)),
    }


def _randomization(r: Randomization | None, method: str) -> dict[str, Any] | None:
    if r is None or r.spearman is None:
        return None
    top = float(r.spearman[0, 0])
    return {
        "layers": list(r.layers),
        "spearman": _finite(r.spearman[0]),
        "ssim": None if r.ssim is None else _finite(r.ssim[0]),
        "top_layer": top if np.isfinite(top) else None,
        "passes": bool(top < PASS_BELOW) if np.isfinite(top) else None,
        "pass_below": PASS_BELOW,
        "plot": _png_uri(r.plot(f"randomization: {method}", size=_PLOT_SIZE)),
    }


def _checks(ev: Evaluation, seed: int) -> dict[str, Any]:
    """An evaluation of one image for the page: per method, its curves, AUCs and plots."""
    return {
        "model": ev.model,
        "class": ev.classes[0] if ev.classes else None,
        "steps": ev.steps,
        "seed": seed,
        "layers": list(ev.layers),
        "warnings": list(ev.warnings),
        "queue_ms": ev.queue_ms,
        "compute_ms": ev.compute_ms,
        "methods": {
            name: {
                "layer": m.layer,
                "deletion": _curve(m.deletion, "deletion", name),
                "insertion": _curve(m.insertion, "insertion", name),
                "randomization": _randomization(m.randomization, name),
            }
            for name, m in ev.methods.items()
        },
    }


class _Failed(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


_NO_STORE = {"Cache-Control": "no-store"}


def _host_name(host: str) -> str:
    """The name part of a Host header: "127.0.0.1:8080" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None


def parse_target(text: str) -> int | Neuron | None:
    """A target from the page: "" (the predicted class), "N" (class N), "LAYER:C" (a
    channel) or "LAYER:C:Y:X" (one neuron)."""
    text = text.strip()
    if not text:
        return None
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts[1:]] if parts[0] or len(parts) == 1 else None
        if len(parts) == 1:
            return int(parts[0])
        if numbers is not None and len(numbers) == 1:
            return Neuron(parts[0], numbers[0])
        if numbers is not None and len(numbers) == 3:
            return Neuron(parts[0], numbers[0], numbers[1], numbers[2])
    except ValueError:
        pass
    raise ValueError(
        f"target must be N (a class), LAYER:C (a channel) or LAYER:C:Y:X (a neuron), not {text!r}"
    )


async def _image_body(request: web.Request) -> bytes | None:
    """The request's image file, checked to be one; None for an empty body."""
    body = await request.read()
    if not body:
        return None
    try:
        with Image.open(io.BytesIO(body)) as img:
            img.verify()
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for a file it cannot read
        raise ValueError(
            "the request body is not an image file Pillow can read (PNG, JPEG, WebP, BMP, GIF)"
        ) from None
    return body


async def _image_and_target(request: web.Request) -> tuple[bytes, int | Neuron | None]:
    """The image to explain, the request's body (required), and its target, the query's."""
    image = await _image_body(request)
    if image is None:
        raise ValueError("send the image file's bytes as the request body")
    return image, parse_target(request.query.get("target", ""))


def _visualization(v: Visualization) -> dict[str, Any]:
    return {
        "objective": v.objective,
        "steps": v.steps,
        "images": [_png_uri(i) for i in v.images],
        "array": _array(v.array),
        "attribution": _array(v.attribution) if v.attribution is not None else None,
        "attribution_region": list(v.attribution_region) if v.attribution_region else None,
        "queue_ms": v.queue_ms,
        "compute_ms": v.compute_ms,
    }


async def _event(response: web.StreamResponse, name: str, data: Any) -> None:
    await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


def build_app(gateway: Gateway) -> web.Application:
    """The explorer's aiohttp application (routes of `Gateway`)."""
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES, middlewares=[gateway.guard])
    app.on_startup.append(gateway.start)
    app.on_cleanup.append(gateway.stop)
    gets = {
        "/": gateway.index,
        "/static/{name}": gateway.static,
        "/api/config": gateway.config,
        "/api/models": gateway.models,
        "/api/models/{model}/layers": gateway.layers,
        "/api/samples": gateway.sample_list,
        "/api/samples/{name}": gateway.sample,
        "/api/jobs": gateway.running,
    }
    posts = {
        "/api/explain": gateway.explain,
        "/api/report": gateway.report,
        "/api/evaluate": gateway.evaluate,
        "/api/visualize": gateway.visualize,
        "/api/jobs/{job}/cancel": gateway.cancel,
    }
    for path, handler in gets.items():
        app.router.add_get(path, handler)
    for path, handler in posts.items():
        app.router.add_post(path, handler)
    return app


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    gateway: Gateway,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    open_browser: bool = False,
    out: Any = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Runs the explorer until SIGINT or SIGTERM; prints its URL as the first line on `out`.

    Args:
        gateway: The endpoints.
        host: The address to bind (the caller checks that it is meant).
        port: The port; 0 picks a free one.
        open_browser: Open the URL in the default browser once it serves.
        out: Where the URL is printed (default: stdout).
        ready: Called with the URL once it serves.
    """
    asyncio.run(_serve(gateway, host, port, open_browser, out or sys.stdout, ready))


async def _serve(
    gateway: Gateway,
    host: str,
    port: int,
    open_browser: bool,
    out: Any,
    ready: Callable[[str], None] | None,
) -> None:
    # handler_cancellation: a page that goes away cancels its handler, so its stream's call.
    runner = web.AppRunner(build_app(gateway), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound: Sequence[Any] = runner.addresses[0]
        url = _url(host, int(bound[1]))
        print(url, file=out, flush=True)
        if ready is not None:
            ready(url)
        if open_browser:
            webbrowser.open(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
