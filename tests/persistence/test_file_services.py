"""Conformance suite for FilePersistenceService, run against every backend."""

import os
import time

import pytest

from mmlib.errors import IntegrityError, InvalidIdError, InvalidSaveInfoError, ModelNotFoundError
from mmlib.persistence import FileReference


def _write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)
    return str(path)


def test_save_and_recover_restores_name_and_bytes(file_service, tmp_path):
    ref = FileReference(path=_write(tmp_path / "src" / "weights.bin", b"abc" * 1000))
    file_service.save_file(ref)
    assert isinstance(ref.reference_id, str)
    restored = FileReference(reference_id=ref.reference_id)
    file_service.recover_file(restored, str(tmp_path / "out"))
    assert restored.path == str(tmp_path / "out" / "weights.bin")
    assert open(restored.path, "rb").read() == b"abc" * 1000


def test_identical_bytes_are_stored_once_but_keep_their_names(file_service, tmp_path):
    first = FileReference(path=_write(tmp_path / "a" / "model.py", b"same bytes"))
    second = FileReference(path=_write(tmp_path / "b" / "other.py", b"same bytes"))
    file_service.save_file(first)
    file_service.save_file(second)
    assert len(list(file_service.blob_digests())) == 1
    restored = FileReference(reference_id=second.reference_id)
    file_service.recover_file(restored, str(tmp_path / "out"))
    assert os.path.basename(restored.path) == "other.py"


def test_file_size_is_the_stored_byte_count(file_service, tmp_path):
    ref = FileReference(path=_write(tmp_path / "f.bin", os.urandom(12345)))
    file_service.save_file(ref)
    file_service.file_size(ref)
    assert ref.size == 12345


def test_save_bytes_round_trip(file_service):
    ref = file_service.save_bytes(b"payload", "p.bin")
    assert file_service.read_bytes(ref.reference_id) == b"payload"
    assert file_service.save_bytes(b"payload", "p.bin").reference_id == ref.reference_id


def test_directory_round_trip_is_reproducible(file_service, tmp_path):
    for name, data in [("x/1.txt", b"one"), ("y/2.txt", b"two"), ("3.txt", b"three")]:
        _write(tmp_path / "data" / name, data)
    ref = FileReference(path=str(tmp_path / "data"))
    file_service.save_file(ref)
    again = FileReference(path=str(tmp_path / "data"))
    file_service.save_file(again)
    assert again.reference_id == ref.reference_id
    restored = FileReference(reference_id=ref.reference_id)
    file_service.recover_file(restored, str(tmp_path / "out"))
    assert open(os.path.join(restored.path, "y", "2.txt"), "rb").read() == b"two"


def test_corrupted_blob_raises_integrity_error(file_service, tmp_path, corrupt_blob):
    ref = file_service.save_bytes(b"0123456789" * 100, "w.bin")
    corrupt_blob(file_service, ref.reference_id.split("/")[0])
    with pytest.raises(IntegrityError, match="corrupted"):
        file_service.read_bytes(ref.reference_id)
    with pytest.raises(IntegrityError):
        file_service.recover_file(FileReference(reference_id=ref.reference_id), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "w.bin")


def test_a_missing_blob_is_not_found_and_a_malformed_id_is_invalid(file_service, tmp_path):
    with pytest.raises(ModelNotFoundError):
        file_service.read_bytes("0" * 64 + "/x.bin")
    with pytest.raises(InvalidIdError):
        file_service.recover_file(FileReference(reference_id="../../etc/passwd"), str(tmp_path))


def test_a_reference_id_climbing_out_of_the_target_is_refused_and_writes_nothing(file_service, tmp_path):
    _write(tmp_path / "data" / "1.txt", b"one")
    stored = FileReference(path=str(tmp_path / "data"))
    file_service.save_file(stored)
    digest = stored.reference_id.split("/")[0]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InvalidIdError):
        file_service.recover_file(FileReference(reference_id=f"{digest}/../escaped/"), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == before


def test_saving_a_missing_path_raises(file_service, tmp_path):
    with pytest.raises(InvalidSaveInfoError):
        file_service.save_file(FileReference(path=str(tmp_path / "nope")))


def test_delete_blob(file_service):
    ref = file_service.save_bytes(b"to delete", "d.bin")
    digest = ref.reference_id.split("/")[0]
    assert file_service.blob_exists(digest)
    file_service.delete_blob(digest)
    assert not file_service.blob_exists(digest)
    assert list(file_service.blob_digests()) == []


class _WriteFailed(Exception):
    pass


def test_a_failed_write_leaves_no_blob_and_no_partial_upload(file_service):
    def produce(sink) -> None:
        sink.write(b"x" * (3 * 1024 * 1024))
        raise _WriteFailed("the producer failed half way")

    with pytest.raises(_WriteFailed):
        file_service.write_stream(produce)
    assert (list(file_service.blob_digests()), file_service.partial_uploads()) == ([], [])


def test_a_failed_commit_leaves_no_blob_and_no_partial_upload(file_service, monkeypatch):
    def fail(service, handle, digest) -> None:
        raise _WriteFailed("committing failed")

    monkeypatch.setattr(type(file_service), "_commit_blob", fail)
    with pytest.raises(_WriteFailed):
        file_service.save_bytes(b"never stored", "lost.bin")
    assert (list(file_service.blob_digests()), file_service.partial_uploads()) == ([], [])


def test_reusing_a_stored_blob_refreshes_its_time(file_service):
    tick = max(0.05, 1.1 * file_service.time_resolution_s)
    digest = file_service.save_bytes(b"shared bytes", "a.bin").reference_id.split("/")[0]
    first = file_service.blob_times()[digest]
    time.sleep(tick)
    file_service.save_bytes(b"shared bytes", "b.bin")
    assert file_service.blob_times()[digest] > first
    time.sleep(tick)
    file_service.write_stream(lambda sink: sink.write(b"shared bytes"))
    assert file_service.blob_times()[digest] > first and abs(first - time.time()) < 60
