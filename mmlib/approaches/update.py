"""The parameter update approach: a derived model stores only the tensors that changed, as compressed deltas.

An update blob holds a header and one payload per changed tensor. For every tensor of the
state dict the header says where its value lives: either in this blob (with its codec, the
model holding the full copy, the keyframe, it is a delta of, and how many changes it is from
that keyframe) or in the newest earlier version that stores it. Every delta is taken against
the tensor's keyframe, not against the previous version, so recovering any version decodes at
most one delta per tensor: recovery time does not grow along a lineage. The `keyframe_interval`-th
change of a tensor stores it in full again, which keeps deltas small as weights drift away.

Layout: `MMLIBUPD`, an 8-byte little-endian header length, the zstd-compressed JSON header,
padding to 8 bytes, then the payloads (each padded to 8 bytes; offsets count from the first).
"""

import json
import logging
import math
import os
import struct
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Optional, TypeVar

import torch
import zstandard

from mmlib.approaches.base import AbstractSaveService, merkle_tree
from mmlib.approaches.model_state import CapturedState, capture
from mmlib.equal import tensor_equal
from mmlib.errors import IncompatibleModelError, IntegrityError, InvalidSaveInfoError
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, FileReference, split_reference_id
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo, WeightsUpdateRecoverInfo
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.delta import DEFAULT_CODEC, Buffer, DeltaCodec, decode_chain
from mmlib.util.hash import new_hasher
from mmlib.util.init_from_file import check_class_name
from mmlib.util.dtypes import dtype_from_name, dtype_name
from mmlib.util.safetensors_io import DTYPES
from mmlib.util.weight_dict_merkle_tree import THIS, WeightDictMerkleTree

logger = logging.getLogger(__name__)

UPDATE_FILE_NAME = "weights_update.mmu"
DEFAULT_KEYFRAME_INTERVAL = 8
DEFAULT_CACHE_SIZE = 2

_MAGIC = b"MMLIBUPD"
_FORMAT = 3
_READABLE_FORMATS = (2, 3)  # format 2 named dtypes as safetensors does ("F32"); 3 as torch does ("float32")
_ALIGNMENT = 8
_KEYFRAME_CODEC = DeltaCodec()
_WORKERS = os.cpu_count() or 1

T = TypeVar("T")
R = TypeVar("R")


def _parallel_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`function` over `items` on all cores (zstd and numpy release the GIL), results in order."""
    items = list(items)
    if len(items) < 2 or _WORKERS < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(items))) as pool:
        return list(pool.map(function, items))


def _padding(size: int) -> int:
    return -size % _ALIGNMENT


@dataclass(frozen=True)
class _Location:
    """Where one tensor of a version is stored: the model whose blob holds it, the number of changes since its
    last full copy (0: this is one), and the model holding that full copy (the keyframe)."""

    holder: str
    depth: int
    keyframe: str


@dataclass(frozen=True)
class _StoredTensor:
    """A tensor stored in an update blob: its codec, the keyframe model it is a delta of (None for a full copy),
    changes since that keyframe, dtype, shape and payload."""

    codec: DeltaCodec
    delta_of: Optional[str]
    depth: int
    dtype: torch.dtype
    shape: tuple
    payload: Buffer


@dataclass(frozen=True)
class _UpdatePlan:
    """What a save on top of a base stores: the base's tensor locations, the snapshot with the code, the
    encoded changed tensors, and the keyframe values known for the base's tensors."""

    base_locations: dict[str, _Location]
    snapshot_id: str
    stored: dict[str, _StoredTensor]
    keyframes: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _UpdateIndex:
    """A parsed update blob: the snapshot whose code it uses, where every tensor lives, and the tensors it stores."""

    snapshot_id: str
    locations: dict[str, _Location]
    stored: dict[str, _StoredTensor]


@dataclass(frozen=True)
class _CachedVersion:
    """A recently saved or recovered version: private copies of its tensors, where each is stored, and the values
    of those tensors' keyframes where known (shared with the versions that use the same keyframe)."""

    state: dict[str, torch.Tensor]
    locations: dict[str, _Location]
    snapshot_id: str
    keyframes: dict[str, torch.Tensor]


