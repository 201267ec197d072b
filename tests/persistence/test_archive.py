"""Stored directories: the archive of a directory depends on its file names and contents only."""

import io
import os
import tarfile

import pytest

from mmlib.errors import IntegrityError
from mmlib.persistence import FileSystemPersistenceService
from mmlib.persistence.base import FileReference


def test_touching_the_files_of_a_directory_does_not_change_its_archive(tmp_path):
    store = FileSystemPersistenceService(str(tmp_path / "blobs"))
    files = [tmp_path / "data" / name for name in ("a.txt", os.path.join("sub", "b.txt"))]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(path.name.encode())
    first = FileReference(path=str(tmp_path / "data"))
    store.save_file(first)
    for path in files:
        os.utime(path, (1_000_000_000, 1_000_000_000))
    again = FileReference(path=str(tmp_path / "data"))
    store.save_file(again)
    assert again.stored_id() == first.stored_id() and len(list(store.blob_digests())) == 1


def test_the_archive_holds_each_file_once_under_its_path_in_the_directory(tmp_path):
    store = FileSystemPersistenceService(str(tmp_path / "blobs"))
    for name in ("a.txt", "b.txt", os.path.join("sub", "c.txt")):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(name.encode())
    ref = FileReference(path=str(tmp_path / "data"))
    store.save_file(ref)
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(ref.stored_id())), mode="r") as archive:
        assert archive.getnames() == ["a.txt", "b.txt", "sub/c.txt"]
        members = archive.getmembers()
    leaked = [(member.name, member.uid, member.gid, member.uname, member.gname, member.mtime) for member in members
              if (member.uid, member.gid, member.uname, member.gname, member.mtime) != (0, 0, "", "", 0)]
    assert leaked == [], "the archive keeps no owner or time of the saving machine"


def test_a_stored_directory_that_is_no_archive_says_how_to_recover(tmp_path):
    store = FileSystemPersistenceService(str(tmp_path / "blobs"))
    digest = store.save_bytes(b"not a tar archive" * 64, "d").stored_id().split("/")[0]
    with pytest.raises(IntegrityError, match=rf"(?s)the stored directory {digest}/d/ is not an archive mmlib would "
                                             r"write .*nothing outside .* was written: run `mmlib verify` and restore "
                                             "the store from a backup"):
        store.recover_file(FileReference(reference_id=f"{digest}/d/"), str(tmp_path / "out"))


def test_a_compressed_archive_is_not_unpacked(tmp_path):
    store = FileSystemPersistenceService(str(tmp_path / "blobs"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_bytes(b"a")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as archive:
        archive.add(str(tmp_path / "data" / "a.txt"), arcname="a.txt")
    digest = store.save_bytes(packed.getvalue(), "d").stored_id().split("/")[0]
    with pytest.raises(IntegrityError, match="not an archive mmlib would write"):
        store.recover_file(FileReference(reference_id=f"{digest}/d/"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "d" / "a.txt").exists()
