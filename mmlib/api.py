"""The one-line API: save, load and find models by name, on top of the original save services.

    import mmlib
    store = mmlib.open_store("./models")
    v1 = mmlib.save(model, store, name="detector", tags={"data": "coco"}, metrics={"val_acc": 0.81})
    model = mmlib.load("detector:latest", store)

Wherever a store is taken, a path or URI string (what `open_store` takes) is accepted too.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Union

import torch

from mmlib import maintenance, refs
from mmlib.approaches.base import DeviceLike
from mmlib.errors import IncompatibleModelError, InvalidArgumentError, InvalidSaveInfoError
from mmlib.persistence.store import Store, StoreLike, open_store, store_of
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.environment import Environment
from mmlib.schema.model_info import CREATED, MODEL_INFO
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.schema.store_type import APPROACHES, SNAPSHOT, UPDATE
from mmlib.track_env import track_current_environment

__all__ = ["Version", "open_store", "save", "load", "get", "find", "set_alias", "set_tags", "set_metrics"]


@dataclass(frozen=True)
class Version:
    """A stored model version as the one-line API shows it (metadata only: no weights are read); `created` is ISO
    8601 in UTC, `size` the bytes this version added to the store; `checkpoint` the step, epoch, training state id
    and retention of a version a Checkpointer saved (else empty)."""

    id: str
    name: Optional[str]
    number: Optional[int]
    base_id: Optional[str]
    approach: str
    created: Optional[str]
    aliases: list[str] = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    size: int = 0
    checkpoint: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """The shortest stable reference to this version: `NAME:vN`, or the id of an unnamed model."""
        return refs.version_id(self.name, self.number) if self.name is not None and self.number else self.id


def _checked_values(values: Optional[dict], what: str, kinds: tuple[type, ...]) -> dict:
    """`values` (None: empty) when it maps strings to values of `kinds` (a bool is no number here)."""
    values = {} if values is None else values

    def valid(value: Any) -> bool:
        return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))

    if not isinstance(values, dict) or not all(isinstance(key, str) and valid(value) for key, value in values.items()):
        raise InvalidSaveInfoError(f"{what} must map strings to {' or '.join(kind.__name__ for kind in kinds)}, got "
                                   f"{values!r}")
    return values


def checked_tags(tags: Optional[dict]) -> dict:
    """`tags` (None: empty) when they map strings to strings, numbers or booleans."""
    return _checked_values(tags, "tags", (str, int, float, bool))


def checked_metrics(metrics: Optional[dict]) -> dict:
    """`metrics` (None: empty) when they map strings to numbers."""
    return _checked_values(metrics, "metrics", (int, float))


def save(model: torch.nn.Module, store: StoreLike, name: Optional[str] = None, *, base: Optional[str] = None,
         approach: Optional[str] = None, tags: Optional[dict] = None, metrics: Optional[dict] = None,
         init_args: Optional[dict] = None, model_import: Optional[str] = None, code: Optional[str] = None,
         env: Optional[Environment] = None) -> Version:
    """Save `model` (as the next version of `name`, when given) and return its Version.

    The approach: a model whose `base` is given (any reference), or by default the latest version of `name` when
    it has the same architecture, is stored as a compressed update of it; anything else as a snapshot.
    `approach="snapshot"` or `"update"` forces one (an update needs a base of the same architecture).
    """
    store = store_of(store)
    dps = store.dict_pers_service
    if name is not None:
        refs.check_name(name)
    tags, metrics = checked_tags(tags), checked_metrics(metrics)
    if (tags or metrics) and name is None:
        raise InvalidSaveInfoError("tags and metrics belong to a named version: pass name=...")
    if approach not in (None, SNAPSHOT, UPDATE):
        raise InvalidSaveInfoError(f"approach must be {SNAPSHOT!r} or {UPDATE!r}, got {approach!r}; a provenance "
                                   "version records its training: save it with ProvenanceSaveService")
    base_id = maintenance.resolve_model_id(store, base) if base is not None else None
    if base_id is None and name is not None and approach != SNAPSHOT:
        base_id = latest_model_id(dps, name)
    model_id = Savers(store).save(model, base_id, approach, strict_base=base is not None, init_args=init_args,
                                  model_import=model_import, code=code, env=env)
    if name is not None:
        refs.claim_version(dps, name, model_id, tags, metrics)
    return version_info(store, model_id)


def latest_model_id(dps: Any, name: str) -> Optional[str]:
    """The model id of the newest version of `name`, or None when it has none."""
    latest = refs.latest_number(dps, name)
    return refs.version_record(dps, name, latest)["model_id"] if latest is not None else None


class Savers:
    """The save services `save` stores models with; one kept across saves keeps their last versions in memory, so a
    save on top of them reads nothing back (`restore_small`, `pruned`: see WeightUpdateSaveService)."""

    def __init__(self, store: Store, restore_small: int = 0, pruned: bool = False):
        self.snapshots = BaselineSaveService(*store)
        self.updates = WeightUpdateSaveService(*store, updates_only=True, restore_small=restore_small,
                                               pruned=pruned)
        self._environment: Optional[Environment] = None

    def environment(self) -> Environment:
        """The environment of this process, tracked once."""
        if self._environment is None:
            self._environment = track_current_environment()
        return self._environment

    def save(self, model: torch.nn.Module, base_id: Optional[str], approach: Optional[str], *, strict_base: bool,
             env: Optional[Environment] = None, **source: Any) -> str:
        """Store `model` as an update of `base_id` (a snapshot when there is none, when `approach` is `"snapshot"`,
        or when its architecture differs unless `approach` is `"update"` or `strict_base`); its model id."""
        if approach == UPDATE and base_id is None:
            raise InvalidSaveInfoError("an update needs a base: pass base=... or save earlier versions under this name")

        def info(base_model_id: Optional[str]) -> Any:
            return ModelSaveInfoBuilder().add_model_info(env=env or self.environment(), model=model,
                                                         base_model_id=base_model_id, **source).build()

        if approach == SNAPSHOT or base_id is None:
            return self.snapshots.save_model(info(base_id))
        try:
            return self.updates.save_model(info(base_id))
        except IncompatibleModelError:
            if approach == UPDATE or strict_base:
                raise
            return self.snapshots.save_model(info(None))  # a new architecture under the name


def load(reference: str, store: StoreLike, *, device: Optional[DeviceLike] = None,
         execute_checks: bool = True) -> torch.nn.Module:
    """The model a reference (id, prefix, `NAME`, `NAME:vN`, `NAME:ALIAS`) names, on `device` (default: the CPU),
    checked unless asked not to."""
    store = store_of(store)
    return maintenance.recover_model(store, maintenance.resolve_model_id(store, reference),
                                     execute_checks=execute_checks, device=device)


def get(reference: str, store: StoreLike) -> Version:
    """The Version a reference names (metadata only: no weights are read)."""
    store = store_of(store)
    return version_info(store, maintenance.resolve_model_id(store, reference))


def version_info(store: Store, model_id: str, named: Optional[refs.NamedVersion] = None, *,
                 sized: bool = True) -> Version:
    """The Version of a stored model (`named`: what the refs say of it, when the caller read them already; without
    `sized`, its size is left 0: for a version pruned since, whose weights may be gone)."""
    dps = store.dict_pers_service
    stored = maintenance.version(store, model_id)
    created = dps.recover_dict(model_id, MODEL_INFO)[CREATED]  # a number: maintenance.version checked it
    if named is None:
        named = refs.named_version(dps, model_id)
    return Version(id=model_id, name=named.name if named else None, number=named.number if named else None,
                   base_id=stored.base_id, approach=APPROACHES[stored.store_type],
                   created=datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="microseconds"),
                   aliases=named.aliases if named else [], tags=named.tags if named else {},
                   metrics=named.metrics if named else {},
                   size=maintenance.total_size(maintenance.model_size_info(store, model_id)) if sized else 0,
                   checkpoint=named.checkpoint if named else {})


def _named(store: Store, reference: str) -> tuple[str, int]:
    """(name, number) of the named version a reference names."""
    return refs.named_or_refused(store.dict_pers_service, maintenance.resolve_model_id(store, reference))


def set_alias(store: StoreLike, reference: str, alias: str) -> None:
    """Point `alias` of the version's name at the version `reference` names (`NAME:ALIAS` then names it)."""
    store = store_of(store)
    refs.set_alias(store.dict_pers_service, *_named(store, reference), alias)


