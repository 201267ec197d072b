"""parallel_map: results in order, large items on the pool (largest first), small ones in the calling thread."""

import threading

import pytest

import mmlib.util.concurrency
from mmlib.util.concurrency import SMALL_ITEM_BYTES, parallel_map

SIZES = [10, 3 * SMALL_ITEM_BYTES, 5, SMALL_ITEM_BYTES, 7 * SMALL_ITEM_BYTES, SMALL_ITEM_BYTES - 1,
         2 * SMALL_ITEM_BYTES]


@pytest.fixture
def two_workers(monkeypatch):
    monkeypatch.setattr(mmlib.util.concurrency, "WORKERS", 2)


def _recording():
    """A function that returns its item doubled and records which thread ran it, in the order items started."""
    started = []
    lock = threading.Lock()

    def run(item):
        with lock:
            started.append((item, threading.current_thread()))
        return 2 * item
    return run, started


def test_results_keep_the_order_of_the_items(two_workers):
    run, _ = _recording()
    assert parallel_map(run, SIZES, size=lambda item: item) == [2 * item for item in SIZES]
    assert parallel_map(run, SIZES) == [2 * item for item in SIZES]


def test_small_items_run_in_the_calling_thread_and_large_ones_on_the_pool_largest_first(two_workers):
    run, started = _recording()
    parallel_map(run, SIZES, size=lambda item: item)
    here = threading.current_thread()
    assert sorted(item for item, thread in started if thread is here) == sorted(
        item for item in SIZES if item < SMALL_ITEM_BYTES)
    pooled = [item for item, thread in started if thread is not here]
    assert sorted(pooled) == sorted(item for item in SIZES if item >= SMALL_ITEM_BYTES)
    assert sorted(pooled[:2], reverse=True) == [7 * SMALL_ITEM_BYTES, 3 * SMALL_ITEM_BYTES], "largest first"


def test_without_sizes_every_item_goes_to_the_pool(two_workers):
    run, started = _recording()
    parallel_map(run, [1, 2, 3])
    assert all(thread is not threading.current_thread() for _, thread in started)


@pytest.mark.parametrize("sizes", [[5, 6, 7], [2 * SMALL_ITEM_BYTES]], ids=["all-small", "one-large"])
def test_work_that_cannot_use_two_cores_stays_in_the_calling_thread(two_workers, sizes):
    run, started = _recording()
    assert parallel_map(run, sizes, size=lambda item: item) == [2 * item for item in sizes]
    assert all(thread is threading.current_thread() for _, thread in started)


def test_one_core_runs_everything_in_the_calling_thread(monkeypatch):
    monkeypatch.setattr(mmlib.util.concurrency, "WORKERS", 1)
    run, started = _recording()
    assert parallel_map(run, SIZES, size=lambda item: item) == [2 * item for item in SIZES]
    assert all(thread is threading.current_thread() for _, thread in started)


@pytest.mark.parametrize("failing", [5, 7 * SMALL_ITEM_BYTES], ids=["small", "large"])
def test_an_error_of_any_item_propagates(two_workers, failing):
    def run(item):
        if item == failing:
            raise ValueError(f"item {item} failed")
        return item

    with pytest.raises(ValueError, match=f"item {failing} failed"):
        parallel_map(run, SIZES, size=lambda item: item)
