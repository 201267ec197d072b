"""The update blob format: what a weights update stores for each tensor of a version, and how it is laid out.

An update blob holds a header and one payload per changed tensor. For every tensor of the
state dict the header says where its value lives: either in this blob (with its codec, the
model holding the full copy, the keyframe, it is a delta of, and how many changes it is from
that keyframe) or in the newest earlier version that stores it.

Layout: `MMLIBUPD`, an 8-byte little-endian header length, the zstd-compressed JSON header,
padding to 8 bytes, then the payloads (each padded to 8 bytes; offsets count from the first).
"""

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import zstandard

from mmlib.errors import IntegrityError
from mmlib.util.buffers import BinarySink, Buffer
from mmlib.util.delta import DeltaCodec
from mmlib.util.dtypes import dtype_from_name, dtype_name
from mmlib.util.safetensors_io import DTYPES

_MAGIC = b"MMLIBUPD"
_FORMAT = 3
_READABLE_FORMATS = (2, 3)  # format 2 named dtypes as safetensors does ("F32"); 3 as torch does ("float32")
_ALIGNMENT = 8


@dataclass(frozen=True)
class Location:
    """Where one tensor of a version is stored: the model whose blob holds it, the number of changes since its
    last full copy (0: this is one), and the model holding that full copy (the keyframe)."""

    holder: str
    depth: int
    keyframe: str


