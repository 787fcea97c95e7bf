"""Turns a request's input (encoded image, raw pixels or a model tensor) into a model input tensor."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from deepvis.render import eight_bit

from .config import Limits, ModelSpec
from .errors import InvalidArgument, ResourceExhausted

# Formats Pillow decodes in-process; none of them hands the file to an external program
# (EPS and friends would run Ghostscript).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


@dataclass(frozen=True)
class RawInput:
    """The input as it came off the wire, before any decoding."""

    kind: str  # "image" | "pixels" | "tensor"
    data: bytes
    dtype: str = ""  # "float32" | "float16" | "uint8" for pixels and tensor
    shape: tuple[int, ...] = ()


_NP_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
}


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """Decodes an encoded image fully, checking format and size before the pixels are read."""
    if not data:
        raise InvalidArgument(
            "input.image is empty; send the bytes of a PNG, JPEG, WebP, BMP or GIF file",
            field="input.image",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            if w * h > limits.max_image_pixels:
                # Checked on the header, before a single pixel is decompressed (bombs).
                raise InvalidArgument(
                    f"input.image is {w}x{h} = {w * h} pixels; at most {limits.max_image_pixels} "
                    "allowed (resize it before sending)",
                    field="input.image",
                )
            img.seek(0)  # GIF: the first frame
            img.load()
    except (ResourceExhausted, InvalidArgument):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidArgument(
            f"input.image has too many pixels; at most {limits.max_image_pixels} allowed ({e})",
            field="input.image",
        ) from None
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"input.image is not a {', '.join(ALLOWED_FORMATS)} file (those are the formats served)",
            field="input.image",
        ) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        raise InvalidArgument(
            f"input.image could not be decoded as {', '.join(ALLOWED_FORMATS)} ({type(e).__name__}: {e})",
            field="input.image",
        ) from None
    return img


def to_model_mode(img: Image.Image, channels: int) -> Image.Image:
    """Converts any decoded mode (palette, 16-bit, CMYK, alpha, grayscale) to L or RGB."""
    if img.mode in _EIGHT_BIT_FIRST:
        # 16- and 32-bit samples scaled over their full range (Pillow's own conversion clips
        # at 255), palettes expanded: as the pictures' renderer reads them too.
        img = eight_bit(img)
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return img


_EIGHT_BIT_FIRST = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "P")


def pixels_array(raw: RawInput, limits: Limits) -> np.ndarray:
    """Checks uint8 [H, W] or [H, W, C] pixels (C in 1, 3, 4) and views them, without a copy:
    [H, W] for one channel, [H, W, C] otherwise."""
    if raw.dtype != "uint8":
        raise InvalidArgument(
            f"input.pixels.dtype must be UINT8, got {raw.dtype or 'unset'}",
            field="input.pixels.dtype",
        )
    shape = raw.shape
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InvalidArgument(
            f"input.pixels.shape must be [H, W] or [H, W, C] with C in 1, 3, 4; got {list(shape)}",
            field="input.pixels.shape",
        )
    if any(d <= 0 for d in shape):
        raise InvalidArgument(
            f"input.pixels.shape must be positive, got {list(shape)}", field="input.pixels.shape"
        )
    if shape[0] * shape[1] > limits.max_image_pixels:
        raise InvalidArgument(
            f"input.pixels has {shape[0] * shape[1]} pixels; at most {limits.max_image_pixels} allowed",
            field="input.pixels.shape",
        )
    expected = int(np.prod(shape))
    if len(raw.data) != expected:
        raise InvalidArgument(
            f"input.pixels.data has {len(raw.data)} bytes; shape {list(shape)} of UINT8 needs {expected}",
            field="input.pixels.data",
        )
    arr: np.ndarray = np.frombuffer(raw.data, dtype=np.uint8).reshape(shape)
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


# The part of an input the model sees, in the input's own pixels: x, y of the top-left
# corner, width, height.
Region = tuple[float, float, float, float]


def whole(width: float, height: float) -> Region:
    return (0.0, 0.0, float(width), float(height))


def image_to_tensor(
    img: Image.Image, spec: ModelSpec, limits: Limits
) -> tuple[torch.Tensor, Region]:
    """Converts to the model's input mode and brings the image to its input size: uint8
    pixels [C, H, W], and the region of the image they show.

    An image already at the input size is taken as it is. Any other is resized straight to
    it, or, when the model has `resize`, resized so that its shorter side is `resize` pixels
    and centre-cropped: what torchvision's evaluation transforms (Resize, CenterCrop) do, by
    the same PIL calls, so the pixels are the same. The resized picture may hold at most
    `limits.max_image_pixels` (a long, thin input would otherwise make a huge one).
    """
    img = to_model_mode(img, spec.channels)
    h, w = spec.input_size
    region = whole(*img.size)
    if img.size != (w, h):
        if spec.resize:
            img, region = _resize_and_crop(img, spec.resize, h, w, limits.max_image_pixels)
        else:
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    return pixels_chw(np.array(img)), region


def _resize_and_crop(
    img: Image.Image, short: int, h: int, w: int, max_pixels: int
) -> tuple[Image.Image, Region]:
    """torchvision's Resize(short) then CenterCrop((h, w)) on a PIL image (`short` is at least
    h and w, so the crop always fits), and the crop box in the original image's pixels."""
    width, height = img.size
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    if new_w * new_h > max_pixels:
        raise InvalidArgument(
            f"the input is {width}x{height}: with its shorter side resized to {short} pixels, "
            f"as this model's preprocessing does before the centre crop, it would be "
            f"{new_w}x{new_h} = {new_w * new_h} pixels; at most {max_pixels} allowed (crop it "
            "closer to a square before sending)",
            field="input",
        )
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - h) / 2.0)), int(round((new_w - w) / 2.0))
    sx, sy = width / new_w, height / new_h
    region = (left * sx, top * sy, w * sx, h * sy)
    return img.crop((left, top, left + w, top + h)), region


