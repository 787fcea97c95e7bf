"""Access over real gRPC: loopback-only plaintext, TLS and mutual TLS, bearer tokens, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import deepvis
from deepvis.v1 import deepvis_pb2 as pb
from deepvis.v1 import deepvis_pb2_grpc as pb_grpc
from deepvis_server.config import ConfigError, ServerConfig, load_config
from deepvis_server.process import ServerProcess
from deepvis_server.security import BearerTokenInterceptor, is_loopback, load_tokens
from deepvis_server.server import DeepvisServer, model_health_service, serve_in_thread
from pki import issue_certificate, issue_localhost_server, make_ca

TOKENS = "# operators\n\nalpha-0123456789\n   beta-token-two   \n# retired: gamma\n"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and localhost, a client certificate,
    and a client certificate from another CA; made here, valid for a day."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    issue_localhost_server(d)
    client_ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    issue_certificate(d, "client", "ca", "/CN=deepvis test client", client_ext)
    issue_certificate(d, "stranger", "other-ca", "/CN=deepvis stranger", client_ext)
    tokens = d / "tokens.txt"
    tokens.write_text(TOKENS)
    paths = {p.stem: p for p in d.glob("*.pem")}
    paths |= {f"{p.stem}-key": p for p in d.glob("*.key")}
    return {**paths, "tokens": tokens, "dir": d}


def _serve(config: ServerConfig, host: str = "127.0.0.1") -> Iterator[DeepvisServer]:
    with serve_in_thread(config, f"{host}:0") as server:
        yield server


def _access(**changes: Any) -> ServerConfig:
    """The default configuration with these access settings."""
    config = load_config()
    return replace(config, access=replace(config.access, **changes))


@pytest.fixture(scope="module")
def tls_server(pki) -> Iterator[DeepvisServer]:
    yield from _serve(_access(tls_cert=pki["server"], tls_key=pki["server-key"]))


@pytest.fixture(scope="module")
def mtls_server(pki) -> Iterator[DeepvisServer]:
    yield from _serve(
        _access(tls_cert=pki["server"], tls_key=pki["server-key"], tls_client_ca=pki["ca"])
    )


@pytest.fixture(scope="module")
def token_server(pki) -> Iterator[DeepvisServer]:
    yield from _serve(_access(auth_tokens_file=pki["tokens"]))


@pytest.fixture(scope="module")
def tls_token_server(pki) -> Iterator[DeepvisServer]:
    yield from _serve(
        _access(tls_cert=pki["server"], tls_key=pki["server-key"], auth_tokens_file=pki["tokens"])
    )


def _port(server: DeepvisServer) -> int:
    assert server.port is not None
    return server.port


# --- TLS ---------------------------------------------------------------------------------


def test_tls_round_trip(tls_server, pki, sample_paths) -> None:
    ca = pki["ca"].read_bytes()
    for host in ("127.0.0.1", "localhost"):  # both names are in the certificate
        address = f"{host}:{_port(tls_server)}"
        with deepvis.Client(address, timeout=30, root_certificates=ca) as client:
            result = client.explain(str(sample_paths[7]))
            assert result.target == 7
            assert result.array is not None and result.array.shape == (1, 32, 32)


def test_tls_round_trip_async(tls_server, pki, sample_paths) -> None:
    async def main() -> int | deepvis.Neuron | None:
        async with deepvis.AsyncClient(
            tls_server.bound_address, timeout=30, tls=True, root_certificates=pki["ca"].read_bytes()
        ) as client:
            return (await client.explain(str(sample_paths[2]))).target

    assert asyncio.run(main()) == 2


def test_tls_server_refuses_plaintext_and_untrusted_clients(tls_server) -> None:
    with deepvis.Client(tls_server.bound_address, timeout=5) as client:
        with pytest.raises(deepvis.Unavailable):
            client.models()
    # TLS, but the test CA is not among the system's roots.
    with deepvis.Client(tls_server.bound_address, timeout=5, tls=True) as client:
        with pytest.raises(deepvis.Unavailable):
            client.models()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server, pki, sample_paths) -> None:
    ca = pki["ca"].read_bytes()
    with deepvis.Client(mtls_server.bound_address, timeout=5, root_certificates=ca) as client:
        with pytest.raises(deepvis.Unavailable):
            client.models()
    stranger = {
        "client_certificate": pki["stranger"].read_bytes(),
        "client_key": pki["stranger-key"].read_bytes(),
    }
    with deepvis.Client(
        mtls_server.bound_address, timeout=5, root_certificates=ca, **stranger
    ) as client:
        with pytest.raises(deepvis.Unavailable):
            client.models()
    with deepvis.Client(
        mtls_server.bound_address,
        timeout=30,
        root_certificates=ca,
        client_certificate=pki["client"].read_bytes(),
        client_key=pki["client-key"].read_bytes(),
    ) as client:
        assert client.explain(str(sample_paths[4])).target == 4


def test_bad_tls_material_is_a_config_error(pki, tmp_path) -> None:
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    for changes, message in [
        ({"tls_cert": pki["server"]}, "go together"),
        ({"tls_client_ca": pki["ca"]}, "needs tls_cert"),
        ({"tls_cert": not_pem, "tls_key": pki["server-key"]}, "not a PEM file"),
        ({"tls_cert": tmp_path / "missing.pem", "tls_key": pki["server-key"]}, "missing.pem"),
    ]:
        with pytest.raises(ConfigError, match=message):
            with serve_in_thread(_access(**changes), "127.0.0.1:0"):
                pass


# --- Bearer tokens -----------------------------------------------------------------------


def test_tokens_file_ignores_blank_lines_and_comments(pki, tmp_path) -> None:
    assert load_tokens(pki["tokens"]) == (b"alpha-0123456789", b"beta-token-two")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_tokens(empty)
    with pytest.raises(ConfigError, match="not found|No such file"):
        load_tokens(tmp_path / "missing.txt")


def test_token_missing_wrong_and_right(token_server, sample_paths) -> None:
    address = token_server.bound_address
    image = str(sample_paths[5])
    with deepvis.Client(address, timeout=10) as client:
        with pytest.raises(deepvis.Unauthenticated) as info:
            client.models()
        assert "Bearer" in info.value.details
        with pytest.raises(deepvis.Unauthenticated):
            client.explain(image, model="digits")
        with pytest.raises(deepvis.Unauthenticated):
            client.describe("digits")
        with pytest.raises(deepvis.Unauthenticated):  # a server-streaming call
            client.visualize(3, model="digits", steps=4)
        # Health stays open for probes, per model too.
        assert client.health() == "SERVING"
        assert client.health(model_health_service("digits")) == "SERVING"
    with deepvis.Client(address, timeout=10, token="alpha-0123456789x") as client:
        with pytest.raises(deepvis.PermissionDenied):
            client.models()
        with pytest.raises(deepvis.PermissionDenied):
            client.visualize(3, model="digits", steps=4)
    for token in ("alpha-0123456789", "beta-token-two"):
        with deepvis.Client(address, timeout=30, token=token) as client:
            assert [m.name for m in client.models()] == ["digits"]
            assert client.explain(image).target == 5
            assert client.visualize(3, steps=4).steps == 4


def test_authorization_metadata_must_be_bearer(token_server) -> None:
    with grpc.insecure_channel(token_server.bound_address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        cases = [
            (("authorization", "Basic YWxwaGE6"), grpc.StatusCode.UNAUTHENTICATED),
            (("authorization", "Bearer"), grpc.StatusCode.UNAUTHENTICATED),
            # A commented-out line of the file is not a token.
            (("authorization", "Bearer # operators"), grpc.StatusCode.PERMISSION_DENIED),
            (("authorization", "bearer beta-token-two"), None),
        ]
        for header, code in cases:
            try:
                stub.ListModels(pb.ListModelsRequest(), metadata=(header,), timeout=10)
            except grpc.RpcError as err:
                assert err.code() == code, header
            else:
                assert code is None, header
        # Reflection stays open without a token (grpcurl works), as does health.
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in replies[0].list_services_response.service}
        assert "deepvis.v1.Explainer" in names
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_with_tokens_uses_call_credentials(tls_token_server, pki, sample_paths) -> None:
    ca = pki["ca"].read_bytes()
    address = tls_token_server.bound_address
    with deepvis.Client(address, timeout=10, root_certificates=ca) as client:
        with pytest.raises(deepvis.Unauthenticated):
            client.models()
        assert client.health() == "SERVING"
    with deepvis.Client(address, timeout=10, root_certificates=ca, token="nope") as client:
        with pytest.raises(deepvis.PermissionDenied):
            client.models()
    with deepvis.Client(address, timeout=30, root_certificates=ca, token="beta-token-two") as c:
        assert c.explain(str(sample_paths[8])).target == 8

    async def main() -> int | deepvis.Neuron | None:
        async with deepvis.AsyncClient(
            address, timeout=30, root_certificates=ca, token="alpha-0123456789"
        ) as client:
            return (await client.explain(str(sample_paths[1]))).target

    assert asyncio.run(main()) == 1


class _Recorder(grpc.aio.ServerInterceptor):
    """Stands for a later interceptor (observability): records the calls that reach it."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.methods.append(handler_call_details.method)
        return await continuation(handler_call_details)


