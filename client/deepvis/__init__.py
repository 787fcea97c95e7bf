"""Thin client of the deepvis gRPC service: see what an image classifier sees."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from deepvis._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name loads on first use
    from deepvis import render
    from deepvis._client import AsyncClient, Client
    from deepvis._convert import (
        baseline_kinds,
        composites,
        integration_methods,
        methods,
        metrics,
        smooth_kinds,
    )
    from deepvis._curves import curve_plot
    from deepvis._display import LiveProgress
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
        Comparison,
        Completeness,
        Dream,
        DreamProgress,
        Evaluation,
        EvaluationProgress,
        Explanation,
        IntegratedGradients,
        Layer,
        LayerInfo,
        MethodEvaluation,
        ModelDescription,
        ModelInfo,
        Neuron,
        PerturbationCurve,
        Prediction,
        Progress,
        Randomization,
        Rollout,
        Smooth,
        Visualization,
    )

# Each public name's module, imported on first use (PEP 562). Importing the package loads no
# gRPC: the `deepvis` command (deepvis/__main__.py) sets GRPC_VERBOSITY first, which gRPC's
# C core reads once, when grpc is imported.
_EXPORTS: dict[str, list[str] | tuple[str, ...]] = {
    "deepvis._client": ("AsyncClient", "Client"),
    "deepvis._convert": (
        "baseline_kinds composites integration_methods methods metrics smooth_kinds"
    ).split(),
    "deepvis._curves": ("curve_plot",),
    "deepvis._display": ("LiveProgress",),
    "deepvis._exceptions": (
        "Cancelled DeadlineExceeded DeepvisError Internal InvalidArgument NotFound "
        "PermissionDenied ResourceExhausted Unauthenticated Unavailable Unimplemented"
    ).split(),
    "deepvis._models": (
        "Comparison Completeness Dream DreamProgress Evaluation EvaluationProgress Explanation "
        "IntegratedGradients Layer LayerInfo MethodEvaluation ModelDescription ModelInfo Neuron "
        "PerturbationCurve Prediction Progress Randomization Rollout Smooth Visualization"
    ).split(),
}
_MODULES = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_MODULES, "__version__", "render"])


def __getattr__(name: str) -> Any:
    if name == "render":  # the renderer is a public submodule
        return importlib.import_module("deepvis.render")
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'deepvis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
