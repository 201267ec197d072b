"""A model small enough that tests which start many processes or save many versions stay fast.

The module imports only torch: mmlib stores this file as the model's code and imports it on recovery.
"""

import torch
from torch import nn


class TinyNet(nn.Module):
    """A conv + batch norm + linear classifier for 3x8x8 inputs (about 400 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


def tiny_input() -> torch.Tensor:
    """A batch of two inputs of the shape TinyNet takes."""
    return torch.rand(2, 3, 8, 8)
