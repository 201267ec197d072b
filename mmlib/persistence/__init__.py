"""Stores: a content-addressed blob store and a document store, each with several backends."""

from mmlib.persistence._filesystem import FileSystemPersistenceService
from mmlib.persistence._gridfs import GridFSFilePersistenceService
from mmlib.persistence._mongo import MongoDictPersistenceService
from mmlib.persistence._sqlite import SQLiteDictPersistenceService
from mmlib.persistence.store import Store, open_store
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
