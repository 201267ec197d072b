"""The two store interfaces: content-addressed blobs and JSON-like documents.

Save services call them in this order for one model: `save_file` for every blob
(weights, code, archives), then `save_dict` for each metadata document in
dependency order, the model document last. A model exists once its document
does, so a crash leaves only unreferenced blobs and documents behind.
"""

import concurrent.futures
import io
import logging
import os
import tarfile
import tempfile
import uuid
from abc import ABC, abstractmethod
from typing import BinaryIO, Callable, Iterator, Optional

import numpy as np

from mmlib.constants import ID
from mmlib.errors import IntegrityError, InvalidSaveInfoError, ModelNotFoundError
from mmlib.util.hash import new_hasher

logger = logging.getLogger(__name__)

CHUNK_SIZE = 4 * 1024 * 1024
PARALLEL_HASH_BYTES = 1024 * 1024
DIGEST_LENGTH = 64
DIRECTORY_MARK = "/"


class FileReference:
    """Points at a file: `path` on local disk and/or `reference_id` in a file store, plus its `size` once known."""

    def __init__(self, path: Optional[str] = None, reference_id: Optional[str] = None):
        self.path = path
        self.reference_id = reference_id
        self.size: Optional[int] = None

    def __repr__(self) -> str:
        return f"FileReference(path={self.path!r}, reference_id={self.reference_id!r})"


def split_reference_id(reference_id: str) -> tuple[str, str, bool]:
    """Split `<digest>/<name>[/]` into (digest, file name, is_directory)."""
    digest, sep, name = reference_id.partition("/")
    is_directory = name.endswith(DIRECTORY_MARK)
    name = name.rstrip(DIRECTORY_MARK)
    if (not sep or len(digest) != DIGEST_LENGTH or not name or "/" in name or name in (".", "..")
            or any(c not in "0123456789abcdef" for c in digest)):
        raise ModelNotFoundError(
            f"{reference_id!r} is not a file reference id of this store (expected '<digest>/<file name>')")
    return digest, name, is_directory


