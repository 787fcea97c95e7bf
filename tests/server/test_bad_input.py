"""Bad input gets a precise status, never crashes the server, and images of every mode are
converted to what the model expects."""

from __future__ import annotations

import io
import struct
import zlib
from typing import cast

import grpc
import numpy as np
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import load_config
from deepvis_server.server import serve_in_thread

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def first_layer(client: deepvis.Client, input, model: str = "digits") -> np.ndarray:
    """conv1's activations: a function of the preprocessed input, so equal activations mean
    equal preprocessing."""
    result = client.explain(input, model=model, method="activations", layer="conv1", render=False)
    assert result.array is not None
    return result.array


def digit(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.mark.parametrize(
    ("channels", "shape"),
    [
        (1, (32, 32)),
        (1, (32, 32, 1)),
        (1, (32, 32, 3)),  # RGB for a grayscale model: luminance, through PIL
        (3, (32, 32, 3)),
        (3, (32, 32, 4)),  # RGBA for an RGB model: alpha dropped, through PIL
        (3, (32, 32)),  # grayscale for an RGB model: replicated, through PIL
        (3, (20, 24, 3)),  # another size: resized, through PIL
    ],
)
def test_pixel_arrays_become_the_same_tensor_as_their_pil_image(channels, shape) -> None:
    """Pixels already at the model's channels and size skip PIL: the same uint8 tensor."""
    from dataclasses import replace

    from deepvis_server.preprocess import Limits, RawInput, image_to_tensor, input_to_tensor

    spec = replace(load_config().models[0], channels=channels, input_size=(32, 32))
    arr = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    raw = RawInput(kind="pixels", data=arr.tobytes(), dtype="uint8", shape=shape)
    limits = Limits(max_image_pixels=1 << 20, max_tensor_elements=1 << 20)
    got, region = input_to_tensor(raw, spec, limits)
    squeezed = arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    expected, expected_region = image_to_tensor(Image.fromarray(squeezed), spec, limits)
    assert region == expected_region == (0.0, 0.0, float(shape[1]), float(shape[0]))
    assert got.dtype == torch.uint8 and got.shape == (channels, 32, 32)
    assert torch.equal(got, expected)
    if channels == 3 and shape == (32, 32, 3):
        assert torch.equal(got, torch.from_numpy(arr).permute(2, 0, 1))  # and not via PIL


def test_image_modes_are_converted_to_the_model_input(digits_server, zoo) -> None:
    g = digit(1)
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        base = first_layer(client, g)
        # 16-bit grayscale: the full 0..65535 range maps onto 0..255.
        i16 = Image.fromarray(g.astype(np.uint16) * 257)  # mode I;16
        assert np.allclose(first_layer(client, png(i16)), base, atol=1e-5)
        # RGB with equal channels, RGBA (alpha dropped), palette: their luminance.
        rgb = np.stack([g, g, g], axis=2)
        assert np.allclose(first_layer(client, png(Image.fromarray(rgb))), base, atol=1e-5)
        rgba = np.dstack([rgb, np.full_like(g, 7)])
        assert np.allclose(first_layer(client, png(Image.fromarray(rgba))), base, atol=1e-5)
        pal = Image.fromarray(rgb).quantize(colors=256)
        expected = np.asarray(pal.convert("RGB").convert("L"))
        assert np.allclose(first_layer(client, png(pal)), first_layer(client, expected), atol=1e-5)
        # CMYK (JPEG): converted to RGB, then luminance.
        cmyk = Image.fromarray(rgb).convert("CMYK")
        data = png(cmyk, format="JPEG", quality=100)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").convert("L"))
        assert np.allclose(first_layer(client, data), first_layer(client, expected), atol=1e-5)
        # GIF: the first frame.
        frames = [Image.fromarray(g).convert("P"), Image.fromarray(255 - g).convert("P")]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
        first = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
        assert np.allclose(
            first_layer(client, buf.getvalue()), first_layer(client, first), atol=1e-5
        )
    # A 3-channel model gets grayscale replicated to RGB.
    server, _ = zoo
    g64 = digit(2, 64)
    with deepvis.Client(server.bound_address, timeout=60) as client:
        a = first_layer(client, png(Image.fromarray(g64)), "resnet18")
        b = first_layer(client, np.stack([g64] * 3, axis=2), "resnet18")
    assert np.allclose(a, b, atol=1e-5)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    data = bytearray(png(Image.new("L", (1, 1))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def tensor(dtype: int, shape: list[int], data: bytes) -> pb.Input:
    # Any number, as another language may send it: not only the DType enum's.
    return pb.Input(tensor=pb.Tensor(dtype=cast("pb.DType", dtype), shape=shape, data=data))


good_png = png(Image.fromarray(digit(3)))
nan_tensor = np.zeros((1, 32, 32), np.float32)
nan_tensor[0, 3, 3] = np.nan
inf_tensor = np.zeros((1, 32, 32), np.float32)
inf_tensor[0, 0, 0] = np.inf

BAD_INPUTS = [
    (pb.Input(image=b""), "empty"),
    (pb.Input(image=good_png[: len(good_png) // 2]), "could not be decoded"),
    (pb.Input(image=b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "PNG"),
    (pb.Input(image=bomb_png(100_000, 100_000)), "at most 16777216"),
    (pb.Input(image=bomb_png(5_000, 5_000)), "at most 16777216"),
    (pb.Input(image=png(Image.fromarray(digit(4)), format="TIFF")), "is not a PNG, JPEG"),
    (pb.Input(image=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "is not a PNG, JPEG"),
    (tensor(pb.DTYPE_FLOAT32, [1, 32, 32], nan_tensor.tobytes()), "NaN or Inf"),
    (tensor(pb.DTYPE_FLOAT32, [1, 32, 32], inf_tensor.tobytes()), "NaN or Inf"),
    (tensor(pb.DTYPE_FLOAT32, [32, 32], bytes(4096)), "[1, 32, 32]"),
    (tensor(pb.DTYPE_FLOAT32, [1, 32, 32, 1], bytes(4096)), "[1, 32, 32]"),
    (tensor(pb.DTYPE_UINT8, [1, 32, 32], bytes(1024)), "FLOAT32 or FLOAT16"),
    (tensor(pb.DTYPE_FLOAT32, [1, 32, 32], bytes(4095)), "needs 4096"),
    (tensor(pb.DTYPE_FLOAT32, [2**62, 2**62, 2**62], b""), "[1, 32, 32]"),
    (tensor(77, [1, 32, 32], bytes(4096)), "not a DType"),
    (pb.Input(pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2**40, 2**40], data=b"")), "pixels"),
    (
        pb.Input(pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32, 2], data=bytes(2048))),
        "C in 1, 3, 4",
    ),
    (
        pb.Input(pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[32, 32], data=bytes(10))),
        "needs 1024",
    ),
]


@pytest.mark.parametrize(("inp", "fragment"), BAD_INPUTS)
def test_bad_inputs_are_refused_with_the_field_named(digits_server, inp, fragment) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        req = pb.ExplainRequest(model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=inp)
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(req, timeout=30)
        err = info.value
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert fragment in err.details(), err.details()
        status = rpc_status.from_call(err)
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            bad = error_details_pb2.BadRequest()
            assert status is not None and status.details[0].Unpack(bad)
            assert bad.field_violations[0].field.startswith("input")
        # The server is still serving, and serves a good request next.
        good = pb.ExplainRequest(
            model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(image=good_png)
        )
        assert stub.Explain(good, timeout=30).array.shape == [1, 32, 32]


def test_message_size_limits_on_both_ends(tmp_path) -> None:
    import dataclasses

    config = load_config()
    config = dataclasses.replace(
        config, limits=dataclasses.replace(config.limits, max_message_bytes=1_000_000)
    )
    big = np.zeros((1500, 1500), np.uint8)  # 2.25 MB of pixels
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=30) as client:
            with pytest.raises(deepvis.ResourceExhausted):
                client.explain(big)  # the server refuses what it may not receive
            answer = client.explain(digit(5)).array
            assert answer is not None and answer.shape == (1, 32, 32)
        with deepvis.Client(server.bound_address, timeout=30, max_message_bytes=100_000) as small:
            with pytest.raises(deepvis.ResourceExhausted):
                small.explain(big)  # the client refuses to send past its own limit


# Everything a client can put in a request, valid or not.
layers = st.sampled_from(
    ["conv1", "conv3", "fc", "relu", "", "fc.weight", "__class__", "..x", "conv3.", "x" * 300]
)
tensors = st.builds(
    pb.Tensor,
    dtype=st.integers(0, 6),
    shape=st.lists(st.integers(-3, 2**63 - 1) | st.integers(0, 40), max_size=5),
    data=st.binary(max_size=5000),
)
inputs = st.one_of(
    st.builds(pb.Input, image=st.binary(max_size=300) | st.just(good_png)),
    st.builds(pb.Input, pixels=tensors),
    st.builds(pb.Input, tensor=tensors),
    st.just(pb.Input()),
)
targets = st.one_of(
    st.none(),
    st.builds(pb.Target, class_index=st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 12)),
    st.builds(
        pb.Target,
        neuron=st.builds(
            pb.Neuron, layer=layers, channel=st.integers(-(2**63), 2**63 - 1) | st.integers(0, 70)
        ),
    ),
)
requests = st.builds(
    pb.ExplainRequest,
    model=st.sampled_from(["digits", "", "nope", "digits\0"]),
    method=st.integers(-1, 8),
    input=inputs,
    target=targets,
    layers=st.lists(layers, max_size=4),
    output=st.builds(
        pb.OutputOptions,
        array_dtype=st.integers(0, 5),
        omit_array=st.booleans(),
        render=st.booleans(),
        top_k=st.integers(-5, 2**31 - 1),
    ),
    top_k_channels=st.integers(-5, 2**31 - 1),
)
# The statuses the README documents for Explain.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=requests)
def test_fuzzed_requests_get_documented_statuses(digits_server, req) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(digits_server.bound_address) as ch:
        try:
            pb_grpc.ExplainerStub(ch).Explain(req, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        assert code in DOCUMENTED, (code, req)
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_batch_of_pixels_is_normalised_as_the_plain_formula_whatever_each_item_layout() -> None:
    """Pixels off the wire are [C, H, W] views of channels-last memory, decoded images may be
    plain [C, H, W]; a batch of both, stacked channels-last and laid out on the device, is
    bit for bit (x / 255 - mean) / std of the items stacked as [N, C, H, W]. Float tensors
    pass as they are."""
    from deepvis_server.preprocess import batch_to_model_input, pixels_chw

    rng = np.random.default_rng(5)
    hwc = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    items = [pixels_chw(hwc[0]), pixels_chw(hwc[1]).contiguous(), pixels_chw(hwc[2])]
    assert not items[0].is_contiguous() and items[1].is_contiguous()
    mean = torch.tensor([0.4, 0.5, 0.6])[:, None, None]
    std = torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    got = batch_to_model_input(items, torch.device("cpu"), mean, std)
    chw = torch.stack([torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in hwc])
    expected = (chw.float() / 255.0 - mean) / std
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, expected)
    gray = [pixels_chw(rng.integers(0, 256, (6, 5), dtype=np.uint8)) for _ in range(2)]
    got = batch_to_model_input(gray, torch.device("cpu"), mean[:1], std[:1])
    assert torch.equal(got, (torch.stack(gray).float() / 255.0 - mean[:1]) / std[:1])
    floats = [torch.randn(3, 6, 5) for _ in range(2)]
    assert torch.equal(
        batch_to_model_input(floats, torch.device("cpu"), mean, std), torch.stack(floats)
    )
