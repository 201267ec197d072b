"""Open a (blob store, document store) pair from one string: a directory or a `mongodb://` URI."""

import os
from typing import NamedTuple, Optional
from urllib.parse import unquote, urlsplit

from mmlib.errors import StoreUnavailableError
from mmlib.persistence._filesystem import FileSystemPersistenceService
from mmlib.persistence._gridfs import GridFSFilePersistenceService
from mmlib.persistence._mongo import MongoDictPersistenceService
from mmlib.persistence._sqlite import SQLiteDictPersistenceService
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService
from mmlib.util.mongo import DEFAULT_DB_NAME

METADATA_FILE = "metadata.sqlite"
BLOB_DIR = "blobs"
MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")


class Store(NamedTuple):
    """The two halves of an mmlib store, in the order save services take them."""

    file_pers_service: FilePersistenceService
    dict_pers_service: DictPersistenceService


def mongo_database_name(uri: str) -> str:
    """The database a MongoDB URI names in its path (`mongodb://host:port/dbname`), else `mmlib`."""
    name = unquote(urlsplit(uri).path.lstrip("/"))
    return name or DEFAULT_DB_NAME


def open_store(location: str, blob_dir: Optional[str] = None, durable: bool = True) -> Store:
    """Open the store at `location`: the one string every node needs.

    A directory gives SQLite + files inside it (created on first use). A MongoDB URI gives MongoDB documents
    (database from the URI path, default `mmlib`) with blobs in GridFS of the same database, so nodes need
    nothing else; the server is contacted once, so an unreachable one fails here, within seconds.
    `blob_dir` puts the blobs in that directory instead (e.g. a file system every node shares).
    `durable=False` (scratch checkpoints) skips the flushes that make a save survive a power failure in the
    embedded store and a blob directory; MongoDB and GridFS write as the server is configured either way.
    """
    if not isinstance(location, str) or not location:
        raise StoreUnavailableError("no store given: pass a directory or a mongodb:// URI (or set MMLIB_STORE)")
    if location.startswith(MONGO_SCHEMES):
        db_name = mongo_database_name(location)
        dict_service = MongoDictPersistenceService(location, db_name=db_name)
        dict_service.all_types()
        if blob_dir is not None:
            return Store(FileSystemPersistenceService(blob_dir, durable), dict_service)
        return Store(GridFSFilePersistenceService(location, db_name=db_name), dict_service)
    if "://" in location:
        raise StoreUnavailableError(
            f"unknown store scheme in {location!r}: use a directory path or one of {', '.join(MONGO_SCHEMES)}")
    directory = os.path.abspath(location)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise StoreUnavailableError(f"cannot create the store directory {directory}: {error}") from error
    blobs = blob_dir if blob_dir is not None else os.path.join(directory, BLOB_DIR)
    return Store(FileSystemPersistenceService(blobs, durable),
                 SQLiteDictPersistenceService(os.path.join(directory, METADATA_FILE), durable))
