"""deepvis.render on synthetic maps, checked against matplotlib, torch and torchvision."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
from matplotlib import colormaps as mpl_colormaps
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, Resize

from deepvis import render

# ColorBrewer's RdBu centre colour (#f7f7f7): what zero must look like in a signed map.
RDBU_CENTRE = (247, 247, 247)


def blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    """A Gaussian of peak 1 at (row, col) `centre`, pixel centres at integer + 0.5."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    cy, cx = centre
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def mpl(name: str, x: float) -> tuple[int, int, int]:
    r, g, b, _ = mpl_colormaps[name](x, bytes=True)
    return int(r), int(g), int(b)


# --- the colormap tables ---------------------------------------------------------------------


def test_vendored_colormaps_are_matplotlibs_tables() -> None:
    names = render.colormaps()
    assert {"inferno", "viridis", "jet", "gray", "RdBu_r", "bwr"} <= set(names)
    for name in names:
        table = render.colormap(name)
        n = len(table)
        ref = mpl_colormaps[name].resampled(n)(np.linspace(0.0, 1.0, n), bytes=True)[:, :3]
        assert np.array_equal(table, ref), name
    # Sequential maps keep all of matplotlib's entries; diverging ones have an exact middle.
    assert len(render.colormap("inferno")) == 256
    assert len(render.colormap("rdbu_r")) == 255
    assert tuple(render.colormap("RdBu_r")[127]) == RDBU_CENTRE
    assert tuple(render.colormap("bwr")[127]) == (255, 255, 255)
    with pytest.raises(ValueError, match="valid: inferno, viridis"):
        render.colormap("jett")


def test_the_colormap_tool_finds_no_difference() -> None:
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[2] / "tools" / "colormaps.py"
    proc = subprocess.run(
        [sys.executable, str(tool), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- colours: peak, zero, channel order --------------------------------------------------------


def check_unsigned_peak(img: np.ndarray, peak: tuple[int, int]) -> None:
    """The blob's peak pixel is inferno's top colour, as matplotlib draws it."""
    assert tuple(img[peak]) == mpl("inferno", 1.0)


def check_signed(img: np.ndarray, zero: tuple[int, int], pos: tuple[int, int]) -> None:
    """Zero is RdBu's white centre; a positive peak is RdBu_r's red end, as matplotlib's."""
    assert tuple(img[zero]) == RDBU_CENTRE
    assert tuple(img[pos]) == mpl("RdBu_r", 1.0)


def test_the_peak_is_the_colormaps_top_and_zero_its_neutral() -> None:
    cam = blob((40, 56), (12.5, 30.5), 4.0)
    img = np.asarray(render.draw("grad_cam", cam, render.Options(overlay=False)).image)
    assert img.shape == (40, 56, 3)
    check_unsigned_peak(img, (12, 30))
    assert tuple(img[39, 0]) == mpl("inferno", 0.0)  # far from the blob: ~0

    signed = blob((40, 56), (10.5, 10.5), 3.0) - blob((40, 56), (30.5, 44.5), 3.0)
    pic = render.draw("integrated_gradients", signed)
    img = np.asarray(pic.image)
    check_signed(img, (39, 0), (10, 10))
    assert tuple(img[30, 44]) == mpl("RdBu_r", 0.0)  # the negative peak: the blue end
    assert pic.scale.signed and pic.scale.vmin == -pic.scale.vmax


def test_swapping_red_and_blue_fails_the_colour_checks() -> None:
    """The checks above see channel order: a BGR picture of the same maps fails them."""
    cam = blob((40, 56), (12.5, 30.5), 4.0)
    rgb = np.asarray(render.draw("grad_cam", cam, render.Options(overlay=False)).image)
    with pytest.raises(AssertionError):
        check_unsigned_peak(rgb[:, :, ::-1], (12, 30))
    signed = blob((40, 56), (10.5, 10.5), 3.0)
    rgb = np.asarray(render.draw("guided_backprop", signed).image)
    check_signed(rgb, (39, 0), (10, 10))
    with pytest.raises(AssertionError):
        check_signed(rgb[:, :, ::-1], (39, 0), (10, 10))


def test_an_overlay_in_colour_keeps_red_red() -> None:
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    zero_map = np.zeros((10, 10), np.float32)
    zero_map[0, 0] = 1.0  # not flat; almost all of it is the colormap's bottom
    opts = render.Options(overlay=True, base="color", clip=None)
    img = np.asarray(render.draw("grad_cam", zero_map, opts, image=red).image)
    r, g, b = (int(v) for v in img[15, 20])
    assert r > 100 and b < 20 and g < 20


# --- scale -------------------------------------------------------------------------------------


def test_the_scale_clips_at_the_99th_percentile_or_not_at_all() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 64)).astype(np.float32)
    a[0, 0] = 100.0  # one outlier
    s = render.scale_of(a, signed=True)
    assert s.vmax == pytest.approx(np.percentile(np.abs(a), 99))
    assert s.clipped and s.peak == 100.0 and s.clip == 99.0
    none = render.scale_of(a, signed=True, clip=None)
    assert none.vmax == 100.0 and none.clip is None and not none.clipped
    assert render.scale_of(a, signed=True, clip=100).vmax == 100.0
    for bad in (0, -1, 101, "p99", True):
        with pytest.raises(ValueError, match=r"percentile in \(0, 100\]"):
            render.scale_of(a, signed=True, clip=bad)  # type: ignore[arg-type]


