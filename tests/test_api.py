"""The one-line API (`mmlib.save`, `mmlib.load`, `mmlib.get`, `mmlib.find`, aliases, tags, metrics) on every store."""

import json
import multiprocessing
import subprocess
import sys

import pytest
import torch

import mmlib
from api_workers import move_alias, save_versions
from mmlib import maintenance, refs
from mmlib.errors import (AmbiguousModelIdError, IncompatibleModelError, InvalidIdError, InvalidSaveInfoError,
                          ModelInUseError, ModelNotFoundError)
from mmlib.refs import ALIAS_HISTORY, VERSION
from mmlib.testing.stores import results_of_processes
from save_helpers import run_cli
from tiny_models import TinyNet
from zoo_models import TiedDecoderLM

SAVERS, SAVES_EACH = 4, 10


def _same_weights(model: torch.nn.Module, expected: dict) -> bool:
    state = model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[key], expected[key]) for key in expected)


def _nudged(model: torch.nn.Module) -> dict:
    """Change the model's weights a little; its new state dict (a copy)."""
    with torch.no_grad():
        model.fc.weight.add_(0.01)
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture
def detector(location):
    """(store, model, [state dict of v1, of v2]) with versions 1 and 2 of `detector` saved."""
    store = mmlib.open_store(location)
    model = TinyNet()
    states = [{key: value.clone() for key, value in model.state_dict().items()}]
    mmlib.save(model, store, name="detector", tags={"data": "coco"}, metrics={"val_acc": 0.81})
    states.append(_nudged(model))
    mmlib.save(model, location, name="detector", metrics={"val_acc": 0.84})
    return store, model, states


def test_versions_are_numbered_and_load_by_name_number_and_alias(detector):
    store, _, states = detector
    v1, v2 = mmlib.get("detector:v1", store), mmlib.get("detector", store)
    assert (v1.name, v1.number, v1.approach, v1.base_id) == ("detector", 1, "snapshot", None)
    assert (v2.number, v2.approach, v2.base_id, v2.aliases) == (2, "update", v1.id, ["latest"])
    assert v1.tags == {"data": "coco"} and v2.metrics == {"val_acc": 0.84} and 0 < v2.size < v1.size
    assert _same_weights(mmlib.load("detector", store), states[1])
    assert _same_weights(mmlib.load("detector:v1", store), states[0])
    mmlib.set_alias(store, "detector:v1", "production")
    assert _same_weights(mmlib.load("detector:production", store, execute_checks=False), states[0])
    assert mmlib.get("detector:production", store).aliases == ["production"]
    assert _same_weights(mmlib.load(v2.id[:8], store), states[1])
    on_device = mmlib.load("detector:v2", store, device=torch.device("cpu"))
    assert _same_weights(on_device, states[1]) and {tensor.device.type for tensor in on_device.state_dict().values()} \
        == {"cpu"}
    assert maintenance.model_details(store, v2.id).environment["saved_on_device"] == "cpu"


def test_an_alias_moves_and_keeps_its_history(detector):
    store, _, _ = detector
    mmlib.set_alias(store, "detector:v1", "production")
    mmlib.set_alias(store, "detector:v2", "production")
    assert mmlib.get("detector:production", store).number == 2
    history = [store.dict_pers_service.recover_dict(record, ALIAS_HISTORY)
               for record in store.dict_pers_service.all_ids_for_type(ALIAS_HISTORY)]
    assert [(record["old"], record["new"]) for record in history] == [(None, 1), (1, 2)]
    assert all(record["user"] and record["host"] and record["time"] > 0 for record in history)
    with pytest.raises(InvalidIdError, match="latest"):
        mmlib.set_alias(store, "detector:v1", "latest")


