"""The TorchServe handler of the TorchServe baseline (torchserve.py): Captum's guided backprop
on each batch TorchServe forms, with each request's own target, as a user would write it.

Archived into the .mar by torchserve.py and run by TorchServe's worker, never imported by the
benchmark itself. `POST /explanations/{model}` reaches BaseHandler.handle, which calls
`preprocess` on the batch and then `explain_handle` (the frontend marks the batch's requests
with the header `explain: True`).

Request body (Content-Type: application/json), one image per request:
    {"target": 281, "shape": [3, 112, 112], "data": "<base64 of little-endian float32>"}
the image already normalized (what goes into the model). Response, one per request:
    {"shape": [3, 112, 112], "dtype": "float32", "data": "<base64 of little-endian float32>",
     "batch_size": 16, "compute_ms": 412.3, "torch_threads": 2}
the attribution, the size of the batch the request was computed in, that batch's Captum time
and the worker's torch.get_num_threads() (bookkeeping for the benchmark, cheap to send).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np
import torch
from captum.attr import GuidedBackprop
from ts.torch_handler.base_handler import BaseHandler


def _request(row: dict[str, Any]) -> dict[str, Any]:
    """One request's JSON: TorchServe decodes an application/json body into "body" (or
    "data"); raw bytes where it did not."""
    req = row.get("data") or row.get("body")
    if isinstance(req, (bytes, bytearray)):
        req = json.loads(req)
    if not isinstance(req, dict):
        raise ValueError("expected a JSON object body")
    return req


class GuidedBackpropHandler(BaseHandler):
    """BaseHandler loads the model (model file + state dict); this adds guided backprop."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.guided_backprop = GuidedBackprop(self.model)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        images = []
        for row in data:
            req = _request(row)
            raw = np.frombuffer(base64.b64decode(req["data"]), dtype="<f4")
            images.append(torch.from_numpy(raw.reshape(req["shape"]).copy()))
        return torch.stack(images).to(self.device)

    def explain_handle(
        self, data_preprocess: torch.Tensor, raw_data: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        targets = [int(_request(row)["target"]) for row in raw_data]
        t0 = time.perf_counter()
        attributions = self.guided_backprop.attribute(data_preprocess, target=targets)
        compute_ms = (time.perf_counter() - t0) * 1000
        arrays = attributions.detach().cpu().numpy().astype("<f4")
        threads = torch.get_num_threads()
        return [
            {
                "shape": list(a.shape),
                "dtype": "float32",
                "data": base64.b64encode(a.tobytes()).decode("ascii"),
                "batch_size": len(raw_data),
                "compute_ms": round(compute_ms, 3),
                "torch_threads": threads,
            }
            for a in arrays
        ]
