"""Store maintenance: list, inspect, verify, export, remove and garbage-collect the models of a store.

These are the functions behind the `mmlib` command; each takes a `Store` (from `open_store`).
Garbage collection is safe while other processes save (see `collect_garbage`). Listing models needs no torch:
the save services (and torch with them) are imported when a model is first recovered, so that `mmlib ls` starts
at once.
"""

import contextlib
import functools
import logging
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Iterable, Iterator, Optional, ParamSpec, TypeVar

from mmlib.constants import PROGRESS_LOGGER
from mmlib.errors import (AmbiguousModelIdError, ConfigurationError, EnvironmentMismatchWarning, IntegrityError,
                          InvalidIdError, ModelInUseError, ModelNotFoundError, NotFoundError, RestoreError,
                          StoreUnavailableError)
from mmlib import refs
from mmlib.persistence import _coordination as coordination
from mmlib.persistence._gc import DEFAULT_GC_GRACE_S, GarbageReport, sweep
from mmlib.persistence.base import BLOB, DictPersistenceService, StoredItem
from mmlib.persistence.store import Store, checked_store
from mmlib.refs import MIN_PREFIX
from mmlib.schema.lineage import walk_lineage
from mmlib.pruning import Lineages, own_items, weights_blob
from mmlib.schema.model_info import (CREATED, DERIVED_FROM, MODEL_INFO, PRUNED, RECORDED_WEIGHTS_HASH, STORE_TYPE,
                                     ModelInfo)
from mmlib.schema.schema_obj import damaged_document
from mmlib.schema.store_format import FORMAT_DOCUMENT_ID, STORE_FORMAT, check_store_format
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.atomic import atomic_write
from mmlib.util.memo import Memo

if TYPE_CHECKING:
    import torch

    from mmlib.approaches.base import AbstractSaveService, DeviceLike

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
progress = logging.getLogger(PROGRESS_LOGGER)

# The length of the id prefixes tables show.
ABBREVIATED = 12
RECLAIMED = "reclaimed"  # set in a pruned model's marker once its weights blob is gone
_HEX_DIGITS = frozenset("0123456789abcdef")
# What a model's document says of its lineage never changes (its id commits to it), and a pruned model's reclaimed
# weights never come back: each prune reads them once per process (and store), not once per model of the store.
_LINEAGE_VERSIONS: "Memo[str, Version]" = Memo()
_RECLAIMED: "weakref.WeakKeyDictionary[DictPersistenceService, set[str]]" = weakref.WeakKeyDictionary()
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
    """Everything `mmlib show` prints: the size breakdown, an environment summary, the lineage up to the root (or up
    to where it breaks) and what is damaged (`damage`: empty when nothing is)."""

    sizes: dict
    environment: dict
    lineage: list[Version]
    damage: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DamagedModel:
    """A stored model that cannot be listed: its metadata cannot be read, or its lineage loops; `problem` says why."""

    model_id: str
    problem: str


@dataclass(frozen=True)
class Survey:
    """Every stored model: the healthy ones with their sizes, newest first, and the damaged ones."""

    models: list[ModelSummary]
    damaged: list[DamagedModel]


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
# What to do about each kind of problem (said once, however many problems of the kind verify found).
ADVICE = {
    CORRUPTION: "restore the damaged documents and blobs from a backup, or remove the affected models with `mmlib rm` "
                "and reclaim their space with `mmlib gc`",
    CONFIGURATION: "the store is fine: provide the missing settings here (e.g. the MMLIB_CONFIG ini file) and verify "
                   "again",
    DEPENDENCY: "the store is fine: install the missing packages here and verify again",
}


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


def size_rows(sizes: dict, depth: int = 0) -> list[tuple[int, str, int]]:
    """A nested size dict (as `model_save_size` returns) as (depth, key, bytes) rows, each nested dict's total
    before its parts: the size breakdown `mmlib show` and the web view print."""
    rows = []
    for key, value in sizes.items():
        rows.append((depth, key, total_size(value) if isinstance(value, dict) else value))
        if isinstance(value, dict):
            rows += size_rows(value, depth + 1)
    return rows


