"""Provenance approach: versions stored as data + train service + kwargs, recovered by deterministic retraining."""

import copy
import logging
import os

import pytest
import torch

import mmlib.approaches.base
import mmlib.approaches.provenance
from mmlib.approaches.base import merkle_tree
from mmlib.approaches.model_state import capture
from benchmarks.provenance import store_bytes
from mmlib.constants import ID, MMLIB_CONFIG, PROGRESS_LOGGER
from mmlib.demo.image_classification import OPTIMIZER
from mmlib.demo.image_classification import ImageClassificationTrainWrapper, image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.deterministic import deterministic
from mmlib.errors import ConfigurationError, IntegrityError, InvalidSaveInfoError, ModelNotFoundError
from mmlib.models import MobileNetV2, ResNet18
from mmlib.maintenance import collect_garbage
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService, Store
from mmlib.save import ProvenanceSaveService
from mmlib.schema.dataset import DATASET, RAW_DATA
from mmlib.schema.model_info import (DERIVED_FROM, MODEL_ID, MODEL_INFO, RECORDED_WEIGHTS_HASH, RECOVER_INFO_ID,
                                     STORE_TYPE, WEIGHTS_HASH_INFO, ModelInfo)
from mmlib.schema.recover_info import RECOVER_INFO, TRAIN_INFO
from mmlib.schema.restorable_object import RESTORABLE_OBJECT, STATE_DICT, STATE_DICT_RESTORABLE_OBJECT, STATE_FILE
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.schema.store_type import ModelStoreType
from mmlib.schema.train_info import CARRIED_STATE, TRAIN_KWARGS, TRAIN_SERVICE
from mmlib.track_env import track_current_environment
from provenance_helpers import (TRAIN_KWARGS_2, TinyNet, UnseededNoiseTrainService, WideNet,
                                lazy_optimizer_train_wrapper, prov_save_info, save_trained_version)
from save_helpers import equal, forge_record, perturb, save_info

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    """3 classes x 8 JPEGs of 64x64, generated from a seed."""
    return generate_image_dataset(str(tmp_path_factory.mktemp("images") / "train"))


@pytest.fixture(autouse=True)
def mmlib_config(tmp_path, monkeypatch):
    """An MMLIB_CONFIG ini whose current_data_root is a fresh directory."""
    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\ncurrent_data_root = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))
    return config


@pytest.fixture
def embedded(tmp_path):
    return FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(
        str(tmp_path / "meta.sqlite"))


def sizes_positive(sizes: dict) -> bool:
    """Every byte count is a positive int and every object level has a metadata_size (state_dict maps names)."""
    return "metadata_size" in sizes and all(
        (all(map(sizes_positive, value.values())) if key == "state_dict" else sizes_positive(value))
        if isinstance(value, dict) else isinstance(value, int) and value > 0 for key, value in sizes.items())


def train_info_id(dict_service, model_id):
    recover_info_id = dict_service.recover_dict(model_id, MODEL_INFO)[RECOVER_INFO_ID]
    return dict_service.recover_dict(recover_info_id, RECOVER_INFO)[TRAIN_INFO]


def carried_state(dict_service, model_id):
    """The stored marker of a provenance version: the state objects it carries from its base (None: stored)."""
    return dict_service.recover_dict(train_info_id(dict_service, model_id), TRAIN_INFO)[CARRIED_STATE]


def optimizer_document(dict_service, model_id):
    """The stored document of a provenance version's optimizer wrapper."""
    train_service = dict_service.recover_dict(train_info_id(dict_service, model_id), TRAIN_INFO)[TRAIN_SERVICE]
    wrapper_id = dict_service.recover_dict(train_service, STATE_DICT_RESTORABLE_OBJECT)[STATE_DICT][OPTIMIZER]
    return dict_service.recover_dict(wrapper_id, RESTORABLE_OBJECT)


def run_two_version_flow(file_service, dict_service, model_class, raw_data):
    service = ProvenanceSaveService(file_service, dict_service)
    model = model_class()
    base_id = service.save_model(save_info(model))
    wrapper = image_classification_train_wrapper(model, raw_data, batch_size=4)

    v1_id = save_trained_version(service, model, base_id, raw_data, wrapper)
    v1 = service.recover_model(v1_id, execute_checks=True).model
    assert equal(model, v1)
    blobs_after_v1 = set(file_service.blob_digests())

    v2_id = save_trained_version(service, model, v1_id, raw_data, wrapper)
    v2 = ProvenanceSaveService(file_service, dict_service).recover_model(v2_id, execute_checks=True).model
    assert equal(model, v2)
    assert not equal(v1, v2)
    return service, base_id, v1_id, v2_id, blobs_after_v1


