"""Conformance suites for the two store interfaces: every mmlib backend runs them, and so can anyone else's.

Subclass a suite in a pytest module under a name that starts with `Test`, override its `store` fixture so it
gives a fresh, empty store of your backend (it may ask for any fixture), and implement the suite's hooks;
every test of the suite then runs on your backend::

    import pytest
    from mmlib.testing.stores import FileStoreTests

    class TestMyBlobStore(FileStoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyBlobStore(str(tmp_path / "blobs"))

        def corrupt(self, store, digest):
            ...  # change one byte of the stored blob without going through `store`

The hooks work behind the store's back (zarr's store tests do the same), so the suite checks what really
landed, not what the store says landed. This module imports pytest; nothing else in mmlib imports it. To see
the values in a failing assertion, call `pytest.register_assert_rewrite("mmlib.testing.stores")` in your
conftest.py before anything imports this module.
"""

import multiprocessing
import os
import re
import time
from typing import Any, Callable

import pytest

from mmlib.errors import BlobNotFoundError, IntegrityError, InvalidIdError, InvalidSaveInfoError, \
    ModelNotFoundError
from mmlib.persistence._hashing import CHUNK_SIZE
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, FileReference
from mmlib.util.hash import new_hasher

__all__ = ["DictStoreTests", "FileStoreTests"]

ADDERS = 4
FIELDS_PER_ADDER = 25
CLAIMS_PER_CLAIMER = 10


def _write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)
    return str(path)


class _WriteFailed(Exception):
    pass


