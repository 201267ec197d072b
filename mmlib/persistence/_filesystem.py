"""Blob store on a local or shared file system: `<base>/<d[:2]>/<d[2:]>`, written to a temp name, fsynced, renamed."""

import os
import tempfile
from typing import BinaryIO, Iterator

from mmlib.errors import ModelNotFoundError, StoreUnavailableError
from mmlib.persistence.base import DIGEST_LENGTH, FilePersistenceService

_TEMP_DIR = "tmp"


class FileSystemPersistenceService(FilePersistenceService):
    """Content-addressed blobs under `base_path`; safe for several processes and nodes sharing the directory."""

    def __init__(self, base_path: str):
        self.base_path = os.path.abspath(base_path)
        try:
            os.makedirs(os.path.join(self.base_path, _TEMP_DIR), exist_ok=True)
        except OSError as error:
            raise StoreUnavailableError(
                f"cannot create the file store at {self.base_path}: {error}; "
                "choose a directory you can write to") from error
        if not os.access(self.base_path, os.W_OK):
            raise StoreUnavailableError(
                f"the file store at {self.base_path} is not writable; fix its permissions or choose another directory")

    def __repr__(self) -> str:
        return f"FileSystemPersistenceService({self.base_path!r})"

    def _blob_path(self, digest: str) -> str:
        return os.path.join(self.base_path, digest[:2], digest[2:])

    def blob_exists(self, digest: str) -> bool:
        return os.path.exists(self._blob_path(digest))

    def blob_digests(self) -> Iterator[str]:
        for prefix in sorted(os.listdir(self.base_path)):
            folder = os.path.join(self.base_path, prefix)
            if len(prefix) != 2 or not os.path.isdir(folder):
                continue
            for rest in sorted(os.listdir(folder)):
                if len(prefix) + len(rest) == DIGEST_LENGTH:
                    yield prefix + rest

    def delete_blob(self, digest: str) -> None:
        try:
            os.unlink(self._blob_path(digest))
        except FileNotFoundError:
            pass

    def partial_uploads(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.base_path, _TEMP_DIR)))

    def delete_partial_upload(self, upload_id: str) -> None:
        if os.path.basename(upload_id) != upload_id or upload_id in ("", ".", ".."):
            raise ModelNotFoundError(
                f"{upload_id!r} is not an upload id of this store; list them with partial_uploads()")
        try:
            os.unlink(os.path.join(self.base_path, _TEMP_DIR, upload_id))
        except FileNotFoundError:
            pass

    def _open_blob_writer(self) -> BinaryIO:
        fd, temp_path = tempfile.mkstemp(dir=os.path.join(self.base_path, _TEMP_DIR), suffix=".partial")
        os.close(fd)
        return open(temp_path, "wb")

    def _commit_blob(self, handle: BinaryIO, digest: str) -> None:
        temp_path = handle.name
        target = self._blob_path(digest)
        if os.path.exists(target):
            handle.close()
            os.unlink(temp_path)
            return
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(temp_path, target)

    def _abort_blob(self, handle: BinaryIO) -> None:
        handle.close()
        os.unlink(handle.name)

    def _open_blob_reader(self, digest: str) -> BinaryIO:
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError as error:
            raise ModelNotFoundError(
                f"blob {digest} is missing from {self.base_path}; restore it from a backup "
                "or run `mmlib verify` to list the models that need it") from error

    def _blob_size(self, digest: str) -> int:
        try:
            return os.path.getsize(self._blob_path(digest))
        except FileNotFoundError as error:
            raise ModelNotFoundError(f"blob {digest} is missing from {self.base_path}") from error
