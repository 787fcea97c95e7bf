"""What both clients' channels share: addresses, channel options, credentials and replays."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import grpc

from deepvis._exceptions import from_rpc_error

__all__ = [
    "AddressLike",
    "Attempts",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Metadata",
    "SERVICE_CONFIG",
    "channel_options",
    "channel_target",
    "security",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_AUTHORIZATION = "authorization"

AddressLike = str | Sequence[str]
"""A server's "host:port", several of them (a sequence, or one string joined by commas), or a
gRPC target such as "dns:///name:port" or "ipv4:10.0.0.1:50051,10.0.0.2:50051"."""

# gRPC's own resolvers: a string that starts with one of these schemes is a target already.
_TARGET_SCHEMES = frozenset(
    {"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"}
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

_SERVICE = "deepvis.v1.Explainer"
_MAX_ATTEMPTS = 5
_INITIAL_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0
_BACKOFF_MULTIPLIER = 2
# The default service config of every channel (gRPC uses it unless the caller's `options`
# set "grpc.service_config"). round_robin spreads calls over every address the target
# resolves to, and only over those that are connected. The retry policy replays a call that
# failed with UNAVAILABLE (a replica that is down or went away, a full queue) after a
# jittered exponential backoff, and round_robin picks the next ready replica for it. gRPC
# retries only until the call is committed, i.e. until the server's response headers arrive.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": _SERVICE}],
            "retryPolicy": {
                "maxAttempts": _MAX_ATTEMPTS,
                "initialBackoff": f"{_INITIAL_BACKOFF_S:g}s",
                "maxBackoff": f"{_MAX_BACKOFF_S:g}s",
                "backoffMultiplier": _BACKOFF_MULTIPLIER,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
# Room for a request's metadata beside its largest message in the retry buffer.
_RETRY_BUFFER_SLACK = 64 * 1024


def _split_host_port(address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (an IPv6 host in brackets: [::1]:port)")
    return host, port


def channel_target(address: AddressLike) -> str:
    """The gRPC target that reaches `address`, as `Client` and `AsyncClient` accept it.

    One "host:port" stays as it is (gRPC resolves the name through DNS); several become one
    `ipv4:` (or `ipv6:`) target listing them, so that gRPC's round_robin balances over them;
    a string that starts with a gRPC resolver scheme ("dns:", "ipv4:", "ipv6:", "unix:", ...)
    or contains "://" is already a target and passes through.

    Raises:
        ValueError: No address, a malformed one, or several that are not all IPv4 or all
            IPv6 literals (a name that resolves to several replicas: "dns:///name:port").
        TypeError: `address` is neither a str nor a sequence of str.
    """
    if isinstance(address, str):
        text = address.strip()
        match = _SCHEME.match(text)
        if "://" in text or (match is not None and match.group(1).lower() in _TARGET_SCHEMES):
            return text
        items = text.split(",")
    elif isinstance(address, Sequence) and all(isinstance(a, str) for a in address):
        items = list(address)
    else:
        raise TypeError(f"address must be a str or a sequence of str, not {type(address).__name__}")
    addresses = [a.strip() for a in items if a.strip()]
    if not addresses:
        raise ValueError("no server address given")
    if len(addresses) == 1:
        return addresses[0]
    versions = set()
    for item in addresses:
        host, _ = _split_host_port(item)
        try:
            versions.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"several addresses must be IP literals, not {host!r}: use "
                '"dns:///name:port" for a name that resolves to every replica'
            ) from None
    if len(versions) > 1:
        raise ValueError("several addresses must be all IPv4 or all IPv6")
    return f"ipv{versions.pop()}:" + ",".join(addresses)


def _default_authority(target: str) -> str | None:
    """The authority of a target listing several IP addresses: the first one.

    gRPC's own default is the whole list, which no server certificate names; the first
    address is what TLS then checks every replica's certificate against (the option
    "grpc.ssl_target_name_override" names another), and the `:authority` each call carries.
    """
    scheme, _, rest = target.partition(":")
    if scheme.lower() not in ("ipv4", "ipv6") or "," not in rest:
        return None
    return rest.split(",", 1)[0].strip() or None


def channel_options(
    max_message_bytes: int,
    options: Sequence[tuple[str, Any]] | None,
    target: str | None = None,
) -> list[tuple[str, Any]]:
    """The options of a channel to `target`: ours, then the caller's `options` over them."""
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": max_message_bytes,
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.service_config": json.dumps(SERVICE_CONFIG),
        # Our config, not one a DNS TXT record might carry.
        "grpc.service_config_disable_resolution": 1,
        "grpc.enable_retries": 1,
        # gRPC keeps a call's request to replay it only up to this size (256 KiB by default):
        # beyond it the call is committed at once and never retried.
        "grpc.per_rpc_retry_buffer_size": max_message_bytes + _RETRY_BUFFER_SLACK,
    }
    authority = None if target is None else _default_authority(target)
    if authority is not None:
        merged["grpc.default_authority"] = authority
    # A dict, not a concatenation, so that a caller's option replaces ours rather than
    # depending on which of two duplicate channel args gRPC honours.
    merged.update(options or ())
    return list(merged.items())


