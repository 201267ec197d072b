"""An edited metadata document never runs code: an edit in place breaks the id that commits to it, and even a
record forged with recomputed digests reaches with its import path or class name only what the record names."""

import logging

import pytest

from mmlib.errors import IncompatibleModelError, IntegrityError, UnsafeCodeError
from mmlib.maintenance import verify
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService
from mmlib.schema.model_info import MODEL_INFO, RECOVER_INFO_ID
from mmlib.schema.recover_info import MODEL_CLASS_NAME, MODEL_IMPORT, MODEL_INIT_ARGS, RECOVER_INFO
from mmlib.util.init_from_file import import_object
from save_helpers import forge_record, save_info
from tiny_models import TinyNet


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


def _edit_recover_info(store, model_id: str, **fields) -> None:
    recover_info_id = store.dict_pers_service.recover_dict(model_id, MODEL_INFO)[RECOVER_INFO_ID]
    for key, value in fields.items():
        store.dict_pers_service.add_field(recover_info_id, RECOVER_INFO, key, value)


@pytest.mark.parametrize("model_import", ["os:system", "subprocess:run", "torch:os", "torch.nn:init",
                                          "torch:os.system", "builtins:eval"])
def test_an_edited_import_path_runs_nothing(store, tmp_path, model_import):
    marker = tmp_path / "marker"
    service = BaselineSaveService(*store)
    model_id = service.save_model(save_info(TinyNet()))
    commands = {"command": f"touch {marker}", "args": ["touch", str(marker)]}
    fields = {MODEL_IMPORT: model_import, MODEL_INIT_ARGS: commands}
    forged_id = forge_record(store.dict_pers_service, model_id, **fields)
    _edit_recover_info(store, model_id, **fields)
    for checks in (True, False):
        with pytest.raises(IntegrityError, match="changed after it was stored"):
            service.recover_model(model_id, execute_checks=checks)
        with pytest.raises((UnsafeCodeError, IncompatibleModelError)):
            service.recover_model(forged_id, execute_checks=checks)
    assert sorted(problem.model_id for problem in verify(store)) == sorted([model_id, forged_id])
    assert not marker.exists()


@pytest.mark.parametrize("model_import", ["logging.config:dictConfig", "http.server:HTTPServer", "os.path:join",
                                          "xml.etree.ElementTree:parse", "concurrent.futures:ThreadPoolExecutor"])
def test_an_edited_import_path_into_a_standard_library_submodule_is_refused_before_import(store, model_import):
    service = BaselineSaveService(*store)
    model_id = service.save_model(save_info(TinyNet()))
    logging_config = {"config": {"version": 1, "root": {"level": "CRITICAL"}}}
    forged_id = forge_record(store.dict_pers_service, model_id,
                             **{MODEL_IMPORT: model_import, MODEL_INIT_ARGS: logging_config})
    root_level = logging.getLogger().level
    for checks in (True, False):
        with pytest.raises(UnsafeCodeError, match="standard library"):
            service.recover_model(forged_id, execute_checks=checks)
    assert logging.getLogger().level == root_level  # dictConfig never ran


@pytest.mark.parametrize("class_name", ["torch", "nn", "torch.os.system", "os", "tiny_input"])
def test_an_edited_class_name_reaches_only_classes_defined_in_the_stored_code(store, class_name):
    service = BaselineSaveService(*store)
    model_id = service.save_model(save_info(TinyNet()))
    forged_id = forge_record(store.dict_pers_service, model_id, **{MODEL_CLASS_NAME: class_name})
    with pytest.raises(UnsafeCodeError):
        service.recover_model(forged_id, execute_checks=False)


def test_import_paths_of_installed_packages_still_work():
    assert import_object("torch.nn:LSTM").__name__ == "LSTM"
    with pytest.raises(UnsafeCodeError, match="standard library"):
        import_object("json:loads")


def test_a_factory_that_builds_no_module_is_a_typed_error(store, tmp_path, monkeypatch):
    package = tmp_path / "package"
    package.mkdir()
    (package / "odd_factories.py").write_text(
        "import torch\n\n\ndef linear():\n    return torch.nn.Linear(2, 2)\n\n\ndef tensor():\n"
        "    return torch.zeros(2)\n")
    monkeypatch.syspath_prepend(str(package))
    service = BaselineSaveService(*store)
    model = import_object("odd_factories:linear")()
    model_id = service.save_model(save_info(model, model_import="odd_factories:linear"))
    forged_id = forge_record(store.dict_pers_service, model_id, **{MODEL_IMPORT: "odd_factories:tensor"})
    with pytest.raises(IncompatibleModelError, match="not a torch.nn.Module"):
        service.recover_model(forged_id, execute_checks=False)
