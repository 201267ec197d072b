"""The layout of a model's state: what a faithful rebuild restores besides the stored tensors."""

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from mmlib.errors import IntegrityError
from mmlib.util.dtypes import dtype_from_name


@dataclass
class StateLayout:
    """Everything about a model's state besides its stored tensors; `None`-free and JSON-able as a document.

    `aliases` maps a state-dict name to the first name of the tensor it shares memory with; `tied` lists the
    aliases that are the very same Parameter or buffer object (tied weights) rather than two views of one
    memory.
    """

    aliases: dict[str, str] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)
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
            "module_metadata": [[json.loads(entry), prefixes] for entry, prefixes in grouped.items()],
            "extra_states": [list(pair) for pair in self.extra_states.items()],
            "buffer_dtypes": [list(pair) for pair in self.buffer_dtypes.items()],
            "frozen": list(self.frozen), "eval_modules": list(self.eval_modules),
        }
        return {key: value for key, value in document.items() if value}

    @classmethod
    def from_document(cls, document: dict) -> "StateLayout":
        """Parse `to_document` output; raises IntegrityError when it is not one."""
        try:
            module_metadata = {prefix: dict(entry) for entry, prefixes in document.get("module_metadata", [])
                               for prefix in _names(prefixes)}
            layout = cls(aliases=_pairs(document.get("aliases", [])), tied=_names(document.get("tied", [])),
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
        """Of a model's state-dict `names`, those whose tensors are stored (not aliases, not JSON extra states)."""
        return [name for name in names if name not in self.aliases and name not in self.extra_states]

    def differences(self, other: "StateLayout") -> list[str]:
        """What differs from `other` in what a rebuild restores (module versions aside: code may move them on)."""
        return [name for name in ("aliases", "tied", "extra_states", "buffer_dtypes", "frozen", "eval_modules")
                if getattr(self, name) != getattr(other, name)]


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of names, got {value!r:.80}")
    return value


def _pairs(value: Any, value_type: Optional[type] = str) -> dict[str, Any]:
    if not isinstance(value, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        raise ValueError(f"expected a list of [name, value] pairs, got {value!r:.80}")
    pairs = dict(value)
    if not all(isinstance(name, str) for name in pairs) or (
            value_type is not None and not all(isinstance(item, value_type) for item in pairs.values())):
        raise ValueError(f"unexpected names or values in {value!r:.80}")
    return pairs
