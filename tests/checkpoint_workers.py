"""The child side of the checkpoint crash and concurrency tests: checkpoints whose weights and optimizer state are
a function of their step, so that any process can tell what each one must hold."""

import functools
import time

import torch

import mmlib

STEPS_PER_RUN = 12
# Each document write waits this long first: saves are fast, and the wait widens the windows between a save's
# writes, its claim of a version number and the prune after it, so that random kills land in all of them.
DOCUMENT_DELAY_S = 0.003


class Wide(torch.nn.Module):
    """Two layers, big enough that a checkpoint's blobs take a moment to write."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(128, 256)
        self.second = torch.nn.Linear(256, 64)


def fresh_run() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = Wide()
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _random(shape: torch.Size, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def set_state_at(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Weights and momentum buffers of `step` (the second layer's weights change only every 4th step, so that
    checkpoints read tensors from earlier ones)."""
    with torch.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            weights_step = step - step % 4 if name.startswith("second") else step
            parameter.copy_(_random(parameter.shape, weights_step * 10 + index))
            optimizer.state[parameter]["momentum_buffer"] = _random(parameter.shape, step * 10 + index + 5)


def loss_at(step: int) -> float:
    return float((step * 7919) % 23)


def _delayed(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        time.sleep(DOCUMENT_DELAY_S)
        return method(*args, **kwargs)
    return call


def checkpoint_until_killed(store_dir: str, steps: int, ready) -> None:
    """Child: resume the run from its newest checkpoint (if any), then save `steps` background checkpoints with
    retention."""
    store = mmlib.open_store(store_dir)
    store.dict_pers_service.save_dict = _delayed(store.dict_pers_service.save_dict)
    store.dict_pers_service.insert_dict = _delayed(store.dict_pers_service.insert_dict)
    model, optimizer = fresh_run()
    start = mmlib.resume("run", store, model, optimizer) + 1 if mmlib.find(store, name="run") else 0
    ready.set()
    with mmlib.Checkpointer(store, "run", model, optimizer, keep_last=2, keep_best=1, monitor="loss") as checkpoints:
        for step in range(start, start + steps):
            set_state_at(model, optimizer, step)
            checkpoints.save(step, metrics={"loss": loss_at(step)}, blocking=False)


def checkpoint_steps(store_dir: str, steps: list, start, results) -> None:
    """One of several processes of one run: save checkpoints of `steps` with retention, reporting each Version's
    number and step."""
    store = mmlib.open_store(store_dir)
    model, optimizer = fresh_run()
    checkpoints = mmlib.Checkpointer(store, "run", model, optimizer, keep_last=3, keep_best=1, monitor="loss")
    start.wait()
    for step in steps:
        set_state_at(model, optimizer, step)
        version = checkpoints.save(step, metrics={"loss": loss_at(step)})
        results.put((version.number, step))
