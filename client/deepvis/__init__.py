"""Thin client of the deepvis gRPC service: see what an image classifier sees."""

from __future__ import annotations

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
    Explanation,
    Layer,
    LayerInfo,
    ModelDescription,
    ModelInfo,
    Neuron,
    Prediction,
    Progress,
    Visualization,
)
from deepvis._version import __version__

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "DeepvisError",
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
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Visualization",
    "__version__",
    "methods",
]
