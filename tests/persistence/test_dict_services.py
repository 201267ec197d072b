"""The document-store conformance suite (mmlib.testing.stores.DictStoreTests) on each of mmlib's document stores."""

import pytest

from mmlib.persistence import MongoDictPersistenceService, SQLiteDictPersistenceService
from mmlib.testing.stores import DictStoreTests


class TestSQLite(DictStoreTests):
    @pytest.fixture
    def store(self, tmp_path):
        return SQLiteDictPersistenceService(str(tmp_path / "meta.sqlite"))

    def reopen(self, store):
        return SQLiteDictPersistenceService(store.path)


class TestMongo(DictStoreTests):
    @pytest.fixture
    def store(self, mongo_database):
        uri, name = mongo_database
        return MongoDictPersistenceService(uri, db_name=name)

    def reopen(self, store):
        return MongoDictPersistenceService(store.mongo_service.host, db_name=store.mongo_service.db_name)
