"""Access and model safety: model_root confinement, loopback-only plaintext, TLS, bearer tokens."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pool

from .config import AccessConfig, ConfigError

log = logging.getLogger(__name__)

# Kubernetes probes and grpcurl call these without credentials; they reveal no model data.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_AUTHORIZATION = "authorization"
_BEARER = "bearer"


def resolve_under_root(path: Path, root: Path, what: str) -> Path:
    """Returns `path` resolved (symlinks followed) if it lies inside `root`, else ConfigError.

    Resolving first is what makes the check hold: a `..` or a symlink that leads out of the
    root is judged by where it really leads, and the file is then opened by that real path.
    """
    real_root = root.resolve()
    if not real_root.is_dir():
        raise ConfigError(f"model_root {root} is not a directory")
    real = path.resolve()
    if not real.is_relative_to(real_root):
        raise ConfigError(
            f"{what} {path} resolves to {real}, outside model_root {real_root}; refused"
        )
    return real


def listen_host(address: str) -> str | None:
    """The host part of a gRPC listening address; None for a Unix domain socket."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    host, sep, _port = address.rpartition(":")
    if not sep:
        host = address
    return host.removeprefix("[").removesuffix("]")


def is_loopback(address: str) -> bool:
    """Whether a listening address is reachable only from this machine.

    Loopback means 127.0.0.0/8, ::1 (also IPv4-mapped) or `localhost`; a Unix socket counts
    too. Any other host name, an empty host and the wildcards 0.0.0.0 and :: do not.
    """
    host = listen_host(address)
    if host is None:
        return True
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # A name other than localhost may resolve to any interface: not trusted.
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_listen_address(address: str, *, tls: bool, allow_insecure_remote: bool) -> None:
    """Refuses plaintext on an address other machines can reach, unless the operator opted in."""
    if tls or is_loopback(address):
        return
    if not allow_insecure_remote:
        raise ConfigError(
            f"refusing to listen in plaintext on {address}, which other machines can reach: "
            "turn on TLS ([server].tls_cert and tls_key, or --tls-cert and --tls-key), "
            "listen on a loopback address (127.0.0.1), or, on a network you trust, set "
            "[server].allow_insecure_remote = true (or pass --allow-insecure-remote)"
        )
    log.warning(
        "listening in plaintext on %s (allow_insecure_remote): requests, results and any "
        "bearer tokens travel unencrypted",
        address,
    )


def _read_pem(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"[server].{key} {path}: {e.strerror or e}") from None
    # gRPC only notices a bad file at the first handshake; say it at start-up instead.
    if b"-----BEGIN " not in data:
        raise ConfigError(f"[server].{key} {path} is not a PEM file")
    return data


def server_credentials(config: AccessConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from tls_cert/tls_key (and client certificates when tls_client_ca is
    set); None when TLS is off."""
    # Checked again here (config.py checks the file) because command-line flags replace keys.
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError(
            "tls_cert and tls_key go together (--tls-cert and --tls-key, or [server] keys)"
        )
    if config.tls_cert is None or config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key (TLS on)")
        return None
    cert = _read_pem(config.tls_cert, "tls_cert")
    key = _read_pem(config.tls_key, "tls_key")
    ca = None if config.tls_client_ca is None else _read_pem(config.tls_client_ca, "tls_client_ca")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def load_tokens(path: Path) -> tuple[bytes, ...]:
    """Reads bearer tokens, one a line; blank lines and `#` comments are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"[server].auth_tokens_file {path}: {e}") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(c.isspace() for c in token) or not token.isascii() or not token.isprintable():
            # gRPC metadata carries printable ASCII only: such a token could never match.
            raise ConfigError(
                f"[server].auth_tokens_file {path}, line {number}: a token must be printable "
                "ASCII without spaces"
            )
        tokens.append(token.encode("ascii"))
    if not tokens:
        raise ConfigError(
            f"[server].auth_tokens_file {path} holds no token: every call would be refused"
        )
    return tuple(tokens)


def _service_of(method: str) -> str:
    # "/package.Service/Method" -> "package.Service"
    return method.lstrip("/").partition("/")[0]


Refusal = tuple[grpc.StatusCode, str]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata, with a token from a fixed set, on every
    call except health checks and reflection.

    No token (or another scheme): UNAUTHENTICATED. A token not in the set: PERMISSION_DENIED.
    """

    def __init__(self, tokens: Iterable[bytes]) -> None:
        self._tokens = tuple(tokens)
        if not self._tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")

    @classmethod
    def from_file(cls, path: Path) -> BearerTokenInterceptor:
        return cls(load_tokens(path))

    def check(self, metadata: Sequence[tuple[str, Any]] | None) -> Refusal | None:
        """Returns why a call with this metadata is refused, or None when it may go on."""
        value = next((v for k, v in metadata or () if k == _AUTHORIZATION), None)
        if value is None:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs a bearer token: send metadata 'authorization: Bearer <token>'",
            )
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _BEARER or not token:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "the authorization metadata must be 'Bearer <token>'",
            )
        presented = token.encode("utf-8")
        # Compare with every token, each in constant time, so timing tells nothing about
        # which token (or how much of one) matched.
        accepted = False
        for known in self._tokens:
            accepted |= hmac.compare_digest(presented, known)
        if not accepted:
            return grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not accepted"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if _service_of(method) in OPEN_SERVICES:
            return await continuation(handler_call_details)
        refusal = self.check(handler_call_details.invocation_metadata)
        if refusal is None:
            return await continuation(handler_call_details)
        log.info("refused %s: %s", method, refusal[0].name)
        # The continuation is not called: the interceptors after this one (observability)
        # and the handler never see a refused call.
        return _refusing_handler(method, *refusal)


def _streaming(method: str) -> tuple[bool, bool]:
    """(request streaming, response streaming) of "/package.Service/Method", from the
    registered protobuf descriptors; unary for a method no descriptor names."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return False, False
    return bool(found.client_streaming), bool(found.server_streaming)


def _refusing_handler(method: str, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the method's streaming kind that ends the call with `code`."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    # No deserializer: a refused request is never parsed.
    request_streaming, response_streaming = _streaming(method)
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
