"""Removal and garbage collection racing derived saves in other processes never leave a broken listed model."""

import collections
import json
import multiprocessing
import threading
import time
from typing import Callable, Optional

import pytest
import torch

from mmlib import maintenance
from mmlib.errors import ModelNotFoundError, StoreUnavailableError
from mmlib.persistence import _coordination as coordination
from mmlib.persistence import open_store
from mmlib.persistence._filesystem import FileSystemPersistenceService
from mmlib.persistence._sqlite import SQLiteDictPersistenceService
from mmlib.persistence.store import Store
from mmlib.save import WeightUpdateSaveService
from race_workers import derive_until, remove_until
from mmlib.schema.model_info import MODEL_INFO
from save_helpers import save_info
from tiny_models import TinyNet

RACE_SECONDS = 12.0
SAVERS = 2


@pytest.fixture(scope="module")
def forkserver():
    """Children come from a forkserver that imported torch once, so each starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mmlib.save", "mmlib.maintenance", "race_workers"])
    return context


def test_derived_saves_against_rm_and_gc_leave_every_listed_model_recoverable(tmp_path, forkserver):
    store_dir = str(tmp_path / "store")
    service = WeightUpdateSaveService(*open_store(store_dir))
    service.save_model(save_info(TinyNet()))
    deadline = time.time() + RACE_SECONDS
    workers = [forkserver.Process(target=derive_until, args=(store_dir, deadline, seed, str(tmp_path / f"{seed}")))
               for seed in range(SAVERS)]
    workers.append(forkserver.Process(target=remove_until, args=(store_dir, deadline, 99, str(tmp_path / "rm"))))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=RACE_SECONDS + 120)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    outcomes: collections.Counter = collections.Counter()
    for name in [*map(str, range(SAVERS)), "rm"]:
        outcomes.update(json.loads((tmp_path / name).read_text()))
    print(dict(outcomes))
    assert outcomes["saved"] > 0 and outcomes["removed"] > 0 and outcomes["collected"] > 0, outcomes

    store = open_store(store_dir)
    assert maintenance.verify(store) == []
    fresh = WeightUpdateSaveService(*store)
    for model_id in fresh.all_model_ids():
        fresh.recover_model(model_id, execute_checks=True)


class _HookedDocuments(SQLiteDictPersistenceService):
    """A SQLite document store that runs `before_model_commit` once, just before the next model document is
    written: the moment another process's `rm` or gc would hurt a save most."""

    before_model_commit: Optional[Callable[[], None]] = None

    def save_dict(self, insert_dict: dict, represent_type: str) -> str:
        hook = self.before_model_commit
        if represent_type == MODEL_INFO and hook is not None:
            self.before_model_commit = None
            hook()
        return super().save_dict(insert_dict, represent_type)


@pytest.fixture
def hooked_store(tmp_path):
    """(service, the store as maintenance takes it, its hooked document store) with one snapshot saved; the id."""
    documents = _HookedDocuments(str(tmp_path / "metadata.sqlite"))
    store = Store(FileSystemPersistenceService(str(tmp_path / "blobs")), documents)
    service = WeightUpdateSaveService(*store)
    return service, store, documents, service.save_model(save_info(TinyNet()))


def test_a_base_removed_while_a_save_runs_withdraws_the_save(hooked_store):
    service, store, documents, root_id = hooked_store
    base_id = service.save_model(save_info(TinyNet(), base_model_id=root_id))
    documents.before_model_commit = lambda: maintenance.remove_model(store, base_id)
    with pytest.raises(ModelNotFoundError, match=f"base model {base_id} was removed while"):
        service.save_model(save_info(TinyNet(), base_model_id=base_id))
    assert maintenance.all_model_ids(store) == [root_id]
    assert maintenance.verify(store) == []


def test_a_save_committing_while_its_base_is_being_removed_withdraws(hooked_store):
    service, store, documents, root_id = hooked_store
    base_id = service.save_model(save_info(TinyNet(), base_model_id=root_id))
    with coordination.removal_marker(store.dict_pers_service, [base_id]):
        with pytest.raises(ModelNotFoundError, match="was removed while"):
            service.save_model(save_info(TinyNet(), base_model_id=base_id))
    assert maintenance.all_model_ids(store) == [root_id, base_id]
    service.save_model(save_info(TinyNet(), base_model_id=base_id))  # once the removal gave up, saves go on


def test_a_save_committing_between_the_removal_marker_and_the_scan_withdraws(hooked_store):
    service, store, documents, root_id = hooked_store
    base_id = service.save_model(save_info(TinyNet(), base_model_id=root_id))
    real_descendants = maintenance.descendants
    withdrawn = []

    def descendants_after_a_save(*args):
        if not withdrawn:  # a save that had passed its base check commits after rm's marker, before its scan
            with pytest.raises(ModelNotFoundError, match="was removed while"):
                service.save_model(save_info(TinyNet(), base_model_id=base_id))
            withdrawn.append(True)
        return real_descendants(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maintenance, "descendants", descendants_after_a_save)
        assert maintenance.remove_model(store, base_id) == [base_id]
    assert withdrawn and maintenance.all_model_ids(store) == [root_id]
    assert maintenance.verify(store) == []


