"""The server's pictures are the client's: every PNG it sends equals, pixel for pixel, what the
client draws locally from the raw float32 array of the same answer with the same options."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import deepvis
from deepvis import render


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A non-square digit-like photo: the server resizes it to the model's 32x32."""
    rng = np.random.default_rng(7)
    img = np.zeros((45, 70), np.uint8)
    img[8:38, 25:45] = 220
    img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("pictures") / "wide.png"
    Image.fromarray(img).save(path)
    return str(path)


CASES = [
    ("grad_cam", {}),  # over the photo, at its size
    ("grad_cam", {"overlay": False, "colorbar": True, "caption": True, "cmap": "viridis"}),
    ("guided_backprop", {}),
    ("guided_backprop", {"colorbar": True, "caption": True, "clip": None}),
    ("integrated_gradients", {"picture_size": (64, 48), "sign": "unsigned"}),
    ("saliency", {"overlay": True, "colorbar": True, "clip": 95.0}),
    ("deconvolution", {"cmap": "bwr", "caption": True}),
    ("guided_grad_cam", {"target": 3, "caption": True}),
]


@pytest.mark.parametrize(("method", "options"), CASES)
def test_the_servers_png_is_the_clients_local_drawing(
    digits_server, photo: str, method: str, options: dict[str, Any]
) -> None:
    opts = dict(options)
    target = opts.pop("target", None)
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        res = client.explain(photo, model="digits", method=method, target=target, **opts)
    assert res.image is not None and res.array is not None
    local = res.picture(
        overlay=opts.get("overlay"),  # type: ignore[arg-type]
        size=opts.get("picture_size"),  # type: ignore[arg-type]
        cmap=opts.get("cmap"),  # type: ignore[arg-type]
        clip=opts.get("clip", render.DEFAULT_CLIP),  # type: ignore[arg-type]
        sign=opts.get("sign"),  # type: ignore[arg-type]
        colorbar=bool(opts.get("colorbar")),
        caption=bool(opts.get("caption")),
    )
    assert res.image.size == local.image.size
    assert np.array_equal(pixels(res.image), pixels(local.image))
    if method == "grad_cam" and not options:
        assert res.image.size == (70, 45)  # the photo's own size


def test_activations_grid_and_heatmap_are_the_clients(digits_server, photo: str) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        res = client.explain(
            photo, model="digits", method="activations", layer="conv3", colorbar=True, caption=True
        )
    grid = res.grid(colorbar=True, caption=True)
    assert np.array_equal(pixels(res.images["conv3.grid"]), pixels(grid))
    assert res.image is not None and np.array_equal(pixels(res.image), pixels(grid))
    heat = res.overlay(colorbar=True, caption=True)
    assert np.array_equal(pixels(res.images["conv3.heatmap"]), pixels(heat))


def test_a_tensor_input_is_overlaid_on_its_own_pixels(digits_server, sample_paths) -> None:
    """Without an image, the overlay is laid on the model input denormalised; the client
    draws that image from the tensor as the server does."""
    from oracles import preprocess_digit

    x = preprocess_digit(sample_paths[3])
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        res = client.explain(x, model="digits", method="grad_cam")
    assert res.image is not None and res.image.size == (32, 32) and res.source is None
    info = deepvis.Client(digits_server.bound_address).models()[0]
    mean, std = np.float32(info.mean[0]), np.float32(info.std[0])
    shown = render.pixels_image(x * std + mean)
    local = res.overlay(shown)
    assert np.array_equal(pixels(res.image), pixels(local))


def test_a_flat_map_is_drawn_neutral_and_the_answer_says_so(digits_server, sample_paths) -> None:
    """A neuron that never fires has a zero gradient everywhere: no noise stretched over the
    colormap, its zero colour instead, and a warning in the answer and on local drawing."""
    from oracles import preprocess_digit

    # A conv3 channel that is zero everywhere on this digit (ReLU'd away; avgpool averages
    # it): its gradient is zero.
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        acts = client.explain(
            str(sample_paths[0]), model="digits", method="activations", layer="avgpool"
        )
        assert acts.array is not None
        dead = [c for c in range(acts.array.shape[0]) if not acts.array[c].any()]
        assert dead, "every conv3 channel fires on this digit"
        res = client.explain(
            preprocess_digit(sample_paths[0]),
            model="digits",
            method="guided_backprop",
            target=deepvis.Neuron("avgpool", dead[0]),
        )
    assert res.array is not None and not res.array.any()
    assert any("map is zero everywhere" in w for w in res.warnings), res.warnings
    assert res.image is not None
    neutral = render.colormap("RdBu_r")[127]
    assert (pixels(res.image) == neutral).all()
    with pytest.warns(render.FlatMapWarning, match="zero everywhere"):
        local = res.heatmap()
    assert np.array_equal(pixels(local), pixels(res.image))


