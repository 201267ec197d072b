"""An S3 protocol server for tests and benchmarks: moto's server (the `test` extra) in a subprocess on a free
port, or the endpoint MMLIB_TEST_S3_URI names.

MMLIB_TEST_S3_URI (`s3://bucket[/prefix]`) points at a real endpoint instead, configured the standard AWS way
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), the way MMLIB_TEST_MONGO_URI points the tests at a real MongoDB.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Iterator

TEST_BUCKET = "mmlib-test"
_SERVER_START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_s3_server(log_path) -> Iterator[str]:
    """Yield the `s3://bucket` location of a test S3 endpoint; AWS variables point at it while it runs."""
    given = os.environ.get("MMLIB_TEST_S3_URI")
    if given:
        yield given.rstrip("/")
        return
    port = _free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
    while not _reachable(port):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the test S3 server did not start: {open(log_path).read()}")
        time.sleep(0.1)
    saved = {name: os.environ.get(name) for name in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="mmlib-test",
                      AWS_SECRET_ACCESS_KEY="mmlib-test", AWS_DEFAULT_REGION="us-east-1")
    try:
        import boto3
        boto3.client("s3").create_bucket(Bucket=TEST_BUCKET)
        yield f"s3://{TEST_BUCKET}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)


def fresh_prefix(location: str) -> str:
    """A location under `location` that no other test uses."""
    return f"{location}/test-{uuid.uuid4().hex[:12]}"


def empty_prefix(location: str) -> None:
    """Delete every object and unfinished upload under a test's prefix (a real endpoint keeps them otherwise)."""
    from mmlib.persistence._s3 import ObjectStoreFilePersistenceService
    store = ObjectStoreFilePersistenceService(location)
    for upload_id in store.partial_uploads():
        store.delete_partial_upload(upload_id)
    for digest in list(store.blob_digests()):
        store.delete_blob(digest)
