"""Embedded document store in one SQLite file (WAL mode, busy timeout), safe for several processes."""

import json
import os
import sqlite3
import threading
import time

from mmlib.errors import IntegrityError, StoreUnavailableError
from mmlib.persistence.base import DictPersistenceService, document_id, missing_document

_BUSY_TIMEOUT_S = 60.0
_WAL_RETRY_S = 0.01
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


class SQLiteDictPersistenceService(DictPersistenceService):
    """Documents as JSON rows of one table keyed by (type, id); the default store, needs no server.

    Every write is on disk when it returns; with `durable=False` (scratch stores) SQLite syncs only at
    checkpoints, so a power failure may lose the last writes, never the file's consistency.
    """

    def __init__(self, path: str, durable: bool = True):
        self.path = os.path.abspath(path)
        self.durable = durable
        self._local = threading.local()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with self.connection() as connection:
                connection.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailableError(
                f"cannot open the SQLite store at {self.path}: {error}; "
                "check that its directory exists and is writable") from error

    def __repr__(self) -> str:
        return f"SQLiteDictPersistenceService({self.path!r})"

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the database, for tools and tests that query it behind the store's back.

        One connection per thread and process (connections must not cross a fork).
        """
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            _enable_wal(connection)
            connection.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            self._local.connection = connection
            self._local.pid = os.getpid()
        return connection

    def _query(self, sql: str, params: tuple = ()) -> list:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            raise StoreUnavailableError(f"SQLite store {self.path} failed: {error}") from error
        except sqlite3.DatabaseError as error:
            raise IntegrityError(f"the SQLite store {self.path} is damaged ({error}); restore it from a "
                                 "backup") from error

    def save_dict(self, insert_dict: dict, represent_type: str) -> str:
        dict_id = document_id(insert_dict, self.generate_id)
        body = json.dumps(insert_dict, sort_keys=True)
        self._query("INSERT INTO documents (type, id, body, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (type, id) DO UPDATE SET body = excluded.body, created = excluded.created",
                    (represent_type, dict_id, body, time.time()))
        return dict_id

    def _body(self, dict_id: str, represent_type: str) -> str:
        rows = self._query("SELECT body FROM documents WHERE type = ? AND id = ?", (represent_type, str(dict_id)))
        if not rows:
            raise missing_document(dict_id, represent_type)
        return rows[0][0]

    def recover_dict(self, dict_id: str, represent_type: str) -> dict:
        return json.loads(self._body(dict_id, represent_type))

    def dict_size(self, dict_id: str, represent_type: str) -> int:
        return len(self._body(dict_id, represent_type).encode())

    def id_exists(self, dict_id: str, represent_type: str) -> bool:
        return bool(self._query("SELECT 1 FROM documents WHERE type = ? AND id = ?", (represent_type, str(dict_id))))

    def all_ids_for_type(self, represent_type: str) -> list[str]:
        rows = self._query("SELECT id FROM documents WHERE type = ? ORDER BY created, rowid", (represent_type,))
        return [row[0] for row in rows]

    def document_times(self, represent_type: str) -> dict[str, float]:
        rows = self._query("SELECT id, created FROM documents WHERE type = ?", (represent_type,))
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
        return [row[0] for row in self._query("SELECT DISTINCT type FROM documents ORDER BY type")]
