"""The request options of LRP, SmoothGrad and integrated gradients, as plain values with bounds."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

# --- LRP ---------------------------------------------------------------------------------------

# Rule sets by name (the schema's LrpComposite values, lowercased): what LRP runs by default
# first. Their rules are in lrp.py.
LRP_COMPOSITES = (
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "deep_taylor",
    "epsilon",
)
# The composites with an epsilon rule (on linear layers, or everywhere), and with a gamma rule.
EPSILON_COMPOSITES = frozenset(LRP_COMPOSITES) - {"deep_taylor"}
GAMMA_COMPOSITES = frozenset({"epsilon_gamma_box"})
DEFAULT_EPSILON = 1e-6  # Zennit's
DEFAULT_GAMMA = 0.25  # Zennit's
EPSILON_RANGE = (1e-9, 100.0)
GAMMA_RANGE = (0.0, 100.0)


@dataclass(frozen=True)
class LrpOptions:
    """LRP's rule set and its parameters (defaults filled in)."""

    composite: str = "epsilon_plus_flat"
    epsilon: float = DEFAULT_EPSILON
    gamma: float = DEFAULT_GAMMA


# --- SmoothGrad ----------------------------------------------------------------------------------

SMOOTH_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
DEFAULT_SMOOTH_SAMPLES = 25
MAX_SMOOTH_SAMPLES = 256
DEFAULT_NOISE = 0.15  # of the input's range: PAIR's saliency library's default
NOISE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class SmoothOptions:
    """SmoothGrad, SmoothGrad-squared or VarGrad over a gradient method."""

    samples: int = DEFAULT_SMOOTH_SAMPLES
    noise: float = DEFAULT_NOISE  # standard deviation over the input's (max - min)
    kind: str = "smoothgrad"
    seed: int = 0

    def batch_key(self) -> Hashable:
        # The seed is per item: items with different seeds share a batch.
        return (self.samples, self.noise, self.kind)


# --- integrated gradients ----------------------------------------------------------------------

QUADRATURES = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
INTEGRATION_METHODS = (*QUADRATURES, "expected_gradients")
BASELINES = ("zero", "black", "blur", "uniform", "images")
DEFAULT_STEPS = 50  # Captum's
MAX_STEPS = 1024
MAX_BASELINES = 16  # uniform draws or images
MAX_BLUR_SIGMA = 100.0
# Forward and backward passes one item may cost: SmoothGrad's samples x integrated gradients'
# steps x baselines (a pass is one row of a batch).
MAX_PASSES_PER_ITEM = 16384


@dataclass(frozen=True)
class IgOptions:
    """Integrated gradients' steps, integration method and baseline."""

    steps: int = DEFAULT_STEPS
    method: str = "gausslegendre"
    baseline: str = "zero"
    blur_sigma: float = 0.0  # 0: a tenth of the input's shorter side
    baseline_samples: int = 1  # uniform baselines drawn
    seed: int = 0
    # Model-space baselines [C, H, W] (float32, CPU) of baseline "images", one per image,
    # filled in by the engine once the images are preprocessed; per item, so not compared.
    images: tuple[torch.Tensor, ...] = field(default=(), compare=False, repr=False)
    image_count: int = 0  # how many images the request sent

    @property
    def baselines(self) -> int:
        """How many baselines each item integrates from (or expected gradients draws among)."""
        if self.baseline == "uniform":
            return self.baseline_samples
        if self.baseline == "images":
            return self.image_count
        return 1

    @property
    def passes(self) -> int:
        """Forward and backward passes per item: a quadrature takes `steps` per baseline,
        expected gradients `steps` in all."""
        return self.steps if self.method == "expected_gradients" else self.steps * self.baselines

    def batch_key(self) -> Hashable:
        # Seeds and the images' values are per item.
        return (
            self.steps,
            self.method,
            self.baseline,
            self.blur_sigma,
            self.baseline_samples,
            self.image_count,
        )
