"""File-system blob store specifics: the order of the flushes that make a published blob survive a power failure."""

import os

import pytest

from mmlib.errors import InvalidIdError
from mmlib.persistence import FileSystemPersistenceService, _filesystem


def test_a_blob_is_fsynced_before_it_is_published_and_its_directory_after(tmp_path, monkeypatch):
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    events = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(source, target) -> None:
        events.append(("replace", os.fspath(source), os.fspath(target)))
        replace(source, target)

    monkeypatch.setattr(_filesystem.os, "fsync", spy_fsync)
    monkeypatch.setattr(_filesystem.os, "replace", spy_replace)
    digest = service.save_bytes(b"payload", "p.bin").reference_id.split("/")[0]
    blob = service.blob_path(digest)
    temp = next((event[1] for event in events if event[0] == "replace"), None)
    assert events == [("fsync", temp), ("replace", temp, blob), ("fsync", os.path.dirname(blob))]


def test_deleting_a_partial_upload_refuses_what_is_not_one_of_its_temp_files(tmp_path):
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    neighbour = tmp_path / "blobs" / "neighbour.partial"
    neighbour.write_text("not an upload")
    for bad in ("../neighbour.partial", None):
        with pytest.raises(InvalidIdError):
            service.delete_partial_upload(bad)
    assert neighbour.exists()


def test_only_its_own_temp_files_are_listed_as_partial_uploads(tmp_path):
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    temp = tmp_path / "blobs" / "tmp"
    (temp / "notes.txt").write_text("someone else's file")
    (temp / "mmlib-abc.partial").write_text("an upload that never finished")
    (temp / "mmlib-dir.partial").mkdir()
    (temp / "mmlib-link.partial").symlink_to(tmp_path / "blobs" / "tmp" / "notes.txt")
    assert service.partial_uploads() == ["mmlib-abc.partial"]

