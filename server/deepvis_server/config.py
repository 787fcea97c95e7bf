"""Typed server configuration, parsed once from TOML at the entry point."""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_CONFIG = DEFAULT_MODEL_DIR / "config.toml"
# `weights = "torchvision:<NAME>"` names torchvision's published weights for the arch.
TORCHVISION_WEIGHTS_PREFIX = "torchvision:"


class ConfigError(ValueError):
    """The configuration is invalid, or a model it names cannot be loaded.

    The message is for the operator: it names the key, and the file and path at fault.
    `public`, when set, is what a client may be told instead: one clause that says why,
    without the server's paths (e.g. "its weights file was not found when the server
    started").
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


@dataclass(frozen=True)
class ModelSpec:
    """One served model as the configuration describes it."""

    name: str
    arch: str
    weights: Path | None
    num_classes: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    labels: Path | None = None
    max_batch_size: int = 32
    # None: the adaptive batching policy (batch_policy.py); a number: a fixed gathering delay.
    max_delay_ms: float | None = None
    # Opt-in fast mode: channels_last memory and bf16 autocast. Faster on tensor-core GPUs,
    # not exact: responses say so, and bench/load.py --fast reports the error against fp32.
    fast: bool = False
    # How the model's 4-D weights and its batches are laid out in memory: "contiguous"
    # (PyTorch's default, what an in-process run of the same model does) or "channels_last"
    # (13-26 % faster passes of a convolutional network on the CPU; fp32 still, its sums
    # in another order). `fast` implies channels_last.
    memory_format: str = "contiguous"
    # torchvision's published weights by their full name ("ResNet18_Weights.IMAGENET1K_V1"),
    # fetched through torch.hub's cache at load time; `weights` is then None.
    torchvision_weights: str | None = None
    # Inputs not already at input_size: resized so that their shorter side is this many
    # pixels, then centre-cropped to input_size (torchvision's evaluation transforms);
    # 0: resized straight to input_size.
    resize: int = 0
    # Keyword arguments for the builder beside num_classes (the table's `kwargs`): plain
    # TOML data only, deep-copied for each build so that no builder can change the spec.
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    # The embedded default model (served when the configuration has no [[models]]): its files
    # ship inside the package, so model_root does not confine them.
    embedded: bool = False


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may make the server hold, allocate or wait for."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_tensor_elements: int = 3 * 1024 * 1024
    max_queue_size: int = 256  # requests queued per model; beyond: UNAVAILABLE at once
    default_timeout_s: float = 60.0  # a request without a deadline gets this one
    max_timeout_s: float = 600.0  # a client's deadline is capped here (clients can only shorten)
    # Bytes of Explain answers kept for identical requests (response_cache.py); 0: no cache.
    cache_bytes: int = 0


@dataclass(frozen=True)
class RenderLimits:
    """What one feature-visualization job may ask for, and how many rows (images) the server
    optimizes at once per model."""

    max_steps: int = 4096
    max_side: int = 512
    max_images_per_job: int = 16
    max_rows: int = 128


@dataclass(frozen=True)
class EvaluateLimits:
    """What one evaluation may ask for, and the memory its randomized copies may hold."""

    max_images: int = 64  # inputs per Evaluate request
    # Device work per request, in rows: one input through a forward pass or an explanation
    # (integrated gradients: one per quadrature point); steps x images x layers and the rest.
    max_work: int = 2_000_000
    # Per model: its private working copy plus the re-initialized layers of the seeds kept.
    max_randomized_mb: int = 1024
    batch: int = 256  # rows per forward-only batch (explanations batch at max_batch_size)


@dataclass(frozen=True)
class AccessConfig:
    """Who may call the server, and over what."""

    tls_cert: Path | None = None  # server certificate chain (PEM); with tls_key: TLS on
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # when set, clients must present a certificate it signed
    auth_tokens_file: Path | None = None  # one bearer token a line; when set, calls need one
    allow_insecure_remote: bool = False  # plaintext on a non-loopback address needs this


@dataclass(frozen=True)
class ObservabilityConfig:
    """Metrics and logs."""

    metrics_port: int = 0  # Prometheus /metrics on this port (0: off)
    metrics_address: str = "127.0.0.1"
    log_format: str = "text"  # "text" or "json" (one object a line, with request ids)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, resolved and checked. The TOML file's [server] keys are
    flat; here they are grouped (see `SERVER_KEYS` for which key lands where)."""

    models: tuple[ModelSpec, ...]
    device: str = "auto"
    # TF32 matmuls and convolutions on CUDA trade ~1e-3 relative error for speed; the
    # methods are exact by default, so it stays off unless the operator turns it on.
    allow_tf32: bool = False
    # Feature visualization is an optimization, not an attribution to match to 1e-5: its
    # steps use TF32 on CUDA (PyTorch's own default for cuDNN convolutions) unless this is off.
    render_tf32: bool = True
    limits: Limits = field(default_factory=Limits)
    render: RenderLimits = field(default_factory=RenderLimits)
    evaluate: EvaluateLimits = field(default_factory=EvaluateLimits)
    access: AccessConfig = field(default_factory=AccessConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    # Threads that decode, normalise and render off the event loop (numpy and Pillow release
    # the GIL, so they scale with cores): JPEG decoding alone is ~1 ms per 224x224 image.
    cpu_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 2))
    # Server processes on one address (`deepvis-server --workers`, see workers.py): each has
    # its own event loop, batcher and copy of the models; 1 is a single process.
    workers: int = 1
    # The interpreter's switch interval in the server process (sys.setswitchinterval). Every
    # op the device thread runs gives up the GIL and takes it back; while the event loop runs
    # Python without pause, each take-back waits up to this long. Python's default, 5 ms,
    # made a guided-backprop batch 22x slower beside a busy thread; 0.5 ms, 3.2x; 0.1 ms,
    # 1.4x but 13 % fewer answers a second from a loop-bound server (bench/gil_convoy.py,
    # bench/overhead.py), where 0.5 ms cost nothing measurable.
    gil_switch_interval_ms: float = 0.5
    model_root: Path | None = None  # weights and labels must resolve inside it (when set)
    source: Path | None = field(default=None, compare=False)


