"""Shared fixtures: a real MongoDB wire-protocol server (secantusdb, or MMLIB_TEST_MONGO_URI), every store backend."""

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy
import pymongo
import pytest
import torch

from mmlib.persistence import (FileSystemPersistenceService, GridFSFilePersistenceService,
                               MongoDictPersistenceService, SQLiteDictPersistenceService)
from mmlib.persistence._s3 import ObjectStoreFilePersistenceService
from mmlib.testing.s3_server import empty_prefix, fresh_prefix, start_s3_server
from store_helpers import corrupt_blob as corrupt_stored_blob

pytest.register_assert_rewrite("mmlib.testing.stores")  # the conformance suites: show the values that failed

_SERVER_START_TIMEOUT_S = 60


def pytest_configure(config):
    """The tests and the processes they start keep mmlib's caches in a directory of this run, not the user's."""
    os.environ.setdefault("MMLIB_CACHE_DIR", tempfile.mkdtemp(prefix="mmlib-test-cache-"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory):
    """URI of a MongoDB server: MMLIB_TEST_MONGO_URI when set, else a secantusdb server started for this run."""
    given = os.environ.get("MMLIB_TEST_MONGO_URI")
    if given:
        yield given
        return
    port = _free_port()
    log_path = tmp_path_factory.mktemp("mongo") / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
             "--storage-path", ":memory:", "--standalone", "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT)
    uri = f"mongodb://127.0.0.1:{port}"
    deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
    while True:
        try:
            pymongo.MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the test MongoDB server did not start: {log_path.read_text()}")
            time.sleep(0.2)
    yield uri
    server.terminate()
    server.wait(timeout=30)


def mongo_test_database(request) -> tuple[str, str]:
    """(server URI, name) of a fresh MongoDB database on the test server, dropped when the test ends.

    The test server keeps its data in bounded memory, so every test cleans up after itself.
    """
    uri = request.getfixturevalue("mongo_uri")
    name = f"mmlib_test_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(name)

    request.addfinalizer(drop)
    return uri, name


def make_dict_service(kind: str, tmp_path, request):
    """A fresh, empty document store of the given backend."""
    if kind == "sqlite":
        return SQLiteDictPersistenceService(str(tmp_path / "meta.sqlite"))
    uri, name = mongo_test_database(request)
    return MongoDictPersistenceService(uri, db_name=name)


def make_file_service(kind: str, tmp_path, request):
    """A fresh, empty blob store of the given backend."""
    if kind == "filesystem":
        return FileSystemPersistenceService(str(tmp_path / "blobs"))
    if kind == "s3":
        return ObjectStoreFilePersistenceService(request.getfixturevalue("s3_test_location"),
                                                 part_size=5 * 1024 * 1024)
    uri, name = mongo_test_database(request)
    return GridFSFilePersistenceService(uri, db_name=name)


@pytest.fixture
def mongo_database(request) -> tuple[str, str]:
    """(server URI, name) of a fresh database on the test MongoDB server, dropped after the test."""
    return mongo_test_database(request)


@pytest.fixture(params=["sqlite+files", "mongodb+gridfs"])
def location(request, tmp_path):
    """A store location string: an embedded store directory, or a URI naming a fresh MongoDB database."""
    if request.param == "sqlite+files":
        return str(tmp_path / "store")
    uri, name = request.getfixturevalue("mongo_database")
    return f"{uri}/{name}"


@pytest.fixture(scope="session")
def s3_location(tmp_path_factory):
    """`s3://bucket` of an S3 protocol server (moto's, started for this run) or of MMLIB_TEST_S3_URI."""
    yield from start_s3_server(tmp_path_factory.mktemp("s3") / "server.log")


@pytest.fixture
def s3_test_location(request):
    """A prefix of the test S3 bucket that only this test uses, emptied when the test ends."""
    location = fresh_prefix(request.getfixturevalue("s3_location"))
    request.addfinalizer(lambda: empty_prefix(location))
    return location


STORE_PAIRS = [("sqlite", "filesystem"), ("mongo", "filesystem"), ("mongo", "gridfs")]
OBJECT_STORE_PAIR = ("mongo", "s3")


def pytest_generate_tests(metafunc):
    """`stores` runs over every deployment pair, or the module's own `STORE_PAIRS`; a module that sets
    `WITH_OBJECT_STORAGE = True` (the save flows, bit flips) adds MongoDB + S3, which the blob conformance suite
    covers for every other test."""
    if "stores" in metafunc.fixturenames:
        pairs = list(getattr(metafunc.module, "STORE_PAIRS", STORE_PAIRS))
        pairs += [OBJECT_STORE_PAIR] if getattr(metafunc.module, "WITH_OBJECT_STORAGE", False) else []
        metafunc.parametrize("stores", pairs, indirect=True, ids=["+".join(pair) for pair in pairs])


@pytest.fixture
def stores(request, tmp_path):
    """(file service, dict service) pairs as a deployment would combine them."""
    dict_kind, file_kind = request.param
    return make_file_service(file_kind, tmp_path, request), make_dict_service(dict_kind, tmp_path, request)


@pytest.fixture
def corrupt_blob():
    """Flip one byte of a stored blob behind the store's back (a raw hook, not the store's API)."""
    return corrupt_stored_blob


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train on one thread in a module's tests: their small batches gain nothing from more, and lose a lot on a
    busy machine (or one whose cores several workers share)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _global_state_restored():
    """Undo set_deterministic's global changes (flags and random state) when the generator resumes."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic)
    rng = (random.getstate(), numpy.random.get_state(), torch.get_rng_state())
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
    torch.backends.mkldnn.deterministic = flags[4]
    random.setstate(rng[0])
    numpy.random.set_state(rng[1])
    torch.set_rng_state(rng[2])


@pytest.fixture(autouse=True, scope="module")
def restore_global_state_after_module():
    """What a module's own module-scoped fixtures change (a provenance save calls set_deterministic) ends with the
    module: later modules run as configured (with deterministic algorithms on, torch.zeros of some dtypes fails)."""
    yield from _global_state_restored()


@pytest.fixture(autouse=True)
def restore_global_state():
    """Undo what a test changes of the global state, so every test runs as configured."""
    yield from _global_state_restored()