class FileStoreTests:
    """The contract of a blob store (`FilePersistenceService`).

    A subclass overrides the `store` fixture and implements `corrupt`.
    """

    @pytest.fixture
    def store(self) -> FilePersistenceService:
        """A fresh, empty store of the backend under test."""
        raise NotImplementedError(f"{type(self).__name__} must override the `store` fixture")

    def corrupt(self, store: FilePersistenceService, digest: str) -> None:
        """Flip one byte of the stored blob `digest` behind the store's back (not through its API)."""
        raise NotImplementedError(f"{type(self).__name__} must implement corrupt(store, digest)")

    def test_save_and_recover_restores_name_and_bytes(self, store, tmp_path):
        ref = FileReference(path=_write(tmp_path / "src" / "weights.bin", b"abc" * 1000))
        store.save_file(ref)
        assert isinstance(ref.reference_id, str)
        restored = FileReference(reference_id=ref.reference_id)
        store.recover_file(restored, str(tmp_path / "out"))
        assert restored.path == str(tmp_path / "out" / "weights.bin")
        assert open(restored.path, "rb").read() == b"abc" * 1000

    def test_identical_bytes_are_stored_once_but_keep_their_names(self, store, tmp_path):
        first = FileReference(path=_write(tmp_path / "a" / "model.py", b"same bytes"))
        second = FileReference(path=_write(tmp_path / "b" / "other.py", b"same bytes"))
        store.save_file(first)
        store.save_file(second)
        assert len(list(store.blob_digests())) == 1
        restored = FileReference(reference_id=second.reference_id)
        store.recover_file(restored, str(tmp_path / "out"))
        assert restored.path is not None and os.path.basename(restored.path) == "other.py"

    def test_file_size_is_the_stored_byte_count(self, store, tmp_path):
        contents = [os.urandom(size) for size in (12345, 678)]
        refs = [FileReference(path=_write(tmp_path / f"{len(data)}.bin", data)) for data in contents]
        for ref in refs:
            store.save_file(ref)
        for ref, data in zip(refs, contents):
            store.file_size(ref)
            assert ref.size == len(data)
            assert store.read_bytes(ref.stored_id()) == data

    def test_save_bytes_round_trip(self, store):
        ref = store.save_bytes(b"payload", "p.bin")
        assert store.read_bytes(ref.reference_id) == b"payload"
        assert store.save_bytes(b"payload", "p.bin").reference_id == ref.reference_id

    def test_directory_round_trip_is_reproducible(self, store, tmp_path):
        for name, data in [("x/1.txt", b"one"), ("y/2.txt", b"two"), ("3.txt", b"three")]:
            _write(tmp_path / "data" / name, data)
        ref = FileReference(path=str(tmp_path / "data"))
        store.save_file(ref)
        again = FileReference(path=str(tmp_path / "data"))
        store.save_file(again)
        assert again.reference_id == ref.reference_id
        restored = FileReference(reference_id=ref.reference_id)
        store.recover_file(restored, str(tmp_path / "out"))
        assert restored.path is not None
        assert open(os.path.join(restored.path, "y", "2.txt"), "rb").read() == b"two"

    def test_corrupted_blob_raises_integrity_error(self, store, tmp_path):
        ref = store.save_bytes(b"0123456789" * 100, "w.bin")
        self.corrupt(store, ref.reference_id.split("/")[0])
        with pytest.raises(IntegrityError, match="is corrupted: its bytes hash to [0-9a-f]{64}; run `mmlib verify`"):
            store.read_bytes(ref.reference_id)
        with pytest.raises(IntegrityError):
            store.recover_file(FileReference(reference_id=ref.reference_id), str(tmp_path / "out"))
        assert not os.path.exists(tmp_path / "out" / "w.bin")

    def test_a_blob_read_front_to_back_gives_its_bytes_and_checks_them_at_the_end(self, store):
        data = bytes(range(256)) * 40_000  # several read chunks
        ref = store.save_bytes(data, "w.bin")
        with store.verified_reader(ref.reference_id) as reader:
            assert reader.size == len(data)
            assert bytes(reader.read(10)) == data[:10]
            reader.skip_to(5_000_003)  # skipped bytes are hashed too
            piece = memoryview(bytearray(3 << 20))
            reader.readinto(piece)
            assert bytes(piece) == data[5_000_003:5_000_003 + (3 << 20)]
            with pytest.raises(IntegrityError, match="overlap"):
                reader.skip_to(10)
            reader.finish()
        self.corrupt(store, ref.reference_id.split("/")[0])
        with store.verified_reader(ref.reference_id) as reader:
            reader.read(100)
            with pytest.raises(IntegrityError, match="is corrupted: its bytes hash to [0-9a-f]{64}"):
                reader.finish()

    def test_a_missing_blob_is_not_found_and_a_malformed_id_is_invalid(self, store, tmp_path):
        missing = "0" * 64
        says_what_to_do = rf"blob {missing} is missing from .*; restore it from a backup or run `mmlib verify`"
        with pytest.raises(BlobNotFoundError, match=says_what_to_do) as read:
            store.read_bytes(f"{missing}/x.bin")
        with pytest.raises(BlobNotFoundError, match=says_what_to_do):
            store.recover_file(FileReference(reference_id=f"{missing}/x.bin"), str(tmp_path))
        assert isinstance(read.value, ModelNotFoundError), "callers that catch ModelNotFoundError keep working"
        with pytest.raises(InvalidIdError, match=r"'../../etc/passwd' is not a file reference id \(expected "
                                                 r"'<digest>/<file name>'\); pass the reference_id a save set"):
            store.recover_file(FileReference(reference_id="../../etc/passwd"), str(tmp_path))

    def test_a_reference_id_climbing_out_of_the_target_is_refused_and_writes_nothing(self, store, tmp_path):
        _write(tmp_path / "data" / "1.txt", b"one")
        stored = FileReference(path=str(tmp_path / "data"))
        store.save_file(stored)
        digest = stored.stored_id().split("/")[0]
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(InvalidIdError):
            store.recover_file(FileReference(reference_id=f"{digest}/../escaped/"), str(tmp_path / "out"))
        assert sorted(os.listdir(tmp_path)) == before

    def test_saving_a_missing_path_raises(self, store, tmp_path):
        with pytest.raises(InvalidSaveInfoError):
            store.save_file(FileReference(path=str(tmp_path / "nope")))

    def test_delete_blob(self, store):
        ref = store.save_bytes(b"to delete", "d.bin")
        digest = ref.reference_id.split("/")[0]
        assert store.blob_exists(digest)
        store.delete_blob(digest)
        assert not store.blob_exists(digest)
        assert list(store.blob_digests()) == []

    def test_delete_blob_removes_only_that_blob(self, store):
        kept = store.save_bytes(b"to keep", "k.bin")
        digest = store.save_bytes(b"to delete", "d.bin").reference_id.split("/")[0]
        store.delete_blob(digest)
        store.delete_blob(digest)  # a missing blob is not an error
        assert list(store.blob_digests()) == [kept.reference_id.split("/")[0]]
        assert store.read_bytes(kept.reference_id) == b"to keep"

    def test_a_file_larger_than_a_read_chunk_round_trips(self, store, tmp_path):
        data = os.urandom(CHUNK_SIZE + 12345)
        ref = FileReference(path=_write(tmp_path / "src" / "big.bin", data))
        store.save_file(ref)
        assert ref.stored_id() == f"{new_hasher().update(data).hexdigest()}/big.bin"
        restored = FileReference(reference_id=ref.reference_id)
        store.recover_file(restored, str(tmp_path / "out"))
        assert restored.path is not None and open(restored.path, "rb").read() == data

    @pytest.mark.parametrize("upload_id", ["not-an-upload-id", "../x", "", None])
    def test_a_malformed_upload_id_is_an_invalid_id_not_a_missing_one(self, store, upload_id):
        with pytest.raises(InvalidIdError, match=re.escape(f"{upload_id!r} is not an upload id of this store; list "
                                                           "them with partial_uploads()")):
            store.delete_partial_upload(upload_id)

    def test_a_failed_write_leaves_no_blob_and_no_partial_upload(self, store):
        def produce(sink) -> None:
            sink.write(b"x" * (3 * 1024 * 1024))
            raise _WriteFailed("the producer failed half way")

        with pytest.raises(_WriteFailed):
            store.write_stream(produce)
        assert (list(store.blob_digests()), store.partial_uploads()) == ([], [])

    def test_a_failed_commit_leaves_no_blob_and_no_partial_upload(self, store, monkeypatch):
        def fail(service, handle, digest) -> None:
            raise _WriteFailed("committing failed")

        monkeypatch.setattr(type(store), "_commit_blob", fail)
        with pytest.raises(_WriteFailed):
            store.save_bytes(b"never stored", "lost.bin")
        assert (list(store.blob_digests()), store.partial_uploads()) == ([], [])

    def test_reusing_a_stored_blob_refreshes_its_time(self, store):
        tick = max(0.05, 1.1 * store.time_resolution_s)
        digest = store.save_bytes(b"shared bytes", "a.bin").reference_id.split("/")[0]
        first = store.blob_times()[digest]
        time.sleep(tick)
        store.save_bytes(b"shared bytes", "b.bin")
        assert store.blob_times()[digest] > first
        time.sleep(tick)
        store.write_stream(lambda sink: sink.write(b"shared bytes"))
        assert store.blob_times()[digest] > first and abs(first - time.time()) < 60


