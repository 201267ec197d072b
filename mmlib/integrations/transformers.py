"""Checkpoints of a Hugging Face Trainer in an mmlib store, and resuming a Trainer from them exactly.

    trainer = Trainer(model, args, train_dataset=data, callbacks=[MMlibCallback(store, "run-17")])
    trainer.train()
    resume(trainer, "run-17:v3", store)     # instead of trainer.train(resume_from_checkpoint=...)

`MMlibCallback` saves at the Trainer's save events (`on_save`: after the Trainer has written its own checkpoint
folder, which it still does; `save_only_model=True` keeps that to the weights) through `mmlib.Checkpointer`: the
model, the optimizer's and scheduler's states, the RNG states, and the TrainerState as JSON in
`extra["trainer_state"]`, with the metrics of an evaluation at the same step. Retention follows the Trainer's
arguments: `save_total_limit` keeps that many newest versions, and with `load_best_model_at_end` also the best
by `metric_for_best_model` (the alias `best`; `greater_is_better` gives the mode). So mmlib keeps the Trainer's
set of checkpoints, and one more when the best is not among the newest (the Trainer counts the best among its
`save_total_limit`); without `save_total_limit` every version stays, unaliased.

Resuming: the Trainer continues a training only from a checkpoint folder, and reads the optimizer, scheduler and RNG
files there with torch.load. `resume` writes a folder with only the TrainerState (JSON) and the weights
(safetensors), so that `Trainer.train(resume_from_checkpoint=folder)` takes the global step, epoch and data position
from it, and restores the optimizer, scheduler and RNG states itself, through a callback, where the Trainer would
have loaded its files: when training begins, and at the start of the resumed epoch or, for a checkpoint within an
epoch, after the Trainer has skipped the batches trained on before. A transformers model is saved with its config,
to be rebuilt by `model_from_config`; a model of another class is rebuilt from its class's code without arguments.
A mixed-precision grad scaler's state is not saved; DeepSpeed and FSDP, which shard the model, are refused.
"""

import dataclasses
import json
import os
import tempfile
from typing import Any, Optional

import safetensors.torch
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import TrainOutput

import mmlib
from mmlib import training_state
from mmlib.api import StoreLike, store_of
from mmlib.checkpoints import Checkpointer, load_checkpoint
from mmlib.errors import InvalidArgumentError
from mmlib.refs import check_name

TRAINER_STATE = "trainer_state"  # the key of a checkpoint's extra that holds the TrainerState's JSON
_FACTORY = "mmlib.integrations.transformers:model_from_config"

__all__ = ["MMlibCallback", "resume", "model_from_config"]


def model_from_config(architecture: str, config: dict) -> torch.nn.Module:
    """The transformers model class `architecture` (a name transformers exports) built from its config as a dict:
    how mmlib rebuilds the models MMlibCallback saves."""
    cls = getattr(transformers, architecture, None)
    config_class = getattr(cls, "config_class", None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel) or config_class is None:
        raise InvalidArgumentError(f"{architecture!r} is no model class of transformers "
                                   f"{transformers.__version__}: install the version the model was saved with")
    return cls(config_class.from_dict(config))


def _source(model: torch.nn.Module) -> dict:
    """How mmlib rebuilds `model`: from its config for a model class transformers exports, else (empty) from its
    class's code."""
    architecture = type(model).__name__
    if isinstance(model, transformers.PreTrainedModel) and getattr(transformers, architecture, None) is type(model):
        config = json.loads(model.config.to_json_string(use_diff=False))
        return {"model_import": _FACTORY, "init_args": {"architecture": architecture, "config": config}}
    return {}


def _retention(args: TrainingArguments) -> dict:
    """The Checkpointer's retention arguments for the Trainer's."""
    limit = args.save_total_limit if args.save_total_limit is not None and args.save_total_limit > 0 else None
    if not args.load_best_model_at_end or limit is None:
        return {"keep_last": limit}
    metric = args.metric_for_best_model or "loss"
    return {"keep_last": limit, "keep_best": 1, "monitor": metric if metric.startswith("eval_") else f"eval_{metric}",
            "mode": "max" if args.greater_is_better else "min"}


