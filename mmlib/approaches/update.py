"""The parameter update approach: a derived model stores only the tensors that changed, as compressed deltas.

Every delta is taken against the tensor's keyframe (its last full copy), not against the previous version, so
recovering any version decodes at most one delta per tensor: recovery time does not grow along a lineage. The
`keyframe_interval`-th change of a tensor stores it in full again, which keeps deltas small as weights drift
away. A version whose deltas did not pay (they took at least `DELTA_PAYS_SHARE` of their tensors' bytes, about
what a compressed full copy takes) is followed by versions stored in full, `keyframe_interval` of them before
deltas are tried again. Those full copies are compressed (`plain-planes-zstd1`: the sign and exponent byte plane
of trained weights shrinks) and need no keyframe. In a `pruned` lineage (a training run's checkpoints, whose
older versions retention prunes as it goes) a delta must pay for the keyframe blob it keeps alive too
(`PRUNED_DELTA_PAYS_SHARE`: Adam's moments, 0.81, do not), and the keyframes of the interval are compressed as
well; elsewhere they stay plain: every delta version after one reads it, and a plain copy is read straight into
the recovered tensor (a compressed one made version 10 of a ResNet-18 chain 12 ms slower to recover, for 3% less
storage). The blob format is in `update_format`, reading versions back in `update_reader`, and the versions kept
in memory in `version_cache`.
"""

import collections
import concurrent.futures
import logging
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from mmlib.approaches.base import AbstractSaveService, DeviceLike, merkle_tree, model_to_save
from mmlib.util.concurrency import SMALL_ITEM_BYTES, WORKERS, parallel_map, run_beside
from mmlib.approaches.model_state import CapturedState, capture
from mmlib.approaches.update_format import Location, StoredTensor, snapshot_locations, write_update
from mmlib.approaches.update_stream import StreamedRecovery, stream_keyframes
from mmlib.approaches.update_reader import UpdateReader
from mmlib.approaches.version_cache import CachedVersion, VersionCache
from mmlib.equal import tensor_equal
from mmlib.errors import IncompatibleModelError, InvalidSaveInfoError
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, FileReference, split_reference_id
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo, WeightsUpdateRecoverInfo
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.delta import DEFAULT_CODEC, FULL_COPY_CODEC, DeltaCodec
from mmlib.util.hash import new_hasher
from mmlib.util.init_from_file import check_class_name
from mmlib.util.weight_dict_merkle_tree import THIS, WeightDictMerkleTree

logger = logging.getLogger(__name__)

UPDATE_FILE_NAME = "weights_update.mmu"
DEFAULT_KEYFRAME_INTERVAL = 8
DEFAULT_CACHE_SIZE = 2

_KEYFRAME_CODEC = DeltaCodec()
_FULL_COPY_CODEC = DeltaCodec.from_name(FULL_COPY_CODEC)
# A version's deltas pay when they take less than this share of the bytes of the tensors they encode: a compressed
# full copy of float32 weights or optimizer moments takes 0.82-0.85 of them and needs no keyframe.
DELTA_PAYS_SHARE = 0.8
# In a pruned lineage a delta also keeps its keyframe's blob alive after retention pruned the keyframe's version.
# Measured 10 steps apart (`benchmarks/checkpoints.py`): SGD momentum 0.62 and ResNet-18 weights 0.47 pay, AdamW
# moments 0.81 and a small LM's weights 0.76 do not.
PRUNED_DELTA_PAYS_SHARE = 0.7
_parallel_map = parallel_map  # benchmarks/update_storage.py imports it from here


