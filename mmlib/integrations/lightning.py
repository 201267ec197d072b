"""Checkpoints of a Lightning Trainer in an mmlib store, and resuming a Trainer from them exactly.

    store = mmlib.open_store("./models")
    trainer = Trainer(callbacks=[MMlibCheckpoint(store, "run-17", monitor="val_loss", save_top_k=2)],
                      plugins=[MMlibCheckpointIO(store)])
    trainer.fit(model, data)
    trainer.fit(model, data, ckpt_path="mmlib://run-17:v3")    # or mmlib://run-17 (the newest), mmlib://run-17:best

`MMlibCheckpoint` takes ModelCheckpoint's arguments and saves through `mmlib.Checkpointer` what Lightning's own
checkpoint holds: the LightningModule as the model, the lists of optimizer and scheduler states as its training
state (a plain `mmlib.resume` takes `optimizer=[opt], scheduler=[sched]`), the rest (epoch, global step, loop
progress, callback and datamodule states, hyperparameters) as its `extra`, nothing pickled; and the RNG states,
which Lightning's checkpoint lacks.

Resuming: `MMlibCheckpointIO` reads a `ckpt_path` of the form `mmlib://REFERENCE` back into Lightning's checkpoint
dict (other paths go to the CheckpointIO it wraps), so the Trainer restores weights, loops, optimizers, schedulers
and callbacks as from a file. It restores the RNG states too, as they were when the checkpoint was saved. Lightning
makes the data iterator of the epoch it resumes anew, which draws from torch's RNG; the uninterrupted run drew that
at the epoch's start, so for a checkpoint saved within an epoch `MMlibCheckpoint` restores the RNG states again when
training starts (after that draw). The data of a resumed epoch continue where they stopped only with a resumable
dataloader (one with `state_dict()` and `load_state_dict()`; see Lightning's docs), and randomness consumed by a
validation run right after a step checkpoint is not replayed (the resumed Trainer skips that validation).

Saving needs the whole model in the process that saves: strategies that shard it (FSDP, DeepSpeed) are refused.
"""

import logging
from dataclasses import asdict
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn

import mmlib
from mmlib import training_state
from mmlib.api import StoreLike, store_of
from mmlib.checkpoints import Checkpointer, Retention, load_checkpoint
from mmlib.errors import InvalidArgumentError
from mmlib.refs import check_name

logger = logging.getLogger(__name__)

SCHEME = "mmlib://"
_MMLIB = "mmlib"  # the key of the Lightning checkpoint dict that passes the RNG states to MMlibCheckpoint
_SUPPORTED_STRATEGIES = (SingleDeviceStrategy, DDPStrategy)

__all__ = ["MMlibCheckpoint", "MMlibCheckpointIO", "SCHEME"]


def _positive(value: Optional[int], what: str) -> Optional[int]:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidArgumentError(f"{what} must be a positive int or None, got {value!r}")
    return value


class _StateHolder:
    """Holds the optimizers' or schedulers' state dicts for a Checkpointer to save: Lightning's checkpoint dict has
    them already, so the objects themselves are not what is saved."""

    def __init__(self) -> None:
        self.state: Any = None

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


