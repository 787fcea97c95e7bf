"""The contract as other languages see it, over raw gRPC against a real server: method names
and their short spellings, field paths in errors, omit_array, picture sizes and options."""

from __future__ import annotations

import io
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.methods import REGISTRY


def digit_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def bad_request(err: grpc.RpcError) -> error_details_pb2.BadRequest.FieldViolation:
    """The one field violation of an INVALID_ARGUMENT call's google.rpc.Status trailer."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    (violation,) = bad.field_violations
    assert violation.description == err.details() == status.message
    return violation


def explain_error(stub: pb_grpc.ExplainerStub, request: pb.ExplainRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(request, timeout=30)
    return info.value


def visualize_error(stub: pb_grpc.ExplainerStub, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Visualize(pb.VisualizeRequest(**fields), timeout=30))
    return info.value


# -- method names ---------------------------------------------------------------------------

SNAKE = ["guided_backprop", "activations", "grad_cam", "guided_grad_cam", "deconvolution"]
SNAKE += ["saliency", "integrated_gradients", "lrp", "input_x_gradient", "attention_rollout"]
# What the digits model serves: every method but attention rollout, which needs a ViT.
DIGITS_METHODS = [m for m in SNAKE if m != "attention_rollout"]


def check_lists_snake_names(message: str) -> None:
    """Every method by its snake-case name, in enum order, and METHOD_ said once."""
    assert ", ".join(SNAKE) in message, message
    assert message.count("METHOD_") == 1 and "METHOD_<NAME>" in message, message


def test_an_unset_method_is_required_and_the_valid_ones_are_listed(digits_server) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        err = explain_error(stub, pb.ExplainRequest(model="digits", input={"image": digit_png()}))
        violation = bad_request(err)
        assert violation.field == "method"
        assert err.details().startswith("method is required: set it to one of guided_backprop")
        assert "method 0" not in err.details()
        check_lists_snake_names(err.details())
        # A number the schema does not have: named, and the same list.
        request = pb.ExplainRequest(
            model="digits",
            method=42,  # type: ignore[arg-type]  # no such Method: the point
            input={"image": digit_png()},
        )
        err = explain_error(stub, request)
        assert bad_request(err).field == "method"
        assert err.details().startswith("method 42 is not a method")
        check_lists_snake_names(err.details())


def test_server_messages_name_methods_in_snake_case_only(digits_server) -> None:
    """A method's own refusal (a layer Grad-CAM cannot use) names it as the client does."""
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        request = pb.ExplainRequest(
            model="digits", method=pb.METHOD_GRAD_CAM, input={"image": digit_png()}, layers=["fc"]
        )
        err = explain_error(pb_grpc.ExplainerStub(ch), request)
    assert bad_request(err).field == "layers"
    assert "method grad_cam needs a layer with a spatial output" in err.details()
    assert "METHOD_" not in err.details()


def test_short_method_spellings_parse_from_json_and_run(digits_server) -> None:
    png = digit_png(1)
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        for long_name, short in [("METHOD_GRAD_CAM", "GRAD_CAM"), ("METHOD_SALIENCY", "SALIENCY")]:
            # What grpcurl -d '{"method": "GRAD_CAM", ...}' sends: JSON parsed by protobuf.
            request = json_format.Parse(
                '{"model": "digits", "method": "' + short + '", "target": {"classIndex": 4}}',
                pb.ExplainRequest(),
            )
            assert request.method == pb.Method.Value(long_name)
            request.input.image = png
            short_reply = stub.Explain(request, timeout=30)
            long_reply = stub.Explain(
                pb.ExplainRequest(
                    model="digits",
                    method=pb.Method.Value(long_name),
                    input=pb.Input(image=png),
                    target=pb.Target(class_index=4),
                ),
                timeout=30,
            )
            assert short_reply.method == long_reply.method == pb.Method.Value(long_name)
            assert short_reply.array.data == long_reply.array.data
            assert len(short_reply.array.data) > 0
            # JSON output prints the METHOD_ spelling: the first name of the number.
            printed = json_format.MessageToDict(short_reply)
            assert printed["method"] == long_name