def test_gc_without_grace_keeps_what_a_running_save_wrote(hooked_store):
    service, store, documents, root_id = hooked_store
    reports = []
    documents.before_model_commit = lambda: reports.append(maintenance.collect_garbage(store, grace_seconds=0))
    model = TinyNet()
    model_id = service.save_model(save_info(model, base_model_id=root_id))
    assert reports[0].count == 0 and reports[0].kept_young > 0
    recovered = WeightUpdateSaveService(*store).recover_model(model_id).model.state_dict()
    assert all(torch.equal(recovered[name], value) for name, value in model.state_dict().items())


def test_a_save_whose_items_gc_took_fails_and_lists_nothing(hooked_store, monkeypatch):
    service, store, documents, root_id = hooked_store
    monkeypatch.setattr(coordination, "oldest_save_start", lambda dps: float("inf"))  # as if the lease were lost
    documents.before_model_commit = lambda: maintenance.collect_garbage(store, grace_seconds=0)
    with pytest.raises(StoreUnavailableError, match="garbage collection removed .* save it again"):
        service.save_model(save_info(TinyNet(), base_model_id=root_id))
    assert maintenance.all_model_ids(store) == [root_id]
    assert maintenance.verify(store) == []


def test_a_save_waits_for_another_process_s_running_gc(hooked_store):
    service, store, documents, root_id = hooked_store
    dps = store.dict_pers_service
    run_id = dps.save_dict({}, coordination.GC_RUNNING)  # as a gc in another process marks its run
    finished = threading.Timer(0.5, lambda: (dps.save_dict({"id": run_id}, coordination.GC_FINISHED),
                                             dps.delete_dict(run_id, coordination.GC_RUNNING)))
    finished.start()
    start = time.monotonic()
    service.save_model(save_info(TinyNet(), base_model_id=root_id))
    assert time.monotonic() - start >= 0.4
    finished.join()


def test_a_save_gives_up_on_a_gc_that_runs_too_long_and_lists_nothing(hooked_store, monkeypatch):
    service, store, documents, root_id = hooked_store
    monkeypatch.setattr(coordination, "MAX_GC_WAIT_S", 0.2)
    store.dict_pers_service.save_dict({}, coordination.GC_RUNNING)
    with pytest.raises(StoreUnavailableError, match="garbage collection .* running for over"):
        service.save_model(save_info(TinyNet(), base_model_id=root_id))
    assert maintenance.all_model_ids(store) == [root_id]


def test_markers_left_by_dead_processes_block_nothing_and_gc_collects_them(hooked_store):
    service, store, documents, root_id = hooked_store
    base_id = service.save_model(save_info(TinyNet(), base_model_id=root_id))
    store.dict_pers_service.save_dict({}, coordination.GC_RUNNING)
    store.dict_pers_service.save_dict({}, coordination.SAVE_LEASE)
    with coordination.removal_marker(store.dict_pers_service, [base_id]):
        documents.connection().execute("UPDATE documents SET created = created - 100000 WHERE type IN (?, ?, ?)",
                                       (coordination.GC_RUNNING, coordination.SAVE_LEASE,
                                        coordination.REMOVAL_MARKER))
        start = time.monotonic()
        service.save_model(save_info(TinyNet(), base_model_id=base_id))
        assert time.monotonic() - start < coordination.GC_HEARTBEAT_S
    maintenance.collect_garbage(store, grace_seconds=0)
    assert not any(store.dict_pers_service.all_ids_for_type(kind) for kind in
                   (coordination.GC_RUNNING, coordination.SAVE_LEASE, coordination.REMOVAL_MARKER))


def test_gc_skips_a_model_removed_or_withdrawn_after_it_listed_it_and_sees_blobs_saved_since(hooked_store,
                                                                                             monkeypatch):
    service, store, documents, root_id = hooked_store
    gone_id = service.save_model(save_info(TinyNet(), base_model_id=root_id))
    maintenance.remove_model(store, gone_id)
    listed = [root_id, gone_id]  # as gc listed them just before the removal
    monkeypatch.setattr(maintenance, "all_model_ids", lambda _: listed)
    real_digests = store.file_pers_service.blob_digests
    newer_id = []

    def digests_then_a_save():  # a save commits a new blob and its model after gc first listed the blobs
        digests = list(real_digests())
        if not newer_id:
            newer_id.append(service.save_model(save_info(TinyNet(), base_model_id=root_id)))
            listed.append(newer_id[0])
        return iter(digests)

    monkeypatch.setattr(store.file_pers_service, "blob_digests", digests_then_a_save)
    maintenance.collect_garbage(store, grace_seconds=0, dry_run=True)
    monkeypatch.undo()
    maintenance.collect_garbage(store, grace_seconds=0)
    assert maintenance.verify(store) == [] and maintenance.all_model_ids(store) == [root_id, newer_id[0]]
