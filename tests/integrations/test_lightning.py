"""MMlibCheckpoint and MMlibCheckpointIO: a Lightning fit resumed from an mmlib checkpoint ends bit-identical to the
fit that was never interrupted, and ModelCheckpoint's retention arguments decide which versions stay."""

import lightning.pytorch as pl
import pytest
from lightning.pytorch.strategies import SingleDeviceStrategy
import torch
from torch.utils.data import DataLoader, TensorDataset

import mmlib
from mmlib import maintenance
from mmlib.errors import InvalidArgumentError
from mmlib.integrations.lightning import MMlibCheckpoint, MMlibCheckpointIO
from save_helpers import same_state

BATCHES, BATCH_SIZE, EPOCHS = 6, 4, 3
SCORES = [0.5, 0.2, 0.9, 0.3, 0.7]  # the metric Scored logs after each epoch: best (min) epochs 1 and 3


class Regressor(pl.LightningModule):
    """A tiny regressor with dropout (so the RNG states matter), AdamW and a scheduler stepped every step."""

    def __init__(self, lr: float):
        super().__init__()
        self.save_hyperparameters()  # MMlibCheckpoint rebuilds the module with these arguments
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                          torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layers(inputs), targets)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layers(inputs), targets))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class Scored(Regressor):
    """Logs a scripted `score` after each epoch's validation, so which checkpoints are best is known."""

    def on_validation_epoch_end(self):
        self.log("score", SCORES[self.current_epoch])


class Plain(torch.nn.Module):
    """A model saved by a plain mmlib.Checkpointer."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)


def _tensors(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(count, 4, generator=torch.Generator().manual_seed(7))
    return inputs, inputs.sum(dim=1, keepdim=True)


class EpochSampler(torch.utils.data.Sampler):
    """The indices in an order of each epoch's own (Lightning sets the epoch), from `start` on."""

    def __init__(self):
        self.epoch, self.start = 0, 0

    def __len__(self):
        return BATCHES * BATCH_SIZE

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.epoch))
        start, self.start = self.start, 0
        return iter(order[start:].tolist())


class ResumableLoader(DataLoader):
    """A DataLoader whose state Lightning saves with a checkpoint and loads on resuming, so a fit resumed within an
    epoch goes on with the next batch. As every DataLoader, it draws from torch's RNG when an epoch's iterator is
    made."""

    def __init__(self):
        self.epochs = EpochSampler()
        super().__init__(TensorDataset(*_tensors(BATCHES * BATCH_SIZE)), batch_size=BATCH_SIZE, sampler=self.epochs)
        self.done = 0

    def __iter__(self):
        self.done = self.epochs.start // BATCH_SIZE
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self.done += 1
            yield batch

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, state):
        self.epochs.start = state["done"] * BATCH_SIZE


def _shuffled_loader() -> DataLoader:
    """Batches in an order drawn from torch's RNG at every epoch's start."""
    return DataLoader(TensorDataset(*_tensors(BATCHES * BATCH_SIZE)), batch_size=BATCH_SIZE, shuffle=True)


def _validation_loader() -> DataLoader:
    return DataLoader(TensorDataset(*_tensors(BATCH_SIZE)), batch_size=BATCH_SIZE)


def _fit(store, callbacks, train_data, *, module=Regressor, model_seed=0, ckpt_path=None, val_data=None,
         max_epochs=EPOCHS, strategy="auto"):
    """The trainer and module of a fit on the CPU, the module's initial weights drawn with `model_seed`."""
    torch.manual_seed(model_seed)
    model = module(lr=0.05)
    torch.manual_seed(1)  # every fit starts training from the same RNG states
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, plugins=[MMlibCheckpointIO(store)],
                         accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=1.0 if val_data is not None else 0, strategy=strategy)
    trainer.fit(model, train_dataloaders=train_data, val_dataloaders=val_data, ckpt_path=ckpt_path)
    return trainer, model


RESUMES = {
    # saved every 4 steps: v2 at step 8, after the second batch of the second epoch
    "within an epoch": ({"every_n_train_steps": 4}, ResumableLoader, "v2"),
    # saved after every epoch and its validation, batches shuffled anew each epoch: v1 ends the first
    "at an epoch end": ({"every_n_epochs": 1, "monitor": "val_loss"}, _shuffled_loader, "v1"),
}


