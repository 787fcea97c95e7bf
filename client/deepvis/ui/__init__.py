"""`deepvis ui`: the explorer, a local web page over a deepvis server.

A small aiohttp gateway (the `ui` extra) serves one static page (HTML, CSS and JavaScript
shipped in this package: no build step, nothing from any other origin) and a few JSON and
event-stream endpoints that forward to the server over gRPC with `deepvis.AsyncClient`.
The page draws every map itself, from the raw float32 arrays, with the colormap tables and
scale rules of `deepvis.render` (which the gateway serves), so opacity, colormap, sign and
scale change in the page without another request.
"""

from __future__ import annotations

from deepvis.ui._gateway import Gateway, build_app, is_loopback, serve

__all__ = ["Gateway", "build_app", "is_loopback", "serve"]
