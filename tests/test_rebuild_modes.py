"""A rebuild restores the saved requires_grad flags and train/eval modes whatever the constructor sets, and a checked
recovery refuses a rebuilt model whose flags or modes differ from the saved ones."""

import pytest
import torch

from mmlib.approaches import model_building
from mmlib.errors import IntegrityError
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from save_helpers import save_info

APPROACHES = {
    "baseline": BaselineSaveService,
    "update": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=False),
    "update_improved": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=True),
    "provenance_snapshot": ProvenanceSaveService,
}


class FreezesInInit(torch.nn.Module):
    """A classifier whose constructor freezes its head and puts its norm in eval mode (as fine-tuning code does)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.fc = torch.nn.Linear(8, 2)
        self.fc.requires_grad_(False)
        self.norm.eval()


def _unfrozen_and_trained() -> FreezesInInit:
    """The model as saved: head unfrozen and norm trained by the user, body frozen and in eval mode instead."""
    model = FreezesInInit()
    model.fc.requires_grad_(True)
    model.norm.train()
    model.body.requires_grad_(False)
    model.body.eval()
    return model


def _flags(model: torch.nn.Module) -> tuple[dict, dict]:
    return ({name: parameter.requires_grad for name, parameter in model.named_parameters()},
            {name: module.training for name, module in model.named_modules()})


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


@pytest.mark.parametrize("execute_checks", [False, True], ids=["unchecked", "checked"])
@pytest.mark.parametrize("approach", list(APPROACHES))
def test_a_rebuild_restores_the_saved_flags_and_modes_that_the_constructor_changes(store, approach, execute_checks):
    model = _unfrozen_and_trained()
    service = APPROACHES[approach](*store)
    base_id = service.save_model(save_info(model))
    assert _flags(FreezesInInit()) != _flags(model)
    assert _flags(service.recover_model(base_id, execute_checks=execute_checks).model) == _flags(model)
    if approach == "provenance_snapshot":
        return
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    derived_id = service.save_model(save_info(model, base_model_id=base_id))
    recovered = APPROACHES[approach](*store).recover_model(derived_id, execute_checks=execute_checks).model
    assert _flags(recovered) == _flags(model)


def _rebuild_then(change):
    """A rebuild that, once the saved layout is restored, changes the model as edited model code would."""
    restore = model_building._restore_layout

    def restore_then_change(model: torch.nn.Module, layout) -> None:
        restore(model, layout)
        change(model)
    return restore_then_change


@pytest.mark.parametrize("approach", list(APPROACHES))
@pytest.mark.parametrize("change, difference", [
    (lambda model: model.fc.requires_grad_(False), "frozen"),
    (lambda model: model.body.requires_grad_(True), "frozen"),
    (lambda model: model.norm.eval(), "eval_modules"),
    (lambda model: model.body.train(), "eval_modules"),
], ids=["refrozen", "unfrozen", "back_in_eval", "back_in_train"])
def test_a_checked_recovery_refuses_a_model_whose_flags_or_modes_differ_from_the_saved(store, monkeypatch, approach,
                                                                                       change, difference):
    model = _unfrozen_and_trained()
    service = APPROACHES[approach](*store)
    base_id = service.save_model(save_info(model))
    ids = [base_id]
    if approach != "provenance_snapshot":
        with torch.no_grad():
            model.fc.weight.add_(1.0)
        ids.append(service.save_model(save_info(model, base_model_id=base_id)))
    monkeypatch.setattr(model_building, "_restore_layout", _rebuild_then(change))
    for model_id in ids:
        with pytest.raises(IntegrityError, match=rf"{model_id}.*'{difference}'"):
            APPROACHES[approach](*store).recover_model(model_id, execute_checks=True)
        APPROACHES[approach](*store).recover_model(model_id, execute_checks=False)


class PinnedEvalNorm(torch.nn.BatchNorm1d):
    """A norm layer whose code was changed to stay in eval mode whatever it is set to."""

    @property
    def training(self) -> bool:
        return False

    @training.setter
    def training(self, value: bool) -> None:
        pass


def test_a_checked_recovery_refuses_a_model_whose_code_now_pins_a_mode(store, monkeypatch):
    model = _unfrozen_and_trained()
    service = BaselineSaveService(*store)
    model_id = service.save_model(save_info(model, model_import="test_rebuild_modes:FreezesInInit"))
    monkeypatch.setattr(torch.nn, "BatchNorm1d", PinnedEvalNorm)
    assert FreezesInInit().norm.training is False
    with pytest.raises(IntegrityError, match="eval_modules"):
        BaselineSaveService(*store).recover_model(model_id, execute_checks=True)
    assert BaselineSaveService(*store).recover_model(model_id, execute_checks=False).model.norm.training is False