def pixels_chw(pixels: np.ndarray) -> torch.Tensor:
    """Writable uint8 [H, W] or [H, W, C] pixels as a uint8 tensor [C, H, W], without a copy:
    for several channels a view of the pixels' own [H, W, C] memory.

    Pixels stay uint8 and channels-last until the device: the batch is stacked as [N, H, W, C]
    (one plain copy per item), moved, and turned into normalised float32 [N, C, H, W] there,
    on the whole batch at once (`batch_to_model_input`).
    """
    t = torch.from_numpy(pixels)
    return t[None] if pixels.ndim == 2 else t.permute(2, 0, 1)


def wire_pixels(raw: RawInput, spec: ModelSpec, limits: Limits) -> torch.Tensor | None:
    """A pixel array already at the model's size and channels (the usual case for a client
    that resized) as [C, H, W] over one copy of its bytes, cheap enough for the event loop;
    None for any other input (decoding and resizing belong on a worker thread)."""
    if raw.kind != "pixels":
        return None
    return _at_model_size(pixels_array(raw, limits), raw, spec)


def _at_model_size(arr: np.ndarray, raw: RawInput, spec: ModelSpec) -> torch.Tensor | None:
    """`arr` (the checked view of `raw`'s pixels) as [C, H, W] over a copy of the bytes when
    it has the model's channels and size; None otherwise."""
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels != spec.channels or arr.shape[:2] != tuple(spec.input_size):
        return None
    # A bytearray: writable memory of the item's own (the request's bytes are immutable).
    return pixels_chw(np.frombuffer(bytearray(raw.data), dtype=np.uint8).reshape(arr.shape))


def model_region(spec: ModelSpec) -> Region:
    """The region of an input given at the model's own size: all of it."""
    h, w = spec.input_size
    return whole(w, h)


