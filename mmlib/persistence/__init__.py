"""Stores: a content-addressed blob store and a document store, each with several backends.

The MongoDB backends (`MongoDictPersistenceService`, `GridFSFilePersistenceService`) are imported on first use,
so the embedded store works without pymongo; without it, naming them raises StoreUnavailableError that says
what to install.
"""

from mmlib.persistence._filesystem import FileSystemPersistenceService
from mmlib.persistence._sqlite import SQLiteDictPersistenceService
from mmlib.persistence.store import Store, mongo_backend, open_store
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, FileReference

__all__ = [
    "DictPersistenceService",
    "FilePersistenceService",
    "FileReference",
    "FileSystemPersistenceService",
    "GridFSFilePersistenceService",
    "MongoDictPersistenceService",
    "SQLiteDictPersistenceService",
    "Store",
    "open_store",
]

_MONGO_NAMES = ("GridFSFilePersistenceService", "MongoDictPersistenceService")


def __getattr__(name: str):
    if name in _MONGO_NAMES:
        return mongo_backend(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MONGO_NAMES))