class MMlibCallback(TrainerCallback):
    """Saves the training as checkpoints of `name` in `store` at the Trainer's save events, keeping what the
    Trainer's retention arguments keep."""

    def __init__(self, store: StoreLike, name: str):
        self.store = store_of(store)
        self.name = check_name(name)
        self._checkpointer: Optional[Checkpointer] = None
        self._metrics: dict = {}
        self._metrics_step = -1

    def __repr__(self) -> str:
        return f"MMlibCallback({self.name!r}, store={self.store.dict_pers_service!r})"

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if args.deepspeed or args.fsdp:
            raise InvalidArgumentError("MMlibCallback saves the whole model from one process; DeepSpeed and FSDP "
                                       "shard it: train without them")
        model = kwargs["model"]
        self._checkpointer = Checkpointer(self.store, self.name, model, kwargs["optimizer"], kwargs["lr_scheduler"],
                                          **_retention(args), **_source(model))

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        metrics = kwargs.get("metrics") or {}
        self._metrics = {key: float(value) for key, value in metrics.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)}
        self._metrics_step = state.global_step

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._checkpointer is None or not state.is_world_process_zero:
            return
        metrics = self._metrics if self._metrics_step == state.global_step else {}
        self._checkpointer.save(state.global_step, epoch=int(state.epoch or 0), metrics=metrics,
                                extra={TRAINER_STATE: json.dumps(dataclasses.asdict(state))})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None


class _Restorer(TrainerCallback):
    """Loads a checkpoint's optimizer, scheduler and RNG states where the Trainer would load its own files."""

    def __init__(self, optimizer_state: Any, scheduler_state: Any, rng: dict):
        self._optimizer_state, self._scheduler_state = optimizer_state, scheduler_state
        self._rng: Optional[dict] = rng
        self._within_epoch = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        kwargs["optimizer"].load_state_dict(self._optimizer_state)
        kwargs["lr_scheduler"].load_state_dict(self._scheduler_state)
        # The Trainer skips the batches of a resumed epoch (and restores RNG states after them) unless the checkpoint
        # ends an epoch, where its fractional epoch count is whole, or it is told not to skip data.
        self._within_epoch = not args.ignore_data_skip and (state.epoch or 0) % 1 != 0

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if not self._within_epoch:
            self._restore_rng()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        if self._within_epoch:
            self._restore_rng()

    def _restore_rng(self) -> None:
        if self._rng is not None:
            training_state.set_rng_states(self._rng)
            self._rng = None


def _not_ours(reference: str, reason: object) -> InvalidArgumentError:
    return InvalidArgumentError(f"{reference} was not saved by MMlibCallback ({reason}): resume it with mmlib.resume")


def resume(trainer: Trainer, reference: str, store: StoreLike, **train_kwargs: Any) -> TrainOutput:
    """`trainer.train(**train_kwargs)` continuing exactly where the checkpoint `reference` (any reference to one
    MMlibCallback saved in `store`) was saved: weights, optimizer, scheduler, RNG states, step, epoch, data."""
    if trainer.model is None:
        raise InvalidArgumentError("the Trainer has no model: give it model=... or model_init=...")
    store = store_of(store)
    checkpoint = load_checkpoint(reference, store)  # resolved once: a save meanwhile may add a newer version
    if checkpoint.optimizer is None or checkpoint.scheduler is None:
        raise _not_ours(reference, "it holds no optimizer or scheduler state")
    if not isinstance(checkpoint.extra.get(TRAINER_STATE), str):
        raise _not_ours(reference, "it holds no TrainerState")
    trainer.model.load_state_dict(mmlib.load(checkpoint.model_id, store).state_dict())
    training_state.set_rng_states(checkpoint.rng)
    restorer = _Restorer(checkpoint.optimizer, checkpoint.scheduler, checkpoint.rng)
    with tempfile.TemporaryDirectory(prefix="mmlib-resume-") as folder:
        with open(os.path.join(folder, transformers.trainer.TRAINER_STATE_NAME), "w", encoding="utf-8") as handle:
            handle.write(checkpoint.extra[TRAINER_STATE])
        safetensors.torch.save_model(trainer.model, os.path.join(folder, transformers.utils.SAFE_WEIGHTS_NAME))
        trainer.add_callback(restorer)
        try:
            return trainer.train(resume_from_checkpoint=folder, **train_kwargs)
        finally:
            trainer.remove_callback(restorer)
