"""Parameter update approaches: changed tensors stored as deltas, chains recovered bit-exactly from bounded reads."""

import dataclasses
import logging
import re
from typing import Optional

import pytest
import torch

from mmlib.approaches.update import UPDATE_FILE_NAME
from mmlib.approaches.version_cache import CachedVersion
from mmlib.approaches.update_format import read_update, write_update
from mmlib.equal import state_dict_equal
from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning, IncompatibleModelError, IntegrityError, \
    InvalidSaveInfoError
from mmlib.models import MobileNetV2, ResNet18
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import MODEL_INFO, WEIGHTS_HASH_INFO, ModelInfo
from mmlib.schema.recover_info import UPDATE
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.schema.store_type import ModelStoreType
from mmlib.track_env import track_current_environment
from mmlib.util.delta import DEFAULT_CODEC, UnknownCodecError
from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree
from save_helpers import equal, forge_record, perturb, save_info, save_update_chain, store_contents

WITH_OBJECT_STORAGE = True  # the save flows and bit flips also run on MongoDB + S3

VARIANTS = {"update": False, "improved_update": True}


@pytest.fixture
def local_stores(tmp_path):
    """The embedded store (SQLite + file system): enough where the flow, not the backend, is under test."""
    return FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(str(tmp_path / "m.db"))


@pytest.fixture(params=list(VARIANTS))
def improved(request) -> bool:
    return VARIANTS[request.param]


