"""Which installed distributions provide a module, and each one's name and version: importlib.metadata's answers
without parsing every installed distribution's metadata in every process.

`importlib.metadata.packages_distributions()` parses the whole METADATA of every installed distribution (long
descriptions included) and makes a path object of every line of every RECORD; listing each distribution's name
and version (the environment a save records) parses every METADATA again. In an environment of 424 distributions
that took 85 and 68 ms in a fresh process (165 and 70 ms of a ResNet-50's first checked recovery); this module
takes 12 and 13 ms the first time and 4 and 1 ms in each process after it:

- a name and version come from the header lines of METADATA alone;
- the providers of a module are the distributions whose top_level.txt names it and, from Python 3.11, those
  without one whose file list names it as importlib infers it; that inference (a path object per listed file) runs
  only for a distribution whose raw RECORD mentions the module as a path component.

What is read is kept in this process and in a JSON file in the user's cache directory (`mmlib.util.user_cache`)
that later processes of the same environment read: a distribution's name, version and top_level.txt under the path
of its metadata directory (`NAME-VERSION.dist-info`, `.egg-info`), valid while that directory keeps its inode and
modification time (installing, upgrading or removing a distribution creates or removes one); the providers of a
module under a digest of all metadata directories on `sys.path`, so any install asks again. Other files in the
directories on `sys.path` (a script's, a checkpoint written beside it) change nothing.

The answers are importlib.metadata's, in its order: `sys.path` order, then a directory's metadata as importlib
groups it (a distribution whose metadata names no name is left out). Where importlib would also look elsewhere (a
zip file on `sys.path`, a finder on `sys.meta_path` other than the path finder that lists distributions), these
functions ask importlib.metadata itself, uncached.
"""

import email
import email.message
import hashlib
import importlib.machinery
import importlib.metadata
import itertools
import json
import os
import pathlib
import re
import sys
import textwrap
import threading
import zipfile
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

from mmlib.util.user_cache import read_cache, write_cache

_FORMAT = 1
_METADATA_SUFFIXES = (".dist-info", ".egg-info")
_HEADER_FILES = ("METADATA", "PKG-INFO", "")  # "": an .egg-info file is the metadata itself
_EGG_FILE_LISTS = ("installed-files.txt", "SOURCES.txt")
_FIRST_LINES = 16
# How importlib.metadata infers the top-level names of a distribution without top_level.txt (Python 3.11 on; a
# private function whose rules change between versions, so it is called rather than copied). Python 3.10 does not.
_INFER: Optional[Callable[[importlib.metadata.Distribution], Iterable[str]]] = getattr(
    importlib.metadata, "_top_level_inferred", None)
_INFERS = sys.version_info >= (3, 11)

_lock = threading.RLock()


class _Known:
    """What this process has read: facts of distributions, providers of modules, the directories on `sys.path`,
    and whether the cache file has been read and lacks some of it."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}  # metadata path -> {"stat", "name", "version", "top_level"}
        self.providers: dict[str, list[str]] = {}  # module -> metadata paths of its providers, for `state`
        self.state = ""
        self.loaded = False
        self.dirty = False
        self.listings: dict[str, tuple[list[str], list["_Installed"]]] = {}  # directory -> names, metadata


_known = _Known()


class _Installed(NamedTuple):
    """A distribution's metadata directory (or .egg-info file) in a directory on `sys.path`."""

    path: str  # absolute
    stat: list[int]  # inode and modification time (ns)
    lookup_name: str  # the normalised name importlib finds it by (from the directory's name)
    egg: bool  # the EGG-INFO of an .egg directory (found by importlib's legacy normalisation)


