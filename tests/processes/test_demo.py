"""`make demo`'s job: a real server process, the CLI on the sample digits, pictures and a report
in out/."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from deepvis_server import demo

ROOT = Path(__file__).resolve().parents[2]


def readme_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "readme_pictures", ROOT / "tools/readme_pictures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    # --checks: each method's deletion and insertion AUC beside its picture of each digit, and
    # its randomization curve once.
    assert page.count('class="auc"') == 10 * 4 * 2
    assert page.count('alt="randomization curve of ') == 4

    # The README's pictures are this demo's, as tools/readme_pictures.py copies them: a
    # renderer change that leaves them stale fails here. The maps are compared closely (the
    # floats may differ in their last bits on another CPU), feature visualizations, which
    # start from noise, by size.
    tool = readme_tool()
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/images/[^)]+\.png)\)", readme))
    linked.discard("docs/images/explorer.png")  # the explorer's screenshot: its browser test's
    assert linked == {f"docs/images/{name}" for name in tool.PICTURES}
    for name, src in tool.PICTURES.items():
        expected, _ = tool.readme_picture(out, src)
        with Image.open(ROOT / "docs" / "images" / name) as shown:
            assert shown.mode == "RGB" and shown.size == expected.size, name
            if "visualize" not in src:
                a, b = np.asarray(shown, np.int16), np.asarray(expected, np.int16)
                assert (a != b).any(axis=2).mean() <= 0.01, name
