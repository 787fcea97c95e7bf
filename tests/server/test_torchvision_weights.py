"""torchvision's published weights by name, served from a prepared torch.hub cache (no network)."""

from __future__ import annotations

import builtins
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

import deepvis
from deepvis_server.config import ConfigError, load_config, parse_config
from deepvis_server.errors import InvalidArgument
from deepvis_server.models import load_model
from deepvis_server.preprocess import Limits
from deepvis_server.server import model_health_service, serve_in_thread
from zoo import digits_table

WEIGHTS = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
LIMITS = Limits(max_image_pixels=4096 * 1024, max_tensor_elements=1 << 20)
CATEGORIES = tuple(WEIGHTS.meta["categories"])
TRANSFORMS = WEIGHTS.transforms()
# torch.hub caches a download under the last part of its URL; a file there is used as is.
CHECKPOINT = WEIGHTS.url.rsplit("/", 1)[-1]


def resnet_table(name: str = "resnet18-imagenet", **extra: Any) -> dict[str, Any]:
    return {"name": name, "arch": "resnet18", "weights": "torchvision:IMAGENET1K_V1", **extra}


def parse_one(table: dict[str, Any], base: Path = Path(".")) -> Any:
    return parse_config({"models": [table]}, base).models[0]


class CodePayload:
    """Unpickling this calls open(marker, "w"): code run by loading a 'checkpoint'."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def twin() -> torch.nn.Module:
    """resnet18 with random weights: what the cached 'IMAGENET1K_V1' checkpoint holds."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, twin: torch.nn.Module) -> Iterator[Path]:
    """TORCH_HOME with the checkpoint in hub/checkpoints, as a past download leaves it."""
    home = tmp_path_factory.mktemp("torch-home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(twin.state_dict(), checkpoints / CHECKPOINT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME and every HTTP(S) request sent to a closed local port: a download
    fails at once with 'connection refused', network or not."""
    home = tmp_path / "empty-torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    dead = "http://127.0.0.1:1"  # nothing listens on port 1
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, dead)
    # gRPC honours the proxy variables too: the test's own server stays direct.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    # urllib builds its opener, and reads the proxy variables, on the first urlopen only.
    monkeypatch.setattr(urllib.request, "_opener", None)
    return home


def test_the_config_takes_what_the_weights_declare() -> None:
    spec = parse_one(resnet_table())
    assert spec.torchvision_weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert spec.weights is None and spec.labels is None
    assert spec.num_classes == len(CATEGORIES) == 1000
    assert spec.input_size == (224, 224) == (TRANSFORMS.crop_size[0],) * 2
    assert spec.mean == tuple(TRANSFORMS.mean) and spec.std == tuple(TRANSFORMS.std)
    assert spec.channels == 3
    assert spec.resize == 256 == TRANSFORMS.resize_size[0]  # shorter side, then the crop
    # DEFAULT is torchvision's alias of the recommended weights.
    default = parse_one(resnet_table(weights="torchvision:DEFAULT"))
    assert default.torchvision_weights == spec.torchvision_weights


def test_what_the_config_sets_wins_and_is_checked(tmp_path: Path) -> None:
    spec = parse_one(
        resnet_table(input_size=[160, 128], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    )
    assert spec.input_size == (160, 128)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)
    (tmp_path / "labels.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    assert parse_one(resnet_table(labels="labels.txt"), tmp_path).labels == tmp_path / "labels.txt"
    with pytest.raises(ConfigError, match=r"num_classes is 10, but .* have 1000 categories"):
        parse_one(resnet_table(num_classes=10))
    with pytest.raises(ConfigError, match=r"channels must be 3 with torchvision weights"):
        parse_one(resnet_table(channels=1))
    with pytest.raises(ConfigError, match=r"input_size must be \[height, width\]"):
        parse_one(resnet_table(input_size=[224]))
    with pytest.raises(ConfigError, match=r"std must be positive"):
        parse_one(resnet_table(std=[0.2, 0.0, 0.2]))
    assert parse_one(resnet_table(resize=0)).resize == 0  # straight to input_size
    assert parse_one(resnet_table(resize=300)).resize == 300
    for bad in (100, 223, True, 2.5, 10_000):
        with pytest.raises(ConfigError, match=r"resize must be 0 .* from max\(input_size\) = 224"):
            parse_one(resnet_table(resize=bad))


def _photo(width: int, height: int) -> Any:
    """A smooth RGB picture (gradients and a disc), as a PIL image."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((xx - width / 3) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 4) ** 2) * 120
    rgb = np.stack([xx * 255 / width, yy * 255 / height, disc + 60], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(300, 200), (199, 301), (640, 480), (224, 260)])
