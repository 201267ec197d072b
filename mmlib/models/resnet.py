"""Reference ResNet models with torchvision-compatible state_dict keys.

This module is self-contained: it only depends on ``torch`` and the standard library,
so it can be imported standalone from its file path.
"""

from typing import List, Optional, Type, Union

import torch
from torch import nn


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (used by ResNet-18/34)."""

    expansion: int = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck block with the stride on the 3x3 convolution (ResNet v1.5)."""

    expansion: int = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BlockType = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """Residual network for image classification, laid out like torchvision's ResNet."""

    def __init__(self, block: BlockType, layers: List[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, self.in_planes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, block: BlockType, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample: Optional[nn.Module] = None
        if stride != 1 or self.in_planes != out_planes:
            downsample = nn.Sequential(
                _conv1x1(self.in_planes, out_planes, stride),
                nn.BatchNorm2d(out_planes),
            )
        modules: List[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        modules.extend(block(self.in_planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class ResNet18(ResNet):
    """ResNet-18: BasicBlock with layers [2, 2, 2, 2]."""

    def __init__(self) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])


class ResNet50(ResNet):
    """ResNet-50: Bottleneck with layers [3, 4, 6, 3]."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])


class ResNet152(ResNet):
    """ResNet-152: Bottleneck with layers [3, 8, 36, 3]."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 8, 36, 3])
