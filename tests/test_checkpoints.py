"""Training checkpoints: resume equals the uninterrupted run, retention keeps every kept version exact while pruning
the bases of kept ones, training state round trips without pickling."""

import copy
import math
import random

import numpy
import pytest
import torch

import mmlib
from mmlib import maintenance, pruning, refs, training_state
from mmlib.errors import IntegrityError, InvalidArgumentError, InvalidSaveInfoError, ModelNotFoundError
from mmlib.persistence.store import checked_store
from mmlib.schema.model_info import MODEL_INFO, PRUNED
from save_helpers import run_cli, same_state
from checkpoint_workers import Wide
from zoo_models import TiedDecoderLM

STORE_PAIRS = [("sqlite", "filesystem"), ("mongo", "gridfs")]
WITH_OBJECT_STORAGE = True


class Regressor(torch.nn.Module):
    """A small net with dropout and batch norm, so that resuming depends on the RNG and on buffers."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(6, 16)
        self.norm = torch.nn.BatchNorm1d(16)
        self.drop = torch.nn.Dropout(0.25)
        self.out = torch.nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.norm(self.hidden(x)))))


OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.95)),
    "adamw-amsgrad": lambda params: torch.optim.AdamW(params, lr=0.01, amsgrad=True),
}


def _run(optimizer_kind: str):
    """(model, optimizer, scheduler) of a fresh run, seeded."""
    torch.manual_seed(0)
    model = Regressor()
    optimizer = OPTIMIZERS[optimizer_kind](model.parameters())
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=40)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    """Steps whose batches come from torch's, numpy's and Python's global RNGs (as data loaders and augmentations
    draw them), so that a resume must restore all three."""
    model.train()
    for _ in range(steps):
        noise = float(numpy.random.rand()) + random.random()
        inputs = torch.randn(8, 6) + noise
        loss = ((model(inputs) - inputs[:, :2]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _snapshot(model, optimizer, scheduler) -> tuple:
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()))


@pytest.mark.parametrize("optimizer_kind", list(OPTIMIZERS))
@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "background"])
def test_resuming_and_training_on_equals_the_uninterrupted_run(tmp_path, optimizer_kind, blocking):
    numpy.random.seed(1)
    random.seed(2)
    store = mmlib.open_store(str(tmp_path / "store"))
    model, optimizer, scheduler = _run(optimizer_kind)
    with mmlib.Checkpointer(store, "run", model, optimizer, scheduler, keep_last=2) as checkpointer:
        for step in (5, 10, 15):
            _train(model, optimizer, scheduler, 5)
            checkpointer.save(step=step, metrics={"loss": 1.0 / step}, extra={"seen": step * 8}, blocking=blocking)
    _train(model, optimizer, scheduler, 10)
    expected = _snapshot(model, optimizer, scheduler)

    numpy.random.seed(99)  # a fresh process would start from other RNG states
    random.seed(99)
    torch.manual_seed(99)
    resumed, resumed_optimizer, resumed_scheduler = _run(optimizer_kind)
    extra: dict = {}
    assert mmlib.resume("run", store, resumed, resumed_optimizer, resumed_scheduler, extra=extra) == 15
    assert extra == {"seen": 120}
    _train(resumed, resumed_optimizer, resumed_scheduler, 10)
    assert same_state(_snapshot(resumed, resumed_optimizer, resumed_scheduler), expected)


def test_a_resume_without_the_rng_states_or_the_optimizer_state_diverges(tmp_path):
    """The resume test above fails when either is left out: what it checks is what a resume needs."""
    store = mmlib.open_store(str(tmp_path / "store"))
    model, optimizer, scheduler = _run("adam")
    _train(model, optimizer, scheduler, 5)
    mmlib.Checkpointer(store, "run", model, optimizer, scheduler).save(step=5)
    _train(model, optimizer, scheduler, 5)
    expected = _snapshot(model, optimizer, scheduler)
    for restore_rng, with_optimizer in ((False, True), (True, False)):
        torch.manual_seed(99)
        resumed, resumed_optimizer, resumed_scheduler = _run("adam")
        mmlib.resume("run", store, resumed, resumed_optimizer if with_optimizer else None, resumed_scheduler,
                     restore_rng=restore_rng)
        _train(resumed, resumed_optimizer, resumed_scheduler, 5)
        assert not same_state(resumed.state_dict(), expected[0])


def _kept_states(store, name: str) -> dict[int, dict]:
    return {version.number: version for version in mmlib.find(store, name=name)}


def test_retention_prunes_the_bases_of_kept_versions_and_every_kept_version_recovers_exactly(stores):
    store = checked_store(stores)
    model, optimizer, scheduler = _run("adam")
    saved: dict[int, dict] = {}
    losses = [5.0, 1.0, 4.0, 3.0, 0.5, 6.0, 7.0, 8.0, 9.0, 2.0, 10.0, 11.0]
    checkpointer = mmlib.Checkpointer(store, "run", model, optimizer, scheduler, keep_last=3, keep_best=1,
                                      monitor="loss", keep_every=40)
    for number, loss in enumerate(losses, start=1):
        _train(model, optimizer, scheduler, 1)
        checkpointer.save(step=number * 5, metrics={"loss": loss})
        saved[number] = copy.deepcopy(model.state_dict())
    kept = _kept_states(store, "run")
    # the newest 3, the best (v5, loss 0.5), the first of every 40 steps (v1 at 5, v8 at 40)
    assert sorted(kept) == [1, 5, 8, 10, 11, 12]
    assert mmlib.get("run:best", store).number == 5
    for number in kept:
        assert same_state(mmlib.load(f"run:v{number}", store).state_dict(), saved[number])
    assert maintenance.verify(store) == []
    pruned = store.dict_pers_service.all_ids_for_type(PRUNED)
    assert len(pruned) == 2 * 6  # six versions pruned, each with its training state
    with pytest.raises(ModelNotFoundError, match="pruned"):
        maintenance.recover_model(store, store.dict_pers_service.recover_dict("run:v2", refs.VERSION)["model_id"])
    with pytest.raises(ModelNotFoundError, match="run:v2 was removed or pruned"):
        mmlib.load("run:v2", store)
    assert maintenance.collect_garbage(store, grace_seconds=0).count == 0  # pruning reclaimed at once
    assert maintenance.verify(store) == []


def test_pruned_weights_are_reclaimed_but_those_kept_versions_read_stay(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    torch.manual_seed(0)
    model = Wide()
    for step in range(1, 11):
        with torch.no_grad():
            model.second.weight.add_(0.01)  # changes; `first.weight` (128 KiB) stays in v1's snapshot blob
        mmlib.Checkpointer(store, "run", model, keep_last=1).save(step=step)
    records = {number: store.dict_pers_service.recover_dict(f"run:v{number}", refs.VERSION) for number in range(1, 11)}
    blobs = set(store.file_pers_service.blob_digests())
    assert pruning.weights_blob(store, records[1]["model_id"]) in blobs  # v10 reads `first.weight` from it
    # v8's change is a delta of v1's tensor; v9 stored it in full (every 8th change is a keyframe), and v10 is a
    # delta of v9's: nothing reads v8's blob any more
    assert pruning.weights_blob(store, records[8]["model_id"]) not in blobs
    # the training states hold only small tensors (RNG states), stored again in every checkpoint even when
    # unchanged: no pruned training state's blob is kept for them (identical ones are one blob)
    state_blobs = {pruning.weights_blob(store, record["checkpoint"]["state"]) for record in records.values()}
    assert state_blobs & blobs == {pruning.weights_blob(store, records[10]["checkpoint"]["state"])}
    assert same_state(mmlib.load("run", store).state_dict(), model.state_dict())
    assert maintenance.verify(store) == []
    before = set(store.file_pers_service.blob_digests())
    assert maintenance.collect_garbage(store, grace_seconds=0).blobs == []  # pruning reclaimed all it could
    assert set(store.file_pers_service.blob_digests()) == before


def test_a_run_whose_deltas_do_not_pay_keeps_no_pruned_version_s_weights(tmp_path):
    """Every tensor changing like noise (as Adam's moments nearly do): after the first update the checkpoints are
    stored in full, so pruning leaves no keyframe blob behind for the kept ones."""
    store = mmlib.open_store(str(tmp_path / "store"))
    torch.manual_seed(0)
    model = Wide()
    checkpointer = mmlib.Checkpointer(store, "run", model, keep_last=2)
    saved = {}
    for step in range(1, 8):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn_like(parameter))
        checkpointer.save(step=step)
        saved[step] = copy.deepcopy(model.state_dict())
    blobs = set(store.file_pers_service.blob_digests())
    model_ids = {number: store.dict_pers_service.recover_dict(f"run:v{number}", refs.VERSION)["model_id"]
                 for number in range(1, 8)}
    # with deltas, v6 and v7 would be deltas of v1's snapshot, whose blob would stay
    assert [pruning.weights_blob(store, model_ids[number]) in blobs for number in model_ids] == [False] * 5 + [True] * 2
    for number in (6, 7):
        assert same_state(mmlib.load(f"run:v{number}", store).state_dict(), saved[number])
    assert maintenance.verify(store) == []


def test_training_state_round_trips_what_optimizers_and_schedulers_hold_without_pickling():
    state = {"int keys": {0: torch.arange(3), 7: {"step": torch.tensor(4.0)}}, "tuple": (0.9, 0.999),
             "floats": [math.inf, -math.inf, 1e-300, 0.1], "nested": [{"a": None, "b": True}], "empty": torch.empty(0)}
    module, tree = training_state.pack(state)
    assert same_state(training_state.unpack(module, tree), state)
    with pytest.raises(InvalidArgumentError, match="set"):
        training_state.pack({"lambda": {1, 2}})
    forged = copy.deepcopy(tree)
    forged["$dict"][1][1]["$tuple"][0] = 0.5
    with pytest.raises(IntegrityError, match="does not match"):
        training_state.unpack(module, forged)


def test_resume_refuses_a_version_saved_without_training_state(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    mmlib.save(Regressor(), store, name="plain")
    with pytest.raises(InvalidArgumentError, match="not a checkpoint"):
        mmlib.resume("plain", store, Regressor())


def test_retention_arguments_are_checked():
    with pytest.raises(InvalidArgumentError, match="keep_last"):
        mmlib.Retention(keep_best=1, monitor="loss")
    with pytest.raises(InvalidArgumentError, match="monitor"):
        mmlib.Retention(keep_last=1, keep_best=1)
    with pytest.raises(InvalidArgumentError, match="mode"):
        mmlib.Retention(keep_last=1, mode="lowest")


def test_prune_and_ls_from_the_command_line(tmp_path, capsys):
    location = str(tmp_path / "store")
    store = mmlib.open_store(location)
    model = Regressor()
    checkpointer = mmlib.Checkpointer(store, "run", model, keep_last=2, keep_best=1, monitor="val_loss")
    for step, loss in ((10, 0.3), (20, 0.1), (30, 0.2), (40, 0.4)):
        with torch.no_grad():
            model.out.bias.add_(1.0)
        checkpointer.save(step=step, metrics={"val_loss": loss})
    code, out, _ = run_cli(capsys, "--store", location, "ls", "--name", "run")
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[-4:] == ["STEP", "VAL_LOSS", "KEPT", "BY"]
    assert [row.split()[-4:] for row in rows] == [["latest", "40", "0.4", "last"], ["-", "30", "0.2", "last"],
                                                  ["best", "20", "0.1", "best,alias:best"]]
    code, out, _ = run_cli(capsys, "--store", location, "prune", "run", "--keep-last", "1", "--dry-run")
    assert code == 0 and "would prune run:v3" in out and len(mmlib.find(store, name="run")) == 3
    code, out, _ = run_cli(capsys, "--store", location, "prune", "run", "--keep-last", "1")
    assert code == 0 and "pruned 1 version(s) of run" in out  # v2 stays: the alias `best` points at it
    assert sorted(version.number for version in mmlib.find(store, name="run")) == [2, 4]
    code, out, _ = run_cli(capsys, "--store", location, "verify")
    assert code == 0
    code, out, _ = run_cli(capsys, "--store", location, "show", "run")
    assert code == 0 and "checkpoint step  40" in out and "version          run:v4" in out
    assert [line.split()[1:3] for line in out.splitlines() if "(pruned)" in line] == [  # v3, and v1 below v2
        ["weight_updates", "(pruned)"], ["full_model", "(pruned)"]]
    code, _, err = run_cli(capsys, "--store", location, "prune", "run")
    assert code == 2 and "--keep-last" in err


class Unsavable(Regressor):
    """A model whose state dict holds a value that is no tensor: its save is refused."""

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        state["note"] = "not a tensor"
        return state


def test_a_checkpoint_whose_model_cannot_be_saved_leaves_nothing_behind(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    model = Unsavable()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InvalidSaveInfoError, match="note"):
        mmlib.Checkpointer(store, "run", model, optimizer).save(step=1)
    assert maintenance.all_model_ids(store) == [] and mmlib.find(store) == []


def test_a_background_checkpoint_copies_the_model_as_it_was_with_its_tied_weights(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    model = TiedDecoderLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    expected = copy.deepcopy(model.state_dict())
    with mmlib.Checkpointer(store, "lm", model, optimizer) as checkpointer:
        pending = checkpointer.save(step=1, blocking=False)
        with torch.no_grad():
            model.token_embedding.weight.add_(1.0)  # training goes on while the copy is written
        version = pending.result()
    recovered = mmlib.load(version.ref, store)
    assert recovered.head.weight is recovered.token_embedding.weight
    assert same_state(recovered.state_dict(), expected)


def test_deciding_what_pruned_versions_still_hold_skips_a_model_withdrawn_after_it_was_listed(tmp_path):
    store = mmlib.open_store(str(tmp_path / "store"))
    model = Wide()
    checkpointer = mmlib.Checkpointer(store, "run", model, keep_last=1)
    for step in range(3):
        with torch.no_grad():
            model.second.weight.add_(1.0)
        checkpointer.save(step=step)
    with torch.no_grad():
        model.second.weight.add_(1.0)
    derived = mmlib.save(model, store, base="run").id  # reads tensors that pruned versions hold
    lineages = maintenance._lineages(store)
    store.dict_pers_service.delete_dict(derived, MODEL_INFO)  # withdrawn by its save after gc listed it
    kept_reads = lineages.needed_pruned_blobs()
    first = store.dict_pers_service.recover_dict("run:v1", refs.VERSION)["model_id"]
    assert kept_reads == {pruning.weights_blob(store, first)}  # v3 reads `first.weight` from v1's snapshot


def test_a_checkpoint_save_reads_as_many_documents_late_in_a_run_as_early(tmp_path, monkeypatch):
    """A save neither walks the run's lineage back to its first snapshot nor re-reads the records of every pruned
    version: a run of thousands of checkpoints saves as fast at its end as at its start."""
    store = mmlib.open_store(str(tmp_path / "store"))
    reads = []
    recover_dict = store.dict_pers_service.recover_dict

    def counted(*args, **kwargs):
        reads[-1] += 1
        return recover_dict(*args, **kwargs)

    monkeypatch.setattr(store.dict_pers_service, "recover_dict", counted)
    model, optimizer, scheduler = _run("adam")
    checkpointer = mmlib.Checkpointer(store, "run", model, optimizer, scheduler, keep_last=2)
    for step in range(1, 31):
        _train(model, optimizer, scheduler, 1)
        reads.append(0)
        checkpointer.save(step=step)
    assert reads[-1] <= reads[9] + 20, reads  # one record more per version: its own


def test_a_save_returns_its_version_when_another_process_pruned_it_at_once(tmp_path, monkeypatch):
    """Another process of the run saved newer checkpoints and pruned this one between its commit and the Version
    it returns: the save still returns the committed version (without its size), not a missing blob."""
    store = mmlib.open_store(str(tmp_path / "store"))
    model, optimizer, scheduler = _run("adam")
    checkpointer = mmlib.Checkpointer(store, "run", model, optimizer, scheduler, keep_last=1)
    checkpointer.save(step=1)
    prune = mmlib.checkpoints.prune

    def pruned_meanwhile(store, name, retention):
        prune(store, name, retention)
        newest = refs.latest_record(store.dict_pers_service, name)
        pruning.mark_pruned(store, [newest["model_id"], newest["checkpoint"]["state"]], "another process")
        maintenance.reclaim_pruned(store)

    monkeypatch.setattr(mmlib.checkpoints, "prune", pruned_meanwhile)
    _train(model, optimizer, scheduler, 1)
    version = checkpointer.save(step=2)
    assert pruning.is_pruned(store, version.id) and version.size == 0
    assert not store.file_pers_service.blob_exists(pruning.weights_blob(store, version.id))
