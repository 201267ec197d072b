"""The blob-store conformance suite (mmlib.testing.stores.FileStoreTests) on each of mmlib's blob stores."""

import pytest

from mmlib.persistence import FileSystemPersistenceService, GridFSFilePersistenceService
from mmlib.persistence._s3 import ObjectStoreFilePersistenceService
from mmlib.testing.stores import FileStoreTests
from store_helpers import flip_byte_in_gridfs, flip_byte_in_object, flip_byte_on_disk


class TestFileSystem(FileStoreTests):
    @pytest.fixture
    def store(self, tmp_path):
        return FileSystemPersistenceService(str(tmp_path / "blobs"))

    def corrupt(self, store, digest):
        flip_byte_on_disk(store, digest)


class TestGridFS(FileStoreTests):
    @pytest.fixture
    def store(self, mongo_database):
        uri, name = mongo_database
        return GridFSFilePersistenceService(uri, db_name=name)

    def corrupt(self, store, digest):
        flip_byte_in_gridfs(store, digest)


class TestObjectStore(FileStoreTests):
    @pytest.fixture
    def store(self, s3_test_location):
        return ObjectStoreFilePersistenceService(s3_test_location, part_size=5 * 1024 * 1024)  # S3's smallest

    def corrupt(self, store, digest):
        flip_byte_in_object(store, digest)
