"""Server reflection over grpc.reflection.v1 and v1alpha, serving deepvis.proto with its comments."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from deepvis.v1 import deepvis_pb2

log = logging.getLogger(__name__)

V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICES = (V1_SERVICE, V1ALPHA_SERVICE)
_METHOD = "ServerReflectionInfo"

# The descriptor set `make proto` writes beside the stubs: deepvis.proto with its comments.
DESCRIPTOR_SET = "deepvis.binpb"

# Names a client sends are echoed in messages; never at any length.
_MAX_ECHO = 200

_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"


def commented_deepvis_file() -> bytes:
    """deepvis.proto's FileDescriptorProto with its comments (source_code_info), serialized.

    Read from the packaged descriptor set. If that set is missing or describes another
    version of the file than the stubs the server runs on, the stubs' own descriptor
    (without comments) is served instead: reflection must describe what is served.
    """
    stubs = descriptor_pb2.FileDescriptorProto.FromString(deepvis_pb2.DESCRIPTOR.serialized_pb)
    try:
        data = resources.files("deepvis.v1").joinpath(DESCRIPTOR_SET).read_bytes()
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    except Exception as e:  # noqa: BLE001 - any failure means: serve without comments
        log.warning(
            "reflection serves deepvis.proto without comments: %s unreadable (%s)",
            DESCRIPTOR_SET,
            e,
        )
        return deepvis_pb2.DESCRIPTOR.serialized_pb
    commented = next((f for f in files if f.name == stubs.name), None)
    if commented is None or _without_comments(commented) != stubs:
        log.warning(
            "reflection serves deepvis.proto without comments: %s does not match the stubs "
            "(run `make proto`)",
            DESCRIPTOR_SET,
        )
        return deepvis_pb2.DESCRIPTOR.serialized_pb
    return commented.SerializeToString()


def _without_comments(
    file: descriptor_pb2.FileDescriptorProto,
) -> descriptor_pb2.FileDescriptorProto:
    """The file as the generated stubs embed it: no source_code_info, no json_name."""
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(file)
    bare.ClearField("source_code_info")

    def drop_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            drop_json_names(m.nested_type)

    drop_json_names(bare.message_type)
    return bare


def v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, built from v1alpha's descriptor.

    The two files define the same messages with the same numbers (v1 is v1alpha promoted),
    so renaming the package gives v1's file; grpcio-reflection ships only v1alpha.
    """
    file = descriptor_pb2.FileDescriptorProto()
    rpb.DESCRIPTOR.CopyToProto(file)
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    file.name = _V1_FILE
    file.package = _V1_PACKAGE
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for service in file.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    file.options.ClearField("deprecated")  # v1alpha is deprecated in favour of v1
    return file


def _error(request: Any, code: grpc.StatusCode, message: str) -> Any:
    return rpb.ServerReflectionResponse(
        error_response=rpb.ErrorResponse(error_code=code.value[0], error_message=message),
        original_request=request,
    )


