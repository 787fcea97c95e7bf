"""The client-only install: no torch, no grpcio-health-checking; one version for both packages.

Each test runs a fresh Python in which tests/hide makes those packages not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

import deepvis
import deepvis_server

from .fakes import grpc_server

ROOT = Path(__file__).resolve().parents[2]
HIDE = Path(__file__).resolve().parents[1] / "hide"


def _python(*args: str, hide: str, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Runs `python ARGS` (or the console script `args[0]`, a path) without the packages
    `hide` names; `path` goes first on PYTHONPATH."""
    command = list(args) if args[0].startswith("/") else [sys.executable, *args]
    return subprocess.run(
        command,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, HIDE, ROOT / "client")),
            "DEEPVIS_TEST_HIDE": hide,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- deepvis-server without the server's dependencies -------------------------------------------

_INSTALL_SERVER = (
    "deepvis-server: the server needs torch, which is not installed; "
    "install the server with: pip install 'deepvis[server]'"
)


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_deepvis_server_without_torch_says_what_to_install(how: str) -> None:
    script = Path(sys.executable).with_name("deepvis-server")
    if how == "console script" and not script.exists():
        pytest.skip("deepvis-server is not installed beside this Python")
    args = (str(script),) if how == "console script" else ("-m", "deepvis_server")
    proc = _python(*args, "--address", "127.0.0.1:0", hide="torch,torchvision")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [_INSTALL_SERVER]


def test_deepvis_server_with_torch_still_starts_to_parse() -> None:
    # The guard only speaks for a missing dependency: with everything installed, --help works.
    proc = _python("-m", "deepvis_server", "--help", hide="")
    assert proc.returncode == 0, proc.stderr
    assert "--address" in proc.stdout


# --- health checks without grpcio-health-checking ----------------------------------------------


@pytest.fixture(scope="module")
def health_server() -> Iterator[str]:
    """A standard gRPC health service: SERVING overall, deepvis.v1.Explainer NOT_SERVING."""
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    servicer = health.HealthServicer()
    servicer.set("deepvis.v1.Explainer", health_pb2.HealthCheckResponse.NOT_SERVING)
    with grpc_server(lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s), 2) as a:
        yield a


_HEALTH_CHECKS = """
import asyncio, json, sys
import deepvis

def statuses(address):
    with deepvis.Client(address, timeout=10) as client:
        out = [client.health(), client.health("deepvis.v1.Explainer")]
        try:
            client.health("nope")
        except deepvis.NotFound as e:
            out.append(type(e).__name__)

    async def run():
        async with deepvis.AsyncClient(address, timeout=10) as client:
            return await client.health("deepvis.v1.Explainer")

    return out + [asyncio.run(run())]
"""


def test_health_without_grpcio_health_checking(health_server: str) -> None:
    code = _HEALTH_CHECKS + (
        f"out = statuses({health_server!r}); "
        "print(json.dumps([out, sorted(m for m in sys.modules if 'health' in m)]))"
    )
    proc = _python("-c", code, hide="grpc_health")
    assert proc.returncode == 0, proc.stderr
    statuses, modules = json.loads(proc.stdout)
    assert statuses == ["SERVING", "NOT_SERVING", "NotFound", "NOT_SERVING"]
    assert modules == ["deepvis.v1.health_pb2"]


def _other_release(root: Path) -> Path:
    """A grpc_health package whose health.proto differs from the stub's, as older
    grpcio-health-checking releases' does (they lack the List method)."""
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    proto = descriptor_pb2.FileDescriptorProto.FromString(health_pb2.DESCRIPTOR.serialized_pb)
    (service,) = proto.service
    kept = [m for m in service.method if m.name != "List"]
    del service.method[:]
    service.method.extend(kept)
    kept_types = [m for m in proto.message_type if not m.name.startswith("HealthList")]
    del proto.message_type[:]
    proto.message_type.extend(kept_types)
    package = root / "grpc_health" / "v1"
    package.mkdir(parents=True)
    (root / "grpc_health" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "health_pb2.py").write_text(
        "from google.protobuf import descriptor_pool\n"
        "from google.protobuf.internal import builder\n"
        "DESCRIPTOR = descriptor_pool.Default().AddSerializedFile("
        f"{proto.SerializeToString()!r})\n"
        "builder.BuildMessageAndEnumDescriptors(DESCRIPTOR, globals())\n"
        "builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'grpc_health.v1.health_pb2', "
        "globals())\n"
    )
    return root


@pytest.mark.parametrize("first", ["client", "grpc_health"])
def test_health_beside_another_grpc_health_release(
    health_server: str, tmp_path: Path, first: str
) -> None:
    # A server process has grpcio-health-checking, of whatever release; the client's health
    # checks must work there, and must not keep the server's own health module from loading.
    code = _HEALTH_CHECKS + (
        f"first = {first!r}\n"
        "if first == 'grpc_health':\n"
        "    import grpc_health.v1.health_pb2\n"
        f"out = statuses({health_server!r})\n"
        "from grpc_health.v1 import health_pb2\n"
        "methods = sorted(health_pb2.DESCRIPTOR.services_by_name['Health'].methods_by_name)\n"
        "try:\n"
        "    import deepvis.v1.health_pb2\n"
        "    stub = 'loaded'\n"
        "except TypeError as e:\n"
        "    stub = 'conflict' if 'duplicate file name' in str(e) else str(e)\n"
        "print(json.dumps([out, methods, stub]))\n"
    )
    proc = _python("-c", code, hide="", path=(_other_release(tmp_path),))
    assert proc.returncode == 0, proc.stderr
    statuses, methods, stub = json.loads(proc.stdout)
    assert statuses == ["SERVING", "NOT_SERVING", "NotFound", "NOT_SERVING"]
    assert methods == ["Check", "Watch"]  # the other release's module loaded
    # ... and the client's stub could not have: the two cannot share a process.
    assert stub == "conflict"


# --- one version ---------------------------------------------------------------------------


def test_one_version_read_without_the_clients_dependencies() -> None:
    # What pyproject.toml's dynamic version reads, as setuptools does at build time, in an
    # environment without grpc, numpy, pillow or protobuf (a build's isolated one).
    code = (
        "import json, sys; from setuptools.config.expand import read_attr; "
        "v = read_attr('deepvis._version.__version__', {'deepvis': 'client/deepvis'}, "
        f"{str(ROOT)!r}); "
        "print(json.dumps([v, sorted({m.split('.')[0] for m in sys.modules} "
        "& {'grpc', 'numpy', 'PIL', 'google', 'deepvis'})]))"
    )
    proc = _python("-c", code, hide="grpc,numpy,PIL,google")
    assert proc.returncode == 0, proc.stderr
    version, imported = json.loads(proc.stdout)
    assert imported == []
    assert version == deepvis.__version__ == deepvis_server.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "deepvis._version.__version__" }' in pyproject
