"""Embedded document store in one SQLite file (WAL mode, busy timeout), safe for several processes.

A user who may read but not write the file (another account's store, a read-only mount) reads it through a
read-only connection that changes nothing. SQLite needs the `-shm` file to read a WAL database; it exists while
any connection has the database open, but the last one to close deletes it, and a reader that cannot write the
directory cannot create it. Such a reader then opens the file `immutable` (no locks, the WAL ignored), which is
safe only while no writer touches the file: with no `-wal` file every commit is in the database file, a writer
creates `-wal` and `-shm` before it changes anything, and it changes the database file only by a checkpoint. So
after each read the `-wal` and `-shm` files must still be absent and the file's inode, size and change times
unchanged; otherwise the read is repeated on a new connection.
"""

import contextlib
import json
import os
import sqlite3
import threading
import time
from typing import Optional
from urllib.parse import quote

from mmlib.constants import ID
from mmlib.errors import IntegrityError, StoreUnavailableError
from mmlib.persistence.base import DictPersistenceService, document_id, missing_document

_BUSY_TIMEOUT_S = 60.0
_WAL_RETRY_S = 0.01
_UNLOCKED_READ_TRIES = 5
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (type, id)
)
"""


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Put the database in WAL mode, retrying for up to the busy timeout.

    When several processes open a new database at once, the switch to WAL can report the database as locked
    at once instead of waiting, so the busy timeout alone does not cover it.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(_WAL_RETRY_S)


def _create_file(path: str) -> None:
    """Create the database file with the umask's permissions (SQLite gives them to its `-wal` and `-shm` files),
    unless it exists. An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, so another connection of this process would lose its locks, and another
    process could then take itself for the last user of the WAL and delete it under this one's writes."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, _NEW_FILE_FLAGS, 0o666))


def _unlocked_snapshot(path: str) -> Optional[tuple[int, ...]]:
    """The database file's inode, size and change times while no connection has it open (no `-wal` or `-shm`
    file), which an immutable read must still find afterwards; None while a connection may have it open."""
    if os.path.exists(f"{path}-wal") or os.path.exists(f"{path}-shm"):
        return None
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _connect_read_only(uri: str) -> sqlite3.Connection:
    """A connection through SQLite's locks that cannot write, tried with one read (which opens the WAL)."""
    connection = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.Error:
        connection.close()
        raise
    return connection


