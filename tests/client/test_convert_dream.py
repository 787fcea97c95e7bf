"""DeepDream requests as the client builds them: defaults left to the server, checks before
anything is sent, and a result message read back."""

from __future__ import annotations

import numpy as np
import pytest

import deepvis
from deepvis import _convert
from deepvis.v1 import deepvis_pb2

IMG = np.zeros((12, 10), np.uint8)


def _request(**kwargs: object) -> deepvis_pb2.DeepDreamRequest:
    args: dict = dict(model="m", negate=False, octaves=4, octave_scale=1.4, steps_per_octave=10,
                      step_size=None, jitter=None, seed=0, progress_every=0,
                      array_dtype="float32")  # fmt: skip
    args.update(kwargs)
    objective = args.pop("objective", deepvis.Layer("conv2"))
    return _convert.dream_request_to_pb(args.pop("input", IMG), objective, **args)


def test_defaults_stay_unset_and_set_values_travel() -> None:
    req = _request()
    assert not req.HasField("step_size") and not req.HasField("jitter")
    assert (req.octaves, req.steps_per_octave) == (4, 10) and req.objective.layer == "conv2"
    assert req.octave_scale == pytest.approx(1.4) and req.input.WhichOneof("kind") == "pixels"
    req = _request(step_size=0.0, jitter=0, objective=deepvis.Neuron("c", 2), negate=True)
    assert req.HasField("step_size") and req.step_size == 0.0 and req.HasField("jitter")
    assert req.objective.neuron.channel == 2 and req.objective.negate


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"octaves": -1}, "octaves"),
        ({"octave_scale": float("inf")}, "octave_scale"),
        ({"steps_per_octave": 1.5}, "steps_per_octave"),
        ({"step_size": -0.5}, "step_size"),
        ({"jitter": -1}, "jitter"),
        ({"seed": -1}, "seed"),
        ({"array_dtype": "int8"}, "array_dtype"),
    ],
)
def test_bad_arguments_are_refused_before_sending(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        _request(**kwargs)


def test_a_result_message_reads_back() -> None:
    import io

    from PIL import Image

    arr = np.random.default_rng(0).random((1, 1, 12, 10)).astype(np.float32)
    png = io.BytesIO()
    Image.fromarray((arr[0, 0] * 255).astype(np.uint8)).save(png, format="PNG")
    result = deepvis_pb2.DeepDreamResult(
        image_png=png.getvalue(),
        octave_objectives=[1.0, 2.5], octave_sizes=[9, 7, 12, 10], steps=20, max_batch_jobs=2,
    )  # fmt: skip
    result.array.CopyFrom(_convert._tensor(arr, deepvis_pb2.DTYPE_FLOAT32))
    dream = _convert.dream_item_from_pb(deepvis_pb2.DeepDreamResponse(result=result))
    assert isinstance(dream, deepvis.Dream) and np.array_equal(dream.array, arr)
    assert dream.octave_sizes == [(9, 7), (12, 10)] and dream.octave_objectives == [1.0, 2.5]
    assert dream.image.size == (10, 12) and dream.max_batch_jobs == 2
    assert _convert.dream_item_from_pb(deepvis_pb2.DeepDreamResponse()) is None
    with pytest.raises(ValueError, match="no picture"):
        _convert.dream_item_from_pb(
            deepvis_pb2.DeepDreamResponse(result=deepvis_pb2.DeepDreamResult())
        )