def _private_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies that later in-place training of the model cannot change."""
    return {key: tensor.clone() for key, tensor in state.items()}


def _snapshot_locations(model_id: str, keys) -> dict[str, _Location]:
    return {key: _Location(model_id, 0, model_id) for key in keys}


def _write_update(sink: BinaryIO, snapshot_id: str, keys: list[str], base_locations: dict[str, _Location],
                  stored: dict[str, _StoredTensor]) -> None:
    """Write an update blob: header first, then the payloads of the stored tensors in key order."""
    models: dict[str, int] = {}
    tensors, payloads, offset = {}, [], 0

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


def _read_update(data: bytes, model_id: str) -> _UpdateIndex:
    """Parse an update blob; raises IntegrityError when it is not one."""
    buffer = memoryview(data)
    try:
        if bytes(buffer[:len(_MAGIC)]) != _MAGIC:
            raise ValueError("it does not start with the update marker")
        (length,) = struct.unpack_from("<Q", buffer, len(_MAGIC))
        start = len(_MAGIC) + 8
        header = json.loads(zstandard.ZstdDecompressor().decompress(buffer[start:start + length]))
        if header["format"] not in _READABLE_FORMATS:
            raise ValueError(f"format {header['format']} is not one of the supported formats {_READABLE_FORMATS}")
        data_start = start + length + _padding(length)
        models = header["models"]

        def model_at(index) -> str:
            if not isinstance(index, int) or not 0 <= index < len(models) or not isinstance(models[index], str):
                raise ValueError(f"model index {index!r} is out of range")
            return models[index]

        locations, stored = {}, {}
        for key, entry in header["tensors"].items():
            depth = int(entry["depth"])
            if "src" in entry:
                locations[key] = _Location(model_at(entry["src"]), depth, model_at(entry["keyframe"]))
                continue
            begin = data_start + int(entry["offset"])
            end = begin + int(entry["length"])
            if not data_start <= begin <= end <= len(buffer):
                raise ValueError(f"the payload of {key!r} lies outside the blob")
            delta_of = entry["delta_of"]
            stored[key] = _StoredTensor(DeltaCodec.from_name(entry["codec"]),
                                        None if delta_of is None else model_at(delta_of), depth,
                                        DTYPES.get(entry["dtype"]) or dtype_from_name(entry["dtype"]),
                                        tuple(int(n) for n in entry["shape"]),
                                        buffer[begin:end])
            locations[key] = _Location(model_id, depth, model_id if delta_of is None else model_at(delta_of))
        if not isinstance(header["snapshot"], str):
            raise ValueError("it names no snapshot model")
        return _UpdateIndex(header["snapshot"], locations, stored)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, struct.error, zstandard.ZstdError) as error:
        raise IntegrityError(f"the update blob of model {model_id} is not a valid mmlib weights update ({error}); "
                             "run `mmlib verify` and restore the store from a backup") from error


class _VersionCache:
    """The few most recently saved or recovered versions (LRU), so a save on top of them reads nothing back."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._versions: "OrderedDict[str, _CachedVersion]" = OrderedDict()

    def get(self, model_id: str) -> Optional[_CachedVersion]:
        version = self._versions.get(model_id)
        if version is not None:
            self._versions.move_to_end(model_id)
        return version

    def put(self, model_id: str, version: _CachedVersion) -> None:
        if self._capacity < 1:
            return
        self._versions[model_id] = version
        self._versions.move_to_end(model_id)
        while len(self._versions) > self._capacity:
            self._versions.popitem(last=False)

    def clear(self) -> None:
        self._versions.clear()


