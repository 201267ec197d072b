"""Recovering a weights-update version in one pass over each blob it reads, straight into the tensors it hands out.

Every tensor of a version is its keyframe's full copy (in the snapshot or in an update blob) plus at most one delta
(in the blob of the version that last changed it). The blobs are read front to back, oldest first, each hashed as
it arrives: full copies land in the recovered tensors' own memory, and each delta is decoded in place on top of its
keyframe's value once that is there. No blob is held whole in memory, and no tensor is copied after it is decoded:
a recovery needs the recovered model's bytes plus one payload at a time.
"""

import collections
import concurrent.futures
import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Optional

import numpy as np
import torch

from mmlib.approaches.update_format import HEADER_PREFIX_BYTES, Location, TensorEntry, UpdateHeader, header_bytes, \
    read_header
from mmlib.errors import IntegrityError
from mmlib.persistence._hashing import VerifiedReader
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.util import safetensors_io
from mmlib.util.concurrency import SMALL_ITEM_BYTES, WORKERS
from mmlib.util.delta import DeltaCodec, bits_of

OpenBlob = Callable[[str], ContextManager[VerifiedReader]]


@dataclass
class _Slot:
    """A recovered tensor's memory (its bytes, as a flat uint8 array) and what it holds."""

    raw: np.ndarray
    dtype: torch.dtype
    shape: tuple

    def tensor(self) -> torch.Tensor:
        if self.raw.nbytes == 0:  # torch cannot view an empty byte array as a wider dtype
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.from_numpy(self.raw).view(self.dtype).reshape(self.shape)


class StreamedRecovery:
    """The tensors of one update version, read blob by blob (`state`); see the module docstring."""

    def __init__(self, model_id: str, lineage: list[ModelInfo], open_blob: OpenBlob):
        self._model_id = model_id
        self._infos = {info.stored_id(): info for info in lineage}
        self._open_blob = open_blob
        self._slots: dict[str, _Slot] = {}
        self._arena = _Arena()
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def state(self) -> tuple[dict[str, torch.Tensor], UpdateHeader]:
        """(the version's tensors, its blob's header). IntegrityError when a tensor is said to live in a model outside
        the version's lineage to its snapshot, or a blob is not what the lineage says."""
        with contextlib.ExitStack() as stack:
            own = stack.enter_context(self._open_blob(_update_reference(self._infos[self._model_id])))
            with _blaming_damage(own):
                header = _read_update_header(own, self._model_id)
            locations = header.locations
            for key, location in locations.items():
                for model_id in (location.holder, location.keyframe):
                    if model_id not in self._infos:
                        raise IntegrityError(f"tensor {key!r} of model {self._model_id} is said to live in model "
                                             f"{model_id}, which is not in its lineage; the update metadata is "
                                             "inconsistent: run `mmlib verify` and restore the store from a backup")
            self._pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(
                WORKERS, thread_name_prefix="mmlib-decode"))
            for model_id in self._oldest_first(locations):
                if model_id == self._model_id:
                    with _blaming_damage(own):
                        self._read_update(own, header, locations)
                else:
                    with self._open_blob(self._reference(model_id)) as reader, _blaming_damage(reader):
                        self._read_blob(model_id, reader, locations)
        return {key: self._slots[key].tensor() for key in locations}, header

    def _oldest_first(self, locations: dict[str, Location]) -> list[str]:
        """The models whose blobs hold tensors of the version, oldest first (keyframes before the deltas of them)."""
        needed = {location.holder for location in locations.values()}
        needed |= {location.keyframe for location in locations.values()}
        return [model_id for model_id in reversed(self._infos) if model_id in needed]

    def _reference(self, model_id: str) -> str:
        info = self._infos[model_id]
        if info.store_type == ModelStoreType.FULL_MODEL:
            return info.recover_info.parameters_file.stored_id()
        return _update_reference(info)

    def _read_blob(self, model_id: str, reader: VerifiedReader, locations: dict[str, Location]) -> None:
        if self._infos[model_id].store_type == ModelStoreType.FULL_MODEL:
            self._read_snapshot(model_id, reader, locations)
        else:
            self._read_update(reader, _read_update_header(reader, model_id), locations, model_id)

    def _read_snapshot(self, model_id: str, reader: VerifiedReader, locations: dict[str, Location]) -> None:
        """The full copies the version takes from snapshot `model_id`, read into their tensors' memory."""
        prefix = reader.read(safetensors_io.HEADER_PREFIX_BYTES)
        header = prefix.tobytes() + reader.read(safetensors_io.header_bytes(prefix) - prefix.nbytes).tobytes()
        spans = safetensors_io.tensor_spans(header)
        wanted = sorted((span.begin, key) for key, span in spans.items() if locations.get(key) is not None
                        and locations[key].keyframe == model_id)
        missing = [key for key, location in locations.items() if location.keyframe == model_id and key not in spans]
        if missing:
            raise _broken_chain(model_id, missing[0])
        for begin, key in wanted:
            span = spans[key]
            slot = self._new_slot(key, span.dtype, tuple(span.shape), model_id)
            if span.end - begin != slot.raw.nbytes or span.end > reader.size:
                raise IntegrityError(f"tensor {key!r} of snapshot {model_id} does not fit its recorded place in the "
                                     "weights blob; run `mmlib verify` and restore the store from a backup")
            reader.skip_to(begin)
            reader.readinto(slot.raw.data)
        reader.finish()

    def _read_update(self, reader: VerifiedReader, header: UpdateHeader, locations: dict[str, Location],
                     model_id: Optional[str] = None) -> None:
        """The full copies and deltas the version takes from update blob `model_id` (default: the version's own),
        each full copy read or decoded into its tensor's memory, each delta applied there in place."""
        model_id = model_id or self._model_id
        wanted = []
        for key, location in locations.items():
            if model_id not in (location.holder, location.keyframe):
                continue
            entry = header.entries.get(key)
            full_copy = location.keyframe == model_id
            if entry is None or (entry.delta_of is None) != full_copy or (
                    not full_copy and entry.delta_of != location.keyframe):
                raise _broken_chain(model_id, key)
            wanted.append((entry.begin, key, entry))
        pending: collections.deque[Callable[[], None]] = collections.deque()
        for begin, key, entry in sorted(wanted, key=lambda item: item[0]):
            while len(pending) > _IN_FLIGHT:  # payloads read but not decoded cost memory: read on as decodes finish
                pending.popleft()()
            reader.skip_to(begin)
            if entry.delta_of is None:
                slot = self._new_slot(key, entry.dtype, entry.shape, model_id)
                if entry.codec.name == _PLAIN.name:
                    if entry.end - begin != slot.raw.nbytes:
                        raise IntegrityError(f"the full copy of tensor {key!r} in the update blob of model {model_id} "
                                             "holds the wrong number of bytes; run `mmlib verify` and restore the "
                                             "store from a backup")
                    reader.readinto(slot.raw.data)
                    continue
            else:
                slot = self._slots[key]
                if (slot.dtype, slot.shape) != (entry.dtype, entry.shape):
                    raise IntegrityError(f"a delta of tensor {key!r} ({entry.dtype}, {entry.shape}) in the update "
                                         f"blob of model {model_id} was stored against a keyframe of another dtype or "
                                         f"shape ({slot.dtype}, {slot.shape}); the update metadata is inconsistent")
            pending.append(self._decode(entry, reader.read(entry.end - begin), slot))
        reader.finish()
        for done in pending:
            done()

    def _decode(self, entry: TensorEntry, payload: memoryview, slot: _Slot) -> Callable[[], None]:
        """Decode `payload` into `slot`: here for a small tensor, in a worker for a large one; returns what waits
        for it (and raises what it raised)."""
        def decode() -> None:
            entry.codec.decode_into(payload, bits_of(slot.raw, entry.dtype.itemsize), entry.dtype.itemsize)

        if slot.raw.nbytes < SMALL_ITEM_BYTES or self._pool is None:
            decode()
            return lambda: None
        return self._pool.submit(decode).result

    def _new_slot(self, key: str, dtype: torch.dtype, shape: tuple, model_id: str) -> _Slot:
        """The memory of recovered tensor `key`, allocated once (its keyframe's full copy comes first)."""
        if key in self._slots:
            raise IntegrityError(f"tensor {key!r} has two full copies in the lineage of model {self._model_id} (one "
                                 f"in model {model_id}); the update metadata is inconsistent")
        self._slots[key] = _Slot(self._arena.take(dtype.itemsize * math.prod(shape)), dtype, shape)
        return self._slots[key]


