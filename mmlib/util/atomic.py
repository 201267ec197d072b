"""Atomic file writes: bytes go to a uniquely named temp file, which is fsynced and then renamed over the target.

A reader sees the old file or the whole new one, never part of it, and a crash leaves no truncated target, only
a temp file named after it. The fsync before the rename keeps a power failure from publishing a name whose data
never reached the disk; the directory fsync after it makes the rename itself survive one.

Temp files are created with mode 0666 less the process umask (what `open` gives), not `tempfile`'s 0600, so a
published file is readable (or writable) by whom the umask says: a team sharing a store sets umask 002.
"""

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".partial"
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def create_temp_file(directory: str, prefix: str) -> tuple[int, str]:
    """A new file `<prefix><random hex>.partial` in `directory`, open for writing, with the umask's permissions."""
    while True:
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            return os.open(path, _NEW_FILE_FLAGS, 0o666), path
        except FileExistsError:
            continue


def sync_directory(path: str) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp_path: str, target: str, *, durable: bool = True) -> None:
    """Rename a written and fsynced temp file to `target`; with `durable`, flush the rename to disk too."""
    os.replace(temp_path, target)
    if durable:
        sync_directory(os.path.dirname(os.path.abspath(target)))


@contextlib.contextmanager
def atomic_write(path: str, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write whose bytes replace `path` only when the block ends without an error.

    The temp file lies next to `path` (the rename must not cross file systems) under a unique hidden name, so
    concurrent writers of one path do not clobber each other's halves. On an error it is removed and `path` is
    left as it was. `durable=False` skips both fsyncs (about 3 ms each on a local SSD), for scratch files that
    are recreated from the store when lost: the write stays atomic for readers, but a power failure may lose it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = create_temp_file(directory, f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            if durable:
                out.flush()
                os.fsync(out.fileno())
        publish(temp_path, path, durable=durable)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