def test_each_method_is_listed_once_despite_the_aliases(digits_server) -> None:
    numbers = sorted(set(pb.Method.values()) - {pb.METHOD_UNSPECIFIED})
    assert len(pb.Method.values()) == 1 + 2 * len(numbers)  # every method has one alias
    for number in numbers:
        long_name = pb.Method.Name(number)
        assert long_name.startswith("METHOD_")
        assert pb.Method.Value(long_name.removeprefix("METHOD_")) == number
    assert deepvis.methods() == SNAKE
    assert sorted(REGISTRY) == sorted(SNAKE)
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        (model,) = client.models()
        assert list(model.methods) == DIGITS_METHODS
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        listed = pb_grpc.ExplainerStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
    assert list(listed.models[0].methods) == [
        n for n in numbers if n != pb.METHOD_ATTENTION_ROLLOUT
    ]


def test_alias_names_clash_with_no_other_name_in_the_package() -> None:
    """Enum values live in the package's scope (C++ rules): an alias must not reuse the name of
    another enum's value, a message, an enum or a service."""
    file = pb.DESCRIPTOR
    values = [v.name for v in file.enum_types_by_name["Method"].values]
    aliases = {n for n in values if not n.startswith("METHOD_")}
    assert aliases == {n.removeprefix("METHOD_") for n in values if n.startswith("METHOD_")} - {
        "UNSPECIFIED"
    }
    others = {n for n in values if n.startswith("METHOD_")}
    others |= set(file.message_types_by_name) | set(file.enum_types_by_name)
    others |= set(file.services_by_name)
    for enum in file.enum_types_by_name.values():
        if enum.name != "Method":
            others |= {v.name for v in enum.values}
    # Not even in another case (some languages fold case).
    assert not {a.lower() for a in aliases} & {o.lower() for o in others}


# -- field paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "field", "message"),
    [
        (
            pb.Objective(class_index=10),
            "objective.class_index",
            "objective.class_index must be in [0, 10) for model 'digits', got 10",
        ),
        (
            pb.Objective(neuron=pb.Neuron(layer="conv9", channel=0)),
            "objective.neuron.layer",
            "objective.neuron.layer 'conv9' is not a layer of model 'digits'",
        ),
        (
            pb.Objective(neuron=pb.Neuron(layer="conv3", channel=64)),
            "objective.neuron.channel",
            "objective.neuron.channel must be in [0, 64) for layer 'conv3', got 64",
        ),
        (
            pb.Objective(neuron=pb.Neuron(layer="conv3", channel=1, y=8, x=0)),
            "objective.neuron",
            "objective.neuron y, x must be in [0, 8) x [0, 8) for layer 'conv3', got (8, 0)",
        ),
    ],
)
def test_visualize_errors_name_the_objective_fields(
    digits_server, objective, field, message
) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        err = visualize_error(stub, model="digits", objective=objective, steps=4)
        violation = bad_request(err)
        assert violation.field == field
        assert err.details().startswith(message), err.details()
        assert "target" not in err.details()
        # The server goes on serving the same objective once it is valid.
        good = pb.Objective(class_index=3)
        replies = list(stub.Visualize(pb.VisualizeRequest(model="digits", objective=good, steps=2)))
        assert replies[-1].result.steps == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"steps": -3}, "steps"),
        ({"learning_rate": -0.5}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"batch": -2}, "batch"),
        ({"diversity": float("inf")}, "diversity"),
        ({"progress_every": -1}, "progress_every"),
        ({"height": -4, "width": -4}, "height"),
    ],
)
def test_visualize_value_errors_name_the_request_fields(digits_server, fields, field) -> None:
    """Each value is refused by the request's own field name, and before the model is looked
    up (the model named here is not served)."""
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        objective = pb.Objective(class_index=3)
        err = visualize_error(stub, model="nope", objective=objective, **fields)
        assert bad_request(err).field == field
        assert err.details().startswith(field), err.details()


def test_a_render_batch_names_the_request_fields_too(digits_server) -> None:
    from deepvis_server.errors import InvalidArgument
    from deepvis_server.featurevis import ClassLogit, RenderBatch, RenderJob

    batch = RenderBatch(digits_server.engine.models["digits"])
    for job, field in [
        (RenderJob(ClassLogit(1), param="cppn"), "parameterization"),
        (RenderJob(ClassLogit(1), lr=0.0), "learning_rate"),
        (RenderJob(ClassLogit(1), size=(48, 48)), "height"),  # the batch renders 32x32
    ]:
        with pytest.raises(InvalidArgument) as info:
            batch.add(job)
        assert info.value.field == field and info.value.message.startswith(field)
    assert len(batch) == 0


