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
from deepvis_server.server import DeepvisServer
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
# Each method with its default options, then the options that change what runs: LRP's rule
# sets, integrated gradients' quadratures and baselines, and SmoothGrad over each method that
# takes it (its copies are rows of the batch: they too must batch like they run alone).
VARIANTS: list[tuple[str, dict]] = [(m, {}) for m in METHODS] + [
    ("lrp", {"composite": "epsilon_gamma_box", "gamma": 0.5, "epsilon": 1e-3}),
    ("lrp", {"composite": "deep_taylor"}),
    ("lrp", {"composite": "epsilon_alpha2_beta1_flat"}),
    (
        "integrated_gradients",
        {
            "integrated_gradients": deepvis.IntegratedGradients(
                steps=6, method="riemann_trapezoid", baseline="blur"
            )
        },
    ),
    (
        "integrated_gradients",
        {
            "integrated_gradients": deepvis.IntegratedGradients(
                steps=6, method="expected_gradients", baseline="uniform", samples=2, seed=3
            )
        },
    ),
    *[
        (m, {"smooth": deepvis.Smooth(samples=3, kind=kind, seed=9)})
        for m, kind in [
            ("guided_backprop", "smoothgrad"),
            ("deconvolution", "smoothgrad_sq"),
            ("saliency", "vargrad"),
            ("input_x_gradient", "smoothgrad"),
            ("lrp", "smoothgrad"),
            ("integrated_gradients", "vargrad"),
        ]
    ],
]
VARIANT_IDS = [
    m
    + "".join(
        f"-{k}={getattr(v, 'kind', None) or getattr(v, 'method', None) or v}" for k, v in kw.items()
    )
    for m, kw in VARIANTS
]


def test_every_smoothable_method_and_option_group_has_a_variant() -> None:
    """The table above covers SmoothGrad on every method that takes it, and every option
    group (LRP's, integrated gradients')."""
    smoothed = {m for m, kw in VARIANTS if "smooth" in kw}
    assert smoothed == {n for n, m in REGISTRY.items() if m.smoothable}
    assert {"lrp", "integrated_gradients"} <= {m for m, kw in VARIANTS if kw and "smooth" not in kw}


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


def served(request: pytest.FixtureRequest, key: str) -> tuple[DeepvisServer, str, np.ndarray]:
    """(the server, model name, 4 inputs) for a model key; the zoo is built only when asked
    for, so the digits checks run without it (`make test-fast`)."""
    rng = np.random.default_rng(5)
    if key == "digits":
        server = request.getfixturevalue("digits_server")
        return server, "digits", rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
    server, twins = request.getfixturevalue("zoo")
    shape = twins[key].input_shape  # TORCHVISION, or "vit"
    return server, key, rng.standard_normal((4, *shape)).astype(np.float32)


@pytest.mark.fast
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


@pytest.mark.parametrize(
    "key", [pytest.param("digits", marks=pytest.mark.fast), TORCHVISION, "vit"]
)
@pytest.mark.parametrize(("method", "options"), VARIANTS, ids=VARIANT_IDS)
def test_a_batch_equals_its_items_alone_in_the_documented_shape(
    request, method, options, key
) -> None:
    server, name, xs = served(request, key)
    device = server.engine.device
    if method in ONLY_ON and ONLY_ON[method] != key:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            with pytest.raises(deepvis.InvalidArgument, match=f"method {method} needs"):
                client.explain(xs[0], model=name, method=method)
        return
    with deepvis.Client(server.bound_address, timeout=120) as client:
        # One call's items join one batch when they reach the batcher within its max_delay;
        # on a loaded machine one may come late, so a call whose batch split is sent again.
        for _ in range(ATTEMPTS):
            batched = client.explain_batch(
                list(xs), model=name, method=method, targets=TARGETS, render=False, **options
            )
            if [r.batch_size for r in batched] == [4] * 4:
                break
        alone, again = (
            [
                client.explain(x, model=name, method=method, target=t, render=False, **options)
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
    for i, (b, a, a2) in enumerate(zip(batched, alone, again, strict=True)):
        assert b.array is not None and a.array is not None and a2.array is not None
        assert b.array.shape == a.array.shape == shape, (i, b.array.shape, shape)
        assert np.abs(a.array).max() > 0, f"item {i} alone is all zeros"
        # Not bit for bit: the kernels a batch size picks round the last bits differently.
        err = relative_error(b.array, a.array)
        # Deep Taylor's z+ rule divides by sums of positive contributions only, which a
        # residual network's deep layers make small: it amplifies those last-bit differences.
        tol = 5e-5 if options.get("composite") == "deep_taylor" else TOL
        assert err <= tol, f"item {i}: batched differs from alone by {err:.2e} of its max"
        # The same item alone again: bit for bit on the CPU, whose kernels are deterministic.
        if device.type == "cpu":
            assert np.array_equal(a2.array, a.array), f"item {i} alone changed"
        else:
            assert relative_error(a2.array, a.array) <= TOL, f"item {i} alone changed"


@pytest.mark.parametrize(("method", "options"), VARIANTS, ids=VARIANT_IDS)
def test_an_error_inside_a_batch_leaves_no_hook_and_no_grad(
    zoo, digits_server, method, options
) -> None:
    """No hook, no parameter needing grad, no changed weight or buffer; and no mode left on
    the device thread: a plain gradient afterwards is what it was before (LRP's rules live in
    a torch function mode there, for one forward pass)."""
    server, twins = zoo
    name = FAULTY.get(method, "faulty")
    faulty = server.engine.models[name].module
    weights = {k: v.clone() for k, v in faulty.state_dict().items()}
    xs = np.random.default_rng(8).standard_normal((4, *twins[name].input_shape))
    xs = xs.astype(np.float32)
    with deepvis.Client(server.bound_address, timeout=120) as client:

        def plain() -> np.ndarray:
            array = client.explain(
                xs[0], model=name, method="saliency", target=1, render=False
            ).array
            assert array is not None
            return array

        before = plain()
        xs[2, 0, 5, 5] = POISON  # FaultyNet raises after its first layer ran, hooks and all
        results = client.explain_batch(
            list(xs), model=name, method=method, targets=[3, None, 2, 1], render=False,
            return_errors=True, **options,
        )  # fmt: skip
        after = plain()
    assert isinstance(results[2], deepvis.Internal), results[2]
    assert all(isinstance(results[i], deepvis.Explanation) for i in (0, 1, 3)), results
    assert hooks_and_grads(faulty) == []
    state = faulty.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert np.array_equal(after, before)
    # The models of the batches above are as they were loaded, too.
    models = ("digits", TORCHVISION, "vit")
    for model in (
        digits_server.engine.models["digits"],
        *(server.engine.models[m] for m in models[1:]),
    ):
        assert hooks_and_grads(model.module) == [], model.name
