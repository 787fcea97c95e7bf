"""Model-parameter randomization: which layers count, their seeded re-initialization, and the
private copies the re-initialized models run on, bounded in bytes."""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ResourceExhausted, Unavailable
from ..models import ServedModel
from .metrics import derived_seed

CASCADING = "cascading"
INDEPENDENT = "independent"
MODES = (CASCADING, INDEPENDENT)


def own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's own parameters and buffers (not its children's), by attribute name."""
    tensors: dict[str, torch.Tensor] = {
        n: p for n, p in module._parameters.items() if p is not None
    }
    tensors.update({n: b for n, b in module._buffers.items() if b is not None})
    return tensors


def randomized_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers randomization re-initializes, top-down: every module with parameters of its
    own and a `reset_parameters` method (Conv, Linear, BatchNorm, LayerNorm, ...), from the last
    in named_modules() order to the first, as Quantus's MPRT orders them. Parameters held
    outside such a module (a ViT's class token and position embedding, say) are left as
    trained."""
    found = [
        (name, m)
        for name, m in module.named_modules()
        if name
        and callable(getattr(m, "reset_parameters", None))
        and any(p is not None for p in m._parameters.values())
    ]
    return found[::-1]


def layer_seed(seed: int, name: str) -> int:
    """The seed of a layer's re-initialization (both modes give a layer the same weights)."""
    return derived_seed("randomization", seed, name)


def reinitialized(module: nn.Module, seed: int, name: str) -> dict[str, torch.Tensor]:
    """The layer's own tensors after its `reset_parameters`, run on a CPU copy of it under
    torch.manual_seed(layer_seed(seed, name)) (so the weights are the same on every device),
    leaving the global random state as it was."""
    clone = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer_seed(seed, name))
        clone.reset_parameters()  # type: ignore[operator]
    return {n: t.detach() for n, t in own_tensors(clone).items()}


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass(eq=False)
class SeedSet:
    """The re-initialized tensors of every layer for one seed, on the model's device."""

    seed: int
    nbytes: int
    users: int = 0
    tensors: list[dict[str, torch.Tensor]] | None = None  # per layer, top-down; None: unbuilt


# A step of randomization: (seed, mode, k); None is the trained model.
CopyState = tuple[int, str, int]


@dataclass(eq=False)
class RandomizedCopies:
    """One model's re-initialized copies, private to evaluations.

    The served model is never touched. One working copy (a deepcopy of the module, made on the
    device thread when first needed) takes each step's weights in turn: before a batch runs on
    step (seed, mode, k), the layers that differ from that step are copied in, from the seed's
    re-initialized tensors or back from the served model. The re-initialized tensors of every
    layer for a seed are built once and kept for later requests, least recently used first
    out; the working copy and every seed kept count against `max_bytes`. A seed in use by a
    running evaluation is never dropped.

    `acquire` and `release` run on the event loop; `build` and `model_at` on the device thread.
    """

    model: ServedModel
    max_bytes: int
    layers: list[tuple[str, nn.Module]] = field(init=False)
    seed_bytes: int = field(init=False)  # one seed's re-initialized tensors
    copy_bytes: int = field(init=False)  # the working copy
    _seeds: OrderedDict[int, SeedSet] = field(default_factory=OrderedDict, init=False)
    _working: ServedModel | None = field(default=None, init=False)
    _current: dict[int, int] = field(default_factory=dict, init=False)  # layer -> seed in it

    def __post_init__(self) -> None:
        self.layers = randomized_layers(self.model.module)
        self.seed_bytes = sum(_nbytes(own_tensors(m)) for _, m in self.layers)
        self.copy_bytes = sum(
            t.numel() * t.element_size()
            for t in [*self.model.module.parameters(), *self.model.module.buffers()]
        )

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers]

    @property
    def held_bytes(self) -> int:
        """Bytes held now: the working copy (once made) and every seed kept."""
        working = self.copy_bytes if self._working is not None else 0
        return working + sum(s.nbytes for s in self._seeds.values())

    def acquire(self, seed: int) -> SeedSet:
        """The seed's set, kept for the caller until `release`; made room for (dropping unused
        seeds, least recently used first) within max_bytes.

        Raises:
            ResourceExhausted: The working copy and one seed need more than max_bytes.
            Unavailable: They would fit, but running evaluations hold the room now.
        """
        need = self.copy_bytes + self.seed_bytes
        if need > self.max_bytes:
            raise ResourceExhausted(
                f"randomizing model '{self.model.name}' needs {need / 2**20:.1f} MiB of private "
                f"copies (a working copy and one seed's re-initialized layers); the server's "
                f"max_randomized_mb is {self.max_bytes / 2**20:.0f}",
                field="metrics",
            )
        entry = self._seeds.get(seed)
        if entry is None:
            while self._reserved() + self.seed_bytes > self.max_bytes and self._drop_one():
                pass
            if self._reserved() + self.seed_bytes > self.max_bytes:
                raise Unavailable(
                    f"model '{self.model.name}': running evaluations hold its "
                    f"{len(self._seeds)} randomization seed(s) within max_randomized_mb "
                    f"({self.max_bytes / 2**20:.0f}); retry with backoff, or use a seed in use"
                )
            entry = self._seeds[seed] = SeedSet(seed, self.seed_bytes)
        self._seeds.move_to_end(seed)
        entry.users += 1
        return entry

    def _reserved(self) -> int:
        # The working copy counts from the start: the first randomization makes it.
        return self.copy_bytes + sum(s.nbytes for s in self._seeds.values())

    def release(self, entry: SeedSet) -> None:
        entry.users -= 1

    def _drop_one(self) -> bool:
        for seed, entry in self._seeds.items():
            if entry.users == 0:
                del self._seeds[seed]
                return True
        return False

    def build(self, entry: SeedSet) -> None:
        """Device thread: re-initializes every layer for the entry's seed, once."""
        if entry.tensors is not None:
            return
        device = self.model.device
        entry.tensors = [
            {n: t.to(device) for n, t in reinitialized(m, entry.seed, name).items()}
            for name, m in self.layers
        ]

    def model_at(self, state: CopyState, entry: SeedSet) -> ServedModel:
        """Device thread: the working copy with the weights of `state` (seed, mode, k): layers
        0..k of the top-down list re-initialized (cascading) or layer k alone (independent)."""
        seed, mode, k = state
        assert entry.tensors is not None and entry.seed == seed
        if self._working is None:
            module = copy.deepcopy(self.model.module)
            self._working = dataclasses.replace(
                self.model,
                module=module,
                layers={n: m for n, m in module.named_modules() if n},
            )
            self._current = {}
        wanted = {i: seed for i in (range(k + 1) if mode == CASCADING else (k,))}
        working_layers = self._working.layers
        with torch.no_grad():
            for i, (name, served) in enumerate(self.layers):
                if self._current.get(i) == wanted.get(i):
                    continue
                source = entry.tensors[i] if i in wanted else own_tensors(served)
                target = own_tensors(working_layers[name])
                for n, t in source.items():
                    target[n].copy_(t)
                if i in wanted:
                    self._current[i] = seed
                else:
                    self._current.pop(i, None)
        return self._working
