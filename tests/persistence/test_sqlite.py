"""SQLite-specific behaviour: several processes opening one new store at the same moment; a path it cannot open."""

import multiprocessing

import pytest

from mmlib.errors import StoreUnavailableError
from mmlib.persistence import SQLiteDictPersistenceService

PROCESSES = 6
TRIALS = 20


def _open_and_save(path: str, start) -> None:
    start.wait()
    SQLiteDictPersistenceService(path).save_dict({"pid": multiprocessing.current_process().pid}, "thing")


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(TRIALS):
        path = str(tmp_path / f"store{trial}" / "metadata.sqlite")
        start = context.Barrier(PROCESSES)
        processes = [context.Process(target=_open_and_save, args=(path, start)) for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0] * PROCESSES, f"trial {trial}"
        assert len(SQLiteDictPersistenceService(path).all_ids_for_type("thing")) == PROCESSES


def test_a_path_it_cannot_open_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "a-file").touch()
    path = tmp_path / "a-file" / "models.sqlite"
    with pytest.raises(StoreUnavailableError, match=f"cannot open the SQLite store at {path}: .*; check that its "
                                                    "directory exists and is writable"):
        SQLiteDictPersistenceService(str(path))
