"""Provenance recovery: the dataset is unpacked once per recovery, and a looping lineage fails instead of hanging."""

import os
import threading

import pytest

from mmlib.constants import MMLIB_CONFIG
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.errors import IntegrityError
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.save import ProvenanceSaveService
from mmlib.schema.model_info import CREATED, DERIVED_FROM, MODEL_INFO, ModelInfo
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from provenance_helpers import TinyNet
from save_helpers import forge_record, save_info

_DEADLINE_S = 20  # the walk takes milliseconds; a walk that never stops grows by ~20 MB a second


@pytest.fixture
def provenance_version(tmp_path, monkeypatch):
    """(stores, id) of a one-batch provenance version of a TinyNet snapshot, with a fresh data root to recover into."""
    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\ncurrent_data_root = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))
    stores = FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(
        str(tmp_path / "meta.sqlite"))
    service = ProvenanceSaveService(*stores)
    model = TinyNet()
    raw_data = generate_image_dataset(str(tmp_path / "images"), num_classes=2, images_per_class=4)
    info = (ModelSaveInfoBuilder().add_model_info(model=model, base_model_id=service.save_model(save_info(model)))
            .add_prov_data(raw_data_path=raw_data, train_kwargs={"number_batches": 1},
                           train_service_wrapper=image_classification_train_wrapper(model, raw_data)).build())
    return stores, service.save_model(info)


def test_versions_trained_on_the_same_dataset_unpack_it_once_per_recovery(provenance_version, tmp_path,
                                                                          monkeypatch):
    """A recovery retraining two versions on one dataset unpacks it once; the next recovery unpacks it again, in
    its own directory (the one before removed its own)."""
    (file_service, dict_service), version_id = provenance_version
    service = ProvenanceSaveService(file_service, dict_service)
    model, raw_data = TinyNet(), str(tmp_path / "images")
    info = (ModelSaveInfoBuilder().add_model_info(model=model, base_model_id=version_id)
            .add_prov_data(raw_data_path=raw_data, train_kwargs={"number_batches": 1},
                           train_service_wrapper=image_classification_train_wrapper(model, raw_data)).build())
    second_id = service.save_model(info)
    dataset = ModelInfo.load(second_id, file_service, dict_service, "unused", load_recursive=True) \
        .recover_info.dataset.raw_data.reference_id
    recovered, recover_file = [], file_service.recover_file

    def spy(file_ref, dst_dir: str) -> None:
        recovered.append(file_ref.reference_id)
        recover_file(file_ref, dst_dir)

    monkeypatch.setattr(file_service, "recover_file", spy)
    for recoveries in (1, 2):
        ProvenanceSaveService(file_service, dict_service).recover_model(second_id, execute_checks=False)
        assert recovered.count(dataset) == recoveries
    assert os.listdir(tmp_path / "data_root") == []


def test_a_lineage_that_loops_raises_integrity_error_instead_of_hanging(provenance_version, monkeypatch):
    """Content ids make a loop of consistent records impossible (each id would have to be a fixed point of the
    hash), so only edited documents can loop. The lineage walk must stop at a loop on its own too: this test
    turns the model documents' id check off, edits two versions into naming each other as base, and recovers."""
    (file_service, dict_service), model_id = provenance_version
    twin_id = forge_record(dict_service, model_id, {CREATED: 0.0})
    dict_service.add_field(model_id, MODEL_INFO, DERIVED_FROM, twin_id)
    dict_service.add_field(twin_id, MODEL_INFO, DERIVED_FROM, model_id)
    monkeypatch.setattr(ModelInfo, "stored_document",
                        lambda info, service: service.recover_dict(info.store_id, MODEL_INFO))
    raised = []

    def recover() -> None:
        try:
            ProvenanceSaveService(file_service, dict_service).recover_model(model_id, execute_checks=False)
        except Exception as error:  # handed to the test thread
            raised.append(error)

    worker = threading.Thread(target=recover, daemon=True)
    worker.start()
    worker.join(_DEADLINE_S)
    assert not worker.is_alive() and isinstance(raised[0], IntegrityError) and "loops" in str(raised[0]), raised