def test_images_are_resized_and_centre_cropped_as_torchvision_does(size: tuple[int, int]) -> None:
    """With the weights' resize, the model input is torchvision's own evaluation transform of
    the image, bit for bit (the same PIL resize and crop, the same float arithmetic)."""
    from deepvis_server.preprocess import batch_to_model_input, image_to_tensor

    spec = parse_one(resnet_table())
    img = _photo(*size)
    pixels, region = image_to_tensor(img, spec, LIMITS)
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    x = batch_to_model_input([pixels], torch.device("cpu"), mean, std)
    assert torch.equal(x, TRANSFORMS(img)[None])
    # The crop box in the picture's own pixels: 224x224 of the resized picture (its size as
    # torchvision resizes it), centred to within one resized pixel.
    from torchvision.transforms import functional as tvf

    width, height = size
    new_w, new_h = tvf.resize(img, TRANSFORMS.resize_size).size
    sx, sy = width / new_w, height / new_h
    x0, y0, w, h = region
    assert w == pytest.approx(224 * sx) and h == pytest.approx(224 * sy)
    assert x0 + w / 2 == pytest.approx(width / 2, abs=sx)
    assert y0 + h / 2 == pytest.approx(height / 2, abs=sy)


def test_the_crop_box_by_hand_and_inputs_at_the_model_size_taken_as_they_are() -> None:
    from deepvis_server.preprocess import image_to_tensor

    spec = parse_one(resnet_table())
    # 300x200 -> 384x256 (shorter side 256), crop 224 at left 80, top 16; scale 200/256.
    _, region = image_to_tensor(_photo(300, 200), spec, LIMITS)
    assert region == (62.5, 12.5, 175.0, 175.0)
    pixels, region = image_to_tensor(_photo(224, 224), spec, LIMITS)
    assert region == (0.0, 0.0, 224.0, 224.0)
    assert torch.equal(pixels.permute(1, 2, 0), torch.from_numpy(np.array(_photo(224, 224))))
    # Without resize the picture is squashed to the input size: all of it is seen.
    _, region = image_to_tensor(_photo(300, 200), parse_one(resnet_table(resize=0)), LIMITS)
    assert region == (0.0, 0.0, 300.0, 200.0)
    # A long, thin picture would grow past the pixel limit once resized: refused, not made.
    with pytest.raises(InvalidArgument, match=r"would be 25600x256 = 6553600 pixels; at most"):
        image_to_tensor(_photo(2000, 20), spec, LIMITS)


