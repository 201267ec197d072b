"""The S3 blob store behind a fault-injecting proxy (mmlib.testing.fault_proxy): transient throttling, 5xx answers,
connections cut mid-upload or mid-download and stalls are retried and the blob comes back exact; persistent ones
become StoreUnavailableError naming what failed, and a failed save leaves no object, no unfinished upload and, on
the public save path, no model.

The store's botocore client makes two attempts per request here (one retry, backing off up to a second) and gives
up on an answer after a second, so every test takes seconds.
"""

import os

import pytest
import torch

from mmlib import maintenance
from mmlib.errors import StoreUnavailableError
from mmlib.persistence import SQLiteDictPersistenceService, Store, _s3, open_store
from mmlib.persistence._s3 import ObjectStoreFilePersistenceService
from mmlib.save import BaselineSaveService
from mmlib.testing.fault_proxy import ANSWER, CUT_REQUEST, CUT_RESPONSE, STALL, FaultProxy
from mmlib.util.hash import new_hasher
from save_helpers import save_info
from tiny_models import TinyNet
from zoo_models import TiedDecoderLM

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part
PART_UPLOAD = ("PUT", "partNumber=")  # (method, target) of upload_part requests
SINGLE_UPLOAD = ("PUT", "")  # a blob of one part is one PUT (faults on PUT that claim parts too are fine)
COMPLETE = ("POST", "uploadId=")


def _digest(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.hexdigest()


@pytest.fixture
def direct(s3_test_location) -> ObjectStoreFilePersistenceService:
    """The store under test without the proxy: what really landed in the bucket."""
    return ObjectStoreFilePersistenceService(s3_test_location, part_size=PART)


@pytest.fixture
def proxy(direct, monkeypatch):
    """A fault proxy in front of the test endpoint; stores opened in the test reach the endpoint through it."""
    upstream = os.environ.get("AWS_ENDPOINT_URL")
    if not upstream:
        pytest.skip("MMLIB_TEST_S3_URI names AWS itself (no AWS_ENDPOINT_URL): the proxy needs an endpoint URL")
    monkeypatch.setattr(_s3, "ATTEMPTS", 2)
    monkeypatch.setattr(_s3, "READ_TIMEOUT_S", 1)
    with FaultProxy(upstream) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.url)
        yield running


@pytest.fixture
def store(proxy, s3_test_location) -> ObjectStoreFilePersistenceService:
    """The store under test, through the proxy."""
    return ObjectStoreFilePersistenceService(s3_test_location, part_size=PART, parallel_parts=2)


def _leftovers(direct: ObjectStoreFilePersistenceService) -> tuple[list, list]:
    """(objects, unfinished multipart uploads) under the test's prefix, as the endpoint lists them."""
    objects = direct.client.list_objects_v2(Bucket=direct.bucket, Prefix=direct.prefix).get("Contents", [])
    uploads = direct.client.list_multipart_uploads(Bucket=direct.bucket, Prefix=direct.prefix).get("Uploads", [])
    return [entry["Key"] for entry in objects], uploads


@pytest.mark.parametrize("kind, request_kind, size", [
    (ANSWER, PART_UPLOAD, 3 * PART + 123), (CUT_REQUEST, PART_UPLOAD, 3 * PART + 123),
    (ANSWER, COMPLETE, 2 * PART + 1), (CUT_REQUEST, COMPLETE, 2 * PART + 1),
    (ANSWER, SINGLE_UPLOAD, 1000), (CUT_REQUEST, SINGLE_UPLOAD, MIB)])
def test_a_transient_fault_during_an_upload_is_retried_and_the_blob_is_exact(store, proxy, direct, kind,
                                                                              request_kind, size):
    data = os.urandom(size)
    fault = proxy.inject(kind, method=request_kind[0], target=request_kind[1], times=1)
    digest = store.write_stream(lambda sink: sink.write(data))
    assert fault.served == 1
    assert digest == _digest(data) and bytes(direct.read_bytes(f"{digest}/x")) == data
    assert _leftovers(direct) == ([direct.key(digest)], [])


def test_throttling_of_several_parts_at_once_is_retried(store, proxy, direct):
    """Two parts in flight are both throttled once: each succeeds on its retry."""
    data = os.urandom(4 * PART)
    fault = proxy.inject(ANSWER, method="PUT", target="partNumber=", times=2)
    digest = store.write_stream(lambda sink: sink.write(data))
    assert fault.served == 2 and bytes(direct.read_bytes(f"{digest}/x")) == data


