"""verify names the kind of problem: a missing setting or package is not corruption, and says what to set."""

import importlib
import sys

import pytest

from mmlib import maintenance
from mmlib.constants import CURRENT_DATA_ROOT, MMLIB_CONFIG
from mmlib.deterministic import deterministic
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, ProvenanceSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from save_helpers import save_info
from zoo_models import Normalized, zoo_train_wrapper


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


def test_a_provenance_model_without_its_setting_is_a_configuration_problem(store, tmp_path, monkeypatch):
    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\n{CURRENT_DATA_ROOT} = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))
    service = ProvenanceSaveService(*store)
    model = Normalized()
    base_id = service.save_model(save_info(model))
    raw_data = tmp_path / "raw"
    raw_data.mkdir()
    (raw_data / "seed.txt").write_text("inputs are generated from seeds")
    wrapper, train_kwargs = zoo_train_wrapper(model), {"steps": 1}
    version_id = service.save_model(
        ModelSaveInfoBuilder().add_model_info(model=model, base_model_id=base_id, env=track_current_environment())
        .add_prov_data(raw_data_path=str(raw_data), train_kwargs=train_kwargs, train_service_wrapper=wrapper).build())
    deterministic(wrapper.instance.train, [model], train_kwargs)
    service.add_weights_hash_info(version_id, model)
    assert maintenance.verify(store) == []
    monkeypatch.delenv(MMLIB_CONFIG)
    problems = maintenance.verify(store)
    assert [(p.model_id, p.kind) for p in problems] == [(version_id, maintenance.CONFIGURATION)]
    assert MMLIB_CONFIG in problems[0].message and "backup" not in problems[0].message


def test_a_model_whose_package_is_not_installed_is_a_dependency_problem(store, tmp_path, monkeypatch):
    package = tmp_path / "package"
    package.mkdir()
    (package / "vanishing_models.py").write_text(
        "import torch\n\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    monkeypatch.syspath_prepend(str(package))
    service = BaselineSaveService(*store)
    model_id = service.save_model(ModelSaveInfoBuilder().add_model_info(
        model=importlib.import_module("vanishing_models").build(), model_import="vanishing_models:build",
        env=track_current_environment()).build())
    monkeypatch.delitem(sys.modules, "vanishing_models")
    (package / "vanishing_models.py").unlink()
    problems = maintenance.verify(store)
    assert [(p.model_id, p.kind) for p in problems] == [(model_id, maintenance.DEPENDENCY)]
    assert "install" in problems[0].message and "backup" not in problems[0].message
