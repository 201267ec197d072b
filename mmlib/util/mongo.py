"""Thin pymongo wrapper with string ids, an explicit durable write concern and a fast connection timeout.

This module and the MongoDB backends that use it import pymongo; nothing else in mmlib does, so the embedded
store works without it (`mmlib.persistence.store.mongo_backend` says what to install when it is missing).
"""

import contextlib
import re
import time
from typing import Iterator, Optional
from urllib.parse import urlsplit

import bson
import pymongo
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.write_concern import WriteConcern

from mmlib.errors import StoreUnavailableError
from mmlib.util.mongo_uri import DEFAULT_DB_NAME, mongo_uri

CONNECT_TIMEOUT_MS = 5000
_CREATED = "_mmlib_created"
# Where the useful part of a pymongo message ends: the timeouts, the topology dump and the server's reply follow.
_DETAIL_MARKERS = (" (configured timeouts:", ", Timeout:", ", Topology Description:", ", full error:")
_REASONS = (("connection refused", "connection refused"), ("timed out", "timed out"),
            ("name or service not known", "host name not found"), ("nodename nor servname", "host name not found"),
            ("name resolution", "host name not found"), ("getaddrinfo failed", "host name not found"),
            ("network is unreachable", "network unreachable"), ("no route to host", "no route to host"),
            ("connection reset", "connection reset"), ("authentication failed", "authentication failed"),
            ("no replica set members", "no replica set member is available"),
            ("no servers found yet", "timed out"))  # selection gave up before the first connection attempt did
_REASON_LENGTH = 100
_AUTH_CODES = (13, 18)  # Unauthorized, AuthenticationFailed
_DURABLE = WriteConcern(w=1, j=True)


def mongo_hosts(host: str) -> str:
    """The `host:port` list of a host or URI, without credentials, for messages."""
    try:
        netloc = urlsplit(mongo_uri(host)).netloc
    except ValueError:
        return "the given URI"
    return netloc.rpartition("@")[2] or "the given URI"


def short_reason(error: Exception) -> str:
    """Why a pymongo call failed, in a few words: pymongo's own message is a dump of its view of every server."""
    text = " ".join(str(error).split())
    for marker in _DETAIL_MARKERS:
        text = text.partition(marker)[0]
    lowered = text.lower()
    known = next((reason for phrase, reason in _REASONS if phrase in lowered), None)
    if known is not None:
        return known
    text = re.sub(r"^\S+:\d+: ", "", text).strip(" .,")  # the `host:port: ` pymongo puts first
    return text if len(text) <= _REASON_LENGTH else text[:_REASON_LENGTH - 3] + "..."


def mongo_client(host: str) -> pymongo.MongoClient:
    """A client that fails within seconds, not minutes, when the server cannot be reached."""
    return pymongo.MongoClient(mongo_uri(host), serverSelectionTimeoutMS=CONNECT_TIMEOUT_MS,
                               connectTimeoutMS=CONNECT_TIMEOUT_MS)


