"""On a CUDA device: the served methods still equal Captum's CPU results (run with -m gpu)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam
from safetensors.torch import save_file

import deepvis
from deepvis_server.config import parse_config
from deepvis_server.server import serve_in_thread
from oracles import relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_resnet50_on_cuda_equals_captum_on_cpu(tmp_path) -> None:
    torch.manual_seed(0)
    twin = torchvision.models.resnet50(num_classes=10).eval()
    save_file(
        {k: v.contiguous() for k, v in twin.state_dict().items()}, str(tmp_path / "r50.safetensors")
    )
    config = parse_config(
        {
            "server": {"device": "cuda"},
            "models": [
                {
                    "name": "r50",
                    "arch": "resnet50",
                    "weights": "r50.safetensors",
                    "num_classes": 10,
                    "input_size": [96, 96],
                    "max_batch_size": 16,
                    "max_delay_ms": 5.0,
                }
            ],
        },
        tmp_path,
    )
    xs = np.random.default_rng(0).standard_normal((8, 3, 96, 96)).astype(np.float32)
    targets = [1, 2, 3, None, 5, 6, 7, 8]
    with serve_in_thread(config, "127.0.0.1:0") as server:
        assert server.engine.device.type == "cuda"
        results: dict[str, list] = {"guided_backprop": [None] * 8, "grad_cam": [None] * 8}
        with deepvis.Client(server.bound_address, timeout=120) as client:

            def call(method: str, i: int) -> None:
                results[method][i] = client.explain(
                    xs[i], model="r50", method=method, target=targets[i], render=False
                )

            threads = [
                threading.Thread(target=call, args=(m, i)) for m in results for i in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    batch = torch.from_numpy(xs)
    with torch.no_grad():
        predicted = twin(batch).argmax(1).tolist()
    resolved = [t if t is not None else p for t, p in zip(targets, predicted, strict=True)]
    gbp = GuidedBackprop(twin).attribute(batch.clone(), target=resolved).numpy()
    served = np.stack([r.array for r in results["guided_backprop"]])
    assert [r.target for r in results["guided_backprop"]] == resolved
    assert max(r.batch_size for r in results["guided_backprop"]) > 1
    # GPU and CPU kernels sum in different orders: a looser bound than the CPU tests' 1e-5.
    assert relative_error(served, gbp) <= 1e-4
    raw = LayerGradCam(twin, twin.layer4).attribute(
        batch.clone(), target=resolved, relu_attributions=True
    )
    up = LayerAttribution.interpolate(raw.detach(), (96, 96), interpolate_mode="bilinear")[
        :, 0
    ].numpy()
    assert relative_error(np.stack([r.array for r in results["grad_cam"]]), up) <= 1e-4
