"""Restorable object wrappers: persisted, loaded and restored through every store; names checked before import."""

import threading

import pytest
import torch

from mmlib.config import config_override, config_value, ini_value
from mmlib.constants import CURRENT_DATA_ROOT, MMLIB_CONFIG
from mmlib.errors import IntegrityError, ConfigurationError, InvalidSaveInfoError, RestoreError, UnsafeCodeError
from mmlib.persistence import FileReference, FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.persistence.base import BLOB
from mmlib.schema import Dataset, TrainInfo
from mmlib.schema.restorable_object import (CLASS_NAME, IMPORT_CMD, RESTORABLE_OBJECT, RestorableObjectWrapper,
                                            StateDictRestorableObjectWrapper, StateFileRestorableObjectWrapper,
                                            TrainService, add_params_from_config)
from mmlib.util.init_from_file import create_type

COUNTER_CODE = '''
import torch

from mmlib.schema.restorable_object import StateFileRestorableObject


class Counter(StateFileRestorableObject):
    def __init__(self, start, step=1, root=None, tensor=None):
        self.value = torch.tensor([float(start)])
        self.step = step
        self.root = root
        self.tensor = tensor

    def save_instance_state(self, path):
        torch.save({"value": self.value}, path)

    def restore_instance_state(self, path):
        self.value = torch.load(path, weights_only=True)["value"]
'''