def test_explain_errors_name_the_target_fields_and_batch_items_their_own(digits_server) -> None:
    png = digit_png(2)
    bad_targets = [
        (pb.Target(class_index=10), "target.class_index"),
        (pb.Target(neuron=pb.Neuron(layer="conv9", channel=0)), "target.neuron.layer"),
        (pb.Target(neuron=pb.Neuron(layer="conv3", channel=64)), "target.neuron.channel"),
    ]
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        requests = []
        for target, field in bad_targets:
            request = pb.ExplainRequest(
                model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(image=png)
            )
            request.target.CopyFrom(target)
            err = explain_error(stub, request)
            assert bad_request(err).field == field
            assert err.details().startswith(field)
            requests.append(request)
        requests.insert(
            1,
            pb.ExplainRequest(
                model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(image=png)
            ),
        )
        reply = stub.ExplainBatch(pb.ExplainBatchRequest(requests=requests), timeout=30)
    items = list(reply.items)
    assert items[1].HasField("response")
    del items[1]
    # Each item's field path is relative to the item: what Explain names, no "requests[i].".
    for item, (_target, field) in zip(items, bad_targets, strict=True):
        assert item.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert item.error.field == field
        assert item.error.message.startswith(field)


# -- omit_array ------------------------------------------------------------------------------


def test_omit_array_leaves_out_array_and_arrays_but_not_pictures(digits_server) -> None:
    png = digit_png(3)
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)

        def grad_cam(omit: bool) -> pb.ExplainResponse:
            output = pb.OutputOptions(omit_array=omit, render=True)
            request = pb.ExplainRequest(
                model="digits", method=pb.METHOD_GRAD_CAM, input=pb.Input(image=png), output=output
            )
            return stub.Explain(request, timeout=30)

        full, omitted = grad_cam(False), grad_cam(True)
    assert full.HasField("array") and list(full.array.shape) == [32, 32]
    assert [a.name for a in full.arrays] == ["cam"] and len(full.arrays[0].tensor.data) > 0
    assert not omitted.HasField("array") and len(omitted.arrays) == 0
    # Everything else still comes, and is the same.
    assert omitted.image_png == full.image_png and omitted.image_png
    assert [p.index for p in omitted.predictions] == [p.index for p in full.predictions]
    assert omitted.target == full.target


# -- picture sizes ---------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def test_pictures_come_at_their_natural_size_or_the_size_asked(digits_server) -> None:
    """No picture is enlarged unasked: a 32x32 result gives a 32x32 map, an overlay comes at
    the size of the image sent, feature visualizations at their synthesized size; asked for
    a size, the map is drawn at it. What the proto says."""
    png = digit_png(4)
    wide = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 72), np.uint8)).save(
        wide, format="PNG"
    )
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)

        def explain(method: Any, image: bytes, **output: object) -> pb.ExplainResponse:
            request = pb.ExplainRequest(
                model="digits",
                method=method,
                input=pb.Input(image=image),
                output=pb.OutputOptions(render=True, **output),  # type: ignore[arg-type]
                layers=["conv3"] if method == pb.METHOD_ACTIVATIONS else [],
            )
            return stub.Explain(request, timeout=30)

        gbp = explain(pb.METHOD_GUIDED_BACKPROP, png)
        sized = explain(pb.METHOD_GUIDED_BACKPROP, png, picture_width=96, picture_height=64)
        cam = explain(pb.METHOD_GRAD_CAM, wide.getvalue())
        alone = explain(pb.METHOD_GRAD_CAM, wide.getvalue(), overlay=pb.OVERLAY_NONE)
        acts = explain(pb.METHOD_ACTIVATIONS, png)
        vis = list(
            stub.Visualize(
                pb.VisualizeRequest(
                    model="digits", objective=pb.Objective(class_index=1), steps=4, progress_every=2
                ),
                timeout=60,
            )
        )
    assert list(gbp.array.shape) == [1, 32, 32] and png_size(gbp.image_png) == (32, 32)
    assert png_size(sized.image_png) == (96, 64)
    # Grad-CAM is laid over the image as sent (72x40), not over the model's 32x32 input.
    assert png_size(cam.image_png) == (72, 40) and png_size(alone.image_png) == (32, 32)
    heatmap = dict((i.name, i.png) for i in acts.images)["conv3.heatmap"]
    assert png_size(heatmap) == (32, 32)  # over the 32x32 digit as sent
    for data in (gbp.image_png, sized.image_png, cam.image_png, heatmap):
        assert png_pixels(data).std() > 0
    result = vis[-1].result
    assert list(result.array.shape)[-2:] == [32, 32]
    assert [png_size(p) for p in result.images_png] == [(32, 32)]
    strips = [m.progress.image_png for m in vis if m.HasField("progress") and m.progress.image_png]
    assert strips and all(png_size(s) == (32, 32) for s in strips)