@dataclass(frozen=True)
class _UpdatePlan:
    """What a save on top of a base stores: the model's hash tree, the base's tensor locations, the snapshot with
    the code, the encoded changed tensors, and the keyframe values known for the base's tensors."""

    tree: WeightDictMerkleTree
    base_locations: dict[str, Location]
    snapshot_id: str
    stored: dict[str, StoredTensor]
    keyframes: dict[str, torch.Tensor]
    full_streak: int  # versions in a row, this one included, stored in full because deltas did not pay


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
    keyframes of saved ones) stay in memory so that saving on top of them reads nothing. Unchanged tensors of at
    most `restore_small` bytes are stored again in every version, so that no older version's blob is needed only
    for them (checkpoints, whose older versions are pruned, use this). Full copies are compressed in versions stored
    in full because deltas did not pay, and everywhere in a `pruned` lineage (see the module docstring).
    """

    def __init__(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                 improved_version: bool = True, logging: bool = False, *, updates_only: bool = False,
                 codec: str = DEFAULT_CODEC, keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
                 cache_size: int = DEFAULT_CACHE_SIZE, strict_env: bool = False, restore_small: int = 0,
                 pruned: bool = False):
        super().__init__(file_pers_service, dict_pers_service, logging, strict_env=strict_env)
        if not isinstance(keyframe_interval, int) or keyframe_interval < 1:
            raise InvalidSaveInfoError(f"keyframe_interval must be a positive int, got {keyframe_interval!r}; "
                                       f"the default is {DEFAULT_KEYFRAME_INTERVAL}")
        self.improved_version = improved_version
        self.updates_only = updates_only
        self.codec = DeltaCodec.from_name(codec)
        self.keyframe_interval = keyframe_interval
        self.restore_small = restore_small
        self.pruned = pruned
        self._cache = VersionCache(cache_size)

    @property
    def approach(self) -> str:
        return "param_update_improved" if self.improved_version else "param_update"

    def models_read(self, model_id: str) -> Optional[set[str]]:
        """The models whose blobs a recovery of a version saved or recovered by this service lately reads tensors
        from (None when it is no longer kept in memory)."""
        cached = self._cache.get(model_id)
        return None if cached is None else _blobs_holding(cached.locations.values())

    def clear_cache(self) -> None:
        """Forget the versions kept in memory, so the next save reads its base from the store."""
        self._cache.clear()

    def save_model(self, save_info: ModelSaveInfo) -> str:
        self._validate(save_info)
        with self._saving():
            if save_info.base_model is None:
                return self._save_full(save_info)
            captured = capture(model_to_save(save_info))
            state, reader = captured.tensors, self._reader()
            try:
                plan = self._plan_update(save_info, save_info.base_model, captured, reader)
            except IncompatibleModelError as error:
                if self.updates_only:
                    raise IncompatibleModelError(
                        f"{error}; save it on a base model of the same architecture, or use a service with "
                        "updates_only=False to store a full snapshot") from error
                warnings.warn(f"{error}; storing a full snapshot instead", stacklevel=2)
                return self._save_full(save_info, captured)
            with self._timed("save_weights"):
                digest = self._file_pers_service.write_stream(
                    lambda sink: write_update(sink, plan.snapshot_id, list(state), plan.base_locations, plan.stored))
            recover_info = WeightsUpdateRecoverInfo(update=FileReference(reference_id=f"{digest}/{UPDATE_FILE_NAME}"),
                                                    update_type=self.codec.name)
            model_info = ModelInfo(store_type=ModelStoreType.WEIGHT_UPDATES, recover_info=recover_info,
                                   derived_from_id=save_info.base_model, weights_hash_info=plan.tree,
                                   state_layout=captured.layout)
            model_id = self._persist_model(model_info)
        stored = plan.stored
        locations = {key: Location(model_id, stored[key].depth, stored[key].delta_of or model_id)
                     if key in stored else plan.base_locations[key] for key in state}
        self._cache.remember(model_id, state, locations, plan.snapshot_id, plan.keyframes,
                             all_values=not self.improved_version, delta_share=_delta_share(stored.values()),
                             full_streak=plan.full_streak)
        logger.debug("saved model %s as an update of %s: %d of %d tensors stored", model_id, save_info.base_model,
                     len(stored), len(state))
        return model_id

    def recover_model(self, model_id: str, execute_checks: bool = True,
                      device: Optional[DeviceLike] = None) -> RestoredModelInfo:
        """Rebuild a stored version on `device` (default: the CPU); the versions kept in memory stay on the CPU."""
        with self._recovering(model_id, execute_checks, device) as target:
            reader = self._reader()
            model_info = reader.info(model_id)
            lineage = self._lineage_to_snapshot(model_id, reader.info)
            if model_info.store_type == ModelStoreType.FULL_MODEL:
                model, state = self._recover_snapshot(model_info, execute_checks, target)
                locations, snapshot_id = reader.locations(model_id)
            else:
                state, header = StreamedRecovery(model_id, lineage, self._file_pers_service.verified_reader).state()
                locations, snapshot_id = header.locations, header.snapshot_id
                model = self._rebuild(model_info, reader.snapshot(snapshot_id), state, execute_checks, target)
        self._cache.remember(model_id, state, locations, snapshot_id, {}, all_values=not self.improved_version)
        return RestoredModelInfo(model=model, model_id=model_id)

    def _reader(self) -> UpdateReader:
        return UpdateReader(self._load_model_info, self._file_pers_service.read_bytes, self._read_weights,
                            self._file_pers_service.verified_reader)

    def _save_full(self, save_info: ModelSaveInfo, captured: Optional[CapturedState] = None) -> str:
        captured = captured if captured is not None else capture(model_to_save(save_info))
        model_id = self._save_snapshot(save_info, captured)
        self._cache.remember(model_id, captured.tensors, snapshot_locations(model_id, captured.tensors), model_id, {},
                             all_values=not self.improved_version)
        logger.debug("saved model %s as a full snapshot", model_id)
        return model_id

    def _plan_update(self, save_info: ModelSaveInfo, base_id: str, captured: CapturedState,
                     reader: UpdateReader) -> _UpdatePlan:
        """The model's hash tree, where the base's tensors live, the snapshot holding the code, the encoded
        changed tensors and the keyframe values they were encoded against.

        The tree is hashed while the base is read. Raises IncompatibleModelError when the model cannot be stored
        as an update of `base_id`, its base.
        """
        state = captured.tensors
        tree, base = run_beside(lambda: merkle_tree(captured), lambda: self._base_version(base_id, reader))
        # A base this service saved or recovered lately had its lineage walked then; any other base's lineage is
        # walked now, so that a save on a broken lineage fails instead of a later recovery of what it saved.
        lineage_known = self._cache.get(base_id) is not None
        snapshot = reader.snapshot(base.snapshot_id) if lineage_known else self._root_snapshot(base_id)
        self._check_same_code(save_info, snapshot, base_id)
        _check_same_keys(state, base.locations, base_id)
        deltas = self._deltas_pay(base)
        if self.improved_version and not base.state:  # a base not kept in memory: only its keyframes are read
            changed, keyframes = self._changed_keys(state, tree, base_id, reader), {}
            stored = self._encode_on_stored_keyframes(state, changed, base.locations, base_id, reader)
        else:
            changed, base_tensors = self._changed_tensors(state, tree, base_id, base, reader)
            for key in changed:
                _check_same_type(state[key], base_tensors[key].dtype, base_tensors[key].shape, key, base_id)
            keyframes = self._keyframes(changed, base, base_tensors, reader, deltas)
            encoded = parallel_map(
                lambda key: self._encode(state[key], keyframes.get(key), base.locations[key], deltas),
                changed, size=lambda key: state[key].nbytes)
            stored = dict(zip(changed, encoded))
        stored.update({key: self._full_copy(tensor) for key, tensor in state.items()
                       if key not in stored and tensor.nbytes <= self.restore_small})
        return _UpdatePlan(tree, base.locations, base.snapshot_id, stored, keyframes,
                           0 if deltas else base.full_streak + 1)

    def _deltas_pay(self, base: CachedVersion) -> bool:
        """Whether a save on `base` stores its changes as deltas: unless the base's deltas took `DELTA_PAYS_SHARE`
        (`PRUNED_DELTA_PAYS_SHARE` in a pruned lineage) of their tensors' bytes or more, or the base is one of fewer
        than `keyframe_interval` versions in a row stored in full since (then deltas are tried again). A base not
        kept in memory was not measured: deltas."""
        if 0 < base.full_streak < self.keyframe_interval:
            return False
        pays = PRUNED_DELTA_PAYS_SHARE if self.pruned else DELTA_PAYS_SHARE
        return base.delta_share is None or base.delta_share < pays

    def _base_version(self, base_id: str, reader: UpdateReader) -> CachedVersion:
        """The base as cached, or else as stored: its locations and snapshot, with no tensor or keyframe values."""
        cached = self._cache.get(base_id)
        if cached is not None:
            return cached
        locations, snapshot_id = reader.locations(base_id)
        return CachedVersion({}, locations, snapshot_id, {})

    def _changed_keys(self, state: dict[str, torch.Tensor], tree: WeightDictMerkleTree, base_id: str,
                      reader: UpdateReader) -> list[str]:
        """The keys of the tensors that differ from the base's, from the Merkle trees (no tensor is read)."""
        base_tree = reader.info(base_id).weights_hash_info
        if base_tree is None:
            raise IncompatibleModelError(f"base model {base_id} has no stored weight hashes to compare with")
        diff_weights, diff_nodes = tree.diff(base_tree)
        return [key for key in state if key in diff_weights or key in diff_nodes[THIS]]

    def _changed_tensors(self, state: dict[str, torch.Tensor], tree: WeightDictMerkleTree, base_id: str,
                         base: CachedVersion, reader: UpdateReader) -> tuple[list[str], dict[str, torch.Tensor]]:
        """The keys of the tensors that differ from the base's, and the base's values of (at least) those: from
        the Merkle trees for `improved_version` (a base kept in memory), else by comparing every tensor."""
        if self.improved_version:
            return self._changed_keys(state, tree, base_id, reader), base.state
        base_tensors = base.state or reader.tensors({key: location.holder for key, location in base.locations.items()})
        return [key for key in state if not tensor_equal(state[key], base_tensors[key])], base_tensors

    def _encode_on_stored_keyframes(self, state: dict[str, torch.Tensor], changed: list[str],
                                    base_locations: dict[str, Location], base_id: str,
                                    reader: UpdateReader) -> dict[str, StoredTensor]:
        """The changed tensors encoded against their keyframes, each as its keyframe arrives from the store (one
        pass over each blob holding keyframes, none held whole; a keyframe is dropped once its delta is encoded,
        and at most a few wait to be), in `changed` order."""
        stored: dict[str, StoredTensor] = {}

        def encode(key: str, keyframe: Optional[torch.Tensor]) -> None:
            stored[key] = self._encode(state[key], keyframe, base_locations[key])

        with concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="mmlib-encode") as pool:
            pending: collections.deque[concurrent.futures.Future] = collections.deque()

            def use(key: str, dtype: torch.dtype, shape: tuple, keyframe: Optional[torch.Tensor]) -> None:
                _check_same_type(state[key], dtype, shape, key, base_id)
                if state[key].nbytes < SMALL_ITEM_BYTES:
                    encode(key, keyframe)
                    return
                while len(pending) > WORKERS:
                    pending.popleft().result()
                pending.append(pool.submit(encode, key, keyframe))

            stream_keyframes({key: base_locations[key].keyframe for key in changed}, reader.info,
                             self._file_pers_service.verified_reader, use,
                             lambda key: self._stores_delta(base_locations[key]))
            for done in pending:
                done.result()
        return {key: stored[key] for key in changed}

    def _keyframes(self, changed: list[str], base: CachedVersion, base_tensors: dict[str, torch.Tensor],
                   reader: UpdateReader, deltas: bool) -> dict[str, torch.Tensor]:
        """The keyframe values known for the base's tensors, completed with those the changed tensors' deltas are
        taken against: the base's own value where the base holds the full copy, else read from the store."""
        keyframes = dict(base.keyframes)
        keyframes.update({key: base_tensors[key] for key in changed if base.locations[key].depth == 0})
        missing = {key: base.locations[key].keyframe for key in changed
                   if self._stores_delta(base.locations[key], deltas) and key not in keyframes}
        keyframes.update(reader.tensors(missing))
        return keyframes

    def _stores_delta(self, base_location: Location, deltas: bool = True) -> bool:
        """Whether a change of a tensor stored at `base_location` is stored as a delta (else in full), in a version
        that stores `deltas` (see `_deltas_pay`)."""
        return deltas and self.codec.needs_base and base_location.depth + 1 < self.keyframe_interval

    def _encode(self, tensor: torch.Tensor, keyframe: Optional[torch.Tensor], base_location: Location,
                deltas: bool = True) -> StoredTensor:
        """A delta against the tensor's keyframe; a full copy once the keyframe interval is reached, or in a version
        that stores no `deltas`."""
        if self._stores_delta(base_location, deltas):
            return StoredTensor(self.codec, base_location.keyframe, base_location.depth + 1, tensor.dtype,
                                 tuple(tensor.shape), self.codec.encode(tensor, keyframe))
        return self._full_copy(tensor, compressed=self.pruned or not deltas)

    def _full_copy(self, tensor: torch.Tensor, compressed: bool = False) -> StoredTensor:
        """A tensor stored in full, its own keyframe: plain, or `compressed` (`plain-planes-zstd1`)."""
        codec = self.codec
        if self.codec.needs_base:
            codec = _FULL_COPY_CODEC if compressed else _KEYFRAME_CODEC
        return StoredTensor(codec, None, 0, tensor.dtype, tuple(tensor.shape), codec.encode(tensor))

    def _check_same_code(self, save_info: ModelSaveInfo, snapshot: FullModelRecoverInfo, base_id: str) -> None:
        """Raise IncompatibleModelError unless the model's class and code are those stored for its base."""
        class_name = check_class_name(type(save_info.model).__name__)
        if class_name != snapshot.model_class_name:
            raise IncompatibleModelError(f"the model is a {class_name}, base model {base_id} a "
                                         f"{snapshot.model_class_name}")
        source = self._model_source(save_info, lambda _: snapshot)
        if (source.model_import, source.init_args) != (snapshot.model_import, snapshot.model_init_args):
            raise IncompatibleModelError(f"the model is built from {source.model_import or 'its code'} with "
                                         f"{source.init_args}, base model {base_id} from "
                                         f"{snapshot.model_import or 'its code'} with {snapshot.model_init_args}")
        if source.code is None:
            return
        code = source.code
        if code.path is not None:  # a file to store (a reference to stored code has no path)
            digest = new_hasher().update_mmap(code.path).hexdigest()
        else:
            digest = split_reference_id(code.stored_id())[0]
        if digest != split_reference_id(snapshot.model_code.reference_id)[0]:
            raise IncompatibleModelError(f"the code defining {class_name} differs from the code stored with base "
                                         f"model {base_id}")


