"""Hashing blob bytes on their way into and out of a store, in a helper thread where that saves time.

BLAKE3 and file I/O both release the GIL, so a large write or read is hashed while the next bytes move: the
content address and the integrity check cost little time on top of the I/O itself.
"""

import concurrent.futures
from typing import Optional

from mmlib.errors import IntegrityError
from mmlib.util.buffers import BinarySink, BinarySource, Buffer
from mmlib.util.hash import new_hasher

CHUNK_SIZE = 4 * 1024 * 1024
PARALLEL_HASH_BYTES = 1024 * 1024


class HashingWriter:
    """File-like wrapper that hashes and counts every byte on its way into a blob writer.

    A write of at least PARALLEL_HASH_BYTES is hashed in a helper thread while it is written; smaller ones are
    hashed inline, where handing them to a thread would cost more than it saves.
    """

    def __init__(self, sink: BinarySink):
        self._sink = sink
        self.hasher = new_hasher()
        self.size = 0
        self._helper: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def write(self, data: Buffer) -> int:
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
        """Nothing to do: every write reached the sink, and the store makes the blob durable when it commits it."""


def read_verified(source: BinarySource, size: int, digest: str) -> memoryview:
    """All `size` bytes of a blob, read straight into one writable buffer and checked against `digest`.

    Chunks are hashed in a helper thread while the next one is read. The buffer is not zero-filled first (the
    read fills it), which saves a pass over large blobs. IntegrityError when the bytes differ in length or hash.
    """
    import numpy as np  # here, not at the top: listing a store (`mmlib ls`) reads no blob and stays quick

    view = np.empty(size, dtype=np.uint8).data
    reader = VerifiedReader(source, size, digest)
    try:
        for offset in range(0, size, CHUNK_SIZE):
            reader.readinto(view[offset:offset + CHUNK_SIZE])
        reader.finish()
    finally:
        reader.close()
    return view


class VerifiedReader:
    """Reads a blob front to back into buffers the caller owns, hashing each piece in a helper thread as it arrives;
    `finish` reads what is left and raises IntegrityError unless the whole blob hashes to its digest.

    Bytes a caller gets are not checked until `finish` returns: use them only then (or throw away what was built
    from them when it raises). `finish` also waits for the hashing, so a caller may change its buffers after it.
    """

    def __init__(self, source: BinarySource, size: int, digest: str):
        self._source, self.size, self._digest = source, size, digest
        self.position = 0
        self._hasher = new_hasher()
        self._helper = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlib-hash")

    def readinto(self, view: memoryview) -> None:
        """Fill `view` with the next bytes of the blob (IntegrityError when the blob ends first)."""
        filled = 0
        while filled < view.nbytes:
            count = _read_into(self._source, view[filled:])
            if not count:
                raise self._resized()
            filled += count
        self._hash(view)

    def read(self, size: int) -> memoryview:
        """The next `size` bytes, in a new buffer (not zero-filled first: the read fills it)."""
        import numpy as np  # here, not at the top: listing a store (`mmlib ls`) reads no blob and stays quick

        view = np.empty(size, dtype=np.uint8).data
        self.readinto(view)
        return view

    def skip_to(self, offset: int) -> None:
        """Read (and hash) up to `offset`, which may not lie behind the current position."""
        if offset < self.position:
            raise corrupted_blob(self._digest, f"its parts overlap (offset {offset} lies behind {self.position})")
        while self.position < offset:
            self.read(min(CHUNK_SIZE, offset - self.position))

    def finish(self) -> None:
        """Read the rest, wait for the hashing, and raise IntegrityError unless the bytes are the blob's."""
        try:
            self.skip_to(self.size)
            extra = self._source.read(1)
        finally:
            self._helper.shutdown()
        if extra:
            raise self._resized()
        if self._hasher.hexdigest() != self._digest:
            raise corrupted_blob(self._digest, f"its bytes hash to {self._hasher.hexdigest()}")

    def close(self) -> None:
        """Stop the helper thread (after `finish`, or when giving up on the blob)."""
        self._helper.shutdown()

    def _resized(self) -> IntegrityError:
        return corrupted_blob(self._digest, f"it no longer holds its recorded {self.size} bytes")

    def _hash(self, view: memoryview) -> None:
        self.position += view.nbytes
        if view.nbytes < PARALLEL_HASH_BYTES:
            self._helper.submit(self._hasher.update, bytes(view))
        else:
            self._helper.submit(self._hasher.update, view)


def copy_verified(source: BinarySource, out: BinarySink, digest: str) -> None:
    """Stream a blob into `out` (anything with `write`), hashing as it goes; IntegrityError on a mismatch.

    `out` has received every byte by then: a caller that must not expose bad bytes writes to a temp file.
    """
    hasher = new_hasher()
    while chunk := source.read(CHUNK_SIZE):
        hasher.update(chunk)
        out.write(chunk)
    if hasher.hexdigest() != digest:
        raise corrupted_blob(digest, f"its bytes hash to {hasher.hexdigest()}")


def copy_stream(source: BinarySource, sink: BinarySink) -> None:
    """Copy a binary stream in chunks."""
    while chunk := source.read(CHUNK_SIZE):
        sink.write(chunk)


class NullSink:
    """A write target that drops everything (for verification passes)."""

    def write(self, data: Buffer) -> int:
        return len(data)


def corrupted_blob(digest: str, detail: str) -> IntegrityError:
    """The error for a stored blob whose bytes are not the ones its digest names."""
    return IntegrityError(f"blob {digest} is corrupted: {detail}; run `mmlib verify` to find affected models and "
                          "restore the blob from a backup")


def _read_into(source: BinarySource, view: memoryview) -> int:
    """Fill `view` from `source` (with `readinto` where the stream has it); the number of bytes read."""
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return readinto(view) or 0
    chunk = source.read(len(view))
    view[:len(chunk)] = chunk
    return len(chunk)
