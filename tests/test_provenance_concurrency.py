"""Provenance recoveries running at once, in several processes and in several threads, all recover exactly.

One SQLite store holds four provenance versions of one TinyNet snapshot, each trained on its own dataset (the
same file names, other pixels): recovering one in a directory another recovery unpacks its data into trains on
the wrong images. Every round, released together by a barrier, each worker recovers another version than the
others, half of them checked; every result must equal the weights the live training produced, bit for bit.
"""

import copy
import json
import multiprocessing
import os
import threading

import pytest
import torch

from mmlib.constants import CURRENT_DATA_ROOT, MMLIB_CONFIG
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.save import ProvenanceSaveService
from provenance_helpers import TinyNet, save_trained_version
from save_helpers import save_info

WORKERS = 4
ROUNDS = 4
_BARRIER_TIMEOUT_S = 120
_JOIN_TIMEOUT_S = 240
EXACT = "exact"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """(blob dir, SQLite file, [(version id, file of its expected state dict)]): versions v0, v1 and v3 of a
    snapshot trained on datasets 0, 1 and 3, and v2 trained on dataset 2 from v0 (its recovery switches data)."""
    root = tmp_path_factory.mktemp("concurrent-provenance")
    blob_dir, sqlite_path = str(root / "blobs"), str(root / "meta.sqlite")
    service = ProvenanceSaveService(FileSystemPersistenceService(blob_dir), SQLiteDictPersistenceService(sqlite_path),
                                    checkpoint_interval=1)
    snapshot = TinyNet()
    snapshot_id = service.save_model(save_info(snapshot))
    saved, models = [], {}
    for index, base in enumerate([None, None, 0, None]):
        raw_data = generate_image_dataset(str(root / f"images-{index}"), images_per_class=4, seed=index)
        model = copy.deepcopy(snapshot if base is None else models[base])
        base_id = snapshot_id if base is None else saved[base][0]
        version_id = save_trained_version(service, model, base_id, raw_data,
                                          image_classification_train_wrapper(model, raw_data))
        expected = str(root / f"expected-{index}.pt")
        torch.save(model.state_dict(), expected)
        saved.append((version_id, expected))
        models[index] = model
    expected_weights = [torch.load(path, weights_only=True) for _, path in saved]
    assert not any(torch.equal(expected_weights[0][name], expected_weights[1][name]) for name in expected_weights[0])
    return blob_dir, sqlite_path, saved


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    """A fresh current_data_root in the MMLIB_CONFIG ini (spawned processes inherit the variable)."""
    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\n{CURRENT_DATA_ROOT} = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))
    return tmp_path / "data_root"


def jobs(worker: int, saved: list) -> list[tuple[str, str, bool]]:
    """(version id, expected state dict file, execute_checks) of each round: in a round every worker recovers
    another version, and half of them check it."""
    return [(*saved[(worker + round_) % len(saved)], (worker + round_ // 2) % 2 == 0) for round_ in range(ROUNDS)]


def outcome(service: ProvenanceSaveService, version_id: str, expected_path: str, checks: bool) -> str:
    """EXACT when the recovered version equals the expected state dict; else what went wrong."""
    expected = torch.load(expected_path, weights_only=True)
    try:
        recovered = service.recover_model(version_id, execute_checks=checks).model.state_dict()
    except Exception as error:  # reported to the test
        return f"checks={checks}: {type(error).__name__}: {error}"
    if recovered.keys() == expected.keys() and all(torch.equal(recovered[name], expected[name]) for name in expected):
        return EXACT
    return f"checks={checks}: wrong weights"


def recover_rounds(blob_dir: str, sqlite_path: str, worker_jobs: list, barrier, result_path: str) -> None:
    """Run in a child process: recover one version a round, each round started together with the other
    processes; write the outcomes to `result_path`."""
    torch.set_num_threads(1)
    service = ProvenanceSaveService(FileSystemPersistenceService(blob_dir), SQLiteDictPersistenceService(sqlite_path))
    outcomes = []
    for version_id, expected_path, checks in worker_jobs:
        barrier.wait()
        outcomes.append(outcome(service, version_id, expected_path, checks))
    with open(result_path, "w", encoding="utf-8") as out:
        json.dump(outcomes, out)


def test_processes_recovering_at_once_each_get_their_own_version(versions, data_root, tmp_path):
    blob_dir, sqlite_path, saved = versions
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS, timeout=_BARRIER_TIMEOUT_S)
    result_paths = [str(tmp_path / f"outcomes-{worker}.json") for worker in range(WORKERS)]
    processes = [context.Process(target=recover_rounds,
                                 args=(blob_dir, sqlite_path, jobs(worker, saved), barrier, result_paths[worker]))
                 for worker in range(WORKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(_JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * WORKERS
    outcomes = []
    for path in result_paths:
        with open(path, encoding="utf-8") as result:
            outcomes.extend(json.load(result))
    assert len(outcomes) == WORKERS * ROUNDS
    assert [failure for failure in outcomes if failure != EXACT] == []
    assert os.listdir(data_root) == []


def test_threads_of_one_service_recovering_at_once_each_get_their_own_version(versions, data_root):
    blob_dir, sqlite_path, saved = versions
    service = ProvenanceSaveService(FileSystemPersistenceService(blob_dir), SQLiteDictPersistenceService(sqlite_path))
    barrier = threading.Barrier(WORKERS, timeout=_BARRIER_TIMEOUT_S)
    outcomes: dict[int, list[str]] = {worker: [] for worker in range(WORKERS)}

    def recover(worker: int) -> None:
        for version_id, expected_path, checks in jobs(worker, saved):
            barrier.wait()
            outcomes[worker].append(outcome(service, version_id, expected_path, checks))

    threads = [threading.Thread(target=recover, args=(worker,), daemon=True) for worker in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert [len(outcomes[worker]) for worker in range(WORKERS)] == [ROUNDS] * WORKERS
    assert [failure for worker in range(WORKERS) for failure in outcomes[worker] if failure != EXACT] == []
    assert os.listdir(data_root) == []
