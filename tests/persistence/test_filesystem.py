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
    (tmp_path / "blobs" / "tmp").mkdir(parents=True)
    neighbour = tmp_path / "blobs" / "neighbour.partial"
    neighbour.write_text("not an upload")
    for bad in ("../neighbour.partial", None):
        with pytest.raises(InvalidIdError):
            service.delete_partial_upload(bad)
    assert neighbour.exists()


def test_only_its_own_temp_files_are_listed_as_partial_uploads(tmp_path):
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    temp = tmp_path / "blobs" / "tmp"
    temp.mkdir(parents=True)
    (temp / "notes.txt").write_text("someone else's file")
    (temp / "mmlib-abc.partial").write_text("an upload that never finished")
    (temp / "mmlib-dir.partial").mkdir()
    (temp / "mmlib-link.partial").symlink_to(tmp_path / "blobs" / "tmp" / "notes.txt")
    assert service.partial_uploads() == ["mmlib-abc.partial"]


def test_opening_creates_nothing_and_the_first_write_creates_the_directory(tmp_path):
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    assert not (tmp_path / "blobs").exists()
    assert list(service.blob_digests()) == [] and service.partial_uploads() == [] and service.blob_times() == {}
    assert not (tmp_path / "blobs").exists()
    ref = service.save_bytes(b"payload", "p.bin")
    assert service.read_bytes(ref.reference_id) == b"payload"
    assert sorted(os.listdir(tmp_path / "blobs")) == sorted([ref.reference_id[:2], "tmp"])


def test_a_directory_it_cannot_write_to_is_refused_when_writing_with_what_to_do(tmp_path, monkeypatch):
    """Root may write anywhere, so creating the temp file is made to fail as it does for a user without access."""
    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    service = FileSystemPersistenceService(str(tmp_path))
    monkeypatch.setattr(_filesystem, "create_temp_file", refuse)
    with pytest.raises(StoreUnavailableError, match=f"cannot write to the file store at {tmp_path} .*Permission "
                                                    "denied.*; ask its owner for write access .* or choose a "
                                                    "directory you can write to"):
        service.save_bytes(b"payload", "p.bin")
    (tmp_path / "a-file").touch()
    with pytest.raises(StoreUnavailableError, match="cannot write to the file store at .*a-file/blobs"):
        FileSystemPersistenceService(str(tmp_path / "a-file" / "blobs")).save_bytes(b"payload", "p.bin")


def test_reusing_a_blob_it_may_not_touch_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """A blob of another user that is not group-writable cannot be marked as reused, so gc could take it."""
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    service.save_bytes(b"payload", "p.bin")

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_filesystem.os, "utime", refuse)
    with pytest.raises(StoreUnavailableError, match="cannot write to the file store .*umask 002"):
        service.save_bytes(b"payload", "p.bin")


def test_a_restored_file_is_written_atomically_without_fsync(tmp_path, monkeypatch):
    """A restored file is a scratch copy of what the store keeps durably: flushing it would only cost time."""
    service = FileSystemPersistenceService(str(tmp_path / "blobs"))
    ref = service.save_bytes(b"stored once", "code.py")
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a restored file was fsynced"))
    restored = FileReference(reference_id=ref.reference_id)
    service.recover_file(restored, str(tmp_path / "out"))
    assert open(restored.path, "rb").read() == b"stored once" and os.listdir(tmp_path / "out") == ["code.py"]
