"""MMlibCallback and resume: a Hugging Face Trainer resumed from an mmlib checkpoint ends bit-identical to the
training that was never interrupted, and the Trainer's retention arguments decide which versions stay."""

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import mmlib
from mmlib import maintenance
from mmlib.errors import InvalidArgumentError
from mmlib.integrations.transformers import MMlibCallback, model_from_config, resume
from save_helpers import same_state

SAMPLES, BATCH_SIZE, EPOCHS = 12, 4, 2  # 3 steps an epoch
SCORES = [0.5, 0.2, 0.9, 0.3, 0.7]  # the metric each evaluation reports: best (min) after epochs 2 and 4


@pytest.fixture(autouse=True)
def quiet_transformers():
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


class Plain(torch.nn.Module):
    """A model saved by a plain mmlib.Checkpointer (which cannot rebuild a transformers model)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)


def _model(seed: int) -> GPT2LMHeadModel:
    """A tiny GPT-2 (with dropout: the RNG states matter) whose initial weights are drawn with `seed`."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=8, bos_token_id=0,
                                      eos_token_id=0))


def _data(samples: int = SAMPLES) -> list[dict]:
    tokens = torch.randint(0, 40, (samples, 8), generator=torch.Generator().manual_seed(3))
    return [{"input_ids": ids, "labels": ids} for ids in tokens]


def _trainer(store, name, output_dir, model, *, samples=SAMPLES, epochs=EPOCHS, evaluate=None,
             **arguments) -> Trainer:
    """A Trainer on the CPU saving checkpoints of `name`; `evaluate`: the metrics each evaluation reports in turn."""
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=BATCH_SIZE,
                             num_train_epochs=epochs, learning_rate=1e-2, warmup_steps=2, weight_decay=0.01, seed=0,
                             use_cpu=True, report_to="none", disable_tqdm=True, logging_strategy="no",
                             save_only_model=True, **arguments)
    evaluation = {} if evaluate is None else {"eval_dataset": _data(BATCH_SIZE),
                                              "compute_metrics": lambda predictions: next(evaluate)}
    return Trainer(model, args, train_dataset=_data(samples), callbacks=[MMlibCallback(store, name)], **evaluation)


RESUMES = {
    # saved every 2 steps: v2 at step 4, the first step of the second epoch
    "within an epoch": ({"save_strategy": "steps", "save_steps": 2}, "v2"),
    # saved after every epoch: v1 ends the first
    "at an epoch end": ({"save_strategy": "epoch"}, "v1"),
}


@pytest.mark.parametrize("saving, version", RESUMES.values(), ids=RESUMES.keys())
def test_a_training_resumed_from_a_checkpoint_ends_as_the_uninterrupted_one(tmp_path, saving, version):
    store = mmlib.open_store(str(tmp_path / "store"))
    whole = _trainer(store, "run", tmp_path / "whole", _model(0), **saving)
    whole.train()
    resumed = _trainer(store, "resumed", tmp_path / "resumed", _model(1), **saving)
    output = resume(resumed, f"run:{version}", store)

    assert output.global_step == whole.state.global_step == EPOCHS * SAMPLES // BATCH_SIZE
    assert resumed.state.epoch == whole.state.epoch
    assert same_state(whole.model.state_dict(), resumed.model.state_dict())
    assert same_state(whole.optimizer.state_dict(), resumed.optimizer.state_dict())
    assert same_state(whole.lr_scheduler.state_dict(), resumed.lr_scheduler.state_dict())
    saved = mmlib.find(store, name="run")
    assert len(mmlib.find(store, name="resumed")) == len([each for each in saved if each.number > int(version[1:])])
    assert same_state(whole.model.state_dict(), mmlib.load("run", store).state_dict())  # rebuilt from its config
    assert maintenance.verify(store) == []


RETENTIONS = {
    "save_total_limit": ({"save_total_limit": 2}, [4, 5], None),
    "load_best_model_at_end": ({"save_total_limit": 2, "load_best_model_at_end": True, "eval_strategy": "epoch",
                                "metric_for_best_model": "score", "greater_is_better": False}, [2, 4, 5], 2),
    "greater_is_better": ({"save_total_limit": 1, "load_best_model_at_end": True, "eval_strategy": "epoch",
                           "metric_for_best_model": "eval_score"}, [3, 5], 3),
}


@pytest.mark.parametrize("arguments, kept, best", RETENTIONS.values(), ids=RETENTIONS.keys())
def test_retention_follows_the_trainer_arguments(tmp_path, arguments, kept, best):
    store = mmlib.open_store(str(tmp_path / "store"))
    trainer = _trainer(store, "run", tmp_path / "out", _model(0), samples=2 * BATCH_SIZE, epochs=len(SCORES),
                       evaluate=iter({"score": score} for score in SCORES), save_strategy="epoch", **arguments)
    trainer.train()

    versions = mmlib.find(store, name="run")
    assert sorted(version.number for version in versions) == kept
    assert [version.metrics.get("eval_score") for version in reversed(versions)] == (
        [SCORES[number - 1] for number in kept] if best else [None] * len(kept))
    assert [version.number for version in versions if "best" in version.aliases] == ([best] if best else [])
    assert maintenance.verify(store) == []


def test_a_version_has_the_metrics_of_an_evaluation_at_its_step_only(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    trainer = _trainer(store, "run", tmp_path / "out", _model(0), samples=2 * BATCH_SIZE,
                       evaluate=iter({"score": score} for score in SCORES), save_strategy="steps", save_steps=1,
                       eval_strategy="steps", eval_steps=2)
    trainer.train()
    assert [version.metrics.get("eval_score") for version in reversed(mmlib.find(store, name="run"))] == [
        None, SCORES[0], None, SCORES[1]]


def test_resuming_a_checkpoint_mmlib_callback_did_not_save_is_refused(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    model = Plain()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mmlib.Checkpointer(store, "plain", model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)).save(3)
    mmlib.Checkpointer(store, "bare", model).save(3)
    trainer = _trainer(store, "run", tmp_path / "out", Plain())
    with pytest.raises(InvalidArgumentError, match="not saved by MMlibCallback .it holds no TrainerState"):
        resume(trainer, "plain", store)
    with pytest.raises(InvalidArgumentError, match="not saved by MMlibCallback .it holds no optimizer"):
        resume(trainer, "bare", store)


def test_model_from_config_builds_only_transformers_models():
    config = _model(0).config.to_dict()
    assert isinstance(model_from_config("GPT2LMHeadModel", config), GPT2LMHeadModel)
    with pytest.raises(InvalidArgumentError, match="no model class of transformers"):
        model_from_config("GPT2Config", config)
