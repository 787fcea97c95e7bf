"""Results in Jupyter: MIME bundles of inline pictures, and one display updated in place."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import deepvis

ROOT = Path(__file__).resolve().parents[2]
HIDE = Path(__file__).resolve().parents[1] / "hide"
MIME = {"text/plain", "text/html", "image/png"}


def check_bundle(data: dict[str, Any]) -> Image.Image:
    """The three MIME types; the PNG decodes; the HTML loads nothing from anywhere."""
    assert MIME <= set(data), set(data)
    png = Image.open(io.BytesIO(base64.b64decode(data["image/png"])))
    png.load()
    assert png.width > 0 and png.height > 0
    html = data["text/html"]
    assert "<script" not in html.lower()
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"https?:|//|url\(", without_data)
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,"), src[:40]
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).load()
    assert data["text/plain"] and "\n" not in data["text/plain"]
    return png


@pytest.fixture(scope="module")
def results(digits_server, sample_paths) -> dict[str, Any]:
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        path = str(sample_paths[5])
        return {
            "grad_cam": client.explain(path, method="grad_cam"),
            "guided_backprop": client.explain(path),
            "activations": client.explain(path, method="activations", layer="conv2"),
            "no array": client.explain(path, method="saliency", array=False),
            "comparison": client.compare(path, ["guided_backprop", "grad_cam", "saliency"]),
            "visualization": client.visualize(
                5, steps=8, progress_every=4, input=path, model="digits"
            ),
        }


@pytest.mark.parametrize(
    "name",
    ["grad_cam", "guided_backprop", "activations", "no array", "comparison", "visualization"],
)
def test_results_show_as_html_png_and_text(results: dict[str, Any], name: str) -> None:
    result = results[name]
    png = check_bundle(result._repr_mimebundle_())
    # Only what is asked for comes, as IPython's include/exclude say.
    assert set(result._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}
    assert "image/png" not in result._repr_mimebundle_(exclude=["image/png"])
    if name == "grad_cam":
        # The input and the map over it, side by side.
        assert png.width > 2 * 32
        assert "grad_cam" in result._repr_mimebundle_()["text/plain"]
    if name == "comparison":
        html = result._repr_mimebundle_()["text/html"]
        assert html.count("<img") == 4  # the input and three methods


def test_a_progress_shows_its_picture(results: dict[str, Any]) -> None:
    progress = deepvis.Progress(step=4, steps=8, objective=1.5, image=results["grad_cam"].image)
    check_bundle(progress._repr_mimebundle_())


def test_ipython_shows_the_bundle_and_updates_one_display(
    results: dict[str, Any], digits_server
) -> None:
    """Through IPython's own formatter and display machinery (a real shell, its display
    publisher capturing what a notebook would receive)."""
    pytest.importorskip("IPython")
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    assert shell.display_formatter is not None
    try:
        formatted, _ = shell.display_formatter.format(results["grad_cam"])
        check_bundle(formatted)
        shell.display_pub = CapturingDisplayPublisher()
        live = deepvis.LiveProgress()
        with deepvis.Client(digits_server.bound_address, timeout=60) as client:
            vis = client.visualize(3, steps=12, progress_every=3, on_progress=live)
        outputs = shell.display_pub.outputs
        assert vis.steps == 12 and live.updates == len(outputs) >= 2
        ids = {o["transient"]["display_id"] for o in outputs}
        assert len(ids) == 1, "every frame goes to one display"
        assert [o["update"] for o in outputs] == [False] + [True] * (len(outputs) - 1)
        for o in outputs:
            check_bundle(o["data"])
        assert isinstance(live.last, deepvis.Progress) and 0 < live.last.step <= 12
    finally:
        InteractiveShell.clear_instance()


def test_live_progress_outside_ipython_only_keeps_the_last() -> None:
    live = deepvis.LiveProgress()
    live(deepvis.Progress(step=1, steps=2, objective=0.5))
    assert live.updates == 0 and live.last.step == 1


def test_everything_works_without_ipython() -> None:
    """A Python in which IPython is not installed imports deepvis, draws and bundles."""
    code = (
        "import sys, numpy as np, deepvis\n"
        "from deepvis import render\n"
        "assert 'IPython' not in sys.modules\n"
        "from deepvis import _convert\n"
        "e = deepvis.Explanation(model='m', method='grad_cam', "
        "array=np.ones((8, 8), np.float32), image=None, source=np.zeros((8, 8), np.uint8))\n"
        "b = e._repr_mimebundle_()\n"
        "assert {'text/plain', 'text/html', 'image/png'} <= set(b)\n"
        "deepvis.LiveProgress()(deepvis.Progress(1, 2, 0.5))\n"
        "import importlib.util; assert importlib.util.find_spec('IPython') is None\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={
            "PYTHONPATH": f"{HIDE}:{ROOT / 'client'}",
            "DEEPVIS_TEST_HIDE": "IPython,torch",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr


def test_a_bundle_of_a_flat_map_says_so() -> None:
    e = deepvis.Explanation(
        model="m",
        method="guided_backprop",
        array=np.zeros((1, 8, 8), np.float32),
        image=None,
    )
    data = e._repr_mimebundle_()
    check_bundle(data)
    assert "zero everywhere" in data["text/html"]
