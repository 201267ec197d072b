"""`open_store` picks backends from one string and explains what it cannot open."""

import os

import pytest

from mmlib.errors import StoreUnavailableError
from mmlib.persistence import FileSystemPersistenceService, MongoDictPersistenceService, \
    SQLiteDictPersistenceService, open_store


def test_directory_gives_sqlite_and_files_created_on_first_use(tmp_path):
    store = open_store(str(tmp_path / "new-store"))
    assert isinstance(store.file_pers_service, FileSystemPersistenceService)
    assert isinstance(store.dict_pers_service, SQLiteDictPersistenceService)
    assert os.path.isfile(tmp_path / "new-store" / "metadata.sqlite")


def test_mongo_uri_with_shared_directory(mongo_uri, tmp_path):
    store = open_store(mongo_uri, blob_dir=str(tmp_path / "shared"))
    assert isinstance(store.dict_pers_service, MongoDictPersistenceService)
    assert isinstance(store.file_pers_service, FileSystemPersistenceService)


def test_unknown_scheme_names_the_known_ones():
    with pytest.raises(StoreUnavailableError, match="mongodb://"):
        open_store("s3://bucket/models")


def test_unusable_directory_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailableError, match="store directory"):
        open_store(str(blocker / "store"))
