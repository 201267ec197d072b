"""Open a (blob store, document store) pair from one string (a directory or a `mongodb://` URI) and an optional
blob location (a directory or `s3://bucket/prefix`)."""

import importlib
import os
from typing import Any, NamedTuple, Optional, Union
from urllib.parse import unquote, urlsplit

from mmlib.errors import InvalidArgumentError, StoreUnavailableError
from mmlib.persistence._filesystem import FileSystemPersistenceService
from mmlib.persistence._sqlite import SQLiteDictPersistenceService
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService
from mmlib.util.mongo_uri import DEFAULT_DB_NAME, MONGO_SCHEMES

METADATA_FILE = "metadata.sqlite"
BLOB_DIR = "blobs"
S3_SCHEME = "s3://"
# The MongoDB backends need pymongo (an optional dependency, the `mongo` extra), so they are imported on first
# use: name -> module. The embedded store imports none of them.
MONGO_BACKENDS = {
    "MongoService": "mmlib.util.mongo",
    "MongoDictPersistenceService": "mmlib.persistence._mongo",
    "GridFSFilePersistenceService": "mmlib.persistence._gridfs",
}
MONGO_INSTALL_HINT = "pip install 'mmlib[mongo]'"
_MONGO_PACKAGES = ("pymongo", "bson", "gridfs")  # what the pymongo distribution installs


class Store(NamedTuple):
    """The two halves of an mmlib store, in the order save services take them."""

    file_pers_service: FilePersistenceService
    dict_pers_service: DictPersistenceService


def checked_store(store: object) -> Store:
    """`store` as a Store when it is one, or a (blob store, document store) pair; InvalidArgumentError otherwise."""
    if (isinstance(store, tuple) and len(store) == 2 and isinstance(store[0], FilePersistenceService)
            and isinstance(store[1], DictPersistenceService)):
        return Store(*store)
    raise InvalidArgumentError(f"a store is what open_store(...) returns (a blob store and a document store), got "
                               f"{type(store).__name__}")


def mongo_database_name(uri: str) -> str:
    """The database a MongoDB URI names in its path (`mongodb://host:port/dbname`), else `mmlib`."""
    name = unquote(urlsplit(uri).path.lstrip("/"))
    return name or DEFAULT_DB_NAME


def mongo_backend(name: str) -> Any:
    """The MongoDB backend class `name` (a key of MONGO_BACKENDS), imported now.

    Without pymongo this raises StoreUnavailableError that says what to install.
    """
    try:
        module = importlib.import_module(MONGO_BACKENDS[name])
    except ImportError as error:
        if (error.name or "").partition(".")[0] not in _MONGO_PACKAGES:
            raise
        raise StoreUnavailableError(f"MongoDB stores need pymongo, which is not installed ({error}): install it "
                                    f"with {MONGO_INSTALL_HINT}, or use a directory (the embedded store)") from error
    return getattr(module, name)


def open_store(location: str, blob_dir: Optional[str] = None, durable: bool = True, *, create: bool = True) -> Store:
    """Open the store at `location`: the one string every node needs.

    A directory gives SQLite + files inside it. Opening creates nothing (a user who may only read a store can
    open it); the first save creates the directory, its `metadata.sqlite` and its blob directory. With
    `create=False` (tools that only read or clean up) a directory without `metadata.sqlite`, or a `blob_dir` that
    does not exist, raises StoreUnavailableError instead of opening an empty store. A MongoDB URI gives MongoDB documents
    (database from the URI path, default `mmlib`) with blobs in GridFS of the same database, so nodes need
    nothing else; the server is contacted once, so an unreachable one fails here, within seconds.
    `blob_dir` puts the blobs in that directory instead (e.g. a file system every node shares), or in S3-compatible
    object storage for `s3://bucket/prefix` (endpoint and credentials from the standard AWS configuration).
    `durable=False` (scratch checkpoints) skips the flushes that make a save survive a power failure in the
    embedded store and a blob directory; MongoDB and GridFS write as the server is configured either way.
    """
    if not isinstance(location, str) or not location:
        raise StoreUnavailableError("no store given: pass a directory or a mongodb:// URI (or set MMLIB_STORE)")
    if location.startswith(MONGO_SCHEMES):
        connection = mongo_backend("MongoService")(location, mongo_database_name(location))
        dict_service = mongo_backend("MongoDictPersistenceService")(mongo_service=connection)
        dict_service.all_types()
        if blob_dir is not None:
            return Store(_blob_store(blob_dir, durable, create), dict_service)
        return Store(mongo_backend("GridFSFilePersistenceService")(mongo_service=connection), dict_service)
    if "://" in location:
        raise StoreUnavailableError(
            f"unknown store scheme in {location!r}: use a directory path or one of {', '.join(MONGO_SCHEMES)}")
    directory = os.path.abspath(location)
    _check_store_directory(directory, create)
    blobs = (FileSystemPersistenceService(os.path.join(directory, BLOB_DIR), durable) if blob_dir is None
             else _blob_store(blob_dir, durable, create))
    return Store(blobs, SQLiteDictPersistenceService(os.path.join(directory, METADATA_FILE), durable))


def _check_store_directory(directory: str, create: bool) -> None:
    """Raise StoreUnavailableError when `directory` is no store (with `create`: when a save could not create one)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise StoreUnavailableError(f"{directory} is a file, not a store directory; pass the directory that holds "
                                    f"{METADATA_FILE} (a new one is created by the first save)")
    if not create:
        if not os.path.isfile(os.path.join(directory, METADATA_FILE)):
            missing = f"no {METADATA_FILE} there" if os.path.isdir(directory) else "the directory does not exist"
            raise StoreUnavailableError(f"no mmlib store at {directory} ({missing}); check the path (a store is "
                                        "created by the first save)")
        return
    parent = os.path.dirname(directory)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StoreUnavailableError(f"cannot create the store directory {directory}: {parent} is a file, not a "
                                    "directory; choose another path")


def _blob_store(blob_dir: str, durable: bool, create: bool = True) -> FilePersistenceService:
    """Blobs in object storage for an `s3://bucket/prefix` location (the `s3` extra), else in that directory
    (which, without `create`, must exist)."""
    if blob_dir.startswith(S3_SCHEME):
        from mmlib.persistence._s3 import ObjectStoreFilePersistenceService
        return ObjectStoreFilePersistenceService(blob_dir)
    if not create and not os.path.isdir(blob_dir):
        raise StoreUnavailableError(f"blob directory {os.path.abspath(blob_dir)} does not exist; check the blob "
                                    "directory given (--blob-dir or MMLIB_BLOB_DIR), or restore it from a backup")
    return FileSystemPersistenceService(blob_dir, durable)


StoreLike = Union[Store, tuple, str]  # what the one-line API takes as a store


def store_of(store: StoreLike) -> Store:
    """`store` opened when it is a path or URI (as `open_store` takes), else checked to be a store."""
    return open_store(store) if isinstance(store, str) else checked_store(store)
