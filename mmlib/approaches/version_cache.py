"""The few most recently saved or recovered weight-update versions, kept in memory so a save on top of one reads
nothing back from the store."""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from mmlib.approaches.update_format import Location


@dataclass(frozen=True)
class CachedVersion:
    """A recently saved or recovered version: its tensors, where each is stored, and the values of those tensors'
    keyframes where known (shared with the versions that use the same keyframe).

    `state` holds private copies of the values a later save reads (see `VersionCache.remember`) and, for the
    other tensors, meta tensors of their dtype and shape.
    """

    state: dict[str, torch.Tensor]
    locations: dict[str, Location]
    snapshot_id: str
    keyframes: dict[str, torch.Tensor]
    delta_share: Optional[float] = None  # its deltas' bytes over their tensors' (None: it stored no delta)
    full_streak: int = 0  # versions in a row, it included, stored in full because deltas did not pay


class VersionCache:
    """An LRU cache of `CachedVersion`s by model id; a capacity below 1 keeps nothing."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._versions: "OrderedDict[str, CachedVersion]" = OrderedDict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(capacity={self._capacity}, cached={list(self._versions)})"

    def get(self, model_id: str) -> Optional[CachedVersion]:
        version = self._versions.get(model_id)
        if version is not None:
            self._versions.move_to_end(model_id)
        return version

    def remember(self, model_id: str, state: dict[str, torch.Tensor], locations: dict[str, Location],
                 snapshot_id: str, keyframes: dict[str, torch.Tensor], *, all_values: bool,
                 delta_share: Optional[float] = None, full_streak: int = 0) -> None:
        """Cache a version: copies, which later in-place training of the model cannot change, of the tensors that
        are their own keyframes (a later delta is taken against them), or of every tensor with `all_values` (for
        a service that compares values to find changes); meta tensors, which cost no copy, for the others."""
        if self._capacity < 1:
            return
        state = {key: tensor.clone() if all_values or locations[key].depth == 0 else tensor.to("meta")
                 for key, tensor in state.items()}
        known = {key: state[key] if location.depth == 0 else keyframes.get(key) for key, location in locations.items()}
        self._versions[model_id] = CachedVersion(state, locations, snapshot_id,
                                                 {key: value for key, value in known.items() if value is not None},
                                                 delta_share, full_streak)
        self._versions.move_to_end(model_id)
        while len(self._versions) > self._capacity:
            self._versions.popitem(last=False)

    def clear(self) -> None:
        self._versions.clear()
