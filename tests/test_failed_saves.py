"""A save that fails on a full disk raises and leaves nothing behind: no temp files, no blobs, no documents."""

import errno
import os

import pytest

from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.persistence import _filesystem
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from save_helpers import perturb, save_info, store_contents
from tiny_models import TinyNet


_open_file = os.fdopen


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile:
    """A file that takes a few bytes and then reports a full disk, on writes and on flushes."""

    def __init__(self, fd, mode):
        self._file = _open_file(fd, mode)
        self._left = 64

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self._left:
            _disk_full()
        self._left -= size
        return self._file.write(data)

    def flush(self) -> None:
        if self._left < 64:
            _disk_full()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        self.flush()


@pytest.mark.parametrize("failure", ["writing", "fsync"])
@pytest.mark.parametrize("service_class", [BaselineSaveService, WeightUpdateSaveService])
def test_a_save_on_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch, failure, service_class):
    stores = FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(
        str(tmp_path / "meta.sqlite"))
    service = service_class(*stores)
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    perturb(model)
    before = store_contents(*stores)
    if failure == "writing":
        monkeypatch.setattr(_filesystem.os, "fdopen", _FullDiskFile)
    else:
        monkeypatch.setattr(_filesystem.os, "fsync", _disk_full)
    with pytest.raises(OSError) as raised:
        service.save_model(save_info(model, base_model_id=base_id))
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert store_contents(*stores) == before
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
