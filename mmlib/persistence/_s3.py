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
"""

import collections
import concurrent.futures
import contextlib
import logging
import os
import re
import tempfile
import time
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np

from mmlib.errors import InvalidIdError, StoreUnavailableError
from mmlib.persistence._hashing import corrupted_blob
from mmlib.persistence.base import DIGEST_LENGTH, FilePersistenceService, missing_blob, split_reference_id
from mmlib.persistence.store import S3_SCHEME
from mmlib.util.hash import new_hasher

logger = logging.getLogger(__name__)

PART_SIZE = 16 * 1024 * 1024  # S3 parts are 5 MiB to 5 GiB (the last may be smaller)
PARALLEL_PARTS = 4
_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_LENGTH}}}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_MISSING = {"404", "NoSuchKey", "NotFound"}
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
    config = Config(connect_timeout=3, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"},
                    max_pool_connections=2 * parallel_parts)
    return boto3.client("s3", config=config)


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


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
        self._call("open", lambda: self.client.head_bucket(Bucket=self.bucket))

    def __repr__(self) -> str:
        return f"ObjectStoreFilePersistenceService({self.url!r})"

    def key(self, digest: str) -> str:
        return self.prefix + digest

    def _call(self, action: str, request: Callable[[], T]) -> T:
        """Run one S3 request; connection, credential and bucket problems become StoreUnavailableError."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        endpoint = getattr(self.client.meta, "endpoint_url", "?")
        try:
            return request()
        except NoCredentialsError as error:
            raise StoreUnavailableError(
                f"no AWS credentials to {action} {self.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or "
                "configure ~/.aws (mmlib uses the standard AWS configuration)") from error
        except ClientError as error:
            code = _error_code(error)
            if code in ("NoSuchBucket",) or (action == "open" and code in _MISSING):
                raise StoreUnavailableError(
                    f"bucket {self.bucket!r} does not exist at {endpoint}; create it, or check the bucket in the "
                    "blob location (--blob-dir / MMLIB_BLOB_DIR) and AWS_ENDPOINT_URL") from error
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreUnavailableError(f"access to {self.url} at {endpoint} was denied ({code}) when trying to "
                                            f"{action} it; check the AWS credentials and the bucket policy") from error
            raise
        except BotoCoreError as error:
            raise StoreUnavailableError(f"cannot {action} {self.url}: the object store at {endpoint} is "
                                        f"unreachable ({error}); check AWS_ENDPOINT_URL and the network") from error

    def _head(self, digest: str) -> Optional[dict]:
        from botocore.exceptions import ClientError
        try:
            return self._call("read", lambda: self.client.head_object(Bucket=self.bucket, Key=self.key(digest)))
        except ClientError as error:
            if _error_code(error) in _MISSING:
                return None
            raise

    def _objects(self) -> Iterator[tuple[str, float]]:
        """(digest, last-modified seconds) of every blob under the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)))
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
        self._call("delete from", lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key(digest)))

    def partial_upload_times(self) -> dict[str, float]:
        """Unfinished multipart uploads (`<digest>/<upload id>`) and when each last made progress: the newest of
        its start and its parts, so an upload still sending parts is never taken for an abandoned one."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self._call("list", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)))
        times = {}
        for page in pages:
            for upload in page.get("Uploads", []):
                digest = upload["Key"][len(self.prefix):]
                if _DIGEST.fullmatch(digest):
                    times[f"{digest}/{upload['UploadId']}"] = self._last_activity(upload)
        return times

    def _last_activity(self, upload: dict) -> float:
        parts = self._call("list", lambda: self.client.list_parts(Bucket=self.bucket, Key=upload["Key"],
                                                                  UploadId=upload["UploadId"]))
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
            self._call("abort an upload in", lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key(digest), UploadId=upload))

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
        try:
            self._call("write to", lambda: self.client.put_object(Bucket=self.bucket, Key=self.key(digest),
                                                                   Body=data, IfNoneMatch="*"))
        except ClientError as error:
            if _error_code(error) != "PreconditionFailed":
                raise

    def _put_in_parts(self, digest: str, spool: _Spool) -> None:
        """A multipart upload of the spooled blob: `parallel_parts` parts in flight, each read when it is sent."""
        from botocore.exceptions import ClientError
        key = self.key(digest)
        upload = self._call("write to", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key))["UploadId"]
        offsets = range(0, spool.size, self.part_size)

        def send(number_offset: tuple[int, int]) -> dict:
            number, offset = number_offset
            data = spool.read_at(offset, min(self.part_size, spool.size - offset))
            answer = self._call("write to", lambda: self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data))
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(self.parallel_parts, thread_name_prefix="mmlib-s3") as pool:
                parts = list(pool.map(send, enumerate(offsets, start=1)))
            self._call("write to", lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"))
        except ClientError as error:
            self._abort_upload(digest, upload)
            if _error_code(error) != "PreconditionFailed":
                raise
        except BaseException:
            self._abort_upload(digest, upload)
            raise

    def _touch_blob(self, digest: str) -> None:
        """Refresh a reused blob's time (a copy onto itself), so garbage collection's grace period starts again."""
        from botocore.exceptions import ClientError
        key = self.key(digest)
        try:
            self._call("write to", lambda: self.client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE", Metadata={"mmlib-reused": str(time.time())}))
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
        """Fill `target` with the blob's bytes from `start`; IntegrityError when the object is shorter."""
        end = start + target.nbytes - 1
        answer = self._call("read", lambda: self.client.get_object(Bucket=self.bucket, Key=self.key(digest),
                                                                   Range=f"bytes={start}-{end}"))
        body, filled = answer["Body"], 0
        with contextlib.closing(body):
            while filled < target.nbytes:
                count = body.readinto(target[filled:])
                if not count:
                    raise corrupted_blob(digest, f"it ended {target.nbytes - filled} bytes early")
                filled += count

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
