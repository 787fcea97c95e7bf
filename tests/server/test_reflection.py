"""Server reflection over grpc.reflection.v1 and v1alpha, from a plain gRPC client: services,
files with the .proto's comments, errors, and the bearer-token gate left open for it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import load_config
from deepvis_server.reflection import ReflectionServicer
from deepvis_server.server import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("grpc.reflection.v1", "grpc.reflection.v1alpha")
SERVICES = [
    "deepvis.v1.Explainer",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
]


def reflect(
    channel: grpc.Channel, version: str, requests: Sequence[rpb.ServerReflectionRequest]
) -> list[rpb.ServerReflectionResponse]:
    """One ServerReflectionInfo stream at `version`'s path. v1's messages are v1alpha's, field
    for field, so v1alpha's classes (de)serialize both."""
    call = channel.stream_stream(
        f"/{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=30))


def files_of(
    response: rpb.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in response.file_descriptor_response.file_descriptor_proto
    ]
    return {f.name: f for f in files}


def leading_comment(file: descriptor_pb2.FileDescriptorProto, message: str, field: str) -> str:
    """The comment above `message.field` in the file's source_code_info."""
    m = next(i for i, d in enumerate(file.message_type) if d.name == message)
    f = next(i for i, d in enumerate(file.message_type[m].field) if d.name == field)
    # Paths: 4 = FileDescriptorProto.message_type, 2 = DescriptorProto.field.
    path = [4, m, 2, f]
    loc = next((x for x in file.source_code_info.location if list(x.path) == path), None)
    assert loc is not None, f"no source location for {message}.{field}"
    return loc.leading_comments


def proto_comment_above(message: str, field: str) -> str:
    """The same comment read straight from the .proto text: the independent oracle."""
    lines = (ROOT / "protos/deepvis/v1/deepvis.proto").read_text().splitlines()
    start = lines.index(f"message {message} {{")
    declares = re.compile(rf"\b{field} = \d+;$")
    i = next(j for j in range(start, len(lines)) if declares.search(lines[j]))
    comment: list[str] = []
    while lines[i - 1].strip().startswith("//"):
        i -= 1
        comment.insert(0, lines[i].strip().removeprefix("//"))
    return "\n".join(comment) + "\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_list_services_names_explainer_health_and_both_reflections(digits_server, version) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        (reply,) = reflect(ch, version, [rpb.ServerReflectionRequest(list_services="")])
    assert [s.name for s in reply.list_services_response.service] == SERVICES
    assert reply.original_request.HasField("list_services")


@pytest.mark.parametrize("version", VERSIONS)
def test_file_containing_symbol_carries_the_proto_comments(digits_server, version) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        (reply,) = reflect(
            ch,
            version,
            [rpb.ServerReflectionRequest(file_containing_symbol="deepvis.v1.ExplainRequest")],
        )
    files = files_of(reply)
    assert list(files) == ["deepvis/v1/deepvis.proto"]
    file = files["deepvis/v1/deepvis.proto"]
    assert file.source_code_info.location, "served without source_code_info"
    for message, field in [
        ("ExplainRequest", "model"),
        ("ExplainRequest", "method"),
        ("OutputOptions", "omit_array"),
        ("VisualizeResult", "images_png"),
    ]:
        comment = leading_comment(file, message, field)
        assert comment == proto_comment_above(message, field)
        assert len(comment) > 10
    # What is served is what the server runs: the stubs' file, comments aside.
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(file)
    bare.ClearField("source_code_info")
    for m in bare.message_type:
        for f in m.field:
            f.ClearField("json_name")
    assert bare == descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)


