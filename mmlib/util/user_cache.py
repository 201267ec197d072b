"""JSON files in the user's cache directory that later processes read instead of recomputing what they hold.

The directory is `$MMLIB_CACHE_DIR`, else `$XDG_CACHE_HOME/mmlib`, else `~/.cache/mmlib`. A cache only saves time:
a missing, unreadable or corrupt file reads as empty and a failed write is logged at debug level, so neither ever
fails a save or a recovery. Writes are atomic (a uniquely named temp file renamed over the target, not fsynced: a
file lost to a power failure is recomputed), so readers see a whole file and concurrent writers each publish a
whole one; the last rename wins.
"""

import json
import logging
import os
from typing import Any

from mmlib.util.atomic import atomic_write

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "MMLIB_CACHE_DIR"


def cache_directory() -> str:
    """Where mmlib keeps its caches: `$MMLIB_CACHE_DIR`, `$XDG_CACHE_HOME/mmlib` or `~/.cache/mmlib`."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mmlib")


def _path(name: str) -> str:
    return os.path.join(cache_directory(), f"{name}.json")


def read_cache(name: str) -> dict[str, Any]:
    """The JSON object cached under `name`; empty when there is none or it cannot be read or parsed."""
    try:
        with open(_path(name), "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        if not isinstance(error, FileNotFoundError):
            logger.debug("ignoring the cache file %s: %s", _path(name), error)
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(name: str, data: dict[str, Any]) -> None:
    """Replace the JSON object cached under `name` with `data`; a failure is logged, never raised."""
    try:
        os.makedirs(cache_directory(), exist_ok=True)
        with atomic_write(_path(name), durable=False) as handle:
            handle.write(json.dumps(data, separators=(",", ":")).encode())
    except (OSError, TypeError, ValueError) as error:
        logger.debug("could not write the cache file %s: %s", _path(name), error)