def drift(model: torch.nn.Module, scale: float = 1e-4) -> torch.nn.Module:
    """Change every tensor of the model a little, as a training step does (parameters, BN statistics, counters)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * scale)
            else:
                tensor.add_(1)
    return model


def snapshot_of(model: torch.nn.Module) -> dict:
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


def update_reference(stores, model_id: str, tmp_path) -> str:
    info = ModelInfo.load(model_id, *stores, str(tmp_path / "restore"), load_recursive=True)
    return info.recover_info.update.reference_id


def record_calls(monkeypatch, service, method: str, calls: Optional[list] = None) -> list:
    """Record (in `calls`, default a new list) the arguments of every call of `service.method`: the blobs
    `read_bytes` reads (weights, snapshots and updates), the documents `recover_dict` reads."""
    calls = [] if calls is None else calls
    original = getattr(service, method)

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(service, method, spy)
    return calls


def count_reads(monkeypatch, file_service) -> list:
    """Record every blob read: whole (`read_bytes`) or front to back (`verified_reader`, update recoveries)."""
    return record_calls(monkeypatch, file_service, "verified_reader",
                        record_calls(monkeypatch, file_service, "read_bytes"))


def save_chain(service, model, versions: int) -> tuple[list, list]:
    """Save `model` and `versions` drifted versions of it, each derived from the one before: (ids, states)."""
    ids, states = [service.save_model(save_info(model))], [snapshot_of(model)]
    for _ in range(versions):
        ids.append(service.save_model(save_info(drift(model), base_model_id=ids[-1])))
        states.append(snapshot_of(model))
    return ids, states


def test_chain_recovers_bit_exactly_on_every_store(stores, improved):
    service = WeightUpdateSaveService(*stores, improved_version=improved)
    ids, states = save_chain(service, MobileNetV2(), 2)
    fresh = WeightUpdateSaveService(*stores, improved_version=improved)
    for model_id, state in zip(ids, states):
        assert state_dict_equal(fresh.recover_model(model_id).model.state_dict(), state)
    sizes = service.model_save_size(ids[-1])
    assert set(sizes) == {"metadata_size", "recover_info"}
    assert set(sizes["recover_info"]) == {"metadata_size", "update"}
    assert ModelInfo.load(ids[-1], *stores, "unused", load_recursive=True).recover_info.update_type == DEFAULT_CODEC


@pytest.mark.parametrize("codec", [DEFAULT_CODEC, "xor-shuffle-zstd1", "sub-zstd3", "plain", "plain-shuffle-zstd1"])
def test_every_codec_recovers_a_chain_with_keyframes_bit_exactly(local_stores, codec):
    service = WeightUpdateSaveService(*local_stores, codec=codec, keyframe_interval=2)
    ids, states = save_chain(service, MobileNetV2(), 3)
    service.clear_cache()
    for model_id, state in zip(ids, states):
        assert state_dict_equal(service.recover_model(model_id).model.state_dict(), state)


def test_identical_derived_model_stores_an_update_under_10_kb(local_stores, improved):
    service = WeightUpdateSaveService(*local_stores, improved_version=improved)
    model = ResNet18()
    base_id = service.save_model(save_info(model))
    child_id = service.save_model(save_info(model, base_model_id=base_id))
    assert service.model_save_size(child_id)["recover_info"]["update"] < 10_000
    assert state_dict_equal(service.recover_model(child_id).model.state_dict(), model.state_dict())


def test_improved_version_finds_changes_without_reading_the_base(local_stores, monkeypatch, tmp_path):
    model = MobileNetV2()
    base_id = BaselineSaveService(*local_stores).save_model(save_info(model))
    reads = count_reads(monkeypatch, local_stores[0])
    improved_id = WeightUpdateSaveService(*local_stores).save_model(save_info(model, base_model_id=base_id))
    assert reads == []
    paper_id = WeightUpdateSaveService(*local_stores, improved_version=False).save_model(
        save_info(model, base_model_id=base_id))
    assert len(reads) == 1
    assert update_reference(local_stores, improved_id, tmp_path) == update_reference(local_stores, paper_id, tmp_path)


def test_saving_a_chain_from_the_cache_reads_no_keyframe_from_the_store(local_stores, monkeypatch):
    service = WeightUpdateSaveService(*local_stores, keyframe_interval=3)
    model = MobileNetV2()
    ids = [service.save_model(save_info(model))]
    reads = count_reads(monkeypatch, local_stores[0])
    for _ in range(5):
        ids.append(service.save_model(save_info(drift(model), base_model_id=ids[-1])))
    assert reads == []
    assert state_dict_equal(WeightUpdateSaveService(*local_stores).recover_model(ids[-1]).model.state_dict(),
                            model.state_dict())


def test_deltas_are_smaller_than_plain_changed_tensors(local_stores):
    model = MobileNetV2()
    base_id = BaselineSaveService(*local_stores).save_model(save_info(model))
    snapshot = BaselineSaveService(*local_stores).model_save_size(base_id)["recover_info"]["parameters"]
    perturb(model, scale=1e-6, only="classifier")
    sizes = {}
    for codec in ("plain", DEFAULT_CODEC):
        service = WeightUpdateSaveService(*local_stores, codec=codec)
        model_id = service.save_model(save_info(model, base_model_id=base_id))
        sizes[codec] = service.model_save_size(model_id)["recover_info"]["update"]
    assert sizes["plain"] < 0.5 * snapshot
    assert sizes[DEFAULT_CODEC] < 0.6 * sizes["plain"]


@pytest.mark.parametrize("make_model, init_args", [(ResNet18, None), (MobileNetV2, {"num_classes": 10})],
                         ids=["other class", "other shape"])
def test_other_architecture_is_stored_as_a_snapshot_with_a_warning(local_stores, improved, make_model, init_args):
    service = WeightUpdateSaveService(*local_stores, improved_version=improved)
    base_id = service.save_model(save_info(MobileNetV2()))
    model = make_model(**(init_args or {}))
    with pytest.warns(UserWarning, match="full snapshot"):
        model_id = service.save_model(save_info(model, base_model_id=base_id, init_args=init_args))
    assert "parameters" in service.model_save_size(model_id)["recover_info"]
    assert equal(service.recover_model(model_id).model, model)
    strict = WeightUpdateSaveService(*local_stores, improved_version=improved, updates_only=True)
    before = store_contents(*local_stores)
    with pytest.raises(IncompatibleModelError, match="updates_only=False"):
        strict.save_model(save_info(model, base_model_id=base_id, init_args=init_args))
    assert store_contents(*local_stores) == before


def test_a_tensor_whose_dtype_changed_is_no_update_of_its_base(local_stores, improved):
    service = WeightUpdateSaveService(*local_stores, improved_version=improved)
    model = MobileNetV2()
    base_id = service.save_model(save_info(model))
    model.classifier[1].bias.data = model.classifier[1].bias.data.double()
    strict = WeightUpdateSaveService(*local_stores, improved_version=improved, updates_only=True)
    with pytest.raises(IncompatibleModelError, match=r"tensor 'classifier.1.bias' is torch.float64 \(1000,\), in "
                                                     f"base model {base_id} it is torch.float32 \\(1000,\\)"):
        strict.save_model(save_info(model, base_model_id=base_id))


def test_execute_checks_verifies_every_version_of_a_chain(local_stores, improved):
    service = WeightUpdateSaveService(*local_stores, improved_version=improved)
    ids, states = save_chain(service, MobileNetV2(), 2)
    service.clear_cache()
    _, dict_service = local_stores
    wrong = WeightDictMerkleTree.from_state_dict(states[0]).to_python_dict()
    for model_id, state in zip(ids[1:], states[1:]):
        forged_id = forge_record(dict_service, model_id, {WEIGHTS_HASH_INFO: wrong})
        with pytest.raises(IntegrityError, match=forged_id):
            service.recover_model(forged_id, execute_checks=True)
        assert state_dict_equal(service.recover_model(forged_id, execute_checks=False).model.state_dict(), state)
    for model_id in ids[1:]:
        dict_service.add_field(model_id, MODEL_INFO, WEIGHTS_HASH_INFO, wrong)
        for checks in (True, False):
            with pytest.raises(IntegrityError, match=f"{model_id} was changed"):
                service.recover_model(model_id, execute_checks=checks)


def test_corrupted_update_blob_raises_integrity_error(stores, corrupt_blob, tmp_path):
    service = WeightUpdateSaveService(*stores)
    ids, states = save_chain(service, MobileNetV2(), 2)
    service.clear_cache()
    digest = update_reference(stores, ids[1], tmp_path).split("/")[0]
    corrupt_blob(stores[0], digest)
    for checks in (True, False):
        with pytest.raises(IntegrityError, match=digest):
            service.recover_model(ids[1], execute_checks=checks)
        # version 2 changed every tensor and stores each as a delta of its keyframe (the snapshot), not of
        # version 1, so it does not need version 1's blob
        assert state_dict_equal(service.recover_model(ids[2], execute_checks=checks).model.state_dict(), states[2])


def test_an_update_blob_with_a_payload_longer_than_its_tensor_raises_integrity_error(local_stores, tmp_path):
    file_service, dict_service = local_stores
    (_, update_id), _ = save_update_chain(local_stores, 2)
    index = read_update(file_service.read_bytes(update_reference(local_stores, update_id, tmp_path)), update_id)
    key, tensor = next(iter(index.stored.items()))
    stored = {**index.stored, key: dataclasses.replace(tensor, payload=bytes(tensor.payload) + b"\0" * 8)}
    digest = file_service.write_stream(
        lambda sink: write_update(sink, index.snapshot_id, list(index.locations), index.locations, stored))
    forged_id = forge_record(dict_service, update_id, **{UPDATE: f"{digest}/{UPDATE_FILE_NAME}"})
    with pytest.raises(IntegrityError, match="payload"):
        WeightUpdateSaveService(*local_stores).recover_model(forged_id, execute_checks=False)


@pytest.mark.parametrize("cached", [True, False], ids=["saved-from-cache", "saved-from-store"])
def test_any_version_reads_at_most_its_own_blob_and_one_keyframe(local_stores, monkeypatch, cached):
    interval = 3
    service = WeightUpdateSaveService(*local_stores, keyframe_interval=interval, cache_size=2 if cached else 0)
    ids, states = save_chain(service, MobileNetV2(), 7)
    service.clear_cache()
    reads = count_reads(monkeypatch, local_stores[0])
    for model_id, state in zip(ids, states):
        reads.clear()
        assert state_dict_equal(service.recover_model(model_id).model.state_dict(), state)
        assert 1 <= len(reads) <= 2
    sizes = [service.model_save_size(model_id)["recover_info"]["update"] for model_id in ids[1:]]
    keyframes = [version for version, size in enumerate(sizes, start=1) if size > 1.2 * min(sizes)]
    assert keyframes == [3, 6]


def test_saving_on_a_recovered_model_trained_in_place(local_stores):
    service = WeightUpdateSaveService(*local_stores)
    model = MobileNetV2()
    base_id = service.save_model(save_info(model))
    base_state = snapshot_of(model)
    recovered = service.recover_model(base_id).model
    drift(model)
    drift(recovered)
    child_id = service.save_model(save_info(recovered, base_model_id=base_id))
    sibling_id = service.save_model(save_info(model, base_model_id=base_id))
    fresh = WeightUpdateSaveService(*local_stores)
    assert state_dict_equal(fresh.recover_model(base_id).model.state_dict(), base_state)
    assert state_dict_equal(fresh.recover_model(child_id).model.state_dict(), recovered.state_dict())
    assert state_dict_equal(fresh.recover_model(sibling_id).model.state_dict(), model.state_dict())
    grandchild_id = fresh.save_model(save_info(drift(model), base_model_id=sibling_id))
    assert state_dict_equal(service.recover_model(grandchild_id).model.state_dict(), model.state_dict())


def test_without_a_cache_saves_read_only_what_they_need(local_stores):
    service = WeightUpdateSaveService(*local_stores, cache_size=0)
    ids, states = save_chain(service, MobileNetV2(), 2)
    for model_id, state in zip(ids, states):
        assert state_dict_equal(service.recover_model(model_id).model.state_dict(), state)


def test_baseline_refuses_an_update_and_updates_build_on_baseline_snapshots(local_stores):
    model = MobileNetV2()
    base_id = BaselineSaveService(*local_stores).save_model(save_info(model))
    child_id = WeightUpdateSaveService(*local_stores).save_model(save_info(drift(model), base_model_id=base_id))
    with pytest.raises(IncompatibleModelError, match="WeightUpdateSaveService"):
        BaselineSaveService(*local_stores).recover_model(child_id)
    info = ModelInfo.load(child_id, *local_stores, "unused")
    assert info.store_type == ModelStoreType.WEIGHT_UPDATES and info.derived_from == base_id
    assert state_dict_equal(WeightUpdateSaveService(*local_stores).recover_model(child_id).model.state_dict(),
                            model.state_dict())


def test_invalid_options_are_rejected(local_stores):
    with pytest.raises(UnknownCodecError, match=DEFAULT_CODEC):
        WeightUpdateSaveService(*local_stores, codec="zip")
    with pytest.raises(InvalidSaveInfoError, match="keyframe_interval"):
        WeightUpdateSaveService(*local_stores, keyframe_interval=0)



def test_an_environment_difference_warns_unless_the_service_is_strict(local_stores):
    elsewhere = track_current_environment()
    elsewhere.pytorch_version = "1.0.0"
    model = MobileNetV2()
    service = WeightUpdateSaveService(*local_stores)
    base_id = service.save_model(ModelSaveInfoBuilder().add_model_info(env=elsewhere, model=model).build())
    child_id = service.save_model(save_info(drift(model), base_model_id=base_id))
    for model_id in (base_id, child_id):
        with pytest.warns(EnvironmentMismatchWarning, match="torch 1.0.0 -> "):
            service.recover_model(model_id)
        with pytest.raises(EnvironmentMismatchError, match="torch 1.0.0"):
            WeightUpdateSaveService(*local_stores, strict_env=True).recover_model(model_id)


def test_saving_an_update_logs_how_many_tensors_it_stored(local_stores, caplog):
    service = WeightUpdateSaveService(*local_stores)
    model = MobileNetV2()
    base_id = service.save_model(save_info(model))
    with torch.no_grad():
        model.classifier[1].bias.add_(1)
    with caplog.at_level(logging.DEBUG, logger="mmlib.approaches.update"):
        child_id = service.save_model(save_info(model, base_model_id=base_id))
    assert f"saved model {child_id} as an update of {base_id}: 1 of {len(model.state_dict())} tensors stored" \
        in caplog.messages


@pytest.mark.parametrize("edit, difference", [("add", "added: ['extra'], missing: []"),
                                              ("remove", "added: [], missing: ['extra']")])
def test_a_model_with_other_state_dict_keys_is_no_update_of_its_base(local_stores, improved, monkeypatch, edit,
                                                                     difference):
    """The class builds one more buffer at one of the two saves (as a class reading a setting would), so both
    saves pass validation and only the keys differ."""
    built = MobileNetV2.__init__

    def build_with_extra(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self.register_buffer("extra", torch.zeros(1))

    service = WeightUpdateSaveService(*local_stores, improved_version=improved, updates_only=True)
    if edit == "remove":
        monkeypatch.setattr(MobileNetV2, "__init__", build_with_extra)
    base_id = service.save_model(save_info(MobileNetV2()))
    monkeypatch.undo()
    if edit == "add":
        monkeypatch.setattr(MobileNetV2, "__init__", build_with_extra)
    with pytest.raises(IncompatibleModelError, match=re.escape(f"of base model {base_id} ({difference})")):
        service.save_model(save_info(MobileNetV2(), base_model_id=base_id))


def test_a_recovery_reads_each_document_and_blob_once(local_stores, monkeypatch):
    service = WeightUpdateSaveService(*local_stores, keyframe_interval=3)
    ids, _ = save_chain(service, MobileNetV2(), 4)
    service.clear_cache()
    file_service, dict_service = local_stores
    blobs, documents = count_reads(monkeypatch, file_service), record_calls(monkeypatch, dict_service, "recover_dict")
    for model_id in ids:
        blobs.clear()
        documents.clear()
        service.recover_model(model_id)
        assert len(blobs) == len(set(blobs)) and len(documents) == len(set(documents)), (blobs, documents)



def stored_entries(stores, model_id: str, tmp_path) -> dict:
    """The tensors a version's update blob stores (key -> StoredTensor)."""
    reference = update_reference(stores, model_id, tmp_path)
    return read_update(memoryview(stores[0].read_bytes(reference)), model_id).stored


