"""Models with constructor arguments, and models from installed packages saved by import path, not copied code."""

import importlib.metadata

import pytest
import torch

from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning, InvalidSaveInfoError, UnsafeCodeError
from mmlib.models import MobileNetV2
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import MODEL_INFO, RECOVER_INFO_ID
from mmlib.schema.recover_info import MODEL_PACKAGE, RECOVER_INFO
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from save_helpers import equal, forge_record, perturb, store_contents

ENCODER_ARGS = {"d_model": 16, "nhead": 2, "dim_feedforward": 32, "batch_first": True}
ENCODER_IMPORT = "torch.nn:TransformerEncoderLayer"


def _info(model, base_model_id=None, **options):
    return ModelSaveInfoBuilder().add_model_info(model=model, base_model_id=base_model_id, **options).build()


def _encoder_equal(model1, model2) -> bool:
    inputs = torch.rand(2, 5, ENCODER_ARGS["d_model"])
    model1.eval()
    model2.eval()
    return (model1.state_dict().keys() == model2.state_dict().keys()
            and all(torch.equal(a, b) for a, b in zip(model1.state_dict().values(), model2.state_dict().values()))
            and torch.equal(model1(inputs), model2(inputs)))


@pytest.mark.parametrize("approach", [BaselineSaveService, WeightUpdateSaveService], ids=["baseline", "update"])
def test_class_with_constructor_arguments_saves_and_recovers(stores, approach):
    service = approach(*stores)
    model = MobileNetV2(num_classes=10, width_mult=0.5)
    base_id = service.save_model(_info(model, init_args={"num_classes": 10, "width_mult": 0.5}))
    recovered = service.recover_model(base_id).model
    assert recovered.classifier[1].out_features == 10 and equal(model, recovered)
    child = perturb(recovered)
    child_id = service.save_model(_info(child, base_model_id=base_id))
    assert equal(child, service.recover_model(child_id).model)


@pytest.mark.parametrize("approach", [BaselineSaveService, WeightUpdateSaveService], ids=["baseline", "update"])
def test_model_from_an_installed_package_is_saved_by_import_path(stores, approach):
    file_service, dict_service = stores
    service = approach(file_service, dict_service)
    model = torch.nn.TransformerEncoderLayer(**ENCODER_ARGS)
    base_id = service.save_model(_info(model, model_import=ENCODER_IMPORT, init_args=ENCODER_ARGS))
    sizes = service.model_save_size(base_id)
    assert "model_code" not in sizes["recover_info"], "no source file is copied for a package model"
    assert _encoder_equal(model, service.recover_model(base_id).model)
    child = perturb(service.recover_model(base_id).model)
    child_id = service.save_model(_info(child, base_model_id=base_id))
    assert _encoder_equal(child, service.recover_model(child_id, execute_checks=True).model)


def test_package_version_difference_warns_and_strict_mode_raises(stores):
    file_service, dict_service = stores
    service = BaselineSaveService(file_service, dict_service)
    model_id = service.save_model(_info(torch.nn.Linear(4, 2), model_import="torch.nn:Linear",
                                        init_args={"in_features": 4, "out_features": 2}))
    recover_info_id = dict_service.recover_dict(model_id, MODEL_INFO)[RECOVER_INFO_ID]
    package = dict_service.recover_dict(recover_info_id, RECOVER_INFO)[MODEL_PACKAGE]
    assert package == {"name": "torch", "version": importlib.metadata.version("torch")}
    model_id = forge_record(dict_service, model_id, **{MODEL_PACKAGE: {"name": "torch", "version": "1.0.0"}})
    with pytest.warns(EnvironmentMismatchWarning, match="torch==1.0.0"):
        service.recover_model(model_id)
    with pytest.raises(EnvironmentMismatchError, match="torch==1.0.0"):
        BaselineSaveService(file_service, dict_service, strict_env=True).recover_model(model_id)


@pytest.mark.parametrize("model_import, error", [
    ("os:system; import os", UnsafeCodeError),
    ("torch.nn.Linear", UnsafeCodeError),
    ("no_such_package_xyz.models:Net", InvalidSaveInfoError),
    ("torch.nn:NoSuchLayer", InvalidSaveInfoError),
])
def test_bad_import_paths_are_rejected_and_nothing_is_written(stores, model_import, error):
    service = BaselineSaveService(*stores)
    before = store_contents(*stores)
    with pytest.raises(error, match="import"):
        service.save_model(_info(torch.nn.Linear(4, 2), model_import=model_import))
    assert store_contents(*stores) == before


def test_non_json_constructor_arguments_are_rejected(stores):
    service = BaselineSaveService(*stores)
    before = store_contents(*stores)
    with pytest.raises(InvalidSaveInfoError, match="JSON"):
        service.save_model(_info(MobileNetV2(), init_args={"block": torch.nn.Conv2d}))
    assert store_contents(*stores) == before