def _normalize(name: str) -> str:
    """A distribution name as importlib.metadata compares them: PEP 503, with dashes as underscores."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _legacy_normalize(name: str) -> str:
    """How importlib.metadata normalises the name of an .egg directory."""
    return name.lower().replace("-", "_")


def _listed(root: str) -> Optional[list[_Installed]]:
    """The distribution metadata in one `sys.path` entry, in importlib.metadata's order; None for a zip file.

    Within a process, a directory listing the same names as before is taken to hold the same metadata (each one's
    inode and modification time are looked at again only in a new process).
    """
    directory = root or os.curdir
    try:
        with os.scandir(directory) as listing:
            children = [(entry.name, entry.path) for entry in listing]
    except OSError:
        return None if os.path.isfile(directory) and zipfile.is_zipfile(directory) else []
    names = [name for name, _ in children]
    known = _known.listings.get(os.path.abspath(directory))
    if known is not None and known[0] == names:
        return known[1]
    base = os.path.basename(root).lower()
    groups: dict[str, list[tuple[str, str, bool]]] = {}
    eggs = []
    for name, path in children:
        low = name.lower()
        if low.endswith(_METADATA_SUFFIXES):
            key = _normalize(low.rpartition(".")[0].partition("-")[0])
            groups.setdefault(key, []).append((path, key, False))
        elif base.endswith(".egg") and low == "egg-info":
            eggs.append((path, _legacy_normalize(base.rpartition(".")[0].partition("-")[0]), True))
    found = []
    for path, key, egg in [item for group in groups.values() for item in group] + eggs:
        try:
            stat = os.stat(path)
        except OSError:  # a dangling link: nothing in it can be read
            continue
        found.append(_Installed(os.path.abspath(path), [stat.st_ino, stat.st_mtime_ns], key, egg))
    _known.listings[os.path.abspath(directory)] = (names, found)
    return found


def _discover() -> Optional[list[_Installed]]:
    """Every installed distribution's metadata in `importlib.metadata.distributions()` order; None where importlib
    would look beyond the directories on `sys.path`."""
    if any(getattr(finder, "find_distributions", None) is not None and finder is not importlib.machinery.PathFinder
           for finder in sys.meta_path):
        return None
    found = []
    for root in sys.path:
        listed = _listed(root)
        if listed is None:
            return None
        found += listed
    return found


def _read_text(path: str) -> Optional[str]:
    """A metadata file's text; None where it is missing or unreadable (importlib.metadata's `read_text`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_headers(path: str) -> Optional[str]:
    """The header lines of a metadata file up to the end of its Name and Version headers (or to the empty line that
    ends the headers); None where the file is missing, unreadable or empty.

    The email parser reads header lines one after the other: the first Name and Version it finds in these lines
    are those it finds in the whole file (a line that looks like one but is not a header ends its headers there).
    """
    wanted = {"name", "version"}
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
            if not first:
                return None
            lines: list[str] = []
            for line in itertools.chain([first], handle):
                if line == "\n" or (not wanted and line[0] not in " \t"):
                    break
                lines.append(line)
                wanted.discard(line.partition(":")[0].lower())
    except (OSError, UnicodeDecodeError):
        return None
    return "".join(lines)


def _header(message: email.message.Message, field: str) -> Optional[str]:
    """A header's value as `Distribution.metadata[field]` gives it (a folded value dedented, as importlib does)."""
    value = message.get(field)
    return textwrap.dedent(" " * 8 + value) if value and "\n" in value else value


def _facts(installed: _Installed, field: str) -> Any:
    """`name`, `version` or `top_level` (the names top_level.txt declares) of a distribution, read once."""
    facts = _known.entries.get(installed.path)
    if facts is None or facts.get("stat") != installed.stat:
        facts = _known.entries[installed.path] = {"stat": installed.stat}
    if field not in facts:
        _known.dirty = True
        if field == "top_level":
            facts["top_level"] = (_read_text(os.path.join(installed.path, "top_level.txt")) or "").split()
        else:
            headers = next((text for text in map(_read_headers, _header_files(installed.path)) if text is not None),
                           None)
            message = email.message_from_string(headers or "")
            facts["name"], facts["version"] = _header(message, "Name"), _header(message, "Version")
    return facts[field]


def _header_files(path: str) -> list[str]:
    """The files whose headers importlib reads a distribution's metadata from, the first there is."""
    return [os.path.join(path, name) if name else path for name in _HEADER_FILES]


def _mentions(modules: list[str]) -> re.Pattern[str]:
    """Matches a file list's line whose path starts with one of `modules` (as a directory or a file name, after
    any `./`, `../` or `/`): only such a line can make importlib infer that the distribution provides it."""
    names = "|".join(map(re.escape, sorted(modules, key=len, reverse=True)))
    return re.compile(rf'"?(?:\.{{0,2}}/)*({names})(?:[/.,"]|$)')


class _Record(importlib.metadata.PathDistribution):
    """A distribution whose RECORD holds only the lines `text`."""

    def __init__(self, path: str, text: str) -> None:
        super().__init__(pathlib.Path(path))
        self._text = text

    def read_text(self, filename: Union[str, "os.PathLike[str]"]) -> Optional[str]:
        return self._text if os.fspath(filename) == "RECORD" else super().read_text(filename)


def _infers(installed: _Installed, modules: list[str], mentions: re.Pattern[str]) -> set[str]:
    """Which of `modules` importlib.metadata infers that a distribution without top_level.txt provides.

    From a RECORD, importlib is given only the lines `mentions` matches, the first few of them first: it makes a
    path object of each line (10 ms for numpy's 1,500). An .egg-info's file list (installed-files.txt or
    SOURCES.txt, by Python version) is left to importlib whole.
    """
    record = _read_text(os.path.join(installed.path, "RECORD"))
    text = record or "\n".join(_read_text(os.path.join(installed.path, name)) or "" for name in _EGG_FILE_LISTS)
    if _INFER is None or not any(module in text for module in modules):
        return set()
    matches = [match for match in map(mentions.match, text.splitlines()) if match]
    if not record:
        wanted = {match.group(1) for match in matches}
        return wanted & set(_INFER(importlib.metadata.Distribution.at(installed.path))) if wanted else set()
    found: set[str] = set()
    for batch in (matches[:_FIRST_LINES], matches[_FIRST_LINES:]):  # inferring from a few lines mostly suffices
        wanted = {match.group(1) for match in batch} - found
        if wanted:
            found |= wanted & set(_INFER(_Record(installed.path, "\n".join(match.string for match in batch))))
    return found


