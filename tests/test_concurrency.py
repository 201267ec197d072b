"""Several processes save into one store at the same time; afterwards every model is listed and recovers exactly.

Four spawned processes, released together by a barrier, open one store that does not exist yet (embedded,
MongoDB with GridFS, or MongoDB with blobs in S3) and each save
a chain of ten versions (a root and nine derived ones) into it. Processes come in pairs with the same random
seed, so identical blobs are committed concurrently too. The approaches alternate between processes: the
baseline, and the parameter update approach.
"""

import json
import multiprocessing
import os
import time
from typing import Optional

import pytest
import torch

import mmlib.save
from mmlib import maintenance
from mmlib.persistence import open_store
from mmlib.util.hash import state_dict_hash
from save_helpers import perturb, save_info
from tiny_models import TinyNet

PROCESSES = 4
VERSIONS = 10
APPROACHES = ["BaselineSaveService", "WeightUpdateSaveService"]
_JOIN_TIMEOUT_S = 180


@pytest.fixture(params=["sqlite+files", "mongodb+gridfs", "mongodb+s3"])
def deployment(request) -> tuple[str, Optional[str]]:
    """(store location, blob location) of a fresh store: embedded, MongoDB alone, MongoDB with blobs in S3."""
    if request.param == "sqlite+files":
        return str(request.getfixturevalue("tmp_path") / "store"), None
    uri, name = request.getfixturevalue("mongo_database")
    blob_dir = request.getfixturevalue("s3_test_location") if request.param == "mongodb+s3" else None
    return f"{uri}/{name}", blob_dir


def save_versions(location: str, blob_dir: Optional[str], approach: str, seed: int, barrier,
                  result_path: str) -> None:
    """Run in a child process: save VERSIONS versions, each derived from the one before, and write
    {model id: state dict hash} of what was saved to `result_path`."""
    torch.manual_seed(seed)
    model = TinyNet()
    saved, base_id = {}, None
    barrier.wait()
    service = getattr(mmlib.save, approach)(*open_store(location, blob_dir=blob_dir))
    for _ in range(VERSIONS):
        base_id = service.save_model(save_info(model, base_model_id=base_id))
        saved[base_id] = state_dict_hash(model.state_dict())
        perturb(model, scale=1e-2)
    with open(result_path, "w") as out:
        json.dump(saved, out)


def test_concurrent_saves_are_all_listed_and_recover_exactly(deployment, tmp_path):
    location, blob_dir = deployment
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    result_paths = [str(tmp_path / f"saved-{index}.json") for index in range(PROCESSES)]
    processes = [context.Process(target=save_versions, args=(location, blob_dir, APPROACHES[index % len(APPROACHES)],
                                                              index // 2, barrier, result_paths[index]))
                 for index in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(_JOIN_TIMEOUT_S)
    assert [process.exitcode for process in processes] == [0] * PROCESSES

    saved = {}
    for path in result_paths:
        with open(path) as result:
            saved.update(json.load(result))
    store = open_store(location, blob_dir=blob_dir)
    assert len(saved) == PROCESSES * VERSIONS
    assert sorted(maintenance.all_model_ids(store)) == sorted(saved)
    for model_id, expected_hash in saved.items():
        assert state_dict_hash(maintenance.recover_model(store, model_id).state_dict()) == expected_hash


GC_TEST_SECONDS = 30.0
GC_GRACE_S = 2.0
GC_SAVERS = 3


def save_while_gc_runs(location: str, approach: str, seed: int, deadline: float, barrier, result_path: str) -> None:
    """Run in a child process: until `deadline`, save chains of versions and leave one orphan blob per version
    (garbage for gc to find); write {model id: state dict hash} of what was saved to `result_path`."""
    torch.manual_seed(seed)
    model = TinyNet()
    saved, base_id = {}, None
    barrier.wait()
    store = open_store(location)
    service = getattr(mmlib.save, approach)(*store)
    longest = 0.0
    while time.time() < deadline:
        started = time.monotonic()
        base_id = service.save_model(save_info(model, base_model_id=base_id))
        longest = max(longest, time.monotonic() - started)
        saved[base_id] = state_dict_hash(model.state_dict())
        store.file_pers_service.save_bytes(os.urandom(64), "orphan.bin")
        perturb(model, scale=1e-2)
        if len(saved) % 5 == 0:
            base_id = None
    with open(result_path, "w") as out:
        json.dump({"saved": saved, "longest_save_s": longest}, out)


def test_gc_in_a_loop_while_processes_save_loses_nothing(location, tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(GC_SAVERS + 1)
    result_paths = [str(tmp_path / f"saved-{index}.json") for index in range(GC_SAVERS)]
    deadline = time.time() + GC_TEST_SECONDS
    processes = [context.Process(target=save_while_gc_runs,
                                 args=(location, APPROACHES[index % len(APPROACHES)], index // 2, deadline, barrier,
                                       result_paths[index]))
                 for index in range(GC_SAVERS)]
    for process in processes:
        process.start()
    barrier.wait(timeout=_JOIN_TIMEOUT_S)
    store = open_store(location)
    removed_blobs, collections_run = 0, 0
    while any(process.is_alive() for process in processes):
        removed_blobs += len(maintenance.collect_garbage(store, grace_seconds=GC_GRACE_S).blobs)
        collections_run += 1
    for process in processes:
        process.join(_JOIN_TIMEOUT_S)
    assert [process.exitcode for process in processes] == [0] * GC_SAVERS

    saved, longest = {}, 0.0
    for path in result_paths:
        with open(path) as result:
            outcome = json.load(result)
        saved.update(outcome["saved"])
        longest = max(longest, outcome["longest_save_s"])
    print(f"\n{len(saved)} saves (longest {longest:.2f} s); {collections_run} collections removed {removed_blobs} "
          "blobs")
    assert sorted(maintenance.all_model_ids(store)) == sorted(saved)
    for model_id, expected_hash in saved.items():
        assert state_dict_hash(maintenance.recover_model(store, model_id).state_dict()) == expected_hash
    assert maintenance.verify(store) == []
    assert collections_run > 3 and removed_blobs > 0, (collections_run, removed_blobs)
