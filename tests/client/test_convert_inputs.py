"""What the client sends for each kind of input: files, bytes, PIL images, arrays."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deepvis import _convert
from deepvis.v1 import deepvis_pb2

from .fakes import (
    png_bytes,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


def test_input_path_and_pathlike_send_file_bytes(tmp_path: Path) -> None:
    data = png_bytes()
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    for value in (path, str(path)):
        msg = _convert.input_to_pb(value)
        assert msg.WhichOneof("kind") == "image"
        assert msg.image == data


def test_input_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _convert.input_to_pb(tmp_path / "missing.png")


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_input_bytes_like_sends_image(wrap: Any) -> None:
    data = png_bytes()
    msg = _convert.input_to_pb(wrap(data))
    assert msg.WhichOneof("kind") == "image"
    assert msg.image == data


def test_input_empty_bytes_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        _convert.input_to_pb(b"")


@pytest.mark.parametrize(
    ("mode", "shape"), [("L", [4, 5]), ("RGB", [4, 5, 3]), ("RGBA", [4, 5, 4])]
)
def test_input_pil_pixel_modes_send_uint8_pixels(mode: str, shape: list[int]) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    msg = _convert.input_to_pb(Image.fromarray(arr, mode))
    assert msg.WhichOneof("kind") == "pixels"
    assert msg.pixels.dtype == deepvis_pb2.DTYPE_UINT8
    assert list(msg.pixels.shape) == shape
    assert msg.pixels.data == arr.tobytes()


def test_input_pil_palette_sent_as_png() -> None:
    img = Image.new("P", (5, 4))
    img.putpalette([0, 0, 0, 255, 0, 0] * 128)
    msg = _convert.input_to_pb(img)
    assert msg.WhichOneof("kind") == "image"
    decoded = Image.open(io.BytesIO(msg.image))
    assert decoded.format == "PNG"
    assert decoded.mode == "P"
    assert decoded.size == (5, 4)


def test_input_pil_mode_png_cannot_hold_is_converted_to_pixels() -> None:
    msg = _convert.input_to_pb(Image.new("CMYK", (5, 4)))
    assert msg.WhichOneof("kind") == "pixels"
    assert list(msg.pixels.shape) == [4, 5, 3]


@pytest.mark.parametrize("shape", [[4, 5], [4, 5, 1], [4, 5, 3], [4, 5, 4]])
def test_input_uint8_array_sends_pixels(shape: list[int]) -> None:
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    msg = _convert.input_to_pb(arr)
    assert msg.WhichOneof("kind") == "pixels"
    assert msg.pixels.dtype == deepvis_pb2.DTYPE_UINT8
    assert list(msg.pixels.shape) == shape
    assert msg.pixels.data == arr.tobytes()


def test_input_non_contiguous_array_sent_in_c_order() -> None:
    base = np.arange(4 * 10 * 3, dtype=np.uint8).reshape(4, 10, 3)
    view = base[:, ::2]
    msg = _convert.input_to_pb(view)
    assert list(msg.pixels.shape) == [4, 5, 3]
    assert msg.pixels.data == np.ascontiguousarray(view).tobytes()


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [(np.float32, deepvis_pb2.DTYPE_FLOAT32), (np.float16, deepvis_pb2.DTYPE_FLOAT16)],
)
def test_input_float_chw_sends_tensor(dtype: Any, wire: int) -> None:
    arr = np.linspace(-2, 2, 3 * 4 * 5).astype(dtype).reshape(3, 4, 5)
    msg = _convert.input_to_pb(arr)
    assert msg.WhichOneof("kind") == "tensor"
    assert msg.tensor.dtype == wire
    assert list(msg.tensor.shape) == [3, 4, 5]
    assert msg.tensor.data == arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def test_input_big_endian_float_sent_little_endian() -> None:
    arr = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    msg = _convert.input_to_pb(arr)
    assert msg.tensor.dtype == deepvis_pb2.DTYPE_FLOAT32
    back = np.frombuffer(msg.tensor.data, dtype="<f4").reshape(2, 3, 4)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.zeros((3, 4, 5), np.float64), TypeError, "float32"),
        (np.zeros((4, 5), np.int32), TypeError, "uint8"),
        (np.zeros((4, 5), np.bool_), TypeError, "uint8"),
        (np.zeros((4, 5, 2), np.uint8), ValueError, r"\[H, W, C\]"),
        (np.zeros((1, 4, 5, 3), np.uint8), ValueError, r"\[H, W\]"),
        (np.zeros((0, 5), np.uint8), ValueError, "empty"),
        (np.zeros((4, 5), np.float32), ValueError, r"\[C, H, W\]"),
        (np.zeros((1, 3, 4, 5), np.float16), ValueError, r"\[C, H, W\]"),
        ([[0, 1], [2, 3]], TypeError, "file path"),
        (42, TypeError, "PIL image"),
    ],
)
def test_input_rejected(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _convert.input_to_pb(value)