def _add_fields(reopen, store: DictPersistenceService, dict_id: str, adder: int, start) -> None:
    store = reopen(store)
    start.wait()
    for number in range(FIELDS_PER_ADDER):
        store.add_field(dict_id, "thing", f"field-{adder}-{number}", number)


def results_of_processes(context: Any, target: Callable[..., None], arguments: list[tuple], results: Any,
                         count: int, timeout: float = 120) -> list:
    """Start one process of `context` per argument tuple, all running `target(*arguments, results)`, and return the
    `count` items they put on the `results` queue; each process must exit cleanly."""
    processes = [context.Process(target=target, args=(*process_arguments, results)) for process_arguments in arguments]
    for process in processes:
        process.start()
    collected = [results.get(timeout=timeout) for _ in range(count)]
    for process in processes:
        process.join(timeout=timeout)
    assert [process.exitcode for process in processes] == [0] * len(processes)
    return collected


def _claim_ids(reopen, store: DictPersistenceService, claimer: int, start, claimed) -> None:
    """Claim ids `claim-0`, `claim-1`, ... with insert_dict, each the next one this process did not get."""
    store = reopen(store)
    start.wait()
    number = 0
    for _ in range(CLAIMS_PER_CLAIMER):
        while not store.insert_dict({"id": f"claim-{number}", "claimer": claimer}, "thing"):
            number += 1
        claimed.put((claimer, number))


