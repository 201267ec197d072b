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
                    with self._open_blob(_blob_reference(self._infos[model_id])) as reader, _blaming_damage(reader):
                        self._read_blob(model_id, reader, locations)
        return {key: self._slots[key].tensor() for key in locations}, header

    def _oldest_first(self, locations: dict[str, Location]) -> list[str]:
        """The models whose blobs hold tensors of the version, oldest first (keyframes before the deltas of them)."""
        needed = {location.holder for location in locations.values()}
        needed |= {location.keyframe for location in locations.values()}
        return [model_id for model_id in reversed(self._infos) if model_id in needed]


    def _read_blob(self, model_id: str, reader: VerifiedReader, locations: dict[str, Location]) -> None:
        if self._infos[model_id].store_type == ModelStoreType.FULL_MODEL:
            self._read_snapshot(model_id, reader, locations)
        else:
            self._read_update(reader, _read_update_header(reader, model_id), locations, model_id)

    def _read_snapshot(self, model_id: str, reader: VerifiedReader, locations: dict[str, Location]) -> None:
        """The full copies the version takes from snapshot `model_id`, read into their tensors' memory."""
        places = _snapshot_places(reader)
        wanted = sorted((places[key].begin, key) for key, location in locations.items()
                        if location.keyframe == model_id and _has(places, key, model_id))
        for _, key in wanted:
            place = places[key]
            _read_full_copy(reader, place, self._new_slot(key, place, model_id), key, model_id)
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
                slot = self._new_slot(key, entry, model_id)
                if entry.codec.name == _PLAIN.name:
                    _read_full_copy(reader, entry, slot, key, model_id)
                    continue
            else:
                slot = self._slots[key]
                if (slot.dtype, slot.shape) != (entry.dtype, entry.shape):
                    raise IntegrityError(f"a delta of tensor {key!r} ({entry.dtype}, {entry.shape}) in the update "
                                         f"blob of model {model_id} was stored against a keyframe of another dtype or "
                                         f"shape ({slot.dtype}, {slot.shape}); the update metadata is inconsistent")
            waiting = self._decode(entry, reader.read(entry.end - begin), slot)
            if waiting is not None:
                pending.append(waiting)
        reader.finish()
        for done in pending:
            done()

    def _decode(self, entry: TensorEntry, payload: memoryview, slot: _Slot) -> Optional[Callable[[], None]]:
        """Decode `payload` into `slot`: here for a small tensor (returns None), in a worker for a large one
        (returns what waits for it, and raises what it raised)."""
        def decode() -> None:
            entry.codec.decode_into(payload, bits_of(slot.raw, entry.dtype.itemsize), entry.dtype.itemsize)

        if slot.raw.nbytes < SMALL_ITEM_BYTES or self._pool is None:
            decode()
            return None
        return self._pool.submit(decode).result

    def _new_slot(self, key: str, place: TensorEntry, model_id: str) -> _Slot:
        """The memory of recovered tensor `key`, allocated once (its keyframe's full copy comes first)."""
        if key in self._slots:
            raise IntegrityError(f"tensor {key!r} has two full copies in the lineage of model {self._model_id} (one "
                                 f"in model {model_id}); the update metadata is inconsistent")
        self._slots[key] = _Slot(self._arena.take(place.nbytes), place.dtype, place.shape)
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


def _snapshot_places(reader: VerifiedReader) -> dict[str, TensorEntry]:
    """Every tensor of the snapshot blob `reader` reads (each a full copy stored plain), from its header (read from
    the blob's start)."""
    prefix = reader.read(safetensors_io.HEADER_PREFIX_BYTES)
    header = prefix.tobytes() + reader.read(safetensors_io.header_bytes(prefix) - prefix.nbytes).tobytes()
    return {key: TensorEntry(_PLAIN, None, 0, span.dtype, tuple(span.shape), span.begin, span.end)
            for key, span in safetensors_io.tensor_spans(header).items()}


