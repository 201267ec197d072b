"""A model id commits to its whole record, like a git commit id: an edited document or a swapped blob anywhere in
what a recovery reads raises IntegrityError naming it, with checks on or off, before any code is imported."""

import re

import pytest

import mmlib.approaches.base
from mmlib.cli import main
from mmlib.constants import ID
from mmlib.equal import state_dict_equal
from mmlib.errors import IntegrityError, StoreFormatError
from mmlib.maintenance import all_model_ids, collect_garbage, verify
from mmlib.persistence import Store, open_store
from mmlib.persistence.base import FileReference
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.environment import ENVIRONMENT
from mmlib.schema.model_info import CREATED, DERIVED_FROM, MODEL_INFO, RECOVER_INFO_ID, ModelInfo
from mmlib.schema.recover_info import ENVIRONMENT as ENVIRONMENT_ID, MODEL_CLASS_NAME, MODEL_CODE, PARAMETERS, \
    RECOVER_INFO
from mmlib.schema.store_format import CURRENT_FORMAT, FORMAT_DOCUMENT_ID, FORMAT_VERSION, STORE_FORMAT
from save_helpers import save_info, save_update_chain
from tiny_models import TinyNet

HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class CodeImported(Exception):
    """Raised by the patched code loaders: a recovery reached code before it finished checking the record."""


@pytest.fixture
def no_code_runs(monkeypatch):
    """Any import of model code (stored file or import path) fails loudly."""
    def refuse(*args, **kwargs):
        raise CodeImported(args)

    monkeypatch.setattr(mmlib.approaches.base, "create_type", refuse)
    monkeypatch.setattr(mmlib.approaches.base, "import_object", refuse)


def _snapshot_documents(dict_service, model_id: str) -> dict[str, tuple[str, str]]:
    """The documents a snapshot's recovery reads: name -> (type, id)."""
    recover_id = dict_service.recover_dict(model_id, MODEL_INFO)[RECOVER_INFO_ID]
    environment_id = dict_service.recover_dict(recover_id, RECOVER_INFO)[ENVIRONMENT_ID]
    return {"model": (MODEL_INFO, model_id), "recover_info": (RECOVER_INFO, recover_id),
            "environment": (ENVIRONMENT, environment_id)}


def test_model_ids_are_digests_of_their_documents(stores):
    ids, _ = save_update_chain(stores, 3)
    assert all(HEX_DIGEST.fullmatch(model_id) for model_id in ids)
    assert WeightUpdateSaveService(*stores).all_model_ids() == ids
    for model_id in ids:
        fields = {key: value for key, value in stores[1].recover_dict(model_id, MODEL_INFO).items() if key != ID}
        assert ModelInfo._content_id(fields) == model_id
    assert stores[1].recover_dict(ids[1], MODEL_INFO)[DERIVED_FROM] == ids[0]


def test_equal_models_saved_twice_get_two_ids(stores):
    service = BaselineSaveService(*stores)
    model = TinyNet()
    first, second = service.save_model(save_info(model)), service.save_model(save_info(model))
    assert first != second and service.all_model_ids() == [first, second]


@pytest.mark.parametrize("edited, document", [("root snapshot", "model"), ("root snapshot", "recover_info"),
                                               ("root snapshot", "environment"), ("middle version", "model"),
                                               ("recovered version", "model")])
def test_an_edited_document_anywhere_in_a_chain_stops_recovery_before_code_runs(stores, edited, document,
                                                                                no_code_runs):
    ids, _ = save_update_chain(stores, 3)
    if edited == "root snapshot":
        kind, document_id = _snapshot_documents(stores[1], ids[0])[document]
    else:
        kind, document_id = MODEL_INFO, ids[1] if edited == "middle version" else ids[-1]
    key = {MODEL_INFO: CREATED, RECOVER_INFO: MODEL_CLASS_NAME, ENVIRONMENT: "python_version"}[kind]
    stores[1].add_field(document_id, kind, key, "edited")
    for checks in (True, False):
        service = WeightUpdateSaveService(*stores, cache_size=0)
        with pytest.raises(IntegrityError, match=f"{kind} document {document_id} was changed"):
            service.recover_model(ids[-1], execute_checks=checks)


def test_a_swapped_code_blob_never_runs(tmp_path):
    store = open_store(str(tmp_path / "store"))
    marker = tmp_path / "ran"
    service = BaselineSaveService(*store)
    model_id = service.save_model(save_info(TinyNet()))
    hostile = tmp_path / "tiny_models.py"
    hostile.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n\nclass TinyNet:\n    pass\n")
    swapped = FileReference(path=str(hostile))
    store.file_pers_service.save_file(swapped)
    recover_id = store.dict_pers_service.recover_dict(model_id, MODEL_INFO)[RECOVER_INFO_ID]
    store.dict_pers_service.add_field(recover_id, RECOVER_INFO, MODEL_CODE, swapped.reference_id)
    for checks in (True, False):
        with pytest.raises(IntegrityError, match=recover_id):
            BaselineSaveService(*store).recover_model(model_id, execute_checks=checks)
    assert [problem.model_id for problem in verify(store)] == [model_id]
    assert not marker.exists()


