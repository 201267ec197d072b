"""Names, version numbers, aliases, tags and metrics: mutable refs to immutable, content-addressed models.

Like git refs, they live beside the models, in documents of their own, and never change a model id:

- `model_version` `NAME:vN` holds the model id of version N of a name, with its tags and metrics. A number is
  claimed by creating its document only if it does not exist (`insert_dict`), so processes saving one name at once
  get distinct consecutive numbers, and numbers are never reused.
- `model_name` `NAME` holds the newest number claimed (a hint a reader checks forward from: claims may race it).
- `model_alias` `NAME:ALIAS` holds the number an alias points at; `alias_history` keeps every move.
- `version_of` `MODEL_ID` names the version a model is (for `ls`, `show` and `rm`).

A reference is a full model id or a unique prefix of at least 4 hex digits, `NAME` (its latest version),
`NAME:vN`, or `NAME:ALIAS` (`latest` is implicit).
"""

import getpass
import re
import socket
import time
from typing import Callable, NamedTuple, Optional

from mmlib.constants import ID
from mmlib.errors import AmbiguousModelIdError, DocumentNotFoundError, InvalidIdError, ModelNotFoundError
from mmlib.persistence.base import DictPersistenceService

VERSION = "model_version"
NAME = "model_name"
ALIAS = "model_alias"
ALIAS_HISTORY = "alias_history"
VERSION_OF = "version_of"
TRAINING_TREE = "training_tree"  # a checkpoint's training state description, under its training state's model id
REF_TYPES = (VERSION, NAME, ALIAS, ALIAS_HISTORY, VERSION_OF, TRAINING_TREE)
LATEST = "latest"
CHECKPOINT = "checkpoint"  # the field of a version record that a checkpoint's step and training state are in
MIN_PREFIX = 4  # hex digits an id prefix needs, as git asks of abbreviated commit ids
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_VERSION_SUFFIX = re.compile(r"v([1-9][0-9]*)")
_HEX = re.compile(r"[0-9a-f]+")


