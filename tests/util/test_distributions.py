"""mmlib.util.distributions: importlib.metadata's answers, each distribution read once, kept between processes."""

import glob
import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mmlib.util import distributions
from mmlib.util.distributions import installed_distributions, installed_version, module_distributions
from mmlib.util.user_cache import CACHE_DIR_ENV

# Installed here: wheels with and without top_level.txt, one distribution with three top-level packages, an
# editable install (mmlib), a namespace package (mpl_toolkits, from matplotlib), the standard library.
MODULES = ["torch", "numpy", "safetensors", "blake3", "zstandard", "pymongo", "bson", "gridfs", "mmlib",
           "mpl_toolkits", "matplotlib", "setuptools", "_distutils_hack", "pip", "os", "json", "sqlite3",
           "no_such_module"]


@pytest.fixture(autouse=True)
def nothing_read(monkeypatch, tmp_path):
    """An empty cache directory, nothing read in this process, and importlib's own caches of directories emptied."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(distributions, "_known", distributions._Known())
    importlib.invalidate_caches()


@pytest.fixture
def reads(monkeypatch):
    """The metadata files read (top_level.txt, RECORDs, METADATA headers), path by path."""
    paths = []
    for name in ("_read_text", "_read_headers"):
        real = getattr(distributions, name)
        monkeypatch.setattr(distributions, name, lambda path, real=real: paths.append(path) or real(path))
    return paths


def importlib_answer(modules):
    """What packages_distributions() gives for `modules` (distributions without a name left out)."""
    importlib.invalidate_caches()
    everything = importlib.metadata.packages_distributions()
    return {module: [name for name in everything.get(module, []) if name] for module in modules}


def importlib_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_distribution(site, directory, files):
    """A distribution's metadata directory `directory` in `site`, holding `files` (name -> text)."""
    for name, text in files.items():
        path = os.path.join(site, directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def metadata(name, version="1.0"):
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: test\n\nName: not-this-one\n"


def test_the_modules_installed_here_map_as_importlib_maps_them(monkeypatch, tmp_path):
    (tmp_path / "local_module.py").write_text("VALUE = 1\n")  # a script's module: no distribution
    monkeypatch.syspath_prepend(str(tmp_path))
    found = module_distributions([*MODULES, "local_module"])
    assert found == importlib_answer([*MODULES, "local_module"])
    assert found["torch"] == ["torch"] and found["bson"] == ["pymongo"] and "mmlib" in found["mmlib"]
    assert found["mpl_toolkits"] == ["matplotlib"]
    assert importlib.util.find_spec("mpl_toolkits").origin is None  # a namespace package
    assert found["os"] == found["local_module"] == found["no_such_module"] == []


def test_every_module_importlib_knows_maps_the_same():
    everything = importlib_answer(importlib.metadata.packages_distributions())
    assert module_distributions(everything) == everything


def test_names_and_versions_are_importlibs():
    importlib.invalidate_caches()
    assert installed_distributions() == [(dist.metadata["Name"], dist.version)
                                         for dist in importlib.metadata.distributions() if dist.metadata["Name"]]
    for name in ("torch", "numpy", "mmlib", "PyMongo", "SETUPTOOLS", "typing-extensions", "typing.extensions",
                 "no-such-distribution"):
        assert installed_version(name) == importlib_version(name), name


def test_unusual_metadata_maps_as_importlib_maps_it(monkeypatch, tmp_path):
    site = str(tmp_path / "site")
    write_distribution(site, "alpha-1.0.dist-info", {"METADATA": metadata("Alpha"),
                                                     "top_level.txt": "alpha\nalpha\nalpha_extra\n"})
    write_distribution(site, "beta_pkg-2.0.dist-info", {  # no top_level.txt: importlib infers from RECORD
        "METADATA": metadata("beta-pkg", "2.0"),
        "RECORD": "beta/__init__.py,sha256=x,1\nbeta/x.py,,\nother/data.txt,,\n"
                  "beta_pkg-2.0.dist-info/METADATA,,\n../../bin/beta,,\nsingle_file.py,,\n"
                  './dotted/__init__.py,,\n"quoted/a,b.py",,\n'})
    for part in ("one", "two"):  # two portions of a namespace package
        write_distribution(site, f"ns_{part}-1.0.dist-info", {"METADATA": metadata(f"ns-{part}"),
                                                              "RECORD": f"nsp/{part}/__init__.py,,\n"})
    write_distribution(site, "gamma-1.0.dist-info", {"METADATA": metadata("gamma"),  # beta only nested
                                                     "RECORD": "gamma/__init__.py,,\ngamma/_vendor/beta/x.py,,\n"})
    write_distribution(site, "legacy-1.0.egg-info", {"PKG-INFO": metadata("legacy"),
                                                     "SOURCES.txt": "setup.py\nlegacy/__init__.py\n"})
    write_distribution(site, ".", {"old_style-0.1.egg-info": metadata("old-style", "0.1")})  # an .egg-info file
    write_distribution(site, "delta-4.0.dist-info", {  # a folded header before Name, CRLF line ends
        "METADATA": "Metadata-Version: 2.1\r\nLicense: line one\r\n  line two\r\nName: Delta\r\nVersion: 4.0\r\n"
                    "\r\nbody\r\n", "top_level.txt": "delta\n"})
    write_distribution(site, "folded-1.0.dist-info", {  # a folded Version: its continuation belongs to it
        "METADATA": "Metadata-Version: 2.1\nName: folded\nVersion: 1.0\n  continued\nSummary: s\n",
        "top_level.txt": "folded\n"})
    write_distribution(site, "hidden-1.0.dist-info", {  # a line that ends the headers before Name
        "METADATA": "Metadata-Version: 2.1\nnot a header\nName: Hidden\nVersion: 1.0\n", "top_level.txt": "hidden\n"})
    write_distribution(site, "Zeta-1.0.dist-info", {"METADATA": metadata("Zeta"), "top_level.txt": "zeta\n"})
    write_distribution(site, "zeta-2.0.dist-info", {"METADATA": metadata("zeta", "2.0"), "top_level.txt": "zeta\n"})
    write_distribution(site, "empty-1.0.dist-info", {"METADATA": "", "PKG-INFO": metadata("empty-fallback"),
                                                     "top_level.txt": "empty\n"})
    monkeypatch.syspath_prepend(site)
    modules = ["alpha", "alpha_extra", "beta", "other", "single_file", "dotted", "quoted", "nsp", "gamma", "setup",
               "legacy", "delta", "folded", "hidden", "zeta", "empty", "x", "data"]
    found = module_distributions(modules)
    assert found == importlib_answer(modules)
    assert found["alpha"] == ["Alpha", "Alpha"] and found["beta"] == ["beta-pkg"] and found["hidden"] == []
    assert found["dotted"] == found["quoted"] == ["beta-pkg"]
    assert sorted(found["nsp"]) == ["ns-one", "ns-two"]
    assert installed_distributions() == [(dist.metadata["Name"], dist.version)
                                         for dist in importlib.metadata.distributions() if dist.metadata["Name"]]
    for name in ("alpha", "Beta.Pkg", "ns_one", "legacy", "old-style", "delta", "folded", "zeta", "ZETA", "empty",
                 "nope"):
        assert installed_version(name) == importlib_version(name), name


def test_a_distribution_is_read_once_in_a_process(reads):
    first = module_distributions(["torch", "numpy"])
    freeze = installed_distributions()
    read = len(reads)
    assert module_distributions(["numpy", "torch"]) == first and installed_distributions() == freeze
    assert installed_version("torch") == importlib_version("torch")
    assert len(reads) == read > 0


def test_an_install_into_a_directory_on_the_path_is_seen(reads, monkeypatch, tmp_path):
    site = str(tmp_path / "site")
    os.makedirs(site)
    monkeypatch.syspath_prepend(site)
    assert module_distributions(["newmod"]) == {"newmod": []}
    write_distribution(site, "newpkg-1.0.dist-info", {"METADATA": metadata("newpkg"), "top_level.txt": "newmod\n"})
    reads.clear()
    assert module_distributions(["newmod"]) == {"newmod": ["newpkg"]}
    assert installed_version("newpkg") == "1.0"
    assert [path for path in reads if path.endswith(("top_level.txt", "METADATA"))] == [
        os.path.join(site, "newpkg-1.0.dist-info", name) for name in ("top_level.txt", "METADATA")]


def test_a_new_entry_on_the_path_is_seen(monkeypatch, tmp_path):
    assert module_distributions(["newmod"]) == {"newmod": []}
    write_distribution(str(tmp_path), "newpkg-1.0.dist-info", {"METADATA": metadata("newpkg"),
                                                               "top_level.txt": "newmod\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_distributions(["newmod"]) == {"newmod": ["newpkg"]}


def test_files_written_beside_a_script_on_the_path_are_no_install(reads, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    module_distributions(["torch"])
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    (tmp_path / "store").mkdir()
    reads.clear()
    assert module_distributions(["torch"]) == {"torch": ["torch"]}
    assert reads == []


CHILD = """
import json, sys
from mmlib.util import distributions
reads = []
for name in ("_read_text", "_read_headers"):
    real = getattr(distributions, name)
    setattr(distributions, name, lambda path, real=real: reads.append(path) or real(path))
modules = sys.argv[1:]
print(json.dumps({"found": distributions.module_distributions(modules),
                  "freeze": distributions.installed_distributions(),
                  "versions": {name: distributions.installed_version(name) for name in modules}, "reads": reads}))
"""


def in_fresh_process(cache, modules, path=()):
    """What a new Python process answers (with the cache directory `cache` and `path` added to sys.path)."""
    env = {**os.environ, CACHE_DIR_ENV: str(cache), "PYTHONPATH": os.pathsep.join(path)}
    completed = subprocess.run([sys.executable, "-c", CHILD, *modules], env=env, cwd=cache.parent,
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def test_a_second_process_reads_no_metadata(tmp_path):
    modules = ["torch", "numpy", "bson", "mpl_toolkits"]
    first = in_fresh_process(tmp_path / "cache", modules)
    second = in_fresh_process(tmp_path / "cache", modules)
    assert first["reads"] and second["reads"] == []
    assert second["found"] == first["found"] == importlib_answer(modules)
    assert second["freeze"] == first["freeze"] and second["versions"] == first["versions"]
    assert second["versions"]["torch"] == importlib_version("torch")
    assert len(glob.glob(str(tmp_path / "cache" / "distributions-*.json"))) == 1


def test_a_second_process_sees_an_install_and_an_upgrade(tmp_path):
    cache, site = tmp_path / "cache", str(tmp_path / "site")
    os.makedirs(site)
    assert in_fresh_process(cache, ["newmod", "newpkg"], [site])["found"]["newmod"] == []
    write_distribution(site, "newpkg-1.0.dist-info", {"METADATA": metadata("newpkg"), "top_level.txt": "newmod\n"})
    installed = in_fresh_process(cache, ["newmod", "newpkg"], [site])
    assert installed["found"]["newmod"] == ["newpkg"] and installed["versions"]["newpkg"] == "1.0"
    assert ["newpkg", "1.0"] in installed["freeze"]
    # Only the new distribution's metadata is read again (the other distributions' file lists are, for newmod).
    assert {path for path in installed["reads"] if path.endswith(("top_level.txt", "METADATA"))} == {
        os.path.join(site, "newpkg-1.0.dist-info", name) for name in ("top_level.txt", "METADATA")}
    os.rename(os.path.join(site, "newpkg-1.0.dist-info"), os.path.join(site, "newpkg-2.0.dist-info"))
    write_distribution(site, "newpkg-2.0.dist-info", {"METADATA": metadata("newpkg", "2.0"),
                                                      "top_level.txt": "newmod\n"})
    upgraded = in_fresh_process(cache, ["newmod", "newpkg"], [site])
    assert upgraded["versions"]["newpkg"] == "2.0" and ["newpkg", "2.0"] in upgraded["freeze"]
    assert upgraded["found"]["newmod"] == ["newpkg"]


@pytest.mark.parametrize("content", [b"\x00\xff garbage", b"[1, 2]", b'{"format": 1, "entries": {"/x": 3}}',
                                     b'{"format": 1, "entries": [], "modules": {"state": 5, "providers": []}}',
                                     b'{"format": 1, "modules": {"state": "s", "providers": {"torch": "torch"}}}',
                                     b'{"format": 1, "entries": {"/x": {"stat": ["a", 1], "name": 3}}}', b'{"form'])
def test_a_corrupt_cache_file_is_ignored_and_replaced(tmp_path, content):
    cache = tmp_path / "cache"
    modules = ["torch", "bson"]
    expected = in_fresh_process(cache, modules)
    [path] = glob.glob(str(cache / "distributions-*.json"))
    with open(path, "wb") as handle:
        handle.write(content)
    again = in_fresh_process(cache, modules)
    assert again["found"] == expected["found"] == importlib_answer(modules)
    assert again["freeze"] == expected["freeze"] and again["versions"] == expected["versions"]
    with open(path, "rb") as handle:
        assert json.load(handle)["format"] == 1  # written anew


@pytest.mark.parametrize("facts", [{"stat": "bad"}, {"name": 5}, {"version": ["1.0"]}, {"top_level": "torch"},
                                   {"top_level": [1]}, {"stat": [1, 2, 3]}, {"stat": [1.5, 2]}])
def test_malformed_entries_in_the_cache_file_are_read_again(tmp_path, facts):
    cache = tmp_path / "cache"
    modules = ["torch", "numpy"]
    expected = in_fresh_process(cache, modules)
    [path] = glob.glob(str(cache / "distributions-*.json"))
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    for entry in data["entries"].values():
        entry.update(facts)
    data["modules"]["state"] = "another"  # the providers are looked up again, from the entries
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    again = in_fresh_process(cache, modules)
    assert again["found"] == expected["found"] and again["freeze"] == expected["freeze"]
    assert again["versions"] == expected["versions"]


def test_a_stale_entry_in_the_cache_file_is_read_again(tmp_path):
    cache, site = tmp_path / "cache", str(tmp_path / "site")
    write_distribution(site, "newpkg-1.0.dist-info", {"METADATA": metadata("newpkg"), "top_level.txt": "newmod\n"})
    in_fresh_process(cache, ["newmod", "newpkg"], [site])
    [path] = glob.glob(str(cache / "distributions-*.json"))
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    entry = data["entries"][os.path.join(site, "newpkg-1.0.dist-info")]
    entry.update(stat=[entry["stat"][0], entry["stat"][1] - 1], version="0.9")  # as read before a reinstall
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    assert in_fresh_process(cache, ["newmod", "newpkg"], [site])["versions"]["newpkg"] == "1.0"


def test_an_unwritable_cache_directory_changes_nothing(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    assert module_distributions(["torch"]) == importlib_answer(["torch"])
    assert installed_version("torch") == importlib_version("torch")


def test_concurrent_first_processes_agree_and_leave_a_valid_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, CACHE_DIR_ENV: str(cache)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, "torch", "numpy"], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, text=True) for _ in range(4)]
    answers = [json.loads(child.communicate()[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert all(answer["found"] == importlib_answer(["torch", "numpy"]) for answer in answers)
    [path] = glob.glob(str(cache / "distributions-*.json"))
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle)["format"] == 1
    assert not [name for name in os.listdir(cache) if name.endswith(".partial")]


def test_beyond_the_path_finder_importlib_is_asked(monkeypatch):
    class Finder:
        """A finder that lists distributions too (as some packaging tools install)."""

        @staticmethod
        def find_spec(*_args, **_kwargs):
            return None

        @staticmethod
        def find_distributions(*_args, **_kwargs):
            return iter(())

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder])
    asked = []
    real = importlib.metadata.packages_distributions
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: asked.append(1) or real())
    assert module_distributions(["torch"]) == {"torch": ["torch"]}
    assert asked == [1]