def test_versions_after_deltas_that_did_not_pay_are_stored_in_full_until_deltas_are_tried_again(local_stores,
                                                                                               tmp_path):
    """Noise-like changes give deltas as large as the tensors: the versions after such a version store compressed
    full copies (no keyframe kept alive), `keyframe_interval` of them, then deltas are tried again; a version whose
    deltas pay is followed by deltas. Every version comes back exactly."""
    interval = 3
    service = WeightUpdateSaveService(*local_stores, keyframe_interval=interval)
    model = ResNet18()
    ids, states = [service.save_model(save_info(model))], [snapshot_of(model)]

    def save(change) -> None:
        with torch.no_grad():
            change()
        ids.append(service.save_model(save_info(model, base_model_id=ids[-1])))
        states.append(snapshot_of(model))

    for _ in range(1 + interval):  # the first one's deltas do not pay
        save(lambda: drift(model, scale=1.0))
    for row in range(2):  # a small change of one tensor: its delta pays
        save(lambda: model.fc.weight[row, :4].add_(1e-3))
    in_full = [all(entry.delta_of is None for entry in stored_entries(local_stores, model_id, tmp_path).values())
               for model_id in ids[1:]]
    assert in_full == [False] + [True] * interval + [False, False]
    assert stored_entries(local_stores, ids[2], tmp_path)["layer1.0.conv1.weight"].codec.name == "plain-planes-zstd1"
    service.clear_cache()
    for model_id, state in zip(ids, states):
        assert state_dict_equal(service.recover_model(model_id).model.state_dict(), state)