def test_tags_and_metrics_can_be_added_later_and_find_filters_and_orders(detector):
    store, model, _ = detector
    mmlib.save(model, store, name="classifier", tags={"data": "coco"}, metrics={"val_acc": 0.9})
    mmlib.set_tags(store, "detector:v2", {"data": "coco", "reviewed": "yes"})
    mmlib.set_metrics(store, "detector:v1", {"val_loss": 0.3})
    found = mmlib.find(store, name="detector", tags={"data": "coco"}, order_by="-metrics.val_acc")
    assert [version.ref for version in found] == ["detector:v2", "detector:v1"]
    assert [version.ref for version in mmlib.find(store, tags={"data": "coco"}, order_by="metrics.val_acc")] == \
        ["detector:v1", "detector:v2", "classifier:v1"]
    assert [version.ref for version in mmlib.find(store, order_by="-metrics.val_loss")] == \
        ["detector:v1", "classifier:v1", "detector:v2"]  # versions without the metric come last
    assert mmlib.get("detector:v1", store).metrics == {"val_acc": 0.81, "val_loss": 0.3}
    assert [version.ref for version in mmlib.find(store)][0] == "classifier:v1"  # newest first


def test_a_new_architecture_under_a_name_is_a_snapshot_and_approaches_can_be_forced(detector):
    store, model, _ = detector
    other = TiedDecoderLM(vocab=50, width=8)
    v3 = mmlib.save(other, store, name="detector", init_args={"vocab": 50, "width": 8})
    assert (v3.number, v3.approach, v3.base_id) == (3, "snapshot", None)
    assert mmlib.save(model, store, name="detector", approach="snapshot").approach == "snapshot"
    with pytest.raises(IncompatibleModelError):
        mmlib.save(model, store, name="detector", base="detector:v3")
    with pytest.raises(IncompatibleModelError):
        mmlib.save(model, store, name="detector", approach="update", base="detector:v3")
    assert mmlib.save(model, store, name="detector", base="detector:v2").approach == "update"


def test_bad_names_references_and_values_are_typed_errors(detector):
    store, model, _ = detector
    before = maintenance.all_model_ids(store)
    for bad in ("1st", "has space", "a/b", ""):
        with pytest.raises(InvalidIdError, match="letters, digits"):
            mmlib.save(model, store, name=bad)
    with pytest.raises(InvalidSaveInfoError, match="metrics must map"):
        mmlib.save(model, store, name="detector", metrics={"val_acc": "high"})
    with pytest.raises(InvalidSaveInfoError, match="named version"):
        mmlib.save(model, store, tags={"data": "coco"})
    with pytest.raises(InvalidSaveInfoError, match="approach"):
        mmlib.save(model, store, name="detector", approach="provenance")
    assert maintenance.all_model_ids(store) == before
    with pytest.raises(ModelNotFoundError, match="stored names: detector"):
        mmlib.get("detectr", store)
    with pytest.raises(ModelNotFoundError, match="detector:v9 does not exist"):
        mmlib.load("detector:v9", store)
    with pytest.raises(ModelNotFoundError, match="no alias 'staging'.*detector:latest"):
        mmlib.load("detector:staging", store)
    with pytest.raises(InvalidIdError, match="without a name"):
        mmlib.set_alias(store, mmlib.save(model, store).id, "production")


def test_a_name_that_is_also_an_id_prefix_is_ambiguous(location):
    store = mmlib.open_store(location)
    model_id = next(version.id for version in iter(lambda: mmlib.save(TinyNet(), store), None)
                    if version.id[0] in "abcdef")
    mmlib.save(TinyNet(), store, name=model_id[:6])
    with pytest.raises(AmbiguousModelIdError, match="both a name and the start of model id"):
        mmlib.get(model_id[:6], store)
    assert mmlib.get(f"{model_id[:6]}:latest", store).number == 1


