"""Fast digests of tensors, state dicts and model outputs (BLAKE3 over raw tensor bytes)."""

import json
from typing import TYPE_CHECKING, Any, Callable, Mapping

import blake3

if TYPE_CHECKING:  # the stores hash blobs with `new_hasher` alone: opening and listing one needs no torch
    import torch

DIGEST_NAME = "blake3"


def new_hasher() -> "blake3.blake3":
    """A streaming BLAKE3 hasher; mmlib's one digest for blobs and tensors."""
    return blake3.blake3()


def tensor_bytes(tensor: "torch.Tensor") -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is contiguous on the CPU."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return flat.view(torch.uint8).numpy().data


def tensor_hash(tensor: "torch.Tensor") -> str:
    """Digest of a tensor's dtype, shape and bytes."""
    hasher = new_hasher()
    hasher.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    hasher.update(tensor_bytes(tensor))
    return hasher.hexdigest()


def json_value_hash(value: Any) -> str:
    """Digest of a JSON value (an extra state that is not a tensor), marked so no tensor hashes the same."""
    hasher = new_hasher()
    hasher.update(b"json\0")
    hasher.update(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
    return hasher.hexdigest()


def state_dict_hash(state_dict: Mapping[str, "torch.Tensor"]) -> str:
    """Digest of a whole state dict: names and tensor digests in key order."""
    hasher = new_hasher()
    for name, tensor in state_dict.items():
        hasher.update(name.encode())
        hasher.update(tensor_hash(tensor).encode())
    return hasher.hexdigest()


def inference_hash(model: "torch.nn.Module", produce_input: Callable[[], "torch.Tensor"]) -> str:
    """Digest of the model's eval-mode output for one input from `produce_input`."""
    import torch

    model.eval()
    with torch.no_grad():
        return tensor_hash(model(produce_input()))
