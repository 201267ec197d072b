"""Every bad input gets a typed error with a helpful message, and leaves the store unchanged."""

import warnings

import pytest
import torch

from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning, InvalidArgumentError, \
    InvalidSaveInfoError, ModelNotFoundError, UnsafeCodeError
from mmlib import maintenance
from mmlib.models import MobileNetV2
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.schema.recover_info import MODEL_CLASS_NAME
from mmlib.schema.model_info import MODEL_INFO, RECOVER_INFO_ID
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from save_helpers import forge_record, save_info, store_contents


@pytest.fixture
def populated(stores):
    """A store holding one saved model, and its id."""
    file_service, dict_service = stores
    service = BaselineSaveService(file_service, dict_service)
    return service, service.save_model(save_info(MobileNetV2())), file_service, dict_service


class _Sentinel:
    def __init__(self):
        self.model = torch.nn.Linear(2, 2)


@pytest.mark.parametrize("bad_model", [None, "resnet18", _Sentinel(), {"weight": torch.zeros(2)}],
                         ids=["none", "string", "object", "state_dict"])
def test_non_module_models_are_rejected_and_nothing_is_written(populated, bad_model):
    service, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    with pytest.raises(InvalidSaveInfoError, match="torch.nn.Module"):
        service.save_model(save_info(bad_model))
    assert store_contents(file_service, dict_service) == before


def test_save_info_of_the_wrong_type_is_rejected(populated):
    service, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    with pytest.raises(InvalidSaveInfoError, match="ModelSaveInfoBuilder"):
        service.save_model(MobileNetV2())
    assert store_contents(file_service, dict_service) == before


def test_class_without_source_and_no_code_is_rejected(populated):
    service, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    notebook_class = type("NotebookNet", (torch.nn.Module,), {"__module__": "__main__"})
    with pytest.raises(InvalidSaveInfoError, match="add_model_info\\(code=...\\)"):
        service.save_model(save_info(notebook_class()))
    assert store_contents(file_service, dict_service) == before


def test_missing_code_file_is_rejected(populated, tmp_path):
    service, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    with pytest.raises(InvalidSaveInfoError, match="does not exist"):
        service.save_model(save_info(MobileNetV2(), code=str(tmp_path / "gone.py")))
    assert store_contents(file_service, dict_service) == before


def test_unknown_base_model_is_rejected(populated):
    service, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    with pytest.raises(ModelNotFoundError, match="mmlib ls"):
        service.save_model(save_info(MobileNetV2(), base_model_id="no-such-model"))
    assert store_contents(file_service, dict_service) == before


@pytest.mark.parametrize("bad_id", ["no-such-model", None, 42])
def test_unknown_model_ids_raise_key_errors(populated, bad_id):
    service, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    with pytest.raises(ModelNotFoundError, match="all_model_ids"):
        service.recover_model(bad_id)
    assert store_contents(file_service, dict_service) == before


def test_id_of_another_kind_of_document_is_not_a_model(populated):
    service, model_id, file_service, dict_service = populated
    recover_info_id = dict_service.recover_dict(model_id, MODEL_INFO)[RECOVER_INFO_ID]
    environment_id = dict_service.all_ids_for_type("environment")[0]
    for other_id in (recover_info_id, environment_id):
        with pytest.raises(ModelNotFoundError, match="no model with id"):
            service.recover_model(other_id)


@pytest.mark.parametrize("class_name", ["MobileNetV2; import os", "MobileNetV2()", "__import__('os')"])
def test_class_name_edited_to_carry_code_is_refused_before_import(populated, class_name):
    service, model_id, file_service, dict_service = populated
    forged_id = forge_record(dict_service, model_id, **{MODEL_CLASS_NAME: class_name})
    with pytest.raises(UnsafeCodeError, match="identifier"):
        BaselineSaveService(file_service, dict_service).recover_model(forged_id)


