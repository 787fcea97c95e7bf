"""Bad LRP, SmoothGrad and integrated-gradients options get INVALID_ARGUMENT naming the field
and saying what is valid (or RESOURCE_EXHAUSTED for a cost past the bound), sent as raw
protobuf so that nothing in the client checks them first; a bad item never fails its
batch-mates, and the server serves the next request."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc


def tensor_input(shape: tuple[int, ...] = (1, 32, 32), seed: int = 0) -> pb.Input:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return pb.Input(tensor=pb.Tensor(shape=list(shape), dtype=pb.DTYPE_FLOAT32, data=x.tobytes()))


def request(method: Any, **fields: Any) -> pb.ExplainRequest:
    return pb.ExplainRequest(model="digits", method=method, input=tensor_input(), **fields)


IG = pb.METHOD_INTEGRATED_GRADIENTS
# Numbers no enum of the schema has (the stubs' types admit only the enums' own values).
UNKNOWN: Any = 42
CASES = [
    # (id, request, field, words the message must hold)
    (
        "composite-unknown",
        request(pb.METHOD_LRP, lrp=pb.LrpOptions(composite=UNKNOWN)),
        "lrp.composite",
        ["not a value of LrpComposite", "epsilon_plus_flat", "deep_taylor", "epsilon_gamma_box"],
    ),
    (
        "epsilon-zero",
        request(pb.METHOD_LRP, lrp=pb.LrpOptions(epsilon=0.0)),
        "lrp.epsilon",
        ["must be in [1e-09, 100]", "got 0"],
    ),
    (
        "epsilon-nan",
        request(pb.METHOD_LRP, lrp=pb.LrpOptions(epsilon=float("nan"))),
        "lrp.epsilon",
        ["must be in [1e-09, 100]"],
    ),
    (
        "epsilon-deep-taylor",
        request(
            pb.METHOD_LRP,
            lrp=pb.LrpOptions(composite=pb.LRP_COMPOSITE_DEEP_TAYLOR, epsilon=0.1),
        ),
        "lrp.epsilon",
        ["deep_taylor has no epsilon rule", "leave it unset"],
    ),
    (
        "gamma-without-gamma-rule",
        request(pb.METHOD_LRP, lrp=pb.LrpOptions(gamma=0.5)),
        "lrp.gamma",
        ["epsilon_gamma_box only", "not epsilon_plus_flat"],
    ),
    (
        "gamma-negative",
        request(
            pb.METHOD_LRP,
            lrp=pb.LrpOptions(composite=pb.LRP_COMPOSITE_EPSILON_GAMMA_BOX, gamma=-1.0),
        ),
        "lrp.gamma",
        ["must be in [0, 100]", "got -1"],
    ),
    (
        "lrp-options-on-saliency",
        request(pb.METHOD_SALIENCY, lrp=pb.LrpOptions()),
        "lrp",
        ["apply to method lrp only", "not to saliency"],
    ),
    (
        "smooth-samples",
        request(pb.METHOD_SALIENCY, smooth=pb.SmoothGradOptions(samples=1000)),
        "smooth.samples",
        ["from 1 to 256", "0 means 25", "got 1000"],
    ),
    (
        "smooth-samples-negative",
        request(pb.METHOD_SALIENCY, smooth=pb.SmoothGradOptions(samples=-2)),
        "smooth.samples",
        ["from 1 to 256"],
    ),
    (
        "smooth-noise",
        request(pb.METHOD_SALIENCY, smooth=pb.SmoothGradOptions(noise=1.5)),
        "smooth.noise",
        ["must be in [0, 1]", "got 1.5"],
    ),
    (
        "smooth-kind",
        request(pb.METHOD_SALIENCY, smooth=pb.SmoothGradOptions(kind=UNKNOWN)),
        "smooth.kind",
        ["not a value of SmoothKind", "smoothgrad", "smoothgrad_sq", "vargrad"],
    ),
    (
        "smooth-on-grad-cam",
        request(pb.METHOD_GRAD_CAM, smooth=pb.SmoothGradOptions()),
        "smooth",
        ["not to grad_cam", "guided_backprop", "saliency", "lrp", "input_x_gradient"],
    ),
    (
        "ig-steps",
        request(IG, integrated_gradients=pb.IntegratedGradientsOptions(steps=5000)),
        "integrated_gradients.steps",
        ["from 1 to 1024", "0 means 50", "got 5000"],
    ),
    (
        "ig-riemann-one-step",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                steps=1, method=pb.INTEGRATION_METHOD_RIEMANN_LEFT
            ),
        ),
        "integrated_gradients.steps",
        ["at least 2 for method riemann_left", "got 1"],
    ),
    (
        "ig-method",
        request(IG, integrated_gradients=pb.IntegratedGradientsOptions(method=UNKNOWN)),
        "integrated_gradients.method",
        ["not a value of IntegrationMethod", "gausslegendre", "riemann_trapezoid"],
    ),
    (
        "ig-baseline",
        request(IG, integrated_gradients=pb.IntegratedGradientsOptions(baseline=UNKNOWN)),
        "integrated_gradients.baseline",
        ["not a value of BaselineKind", "zero", "black", "blur", "uniform", "images"],
    ),
    (
        "ig-blur-sigma-without-blur",
        request(IG, integrated_gradients=pb.IntegratedGradientsOptions(blur_sigma=2.0)),
        "integrated_gradients.blur_sigma",
        ["BASELINE_KIND_BLUR only", "not zero"],
    ),
    (
        "ig-blur-sigma-too-large",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                baseline=pb.BASELINE_KIND_BLUR, blur_sigma=500.0
            ),
        ),
        "integrated_gradients.blur_sigma",
        ["must be in [0.001, 100]", "got 500"],
    ),
    (
        "ig-samples-without-uniform",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                baseline=pb.BASELINE_KIND_BLACK, baseline_samples=3
            ),
        ),
        "integrated_gradients.baseline_samples",
        ["BASELINE_KIND_UNIFORM only", "not black"],
    ),
    (
        "ig-too-many-uniform",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                baseline=pb.BASELINE_KIND_UNIFORM, baseline_samples=17
            ),
        ),
        "integrated_gradients.baseline_samples",
        ["from 1 to 16", "got 17"],
    ),
    (
        "ig-images-without-images-kind",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                baseline=pb.BASELINE_KIND_ZERO, baseline_images=[tensor_input()]
            ),
        ),
        "integrated_gradients.baseline_images",
        ["BASELINE_KIND_IMAGES only", "not zero"],
    ),
    (
        "ig-images-kind-without-images",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(baseline=pb.BASELINE_KIND_IMAGES),
        ),
        "integrated_gradients.baseline_images",
        ["from 1 to 16", "got 0"],
    ),
    (
        "ig-too-many-images",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                baseline_images=[tensor_input(seed=i) for i in range(17)]
            ),
        ),
        "integrated_gradients.baseline_images",
        ["from 1 to 16", "got 17"],
    ),
    (
        "ig-empty-image",
        request(
            IG, integrated_gradients=pb.IntegratedGradientsOptions(baseline_images=[pb.Input()])
        ),
        "integrated_gradients.baseline_images[0]",
        ["sets no image, pixels or tensor"],
    ),
    (
        "ig-image-wrong-shape",
        request(
            IG,
            integrated_gradients=pb.IntegratedGradientsOptions(
                baseline_images=[tensor_input((3, 32, 32))]
            ),
        ),
        "integrated_gradients.baseline_images",
        ["[1, 32, 32]"],
    ),
    (
        "ig-options-on-lrp",
        request(pb.METHOD_LRP, integrated_gradients=pb.IntegratedGradientsOptions()),
        "integrated_gradients",
        ["apply to method integrated_gradients only", "not to lrp"],
    ),
]


@pytest.fixture(scope="module")
def stub(digits_server):
    with grpc.insecure_channel(digits_server.bound_address) as channel:
        yield pb_grpc.ExplainerStub(channel)


def violation(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    return bad.field_violations[0].field


@pytest.mark.parametrize(("case", "msg", "field", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_options_are_invalid_arguments_saying_what_is_valid(
    stub, case, msg, field, words
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(msg, timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    for word in words:
        assert word in err.details(), (word, err.details())
    assert violation(err).startswith(field), (violation(err), err.details())


def test_a_cost_past_the_bound_is_resource_exhausted(stub) -> None:
    """1024 steps x 16 uniform baselines: 16384 passes is the bound, x 2 SmoothGrad samples
    exceeds it; the message gives the product and the bound."""
    msg = request(
        IG,
        integrated_gradients=pb.IntegratedGradientsOptions(
            steps=1024, baseline=pb.BASELINE_KIND_UNIFORM, baseline_samples=16
        ),
        smooth=pb.SmoothGradOptions(samples=2),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(msg, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = info.value.details()
    assert "32768" in details and "16384" in details, details


def test_a_bad_item_fails_alone_and_the_server_serves_on(stub) -> None:
    """In one ExplainBatch call a bad item's error is its own; its batch-mates are served."""
    good = request(pb.METHOD_LRP, lrp=pb.LrpOptions(composite=pb.LRP_COMPOSITE_DEEP_TAYLOR))
    bad = request(
        pb.METHOD_LRP, lrp=pb.LrpOptions(composite=pb.LRP_COMPOSITE_DEEP_TAYLOR, epsilon=1)
    )
    smooth_good = request(pb.METHOD_SALIENCY, smooth=pb.SmoothGradOptions(samples=3))
    smooth_bad = request(pb.METHOD_SALIENCY, smooth=pb.SmoothGradOptions(samples=300))
    reply = stub.ExplainBatch(
        pb.ExplainBatchRequest(requests=[good, bad, smooth_good, smooth_bad]), timeout=60
    )
    kinds = [item.WhichOneof("outcome") for item in reply.items]
    assert kinds == ["response", "error", "response", "error"], reply
    assert reply.items[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no epsilon rule" in reply.items[1].error.message
    assert "from 1 to 256" in reply.items[3].error.message
    assert reply.items[0].response.completeness.score != 0.0
    assert stub.Explain(good, timeout=30).array.shape == [1, 32, 32]
