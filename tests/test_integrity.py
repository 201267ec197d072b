"""A flipped bit in any blob (weights, code, update, dataset, training state) is reported, never recovered silently."""

import pytest
import torch

from mmlib import maintenance
from mmlib.constants import MMLIB_CONFIG
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.deterministic import deterministic
from mmlib.errors import IntegrityError
from mmlib.persistence import Store
from mmlib.persistence.base import BLOB
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from provenance_helpers import TinyNet
from save_helpers import perturb, save_info

WITH_OBJECT_STORAGE = True  # the save flows and bit flips also run on MongoDB + S3


@pytest.fixture
def fresh_data_root(tmp_path, monkeypatch):
    """Point MMLIB_CONFIG at a new, empty data root (so provenance recovery must read the dataset blob)."""
    def renew(name: str) -> None:
        config = tmp_path / f"{name}.ini"
        config.write_text(f"[VALUES]\ncurrent_data_root = {tmp_path / name}\n")
        monkeypatch.setenv(MMLIB_CONFIG, str(config))
    renew("initial")
    return renew


def _populate(store: Store, raw_data: str) -> dict[str, str]:
    """One model per approach: a snapshot, an update of it, and a provenance version of it."""
    torch.manual_seed(0)
    base = TinyNet()
    base_id = BaselineSaveService(*store).save_model(save_info(base))
    update_id = WeightUpdateSaveService(*store).save_model(save_info(perturb(TinyNet()), base_model_id=base_id))
    provenance = ProvenanceSaveService(*store)
    live = TinyNet()
    live.load_state_dict(base.state_dict())
    wrapper = image_classification_train_wrapper(live, raw_data)
    train_kwargs = {"number_batches": 1}
    provenance_info = (ModelSaveInfoBuilder().add_model_info(model=live, base_model_id=base_id)
                       .add_prov_data(raw_data_path=raw_data, train_kwargs=train_kwargs,
                                      train_service_wrapper=wrapper).build())
    provenance_id = provenance.save_model(provenance_info)
    deterministic(wrapper.instance.train, [live], train_kwargs)
    provenance.add_weights_hash_info(provenance_id, live)
    return {"snapshot": base_id, "update": update_id, "provenance": provenance_id}


def test_every_blob_flip_is_an_integrity_error_on_recovery_and_in_verify(stores, tmp_path, corrupt_blob,
                                                                        fresh_data_root):
    store = Store(*stores)
    raw_data = generate_image_dataset(str(tmp_path / "images"), num_classes=2, images_per_class=4)
    models = _populate(store, raw_data)
    own_blobs = {name: {item.item_id for item in ModelInfo.load_placeholder(model_id).stored_items(
        store.dict_pers_service) if item.kind == BLOB} for name, model_id in models.items()}
    assert maintenance.verify(store) == []

    flips = 0
    for name, model_id in models.items():
        for digest in sorted(own_blobs[name]):
            corrupt_blob(store.file_pers_service, digest)
            fresh_data_root(f"root-{flips}")
            service = maintenance.save_service_for(store, ModelInfo.load(
                model_id, *store, str(tmp_path)).store_type)
            with pytest.raises(IntegrityError, match=digest):
                service.recover_model(model_id, execute_checks=False)
            problems = maintenance.verify(store, [model_id])
            assert any(digest in str(problem) for problem in problems), (name, digest, problems)
            corrupt_blob(store.file_pers_service, digest)
            flips += 1
    assert maintenance.verify(store) == []
    # snapshot: weights and model code; update: its update blob; provenance: the dataset archive, the optimizer
    # state and image_classification.py (one blob for the train service and every wrapper class it defines)
    blob_counts = {name: len(blobs) for name, blobs in own_blobs.items()}
    assert blob_counts == {"snapshot": 2, "update": 1, "provenance": 3}, blob_counts


def test_an_edited_environment_document_is_an_integrity_error(stores):
    file_service, dict_service = stores
    service = BaselineSaveService(file_service, dict_service)
    model_id = service.save_model(save_info(TinyNet()))
    environment_id = dict_service.all_ids_for_type("environment")[0]
    dict_service.add_field(environment_id, "environment", "pytorch_version", "9.9.9")
    with pytest.raises(IntegrityError, match=f"environment document {environment_id} was changed"):
        service.recover_model(model_id)
    problems = maintenance.verify(Store(file_service, dict_service))
    assert [problem.model_id for problem in problems] == [model_id] and environment_id in str(problems[0])
