"""Garbage collection is safe while other processes save, and removes only what mmlib itself created."""

import os
import time

import pytest

from mmlib import maintenance
from mmlib.equal import state_dict_equal
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService, Store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import MODEL_INFO, ModelInfo
from save_helpers import perturb, save_info
from tiny_models import TinyNet


@pytest.mark.parametrize("service_class", [BaselineSaveService, WeightUpdateSaveService])
def test_gc_in_the_middle_of_a_save_keeps_what_the_save_wrote(stores, monkeypatch, service_class):
    stores = Store(*stores)
    service = service_class(*stores)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    perturb(model)
    persist = ModelInfo.persist

    def gc_then_persist(model_info, *args):
        maintenance.collect_garbage(stores)
        return persist(model_info, *args)

    monkeypatch.setattr(ModelInfo, "persist", gc_then_persist)
    model_id = service.save_model(save_info(model, base_model_id=base_id))
    monkeypatch.undo()
    recovered = service_class(*stores).recover_model(model_id, execute_checks=True).model
    assert state_dict_equal(recovered.state_dict(), model.state_dict())
    assert maintenance.verify(stores) == []


def test_gc_keeps_garbage_that_a_save_reuses_while_gc_runs(stores, monkeypatch):
    stores = Store(*stores)
    service = BaselineSaveService(*stores)
    model = TinyNet()
    dropped_id = service.save_model(save_info(model))
    stores[1].delete_dict(dropped_id, MODEL_INFO)
    time.sleep(0.05)
    live_items = maintenance._live_items
    saved = []

    def save_while_listing(store):
        live = live_items(store)
        saved.append(service.save_model(save_info(model)))
        return live

    monkeypatch.setattr(maintenance, "_live_items", save_while_listing)
    report = maintenance.collect_garbage(stores, grace_seconds=0)
    monkeypatch.undo()
    assert report.kept_young > 0 and report.blobs == []
    recovered = BaselineSaveService(*stores).recover_model(saved[0], execute_checks=True).model
    assert state_dict_equal(recovered.state_dict(), model.state_dict())


def test_gc_removes_only_its_own_old_temp_files_and_follows_no_symlink(tmp_path):
    blob_dir = tmp_path / "user-chosen"
    (blob_dir / "tmp").mkdir(parents=True)
    users_file = blob_dir / "tmp" / "notes.partial"
    users_file.write_text("the user's own file")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mmlib-abc123.partial").write_text("not in the store")
    os.symlink(outside / "mmlib-abc123.partial", blob_dir / "tmp" / "mmlib-link99.partial")
    ours = blob_dir / "tmp" / "mmlib-crash42.partial"
    ours.write_text("left by a crashed save")
    old = time.time() - 2 * maintenance.DEFAULT_GC_GRACE_S
    os.utime(ours, (old, old))
    store = Store(FileSystemPersistenceService(str(blob_dir)), SQLiteDictPersistenceService(str(tmp_path / "m.sqlite")))
    report = maintenance.collect_garbage(store)
    assert report.partial_uploads == ["mmlib-crash42.partial"] and not ours.exists()
    assert users_file.exists() and (outside / "mmlib-abc123.partial").exists()


def test_gc_does_not_follow_a_temp_directory_that_is_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "mmlib-victim1.partial"
    victim.write_text("outside the store")
    old = time.time() - 2 * maintenance.DEFAULT_GC_GRACE_S
    os.utime(victim, (old, old))
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    os.symlink(outside, blob_dir / "tmp")
    store = Store(FileSystemPersistenceService(str(blob_dir)), SQLiteDictPersistenceService(str(tmp_path / "m.sqlite")))
    assert maintenance.collect_garbage(store).partial_uploads == []
    assert victim.exists()
