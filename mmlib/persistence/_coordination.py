"""Saves, removals and garbage collection that share a store coordinate through small marker documents.

Nothing is locked; each side writes its marker before it looks at the other's, so of two that race at least one
sees the other and backs out (the save deletes its model document and raises):

- A **save lease** lives while a save runs. Garbage collection keeps what was written since the oldest lease
  began, so `gc --grace 0` does not take the blobs of a save in flight.
- A **removal marker** is written by `rm` before it looks for models derived from the one it removes, and
  deleted once the model is gone. A save that derives from a model writes its model document, then checks that
  no removal of its base is under way and that the base still exists: either `rm` sees the new version (and
  refuses) or the save sees the removal.
- A **gc run marker** lives while garbage collection runs (renewed every few seconds), and a *finished* marker
  stays after it. A save notes
  the runs at its start; if a run was under way then, or one started or finished by its commit, the save waits
  for it to finish and checks that everything its model document references is still stored.

A process that dies leaves its marker behind; markers older than their kind's maximum age are ignored and
collected, so a crash blocks nothing for long.
"""

import contextlib
import contextvars
import logging
import threading
import time
from typing import Iterator, NamedTuple

from mmlib.errors import StoreUnavailableError
from mmlib.persistence.base import DictPersistenceService

logger = logging.getLogger(__name__)

SAVE_LEASE = "save_lease"
REMOVAL_MARKER = "removal_marker"
GC_RUNNING = "gc_running"
GC_FINISHED = "gc_finished"
# A running gc renews its marker this often (seconds).
GC_HEARTBEAT_S = 5.0
# Seconds after which a marker is taken to be left by a process that died: a save may run as long as a day (gc's
# default grace period), an `rm` a few minutes; a gc run renews its marker; a finished marker only needs to
# outlive the saves that began before it.
MAX_AGE_S = {SAVE_LEASE: 24 * 3600.0, REMOVAL_MARKER: 600.0, GC_RUNNING: 6 * GC_HEARTBEAT_S,
             GC_FINISHED: 24 * 3600.0}
COORDINATION_TYPES = tuple(MAX_AGE_S)
# Lease times come from the saving node's clock, blob times from the file system's: gc keeps this much more (a
# larger skew costs no model: the save finds its missing items and fails).
CLOCK_MARGIN_S = 2.0
_WAIT_POLL_S = 0.05
# A save whose commit overlaps a gc run waits at most this long for it, then gives up (and withdraws).
MAX_GC_WAIT_S = 600.0
# The gc runs of this thread: a save made from inside one (a live-set callback) cannot wait for it.
_OWN_GC_RUNS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("mmlib_own_gc_runs",
                                                                              default=frozenset())
_REMOVAL_SEPARATOR = "."


class GcRuns(NamedTuple):
    """The garbage collection runs a save saw at one moment: those running, and those that had finished."""

    running: frozenset[str]
    finished: frozenset[str]


def _live_markers(dps: DictPersistenceService, kind: str) -> dict[str, float]:
    """Markers of one kind younger than its maximum age, with their times."""
    oldest = time.time() - MAX_AGE_S[kind]
    return {marker: moment for marker, moment in dps.document_times(kind).items() if moment >= oldest}


def stale_markers(dps: DictPersistenceService) -> list[tuple[str, str]]:
    """(type, id) of every marker older than its kind's maximum age: left by processes that died, or done."""
    return [(kind, marker) for kind in COORDINATION_TYPES
            for marker, moment in dps.document_times(kind).items() if moment < time.time() - MAX_AGE_S[kind]]


@contextlib.contextmanager
def save_lease(dps: DictPersistenceService) -> Iterator[GcRuns]:
    """Hold a lease for the save running in the block; yields the gc runs seen as it began."""
    lease = dps.save_dict({}, SAVE_LEASE)
    try:
        yield gc_runs(dps)
    finally:
        with contextlib.suppress(StoreUnavailableError):
            dps.delete_dict(lease, SAVE_LEASE)


def oldest_save_start(dps: DictPersistenceService) -> float:
    """When the oldest running save began (minus the clock margin), or infinity when none runs."""
    starts = _live_markers(dps, SAVE_LEASE).values()
    return min(starts) - CLOCK_MARGIN_S if starts else float("inf")


def gc_runs(dps: DictPersistenceService) -> GcRuns:
    """The gc runs under way and those finished, as now recorded."""
    return GcRuns(frozenset(_live_markers(dps, GC_RUNNING)), frozenset(dps.all_ids_for_type(GC_FINISHED)))


@contextlib.contextmanager
def gc_run(dps: DictPersistenceService) -> Iterator[str]:
    """Mark a garbage collection as running for the block, and as finished after it; yields the run's id."""
    run_id = dps.save_dict({}, GC_RUNNING)
    token = _OWN_GC_RUNS.set(_OWN_GC_RUNS.get() | {run_id})
    done = threading.Event()
    heartbeat = threading.Thread(target=_renew_gc_run, args=(dps, run_id, done), name="mmlib-gc-heartbeat",
                                 daemon=True)
    heartbeat.start()
    try:
        yield run_id
    finally:
        done.set()
        heartbeat.join()
        _OWN_GC_RUNS.reset(token)
        dps.save_dict({"id": run_id}, GC_FINISHED)
        dps.delete_dict(run_id, GC_RUNNING)


def _renew_gc_run(dps: DictPersistenceService, run_id: str, done: threading.Event) -> None:
    """Renew a gc run's marker until `done`, so that waiting saves tell a long run from one whose process died."""
    while not done.wait(GC_HEARTBEAT_S):
        try:
            dps.save_dict({"id": run_id}, GC_RUNNING)
        except StoreUnavailableError as error:
            logger.warning("cannot renew the marker of garbage collection run %s: %s", run_id, error)


def gc_overlapped(dps: DictPersistenceService, at_start: GcRuns) -> bool:
    """Whether a gc run may have removed items of a save that saw `at_start` as it began, waiting first until
    every run under way now has finished (a save's items can be checked only then)."""
    now = gc_runs(dps)
    overlapped = bool(at_start.running or now.running or now.finished - at_start.finished)
    deadline = time.monotonic() + MAX_GC_WAIT_S
    while others := set(_live_markers(dps, GC_RUNNING)) - _OWN_GC_RUNS.get():
        if time.monotonic() > deadline:
            raise StoreUnavailableError(
                f"garbage collection ({', '.join(sorted(others))}) has been running for over {MAX_GC_WAIT_S:.0f} s "
                "beside this save, which cannot complete before it ends; nothing was saved: save again later")
        logger.info("waiting for garbage collection to finish before the save completes")
        time.sleep(_WAIT_POLL_S)
    return overlapped


@contextlib.contextmanager
def removal_marker(dps: DictPersistenceService, model_ids: list[str]) -> Iterator[None]:
    """Mark `model_ids` as being removed for the block."""
    markers = [dps.save_dict({"id": f"{model_id}{_REMOVAL_SEPARATOR}{dps.generate_id()}"}, REMOVAL_MARKER)
               for model_id in model_ids]
    try:
        yield
    finally:
        for marker in markers:
            dps.delete_dict(marker, REMOVAL_MARKER)


def removal_pending(dps: DictPersistenceService, model_id: str) -> bool:
    """Whether an `rm` of `model_id` is under way."""
    prefix = f"{model_id}{_REMOVAL_SEPARATOR}"
    return any(marker.startswith(prefix) for marker in _live_markers(dps, REMOVAL_MARKER))
