"""What differs between two stored models: the tensors that changed, were added or were removed.

Without values, only the two model documents are read: each holds the Merkle tree of its model's state dict, one
hash per entry over its dtype, shape and bytes, so comparing the trees names every entry that differs without
reading a weight blob or rebuilding a model. The hashes do not say how an entry changed: with `values=True` both
models are recovered (with checks) and each changed tensor gets its shapes and dtypes and how far its values
moved: the largest and the mean absolute change, and both relative to the first model's tensor (divided by its
largest and its mean absolute value).

    import mmlib
    changes = mmlib.diff("detector:v1", "detector:v2", store)
    print(changes.changed, changes.added, changes.removed)
"""

import math
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from mmlib import maintenance
from mmlib.errors import IncompatibleModelError, InvalidArgumentError
from mmlib.persistence.store import Store, StoreLike, store_of
from mmlib.schema.model_info import ModelInfo

if TYPE_CHECKING:
    import torch

CHANGED, ADDED, REMOVED = "changed", "added", "removed"


@dataclass(frozen=True)
class TensorChange:
    """One state-dict entry that differs between two models: `change` is CHANGED, ADDED or REMOVED.

    Shapes, dtypes and the figures are known only for a diff with values (None otherwise, and for entries that are
    no tensors); the figures only for tensors of one shape: max/mean absolute change, and each relative to the
    first model's tensor (its max/mean absolute value; None when that is 0 and the change is not).
    """

    key: str
    change: str
    old_shape: Optional[list[int]] = None
    new_shape: Optional[list[int]] = None
    old_dtype: Optional[str] = None
    new_dtype: Optional[str] = None
    max_abs: Optional[float] = None
    mean_abs: Optional[float] = None
    max_rel: Optional[float] = None
    mean_rel: Optional[float] = None

    @property
    def reshaped(self) -> bool:
        """Whether both shapes are known and differ."""
        return None not in (self.old_shape, self.new_shape) and self.old_shape != self.new_shape

    @property
    def retyped(self) -> bool:
        """Whether both dtypes are known and differ."""
        return None not in (self.old_dtype, self.new_dtype) and self.old_dtype != self.new_dtype

    @property
    def shape_change(self) -> str:
        """The shape for a table: `(2, 8)`, `(2, 8) -> (3, 8)` when it changed, `-` when unknown."""
        return _transition(*(None if shape is None else str(tuple(shape)) for shape in (self.old_shape,
                                                                                        self.new_shape)))

    @property
    def dtype_change(self) -> str:
        """The dtype for a table: `float32`, `float32 -> float16` when it changed, `-` when unknown."""
        return _transition(self.old_dtype, self.new_dtype)


def _transition(old: Optional[str], new: Optional[str]) -> str:
    """`old -> new`, or one of them when they are equal or the other is unknown ("-" for neither)."""
    if old is not None and new is not None and old != new:
        return f"{old} -> {new}"
    return old or new or "-"


@dataclass(frozen=True)
class ModelDiff:
    """How model `new_id` differs from model `old_id`: `changes` lists every entry that differs (the new model's
    entries in its state-dict order, then the removed ones), `unchanged` counts the entries equal in both; `values`
    tells whether the models were recovered to measure the changes."""

    old_id: str
    new_id: str
    values: bool
    unchanged: int
    changes: list[TensorChange] = field(default_factory=list)

    def _keys(self, change: str) -> list[str]:
        return [entry.key for entry in self.changes if entry.change == change]

    @property
    def changed(self) -> list[str]:
        """Entries in both models whose value, shape or dtype differ."""
        return self._keys(CHANGED)

    @property
    def added(self) -> list[str]:
        """Entries only the new model has."""
        return self._keys(ADDED)

    @property
    def removed(self) -> list[str]:
        """Entries only the old model has."""
        return self._keys(REMOVED)

    @property
    def reshaped(self) -> list[str]:
        """Changed entries whose shape differs (known only for a diff with values)."""
        return [entry.key for entry in self.changes if entry.reshaped]

    @property
    def retyped(self) -> list[str]:
        """Changed entries whose dtype differs (known only for a diff with values)."""
        return [entry.key for entry in self.changes if entry.retyped]

    @property
    def identical(self) -> bool:
        """Whether both models hold the same state (every entry equal)."""
        return not self.changes

    def to_dict(self) -> dict:
        """A JSON-ready dict: the fields, the key lists, and each change with non-finite figures as None."""
        return {"old_id": self.old_id, "new_id": self.new_id, "values": self.values, "unchanged": self.unchanged,
                "identical": self.identical, "changed": self.changed, "added": self.added, "removed": self.removed,
                "reshaped": self.reshaped, "retyped": self.retyped,
                "changes": [{key: _json_number(value) for key, value in asdict(entry).items()}
                            for entry in self.changes]}


