"""Threads for the work of saves and recoveries that releases the GIL (hashing, file I/O, zstd, numpy)."""

import concurrent.futures
import os
from typing import Any, Callable, Iterable, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = os.cpu_count() or 1
# An item smaller than this is not worth a thread: its work is mostly Python holding the GIL (tens of
# microseconds a tensor), so handing small items to a pool makes the threads queue for the GIL instead of
# working. Measured on 2 cores with ResNet-50's 320 tensors: decoding them all took 91 ms in a pool, 65 ms with
# the 285 below 1 MiB done in the calling thread meanwhile; encoding 131 and 100 ms.
SMALL_ITEM_BYTES = 1 << 20


def run_beside(background: Callable[[], Any], foreground: Callable[[], Any]) -> tuple[Any, Any]:
    """Run `background` in a thread while `foreground` runs here; returns both results.

    Pays off for hashing beside file I/O: both release the GIL, so they share the cores.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlib") as pool:
        pending = pool.submit(background)
        result = foreground()
        return pending.result(), result


def parallel_map(function: Callable[[T], R], items: Iterable[T], size: Optional[Callable[[T], int]] = None) -> list[R]:
    """`function` over `items` on all cores, results in order.

    With `size` (an item's bytes), items of at least SMALL_ITEM_BYTES go to the pool, largest first (which
    balances the workers), while this thread does the small ones; without it every item goes to the pool.
    """
    items = list(items)
    pooled = list(range(len(items)))
    if size is not None:
        sizes = [size(item) for item in items]
        pooled = sorted((index for index in pooled if sizes[index] >= SMALL_ITEM_BYTES), key=lambda i: -sizes[i])
    streams = len(pooled) + (len(pooled) < len(items))  # the pool's items, and this thread's if it has any
    if streams < 2 or WORKERS < 2:
        return [function(item) for item in items]
    results: list[Any] = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(WORKERS, len(pooled))) as pool:
        pending = {index: pool.submit(function, items[index]) for index in pooled}
        for index, item in enumerate(items):
            if index not in pending:
                results[index] = function(item)
        for index, future in pending.items():
            results[index] = future.result()
    return results