class DictStoreTests:
    """The contract of a document store (`DictPersistenceService`).

    A subclass overrides the `store` fixture and implements `reopen`.
    """

    @pytest.fixture
    def store(self) -> DictPersistenceService:
        """A fresh, empty store of the backend under test."""
        raise NotImplementedError(f"{type(self).__name__} must override the `store` fixture")

    def reopen(self, store: DictPersistenceService) -> DictPersistenceService:
        """A new store object on the same documents, as another process opens it (a forked child calls this:
        it must not use its parent's connections)."""
        raise NotImplementedError(f"{type(self).__name__} must implement reopen(store)")

    def test_save_and_recover_round_trip(self, store):
        document = {"a": 1, "nested": {"b": [1, 2, "x"]}, "s": "text"}
        dict_id = store.save_dict(document, "thing")
        assert isinstance(dict_id, str)
        assert store.recover_dict(dict_id, "thing") == document

    def test_given_id_is_used(self, store):
        assert store.save_dict({"id": "fixed-id", "v": 1}, "thing") == "fixed-id"
        assert store.recover_dict("fixed-id", "thing")["v"] == 1

    def test_generated_ids_are_unique_strings(self, store):
        ids = {store.generate_id() for _ in range(100)}
        assert len(ids) == 100 and all(isinstance(i, str) for i in ids)

    def test_id_exists_is_true_only_for_stored_documents(self, store):
        dict_id = store.save_dict({"v": 1}, "thing")
        assert store.id_exists(dict_id, "thing")
        assert not store.id_exists(dict_id, "other_type")
        assert not store.id_exists("no-such-id", "thing")

    def test_unknown_id_raises_model_not_found_which_is_a_key_error(self, store):
        with pytest.raises(ModelNotFoundError) as info:
            store.recover_dict("no-such-id", "thing")
        assert isinstance(info.value, KeyError)
        assert "no-such-id" in str(info.value)
        with pytest.raises(KeyError, match="no thing document with id 'no-such-id'"):
            store.dict_size("no-such-id", "thing")

    def test_all_ids_for_type_lists_in_insertion_order(self, store):
        ids = [store.save_dict({"n": n}, "thing") for n in range(5)]
        store.save_dict({"n": 99}, "other")
        assert store.all_ids_for_type("thing") == ids
        assert store.all_ids_for_type("missing") == []

    def test_add_field_sets_a_value(self, store):
        dict_id = store.save_dict({"v": 1}, "thing")
        store.add_field(dict_id, "thing", "extra", {"k": [1, 2]})
        assert store.recover_dict(dict_id, "thing") == {"v": 1, "extra": {"k": [1, 2]}}
        with pytest.raises(ModelNotFoundError):
            store.add_field("no-such-id", "thing", "extra", 1)

    def test_processes_adding_fields_to_one_document_at_once_keep_every_field(self, store):
        dict_id = store.save_dict({"v": 1}, "thing")
        context = multiprocessing.get_context("fork")
        start = context.Barrier(ADDERS)
        adders = [context.Process(target=_add_fields, args=(self.reopen, store, dict_id, adder, start))
                  for adder in range(ADDERS)]
        for process in adders:
            process.start()
        for process in adders:
            process.join(timeout=120)
        assert [process.exitcode for process in adders] == [0] * ADDERS
        expected = {f"field-{adder}-{number}": number for adder in range(ADDERS)
                    for number in range(FIELDS_PER_ADDER)}
        assert store.recover_dict(dict_id, "thing") == {"v": 1, **expected}

    def test_insert_dict_stores_only_a_new_id_and_leaves_an_existing_one_unchanged(self, store):
        assert store.insert_dict({"id": "first", "v": 1}, "thing")
        assert not store.insert_dict({"id": "first", "v": 2}, "thing")
        assert store.recover_dict("first", "thing") == {"id": "first", "v": 1}
        assert store.insert_dict({"id": "first", "v": 3}, "other")
        assert store.all_ids_for_type("thing") == ["first"]

    def test_processes_claiming_ids_at_once_each_get_distinct_ones_without_gaps(self, store):
        context = multiprocessing.get_context("fork")
        start = context.Barrier(ADDERS)
        results = results_of_processes(context, _claim_ids, [(self.reopen, store, claimer, start)
                                                             for claimer in range(ADDERS)],
                                       context.Queue(), ADDERS * CLAIMS_PER_CLAIMER)
        numbers = sorted(number for _, number in results)
        assert numbers == list(range(ADDERS * CLAIMS_PER_CLAIMER))
        for claimer, number in results:
            assert store.recover_dict(f"claim-{number}", "thing")["claimer"] == claimer

    def test_dict_size_grows_with_content(self, store):
        small = store.save_dict({"v": "x"}, "thing")
        large = store.save_dict({"v": "x" * 1000}, "thing")
        assert 0 < store.dict_size(small, "thing") < store.dict_size(large, "thing")

    def test_saving_an_existing_id_again_keeps_one_document(self, store):
        store.save_dict({"id": "same", "v": 1}, "thing")
        store.save_dict({"id": "same", "v": 1}, "thing")
        assert store.all_ids_for_type("thing") == ["same"]

    def test_delete_and_types(self, store):
        dict_id = store.save_dict({"v": 1}, "thing")
        store.save_dict({"v": 1}, "other")
        assert {"thing", "other"} <= set(store.all_types())
        store.delete_dict(dict_id, "thing")
        store.delete_dict(dict_id, "thing")
        assert not store.id_exists(dict_id, "thing")

    def test_delete_dict_removes_only_that_document(self, store):
        kept = store.save_dict({"v": 1}, "thing")
        same_id_other_type = store.save_dict({"id": "doomed", "v": 2}, "other")
        doomed = store.save_dict({"id": "doomed", "v": 3}, "thing")
        store.delete_dict(doomed, "thing")
        assert store.all_ids_for_type("thing") == [kept]
        assert store.recover_dict(same_id_other_type, "other") == {"id": "doomed", "v": 2}
        assert list(store.document_times("thing")) == [kept]

    def test_saving_a_document_again_refreshes_its_time(self, store):
        dict_id = store.save_dict({"id": "content-1", "value": 1}, "thing")
        first = store.document_times("thing")[dict_id]
        time.sleep(0.02)
        store.save_dict({"id": "content-1", "value": 1}, "thing")
        assert store.document_times("thing")[dict_id] > first
        assert abs(first - time.time()) < 60
