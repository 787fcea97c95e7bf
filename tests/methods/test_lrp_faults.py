"""A forced error inside an LRP batch, on a model whose batch norms LRP folds: the failing item
alone fails; the served model and LRP's folded copy keep their weights, buffers and no hook;
the copy is reused, not rebuilt; and later answers equal the earlier ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deepvis
from deepvis_server.config import parse_config
from deepvis_server.methods import REGISTRY, Lrp
from deepvis_server.server import DeepvisServer, serve_in_thread
from leftovers import hooks_and_grads
from oracles import relative_error
from toy_models import POISON, FaultyBatchNormNet
from zoo import randomize_batch_norms

TARGETS = [3, None, 2, 1]
SETTINGS: list[dict[str, Any]] = [
    {},
    {"composite": "deep_taylor"},
    {"composite": "epsilon_gamma_box", "gamma": 0.5},
    {"smooth": deepvis.Smooth(samples=2, noise=0.1, seed=1)},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeepvisServer]:
    root = tmp_path_factory.mktemp("faulty_bn")
    torch.manual_seed(3)
    model = FaultyBatchNormNet().eval()
    randomize_batch_norms(model, torch.Generator().manual_seed(3))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "m.safetensors")
    )
    table = {
        "name": "faulty_bn",
        "arch": "toy_models:FaultyBatchNormNet",
        "weights": str(root / "m.safetensors"),
        "num_classes": 4,
        "input_size": [16, 16],
        "max_batch_size": 8,
        "max_delay_ms": 20.0,
    }
    with serve_in_thread(parse_config({"models": [table]}, root), "127.0.0.1:0") as s:
        yield s


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


def test_a_forced_error_leaves_the_model_and_its_folded_copy_as_they_were(server) -> None:
    model = server.engine.models["faulty_bn"]
    lrp = REGISTRY["lrp"]
    assert isinstance(lrp, Lrp)
    xs = np.random.default_rng(4).standard_normal((4, 3, 16, 16)).astype(np.float32)
    poisoned = xs.copy()
    poisoned[2, 0, 5, 5] = POISON
    with deepvis.Client(server.bound_address, timeout=120) as client:

        def alone(i: int, **kw: Any) -> np.ndarray:
            r = client.explain(xs[i], model="faulty_bn", method="lrp", target=TARGETS[i],
                               render=False, **kw)  # fmt: skip
            assert r.array is not None
            return r.array

        before = [[alone(i, **kw) for i in range(4)] for kw in SETTINGS]
        view = lrp.models.get(model)
        assert [bn for _, bn in view.folded] == ["bn1", "bn2"]
        assert view.module is not model.module
        served_state, copy_state = snapshot(model.module), snapshot(view.module)
        for kw, expected in zip(SETTINGS, before, strict=True):
            results = client.explain_batch(
                list(poisoned), model="faulty_bn", method="lrp", targets=TARGETS,
                render=False, return_errors=True, **kw,
            )  # fmt: skip
            assert isinstance(results[2], deepvis.Internal), (kw, results[2])
            for i in (0, 1, 3):
                r = results[i]
                assert isinstance(r, deepvis.Explanation), (kw, i, r)
                assert r.array is not None
                assert relative_error(r.array, expected[i]) <= 1e-5, (kw, i)
        after = [[alone(i, **kw) for i in range(4)] for kw in SETTINGS]
    for kw, b, a in zip(SETTINGS, before, after, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(b, a, strict=True)), kw
    assert lrp.models.get(model) is view  # the same copy, kept
    assert hooks_and_grads(model.module) == [] and hooks_and_grads(view.module) == []
    assert same(model.module, served_state) and same(view.module, copy_state)
    # The served module still has its batch norms, unfolded.
    assert isinstance(model.module.bn1, torch.nn.BatchNorm2d)
    assert isinstance(model.module.bn2, torch.nn.BatchNorm2d)