def test_resnet18_two_provenance_versions(stores, raw_data):
    file_service, dict_service = stores
    service, base_id, v1_id, v2_id, blobs_after_v1 = run_two_version_flow(file_service, dict_service, ResNet18,
                                                                          raw_data)
    # base: weights + model code; v1: dataset, train code, optimizer state; v2: nothing (its state is carried)
    assert len(blobs_after_v1) == 5
    assert set(file_service.blob_digests()) == blobs_after_v1
    assert carried_state(dict_service, v1_id) is None and carried_state(dict_service, v2_id) == [OPTIMIZER]
    assert len(dict_service.all_ids_for_type(DATASET)) == 1
    sizes_v1, sizes_v2 = service.model_save_size(v1_id), service.model_save_size(v2_id)
    assert sizes_v1["recover_info"]["dataset"] == sizes_v2["recover_info"]["dataset"]
    assert set(sizes_v2["recover_info"]) == {"metadata_size", "environment", "train_info", "dataset"}
    assert set(sizes_v2["recover_info"]["train_info"]) == {"metadata_size", "train_service", "wrapper_code"}
    state_objs = sizes_v2["recover_info"]["train_info"]["train_service"]["state_dict"]
    assert set(state_objs["optimizer"]) == {"metadata_size", "code_file"}
    assert set(state_objs["dataloader"]) == {"metadata_size"}
    assert sizes_positive(sizes_v2)
    v1_optimizer = sizes_v1["recover_info"]["train_info"]["train_service"]["state_dict"]["optimizer"]
    assert set(v1_optimizer) == {"metadata_size", "code_file", "state_file"}
    assert service.all_model_ids() == [base_id, v1_id, v2_id]


def test_mobilenet_v2_two_provenance_versions(embedded, raw_data):
    run_two_version_flow(*embedded, MobileNetV2, raw_data)


@pytest.fixture
def tiny_version(embedded, raw_data):
    """A base TinyNet and one trained provenance version of it: (service, version id, trained live model)."""
    service = ProvenanceSaveService(*embedded)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    version_id = save_trained_version(service, model, base_id, raw_data,
                                      image_classification_train_wrapper(model, raw_data))
    return service, version_id, model


def test_changed_train_kwargs_stop_recovery_before_any_code_runs(tiny_version, embedded, monkeypatch):
    service, version_id, model = tiny_version
    assert equal(model, service.recover_model(version_id).model)
    train_info = train_info_id(embedded[1], version_id)
    embedded[1].add_field(train_info, TRAIN_INFO, TRAIN_KWARGS, {"number_batches": 3})
    _refuse_code(monkeypatch)
    for checks in (True, False):
        with pytest.raises(IntegrityError, match=f"train_info document {train_info} was changed"):
            service.recover_model(version_id, execute_checks=checks)


def _refuse_code(monkeypatch) -> None:
    """Any import of stored code or of an import path fails: a recovery must have stopped before."""
    def refuse(*args, **kwargs):
        raise RuntimeError(f"code imported: {args}")

    for module in (mmlib.approaches.base, mmlib.approaches.provenance):
        monkeypatch.setattr(module, "create_type", refuse)
    monkeypatch.setattr(mmlib.approaches.base, "import_object", refuse)


def test_a_corrupted_dataset_stops_recovery_before_the_base_is_built(tiny_version, embedded, corrupt_blob,
                                                                     monkeypatch):
    service, version_id, _ = tiny_version
    dataset_id = embedded[1].recover_dict(embedded[1].recover_dict(version_id, MODEL_INFO)[RECOVER_INFO_ID],
                                          RECOVER_INFO)[DATASET]
    digest = embedded[1].recover_dict(dataset_id, DATASET)[RAW_DATA].split("/")[0]
    corrupt_blob(embedded[0], digest)
    _refuse_code(monkeypatch)
    for checks in (True, False):
        with pytest.raises(IntegrityError, match=digest):
            service.recover_model(version_id, execute_checks=checks)