@pytest.mark.parametrize("version", VERSIONS)
def test_served_descriptors_build_working_messages(digits_server, version) -> None:
    """A client that knows only what reflection serves builds ExplainRequest and calls Explain."""
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        (reply,) = reflect(
            ch,
            version,
            [rpb.ServerReflectionRequest(file_containing_symbol="deepvis.v1.Explainer")],
        )
        pool = descriptor_pool.DescriptorPool()  # not the default one, which has the stubs
        for file in files_of(reply).values():
            pool.AddSerializedFile(file.SerializeToString())
        service = pool.FindServiceByName("deepvis.v1.Explainer")
        method = service.methods_by_name["Explain"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        png = (ROOT / "server/deepvis_server/default_model/samples/digit_3.png").read_bytes()
        request = request_cls(model="digits", method=1)
        request.input.image = png
        call = ch.unary_unary(
            "/deepvis.v1.Explainer/Explain",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        reply = call(request, timeout=30)
        expected = pb_grpc.ExplainerStub(ch).Explain(
            pb.ExplainRequest(
                model="digits", method=pb.METHOD_GUIDED_BACKPROP, input={"image": png}
            ),
            timeout=30,
        )
    assert list(reply.array.shape) == [1, 32, 32]
    assert reply.array.data == expected.array.data
    assert reply.predictions[0].index == expected.predictions[0].index == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_file_by_filename_and_the_v1_reflection_file(digits_server, version) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        replies = reflect(
            ch,
            version,
            [
                rpb.ServerReflectionRequest(file_by_filename="deepvis/v1/deepvis.proto"),
                rpb.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"
                ),
                rpb.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1alpha.ServerReflectionRequest"
                ),
                rpb.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
            ],
        )
    assert files_of(replies[0])["deepvis/v1/deepvis.proto"].source_code_info.location
    v1 = files_of(replies[1])["grpc/reflection/v1/reflection.proto"]
    v1alpha = next(iter(files_of(replies[2]).values()))
    assert v1.package == "grpc.reflection.v1" and v1alpha.package == "grpc.reflection.v1alpha"
    # The same messages, numbers and types, only in the other package.
    assert [m.name for m in v1.message_type] == [m.name for m in v1alpha.message_type]
    for a, b in zip(v1.message_type, v1alpha.message_type, strict=True):
        assert [(f.name, f.number, f.type) for f in a.field] == [
            (f.name, f.number, f.type) for f in b.field
        ]
        for f in a.field:
            assert not f.type_name or f.type_name.startswith(".grpc.reflection.v1.")
    (method,) = v1.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming
    # The v1 file is well formed: a fresh pool accepts it on its own.
    descriptor_pool.DescriptorPool().AddSerializedFile(v1.SerializeToString())
    health = files_of(replies[3])
    assert any(f.package == "grpc.health.v1" for f in health.values())


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_names_get_not_found_and_the_stream_goes_on(digits_server, version) -> None:
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        replies = reflect(
            ch,
            version,
            [
                rpb.ServerReflectionRequest(file_containing_symbol="deepvis.v1.NoSuchMessage"),
                rpb.ServerReflectionRequest(file_by_filename="no/such.proto"),
                rpb.ServerReflectionRequest(),  # no request kind at all
                rpb.ServerReflectionRequest(list_services=""),
            ],
        )
    assert len(replies) == 4
    for reply, code, fragment in [
        (replies[0], grpc.StatusCode.NOT_FOUND, "'deepvis.v1.NoSuchMessage'"),
        (replies[1], grpc.StatusCode.NOT_FOUND, "'no/such.proto'"),
        (replies[2], grpc.StatusCode.INVALID_ARGUMENT, "file_containing_symbol"),
    ]:
        assert reply.WhichOneof("message_response") == "error_response"
        assert reply.error_response.error_code == code.value[0]
        assert fragment in reply.error_response.error_message
    assert replies[0].original_request.file_containing_symbol == "deepvis.v1.NoSuchMessage"
    assert [s.name for s in replies[3].list_services_response.service] == SERVICES


def test_reflection_is_open_on_a_server_that_needs_tokens(tmp_path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("alpha-token-one\n")
    config = load_config()
    config = replace(config, access=replace(config.access, auth_tokens_file=tokens))
    with serve_in_thread(config, "127.0.0.1:0") as server:
        with grpc.insecure_channel(server.bound_address) as ch:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.ExplainerStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for version in VERSIONS:
                replies = reflect(
                    ch,
                    version,
                    [
                        rpb.ServerReflectionRequest(list_services=""),
                        rpb.ServerReflectionRequest(file_containing_symbol="deepvis.v1.Explainer"),
                    ],
                )
                assert [s.name for s in replies[0].list_services_response.service] == SERVICES
                assert "deepvis/v1/deepvis.proto" in files_of(replies[1])


KILLED_CLIENT = """
import itertools, sys
import grpc
from grpc_reflection.v1alpha import reflection_pb2 as r

channel = grpc.insecure_channel(sys.argv[1])
call = channel.stream_stream(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    request_serializer=r.ServerReflectionRequest.SerializeToString,
    response_deserializer=r.ServerReflectionResponse.FromString,
)
ask = r.ServerReflectionRequest(file_containing_symbol="deepvis.v1.ExplainRequest")
replies = call(ask for _ in itertools.count())  # asks for ever, reads one answer only
next(replies)
print("streaming", flush=True)
sys.stdin.read()
"""


def test_a_killed_client_that_stopped_reading_leaves_the_server_serving(
    digits_server, monkeypatch
) -> None:
    """A client asks without end, reads one answer, stops reading and is killed: the server
    stops answering once gRPC's flow-control window is full (it holds no growing backlog),
    and goes on serving everyone after the kill."""
    answered = [0]
    answer = ReflectionServicer.answer

    def counting(self: ReflectionServicer, request: rpb.ServerReflectionRequest):
        answered[0] += 1
        return answer(self, request)

    monkeypatch.setattr(ReflectionServicer, "answer", counting)  # counts, changes nothing
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, digits_server.bound_address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"streaming"
        # The answers it does not read fill the window, then the server waits.
        seen, deadline = -1, time.monotonic() + 60
        while answered[0] != seen and time.monotonic() < deadline:
            seen = answered[0]
            time.sleep(1.0)
        assert answered[0] == seen, "the server kept answering a client that reads nothing"
        assert 1 < seen < 5000  # about 4 MB of 30 KB answers
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with grpc.insecure_channel(digits_server.bound_address) as ch:
        for version in VERSIONS:
            (reply,) = reflect(ch, version, [rpb.ServerReflectionRequest(list_services="")])
            assert [s.name for s in reply.list_services_response.service] == SERVICES
        listed = pb_grpc.ExplainerStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
        assert [m.name for m in listed.models] == ["digits"]