class _Reader:
    """Reads stored versions for one save or recovery: each document and blob at most once, tensors on demand."""

    def __init__(self, load_info: Callable[[str], ModelInfo], read_blob: Callable[[str], bytes],
                 read_weights: Callable[[FileReference], dict[str, torch.Tensor]]):
        self._load_info, self._read_blob, self._read_weights = load_info, read_blob, read_weights
        self._infos: dict[str, ModelInfo] = {}
        self._updates: dict[str, _UpdateIndex] = {}
        self._snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def info(self, model_id: str) -> ModelInfo:
        if model_id not in self._infos:
            self._infos[model_id] = self._load_info(model_id)
        return self._infos[model_id]

    def snapshot(self, model_id: str) -> FullModelRecoverInfo:
        """The recover info of a full snapshot that an update refers to."""
        info = self.info(model_id)
        if info.store_type != ModelStoreType.FULL_MODEL:
            raise IntegrityError(f"model {model_id} is referred to as a full snapshot but is stored as "
                                 f"{info.store_type.value}; the update metadata is inconsistent")
        return info.recover_info

    def locations(self, model_id: str) -> tuple[dict[str, _Location], str]:
        """Where each tensor of a version is stored, and the snapshot whose code the version uses."""
        info = self.info(model_id)
        if info.store_type == ModelStoreType.FULL_MODEL:
            if info.weights_hash_info is not None and info.state_layout is not None:
                keys = info.state_layout.stored_keys(list(info.weights_hash_info.layer_hashes()))
            else:
                keys = self._snapshot_state(model_id)
            return _snapshot_locations(model_id, keys), model_id
        if info.store_type == ModelStoreType.WEIGHT_UPDATES:
            index = self._update(model_id)
            return index.locations, index.snapshot_id
        raise IncompatibleModelError(
            f"model {model_id} is stored as {info.store_type.value}, not as weights or weight updates; recover "
            "it with the save service that stored it (e.g. ProvenanceSaveService)")

    def tensors(self, holders: dict[str, str]) -> dict[str, torch.Tensor]:
        """The value of each tensor `key` as stored by model `holders[key]`, decoded in parallel."""
        chains = {key: self._chain(holder, key) for key, holder in holders.items()}
        largest_first = sorted(chains, key=lambda key: -math.prod(chains[key][3]))  # balances the workers
        values = _parallel_map(lambda key: chains[key][0] if not chains[key][1] else decode_chain(*chains[key]),
                               largest_first)
        decoded = dict(zip(largest_first, values))
        return {key: decoded[key] for key in chains}

    def _chain(self, holder: str, key: str) -> tuple[Optional[torch.Tensor], list, torch.dtype, tuple]:
        """The arguments of `decode_chain` for tensor `key` of model `holder`.

        Reads at most two blobs: the holder's and, for a delta, the one with the keyframe it is a delta of.
        """
        chain, model_id, start = [], holder, None
        while True:
            info = self.info(model_id)
            if info.store_type == ModelStoreType.FULL_MODEL:
                start = self._snapshot_state(model_id).get(key)
                if start is None:
                    raise self._broken_chain(holder, key)
                break
            stored = self._update(model_id).stored.get(key)
            if stored is None or (chain and stored.delta_of is not None):
                raise self._broken_chain(holder, key)
            chain.append(stored)
            if stored.delta_of is None:
                break
            if stored.depth < 1:
                raise self._broken_chain(holder, key)
            model_id = stored.delta_of
        steps = [(stored.codec, stored.payload) for stored in reversed(chain)]
        dtype, shape = (chain[0].dtype, chain[0].shape) if chain else (start.dtype, tuple(start.shape))
        return start, steps, dtype, shape

    @staticmethod
    def _broken_chain(holder: str, key: str) -> IntegrityError:
        return IntegrityError(f"the stored delta of tensor {key!r} of model {holder} has no keyframe to apply it "
                              "to; run `mmlib verify` and restore the store from a backup")

    def _update(self, model_id: str) -> _UpdateIndex:
        if model_id not in self._updates:
            data = self._read_blob(self.info(model_id).recover_info.update.reference_id)
            self._updates[model_id] = _read_update(data, model_id)
        return self._updates[model_id]

    def _snapshot_state(self, model_id: str) -> dict[str, torch.Tensor]:
        if model_id not in self._snapshots:
            self._snapshots[model_id] = self._read_weights(self.snapshot(model_id).parameters_file)
        return self._snapshots[model_id]


