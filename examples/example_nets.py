"""The case studies' CNNs, importable by deepvis-server as `example_nets:MnistNet` / `:CifarNet`."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CifarNet", "MnistNet"]

# The layer names are what clients name in requests (activations, Grad-CAM, feature
# visualization), so each conv has its own ReLU module: `reluN` is the rectified map of `convN`.


class MnistNet(nn.Module):
    """28x28 grayscale digits: four 3x3 convs (16-32-64-64), two max-pools, global average
    pooling and a linear classifier. Grad-CAM's default layer is relu4 (7x7)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.relu4 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))  # [N, 32, 28, 28]
        x = self.relu3(self.conv3(self.pool1(x)))  # [N, 64, 14, 14]
        x = self.relu4(self.conv4(self.pool2(x)))  # [N, 64, 7, 7]
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarNet(nn.Module):
    """32x32 colour images: six 3x3 conv + batch-norm layers (32-32-64-64-128-128) in three
    stages, two max-pools, global average pooling, dropout and a linear classifier.
    Grad-CAM's default layer is relu6 (8x8)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        widths = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
        for i, (cin, cout) in enumerate(widths, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(cout))
            self.add_module(f"relu{i}", nn.ReLU(inplace=True))
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(128, num_classes)

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        conv, bn, relu = (getattr(self, f"{kind}{i}") for kind in ("conv", "bn", "relu"))
        return relu(bn(conv(x)))  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._layer(2, self._layer(1, x))  # [N, 32, 32, 32]
        x = self._layer(4, self._layer(3, self.pool1(x)))  # [N, 64, 16, 16]
        x = self._layer(6, self._layer(5, self.pool2(x)))  # [N, 128, 8, 8]
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
