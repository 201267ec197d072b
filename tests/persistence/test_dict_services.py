"""Conformance suite for DictPersistenceService, run against every backend."""

import multiprocessing
import time

import pytest

from mmlib.errors import ModelNotFoundError
from mmlib.persistence import MongoDictPersistenceService, SQLiteDictPersistenceService

ADDERS = 4
FIELDS_PER_ADDER = 25


def test_save_and_recover_round_trip(dict_service):
    document = {"a": 1, "nested": {"b": [1, 2, "x"]}, "s": "text"}
    dict_id = dict_service.save_dict(document, "thing")
    assert isinstance(dict_id, str)
    assert dict_service.recover_dict(dict_id, "thing") == document


def test_given_id_is_used(dict_service):
    assert dict_service.save_dict({"id": "fixed-id", "v": 1}, "thing") == "fixed-id"
    assert dict_service.recover_dict("fixed-id", "thing")["v"] == 1


def test_generated_ids_are_unique_strings(dict_service):
    ids = {dict_service.generate_id() for _ in range(100)}
    assert len(ids) == 100 and all(isinstance(i, str) for i in ids)


def test_id_exists_is_true_only_for_stored_documents(dict_service):
    dict_id = dict_service.save_dict({"v": 1}, "thing")
    assert dict_service.id_exists(dict_id, "thing")
    assert not dict_service.id_exists(dict_id, "other_type")
    assert not dict_service.id_exists("no-such-id", "thing")


def test_unknown_id_raises_model_not_found_which_is_a_key_error(dict_service):
    with pytest.raises(ModelNotFoundError) as info:
        dict_service.recover_dict("no-such-id", "thing")
    assert isinstance(info.value, KeyError)
    assert "no-such-id" in str(info.value)
    with pytest.raises(KeyError):
        dict_service.dict_size("no-such-id", "thing")


def test_all_ids_for_type_lists_in_insertion_order(dict_service):
    ids = [dict_service.save_dict({"n": n}, "thing") for n in range(5)]
    dict_service.save_dict({"n": 99}, "other")
    assert dict_service.all_ids_for_type("thing") == ids
    assert dict_service.all_ids_for_type("missing") == []


def test_add_field_sets_a_value(dict_service):
    dict_id = dict_service.save_dict({"v": 1}, "thing")
    dict_service.add_field(dict_id, "thing", "extra", {"k": [1, 2]})
    assert dict_service.recover_dict(dict_id, "thing") == {"v": 1, "extra": {"k": [1, 2]}}
    with pytest.raises(ModelNotFoundError):
        dict_service.add_field("no-such-id", "thing", "extra", 1)


def _reopened(service):
    """A new service on the same store (a forked child must not use its parent's connections)."""
    if isinstance(service, SQLiteDictPersistenceService):
        return SQLiteDictPersistenceService(service.path)
    return MongoDictPersistenceService(service._mongo_service.host, db_name=service._mongo_service.db_name)


def _add_fields(service, dict_id: str, adder: int, start) -> None:
    service = _reopened(service)
    start.wait()
    for number in range(FIELDS_PER_ADDER):
        service.add_field(dict_id, "thing", f"field-{adder}-{number}", number)


def test_processes_adding_fields_to_one_document_at_once_keep_every_field(dict_service):
    dict_id = dict_service.save_dict({"v": 1}, "thing")
    context = multiprocessing.get_context("fork")
    start = context.Barrier(ADDERS)
    adders = [context.Process(target=_add_fields, args=(dict_service, dict_id, adder, start))
              for adder in range(ADDERS)]
    for process in adders:
        process.start()
    for process in adders:
        process.join(timeout=120)
    assert [process.exitcode for process in adders] == [0] * ADDERS
    expected = {f"field-{adder}-{number}": number for adder in range(ADDERS) for number in range(FIELDS_PER_ADDER)}
    assert dict_service.recover_dict(dict_id, "thing") == {"v": 1, **expected}


def test_dict_size_grows_with_content(dict_service):
    small = dict_service.save_dict({"v": "x"}, "thing")
    large = dict_service.save_dict({"v": "x" * 1000}, "thing")
    assert 0 < dict_service.dict_size(small, "thing") < dict_service.dict_size(large, "thing")


def test_saving_an_existing_id_again_keeps_one_document(dict_service):
    dict_service.save_dict({"id": "same", "v": 1}, "thing")
    dict_service.save_dict({"id": "same", "v": 1}, "thing")
    assert dict_service.all_ids_for_type("thing") == ["same"]


def test_delete_and_types(dict_service):
    dict_id = dict_service.save_dict({"v": 1}, "thing")
    dict_service.save_dict({"v": 1}, "other")
    assert {"thing", "other"} <= set(dict_service.all_types())
    dict_service.delete_dict(dict_id, "thing")
    dict_service.delete_dict(dict_id, "thing")
    assert not dict_service.id_exists(dict_id, "thing")


def test_saving_a_document_again_refreshes_its_time(dict_service):
    dict_id = dict_service.save_dict({"id": "content-1", "value": 1}, "thing")
    first = dict_service.document_times("thing")[dict_id]
    time.sleep(0.02)
    dict_service.save_dict({"id": "content-1", "value": 1}, "thing")
    assert dict_service.document_times("thing")[dict_id] > first
    assert abs(first - time.time()) < 60