def _state(installed: list[_Installed]) -> str:
    """A digest of every metadata directory on `sys.path`, in order: what the providers of a module depend on."""
    return hashlib.sha256(json.dumps([[item.path, item.stat] for item in installed]).encode()).hexdigest()


def _load_cache() -> None:
    """Take what the cache file holds (once per process), leaving out anything malformed."""
    if _known.loaded:
        return
    _known.loaded = True
    data = read_cache(_cache_name())
    if data.get("format") != _FORMAT:
        return
    entries = data.get("entries")
    for path, facts in (entries.items() if isinstance(entries, dict) else ()):
        if path not in _known.entries and _valid_facts(facts):
            _known.entries[path] = facts
    modules = data.get("modules")
    if isinstance(modules, dict) and isinstance(modules.get("state"), str) and isinstance(
            modules.get("providers"), dict) and all(
            isinstance(paths, list) and all(isinstance(path, str) for path in paths)
            for paths in modules["providers"].values()):
        _known.state, _known.providers = modules["state"], dict(modules["providers"])


def _valid_facts(facts: Any) -> bool:
    """Whether a cache file's entry has the fields and types this module writes (a corrupt one is read again)."""
    if not isinstance(facts, dict):
        return False
    stat = facts.get("stat")
    top_level = facts.get("top_level", [])
    return (isinstance(stat, list) and len(stat) == 2 and all(type(value) is int for value in stat)
            and all(isinstance(facts.get(field), (str, type(None))) for field in ("name", "version"))
            and isinstance(top_level, list) and all(isinstance(name, str) for name in top_level))


def _cache_name() -> str:
    """One cache file per environment (its prefix) and Python."""
    return "distributions-" + hashlib.sha256(f"{sys.prefix}\0{sys.version}".encode()).hexdigest()[:16]


def _save_cache(installed: list[_Installed]) -> None:
    """Write what this process read, merged into the cache file (the entries of other directories kept)."""
    if not _known.dirty:
        return
    _known.dirty = False
    current = {item.path for item in installed}
    listed = {os.path.dirname(path) for path in current}
    on_disk = read_cache(_cache_name()).get("entries")
    entries = {path: facts for path, facts in (on_disk.items() if isinstance(on_disk, dict) else ())
               if os.path.dirname(path) not in listed and _valid_facts(facts)}
    entries.update((path, facts) for path, facts in _known.entries.items() if path in current)
    write_cache(_cache_name(), {"format": _FORMAT, "entries": entries,
                                "modules": {"state": _known.state, "providers": _known.providers}})


def module_distributions(modules: Iterable[str]) -> dict[str, list[str]]:
    """Top-level module name -> names of the installed distributions providing it ([] for none), as
    `importlib.metadata.packages_distributions()` gives them."""
    modules = list(dict.fromkeys(modules))
    with _lock:
        installed = _discover()
        if installed is None or (_INFERS and _INFER is None):
            everything = importlib.metadata.packages_distributions()
            return {module: [name for name in everything.get(module, []) if name] for module in modules}
        _load_cache()
        state = _state(installed)
        if state != _known.state:
            _known.state, _known.providers = state, {}
        missing = [module for module in modules if module not in _known.providers]
        if missing:
            _known.dirty = True
            mentions = _mentions(missing)
            found: dict[str, list[str]] = {module: [] for module in missing}
            for item in installed:
                declared = _facts(item, "top_level")
                if declared:
                    provided = [module for module in declared if module in found]
                else:
                    provided = list(_infers(item, missing, mentions)) if _INFERS else []
                for module in provided:
                    found[module].append(item.path)
            _known.providers.update(found)
        by_path = {item.path: item for item in installed}
        result = {module: [name for name in (_facts(by_path[path], "name") for path in _known.providers[module])
                           if name] for module in modules}
        _save_cache(installed)
        return result


def installed_distributions() -> list[tuple[str, Optional[str]]]:
    """(name, version) of every installed distribution, in `importlib.metadata.distributions()` order."""
    with _lock:
        installed = _discover()
        if installed is None:
            return [(name, metadata["Version"]) for metadata in (dist.metadata for dist in
                                                                 importlib.metadata.distributions())
                    if (name := metadata["Name"])]
        _load_cache()
        result = [(name, _facts(item, "version")) for item in installed
                  if (name := _facts(item, "name"))]
        _save_cache(installed)
        return result


def installed_version(distribution: str) -> Optional[str]:
    """The version of the installed distribution named `distribution` (`importlib.metadata.version`), or None."""
    with _lock:
        installed = _discover()
        if installed is None:
            try:
                return importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                return None
        _load_cache()
        normalized, legacy = _normalize(distribution), _legacy_normalize(distribution)
        match = next((item for item in installed
                      if item.lookup_name == (legacy if item.egg else normalized)), None)
        version = _facts(match, "version") if match is not None else None
        _save_cache(installed)
        return version