class _Arena:
    """Memory for the recovered tensors, taken from a few large blocks rather than one allocation per tensor: a
    large block is mapped in few (huge) pages, where thousands of tensor-sized allocations would each fault in
    fresh pages, and those page faults made recoveries stall. The tensors view the blocks, as a snapshot's tensors
    view the blob read for them."""

    def __init__(self) -> None:
        self._block = np.empty(0, dtype=np.uint8)
        self._used = 0

    def take(self, size: int) -> np.ndarray:
        """`size` bytes (not zero-filled), aligned for any dtype."""
        if size > _ARENA_BLOCK_BYTES // 4:
            return np.empty(size, dtype=np.uint8)
        start = -(-self._used // _ALIGNMENT) * _ALIGNMENT
        if start + size > self._block.nbytes:
            self._block, start = np.empty(_ARENA_BLOCK_BYTES, dtype=np.uint8), 0
        self._used = start + size
        return self._block[start:self._used]


_ARENA_BLOCK_BYTES = 32 << 20
_IN_FLIGHT = WORKERS + 1  # payloads being or waiting to be decoded while the next is read
_ALIGNMENT = 64


_PLAIN = DeltaCodec()


def _update_reference(info: ModelInfo) -> str:
    return info.recover_info.update.reference_id


def _read_update_header(reader: VerifiedReader, model_id: str) -> UpdateHeader:
    """The header of the update blob `reader` reads, read from its start."""
    prefix = reader.read(HEADER_PREFIX_BYTES)
    rest = reader.read(header_bytes(prefix, model_id) - prefix.nbytes)
    return read_header(prefix.tobytes() + rest.tobytes(), reader.size, model_id)


@contextlib.contextmanager
def _blaming_damage(reader: VerifiedReader) -> Iterator[None]:
    """Where what a blob holds makes no sense, say so of the blob when its bytes are not the stored ones (the
    likelier cause, and what to restore); else let the error say what makes no sense."""
    try:
        yield
    except IntegrityError:
        reader.finish()
        raise


def _broken_chain(model_id: str, key: str) -> IntegrityError:
    return IntegrityError(f"the blob of model {model_id} does not hold tensor {key!r} as the versions derived from it "
                          "say; run `mmlib verify` and restore the store from a backup")