def test_the_weights_hash_recorded_after_the_save_leaves_the_id_alone(tiny_version, embedded):
    service, version_id, model = tiny_version
    file_service, dict_service = embedded
    document = dict_service.recover_dict(version_id, MODEL_INFO)
    assert document.get(WEIGHTS_HASH_INFO) is None
    assert ModelInfo._content_id({key: value for key, value in document.items() if key != ID}) == version_id
    assert dict_service.recover_dict(version_id, RECORDED_WEIGHTS_HASH)[MODEL_ID] == version_id
    assert service.model_save_size(version_id)[WEIGHTS_HASH_INFO]["metadata_size"] > 0
    collect_garbage(Store(*embedded), grace_seconds=0)
    assert equal(model, service.recover_model(version_id, execute_checks=True).model)


def test_an_edited_recorded_weights_hash_fails_the_checked_recovery(tiny_version, embedded):
    service, version_id, model = tiny_version
    dict_service = embedded[1]
    recorded = dict_service.recover_dict(version_id, RECORDED_WEIGHTS_HASH)
    dict_service.save_dict({**recorded, MODEL_ID: "another-model"}, RECORDED_WEIGHTS_HASH)
    with pytest.raises(IntegrityError, match="names another model"):
        service.recover_model(version_id)
    other = merkle_tree(capture(TinyNet())).to_python_dict()
    dict_service.save_dict({**recorded, WEIGHTS_HASH_INFO: other}, RECORDED_WEIGHTS_HASH)
    with pytest.raises(IntegrityError, match="did not reproduce"):
        service.recover_model(version_id)
    assert equal(model, service.recover_model(version_id, execute_checks=False).model)
    service.add_weights_hash_info(version_id, model)
    assert equal(model, service.recover_model(version_id).model)


def test_non_deterministic_training_fails_the_check(embedded, raw_data):
    service = ProvenanceSaveService(*embedded)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    state_objs = image_classification_train_wrapper(model, raw_data).instance.state_objs
    wrapper = ImageClassificationTrainWrapper(instance=UnseededNoiseTrainService(state_objs))
    version_id = save_trained_version(service, model, base_id, raw_data, wrapper)
    with pytest.raises(IntegrityError, match="not deterministic"):
        service.recover_model(version_id)


def test_recovery_without_weights_hash_needs_execute_checks_false(embedded, raw_data):
    service = ProvenanceSaveService(*embedded)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    wrapper = image_classification_train_wrapper(model, raw_data)
    version_id = service.save_model(prov_save_info(model, base_id, raw_data, wrapper))
    deterministic(wrapper.instance.train, [model], TRAIN_KWARGS_2)
    with pytest.raises(IntegrityError, match="add_weights_hash_info"):
        service.recover_model(version_id)
    assert equal(model, service.recover_model(version_id, execute_checks=False).model)


def test_missing_dataset_raises_and_writes_nothing(embedded, raw_data, tmp_path):
    file_service, dict_service = embedded
    service = ProvenanceSaveService(file_service, dict_service)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    blobs, documents = set(file_service.blob_digests()), {t: dict_service.all_ids_for_type(t)
                                                         for t in dict_service.all_types()}
    wrapper = image_classification_train_wrapper(model, raw_data)
    with pytest.raises(InvalidSaveInfoError, match="does not exist"):
        service.save_model(prov_save_info(model, base_id, str(tmp_path / "no-such-data"), wrapper))
    assert set(file_service.blob_digests()) == blobs
    assert {t: dict_service.all_ids_for_type(t) for t in dict_service.all_types()} == documents


def test_save_without_base_or_provenance_is_a_full_snapshot(embedded, raw_data):
    file_service, dict_service = embedded
    service = ProvenanceSaveService(file_service, dict_service)
    model = TinyNet()
    wrapper = image_classification_train_wrapper(model, raw_data)
    first = service.save_model(prov_save_info(model, None, raw_data, wrapper))
    second = service.save_model(save_info(model, base_model_id=first))
    for model_id in (first, second):
        assert dict_service.recover_dict(model_id, MODEL_INFO)[STORE_TYPE] == ModelStoreType.FULL_MODEL.value
        assert equal(model, service.recover_model(model_id).model)
    service.add_weights_hash_info(first, model)
    with pytest.raises(InvalidSaveInfoError, match="provenance versions"):
        service.add_weights_hash_info(first, TinyNet())
    with pytest.raises(ModelNotFoundError):
        service.add_weights_hash_info("no-such-model", model)


def test_recovery_needs_current_data_root(tiny_version, monkeypatch, mmlib_config, tmp_path):
    service, version_id, model = tiny_version
    monkeypatch.delenv(MMLIB_CONFIG)
    with pytest.raises(ConfigurationError, match=MMLIB_CONFIG):
        service.recover_model(version_id)
    monkeypatch.setenv(MMLIB_CONFIG, str(mmlib_config))
    mmlib_config.write_text("[VALUES]\nother = 1\n")
    with pytest.raises(ConfigurationError, match="current_data_root"):
        service.recover_model(version_id)


