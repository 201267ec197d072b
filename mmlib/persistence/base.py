"""The two store interfaces: content-addressed blobs and JSON-like documents.

Save services call them in this order for one model: `save_file` for every blob
(weights, code, archives), then `save_dict` for each metadata document in
dependency order, the model document last. A model exists once its document
does, so a crash leaves only unreferenced blobs and documents behind.
"""

import contextlib
import logging
import os
import uuid
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Callable, Generic, Iterator, NamedTuple, Optional, TypeVar

from mmlib.constants import ID
from mmlib.errors import BlobNotFoundError, DocumentNotFoundError, InvalidIdError, InvalidSaveInfoError
from mmlib.persistence._archive import extract_directory_archive, write_directory_archive
from mmlib.persistence._hashing import (CHUNK_SIZE, HashingWriter, NullSink, VerifiedReader, copy_stream, copy_verified,
                                       read_verified)
from mmlib.persistence._references import DIGEST_LENGTH, make_reference_id, split_reference_id
from mmlib.util.atomic import atomic_write
from mmlib.util.buffers import BinarySink, BinarySource
from mmlib.util.hash import new_hasher

__all__ = ["BLOB", "DIGEST_LENGTH", "DictPersistenceService", "FilePersistenceService", "FileReference", "StoredItem",
           "document_id", "missing_document", "split_reference_id"]

logger = logging.getLogger(__name__)

Handle = TypeVar("Handle", bound=BinarySink)  # what a backend writes a new blob to
BLOB = "blob"  # the kind of a StoredItem that is a blob


class StoredItem(NamedTuple):
    """One stored thing: a blob (`kind` BLOB, `item_id` its digest) or a document (`kind` its type)."""

    kind: str
    item_id: str


class FileReference:
    """Points at a file: `path` on local disk and/or `reference_id` in a file store, plus its `size` once known."""

    def __init__(self, path: Optional[str] = None, reference_id: Optional[str] = None):
        self.path = path
        self.reference_id = reference_id
        self.size: Optional[int] = None

    def __repr__(self) -> str:
        return f"FileReference(path={self.path!r}, reference_id={self.reference_id!r})"

    def stored_id(self) -> str:
        """`reference_id` of a stored file; InvalidIdError when the file was never stored (it has none)."""
        if self.reference_id is None:
            raise InvalidIdError(f"{self!r} names no stored file (it has no reference id); store it with save_file")
        return self.reference_id


