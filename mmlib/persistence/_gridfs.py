"""Blob store in MongoDB GridFS, so nodes need nothing but a MongoDB URI.

A blob is uploaded under a temporary name while it is hashed, then renamed to its
digest; a crash leaves a `partial-*` file, or chunks of an upload that never closed, which garbage
collection removes.
"""

import contextlib
import datetime
import uuid
from typing import BinaryIO, Iterator, Optional

import bson
import gridfs

from mmlib.errors import InvalidIdError
from mmlib.persistence.base import DIGEST_LENGTH, FilePersistenceService, missing_blob
from mmlib.util.mongo import MongoBacked, MongoService
from mmlib.util.mongo_uri import DEFAULT_DB_NAME

_PARTIAL_PREFIX = "partial-"
# An ObjectId keeps whole seconds: an upload started up to this much later than its id says.
_OBJECT_ID_RESOLUTION_S = 1.0


class GridFSFilePersistenceService(MongoBacked, FilePersistenceService["_UploadWriter"]):
    """Content-addressed blobs in the GridFS bucket of a MongoDB database (`host`: host, `host:port` or URI).

    `mongo_service` shares an open connection instead of opening one for `host` and `db_name` (which are then
    not used): `open_store` gives the documents and the GridFS blobs of one URI one client.
    """

    def __init__(self, host: str = "127.0.0.1", db_name: str = DEFAULT_DB_NAME, *,
                 mongo_service: Optional[MongoService] = None):
        super().__init__(host, db_name, mongo_service=mongo_service)
        self._bucket = gridfs.GridFSBucket(self._mongo_service.database)
        self._files = self._mongo_service.database["fs.files"]
        self._chunks = self._mongo_service.database["fs.chunks"]

    def blob_exists(self, digest: str) -> bool:
        with self._mongo_service.errors():
            return self._files.count_documents({"filename": digest}, limit=1) > 0

    def blob_digests(self) -> Iterator[str]:
        with self._mongo_service.errors():
            names = self._files.distinct("filename")
        return iter(sorted(name for name in names if len(name) == DIGEST_LENGTH))

    def blob_times(self) -> dict[str, float]:
        with self._mongo_service.errors():
            documents = list(self._files.find({}))
        times: dict[str, float] = {}
        for document in documents:
            name = document.get("filename")
            if isinstance(name, str) and len(name) == DIGEST_LENGTH:
                times[name] = max(times.get(name, 0.0), _epoch_seconds(document["uploadDate"]))
        return times

    def partial_upload_times(self) -> dict[str, float]:
        """Uploads closed but never renamed to their digest (by upload time), and chunks whose upload never closed
        (by the time in their upload's ObjectId)."""
        with self._mongo_service.errors():
            never_renamed = list(self._files.find({"filename": {"$regex": f"^{_PARTIAL_PREFIX}"}}))
            closed = set(self._files.distinct("_id"))
            chunk_owners = self._chunks.distinct("files_id")
        never_closed = [file_id for file_id in chunk_owners
                        if file_id not in closed and isinstance(file_id, bson.ObjectId)]
        times = {str(document["_id"]): _epoch_seconds(document["uploadDate"]) for document in never_renamed}
        times.update({str(file_id): file_id.generation_time.timestamp() + _OBJECT_ID_RESOLUTION_S
                      for file_id in never_closed})
        return times

    def delete_partial_upload(self, upload_id: str) -> None:
        if not bson.ObjectId.is_valid(upload_id):
            raise InvalidIdError(
                f"{upload_id!r} is not an upload id of this store; list them with partial_uploads()")
        file_id = bson.ObjectId(upload_id)
        with self._mongo_service.errors():
            document = self._files.find_one({"_id": file_id})
            if document is not None and not str(document.get("filename")).startswith(_PARTIAL_PREFIX):
                return  # committed since it was listed: a blob now, not an unfinished upload
            # An upload that never closed has no file document (NoFile); its chunks are deleted all the same.
            with contextlib.suppress(gridfs.errors.NoFile):
                self._bucket.delete(file_id)

    def delete_blob(self, digest: str) -> None:
        with self._mongo_service.errors():
            for document in list(self._files.find({"filename": digest})):
                self._bucket.delete(document["_id"])

    def _open_blob_writer(self) -> "_UploadWriter":
        with self._mongo_service.errors():
            return _UploadWriter(self._bucket.open_upload_stream(f"{_PARTIAL_PREFIX}{uuid.uuid4().hex}"))

    def _commit_blob(self, handle: "_UploadWriter", digest: str) -> None:
        with self._mongo_service.errors():
            handle.upload.close()
        if self.blob_exists(digest):
            with self._mongo_service.errors():
                self._bucket.delete(handle.upload._id)
            self._touch_blob(digest)
        else:
            with self._mongo_service.errors():
                self._bucket.rename(handle.upload._id, digest)

    def _touch_blob(self, digest: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        with self._mongo_service.errors():
            self._files.update_many({"filename": digest}, {"$set": {"uploadDate": now}})

    def _abort_blob(self, handle: "_UploadWriter") -> None:
        with self._mongo_service.errors():
            handle.upload.abort()  # removes the upload's chunks and, if it closed, its file document

    def _open_blob_reader(self, digest: str) -> BinaryIO:
        with self._mongo_service.errors():
            try:
                return self._bucket.open_download_stream_by_name(digest)
            except gridfs.errors.NoFile as error:
                raise missing_blob(digest, f"GridFS in {self._mongo_service.db_name!r}") from error

    def _blob_size(self, digest: str) -> int:
        with self._mongo_service.errors():
            document = self._files.find_one({"filename": digest})
        if document is None:
            raise missing_blob(digest, f"GridFS in {self._mongo_service.db_name!r}")
        return int(document["length"])


def _epoch_seconds(moment: datetime.datetime) -> float:
    """Seconds since the epoch of a time MongoDB returned (naive datetimes are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


class _UploadWriter:
    """Adapts a GridFS upload stream to the binary `write` that blob writers get (it rejects memoryviews)."""

    def __init__(self, upload: gridfs.GridIn):
        self.upload = upload

    def write(self, data) -> int:
        self.upload.write(data if isinstance(data, bytes) else bytes(data))
        return len(data)
