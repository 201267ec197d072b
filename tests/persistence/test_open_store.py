"""`open_store` picks backends from one string and explains what it cannot open."""

import os
import re
import socket
import time

import pytest

from mmlib.equal import state_dict_equal
from mmlib.errors import StoreUnavailableError
from mmlib.persistence import FileSystemPersistenceService, GridFSFilePersistenceService, \
    MongoDictPersistenceService, SQLiteDictPersistenceService, open_store
import mmlib.persistence.store
from mmlib.persistence.store import MONGO_INSTALL_HINT, mongo_backend, mongo_database_name
from mmlib.save import BaselineSaveService
from save_helpers import save_info
from tiny_models import TinyNet


def test_directory_gives_sqlite_and_files_created_by_the_first_save(tmp_path):
    store = open_store(str(tmp_path / "new-store"))
    assert isinstance(store.file_pers_service, FileSystemPersistenceService)
    assert isinstance(store.dict_pers_service, SQLiteDictPersistenceService)
    assert not (tmp_path / "new-store").exists()
    BaselineSaveService(*store).save_model(save_info(TinyNet()))
    assert os.path.isfile(tmp_path / "new-store" / "metadata.sqlite")
    assert os.path.isdir(tmp_path / "new-store" / "blobs")


def test_opening_an_existing_directory_creates_nothing(tmp_path):
    store = open_store(str(tmp_path))
    assert store.dict_pers_service.all_types() == [] and list(store.file_pers_service.blob_digests()) == []
    assert os.listdir(tmp_path) == []


def test_without_create_a_directory_without_a_store_is_refused(tmp_path):
    for location in (tmp_path, tmp_path / "missing"):
        with pytest.raises(StoreUnavailableError, match=f"no mmlib store at {location} "):
            open_store(str(location), create=False)
    assert os.listdir(tmp_path) == []


def test_without_create_a_missing_blob_directory_is_refused(tmp_path):
    BaselineSaveService(*open_store(str(tmp_path / "store"))).save_model(save_info(TinyNet()))
    assert open_store(str(tmp_path / "store"), create=False).dict_pers_service.all_types()
    missing = tmp_path / "typo"
    with pytest.raises(StoreUnavailableError, match=f"blob directory {missing} does not exist"):
        open_store(str(tmp_path / "store"), blob_dir=str(missing), create=False)
    assert not missing.exists()


@pytest.mark.parametrize("create", [True, False])
def test_a_file_is_named_as_a_file_not_a_store(tmp_path, create):
    (tmp_path / "notes.txt").write_text("not a store")
    with pytest.raises(StoreUnavailableError, match=f"{tmp_path / 'notes.txt'} is a file, not a store directory"):
        open_store(str(tmp_path / "notes.txt"), create=create)


def test_mongo_uri_with_shared_directory(mongo_uri, tmp_path):
    store = open_store(mongo_uri, blob_dir=str(tmp_path / "shared"))
    assert isinstance(store.dict_pers_service, MongoDictPersistenceService)
    assert isinstance(store.file_pers_service, FileSystemPersistenceService)


def test_mongo_uri_alone_gives_gridfs_blobs_in_the_database_the_uri_names(mongo_database):
    mongo_uri, db_name = mongo_database
    store = open_store(f"{mongo_uri}/{db_name}")
    assert isinstance(store.dict_pers_service, MongoDictPersistenceService)
    assert isinstance(store.file_pers_service, GridFSFilePersistenceService)
    ref = store.file_pers_service.save_bytes(b"weights", "w.bin")
    doc_id = store.dict_pers_service.save_dict({"a": 1}, "thing")
    assert GridFSFilePersistenceService(mongo_uri, db_name=db_name).read_bytes(ref.reference_id) == b"weights"
    assert MongoDictPersistenceService(mongo_uri, db_name=db_name).recover_dict(doc_id, "thing")["a"] == 1
    assert not MongoDictPersistenceService(mongo_uri).id_exists(doc_id, "thing")


