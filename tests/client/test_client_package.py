"""The deepvis package: its public API, private modules, one signature per call for both
clients, and an import that pulls in no torch."""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import AsyncGenerator, Generator
from typing import Any

import numpy as np
import pytest

import deepvis

from .fakes import (
    CLIENT_DIR,
    DEAD_ADDRESS,
    run_python,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the server extra's tomli
    import tomli as tomllib

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


def test_public_api() -> None:
    assert deepvis.__all__ == sorted(deepvis.__all__)
    assert deepvis.__version__ == "0.1.0"
    for name in deepvis.__all__:
        assert hasattr(deepvis, name), name


def test_private_modules_behind_a_sorted_all() -> None:
    modules = sorted(p.stem for p in (CLIENT_DIR / "deepvis").glob("_*.py") if p.stem[1] != "_")
    assert {"_client", "_convert", "_models", "_plans", "_transport", "_version"} <= set(modules)
    for name in modules:
        module = importlib.import_module(f"deepvis.{name}")
        assert module.__all__ == sorted(module.__all__), name
        assert all(hasattr(module, n) for n in module.__all__), name
    # ... and the package says it is typed, in the wheel too (package-data).
    assert (CLIENT_DIR / "deepvis" / "py.typed").is_file()
    pyproject = tomllib.loads((CLIENT_DIR.parent / "pyproject.toml").read_text())
    assert {"py.typed", "v1/*.pyi"} <= set(
        pyproject["tool"]["setuptools"]["package-data"]["deepvis"]
    )


_RESULTS = {
    "models": list[deepvis.ModelInfo],
    "explain": deepvis.Explanation,
    "explain_batch": list[Any],
    "health": str,
    "describe": deepvis.ModelDescription,
    "visualize": deepvis.Visualization,
    "evaluate": deepvis.Evaluation,
}
_STREAMS: dict[str, Any] = {
    "visualize_stream": deepvis.Progress | deepvis.Visualization,
    "evaluate_stream": deepvis.EvaluationProgress | deepvis.Evaluation,
}


@pytest.mark.parametrize("name", [*_RESULTS, *_STREAMS])
def test_clients_share_each_calls_signature_and_docstring(name: str) -> None:
    sync, aio = getattr(deepvis.Client, name), getattr(deepvis.AsyncClient, name)
    assert sync.__name__ == aio.__name__ == name
    assert (sync.__qualname__, aio.__qualname__) == (f"Client.{name}", f"AsyncClient.{name}")
    assert sync.__doc__ and sync.__doc__ == aio.__doc__
    assert "Args:" in sync.__doc__ and "Raises:" in sync.__doc__
    signature, aio_signature = inspect.signature(sync), inspect.signature(aio)
    assert list(signature.parameters) == list(aio_signature.parameters)
    assert list(signature.parameters.values()) == list(aio_signature.parameters.values())
    # What help() and IDEs show is the method's result, for Client and after await.
    hints, aio_hints = typing.get_type_hints(sync), typing.get_type_hints(aio)
    if name in _STREAMS:
        item: Any = _STREAMS[name]
        assert hints["return"] == Generator[item, None, None]
        assert aio_hints["return"] == AsyncGenerator[item, None]
        assert not inspect.iscoroutinefunction(aio)
    else:
        assert hints["return"] == aio_hints["return"] == _RESULTS[name]
        assert inspect.iscoroutinefunction(aio)
    assert not inspect.iscoroutinefunction(sync)
    assert {k: v for k, v in hints.items() if k != "return"} == {
        k: v for k, v in aio_hints.items() if k != "return"
    }


def test_client_argument_errors_name_the_argument() -> None:
    with deepvis.Client(DEAD_ADDRESS) as client:
        with pytest.raises(TypeError, match="bogus"):
            client.explain(np.zeros((4, 4), np.uint8), bogus=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="objective"):
            client.visualize_stream()  # type: ignore[call-arg]


def test_import_does_not_import_torch() -> None:
    # Nor grpc_health.v1: the thin client encodes the health protocol itself. (grpc imports the
    # bare grpc_health package when it is installed, to alias it as grpc.health.)
    code = (
        "import sys, deepvis, deepvis._cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') "
        "or m.startswith('grpc_health.')); "
        "assert not bad, bad; print('ok')"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_python_m_deepvis() -> None:
    proc = run_python("-m", "deepvis", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deepvis 0.1.0"