def test_a_data_root_that_is_a_file_is_a_configuration_error(tiny_version, mmlib_config, tmp_path):
    service, version_id, _ = tiny_version
    data_file = tmp_path / "data-file"
    data_file.write_text("not a directory")
    mmlib_config.write_text(f"[VALUES]\ncurrent_data_root = {data_file}\n")
    with pytest.raises(ConfigurationError, match="not a directory"):
        service.recover_model(version_id)
    mmlib_config.write_text(f"[VALUES]\ncurrent_data_root = {data_file / 'below'}\n")
    with pytest.raises(ConfigurationError, match="cannot make a recovery directory"):
        service.recover_model(version_id)


def test_recovery_works_beside_foreign_files_and_leaves_nothing_behind(tiny_version, mmlib_config, tmp_path):
    """Each recovery unpacks and trains in a directory of its own inside current_data_root, removed afterwards
    (also when the recovery fails): what else the directory holds is never read, replaced or deleted."""
    service, version_id, model = tiny_version
    data_root = tmp_path / "mine"
    data_root.mkdir()
    (data_root / "notes.txt").write_text("keep me")
    (data_root / "class_0").mkdir()
    mmlib_config.write_text(f"[VALUES]\ncurrent_data_root = {data_root}\n")
    for _ in range(2):
        assert equal(model, service.recover_model(version_id).model)
        assert sorted(os.listdir(data_root)) == ["class_0", "notes.txt"]
    service.add_weights_hash_info(version_id, perturb(copy.deepcopy(model)))
    with pytest.raises(IntegrityError, match="did not reproduce"):
        service.recover_model(version_id)
    assert sorted(os.listdir(data_root)) == ["class_0", "notes.txt"]
    assert (data_root / "notes.txt").read_text() == "keep me"


def test_the_original_flow_saves_provenance_without_a_model(embedded, raw_data):
    service = ProvenanceSaveService(*embedded)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    wrapper = image_classification_train_wrapper(model, raw_data)
    info = (ModelSaveInfoBuilder().add_model_info(base_model_id=base_id, env=track_current_environment())
            .add_prov_data(raw_data_path=raw_data, train_kwargs=TRAIN_KWARGS_2, train_service_wrapper=wrapper)
            .build())
    version_id = service.save_model(info)
    deterministic(wrapper.instance.train, [model], TRAIN_KWARGS_2)
    service.add_weights_hash_info(version_id, model)
    assert equal(model, service.recover_model(version_id, execute_checks=True).model)
    with pytest.raises(InvalidSaveInfoError, match="model"):
        service.save_model(ModelSaveInfoBuilder().add_model_info(base_model_id=base_id).build())


def save_chain(service, raw_data, versions, model_class=WideNet, make_wrapper=image_classification_train_wrapper):
    """A snapshot and `versions` provenance versions trained on it one after another with one live SGD (momentum
    0.9) of the train service `make_wrapper` builds: (base id, version ids, the store bytes each save added,
    trained weights after each version)."""
    model = model_class()
    before = store_bytes(service)
    ids = [service.save_model(save_info(model))]
    growth = [store_bytes(service) - before]
    wrapper = make_wrapper(model, raw_data, momentum=0.9)
    trained = []
    for _ in range(versions):
        before = store_bytes(service)
        ids.append(save_trained_version(service, model, ids[-1], raw_data, wrapper))
        growth.append(store_bytes(service) - before)
        trained.append(copy.deepcopy(model.state_dict()))
    return ids[0], ids[1:], growth, trained


def assert_recovers(stores, version_ids, trained, checks=True):
    """Every version recovers with a fresh service to the weights its live training produced, bit-exactly."""
    for version_id, weights in zip(version_ids, trained):
        recovered = ProvenanceSaveService(*stores).recover_model(version_id, execute_checks=checks).model
        assert all(torch.equal(recovered.state_dict()[name], tensor) for name, tensor in weights.items())


