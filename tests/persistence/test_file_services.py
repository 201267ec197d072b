"""The blob-store conformance suite (mmlib.testing.stores.FileStoreTests) on each of mmlib's blob stores."""

import datetime
import time

import bson
import gridfs
import pytest

from mmlib.errors import BlobNotFoundError
from mmlib.persistence import FileSystemPersistenceService, GridFSFilePersistenceService
from mmlib.persistence._gridfs import _epoch_seconds
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

    def test_identical_bytes_keep_one_file_document(self, store):
        first = store.save_bytes(b"stored twice", "a.bin").stored_id().split("/")[0]
        store.save_bytes(b"stored twice", "b.bin")
        assert store.write_stream(lambda sink: sink.write(b"stored twice")) == first  # found only at the commit
        database = store.mongo_service.database
        assert database["fs.files"].count_documents({"filename": first}) == 1
        assert database["fs.files"].count_documents({}) == 1

    def test_a_missing_blob_names_the_database(self, store):
        with pytest.raises(BlobNotFoundError, match=f"missing from GridFS in {store.mongo_service.db_name!r}"):
            store.read_bytes("0" * 64 + "/x.bin")

    def test_blob_times_list_committed_blobs_at_their_latest_upload(self, store):
        database = store.mongo_service.database
        digest = store.save_bytes(b"uploaded twice", "t.bin").stored_id().split("/")[0]
        first = database["fs.files"].find_one({"filename": digest})["_id"]
        gridfs.GridFSBucket(database).upload_from_stream(digest, b"uploaded twice")  # a concurrent writer's copy
        latest = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
        database["fs.files"].update_one({"_id": first}, {"$set": {"uploadDate": latest}})
        unfinished = gridfs.GridFSBucket(database).open_upload_stream("partial-closed-but-never-renamed")
        unfinished.write(b"x" * 100)
        unfinished.close()
        assert store.blob_times() == {digest: latest.timestamp()}

    def test_a_commit_failing_after_the_upload_closed_leaves_no_partial_upload(self, store, monkeypatch):
        def fail(bucket, file_id, new_filename, session=None):
            raise RuntimeError("renaming failed")

        monkeypatch.setattr(gridfs.GridFSBucket, "rename", fail)
        with pytest.raises(RuntimeError, match="renaming failed"):
            store.save_bytes(b"never committed", "lost.bin")
        database = store.mongo_service.database
        assert (store.partial_uploads(), database["fs.files"].count_documents({}),
                database["fs.chunks"].count_documents({})) == ([], 0, 0)


def test_upload_times_from_mongodb_are_utc_in_every_time_zone(monkeypatch):
    """MongoDB returns naive datetimes in UTC; reading them as local time would shift every blob's age."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert _epoch_seconds(datetime.datetime(1970, 1, 2)) == 86400.0
        assert _epoch_seconds(datetime.datetime(1970, 1, 2, tzinfo=datetime.timezone.utc)) == 86400.0
    finally:
        monkeypatch.undo()
        time.tzset()


class TestObjectStore(FileStoreTests):
    @pytest.fixture
    def store(self, s3_test_location):
        return ObjectStoreFilePersistenceService(s3_test_location, part_size=5 * 1024 * 1024)  # S3's smallest

    def corrupt(self, store, digest):
        flip_byte_in_object(store, digest)