def _iso_time(timestamp: Optional[float]) -> Optional[str]:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _takes_store(function: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """Check a public function's store argument (InvalidArgumentError for anything that is not a store)."""
    @functools.wraps(function)
    def checked(store: Store, *args: P.args, **kwargs: P.kwargs) -> R:
        return function(checked_store(store), *args, **kwargs)
    return checked


@_takes_store
def require_model(store: Store, model_id: str) -> None:
    """Raise ModelNotFoundError unless `model_id` is a stored model."""
    check_store_format(store.dict_pers_service)
    if not store.dict_pers_service.id_exists(model_id, MODEL_INFO):
        raise ModelNotFoundError(f"no model with id {model_id!r} in this store; list the stored models with `mmlib ls`")


@_takes_store
def resolve_model_id(store: Store, id_or_prefix: str) -> str:
    """The model id that `id_or_prefix` names: an id, a prefix of at least MIN_PREFIX digits that only one
    stored model's id starts with (as git accepts abbreviated commit ids), or a name reference (`NAME`,
    `NAME:vN`, `NAME:ALIAS`; see `mmlib.refs`)."""
    if not isinstance(id_or_prefix, str):
        raise InvalidIdError(f"a model id is a string, got {type(id_or_prefix).__name__}; pass an id `mmlib ls` "
                             "shows")
    if store.dict_pers_service.id_exists(id_or_prefix, MODEL_INFO):
        return id_or_prefix
    named = refs.resolve_name(store.dict_pers_service, id_or_prefix, lambda: [
        model_id for model_id in all_model_ids(store) if model_id.startswith(id_or_prefix)])
    if named is not None:
        return named
    if len(id_or_prefix) < MIN_PREFIX:
        check_store_format(store.dict_pers_service)
        if id_or_prefix and all(digit in _HEX_DIGITS for digit in id_or_prefix):
            raise ModelNotFoundError(f"no model with id {id_or_prefix!r}, and an id prefix needs at least {MIN_PREFIX} "
                                     "hex digits: give more of the id (`mmlib ls` shows the ids)")
        require_model(store, id_or_prefix)
    matches = [model_id for model_id in all_model_ids(store) if model_id.startswith(id_or_prefix)]
    if len(matches) > 1:
        raise AmbiguousModelIdError(f"{id_or_prefix!r} is the start of {len(matches)} model ids "
                                    f"({', '.join(match[:ABBREVIATED] for match in matches[:5])}, ...); give more "
                                    "of the id")
    if not matches:
        raise ModelNotFoundError(f"no model with id {id_or_prefix!r} in this store"
                                 f"{refs.names_hint(store.dict_pers_service)}; list the stored models with `mmlib ls`")
    return matches[0]


def abbreviated(model_ids: Iterable[str]) -> dict[str, str]:
    """id -> its first ABBREVIATED characters, or more where that is needed to tell `model_ids` apart."""
    model_ids = sorted(set(model_ids))
    length = ABBREVIATED
    while len({model_id[:length] for model_id in model_ids}) < len(model_ids):
        length += 1
    return {model_id: model_id[:length] for model_id in model_ids}


@_takes_store
def descendants(store: Store, model_id: str) -> list[str]:
    """Ids of every stored model derived from `model_id`, directly or through others (children before theirs).

    A model whose document cannot be read names no base that can be trusted: it is left out.
    """
    children: dict[Optional[str], list[str]] = {}  # base id (None for roots) -> the models derived from it
    for other in _readable_versions(store)[0].values():
        children.setdefault(other.base_id, []).append(other.model_id)
    found: list[str] = []
    queue = list(children.get(model_id, []))
    while queue:
        child = queue.pop(0)
        if child not in found and child != model_id:
            found.append(child)
            queue += children.get(child, [])
    return found


@_takes_store
def remove_model(store: Store, model_id: str, with_descendants: bool = False, *, force: bool = False) -> list[str]:
    """Remove a model (and, with `with_descendants`, every model derived from it); returns the removed ids.

    A version an alias points at is kept unless `force`; a removed version's number is never given again.

    Only the model documents go (a model no longer exists once its document is gone); `collect_garbage` then
    reclaims the blobs and documents nothing else references. Refused with ModelInUseError while other models
    derive from the model, since they could not be recovered or traced without it. Safe beside saves in other
    processes: each removed model is marked before its descendants are listed, and a save deriving from a marked
    model withdraws its version (see `mmlib.persistence._coordination`).
    """
    require_model(store, model_id)
    dps = store.dict_pers_service
    with contextlib.ExitStack() as markers:
        markers.enter_context(coordination.removal_marker(dps, [model_id]))
        marked, derived = [model_id], descendants(store, model_id)
        if derived and not with_descendants:
            raise ModelInUseError(
                f"{len(derived)} stored model(s) derive from model {model_id} ({', '.join(derived[:3])}"
                f"{', ...' if len(derived) > 3 else ''}); remove them first, or remove them with it "
                "(remove_model(..., with_descendants=True), `mmlib rm --with-descendants`)")
        while set(derived) - set(marked):  # mark them too, then look for versions saved on them meanwhile
            unmarked = [derived_id for derived_id in derived if derived_id not in marked]
            markers.enter_context(coordination.removal_marker(dps, unmarked))
            marked += unmarked
            derived = descendants(store, model_id)
        removed = list(reversed(derived)) + [model_id]
        if not force:
            _refuse_aliased(dps, removed)
        for removed_id in removed:
            dps.delete_dict(removed_id, MODEL_INFO)
            dps.delete_dict(removed_id, RECORDED_WEIGHTS_HASH)
            dps.delete_dict(removed_id, PRUNED)
            refs.forget_model(dps, removed_id)
            logger.info("removed model %s", removed_id)
    return removed


def _refuse_aliased(dps: DictPersistenceService, model_ids: list[str]) -> None:
    """ModelInUseError when an alias (other than the implicit `latest`) points at one of `model_ids`."""
    for model_id in model_ids:
        version = refs.version_of(dps, model_id)
        if version is None:
            continue
        name, number = version
        aliases = [alias for alias in refs.aliases_of(dps, name, number) if alias != refs.LATEST]
        if aliases:
            raise ModelInUseError(
                f"model {model_id} is {name}:v{number}, which alias(es) {', '.join(aliases)} point at; move them "
                "first (mmlib.set_alias, `mmlib alias`), or remove it anyway (remove_model(..., force=True), "
                "`mmlib rm --force`)")


@_takes_store
def kept_model_ids(store: Store) -> list[str]:
    """Ids of every stored model that was not pruned (what `verify` checks), oldest first."""
    pruned = set(store.dict_pers_service.all_ids_for_type(PRUNED))
    return [model_id for model_id in all_model_ids(store) if model_id not in pruned]


@_takes_store
def all_model_ids(store: Store) -> list[str]:
    """Ids of every stored model, oldest first."""
    check_store_format(store.dict_pers_service)
    return store.dict_pers_service.all_ids_for_type(MODEL_INFO)


@_takes_store
def version(store: Store, model_id: str) -> Version:
    """Store type, base id and creation time of one model, from its model document alone."""
    require_model(store, model_id)
    document = store.dict_pers_service.recover_dict(model_id, MODEL_INFO)
    try:
        if not isinstance(document, dict):
            raise TypeError(f"it is a {type(document).__name__}, not an object")
        store_type = ModelStoreType(document.get(STORE_TYPE)).value
        base_id = document.get(DERIVED_FROM)
        if base_id is not None and not isinstance(base_id, str):
            raise TypeError(f"its base id is {base_id!r}, not a string")
        created = document.get(CREATED)
        if created is not None and (isinstance(created, bool) or not isinstance(created, (int, float))):
            raise TypeError(f"its creation time is {created!r}, not a number")
        return Version(model_id, store_type, base_id, _iso_time(created))
    except (TypeError, ValueError, OverflowError, OSError) as error:
        raise damaged_document(MODEL_INFO, model_id, str(error)) from error


def model_size_info(store: Store, model_id: str) -> dict:
    """Bytes a model's own documents and blobs take, as a nested dict (as `model_save_size` returns)."""
    return ModelInfo.load_placeholder(model_id).size_info(store.file_pers_service, store.dict_pers_service)


def _readable_versions(store: Store, known: Optional[Memo[str, Version]] = None
                       ) -> tuple[dict[str, Version], list[DamagedModel]]:
    """The version of every model whose document can be read (oldest first), and the models whose cannot (a model
    removed since the listing is left out); those in `known` are not read again."""
    versions: dict[str, Version] = {}
    damaged = []
    for model_id in all_model_ids(store):
        try:
            versions[model_id] = version(store, model_id) if known is None else \
                known.get(model_id, functools.partial(version, store, model_id))
        except IntegrityError as error:
            damaged.append(DamagedModel(model_id, str(error)))
        except ModelNotFoundError:
            continue  # removed, or withdrawn by its save, since it was listed
    return versions, damaged


def _looping(versions: dict[str, Version]) -> dict[str, str]:
    """model id -> why, for each of `versions` whose lineage loops or runs into a loop (bases outside `versions`
    end a lineage). Each model is walked once: what a walk learns about a model is kept for later walks."""
    ends: dict[str, bool] = {}  # model id -> whether its lineage ends (True) or loops (False)
    for current in versions:
        path: dict[str, None] = {}  # the models of this walk, in order
        while current not in ends:
            path[current] = None
            base_id = versions[current].base_id
            if base_id is None or base_id not in versions or base_id in path:
                ends.update(dict.fromkeys(path, base_id not in path))
            elif base_id in ends:
                ends.update(dict.fromkeys(path, ends[base_id]))
            else:
                current = base_id
    problems = {}
    for model_id in (model_id for model_id, ended in ends.items() if not ended):
        try:
            walk_lineage(model_id, versions.__getitem__, lambda entry: entry.base_id,
                         stop=lambda entry: entry.base_id not in versions)
        except IntegrityError as error:
            problems[model_id] = str(error)
    return problems


@_takes_store
def scan_versions(store: Store) -> tuple[list[Version], list[DamagedModel]]:
    """The version of every stored model (oldest first), with the damaged ones apart: a model document that cannot
    be read, or a lineage that loops (entered from outside the loop too). Pruned models are left out."""
    versions, damaged = _readable_versions(store)
    looping = _looping(versions)
    damaged += [DamagedModel(model_id, problem) for model_id, problem in looping.items()]
    hidden = looping.keys() | set(store.dict_pers_service.all_ids_for_type(PRUNED))
    return [v for model_id, v in versions.items() if model_id not in hidden], damaged


@_takes_store
def survey(store: Store) -> Survey:
    """Every stored model: the healthy ones with their sizes, newest first, and the damaged ones (a model whose
    documents cannot be read or sized, or whose lineage loops) with what is wrong."""
    versions, damaged = scan_versions(store)
    versions.reverse()
    versions.sort(key=lambda v: v.created or "", reverse=True)
    sized = [sized_version(store, v) for v in versions]
    return Survey([entry for entry in sized if isinstance(entry, ModelSummary)],
                  damaged + [entry for entry in sized if isinstance(entry, DamagedModel)])


def sized_version(store: Store, v: Version) -> "ModelSummary | DamagedModel":
    """The version with the bytes its own documents and blobs take, or, when they cannot be read or sized, what is
    wrong with it."""
    try:
        return ModelSummary(**v.__dict__, size=total_size(model_size_info(store, v.model_id)))
    except (IntegrityError, InvalidIdError) as error:
        return DamagedModel(v.model_id, str(error))
    except NotFoundError as error:
        return DamagedModel(v.model_id, f"something it references is missing ({error})")


def _left_out(damaged: list[DamagedModel]) -> None:
    """Log each damaged model a listing leaves out."""
    for entry in damaged:
        logger.warning("left out damaged model %s: %s", entry.model_id, entry.problem)


@_takes_store
def list_models(store: Store) -> list[ModelSummary]:
    """Every healthy stored model with its size, newest first; damaged ones are left out with a warning (`survey`
    returns them)."""
    result = survey(store)
    _left_out(result.damaged)
    return result.models


@_takes_store
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
            summary["saved_on_device"] = getattr(environment, "device", None) or "cpu"
            summary["installed_packages"] = len(environment.pip_freeze or [])
            summary["recorded_by"] = entry.model_id
            return summary
    return {}


@_takes_store
def model_details(store: Store, model_id: str) -> ModelDetails:
    """Metadata, size breakdown (as `model_save_size`), environment summary and lineage of one model.

    IntegrityError when the model's own document cannot be read; damage found beyond it (a base that is damaged,
    missing or loops back, an unreadable recover info) is listed in `damage`, and the lineage ends before it.
    """
    own = version(store, model_id)
    chain: list[Version] = []
    damage = []

    def load(some_id: str) -> Version:
        entry = own if some_id == model_id and not chain else version(store, some_id)
        chain.append(entry)
        return entry

    try:
        walk_lineage(model_id, load, lambda entry: entry.base_id)
    except IntegrityError as error:
        damage.append(str(error))
    sizes: dict = {}
    environment: dict = {}
    try:
        sizes = model_size_info(store, model_id)
        environment = _environment_summary(store, chain)
    except (IntegrityError, InvalidIdError) as error:
        damage.append(str(error))
    except NotFoundError as error:
        damage.append(f"something model {model_id} references is missing ({error})")
    return ModelDetails(**own.__dict__, size=total_size(sizes), sizes=sizes, environment=environment, lineage=chain,
                        damage=damage)


@_takes_store
def version_tree(store: Store) -> list[TreeNode]:
    """The version graph of the healthy models; damaged ones are left out with a warning (`scan_versions` returns
    them)."""
    versions, damaged = scan_versions(store)
    _left_out(damaged)
    return tree_of(versions)


def tree_of(versions: list[Version]) -> list[TreeNode]:
    """The graph of `versions` (oldest first, no loops): one tree per root, children in the order they were saved.

    A version whose base is not among `versions` (missing or damaged) is a root.
    """
    nodes: dict[Optional[str], TreeNode] = {v.model_id: TreeNode(v) for v in versions}
    roots: list[TreeNode] = []
    for node in nodes.values():
        parent = nodes.get(node.version.base_id)
        (parent.children if parent is not None else roots).append(node)
    return roots


@functools.cache
def _save_services() -> dict[ModelStoreType, type["AbstractSaveService"]]:
    """The save service that recovers each store type, imported on first use (`mmlib.save` imports torch)."""
    from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService

    return {
        ModelStoreType.FULL_MODEL: BaselineSaveService,
        ModelStoreType.WEIGHT_UPDATES: WeightUpdateSaveService,
        ModelStoreType.PROVENANCE: ProvenanceSaveService,
    }


def __getattr__(name: str) -> Any:
    """`SAVE_SERVICES` (the save service class that recovers each store type), imported when first asked for."""
    if name == "SAVE_SERVICES":
        return _save_services()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@_takes_store
def save_service_for(store: Store, store_type: ModelStoreType) -> "AbstractSaveService":
    """The mmlib.save service that recovers models of `store_type` from this store. It keeps no recovered version in
    memory: nothing is saved on top through it, and keeping one costs a copy of its unchanged tensors (a partial
    fine-tune's recovery would copy most of the model)."""
    if store_type == ModelStoreType.WEIGHT_UPDATES:
        from mmlib.save import WeightUpdateSaveService

        return WeightUpdateSaveService(store.file_pers_service, store.dict_pers_service, cache_size=0)
    return _save_services()[store_type](store.file_pers_service, store.dict_pers_service)


@_takes_store
def recover_model(store: Store, model_id: str, execute_checks: bool = True,
                  device: Optional["DeviceLike"] = None) -> "torch.nn.Module":
    """Recover a model with the save service its store type needs, on `device` (default: the CPU)."""
    store_type = ModelStoreType(version(store, model_id).store_type)
    model = save_service_for(store, store_type).recover_model(model_id, execute_checks=execute_checks,
                                                              device=device).model
    if model is None:
        raise RestoreError(f"the {store_type.value} save service recovered no model for {model_id}")
    return model


@_takes_store
def export_weights(store: Store, model_id: str, path: str) -> int:
    """Recover a model (with checks) and write its state dict to `path` as safetensors; returns the tensor count."""
    from mmlib.util.safetensors_io import write_state_dict  # imports torch, as recovering does

    state_dict = recover_model(store, model_id).state_dict()
    with atomic_write(path) as out:
        write_state_dict(state_dict, out)
    return len(state_dict)


def _lineages(store: Store) -> Lineages:
    """What deciding which weights each model needs takes (see `mmlib.pruning`)."""
    versions = _readable_versions(store, _LINEAGE_VERSIONS)[0].values()
    return Lineages(store, [(v.model_id, v.store_type, v.base_id) for v in versions])


def _needed_items(store: Store, model_id: str, lineages: Lineages) -> Iterator[StoredItem]:
    """Every document and blob recovering the model reads: its own and, for updates, its bases' up to a snapshot,
    except the weights of pruned bases that it reads no tensor from."""
    needed = walk_lineage(model_id, lambda some_id: version(store, some_id), lambda entry: entry.base_id,
                          stop=lambda entry: entry.store_type == ModelStoreType.FULL_MODEL.value)
    for entry in needed:
        yield from own_items(store, entry.model_id, entry.model_id in lineages.pruned)
    if lineages.reaches_pruned(model_id):
        for holder in lineages.models_read(model_id) & lineages.pruned:
            yield StoredItem(BLOB, weights_blob(store, holder) or "")


def _blob_problem(store: Store, digest: str) -> Optional[str]:
    """None when the blob re-hashes to its digest, else what is wrong with it."""
    try:
        store.file_pers_service.verify_blob(digest)
    except IntegrityError:
        return "the blob is corrupted (its bytes no longer hash to its digest)"
    except NotFoundError:
        return "the blob is missing"
    return None


def _recovery_problem(store: Store, services: dict, model_id: str) -> Optional[tuple[str, str]]:
    """None when the model recovers with checks, else the kind of problem that stops it and what it is."""
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
                                "the store is fine")
        return CORRUPTION, f"recovery fails ({type(error).__name__}: {error})"
    return None


