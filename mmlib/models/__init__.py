"""Reference model definitions whose state_dicts match torchvision's models."""

from typing import Dict, Type

from torch import nn

from mmlib.models.googlenet import GoogLeNet
from mmlib.models.mobilenet import MobileNetV2
from mmlib.models.resnet import ResNet18, ResNet50, ResNet152

REFERENCE_MODELS: Dict[str, Type[nn.Module]] = {
    'resnet18': ResNet18,
    'mobilenet_v2': MobileNetV2,
    'resnet50': ResNet50,
    'googlenet': GoogLeNet,
    'resnet152': ResNet152,
}

__all__ = ['ResNet18', 'ResNet50', 'ResNet152', 'MobileNetV2', 'GoogLeNet', 'REFERENCE_MODELS']
