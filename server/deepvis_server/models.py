"""Builds the served models from their ModelSpec: architecture, weights-only loading, labels."""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ConfigError, ModelSpec
from .security import resolve_under_root

log = logging.getLogger(__name__)

LayoutKind = Literal["nchw", "nhwc", "tokens", "vector", "other"]
# Which axis of a layer's output (no batch axis) holds its channels, by layout.
_CHANNEL_AXIS: dict[str, int] = {"nchw": 0, "nhwc": 2, "tokens": 1, "vector": 0}


@dataclass(frozen=True)
class LayerLayout:
    """How a layer's output for one input (no batch axis) is laid out; see `infer_layout`.

    `kind`: "nchw" channels-first maps [C, h, w]; "nhwc" channels-last maps [h, w, C];
    "tokens" [T, C]; "vector" [F]; "other" for anything else. `grid` is (h, w) of a map, or
    the patch grid (gh, gw) of tokens when T - class_tokens = gh * gw fits the input (None
    when none does); `class_tokens` is how many tokens (class, distillation, register
    tokens) precede the grid.
    """

    kind: LayoutKind
    shape: tuple[int, ...]
    grid: tuple[int, int] | None = None
    class_tokens: int = 0

    @property
    def channels(self) -> int | None:
        """The size of the channel (feature) axis; None when the layout has none known."""
        axis = _CHANNEL_AXIS.get(self.kind)
        return None if axis is None else self.shape[axis]

    @property
    def positions(self) -> int:
        """How many places of the input the output covers: h * w of a map, T of tokens."""
        if self.kind in ("nchw", "nhwc") and self.grid is not None:
            return self.grid[0] * self.grid[1]
        return self.shape[0] if self.kind == "tokens" else 1

    @property
    def map_shape(self) -> tuple[int, int, int] | None:
        """The channels-first map [C, h, w] the methods read this layer as: channels-first maps
        as they are, channels-last maps permuted, tokens with a patch grid without their
        class tokens, laid out on the grid; None for a layer that is no map of the input
        (a vector, tokens with no patch grid, anything else)."""
        if self.kind == "nchw" and len(self.shape) == 3:
            return (self.shape[0], self.shape[1], self.shape[2])
        if self.kind == "nhwc" and len(self.shape) == 3:
            return (self.shape[2], self.shape[0], self.shape[1])
        if self.kind == "tokens" and self.grid is not None:
            return (self.shape[1], *self.grid)
        return None

    def to_maps(self, t: torch.Tensor) -> torch.Tensor:
        """A batch of this layer's outputs [N, *shape] as channels-first maps [N, C, h, w]
        (see `map_shape`); differentiable, a view where the layout allows.

        Tokens are in raster order (row by row over the patch grid) after the class tokens,
        as a patch embedding flattens its [C, gh, gw] map: token k + y * gw + x is patch
        (y, x); the class tokens are dropped.

        Raises:
            ValueError: the layout has no map (`map_shape` is None).
        """
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.kind == "tokens" and self.grid is not None:
            gh, gw = self.grid
            patches = t[:, self.class_tokens :, :]
            return patches.reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)
        raise ValueError(f"a layer of {self.describe()} is no map of the input")

    def describe(self) -> str:
        """The layout in words, e.g. 'channels-last [h, w, C]'."""
        if self.kind == "nchw":
            return "channels-first [C, h, w]"
        if self.kind == "nhwc":
            return "channels-last [h, w, C]"
        if self.kind == "tokens":
            if self.grid is None:
                return "tokens [T, C] (no patch grid fits the input)"
            k = self.class_tokens
            lead = f"{k} class token{'s' if k != 1 else ''}" if k else "no class token"
            return f"tokens [T, C] ({lead} and a {self.grid[0]}x{self.grid[1]} patch grid)"
        if self.kind == "vector":
            return "a vector [F]"
        return "neither [C, h, w], [h, w, C], tokens [T, C] nor a vector"


