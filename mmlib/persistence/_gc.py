"""The sweep of garbage collection: remove every stored item outside a live set, safely while others save.

Marking (which documents and blobs the models reference) needs the schema and lives in `mmlib.maintenance`;
this module only knows items, their times and how to remove them.
"""

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

from mmlib.persistence import _coordination as coordination
from mmlib.persistence.base import BLOB, StoredItem
from mmlib.persistence.store import Store

logger = logging.getLogger(__name__)

# gc keeps what was written less than this long ago: a save may still be running (a day, like a long training
# job's last save; pass grace_seconds=0 when no process saves).
DEFAULT_GC_GRACE_S = 24 * 3600.0
_PARTIAL_UPLOAD = "partial upload"


@dataclass(frozen=True)
class GarbageReport:
    """What garbage collection removed (or, with `dry_run`, would remove)."""

    dry_run: bool
    blobs: list[str]
    documents: list[dict]
    partial_uploads: list[str]
    kept_young: int = 0

    @property
    def count(self) -> int:
        """Number of items removed (or to remove)."""
        return len(self.blobs) + len(self.documents) + len(self.partial_uploads)


def sweep(store: Store, live_items: Callable[[], set[StoredItem]], *, dry_run: bool, grace_seconds: float,
          only: Optional[set[StoredItem]] = None) -> GarbageReport:
    """Remove every document and blob not in `live_items()`, and unfinished uploads, older than `grace_seconds`.

    Items are listed with their times before the live set is computed, and listed again just before removal:
    an item a save reused, committed or removed meanwhile is kept, and so is what was written since the oldest
    running save began, whatever the grace period. Documents go first, so an interrupted run leaves only garbage
    behind. A run that removes is marked in the store, so that saves committing beside it check their items
    afterwards (a dry run writes nothing). `only` limits what may be removed to those items.
    """
    if dry_run:
        return _sweep(store, live_items, dry_run=True, grace_seconds=grace_seconds, only=only)
    with coordination.gc_run(store.dict_pers_service):
        return _sweep(store, live_items, dry_run=False, grace_seconds=grace_seconds, only=only)


def _sweep(store: Store, live_items: Callable[[], set[StoredItem]], *, dry_run: bool, grace_seconds: float,
           only: Optional[set[StoredItem]]) -> GarbageReport:
    """The sweep of one run (a dry run lists what it would remove)."""
    fps, dps = store
    # Ages count up to when listing began: a save that used an item before then and finished within the grace
    # period is in the live set; one that finishes while the live set is computed used the item too recently.
    # With no grace period, everything unreferenced goes, even what a clock a little ahead stamped, except what
    # running saves wrote (their leases say since when).
    deadline = time.time() - grace_seconds if grace_seconds > 0 else math.inf
    before = {item: moment for item, moment in _item_times(store).items() if only is None or item in only}
    live = live_items()
    after = _item_times(store)
    deadline = min(deadline, coordination.oldest_save_start(dps))
    unreferenced = [item for item in before if item not in live and item.kind != _PARTIAL_UPLOAD]
    partial = [item for item in before if item.kind == _PARTIAL_UPLOAD]
    old = [item for item in unreferenced + partial if before[item] <= deadline and after.get(item) == before[item]]
    documents = [{"type": item.kind, "id": item.item_id} for item in old if item.kind not in (BLOB, _PARTIAL_UPLOAD)]
    blobs = [item.item_id for item in old if item.kind == BLOB]
    partial_uploads = [item.item_id for item in old if item.kind == _PARTIAL_UPLOAD]
    if not dry_run:
        for document in documents:
            dps.delete_dict(document["id"], document["type"])
            logger.info("removed %s document %s", document["type"], document["id"])
        for digest in blobs:
            fps.delete_blob(digest)
            logger.info("removed blob %s", digest)
        for upload_id in partial_uploads:
            fps.delete_partial_upload(upload_id)
            logger.info("removed unfinished upload %s", upload_id)
    return GarbageReport(dry_run=dry_run, blobs=blobs, documents=documents, partial_uploads=partial_uploads,
                         kept_young=len(unreferenced) + len(partial) - len(old))


def _item_times(store: Store) -> dict[StoredItem, float]:
    """Every document, blob and unfinished upload of the store, with when it was last written or reused."""
    fps, dps = store
    times = {StoredItem(kind, item_id): moment for kind in dps.all_types() if kind not in coordination.COORDINATION_TYPES
             for item_id, moment in dps.document_times(kind).items()}
    times.update({StoredItem(kind, marker): -math.inf for kind, marker in coordination.stale_markers(dps)})
    times.update({StoredItem(BLOB, digest): moment for digest, moment in fps.blob_times().items()})
    times.update({StoredItem(_PARTIAL_UPLOAD, upload_id): moment
                  for upload_id, moment in fps.partial_upload_times().items()})
    return times