class MongoService:
    """Documents in the collections of one MongoDB database, addressed by string `_id`.

    One client per instance; the document and GridFS stores that `open_store` gives for one URI share one.
    """

    def __init__(self, host: str = "127.0.0.1", db_name: str = DEFAULT_DB_NAME):
        self.host = host
        self.db_name = db_name
        try:
            self._client = mongo_client(host)
            self._db = self._client.get_database(db_name, write_concern=_DURABLE)
        except (PyMongoError, ValueError, TypeError) as error:
            raise StoreUnavailableError(f"cannot use MongoDB at {mongo_hosts(host)} with database {db_name!r}: "
                                        f"{short_reason(error)}; fix the URI (mongodb://host:port/database, a "
                                        "database name without spaces or dots)") from error

    def __repr__(self) -> str:
        return f"MongoService({self.host!r}, {self.db_name!r})"

    @property
    def database(self):
        """The pymongo database (for GridFS and maintenance)."""
        return self._db

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Raise a pymongo error of the block as a StoreUnavailableError that names this server.

        The one translation of pymongo errors into mmlib errors, for the document and the GridFS blob store. A
        caller that means something else by an error (GridFS's `NoFile`: a missing blob) catches it inside the
        block.
        """
        try:
            yield
        except ConnectionFailure as error:
            raise StoreUnavailableError(f"cannot reach MongoDB at {mongo_hosts(self.host)}: {short_reason(error)}; "
                                        "start the server, or check the host and port in the URI and the network") \
                from error
        except OperationFailure as error:
            advice = "the user, password and roles in the URI" if error.code in _AUTH_CODES else "the server's log"
            raise StoreUnavailableError(f"MongoDB at {mongo_hosts(self.host)} refused the request: "
                                        f"{short_reason(error)} (code {error.code}); check {advice}") from error
        except PyMongoError as error:
            raise StoreUnavailableError(f"MongoDB at {mongo_hosts(self.host)} failed: {short_reason(error)} "
                                        f"({type(error).__name__}); check the server's log") from error

    def save_dict(self, insert_dict: dict, collection: str, object_id: Optional[str] = None) -> str:
        """Insert or replace a document; returns its id."""
        document = {key: value for key, value in insert_dict.items() if key not in ("_id", _CREATED)}
        object_id = str(object_id or insert_dict.get("_id") or bson.ObjectId())
        with self.errors():
            self._db[collection].update_one({"_id": object_id}, {"$set": {**document, _CREATED: time.time()}},
                                            upsert=True)
        return object_id

    def insert_new(self, insert_dict: dict, collection: str, object_id: str) -> bool:
        """Insert a document under `object_id` unless one has that id: True when inserted, False when it existed."""
        document = {key: value for key, value in insert_dict.items() if key not in ("_id", _CREATED)}
        with self.errors():
            try:
                self._db[collection].insert_one({**document, "_id": object_id, _CREATED: time.time()})
            except DuplicateKeyError:
                return False
        return True

    def get_ids(self, collection: str) -> list[str]:
        """All document ids of a collection in insertion order."""
        with self.errors():
            documents = list(self._db[collection].find({}, {"_id": 1}).sort([(_CREATED, 1), ("_id", 1)]))
        return [str(document["_id"]) for document in documents]

    def created_times(self, collection: str) -> dict[str, float]:
        """id -> when each document of a collection was last saved (seconds since the epoch)."""
        with self.errors():
            documents = list(self._db[collection].find({}, {_CREATED: 1}))
        return {str(document["_id"]): float(document.get(_CREATED, 0.0)) for document in documents}

    def get_dict(self, object_id: str, collection: str) -> Optional[dict]:
        """The document without its `_id`, or None."""
        with self.errors():
            document = self._db[collection].find_one({"_id": object_id})
        if document is not None:
            document.pop("_id")
            document.pop(_CREATED, None)
        return document

    def add_attribute(self, object_id: str, attribute: dict, collection: str) -> None:
        """Set fields of one document."""
        with self.errors():
            self._db[collection].update_one({"_id": object_id}, {"$set": attribute})

    def document_size(self, object_id: str, collection: str) -> Optional[int]:
        """BSON size of one document in bytes, or None when absent."""
        with self.errors():
            document = self._db[collection].find_one({"_id": object_id})
        return None if document is None else len(bson.encode(document))

    def id_exists(self, object_id: str, collection: str) -> bool:
        """True only when the document exists."""
        with self.errors():
            return self._db[collection].count_documents({"_id": object_id}, limit=1) > 0

    def delete(self, object_id: str, collection: str) -> None:
        """Remove one document."""
        with self.errors():
            self._db[collection].delete_one({"_id": object_id})

    def collections(self) -> list[str]:
        """Names of the collections in the database."""
        with self.errors():
            return sorted(self._db.list_collection_names())


class MongoBacked:
    """Half of a store kept in one MongoDB database: opens the connection, or shares the other half's."""

    def __init__(self, host: str = "127.0.0.1", db_name: str = DEFAULT_DB_NAME, *,
                 mongo_service: Optional[MongoService] = None):
        self._mongo_service = mongo_service if mongo_service is not None else MongoService(host, db_name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._mongo_service.host!r}, db_name={self._mongo_service.db_name!r})"

    @property
    def mongo_service(self) -> MongoService:
        """The connection to the database (`database`, `host`, `db_name`), shared with the other half of a store
        that `open_store` opened; for tools and tests that reach the collections behind the store's back."""
        return self._mongo_service