class FilePersistenceService(ABC, Generic[Handle]):
    """A content-addressed blob store: a blob's id is the BLAKE3 digest of its bytes, so equal bytes are stored once.

    Backends implement the raw blob hooks; hashing, naming, directories and integrity checks live here. A write
    calls `_open_blob_writer`, writes to the handle, then `_commit_blob` with the digest, or `_abort_blob` when
    anything failed; a stored blob is reused through `blob_exists` and `_touch_blob`.
    """

    time_resolution_s = 0.0  # how coarse `blob_times` is (whole seconds in object storage)

    def save_file(self, file_ref: FileReference) -> None:
        """Store the file or directory at `file_ref.path` and set `file_ref.reference_id`."""
        path = file_ref.path
        if path is None or not os.path.exists(path):
            raise InvalidSaveInfoError(f"cannot store {path!r}: no such file or directory; pass an existing path")
        name = os.path.basename(os.path.normpath(path))
        if os.path.isdir(path):
            digest = self.write_stream(lambda sink: write_directory_archive(path, sink))
            file_ref.reference_id = make_reference_id(digest, name, is_directory=True)
        elif os.path.getsize(path) <= CHUNK_SIZE:  # code files: hashed first, so a stored one is not written again
            with open(path, "rb") as source:
                file_ref.reference_id = self.save_bytes(source.read(), name).reference_id
        else:
            with open(path, "rb") as source:
                digest = self.write_stream(lambda sink: copy_stream(source, sink))
            file_ref.reference_id = make_reference_id(digest, name)

    def save_bytes(self, data: bytes, name: str) -> FileReference:
        """Store `data` as a file called `name`; skips the write when the same bytes are already stored."""
        hasher = new_hasher()
        hasher.update(data)
        digest = hasher.hexdigest()
        if self.blob_exists(digest):
            self._touch_blob(digest)
        else:
            self.write_stream(lambda sink: sink.write(data))
        return FileReference(reference_id=make_reference_id(digest, name))

    def write_stream(self, produce: Callable[[HashingWriter], object]) -> str:
        """Store the bytes that `produce(fileobj)` writes, hashing on the way; returns their digest.

        When producing or committing fails (a full disk, an exception in `produce`), the unfinished blob is
        removed before the error propagates: a failed save leaves nothing behind.
        """
        handle = self._open_blob_writer()
        writer = HashingWriter(handle)
        try:
            try:
                produce(writer)
            finally:
                writer.close()
            digest = writer.hasher.hexdigest()
            self._commit_blob(handle, digest)
        except BaseException:
            self._abort_blob(handle)
            raise
        logger.debug("stored blob %s (%d bytes)", digest, writer.size)
        return digest

    def recover_file(self, file_ref: FileReference, dst_dir: str) -> None:
        """Restore the referenced file (or directory) under its original name in `dst_dir`; set `file_ref.path`."""
        reference_id = file_ref.stored_id()
        digest, name, is_directory = split_reference_id(reference_id)
        os.makedirs(dst_dir, exist_ok=True)
        target = os.path.join(dst_dir, name)
        if is_directory:
            extract_directory_archive(self.read_bytes(reference_id), target, reference_id)
        else:
            # Restored files are scratch copies of what the store keeps: atomic, but not worth two fsyncs each.
            with atomic_write(target, durable=False) as out, self._open_blob_reader(digest) as source:
                copy_verified(source, out, digest)
        file_ref.path = target

    def read_bytes(self, reference_id: str) -> memoryview:
        """All bytes of a stored file in one writable buffer, checked against its digest (IntegrityError)."""
        digest, _, _ = split_reference_id(reference_id)
        size = self._blob_size(digest)
        with self._open_blob_reader(digest) as source:
            return read_verified(source, size, digest)

    @contextlib.contextmanager
    def verified_reader(self, reference_id: str) -> Iterator[VerifiedReader]:
        """A stored file read front to back into the caller's buffers, hashed as it arrives: the caller reads what it
        needs, then calls `finish()`, which raises IntegrityError unless the bytes were the file's."""
        digest, _, _ = split_reference_id(reference_id)
        size = self._blob_size(digest)
        with self._open_blob_reader(digest) as source:
            reader = VerifiedReader(source, size, digest)
            try:
                yield reader
            finally:
                reader.close()

    def file_size(self, file_ref: FileReference) -> None:
        """Set `file_ref.size` to the number of bytes the referenced blob takes in the store."""
        digest, _, _ = split_reference_id(file_ref.stored_id())
        file_ref.size = self._blob_size(digest)

    def verify_blob(self, digest: str) -> None:
        """Re-hash one stored blob; raise IntegrityError when its bytes no longer match its digest."""
        with self._open_blob_reader(digest) as source:
            copy_verified(source, NullSink(), digest)

    @abstractmethod
    def blob_exists(self, digest: str) -> bool:
        """True when a blob with this digest is stored."""

    @abstractmethod
    def blob_digests(self) -> Iterator[str]:
        """The digests of all stored blobs."""

    @abstractmethod
    def delete_blob(self, digest: str) -> None:
        """Remove a blob (garbage collection); a missing blob is not an error."""

    @abstractmethod
    def blob_times(self) -> dict[str, float]:
        """digest -> when the blob was last written or reused by a save (seconds since the epoch).

        Garbage collection keeps blobs younger than its grace period: a save still running may need them.
        """

    def partial_uploads(self) -> list[str]:
        """Ids of uploads that were started but never committed (a crash, or a save still running)."""
        return sorted(self.partial_upload_times())

    @abstractmethod
    def partial_upload_times(self) -> dict[str, float]:
        """Upload id -> when the unfinished upload was started (seconds since the epoch)."""

    @abstractmethod
    def delete_partial_upload(self, upload_id: str) -> None:
        """Remove one unfinished upload (garbage collection); a missing one is not an error."""

    @abstractmethod
    def _open_blob_writer(self) -> Handle:
        """A writable handle for a new blob whose digest is not yet known."""

    @abstractmethod
    def _commit_blob(self, handle: Handle, digest: str) -> None:
        """Durably publish the written bytes under `digest` (no-op if it exists) and close the handle."""

    @abstractmethod
    def _touch_blob(self, digest: str) -> None:
        """Mark a stored blob as just written: a save reuses it, so garbage collection must keep it a while."""

    @abstractmethod
    def _abort_blob(self, handle: Handle) -> None:
        """Discard a blob being written, whatever state writing or committing it failed in."""

    @abstractmethod
    def _open_blob_reader(self, digest: str) -> AbstractContextManager[BinarySource]:
        """A readable handle on a stored blob; raises BlobNotFoundError when missing."""

    @abstractmethod
    def _blob_size(self, digest: str) -> int:
        """Stored size of a blob in bytes; raises BlobNotFoundError when missing."""