def _update_places(reader: VerifiedReader, model_id: str) -> dict[str, TensorEntry]:
    """The full copies the update blob `reader` reads holds, from its header (read from the blob's start)."""
    entries = _read_update_header(reader, model_id).entries
    return {key: entry for key, entry in entries.items() if entry.delta_of is None}


def _has(places: dict[str, TensorEntry], key: str, model_id: str) -> bool:
    """True when `places` has `key` (the blob of `model_id` holds its full copy); else IntegrityError."""
    if key not in places:
        raise _broken_chain(model_id, key)
    return True


def _read_full_copy(reader: VerifiedReader, place: TensorEntry, slot: _Slot, key: str, model_id: str) -> None:
    """Read (or read and decode) the full copy of tensor `key` at `place` into `slot`, from the reader's position."""
    nbytes = slot.raw.nbytes
    if place.codec.name != _PLAIN.name:
        reader.skip_to(place.begin)
        place.codec.decode_into(reader.read(place.end - place.begin), bits_of(slot.raw, place.dtype.itemsize),
                                place.dtype.itemsize)
        return
    if place.end - place.begin != nbytes or place.end > reader.size:
        raise IntegrityError(f"the full copy of tensor {key!r} in the blob of model {model_id} does not fit its "
                             "recorded place; run `mmlib verify` and restore the store from a backup")
    reader.skip_to(place.begin)
    reader.readinto(slot.raw.data)


def stream_keyframes(keyframes: dict[str, str], info: Callable[[str], ModelInfo], open_blob: OpenBlob,
                     use: Callable[[str, torch.dtype, tuple, Optional[torch.Tensor]], None],
                     needs_value: Callable[[str], bool]) -> None:
    """Hand each tensor's keyframe (`keyframes`: key -> the model holding its full copy) to `use(key, dtype, shape,
    value)` as that model's blob is read front to back, one blob at a time: the full copy where `needs_value(key)`,
    else None (its bytes are only hashed). Each value is a new tensor that nothing else keeps, so a save that
    encodes each as it comes holds few at once. The bytes are checked once a blob is read: `use` may have run on
    them when that raises IntegrityError, so the caller writes nothing until this returns."""
    by_model: dict[str, list[str]] = {}
    for key, model_id in keyframes.items():
        by_model.setdefault(model_id, []).append(key)
    for model_id, keys in by_model.items():
        model_info = info(model_id)
        with open_blob(_blob_reference(model_info)) as reader, _blaming_damage(reader):
            places = _snapshot_places(reader) if model_info.store_type == ModelStoreType.FULL_MODEL \
                else _update_places(reader, model_id)
            for key in sorted((key for key in keys if _has(places, key, model_id)), key=lambda k: places[k].begin):
                place = places[key]
                if not needs_value(key):
                    use(key, place.dtype, place.shape, None)
                    continue
                slot = _Slot(np.empty(place.nbytes, dtype=np.uint8), place.dtype, place.shape)
                _read_full_copy(reader, place, slot, key, model_id)
                use(key, place.dtype, place.shape, slot.tensor())
            reader.finish()


def _update_reference(info: ModelInfo) -> str:
    return info.recover_info.update.reference_id


def read_checked_header(open_blob: OpenBlob, reference_id: str, model_id: str) -> UpdateHeader:
    """The header of an update blob, once the whole blob is checked (the rest is read in small pieces, not kept)."""
    with open_blob(reference_id) as reader, _blaming_damage(reader):
        header = _read_update_header(reader, model_id)
        reader.finish()
    return header


def _blob_reference(info: ModelInfo) -> str:
    """The reference of the blob holding a model's tensors: a snapshot's weights, an update's."""
    if info.store_type == ModelStoreType.FULL_MODEL:
        return info.recover_info.parameters_file.stored_id()
    return _update_reference(info)


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
