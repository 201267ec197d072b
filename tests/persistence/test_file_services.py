"""The blob-store conformance suite (mmlib.testing.stores.FileStoreTests) on each of mmlib's blob stores."""

import time

import bson
import gridfs
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

    def test_unfinished_uploads_are_listed_from_their_start_and_deleted_one_by_one(self, store):
        database = store.mongo_service.database
        kept = store.save_bytes(b"a committed blob", "k.bin")
        kept_id = database["fs.files"].find_one({"filename": kept.stored_id().split("/")[0]})["_id"]
        started = time.time()
        closed = gridfs.GridFSBucket(database).open_upload_stream("partial-closed-but-never-renamed")
        closed.write(b"x" * 1000)
        closed.close()
        never_closed = bson.ObjectId()  # chunks whose upload never wrote its file document
        database["fs.chunks"].insert_one({"files_id": never_closed, "n": 0, "data": b"y" * 1000})
        times = store.partial_upload_times()
        assert sorted(times) == sorted([str(closed._id), str(never_closed)])
        assert all(started - 0.01 <= moment <= time.time() + 1 for moment in times.values())
        store.delete_partial_upload(str(kept_id))  # committed since it was listed: kept
        for upload_id in times:
            store.delete_partial_upload(upload_id)
        store.delete_partial_upload(str(never_closed))  # gone already: not an error
        assert store.partial_uploads() == []
        assert database["fs.chunks"].count_documents({"files_id": {"$in": [closed._id, never_closed]}}) == 0
        assert store.read_bytes(kept.reference_id) == b"a committed blob"


class TestObjectStore(FileStoreTests):
    @pytest.fixture
    def store(self, s3_test_location):
        return ObjectStoreFilePersistenceService(s3_test_location, part_size=5 * 1024 * 1024)  # S3's smallest

    def corrupt(self, store, digest):
        flip_byte_in_object(store, digest)