@_takes_store
def verify(store: Store, model_ids: Optional[Iterable[str]] = None) -> list[Problem]:
    """Re-hash every blob the models need, then recover each with checks; returns the problems (empty: all good).

    `model_ids` defaults to every model, and then every name, version and alias ref is checked to name a stored
    model too. A model whose stored items are damaged, or whose lineage loops, is not recovered (it cannot be). A
    problem says what is wrong; `ADVICE` says what to do about each kind.
    """
    every_model = model_ids is None
    lineages = _lineages(store)
    model_ids = kept_model_ids(store) if model_ids is None else list(model_ids)
    for model_id in model_ids:
        require_model(store, model_id)
        if model_id in lineages.pruned:
            raise ModelNotFoundError(f"model {model_id} was pruned by a retention policy: its weights are gone, "
                                     "there is nothing to verify")
    blob_problems: dict[str, Optional[str]] = {}
    services: dict = {}
    problems = []
    loops = _looping(_readable_versions(store)[0])
    for position, model_id in enumerate(model_ids, start=1):
        progress.info("verifying model %d of %d: %s", position, len(model_ids), model_id)
        found = [Problem(model_id, "lineage", loops[model_id])] if model_id in loops else []
        try:
            blobs = sorted({item.item_id for item in _needed_items(store, model_id, lineages)
                            if item.kind == BLOB})
        except (NotFoundError, InvalidIdError, IntegrityError) as error:
            found.append(Problem(model_id, "metadata", str(error)))
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
    if every_model:
        problems += [Problem(target, f"ref {ref}", "names a model or version that is not in the store")
                     for ref, target in refs.dangling_refs(store.dict_pers_service, set(model_ids))]
    return problems


