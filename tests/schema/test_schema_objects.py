"""Schema objects persist and load through every store, with referenced objects and files."""

import os

from mmlib.persistence import FileReference
from mmlib.schema import Environment, FullModelRecoverInfo, ModelInfo, ModelStoreType
from mmlib.schema.schema_obj import METADATA_SIZE
from mmlib.track_env import track_current_environment


def _recover_info(tmp_path):
    code = tmp_path / "net.py"
    code.write_text("class Net:\n    pass\n")
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(1000))
    return FullModelRecoverInfo(parameters_file=FileReference(path=str(weights)),
                                model_code=FileReference(path=str(code)), model_class_name="Net",
                                environment=track_current_environment())


def test_persist_and_load_recursive_with_files(stores, tmp_path):
    fps, dps = stores
    info = ModelInfo(store_type=ModelStoreType.FULL_MODEL, recover_info=_recover_info(tmp_path))
    model_id = info.persist(fps, dps)
    loaded = ModelInfo.load(model_id, fps, dps, str(tmp_path / "restore"), load_recursive=True, load_files=True)
    assert loaded.store_type is ModelStoreType.FULL_MODEL
    assert isinstance(loaded.recover_info, FullModelRecoverInfo)
    assert loaded.recover_info.model_class_name == "Net"
    assert open(loaded.recover_info.model_code.path).read().startswith("class Net")
    assert isinstance(loaded.recover_info.environment, Environment)
    assert loaded.recover_info.environment.pytorch_version == track_current_environment().pytorch_version
    fps.file_size(loaded.recover_info.parameters_file)
    assert loaded.recover_info.parameters_file.size == 1000


def test_placeholders_and_lazy_loading(stores, tmp_path):
    fps, dps = stores
    model_id = ModelInfo(store_type=ModelStoreType.FULL_MODEL, recover_info=_recover_info(tmp_path)).persist(fps, dps)
    shallow = ModelInfo.load(model_id, fps, dps, str(tmp_path))
    assert shallow.recover_info.model_class_name is None
    shallow.recover_info.load_all_fields(fps, dps, str(tmp_path))
    assert shallow.recover_info.model_class_name == "Net"
    assert shallow.recover_info.parameters_file.path is None


def test_size_info_has_metadata_size_at_every_level(stores, tmp_path):
    fps, dps = stores
    model_id = ModelInfo(store_type=ModelStoreType.FULL_MODEL, recover_info=_recover_info(tmp_path)).persist(fps, dps)
    sizes = ModelInfo.load_placeholder(model_id).size_info(fps, dps)
    assert sizes[METADATA_SIZE] > 0 and sizes["recover_info"][METADATA_SIZE] > 0
    assert sizes["recover_info"]["parameters"] == 1000
    assert sizes["recover_info"]["environment"][METADATA_SIZE] > 0


def test_equal_environments_are_one_document(stores):
    fps, dps = stores
    first = track_current_environment().persist(fps, dps)
    second = track_current_environment().persist(fps, dps)
    assert first == second and dps.all_ids_for_type("environment") == [first]


def test_stored_items_lists_every_document_and_blob(stores, tmp_path):
    fps, dps = stores
    info = ModelInfo(store_type=ModelStoreType.FULL_MODEL, recover_info=_recover_info(tmp_path))
    model_id = info.persist(fps, dps)
    items = set(ModelInfo.load_placeholder(model_id).stored_items(dps))
    kinds = sorted(item.kind for item in items)
    assert kinds == ["blob", "blob", "environment", "model_info", "recover_info"]
    assert {item.item_id for item in items if item.kind == "blob"} == set(fps.blob_digests())