@pytest.mark.parametrize("kind", [ANSWER, CUT_RESPONSE])
def test_a_transient_fault_during_a_read_is_retried_and_the_bytes_are_exact(store, proxy, direct, kind, tmp_path):
    """A 503 is retried by botocore; an answer cut mid-body by the store, which sends the ranged GET again."""
    data = os.urandom(2 * PART + 99)
    digest = direct.write_stream(lambda sink: sink.write(data))
    fault = proxy.inject(kind, method="GET", target=direct.key(digest), times=1)
    assert bytes(store.read_bytes(f"{digest}/x")) == data
    proxy.inject(kind, method="GET", target=direct.key(digest), times=1)
    store.verify_blob(digest)
    assert fault.served == 1


@pytest.mark.parametrize("kind, status, code, request_kind, size, action", [
    (ANSWER, 503, "SlowDown", PART_UPLOAD, 3 * PART, "upload part \\d of blob {digest} to"),
    (ANSWER, 500, "InternalError", PART_UPLOAD, 3 * PART, "upload part \\d of blob {digest} to"),
    (CUT_REQUEST, 0, "", PART_UPLOAD, 3 * PART, "upload part \\d of blob {digest} to"),
    (STALL, 0, "", PART_UPLOAD, 3 * PART, "upload part \\d of blob {digest} to"),
    (ANSWER, 503, "SlowDown", COMPLETE, 2 * PART + 1, "complete the upload of blob {digest} to"),
    (ANSWER, 503, "SlowDown", SINGLE_UPLOAD, 1000, "upload blob {digest} to"),
    (ANSWER, 502, "BadGateway", SINGLE_UPLOAD, 1000, "upload blob {digest} to"),
    (CUT_REQUEST, 0, "", SINGLE_UPLOAD, MIB, "upload blob {digest} to")])
def test_a_persistent_fault_during_an_upload_is_store_unavailable_and_leaves_no_object(
        store, proxy, direct, kind, status, code, request_kind, size, action):
    data = os.urandom(size)
    proxy.inject(kind, method=request_kind[0], target=request_kind[1], status=status, code=code)
    with pytest.raises(StoreUnavailableError, match=f"^cannot {action.format(digest=_digest(data))} "
                                                    f"{store.url}: .*; (try again later|check)") as raised:
        store.write_stream(lambda sink: sink.write(data))
    assert "\n" not in str(raised.value)
    assert _leftovers(direct) == ([], []), "the failed upload was aborted, nothing was completed"


def test_after_a_failed_part_no_further_parts_are_sent(store, proxy, direct):
    """A part refused at once (no retries) stops the upload: the parts not yet started are never sent."""
    data = os.urandom(8 * PART)
    proxy.inject(ANSWER, method="PUT", target="partNumber=1", status=400, code="InvalidRequest")
    with pytest.raises(StoreUnavailableError, match="upload part 1 of blob"):
        store.write_stream(lambda sink: sink.write(data))
    parts_sent = {target.split("partNumber=")[1].split("&")[0] for method, target, _ in proxy.requests
                  if "partNumber=" in target}
    assert len(parts_sent) < 8 and _leftovers(direct) == ([], [])


@pytest.mark.parametrize("kind, message", [
    (ANSWER, "still throttled the request \\(SlowDown\\) after 2 attempts"), (CUT_RESPONSE, "broke the connection"),
    (STALL, "did not answer in time")])
def test_a_persistent_fault_during_a_read_names_the_blob(store, proxy, direct, kind, message):
    data = os.urandom(PART + 1)
    digest = direct.write_stream(lambda sink: sink.write(data))
    proxy.inject(kind, method="GET", target=direct.key(digest))
    with pytest.raises(StoreUnavailableError, match=f"^cannot read blob {digest} from {store.url}: .*{message}"):
        store.read_bytes(f"{digest}/x")
    with pytest.raises(StoreUnavailableError, match=f"^cannot read blob {digest} from"):
        store.verify_blob(digest)


@pytest.mark.parametrize("method, target, action, call", [
    ("HEAD", "", "look up blob {digest} in", lambda store, digest: store.blob_exists(digest)),
    ("GET", "list-type=2", "list the blobs in", lambda store, digest: list(store.blob_digests())),
    ("GET", "?uploads", "list the unfinished uploads in", lambda store, digest: store.partial_uploads()),
    ("DELETE", "", "delete blob {digest} from", lambda store, digest: store.delete_blob(digest))])
