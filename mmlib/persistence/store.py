"""Open a (blob store, document store) pair from one string: a directory or a `mongodb://` URI."""

import os
from typing import NamedTuple, Optional

from mmlib.errors import StoreUnavailableError
from mmlib.persistence._filesystem import FileSystemPersistenceService
from mmlib.persistence._mongo import MongoDictPersistenceService
from mmlib.persistence._sqlite import SQLiteDictPersistenceService
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService

METADATA_FILE = "metadata.sqlite"
BLOB_DIR = "blobs"
MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")


class Store(NamedTuple):
    """The two halves of an mmlib store, in the order save services take them."""

    file_pers_service: FilePersistenceService
    dict_pers_service: DictPersistenceService


def open_store(location: str, blob_dir: Optional[str] = None) -> Store:
    """A directory gives SQLite + files inside it (created on first use); a MongoDB URI gives MongoDB documents
    with blobs in `blob_dir` (a shared directory)."""
    if not isinstance(location, str) or not location:
        raise StoreUnavailableError("no store given: pass a directory or a mongodb:// URI (or set MMLIB_STORE)")
    if location.startswith(MONGO_SCHEMES):
        if blob_dir is None:
            raise StoreUnavailableError(
                f"a MongoDB store needs a blob location: pass blob_dir= (a directory every node shares)")
        return Store(FileSystemPersistenceService(blob_dir), MongoDictPersistenceService(location))
    if "://" in location:
        raise StoreUnavailableError(
            f"unknown store scheme in {location!r}: use a directory path or one of {', '.join(MONGO_SCHEMES)}")
    directory = os.path.abspath(location)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise StoreUnavailableError(f"cannot create the store directory {directory}: {error}") from error
    return Store(FileSystemPersistenceService(os.path.join(directory, BLOB_DIR)),
                 SQLiteDictPersistenceService(os.path.join(directory, METADATA_FILE)))
