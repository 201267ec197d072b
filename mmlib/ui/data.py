"""What the web view's pages show, read through `mmlib.maintenance`, `mmlib.refs` and `mmlib.model_diff` (never the
backends directly): the models table, the versions of a lineage, and one version's details.

Nothing here writes to the store. Every reader takes the damage it meets as data: a model whose documents cannot be
read is returned as damaged, with what is wrong, for the page to show.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Union
from urllib.parse import urlencode

from mmlib import maintenance, refs
from mmlib.errors import IntegrityError, InvalidArgumentError, MMLibError, ModelNotFoundError
from mmlib.maintenance import DamagedModel, ModelSummary, Version
from mmlib.model_diff import ModelDiff, diff
from mmlib.persistence.store import Store
from mmlib.schema.model_info import PRUNED
from mmlib.schema.store_type import APPROACHES

DAMAGED = "damaged"
SORT_FIELDS = ("created", "name", "number", "approach", "size")
SORT_GROUPS = ("metrics", "tags")
DEFAULT_SORT = "-created"
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000


@dataclass(frozen=True)
class Entry:
    """One stored model as the pages show it: its version, what the refs say of it (name, number, aliases, tags,
    metrics, checkpoint) and, once sized, the bytes it added (`size`) or why it could not be sized (`damage`)."""

    version: Version
    named: Optional[refs.NamedVersion] = None
    pruned: bool = False
    size: Optional[int] = None
    damage: Optional[str] = None

    @property
    def model_id(self) -> str:
        return self.version.model_id

    @property
    def approach(self) -> str:
        """`snapshot`, `update` or `provenance` (`-` for a model whose document cannot be read)."""
        return APPROACHES.get(self.version.store_type, "-")

    @property
    def kind(self) -> str:
        """What the pages colour the entry by: its approach, or `damaged` once reading or sizing it found damage."""
        return DAMAGED if self.damage else self.approach

    @property
    def name(self) -> Optional[str]:
        return self.named.name if self.named else None

    @property
    def number(self) -> Optional[int]:
        return self.named.number if self.named else None

    @property
    def label(self) -> str:
        """`NAME:vN`, or the abbreviated id of a model saved without a name."""
        return refs.version_id(self.named.name, self.named.number) if self.named else \
            self.model_id[:maintenance.ABBREVIATED]

    @property
    def aliases(self) -> list[str]:
        return self.named.aliases if self.named else []

    @property
    def tags(self) -> dict:
        return self.named.tags if self.named else {}

    @property
    def metrics(self) -> dict:
        return self.named.metrics if self.named else {}

    def sized(self, store: Store) -> "Entry":
        """This entry with its size, or with its damage when its documents or blobs cannot be read or sized."""
        if self.size is not None or self.damage is not None:
            return self
        found = maintenance.sized_version(store, self.version)
        if isinstance(found, ModelSummary):
            return replace(self, size=found.size)
        return replace(self, damage=found.problem)

    def matches(self, text: str) -> bool:
        """Whether `text` (lower case) occurs in the label, id, approach, an alias, a tag `KEY=VALUE` or a metric
        name of this entry."""
        haystack = [self.label, self.model_id, self.kind, *self.aliases, *self.metrics,
                    *(f"{key}={value}" for key, value in self.tags.items())]
        return any(text in str(item).lower() for item in haystack)


@dataclass(frozen=True)
class Catalog:
    """Every stored model that is a version of its own (checkpoints' training states left out): the readable ones,
    oldest first, and the damaged ones."""

    entries: list[Entry]
    damaged: list[DamagedModel]

    def sort_keys(self) -> list[str]:
        """Every sort key the table offers: the plain fields, then `metrics.KEY` and `tags.KEY` of every key some
        entry has."""
        grouped = [f"{group}.{key}" for group in SORT_GROUPS
                   for key in sorted({key for entry in self.entries for key in getattr(entry, group)})]
        return [*SORT_FIELDS, *grouped]


def catalog(store: Store) -> Catalog:
    """The models of the store as `mmlib ls` lists them (pruned models and training states left out), unsized."""
    versions, damaged = maintenance.scan_versions(store)
    named = refs.named_versions(store.dict_pers_service)
    hidden = refs.training_state_ids(named)
    return Catalog([Entry(v, named.get(v.model_id)) for v in versions if v.model_id not in hidden], damaged)


@dataclass(frozen=True)
class TableQuery:
    """The models table's query parameters: a text filter (`q`), a name (`name`, exact), an approach, the sort key
    (`sort`: a field or `metrics.KEY` / `tags.KEY`, descending with a leading `-`), the page and the rows per page."""

    text: str = ""
    name: str = ""
    approach: str = ""
    sort: str = DEFAULT_SORT
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "TableQuery":
        """The query that request parameters give; InvalidArgumentError for a malformed page, page size or sort."""
        query = cls(text=params.get("q", "").strip(), name=params.get("name", "").strip(),
                    approach=params.get("approach", "").strip(), sort=params.get("sort", "").strip() or DEFAULT_SORT,
                    page=_positive(params, "page", 1), per_page=_positive(params, "per_page", DEFAULT_PER_PAGE))
        field_name = query.sort.lstrip("-")
        group, _, key = field_name.partition(".")
        if field_name not in SORT_FIELDS and not (group in SORT_GROUPS and key):
            raise InvalidArgumentError(f"cannot sort by {query.sort!r}: use one of {', '.join(SORT_FIELDS)}, "
                                       "metrics.KEY or tags.KEY, with a leading '-' for descending")
        if query.per_page > MAX_PER_PAGE:
            raise InvalidArgumentError(f"per_page is at most {MAX_PER_PAGE}, got {query.per_page}")
        return query

    def link(self, **changes: Union[str, int]) -> str:
        """The query string of this query with `changes` (the page back to 1 unless given), defaults left out."""
        changed = replace(self, **{"page": 1, **changes})  # type: ignore[arg-type]
        params = {"q": changed.text, "name": changed.name, "approach": changed.approach,
                  "sort": changed.sort if changed.sort != DEFAULT_SORT else "",
                  "page": changed.page if changed.page != 1 else "",
                  "per_page": changed.per_page if changed.per_page != DEFAULT_PER_PAGE else ""}
        return "?" + urlencode({key: value for key, value in params.items() if value != ""})

    def sort_link(self, field_name: str) -> str:
        """The link a column header gives: sort by `field_name`, descending when it already sorts ascending by it."""
        return self.link(sort=f"-{field_name}" if self.sort == field_name else field_name)


def _positive(params: Mapping[str, str], key: str, default: int) -> int:
    """The positive integer parameter `key` (`default` when absent); InvalidArgumentError for anything else."""
    value = params.get(key, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise InvalidArgumentError(f"{key} must be a positive whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TablePage:
    """One page of the models table: its entries (sized), the entries the filter kept, the page count, and the
    damaged models (on every page)."""

    query: TableQuery
    entries: list[Entry]
    matched: int
    pages: int
    damaged: list[DamagedModel]
    sort_keys: list[str]
    names: list[str]


def table_page(store: Store, query: TableQuery) -> TablePage:
    """The page of the models table that `query` asks for; only its rows are sized (all rows when sorting by
    size), so a page costs the same in a store of thousands of models."""
    listed = catalog(store)
    text = query.text.lower()
    chosen = [entry for entry in listed.entries if (not text or entry.matches(text))
              and query.name in ("", entry.name) and query.approach in ("", entry.approach)]
    if query.sort.lstrip("-") == "size":
        chosen = [entry.sized(store) for entry in chosen]
    ordered = _ordered(chosen, query.sort)
    pages = max(1, math.ceil(len(ordered) / query.per_page))
    page = min(query.page, pages)
    shown = [entry.sized(store) for entry in ordered[(page - 1) * query.per_page:page * query.per_page]]
    return TablePage(replace(query, page=page), shown, len(ordered), pages, listed.damaged, listed.sort_keys(),
                     sorted({entry.name for entry in listed.entries if entry.name}))


def _ordered(entries: list[Entry], sort: str) -> list[Entry]:
    """`entries` (oldest first) sorted by `sort` (see TableQuery); those without a value last, newest first."""
    descending = sort.startswith("-")
    group, _, key = sort.lstrip("-").partition(".")

    def value(entry: Entry) -> object:
        if key:
            found = getattr(entry, group).get(key)
            return None if found is None else (isinstance(found, str), found)  # numbers before strings
        if group == "created":
            return entry.version.created
        return getattr(entry, group)

    position = {entry.model_id: index for index, entry in enumerate(entries)}
    present = [entry for entry in entries if value(entry) is not None]
    absent = [entry for entry in reversed(entries) if value(entry) is None]
    # ties in the order the models were saved (newest first when descending)
    return sorted(present, key=lambda entry: (value(entry), position[entry.model_id]), reverse=descending) + absent


@dataclass(frozen=True)
class Lineage:
    """The versions of a lineage graph, oldest first: each readable one sized, each that cannot be read damaged; and
    what broke while walking it (`damage`)."""

    entries: list[Entry]
    damage: list[str] = field(default_factory=list)


def name_lineage(store: Store, name: str) -> Lineage:
    """Every version of `name` and their bases up to their roots (other names' and unnamed ones too)."""
    dps = store.dict_pers_service
    refs.check_name(name)
    records = refs.live_records(dps, name)
    if not records:
        raise ModelNotFoundError(f"no version of {name!r} is stored{refs.names_hint(dps)}")
    found: dict[str, Union[Version, DamagedModel]] = {}
    damage = []
    for record in records:
        model_id: Optional[str] = record["model_id"]
        while model_id is not None and model_id not in found:
            try:
                found[model_id] = maintenance.version(store, model_id)
            except (IntegrityError, ModelNotFoundError) as error:
                found[model_id] = DamagedModel(model_id, str(error))
                damage.append(f"model {model_id}: {error}")
            entry = found[model_id]
            model_id = entry.base_id if isinstance(entry, Version) else None
    return Lineage(_entries(store, found.values()), damage)


def model_lineage(store: Store, model_id: str) -> Lineage:
    """The whole version tree `model_id` belongs to: its lineage up to the root, and everything derived from that
    root."""
    damage = []
    try:
        chain = maintenance.lineage(store, model_id)
    except IntegrityError as error:  # a broken base: the tree starts at the model itself
        chain = [maintenance.version(store, model_id)]
        damage.append(str(error))
    members: dict[str, Union[Version, DamagedModel]] = {v.model_id: v for v in chain}
    for derived in maintenance.descendants(store, chain[-1].model_id):
        if derived not in members:
            try:
                members[derived] = maintenance.version(store, derived)
            except ModelNotFoundError:
                continue  # removed since it was listed
    return Lineage(_entries(store, members.values()), damage)


def _entries(store: Store, versions: Iterable[Union[Version, DamagedModel]]) -> list[Entry]:
    """Sized entries of `versions`, oldest first (damaged ones as entries of their own, after the readable ones)."""
    dps = store.dict_pers_service
    pruned = set(dps.all_ids_for_type(PRUNED))
    named = refs.named_versions(dps)
    listed = list(versions)
    readable = sorted((v for v in listed if isinstance(v, Version)), key=lambda v: v.created or "")
    return [Entry(v, named.get(v.model_id), v.model_id in pruned).sized(store) for v in readable] + [
        Entry(Version(v.model_id, "", None, None), named.get(v.model_id), damage=v.problem) for v in listed
        if isinstance(v, DamagedModel)]


def entry_label(store: Store, model_id: str) -> str:
    """`NAME:vN` of a model, or its abbreviated id when it has no name (or its refs cannot be read)."""
    try:
        version = refs.version_of(store.dict_pers_service, model_id)
    except MMLibError:
        version = None
    return refs.version_id(*version) if version else model_id[:maintenance.ABBREVIATED]


def _named(store: Store, model_id: str) -> Optional[refs.NamedVersion]:
    """What the refs say of one model (None for an unnamed one, or one whose refs cannot be read)."""
    try:
        return refs.named_version(store.dict_pers_service, model_id)
    except MMLibError:
        return None


@dataclass(frozen=True)
class VersionPage:
    """One version's page: its entry and details, the changes against its base (or why they are not known), and the
    references the diff form offers."""

    entry: Entry
    details: maintenance.ModelDetails
    checkpoint: dict
    base_diff: Optional[ModelDiff]
    base_diff_problem: Optional[str]
    siblings: list[str]
    labels: dict[str, str]


def version_page(store: Store, model_id: str) -> VersionPage:
    """Everything the page of model `model_id` shows; IntegrityError when its own document cannot be read."""
    details = maintenance.model_details(store, model_id)
    named = _named(store, model_id)
    pruned = store.dict_pers_service.id_exists(model_id, PRUNED)
    entry = Entry(Version(details.model_id, details.store_type, details.base_id, details.created), named, pruned,
                  size=details.size)
    base_diff, problem = None, None
    if details.base_id is not None:
        try:
            base_diff = diff(details.base_id, model_id, store)
        except MMLibError as error:
            problem = str(error)
    siblings = [refs.version_id(named.name, record["number"])
                for record in refs.live_records(store.dict_pers_service, named.name)] if named else []
    labels = {v.model_id: entry_label(store, v.model_id) for v in details.lineage}
    return VersionPage(entry, details, named.checkpoint if named else {}, base_diff, problem, siblings, labels)


def damaged_version(store: Store, model_id: str, error: IntegrityError) -> Entry:
    """The entry of a model whose own document cannot be read (`error` says why)."""
    return Entry(Version(model_id, "", None, None), _named(store, model_id), damage=str(error))