@dataclass(eq=False)
class ServedModel:
    """A loaded model on its device, with what the methods and the servicer need to know."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device
    labels: tuple[str, ...]
    # name -> submodule, from named_modules() once at load time: requests name layers,
    # and a lookup here is the only way a client's string reaches the model.
    layers: dict[str, nn.Module] = field(repr=False)
    # name -> output shape for one input (no batch dim), for layers whose output is a tensor;
    # a reused module reports its last call, as the methods capture its last call.
    layer_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    # name -> how often the module runs in one forward pass.
    layer_calls: dict[str, int] = field(default_factory=dict, repr=False)
    # name -> how its output is laid out (channels-first, channels-last, tokens, ...),
    # for the same layers as layer_shapes.
    layer_layouts: dict[str, LayerLayout] = field(default_factory=dict, repr=False)
    # The layer whose output is the model's last feature map, whatever its layout.
    last_feature_layer: str = ""
    # The last channels-first feature map [C, h, w] (a layer to use when one is refused).
    channels_first_layer: str = ""
    # Grad-CAM's and activations' default: the last feature map when it is channels-first,
    # else "" (no default: token or channels-last layers run after the last [C, h, w] one).
    default_cam_layer: str = ""
    # Why default_cam_layer is the layer it is and how the methods read it, in words.
    default_cam_note: str = ""
    # aten activation ops other than ReLU that the forward pass runs (silu, gelu, ...).
    non_relu_activations: tuple[str, ...] = ()
    # The nn.MultiheadAttention modules of the forward pass, in call order, each run once on
    # tokens with a patch grid (a vision transformer's self-attention): attention rollout
    # chains their attention; empty for any other model.
    attention_layers: tuple[str, ...] = ()
    # The tokens those attention layers run on (a class token and a patch grid), or None.
    attention_layout: LayerLayout | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def channels_last(self) -> bool:
        """The module's 4-D weights are channels_last, and batches are given to it that way
        (laid out once at load time by `_memory_format`, which refuses a model that cannot)."""
        return self.spec.fast or self.spec.memory_format == "channels_last"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.channels, *self.spec.input_size)

    def view_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape the methods read layer `name`'s output as (no batch axis): its map
        [C, h, w] when it is a map of the input in any layout (`LayerLayout.map_shape`), else
        its own output shape; None when it has no tensor output."""
        shape = self.layer_shapes.get(name)
        layout = self.layer_layouts.get(name)
        if shape is None or layout is None:
            return shape
        return layout.map_shape or shape

    def view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A batch of layer `name`'s outputs as the methods read them (see `view_shape`):
        channels-first maps [N, C, h, w] for maps in any layout, else as the layer gives them."""
        layout = self.layer_layouts.get(name)
        if layout is None or layout.map_shape is None:
            return t
        return layout.to_maps(t)

    def example_layers(self, n: int = 3) -> list[str]:
        names = list(self.layer_shapes)
        return names[:n] + (["..."] if len(names) > n else [])

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


_ARCH_FORMS = "a torchvision builder name or 'package.module:callable'"


def resolve_builder(arch: str) -> Callable[..., nn.Module]:
    """Returns what builds `arch`: a torchvision builder, or for 'package.module:callable'
    an nn.Module subclass or a Python function (never a builtin or other callable object).

    Raises:
        ConfigError: The module cannot be imported, or the name is anything else.
    """
    if ":" in arch:
        module_name, _, attr = arch.partition(":")
        if not module_name or not attr.isidentifier():
            raise ConfigError(f"arch '{arch}' must be {_ARCH_FORMS}")
        try:
            module = importlib.import_module(module_name)
        except BaseException as e:  # noqa: BLE001 - SystemExit too: an import must not end us
            raise ConfigError(
                f"arch '{arch}': cannot import module '{module_name}': {type(e).__name__}: {e}"
            ) from None
        builder = getattr(module, attr, None)
        if builder is None:
            raise ConfigError(f"arch '{arch}': module '{module_name}' has no '{attr}'")
        if inspect.isclass(builder):
            if not issubclass(builder, nn.Module):
                raise ConfigError(
                    f"arch '{arch}': class {_qualified(builder)} is not an nn.Module subclass; "
                    "refused (arch names an nn.Module subclass or a Python function that "
                    "returns one)"
                )
        elif not inspect.isfunction(builder):
            kind = "a builtin" if inspect.isbuiltin(builder) else f"a {type(builder).__name__}"
            raise ConfigError(
                f"arch '{arch}': '{attr}' is {kind}, not an nn.Module subclass or a Python "
                "function that returns one; refused"
            )
        return builder  # type: ignore[no-any-return]
    import torchvision

    try:
        return torchvision.models.get_model_builder(arch)  # type: ignore[no-any-return]
    except ValueError:
        raise ConfigError(
            f"arch '{arch}' is neither 'package.module:callable' nor a torchvision model "
            f"(e.g. resnet18, vgg11, densenet121)"
        ) from None


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


@dataclass(frozen=True)
class _Accepts:
    """The keyword arguments a builder takes: these names, and any name when `any_name`."""

    names: frozenset[str]
    any_name: bool

    def __contains__(self, name: object) -> bool:
        return self.any_name or name in self.names


def _accepts(signature: inspect.Signature) -> _Accepts:
    params = signature.parameters.values()
    return _Accepts(
        names=frozenset(
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ),
        any_name=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
    )


def _signature(builder: Callable[..., Any], arch: str) -> inspect.Signature:
    try:
        return inspect.signature(builder)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"arch '{arch}': cannot read the signature of its builder: {e}") from None


def _torchvision_accepts(builder: Callable[..., Any], signature: inspect.Signature) -> _Accepts:
    """What a torchvision builder takes: it passes its **kwargs on to the model class it
    returns (its return annotation), whose constructor says which names are valid."""
    own = _accepts(signature)
    returned = signature.return_annotation
    if not own.any_name or not (inspect.isclass(returned) and issubclass(returned, nn.Module)):
        return own
    try:
        cls = _accepts(inspect.signature(returned))
    except (TypeError, ValueError):
        return own
    return _Accepts(names=own.names | cls.names, any_name=cls.any_name)


def _build_with(
    spec: ModelSpec, builder: Callable[..., Any], fixed: dict[str, Any] | None = None
) -> nn.Module:
    """Calls `builder` once with num_classes (when it takes it), the spec's kwargs and the
    server's `fixed` arguments; every failure is a ConfigError naming the model and arch."""
    what = f"model '{spec.name}': arch '{spec.arch}'"
    signature = _signature(builder, spec.arch)
    torchvision_builder = ":" not in spec.arch
    accepts = (
        _torchvision_accepts(builder, signature) if torchvision_builder else _accepts(signature)
    )
    name = f"torchvision's {spec.arch}" if torchvision_builder else _qualified(builder)
    # The server sets these for torchvision builders itself (config.py refuses them there).
    offered = accepts.names - (
        {"weights", "progress", "num_classes"} if torchvision_builder else {"num_classes"}
    )
    for key in spec.kwargs:
        if key not in accepts:
            raise ConfigError(
                f"{what}: kwargs.{key} is not an argument of {name}; it takes: "
                + (", ".join(sorted(offered)) or "none"),
                public="its configuration names a builder argument its architecture does not take",
            )
    # Deep copies: whatever the builder does to its arguments cannot reach the spec.
    kwargs: dict[str, Any] = copy.deepcopy(dict(spec.kwargs))
    if "num_classes" in accepts:
        kwargs["num_classes"] = spec.num_classes
    kwargs.update(copy.deepcopy(fixed or {}))
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(
            f"{what}: {name} cannot be called with {sorted(kwargs)}: {e}",
            public=_BUILD_FAILED,
        ) from None
    try:
        module = builder(**kwargs)
    except BaseException as e:  # noqa: BLE001 - SystemExit too: a builder must not end us
        raise ConfigError(
            f"{what}: {name} raised {type(e).__name__} while building the model: {e}",
            public=_BUILD_FAILED,
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"{what}: {name} returned {type(module).__name__}, not an nn.Module",
            public=_BUILD_FAILED,
        )
    return module