def test_environment_mismatch_warns_with_differences_and_strict_mode_raises(populated):
    service, _, file_service, dict_service = populated
    elsewhere = track_current_environment()
    elsewhere.pytorch_version = "1.0.0"
    info = ModelSaveInfoBuilder().add_model_info(env=elsewhere, model=MobileNetV2()).build()
    model_id = service.save_model(info)
    with pytest.warns(EnvironmentMismatchWarning, match="torch 1.0.0 -> "):
        service.recover_model(model_id)
    strict = BaselineSaveService(file_service, dict_service, strict_env=True)
    with pytest.raises(EnvironmentMismatchError, match="torch 1.0.0"):
        strict.recover_model(model_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        service.recover_model(model_id, execute_checks=False)


def _services(file_service, dict_service) -> list:
    """One service of each of the four approaches over the same store."""
    return [BaselineSaveService(file_service, dict_service),
            WeightUpdateSaveService(file_service, dict_service, improved_version=False),
            WeightUpdateSaveService(file_service, dict_service, improved_version=True),
            ProvenanceSaveService(file_service, dict_service)]


@pytest.mark.parametrize("bad_id", [None, 42, ["x"], {"$ne": None}, b"ab", ("a",)],
                         ids=["none", "int", "list", "query", "bytes", "tuple"])
def test_every_approach_answers_a_wrongly_typed_id_with_the_same_typed_error(populated, bad_id):
    _, model_id, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    for service in _services(file_service, dict_service):
        for call in (service.recover_model, service.model_save_size):
            with pytest.raises(ModelNotFoundError, match="no model with id"):
                call(bad_id)
    with pytest.raises(ModelNotFoundError, match="no model with id"):
        ProvenanceSaveService(file_service, dict_service).add_weights_hash_info(bad_id, MobileNetV2())
    assert store_contents(file_service, dict_service) == before


@pytest.mark.parametrize("bad_info", [None, "info", 42, {"model": None}],
                         ids=["none", "string", "int", "dict"])
def test_every_approach_answers_a_wrongly_typed_save_info_with_the_same_typed_error(populated, bad_info):
    _, _, file_service, dict_service = populated
    before = store_contents(file_service, dict_service)
    for service in _services(file_service, dict_service):
        with pytest.raises(InvalidSaveInfoError, match="ModelSaveInfoBuilder"):
            service.save_model(bad_info)
    assert store_contents(file_service, dict_service) == before


@pytest.mark.parametrize("service_class", [BaselineSaveService, WeightUpdateSaveService, ProvenanceSaveService])
def test_every_approach_refuses_stores_that_are_not_stores(populated, service_class):
    _, _, file_service, dict_service = populated
    for halves, name in [(("./models", dict_service), "file_pers_service"), ((file_service, None), "dict_pers_service"),
                         ((dict_service, file_service), "file_pers_service")]:
        with pytest.raises(InvalidArgumentError, match=f"{name} must be a .* open_store"):
            service_class(*halves)


@pytest.mark.parametrize("flag", ["no", None, 1], ids=["string", "none", "int"])
def test_every_approach_refuses_an_execute_checks_that_is_no_bool(populated, flag):
    _, model_id, file_service, dict_service = populated
    for service in _services(file_service, dict_service):
        with pytest.raises(InvalidArgumentError, match="execute_checks must be a bool"):
            service.recover_model(model_id, execute_checks=flag)


def test_add_weights_hash_info_refuses_what_is_not_a_model(populated):
    _, model_id, file_service, dict_service = populated
    with pytest.raises(InvalidArgumentError, match="model must be a Module"):
        ProvenanceSaveService(file_service, dict_service).add_weights_hash_info(model_id, {"weight": torch.zeros(2)})


@pytest.mark.parametrize("bad_store", ["./models", None, ("blobs", "documents")], ids=["path", "none", "pair"])
def test_maintenance_refuses_stores_that_are_not_stores(bad_store):
    for call in (maintenance.list_models, maintenance.verify, maintenance.collect_garbage,
                 lambda store: maintenance.remove_model(store, "abcd"),
                 lambda store: maintenance.export_weights(store, "abcd", "out.safetensors")):
        with pytest.raises(InvalidArgumentError, match="a store is what open_store"):
            call(bad_store)


def test_maintenance_takes_a_plain_pair_of_halves(populated):
    _, model_id, file_service, dict_service = populated
    assert maintenance.all_model_ids((file_service, dict_service)) == [model_id]
