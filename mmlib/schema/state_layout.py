"""The layout of a model's state: what a faithful rebuild restores besides the stored tensors."""

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from mmlib.errors import IntegrityError


@dataclass(frozen=True)
class TensorView:
    """Where a state-dict tensor lies in the memory of a stored one, `root` (contiguous): `offset` elements from
    its start, with this `shape` and `stride` (in elements), as `torch.Tensor.as_strided` takes them."""

    root: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def span(self) -> int:
        """How many elements of the root's memory, from `offset` on, the view reaches."""
        return 1 + sum(stride * (size - 1) for size, stride in zip(self.shape, self.stride))

    def to_list(self) -> list:
        """`[root, offset, shape, stride]`, as stored."""
        return [self.root, self.offset, list(self.shape), list(self.stride)]

    @classmethod
    def from_list(cls, value: Any) -> "TensorView":
        """Parse `to_list` output; raises ValueError when it is not one."""
        if not (isinstance(value, list) and len(value) == 4 and isinstance(value[0], str)
                and _natural(value[1]) and _naturals(value[2]) and _naturals(value[3])
                and len(value[2]) == len(value[3])):
            raise ValueError(f"expected a view [root, offset, shape, stride], got {value!r:.80}")
        return cls(value[0], value[1], tuple(value[2]), tuple(value[3]))


@dataclass
class StateLayout:
    """Everything about a model's state besides its stored tensors; `None`-free and JSON-able as a document.

    `aliases` maps a state-dict name to the first name of the tensor whose memory it views in the same way
    (offset, shape, strides and dtype); `tied` lists the aliases that are the very same Parameter or buffer
    object (tied weights) rather than two tensors over one memory. `views` maps a name whose tensor lies
    inside the memory of another stored tensor in another way (a slice, a transpose, a reshape) to where it
    lies there; such a tensor is not stored, and a rebuild views the stored one again.
    """

    aliases: dict[str, str] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)
    views: dict[str, TensorView] = field(default_factory=dict)
    module_metadata: dict[str, dict] = field(default_factory=dict)
    extra_states: dict[str, Any] = field(default_factory=dict)
    buffer_dtypes: dict[str, str] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    eval_modules: list[str] = field(default_factory=list)

    def to_document(self) -> dict:
        """Lists of pairs instead of dicts keyed by module names (which may hold dots or be empty)."""
        grouped: dict[str, list[str]] = {}
        for prefix, entry in self.module_metadata.items():
            grouped.setdefault(json.dumps(entry, sort_keys=True), []).append(prefix)
        document = {
            "aliases": [list(pair) for pair in self.aliases.items()], "tied": list(self.tied),
            "views": [[name, *view.to_list()] for name, view in self.views.items()],
            "module_metadata": [[json.loads(entry), prefixes] for entry, prefixes in grouped.items()],
            "extra_states": [list(pair) for pair in self.extra_states.items()],
            "buffer_dtypes": [list(pair) for pair in self.buffer_dtypes.items()],
            "frozen": list(self.frozen), "eval_modules": list(self.eval_modules),
        }
        return {key: value for key, value in document.items() if value}

    @classmethod
    def from_document(cls, document: dict) -> "StateLayout":
        """Parse `to_document` output; raises IntegrityError when it is not one."""
        from mmlib.util.dtypes import dtype_from_name  # it imports torch, which listing a store does without

        try:
            module_metadata = {prefix: dict(entry) for entry, prefixes in document.get("module_metadata", [])
                               for prefix in _names(prefixes)}
            layout = cls(aliases=_pairs(document.get("aliases", [])), tied=_names(document.get("tied", [])),
                         views=_views(document.get("views", [])),
                         module_metadata=module_metadata, extra_states=_pairs(document.get("extra_states", []), None),
                         buffer_dtypes=_pairs(document.get("buffer_dtypes", [])),
                         frozen=_names(document.get("frozen", [])),
                         eval_modules=_names(document.get("eval_modules", [])))
            for dtype in layout.buffer_dtypes.values():
                dtype_from_name(dtype)
            return layout
        except (TypeError, ValueError, AttributeError) as error:
            raise IntegrityError(f"the stored state layout of a model is not valid ({error}); run `mmlib verify` "
                                 "and restore the store from a backup") from error

    def stored_keys(self, names: list[str]) -> list[str]:
        """Of a model's state-dict `names`, those whose tensors are stored (not aliases, views or JSON extra
        states)."""
        return [name for name in names
                if name not in self.aliases and name not in self.views and name not in self.extra_states]

    def differences(self, other: "StateLayout") -> list[str]:
        """What differs from `other` in what a rebuild restores (module versions aside: code may move them on)."""
        compared = ("aliases", "tied", "views", "extra_states", "buffer_dtypes", "frozen", "eval_modules")
        return [name for name in compared if getattr(self, name) != getattr(other, name)]


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of names, got {value!r:.80}")
    return value


def _views(value: Any) -> dict[str, TensorView]:
    if not isinstance(value, list) or not all(isinstance(item, list) and item and isinstance(item[0], str)
                                              for item in value):
        raise ValueError(f"expected a list of [name, root, offset, shape, stride] views, got {value!r:.80}")
    return {item[0]: TensorView.from_list(item[1:]) for item in value}


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _naturals(value: Any) -> bool:
    return isinstance(value, list) and all(_natural(item) for item in value)


def _pairs(value: Any, value_type: Optional[type] = str) -> dict[str, Any]:
    if not isinstance(value, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        raise ValueError(f"expected a list of [name, value] pairs, got {value!r:.80}")
    pairs = dict(value)
    if not all(isinstance(name, str) for name in pairs) or (
            value_type is not None and not all(isinstance(item, value_type) for item in pairs.values())):
        raise ValueError(f"unexpected names or values in {value!r:.80}")
    return pairs
