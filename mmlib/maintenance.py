"""Store maintenance: list, inspect, verify, export, remove and garbage-collect the models of a store.

These are the functions behind the `mmlib` command; each takes a `Store` (from `open_store`).
Garbage collection is safe while other processes save (see `collect_garbage`).
"""

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator, Optional

import torch

from mmlib.constants import PROGRESS_LOGGER
from mmlib.approaches.base import AbstractSaveService
from mmlib.errors import (AmbiguousModelIdError, ConfigurationError, EnvironmentMismatchWarning, IntegrityError,
                          InvalidIdError, ModelInUseError, ModelNotFoundError, NotFoundError, RestoreError,
                          StoreUnavailableError)
from mmlib.persistence._atomic import atomic_write
from mmlib.persistence._gc import DEFAULT_GC_GRACE_S, GarbageReport, sweep
from mmlib.persistence.store import Store
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.schema.lineage import walk_lineage
from mmlib.schema.model_info import CREATED, DERIVED_FROM, MODEL_INFO, RECORDED_WEIGHTS_HASH, STORE_TYPE, ModelInfo
from mmlib.schema.schema_obj import BLOB, StoredItem
from mmlib.schema.store_format import FORMAT_DOCUMENT_ID, STORE_FORMAT, check_store_format
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.safetensors_io import write_state_dict

logger = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)

# The save service that recovers each store type.
SAVE_SERVICES: dict[ModelStoreType, type[AbstractSaveService]] = {
    ModelStoreType.FULL_MODEL: BaselineSaveService,
    ModelStoreType.WEIGHT_UPDATES: WeightUpdateSaveService,
    ModelStoreType.PROVENANCE: ProvenanceSaveService,
}
# Id prefixes: the shortest one accepted for a model id, and the length tables show.
MIN_PREFIX = 4
ABBREVIATED = 12
_ENVIRONMENT_SUMMARY_FIELDS = ("python_version", "pytorch_version", "processor_info", "gpu_types",
                               "python_platform_info")


@dataclass(frozen=True)
class Version:
    """One model version: its id, how it is stored, the id of its base model and when it was saved (ISO 8601, UTC)."""

    model_id: str
    store_type: str
    base_id: Optional[str]
    created: Optional[str]


@dataclass(frozen=True)
class ModelSummary(Version):
    """A version plus the bytes its own documents and blobs take (`size`)."""

    size: int


@dataclass(frozen=True)
class ModelDetails(ModelSummary):
    """Everything `mmlib show` prints: the size breakdown, an environment summary and the lineage up to the root."""

    sizes: dict
    environment: dict
    lineage: list[Version]


@dataclass
class TreeNode:
    """A version and the versions derived from it, oldest first."""

    version: Version
    children: list["TreeNode"] = field(default_factory=list)

    def as_dict(self) -> dict:
        """A JSON-ready nested dict."""
        return {**self.version.__dict__, "children": [child.as_dict() for child in self.children]}

# What kind of problem verify found, so the fix is clear: restore from a backup, set a setting, install a package.
CORRUPTION = "corruption"
CONFIGURATION = "configuration"
DEPENDENCY = "dependency"


@dataclass(frozen=True)
class Problem:
    """Something `verify` found: the model affected, the stored item at fault, what is wrong and what to do."""

    model_id: str
    item: str
    message: str
    kind: str = CORRUPTION

    def __str__(self) -> str:
        return f"model {self.model_id}: {self.item}: {self.kind}: {self.message}"


def total_size(sizes: dict) -> int:
    """Sum of every byte count in a nested size dict (as `model_save_size` returns)."""
    return sum(total_size(value) if isinstance(value, dict) else value for value in sizes.values())


def _iso_time(timestamp: Optional[float]) -> Optional[str]:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def require_model(store: Store, model_id: str) -> None:
    """Raise ModelNotFoundError unless `model_id` is a stored model."""
    check_store_format(store.dict_pers_service)
    if not store.dict_pers_service.id_exists(model_id, MODEL_INFO):
        raise ModelNotFoundError(f"no model with id {model_id!r} in this store; list the stored models with `mmlib ls`")