def test_a_shared_scale_draws_two_maps_alike() -> None:
    weak = blob((16, 16), (8.5, 8.5), 2.0) * 0.1
    strong = blob((16, 16), (8.5, 8.5), 2.0)
    shared = render.shared_scale(
        [render.scale_of(m, signed=False, clip=None) for m in (weak, strong)]
    )
    assert shared.vmax == pytest.approx(1.0)
    opts = render.Options(overlay=False, scale=shared)
    w = np.asarray(render.draw("grad_cam", weak, opts).image)
    s = np.asarray(render.draw("grad_cam", strong, opts).image)
    # On its own scale the weak map's peak would be the top colour; shared, it is dark.
    assert tuple(s[8, 8]) == mpl("inferno", 1.0)
    assert int(w[8, 8].sum()) < int(s[8, 8].sum()) // 3
    own = np.asarray(render.draw("grad_cam", weak, render.Options(overlay=False, clip=None)).image)
    assert tuple(own[8, 8]) == mpl("inferno", 1.0)


def test_a_sparse_map_is_not_flat() -> None:
    a = np.zeros((50, 50), np.float32)
    a[3, 4] = 2.5  # under 1 % of the pixels: the 99th percentile is 0
    s = render.scale_of(a, signed=False)
    assert s.vmax == 2.5 and not s.flat and s.clip is None


def test_an_all_zero_map_is_drawn_neutral_with_a_note() -> None:
    zero = np.zeros((3, 24, 32), np.float32)
    pic = render.draw("guided_backprop", zero)
    img = np.asarray(pic.image)
    assert (img == np.array(RDBU_CENTRE, np.uint8)).all()
    assert pic.scale.flat and pic.note is not None and "zero everywhere" in pic.note
    cam = render.draw("grad_cam", np.full((8, 8), 1e-9, np.float32), render.Options(overlay=False))
    assert (np.asarray(cam.image) == np.array(mpl("inferno", 0.0), np.uint8)).all()
    assert cam.note is not None and "1e-09" in cam.note
    # With its caption and colorbar the picture says so itself, and still draws.
    fig = render.draw(
        "guided_backprop", zero, render.Options(caption=True, colorbar=True), title="gb"
    )
    assert fig.image.size[0] > 32 and fig.note == pic.note
    over = render.draw("grad_cam", np.zeros((8, 8), np.float32), image=np.zeros((20, 20), np.uint8))
    assert over.image.size == (20, 20)


# --- geometry ----------------------------------------------------------------------------------


