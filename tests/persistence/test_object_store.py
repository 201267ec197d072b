"""What only the S3 blob store does: multipart uploads of bounded memory, conditional writes, ranged reads,
interrupted uploads found by gc, and clear errors for an unreachable endpoint or a missing bucket.

The blob-store conformance suite runs on this backend too (TestObjectStore in test_file_services.py).
"""

import concurrent.futures
import os
import subprocess
import sys
import time
import tracemalloc

import pytest

from mmlib.errors import IntegrityError, InvalidIdError, StoreUnavailableError
from mmlib.persistence import FileReference, open_store
from mmlib.persistence._s3 import ObjectStoreFilePersistenceService, parse_s3_url
from mmlib.save import BaselineSaveService
from mmlib.util.hash import new_hasher
from save_helpers import save_info
from tiny_models import TinyNet

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part: a few parts make a multipart upload


@pytest.fixture
def s3_store(s3_test_location) -> ObjectStoreFilePersistenceService:
    return ObjectStoreFilePersistenceService(s3_test_location, part_size=PART, parallel_parts=2)


def _digest(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def _uploads(store: ObjectStoreFilePersistenceService) -> list:
    return store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])


def test_locations_parse_into_bucket_and_prefix():
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/team/models/") == ("bucket", "team/models/")
    for bad in ("bucket/models", "s3://", "s3://B", "gs://bucket"):
        with pytest.raises(InvalidIdError):
            parse_s3_url(bad)


def test_a_blob_larger_than_a_part_goes_up_in_parts_and_comes_back(s3_store, monkeypatch):
    data = os.urandom(3 * PART + 12345)
    sent = []
    upload_part = s3_store.client.upload_part
    monkeypatch.setattr(s3_store.client, "upload_part", lambda **kwargs: sent.append(kwargs["PartNumber"]) or
                        upload_part(**kwargs))
    digest = s3_store.write_stream(lambda sink: sink.write(data))
    assert sorted(sent) == [1, 2, 3, 4]
    assert bytes(s3_store.read_bytes(f"{digest}/blob")) == data
    assert _uploads(s3_store) == []


def test_upload_and_streamed_download_memory_is_bounded_by_parts_not_by_the_blob(s3_store, tmp_path):
    data = os.urandom(12 * PART)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        digest = s3_store.write_stream(lambda sink: [sink.write(data[start:start + MIB])
                                                     for start in range(0, len(data), MIB)])
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        reference = FileReference(reference_id=f"{digest}/weights.bin")
        s3_store.recover_file(reference, str(tmp_path))
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = (s3_store.parallel_parts + 4) * PART  # parts in flight, the part being consumed, a read chunk, slack
    assert upload_peak < bound < len(data) and download_peak < bound, (upload_peak, download_peak)
    with open(reference.path, "rb") as handle:
        assert handle.read() == data


def test_concurrent_writers_of_the_same_bytes_all_succeed(s3_store):
    small, large = os.urandom(1000), os.urandom(2 * PART + 1)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(lambda data: s3_store.write_stream(lambda sink: sink.write(data)),
                                [small, large] * 3))
    assert len(set(digests[0::2])) == len(set(digests[1::2])) == 1
    assert sorted(s3_store.blob_digests()) == sorted({digests[0], digests[1]})
    assert bytes(s3_store.read_bytes(f"{digests[1]}/x")) == large and _uploads(s3_store) == []


def test_a_write_never_replaces_an_object_already_stored(s3_store, monkeypatch):
    """The conditional write: an object already under the digest's key is kept, even if it differs (another
    writer stored it after this one looked)."""
    digest = s3_store.save_bytes(b"original", "a.bin").reference_id.split("/")[0]
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=s3_store.key(digest), Body=b"tampered")
    monkeypatch.setattr(s3_store, "blob_exists", lambda digest: False)
    s3_store.save_bytes(b"original", "a.bin")
    with pytest.raises(IntegrityError):
        s3_store.read_bytes(f"{digest}/a.bin")


def test_a_ranged_read_of_a_changed_object_raises_integrity_error(s3_store):
    data = os.urandom(2 * PART)
    digest = s3_store.write_stream(lambda sink: sink.write(data))
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=s3_store.key(digest), Body=data[:-1] + b"\0")
    with pytest.raises(IntegrityError):
        s3_store.read_bytes(f"{digest}/x")
    with pytest.raises(IntegrityError):
        s3_store.verify_blob(digest)


def test_gc_aborts_an_interrupted_upload_after_the_grace_period_only(s3_store, tmp_path):
    from mmlib.maintenance import collect_garbage
    from mmlib.persistence import SQLiteDictPersistenceService, Store
    key = s3_store.key("ab" * 32)
    upload = s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key=key)["UploadId"]
    s3_store.client.upload_part(Bucket=s3_store.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * PART)
    assert s3_store.partial_uploads() == [f"{'ab' * 32}/{upload}"]
    store = Store(s3_store, SQLiteDictPersistenceService(str(tmp_path / "meta.sqlite")))
    collect_garbage(store, grace_seconds=3600)
    assert len(_uploads(s3_store)) == 1, "an upload that sent a part just now is still in progress"
    time.sleep(1.1)
    collect_garbage(store, grace_seconds=1)
    assert _uploads(s3_store) == []


def test_a_malformed_upload_id_is_refused(s3_store):
    for bad in ("", "abc", "z" * 64 + "/id", "ab" * 32):
        with pytest.raises(InvalidIdError):
            s3_store.delete_partial_upload(bad)


def test_a_missing_bucket_fails_at_once_with_store_unavailable(s3_test_location):
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        ObjectStoreFilePersistenceService("s3://mmlib-no-such-bucket/models")


