"""mmlib.util.user_cache: where caches live, and that a cache never fails what uses it."""

import logging
import os

from mmlib.util.user_cache import CACHE_DIR_ENV, cache_directory, read_cache, write_cache


def test_the_directory_is_mmlibs_own_then_xdgs_then_the_homes(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == str(tmp_path / "home" / ".cache" / "mmlib")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == str(tmp_path / "xdg" / "mmlib")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "own"))
    assert cache_directory() == str(tmp_path / "own")


def test_what_is_written_is_read_back_and_no_temp_file_stays(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert read_cache("things") == {}
    write_cache("things", {"a": [1, "b"]})
    assert read_cache("things") == {"a": [1, "b"]}
    assert os.listdir(tmp_path / "cache") == ["things.json"]


def test_an_unreadable_or_corrupt_file_reads_as_empty(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    for content in (b"", b"\xff\xfe", b"{not json", b"[1]", b'"text"'):
        (tmp_path / "things.json").write_bytes(content)
        assert read_cache("things") == {}
    (tmp_path / "things.json").unlink()
    (tmp_path / "things.json").mkdir()
    assert read_cache("things") == {}


def test_a_failed_write_is_logged_not_raised(monkeypatch, tmp_path, caplog):
    (tmp_path / "a-file").write_text("in the way")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "a-file" / "cache"))
    with caplog.at_level(logging.DEBUG, logger="mmlib.util.user_cache"):
        write_cache("things", {"a": 1})
    assert "could not write the cache file" in caplog.text
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    write_cache("things", {"not JSON": object()})
    assert read_cache("things") == {} and os.listdir(tmp_path / "cache") == []
