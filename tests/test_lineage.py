"""Lineage walks: a loop or a missing base is a typed error naming the broken link, never a hang."""

import re

import pytest

from mmlib.errors import IntegrityError, MissingBaseError, ModelNotFoundError, NotFoundError
from mmlib.maintenance import lineage, verify
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import DERIVED_FROM, MODEL_INFO
from save_helpers import perturb, promptly, save_info, save_update_chain


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


def _raises_promptly(action, match: str, error_type: type = IntegrityError) -> None:
    """`action` raises `error_type` matching `match` and does not run on (a loop would never end)."""
    outcome = promptly(action)
    assert "error" in outcome and re.search(match, str(outcome["error"]))
    assert isinstance(outcome["error"], error_type), outcome["error"]


def test_a_version_that_names_itself_as_base_stops_saves_and_lineage(store):
    ids, model = save_update_chain(store, 2)
    store.dict_pers_service.add_field(ids[1], MODEL_INFO, DERIVED_FROM, ids[1])
    service = WeightUpdateSaveService(*store, cache_size=0)
    _raises_promptly(lambda: service.save_model(save_info(model, base_model_id=ids[1])), "loops|was changed")
    _raises_promptly(lambda: lineage(store, ids[1]), "loops")


def test_a_missing_base_is_named(store):
    ids, model = save_update_chain(store, 3)
    store.dict_pers_service.delete_dict(ids[1], MODEL_INFO)
    service = WeightUpdateSaveService(*store, cache_size=0)
    _raises_promptly(lambda: service.save_model(save_info(model, base_model_id=ids[2])), ids[1], MissingBaseError)
    _raises_promptly(lambda: lineage(store, ids[2]), ids[1], MissingBaseError)
    assert issubclass(MissingBaseError, NotFoundError) and not issubclass(MissingBaseError, ModelNotFoundError)


def test_verify_does_not_flag_a_version_that_does_not_need_the_missing_document(store):
    ids, model = save_update_chain(store, 2)
    perturb(model)
    snapshot_id = BaselineSaveService(*store).save_model(save_info(model, base_model_id=ids[1]))
    perturb(model)
    update_id = WeightUpdateSaveService(*store).save_model(save_info(model, base_model_id=snapshot_id))
    store.dict_pers_service.delete_dict(ids[1], MODEL_INFO)
    assert verify(store, [snapshot_id, update_id]) == []