def _directory_archive(directory: str, fileobj: BinaryIO) -> None:
    """Write a reproducible tar of `directory` (sorted names, no owners or times) so equal trees give equal bytes."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                tar.add(full, arcname=os.path.relpath(full, directory), filter=normalise)


class _HashingWriter:
    """File-like wrapper that hashes and counts every byte on its way into a blob writer.

    A large write is hashed in a helper thread while it is written (both release the GIL), so hashing
    adds little to the time a big blob takes.
    """

    def __init__(self, sink: BinaryIO):
        self._sink = sink
        self.hasher = new_hasher()
        self.size = 0
        self._helper: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def write(self, data: bytes) -> int:
        size = memoryview(data).nbytes
        if size < PARALLEL_HASH_BYTES:
            self.hasher.update(data)
            self._sink.write(data)
        else:
            if self._helper is None:
                self._helper = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlib-hash")
            hashed = self._helper.submit(self.hasher.update, data)
            try:
                self._sink.write(data)
            finally:
                hashed.result()
        self.size += size
        return size

    def close(self) -> None:
        """Stop the helper thread (the sink stays open)."""
        if self._helper is not None:
            self._helper.shutdown()
            self._helper = None

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._sink.flush()


class FilePersistenceService(ABC):
    """A content-addressed blob store: a blob's id is the BLAKE3 digest of its bytes, so equal bytes are stored once.

    Backends implement the raw blob hooks (`_open_blob_writer`, `_commit_blob`, ...);
    hashing, naming, directories and integrity checks live here.
    """

    def save_file(self, file_ref: FileReference) -> None:
        """Store the file or directory at `file_ref.path` and set `file_ref.reference_id`."""
        path = file_ref.path
        if path is None or not os.path.exists(path):
            raise InvalidSaveInfoError(f"cannot store {path!r}: no such file or directory; pass an existing path")
        name = os.path.basename(os.path.normpath(path))
        if os.path.isdir(path):
            digest = self.write_stream(lambda sink: _directory_archive(path, sink))
            file_ref.reference_id = f"{digest}/{name}{DIRECTORY_MARK}"
        elif os.path.getsize(path) <= CHUNK_SIZE:  # code files: hashed first, so a stored one is not written again
            with open(path, "rb") as source:
                file_ref.reference_id = self.save_bytes(source.read(), name).reference_id
        else:
            with open(path, "rb") as source:
                digest = self.write_stream(lambda sink: _copy_stream(source, sink))
            file_ref.reference_id = f"{digest}/{name}"

    def save_bytes(self, data: bytes, name: str) -> FileReference:
        """Store `data` as a file called `name`; skips the write when the same bytes are already stored."""
        hasher = new_hasher()
        hasher.update(data)
        digest = hasher.hexdigest()
        if self.blob_exists(digest):
            self._touch_blob(digest)
        else:
            self.write_stream(lambda sink: sink.write(data))
        return FileReference(reference_id=f"{digest}/{name}")

    def write_stream(self, produce: Callable[[BinaryIO], None]) -> str:
        """Store the bytes that `produce(fileobj)` writes, hashing on the way; returns their digest.

        When producing or committing fails (a full disk, an exception in `produce`), the unfinished blob is
        removed before the error propagates: a failed save leaves nothing behind.
        """
        handle = self._open_blob_writer()
        writer = _HashingWriter(handle)
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
        digest, name, is_directory = split_reference_id(file_ref.reference_id)
        os.makedirs(dst_dir, exist_ok=True)
        target = os.path.join(dst_dir, name)
        if is_directory:
            archive = io.BytesIO(self.read_bytes(file_ref.reference_id))
            try:
                with tarfile.open(fileobj=archive, mode="r") as tar:
                    tar.extractall(target, filter="data")
            except tarfile.TarError as error:
                raise IntegrityError(f"the stored directory {file_ref.reference_id} is not an archive mmlib would "
                                     f"write ({error}); nothing outside {dst_dir} was written: run `mmlib verify` "
                                     "and restore the store from a backup") from error
        else:
            fd, temp_path = tempfile.mkstemp(dir=dst_dir, prefix=f".{name}.", suffix=".partial")
            try:
                with os.fdopen(fd, "wb") as out:
                    self._copy_verified(digest, out)
                os.replace(temp_path, target)
            except BaseException:
                if os.path.exists(temp_path):
                    os.unlink(temp_path)
                raise
        file_ref.path = target

    def read_bytes(self, reference_id: str) -> memoryview:
        """All bytes of a stored file, read straight into one writable buffer and checked against its digest.

        Chunks are hashed in a helper thread while the next one is read, so the check costs little time. The
        buffer is not zero-filled first (the read fills it), which saves a pass over large blobs.
        """
        digest, _, _ = split_reference_id(reference_id)
        size = self._blob_size(digest)
        view = memoryview(np.empty(size, dtype=np.uint8))
        hasher = new_hasher()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlib-hash") as helper, \
                self._open_blob_reader(digest) as source:
            offset = 0
            while offset < size:
                count = _read_into(source, view[offset:offset + CHUNK_SIZE])
                if not count:
                    break
                helper.submit(hasher.update, view[offset:offset + count])
                offset += count
            complete = offset == size and not source.read(1)
        if not complete:
            raise _corrupted_blob(digest, f"it no longer holds its recorded {size} bytes")
        if hasher.hexdigest() != digest:
            raise _corrupted_blob(digest, f"its bytes hash to {hasher.hexdigest()}")
        return view

    def file_size(self, file_ref: FileReference) -> None:
        """Set `file_ref.size` to the number of bytes the referenced blob takes in the store."""
        digest, _, _ = split_reference_id(file_ref.reference_id)
        file_ref.size = self._blob_size(digest)

    def verify_blob(self, digest: str) -> None:
        """Re-hash one stored blob; raise IntegrityError when its bytes no longer match its digest."""
        self._copy_verified(digest, _NullSink())

    def _copy_verified(self, digest: str, out) -> None:
        """Stream a blob into `out`, hashing as it goes; raise IntegrityError on a mismatch."""
        hasher = new_hasher()
        with self._open_blob_reader(digest) as source:
            while chunk := source.read(CHUNK_SIZE):
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != digest:
            raise _corrupted_blob(digest, f"its bytes hash to {hasher.hexdigest()}")

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
    def _open_blob_writer(self) -> BinaryIO:
        """A writable handle for a new blob whose digest is not yet known."""

    @abstractmethod
    def _commit_blob(self, handle: BinaryIO, digest: str) -> None:
        """Durably publish the written bytes under `digest` (no-op if it exists) and close the handle."""

    @abstractmethod
    def _touch_blob(self, digest: str) -> None:
        """Mark a stored blob as just written: a save reuses it, so garbage collection must keep it a while."""

    @abstractmethod
    def _abort_blob(self, handle: BinaryIO) -> None:
        """Discard a blob being written, whatever state writing or committing it failed in."""

    @abstractmethod
    def _open_blob_reader(self, digest: str) -> BinaryIO:
        """A readable handle on a stored blob; raises ModelNotFoundError when missing."""

    @abstractmethod
    def _blob_size(self, digest: str) -> int:
        """Stored size of a blob in bytes."""


class _NullSink:
    """A write target that drops everything (for verification passes)."""

    def write(self, data: bytes) -> int:
        return len(data)


def _corrupted_blob(digest: str, detail: str) -> IntegrityError:
    """The error for a stored blob whose bytes are not the ones its digest names."""
    return IntegrityError(f"blob {digest} is corrupted: {detail}; run `mmlib verify` to find affected models and "
                          "restore the blob from a backup")


def _read_into(source: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `source` (with `readinto` where the stream has it); the number of bytes read."""
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return readinto(view) or 0
    chunk = source.read(len(view))
    view[:len(chunk)] = chunk
    return len(chunk)


def _copy_stream(source: BinaryIO, sink) -> None:
    """Copy a binary stream in chunks."""
    while chunk := source.read(CHUNK_SIZE):
        sink.write(chunk)


class DictPersistenceService(ABC):
    """A document store: JSON-compatible dicts grouped by type (a table or collection per type)."""

    def generate_id(self) -> str:
        """A new unique document id."""
        return uuid.uuid4().hex

    @abstractmethod
    def save_dict(self, insert_dict: dict, represent_type: str) -> str:
        """Store a document and return its id (the dict's `id` value when given, else a new one)."""

    @abstractmethod
    def recover_dict(self, dict_id: str, represent_type: str) -> dict:
        """The stored document; raises ModelNotFoundError when absent."""

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


def missing_document(dict_id: str, represent_type: str) -> ModelNotFoundError:
    """The error for an absent document, telling the caller how to list valid ids."""
    return ModelNotFoundError(
        f"no {represent_type} document with id {dict_id!r} in this store; "
        "list the stored models with `mmlib ls` or `all_model_ids()`")

