"""Threads for the work of saves and recoveries that releases the GIL (hashing, file I/O, zstd, numpy)."""

import concurrent.futures
import os
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_WORKERS = os.cpu_count() or 1


def run_beside(background: Callable[[], Any], foreground: Callable[[], Any]) -> tuple[Any, Any]:
    """Run `background` in a thread while `foreground` runs here; returns both results.

    Pays off for hashing beside file I/O: both release the GIL, so they share the cores.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlib") as pool:
        pending = pool.submit(background)
        result = foreground()
        return pending.result(), result


def parallel_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`function` over `items` on all cores, results in order."""
    items = list(items)
    if len(items) < 2 or _WORKERS < 2:
        return [function(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(_WORKERS, len(items))) as pool:
        return list(pool.map(function, items))
