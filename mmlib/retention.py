"""Retention: which versions of a name stay, and pruning the others while every kept version stays exact.

Used by `mmlib.Checkpointer` after each save and by `mmlib prune` for any name; torch is not needed to decide or to
prune (the `mmlib` command lists and prunes without importing it).
"""

import logging
import math
from dataclasses import asdict, dataclass
from typing import Optional

from mmlib import maintenance, pruning, refs
from mmlib.errors import InvalidArgumentError
from mmlib.persistence import _coordination as coordination
from mmlib.persistence.store import StoreLike, store_of

logger = logging.getLogger(__name__)

__all__ = ["Retention", "prune", "state_id"]


@dataclass(frozen=True)
class Retention:
    """Which checkpoints of a name stay: the `keep_last` newest, the `keep_best` best by metric `monitor` (`mode`
    "min" or "max"), the first at or after every `keep_every` steps, and every version an alias points at. No rule
    at all keeps everything."""

    keep_last: Optional[int] = None
    keep_best: int = 0
    monitor: Optional[str] = None
    mode: str = "min"
    keep_every: Optional[int] = None

    def __post_init__(self) -> None:
        for field, value in (("keep_last", self.keep_last), ("keep_every", self.keep_every)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidArgumentError(f"{field} must be a positive int or None, got {value!r}")
        if not isinstance(self.keep_best, int) or isinstance(self.keep_best, bool) or self.keep_best < 0:
            raise InvalidArgumentError(f"keep_best must be an int >= 0, got {self.keep_best!r}")
        if self.keep_best and not isinstance(self.monitor, str):
            raise InvalidArgumentError("keep_best needs monitor=..., the metric that says which is best")
        if self.mode not in ("min", "max"):
            raise InvalidArgumentError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.active and self.keep_last is None:
            raise InvalidArgumentError("a retention policy keeps the newest checkpoint (resuming needs it): give "
                                       "keep_last=1 or more")

    @property
    def active(self) -> bool:
        """Whether any rule is given (else everything is kept)."""
        return self.keep_last is not None or self.keep_best > 0 or self.keep_every is not None

    def reasons(self, records: list[dict], aliased: dict[int, list[str]]) -> dict[int, list[str]]:
        """version number -> the rules that keep it, for the live version records of one name (oldest first);
        versions no rule keeps are absent. `aliased`: number -> aliases pointing at it."""
        if not self.active:
            return {record["number"]: ["all"] for record in records}
        kept: dict[int, list[str]] = {}
        for record in records[-self.keep_last:] if self.keep_last else []:
            kept.setdefault(record["number"], []).append("last")
        for record in self.ranked(records)[:self.keep_best]:
            kept.setdefault(record["number"], []).append("best")
        if self.keep_every:
            windows: set[int] = set()
            for record in records:
                window = _step(record) // self.keep_every
                if window not in windows:
                    windows.add(window)
                    kept.setdefault(record["number"], []).append("every")
        for number, aliases in aliased.items():
            kept.setdefault(number, []).extend(f"alias:{alias}" for alias in aliases)
        return kept

    def ranked(self, records: list[dict]) -> list[dict]:
        """The records with a number for `monitor`, best first (the earlier first among equals)."""
        scored = [record for record in records if _metric(record, self.monitor) is not None]
        sign = 1 if self.mode == "min" else -1
        return sorted(scored, key=lambda record: sign * (_metric(record, self.monitor) or 0.0))


def _metric(record: dict, monitor: Optional[str]) -> Optional[float]:
    value = (record.get("metrics") or {}).get(monitor)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) else None


def _step(record: dict) -> int:
    """A checkpoint's step (a version saved otherwise counts its number)."""
    step = (record.get(refs.CHECKPOINT) or {}).get("step")
    return step if isinstance(step, int) else record["number"]


def prune(store: StoreLike, name: str, retention: Retention, *, dry_run: bool = False) -> list[dict]:
    """Prune the versions of `name` that `retention` does not keep; returns their records. Kept versions keep their
    ids and recover exactly; the pruned ones' weights go as far as no kept version reads them."""
    store = store_of(store)
    dps = store.dict_pers_service
    records = refs.live_records(dps, refs.check_name(name))
    kept = retention.reasons(records, refs.aliased_numbers(dps, name))
    doomed = [record for record in records if record["number"] not in kept]
    if dry_run or not doomed:
        return doomed
    model_ids = [model_id for record in doomed for model_id in (record["model_id"], state_id(record)) if model_id]
    with coordination.removal_marker(dps, model_ids):
        pruning.mark_pruned(store, model_ids, f"retention of {name}: {asdict(retention)}")
    report = maintenance.reclaim_pruned(store)
    logger.info("pruned %d version(s) of %s; %d blob(s) reclaimed", len(doomed), name, len(report.blobs))
    return doomed


def state_id(record: dict) -> Optional[str]:
    """The model id of a checkpoint's training state (None for a version saved otherwise)."""
    state_id = (record.get(refs.CHECKPOINT) or {}).get("state")
    return state_id if isinstance(state_id, str) else None