def test_auth_runs_before_the_given_interceptors(pki) -> None:
    recorder = _Recorder()
    config = _access(auth_tokens_file=pki["tokens"])
    with serve_in_thread(config, "127.0.0.1:0", [recorder]) as server:
        # Request ids and metrics first (so refused calls are counted), then auth, then the rest.
        assert server.interceptors[0] is server.observability.interceptor
        assert isinstance(server.interceptors[1], BearerTokenInterceptor)
        assert server.interceptors[2:] == [recorder]
        with deepvis.Client(server.bound_address, timeout=10) as client:
            with pytest.raises(deepvis.Unauthenticated):
                client.models()
        assert not any(m.endswith("/ListModels") for m in recorder.methods)
        with deepvis.Client(server.bound_address, timeout=10, token="beta-token-two") as client:
            client.models()
        assert any(m.endswith("/ListModels") for m in recorder.methods)


def test_client_rejects_bad_arguments() -> None:
    for token in ("", "two words", "line\nbreak", "caf\u00e9"):
        with pytest.raises(ValueError, match="token"):
            deepvis.Client("127.0.0.1:1", token=token)
    with pytest.raises(ValueError, match="go together"):
        deepvis.Client("127.0.0.1:1", client_certificate=b"-----BEGIN")


# --- Listening address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.2.1:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("unix:/tmp/deepvis.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("192.168.1.20:50051", False),
        ("10.0.0.1:50051", False),
        ("example.com:50051", False),
        ("localhost.example.com:50051", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_plaintext_on_a_reachable_address_is_refused(host) -> None:
    with pytest.raises(ConfigError) as info:
        with serve_in_thread(load_config(), f"{host}:0"):
            pass
    message = str(info.value)
    assert "plaintext" in message and "--allow-insecure-remote" in message
    assert "--tls-cert" in message
    # Opting in works.
    config = _access(allow_insecure_remote=True)
    with serve_in_thread(config, f"{host}:0") as server:
        with deepvis.Client(f"127.0.0.1:{_port(server)}", timeout=10) as client:
            assert client.health() == "SERVING"


def test_tls_may_listen_on_all_interfaces(pki) -> None:
    config = _access(tls_cert=pki["server"], tls_key=pki["server-key"])
    with serve_in_thread(config, "0.0.0.0:0") as server:
        ca = pki["ca"].read_bytes()
        with deepvis.Client(f"127.0.0.1:{_port(server)}", timeout=10, root_certificates=ca) as c:
            assert [m.name for m in c.models()] == ["digits"]


def _server_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepvis_server", "--device", "cpu", *args]


def test_server_process_refuses_plaintext_on_all_interfaces() -> None:
    proc = subprocess.run(
        _server_cmd("--address", "0.0.0.0:0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ConfigError: refusing to listen in plaintext on 0.0.0.0:" in proc.stderr
    assert "--allow-insecure-remote" in proc.stderr and "--tls-cert" in proc.stderr


def test_server_process_with_allow_insecure_remote_serves() -> None:
    with ServerProcess("--device", "cpu", "--allow-insecure-remote", address="0.0.0.0:0") as server:
        assert f"serving digits on 0.0.0.0:{server.port} (plaintext)" in server.serving_line
        assert server.stop() == 0


def test_server_process_flags_turn_on_tls_and_tokens(pki, sample_paths) -> None:
    with ServerProcess(
        "--device", "cpu",
        "--tls-cert", str(pki["server"]),
        "--tls-key", str(pki["server-key"]),
        "--auth-tokens-file", str(pki["tokens"]),
        address="0.0.0.0:0",
    ) as server:  # fmt: skip
        assert "(TLS, bearer tokens)" in server.serving_line, server.serving_line
        ca = pki["ca"].read_bytes()
        with deepvis.Client(
            f"localhost:{server.port}", timeout=30, root_certificates=ca, token="alpha-0123456789"
        ) as client:
            assert client.explain(str(sample_paths[6])).target == 6
        assert server.stop() == 0


def test_server_process_tls_cert_needs_its_key(pki) -> None:
    proc = subprocess.run(
        _server_cmd("--address", "127.0.0.1:0", "--tls-cert", str(pki["server"])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ConfigError: tls_cert and tls_key go together" in proc.stderr


# --- CLI ---------------------------------------------------------------------------------


def deepvis_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DEEPVIS_TOKEN", "DEEPVIS_SERVER")}
    return subprocess.run(
        [sys.executable, "-m", "deepvis", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, **env},
    )


def test_cli_token_against_a_protected_server(token_server) -> None:
    address = token_server.bound_address
    proc = deepvis_cli("--token", "alpha-0123456789", "models", "--server", address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digits")
    # After the command too, and from the environment.
    proc = deepvis_cli("models", "--server", address, "--token", "beta-token-two")
    assert proc.returncode == 0, proc.stderr
    proc = deepvis_cli("models", "--server", address, DEEPVIS_TOKEN="beta-token-two")
    assert proc.returncode == 0, proc.stderr
    proc = deepvis_cli("models", "--server", address)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Unauthenticated: ")
    proc = deepvis_cli("--token", "wrong", "models", "--server", address)
    assert proc.returncode == 1
    assert proc.stderr.startswith("PermissionDenied: ")
    # Health needs no token.
    proc = deepvis_cli("health", "--server", address)
    assert proc.returncode == 0 and proc.stdout.strip() == "SERVING"


def test_cli_tls_and_client_certificates(mtls_server, pki) -> None:
    address = mtls_server.bound_address
    proc = deepvis_cli(
        "--tls-ca", str(pki["ca"]),
        "--tls-cert", str(pki["client"]),
        "--tls-key", str(pki["client-key"]),
        "--server", address,
        "models",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digits")
    proc = deepvis_cli("--tls", "--tls-ca", str(pki["ca"]), "models", "--server", address)
    assert proc.returncode == 1 and proc.stderr.startswith("Unavailable: ")
    proc = deepvis_cli("--tls-cert", str(pki["client"]), "models", "--server", address)
    assert proc.returncode == 2 and "--tls-cert and --tls-key go together" in proc.stderr
    proc = deepvis_cli("--tls-ca", str(pki["dir"] / "missing.pem"), "models")
    assert proc.returncode == 1 and proc.stderr.startswith("FileNotFoundError: ")


def test_cli_against_a_tls_server_prints_only_its_one_line_error(tls_server, pki) -> None:
    address = tls_server.bound_address
    # Plaintext to a TLS port: the server closes the connection during the handshake.
    proc = deepvis_cli("models", "--server", address, "--timeout", "10")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()  # no gRPC log line before it
    assert line.startswith("Unavailable: ") and "Socket closed" in line
    assert line.endswith(" (the server may need TLS: pass --tls / --tls-ca)")
    # TLS, but the server's certificate is not signed by a CA the client trusts.
    proc = deepvis_cli("--tls", "models", "--server", address, "--timeout", "10")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("Unavailable: ") and "CERTIFICATE_VERIFY_FAILED" in line
    assert "--tls-ca" not in line  # the hint is for plaintext only
    # Files that are not PEM are refused before any connection, each naming its flag.
    not_pem = pki["dir"] / "not-pem.txt"
    not_pem.write_text("hello\n")
    proc = deepvis_cli("--tls-ca", str(not_pem), "models", "--server", address)
    assert (proc.returncode, proc.stderr) == (
        1,
        f"ValueError: --tls-ca {not_pem} is not a PEM certificate "
        "(it has no -----BEGIN CERTIFICATE----- line)\n",
    )
    proc = deepvis_cli(
        "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client"]),
        "--tls-key", str(pki["client"]), "models", "--server", address,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ValueError: --tls-key {pki['client']} is not a PEM private key "
        "(it has no -----BEGIN PRIVATE KEY----- line)\n"
    )
    proc = deepvis_cli("--tls-ca", str(pki["ca"]), "models", "--server", address)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("digits")
    # Nothing listening: no TLS hint, which would mislead.
    proc = deepvis_cli("models", "--server", "127.0.0.1:1", "--timeout", "10")
    (line,) = proc.stderr.splitlines()
    assert line.startswith("Unavailable: ") and "TLS" not in line


def test_cli_shows_grpc_log_lines_when_the_user_asks_for_them(tls_server) -> None:
    proc = deepvis_cli(
        "--tls", "models", "--server", tls_server.bound_address, "--timeout", "10",
        GRPC_VERBOSITY="INFO",
    )  # fmt: skip
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("Unavailable: ")
    assert any("ssl_transport_security" in line for line in lines[:-1]), lines


def _this_machines_address() -> str | None:
    """A non-loopback address of this machine (from the route a UDP socket would take)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
        except OSError:
            return None
        host = str(s.getsockname()[0])
    return None if host.startswith("127.") or host == "0.0.0.0" else host


def test_cli_warns_before_sending_a_token_off_this_machine_in_plaintext(pki) -> None:
    host = _this_machines_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    config = _access(auth_tokens_file=pki["tokens"], allow_insecure_remote=True)
    with serve_in_thread(config, "0.0.0.0:0") as server:
        port = _port(server)
        proc = deepvis_cli("--token", "alpha-0123456789", "models", "--server", f"{host}:{port}")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("digits")
        assert proc.stderr == (
            f"warning: sending the bearer token to {host}:{port} unencrypted (no TLS): anyone "
            "on the way can read it; pass --tls or --tls-ca\n"
        )
        # On this machine the token never leaves it: no warning.
        for server_address in (f"127.0.0.1:{port}", f"localhost:{port}"):
            proc = deepvis_cli("models", "--server", server_address, DEEPVIS_TOKEN="beta-token-two")
            assert (proc.returncode, proc.stderr) == (0, ""), server_address
        # Without a token there is nothing to warn about.
        proc = deepvis_cli("health", "--server", f"{host}:{port}")
        assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "SERVING\n")


@pytest.mark.parametrize(
    ("server", "local"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("127.0.0.1:1,127.0.0.2:2", True),
        ("unix:/tmp/deepvis.sock", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:1,10.0.0.2:2", False),
        ("10.0.0.2:50051", False),
        ("example.com:50051", False),
        ("dns:///example.com:50051", False),
        ("[2001:db8::1]:50051", False),
    ],
)
def test_which_servers_keep_a_token_on_this_machine(server: str, local: bool) -> None:
    from deepvis._cli import _stays_on_this_machine

    assert _stays_on_this_machine(server) is local


@pytest.mark.parametrize("verbosity", [None, "INFO"])
def test_server_json_log_stays_json_when_plaintext_clients_hit_its_tls_port(
    pki, tmp_path, verbosity
) -> None:
    cfg = tmp_path / "json-log.toml"
    cfg.write_text('[server]\nlog_format = "json"\n')  # and the embedded model
    log = tmp_path / "server.log"
    # The operator's own GRPC_VERBOSITY wins; GRPC_TRACE is unset either way.
    env = {"GRPC_VERBOSITY": verbosity, "GRPC_TRACE": None}
    with ServerProcess(
        "--device", "cpu", "--config", str(cfg),
        "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"]),
        env=env, log=log,
    ) as server:  # fmt: skip
        assert "(TLS)" in server.serving_line, server.serving_line
        for _ in range(2):
            with deepvis.Client(server.address, timeout=5) as client:  # plaintext
                with pytest.raises(deepvis.Unavailable):
                    client.models()
        ca = pki["ca"].read_bytes()
        with deepvis.Client(server.address, timeout=10, root_certificates=ca) as c:
            assert [m.name for m in c.models()] == ["digits"]
        assert server.stop() == 0
    lines = log.read_text().splitlines()
    if verbosity is not None:  # gRPC's handshake lines, as the operator asked
        assert any("Handshake failed" in line for line in lines), lines
        return
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    (access,) = [r for r in records if r["logger"] == "deepvis_server.access"]
    assert access["rpc"] == "ListModels" and access["code"] == "OK"
    assert any(r["message"] == "shutting down" for r in records)