_BUILD_FAILED = "its architecture could not be built when the server started"
# What a client is told of a refused weights file: why, in a few words, never where.
_REFUSED = "its weights file was refused when the server started"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads weights without running code: safetensors, or torch.load(weights_only=True)."""
    if not path.is_file():
        raise ConfigError(
            f"weights file not found: {path}",
            public="its weights file was not found when the server started",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors' error type is not public API
            raise ConfigError(
                f"{path}: not a valid safetensors file: {e}",
                public=f"{_REFUSED} (it is not a valid safetensors file)",
            ) from None
    # weights_only=True refuses pickled code; there is deliberately no fallback.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{path}: refused: it holds pickled objects other than tensors "
            f"({_unpickler_reason(e)}); weights are read weights-only (safetensors, or "
            "torch.load(weights_only=True))",
            public=f"{_REFUSED} (it holds pickled objects other than tensors)",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConfigError(
            f"{path}: not a torch weights file: {e}",
            public=f"{_REFUSED} (it is not a weights file)",
        ) from None
    return _state_dict_of(obj, str(path))


def _load_into(
    module: nn.Module, state: dict[str, torch.Tensor], what: str, *, public: str
) -> None:
    """Loads every tensor of `state` into `module`, which must take exactly those keys;
    ConfigError `what: <torch's account>` when they do not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{what}: {e}", public=public) from None