Metadata = tuple[tuple[str, str], ...]


def _check_token(token: str | None) -> None:
    if token is None:
        return
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    # gRPC metadata values are printable ASCII; a newline would also split the header.
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("token must be non-empty printable ASCII without spaces")


def security(
    *,
    token: str | None,
    tls: bool,
    root_certificates: bytes | None,
    client_certificate: bytes | None,
    client_key: bytes | None,
) -> tuple[grpc.ChannelCredentials | None, Metadata | None]:
    """Channel credentials (None: plaintext) and the metadata to send with every call."""
    _check_token(token)
    if (client_certificate is None) != (client_key is None):
        raise ValueError("client_certificate and client_key go together")
    if not tls and root_certificates is None and client_certificate is None:
        # Call credentials need a secure channel, so on plaintext the token rides in each
        # call's metadata instead; the server only allows plaintext on loopback by default.
        return None, None if token is None else ((_AUTHORIZATION, f"Bearer {token}"),)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=client_key,
        certificate_chain=client_certificate,
    )
    if token is not None:
        # Sent as "authorization: Bearer <token>", and only ever over this TLS channel.
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return credentials, None


def _committed_unavailable(err: grpc.RpcError) -> bool:
    """Whether `err` is UNAVAILABLE that came after the server's response headers.

    A deepvis server sends its headers (x-request-id) as soon as a call reaches the servicer,
    which commits the call: gRPC's retry policy then no longer replays it, e.g. when the
    replica dies while computing. The clients replay such a unary call (all of them are
    idempotent), or a Visualize call that has sent no message yet, themselves, with the
    policy's budget; UNAVAILABLE before the headers was already retried by gRPC.
    """
    try:
        return err.code() == grpc.StatusCode.UNAVAILABLE and bool(err.initial_metadata())
    except Exception:  # noqa: BLE001 - an RpcError that is not a Call: nothing to replay
        return False


class Attempts:
    """The deadline and backoff of one call across its replays.

    Each attempt runs in `with attempts:`, which turns a failed call's `grpc.RpcError` into
    its `DeepvisError`, unless the call is to be replayed: then it swallows the error and
    `backoff` says how long to wait before the next attempt. Both clients loop on it::

        while True:
            with attempts:
                return stub_method(request, timeout=attempts.remaining())
            time.sleep(attempts.backoff)  # asyncio.sleep in AsyncClient
    """

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._next_backoff = _INITIAL_BACKOFF_S
        self._attempt = 1
        # Seconds to wait before the next attempt; 0 until an attempt fails.
        self.backoff = 0.0
        # Set once a stream has sent a message: a replay would send it again.
        self.started = False

    def remaining(self) -> float | None:
        """Seconds left until the call's deadline; None without one."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def replay_after(self, err: grpc.RpcError) -> float | None:
        """Seconds to wait before replaying the call that failed with `err`; None: give up."""
        if self.started or self._attempt >= _MAX_ATTEMPTS or not _committed_unavailable(err):
            return None
        delay = random.uniform(0.0, self._next_backoff)
        self._next_backoff = min(self._next_backoff * _BACKOFF_MULTIPLIER, _MAX_BACKOFF_S)
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        self._attempt += 1
        return delay

    def __enter__(self) -> Attempts:
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _traceback: object) -> bool:
        if not isinstance(exc, grpc.RpcError):
            return False
        delay = self.replay_after(exc)
        if delay is None:
            raise from_rpc_error(exc) from None
        self.backoff = delay
        return True
