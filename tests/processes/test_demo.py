"""`make demo`'s job: a real server process, the CLI on the sample digits, pictures and a report
in out/."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from deepvis_server import demo


def test_demo_writes_pictures_for_the_three_methods_and_a_report(tmp_path) -> None:
    out = tmp_path / "out"
    assert demo.main(["--address", "127.0.0.1:0", "--out", str(out)]) == 0
    explain, acts = out / "explain", out / "activations"
    pictures = {
        "guided-backprop": sorted(explain.glob("digit_*/guided-backprop.png")),
        "grad-cam": sorted(explain.glob("digit_*/grad-cam.png")),
        "integrated-gradients": sorted(explain.glob("digit_*/integrated-gradients.png")),
        "panels": sorted(explain.glob("digit_*/panel.png")),
        "activation grids": sorted(acts.glob("digit_*/activations-conv2+conv3.conv3.grid.png")),
        "activation heatmaps": sorted(acts.glob("digit_*/activations-conv2+conv3.png")),
        "class renders": sorted((out / "visualize").glob("class-*_0.png")),
    }
    assert {k: len(v) for k, v in pictures.items()} == {k: 10 for k in pictures}
    assert (out / "visualize" / "conv3-c5-y4-x4.attribution.png").exists()
    for p in [p for group in pictures.values() for p in group]:
        with Image.open(p) as img:
            arr = np.asarray(img)
            assert img.mode == "RGB" and arr.std() > 0  # a real, non-blank picture
    with Image.open(pictures["guided-backprop"][0]) as img:
        assert img.size == (32, 32)  # the digit's own size: nothing enlarged unasked
    records = [json.loads(line) for line in (explain / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 40 and {r["model"] for r in records} == {"digits"}
    page = (out / "report.html").read_text()
    assert page.count("<section") == 10 and "integrated_gradients" in page
