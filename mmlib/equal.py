"""Model equality checks: by weights (white box), by outputs (black box), or both."""

from typing import Callable, Mapping, Optional

import torch


def tensor_equal(tensor1: torch.Tensor, tensor2: torch.Tensor) -> bool:
    """True when both tensors have the same dtype, shape and bit patterns (so NaNs compare equal, and dtypes
    without comparison kernels such as bits8 or float8 compare too)."""
    if tensor1.dtype != tensor2.dtype or tensor1.shape != tensor2.shape:
        return False
    if tensor1.device != tensor2.device:
        tensor2 = tensor2.to(tensor1.device)
    return torch.equal(_bit_view(tensor1), _bit_view(tensor2))


def _bit_view(tensor: torch.Tensor) -> torch.Tensor:
    """View a tensor's bytes as unsigned integers so the comparison is bitwise."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8)


def state_dict_equal(dict1: Mapping[str, torch.Tensor], dict2: Mapping[str, torch.Tensor],
                     device: Optional[torch.device] = None) -> bool:
    """True when both state dicts have the same keys and bitwise equal tensors."""
    if dict1.keys() != dict2.keys():
        return False
    for key, value1 in dict1.items():
        value2 = dict2[key]
        if isinstance(value1, torch.Tensor) and isinstance(value2, torch.Tensor):
            if device is not None:
                value1, value2 = value1.to(device), value2.to(device)
            if not tensor_equal(value1, value2):
                return False
        elif value1 != value2:
            return False
    return True


def whitebox_model_equal(m1: torch.nn.Module, m2: torch.nn.Module,
                         device: Optional[torch.device] = None) -> bool:
    """True when both models have equal state dicts."""
    return state_dict_equal(m1.state_dict(), m2.state_dict(), device)


def blackbox_model_equal(m1: torch.nn.Module, m2: torch.nn.Module,
                         produce_input: Callable[[], torch.Tensor],
                         device: Optional[torch.device] = None) -> bool:
    """True when both models, in eval mode, give equal outputs for one input from `produce_input`."""
    inp = produce_input()
    if device is not None:
        m1, m2, inp = m1.to(device), m2.to(device), inp.to(device)
    was_training = m1.training, m2.training
    m1.eval()
    m2.eval()
    try:
        with torch.no_grad():
            return tensor_equal(m1(inp), m2(inp))
    finally:
        m1.train(was_training[0])
        m2.train(was_training[1])


def model_equal(m1: torch.nn.Module, m2: torch.nn.Module,
                produce_input: Callable[[], torch.Tensor],
                device: Optional[torch.device] = None) -> bool:
    """True when the models are equal by weights and by outputs."""
    return (whitebox_model_equal(m1, m2, device)
            and blackbox_model_equal(m1, m2, produce_input, device))
