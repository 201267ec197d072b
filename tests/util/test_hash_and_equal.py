"""Digests and model equality."""

import copy

import torch

from mmlib.equal import blackbox_model_equal, model_equal, state_dict_equal, tensor_equal, whitebox_model_equal
from mmlib.models import MobileNetV2
from mmlib.util.dummy_data import imagenet_input, imagenet_target
from mmlib.util.hash import inference_hash, state_dict_hash, tensor_hash


def test_tensor_hash_depends_on_values_dtype_and_shape():
    tensor = torch.arange(6, dtype=torch.float32)
    assert tensor_hash(tensor) == tensor_hash(tensor.clone())
    assert tensor_hash(tensor) != tensor_hash(tensor.to(torch.float64))
    assert tensor_hash(tensor) != tensor_hash(tensor.reshape(2, 3))
    assert tensor_hash(tensor) != tensor_hash(tensor + 1)


def test_equal_and_different_models():
    model = MobileNetV2()
    same = copy.deepcopy(model)
    other = MobileNetV2()
    def produce():
        return torch.rand(1, 3, 64, 64)

    assert model_equal(model, same, produce) and whitebox_model_equal(model, same)
    assert blackbox_model_equal(model, same, produce)
    assert not whitebox_model_equal(model, other) and not model_equal(model, other, produce)
    assert state_dict_hash(model.state_dict()) == state_dict_hash(same.state_dict())
    assert state_dict_hash(model.state_dict()) != state_dict_hash(other.state_dict())
    torch.manual_seed(0)
    first = inference_hash(model, produce)
    torch.manual_seed(0)
    assert inference_hash(same, produce) == first


def test_tensor_equal_is_bitwise():
    nan = torch.tensor([float("nan"), 0.0])
    assert tensor_equal(nan, nan.clone())
    assert not tensor_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not state_dict_equal({"a": torch.zeros(1)}, {"b": torch.zeros(1)})


def test_dummy_data_shapes():
    inp = imagenet_input(batch_size=3)
    assert inp.shape == (3, 3, 224, 224)
    target = imagenet_target(inp)
    assert target.shape == (3,) and int(target.max()) < 1000
