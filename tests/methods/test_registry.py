"""Every method of the server's registry, checked the same way: the registry is the schema's
Method enum; on the digits model, a torchvision CNN and a torchvision ViT of the zoo, items
batched together equal each item alone, and the result has the shape deepvis.proto documents
for the method (a method made for some architectures only refuses the others); after an error
inside a batch the served model keeps no hook and no parameter needing grad.

The checks are parametrized by the registry, and the shape comes from the method's comment in
deepvis.proto, so a method added to both gets them without a line here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import descriptor_pb2

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis_server.methods import REGISTRY
from leftovers import hooks_and_grads
from oracles import relative_error
from toy_models import POISON

DESCRIPTOR_SET = Path(deepvis.__file__).parent / "v1" / "deepvis.binpb"
METHODS = sorted(REGISTRY, key=lambda name: pb.Method.Value(f"METHOD_{name.upper()}"))
# The zoo's torchvision model for these checks (the digits model is the other one).
TORCHVISION = "resnet18"
TARGETS = [3, None, 7, 1]  # mixed: three classes and the predicted one
# Methods made for some architectures: the zoo model they run on here; every other model
# refuses them with INVALID_ARGUMENT.
ONLY_ON = {"attention_rollout": "vit"}
# The model that fails mid-forward on POISON, by method (one the method serves).
FAULTY = {"attention_rollout": "faulty_vit"}
TOL = 1e-5
ATTEMPTS = 5


def method_comments() -> dict[str, str]:
    """The leading comment of each METHOD_ value in deepvis.proto, by registry name."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    (file,) = [f for f in files.file if f.name == "deepvis/v1/deepvis.proto"]
    (index,) = [i for i, e in enumerate(file.enum_type) if e.name == "Method"]
    comments = {}
    for loc in file.source_code_info.location:
        # [5: enum_type, index, 2: value, value index]
        if list(loc.path[:3]) == [5, index, 2] and len(loc.path) == 4:
            name = file.enum_type[index].value[loc.path[3]].name
            if name.startswith("METHOD_"):
                comments[name.removeprefix("METHOD_").lower()] = " ".join(
                    loc.leading_comments.split()
                )
    return comments


def documented_shape(method: str) -> list[str]:
    """The result's axes as the proto comment writes them, e.g. ["C", "H", "W"]."""
    comment = method_comments().get(method, "")
    found = re.search(r"\[([A-Za-z](?:, [A-Za-z])*)\]", comment)
    assert found, (
        f"deepvis.proto does not document the result shape of METHOD_{method.upper()} "
        f"(a comment such as 'Result [C, H, W]'): {comment!r}"
    )
    return found.group(1).split(", ")


def expected_shape(axes: list[str], info: deepvis.ModelInfo, layer: tuple[int, ...]) -> tuple:
    """[C, H, W] and [H, W]: the model's input; [C, h, w]: the (default) layer's map."""
    if any(a in ("h", "w") for a in axes):
        assert len(axes) == len(layer), (axes, layer)
        return tuple(layer)
    sizes = {"C": info.channels, "H": info.height, "W": info.width}
    return tuple(sizes[a] for a in axes)


@pytest.fixture(scope="module")
def models(zoo, digits_server) -> dict[str, tuple[str, str, np.ndarray, torch.device]]:
    """model key -> (address, model name, 4 inputs, the server's device)."""
    server, twins = zoo
    rng = np.random.default_rng(5)
    shape = twins[TORCHVISION].input_shape
    return {
        "digits": (
            digits_server.bound_address,
            "digits",
            rng.standard_normal((4, 1, 32, 32)).astype(np.float32),
            digits_server.engine.device,
        ),
        TORCHVISION: (
            server.bound_address,
            TORCHVISION,
            rng.standard_normal((4, *shape)).astype(np.float32),
            server.engine.device,
        ),
        "vit": (
            server.bound_address,
            "vit",
            rng.standard_normal((4, *twins["vit"].input_shape)).astype(np.float32),
            server.engine.device,
        ),
    }