def test_a_bucket_removed_after_opening_fails_with_store_unavailable(s3_store):
    bucket = f"mmlib-gone-{os.getpid()}-{time.monotonic_ns()}"
    s3_store.client.create_bucket(Bucket=bucket)
    store = ObjectStoreFilePersistenceService(f"s3://{bucket}/models", part_size=PART)
    s3_store.client.delete_bucket(Bucket=bucket)
    with pytest.raises(StoreUnavailableError, match=f"bucket '{bucket}' does not exist"):
        store.save_bytes(b"nowhere to go", "lost.bin")


@pytest.mark.parametrize("code", ["AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refused_credentials_are_store_unavailable_and_only_expected_codes_propagate(s3_store, code):
    from botocore.exceptions import ClientError

    def refuse(error_code: str, status: int = 403):
        def request():
            raise ClientError({"Error": {"Code": error_code, "Message": "refused"},
                               "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 2}}, "PutObject")
        return request

    with pytest.raises(StoreUnavailableError, match=f"was denied \\({code}\\) when trying to write to"):
        s3_store._call("write to", refuse(code), expected=())
    with pytest.raises(StoreUnavailableError, match="still throttled the request \\(SlowDown\\) after 3 attempts"):
        s3_store._call("write to", refuse("SlowDown", 503), expected=())
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3_store._call("write to", refuse("PreconditionFailed", 412), expected=("PreconditionFailed",))


def test_an_unreachable_endpoint_fails_within_seconds(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        ObjectStoreFilePersistenceService("s3://mmlib-test")
    assert time.monotonic() - started < 10


def test_open_store_puts_blobs_in_the_bucket(tmp_path, s3_test_location):
    store = open_store(str(tmp_path / "store"), blob_dir=s3_test_location)
    assert isinstance(store.file_pers_service, ObjectStoreFilePersistenceService)
    assert store.file_pers_service.url == s3_test_location


def test_the_cli_reports_a_missing_bucket_in_one_line_with_exit_code_3(tmp_path, s3_test_location):
    BaselineSaveService(*open_store(str(tmp_path / "store"))).save_model(save_info(TinyNet()))
    completed = subprocess.run([sys.executable, "-m", "mmlib", "--store", str(tmp_path / "store"), "ls"],
                               env={**os.environ, "MMLIB_BLOB_DIR": "s3://mmlib-no-such-bucket/models"},
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 3, completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1 and "mmlib-no-such-bucket" in completed.stderr
    assert "does not exist" in completed.stderr


def test_a_location_that_is_not_s3_is_invalid():
    with pytest.raises(InvalidIdError):
        ObjectStoreFilePersistenceService("bucket-without-scheme")


def test_reference_round_trip_through_save_file(s3_store, tmp_path):
    path = tmp_path / "code.py"
    path.write_bytes(b"print('hi')\n")
    reference = FileReference(path=str(path))
    s3_store.save_file(reference)
    restored = FileReference(reference_id=reference.reference_id)
    s3_store.recover_file(restored, str(tmp_path / "out"))
    assert open(restored.path, "rb").read() == b"print('hi')\n"


def test_the_streamed_reader_fills_buffers_across_part_boundaries(s3_store):
    from mmlib.persistence._hashing import read_verified
    data = os.urandom(2 * PART + 777)
    digest = s3_store.write_stream(lambda sink: sink.write(data))
    with s3_store._open_blob_reader(digest) as reader:
        assert bytes(read_verified(reader, len(data), digest)) == data


@pytest.mark.parametrize("method, action", [
    ("put_object", "upload blob {digest} to"), ("create_multipart_upload", "start the upload of blob {digest} to"),
    ("upload_part", "upload part \\d of blob {digest} to"),
    ("complete_multipart_upload", "complete the upload of blob {digest} to"),
    ("copy_object", "refresh the time of blob {digest} in"), ("get_object", "read blob {digest} from"),
    ("list_multipart_uploads", "list the unfinished uploads in")])
def test_a_refused_request_says_what_it_was_trying_to_do(s3_store, monkeypatch, method, action):
    """Each request of a save (a small or a multipart upload, refreshing a reused blob), a read and a listing."""
    from botocore.exceptions import ClientError
    small, large = os.urandom(100), os.urandom(2 * PART + 1)
    reused = s3_store.save_bytes(os.urandom(100), "reused.bin")

    def refuse(**kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "refused"}}, method)

    monkeypatch.setattr(s3_store.client, method, refuse)
    run = {"put_object": lambda: s3_store.save_bytes(small, "small.bin"),
           "copy_object": lambda: s3_store.save_bytes(bytes(s3_store.read_bytes(reused.reference_id)), "again.bin"),
           "get_object": lambda: s3_store.read_bytes(reused.reference_id),
           "list_multipart_uploads": s3_store.partial_upload_times}.get(method,
                                                                         lambda: s3_store.save_bytes(large, "l.bin"))
    digest = {"put_object": _digest(small), "copy_object": reused.reference_id.split("/")[0],
              "get_object": reused.reference_id.split("/")[0]}.get(method, _digest(large))
    with pytest.raises(StoreUnavailableError, match=f"was denied \\(AccessDenied\\) when trying to "
                                                    f"{action.format(digest=digest)} it;"):
        run()


@pytest.mark.parametrize("part_size, parallel_parts", [(5 * MIB - 1, 2), (PART, 0)])
def test_parts_smaller_than_s3_allows_are_refused(s3_test_location, part_size, parallel_parts):
    with pytest.raises(InvalidIdError, match=f"part_size must be at least 5 MiB \\(S3's minimum\\) and "
                                             f"parallel_parts at least 1, got {part_size} and {parallel_parts}"):
        ObjectStoreFilePersistenceService(s3_test_location, part_size=part_size, parallel_parts=parallel_parts)