# A model's memory_format values (ModelSpec.memory_format).
MEMORY_FORMATS = ("contiguous", "channels_last")
_MODEL_KEYS = {
    "name",
    "arch",
    "weights",
    "num_classes",
    "input_size",
    "mean",
    "std",
    "channels",
    "labels",
    "max_batch_size",
    "max_delay_ms",
    "fast",
    "memory_format",
    "resize",
    "kwargs",
}
# Builder arguments the table sets itself, or the server does: never in `kwargs` (the
# last two only for torchvision builders, which the server calls with weights=None).
_RESERVED_KWARGS = {
    "num_classes": "set num_classes in the [[models]] table itself",
    "weights": "the table's `weights` key names the weights of a torchvision model",
    "progress": "the server fetches torchvision weights itself",
}
_INT_KEYS = (
    "max_message_bytes",
    "max_image_pixels",
    "max_tensor_elements",
    "max_render_steps",
    "max_render_side",
    "max_render_rows",
    "max_queue_size",
    "max_evaluate_images",
    "max_evaluate_work",
    "max_randomized_mb",
    "evaluate_batch",
    "cpu_threads",
    "workers",
)
_SECONDS_KEYS = ("default_timeout_s", "max_timeout_s")
_BOOL_KEYS = ("allow_tf32", "render_tf32", "allow_insecure_remote")
_PATH_KEYS = ("model_root", "tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file")
# Each [server] key -> (the ServerConfig group it lands in, its name there); "" for
# ServerConfig itself.
SERVER_KEYS: dict[str, tuple[str, str]] = {
    "device": ("", "device"),
    "allow_tf32": ("", "allow_tf32"),
    "render_tf32": ("", "render_tf32"),
    "cpu_threads": ("", "cpu_threads"),
    "workers": ("", "workers"),
    "gil_switch_interval_ms": ("", "gil_switch_interval_ms"),
    "model_root": ("", "model_root"),
    "max_message_bytes": ("limits", "max_message_bytes"),
    "max_image_pixels": ("limits", "max_image_pixels"),
    "max_tensor_elements": ("limits", "max_tensor_elements"),
    "max_queue_size": ("limits", "max_queue_size"),
    "default_timeout_s": ("limits", "default_timeout_s"),
    "max_timeout_s": ("limits", "max_timeout_s"),
    "cache_bytes": ("limits", "cache_bytes"),
    "max_render_steps": ("render", "max_steps"),
    "max_render_side": ("render", "max_side"),
    "max_render_rows": ("render", "max_rows"),
    "max_evaluate_images": ("evaluate", "max_images"),
    "max_evaluate_work": ("evaluate", "max_work"),
    "max_randomized_mb": ("evaluate", "max_randomized_mb"),
    "evaluate_batch": ("evaluate", "batch"),
    "tls_cert": ("access", "tls_cert"),
    "tls_key": ("access", "tls_key"),
    "tls_client_ca": ("access", "tls_client_ca"),
    "auth_tokens_file": ("access", "auth_tokens_file"),
    "allow_insecure_remote": ("access", "allow_insecure_remote"),
    "metrics_port": ("observability", "metrics_port"),
    "metrics_address": ("observability", "metrics_address"),
    "log_format": ("observability", "log_format"),
}
_GROUPS: dict[str, type] = {
    "limits": Limits,
    "render": RenderLimits,
    "evaluate": EvaluateLimits,
    "access": AccessConfig,
    "observability": ObservabilityConfig,
}