@pytest.mark.parametrize(
    ("output", "field", "words"),
    [
        ({"picture_width": 64}, "output.picture_height", "go together"),
        ({"picture_width": 9000, "picture_height": 10}, "output.picture_width", "[1, 8192]"),
        (
            {"picture_width": 8000, "picture_height": 8000},
            "output.picture_width",
            "at most 16777216",
        ),
        ({"colormap": "jett"}, "output.colormap", "valid: inferno, viridis"),
        ({"clip_percentile": 0.0}, "output.clip_percentile", "(0, 100]"),
        ({"clip_percentile": 101.0}, "output.clip_percentile", "(0, 100]"),
        ({"sign": 7}, "output.sign", "MAP_SIGN_SIGNED"),
        ({"overlay": 9}, "output.overlay", "OVERLAY_INPUT"),
    ],
)
def test_bad_picture_options_are_refused_with_their_field(
    digits_server, output: dict[str, object], field: str, words: str
) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)
        request = pb.ExplainRequest(
            model="digits",
            method=pb.METHOD_GRAD_CAM,
            input=pb.Input(image=digit_png()),
            output=pb.OutputOptions(render=True, **output),  # type: ignore[arg-type]
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(request, timeout=30)
        violation = bad_request(info.value)
        # In a batch the bad item fails alone.
        good = pb.ExplainRequest(
            model="digits", method=pb.METHOD_GRAD_CAM, input=pb.Input(image=digit_png())
        )
        both = stub.ExplainBatch(pb.ExplainBatchRequest(requests=[request, good]), timeout=30)
    assert violation.field == field and words in violation.description
    assert both.items[0].error.field == field and both.items[1].HasField("response")


# -- activations: each layer's maps sent once ------------------------------------------------


def test_activations_send_the_first_layer_once_and_name_it(digits_server) -> None:
    png = digit_png(5)
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        stub = pb_grpc.ExplainerStub(ch)

        def activations(*layers: str, top_k: int = 0) -> pb.ExplainResponse:
            request = pb.ExplainRequest(
                model="digits",
                method=pb.METHOD_ACTIVATIONS,
                input=pb.Input(image=png),
                layers=list(layers),
                top_k_channels=top_k,
            )
            return stub.Explain(request, timeout=30)

        two = activations("conv2", "conv3", top_k=4)
        default = activations()  # the model's default layer
        cam = stub.Explain(
            pb.ExplainRequest(model="digits", method=pb.METHOD_GRAD_CAM, input=pb.Input(image=png)),
            timeout=30,
        )
        plain = stub.Explain(
            pb.ExplainRequest(
                model="digits", method=pb.METHOD_GUIDED_BACKPROP, input=pb.Input(image=png)
            ),
            timeout=30,
        )
    assert two.layer == "conv2" and list(two.array.shape) == [4, 16, 16]
    assert [a.name for a in two.arrays] == ["conv2.channels", "conv3.channels", "conv3"]
    assert default.layer == "conv3" and [a.name for a in default.arrays] == []
    assert list(default.array.shape) == [64, 8, 8]
    assert cam.layer == "conv3" and plain.layer == ""
    # The client sees the first layer under its name too: the same array, not a copy.
    from deepvis import _convert

    exp = _convert.explanation_from_pb(two)
    assert exp.arrays["conv2"] is exp.array
    assert list(exp.arrays) == ["conv2.channels", "conv2", "conv3.channels", "conv3"]
