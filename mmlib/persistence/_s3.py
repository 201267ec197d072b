"""Blob store on S3-compatible object storage (AWS S3, MinIO, Ceph, R2, ...) under `s3://bucket/prefix`.

The client is boto3: AWS maintains it, every S3-compatible service tests against it, and it offers every call
this store needs: conditional writes (`If-None-Match: *`), multipart uploads that can be listed and aborted
(garbage collection finds interrupted ones), and ranged GETs. obstore (Rust, zarr v3's client) is faster per
request, but it cannot list or abort multipart uploads left behind by a crashed writer.

Credentials, region and endpoint come from the standard AWS chain (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
`AWS_ENDPOINT_URL` for S3-compatible services, `~/.aws/config`, instance roles); mmlib adds no scheme of its own.

An object's key is `<prefix><digest>`. The digest is known only once every byte is seen, so a blob is hashed
while it is spooled to a local temp file; then a blob of up to one part goes up in one conditional PUT and a
larger one as a multipart upload whose parts are read from the spool and sent in parallel (memory: part size
times parallel parts), completed conditionally. `PreconditionFailed` means another writer stored the same bytes
first, which is success. Reads are parallel ranged GETs into one buffer, hashed in order as the parts arrive.

botocore retries each request (`ATTEMPTS` in all) on throttling (`SlowDown`), 5xx answers, timeouts and broken
connections; a ranged GET whose answer breaks off is sent again as often. What still fails after that is a
StoreUnavailableError that says what the store was doing (which part of which blob) and what to check; a failed
multipart upload is aborted, so a failed save leaves no object behind (or, if even the abort fails, an unfinished
upload that garbage collection removes).
"""

import collections
import concurrent.futures
import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from typing import Callable, Collection, Iterator, Optional, TypeVar

import numpy as np

from mmlib.errors import InvalidIdError, StoreUnavailableError
from mmlib.persistence._hashing import corrupted_blob
from mmlib.persistence.base import DIGEST_LENGTH, FilePersistenceService, missing_blob, split_reference_id
from mmlib.persistence.store import S3_SCHEME
from mmlib.util.hash import new_hasher

logger = logging.getLogger(__name__)

PART_SIZE = 16 * 1024 * 1024  # S3 parts are 5 MiB to 5 GiB (the last may be smaller)
PARALLEL_PARTS = 4
ATTEMPTS = 3  # tries of one request, the first included (botocore backs off up to 1 s, then up to 2 s)
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 60
_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_LENGTH}}}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                        "TooManyRequestsException", "RequestThrottled", "RequestThrottledException", "503"})
T = TypeVar("T")


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in `/` or empty) of `s3://bucket[/prefix]`; InvalidIdError when malformed."""
    bucket, _, prefix = url[len(S3_SCHEME):].partition("/") if url.startswith(S3_SCHEME) else ("", "", "")
    if not _BUCKET.fullmatch(bucket):
        raise InvalidIdError(f"{url!r} is not an object store location; write it as s3://bucket or s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _client(parallel_parts: int):
    """A boto3 S3 client from the standard AWS configuration that gives up on an unreachable endpoint in seconds."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:
        raise StoreUnavailableError("object storage needs boto3; install it with `pip install 'mmlib[s3]'`") \
            from error
    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
                    max_pool_connections=2 * parallel_parts)
    return boto3.client("s3", config=config)


def _error_code(error: Exception) -> str:
    """The S3 error code of a ClientError (`SlowDown`, `NoSuchKey`, ...), or empty."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _answer(error: Exception) -> tuple[int, int]:
    """(HTTP status, attempts made) of a ClientError, from botocore's response metadata."""
    metadata = (getattr(error, "response", None) or {}).get("ResponseMetadata", {})
    return int(metadata.get("HTTPStatusCode") or 0), int(metadata.get("RetryAttempts") or 0) + 1


class _Spool:
    """The local temp file a blob is written to while it is hashed (it is uploaded once its digest is known)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="mmlib-s3-")
        self.size = 0

    def write(self, data) -> int:
        written = self._file.write(data)
        self.size += written
        return written

    def flush(self) -> None:
        self._file.flush()

    def read_at(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (safe from several threads at once)."""
        return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        self._file.close()