@pytest.mark.parametrize(
    ("arch", "name", "valid"),
    [
        ("resnet18", "IMAGENET1K_V2", "IMAGENET1K_V1, DEFAULT"),
        ("resnet50", "imagenet1k_v2", "IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
        ("resnet18", "", "IMAGENET1K_V1, DEFAULT"),
    ],
)
def test_an_unknown_weights_name_lists_the_valid_ones(arch: str, name: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_one({"name": "m", "arch": arch, "weights": f"torchvision:{name}"})
    assert f"torchvision has no weights '{name}' for '{arch}'; valid: {valid}" in str(info.value)


def test_torchvision_weights_need_a_torchvision_arch() -> None:
    with pytest.raises(ConfigError, match="is not a torchvision model with published weights"):
        parse_one({"name": "m", "arch": "resnet7", "weights": "torchvision:DEFAULT"})
    with pytest.raises(ConfigError, match="torchvision weights need a torchvision arch"):
        parse_one({"name": "m", "arch": "toy_models:FaultyNet", "weights": "torchvision:DEFAULT"})


def test_weights_files_still_need_the_preprocessing_keys() -> None:
    # Without torchvision weights nothing is declared: the old rules and messages hold.
    with pytest.raises(ConfigError, match=r"model 'm': missing required key 'input_size'"):
        parse_one({"name": "m", "arch": "resnet18", "weights": "w.safetensors"})
    with pytest.raises(ConfigError, match=r"model 'm': missing required key 'num_classes'"):
        parse_one({"name": "m", "arch": "resnet18", "input_size": [64, 64]})
    spec = parse_one({"name": "m", "arch": "resnet18", "weights": "w.pt", "num_classes": 3, "input_size": [8, 8]})  # fmt: skip
    assert spec.weights == Path("w.pt") and spec.torchvision_weights is None


def test_load_model_reads_the_cached_checkpoint(hub: Path, twin: torch.nn.Module) -> None:
    served = load_model(parse_one(resnet_table()), torch.device("cpu"))
    assert served.labels == CATEGORIES
    assert served.input_shape == (3, 224, 224)
    assert served.default_cam_layer == "layer4"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(served.module(x), twin(x), rtol=0, atol=0)


def test_a_server_explains_with_the_torchvision_weights(hub: Path, twin: torch.nn.Module) -> None:
    config = parse_config({"models": [resnet_table(max_delay_ms=0.0)]}, Path("."))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            (info,) = client.models()
            assert info.labels == CATEGORIES and info.num_classes == 1000
            assert (info.channels, info.height, info.width) == (3, 224, 224)
            np.testing.assert_allclose(info.mean, TRANSFORMS.mean, rtol=1e-6)
            np.testing.assert_allclose(info.std, TRANSFORMS.std, rtol=1e-6)
            result = client.explain(pixels, method="guided_backprop", top_k=3)
            cam = client.explain(pixels, method="grad_cam", render=False)
    # The server's preprocessing: pixels/255, then the weights' mean and std.
    mean = torch.tensor(TRANSFORMS.mean).view(3, 1, 1)
    std = torch.tensor(TRANSFORMS.std).view(3, 1, 1)
    x = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    with torch.no_grad():
        expected = int(twin(x[None]).argmax())
    assert result.target == expected
    assert result.predictions[0].index == expected
    assert result.predictions[0].label == CATEGORIES[expected]
    assert result.array is not None and result.array.shape == (3, 224, 224)
    assert np.isfinite(result.array).all() and np.abs(result.array).max() > 0
    assert result.image is not None and result.image.size == (224, 224)
    assert cam.array is not None and cam.array.shape == (224, 224)
    assert cam.arrays["cam"].shape == (7, 7)


def test_a_photo_is_explained_on_the_crop_torchvision_would_take(
    hub: Path, twin: torch.nn.Module
) -> None:
    """A 320x240 PNG through a real server: the model saw torchvision's evaluation transform of
    it (its class scores are the twin's on that input), the answer says which box of the
    photo that was, and DescribeModel says the model resizes to 256 first."""
    import io

    config = parse_config({"models": [resnet_table(max_delay_ms=0.0)]}, Path("."))
    img = _photo(320, 240)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=60) as client:
            (info,) = client.models()
            result = client.explain(buf.getvalue(), method="guided_backprop", top_k=5)
            straight = client.explain(np.array(_photo(224, 224)), render=False, top_k=1)
    assert info.resize == 256
    with torch.no_grad():
        probs = twin(TRANSFORMS(img)[None]).softmax(dim=1)[0]
    top = probs.topk(5)
    assert [p.index for p in result.predictions] == top.indices.tolist()
    np.testing.assert_allclose([p.score for p in result.predictions], top.values, rtol=1e-5)
    # 320x240 -> 341x256, crop 224 at left 58, top 16; back in the photo's pixels.
    sx, sy = 320 / 341, 240 / 256
    assert result.input_region == pytest.approx((58 * sx, 16 * sy, 224 * sx, 224 * sy))
    assert result.array is not None and result.array.shape == (3, 224, 224)
    assert straight.input_region == (0.0, 0.0, 224.0, 224.0)


def test_a_cached_checkpoint_with_pickled_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twin: torch.nn.Module
) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({**twin.state_dict(), "extra": CodePayload(marker)}, checkpoints / CHECKPOINT)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_model(parse_one(resnet_table()), torch.device("cpu"))
    assert "refused" in str(info.value) and CHECKPOINT in str(info.value)
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_without_network_or_cache_the_model_fails_fast(offline: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_model(parse_one(resnet_table()), torch.device("cpu"))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "cannot get torchvision weights ResNet18_Weights.IMAGENET1K_V1" in message
    assert WEIGHTS.url in message and "URLError" in message
    # Nothing half-downloaded is left to be mistaken for the weights next time.
    assert not (offline / "hub" / "checkpoints" / CHECKPOINT).exists()


@pytest.mark.timeout(90)
def test_a_model_whose_weights_cannot_be_fetched_is_not_serving(
    offline: Path, sample_paths: list[Path]
) -> None:
    digits = load_config().models[0]
    tables = [
        digits_table(labels=str(digits.labels)),
        resnet_table(),
    ]
    config = parse_config({"models": tables}, Path("."))
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with deepvis.Client(server.bound_address, timeout=30) as client:
            assert client.health(model_health_service("digits")) == "SERVING"
            assert client.health(model_health_service("resnet18-imagenet")) == "NOT_SERVING"
            with pytest.raises(deepvis.Unavailable) as info:
                client.explain(str(sample_paths[3]), model="resnet18-imagenet")
            # The cause (URL, cache path) is in the server's log; the client hears why only.
            assert info.value.details == (
                "model 'resnet18-imagenet' is not available: its torchvision weights could not "
                "be fetched when the server started"
            )
            assert client.explain(str(sample_paths[3]), model="digits").target == 3


# Builders that construct the model differently when given weights (GoogLeNet and Inception
# normalise their input, DenseNet's published files use old key names).
PARITY = [("googlenet", "IMAGENET1K_V1"), ("inception_v3", "IMAGENET1K_V1"), ("densenet121", "IMAGENET1K_V1")]  # fmt: skip
_DENSE_NEW_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@pytest.mark.parametrize(("arch", "name"), PARITY)
def test_the_model_is_built_as_torchvision_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, name: str
) -> None:
    weights = torchvision.models.get_model_weights(arch)[name]
    spec = parse_one({"name": "m", "arch": arch, "weights": f"torchvision:{name}"})
    torch.manual_seed(0)
    kwargs = {"aux_logits": True, "init_weights": False} if arch != "densenet121" else {}
    state = torchvision.models.get_model(arch, weights=None, **kwargs).state_dict()
    if arch == "densenet121":  # as published: 'norm.1' where the module is now 'norm1'
        state = {
            (f"{m.group(1)}.{m.group(2)}" if (m := _DENSE_NEW_KEY.match(k)) else k): v
            for k, v in state.items()
        }
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    served = load_model(spec, torch.device("cpu"))
    # torchvision's own builder on the same cached file; its torch.load is forced weights-only.
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    reference = torchvision.models.get_model(arch, weights=weights, progress=False).eval()
    assert [n for n, _ in served.module.named_modules()] == [
        n for n, _ in reference.named_modules()
    ]
    x = torch.randn(1, 3, *spec.input_size)
    with torch.no_grad():
        torch.testing.assert_close(served.module(x), reference(x), rtol=0, atol=0)