class DictPersistenceService(ABC):
    """A document store: JSON-compatible dicts grouped by type (a table or collection per type)."""

    def generate_id(self) -> str:
        """A new unique document id."""
        return uuid.uuid4().hex

    @abstractmethod
    def save_dict(self, insert_dict: dict, represent_type: str) -> str:
        """Store a document and return its id (the dict's `id` value when given, else a new one)."""

    @abstractmethod
    def insert_dict(self, insert_dict: dict, represent_type: str) -> bool:
        """Store a document under its `id` only if no document of this type has that id: True when it was stored,
        False when one existed (left unchanged). Atomic across processes, so that of several writers claiming
        one id (a version number of a name) exactly one gets True."""

    @abstractmethod
    def recover_dict(self, dict_id: str, represent_type: str) -> dict:
        """The stored document; raises DocumentNotFoundError when absent."""

    @abstractmethod
    def dict_size(self, dict_id: str, represent_type: str) -> int:
        """Size in bytes of the stored document."""

    @abstractmethod
    def id_exists(self, dict_id: str, represent_type: str) -> bool:
        """True only when a document with this id and type is stored."""

    @abstractmethod
    def all_ids_for_type(self, represent_type: str) -> list[str]:
        """Ids of all documents of one type, oldest first."""

    @abstractmethod
    def document_times(self, represent_type: str) -> dict[str, float]:
        """id -> when each document of one type was last saved (seconds since the epoch); saving a document that
        exists again refreshes it, so garbage collection keeps a document a running save reuses."""

    @abstractmethod
    def add_field(self, dict_id: str, represent_type: str, field: str, value) -> None:
        """Set one field of a stored document."""

    @abstractmethod
    def delete_dict(self, dict_id: str, represent_type: str) -> None:
        """Remove a document (garbage collection); a missing one is not an error."""

    @abstractmethod
    def all_types(self) -> list[str]:
        """Every document type present in the store."""


def document_id(insert_dict: dict, generate: Callable[[], str]) -> str:
    """The id a new document gets: its own `id` field when present, else a freshly generated one."""
    given = insert_dict.get(ID)
    return str(given) if given is not None else generate()


def missing_document(dict_id: str, represent_type: str) -> DocumentNotFoundError:
    """The error for an absent document, telling the caller how to list valid ids."""
    return DocumentNotFoundError(
        f"no {represent_type} document with id {dict_id!r} in this store; "
        "list the stored models with `mmlib ls` or `all_model_ids()`")


def missing_blob(digest: str, location: str) -> BlobNotFoundError:
    """The error for an absent blob in the store at `location`, telling the caller how to recover."""
    return BlobNotFoundError(f"blob {digest} is missing from {location}; restore it from a backup or run "
                             "`mmlib verify` to list the models that need it")