def test_the_registry_is_the_schemas_method_enum() -> None:
    """Keys are the enum's METHOD_ names without the prefix, lowercased: each number once,
    whatever its aliases; and each registry method calls itself by its key."""
    names: dict[int, list[str]] = {}
    for value in pb.Method.DESCRIPTOR.values:
        names.setdefault(value.number, []).append(value.name)
    del names[pb.METHOD_UNSPECIFIED]
    schema = []
    for _, spellings in sorted(names.items()):
        (full,) = [n for n in spellings if n.startswith("METHOD_")]  # one per number
        schema.append(full.removeprefix("METHOD_").lower())
    assert sorted(REGISTRY) == sorted(schema)
    assert METHODS == schema  # in the enum's order
    assert all(method.name == key for key, method in REGISTRY.items())


@pytest.mark.parametrize("key", ["digits", TORCHVISION, "vit"])
@pytest.mark.parametrize("method", METHODS)
def test_a_batch_equals_its_items_alone_in_the_documented_shape(models, method, key) -> None:
    address, name, xs, device = models[key]
    if method in ONLY_ON and ONLY_ON[method] != key:
        with deepvis.Client(address, timeout=60) as client:
            with pytest.raises(deepvis.InvalidArgument, match=f"method {method} needs"):
                client.explain(xs[0], model=name, method=method)
        return
    with deepvis.Client(address, timeout=120) as client:
        # One call's items join one batch when they reach the batcher within its max_delay;
        # on a loaded machine one may come late, so a call whose batch split is sent again.
        for _ in range(ATTEMPTS):
            batched = client.explain_batch(
                list(xs), model=name, method=method, targets=TARGETS, render=False
            )
            if [r.batch_size for r in batched] == [4] * 4:
                break
        alone, again = (
            [
                client.explain(x, model=name, method=method, target=t, render=False)
                for x, t in zip(xs, TARGETS, strict=True)
            ]
            for _ in range(2)
        )
        info = next(m for m in client.models() if m.name == name)
        desc = client.describe(name)
    sizes = [r.batch_size for r in batched]
    assert sizes == [4] * 4, f"the 4 items never ran as one batch in {ATTEMPTS} calls: {sizes}"
    assert [r.batch_size for r in alone] == [1] * 4
    assert [r.target for r in batched] == [r.target for r in alone]
    layer = {x.name: x.map_shape for x in desc.layers}[desc.default_cam_layer]
    shape = expected_shape(documented_shape(method), info, layer)
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        assert b.array.shape == a.array.shape == shape, (i, b.array.shape, shape)
        assert np.abs(a.array).max() > 0, f"item {i} alone is all zeros"
        # Not bit for bit: the kernels a batch size picks round the last bits differently.
        err = relative_error(b.array, a.array)
        assert err <= TOL, f"item {i}: batched differs from alone by {err:.2e} of its max"
        # The same item alone again: bit for bit on the CPU, whose kernels are deterministic.
        if device.type == "cpu":
            assert np.array_equal(again[i].array, a.array), f"item {i} alone changed"
        else:
            assert relative_error(again[i].array, a.array) <= TOL, f"item {i} alone changed"


@pytest.mark.parametrize("method", METHODS)
def test_an_error_inside_a_batch_leaves_no_hook_and_no_grad(zoo, digits_server, method) -> None:
    server, twins = zoo
    name = FAULTY.get(method, "faulty")
    faulty = server.engine.models[name].module
    xs = np.random.default_rng(8).standard_normal((4, *twins[name].input_shape))
    xs = xs.astype(np.float32)
    xs[2, 0, 5, 5] = POISON  # FaultyNet raises after its first layer ran, hooks and all
    with deepvis.Client(server.bound_address, timeout=120) as client:
        results = client.explain_batch(
            list(xs), model=name, method=method, targets=[3, None, 2, 1], render=False,
            return_errors=True,
        )  # fmt: skip
    assert isinstance(results[2], deepvis.Internal), results[2]
    assert all(isinstance(results[i], deepvis.Explanation) for i in (0, 1, 3)), results
    assert hooks_and_grads(faulty) == []
    # The models of the batches above are as they were loaded, too.
    models = ("digits", TORCHVISION, "vit")
    for model in (
        digits_server.engine.models["digits"],
        *(server.engine.models[m] for m in models[1:]),
    ):
        assert hooks_and_grads(model.module) == [], model.name
