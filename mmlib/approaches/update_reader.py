"""Reading weight-update versions back: where each tensor of a version lives, and its value, decoded along the
lineage from the blob that holds it and, for a delta, the keyframe it is a delta of."""

import math
from typing import Callable, Iterable, Optional

import torch

from mmlib.util.concurrency import parallel_map
from mmlib.approaches.update_format import Location, StoredTensor, UpdateIndex, read_update, snapshot_locations
from mmlib.approaches.update_stream import OpenBlob, read_checked_header
from mmlib.errors import IncompatibleModelError, IntegrityError
from mmlib.persistence.base import FileReference
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.buffers import Buffer
from mmlib.util.delta import DeltaCodec, decode_chain

Chain = tuple[Optional[torch.Tensor], list[tuple[DeltaCodec, Buffer]], torch.dtype, tuple]


class UpdateReader:
    """Reads stored versions for one save or recovery: each document and blob at most once, tensors on demand."""

    def __init__(self, load_info: Callable[[str], ModelInfo], read_blob: Callable[[str], Buffer],
                 read_weights: Callable[[FileReference], dict[str, torch.Tensor]], open_blob: OpenBlob):
        self._load_info, self._read_blob, self._read_weights = load_info, read_blob, read_weights
        self._open_blob = open_blob
        self._infos: dict[str, ModelInfo] = {}
        self._updates: dict[str, UpdateIndex] = {}
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

    def locations(self, model_id: str) -> tuple[dict[str, Location], str]:
        """Where each tensor of a version is stored, and the snapshot whose code the version uses."""
        info = self.info(model_id)
        if info.store_type == ModelStoreType.FULL_MODEL:
            if info.weights_hash_info is not None and info.state_layout is not None:
                keys = info.state_layout.stored_keys(list(info.weights_hash_info.layer_hashes()))
            else:
                keys = self._snapshot_state(model_id)
            return snapshot_locations(model_id, keys), model_id
        if info.store_type == ModelStoreType.WEIGHT_UPDATES:
            if model_id in self._updates:
                return self._updates[model_id].locations, self._updates[model_id].snapshot_id
            header = read_checked_header(self._open_blob, info.recover_info.update.reference_id, model_id)
            return header.locations, header.snapshot_id
        raise IncompatibleModelError(
            f"model {model_id} is stored as {info.store_type.value}, not as weights or weight updates; recover "
            "it with the save service that stored it (e.g. ProvenanceSaveService)")

    def tensors(self, holders: dict[str, str]) -> dict[str, torch.Tensor]:
        """The value of each tensor `key` as stored by model `holders[key]`, decoded in parallel."""
        chains = {key: self._chain(holder, key) for key, holder in holders.items()}
        values = parallel_map(lambda key: _value(*chains[key]), chains,
                              size=lambda key: chains[key][2].itemsize * math.prod(chains[key][3]))
        return dict(zip(chains, values))

    def _chain(self, holder: str, key: str) -> Chain:
        """The arguments of `decode_chain` for tensor `key` of model `holder`.

        Reads at most two blobs: the holder's and, for a delta, the one with the keyframe it is a delta of.
        """
        chain: list[StoredTensor] = []
        model_id, start = holder, None
        while True:
            info = self.info(model_id)
            if info.store_type == ModelStoreType.FULL_MODEL:
                start = self._snapshot_state(model_id).get(key)
                if start is None:
                    raise self._broken_chain(holder, key)
                if not chain:
                    return start, [], start.dtype, tuple(start.shape)
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
        return start, steps, chain[0].dtype, chain[0].shape

    @staticmethod
    def _broken_chain(holder: str, key: str) -> IntegrityError:
        return IntegrityError(f"the stored delta of tensor {key!r} of model {holder} has no keyframe to apply it "
                              "to; run `mmlib verify` and restore the store from a backup")

    def _update(self, model_id: str) -> UpdateIndex:
        if model_id not in self._updates:
            data = self._read_blob(self.info(model_id).recover_info.update.reference_id)
            self._updates[model_id] = read_update(data, model_id)
        return self._updates[model_id]

    def _snapshot_state(self, model_id: str) -> dict[str, torch.Tensor]:
        if model_id not in self._snapshots:
            self._snapshots[model_id] = self._read_weights(self.snapshot(model_id).parameters_file)
        return self._snapshots[model_id]


def _value(start: Optional[torch.Tensor], steps: list[tuple[DeltaCodec, Buffer]], dtype: torch.dtype,
           shape: tuple) -> torch.Tensor:
    """The tensor a chain of `_chain` gives: the snapshot's own tensor when no step applies to it, and a full copy
    stored plain in a blob read for this reader shares its memory, as the snapshot's tensors do."""
    return start if start is not None and not steps else decode_chain(start, steps, dtype, shape, share_payload=True)