@pytest.fixture
def counter_code(tmp_path):
    path = tmp_path / "counter.py"
    path.write_text(COUNTER_CODE)
    return str(path)


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "mmlib.ini"
    path.write_text(f"[VALUES]\n{CURRENT_DATA_ROOT} = /data/here\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(path))
    return path


class _Service(TrainService):
    def train(self, model, **kwargs):
        return kwargs


def test_import_cmd_wrapper_round_trip_with_ref_args(stores, tmp_path):
    fps, dps = stores
    dataset = torch.utils.data.TensorDataset(torch.arange(6.0))
    wrapper = RestorableObjectWrapper(import_cmd="from torch.utils.data import DataLoader",
                                      init_args={"batch_size": 2, "shuffle": False}, init_ref_type_args=["dataset"],
                                      instance=torch.utils.data.DataLoader(dataset, batch_size=2))
    assert wrapper.class_name == "DataLoader" and wrapper.code is None
    wrapper.check()
    wrapper_id = wrapper.persist(fps, dps)
    loaded = RestorableObjectWrapper.load(wrapper_id, fps, dps, str(tmp_path / "restore"), True, True)
    assert loaded.init_args == {"batch_size": 2, "shuffle": False} and loaded.init_ref_type_args == ["dataset"]
    with pytest.raises(RestoreError, match="dataset"):
        loaded.restore_instance()
    loader = loaded.restore_instance({"dataset": dataset})
    assert loader is loaded.instance and loader.batch_size == 2 and loader.dataset is dataset
    assert loaded.size_info(fps, dps).keys() == {"metadata_size"}


def test_state_file_wrapper_stores_current_state_and_restores_it(stores, tmp_path, counter_code, config):
    fps, dps = stores
    counter = create_type(counter_code, "Counter")(start=3)
    wrapper = StateFileRestorableObjectWrapper(code=counter_code, init_args={"start": 0}, init_ref_type_args=["tensor"],
                                               config_args={"root": CURRENT_DATA_ROOT}, instance=counter)
    first_id = wrapper.persist(fps, dps)
    assert wrapper.persist(fps, dps) == first_id  # unchanged state: the same document
    counter.value += 4
    second_id = wrapper.persist(fps, dps)
    assert second_id != first_id
    sizes = StateFileRestorableObjectWrapper.load_placeholder(second_id).size_info(fps, dps)
    assert set(sizes) == {"metadata_size", "code_file", "state_file"} and sizes["state_file"] > 0

    for obj_id, value in ((first_id, 3.0), (second_id, 7.0)):
        loaded = StateFileRestorableObjectWrapper.load(obj_id, fps, dps, str(tmp_path / "restore"), True, True)
        restored = loaded.restore_instance({"tensor": torch.ones(1)})
        assert restored.value.item() == value and restored.root == "/data/here"
        assert type(restored).__name__ == "Counter"


def test_state_dict_wrapper_layout_and_state_objs_ids(stores, tmp_path, counter_code):
    fps, dps = stores
    counter = create_type(counter_code, "Counter")(start=1)
    service = _Service({
        "counter": StateFileRestorableObjectWrapper(code=counter_code, init_args={"start": 0}, instance=counter),
        "loader": RestorableObjectWrapper(c_name="DataLoader", import_cmd="from torch.utils.data import DataLoader",
                                          init_args={}, init_ref_type_args=["dataset"]),
    })
    wrapper = StateDictRestorableObjectWrapper(instance=service)
    assert wrapper.class_name == "_Service" and wrapper.code.path == __file__
    wrapper.check()
    wrapper_id = wrapper.persist(fps, dps)
    loaded = StateDictRestorableObjectWrapper.load(wrapper_id, fps, dps, str(tmp_path / "restore"), True, True)
    assert set(loaded.state_objs) == {"counter", "loader"}
    assert loaded.state_objs["counter"] == service.state_objs["counter"].store_id
    assert open(loaded.code.path).read() == open(__file__).read()
    assert isinstance(loaded.load_state_obj("loader", RestorableObjectWrapper, fps, dps, str(tmp_path)),
                      RestorableObjectWrapper)
    with pytest.raises(RestoreError, match="no state object"):
        loaded.load_state_obj("optimizer", RestorableObjectWrapper, fps, dps, str(tmp_path))
    with pytest.raises(NotImplementedError):
        loaded.restore_instance(fps, dps, str(tmp_path))

    sizes = loaded.size_info(fps, dps)
    assert set(sizes) == {"metadata_size", "state_dict"}
    assert set(sizes["state_dict"]["counter"]) == {"metadata_size", "code_file", "state_file"}
    assert set(sizes["state_dict"]["loader"]) == {"metadata_size"}
    items = set(loaded.stored_items(dps))
    assert sum(item.kind == BLOB for item in items) == 3  # counter code, counter state, train service code
    assert sum(item.kind == RESTORABLE_OBJECT for item in items) == 2


def test_dataset_and_train_info_layouts(stores, tmp_path):
    fps, dps = stores
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.txt").write_text("x")
    first = Dataset(raw_data=FileReference(path=str(data))).persist(fps, dps)
    assert Dataset(raw_data=FileReference(path=str(data))).persist(fps, dps) == first
    assert set(Dataset.load_placeholder(first).size_info(fps, dps)) == {"metadata_size", "raw_data"}

    wrapper = StateDictRestorableObjectWrapper(instance=_Service())
    info = TrainInfo(ts_wrapper=wrapper, ts_wrapper_code=FileReference(path=__file__),
                     ts_wrapper_class_name="StateDictRestorableObjectWrapper", train_kwargs={"epochs": 1})
    info_id = info.persist(fps, dps)
    sizes = TrainInfo.load_placeholder(info_id).size_info(fps, dps)
    assert set(sizes) == {"metadata_size", "train_service", "wrapper_code"}
    assert sizes["train_service"] == {"metadata_size": sizes["train_service"]["metadata_size"], "state_dict": {}}
    loaded = TrainInfo.load(info_id, fps, dps, str(tmp_path / "restore"), load_recursive=True)
    assert loaded.train_kwargs == {"epochs": 1} and loaded.ts_wrapper.class_name == "_Service"


def test_unsafe_names_are_refused_before_import(stores, tmp_path, counter_code):
    fps, dps = stores
    with pytest.raises(UnsafeCodeError):
        RestorableObjectWrapper(c_name="os.system('x')", import_cmd="import os").check()
    with pytest.raises(UnsafeCodeError):
        RestorableObjectWrapper(c_name="DataLoader", import_cmd="from x import y; import os").check()
    wrapper_id = RestorableObjectWrapper(import_cmd="from torch.utils.data import DataLoader", c_name="DataLoader",
                                         init_args={}).persist(fps, dps)
    for field, value in ((IMPORT_CMD, "import os; os.remove('x')"), (CLASS_NAME, "__import__('os')")):
        dps.add_field(wrapper_id, RESTORABLE_OBJECT, field, value)
        with pytest.raises(IntegrityError, match="changed after it was stored"):
            RestorableObjectWrapper.load(wrapper_id, fps, dps, str(tmp_path), True, True)


def test_check_rejects_what_cannot_be_stored_or_restored(counter_code):
    with pytest.raises(InvalidSaveInfoError, match="class name"):
        RestorableObjectWrapper(import_cmd="import torch").check()
    with pytest.raises(InvalidSaveInfoError, match="code"):
        RestorableObjectWrapper(c_name="Counter", code="/no/such/file.py").check()
    with pytest.raises(InvalidSaveInfoError, match="JSON"):
        RestorableObjectWrapper(c_name="Counter", code=counter_code, init_args={"t": torch.ones(1)}).check()
    with pytest.raises(InvalidSaveInfoError, match="StateFileRestorableObject"):
        StateFileRestorableObjectWrapper(import_cmd="from torch.nn import Linear",
                                         instance=torch.nn.Linear(1, 1)).check()
    with pytest.raises(InvalidSaveInfoError, match="state_objs"):
        StateDictRestorableObjectWrapper(instance=_Service({"x": object()})).check()


def test_restore_needs_restored_files(stores, tmp_path, counter_code):
    fps, dps = stores
    wrapper_id = RestorableObjectWrapper(c_name="Counter", code=counter_code, init_args={"start": 1}).persist(fps, dps)
    with pytest.raises(RestoreError, match="load_files=True"):
        RestorableObjectWrapper.load(wrapper_id, fps, dps, str(tmp_path)).restore_instance()


def test_add_params_from_config(config, monkeypatch):
    assert add_params_from_config({"a": 1}, {"root": CURRENT_DATA_ROOT}) == {"a": 1, "root": "/data/here"}
    with pytest.raises(ConfigurationError, match="'missing'"):
        add_params_from_config({}, {"x": "missing"})
    monkeypatch.delenv(MMLIB_CONFIG)
    with pytest.raises(ConfigurationError, match=MMLIB_CONFIG):
        add_params_from_config({}, {"root": CURRENT_DATA_ROOT})
    assert add_params_from_config({"a": 1}, None) == {"a": 1}


def test_a_config_override_holds_for_its_own_thread_only(config):
    """Inside `config_override` the wrappers' config_args resolve to the override, in that thread alone."""
    seen = {}

    def resolve_in_thread() -> None:
        seen["other thread"] = add_params_from_config({}, {"root": CURRENT_DATA_ROOT})["root"]

    with config_override(CURRENT_DATA_ROOT, "/private/one"):
        with config_override(CURRENT_DATA_ROOT, "/private/two"):
            assert config_value(CURRENT_DATA_ROOT) == "/private/two"
        assert add_params_from_config({}, {"root": CURRENT_DATA_ROOT}) == {"root": "/private/one"}
        assert ini_value(CURRENT_DATA_ROOT) == "/data/here"
        thread = threading.Thread(target=resolve_in_thread)
        thread.start()
        thread.join()
    assert seen == {"other thread": "/data/here"}
    assert config_value(CURRENT_DATA_ROOT) == "/data/here"


@pytest.fixture
def embedded(tmp_path):
    return FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(
        str(tmp_path / "meta.sqlite"))


def _carried_counter(embedded, tmp_path, counter_code, names: list[str]) -> StateDictRestorableObjectWrapper:
    """A loaded train service wrapper whose state objects `names` share one counter wrapper stored without state,
    each carrying a state file of its own (the counter at 10, 11, ...)."""
    fps, dps = embedded
    counter = create_type(counter_code, "Counter")(start=0)
    stateless_id = StateFileRestorableObjectWrapper(code=counter_code, init_args={"start": 0},
                                                    instance=counter).without_state().persist(fps, dps)
    wrapper = StateDictRestorableObjectWrapper(c_name="_Service", code=__file__,
                                               state_objs={name: stateless_id for name in names})
    loaded = StateDictRestorableObjectWrapper.load(wrapper.persist(fps, dps), fps, dps, str(tmp_path), True, True)
    for index, name in enumerate(names):
        counter.value = torch.tensor([10.0 + index])
        path = str(tmp_path / f"carried-{name}")
        counter.save_instance_state(path)
        loaded.carried_states[name] = FileReference(path=path)
    return loaded


def test_inside_carrying_a_wrapper_loaded_by_its_id_gets_the_carried_state(embedded, tmp_path, counter_code):
    """The original MMlib's train services load their state objects with `Cls.load(id, ...)`, not load_state_obj,
    and may restore them lazily in train: inside `carrying()` that gets the carried state too."""
    fps, dps = embedded
    loaded = _carried_counter(embedded, tmp_path, counter_code, ["counter"])
    counter_id = loaded.state_objs["counter"]
    with loaded.carrying():
        direct = StateFileRestorableObjectWrapper.load(counter_id, fps, dps, str(tmp_path), True, True)
        by_name = loaded.load_state_obj("counter", StateFileRestorableObjectWrapper, fps, dps, str(tmp_path))
    assert direct.restore_instance().value.item() == 10.0 == by_name.restore_instance().value.item()
    outside = StateFileRestorableObjectWrapper.load(counter_id, fps, dps, str(tmp_path), True, True)
    with pytest.raises(RestoreError, match="state file of Counter is not restored"):
        outside.restore_instance()


def test_carried_states_that_share_a_stored_wrapper_are_told_apart_by_name_only(embedded, tmp_path, counter_code):
    fps, dps = embedded
    loaded = _carried_counter(embedded, tmp_path, counter_code, ["first", "second"])
    with loaded.carrying():
        direct = StateFileRestorableObjectWrapper.load(loaded.state_objs["first"], fps, dps, str(tmp_path), True, True)
        with pytest.raises(RestoreError, match="load_state_obj"):
            direct.restore_instance()
        values = [loaded.load_state_obj(name, StateFileRestorableObjectWrapper, fps, dps, str(tmp_path))
                  .restore_instance().value.item() for name in ("first", "second")]
    assert values == [10.0, 11.0]
