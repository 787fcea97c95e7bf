"""`make demo`'s job: a real server process, the CLI on the sample digits, pictures in out/."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import free_port
from deepvis_server import demo


def test_demo_writes_guided_backprop_pictures(tmp_path) -> None:
    out = tmp_path / "out"
    assert demo.main(["--address", f"127.0.0.1:{free_port()}", "--out", str(out)]) == 0
    pictures = sorted(out.glob("digit_*.guided-backprop.png"))
    assert len(pictures) == 10
    for p in pictures:
        arr = np.asarray(Image.open(p))
        assert arr.shape[0] >= 128 and arr.std() > 0  # a real, non-blank picture
