"""`make demo`'s job: a real server process, the CLI on the sample digits, pictures in out/."""

from __future__ import annotations

import numpy as np
from PIL import Image

from deepvis_server import demo


def test_demo_writes_pictures_for_the_three_methods(tmp_path) -> None:
    out = tmp_path / "out"
    assert demo.main(["--address", "127.0.0.1:0", "--out", str(out)]) == 0
    pictures = {
        "guided-backprop": sorted((out / "guided-backprop").glob("digit_*.guided-backprop.png")),
        "activation grids": sorted(
            (out / "activations").glob("digit_*.activations.conv3.grid.png")
        ),
        "activation heatmaps": sorted(
            (out / "activations").glob("digit_*.activations.conv2.heatmap.png")
        ),
        "grad-cam": sorted((out / "grad-cam").glob("digit_*.grad-cam.png")),
        "class renders": sorted((out / "visualize").glob("class-*_0.png")),
    }
    assert {k: len(v) for k, v in pictures.items()} == {k: 10 for k in pictures}
    assert (out / "visualize" / "conv3-c5-y4-x4.attribution.png").exists()
    for p in [p for group in pictures.values() for p in group]:
        arr = np.asarray(Image.open(p))
        assert arr.shape[0] >= 128 and arr.std() > 0  # a real, non-blank picture