def _delta_share(stored: Iterable[StoredTensor]) -> Optional[float]:
    """The bytes of the deltas among `stored` over the bytes of the tensors they encode (None without deltas)."""
    deltas = [entry for entry in stored if entry.delta_of is not None]
    raw = sum(entry.nbytes for entry in deltas)
    return sum(memoryview(entry.payload).nbytes for entry in deltas) / raw if raw else None


def _blobs_holding(locations: Iterable[Location]) -> set[str]:
    """The models whose blobs hold the values of tensors at `locations`: the holders and, for deltas, keyframes."""
    blobs = set()
    for location in locations:
        blobs.add(location.holder)
        if location.depth > 0:
            blobs.add(location.keyframe)
    return blobs


def _check_same_keys(state: dict[str, torch.Tensor], base_locations: dict[str, Location], base_id: str) -> None:
    """Raise IncompatibleModelError unless the model's state dict has the keys of its base's."""
    if base_locations.keys() != state.keys():
        added, missing = sorted(state.keys() - base_locations.keys()), sorted(base_locations.keys() - state.keys())
        raise IncompatibleModelError(f"its state dict keys differ from those of base model {base_id} "
                                     f"(added: {added[:5]}, missing: {missing[:5]})")


def _check_same_type(new: torch.Tensor, dtype: torch.dtype, shape: Iterable[int], key: str, base_id: str) -> None:
    """Raise IncompatibleModelError unless a changed tensor has its base value's dtype and shape."""
    if new.dtype != dtype or tuple(new.shape) != tuple(shape):
        raise IncompatibleModelError(f"tensor {key!r} is {new.dtype} {tuple(new.shape)}, in base model {base_id} it "
                                     f"is {dtype} {tuple(shape)}")