def resolve_model_id(store: Store, id_or_prefix: str) -> str:
    """The model id that `id_or_prefix` names: an id, or a prefix of at least MIN_PREFIX digits that only one
    stored model's id starts with (as git accepts abbreviated commit ids)."""
    if not isinstance(id_or_prefix, str):
        raise InvalidIdError(f"a model id is a string, got {type(id_or_prefix).__name__}; pass an id `mmlib ls` "
                             "shows")
    if store.dict_pers_service.id_exists(id_or_prefix, MODEL_INFO) or len(id_or_prefix) < MIN_PREFIX:
        require_model(store, id_or_prefix)
        return id_or_prefix
    matches = [model_id for model_id in all_model_ids(store) if model_id.startswith(id_or_prefix)]
    if len(matches) > 1:
        raise AmbiguousModelIdError(f"{id_or_prefix!r} is the start of {len(matches)} model ids "
                                    f"({', '.join(match[:ABBREVIATED] for match in matches[:5])}, ...); give more "
                                    "of the id")
    if not matches:
        require_model(store, id_or_prefix)
    return matches[0]


def abbreviated(model_ids: Iterable[str]) -> dict[str, str]:
    """id -> its first ABBREVIATED characters, or more where that is needed to tell `model_ids` apart."""
    model_ids = sorted(set(model_ids))
    length = ABBREVIATED
    while len({model_id[:length] for model_id in model_ids}) < len(model_ids):
        length += 1
    return {model_id: model_id[:length] for model_id in model_ids}


def descendants(store: Store, model_id: str) -> list[str]:
    """Ids of every stored model derived from `model_id`, directly or through others (children before theirs)."""
    children: dict[Optional[str], list[str]] = {}  # base id (None for roots) -> the models derived from it
    for other_id in all_model_ids(store):
        children.setdefault(version(store, other_id).base_id, []).append(other_id)
    found, queue = [], list(children.get(model_id, []))
    while queue:
        child = queue.pop(0)
        if child not in found:
            found.append(child)
            queue += children.get(child, [])
    return found


def remove_model(store: Store, model_id: str, with_descendants: bool = False) -> list[str]:
    """Remove a model (and, with `with_descendants`, every model derived from it); returns the removed ids.

    Only the model documents go (a model no longer exists once its document is gone); `collect_garbage` then
    reclaims the blobs and documents nothing else references. Refused with ModelInUseError while other models
    derive from the model, since they could not be recovered or traced without it. Do not remove a model
    that another process is deriving a new version from at the same time.
    """
    require_model(store, model_id)
    derived = descendants(store, model_id)
    if derived and not with_descendants:
        raise ModelInUseError(
            f"{len(derived)} stored model(s) derive from model {model_id} ({', '.join(derived[:3])}"
            f"{', ...' if len(derived) > 3 else ''}); remove them first, or remove them with it "
            "(remove_model(..., with_descendants=True), `mmlib rm --with-descendants`)")
    removed = list(reversed(derived)) + [model_id]
    for removed_id in removed:
        store.dict_pers_service.delete_dict(removed_id, MODEL_INFO)
        store.dict_pers_service.delete_dict(removed_id, RECORDED_WEIGHTS_HASH)
        logger.info("removed model %s", removed_id)
    return removed


def all_model_ids(store: Store) -> list[str]:
    """Ids of every stored model, oldest first."""
    check_store_format(store.dict_pers_service)
    return store.dict_pers_service.all_ids_for_type(MODEL_INFO)


def version(store: Store, model_id: str) -> Version:
    """Store type, base id and creation time of one model, from its model document alone."""
    require_model(store, model_id)
    document = store.dict_pers_service.recover_dict(model_id, MODEL_INFO)
    try:
        store_type = ModelStoreType(document[STORE_TYPE]).value
        base_id = document.get(DERIVED_FROM)
        if base_id is not None and not isinstance(base_id, str):
            raise TypeError(f"its base id is a {type(base_id).__name__}")
        return Version(model_id, store_type, base_id, _iso_time(document.get(CREATED)))
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as error:
        raise IntegrityError(f"the document of model {model_id} is damaged ({error!r}); run `mmlib verify` and "
                             "restore the store from a backup") from error


