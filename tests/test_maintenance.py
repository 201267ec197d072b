"""Store maintenance (what the `mmlib` command runs): listing, details, the version tree, verify and gc."""

import os

import bson
import gridfs
import pytest
import torch
from safetensors.torch import load_file

import mmlib.models
import mmlib.save
from mmlib import maintenance
from mmlib.errors import IntegrityError, ModelNotFoundError
from mmlib.persistence import GridFSFilePersistenceService, Store, open_store
from mmlib.persistence.base import BLOB
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.track_env import track_current_environment
from mmlib.util.hash import state_dict_hash
from save_helpers import equal, forge_record, perturb, save_info
from tiny_models import TinyNet


def _blob(store: Store, model_id: str) -> str:
    """Digest of the blob holding a model's own weights (snapshot parameters or update)."""
    model_info = ModelInfo.load(model_id, store.file_pers_service, store.dict_pers_service, "unused",
                                load_recursive=True)
    reference = getattr(model_info.recover_info, "parameters_file", None) or model_info.recover_info.update
    return reference.reference_id.split("/")[0]


@pytest.fixture
def populated(stores):
    """A store with root -> child -> grandchild and root -> sibling (snapshots), plus an update of the
    grandchild. Returns (store, ids by name, state dict hashes)."""
    store = Store(*stores)
    baseline = mmlib.save.BaselineSaveService(*store)
    model = TinyNet()
    ids, hashes = {}, {}

    def save(name, service, base=None):
        ids[name] = service.save_model(save_info(model, base_model_id=ids.get(base)))
        hashes[ids[name]] = state_dict_hash(model.state_dict())

    save("root", baseline)
    save("child", baseline, "root")
    perturb(model)
    save("grandchild", baseline, "child")
    perturb(model)
    save("sibling", baseline, "root")
    perturb(model, only="fc")
    save("update", mmlib.save.WeightUpdateSaveService(*store), "grandchild")
    return store, ids, hashes


def test_list_models_newest_first_with_sizes(populated):
    store, ids, _ = populated
    models = maintenance.list_models(store)
    assert [m.model_id for m in models] == list(reversed(ids.values()))
    by_id = {m.model_id: m for m in models}
    baseline = mmlib.save.BaselineSaveService(*store)
    assert by_id[ids["root"]].base_id is None and by_id[ids["child"]].base_id == ids["root"]
    assert by_id[ids["child"]].store_type == ModelStoreType.FULL_MODEL.value
    assert by_id[ids["child"]].size == maintenance.total_size(baseline.model_save_size(ids["child"])) > 0
    assert all(m.created.endswith("+00:00") for m in models)


def test_model_details_and_lineage_up_to_the_root(populated):
    store, ids, _ = populated
    details = maintenance.model_details(store, ids["grandchild"])
    assert [v.model_id for v in details.lineage] == [ids["grandchild"], ids["child"], ids["root"]]
    assert details.sizes == mmlib.save.BaselineSaveService(*store).model_save_size(ids["grandchild"])
    assert details.size == maintenance.total_size(details.sizes)
    current = track_current_environment()
    assert details.environment["pytorch_version"] == current.pytorch_version
    assert details.environment["installed_packages"] == len(current.pip_freeze)
    assert details.environment["recorded_by"] == ids["grandchild"]
    with pytest.raises(ModelNotFoundError, match="mmlib ls"):
        maintenance.model_details(store, "no-such-model")


def test_an_update_shows_the_environment_of_its_nearest_snapshot(populated):
    store, ids, _ = populated
    details = maintenance.model_details(store, ids["update"])
    assert details.store_type == ModelStoreType.WEIGHT_UPDATES.value
    assert details.environment["recorded_by"] == ids["grandchild"]


def test_version_tree(populated):
    store, ids, _ = populated
    roots = maintenance.version_tree(store)
    assert [root.version.model_id for root in roots] == [ids["root"]]
    children = roots[0].children
    assert [c.version.model_id for c in children] == [ids["child"], ids["sibling"]]
    assert [g.version.model_id for g in children[0].children] == [ids["grandchild"]]
    assert roots[0].as_dict()["children"][0]["children"][0]["model_id"] == ids["grandchild"]