class SQLiteDictPersistenceService(DictPersistenceService):
    """Documents as JSON rows of one table keyed by (type, id); the default store, needs no server.

    Every write is on disk when it returns; with `durable=False` (scratch stores) SQLite syncs only at
    checkpoints, so a power failure may lose the last writes, never the file's consistency.

    Opening creates nothing: until the first write creates the file (and its directory), reads find no documents.
    """

    def __init__(self, path: str, durable: bool = True):
        self.path = os.path.abspath(path)
        self.durable = durable
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteDictPersistenceService({self.path!r})"

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the database, for tools and tests that query it behind the store's back.

        One connection per thread and process (connections must not cross a fork).
        """
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = self._open_for_writing()
            self._local.connection = connection
            self._local.pid = os.getpid()
        return connection

    def _may_write(self) -> bool:
        """Whether this process may write the database file and create the `-wal` and `-shm` files beside it."""
        return os.access(self.path, os.W_OK) and os.access(os.path.dirname(self.path), os.W_OK)

    def _open_for_writing(self) -> sqlite3.Connection:
        """A new read-write connection in WAL mode; creates the file (with the umask's permissions, which SQLite
        gives its `-wal` and `-shm` files too) and its table when they do not exist."""
        if os.path.exists(self.path) and not self._may_write():
            raise StoreUnavailableError(
                f"the SQLite store at {self.path} is read-only for this user; ask its owner for write access (a team "
                "shares a group-writable directory and umask 002) or save into a store you can write to")
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            _create_file(self.path)
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            _enable_wal(connection)
            connection.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            connection.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailableError(
                f"cannot open the SQLite store at {self.path}: {error}; "
                "check that its directory exists and is writable") from error
        return connection

    def _open_read_only(self) -> tuple[sqlite3.Connection, Optional[tuple[int, ...]]]:
        """A new connection that cannot write and, for an immutable one, the file state it must still find."""
        uri = f"file:{quote(self.path)}?mode=ro"
        snapshot = _unlocked_snapshot(self.path)
        try:
            try:
                return _connect_read_only(uri), None
            except sqlite3.OperationalError:  # a WAL database whose -shm file this user cannot create
                if snapshot is None:
                    raise
            return sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None), snapshot
        except sqlite3.Error as error:
            raise self._failure(error) from error

    def _reader(self) -> Optional[tuple[sqlite3.Connection, Optional[tuple[int, ...]]]]:
        """This thread's connection for reading (read-only when this process may not write the file) and the
        file state an immutable one must still find; None while the file does not exist."""
        if getattr(self._local, "connection", None) is not None and self._local.pid == os.getpid():
            return self._local.connection, None
        reader = getattr(self._local, "reader", None)
        if reader is not None and self._local.reader_pid == os.getpid():
            return reader
        if not os.path.exists(self.path):
            return None
        if self._may_write():
            return self.connection(), None
        reader = self._open_read_only()
        self._local.reader, self._local.reader_pid = reader, os.getpid()
        return reader

    def _failure(self, error: sqlite3.Error) -> Exception:
        """The typed error for a failed SQLite call."""
        if isinstance(error, sqlite3.OperationalError):
            return StoreUnavailableError(f"SQLite store {self.path} failed: {error}")
        return IntegrityError(f"the SQLite store {self.path} is damaged ({error}); restore it from a backup")

    def _query(self, sql: str, params: tuple = ()) -> list:
        """Rows of a statement that writes (creating the file on the first write)."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._failure(error) from error

    def _select(self, sql: str, params: tuple = ()) -> list:
        """Rows of a query that only reads; none while the file does not exist (nothing is stored yet)."""
        for _ in range(_UNLOCKED_READ_TRIES):
            reader = self._reader()
            if reader is None:
                return []
            connection, snapshot = reader
            try:
                rows = connection.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as error:
                if snapshot is None or _unlocked_snapshot(self.path) == snapshot:
                    raise self._failure(error) from error
            else:
                if snapshot is None or _unlocked_snapshot(self.path) == snapshot:
                    return rows
            self._local.reader = None  # a writer came: read again on a new connection
            connection.close()
        raise StoreUnavailableError(
            f"the SQLite store {self.path} changed during each of {_UNLOCKED_READ_TRIES} reads without locks; try "
            "again, or let this user write to its directory so that SQLite can lock it")

    def save_dict(self, insert_dict: dict, represent_type: str) -> str:
        dict_id = document_id(insert_dict, self.generate_id)
        body = json.dumps(insert_dict, sort_keys=True)
        self._query("INSERT INTO documents (type, id, body, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (type, id) DO UPDATE SET body = excluded.body, created = excluded.created",
                    (represent_type, dict_id, body, time.time()))
        return dict_id

    def insert_dict(self, insert_dict: dict, represent_type: str) -> bool:
        body = json.dumps(insert_dict, sort_keys=True)
        try:
            cursor = self.connection().execute(
                "INSERT INTO documents (type, id, body, created) VALUES (?, ?, ?, ?) ON CONFLICT (type, id) DO NOTHING",
                (represent_type, str(insert_dict[ID]), body, time.time()))
        except sqlite3.DatabaseError as error:
            raise self._failure(error) from error
        return cursor.rowcount == 1

    def _body(self, dict_id: str, represent_type: str) -> str:
        rows = self._select("SELECT body FROM documents WHERE type = ? AND id = ?", (represent_type, str(dict_id)))
        if not rows:
            raise missing_document(dict_id, represent_type)
        return rows[0][0]

    def recover_dict(self, dict_id: str, represent_type: str) -> dict:
        body = self._body(dict_id, represent_type)
        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise ValueError(f"a JSON {type(document).__name__}, not an object")
        except (TypeError, ValueError) as error:  # malformed JSON (a ValueError), or a body that is not text
            raise IntegrityError(f"document {represent_type} {dict_id} is damaged ({error}); restore it from a backup "
                                 "or remove the model with `mmlib rm`") from error
        return document

    def dict_size(self, dict_id: str, represent_type: str) -> int:
        return len(self._body(dict_id, represent_type).encode())

    def id_exists(self, dict_id: str, represent_type: str) -> bool:
        return bool(self._select("SELECT 1 FROM documents WHERE type = ? AND id = ?", (represent_type, str(dict_id))))

    def all_ids_for_type(self, represent_type: str) -> list[str]:
        rows = self._select("SELECT id FROM documents WHERE type = ? ORDER BY created, rowid", (represent_type,))
        return [row[0] for row in rows]

    def document_times(self, represent_type: str) -> dict[str, float]:
        rows = self._select("SELECT id, created FROM documents WHERE type = ?", (represent_type,))
        return {row[0]: row[1] for row in rows}

    def add_field(self, dict_id: str, represent_type: str, field: str, value) -> None:
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            document = self.recover_dict(dict_id, represent_type)
            document[field] = value
            connection.execute("UPDATE documents SET body = ? WHERE type = ? AND id = ?",
                               (json.dumps(document, sort_keys=True), represent_type, str(dict_id)))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def delete_dict(self, dict_id: str, represent_type: str) -> None:
        self._query("DELETE FROM documents WHERE type = ? AND id = ?", (represent_type, str(dict_id)))

    def all_types(self) -> list[str]:
        return [row[0] for row in self._select("SELECT DISTINCT type FROM documents ORDER BY type")]