def _model_sizes(store: Store, model_id: str) -> dict:
    return ModelInfo.load_placeholder(model_id).size_info(store.file_pers_service, store.dict_pers_service)


def list_models(store: Store) -> list[ModelSummary]:
    """Every stored model with its size, newest first."""
    versions = [version(store, model_id) for model_id in reversed(all_model_ids(store))]
    versions.sort(key=lambda v: v.created or "", reverse=True)
    return [ModelSummary(**v.__dict__, size=total_size(_model_sizes(store, v.model_id))) for v in versions]


def lineage(store: Store, model_id: str) -> list[Version]:
    """The model, its base, its base's base, ... up to the root."""
    return walk_lineage(model_id, lambda some_id: version(store, some_id), lambda entry: entry.base_id)


def _environment_summary(store: Store, chain: list[Version]) -> dict:
    """The environment of the nearest version in `chain` that records one (updates inherit their base's)."""
    for entry in chain:
        model_info = ModelInfo.load(entry.model_id, store.file_pers_service, store.dict_pers_service,
                                    restore_root=tempfile.gettempdir(), load_recursive=True, load_files=False)
        environment = getattr(model_info.recover_info, "environment", None)
        if environment is not None:
            summary = {name: getattr(environment, name) for name in _ENVIRONMENT_SUMMARY_FIELDS}
            summary["installed_packages"] = len(environment.pip_freeze or [])
            summary["recorded_by"] = entry.model_id
            return summary
    return {}


def model_details(store: Store, model_id: str) -> ModelDetails:
    """Metadata, size breakdown (as `model_save_size`), environment summary and lineage of one model."""
    chain = lineage(store, model_id)
    sizes = _model_sizes(store, model_id)
    return ModelDetails(**chain[0].__dict__, size=total_size(sizes), sizes=sizes,
                        environment=_environment_summary(store, chain), lineage=chain)


def version_tree(store: Store) -> list[TreeNode]:
    """The version graph: one tree per root model, children in the order they were saved."""
    nodes: dict[Optional[str], TreeNode] = {model_id: TreeNode(version(store, model_id))
                                             for model_id in all_model_ids(store)}
    roots: list[TreeNode] = []
    for node in nodes.values():
        parent = nodes.get(node.version.base_id)
        (parent.children if parent is not None else roots).append(node)
    return roots


def save_service_for(store: Store, store_type: ModelStoreType) -> AbstractSaveService:
    """The mmlib.save service that recovers models of `store_type` from this store."""
    return SAVE_SERVICES[store_type](store.file_pers_service, store.dict_pers_service)


def recover_model(store: Store, model_id: str, execute_checks: bool = True) -> torch.nn.Module:
    """Recover a model with the save service its store type needs."""
    store_type = ModelStoreType(version(store, model_id).store_type)
    model = save_service_for(store, store_type).recover_model(model_id, execute_checks=execute_checks).model
    if model is None:
        raise RestoreError(f"the {store_type.value} save service recovered no model for {model_id}")
    return model


def export_weights(store: Store, model_id: str, path: str) -> int:
    """Recover a model (with checks) and write its state dict to `path` as safetensors; returns the tensor count."""
    state_dict = recover_model(store, model_id).state_dict()
    with atomic_write(path) as out:
        write_state_dict(state_dict, out)
    return len(state_dict)


def _needed_items(store: Store, model_id: str) -> Iterator[StoredItem]:
    """Every document and blob recovering the model reads: its own and, for updates, its bases' up to a snapshot."""
    needed = walk_lineage(model_id, lambda some_id: version(store, some_id), lambda entry: entry.base_id,
                          stop=lambda entry: entry.store_type == ModelStoreType.FULL_MODEL.value)
    for entry in needed:
        yield from ModelInfo.load_placeholder(entry.model_id).stored_items(store.dict_pers_service)


