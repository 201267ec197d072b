"""SQLite-specific behaviour: several processes opening one new store at the same moment; a path it cannot open."""

import multiprocessing
import os
import sqlite3
import subprocess
import sys

import pytest

from mmlib.errors import DocumentNotFoundError, StoreUnavailableError
from mmlib.persistence import SQLiteDictPersistenceService, _sqlite

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


def test_a_path_it_cannot_open_is_refused_with_what_to_do_on_the_first_write(tmp_path):
    (tmp_path / "a-file").touch()
    path = tmp_path / "a-file" / "models.sqlite"
    service = SQLiteDictPersistenceService(str(path))
    assert service.all_ids_for_type("thing") == []
    with pytest.raises(StoreUnavailableError, match=f"cannot open the SQLite store at {path}: .*; check that its "
                                                    "directory exists and is writable"):
        service.save_dict({"a": 1}, "thing")


def test_opening_and_reading_create_nothing_and_the_first_write_creates_the_file(tmp_path):
    path = tmp_path / "store" / "metadata.sqlite"
    service = SQLiteDictPersistenceService(str(path))
    assert service.all_types() == [] and service.all_ids_for_type("thing") == []
    assert not service.id_exists("x", "thing") and service.document_times("thing") == {}
    with pytest.raises(DocumentNotFoundError):
        service.recover_dict("x", "thing")
    assert not (tmp_path / "store").exists()
    doc_id = service.save_dict({"a": 1}, "thing")
    assert path.is_file() and service.recover_dict(doc_id, "thing") == {"a": 1}


def test_a_file_it_may_not_write_is_read_through_a_read_only_connection(tmp_path, monkeypatch):
    """Root may write anywhere, so the permission check is made to say no; the real user is in test_shared_stores."""
    path = str(tmp_path / "metadata.sqlite")
    doc_id = SQLiteDictPersistenceService(path).save_dict({"a": 1}, "thing")
    monkeypatch.setattr(_sqlite.os, "access", lambda path, mode: False)
    connect = sqlite3.connect
    uris = []
    monkeypatch.setattr(_sqlite.sqlite3, "connect",
                        lambda database, **kwargs: uris.append(database) or connect(database, **kwargs))
    reader = SQLiteDictPersistenceService(path)
    assert reader.recover_dict(doc_id, "thing") == {"a": 1}
    assert uris and all("mode=ro" in uri for uri in uris)
    with pytest.raises(StoreUnavailableError, match="is read-only for this user; ask its owner for write access"):
        reader.save_dict({"b": 2}, "thing")


def test_an_unlocked_read_is_repeated_when_a_writer_changed_the_file_meanwhile(tmp_path, monkeypatch):
    """A reader that cannot create the -shm file reads the file immutable; a writer's change makes it read again."""
    path = str(tmp_path / "metadata.sqlite")
    writer = SQLiteDictPersistenceService(path)
    writer.save_dict({"id": "one"}, "thing")
    writer.connection().close()  # the last connection: the -wal and -shm files go
    access = os.access
    monkeypatch.setattr(_sqlite.os, "access", lambda path, mode: False)
    connect = sqlite3.connect
    uris = []

    def connect_without_shm(database: str, **kwargs) -> sqlite3.Connection:
        uris.append(database)
        if database.endswith("?mode=ro"):  # what a user who cannot create the -shm file gets
            database = f"file:{tmp_path}/no-such-dir/x.sqlite?mode=ro"
        return connect(database, **kwargs)

    monkeypatch.setattr(_sqlite.sqlite3, "connect", connect_without_shm)
    reader = SQLiteDictPersistenceService(path)
    assert reader.all_ids_for_type("thing") == ["one"]
    monkeypatch.setattr(_sqlite.os, "access", access)
    writer = SQLiteDictPersistenceService(path)
    writer.save_dict({"id": "two", "padding": "x" * 10000}, "thing")
    writer.connection().close()
    monkeypatch.setattr(_sqlite.os, "access", lambda path, mode: False)
    assert reader.all_ids_for_type("thing") == ["one", "two"]
    assert sum("immutable=1" in uri for uri in uris) == 2


def test_a_second_store_object_on_one_file_keeps_the_first_one_s_writes_visible_to_other_processes(tmp_path):
    """Opening (creating) the file must not open an existing one: closing any descriptor of it would drop this
    process's SQLite locks, and the next process to close would take itself for the last one and delete the WAL
    that the first store object still writes to."""
    path = str(tmp_path / "meta.sqlite")
    first = SQLiteDictPersistenceService(path)
    first.save_dict({"id": "a", "v": 1}, "thing")
    SQLiteDictPersistenceService(path).save_dict({"id": "b", "v": 2}, "thing")
    reader = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT id FROM documents').fetchall())"
    subprocess.run([sys.executable, "-c", reader, path], check=True, capture_output=True)
    first.save_dict({"id": "c", "v": 3}, "thing")
    seen = subprocess.run([sys.executable, "-c", reader, path], check=True, capture_output=True, text=True).stdout
    assert seen.strip() == "[('a',), ('b',), ('c',)]"