def test_export_weights_writes_loadable_safetensors(populated, tmp_path):
    store, ids, hashes = populated
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "w.safetensors"
    for model_id in ids.values():
        assert maintenance.export_weights(store, model_id, str(path)) == len(TinyNet().state_dict())
        assert state_dict_hash(load_file(str(path))) == hashes[model_id]
    assert list(path.parent.iterdir()) == [path]


def test_verify_finds_nothing_wrong_in_a_healthy_store(populated):
    store, ids, _ = populated
    assert maintenance.verify(store) == []
    assert maintenance.verify(store, [ids["child"]]) == []
    with pytest.raises(ModelNotFoundError):
        maintenance.verify(store, ["no-such-model"])


def test_verify_names_the_model_and_the_corrupted_blob(populated, corrupt_blob):
    store, ids, _ = populated
    digest = _blob(store, ids["grandchild"])
    corrupt_blob(store.file_pers_service, digest)
    problems = maintenance.verify(store)
    assert {p.model_id for p in problems} == {ids["grandchild"], ids["update"]}
    assert all(p.item == f"blob {digest}" and "corrupted" in p.message and p.kind == maintenance.CORRUPTION
               for p in problems)
    assert "backup" in maintenance.ADVICE[maintenance.CORRUPTION], "what to do is said once, not in each problem"
    assert ids["grandchild"] in str(problems[0]) and digest in str(problems[0])


def test_verify_reports_a_missing_blob_and_a_failing_recovery(populated):
    store, ids, _ = populated
    store.file_pers_service.delete_blob(_blob(store, ids["sibling"]))
    problems = maintenance.verify(store, [ids["sibling"], ids["root"]])
    assert [(p.model_id, "missing" in p.message) for p in problems] == [(ids["sibling"], True)]
    forged_id = forge_record(store.dict_pers_service, ids["child"], {"weights_hash_info": None})
    problems = maintenance.verify(store, [forged_id])
    assert [(p.model_id, p.item) for p in problems] == [(forged_id, "recovery")]
    assert "IntegrityError" in problems[0].message


def _leave_partial_uploads(fps) -> int:
    """Leave uploads unfinished, as a crash in the middle of a save does (raw hooks, not the API); returns how many."""
    if isinstance(fps, GridFSFilePersistenceService):  # one renamed never, one whose chunks got no file document
        database = fps.mongo_service.database
        closed = gridfs.GridFSBucket(database).open_upload_stream("partial-closed-but-never-renamed")
        closed.write(b"x" * 1000)
        closed.close()
        database["fs.chunks"].insert_one({"files_id": bson.ObjectId(), "n": 0, "data": b"y" * 1000})
        return 2
    writer = os.fork()
    if writer == 0:  # a process that dies while it writes a blob
        try:
            fps.write_stream(lambda sink: (sink.write(b"x" * 1000), os._exit(0)))
        finally:
            os._exit(1)
    assert os.waitpid(writer, 0)[1] == 0
    return 1


def test_collect_garbage_removes_only_what_no_model_references(populated):
    store, ids, hashes = populated
    fps, dps = store
    orphan_blob = fps.save_bytes(b"nobody needs me", "orphan.bin").reference_id.split("/")[0]
    orphan_document = dps.save_dict({"note": "left by a crashed save"}, "recover_info")
    partial_count = _leave_partial_uploads(fps)
    blobs_before = set(fps.blob_digests())

    preview = maintenance.collect_garbage(store, dry_run=True, grace_seconds=0)
    assert preview.dry_run and preview.blobs == [orphan_blob]
    assert preview.documents == [{"type": "recover_info", "id": orphan_document}]
    assert len(preview.partial_uploads) == partial_count and preview.count == 2 + partial_count
    assert set(fps.blob_digests()) == blobs_before and dps.id_exists(orphan_document, "recover_info")

    report = maintenance.collect_garbage(store, grace_seconds=0)
    assert (report.blobs, report.documents, report.partial_uploads) == (
        preview.blobs, preview.documents, preview.partial_uploads)
    assert set(fps.blob_digests()) == blobs_before - {orphan_blob}
    assert not dps.id_exists(orphan_document, "recover_info") and fps.partial_uploads() == []
    assert maintenance.collect_garbage(store, grace_seconds=0).count == 0
    for model_id in ids.values():
        assert state_dict_hash(maintenance.recover_model(store, model_id).state_dict()) == hashes[model_id]


