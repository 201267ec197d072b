"""Stored directories: the archive of a directory depends on its file names and contents only."""

import io
import os
import tarfile

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
