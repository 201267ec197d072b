"""The types of the bytes mmlib moves: a buffer in any of its forms, and what bytes are written to or read from."""

from typing import Protocol, Union

Buffer = Union[bytes, bytearray, memoryview]


class BinarySink(Protocol):
    """Where bytes are written: a file opened for binary writing, a store's blob writer, a hashing wrapper."""

    def write(self, data: Buffer, /) -> object: ...


class BinarySource(Protocol):
    """Where bytes are read from: a file opened for binary reading, a store's blob reader."""

    def read(self, size: int = -1, /) -> bytes: ...