def test_rm_keeps_an_aliased_version_unless_forced_and_numbers_are_never_reused(detector):
    store, model, _ = detector
    v2 = mmlib.get("detector:v2", store)
    mmlib.set_alias(store, "detector:v2", "production")
    with pytest.raises(ModelInUseError, match="production"):
        maintenance.remove_model(store, v2.id)
    maintenance.remove_model(store, v2.id, force=True)
    assert mmlib.get("detector", store).number == 1
    with pytest.raises(ModelNotFoundError, match="detector:v2 was removed or pruned"):
        mmlib.get("detector:v2", store)
    assert mmlib.save(model, store, name="detector").number == 3
    maintenance.collect_garbage(store, grace_seconds=0)
    assert [version.number for version in mmlib.find(store, name="detector", order_by="number")] == [1, 3]
    assert store.dict_pers_service.id_exists("detector:v2", VERSION)  # gc keeps every ref


def test_the_cli_takes_references(detector, location):
    completed = subprocess.run([sys.executable, "-m", "mmlib", "--store", location, "show", "detector:v1"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and mmlib.get("detector:v1", detector[0]).id in completed.stdout
    completed = subprocess.run([sys.executable, "-m", "mmlib", "--store", location, "show", "detectr"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and "stored names: detector" in completed.stderr
    mmlib.set_alias(detector[0], "detector:v2", "production")
    removals = [subprocess.run([sys.executable, "-m", "mmlib", "--store", location, "rm", "detector:production",
                                *flags], capture_output=True, text=True, timeout=120) for flags in ([], ["--force"])]
    assert [completed.returncode for completed in removals] == [1, 0], [completed.stderr for completed in removals]
    assert "alias(es) production" in removals[0].stderr and mmlib.get("detector", detector[0]).number == 1


def test_processes_saving_one_name_at_once_get_consecutive_numbers(location):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mmlib.api", "api_workers"])
    start = context.Barrier(SAVERS)
    saved = results_of_processes(context, save_versions, [(location, "shared", seed, SAVES_EACH, start)
                                                          for seed in range(SAVERS)],
                                 context.Queue(), SAVERS * SAVES_EACH, timeout=300)
    assert sorted(number for number, _, _ in saved) == list(range(1, SAVERS * SAVES_EACH + 1))
    store = mmlib.open_store(location)
    for number, model_id, state in saved:
        assert mmlib.get(f"shared:v{number}", store).id == model_id
        assert _same_weights(mmlib.load(f"shared:v{number}", store),
                             {key: torch.from_numpy(value) for key, value in state.items()})


def test_processes_moving_one_alias_at_once_leave_a_history_of_chained_moves(location):
    store = mmlib.open_store(location)
    for _ in range(3):
        mmlib.save(TinyNet(), store, name="shared", approach="snapshot")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mmlib.api", "api_workers"])
    start = context.Barrier(SAVERS)
    moves = results_of_processes(context, move_alias, [(location, "production", [1 + (worker + step) % 3
                                                                                  for step in range(8)], start)
                                                       for worker in range(SAVERS)],
                                 context.Queue(), SAVERS, timeout=300)
    history = refs.alias_history(store.dict_pers_service, "shared", "production")
    assert [move["move"] for move in history] == list(range(1, sum(moves) + 1))
    assert history[0]["old"] is None
    assert all(later["old"] == earlier["new"] for earlier, later in zip(history, history[1:]))
    assert mmlib.get(f"shared:v{history[-1]['new']}", store).aliases[-1] == "production"
    assert mmlib.get("shared:production", store).number == history[-1]["new"]


def test_ls_shows_names_filters_and_sorts_and_alias_tag_show_work_from_the_command_line(detector, location, capsys):
    store, model, _ = detector
    unnamed = mmlib.save(TinyNet(), store)
    code, out, _ = run_cli(capsys, "--store", location, "alias", "detector:v1", "production")
    assert code == 0 and "detector:production -> detector:v1" in out
    code, out, _ = run_cli(capsys, "--store", location, "tag", "detector", "reviewed=yes")
    assert code == 0 and mmlib.get("detector:v2", store).tags == {"reviewed": "yes"}
    code, out, _ = run_cli(capsys, "--store", location, "ls")
    header, *rows = out.splitlines()
    assert header.split()[-3:] == ["NAME", "VERSION", "ALIASES"] and len(rows) == 3
    assert rows[0].split()[-3:] == ["-", "-", "-"] and rows[0].startswith(unnamed.id[:12])
    assert rows[1].split()[-3:] == ["detector", "v2", "latest"] and rows[2].split()[-3:] == ["detector", "v1",
                                                                                            "production"]
    code, out, _ = run_cli(capsys, "--store", location, "ls", "--name", "detector", "--tag", "data=coco")
    assert [row.split()[-2] for row in out.splitlines()[1:]] == ["v1"]
    code, out, _ = run_cli(capsys, "--store", location, "ls", "--sort=metrics.val_acc", "--json")
    listed = json.loads(out)
    assert [entry.get("number") for entry in listed] == [1, 2, None] and listed[0]["metrics"] == {"val_acc": 0.81}
    code, out, _ = run_cli(capsys, "--store", location, "alias", "detector:v2", "production")
    code, out, _ = run_cli(capsys, "--store", location, "show", "detector:production")
    lines = out.splitlines()
    assert code == 0 and ["version", "detector:v2"] in [line.split() for line in lines]
    moves = lines[lines.index(next(line for line in lines if line.startswith("ALIAS detector:production"))) + 1:]
    assert [move.split()[2:4] for move in moves] == [["-", "v1"], ["v1", "v2"]]
    code, out, _ = run_cli(capsys, "--store", location, "alias", "detector", "production", "--delete")
    assert code == 0 and mmlib.get("detector:v2", store).aliases == ["latest"]
    code, _, err = run_cli(capsys, "--store", location, "ls", "--tag", "novalue")
    assert code == 2 and "KEY=VALUE" in err


def test_verify_reports_refs_that_name_no_stored_model_and_forced_removal_drops_aliases(detector):
    store, _, _ = detector
    v1, v2 = mmlib.get("detector:v1", store), mmlib.get("detector:v2", store)
    mmlib.set_alias(store, "detector:v1", "production")
    maintenance.remove_model(store, v2.id, force=True)
    maintenance.remove_model(store, v1.id, force=True)
    assert maintenance.verify(store) == [] and mmlib.find(store) == []
    with pytest.raises(ModelNotFoundError, match="no alias 'production'"):
        mmlib.get("detector:production", store)
    again = mmlib.save(TinyNet(), store, name="detector")
    mmlib.set_alias(store, again.ref, "production")
    store.dict_pers_service.delete_dict(again.id, "model_info")  # the model document lost behind mmlib's back
    assert sorted(problem.item for problem in maintenance.verify(store)) == \
        ["ref detector:production", "ref detector:v3"]


def test_a_version_claim_cut_short_after_its_number_still_names_the_model(location, monkeypatch):
    store = mmlib.open_store(location)
    model_id = mmlib.save(TinyNet(), store).id
    dps = store.dict_pers_service
    real_save = dps.save_dict

    def crash_after_the_number(document, kind):  # the process dies once the version record is in
        if kind == refs.NAME:
            raise KeyboardInterrupt("killed")
        return real_save(document, kind)

    monkeypatch.setattr(dps, "save_dict", crash_after_the_number)
    with pytest.raises(KeyboardInterrupt):
        refs.claim_version(dps, "detector", model_id, {}, {})
    monkeypatch.undo()
    assert refs.version_of(dps, model_id) == ("detector", 1)
    assert mmlib.get("detector:v1", store).id == model_id and mmlib.get(model_id, store).ref == "detector:v1"
    other_id = mmlib.save(TinyNet(), store).id
    monkeypatch.setattr(dps, "insert_dict", lambda document, kind: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # dies before it got a number: the model stays unnamed
        refs.claim_version(dps, "detector", other_id, {}, {})
    monkeypatch.undo()
    assert refs.version_of(dps, other_id) is None and mmlib.get(other_id, store).name is None