def _req(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing required key '{key}'")
    return table[key]


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def _floats(value: Any, n: int, where: str) -> tuple[float, ...]:
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{where} must be a list of {n} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty path string, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _plain_value(value: Any, where: str) -> Any:
    """A TOML value made of strings, numbers, booleans, arrays and tables, else ConfigError."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_plain_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _plain_value(v, f"{where}.{k}") for k, v in value.items()}
    kind = "a date or time" if isinstance(value, (datetime.date, datetime.time)) else "unsupported"
    raise ConfigError(
        f"{where} is {kind} ({value!r}); builder arguments are strings, numbers, booleans, "
        "arrays and inline tables"
    )


def _builder_kwargs(value: Any, arch: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where} must be a table of builder keyword arguments, e.g. "
            f"kwargs = {{ aux_logits = false }}, got {value!r}"
        )
    for key in value:
        if key in _RESERVED_KWARGS and (key == "num_classes" or ":" not in arch):
            raise ConfigError(f"{where}.{key} is not allowed: {_RESERVED_KWARGS[key]}")
        if not key.isidentifier():
            raise ConfigError(f"{where}: '{key}' is not a Python keyword argument name")
    return {k: _plain_value(v, f"{where}.{k}") for k, v in value.items()}


def _torchvision_weights(arch: str, name: str, where: str) -> Any:
    """The torchvision weights enum member `name` of torchvision model `arch` (no download)."""
    if ":" in arch:
        raise ConfigError(
            f"{where}: torchvision weights need a torchvision arch (e.g. resnet18), got '{arch}'"
        )
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ConfigError(
            f"{where}: arch '{arch}' is not a torchvision model with published weights"
        ) from None
    if name not in enum.__members__:
        raise ConfigError(
            f"{where}: torchvision has no weights '{name}' for '{arch}'; valid: "
            + ", ".join(enum.__members__)
        )
    return enum[name]


def _declared_by(weights: Any) -> dict[str, Any]:
    """What torchvision weights declare: their categories and their evaluation transforms."""
    declared: dict[str, Any] = {}
    categories = weights.meta.get("categories")
    if isinstance(categories, list) and categories:
        declared["num_classes"] = len(categories)
    try:
        transforms = weights.transforms()
    except Exception:  # noqa: BLE001 - then the config must say it all
        return declared
    crop = getattr(transforms, "crop_size", None)
    if isinstance(crop, (list, tuple)) and len(crop) in (1, 2):
        declared["input_size"] = [int(crop[0]), int(crop[-1])]
    resize = getattr(transforms, "resize_size", None)
    if isinstance(resize, (list, tuple)) and len(resize) == 1:  # the shorter side
        declared["resize"] = int(resize[0])
    for key in ("mean", "std"):
        value = getattr(transforms, key, None)
        if isinstance(value, (list, tuple)):
            declared[key] = [float(v) for v in value]
    return declared


def parse_model(
    table: dict[str, Any], base: Path, index: int, *, embedded: bool = False
) -> ModelSpec:
    where = f"models[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a [[models]] table, got {table!r}")
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(_MODEL_KEYS)}")
    name = _req(table, "name", where)
    if not isinstance(name, str) or not name or len(name) > 128:
        raise ConfigError(f"{where}.name must be a non-empty string of at most 128 characters")
    where = f"model '{name}'"
    arch = _req(table, "arch", where)
    if not isinstance(arch, str) or not arch:
        raise ConfigError(
            f"{where}.arch must be a torchvision builder name or 'package.module:callable'"
        )
    weights = table.get("weights")
    channels = _positive_int(table.get("channels", 3), f"{where}.channels")
    # torchvision's weights by name: what the table leaves out comes from the weights (their
    # category count, crop size, mean and std); what it sets is checked as usual.
    tv_weights = None
    settings = table
    if isinstance(weights, str) and weights.startswith(TORCHVISION_WEIGHTS_PREFIX):
        tv_weights = _torchvision_weights(
            arch, weights[len(TORCHVISION_WEIGHTS_PREFIX) :], f"{where}.weights"
        )
        if channels != 3:
            raise ConfigError(
                f"{where}.channels must be 3 with torchvision weights (RGB input), got {channels}"
            )
        declared = _declared_by(tv_weights)
        settings = {**declared, **table}
        expected = declared.get("num_classes")
        if expected is not None and settings["num_classes"] != expected:
            raise ConfigError(
                f"{where}.num_classes is {settings['num_classes']!r}, but torchvision weights "
                f"'{weights}' have {expected} categories"
            )
    size = _req(settings, "input_size", where)
    if not (isinstance(size, list) and len(size) == 2):
        raise ConfigError(f"{where}.input_size must be [height, width], got {size!r}")
    input_size = (
        _positive_int(size[0], f"{where}.input_size[0]"),
        _positive_int(size[1], f"{where}.input_size[1]"),
    )
    mean = _floats(settings.get("mean", [0.0] * channels), channels, f"{where}.mean")
    std = _floats(settings.get("std", [1.0] * channels), channels, f"{where}.std")
    if any(s <= 0 for s in std):
        raise ConfigError(f"{where}.std must be positive, got {list(std)}")
    delay = table.get("max_delay_ms")
    if delay is not None and (
        not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 10_000
    ):
        raise ConfigError(f"{where}.max_delay_ms must be a number in [0, 10000], got {delay!r}")
    fast = table.get("fast", False)
    if not isinstance(fast, bool):
        raise ConfigError(f"{where}.fast must be true or false, got {fast!r}")
    memory_format = table.get("memory_format", "contiguous")
    if memory_format not in MEMORY_FORMATS:
        raise ConfigError(
            f"{where}.memory_format must be one of {', '.join(map(repr, MEMORY_FORMATS))}, "
            f"got {memory_format!r}"
        )
    resize = settings.get("resize", 0)
    if (
        not isinstance(resize, int)
        or isinstance(resize, bool)
        or (resize != 0 and not max(input_size) <= resize <= 8192)
    ):
        raise ConfigError(
            f"{where}.resize must be 0 (resize straight to input_size) or the shorter side "
            f"in pixels, from max(input_size) = {max(input_size)} to 8192, got {resize!r}"
        )
    return ModelSpec(
        name=name,
        arch=arch,
        weights=None
        if weights is None or tv_weights is not None
        else _path(weights, base, f"{where}.weights"),
        num_classes=_positive_int(_req(settings, "num_classes", where), f"{where}.num_classes"),
        input_size=input_size,
        mean=mean,
        std=std,
        channels=channels,
        labels=None
        if table.get("labels") is None
        else _path(table["labels"], base, f"{where}.labels"),
        max_batch_size=_positive_int(table.get("max_batch_size", 32), f"{where}.max_batch_size"),
        max_delay_ms=None if delay is None else float(delay),
        fast=fast,
        memory_format=memory_format,
        torchvision_weights=None
        if tv_weights is None
        else f"{type(tv_weights).__name__}.{tv_weights.name}",
        resize=resize,
        kwargs=_builder_kwargs(table.get("kwargs", {}), arch, f"{where}.kwargs"),
        embedded=embedded,
    )


def parse_config(data: dict[str, Any], base: Path, source: Path | None = None) -> ServerConfig:
    """Builds a ServerConfig from a parsed TOML document; relative paths resolve against `base`."""
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError("[server] must be a table")
    unknown = set(server) - set(SERVER_KEYS)
    if unknown:
        raise ConfigError(f"[server]: unknown keys {sorted(unknown)}; valid: {sorted(SERVER_KEYS)}")
    unknown_top = set(data) - {"server", "models"}
    if unknown_top:
        raise ConfigError(f"unknown top-level keys {sorted(unknown_top)}; valid: server, models")
    if "models" in data:
        tables = data["models"]
        if isinstance(tables, dict):
            raise ConfigError(
                "models must be an array of tables: write [[models]] (double brackets) above "
                "each model's keys"
            )
        if not isinstance(tables, list) or not tables:
            raise ConfigError(
                f"models = {tables!r} names no model: add a [[models]] table for each model "
                "to serve, or leave `models` out to serve the embedded default model"
            )
        models = tuple(parse_model(t, base, i) for i, t in enumerate(tables))
    else:
        models = default_models()
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model names must be unique; repeated: {dupes}")
    device = server.get("device", "auto")
    if not isinstance(device, str):
        raise ConfigError("[server].device must be a string such as 'auto', 'cpu' or 'cuda:0'")
    kwargs: dict[str, Any] = {
        k: _positive_int(server[k], f"[server].{k}") for k in _INT_KEYS if k in server
    }
    for key in _BOOL_KEYS:
        if key in server and not isinstance(server[key], bool):
            raise ConfigError(f"[server].{key} must be true or false")
        if key in server:
            kwargs[key] = server[key]
    for key in _SECONDS_KEYS:
        if key in server:
            v = server[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 86400:
                raise ConfigError(f"[server].{key} must be a number of seconds in (0, 86400]")
            kwargs[key] = float(v)
    if "gil_switch_interval_ms" in server:
        v = server["gil_switch_interval_ms"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 100:
            raise ConfigError("[server].gil_switch_interval_ms must be a number in (0, 100]")
        kwargs["gil_switch_interval_ms"] = float(v)
    for key in _PATH_KEYS:
        if key in server:
            kwargs[key] = _path(server[key], base, f"[server].{key}")
    if "cache_bytes" in server:
        v = server["cache_bytes"]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 2**40:
            raise ConfigError(
                "[server].cache_bytes must be a whole number of bytes from 0 (no cache) to 2**40"
            )
        kwargs["cache_bytes"] = v
    if "metrics_port" in server:
        port = server["metrics_port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError("[server].metrics_port must be a port number (0: off)")
        kwargs["metrics_port"] = port
    if "metrics_address" in server:
        if not isinstance(server["metrics_address"], str):
            raise ConfigError("[server].metrics_address must be a host name or address")
        kwargs["metrics_address"] = server["metrics_address"]
    if server.get("log_format", "text") not in ("text", "json"):
        raise ConfigError("[server].log_format must be 'text' or 'json'")
    if "log_format" in server:
        kwargs["log_format"] = server["log_format"]
    if ("tls_cert" in kwargs) != ("tls_key" in kwargs):
        raise ConfigError("[server].tls_cert and tls_key go together")
    if "tls_client_ca" in kwargs and "tls_cert" not in kwargs:
        raise ConfigError("[server].tls_client_ca needs tls_cert and tls_key")
    kwargs["device"] = device
    cfg = _grouped(models, kwargs, source)
    if cfg.limits.default_timeout_s > cfg.limits.max_timeout_s:
        raise ConfigError("[server].default_timeout_s must not exceed max_timeout_s")
    return cfg


def _grouped(
    models: tuple[ModelSpec, ...], values: dict[str, Any], source: Path | None
) -> ServerConfig:
    """A ServerConfig from checked [server] values keyed as in the file (see SERVER_KEYS)."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    for key, value in values.items():
        group, name = SERVER_KEYS[key]
        (groups[group] if group else top)[name] = value
    nested = {name: cls(**groups[name]) for name, cls in _GROUPS.items()}
    return ServerConfig(models=models, source=source, **top, **nested)


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def default_models() -> tuple[ModelSpec, ...]:
    """The embedded default model's specs, as a configuration without [[models]] serves them."""
    tables = _read_toml(DEFAULT_CONFIG)["models"]
    return tuple(parse_model(t, DEFAULT_MODEL_DIR, i, embedded=True) for i, t in enumerate(tables))


def load_config(path: Path | str | None = None) -> ServerConfig:
    """Reads a TOML configuration file; None: the embedded default model, default settings."""
    if path is None:
        return parse_config({}, DEFAULT_MODEL_DIR, source=DEFAULT_CONFIG)
    p = Path(path)
    return parse_config(_read_toml(p), p.resolve().parent, source=p)