class WeightUpdateSaveService(AbstractSaveService):
    """Stores a derived model as the tensors that changed relative to its base, as lossless compressed deltas.

    `improved_version=True` finds the changed tensors by diffing the Merkle trees of per-tensor hashes
    stored with every model, without reading the base's weights; `False` recovers the base and compares
    (the paper's parameter update approach). A model without a base, or one whose architecture differs
    from its base's, is stored as a full snapshot (with `updates_only=True` the latter raises
    IncompatibleModelError instead). `codec` names how changed tensors are encoded (see
    `mmlib.util.delta`; `"plain"` stores them as they are). Deltas are taken against the tensor's last full
    copy (its keyframe), so a recovery decodes at most one delta per tensor; every `keyframe_interval`-th
    change stores the tensor in full again. The last `cache_size` saved or recovered versions (and the
    keyframes of saved ones) stay in memory so that saving on top of them reads nothing.
    """

    def __init__(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                 improved_version: bool = True, logging: bool = False, *, updates_only: bool = False,
                 codec: str = DEFAULT_CODEC, keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
                 cache_size: int = DEFAULT_CACHE_SIZE, strict_env: bool = False):
        super().__init__(file_pers_service, dict_pers_service, logging, strict_env=strict_env)
        if not isinstance(keyframe_interval, int) or keyframe_interval < 1:
            raise InvalidSaveInfoError(f"keyframe_interval must be a positive int, got {keyframe_interval!r}; "
                                       f"the default is {DEFAULT_KEYFRAME_INTERVAL}")
        self.improved_version = improved_version
        self.updates_only = updates_only
        self.codec = DeltaCodec.from_name(codec)
        self.keyframe_interval = keyframe_interval
        self._cache = _VersionCache(cache_size)

    @property
    def approach(self) -> str:
        return "param_update_improved" if self.improved_version else "param_update"

    def clear_cache(self) -> None:
        """Forget the versions kept in memory, so the next save reads its base from the store."""
        self._cache.clear()

    def save_model(self, save_info: ModelSaveInfo) -> str:
        self._validate(save_info)
        with self._timed("save_model"):
            if save_info.base_model is None:
                return self._save_full(save_info)
            captured = capture(save_info.model)
            state, tree = captured.tensors, merkle_tree(captured)
            reader = self._reader()
            try:
                plan = self._plan_update(save_info, state, tree, reader)
            except IncompatibleModelError as error:
                if self.updates_only:
                    raise IncompatibleModelError(
                        f"{error}; save it on a base model of the same architecture, or use a service with "
                        "updates_only=False to store a full snapshot") from error
                warnings.warn(f"{error}; storing a full snapshot instead", stacklevel=2)
                return self._save_full(save_info, captured)
            with self._timed("save_weights"):
                digest = self._file_pers_service.write_stream(
                    lambda sink: _write_update(sink, plan.snapshot_id, list(state), plan.base_locations, plan.stored))
            recover_info = WeightsUpdateRecoverInfo(update=FileReference(reference_id=f"{digest}/{UPDATE_FILE_NAME}"),
                                                    update_type=self.codec.name)
            model_info = ModelInfo(store_type=ModelStoreType.WEIGHT_UPDATES, recover_info=recover_info,
                                   derived_from_id=save_info.base_model, weights_hash_info=tree,
                                   state_layout=captured.layout)
            model_id = self._persist_model(model_info)
        stored = plan.stored
        locations = {key: _Location(model_id, stored[key].depth, stored[key].delta_of or model_id)
                     if key in stored else plan.base_locations[key] for key in state}
        self._remember(model_id, _private_copy(state), locations, plan.snapshot_id, plan.keyframes)
        logger.debug("saved model %s as an update of %s: %d of %d tensors stored", model_id, save_info.base_model,
                     len(stored), len(state))
        return model_id

    def _remember(self, model_id: str, state: dict[str, torch.Tensor], locations: dict[str, _Location],
                  snapshot_id: str, keyframes: dict[str, torch.Tensor]) -> None:
        """Cache a version; a tensor that is its own keyframe is that keyframe's value too."""
        known = {key: state[key] if location.depth == 0 else keyframes.get(key) for key, location in locations.items()}
        self._cache.put(model_id, _CachedVersion(state, locations, snapshot_id,
                                                 {key: value for key, value in known.items() if value is not None}))

    def recover_model(self, model_id: str, execute_checks: bool = True) -> RestoredModelInfo:
        with self._recovering(model_id):
            reader = self._reader()
            model_info = reader.info(model_id)
            self._lineage_to_snapshot(model_id, reader.info)
            locations, snapshot_id = reader.locations(model_id)
            if model_info.store_type == ModelStoreType.FULL_MODEL:
                model, state = self._recover_snapshot(model_info, execute_checks)
            else:
                state = reader.tensors({key: location.holder for key, location in locations.items()})
                model = self._rebuild(model_info, reader.snapshot(snapshot_id), state, execute_checks)
        self._remember(model_id, _private_copy(state), locations, snapshot_id, {})
        return RestoredModelInfo(model=model, model_id=model_id)

    def _reader(self) -> _Reader:
        return _Reader(self._load_model_info, self._file_pers_service.read_bytes, self._read_weights)

    def _save_full(self, save_info: ModelSaveInfo, captured: Optional[CapturedState] = None) -> str:
        captured = captured if captured is not None else capture(save_info.model)
        model_id = self._save_snapshot(save_info, captured)
        state = _private_copy(captured.tensors)
        self._remember(model_id, state, _snapshot_locations(model_id, state), model_id, {})
        logger.debug("saved model %s as a full snapshot", model_id)
        return model_id

    def _plan_update(self, save_info: ModelSaveInfo, state: dict[str, torch.Tensor], tree: WeightDictMerkleTree,
                     reader: _Reader) -> _UpdatePlan:
        """Where the base's tensors live, the snapshot holding the code, the encoded changed tensors and the
        keyframe values they were encoded against.

        Raises IncompatibleModelError when the model cannot be stored as an update of its base.
        """
        base_id = save_info.base_model
        cached = self._cache.get(base_id)
        if cached is not None:
            base_locations, snapshot_id, keyframes = cached.locations, cached.snapshot_id, dict(cached.keyframes)
        else:
            (base_locations, snapshot_id), keyframes = reader.locations(base_id), {}
        self._check_same_code(save_info, reader.snapshot(snapshot_id), base_id)
        if base_locations.keys() != state.keys():
            added, missing = sorted(state.keys() - base_locations.keys()), sorted(base_locations.keys() - state.keys())
            raise IncompatibleModelError(f"its state dict keys differ from those of base model {base_id} "
                                         f"(added: {added[:5]}, missing: {missing[:5]})")

        base_tensors = cached.state if cached is not None else None
        if self.improved_version:
            base_tree = reader.info(base_id).weights_hash_info
            if base_tree is None:
                raise IncompatibleModelError(f"base model {base_id} has no stored weight hashes to compare with")
            diff_weights, diff_nodes = tree.diff(base_tree)
            changed = [key for key in state if key in diff_weights or key in diff_nodes[THIS]]
            if base_tensors is None:
                base_tensors = reader.tensors({key: base_locations[key].holder for key in changed})
        else:
            if base_tensors is None:
                base_tensors = reader.tensors({key: location.holder for key, location in base_locations.items()})
            changed = [key for key in state if not tensor_equal(state[key], base_tensors[key])]
        for key in changed:
            new, base = state[key], base_tensors[key]
            if new.dtype != base.dtype or new.shape != base.shape:
                raise IncompatibleModelError(
                    f"tensor {key!r} is {new.dtype} {tuple(new.shape)}, in base model {base_id} it is {base.dtype} "
                    f"{tuple(base.shape)}")
        keyframes.update({key: base_tensors[key] for key in changed if base_locations[key].depth == 0})
        missing = {key: base_locations[key].keyframe for key in changed
                   if self._stores_delta(base_locations[key]) and key not in keyframes}
        keyframes.update(reader.tensors(missing))
        encoded = _parallel_map(lambda key: self._encode(state[key], keyframes.get(key), base_locations[key]), changed)
        return _UpdatePlan(base_locations, snapshot_id, dict(zip(changed, encoded)), keyframes)

    def _stores_delta(self, base_location: _Location) -> bool:
        """Whether a change of a tensor stored at `base_location` is stored as a delta (else in full)."""
        return self.codec.needs_base and base_location.depth + 1 < self.keyframe_interval

    def _encode(self, tensor: torch.Tensor, keyframe: Optional[torch.Tensor],
                base_location: _Location) -> _StoredTensor:
        """A delta against the tensor's keyframe, or a full copy once the keyframe interval is reached."""
        if self._stores_delta(base_location):
            return _StoredTensor(self.codec, base_location.keyframe, base_location.depth + 1, tensor.dtype,
                                 tuple(tensor.shape), self.codec.encode(tensor, keyframe))
        codec = _KEYFRAME_CODEC if self.codec.needs_base else self.codec
        return _StoredTensor(codec, None, 0, tensor.dtype, tuple(tensor.shape), codec.encode(tensor))

    def _check_same_code(self, save_info: ModelSaveInfo, snapshot: FullModelRecoverInfo, base_id: str) -> None:
        """Raise IncompatibleModelError unless the model's class and code are those stored for its base."""
        class_name = check_class_name(type(save_info.model).__name__)
        if class_name != snapshot.model_class_name:
            raise IncompatibleModelError(f"the model is a {class_name}, base model {base_id} a "
                                         f"{snapshot.model_class_name}")
        source = self._model_source(save_info)
        if (source.model_import, source.init_args) != (snapshot.model_import, snapshot.model_init_args):
            raise IncompatibleModelError(f"the model is built from {source.model_import or 'its code'} with "
                                         f"{source.init_args}, base model {base_id} from "
                                         f"{snapshot.model_import or 'its code'} with {snapshot.model_init_args}")
        if source.code is None:
            return
        code = source.code
        if code.reference_id is not None:
            digest = split_reference_id(code.reference_id)[0]
        else:
            digest = new_hasher().update_mmap(code.path).hexdigest()
        if digest != split_reference_id(snapshot.model_code.reference_id)[0]:
            raise IncompatibleModelError(f"the code defining {class_name} differs from the code stored with base "
                                         f"model {base_id}")