def _unsafe_to_collect(detail: str) -> IntegrityError:
    """The error that stops garbage collection in a damaged store."""
    return IntegrityError(f"the store is damaged ({detail}), and garbage collection refuses to run until it is "
                          "repaired: run `mmlib verify` and repair what it reports")


def _live_items(store: Store, pruned_models: bool = True) -> set[StoredItem]:
    """Every document and blob some model references (the models' own documents included), and the store format;
    without `pruned_models`, leaving out the documents of pruned models (for removing blobs only: what they need
    of blobs, other models need too).

    IntegrityError when a document some model references is damaged or missing (each is checked against its id),
    or a blob is missing, as `verify` would find: a damaged store is repaired before anything is removed. Blobs
    are not re-read (that would read the whole store): a corrupted blob is live and kept, and `verify` finds it.
    """
    live = {StoredItem(STORE_FORMAT, FORMAT_DOCUMENT_ID)}
    live |= {StoredItem(kind, ref) for kind in refs.REF_TYPES for ref in store.dict_pers_service.all_ids_for_type(kind)}
    stored_blobs = set(store.file_pers_service.blob_digests())
    lineages = _lineages(store)
    for model_id in all_model_ids(store):
        if model_id in lineages.pruned and not pruned_models:
            continue
        try:
            items = own_items(store, model_id, model_id in lineages.pruned)
        except (NotFoundError, InvalidIdError, IntegrityError) as error:
            if not store.dict_pers_service.id_exists(model_id, MODEL_INFO):
                continue  # removed, or withdrawn by its save, since it was listed: nothing of it is live
            raise _unsafe_to_collect(f"model {model_id}: {error}") from error
        missing = sorted(item.item_id for item in items if item.kind == BLOB and item.item_id not in stored_blobs
                         and not store.file_pers_service.blob_exists(item.item_id))  # or saved since the listing
        if missing:
            raise _unsafe_to_collect(f"model {model_id} needs blob {missing[0]}: the blob is missing")
        live |= items
    try:
        return live | {StoredItem(BLOB, digest) for digest in lineages.needed_pruned_blobs()}
    except (NotFoundError, IntegrityError) as error:
        raise _unsafe_to_collect(f"a model derived from a pruned one cannot be read: {error}") from error


