"""The embedded default model: a small CNN for 32x32 grayscale handwritten digits."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsNet"]


class DigitsNet(nn.Module):
    """Three 3x3 conv layers, global average pooling and a linear classifier.

    The layer names are part of the public API: clients name them to request activations
    and feature visualisations, so renaming one breaks those requests.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        # One ReLU module reused after every conv, as torchvision's ResNet does, so the
        # interpretability methods must cope with a module that fires several times per pass.
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # [N, 16, 16, 16]
        x = self.pool(self.relu(self.conv2(x)))  # [N, 32, 8, 8]
        x = self.relu(self.conv3(x))  # [N, 64, 8, 8]
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))