class MMlibCheckpoint(Callback):
    """Saves the training as checkpoints of `name` in `store`, with ModelCheckpoint's triggers and retention.

    Saves every `every_n_train_steps` optimizer steps and/or every `every_n_epochs` epochs (when neither is given,
    every epoch; at the epoch's end, or after its validation when that runs within epochs), never twice at one
    step. Keeps the `keep_last` newest (default 1: resuming needs the newest, so it is always kept and
    `save_last=False` is refused) and, with `monitor`, the `save_top_k` best by that logged metric (`mode` "min" or
    "max"; the best gets the alias `best`); `save_top_k=-1` keeps everything. Every scalar logged metric is stored
    with the version. `init_args` are the JSON constructor arguments that rebuild the LightningModule (default: its
    saved hyperparameters).
    """

    def __init__(self, store: StoreLike, name: str, *, monitor: Optional[str] = None, mode: str = "min",
                 save_top_k: int = 1, save_last: Optional[bool] = None, keep_last: Optional[int] = None,
                 every_n_train_steps: Optional[int] = None, every_n_epochs: Optional[int] = None,
                 init_args: Optional[dict] = None):
        self.store = store_of(store)
        self.name = check_name(name)
        if save_last is False:
            raise InvalidArgumentError("save_last=False cannot be honoured: mmlib always keeps the newest checkpoint "
                                       f"({name!r} names it, and resuming needs it); leave save_last out")
        if not isinstance(save_top_k, int) or isinstance(save_top_k, bool) or save_top_k < -1:
            raise InvalidArgumentError(f"save_top_k must be an int >= -1, got {save_top_k!r}")
        if monitor is None and save_top_k > 1:
            raise InvalidArgumentError(f"save_top_k={save_top_k} needs monitor=..., the logged metric that says "
                                       "which checkpoints are best; to keep the newest ones give keep_last")
        if save_top_k == -1 and keep_last is not None:
            raise InvalidArgumentError("save_top_k=-1 keeps every checkpoint: leave keep_last out, or give "
                                       "save_top_k >= 0")
        self.monitor = monitor
        self.retention = Retention() if save_top_k == -1 else Retention(
            keep_last=1 if keep_last is None else keep_last, keep_best=save_top_k if monitor is not None else 0,
            monitor=monitor, mode=mode)
        self.every_n_train_steps = _positive(every_n_train_steps, "every_n_train_steps")
        self.every_n_epochs = _positive(every_n_epochs, "every_n_epochs")
        if every_n_train_steps is None and every_n_epochs is None:
            self.every_n_epochs = 1
        if init_args is not None and not isinstance(init_args, dict):
            raise InvalidArgumentError(f"init_args must be a dict of JSON values, got {type(init_args).__name__}")
        self.init_args = init_args
        self._checkpointer: Optional[Checkpointer] = None
        self._optimizers, self._schedulers = _StateHolder(), _StateHolder()
        self._last_global_step_saved = 0  # as ModelCheckpoint: nothing to save before the first step
        self._rng_on_train_start: Optional[dict] = None

    def __repr__(self) -> str:
        return f"MMlibCheckpoint({self.name!r}, store={self.store.dict_pers_service!r})"

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if type(trainer.strategy) not in _SUPPORTED_STRATEGIES:
            raise InvalidArgumentError(f"MMlibCheckpoint saves the whole model from one process; the "
                                       f"{type(trainer.strategy).__name__} does not have it there: train with a "
                                       "single device or DDP")
        init_args = self.init_args if self.init_args is not None else dict(pl_module.hparams)
        self._checkpointer = Checkpointer(self.store, self.name, pl_module, self._optimizers, self._schedulers,
                                          **asdict(self.retention), init_args=init_args or None)

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        self._rng_on_train_start = checkpoint.get(_MMLIB, {}).get("rng_on_train_start")

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._rng_on_train_start is not None:
            training_state.set_rng_states(self._rng_on_train_start)
            self._rng_on_train_start = None

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._epoch_due(trainer) and _saves_on_train_epoch_end(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._epoch_due(trainer) and not _saves_on_train_epoch_end(trainer):
            self._save(trainer)

    def _epoch_due(self, trainer: "pl.Trainer") -> bool:
        return self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _save(self, trainer: "pl.Trainer") -> None:
        """Save Lightning's checkpoint at this step (not while sanity checking, outside fit, or twice a step)."""
        if (trainer.sanity_checking or getattr(trainer, "fast_dev_run")  # an attribute Trainer sets, untyped
                or trainer.state.fn != TrainerFn.FITTING
                or self._last_global_step_saved == trainer.global_step or self._checkpointer is None):
            return
        self._last_global_step_saved = trainer.global_step
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        if not trainer.is_global_zero:
            return
        del checkpoint["state_dict"]  # the model's: the Checkpointer saves the module itself
        self._optimizers.state = checkpoint.pop("optimizer_states")
        self._schedulers.state = checkpoint.pop("lr_schedulers")
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        if self.monitor is not None and self.monitor not in metrics:
            logger.warning("checkpoint %s at step %d has no metric %r (logged: %s), so it cannot be among the best: "
                           "log it with self.log(%r, ...)", self.name, trainer.global_step, self.monitor,
                           sorted(metrics), self.monitor)
        within_epoch = not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        self._checkpointer.save(trainer.global_step, epoch=trainer.current_epoch, metrics=metrics,
                                extra={"lightning": checkpoint, "within_epoch": within_epoch})


def _saves_on_train_epoch_end(trainer: "pl.Trainer") -> bool:
    """Whether an epoch's checkpoint is saved at its end rather than after its validation (ModelCheckpoint's rule:
    at the end when validation runs once at the end of every epoch, or never)."""
    if trainer.check_val_every_n_epoch != 1:
        return False
    num_val_batches = trainer.num_val_batches
    if (sum(num_val_batches) if isinstance(num_val_batches, list) else num_val_batches) == 0:
        return True
    return trainer.val_check_interval == 1.0


def _lightning_checkpoint(reference: str, store: StoreLike) -> dict[str, Any]:
    """Lightning's checkpoint dict of an mmlib checkpoint that MMlibCheckpoint saved; restores the RNG states as they
    were at the save."""
    checkpoint = load_checkpoint(reference, store)  # resolved once: a save meanwhile may add a newer version
    if checkpoint.optimizer is None or checkpoint.scheduler is None:
        raise _not_ours(reference, "it holds no optimizer or scheduler states")
    if not isinstance(checkpoint.extra.get("lightning"), dict):
        raise _not_ours(reference, "it holds no Lightning state")
    training_state.set_rng_states(checkpoint.rng)
    weights = mmlib.load(checkpoint.model_id, store).state_dict()
    return {**checkpoint.extra["lightning"], "state_dict": weights, "optimizer_states": checkpoint.optimizer,
            "lr_schedulers": checkpoint.scheduler,
            _MMLIB: {"rng_on_train_start": checkpoint.rng if checkpoint.extra["within_epoch"] else None}}


def _not_ours(reference: str, reason: object) -> InvalidArgumentError:
    return InvalidArgumentError(f"{reference} was not saved by MMlibCheckpoint ({reason}): resume it with "
                                "mmlib.resume")


class MMlibCheckpointIO(CheckpointIO):
    """Lets a Trainer resume from `mmlib://REFERENCE` (`ckpt_path`), any reference to a checkpoint MMlibCheckpoint
    saved in `store`; other paths are read and written by `checkpoint_io` (default: Lightning's TorchCheckpointIO)."""

    def __init__(self, store: StoreLike, checkpoint_io: Optional[CheckpointIO] = None):
        self.store = store_of(store)
        self.checkpoint_io = checkpoint_io if checkpoint_io is not None else TorchCheckpointIO()

    def __repr__(self) -> str:
        return f"MMlibCheckpointIO(store={self.store.dict_pers_service!r}, checkpoint_io={self.checkpoint_io!r})"

    def load_checkpoint(self, path: _PATH, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if isinstance(path, str) and path.startswith(SCHEME):
            return _lightning_checkpoint(path[len(SCHEME):], self.store)
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        _refuse_mmlib_path(path, "saves")
        self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def remove_checkpoint(self, path: _PATH) -> None:
        _refuse_mmlib_path(path, "removes")
        self.checkpoint_io.remove_checkpoint(path)

    def teardown(self) -> None:
        self.checkpoint_io.teardown()


def _refuse_mmlib_path(path: _PATH, action: str) -> None:
    if isinstance(path, str) and path.startswith(SCHEME):
        raise InvalidArgumentError(f"MMlibCheckpointIO only reads {SCHEME} paths: MMlibCheckpoint {action} mmlib "
                                   "checkpoints (retention prunes them); pass a file path here")