def check_name(name: object, what: str = "name") -> str:
    """`name` when it is a valid name or alias (letters, digits, `.`, `_`, `-`, starting with a letter)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidIdError(f"{what} {name!r} is not valid: use letters, digits, '.', '_' and '-', starting with a "
                             "letter (e.g. 'detector' or 'resnet50-coco')")
    return name


def version_id(name: str, number: int) -> str:
    """The id of the document of version `number` of `name`."""
    return f"{name}:v{number}"


def _latest_hint(dps: DictPersistenceService, name: str) -> int:
    if not dps.id_exists(name, NAME):
        return 0
    latest = dps.recover_dict(name, NAME).get("latest")
    return latest if isinstance(latest, int) and latest > 0 else 0


def claim_version(dps: DictPersistenceService, name: str, model_id: str, tags: dict, metrics: dict,
                  extra: Optional[dict] = None) -> int:
    """Make `model_id` the next version of `name` (its record holding `extra` fields too, such as a checkpoint's);
    returns its number (distinct across processes, never reused)."""
    dps.save_dict({ID: model_id, "name": name, "number": None}, VERSION_OF)  # a claim under way (see version_of)
    if not dps.id_exists(name, NAME):  # the name exists before its first version, should a crash follow the claim
        dps.insert_dict({ID: name, "name": name, "latest": 0}, NAME)
    number = _latest_hint(dps, name)
    while True:
        number += 1
        record = {**(extra or {}), ID: version_id(name, number), "name": name, "number": number,
                  "model_id": model_id, "tags": tags, "metrics": metrics, "created": time.time()}
        if dps.insert_dict(record, VERSION):
            break
    dps.save_dict({ID: name, "name": name, "latest": number}, NAME)
    dps.save_dict({ID: model_id, "name": name, "number": number}, VERSION_OF)
    return number


def latest_number(dps: DictPersistenceService, name: str) -> Optional[int]:
    """The newest version of `name` whose model still exists, or None when it has none."""
    number = _latest_hint(dps, name)
    while dps.id_exists(version_id(name, number + 1), VERSION):
        number += 1
    while number > 0 and not _version_exists(dps, name, number):
        number -= 1
    return number or None


def live_records(dps: DictPersistenceService, name: str) -> list[dict]:
    """The records of every version of `name` not removed, oldest first."""
    prefix = f"{name}:v"
    records = [dps.recover_dict(ref, VERSION) for ref in dps.all_ids_for_type(VERSION) if ref.startswith(prefix)]
    return sorted((record for record in records if not record.get("removed") and isinstance(record.get("number"), int)
                   and record.get("name") == name), key=lambda record: record["number"])


def latest_record(dps: DictPersistenceService, name: str) -> Optional[dict]:
    """The record of the newest version of `name`, or None when it has none."""
    number = latest_number(dps, name)
    return _live_record(dps, name, number) if number is not None else None


def aliased_numbers(dps: DictPersistenceService, name: str) -> dict[int, list[str]]:
    """version number -> the aliases of `name` pointing at it (`latest` aside)."""
    found: dict[int, list[str]] = {}
    for alias_id in dps.all_ids_for_type(ALIAS):
        if alias_id.startswith(f"{name}:"):
            alias = dps.recover_dict(alias_id, ALIAS)
            found.setdefault(alias["number"], []).append(alias["alias"])
    return found


def _live_record(dps: DictPersistenceService, name: str, number: int) -> Optional[dict]:
    """The record of version `number` of `name` (one read), or None when there is none or it was removed."""
    try:
        record = dps.recover_dict(version_id(name, number), VERSION)
    except DocumentNotFoundError:
        return None
    return None if record.get("removed", False) else record


def _version_exists(dps: DictPersistenceService, name: str, number: int) -> bool:
    return _live_record(dps, name, number) is not None


def version_record(dps: DictPersistenceService, name: str, number: int) -> dict:
    """The stored record of version `number` of `name`; ModelNotFoundError when there is none (any more)."""
    record = _live_record(dps, name, number)
    if record is None:
        gone = "was removed or pruned" if dps.id_exists(version_id(name, number), VERSION) else "does not exist"
        raise ModelNotFoundError(f"{version_id(name, number)} {gone}; list the versions of {name} with "
                                 f"`mmlib ls --name {name}`")
    return record


def version_of(dps: DictPersistenceService, model_id: str) -> Optional[tuple[str, int]]:
    """(name, number) of the version `model_id` is, or None for a model saved without a name."""
    if not dps.id_exists(model_id, VERSION_OF):
        return None
    record = dps.recover_dict(model_id, VERSION_OF)
    if isinstance(record.get("number"), int):
        return record["name"], record["number"]
    # a claim that a crash cut short after it was noted here: the number it got, if it got one, is in its record
    claimed = [other["number"] for other in live_records(dps, record["name"]) if other.get("model_id") == model_id]
    return (record["name"], claimed[0]) if claimed else None


def named_or_refused(dps: DictPersistenceService, model_id: str) -> tuple[str, int]:
    """(name, number) of the version `model_id` is; InvalidIdError for a model saved without a name (it takes no
    aliases, tags or metrics)."""
    version = version_of(dps, model_id)
    if version is None:
        raise InvalidIdError(f"model {model_id} was saved without a name, so it has no aliases, tags or metrics: "
                             "save it again with mmlib.save(model, store, name=...)")
    return version


def aliases_of(dps: DictPersistenceService, name: str, number: int) -> list[str]:
    """The aliases pointing at version `number` of `name` (`latest` included when it is the newest)."""
    found = [alias_id.partition(":")[2] for alias_id in dps.all_ids_for_type(ALIAS)
             if alias_id.startswith(f"{name}:") and dps.recover_dict(alias_id, ALIAS).get("number") == number]
    return ([LATEST] if latest_number(dps, name) == number else []) + sorted(found)


class NamedVersion(NamedTuple):
    """What the refs say of one model: its name, version number, aliases, tags and metrics, and for a checkpoint
    its step, epoch, training state's model id and the retention it was saved under."""

    name: str
    number: int
    aliases: list[str]
    tags: dict
    metrics: dict
    checkpoint: dict = {}


def checkpoint_summary(record: dict) -> dict:
    """A version record's checkpoint fields ({} for other versions)."""
    checkpoint = record.get(CHECKPOINT)
    return dict(checkpoint) if isinstance(checkpoint, dict) else {}


def named_version(dps: DictPersistenceService, model_id: str) -> Optional[NamedVersion]:
    """The NamedVersion of one model (reading only its own refs and the aliases), or None for an unnamed one."""
    version = version_of(dps, model_id)
    if version is None:
        return None
    record = version_record(dps, *version)
    return NamedVersion(*version, aliases_of(dps, *version), record.get("tags") or {}, record.get("metrics") or {},
                        checkpoint_summary(record))


def named_versions(dps: DictPersistenceService) -> dict[str, NamedVersion]:
    """model id -> its NamedVersion, for every named version not removed (every ref read once, for listings)."""
    records = [dps.recover_dict(ref, VERSION) for ref in dps.all_ids_for_type(VERSION)]
    live = [record for record in records if not record.get("removed") and isinstance(record.get("name"), str)
            and isinstance(record.get("number"), int) and isinstance(record.get("model_id"), str)]
    latest: dict[str, int] = {}
    for record in live:
        latest[record["name"]] = max(latest.get(record["name"], 0), record["number"])
    aliases: dict[tuple[str, int], list[str]] = {}
    for alias_id in dps.all_ids_for_type(ALIAS):
        alias = dps.recover_dict(alias_id, ALIAS)
        aliases.setdefault((alias["name"], alias["number"]), []).append(alias["alias"])
    return {record["model_id"]: NamedVersion(
        record["name"], record["number"],
        ([LATEST] if latest[record["name"]] == record["number"] else [])
        + sorted(aliases.get((record["name"], record["number"]), [])),
        record.get("tags") or {}, record.get("metrics") or {}, checkpoint_summary(record)) for record in live}


def training_state_ids(named: dict[str, NamedVersion]) -> set[str]:
    """The model ids of the training states of the checkpoints among `named` (as `named_versions` returns): stored
    as models, but no versions of their own, so listings leave them out."""
    return {version.checkpoint["state"] for version in named.values() if isinstance(version.checkpoint.get("state"),
                                                                                     str)}


def set_alias(dps: DictPersistenceService, name: str, number: int, alias: str) -> None:
    """Point `alias` of `name` at version `number`, recording the move in the alias history."""
    check_name(alias, "alias")
    if alias == LATEST or _VERSION_SUFFIX.fullmatch(alias):
        raise InvalidIdError(f"{alias!r} cannot be set as an alias: `latest` always names the newest version and "
                             "`vN` version N")
    _move_alias(dps, name, alias, number)


def delete_alias(dps: DictPersistenceService, name: str, alias: str) -> None:
    """Remove `alias` of `name` (recorded in the alias history as a move to nothing)."""
    alias_id = f"{name}:{check_name(alias, 'alias')}"
    if not dps.id_exists(alias_id, ALIAS):
        raise ModelNotFoundError(f"{name} has no alias {alias!r}")
    _move_alias(dps, name, alias, None)


def _move_alias(dps: DictPersistenceService, name: str, alias: str, new: Optional[int]) -> None:
    """Move `alias` of `name` to version `new` (None: remove it), atomically across processes.

    Moves are numbered: move K is claimed by creating history document `NAME:ALIAS:K` (`insert_dict`), so of
    concurrent moves each gets its own K and records as its old target the new target of move K-1. The alias
    document then follows the newest move: a writer that finds a newer move after writing writes that one's target,
    so whichever writer is last leaves the target of the newest move.
    """
    alias_id = f"{name}:{alias}"
    move = _alias_record(dps, alias_id).get("move", 0)
    while True:
        move += 1
        previous = _move_record(dps, alias_id, move - 1)
        old = previous["new"] if previous is not None else _alias_record(dps, alias_id).get("number")
        if dps.insert_dict({ID: f"{alias_id}:{move}", "name": name, "alias": alias, "move": move, "old": old,
                            "new": new, "time": time.time(), "user": getpass.getuser(),
                            "host": socket.gethostname()}, ALIAS_HISTORY):
            break
    while True:
        newest = _move_record(dps, alias_id, move)
        if newest is None or newest["new"] is None:
            dps.delete_dict(alias_id, ALIAS)
        else:
            dps.save_dict({ID: alias_id, "name": name, "alias": alias, "number": newest["new"], "move": move}, ALIAS)
        if not dps.id_exists(f"{alias_id}:{move + 1}", ALIAS_HISTORY):
            return
        while dps.id_exists(f"{alias_id}:{move + 1}", ALIAS_HISTORY):
            move += 1


def _alias_record(dps: DictPersistenceService, alias_id: str) -> dict:
    """The alias document, or {} when the alias is not set."""
    try:
        return dps.recover_dict(alias_id, ALIAS)
    except DocumentNotFoundError:
        return {}


def _move_record(dps: DictPersistenceService, alias_id: str, move: int) -> Optional[dict]:
    """Move `move` of an alias from its history, or None (move 0, or a history written before moves were numbered)."""
    try:
        return dps.recover_dict(f"{alias_id}:{move}", ALIAS_HISTORY) if move > 0 else None
    except DocumentNotFoundError:
        return None


def alias_history(dps: DictPersistenceService, name: str, alias: str) -> list[dict]:
    """Every move of `alias` of `name`, oldest first."""
    records = [dps.recover_dict(record_id, ALIAS_HISTORY) for record_id in dps.all_ids_for_type(ALIAS_HISTORY)]
    moves = [record for record in records if record.get("name") == name and record.get("alias") == alias]
    return sorted(moves, key=lambda record: (record.get("move", 0), record.get("time", 0)))


def update_version(dps: DictPersistenceService, name: str, number: int, field: str, values: dict) -> None:
    """Merge `values` into the tags or metrics (`field`) of version `number` of `name`."""
    record = version_record(dps, name, number)
    dps.add_field(version_id(name, number), VERSION, field, {**record.get(field, {}), **values})


def forget_model(dps: DictPersistenceService, model_id: str) -> None:
    """Mark the version a removed model was as removed (its number is never given again), delete the aliases that
    pointed at it (recorded in their history) and, for a checkpoint, its training state's description."""
    version = version_of(dps, model_id)
    if version is None:
        return
    name, number = version
    state_id = checkpoint_summary(_live_record(dps, name, number) or {}).get("state")
    dps.add_field(version_id(name, number), VERSION, "removed", True)
    if isinstance(state_id, str):
        dps.delete_dict(state_id, TRAINING_TREE)
    for alias_id in dps.all_ids_for_type(ALIAS):
        alias = dps.recover_dict(alias_id, ALIAS)
        if alias.get("name") == name and alias.get("number") == number:
            delete_alias(dps, name, alias["alias"])
    dps.delete_dict(model_id, VERSION_OF)


def dangling_refs(dps: DictPersistenceService, model_ids: set[str]) -> list[tuple[str, str]]:
    """(ref, model id) of every version ref that names a model not in `model_ids` (the stored models) without being
    marked removed, and of every alias of a version that is not there: what verify reports."""
    found = []
    live: set[tuple[object, object]] = set()
    for ref in dps.all_ids_for_type(VERSION):
        record = dps.recover_dict(ref, VERSION)
        if record.get("removed"):
            continue
        if record.get("model_id") in model_ids:
            live.add((record.get("name"), record.get("number")))
        else:
            found.append((ref, str(record.get("model_id"))))
    for alias_id in dps.all_ids_for_type(ALIAS):
        alias = dps.recover_dict(alias_id, ALIAS)
        if (alias.get("name"), alias.get("number")) not in live:
            found.append((alias_id, f"{alias.get('name')}:v{alias.get('number')}"))
    return found


def names(dps: DictPersistenceService) -> list[str]:
    """Every name some version was saved under."""
    return dps.all_ids_for_type(NAME)


def names_hint(dps: DictPersistenceService) -> str:
    """`; stored names: a, b, ...` for messages about a reference that named nothing, or "" without names."""
    known = names(dps)
    return f"; stored names: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''}" if known else ""


def resolve_name(dps: DictPersistenceService, reference: str, prefix_matches: Callable[[], list[str]]) -> Optional[str]:
    """The model id a named reference (`NAME`, `NAME:vN`, `NAME:ALIAS`) names, or None when `reference` is no
    name (an id or id prefix, for the caller). `prefix_matches()` lists the model ids `reference` starts: a
    reference that is both a name and such a prefix is ambiguous."""
    name, separator, selector = reference.partition(":")
    if separator:
        return _resolve_named(dps, check_name(name), selector)
    if not (NAME_PATTERN.fullmatch(reference) and dps.id_exists(reference, NAME)):
        return None
    prefixed = prefix_matches() if _HEX.fullmatch(reference) and len(reference) >= MIN_PREFIX else []
    if prefixed:
        raise AmbiguousModelIdError(f"{reference!r} is both a name and the start of model id(s) "
                                    f"{', '.join(model_id[:12] for model_id in prefixed[:5])}; write "
                                    f"{reference}:latest for the name, or more of the id")
    return _resolve_named(dps, reference, LATEST)


def _resolve_named(dps: DictPersistenceService, name: str, selector: str) -> str:
    """The model id of `name` at `selector` (`latest`, `vN` or an alias)."""
    if not dps.id_exists(name, NAME):
        raise ModelNotFoundError(f"no model was saved under the name {name!r}{names_hint(dps)}")
    version = _VERSION_SUFFIX.fullmatch(selector)
    if version is not None:
        return version_record(dps, name, int(version.group(1)))["model_id"]
    if selector == LATEST:
        number = latest_number(dps, name)
        if number is None:
            raise ModelNotFoundError(f"every version of {name} was removed")
        return version_record(dps, name, number)["model_id"]
    alias_id = f"{name}:{check_name(selector, 'alias')}"
    if not dps.id_exists(alias_id, ALIAS):
        aliases = sorted(alias.partition(":")[2] for alias in dps.all_ids_for_type(ALIAS)
                         if alias.startswith(f"{name}:"))
        raise ModelNotFoundError(f"{name} has no alias {selector!r} (its aliases: {', '.join(aliases) or 'none'}; "
                                 f"versions are named {name}:vN, the newest {name}:latest)")
    return version_record(dps, name, dps.recover_dict(alias_id, ALIAS)["number"])["model_id"]

