"""Every weights-based approach (baseline, parameter update, improved parameter update) on every store combination.

Each flow runs for all three approaches; the chain flow runs the update approaches on the embedded
store only (its store traffic is the same as in the other flows, and it is the slow one).
"""

import functools
import inspect
import os

import pytest

from mmlib.errors import IntegrityError, InvalidSaveInfoError, ModelNotFoundError
from mmlib.models import GoogLeNet, MobileNetV2, ResNet18
from mmlib.equal import state_dict_equal
from mmlib.persistence import FileReference, FileSystemPersistenceService, SQLiteDictPersistenceService, \
    open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.save_info import ModelSaveInfo
from save_helpers import equal, perturb, save_info, sizes_positive
from tiny_models import TinyNet

WITH_OBJECT_STORAGE = True  # the save flows and bit flips also run on MongoDB + S3

MODELS = [ResNet18, MobileNetV2, GoogLeNet]
APPROACHES = {
    "baseline": BaselineSaveService,
    "update": functools.partial(WeightUpdateSaveService, improved_version=False),
    "improved_update": functools.partial(WeightUpdateSaveService, improved_version=True),
}
UPDATE_APPROACHES = ["update", "improved_update"]


@pytest.fixture(params=list(APPROACHES))
def make_service(request, stores):
    """A factory of fresh services (nothing cached) of one approach over one store combination."""
    return lambda: APPROACHES[request.param](*stores)


@pytest.fixture
def service(make_service):
    return make_service()


def _check_chain_of_two_derived_models(service, model_class) -> None:
    model = model_class()
    base_id = service.save_model(save_info(model))
    recovered = service.recover_model(base_id, execute_checks=True).model
    assert type(recovered).__name__ == model_class.__name__
    assert equal(model, recovered)

    ids, parent = [base_id], recovered
    for _ in range(2):
        child = perturb(parent)
        ids.append(service.save_model(save_info(child, base_model_id=ids[-1])))
        restored = service.recover_model(ids[-1], execute_checks=True).model
        assert equal(child, restored)
        assert sizes_positive(service.model_save_size(ids[-1]))
        parent = restored
    assert sizes_positive(service.model_save_size(base_id))
    assert service.all_model_ids() == ids


@pytest.mark.parametrize("model_class", MODELS, ids=lambda cls: cls.__name__)
def test_baseline_saves_recovers_and_chains_two_derived_models(stores, model_class):
    _check_chain_of_two_derived_models(BaselineSaveService(*stores), model_class)


@pytest.mark.parametrize("approach", UPDATE_APPROACHES)
@pytest.mark.parametrize("model_class", MODELS, ids=lambda cls: cls.__name__)
def test_updates_save_recover_and_chain_two_derived_models(tmp_path, approach, model_class):
    stores = FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(str(tmp_path / "m.db"))
    _check_chain_of_two_derived_models(APPROACHES[approach](*stores), model_class)


def test_size_info_layout(service):
    model_id = service.save_model(save_info(ResNet18()))
    sizes = service.model_save_size(model_id)
    assert set(sizes) == {"metadata_size", "recover_info"}
    assert set(sizes["recover_info"]) == {"metadata_size", "environment", "model_code", "parameters"}
    assert set(sizes["recover_info"]["environment"]) == {"metadata_size"}
    assert sizes["recover_info"]["parameters"] > 11_689_512 * 4


def test_same_architecture_ten_times_stores_code_and_environment_once(stores, make_service):
    file_service, dict_service = stores
    service = make_service()
    for _ in range(10):
        service.save_model(save_info(MobileNetV2()))
    assert len(dict_service.all_ids_for_type("environment")) == 1
    assert len(list(file_service.blob_digests())) == 10 + 1


def _stored_size(file_service, digest: str) -> int:
    reference = FileReference(reference_id=f"{digest}/blob")
    file_service.file_size(reference)
    return reference.size


def test_corrupted_weights_blob_raises_integrity_error(stores, make_service, corrupt_blob):
    file_service, _ = stores
    service = make_service()
    model_id = service.save_model(save_info(MobileNetV2()))
    parameters = service.model_save_size(model_id)["recover_info"]["parameters"]
    weights_digest = next(d for d in file_service.blob_digests() if _stored_size(file_service, d) == parameters)
    corrupt_blob(file_service, weights_digest)
    with pytest.raises(IntegrityError, match=weights_digest):
        service.recover_model(model_id)
    with pytest.raises(IntegrityError):
        service.recover_model(model_id, execute_checks=False)


def test_unknown_model_id_raises_model_not_found(service):
    with pytest.raises(ModelNotFoundError) as info:
        service.recover_model("does-not-exist")
    assert isinstance(info.value, KeyError)
    assert "does-not-exist" in str(info.value) and "mmlib ls" in str(info.value)
    with pytest.raises(KeyError):
        service.model_save_size("does-not-exist")


def test_unknown_base_model_raises_and_writes_nothing(stores, make_service):
    file_service, _ = stores
    service = make_service()
    with pytest.raises(ModelNotFoundError):
        service.save_model(save_info(MobileNetV2(), base_model_id="no-such-base"))
    assert service.all_model_ids() == [] and list(file_service.blob_digests()) == []


def test_recovered_model_reuses_base_code_when_its_file_is_gone(stores, make_service):
    file_service, _ = stores
    service = make_service()
    base_id = service.save_model(save_info(MobileNetV2()))
    recovered = service.recover_model(base_id).model
    code_path = inspect.getsourcefile(type(recovered))
    if os.path.exists(code_path):
        os.unlink(code_path)
    child_id = service.save_model(save_info(perturb(recovered), base_model_id=base_id))
    assert equal(recovered, make_service().recover_model(child_id).model)
    assert len(list(file_service.blob_digests())) == 3


def test_model_without_source_file_needs_code(service):
    dynamic = type("NotebookModel", (ResNet18,), {"__module__": "__main__"})
    with pytest.raises(InvalidSaveInfoError, match="code"):
        service.save_model(save_info(dynamic()))


def test_non_module_model_is_rejected(service):
    with pytest.raises(InvalidSaveInfoError):
        service.save_model(save_info(None))


def test_a_save_info_without_environment_records_the_current_one(tmp_path):
    service = BaselineSaveService(*open_store(str(tmp_path / "store")))
    model = TinyNet()
    model_id = service.save_model(ModelSaveInfo(model, None, None))
    recovered = service.recover_model(model_id, execute_checks=True).model
    assert state_dict_equal(recovered.state_dict(), model.state_dict())