def _json_number(value: Any) -> Any:
    """`value`, or None for a float JSON cannot hold (NaN, infinity)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def diff(reference: str, other: str, store: StoreLike, *, values: bool = False) -> ModelDiff:
    """How the model `other` names differs from the one `reference` names (any references `mmlib.load` takes).

    Without `values` only their model documents are read (no weight blob); with `values` both models are
    recovered with checks to measure each change. IncompatibleModelError for a provenance version whose weights
    hash was never recorded, unless `values` (its documents do not say what its weights are).
    """
    store = store_of(store)
    if not isinstance(values, bool):
        raise InvalidArgumentError(f"values must be True or False, got {values!r}")
    old_id, new_id = (maintenance.resolve_model_id(store, ref) for ref in (reference, other))
    if values:
        return _measured_diff(store, old_id, new_id)
    return _compared(old_id, new_id, stored_hashes(store, old_id), stored_hashes(store, new_id))


def stored_hashes(store: Store, model_id: str) -> dict[str, str]:
    """State-dict key -> hash of its entry, from the Merkle tree in the model's document (checked against the model
    id; no blob is read)."""
    maintenance.require_model(store, model_id)
    info = ModelInfo.load(model_id, store.file_pers_service, store.dict_pers_service,
                          restore_root=tempfile.gettempdir(), load_recursive=False, load_files=False)
    tree = info.weights_hash_info
    if tree is None:
        raise IncompatibleModelError(
            f"model {model_id} is a provenance version whose weights hash was never recorded "
            "(ProvenanceSaveService.add_weights_hash_info), so its documents do not say what its weights are: "
            "compare with values (mmlib.diff(..., values=True), `mmlib diff --values`), which recovers it")
    return tree.layer_hashes()


def _compared(old_id: str, new_id: str, old: dict[str, str], new: dict[str, str],
              measure: Callable[[str, str], TensorChange] = TensorChange, values: bool = False) -> ModelDiff:
    """The diff of two models from their entries' hashes; `measure(key, change)` gives each TensorChange (by
    default the key and change alone; `values` says whether it measures)."""
    changes = [measure(key, CHANGED if key in old else ADDED) for key, value in new.items() if old.get(key) != value]
    changes += [measure(key, REMOVED) for key in old if key not in new]
    return ModelDiff(old_id, new_id, values=values, unchanged=len(new.keys() & old.keys())
                     - sum(1 for entry in changes if entry.change == CHANGED), changes=changes)


def _measured_diff(store: Store, old_id: str, new_id: str) -> ModelDiff:
    """The diff of two models recovered with checks, each change measured."""
    from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree  # imports torch, as recovering does

    old, new = (maintenance.recover_model(store, model_id, execute_checks=True).state_dict()
                for model_id in (old_id, new_id))

    def measure(key: str, change: str) -> TensorChange:
        return TensorChange(key, change, **_described("old", old.get(key)), **_described("new", new.get(key)),
                            **(_figures(old[key], new[key]) if change == CHANGED else {}))

    return _compared(old_id, new_id, WeightDictMerkleTree.from_state_dict(old).layer_hashes(),
                     WeightDictMerkleTree.from_state_dict(new).layer_hashes(), measure, values=True)


def _described(side: str, value: Any) -> dict:
    """`{side}_shape` and `{side}_dtype` of a tensor ({} for anything else)."""
    import torch

    from mmlib.util.dtypes import dtype_name

    if not isinstance(value, torch.Tensor):
        return {}
    return {f"{side}_shape": list(value.shape), f"{side}_dtype": dtype_name(value.dtype)}


def _figures(old: Any, new: Any) -> dict:
    """max_abs, mean_abs, max_rel and mean_rel of the change from tensor `old` to `new`, computed in double
    precision ({} unless both are non-empty tensors of one shape)."""
    import torch

    if not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor)) or old.shape != new.shape \
            or old.numel() == 0:
        return {}
    wide = torch.complex128 if old.is_complex() or new.is_complex() else torch.float64
    before, after = (_plain(tensor).to(device="cpu", dtype=wide) for tensor in (old, new))
    change, scale = (after - before).abs(), before.abs()
    max_abs, mean_abs = change.max().item(), change.mean().item()
    return {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": _ratio(max_abs, scale.max().item()),
            "mean_rel": _ratio(mean_abs, scale.mean().item())}


def _plain(tensor: "torch.Tensor") -> "torch.Tensor":
    """A quantized tensor's real values; any other tensor as it is."""
    return tensor.dequantize() if tensor.is_quantized else tensor.detach()


def _ratio(change: float, scale: float) -> Optional[float]:
    """`change / scale`; 0 for no change of a zero tensor, None for a change of one."""
    if scale > 0:
        return change / scale
    return 0.0 if change == 0 else None