def _state_dict_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """What torch.load gave, as a state dict of tensors (a checkpoint's "state_dict" entry, or
    the whole of it); ConfigError when it is neither."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"{where}: expected a state dict of tensors",
            public=f"{_REFUSED} (it holds no state dict of tensors)",
        )
    return obj


# torchvision builders that construct the model differently when given weights: the
# arguments they then override (beyond num_classes), mirrored here because the model is
# built with weights=None and loaded by load_torchvision_model, not by the builder (whose
# own load calls torch.load(weights_only=False)).
_TV_FIXED_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
}
# DenseNet checkpoints predate the ban on '.' in module names ('norm.1' -> 'norm1').
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def fetch_torchvision_state_dict(weights: Any, what: str) -> dict[str, torch.Tensor]:
    """Torchvision weights' state dict through torch.hub's cache, downloading them if absent.

    `weights.get_state_dict` is torch.hub.load_state_dict_from_url, whose weights_only
    defaults to False (it passes that to torch.load explicitly): it is set here, so a cached
    file holding pickled code is refused. check_hash verifies a download against the SHA-256
    prefix in the file name.
    """
    url = str(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    log.info("%s: torchvision weights %s from %s (cache: %s)", what, weights, url, cached)
    try:
        state = weights.get_state_dict(
            progress=False, check_hash=True, weights_only=True, map_location="cpu"
        )
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{what}: {cached}: refused: it holds pickled objects other than tensors "
            f"({_unpickler_reason(e)}); weights are read weights-only",
            public=f"{_REFUSED} (it holds pickled objects other than tensors)",
        ) from None
    except Exception as e:  # noqa: BLE001 - network, file system and torch.load errors alike
        raise ConfigError(
            f"{what}: cannot get torchvision weights {weights} (not in the cache {cached}, "
            f"download from {url} failed, or the file is unreadable): {type(e).__name__}: {e}",
            public="its torchvision weights could not be fetched when the server started",
        ) from None
    return _state_dict_of(state, f"{what}: {cached}")


def load_torchvision_model(spec: ModelSpec) -> tuple[nn.Module, tuple[str, ...]]:
    """Builds `spec.arch` as torchvision does for `spec.torchvision_weights` and loads them.

    Returns the module and the weights' category names.
    """
    import torchvision

    assert spec.torchvision_weights is not None
    what = f"model '{spec.name}'"
    weights = torchvision.models.get_weight(spec.torchvision_weights)
    builder = resolve_builder(spec.arch)
    # What the weights need, as torchvision's own builders set it: a kwargs entry may repeat
    # it, never change it (torchvision's builders refuse that too).
    fixed: dict[str, Any] = dict(_TV_FIXED_KWARGS.get(spec.arch, {}))
    min_size = weights.meta.get("min_size")
    if spec.arch.startswith("vit_") and min_size:
        fixed["image_size"] = min_size[0]
    elif spec.arch.startswith("maxvit") and min_size:
        fixed["input_size"] = tuple(min_size)
    for key, value in spec.kwargs.items():
        if key in fixed and _plain(value) != _plain(fixed[key]):
            raise ConfigError(
                f"{what}: kwargs.{key} = {value!r} conflicts with torchvision weights "
                f"{weights}, which are built with {key} = {fixed[key]!r}; leave it out",
                public="its configuration conflicts with its torchvision weights",
            )
    module = _build_with(spec, builder, {"weights": None, **fixed})
    state = fetch_torchvision_state_dict(weights, what)
    if spec.arch.startswith("densenet"):
        state = {
            (f"{m.group(1)}{m.group(2)}" if (m := _DENSENET_OLD_KEY.match(k)) else k): v
            for k, v in state.items()
        }
    _load_into(
        module,
        state,
        f"{what}: torchvision weights {weights} do not fit '{spec.arch}'",
        public="its torchvision weights do not fit its architecture",
    )
    if (
        isinstance(module, torchvision.models.GoogLeNet)
        and spec.kwargs.get("aux_logits") is not True
    ):
        # torchvision drops GoogLeNet's auxiliary heads after loading (they are untrained)
        # unless they were asked for.
        module.aux_logits = False
        module.aux1 = None  # type: ignore[assignment]
        module.aux2 = None  # type: ignore[assignment]
    categories = weights.meta.get("categories") or ()
    return module, tuple(str(c) for c in categories)


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a TOML array compares equal to the tuple it stands for."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    # torch's message is a page of advice on how to load the file unsafely; keep the reason.
    text = str(err).strip()
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", text)
    if found:
        return found.group(1).strip()[:300]
    return text.splitlines()[-1][:300] if text else "unpickling refused"


def read_labels(path: Path | None, num_classes: int) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"labels file {path}: {e}",
            public="its labels file could not be read when the server started",
        ) from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if len(labels) != num_classes:
        raise ConfigError(
            f"labels file {path} has {len(labels)} labels, num_classes is {num_classes}",
            public=f"its labels file has {len(labels)} labels for {num_classes} classes",
        )
    return labels


def _build(spec: ModelSpec) -> nn.Module:
    return _build_with(spec, resolve_builder(spec.arch))


def load_model(
    spec: ModelSpec, device: torch.device, model_root: Path | None = None
) -> ServedModel:
    """Builds, loads, checks and warms one model on `device`.

    With `model_root`, the weights and labels files must resolve (symlinks followed) inside
    it, and are read through their resolved paths.
    """
    weights, labels = spec.weights, spec.labels
    # The embedded model's files ship inside the package: model_root confines the operator's.
    if model_root is not None and not spec.embedded:
        where = f"model '{spec.name}':"
        if weights is not None:
            weights = _under_root(weights, model_root, f"{where} weights", "weights")
        if labels is not None:
            labels = _under_root(labels, model_root, f"{where} labels", "labels")
    categories: tuple[str, ...] = ()
    if spec.torchvision_weights is not None:
        # Published weights by name: built as torchvision does, read from torch.hub's cache.
        module, categories = load_torchvision_model(spec)
    else:
        module = _build(spec)
        if weights is not None:
            _load_into(
                module,
                load_state_dict(weights),
                f"model '{spec.name}': weights do not fit '{spec.arch}'",
                public="its weights do not fit its architecture",
            )
        else:
            log.warning("model %s has no weights: serving random initialisation", spec.name)
    # Set once at load time, never by a method: inputs get gradients, parameters never do.
    module.eval().requires_grad_(False).to(device)
    served = ServedModel(
        spec=spec,
        module=module,
        device=device,
        # A labels file overrides the categories torchvision weights declare.
        labels=read_labels(labels, spec.num_classes) if labels is not None else categories,
        layers={name: m for name, m in module.named_modules() if name},
    )
    _memory_format(served)
    out = _trace_shapes(served)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, spec.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model '{spec.name}': output for one input is {shape}, expected (1, {spec.num_classes})",
            public=f"its output for one input is {shape}, not (1, {spec.num_classes})",
        )
    return served


def _memory_format(served: ServedModel) -> None:
    """Lays the module's 4-D weights out channels_last where `served.channels_last` says so
    (`spec.memory_format`, or `fast`), once, before serving.

    Raises:
        ConfigError: the forward pass fails on a channels_last batch (a `.view` of its input
            or of a feature map needs contiguous memory).
    """
    if not served.channels_last:
        return
    spec = served.spec
    served.module.to(memory_format=torch.channels_last)
    # Two items: for one, a channels_last batch can pass for a contiguous one.
    x = torch.zeros(2, *served.input_shape, device=served.device)
    try:
        with torch.no_grad():
            served.module(x.contiguous(memory_format=torch.channels_last))
    except Exception as e:  # noqa: BLE001 - whatever it raised, this layout does not run
        key = "fast = true" if spec.fast else 'memory_format = "channels_last"'
        raise ConfigError(
            f"model '{spec.name}': {key} lays it out channels_last, and its forward pass fails "
            f"on a channels_last batch ({type(e).__name__}: {e}); serve it contiguous",
            public="its forward pass fails on a channels_last batch",
        ) from None


def _under_root(path: Path, root: Path, what: str, kind: str) -> Path:
    try:
        return resolve_under_root(path, root, what)
    except ConfigError as e:
        raise ConfigError(
            str(e), public=f"its {kind} file is not inside the server's model_root"
        ) from None


# Activation ops whose backward guided backprop and deconvolution leave unmodified.
_NON_RELU_ACTIVATIONS = {
    "silu",
    "gelu",
    "sigmoid",
    "tanh",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "hardswish",
    "hardsigmoid",
    "hardtanh",  # min_val other than 0: ReLU6-like calls are noted as relu6
    "softplus",
    "mish",
    "prelu",
    "_prelu_kernel",
    "rrelu_with_noise",
    "log_sigmoid_forward",
    "glu",
}


def _is_relu_like_hardtanh(args: Any, kwargs: Any) -> bool:
    """hardtanh(x, min_val=-1, max_val=1) with min_val 0 (ReLU6, Hardtanh(0, cap)): a ReLU
    with a cap, which the ReLU rule covers."""
    min_val = args[1] if len(args) > 1 else (kwargs or {}).get("min_val", -1.0)
    return bool(min_val == 0)


class _OpRecorder(TorchDispatchMode):
    """Notes which aten ops a forward pass runs (to find activations the rules do not cover).

    A hardtanh call with min_val 0 (how ReLU6 reaches aten) is noted as "relu6" instead:
    the guided and deconvnet rules cover it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__.rstrip("_")
        if name == "hardtanh" and _is_relu_like_hardtanh(args, kwargs):
            name = "relu6"
        self.ops.add(name)
        return func(*args, **(kwargs or {}))