def test_only_checkpoints_store_the_optimizer_state(embedded, raw_data):
    service = ProvenanceSaveService(*embedded, checkpoint_interval=3)
    _, ids, growth, trained = save_chain(service, raw_data, 5)
    dict_service = embedded[1]
    assert [carried_state(dict_service, version) for version in ids] == [None, [OPTIMIZER], [OPTIMIZER], None,
                                                                         [OPTIMIZER]]
    assert [STATE_FILE in optimizer_document(dict_service, version) for version in ids] == [True, False, False,
                                                                                           True, False]
    snapshot = growth[0]
    # the momentum buffers are as large as the weights (v1 stores the untrained optimizer's empty state): a
    # version that stored them would add a snapshot's bytes
    assert all(growth[version] < 0.05 * snapshot for version in (2, 3, 5)), (growth, snapshot)
    assert growth[4] > 0.9 * snapshot, (growth, snapshot)
    assert_recovers(embedded, ids, trained)


def test_checkpoint_interval_one_stores_the_state_with_every_version(embedded, raw_data):
    service = ProvenanceSaveService(*embedded, checkpoint_interval=1)
    _, ids, growth, trained = save_chain(service, raw_data, 3)
    assert [carried_state(embedded[1], version) for version in ids] == [None, None, None]
    assert all(size > 0.9 * growth[0] for size in growth[2:]), growth
    assert_recovers(embedded, ids[-1:], trained[-1:])


def test_a_middle_version_retrains_only_the_versions_up_to_it(embedded, raw_data, caplog):
    service = ProvenanceSaveService(*embedded, checkpoint_interval=2)
    _, ids, _, trained = save_chain(service, raw_data, 4, TinyNet)
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        assert_recovers(embedded, ids[2:3], trained[2:3])
    assert [record.args[0] for record in caplog.records if record.name == PROGRESS_LOGGER] == ids[:3]
    assert_recovers(embedded, ids[1:2], trained[1:2], checks=False)


def test_a_train_service_that_restores_its_optimizer_lazily_starts_from_the_carried_state(embedded, raw_data):
    """The original MMlib's pattern: the train wrapper loads the optimizer wrapper by its id and `train` restores
    it when it has no instance yet; versions that carry the state recover exactly, checked."""
    service = ProvenanceSaveService(*embedded, checkpoint_interval=3)
    _, ids, _, trained = save_chain(service, raw_data, 4, TinyNet, lazy_optimizer_train_wrapper)
    assert [carried_state(embedded[1], version) for version in ids] == [None, [OPTIMIZER], [OPTIMIZER], None]
    assert not any(torch.equal(trained[0][name], trained[1][name]) for name in trained[0])
    assert_recovers(embedded, ids, trained)


def test_a_carried_version_stores_nothing_of_the_live_state(embedded, raw_data):
    service = ProvenanceSaveService(*embedded)
    model = TinyNet()
    wrapper = image_classification_train_wrapper(model, raw_data, momentum=0.9)
    v1_id = save_trained_version(service, model, service.save_model(save_info(model)), raw_data, wrapper)
    optimizer = wrapper.instance.state_objs[OPTIMIZER].instance
    saved = [service.save_model(prov_save_info(model, v1_id, raw_data, wrapper))]
    optimizer.load_state_dict({**optimizer.state_dict(), "state": {}})
    saved.append(service.save_model(prov_save_info(model, v1_id, raw_data, wrapper)))
    assert len({train_info_id(embedded[1], version) for version in saved}) == 1


@pytest.mark.parametrize("interval", [0, -1, 2.5, True, "10"])
def test_an_invalid_checkpoint_interval_is_refused(embedded, interval):
    with pytest.raises(InvalidSaveInfoError, match="checkpoint_interval.*default 10"):
        ProvenanceSaveService(*embedded, checkpoint_interval=interval)


def test_a_carried_version_with_a_damaged_chain_raises(embedded, raw_data, corrupt_blob):
    file_service, dict_service = embedded
    service = ProvenanceSaveService(*embedded)
    base_id, ids, _, _ = save_chain(service, raw_data, 3, TinyNet)
    for forged_base, message in ((base_id, "not a provenance version"), ("0" * 64, "not in this store")):
        forged = forge_record(dict_service, ids[1], {DERIVED_FROM: forged_base})
        service.add_weights_hash_info(forged, TinyNet())
        for checks in (True, False):
            with pytest.raises(IntegrityError, match=message):
                service.recover_model(forged, execute_checks=checks)
    digest = optimizer_document(dict_service, ids[0])[STATE_FILE].split("/")[0]
    corrupt_blob(file_service, digest)
    for checks in (True, False):
        with pytest.raises(IntegrityError, match=digest):
            service.recover_model(ids[2], execute_checks=checks)