@dataclass(frozen=True)
class _StoredAs:
    """How a tensor is stored in an update blob: its codec, the keyframe model it is a delta of (None for a full
    copy), changes since that keyframe, dtype and shape."""

    codec: DeltaCodec
    delta_of: Optional[str]
    depth: int
    dtype: torch.dtype
    shape: tuple

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor it stores (not of its payload)."""
        return self.dtype.itemsize * math.prod(self.shape)


@dataclass(frozen=True)
class StoredTensor(_StoredAs):
    """A tensor stored in an update blob, with its payload."""

    payload: Buffer


@dataclass(frozen=True)
class UpdateIndex:
    """A parsed update blob: the snapshot whose code it uses, where every tensor lives, and the tensors it stores."""

    snapshot_id: str
    locations: dict[str, Location]
    stored: dict[str, StoredTensor]


def snapshot_locations(model_id: str, keys: Iterable[str]) -> dict[str, Location]:
    """The locations of the tensors of a full snapshot: each is its own keyframe."""
    return {key: Location(model_id, 0, model_id) for key in keys}


def _padding(size: int) -> int:
    return -size % _ALIGNMENT


def write_update(sink: BinarySink, snapshot_id: str, keys: list[str], base_locations: dict[str, Location],
                 stored: dict[str, StoredTensor]) -> None:
    """Write an update blob: header first, then the payloads of the stored tensors in key order."""
    models: dict[str, int] = {}
    tensors: dict[str, dict[str, Any]] = {}
    payloads: list[Buffer] = []
    offset = 0

    def model_index(model_id: str) -> int:
        return models.setdefault(model_id, len(models))

    for key in keys:
        if key not in stored:
            location = base_locations[key]
            tensors[key] = {"src": model_index(location.holder), "depth": location.depth,
                            "keyframe": model_index(location.keyframe)}
            continue
        tensor = stored[key]
        length = memoryview(tensor.payload).nbytes
        tensors[key] = {"codec": tensor.codec.name, "depth": tensor.depth,
                        "delta_of": None if tensor.delta_of is None else model_index(tensor.delta_of),
                        "dtype": dtype_name(tensor.dtype), "shape": list(tensor.shape),
                        "offset": offset, "length": length}
        payloads.append(tensor.payload)
        offset += length + _padding(length)
    header = {"format": _FORMAT, "snapshot": snapshot_id, "models": list(models), "tensors": tensors}
    encoded = zstandard.ZstdCompressor().compress(json.dumps(header, separators=(",", ":")).encode())
    sink.write(_MAGIC + struct.pack("<Q", len(encoded)) + encoded + b"\0" * _padding(len(encoded)))
    for payload in payloads:
        sink.write(payload)
        sink.write(b"\0" * _padding(memoryview(payload).nbytes))


@dataclass(frozen=True)
class TensorEntry(_StoredAs):
    """What an update blob's header says of a tensor stored in it: with the payload's place in the blob (`begin`,
    `end`: byte offsets from the blob's start) instead of its bytes."""

    begin: int
    end: int


@dataclass(frozen=True)
class UpdateHeader:
    """A parsed update blob header: the snapshot whose code it uses, where every tensor lives, the stored ones."""

    snapshot_id: str
    locations: dict[str, Location]
    entries: dict[str, TensorEntry]


HEADER_PREFIX_BYTES = len(_MAGIC) + 8


def header_bytes(prefix: Buffer, model_id: str) -> int:
    """How many bytes from the start of an update blob its header takes (padding included), from the blob's first
    HEADER_PREFIX_BYTES bytes; IntegrityError when they do not start an update blob."""
    buffer = memoryview(prefix)
    if buffer.nbytes < HEADER_PREFIX_BYTES or bytes(buffer[:len(_MAGIC)]) != _MAGIC:
        raise _invalid_update(model_id, "it does not start with the update marker")
    (length,) = struct.unpack_from("<Q", buffer, len(_MAGIC))
    return HEADER_PREFIX_BYTES + length + _padding(length)


def read_header(header: Buffer, blob_size: int, model_id: str) -> UpdateHeader:
    """Parse the header of an update blob of `blob_size` bytes (`header`: at least its first `header_bytes`);
    raises IntegrityError when it is not one."""
    buffer = memoryview(header)
    try:
        data_start = header_bytes(buffer, model_id)
        (length,) = struct.unpack_from("<Q", buffer, len(_MAGIC))
        parsed = json.loads(zstandard.ZstdDecompressor().decompress(
            buffer[HEADER_PREFIX_BYTES:HEADER_PREFIX_BYTES + length]))
        if parsed["format"] not in _READABLE_FORMATS:
            raise ValueError(f"format {parsed['format']} is not one of the supported formats {_READABLE_FORMATS}")
        models = parsed["models"]

        def model_at(index) -> str:
            if not isinstance(index, int) or not 0 <= index < len(models) or not isinstance(models[index], str):
                raise ValueError(f"model index {index!r} is out of range")
            return models[index]

        locations, entries = {}, {}
        for key, entry in parsed["tensors"].items():
            depth = int(entry["depth"])
            if "src" in entry:
                locations[key] = Location(model_at(entry["src"]), depth, model_at(entry["keyframe"]))
                continue
            begin = data_start + int(entry["offset"])
            end = begin + int(entry["length"])
            if not data_start <= begin <= end <= blob_size:
                raise ValueError(f"the payload of {key!r} lies outside the blob")
            delta_of = entry["delta_of"]
            entries[key] = TensorEntry(DeltaCodec.from_name(entry["codec"]),
                                       None if delta_of is None else model_at(delta_of), depth,
                                       DTYPES.get(entry["dtype"]) or dtype_from_name(entry["dtype"]),
                                       tuple(int(n) for n in entry["shape"]), begin, end)
            locations[key] = Location(model_id, depth, model_id if delta_of is None else model_at(delta_of))
        if not isinstance(parsed["snapshot"], str):
            raise ValueError("it names no snapshot model")
        return UpdateHeader(parsed["snapshot"], locations, entries)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, struct.error, zstandard.ZstdError) as error:
        raise _invalid_update(model_id, str(error)) from error


def read_update(data: Buffer, model_id: str) -> UpdateIndex:
    """Parse a whole update blob; raises IntegrityError when it is not one."""
    buffer = memoryview(data)
    header = read_header(buffer, buffer.nbytes, model_id)
    stored = {key: StoredTensor(entry.codec, entry.delta_of, entry.depth, entry.dtype, entry.shape,
                                buffer[entry.begin:entry.end]) for key, entry in header.entries.items()}
    return UpdateIndex(header.snapshot_id, header.locations, stored)


def _invalid_update(model_id: str, detail: str) -> IntegrityError:
    return IntegrityError(f"the update blob of model {model_id} is not a valid mmlib weights update ({detail}); "
                          "run `mmlib verify` and restore the store from a backup")