# Tokens: at most this many leading tokens (class, distillation, register tokens) before the
# patch grid.
MAX_CLASS_TOKENS = 8


def _map_fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether (h, w) can be the spatial axes of a feature map of an input of `size`: within
    its height and width, and in its aspect ratio: h and w are H / s and W / s for one
    stride s, each within 1 (convolutions round their output sizes)."""
    height, width = size
    if not (1 <= h <= height and 1 <= w <= width):
        return False
    # 1 / s must lie in [(h - 1) / H, (h + 1) / H] and in [(w - 1) / W, (w + 1) / W].
    return max((h - 1) / height, (w - 1) / width) <= min((h + 1) / height, (w + 1) / width)


def _patch_grids(tokens: int, size: tuple[int, int]) -> list[tuple[int, tuple[int, int]]]:
    """The (class tokens k, patch grid (gh, gw)) for which tokens - k = gh * gw, gh and gw
    being the input's height and width over one patch size p, rounded the same way (down, or
    up for padded inputs), with more than one patch and fewer class tokens than patches;
    fewest class tokens first."""
    height, width = size
    fits = []
    for k in range(min(MAX_CLASS_TOKENS, (tokens - 1) // 2) + 1):
        n = tokens - k
        for p in range(1, max(height, width) + 1):
            grid = next(
                (
                    g
                    for g in ((height // p, width // p), (-(-height // p), -(-width // p)))
                    if g[0] * g[1] == n and n >= 2 and min(g) >= 1
                ),
                None,
            )
            if grid is not None:
                fits.append((k, grid))
                break
    return fits


def infer_layout(
    shape: tuple[int, ...],
    size: tuple[int, int],
    shape2: tuple[int, ...] | None = None,
    size2: tuple[int, int] | None = None,
) -> LayerLayout:
    """The layout of a layer's output `shape` (no batch axis) for an input of `size` (H, W).

    `shape2` is the same layer's output for a second input size `size2`, when the model
    accepts one (None otherwise): the channel axis keeps its size across input sizes, the
    spatial or token axes follow the input. The rule, by rank:
    - 1: a vector [F].
    - 3: [C, h, w] when (h, w) fits the input (within its height and width, in its aspect
      ratio: see `_map_fits`) and, with a second trace, C is unchanged and (h2, w2) fits the
      second input; [h, w, C] the same way with the axes read channels-last. When only one
      reading fits, it is the layout; when both fit (a square input and a map as deep as it
      is wide, e.g. [16, 16, 16], with no second trace to tell), the evidence is ambiguous
      and channels-first is assumed, as in every convolutional network; when neither fits,
      other.
    - 2: tokens [T, C] when T - k = gh * gw for k leading class tokens (at most
      MAX_CLASS_TOKENS) and a patch grid (gh, gw) that is the input over one patch size (see
      `_patch_grids`) and, with a second trace, C is unchanged and T2 - k fits the second
      input with the same k; fewest class tokens first. With a second trace in which T
      changes with the input and C does not, tokens without a grid when none fits. Else other.
    - anything else: other.
    """
    rank = len(shape)
    if rank == 1:
        return LayerLayout("vector", shape)
    if rank == 3:
        c, a, b = shape

        def reading_fits(ch: int, sp: tuple[int, int], channel_axis: int, spatial: slice) -> bool:
            if not _map_fits(*sp, size):
                return False
            if shape2 is None or size2 is None:
                return True
            h2, w2 = shape2[spatial]
            return shape2[channel_axis] == ch and _map_fits(h2, w2, size2)

        nchw = reading_fits(c, (a, b), 0, slice(1, 3))
        nhwc = reading_fits(b, (c, a), 2, slice(0, 2))
        if nhwc and not nchw:
            return LayerLayout("nhwc", shape, grid=(c, a))
        if nchw:
            return LayerLayout("nchw", shape, grid=(a, b))
        return LayerLayout("other", shape)
    if rank == 2:
        tokens, channels = shape
        same_channels = shape2 is not None and len(shape2) == 2 and shape2[1] == channels
        fits = _patch_grids(tokens, size)
        if shape2 is not None and size2 is not None:
            later = dict(_patch_grids(shape2[0], size2)) if same_channels else {}
            fits = [(k, g) for k, g in fits if k in later]
        if fits:
            k, grid = fits[0]
            return LayerLayout("tokens", shape, grid=grid, class_tokens=k)
        if same_channels and shape2 is not None and shape2[0] != tokens:
            return LayerLayout("tokens", shape)
    return LayerLayout("other", shape)


def _second_input_size(size: tuple[int, int]) -> tuple[int, int]:
    # Half as large again: every axis that follows the input changes by a stride of up to
    # half the input, and the aspect ratio is kept.
    return (size[0] + max(1, size[0] // 2), size[1] + max(1, size[1] // 2))


def _trace_shapes(served: ServedModel) -> object:
    """One forward pass on zeros (it also warms the model up) recording every layer's output
    shape, how often it runs, the activation ops used, its attention modules and which layer
    Grad-CAM defaults to; a second pass at another input size, when the model accepts one, is
    evidence for the layouts (see `infer_layout`).

    The last feature map: of the layers with a map or tokens over more than one place of the
    input, in the order their forward passes finish (a whole `layer4` or `features` block
    after its last conv), the last; adaptive pools are left out (they only resample: VGG's
    7x7 avgpool up-samples a 2x2 map). `channels_first_layer` is the last such map that is
    [C, h, w] and runs once (a reused ReLU is ambiguous). `default_cam_layer` is chosen by
    `_default_cam_layer`.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    finished: list[str] = []
    # What tells a stage from the whole feature extractor: the output tensor each layer gave
    # (a Sequential gives its last child's), and whether it was fed the model's own input.
    outputs: dict[str, torch.Tensor] = {}
    fed_the_input: set[str] = set()
    # (attention module, how many layers had finished when it started, its query's shape).
    attention_calls: list[tuple[str, int, tuple[int, ...]]] = []
    x0 = torch.zeros(1, *served.input_shape, device=served.device)

    def make_hook(
        name: str, into: dict[str, tuple[int, ...]], log_calls: bool
    ) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: object, out: object) -> None:
            if log_calls:
                calls[name] = calls.get(name, 0) + 1
                finished.append(name)
                if isinstance(inp, tuple) and inp and inp[0] is x0:
                    fed_the_input.add(name)
                if isinstance(out, torch.Tensor):
                    outputs[name] = out
            if isinstance(out, torch.Tensor) and out.dim() >= 1:
                into[name] = tuple(out.shape[1:])
            else:
                into.pop(name, None)

        return hook

    def attention_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inp: object) -> None:
            query = inp[0] if isinstance(inp, tuple) and inp else None
            if isinstance(query, torch.Tensor) and query.dim() == 3:
                batch_first = bool(getattr(m, "batch_first", False))
                q = query if batch_first else query.transpose(0, 1)
                attention_calls.append((name, len(finished), tuple(q.shape[1:])))

        return hook

    handles = [
        m.register_forward_hook(make_hook(n, shapes, True)) for n, m in served.layers.items()
    ]
    handles += [
        m.register_forward_pre_hook(attention_hook(n))
        for n, m in served.layers.items()
        if isinstance(m, nn.MultiheadAttention)
    ]
    recorder = _OpRecorder()
    try:
        with torch.no_grad(), recorder:
            out = served.module(x0)
    finally:
        for h in handles:
            h.remove()
    size = (served.input_shape[1], served.input_shape[2])
    size2 = _second_input_size(size)
    second: dict[str, tuple[int, ...]] = {}
    handles = [
        m.register_forward_hook(make_hook(n, second, False)) for n, m in served.layers.items()
    ]
    shapes2: dict[str, tuple[int, ...]] | None = second
    try:
        with torch.no_grad():
            served.module(torch.zeros(1, served.input_shape[0], *size2, device=served.device))
    except Exception as e:  # noqa: BLE001 - a model made for one input size fails its own way
        log.debug("model %s: no second trace at %s: %s", served.name, size2, e)
        shapes2 = None
    finally:
        for h in handles:
            h.remove()
    # Keep named_modules() order, which is what people read in print(model).
    served.layer_shapes.update({n: shapes[n] for n in served.layers if n in shapes})
    served.layer_calls.update(calls)
    served.layer_layouts.update(
        {
            n: infer_layout(s, size, shapes2.get(n) if shapes2 is not None else None, size2)
            for n, s in served.layer_shapes.items()
        }
    )
    resampling = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    layouts = served.layer_layouts
    maps = {
        n
        for n, lay in layouts.items()
        if lay.kind in ("nchw", "nhwc", "tokens")
        and lay.positions > 1
        and not isinstance(served.layers[n], resampling)
    }
    order = [n for n in finished if n in maps]
    once = [n for n in order if calls[n] == 1]
    channels_first = [n for n in once if layouts[n].kind == "nchw"]
    served.channels_first_layer = channels_first[-1] if channels_first else ""
    served.last_feature_layer = once[-1] if once else (order[-1] if order else "")
    served.attention_layers, served.attention_layout = _attention_layers(
        served, attention_calls, calls, size
    )
    served.default_cam_layer, served.default_cam_note = _default_cam_layer(
        served, once, finished, attention_calls, outputs, fed_the_input
    )
    served.non_relu_activations = tuple(sorted(recorder.ops & _NON_RELU_ACTIVATIONS))
    return out


