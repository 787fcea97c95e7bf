"""What a method may leave behind on a served model: hooks of any kind, parameters needing grad."""

from __future__ import annotations

import torch


def hooks_and_grads(module: torch.nn.Module) -> list[str]:
    """What a method may have left on a model: hooks of any kind, parameters needing grad."""
    left = []
    for name, m in module.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            if getattr(m, kind):
                left.append(f"{name or 'model'}.{kind}")
        if getattr(m, "_backward_pre_hooks", None):
            left.append(f"{name or 'model'}._backward_pre_hooks")
    left += [f"{n}.requires_grad" for n, p in module.named_parameters() if p.requires_grad]
    from torch.nn.modules import module as nn_module

    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(nn_module, kind, None):
            left.append(f"torch.nn.modules.module.{kind}")
    return left
