"""Forward hooks that record layer outputs, removed on every exit path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from ..models import ServedModel


@contextmanager
def capture_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Records `module`'s output (the last call's, for a reused module) while the block runs.

    The hook is removed on every exit path. The rest of the network runs on a clone of the
    output (as Captum does), so a later in-place op (ReLU(inplace=True) after a conv) cannot
    rewrite the saved tensor, and gradients with respect to it are those of the layer.
    """
    saved: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _inp: object, out: object) -> object:
        if isinstance(out, torch.Tensor):
            saved[:] = [out]
            return out.clone()  # downstream gets the clone, so in-place ops leave `out` alone
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield saved
    finally:
        handle.remove()


def forward_capturing(
    model: ServedModel, x: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass returning the logits and the outputs of the named layers; every hook
    is gone afterwards, whatever happened."""
    with ExitStack() as stack:
        saved = {n: stack.enter_context(capture_output(model.layers[n])) for n in names}
        logits = model.module(x)
    return logits, {n: s[0] for n, s in saved.items()}
