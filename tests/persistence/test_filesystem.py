"""File-system blob store specifics: the order of the flushes that make a published blob survive a power failure."""

import os

import pytest

from mmlib.errors import InvalidIdError, StoreUnavailableError
from mmlib.persistence import FileSystemPersistenceService, FileReference, _filesystem


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



def test_a_directory_it_cannot_write_to_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """Root may write anywhere, so the permission check itself is made to fail."""
    monkeypatch.setattr(_filesystem.os, "access", lambda path, mode: False)
    with pytest.raises(StoreUnavailableError, match=f"the file store at {tmp_path} is not writable; fix its "
                                                    "permissions or choose another directory"):
        FileSystemPersistenceService(str(tmp_path))
    (tmp_path / "a-file").touch()
    with pytest.raises(StoreUnavailableError, match="cannot create the file store at .*; choose a directory you "
                                                    "can write to"):
        FileSystemPersistenceService(str(tmp_path / "a-file" / "blobs"))


def test_a_restored_file_is_written_atomically_without_fsync(tmp_path, monkeypatch):
    """A restored file is a scratch copy of what the store keeps durably: flushing it would only cost time."""
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    ref = service.save_bytes(b"stored once", "code.py")
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a restored file was fsynced"))
    restored = FileReference(reference_id=ref.reference_id)
    service.recover_file(restored, str(tmp_path / "out"))
    assert open(restored.path, "rb").read() == b"stored once" and os.listdir(tmp_path / "out") == ["code.py"]
