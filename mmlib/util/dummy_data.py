"""Random ImageNet-shaped inputs and targets for tests, probes and benchmarks."""

import torch


def imagenet_input(batch_size: int = 10) -> torch.Tensor:
    """A batch of random 3x224x224 images."""
    return torch.rand(batch_size, 3, 224, 224)


def imagenet_target(inp: torch.Tensor) -> torch.Tensor:
    """Random ImageNet class labels, one per image of `inp`."""
    return torch.randint(0, 1000, (inp.shape[0],))
