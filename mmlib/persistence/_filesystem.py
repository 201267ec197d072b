"""Blob store on a local or shared file system: `<base>/<d[:2]>/<d[2:]>`, written to a temp name, fsynced, renamed."""

import contextlib
import os
import re
import threading
from typing import BinaryIO, Iterator, Optional

from mmlib.errors import IntegrityError, InvalidIdError, StoreUnavailableError
from mmlib.persistence._references import DIGEST_LENGTH
from mmlib.persistence.base import FilePersistenceService, missing_blob
from mmlib.util.atomic import TEMP_SUFFIX, create_temp_file, publish

_TEMP_DIR = "tmp"
_TEMP_PREFIX = "mmlib-"
# Only files of this pattern in tmp/ are mmlib's: garbage collection never touches anything else there.
_TEMP_NAME = re.compile(rf"{re.escape(_TEMP_PREFIX)}[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}")
WRITEBACK_BYTES = 8 * 1024 * 1024


class _WritebackFile:
    """A blob being written whose data a background thread pushes to disk (fdatasync) while more arrives.

    The fsync before the blob is published then waits only for what the disk has not taken yet, instead of
    the time to write plus a full flush of the blob.
    """

    def __init__(self, fd: int, path: str, durable: bool = True):
        self.name = path
        self.durable = durable
        self._file = os.fdopen(fd, "wb")  # not reopened by name: ext4 flushes a file truncated on open at close
        self._unsynced = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[OSError] = None

    def write(self, data) -> int:
        written = self._file.write(data)
        self._unsynced += written
        if self.durable and self._unsynced >= WRITEBACK_BYTES:
            self._file.flush()
            self._unsynced = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._sync_loop, name="mmlib-writeback", daemon=True)
                self._thread.start()
            self._wake.set()
        return written

    def _sync_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._file.fileno())
            except OSError as error:
                self._error = error
                return

    def _stop_writeback(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None

    def sync_and_close(self) -> None:
        """Make every written byte durable (unless not `durable`), then close; re-raises a failure of the
        background flushes."""
        self._stop_writeback()
        self._file.flush()
        if self._error is not None:
            self.close()
            raise self._error
        if self.durable:
            os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        self._stop_writeback()
        self._file.close()


class FileSystemPersistenceService(FilePersistenceService[_WritebackFile]):
    """Content-addressed blobs under `base_path`; safe for several processes and nodes sharing the directory.

    Every blob and its directory entry are on disk before the save goes on, so a model is never listed with a
    blob that a power failure could lose. `durable=False` skips those flushes, for scratch checkpoints: a crash
    of the process loses nothing, a power failure or kernel crash may lose or truncate recent blobs (which
    verification then reports).

    Opening creates nothing, so a user who may only read the directory can read blobs; the directory and its
    `tmp/` are created by the first write. Files and directories get the process umask's permissions.
    """

    def __init__(self, base_path: str, durable: bool = True):
        self.base_path = os.path.abspath(base_path)
        self.durable = durable

    def __repr__(self) -> str:
        return f"FileSystemPersistenceService({self.base_path!r})"

    def blob_path(self, digest: str) -> str:
        """Where the blob with this digest is (or would be) on disk; for tools and tests that read or change
        blobs behind the store's back."""
        return os.path.join(self.base_path, digest[:2], digest[2:])

    def blob_exists(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def blob_digests(self) -> Iterator[str]:
        if not os.path.isdir(self.base_path):
            return
        for prefix in sorted(os.listdir(self.base_path)):
            folder = os.path.join(self.base_path, prefix)
            if len(prefix) != 2 or not os.path.isdir(folder):
                continue
            for rest in sorted(os.listdir(folder)):
                if len(prefix) + len(rest) == DIGEST_LENGTH:
                    yield prefix + rest

    def delete_blob(self, digest: str) -> None:
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            pass

    def blob_times(self) -> dict[str, float]:
        times = {}
        for digest in self.blob_digests():
            with contextlib.suppress(FileNotFoundError):
                times[digest] = os.lstat(self.blob_path(digest)).st_mtime
        return times

    def partial_upload_times(self) -> dict[str, float]:
        """mmlib's own temp files (its name pattern, regular files, never through a symlink) and their ages."""
        folder = os.path.join(self.base_path, _TEMP_DIR)
        if os.path.islink(folder) or not os.path.isdir(folder):
            return {}
        times = {}
        for entry in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError):
                if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    times[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        return times

    def delete_partial_upload(self, upload_id: str) -> None:
        if not isinstance(upload_id, str) or not _TEMP_NAME.fullmatch(upload_id):
            raise InvalidIdError(
                f"{upload_id!r} is not an upload id of this store; list them with partial_uploads()")
        try:
            os.unlink(os.path.join(self.base_path, _TEMP_DIR, upload_id))
        except FileNotFoundError:
            pass

    def _unwritable(self, error: OSError) -> StoreUnavailableError:
        """The error for a write the file system refused (permissions, a read-only mount, a file in the way)."""
        return StoreUnavailableError(
            f"cannot write to the file store at {self.base_path} ({error}); ask its owner for write access (a team "
            "shares a group-writable directory and umask 002) or choose a directory you can write to")

    def _open_blob_writer(self) -> _WritebackFile:
        temp_dir = os.path.join(self.base_path, _TEMP_DIR)
        try:
            os.makedirs(temp_dir, exist_ok=True)
            fd, temp_path = create_temp_file(temp_dir, _TEMP_PREFIX)
        except OSError as error:
            raise self._unwritable(error) from error
        return _WritebackFile(fd, temp_path, self.durable)

    def _commit_blob(self, handle: _WritebackFile, digest: str) -> None:
        temp_path = handle.name
        target = self.blob_path(digest)
        if os.path.exists(target):
            handle.close()
            os.unlink(temp_path)
            self._touch_blob(digest)
            return
        handle.sync_and_close()
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            publish(temp_path, target, durable=self.durable)
        except PermissionError as error:
            raise self._unwritable(error) from error

    def _touch_blob(self, digest: str) -> None:
        try:
            os.utime(self.blob_path(digest))
        except FileNotFoundError:
            pass
        except PermissionError as error:  # another user's blob that is not group-writable
            raise self._unwritable(error) from error

    def _abort_blob(self, handle: _WritebackFile) -> None:
        with contextlib.suppress(OSError):
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)

    def _open_blob_reader(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as error:
            raise missing_blob(digest, self.base_path) from error
        except IsADirectoryError as error:
            raise IntegrityError(f"blob {digest} in {self.base_path} is a directory, not a file; the store is "
                                 "damaged: restore the blob from a backup") from error

    def _blob_size(self, digest: str) -> int:
        try:
            return os.path.getsize(self.blob_path(digest))
        except FileNotFoundError as error:
            raise missing_blob(digest, self.base_path) from error
