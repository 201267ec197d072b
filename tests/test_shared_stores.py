"""A store a team shares: a user who may only read it reads it without changing it, and files get the umask's mode.

Root ignores permission bits, so the reads run in a child process that has switched to an unprivileged user.
"""

import contextlib
import functools
import io
import multiprocessing
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from typing import Callable, Iterator

import pymongo
import pymongo.monitoring
import pytest
import torch

from mmlib import maintenance
from mmlib.cli import main
from mmlib.errors import StoreUnavailableError
from mmlib.persistence import open_store
from mmlib.persistence.store import METADATA_FILE
from mmlib.save import BaselineSaveService
from save_helpers import save_info
from tiny_models import TinyNet

READER = "mmlib-test-reader"


def _unprivileged_user() -> pwd.struct_passwd:
    """An account without privileges: `nobody`, else one created for the test; skip when we cannot switch users."""
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    for name in ("nobody", READER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    if shutil.which("useradd") is None:
        pytest.skip("no unprivileged user and no useradd to create one")
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", READER], check=True)
    return pwd.getpwnam(READER)


def _as_user(user: pwd.struct_passwd, queue, action: Callable[[], object]) -> None:
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    try:
        queue.put(("ok", action()))
    except Exception as error:  # the parent asserts on the type and message
        queue.put((type(error).__name__, str(error)))


def run_as(user: pwd.struct_passwd, action: Callable[[], object]) -> tuple[str, object]:
    """Run `action` in a forked child as `user`; returns ("ok", its result) or (error type name, message)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_as_user, args=(user, queue, action))
    child.start()
    result = queue.get(timeout=300)
    child.join(timeout=60)
    return result


def cli(*argv: str) -> tuple[int, str]:
    """Run the `mmlib` command in this process; returns its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def listing(root: str) -> dict[str, int]:
    """Every path under `root` and its mode."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_mode
    return found


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory every user may enter (pytest's own temp directory is private to root)."""
    path = tempfile.mkdtemp(prefix="mmlib-shared-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def _save(location: str) -> str:
    store = open_store(location)
    model_id = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    store.dict_pers_service.connection().close()  # as when the saving process ends: the -wal and -shm files go
    return model_id


def _warm_up(location: str) -> None:
    """Import what the reads import, while the interpreter's files are readable (root's are not to others)."""
    model_id = _save(location)
    for command in (["ls"], ["show", model_id], ["tree"], ["verify"], ["gc", "--dry-run"]):
        cli("--store", location, *command)
    maintenance.export_weights(open_store(location), model_id, os.path.join(location, "w.safetensors"))


def _read_everything(location: str, model_id: str, output: str) -> list:
    codes = [cli("--store", location, *command)[0]
             for command in (["ls"], ["show", model_id], ["tree"], ["verify"], ["gc", "--dry-run"],
                             ["recover", model_id, "-o", output])]
    model = BaselineSaveService(*open_store(location)).recover_model(model_id).model
    return codes + [type(model).__name__]


def _refused_writes(location: str) -> list[str]:
    refused = []
    store = open_store(location)
    for write in (lambda: store.file_pers_service.save_bytes(b"new bytes", "n.bin"),
                  lambda: store.dict_pers_service.save_dict({"a": 1}, "thing"),
                  lambda: BaselineSaveService(*store).save_model(save_info(TinyNet()))):
        try:
            write()
        except StoreUnavailableError as error:
            refused.append(str(error))
    return refused


@pytest.mark.parametrize("protection", ["another account's store", "chmod -R a-w"])
@pytest.mark.parametrize("writer_connected", [False, True])
def test_a_user_who_may_only_read_reads_everything_and_changes_nothing(shared_dir, umask, protection,
                                                                       writer_connected):
    user = _unprivileged_user()
    _warm_up(os.path.join(shared_dir, "warm-up"))
    location = os.path.join(shared_dir, "store")
    model_id = _save(location)
    writer = open_store(location).dict_pers_service
    if writer_connected:  # a saving process still has the database open: its -wal and -shm files exist
        writer.all_types()
    if protection == "chmod -R a-w":
        subprocess.run(["chmod", "-R", "a-w", location], check=True)
    out_dir = os.path.join(shared_dir, "out")
    os.mkdir(out_dir)
    os.chown(out_dir, user.pw_uid, user.pw_gid)
    before = listing(location)
    assert os.path.exists(os.path.join(location, f"{METADATA_FILE}-shm")) == writer_connected
    status, result = run_as(user, lambda: _read_everything(location, model_id, os.path.join(out_dir, "w.st")))
    assert (status, result) == ("ok", [0, 0, 0, 0, 0, 0, "TinyNet"])
    assert listing(location) == before
    status, refused = run_as(user, lambda: _refused_writes(location))
    assert status == "ok" and len(refused) == 3, refused
    assert all("\n" not in message and "write access" in message for message in refused), refused
    assert listing(location) == before


def _modes(root: str) -> set[tuple[str, int]]:
    return {("dir" if stat.S_ISDIR(mode) else "file", stat.S_IMODE(mode)) for mode in listing(root).values()}


@pytest.mark.parametrize("mask, directory_mode, file_mode", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)])
def test_files_and_directories_get_the_umask_s_permissions(tmp_path, umask, mask, directory_mode, file_mode):
    umask(mask)
    location = str(tmp_path / "store")
    store = open_store(location)
    model_id = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    store.dict_pers_service.all_types()  # the -wal and -shm files exist while a connection is open
    exported = tmp_path / "weights.safetensors"
    maintenance.export_weights(store, model_id, str(exported))
    assert {name for name in os.listdir(location)} >= {METADATA_FILE, f"{METADATA_FILE}-wal", "blobs"}
    assert _modes(location) == {("dir", directory_mode), ("file", file_mode)}
    assert stat.S_IMODE(exported.stat().st_mode) == file_mode


class _WriteCommands(pymongo.monitoring.CommandListener):
    """Records the write commands clients send to the MongoDB server."""

    WRITES = {"insert", "update", "delete", "findAndModify", "createIndexes", "create", "drop", "dropIndexes"}

    def __init__(self):
        self.writes: list[str] = []

    def started(self, event) -> None:
        if event.command_name in self.WRITES:
            self.writes.append(event.command_name)

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def test_reading_a_mongodb_store_sends_no_write_command(mongo_database, monkeypatch):
    """What a user with MongoDB's `read` role does (open, ls, show, tree, verify, recover, gc --dry-run) writes
    nothing: the server would refuse it."""
    uri, name = mongo_database
    location = f"{uri}/{name}"
    model = TinyNet()
    model_id = BaselineSaveService(*open_store(location)).save_model(save_info(model))
    listener = _WriteCommands()
    monkeypatch.setattr(pymongo, "MongoClient", functools.partial(pymongo.MongoClient, event_listeners=[listener]))
    reader = open_store(location, create=False)
    recovered = BaselineSaveService(*reader).recover_model(model_id, execute_checks=True).model
    assert maintenance.list_models(reader)[0].model_id == model_id
    maintenance.model_details(reader, model_id)
    maintenance.version_tree(reader)
    assert maintenance.verify(reader) == []
    maintenance.collect_garbage(reader, dry_run=True, grace_seconds=0)
    assert listener.writes == []
    assert all(torch.equal(recovered.state_dict()[key], value) for key, value in model.state_dict().items())
    BaselineSaveService(*reader).save_model(save_info(TinyNet()))  # the listener sees what a writer sends
    assert "insert" in listener.writes or "update" in listener.writes
