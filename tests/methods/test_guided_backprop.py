"""Guided backpropagation served over gRPC equals Captum's, alone and in batches with mixed targets."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from captum.attr import NeuronGuidedBackprop

import deepvis
from oracles import TOL, captum_gbp, preprocess_digit, relative_error
from zoo import GUIDED_MODELS


def test_digits_samples_equal_captum(digits_server, digits_twin, sample_paths) -> None:
    assert len(sample_paths) == 10
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        for path in sample_paths:
            label = int(path.stem.split("_")[1])
            res = client.explain(str(path), model="digits", method="guided_backprop")
            x = preprocess_digit(path)
            # Unset target: the predicted class, which for these samples is the label.
            assert res.target == label
            assert res.predictions[0].index == label
            assert res.array is not None and res.array.shape == (1, 32, 32)
            assert relative_error(res.array, captum_gbp(digits_twin, x, label)) <= TOL
            # The picture is the map at its own size, RGB: no enlargement unasked.
            assert res.image is not None and res.image.size == (32, 32)
            assert res.image.mode == "RGB"


@pytest.mark.parametrize("name", GUIDED_MODELS)
def test_torchvision_models_equal_captum_with_mixed_targets(zoo, name) -> None:
    server, twins = zoo
    twin = twins[name]
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(twin.input_shape).astype(np.float32) for _ in range(6)]
    targets = [0, 3, 7, None, 9, 3]
    with deepvis.Client(server.bound_address, timeout=60) as client:
        results: list = [None] * len(xs)

        def call(i: int) -> None:
            results[i] = client.explain(xs[i], model=name, target=targets[i], render=False)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(r.batch_size for r in results) > 1, "the concurrent calls never shared a batch"
    for x, target, res in zip(xs, targets, results, strict=False):
        expected_target = (
            target if target is not None else int(twin.module(torch.from_numpy(x)[None]).argmax())
        )
        assert res.target == expected_target
        assert relative_error(res.array, captum_gbp(twin.module, x, expected_target)) <= TOL


def test_eight_clients_share_a_batch_and_match_solo(zoo, digits_server, sample_paths) -> None:
    """8 clients on 8 channels, 8 different targets: one batch of 8, each equal to its solo run."""
    server, _ = zoo
    images = [str(p) for p in sample_paths[:8]]
    targets = [(i * 3 + 1) % 10 for i in range(8)]
    batched: list = [None] * 8
    barrier = threading.Barrier(8)

    def call(i: int) -> None:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            barrier.wait()
            batched[i] = client.explain(images[i], model="digits_gated", target=targets[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.batch_size for r in batched] == [8] * 8
    with deepvis.Client(digits_server.bound_address, timeout=30) as solo_client:
        for i in range(8):
            solo = solo_client.explain(images[i], model="digits", target=targets[i])
            assert solo.batch_size == 1
            assert batched[i].target == targets[i]
            assert relative_error(batched[i].array, solo.array) <= TOL


def test_neuron_target_equals_captum_neuron_guided_backprop(zoo) -> None:
    server, twins = zoo
    twin = twins["resnet18"].module
    x = np.random.default_rng(2).standard_normal((3, 64, 64)).astype(np.float32)
    cases = [deepvis.Neuron("layer2.0.conv1", 5, 3, 4), deepvis.Neuron("layer3", 7)]
    with deepvis.Client(server.bound_address, timeout=60) as client:
        for neuron in cases:
            res = client.explain(x, model="resnet18", target=neuron, render=False)
            layer = dict(twin.named_modules())[neuron.layer]
            selector = (
                (neuron.channel, neuron.y, neuron.x)
                if neuron.y is not None
                else (neuron.channel, slice(None), slice(None))
            )
            ref = NeuronGuidedBackprop(twin, layer).attribute(
                torch.from_numpy(x)[None].clone(), selector
            )
            assert res.target == neuron
            assert relative_error(res.array, ref[0].numpy()) <= TOL


def test_functional_relu_matches_module_relu_twin(zoo) -> None:
    server, _ = zoo
    x = np.random.default_rng(3).standard_normal((3, 16, 16)).astype(np.float32)
    with deepvis.Client(server.bound_address, timeout=30) as client:
        a = client.explain(x, model="module_relu", target=2, render=False).array
        b = client.explain(x, model="functional_relu", target=2, render=False).array
    plain = client_free_plain_gradient(zoo[1]["module_relu"].module, x, 2)
    assert relative_error(b, a) <= TOL
    # And the rule really applied: a plain gradient differs from the guided one.
    assert relative_error(plain, a) > 1e-2


def client_free_plain_gradient(model: torch.nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    xt = torch.from_numpy(x)[None].clone().requires_grad_(True)
    with torch.enable_grad():
        model(xt)[0, target].backward()
    assert xt.grad is not None
    return xt.grad[0].numpy()


def _hook_count(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in module.modules()
    )


def test_forced_error_in_batch_fails_only_its_item_and_leaves_no_hook(zoo) -> None:
    from toy_models import POISON

    server, _ = zoo
    served = server.engine.models["faulty"]
    before = {k: v.clone() for k, v in served.module.state_dict().items()}
    types_before = [type(m) for m in served.module.modules()]
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((3, 16, 16)).astype(np.float32) for _ in range(6)]
    xs[2][0, 5, 5] = POISON
    # A neuron target registers a forward hook: the error fires after it, mid-forward.
    target = deepvis.Neuron("conv2", 1)
    results: list = [None] * 6

    def call(i: int) -> None:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            try:
                results[i] = client.explain(xs[i], model="faulty", target=target, render=False)
            except deepvis.DeepvisError as e:
                results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[2], deepvis.Internal), results[2]
    for i in (0, 1, 3, 4, 5):
        assert isinstance(results[i], deepvis.Explanation), results[i]
        assert np.abs(results[i].array).max() > 0
    assert _hook_count(served.module) == 0
    assert [type(m) for m in served.module.modules()] == types_before
    after = served.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in served.module.parameters())
    # No dispatch mode is left on the device thread either (model loading records ops with one).
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    stack = server.engine.device_executor.submit(_get_current_dispatch_mode_stack).result()
    assert stack == []