def test_upsampling_is_torchs_bilinear_with_pixel_centres() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((5, 7)).astype(np.float32)
    ours, inside = render.resample(a, (23, 40))  # width 23, height 40: non-square, odd
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(a)[None, None], size=(40, 23), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert inside.all()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_downsampling_averages_as_pil_does() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((60, 90)).astype(np.float32)
    ours, _ = render.resample(a, (20, 13))
    ref = np.asarray(Image.fromarray(a, "F").resize((20, 13), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_a_blob_in_the_crop_lands_where_the_crop_took_it_from() -> None:
    """A map in the model's 224x224 crop of a 400x300 photo (resize 256, centre crop) is laid
    on the photo: its peak lands where torchvision's transforms took that crop pixel from."""
    from deepvis_server.config import Limits, ModelSpec
    from deepvis_server.preprocess import image_to_tensor

    width, height = 400, 300
    spec = ModelSpec("m", "x", None, 10, (224, 224), (0.5,) * 3, (0.25,) * 3, resize=256)
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 255, (height, width, 3), np.uint8))
    _, region = image_to_tensor(photo, spec, Limits())
    # The oracle: torchvision's evaluation transforms on coordinate ramps; each crop pixel
    # then holds the photo coordinate its centre came from (bilinear keeps a ramp exact).
    transform = Compose([Resize(256), CenterCrop(224)])
    xs = np.tile(np.arange(width, dtype=np.float32) + 0.5, (height, 1))
    ys = np.tile((np.arange(height, dtype=np.float32) + 0.5)[:, None], (1, width))
    crop_x = np.asarray(transform(Image.fromarray(xs, "F")))
    crop_y = np.asarray(transform(Image.fromarray(ys, "F")))
    for row, col in ((60, 170), (200, 30), (112, 112)):
        cam = blob((224, 224), (row + 0.5, col + 0.5), 3.0)
        opts = render.Options(alpha=1.0, clip=None)
        img = np.asarray(render.draw("grad_cam", cam, opts, image=photo, region=region).image)
        assert img.shape == (height, width, 3)
        top = np.all(img == np.array(mpl("inferno", 1.0), np.uint8), axis=2)
        if not top.any():  # the peak fell between output pixels: take the brightest
            top = img.sum(axis=2) == img.sum(axis=2).max()
        py, px = (c.mean() + 0.5 for c in np.nonzero(top))
        assert abs(px - crop_x[row, col]) <= 1.0 and abs(py - crop_y[row, col]) <= 1.0, (
            (px, py),
            (crop_x[row, col], crop_y[row, col]),
        )


def test_outside_the_crop_the_photo_is_dimmed_and_inside_blended() -> None:
    photo = np.full((30, 60), 200, np.uint8)
    cam = np.zeros((10, 10), np.float32)  # flat: the colour is the colormap's bottom
    pic = render.draw("grad_cam", cam, image=photo, region=(15.0, 0.0, 30.0, 30.0))
    img = np.asarray(pic.image).astype(int)
    assert (img[:, :15] == 100).all() and (img[:, 45:] == 100).all()
    bottom = np.array(mpl("inferno", 0.0))
    expected = (128 * bottom + 128 * 200 + 128) >> 8
    assert (img[:, 15:45] == expected).all()


def test_pictures_come_at_the_size_asked_or_their_own() -> None:
    cam = blob((32, 32), (16.5, 16.5), 4.0)
    assert render.draw("grad_cam", cam, render.Options(overlay=False)).image.size == (32, 32)
    sized = render.draw("grad_cam", cam, render.Options(overlay=False, size=(96, 64)))
    assert sized.image.size == (96, 64)
    photo = np.zeros((50, 70), np.uint8)
    assert render.draw("grad_cam", cam, image=photo).image.size == (70, 50)
    assert render.draw("grad_cam", cam, render.Options(size=(35, 25)), image=photo).image.size == (
        35,
        25,
    )
    with pytest.raises(ValueError, match="overlay needs the image"):
        render.draw("grad_cam", cam)
    with pytest.raises(ValueError, match=r"\(width, height\)"):
        render.Options(size=(0, 4))


# --- maps, grids, captions ---------------------------------------------------------------------


def test_maps_of_each_family() -> None:
    a = np.stack([np.full((4, 4), 1.0), np.full((4, 4), -3.0), np.full((4, 4), 0.5)]).astype(
        np.float32
    )
    assert render.map_of("guided_backprop", a).values[0, 0] == pytest.approx(-1.5)
    assert render.map_of("guided_backprop", a).reduction == "signed sum over channels"
    assert render.map_of("saliency", np.abs(a)).values[0, 0] == pytest.approx(3.0)
    unsigned = render.map_of("guided_backprop", a, "unsigned")
    assert unsigned.values[0, 0] == pytest.approx(4.5) and not unsigned.signed
    assert render.map_of("activations", a).values[0, 0] == pytest.approx(-0.5)
    assert render.map_of("activations", a).signed  # the mean has negative values
    assert not render.map_of("activations", np.abs(a)).signed
    with pytest.raises(ValueError, match=r"\[H, W\] or \[C, H, W\]"):
        render.map_of("grad_cam", np.zeros(4, np.float32))


def test_a_grid_orders_tiles_by_mean_activation() -> None:
    values = np.array([0.1, 0.9, 0.5, 0.3], np.float32)
    maps = np.broadcast_to(values[:, None, None], (4, 8, 8)).copy()
    pic = render.grid(maps, channels=[10, 11, 12, 13], clip=None)
    np.testing.assert_allclose(pic.map.values[0], [0.9, 0.5, 0.3, 0.1])
    img = np.asarray(pic.image)
    # 2x2 tiles of 32 pixels (8x8 maps enlarged 4x): the first one is the largest mean.
    assert tuple(img[2 + 16, 2 + 16]) == mpl("inferno", 1.0)
    assert "tiles x4" in pic.caption