@_takes_store
def collect_garbage(store: Store, dry_run: bool = False, grace_seconds: float = DEFAULT_GC_GRACE_S) -> GarbageReport:
    """Remove every blob and document no model references, and unfinished uploads; returns what was removed.

    Safe while other processes save, as long as no save takes longer than `grace_seconds` from writing (or
    reusing) a blob or document to writing its model document: what was written or reused less than
    `grace_seconds` before this run began is kept and counted in `kept_young`. With `dry_run` nothing is removed.
    Refused with IntegrityError while a document some model needs is damaged or missing, or a blob it needs is
    missing (as `verify` reports them).
    """
    return sweep(store, lambda: _live_items(store), dry_run=dry_run, grace_seconds=grace_seconds)


@_takes_store
def reclaim_pruned(store: Store) -> GarbageReport:
    """Remove the weights blobs of pruned models that no other model reads, now (no grace period: the pruned models
    are marked, so no save can derive from them, and running saves' leases keep what they wrote). A pruned model
    whose blob kept versions still read is looked at again next time; one whose blob is gone is marked reclaimed."""
    dps = store.dict_pers_service
    reclaimed = _RECLAIMED.setdefault(dps, set())
    pending = {model_id: weights_blob(store, model_id) for model_id in dps.all_ids_for_type(PRUNED)
               if model_id not in reclaimed and not dps.recover_dict(model_id, PRUNED).get(RECLAIMED)
               and dps.id_exists(model_id, MODEL_INFO)}
    candidates = {StoredItem(BLOB, digest) for digest in pending.values() if digest is not None}
    report = sweep(store, lambda: _live_items(store, pruned_models=False), dry_run=False, grace_seconds=0,
                   only=candidates)
    for model_id, digest in pending.items():
        if digest is None or not store.file_pers_service.blob_exists(digest):
            dps.add_field(model_id, PRUNED, RECLAIMED, True)
            reclaimed.add(model_id)
    return report
