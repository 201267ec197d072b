"""Tests of mmlib.deterministic: repeated training gives bit-identical weights."""

import random

import numpy
import torch
from torch import nn

from mmlib.deterministic import deterministic, set_deterministic
from mmlib.equal import state_dict_equal


def train_small_model(steps: int = 3) -> nn.Module:
    """Build a small CNN with dropout and train it a few steps on random data."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Dropout(0.3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        inp, target = torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inp), target).backward()
        optimizer.step()
    return model


def test_training_twice_with_set_deterministic_gives_identical_weights():
    set_deterministic()
    first = train_small_model()
    set_deterministic()
    second = train_small_model()
    assert state_dict_equal(first.state_dict(), second.state_dict())
    third = train_small_model()  # random state moved on: different weights
    assert not state_dict_equal(first.state_dict(), third.state_dict())


def test_deterministic_wrapper_seeds_before_calling():
    first = deterministic(train_small_model, f_kwargs={"steps": 2})
    second = deterministic(train_small_model, [2])
    assert state_dict_equal(first.state_dict(), second.state_dict())


def test_set_deterministic_seeds_every_generator_and_selects_deterministic_kernels():
    set_deterministic(seed=7)
    values = random.random(), numpy.random.rand(), torch.rand(1)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    set_deterministic(seed=7)
    assert values[0] == random.random() and values[1] == numpy.random.rand() and torch.equal(values[2], torch.rand(1))