def test_captions_name_method_target_and_layer() -> None:
    from deepvis import Neuron, Prediction

    preds = [Prediction(5, "5", 0.99812), Prediction(3, "tabby", 0.001)]
    assert render.caption("grad_cam", 5, preds, "conv3") == "grad_cam · class 5 (p=0.998) · conv3"
    assert render.caption("saliency", 3, preds) == "saliency · tabby [3] (p=0.001)"
    assert render.caption("saliency", 7, preds) == "saliency · class 7"
    neuron = Neuron("conv3", 5, y=4, x=4)
    assert render.caption("guided_backprop", neuron) == "guided_backprop · neuron conv3:5[4,4]"


def test_feature_vis_pixels_are_rgb_at_their_own_size() -> None:
    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    img = render.pixels_image(gray)
    assert img.mode == "RGB" and img.size == (4, 3)
    rgb = np.zeros((3, 2, 2), np.float32)
    rgb[0] = 1.0
    assert tuple(np.asarray(render.pixels_image(rgb))[0, 0]) == (255, 0, 0)


# --- PNG -----------------------------------------------------------------------------------------


@pytest.fixture(params=["isal", "zlib"])
def deflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The PNG writer with ISA-L's deflate (the server's) and with zlib's (a bare client)."""
    if request.param == "zlib":
        monkeypatch.setattr(render, "_deflate", lambda: zlib.compress)
    else:
        from isal import isal_zlib

        assert render._deflate() is isal_zlib.compress
    return str(request.param)


@pytest.mark.parametrize(
    ("mode", "shape"),
    [("L", (7, 5)), ("RGB", (13, 9, 3)), ("RGBA", (3, 4, 4)), ("RGB", (1, 1, 3))],
)
def test_fast_png_decodes_to_the_same_pixels_in_pillow(
    mode: str, shape: tuple[int, ...], deflate: str
) -> None:
    # Random bytes: every row's "Up" difference wraps around somewhere, in both directions.
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = render.to_png(Image.fromarray(pixels, mode))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # Pillow checks each chunk's CRC and the zlib stream as it reads
    assert decoded.mode == mode
    assert decoded.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_of_other_modes_and_levels_is_pillows() -> None:
    gray16 = Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    assert render.to_png(gray16) == _pillow_png(gray16, 1)
    photo = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1)), "L").convert("RGB")
    assert render.to_png(photo, compress_level=6) == _pillow_png(photo, 6)
    keyed = photo.copy()
    keyed.info["transparency"] = (0, 0, 0)  # a colour key: Pillow writes it as tRNS
    assert render.to_png(keyed) == _pillow_png(keyed, 1)
    assert Image.open(io.BytesIO(render.to_png(keyed))).info["transparency"] == (0, 0, 0)


def test_fast_png_is_close_to_pillows_size_on_a_smooth_picture(deflate: str) -> None:
    # A Grad-CAM-like overlay: Pillow's per-row filter choice gains little on such pictures.
    ramp = np.add.outer(np.arange(56), np.arange(56)).astype(np.uint8) * 2
    photo = np.stack([ramp, ramp[::-1], ramp.T], axis=2)
    picture = render.draw("grad_cam", blob((56, 56), (20.0, 30.0), 9.0), image=photo).image
    fast, pillow = len(render.to_png(picture)), len(_pillow_png(picture, 1))
    assert fast <= 1.15 * pillow, (fast, pillow)


def _pillow_png(image: Image.Image, level: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@pytest.mark.parametrize("at", [(3, 2), (-4, -3), (15, 9), (30, 30)])
def test_grid_labels_are_the_pixels_pillow_draws_as_text(at: tuple[int, int]) -> None:
    from PIL import ImageDraw, ImageFont

    canvas = np.full((16, 24, 3), 255, np.uint8)
    render._ink_on_white(canvas, render._label("317", 10), *at)
    oracle = Image.new("RGB", (24, 16), (255, 255, 255))
    ImageDraw.Draw(oracle).text(at, "317", fill=render._INK, font=ImageFont.load_default(10))
    assert np.array_equal(canvas, np.asarray(oracle))
    assert canvas.min() < 100 or at == (30, 30)  # the label is there (off the canvas: not)
