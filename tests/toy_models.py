"""Tiny architectures the tests serve through the `package.module:callable` config form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# An input holding exactly this value makes FaultyNet raise inside its forward pass.
POISON = 1234.5


class FaultyNet(nn.Module):
    """A small CNN that fails, mid-forward, on any input item containing POISON."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        poisoned = bool((x == POISON).any())
        x = self.relu(self.conv1(x))
        if poisoned:  # after conv1's hooks have fired: a failure in the middle of the graph
            raise RuntimeError("poisoned input")
        x = self.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class FaultyBatchNormNet(nn.Module):
    """FaultyNet with a batch norm after each convolution (what LRP folds on its copy): fails,
    mid-forward, on any input item containing POISON."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        poisoned = bool((x == POISON).any())
        x = self.relu(self.bn1(self.conv1(x)))
        if poisoned:  # after the first folded conv ran under its rule
            raise RuntimeError("poisoned input")
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ModuleReLUNet(nn.Module):
    """nn.ReLU modules, in-place and not, one reused."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu_inplace = nn.ReLU(inplace=True)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu_inplace(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu_inplace(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


class FunctionalReLUNet(ModuleReLUNet):
    """The same weights and graph as ModuleReLUNet, with every ReLU written functionally."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x), inplace=True))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.conv3(x).relu()
        return self.fc(torch.flatten(x, 1))


class OOMNet(FaultyNet):
    """Runs out of device memory on batches larger than 2, and on any batch holding POISON."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2 or bool((x == POISON).any()):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


class SlowNet(FaultyNet):
    """Takes a while per forward pass (for shutdown and deadline tests)."""

    delay_s = 0.6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        if x.shape[0] > 0 and float(x.flatten()[0]) != 0.0:  # the warm-up pass (zeros) is fast
            time.sleep(self.delay_s)
        return super().forward(x)


class FatalNet(FaultyNet):
    """Reports a CUDA error that leaves the device unusable when it sees POISON."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == POISON).any()):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().forward(x)


# Small transformers and a small ConvNeXt, built by torchvision's own classes: their layer
# layouts (tokens, channels-last, channels-first) are those of the full-size models.


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A 2-block ViT on 32x32 inputs: 8x8 patches, so tokens [17, 32] (a class token and a
    4x4 grid)."""
    import torchvision

    vit = torchvision.models.VisionTransformer(num_classes=num_classes, **_tiny_vit_kwargs())
    # torchvision initialises the head to zeros, which would make every gradient zero.
    nn.init.normal_(vit.heads.head.weight, std=0.5)
    return vit


def _tiny_vit_kwargs() -> dict:
    return dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def _vision_transformer() -> type[nn.Module]:
    import torchvision

    return torchvision.models.VisionTransformer


class FaultyViT(_vision_transformer()):  # type: ignore[misc]
    """tiny_vit that fails on any input item containing POISON, after its first block (and
    its attention's hooks) ran."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__(num_classes=num_classes, **_tiny_vit_kwargs())
        nn.init.normal_(self.heads.head.weight, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        poisoned = bool((x == POISON).any())
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder.dropout(x + self.encoder.pos_embedding)
        x = self.encoder.layers[0](x)
        if poisoned:
            raise RuntimeError("poisoned input")
        x = self.encoder.ln(self.encoder.layers[1](x))
        return self.heads(x[:, 0])


def tiny_swin(num_classes: int = 10) -> nn.Module:
    """A 2-stage Swin: channels-last stages [8, 8, 16] and [4, 4, 32] on 32x32 inputs."""
    import torchvision

    return torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=num_classes,
    )


def tiny_convnext(num_classes: int = 10) -> nn.Module:
    """A 2-stage ConvNeXt: channels-first stages, channels-last layers inside each block."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    # layer_scale 1 (not 1e-6) so that random blocks change the features they add to.
    return ConvNeXt(
        [CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)],
        layer_scale=1.0,
        num_classes=num_classes,
    )


class CappedReLUNet(nn.Module):
    """ReLUs with a cap, every way they are written: F.relu6, nn.Hardtanh(0, 6), an in-place
    nn.ReLU6, and an nn.ReLU beside them."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.cap = nn.Hardtanh(0.0, 6.0)
        self.relu6 = nn.ReLU6(inplace=True)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu6(self.conv1(x)))
        x = self.pool(self.cap(self.conv2(x)))
        x = self.relu(self.relu6(self.conv3(x)) - 1.0)
        return self.fc(torch.flatten(x, 1))


class HardtanhNet(nn.Module):
    """A Hardtanh(-1, 1) between ReLUs: not a ReLU, so the rule leaves its gradient plain."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.tanh = nn.Hardtanh(-1.0, 1.0)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.tanh(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class RowTokenNet(nn.Module):
    """Tokens no patch grid explains: one token per image row (its mean over the width, 8
    features) after 3 learned tokens, so T = H + 3 at any input size; a linear `mix` over
    them is a token layer [T, 8] with no grid."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.extra = nn.Parameter(torch.randn(1, 3, 8))
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.relu(self.conv(x)).mean(dim=3).transpose(1, 2)  # [N, H, 8]
        tokens = torch.cat([self.extra.expand(x.shape[0], -1, -1), rows], dim=1)
        return self.fc(self.mix(tokens).mean(dim=1))


class OffsetLogitsNet(nn.Module):
    """A small CNN whose logits get `offset` added: to every class, or (`only` >= 0) to that
    class alone. The offset is no weight (it is not saved), so every offset shares one
    weights file."""

    def __init__(self, num_classes: int = 5, offset: float = 0.0, only: int = -1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16 * 4, num_classes)
        shift = torch.full((num_classes,), float(offset))
        if only >= 0:
            shift = torch.zeros(num_classes)
            shift[only] = float(offset)
        self.register_buffer("offset", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) + self.offset


class FixedSizeNet(nn.Module):
    """A small CNN whose classifier flattens its 16x16 map: it runs on 16x16 inputs only, as
    models with a fixed-size head do."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 16 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


class ViewNet(nn.Module):
    """A small CNN that flattens its feature map with `.view`, as older code does: it runs
    on contiguous memory only."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))