def _attention_layers(
    served: ServedModel,
    attention_calls: list[tuple[str, int, tuple[int, ...]]],
    calls: dict[str, int],
    size: tuple[int, int],
) -> tuple[tuple[str, ...], LayerLayout | None]:
    """The attention modules of a vision transformer, in call order, and the tokens they run
    on: all of the model's nn.MultiheadAttention modules when each runs once, self-attention
    on tokens with a class token and a patch grid (the same for all), without extra key
    tokens (bias_k, add_zero_attn); else none (attention over anything else, or reused)."""
    if not attention_calls:
        return (), None
    layouts = {infer_layout(shape, size) for _, _, shape in attention_calls}
    if len(layouts) != 1:
        return (), None
    (layout,) = layouts
    names = [name for name, _, _ in attention_calls]
    plain = all(
        getattr(served.layers[n], "bias_k", None) is None
        and not getattr(served.layers[n], "add_zero_attn", False)
        for n in names
    )
    if (
        layout.kind != "tokens"
        or layout.grid is None
        or layout.class_tokens < 1
        or not plain
        or len(set(names)) != len(names)
        or any(calls.get(n) != 1 for n in names)
    ):
        return (), None
    return tuple(names), layout


def _default_cam_layer(
    served: ServedModel,
    once: list[str],
    finished: list[str],
    attention_calls: list[tuple[str, int, tuple[int, ...]]],
    outputs: dict[str, torch.Tensor],
    fed_the_input: set[str],
) -> tuple[str, str]:
    """Grad-CAM's (and activations') default layer, and why, in words.

    - A vision transformer (`attention_layers` set): the layer that finished last before its
      last attention block started, when it is tokens on the patch grid: the last block's
      first norm (torchvision's `encoder_layer_N.ln_1`), as pytorch-grad-cam recommends. The
      patch tokens of the last block's output reach a class-token head through no later
      attention, so their gradient, and any map made of it, is zero.
    - Else the last map of the input that runs once, in any layout the methods read as
      [C, h, w] (channels-first, channels-last, tokens on a patch grid). When it is a whole
      feature extractor (a module fed the model's own input, such as VGG's or ConvNeXt's
      `features`), the outermost module inside it that gives the same output tensor is named
      instead: the last stage (`features.7`), the same result under the name of its stage.
    - "" when the model has no such map.
    """
    layouts = served.layer_layouts
    if served.attention_layers:
        last_start = max(i for name, i, _ in attention_calls if name in served.attention_layers)
        before = finished[last_start - 1] if last_start > 0 else ""
        layout = layouts.get(before)
        if before in once and layout is not None and layout.kind == "tokens" and layout.grid:
            return before, (
                f"the input of the last attention block: {layout.describe()}, read as "
                f"[C, h, w] = {list(layout.map_shape or ())} without the class "
                f"token{'s' if layout.class_tokens != 1 else ''} (the last block's output "
                "reaches the class token through no later attention: its patch tokens' "
                "gradient is zero)"
            )
    mappable = [n for n in once if layouts[n].map_shape is not None]
    if not mappable:
        return "", ""
    name = mappable[-1]
    lead = "the model's last feature map"
    if name in fed_the_input and name in outputs:
        inside = [
            n
            for n in served.layers
            if n.startswith(name + ".") and outputs.get(n) is outputs[name] and n in once
        ]
        if inside:
            lead = f"the last stage of '{name}', whose output is the model's last feature map"
            name = inside[0]
    layout = layouts[name]
    shape = list(layout.map_shape or ())
    if layout.kind == "nchw":
        how = f"channels-first {shape}"
    elif layout.kind == "nhwc":
        how = f"channels-last {list(layout.shape)}, read permuted as [C, h, w] = {shape}"
    else:
        how = f"{layout.describe()}, read as [C, h, w] = {shape} without class tokens"
    return name, f"{lead}: {how}"


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device '{name}' is not a torch device (auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available")
    return device