def test_persistent_throttling_of_other_requests_says_what_was_attempted(store, proxy, direct, method, target,
                                                                         action, call):
    digest = direct.save_bytes(b"some bytes", "a.bin").reference_id.split("/")[0]
    proxy.inject(ANSWER, method=method, target=target)
    with pytest.raises(StoreUnavailableError, match=f"^cannot {action.format(digest=digest)} {store.url}: the "
                                                    f"object store at {proxy.url} still throttled"):
        call(store, digest)


@pytest.fixture
def save_service(proxy, tmp_path, s3_test_location, request) -> BaselineSaveService:
    """A save service over the public store opener (a store directory, blobs in the bucket) or, for multipart
    uploads, over a Store with 5 MiB parts; its blob store reaches the bucket through the proxy."""
    if request.param == "open_store":
        return BaselineSaveService(*open_store(str(tmp_path / "store"), blob_dir=s3_test_location))
    blobs = ObjectStoreFilePersistenceService(s3_test_location, part_size=PART, parallel_parts=2)
    return BaselineSaveService(*Store(blobs, SQLiteDictPersistenceService(str(tmp_path / "meta.sqlite"))))


@pytest.mark.parametrize("save_service, failing", [("open_store", ""), ("store", "partNumber=")],
                         indirect=["save_service"], ids=["one-put", "multipart"])
@pytest.mark.parametrize("kind, status, code", [
    (ANSWER, 503, "SlowDown"), (ANSWER, 500, "InternalError"), (ANSWER, 400, "InvalidRequest"),
    (ANSWER, 403, "AccessDenied"), (CUT_REQUEST, 0, "")])
def test_a_save_whose_upload_fails_raises_and_lists_no_model(save_service, proxy, direct, kind, status, code,
                                                             failing):
    """Any upload error but PreconditionFailed fails the save: an error swallowed on the way would list a model
    whose weights were never stored. With `failing` "", every upload fails (the first blob's single PUT); with
    "partNumber=", the parts of the weights' multipart upload do, after the small blobs went up."""
    shape = {"vocab": 40_000, "width": 64}  # 10 MB of weights: a multipart upload of three parts
    proxy.inject(kind, method="PUT", target=failing, status=status, code=code)
    action = "upload part \\d+ of" if failing else "upload"
    with pytest.raises(StoreUnavailableError, match=f"{action} blob [0-9a-f]{{64}} to") as raised:
        save_service.save_model(save_info(TiedDecoderLM(**shape), init_args=shape))
    proxy.clear()
    assert save_service.all_model_ids() == []
    failed_blob = str(raised.value).split(" blob ")[1][:64]
    objects, uploads = _leftovers(direct)
    assert uploads == [] and direct.key(failed_blob) not in objects
    assert objects == ([] if not failing else objects), "with every PUT failing, no blob was stored"
    for key in objects:  # what went up before the failure is whole (garbage collection removes it)
        direct.verify_blob(key[len(direct.prefix):])


def test_a_read_only_bucket_credential_recovers_lists_and_verifies_but_cannot_save(proxy, tmp_path,
                                                                                   s3_test_location):
    """Readers with only s3:GetObject and s3:ListBucket: every write request the bucket refuses (403) changes
    nothing they do, and a save fails with a typed error that lists no model."""
    location = str(tmp_path / "store")
    model = TinyNet()
    model_id = BaselineSaveService(*open_store(location, blob_dir=s3_test_location)).save_model(save_info(model))
    for method in ("PUT", "POST", "DELETE"):
        proxy.inject(ANSWER, method=method, status=403, code="AccessDenied")
    reader = open_store(location, blob_dir=s3_test_location)
    recovered = BaselineSaveService(*reader).recover_model(model_id, execute_checks=True).model
    assert all(torch.equal(recovered.state_dict()[name], value) for name, value in model.state_dict().items())
    assert [summary.model_id for summary in maintenance.list_models(reader)] == [model_id]
    assert maintenance.verify(reader) == []
    assert maintenance.collect_garbage(reader, dry_run=True, grace_seconds=0).count == 0
    with pytest.raises(StoreUnavailableError, match="AccessDenied|access"):
        BaselineSaveService(*reader).save_model(save_info(TinyNet()))
    assert maintenance.all_model_ids(reader) == [model_id]