def test_a_comparison_is_one_batch_drawn_on_shared_scales(digits_server, photo: str) -> None:
    methods = ["guided_backprop", "grad-cam", "integrated_gradients", "saliency"]
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        both = client.compare(photo, methods, model="digits")
        alone = {m: client.explain(photo, model="digits", method=m, render=False) for m in methods}
    assert both.methods == ["guided_backprop", "grad_cam", "integrated_gradients", "saliency"]
    for m, exp in alone.items():
        served = both[m].array
        assert exp.array is not None and served is not None
        np.testing.assert_allclose(served, exp.array, rtol=1e-5, atol=1e-7)
    # One ExplainBatch: the server batched them together (each its own method's batch).
    assert all(e.batch_size >= 1 for e in both)
    scales = both.scales()
    signed = [scales[m] for m in ("guided_backprop", "integrated_gradients")]
    unsigned = [scales[m] for m in ("grad_cam", "saliency")]
    assert signed[0].vmax == signed[1].vmax and signed[0].signed
    assert unsigned[0].vmax == unsigned[1].vmax and not unsigned[0].signed
    own = both.scales(None)
    assert signed[0].vmax == max(own["guided_backprop"].vmax, own["integrated_gradients"].vmax)
    heat = both.heatmaps()
    assert set(heat) == set(both.methods) and all(img.size == (32, 32) for img in heat.values())
    over = both.overlays()
    assert all(img.size == (70, 45) for img in over.values())
    composite = both.composite()
    assert composite.width > 4 * 70
    bundle = both._repr_mimebundle_()
    Image.open(io.BytesIO(__import__("base64").b64decode(bundle["image/png"]))).load()


def test_compare_refuses_repeated_or_unknown_methods(digits_server, photo: str) -> None:
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        with pytest.raises(ValueError, match="each method once"):
            client.compare(photo, ["grad_cam", "grad-cam"])
        with pytest.raises(ValueError, match="unknown method"):
            client.compare(photo, ["grad_cam", "lime"])
        with pytest.raises(TypeError, match="compare"):
            client.explain(photo, method=["grad_cam"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "overlay", "output"),
    [
        ("grad_cam", True, {}),
        ("integrated_gradients", False, {"colormap": "bwr", "clip_percentile": 95.0}),
        ("saliency", False, {"picture_width": 50, "picture_height": 30}),
    ],
)
def test_the_servers_png_bytes_are_a_local_render_of_the_wire_array(
    digits_server, photo: str, method: str, overlay: bool, output: dict[str, object]
) -> None:
    """Bit for bit, on the raw wire (the generated stub, no client library): the PNG the server
    sends is the very bytes deepvis.render encodes from the float32 array it sent beside it."""
    import grpc

    from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc

    data = Path(photo).read_bytes()
    request = deepvis_pb2.ExplainRequest(
        model="digits",
        method=deepvis_pb2.Method.Value(f"METHOD_{method.upper()}"),
        input=deepvis_pb2.Input(image=data),
        output=deepvis_pb2.OutputOptions(render=True, **output),  # type: ignore[arg-type]
    )
    with grpc.insecure_channel(digits_server.bound_address) as channel:
        resp = deepvis_pb2_grpc.ExplainerStub(channel).Explain(request, timeout=60)
    assert resp.array.dtype == deepvis_pb2.DTYPE_FLOAT32 and resp.image_png
    array = np.frombuffer(resp.array.data, "<f4").reshape(tuple(resp.array.shape))
    r = resp.input_region
    size = None
    if "picture_width" in output:
        size = (int(output["picture_width"]), int(output["picture_height"]))  # type: ignore[call-overload]
    opts = render.Options(
        size=size,
        cmap=output.get("colormap"),  # type: ignore[arg-type]
        clip=float(output.get("clip_percentile", render.DEFAULT_CLIP)),  # type: ignore[arg-type]
    )
    with Image.open(io.BytesIO(data)) as sent:
        local = render.draw(
            method,
            array,
            opts,
            image=sent.copy() if overlay else None,
            region=(r.x, r.y, r.width, r.height),
        )
    assert render.to_png(local.image) == resp.image_png
    with Image.open(io.BytesIO(resp.image_png)) as img:
        assert img.size == (size or ((70, 45) if overlay else (32, 32)))
