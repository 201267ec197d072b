"""Pruned models: versions dropped by a retention policy whose record stays because kept versions derive from them.

Every kept version keeps its id, so its lineage of model documents must stay (ids commit to their base). What a
pruned model gives up is its weights blob (a snapshot's weights, an update's changed tensors), unless a kept model
still reads tensors from it: an update's tensors live in the blob of the version that last changed them and of their
keyframe, which may be pruned ones. A `pruned_model` document marks a pruned model; recovering one is refused, and
listings leave it out. gc keeps a pruned model's documents and code, and its weights blob only while some model
that is not pruned reads from it.
"""

import time
from typing import Iterable, Optional

from mmlib import refs
from mmlib.constants import ID
from mmlib.errors import NotFoundError
from mmlib.persistence.base import BLOB, StoredItem, split_reference_id
from mmlib.persistence.store import Store
from mmlib.schema.model_info import MODEL_INFO, PRUNED, ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo, WeightsUpdateRecoverInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.memo import Memo

_READS: Memo[str, frozenset[str]] = Memo()  # update blob reference -> the models whose weights it reads
# An id commits to its record, so what a model's record names never changes once read: model id -> the reference
# of its weights file, and -> its documents and blobs. Each prune asks them of every model of the store.
_WEIGHTS_REFERENCES: Memo[str, Optional[str]] = Memo()
_STORED_ITEMS: Memo[str, frozenset[StoredItem]] = Memo()


class Lineages:
    """The base and store type of every model of a store (`(model id, store type, base id)` triples, as listed),
    and which are pruned: what deciding the weights a model needs takes."""

    def __init__(self, store: Store, versions: Iterable[tuple[str, str, Optional[str]]]):
        self.store = store
        self.store_types: dict[str, str] = {}
        self.bases: dict[str, Optional[str]] = {}
        for model_id, store_type, base_id in versions:
            self.store_types[model_id], self.bases[model_id] = store_type, base_id
        self.pruned = set(store.dict_pers_service.all_ids_for_type(PRUNED)) & self.bases.keys()

    def reaches_pruned(self, model_id: str) -> bool:
        """Whether a model's lineage, up to the root, passes through a pruned model."""
        seen = set()
        current: Optional[str] = model_id
        while current is not None and current in self.bases and current not in seen:
            if current in self.pruned:
                return True
            seen.add(current)
            current = self.bases[current]
        return False

    def models_read(self, model_id: str) -> set[str]:
        """The models whose weights blobs a full recovery of `model_id` reads: a snapshot's own; the holders and
        keyframes its update header names; for a provenance version, those of its base."""
        store_type = self.store_types.get(model_id)
        if store_type == ModelStoreType.FULL_MODEL.value:
            return {model_id}
        if store_type == ModelStoreType.PROVENANCE.value:
            base_id = self.bases[model_id]
            return self.models_read(base_id) if base_id is not None else set()
        reference = weights_reference(self.store, model_id)
        if reference is None:
            return set()
        return set(_READS.get(reference, lambda: self._read_by_blob(reference, model_id)))

    def _read_by_blob(self, reference: str, model_id: str) -> frozenset[str]:
        """The models whose weights the update blob `reference` of `model_id` reads, from its header."""
        from mmlib.approaches.update_format import read_update  # torch: only stores with pruned models need it

        index = read_update(memoryview(self.store.file_pers_service.read_bytes(reference)), model_id)
        return frozenset({location.holder for location in index.locations.values()}
                         | {location.keyframe for location in index.locations.values()})

    def needed_pruned_blobs(self) -> set[str]:
        """The weights blobs of pruned models that models not pruned still read."""
        if not self.pruned:
            return set()
        needed: set[str] = set()
        for model_id in self.bases:
            if model_id in self.pruned or not self.reaches_pruned(model_id):
                continue
            try:
                digests = {weights_blob(self.store, holder) for holder in self.models_read(model_id) & self.pruned}
            except NotFoundError:
                if self.store.dict_pers_service.id_exists(model_id, MODEL_INFO):
                    raise
                continue  # removed, or withdrawn by its save, since it was listed: it reads nothing
            needed |= {digest for digest in digests if digest is not None}
        return needed


def remember_reads(reference: str, models: set[str]) -> None:
    """Note that the update blob `reference` reads tensors from `models` (what its save knew), so that deciding what
    pruned models' blobs are still needed does not read the blob back."""
    _READS.put(reference, frozenset(models))


def weights_reference(store: Store, model_id: str) -> Optional[str]:
    """The reference id of the file holding a model's weights (a snapshot's parameters, an update's tensors), or
    None for a provenance version (it stores none)."""
    return _WEIGHTS_REFERENCES.get(model_id, lambda: _read_weights_reference(store, model_id))


def _read_weights_reference(store: Store, model_id: str) -> Optional[str]:
    info = ModelInfo.load(model_id, store.file_pers_service, store.dict_pers_service, "", load_recursive=True)
    recover_info = info.recover_info
    if isinstance(recover_info, FullModelRecoverInfo) and recover_info.parameters_file is not None:
        return recover_info.parameters_file.reference_id
    if isinstance(recover_info, WeightsUpdateRecoverInfo) and recover_info.update is not None:
        return recover_info.update.reference_id
    return None


def weights_blob(store: Store, model_id: str) -> Optional[str]:
    """The digest of the blob holding a model's weights, or None for a provenance version."""
    reference = weights_reference(store, model_id)
    return split_reference_id(reference)[0] if reference is not None else None


def own_items(store: Store, model_id: str, pruned: bool) -> set[StoredItem]:
    """A model's documents and blobs; for a pruned model, without its weights blob."""
    items = set(_STORED_ITEMS.get(model_id, lambda: frozenset(
        ModelInfo.load_placeholder(model_id).stored_items(store.dict_pers_service))))
    if pruned:
        items.discard(StoredItem(BLOB, weights_blob(store, model_id) or ""))
        items.add(StoredItem(PRUNED, model_id))
    return items


def is_pruned(store: Store, model_id: str) -> bool:
    """Whether a model was pruned."""
    return store.dict_pers_service.id_exists(model_id, PRUNED)


def mark_pruned(store: Store, model_ids: Iterable[str], reason: str) -> None:
    """Mark models pruned (their refs are marked removed, their aliases dropped); gc then reclaims what of their
    weights no other model reads."""
    dps = store.dict_pers_service
    for model_id in model_ids:
        if dps.id_exists(model_id, MODEL_INFO):
            dps.save_dict({ID: model_id, "reason": reason, "time": time.time()}, PRUNED)
            refs.forget_model(dps, model_id)
