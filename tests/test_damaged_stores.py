"""Damage and wrong inputs give typed mmlib errors with one line that says what to do, never raw exceptions."""

import contextlib
import io
import os
import sqlite3
import tarfile

import pytest

from mmlib import maintenance
from mmlib.cli import EXIT_PROBLEMS, EXIT_UNAVAILABLE, main
from mmlib.errors import IntegrityError, MMLibError, StoreUnavailableError
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService
from mmlib.schema.model_info import DERIVED_FROM, MODEL_INFO, RECOVER_INFO_ID, STORE_TYPE
from save_helpers import save_info
from tiny_models import TinyNet


@pytest.fixture
def saved(tmp_path):
    location = str(tmp_path / "store")
    store = open_store(location)
    model_id = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    return location, store, model_id


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    return code, err


def test_a_damaged_sqlite_file_is_a_typed_error(saved, capsys):
    location, store, model_id = saved
    path = os.path.join(location, "metadata.sqlite")
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = 4096
    with open(path, "r+b") as handle:
        handle.seek(page_size)
        handle.write(b"this is not a b-tree page" * 400)
    with pytest.raises(IntegrityError, match=f"the SQLite store {path} is damaged \\(.*\\); restore it from a backup"):
        BaselineSaveService(*open_store(location)).recover_model(model_id)
    code, _ = _cli(capsys, "--store", location, "ls")
    assert code in (EXIT_PROBLEMS, EXIT_UNAVAILABLE)


def test_a_blob_path_that_is_a_directory_is_corruption(saved):
    location, store, model_id = saved
    digest = next(item.item_id for item in maintenance._needed_items(store, model_id, maintenance._lineages(store))
                  if item.kind == "blob")
    path = store.file_pers_service.blob_path(digest)
    os.unlink(path)
    os.mkdir(path)
    with pytest.raises(IntegrityError, match=f"blob {digest} in .* is a directory, not a file; the store is damaged: "
                                             "restore the blob from a backup"):
        BaselineSaveService(*store).recover_model(model_id)
    assert [problem.kind for problem in maintenance.verify(store)] == [maintenance.CORRUPTION]


@pytest.mark.parametrize("uri", ["mongodb://127.0.0.1:99999/db", "mongodb://127.0.0.1:1/bad name",
                                 "mongodb://127.0.0.1:1/bad.name", "mongodb+srv://no-such-host.invalid/db"])
def test_a_bad_mongodb_uri_is_store_unavailable(uri, capsys):
    with pytest.raises(StoreUnavailableError):
        open_store(uri)
    assert _cli(capsys, "--store", uri, "ls")[0] == EXIT_UNAVAILABLE


@pytest.mark.parametrize("member", ["../escaped.txt", "/absolute", "link"])
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(tmp_path, member):
    absolute = str(tmp_path / "absolute-escape.txt")  # unique to this test run, unlike a fixed /tmp name
    member = absolute if member == "/absolute" else member
    store = open_store(str(tmp_path / "store"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
            info = tarfile.TarInfo("link/through.txt")
        data = b"escaped"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = store.file_pers_service.write_stream(lambda sink: sink.write(buffer.getvalue()))
    reference = type(store.file_pers_service.save_bytes(b"", "x"))(reference_id=f"{digest}/data/")
    destination = tmp_path / "restore"
    try:
        store.file_pers_service.recover_file(reference, str(destination))
    except IntegrityError:
        pass
    assert not (tmp_path / "escaped.txt").exists() and not os.path.exists(absolute)


@pytest.mark.parametrize("field, value", [(STORE_TYPE, 5), (STORE_TYPE, "teleported"), (DERIVED_FROM, [1]),
                                          (RECOVER_INFO_ID, {"a": 1}), ("weights_hash_info", "not a tree"),
                                          ("state_layout", {"aliases": "x"})], ids=str)
def test_a_wrongly_typed_field_is_a_typed_error_in_recover_ls_and_verify(saved, capsys, field, value):
    location, store, model_id = saved
    store.dict_pers_service.add_field(model_id, MODEL_INFO, field, value)
    try:
        BaselineSaveService(*store).recover_model(model_id)
    except MMLibError:
        pass
    code, _ = _cli(capsys, "--store", location, "verify")
    assert code == EXIT_PROBLEMS
    try:
        maintenance.list_models(store)
    except MMLibError:
        pass


def test_a_model_id_that_is_not_a_string_is_not_found(saved):
    _, store, _ = saved
    with pytest.raises(MMLibError):
        BaselineSaveService(*store).recover_model(["not", "an", "id"])
    with pytest.raises(MMLibError):
        maintenance.model_details(store, ["not", "an", "id"])