class ReflectionServicer:
    """Answers ServerReflectionInfo streams, for both reflection versions.

    Files come from the default descriptor pool (every file this process has loaded stubs
    for), except deepvis.proto, served with its comments, and v1's reflection.proto, built
    here when no loaded package defines it.
    """

    def __init__(self, service_names: Iterable[str]) -> None:
        self.service_names = tuple(sorted(set(service_names)))
        self._default = descriptor_pool.Default()
        # Files only reflection knows of; searched after the default pool.
        self._extra = descriptor_pool.DescriptorPool()
        try:
            self._default.FindFileContainingSymbol(V1_SERVICE)
        except KeyError:
            self._extra.AddSerializedFile(v1_reflection_file().SerializeToString())
        self._overrides = {deepvis_pb2.DESCRIPTOR.name: commented_deepvis_file()}
        # File name -> its answer. Only files a pool holds get here, so it stays small.
        self._answers: dict[str, tuple[bytes, ...]] = {}

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # One answer per request, each sent before the next request is read: a client that
        # does not read its answers stops being read from (gRPC flow control), so a stream
        # holds at most one answer at a time.
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: Any) -> Any:
        """The ServerReflectionResponse to one ServerReflectionRequest."""
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                return rpb.ServerReflectionResponse(
                    list_services_response=rpb.ListServiceResponse(
                        service=[rpb.ServiceResponse(name=n) for n in self.service_names]
                    ),
                    original_request=request,
                )
            if kind == "file_by_filename":
                file = self._find(lambda pool: pool.FindFileByName(request.file_by_filename))
            elif kind == "file_containing_symbol":
                symbol = request.file_containing_symbol
                file = self._find(lambda pool: pool.FindFileContainingSymbol(symbol))
            elif kind == "file_containing_extension":
                ext = request.file_containing_extension
                file = self._find(
                    lambda pool: (
                        pool.FindExtensionByNumber(
                            pool.FindMessageTypeByName(ext.containing_type), ext.extension_number
                        ).file
                    )
                )
            elif kind == "all_extension_numbers_of_type":
                return self._extension_numbers(request)
            else:
                return _error(
                    request,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a reflection request sets one of file_by_filename, file_containing_symbol, "
                    "file_containing_extension, all_extension_numbers_of_type or list_services",
                )
        except KeyError:
            return _error(request, grpc.StatusCode.NOT_FOUND, self._not_found(request, kind))
        return rpb.ServerReflectionResponse(
            file_descriptor_response=rpb.FileDescriptorResponse(
                file_descriptor_proto=self._with_dependencies(file.name)
            ),
            original_request=request,
        )

    def _find(
        self, lookup: Callable[[descriptor_pool.DescriptorPool], FileDescriptor]
    ) -> FileDescriptor:
        """The first answer of `lookup` in the default pool, then in reflection's own."""
        try:
            return lookup(self._default)
        except KeyError:
            return lookup(self._extra)

    def _extension_numbers(self, request: Any) -> Any:
        name = request.all_extension_numbers_of_type
        for pool in (self._default, self._extra):
            try:
                message = pool.FindMessageTypeByName(name)
            except KeyError:
                continue
            return rpb.ServerReflectionResponse(
                all_extension_numbers_response=rpb.ExtensionNumberResponse(
                    base_type_name=message.full_name,
                    extension_number=sorted(e.number for e in pool.FindAllExtensions(message)),
                ),
                original_request=request,
            )
        return _error(
            request,
            grpc.StatusCode.NOT_FOUND,
            self._not_found(request, "all_extension_numbers_of_type"),
        )

    @staticmethod
    def _not_found(request: Any, kind: str | None) -> str:
        if kind == "file_by_filename":
            return f"no file named '{request.file_by_filename[:_MAX_ECHO]}' is known here"
        if kind == "file_containing_symbol":
            return (
                f"no known file defines the symbol '{request.file_containing_symbol[:_MAX_ECHO]}'"
                " (fully qualified, e.g. deepvis.v1.ExplainRequest)"
            )
        if kind == "file_containing_extension":
            ext = request.file_containing_extension
            return (
                f"no known extension {ext.extension_number} of '{ext.containing_type[:_MAX_ECHO]}'"
            )
        return f"no known message type '{request.all_extension_numbers_of_type[:_MAX_ECHO]}'"

    def _with_dependencies(self, name: str) -> tuple[bytes, ...]:
        """The serialized file `name` and every file it imports, transitively, it first."""
        cached = self._answers.get(name)
        if cached is not None:
            return cached
        out: dict[str, bytes] = {}

        def visit(file: FileDescriptor) -> None:
            if file.name in out:
                return
            data = self._overrides.get(file.name)
            if data is None:
                proto = descriptor_pb2.FileDescriptorProto()
                file.CopyToProto(proto)
                data = proto.SerializeToString()
            out[file.name] = data
            for dependency in file.dependencies:
                visit(dependency)

        visit(self._find(lambda pool: pool.FindFileByName(name)))
        answer = self._answers[name] = tuple(out.values())
        return answer


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> ReflectionServicer:
    """Serves reflection on `server` under both service paths; lists `service_names` and
    both reflection services."""
    servicer = ReflectionServicer([*service_names, *REFLECTION_SERVICES])
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(s, {_METHOD: handler}) for s in REFLECTION_SERVICES]
    )
    return servicer
