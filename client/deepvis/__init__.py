"""Thin client of the deepvis gRPC service: see what an image classifier sees."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from deepvis._version import __version__

if TYPE_CHECKING:
    from deepvis._client import AsyncClient, Client
    from deepvis._convert import methods
    from deepvis._exceptions import (
        Cancelled,
        DeadlineExceeded,
        DeepvisError,
        Internal,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
        Unimplemented,
    )
    from deepvis._models import (
        Dream,
        DreamProgress,
        Explanation,
        Layer,
        LayerInfo,
        ModelDescription,
        ModelInfo,
        Neuron,
        Prediction,
        Progress,
        Rollout,
        Visualization,
    )

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "DeepvisError",
    "Dream",
    "DreamProgress",
    "Explanation",
    "Internal",
    "InvalidArgument",
    "Layer",
    "LayerInfo",
    "ModelDescription",
    "ModelInfo",
    "Neuron",
    "NotFound",
    "PermissionDenied",
    "Prediction",
    "Progress",
    "ResourceExhausted",
    "Rollout",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Visualization",
    "__version__",
    "methods",
]

# Each public name's module, imported on first use (PEP 562). Importing the package loads no
# gRPC: the `deepvis` command (deepvis/__main__.py) sets GRPC_VERBOSITY first, which gRPC's
# C core reads once, when grpc is imported.
_MODULES = {
    **dict.fromkeys(("AsyncClient", "Client"), "deepvis._client"),
    **dict.fromkeys(
        (
            "Dream",
            "DreamProgress",
            "Explanation",
            "Layer",
            "LayerInfo",
            "ModelDescription",
            "ModelInfo",
            "Neuron",
            "Prediction",
            "Progress",
            "Rollout",
            "Visualization",
        ),
        "deepvis._models",
    ),
    "methods": "deepvis._convert",
    **dict.fromkeys(
        (
            "Cancelled",
            "DeadlineExceeded",
            "DeepvisError",
            "Internal",
            "InvalidArgument",
            "NotFound",
            "PermissionDenied",
            "ResourceExhausted",
            "Unauthenticated",
            "Unavailable",
            "Unimplemented",
        ),
        "deepvis._exceptions",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'deepvis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
