"""The child side of the one-line API's concurrency test: saves of one name from several processes at once."""

import torch

import mmlib
from tiny_models import TinyNet


def save_versions(location: str, name: str, seed: int, count: int, start, results) -> None:
    """Save `count` versions of `name` (weights from `seed`), reporting (number, model id, state dict as numpy
    arrays: tensors would go through shared memory that ends with this process)."""
    store = mmlib.open_store(location)
    torch.manual_seed(seed)
    start.wait()
    for _ in range(count):
        model = TinyNet()
        version = mmlib.save(model, store, name=name, approach="snapshot")
        results.put((version.number, version.id, {key: value.numpy().copy() for key, value in model.state_dict().items()}))


def move_alias(location: str, alias: str, numbers: list, start, results) -> None:
    """Point `alias` of `shared` at each of `numbers` in turn, reporting how many moves were made."""
    store = mmlib.open_store(location)
    start.wait()
    for number in numbers:
        mmlib.set_alias(store, f"shared:v{number}", alias)
    results.put(len(numbers))