def test_collect_garbage_logs_every_removal_and_counts_what_it_kept_young(populated, caplog):
    store, _, _ = populated
    fps, dps = store
    orphan_blob = fps.save_bytes(b"nobody needs me", "orphan.bin").reference_id.split("/")[0]
    orphan_document = dps.save_dict({"note": "left by a crashed save"}, "recover_info")
    partial_count = _leave_partial_uploads(fps)
    young = maintenance.collect_garbage(store, dry_run=True, grace_seconds=3600)
    assert (young.count, young.kept_young) == (0, 2 + partial_count), "a young orphan, document and uploads"
    with caplog.at_level("INFO", logger="mmlib.persistence._gc"):
        report = maintenance.collect_garbage(store, grace_seconds=0)
    assert report.kept_young == 0
    logged = {record.getMessage() for record in caplog.records}
    assert {f"removed blob {orphan_blob}", f"removed recover_info document {orphan_document}"} <= logged
    assert {f"removed unfinished upload {upload_id}" for upload_id in report.partial_uploads} <= logged
    assert len(report.partial_uploads) == partial_count


def test_collect_garbage_keeps_everything_of_every_model(populated):
    store, ids, _ = populated
    needed = {item.item_id for model_id in ids.values()
              for item in ModelInfo.load_placeholder(model_id).stored_items(store.dict_pers_service)
              if item.kind == BLOB}
    assert maintenance.collect_garbage(store, grace_seconds=0).count == 0
    assert needed <= set(store.file_pers_service.blob_digests())


def test_collect_garbage_refuses_a_store_with_a_dangling_reference(populated):
    store, ids, _ = populated
    environment_id = store.dict_pers_service.all_ids_for_type("environment")[0]
    store.dict_pers_service.delete_dict(environment_id, "environment")
    with pytest.raises(IntegrityError, match="mmlib verify"):
        maintenance.collect_garbage(store, dry_run=True, grace_seconds=0)


def test_each_store_type_is_recovered_by_its_save_service(tmp_path):
    store = open_store(str(tmp_path / "store"))
    assert isinstance(maintenance.save_service_for(store, ModelStoreType.FULL_MODEL),
                      mmlib.save.BaselineSaveService)
    assert isinstance(maintenance.save_service_for(store, ModelStoreType.WEIGHT_UPDATES),
                      mmlib.save.WeightUpdateSaveService)
    assert isinstance(maintenance.save_service_for(store, ModelStoreType.PROVENANCE),
                      mmlib.save.ProvenanceSaveService)


def test_a_one_off_recovery_keeps_no_copy_of_the_version_in_memory(tmp_path):
    """`mmlib.load` recovers through a service it drops at once: remembering the version (for saves on top of it)
    would copy every tensor the version shares with its snapshot, most of a partial fine-tune."""
    store = open_store(str(tmp_path / "store"))
    model = mmlib.models.MobileNetV2()
    mmlib.save(model, store, name="m")
    with torch.no_grad():
        model.classifier[1].weight.add_(1.0)
    model_id = mmlib.save(model, store, name="m").id
    one_off = maintenance.save_service_for(store, ModelStoreType.WEIGHT_UPDATES)
    assert equal(one_off.recover_model(model_id).model, model)
    assert one_off.models_read(model_id) is None
    kept_by = mmlib.save.WeightUpdateSaveService(store.file_pers_service, store.dict_pers_service)
    kept_by.recover_model(model_id)
    assert kept_by.models_read(model_id) is not None
