"""Node.js clients (@grpc/grpc-js + @grpc/proto-loader) against a real server: Explain with the
.proto and through reflection alone, error details decoded from the trailer, short method names.

The scripts live in tests/node; `make install` runs `npm ci` there. Skipped without `node`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import deepvis

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH: no Node.js client tests")


@pytest.fixture(scope="module", autouse=True)
def node_modules() -> None:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json").is_file():
        pytest.fail(
            "tests/node/node_modules is missing: run `make install` (or `npm ci` in tests/node)",
            pytrace=False,
        )


def node(script: str, *args: str) -> dict[str, Any]:
    """Runs one Node script and returns the JSON it prints."""
    assert NODE is not None
    done = subprocess.run(
        [NODE, script, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"node {script} failed:\n{done.stderr}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def digit(sample_paths) -> Path:
    return sample_paths[3]


def python_answer(server, image: Path, method: str, target: int | None = None):
    with deepvis.Client(server.bound_address, timeout=60) as client:
        return client.explain(str(image), method=method, target=target, render=False)


def test_explain_with_the_proto_decodes_the_same_float32s(digits_server, digit) -> None:
    got = node(
        "explain_proto.js", digits_server.bound_address, str(digit), "METHOD_GUIDED_BACKPROP"
    )
    expected = python_answer(digits_server, digit, "guided_backprop")
    assert got["model"] == "digits" and got["method"] == "METHOD_GUIDED_BACKPROP"
    assert got["shape"] == list(expected.array.shape) == [1, 32, 32]
    values = np.asarray(got["values"], dtype=np.float64).reshape(got["shape"])
    # Node's numbers are the float32s themselves (exact in a double), so they cast back.
    assert np.array_equal(values.astype(np.float32).astype(np.float64), values)
    assert np.abs(expected.array).max() > 0
    np.testing.assert_allclose(values, expected.array, rtol=1e-6, atol=1e-6 * np.abs(values).max())
    assert [p["index"] for p in got["predictions"]] == [p.index for p in expected.predictions]
    assert got["target"] == {"class_index": str(expected.target), "kind": "class_index"}


def test_explain_through_reflection_alone(digits_server, digit) -> None:
    got = node("explain_reflection.js", digits_server.bound_address, str(digit), "GUIDED_GRAD_CAM")
    assert got["services"] == [
        "deepvis.v1.Explainer",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert got["files"] == ["deepvis/v1/deepvis.proto"]
    assert got["comment"] == " Name of a served model (see ListModels).\n"
    expected = python_answer(digits_server, digit, "guided_grad_cam")
    assert got["shape"] == list(expected.array.shape)
    values = np.asarray(got["values"]).reshape(got["shape"])
    assert np.abs(expected.array).max() > 0
    np.testing.assert_allclose(values, expected.array, rtol=1e-6, atol=1e-6 * np.abs(values).max())
    # protobuf.js names an aliased number by its last name when it builds types from
    # descriptors: the number is the same method.
    assert got["method"] in ("METHOD_GUIDED_GRAD_CAM", "GUIDED_GRAD_CAM")


@pytest.mark.parametrize(
    ("case", "field", "fragment"),
    [
        ("target", "target.class_index", "must be in [0, 10)"),
        ("pixels", "input.pixels.data", "needs 1024"),
        ("method", "method", "method is required"),
    ],
)
def test_error_details_decode_to_a_bad_request_naming_the_field(
    digits_server, digit, case, field, fragment
) -> None:
    got = node("error_details.js", digits_server.bound_address, str(digit), case)
    assert got["code"] == 3  # INVALID_ARGUMENT
    assert fragment in got["details"]
    status = got["status"]
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status["code"] == 3 and status["message"] == got["details"]
    (detail,) = status["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    (violation,) = detail["field_violations"]
    assert violation["field"] == field
    assert violation["description"] == got["details"]


def test_short_method_names_from_a_node_object(digits_server, digit) -> None:
    """proto-loader turns {method: 'GRAD_CAM'} into the alias's number: METHOD_GRAD_CAM."""
    short = node("explain_proto.js", digits_server.bound_address, str(digit), "GRAD_CAM", "4")
    full = node("explain_proto.js", digits_server.bound_address, str(digit), "METHOD_GRAD_CAM", "4")
    assert short["method"] == full["method"] == "METHOD_GRAD_CAM"
    assert short["shape"] == full["shape"] == [32, 32]
    assert short["values"] == full["values"]
    expected = python_answer(digits_server, digit, "grad_cam", target=4)
    np.testing.assert_allclose(
        np.asarray(short["values"]).reshape(32, 32), expected.array, rtol=1e-6, atol=1e-7
    )


def test_node_processes_exiting_mid_stream_leave_the_server_up(tmp_path) -> None:
    """Node clients that exit after a few progress messages of a Visualize stream, a dozen at
    once, twice: the server stays up and answers the next client as before."""
    from deepvis_server.process import ServerProcess

    assert NODE is not None
    with ServerProcess() as server:
        before = python_answer_at(server.address)
        for _ in range(2):
            procs = [
                subprocess.Popen(
                    [NODE, "visualize_exit.js", server.address, str(1 + i % 4)],
                    cwd=NODE_DIR,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(12)
            ]
            for proc in procs:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
            assert server.alive(), server.log()[-3000:]
        after = python_answer_at(server.address)
        assert np.array_equal(after.array, before.array)
        assert server.stop() == 0


def python_answer_at(address: str):
    pixels = (np.arange(32 * 32) % 253).astype(np.uint8).reshape(32, 32)
    with deepvis.Client(address, timeout=60) as client:
        return client.explain(pixels, render=False)
