"""Throwaway certificates made with the openssl CLI, for the TLS tests (valid for a day)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

from deepvis_server.config import AccessConfig


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue_certificate(d: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    """A P-256 key and a one-day certificate for it, signed by `ca`."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-set_serial", str(abs(hash(name)) % 10**9 + 2), "-days", "1",
        "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=d,
    )  # fmt: skip


def make_ca(d: Path, name: str) -> None:
    """A P-256 key and a one-day self-signed CA certificate, `name`.key and `name`.pem."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN=deepvis test {name}",
        "-days", "1", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def issue_localhost_server(d: Path, ca: str = "ca") -> None:
    """`server`.key and .pem in `d`: a server certificate for 127.0.0.1 and localhost."""
    issue_certificate(
        d, "server", ca, "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\n",
    )  # fmt: skip


def tls_and_token(access: AccessConfig, d: Path, token: str) -> AccessConfig:
    """`access` with TLS and a bearer token on: a CA (`d`/ca.pem,
    for clients to trust), a localhost server certificate and a tokens file holding `token`,
    all made in `d`."""
    make_ca(d, "ca")
    issue_localhost_server(d)
    (d / "tokens.txt").write_text(f"{token}\n")
    return replace(
        access,
        tls_cert=d / "server.pem",
        tls_key=d / "server.key",
        auth_tokens_file=d / "tokens.txt",
    )