@pytest.mark.parametrize("saving, data, version", RESUMES.values(), ids=RESUMES.keys())
def test_a_fit_resumed_from_a_checkpoint_ends_as_the_uninterrupted_fit(tmp_path, saving, data, version):
    store = mmlib.open_store(str(tmp_path / "store"))
    val_data = _validation_loader()
    whole, whole_model = _fit(store, [MMlibCheckpoint(store, "run", save_top_k=-1, **saving)], data(),
                              val_data=val_data)
    resumed, resumed_model = _fit(store, [MMlibCheckpoint(store, "resumed", save_top_k=-1, **saving)], data(),
                                  model_seed=1, ckpt_path=f"mmlib://run:{version}", val_data=val_data)

    assert resumed.global_step == whole.global_step == EPOCHS * BATCHES
    assert resumed.current_epoch == whole.current_epoch
    assert same_state(whole_model.state_dict(), resumed_model.state_dict())
    assert same_state(whole.optimizers[0].state_dict(), resumed.optimizers[0].state_dict())
    assert same_state(whole.lr_scheduler_configs[0].scheduler.state_dict(),
                  resumed.lr_scheduler_configs[0].scheduler.state_dict())
    resumed_at = int(version[1:])
    saved_after = [saved.number for saved in mmlib.find(store, name="run") if saved.number > resumed_at]
    assert len(mmlib.find(store, name="resumed")) == len(saved_after)  # the resumed fit saves the same steps on
    assert maintenance.verify(store) == []


@pytest.mark.parametrize("mode, best", [("min", [2, 4]), ("max", [3, 5])])
def test_retention_follows_model_checkpoint_arguments(tmp_path, mode, best):
    store = mmlib.open_store(str(tmp_path / "store"))
    callbacks = [MMlibCheckpoint(store, "all", save_top_k=-1),
                 MMlibCheckpoint(store, "top", monitor="score", mode=mode, save_top_k=2),
                 MMlibCheckpoint(store, "newest", every_n_train_steps=4, keep_last=2)]
    _fit(store, callbacks, _shuffled_loader(), module=Scored, val_data=_validation_loader(), max_epochs=len(SCORES))

    every = mmlib.find(store, name="all")
    assert [version.metrics["score"] for version in reversed(every)] == pytest.approx(SCORES)
    assert sorted(version.number for version in mmlib.find(store, name="top")) == sorted({*best, len(SCORES)})
    assert mmlib.get("top:best", store).number == best[0]
    assert [version.number for version in mmlib.find(store, name="newest")] == [7, 6]  # of 7 saves, every 4 steps
    assert maintenance.verify(store) == []


def test_resuming_a_checkpoint_mmlib_checkpoint_did_not_save_is_refused(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    model = Plain()
    mmlib.Checkpointer(store, "plain", model, torch.optim.SGD(model.parameters(), lr=0.1)).save(3)
    with pytest.raises(InvalidArgumentError, match="not saved by MMlibCheckpoint"):
        _fit(store, [], _shuffled_loader(), ckpt_path="mmlib://plain")


class ShardingStrategy(SingleDeviceStrategy):
    """Stands for a strategy (FSDP, DeepSpeed) whose checkpoint holds more than the module's own state dict."""

    def lightning_module_state_dict(self):
        return {"gathered": torch.zeros(1)}


def test_a_strategy_that_shards_the_model_is_refused(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    with pytest.raises(InvalidArgumentError, match="ShardingStrategy does not have it there"):
        _fit(store, [MMlibCheckpoint(store, "run")], _shuffled_loader(), strategy=ShardingStrategy("cpu"))


@pytest.mark.parametrize("options, message", [
    ({"save_last": False}, "save_last=False"),
    ({"save_top_k": 2}, "needs monitor"),
    ({"save_top_k": -1, "keep_last": 2}, "keeps every checkpoint"),
    ({"every_n_epochs": 0}, "every_n_epochs must be a positive int"),
    ({"monitor": "val_loss", "mode": "best"}, "mode must be"),
])
def test_arguments_mmlib_cannot_honour_are_refused(tmp_path, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        MMlibCheckpoint(str(tmp_path / "store"), "run", **options)


def test_file_paths_go_to_the_wrapped_checkpoint_io_and_mmlib_paths_are_only_read(tmp_path):
    checkpoint_io = MMlibCheckpointIO(str(tmp_path / "store"))
    path = str(tmp_path / "plain.ckpt")
    checkpoint_io.save_checkpoint({"global_step": 3, "weights": torch.arange(4)}, path)
    assert same_state(checkpoint_io.load_checkpoint(path), {"global_step": 3, "weights": torch.arange(4)})
    with pytest.raises(InvalidArgumentError, match="only reads mmlib://"):
        checkpoint_io.save_checkpoint({}, "mmlib://run")
    with pytest.raises(InvalidArgumentError, match="only reads mmlib://"):
        checkpoint_io.remove_checkpoint("mmlib://run")