def batch_to_model_input(
    items: list[torch.Tensor],
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """Stacks items [C, H, W] of one dtype and shape into the model's input [N, C, H, W] on
    `device`: uint8 pixels become (x / 255 - mean) / std in float32 there (mean and std are
    [C, 1, 1] on `device`); float tensors (preprocessed by the client) pass as they are."""
    pinned = stack_batch(items, pin=device.type == "cuda")
    return model_input(pinned, device, mean, std, channels_last=channels_last)


def stack_batch(items: list[torch.Tensor], *, pin: bool) -> torch.Tensor:
    """The host half of `batch_to_model_input`, which any thread may run: the items stacked,
    in page-locked memory with `pin` (so that the copy to a GPU runs asynchronously).

    uint8 items are stacked channels-last ([N, H, W, C], a plain copy of each item's memory),
    a quarter of float32's bytes to pin and copy, and laid out as [N, C, H, W] on the device
    while still uint8 (elementwise float ops on a channels-last view run several times slower).
    """
    if items[0].dtype == torch.uint8:
        x = torch.stack([t.permute(1, 2, 0) for t in items])
    else:
        x = torch.stack(items)
    return x.pin_memory() if pin else x


def model_input(
    stacked: torch.Tensor,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """The device half of `batch_to_model_input`, on a `stack_batch` result; with
    `channels_last`, laid out channels_last in memory (`ServedModel.channels_last`)."""
    x = stacked.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    if channels_last:
        # The stacked pixels are [N, H, W, C] in memory already: normalised there, with the
        # channel axis last and contiguous, and viewed as [N, C, H, W] without a copy.
        x = x.float().div_(255.0).sub_(mean.reshape(-1)).div_(std.reshape(-1))
        return x.permute(0, 3, 1, 2)
    x = x.permute(0, 3, 1, 2).contiguous()
    return x.float().div_(255.0).sub_(mean).div_(std)


def tensor_input(raw: RawInput, spec: ModelSpec, limits: Limits) -> torch.Tensor:
    """Checks a preprocessed model tensor before allocating anything, then wraps it."""
    if raw.dtype not in ("float32", "float16"):
        raise InvalidArgument(
            f"input.tensor.dtype must be FLOAT32 or FLOAT16, got {raw.dtype or 'unset'}",
            field="input.tensor.dtype",
        )
    expected_shape = (spec.channels, *spec.input_size)
    if tuple(raw.shape) != expected_shape:
        raise InvalidArgument(
            f"input.tensor.shape must be {list(expected_shape)} (C, H, W) for model '{spec.name}', "
            f"got {list(raw.shape)}",
            field="input.tensor.shape",
        )
    n = int(np.prod(expected_shape))
    if n > limits.max_tensor_elements:
        raise ResourceExhausted(
            f"input.tensor has {n} elements; at most {limits.max_tensor_elements}",
            field="input.tensor.shape",
        )
    dtype = _NP_DTYPES[raw.dtype]
    if len(raw.data) != n * dtype.itemsize:
        raise InvalidArgument(
            f"input.tensor.data has {len(raw.data)} bytes; shape {list(raw.shape)} of "
            f"{raw.dtype.upper()} needs {n * dtype.itemsize}",
            field="input.tensor.data",
        )
    arr = np.frombuffer(raw.data, dtype=dtype).reshape(expected_shape)
    if not np.isfinite(arr).all():
        raise InvalidArgument("input.tensor contains NaN or Inf", field="input.tensor.data")
    return torch.from_numpy(
        arr.astype(np.float32)
    )  # astype copies: the wire buffer stays read-only


def picture_pixels(raw: RawInput, channels: int, limits: Limits) -> torch.Tensor:
    """A picture (input.image or input.pixels) at its own size in the model's channels, as
    float32 [C, H, W] pixels in [0, 1]: what DeepDream works on. A model tensor is refused."""
    if raw.kind == "pixels":
        img = Image.fromarray(np.ascontiguousarray(pixels_array(raw, limits)))
    elif raw.kind == "image":
        img = decode_image(raw.data, limits)
    else:
        raise InvalidArgument(
            "DeepDream works on a picture: send input.image or input.pixels, not a model tensor",
            field="input",
        )
    arr = np.asarray(to_model_mode(img, channels), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255.0)


def input_to_tensor(raw: RawInput, spec: ModelSpec, limits: Limits) -> tuple[torch.Tensor, Region]:
    """One request's input at the model's size, [C, H, W]: uint8 pixels for images and pixel
    arrays (normalised later, per batch, by `batch_to_model_input`), float32 for a tensor;
    and the region of the input it shows (see `image_to_tensor`)."""
    if raw.kind == "tensor":
        return tensor_input(raw, spec, limits), model_region(spec)
    if raw.kind == "pixels":
        arr = pixels_array(raw, limits)
        ready = _at_model_size(arr, raw, spec)
        if ready is not None:
            return ready, model_region(spec)
        return image_to_tensor(Image.fromarray(arr), spec, limits)
    if raw.kind == "image":
        return image_to_tensor(decode_image(raw.data, limits), spec, limits)
    raise InvalidArgument("input must set one of image, pixels or tensor", field="input")
