"""Damage a blob behind the back of each of mmlib's blob stores, through its public testing hooks.

The conformance suite's `corrupt` hooks (tests/persistence/test_file_services.py) and the `corrupt_blob` fixture
use these.
"""

from mmlib.persistence import FileSystemPersistenceService, GridFSFilePersistenceService
from mmlib.persistence._s3 import ObjectStoreFilePersistenceService


def _flipped(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def flip_byte_on_disk(store: FileSystemPersistenceService, digest: str) -> None:
    with open(store.blob_path(digest), "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(_flipped(first))


def flip_byte_in_gridfs(store: GridFSFilePersistenceService, digest: str) -> None:
    database = store.mongo_service.database
    file_id = database["fs.files"].find_one({"filename": digest})["_id"]
    chunk = database["fs.chunks"].find_one({"files_id": file_id, "n": 0})
    database["fs.chunks"].update_one({"_id": chunk["_id"]}, {"$set": {"data": _flipped(chunk["data"])}})


def flip_byte_in_object(store: ObjectStoreFilePersistenceService, digest: str) -> None:
    data = store.client.get_object(Bucket=store.bucket, Key=store.key(digest))["Body"].read()
    store.client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=_flipped(data))


_FLIPPERS = {FileSystemPersistenceService: flip_byte_on_disk, GridFSFilePersistenceService: flip_byte_in_gridfs,
             ObjectStoreFilePersistenceService: flip_byte_in_object}


def corrupt_blob(store, digest: str) -> None:
    """Flip the first byte of a stored blob, whichever of mmlib's backends holds it."""
    _FLIPPERS[type(store)](store, digest)