def set_tags(store: StoreLike, reference: str, tags: dict) -> None:
    """Add tags to (or change tags of) the named version `reference` names."""
    store = store_of(store)
    refs.update_version(store.dict_pers_service, *_named(store, reference), "tags",
                        checked_tags(tags))


def set_metrics(store: StoreLike, reference: str, metrics: dict) -> None:
    """Add metrics to (or change metrics of) the named version `reference` names."""
    store = store_of(store)
    refs.update_version(store.dict_pers_service, *_named(store, reference), "metrics",
                        checked_metrics(metrics))


def find(store: StoreLike, *, name: Optional[str] = None, tags: Optional[dict] = None,
         order_by: Optional[str] = None) -> list[Version]:
    """The named versions of the store (of `name`, with every tag of `tags`), newest first or by `order_by`:
    `created`, `number`, `name` or `metrics.KEY` / `tags.KEY`, with a leading `-` for descending (versions that
    lack the key come last, newest first)."""
    store = store_of(store)
    wanted = checked_tags(tags)
    table = refs.named_versions(store.dict_pers_service)
    chosen = {model_id: named for model_id, named in table.items() if name in (None, named.name)
              and all(named.tags.get(key) == value for key, value in wanted.items())}
    newest_first = _ordered([version_info(store, model_id, named) for model_id, named in chosen.items()], "-created")
    return _ordered(newest_first, order_by) if order_by is not None else newest_first


def _ordered(versions: list[Version], order_by: str) -> list[Version]:
    """`versions` sorted by `order_by` (see `find`); those that lack its key last, in their given order."""
    if not isinstance(order_by, str):
        raise InvalidArgumentError(f"order_by must be a str such as '-metrics.val_acc', got {order_by!r}")
    descending = order_by.startswith("-")
    key = order_by.lstrip("-")
    group, _, inner = key.partition(".")

    def value(version: Version) -> Any:
        if group in ("metrics", "tags") and inner:
            return getattr(version, group).get(inner)
        if key in ("created", "number", "name"):
            return getattr(version, key)
        raise InvalidArgumentError(f"cannot order by {order_by!r}: use created, number, name, metrics.KEY or "
                                   "tags.KEY, with a leading '-' for descending")

    present = [version for version in versions if value(version) is not None]
    absent = [version for version in versions if value(version) is None]
    return sorted(present, key=lambda version: (value(version), version.name or "", version.number or 0),
                  reverse=descending) + absent