def test_a_weights_reference_pointing_at_another_models_weights_is_refused(stores, no_code_runs):
    service = BaselineSaveService(*stores)
    first, second = TinyNet(), TinyNet()
    first_id, second_id = service.save_model(save_info(first)), service.save_model(save_info(second))
    other_weights = stores[1].recover_dict(stores[1].recover_dict(second_id, MODEL_INFO)[RECOVER_INFO_ID],
                                           RECOVER_INFO)[PARAMETERS]
    recover_id = stores[1].recover_dict(first_id, MODEL_INFO)[RECOVER_INFO_ID]
    stores[1].add_field(recover_id, RECOVER_INFO, PARAMETERS, other_weights)
    with pytest.raises(IntegrityError, match=recover_id):
        service.recover_model(first_id, execute_checks=False)


def test_a_base_id_rewritten_to_another_model_is_refused(stores, no_code_runs):
    ids, _ = save_update_chain(stores, 2)
    other_id = BaselineSaveService(*stores).save_model(save_info(TinyNet()))
    stores[1].add_field(ids[1], MODEL_INFO, DERIVED_FROM, other_id)
    with pytest.raises(IntegrityError, match=f"model_info document {ids[1]} was changed"):
        WeightUpdateSaveService(*stores, cache_size=0).recover_model(ids[1], execute_checks=False)


def test_verify_and_gc_see_an_edited_document(tmp_path):
    store = open_store(str(tmp_path / "store"))
    ids, model = save_update_chain(store, 2)
    documents = _snapshot_documents(store.dict_pers_service, ids[0])
    kind, environment_id = documents["environment"]
    store.dict_pers_service.add_field(environment_id, kind, "python_version", "0.0")
    problems = verify(store)
    assert sorted(problem.model_id for problem in problems) == sorted(ids)
    assert all("was changed" in problem.message for problem in problems)
    with pytest.raises(IntegrityError, match="was changed"):
        collect_garbage(store, grace_seconds=0)


def test_the_first_save_records_the_store_format_and_gc_keeps_it(stores):
    fps, dps = stores
    assert not dps.id_exists(FORMAT_DOCUMENT_ID, STORE_FORMAT)
    model_id = BaselineSaveService(*stores).save_model(save_info(TinyNet()))
    assert dps.recover_dict(FORMAT_DOCUMENT_ID, STORE_FORMAT)[FORMAT_VERSION] == CURRENT_FORMAT
    collect_garbage(Store(*stores), grace_seconds=0)
    assert dps.id_exists(FORMAT_DOCUMENT_ID, STORE_FORMAT) and all_model_ids(Store(*stores)) == [model_id]


def _older_store(tmp_path) -> tuple[Store, str]:
    """A store as mmlib 0.1 left it: a model document, no recorded format."""
    store = open_store(str(tmp_path / "store"))
    model_id = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    store.dict_pers_service.delete_dict(FORMAT_DOCUMENT_ID, STORE_FORMAT)
    return store, model_id


def test_a_store_in_the_older_format_is_refused_with_what_to_do(tmp_path, capsys):
    store, model_id = _older_store(tmp_path)
    service = BaselineSaveService(*store)
    for action in (service.all_model_ids, lambda: service.recover_model(model_id),
                   lambda: service.save_model(save_info(TinyNet())), lambda: verify(store),
                   lambda: collect_garbage(store)):
        with pytest.raises(StoreFormatError, match="mmlib 0.1"):
            action()
    assert main(["--store", str(tmp_path / "store"), "ls"]) == 3
    error = capsys.readouterr().err
    assert "mmlib 0.1" in error and "Traceback" not in error and error.count("\n") == 1


def test_a_first_save_beside_a_format_check_does_not_make_the_new_store_look_older(tmp_path, monkeypatch):
    """Two processes save into a new store at once: one reads that no format is recorded, the other then records
    it and saves its first model, and the first then finds a model. It was refused as a store of mmlib 0.1."""
    store = open_store(str(tmp_path / "store"))
    dict_service = store.dict_pers_service
    id_exists = dict_service.id_exists

    def first_save_beside(document_id, document_type):
        found = id_exists(document_id, document_type)
        if document_type == STORE_FORMAT and not found:
            monkeypatch.setattr(dict_service, "id_exists", id_exists)
            BaselineSaveService(*open_store(str(tmp_path / "store"))).save_model(save_info(TinyNet()))
        return found

    monkeypatch.setattr(dict_service, "id_exists", first_save_beside)
    model_id = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    assert len(BaselineSaveService(*store).all_model_ids()) == 2 and model_id


@pytest.mark.parametrize("recorded, message", [(CURRENT_FORMAT + 1, "upgrade mmlib"), ("2", "restore it")])
def test_a_newer_or_edited_store_format_is_refused(tmp_path, recorded, message):
    store = open_store(str(tmp_path / "store"))
    model_id = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    store.dict_pers_service.add_field(FORMAT_DOCUMENT_ID, STORE_FORMAT, FORMAT_VERSION, recorded)
    with pytest.raises(StoreFormatError, match=message):
        BaselineSaveService(*store).recover_model(model_id)


def test_an_untouched_chain_recovers_exactly_without_checks(stores):
    ids, model = save_update_chain(stores, 3)
    recovered = WeightUpdateSaveService(*stores, cache_size=0).recover_model(ids[-1], execute_checks=False).model
    assert state_dict_equal(model.state_dict(), recovered.state_dict())
