"""Which installed distributions provide a top-level module, read once and again only after installs change.

`importlib.metadata.packages_distributions()` reads the metadata of every installed distribution: 80 ms in a
typical environment, paid by every save and recovery of a model built from an installed package. The answer is
kept until `sys.path` changes or the distribution metadata directories (`NAME-VERSION.dist-info`, `.egg-info`) in
its directories do: installing, upgrading or removing a distribution adds or removes one. Other files, such as
those a script writes beside itself, do not count.
"""

import importlib.metadata
import os
import sys
import threading
from typing import Mapping, Optional

_lock = threading.Lock()
_cached: Optional[tuple[tuple, Mapping[str, list[str]]]] = None
_METADATA_SUFFIXES = (".dist-info", ".egg-info")


def _installed_state() -> tuple:
    """Each `sys.path` entry with the names of the distribution metadata in it (None where it cannot be listed)."""
    state: list[tuple[str, Optional[frozenset[str]]]] = []
    for entry in sys.path:
        try:
            with os.scandir(entry or os.curdir) as listing:
                state.append((entry, frozenset(item.name for item in listing
                                               if item.name.endswith(_METADATA_SUFFIXES))))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def module_distributions() -> Mapping[str, list[str]]:
    """Top-level module name -> names of the installed distributions providing it."""
    global _cached
    state = _installed_state()
    with _lock:
        if _cached is None or _cached[0] != state:
            _cached = (state, importlib.metadata.packages_distributions())
        return _cached[1]