class ObjectStoreFilePersistenceService(FilePersistenceService[_Spool]):
    """Content-addressed blobs in an S3 bucket under a key prefix (`url` is `s3://bucket[/prefix]`).

    `bucket`, `prefix`, `client` and `key()` are public so that tools (and tests) can reach the objects.
    """

    time_resolution_s = 1.0  # S3 stamps objects in whole seconds

    def __init__(self, url: str, *, part_size: int = PART_SIZE, parallel_parts: int = PARALLEL_PARTS,
                 client=None):
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        if part_size < 5 * 1024 * 1024 or parallel_parts < 1:
            raise InvalidIdError(f"part_size must be at least 5 MiB (S3's minimum) and parallel_parts at least 1, "
                                 f"got {part_size} and {parallel_parts}")
        self.part_size, self.parallel_parts = part_size, parallel_parts
        self.client = client if client is not None else _client(parallel_parts)
        self._call("open", lambda: self.client.head_bucket(Bucket=self.bucket), expected=())

    def __repr__(self) -> str:
        return f"ObjectStoreFilePersistenceService({self.url!r})"

    def key(self, digest: str) -> str:
        return self.prefix + digest

    def _call(self, action: str, request: Callable[[], T], *, expected: Collection[str]) -> T:
        """Run one S3 request (botocore retries it). A ClientError whose code is in `expected` propagates for the
        caller to handle; every other failure is a StoreUnavailableError that says what `action` was attempted.

        `action` is a verb phrase whose object is this store ("upload part 2 of blob <digest> to").
        """
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return request()
        except ClientError as error:
            if _error_code(error) in expected:
                raise
            raise StoreUnavailableError(self._refusal(action, error)) from error
        except BotoCoreError as error:
            raise StoreUnavailableError(self._failure(action, error)) from error

    def _endpoint(self) -> str:
        """The endpoint URL the client talks to, for messages."""
        return str(getattr(self.client.meta, "endpoint_url", "?"))

    def _refusal(self, action: str, error: Exception) -> str:
        """What an error answer of the object store means, and what to do about it."""
        code, (status, attempts) = _error_code(error), _answer(error)
        cannot = f"cannot {action} {self.url}: the object store at {self._endpoint()}"
        if code == "NoSuchBucket" or (action == "open" and code in _MISSING):
            return (f"bucket {self.bucket!r} does not exist at {self._endpoint()}; create it, or check the bucket in "
                    "the blob location (--blob-dir / MMLIB_BLOB_DIR) and AWS_ENDPOINT_URL")
        if code in _DENIED:
            return (f"access to {self.url} at {self._endpoint()} was denied ({code}) when trying to {action} it; "
                    "check the AWS credentials and the bucket policy")
        if code in _THROTTLED or status == 503:
            return (f"{cannot} still throttled the request ({code or status}) after {attempts} attempts; try again "
                    "later, or send fewer requests at once (parallel_parts)")
        if status >= 500:
            return (f"{cannot} failed with {code or 'an error'} (HTTP {status}) {attempts} times; try again later, "
                    "and check the service's health")
        return (f"{cannot} refused the request with {code or 'an error'} (HTTP {status}); check that the endpoint "
                f"supports S3's {getattr(error, 'operation_name', 'request')} (AWS_ENDPOINT_URL)")

    def _failure(self, action: str, error: Exception) -> str:
        """What a failure without an answer (no credentials, no connection, a timeout) means, and what to check."""
        from botocore.exceptions import (ConnectTimeoutError, EndpointConnectionError, NoCredentialsError,
                                         ReadTimeoutError)
        if isinstance(error, NoCredentialsError):
            return (f"no AWS credentials to {action} {self.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "or configure ~/.aws (mmlib uses the standard AWS configuration)")
        if isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
            problem = "is unreachable"
        elif isinstance(error, ReadTimeoutError):
            problem = "did not answer in time"
        else:
            problem = "broke the connection"
        return (f"cannot {action} {self.url}: the object store at {self._endpoint()} {problem} "
                f"({type(error).__name__}, after retries); check AWS_ENDPOINT_URL, the network and the service")

    def _head(self, digest: str) -> Optional[dict]:
        from botocore.exceptions import ClientError
        try:
            return self._call(f"look up blob {digest} in", lambda: self.client.head_object(
                Bucket=self.bucket, Key=self.key(digest)), expected=_MISSING)
        except ClientError:
            return None

    def _objects(self) -> Iterator[tuple[str, float]]:
        """(digest, last-modified seconds) of every blob under the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list the blobs in", lambda: list(paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix)), expected=())
        for page in pages:
            for entry in page.get("Contents", []):
                digest = entry["Key"][len(self.prefix):]
                if _DIGEST.fullmatch(digest):
                    yield digest, entry["LastModified"].timestamp()

    def blob_exists(self, digest: str) -> bool:
        return self._head(digest) is not None

    def blob_digests(self) -> Iterator[str]:
        return iter(sorted(digest for digest, _ in self._objects()))

    def blob_times(self) -> dict[str, float]:
        return dict(self._objects())

    def delete_blob(self, digest: str) -> None:
        self._call(f"delete blob {digest} from", lambda: self.client.delete_object(
            Bucket=self.bucket, Key=self.key(digest)), expected=())

    def partial_upload_times(self) -> dict[str, float]:
        """Unfinished multipart uploads (`<digest>/<upload id>`) and when each last made progress: the newest of
        its start and its parts, so an upload still sending parts is never taken for an abandoned one."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self._call("list the unfinished uploads in", lambda: list(paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix)), expected=())
        times = {}
        for page in pages:
            for upload in page.get("Uploads", []):
                digest = upload["Key"][len(self.prefix):]
                last_activity = self._last_activity(digest, upload) if _DIGEST.fullmatch(digest) else None
                if last_activity is not None:
                    times[f"{digest}/{upload['UploadId']}"] = last_activity
        return times

    def _last_activity(self, digest: str, upload: dict) -> Optional[float]:
        """When an unfinished upload last made progress; None when it finished since it was listed."""
        from botocore.exceptions import ClientError
        try:
            parts = self._call(f"list the uploaded parts of blob {digest} in", lambda: self.client.list_parts(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]), expected=("NoSuchUpload",))
        except ClientError:
            return None
        stamps = [upload["Initiated"]] + [part["LastModified"] for part in parts.get("Parts", [])]
        return max(stamp.timestamp() for stamp in stamps)

    def delete_partial_upload(self, upload_id: str) -> None:
        digest, _, upload = upload_id.partition("/") if isinstance(upload_id, str) else ("", "", "")
        if not _DIGEST.fullmatch(digest) or not upload:
            raise InvalidIdError(f"{upload_id!r} is not an upload id of this store; list them with partial_uploads()")
        self._abort_upload(digest, upload)

    def _abort_upload(self, digest: str, upload: str) -> None:
        from botocore.exceptions import ClientError
        with contextlib.suppress(ClientError):  # already completed or aborted
            self._call(f"abort the upload of blob {digest} in", lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key(digest), UploadId=upload), expected=("NoSuchUpload", *_MISSING))

    def _abandon_upload(self, digest: str, upload: str) -> None:
        """Abort the upload of a blob that failed; if even that fails, garbage collection removes it later."""
        try:
            self._abort_upload(digest, upload)
        except StoreUnavailableError as error:
            logger.warning("the failed upload %s of blob %s stays until garbage collection removes it: %s",
                           upload, digest, error)

    def _open_blob_writer(self) -> _Spool:
        return _Spool()

    def _commit_blob(self, handle: _Spool, digest: str) -> None:
        try:
            handle.flush()
            if self.blob_exists(digest):
                self._touch_blob(digest)
            elif handle.size <= self.part_size:
                self._put_once(digest, handle.read_at(0, handle.size))
            else:
                self._put_in_parts(digest, handle)
        finally:
            handle.close()

    def _put_once(self, digest: str, data: bytes) -> None:
        from botocore.exceptions import ClientError
        with contextlib.suppress(ClientError):  # PreconditionFailed: another writer stored these bytes first
            self._call(f"upload blob {digest} to", lambda: self.client.put_object(
                Bucket=self.bucket, Key=self.key(digest), Body=data, IfNoneMatch="*"), expected=("PreconditionFailed",))

    def _put_in_parts(self, digest: str, spool: _Spool) -> None:
        """A multipart upload of the spooled blob: `parallel_parts` parts in flight, each read when it is sent; a
        failure aborts the upload, so no object appears."""
        from botocore.exceptions import ClientError
        key = self.key(digest)
        upload = self._call(f"start the upload of blob {digest} to", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key), expected=())["UploadId"]

        stop = threading.Event()  # a part failed: the parts not yet started are not sent

        def send(number: int, offset: int) -> Optional[dict]:
            if stop.is_set():
                return None
            data = spool.read_at(offset, min(self.part_size, spool.size - offset))
            try:
                answer = self._call(f"upload part {number} of blob {digest} to", lambda: self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data), expected=())
            except BaseException:
                stop.set()
                raise
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(self.parallel_parts, thread_name_prefix="mmlib-s3") as pool:
                sent = [pool.submit(send, number, offset)
                        for number, offset in enumerate(range(0, spool.size, self.part_size), start=1)]
                try:  # parts start in order, so a failed part raises here before any part it stopped
                    parts = [future.result() for future in sent]
                finally:  # an interrupt stops the parts not yet started too
                    stop.set()
            self._call(f"complete the upload of blob {digest} to", lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"),
                expected=("PreconditionFailed",))
        except ClientError:  # PreconditionFailed: another writer stored these bytes first
            self._abandon_upload(digest, upload)
        except BaseException:
            self._abandon_upload(digest, upload)
            raise

    def _touch_blob(self, digest: str) -> None:
        """Refresh a reused blob's time (a copy onto itself), so garbage collection's grace period starts again."""
        from botocore.exceptions import ClientError
        key = self.key(digest)
        try:
            self._call(f"refresh the time of blob {digest} in", lambda: self.client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE", Metadata={"mmlib-reused": str(time.time())}),
                expected=("InvalidRequest", *_MISSING))
        except ClientError as error:  # gone meanwhile, or over the 5 GiB limit of a single copy
            logger.debug("could not refresh the time of blob %s: %s", digest, error)

    def _abort_blob(self, handle: _Spool) -> None:
        handle.close()

    def _blob_size(self, digest: str) -> int:
        head = self._head(digest)
        if head is None:
            raise missing_blob(digest, self.url)
        return int(head["ContentLength"])

    def _ranges(self, size: int) -> list[tuple[int, int]]:
        return [(start, min(size, start + self.part_size)) for start in range(0, size, self.part_size)]

    def _get_range_into(self, digest: str, target: memoryview, start: int) -> None:
        """Fill `target` with the blob's bytes from `start`; BlobNotFoundError when the object is gone,
        IntegrityError when it is shorter."""
        from botocore.exceptions import ClientError
        try:
            self._call(f"read blob {digest} from", lambda: self._get_range(digest, target, start), expected=_MISSING)
        except ClientError as error:
            raise missing_blob(digest, self.url) from error

    def _get_range(self, digest: str, target: memoryview, start: int) -> None:
        """One ranged GET into `target`, sent again when its answer breaks off (botocore retries the request, not
        the reading of its answer)."""
        from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
        for attempt in range(1, ATTEMPTS + 1):
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(digest),
                                            Range=f"bytes={start}-{start + target.nbytes - 1}")
            try:
                with contextlib.closing(answer["Body"]) as body:
                    _fill(body, target, digest)
                return
            except (ReadTimeoutError, ResponseStreamingError) as error:
                if attempt == ATTEMPTS:
                    raise
                logger.debug("reading blob %s from %s broke off (%s); reading it again", digest, self.url, error)

    def read_bytes(self, reference_id: str) -> memoryview:
        """All bytes of a stored blob by parallel ranged GETs into one buffer, hashed in order as parts arrive."""
        digest, _, _ = split_reference_id(reference_id)
        size = self._blob_size(digest)
        view = np.empty(size, dtype=np.uint8).data
        hasher = new_hasher()
        with concurrent.futures.ThreadPoolExecutor(self.parallel_parts, thread_name_prefix="mmlib-s3") as pool:
            ranges = self._ranges(size)
            fetched = [pool.submit(self._get_range_into, digest, view[start:end], start) for start, end in ranges]
            for future, (start, end) in zip(fetched, ranges):
                future.result()
                hasher.update(view[start:end])
        if hasher.hexdigest() != digest:
            raise corrupted_blob(digest, f"its bytes hash to {hasher.hexdigest()}")
        return view

    def _open_blob_reader(self, digest: str) -> "_RangedReader":
        return _RangedReader(self, digest, self._blob_size(digest))


