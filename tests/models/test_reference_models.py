"""Tests for the torchvision-compatible reference model definitions in mmlib.models."""

import importlib.util
import uuid
from pathlib import Path
from typing import Dict, Tuple, Type

import pytest
import torch
from torch import nn

import mmlib.models as models
from mmlib.models import REFERENCE_MODELS, GoogLeNet, MobileNetV2, ResNet18, ResNet50, ResNet152

MODELS_DIR = Path(models.__file__).parent

PARAM_COUNTS: Dict[str, int] = {
    'resnet18': 11_689_512,
    'resnet50': 25_557_032,
    'resnet152': 60_192_808,
    'mobilenet_v2': 3_504_872,
    'googlenet': 6_624_904,
}

# model name -> (class, source file, list of (state_dict key, expected shape))
SPOT_CHECKS: Dict[str, Tuple[Type[nn.Module], str, Dict[str, Tuple[int, ...]]]] = {
    'resnet18': (ResNet18, 'resnet.py', {
        'conv1.weight': (64, 3, 7, 7),
        'layer2.0.downsample.0.weight': (128, 64, 1, 1),
        'layer2.0.downsample.1.running_var': (128,),
        'layer4.1.conv2.weight': (512, 512, 3, 3),
        'fc.weight': (1000, 512),
    }),
    'resnet50': (ResNet50, 'resnet.py', {
        'layer1.0.downsample.0.weight': (256, 64, 1, 1),
        'layer3.5.bn3.running_mean': (1024,),
        'layer4.2.conv2.weight': (512, 512, 3, 3),
        'fc.weight': (1000, 2048),
    }),
    'mobilenet_v2': (MobileNetV2, 'mobilenet.py', {
        'features.0.0.weight': (32, 3, 3, 3),
        'features.1.conv.0.0.weight': (32, 1, 3, 3),
        'features.1.conv.1.weight': (16, 32, 1, 1),
        'features.2.conv.3.running_mean': (24,),
        'features.18.0.weight': (1280, 320, 1, 1),
        'classifier.1.weight': (1000, 1280),
    }),
    'googlenet': (GoogLeNet, 'googlenet.py', {
        'conv1.conv.weight': (64, 3, 7, 7),
        'conv1.bn.running_var': (64,),
        'inception3a.branch1.conv.weight': (64, 192, 1, 1),
        'inception3a.branch3.1.conv.weight': (32, 16, 3, 3),
        'inception5b.branch4.1.conv.weight': (128, 832, 1, 1),
        'fc.weight': (1000, 1024),
    }),
}

# state_dict lengths (including num_batches_tracked buffers) of the torchvision models
STATE_DICT_LENGTHS: Dict[str, int] = {
    'resnet18': 122,
    'resnet50': 320,
    'mobilenet_v2': 314,
}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_standalone(file_name: str):
    path = MODELS_DIR / file_name
    spec = importlib.util.spec_from_file_location(f'standalone_{uuid.uuid4().hex}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_models_registry():
    assert REFERENCE_MODELS == {
        'resnet18': ResNet18,
        'mobilenet_v2': MobileNetV2,
        'resnet50': ResNet50,
        'googlenet': GoogLeNet,
        'resnet152': ResNet152,
    }


@pytest.mark.parametrize('name', list(PARAM_COUNTS))
def test_parameter_count(name: str):
    model = REFERENCE_MODELS[name]()
    assert type(model) is REFERENCE_MODELS[name]
    assert _num_params(model) == PARAM_COUNTS[name]


@pytest.mark.parametrize('name', list(SPOT_CHECKS))
def test_state_dict_spot_checks(name: str):
    model_cls, _, expected = SPOT_CHECKS[name]
    state = model_cls().state_dict()
    for key, shape in expected.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    if name in STATE_DICT_LENGTHS:
        assert len(state) == STATE_DICT_LENGTHS[name]


@pytest.mark.parametrize('name', list(SPOT_CHECKS))
def test_forward_eval_shape(name: str):
    torch.manual_seed(0)
    model = SPOT_CHECKS[name][0]().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 1000)


def test_googlenet_aux_logits():
    model = GoogLeNet(aux_logits=True)
    state = model.state_dict()
    assert tuple(state['aux1.conv.conv.weight'].shape) == (128, 512, 1, 1)
    assert tuple(state['aux2.fc1.weight'].shape) == (1024, 2048)
    assert tuple(state['aux2.fc2.weight'].shape) == (1000, 1024)
    assert not any(k.startswith('aux') for k in GoogLeNet().state_dict())

    model.train()
    logits, aux2, aux1 = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == aux1.shape == aux2.shape == (2, 1000)

    model.eval()
    with torch.no_grad():
        assert isinstance(model(torch.rand(2, 3, 64, 64)), torch.Tensor)


@pytest.mark.parametrize('name', list(SPOT_CHECKS) + ['resnet152'])
def test_standalone_import(name: str):
    file_name = 'resnet.py' if name == 'resnet152' else SPOT_CHECKS[name][1]
    class_name = REFERENCE_MODELS[name].__name__
    module = _load_standalone(file_name)
    model = getattr(module, class_name)()
    assert type(model).__name__ == class_name
    assert _num_params(model) == PARAM_COUNTS[name]
    reference_state = REFERENCE_MODELS[name]().state_dict()
    model.load_state_dict(reference_state)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference_state.items()}