def test_full_copies_are_compressed_where_deltas_did_not_pay_and_plain_at_the_keyframe_interval(local_stores,
                                                                                                tmp_path):
    """Trained float32 weights have few distinct exponents: their sign and exponent byte plane shrinks. A keyframe
    of the interval, which every delta version after it reads, is stored plain (read straight into the tensor)."""
    service = WeightUpdateSaveService(*local_stores, keyframe_interval=2)
    model = ResNet18()
    ids = [service.save_model(save_info(model))]
    for scale in (1.0, 1.0, 1.0, 1e-4, 1e-4):  # deltas of noise do not pay: the next 2 versions are stored in full
        ids.append(service.save_model(save_info(drift(model, scale=scale), base_model_id=ids[-1])))
    codecs = [{entry.codec.name for entry in stored_entries(local_stores, model_id, tmp_path).values()}
              for model_id in ids[1:]]
    assert codecs == [{DEFAULT_CODEC}, {"plain-planes-zstd1"}, {"plain-planes-zstd1"}, {DEFAULT_CODEC}, {"plain"}]
    compressed = stored_entries(local_stores, ids[2], tmp_path).values()
    raw = sum(entry.nbytes for entry in compressed)
    assert sum(memoryview(entry.payload).nbytes for entry in compressed) < 0.95 * raw
    service.clear_cache()
    assert state_dict_equal(service.recover_model(ids[-1]).model.state_dict(), model.state_dict())