def test_mongo_uri_opens_one_client_for_documents_and_blobs(mongo_database):
    mongo_uri, db_name = mongo_database
    store = open_store(f"{mongo_uri}/{db_name}")
    assert store.file_pers_service.mongo_service is store.dict_pers_service.mongo_service


@pytest.mark.parametrize("uri, expected", [
    ("mongodb://host:27017", "mmlib"),
    ("mongodb://host:27017/", "mmlib"),
    ("mongodb://host:27017/team?authSource=admin", "team"),
    ("mongodb://a:1,b:2/models", "models"),
    ("mongodb+srv://user:pw@cluster.example/prod%2Dmodels", "prod-models"),
    ("mongodb://host/XX.models", "XX.models"),  # only the path's leading slash goes
])
def test_database_name_comes_from_the_uri_path(uri, expected):
    assert mongo_database_name(uri) == expected


def test_unreachable_server_fails_within_seconds():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="cannot reach MongoDB"):
        open_store(f"mongodb://127.0.0.1:{closed_port}/mmlib")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("location", ["", None])
def test_no_location_says_what_to_pass(location):
    with pytest.raises(StoreUnavailableError, match="pass a directory or a mongodb:// URI"):
        open_store(location)


@pytest.mark.parametrize("missing", ["pymongo", "bson.objectid", "gridfs.errors"])
def test_a_missing_pymongo_gives_an_install_hint(monkeypatch, missing):
    def fail(name):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(mmlib.persistence.store.importlib, "import_module", fail)
    with pytest.raises(StoreUnavailableError, match=re.escape(MONGO_INSTALL_HINT)):
        mongo_backend("MongoService")


@pytest.mark.parametrize("missing", ["numpy", "pymongo_helpers", None])
def test_other_import_errors_of_a_mongo_backend_propagate(monkeypatch, missing):
    def fail(name):
        raise ImportError("broken install", name=missing)

    monkeypatch.setattr(mmlib.persistence.store.importlib, "import_module", fail)
    with pytest.raises(ImportError, match="broken install"):
        mongo_backend("MongoService")


def test_unknown_scheme_names_the_known_ones():
    with pytest.raises(StoreUnavailableError, match="mongodb://"):
        open_store("s3://bucket/models")


def test_unusable_directory_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailableError, match="store directory"):
        open_store(str(blocker / "store"))


def _count_syncs(monkeypatch) -> list:
    """Record every fsync/fdatasync of this process (file blobs, their directories; SQLite syncs in C)."""
    calls = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: calls.append(name) or real(fd))
    return calls


def test_a_store_is_durable_unless_asked_otherwise(tmp_path):
    store = open_store(str(tmp_path / "store"))
    assert store.file_pers_service.durable is True and store.dict_pers_service.durable is True


@pytest.mark.parametrize("durable", [True, False])
def test_durable_false_skips_the_flushes_and_still_round_trips(tmp_path, monkeypatch, durable):
    store = open_store(str(tmp_path / "store"), durable=durable)
    model = TinyNet()
    service = BaselineSaveService(*store)
    calls = _count_syncs(monkeypatch)
    model_id = service.save_model(save_info(model))
    assert (len(calls) > 0) == durable
    assert store.file_pers_service.durable is durable and store.dict_pers_service.durable is durable
    assert state_dict_equal(service.recover_model(model_id).model.state_dict(), model.state_dict())
    mode = store.dict_pers_service.connection().execute("PRAGMA synchronous").fetchone()[0]
    assert mode == (2 if durable else 1)


def test_an_unknown_name_of_the_package_is_an_attribute_error_that_names_it():
    with pytest.raises(AttributeError, match="module 'mmlib.persistence' has no attribute 'NoSuchStore'"):
        mmlib.persistence.NoSuchStore


def test_the_package_lists_the_mongo_backends_it_imports_on_first_use():
    import mmlib.persistence

    names = dir(mmlib.persistence)
    assert names == sorted(names)
    assert {"GridFSFilePersistenceService", "MongoDictPersistenceService", "open_store", "Store"} <= set(names)
