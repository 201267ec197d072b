"""module_distributions: read once, read again only after an install changes a directory on sys.path."""

import importlib.metadata

import pytest

import mmlib.util.distributions
from mmlib.util.distributions import module_distributions


@pytest.fixture
def reads(monkeypatch):
    """Count the reads of every installed distribution's metadata, starting from an empty cache."""
    calls = []
    real = importlib.metadata.packages_distributions
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: calls.append(1) or real())
    monkeypatch.setattr(mmlib.util.distributions, "_cached", None)
    return calls


def test_the_installed_distributions_are_read_once(reads):
    assert "torch" in module_distributions()["torch"]
    assert module_distributions()["numpy"] == ["numpy"]
    assert len(reads) == 1


def test_an_install_into_a_directory_on_the_path_is_seen(reads, monkeypatch, tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    module_distributions()
    (site / "newpkg-1.0.dist-info").mkdir()
    module_distributions()
    assert len(reads) == 2


def test_a_new_entry_on_the_path_is_seen(reads, monkeypatch, tmp_path):
    module_distributions()
    monkeypatch.syspath_prepend(str(tmp_path))
    module_distributions()
    module_distributions()
    assert len(reads) == 2


def test_files_written_beside_a_script_on_the_path_are_no_install(reads, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    module_distributions()
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    (tmp_path / "store").mkdir()
    module_distributions()
    assert len(reads) == 1
