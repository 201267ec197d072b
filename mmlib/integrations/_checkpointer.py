"""What both integrations need of `mmlib.checkpoints` beyond its public API: a state dict standing in for objects
that are not there yet, a Checkpointer that records how to rebuild its model (constructor arguments or a factory,
which `Checkpointer` does not take), and the RNG states of a checkpoint without restoring them (which `resume` does
not give)."""

from typing import Any

import torch

from mmlib import training_state
from mmlib.api import Savers, StoreLike
from mmlib.checkpoints import Checkpointer, resume
from mmlib.persistence.store import Store


class StateHolder:
    """Holds a state dict for a Checkpointer to save or for `mmlib.resume` to fill, where the optimizers or schedulers
    it belongs to are not the objects to save (Lightning's checkpoint has their states already) or do not exist yet
    (a Trainer makes them when training starts)."""

    def __init__(self, state: Any = None):
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


class _SourcedSavers(Savers):
    """Savers that store a model saved without a source (the Checkpointer's model, not its training state, which
    names its own) with `source`: the `model_import` and `init_args` that rebuild it."""

    def __init__(self, store: Store, source: dict):
        super().__init__(store)
        self._source = source

    def save(self, model: torch.nn.Module, base_id: Any, approach: Any, *, strict_base: bool, env: Any = None,
             **source: Any) -> str:
        return super().save(model, base_id, approach, strict_base=strict_base, env=env, **(source or self._source))


def checkpointer(store: StoreLike, name: str, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                 retention: dict, source: dict) -> Checkpointer:
    """A Checkpointer (`retention`: its keyword arguments) whose snapshots of `model` are rebuilt from `source`
    (`model_import`, `init_args`; empty: the class's own code, called without arguments)."""
    saver = Checkpointer(store, name, model, optimizer, scheduler, **retention)
    if source:
        saver._savers = _SourcedSavers(saver.store, source)
    return saver


def resume_keeping_rng(reference: str, store: StoreLike, **objects: Any) -> tuple[int, dict]:
    """`mmlib.resume` that leaves the RNG states as they were: (the checkpoint's step, its RNG states), for the caller
    to restore where the training loop it resumes would have been when the checkpoint was saved."""
    before = training_state.rng_states()
    step = resume(reference, store, **objects)
    saved = training_state.rng_states()
    training_state.set_rng_states(before)
    return step, saved
