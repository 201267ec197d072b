"""Per-process memos of what never changes once read: what a content-addressed record or blob names."""

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_ENTRIES = 4096


class Memo(Generic[K, V]):
    """A value per key, worked out once and kept for the life of the process (at most `entries` of them: the least
    recently used goes first). Only for values that cannot change for their key, such as what a model's record
    names (an id commits to its record)."""

    def __init__(self, entries: int = DEFAULT_ENTRIES):
        self._values: OrderedDict[K, V] = OrderedDict()
        self._entries = entries

    def get(self, key: K, compute: Callable[[], V]) -> V:
        """The value of `key`, from `compute()` the first time (an exception is not remembered)."""
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = compute()
        self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        """Remember `value` for `key`."""
        self._values[key] = value
        self._values.move_to_end(key)
        if len(self._values) > self._entries:
            self._values.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._values