def _blob_problem(store: Store, digest: str) -> Optional[str]:
    """None when the blob re-hashes to its digest, else what is wrong with it and what to do."""
    try:
        store.file_pers_service.verify_blob(digest)
    except IntegrityError:
        return "the blob is corrupted (its bytes no longer hash to its digest); restore it from a backup"
    except NotFoundError:
        return "the blob is missing; restore it from a backup"
    return None


def _recovery_problem(store: Store, services: dict, model_id: str) -> Optional[tuple[str, str]]:
    """None when the model recovers with checks, else the kind of problem that stops it and what to do."""
    store_type = ModelStoreType(version(store, model_id).store_type)
    try:
        if store_type not in services:
            services[store_type] = save_service_for(store, store_type)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EnvironmentMismatchWarning)
            services[store_type].recover_model(model_id, execute_checks=True)
    except StoreUnavailableError:
        raise
    except ConfigurationError as error:
        return CONFIGURATION, f"recovery needs a setting that is missing here ({error}); the store is fine"
    except Exception as error:  # verify reports whatever stops a recovery instead of stopping at the first one
        if isinstance(error, ImportError) or isinstance(error.__cause__, ImportError):
            return DEPENDENCY, (f"recovery needs code that is not installed here ({type(error).__name__}: {error}); "
                                "the store is fine: install it")
        return CORRUPTION, f"recovery fails ({type(error).__name__}: {error}); restore the store from a backup"
    return None


def verify(store: Store, model_ids: Optional[Iterable[str]] = None) -> list[Problem]:
    """Re-hash every blob the models need, then recover each with checks; returns the problems (empty: all good).

    `model_ids` defaults to every model. A model whose stored items are damaged is not recovered (it cannot be).
    """
    model_ids = all_model_ids(store) if model_ids is None else list(model_ids)
    for model_id in model_ids:
        require_model(store, model_id)
    blob_problems: dict[str, Optional[str]] = {}
    services: dict = {}
    problems = []
    for position, model_id in enumerate(model_ids, start=1):
        progress.info("verifying model %d of %d: %s", position, len(model_ids), model_id)
        found = []
        try:
            blobs = sorted({item.item_id for item in _needed_items(store, model_id) if item.kind == BLOB})
        except (NotFoundError, InvalidIdError, IntegrityError) as error:
            found.append(Problem(model_id, "metadata", f"{error}; the model cannot be recovered: restore the "
                                                       "store from a backup"))
            blobs = []
        for digest in blobs:
            if digest not in blob_problems:
                blob_problems[digest] = _blob_problem(store, digest)
            detail = blob_problems[digest]
            if detail is not None:
                found.append(Problem(model_id, f"blob {digest}", detail))
        if not found:
            problem = _recovery_problem(store, services, model_id)
            if problem is not None:
                kind, message = problem
                found.append(Problem(model_id, "recovery", message, kind))
        logger.debug("verified model %s: %d problem(s)", model_id, len(found))
        problems += found
    return problems


def _live_items(store: Store) -> set[StoredItem]:
    """Every document and blob some model references (the models' own documents included), and the store format."""
    live = {StoredItem(STORE_FORMAT, FORMAT_DOCUMENT_ID)}
    for model_id in all_model_ids(store):
        try:
            live.update(ModelInfo.load_placeholder(model_id).stored_items(store.dict_pers_service))
        except (NotFoundError, InvalidIdError) as error:
            raise IntegrityError(
                f"model {model_id} references a missing or malformed item ({error}), so what it needs cannot be told "
                "apart from garbage; run `mmlib verify` and repair the store before collecting garbage") from error
    return live


def collect_garbage(store: Store, dry_run: bool = False, grace_seconds: float = DEFAULT_GC_GRACE_S) -> GarbageReport:
    """Remove every blob and document no model references, and unfinished uploads; returns what was removed.

    Safe while other processes save, as long as no save takes longer than `grace_seconds` from writing (or
    reusing) a blob or document to writing its model document: what was written or reused less than
    `grace_seconds` before this run began is kept and counted in `kept_young`. With `dry_run` nothing is removed.
    """
    return sweep(store, lambda: _live_items(store), dry_run=dry_run, grace_seconds=grace_seconds)