def test_a_pruned_lineage_compresses_the_keyframes_of_the_interval(local_stores, tmp_path):
    service = WeightUpdateSaveService(*local_stores, keyframe_interval=1, pruned=True)
    model = ResNet18()
    base_id = service.save_model(save_info(model))
    model_id = service.save_model(save_info(drift(model), base_model_id=base_id))
    assert {entry.codec.name for entry in stored_entries(local_stores, model_id, tmp_path).values()} == \
        {"plain-planes-zstd1"}
    service.clear_cache()
    assert state_dict_equal(service.recover_model(model_id).model.state_dict(), model.state_dict())


@pytest.mark.parametrize("share, pays, pays_when_pruned", [(0.6, True, True), (0.75, True, False),
                                                           (0.85, False, False), (None, True, True)])
def test_in_a_pruned_lineage_a_delta_must_also_pay_for_the_keyframe_it_keeps(local_stores, share, pays,
                                                                              pays_when_pruned):
    """Deltas of 0.75 of their tensors' bytes are smaller than compressed full copies (about 0.84): kept where
    every version is kept, given up where retention prunes the keyframe's version (its blob would stay)."""
    base = CachedVersion({}, {}, "snapshot", {}, delta_share=share)
    assert WeightUpdateSaveService(*local_stores)._deltas_pay(base) is pays
    assert WeightUpdateSaveService(*local_stores, pruned=True)._deltas_pay(base) is pays_when_pruned
