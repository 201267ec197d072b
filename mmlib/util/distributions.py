"""Which installed distributions provide a top-level module, read once and again only after installs change.

`importlib.metadata.packages_distributions()` reads the metadata of every installed distribution: 80 ms in a
typical environment, paid by every save and recovery of a model built from an installed package. The answer is
kept until a directory on `sys.path` changes (installing or removing a distribution adds or removes an entry in
its directory, which changes the directory's modification time) or `sys.path` itself does.
"""

import importlib.metadata
import os
import sys
import threading
from typing import Mapping, Optional

_lock = threading.Lock()
_cached: Optional[tuple[tuple, Mapping[str, list[str]]]] = None


def _path_state() -> tuple:
    """Each `sys.path` entry with its modification time (None where it is not a readable path)."""
    state: list[tuple[str, Optional[int]]] = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or os.curdir).st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def module_distributions() -> Mapping[str, list[str]]:
    """Top-level module name -> names of the installed distributions providing it."""
    global _cached
    state = _path_state()
    with _lock:
        if _cached is None or _cached[0] != state:
            _cached = (state, importlib.metadata.packages_distributions())
        return _cached[1]