def _fill(body, target: memoryview, digest: str) -> None:
    """Read `body` into all of `target`; IntegrityError when it ends first."""
    filled = 0
    while filled < target.nbytes:
        count = body.readinto(target[filled:])
        if not count:
            raise corrupted_blob(digest, f"it ended {target.nbytes - filled} bytes early")
        filled += count


class _RangedReader:
    """A blob as a stream: ranged GETs of one part each, `parallel_parts` fetched ahead (bounded memory)."""

    def __init__(self, store: ObjectStoreFilePersistenceService, digest: str, size: int):
        self._store, self._digest = store, digest
        self._pool = concurrent.futures.ThreadPoolExecutor(store.parallel_parts, thread_name_prefix="mmlib-s3")
        self._ranges = collections.deque(store._ranges(size))
        self._ahead: collections.deque = collections.deque()
        self._current = memoryview(b"")
        self._fetch_ahead()

    def _fetch_ahead(self) -> None:
        while self._ranges and len(self._ahead) < self._store.parallel_parts:
            self._ahead.append(self._pool.submit(self._fetch, *self._ranges.popleft()))

    def _fetch(self, start: int, end: int) -> memoryview:
        target = memoryview(bytearray(end - start))
        self._store._get_range_into(self._digest, target, start)
        return target

    def _available(self) -> memoryview:
        """The unread rest of the current part, moving on to the next fetched part when it is used up."""
        if not self._current and self._ahead:
            self._current = self._ahead.popleft().result()
            self._fetch_ahead()
        return self._current

    def read(self, size: int = -1) -> bytes:
        available = self._available()
        count = len(available) if size < 0 else min(size, len(available))
        chunk, self._current = bytes(self._current[:count]), self._current[count:]
        return chunk

    def readinto(self, target) -> int:
        """Like `read`, but into `target`, without the intermediate bytes object."""
        target = memoryview(target).cast("B")
        count = min(target.nbytes, len(self._available()))
        target[:count], self._current = self._current[:count], self._current[count:]
        return count

    def close(self) -> None:
        self._ranges.clear()
        for future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "_RangedReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
