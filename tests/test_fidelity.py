"""A save returns an id only for a model that comes back exactly; caches never change what is stored.

The zoo (test_model_zoo.py) covers models that must round-trip; this file covers what must be refused at
save time, checks that must catch a rebuilt model that differs, every dtype, and the caches.
"""

import io

import pytest
import torch

import mmlib.approaches.base
from mmlib.approaches import model_building
from mmlib.equal import state_dict_equal
from mmlib.errors import IntegrityError, InvalidSaveInfoError
from mmlib.maintenance import verify
from mmlib.models import ResNet18
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService, open_store
from mmlib.persistence.base import split_reference_id
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.state_layout import StateLayout
from mmlib.util.safetensors_io import read_state_dict, write_state_dict
from save_helpers import save_info, store_contents
from test_model_zoo import ZOO, assert_same_model, fine_tune
from zoo_models import STORABLE_DTYPES, DriftingCounter, DriftingLinear, EveryDtype, NoParameters, Recurrent

SERVICES = {
    "baseline": BaselineSaveService,
    "update": WeightUpdateSaveService,
    "provenance": ProvenanceSaveService,
}


@pytest.fixture
def local_stores(tmp_path):
    return FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(
        str(tmp_path / "meta.sqlite"))


@pytest.fixture(params=list(SERVICES))
def service(request, local_stores):
    return SERVICES[request.param](*local_stores)


def _refused(service, local_stores, info, match: str) -> None:
    """The save raises InvalidSaveInfoError matching `match` and leaves the store as it was."""
    before = store_contents(*local_stores)
    with pytest.raises(InvalidSaveInfoError, match=match):
        service.save_model(info)
    assert store_contents(*local_stores) == before


def _replaced_head() -> torch.nn.Module:
    model = ResNet18()
    model.fc = torch.nn.Linear(512, 10)
    return model


def _added_layer() -> torch.nn.Module:
    model = ResNet18()
    model.adapter = torch.nn.Linear(512, 512)
    return model


def _reregistered_layer() -> torch.nn.Module:
    model = ResNet18()
    layer = model.layer1
    del model.layer1
    model.layer1 = layer
    return model


def _replaced_activation() -> torch.nn.Module:
    model = NoParameters()
    model.activation = torch.nn.ReLU()
    return model


@pytest.mark.parametrize("make_model, match", [
    (_replaced_head, r"'fc.weight' has shape \[10, 512\] but ResNet18\(\) builds \[1000, 512\]"),
    (_added_layer, "adapter"),
    (_replaced_activation, "module 'activation' is a ReLU in the model but NoParameters.* builds a GELU"),
    (_reregistered_layer, "registers the model's layers in another order"),
], ids=["replaced head", "added layer", "replaced parameter-free layer", "layers in another order"])
def test_a_model_its_class_does_not_build_is_refused(service, local_stores, make_model, match):
    _refused(service, local_stores, save_info(make_model()), match)



def test_an_architecture_is_built_to_check_it_once_per_process_not_once_per_service(local_stores, monkeypatch):
    """`mmlib.save` opens new services for every call: each paid for building the model again (7 ms for ResNet-50)."""
    monkeypatch.setattr(mmlib.approaches.base, "_REBUILDABLE", set())
    built = []
    check = mmlib.approaches.base.check_rebuildable
    monkeypatch.setattr(mmlib.approaches.base, "check_rebuildable", lambda *args: built.append(args) or check(*args))
    for seed in range(2):
        torch.manual_seed(seed)
        BaselineSaveService(*local_stores).save_model(save_info(Recurrent("lstm")))
    torch.manual_seed(0)
    BaselineSaveService(*local_stores).save_model(save_info(Recurrent("gru"), init_args={"cell": "gru"}))
    assert len(built) == 2

@pytest.mark.parametrize("init_args, match", [
    (5, "init_args must be a dict"), ([4], "init_args must be a dict"), ({1: "lstm"}, "init_args must be a dict"),
    ({"unknown": 1}, "does not accept init_args"), ({"cell": "lstm", "layers": 2}, "does not accept init_args"),
    ({"cell": {1, 2}}, "JSON values"),
], ids=str)
def test_init_args_the_constructor_does_not_accept_are_refused(service, local_stores, init_args, match):
    _refused(service, local_stores, save_info(Recurrent("lstm"), init_args=init_args), match)


def test_init_args_that_build_another_architecture_are_refused(service, local_stores):
    _refused(service, local_stores, save_info(Recurrent("lstm"), init_args={"cell": "gru"}), "GRU")


class Outer(torch.nn.Module):
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)


def test_a_nested_class_is_refused(service, local_stores):
    _refused(service, local_stores, save_info(Outer.Inner()), "not a top-level name")


class OddExtraState(torch.nn.Module):
    def __init__(self, value=None):
        super().__init__()
        self.value = value

    def get_extra_state(self):
        return self.value

    def set_extra_state(self, state) -> None:
        self.value = state


@pytest.mark.parametrize("value", [{1, 2}, (1, 2), object(), float("nan"), {"inner": (3,)}],
                         ids=["set", "tuple", "object", "nan", "dict-holding-a-tuple"])
def test_extra_state_that_is_neither_a_tensor_nor_json_is_refused(service, local_stores, value):
    _refused(service, local_stores, save_info(OddExtraState(value)), "extra state")


def test_a_quantized_tensor_is_refused(service, local_stores):
    model = torch.nn.Module()
    model.register_buffer("codes", torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.quint8))
    _refused(service, local_stores, save_info(model), "quantized")


@pytest.mark.parametrize("approach", ["baseline", "update"])
def test_checked_recovery_verifies_the_rebuilt_model_not_the_stored_tensors(local_stores, approach):
    service = SERVICES[approach](*local_stores)
    model = DriftingLinear(3, 3)
    model_id = service.save_model(save_info(model, init_args={"in_features": 3, "out_features": 3}))
    with pytest.raises(IntegrityError, match=model_id):
        service.recover_model(model_id, execute_checks=True)
    drifted = service.recover_model(model_id, execute_checks=False).model
    assert torch.equal(drifted.weight, model.weight + 1)


@pytest.mark.parametrize("approach", ["baseline", "update"])
def test_checked_recovery_verifies_the_rebuilt_extra_state(local_stores, approach):
    service = SERVICES[approach](*local_stores)
    model_id = service.save_model(save_info(DriftingCounter()))
    with pytest.raises(IntegrityError, match=model_id):
        service.recover_model(model_id, execute_checks=True)
    assert service.recover_model(model_id, execute_checks=False).model.steps == 1


def test_every_dtype_round_trips_in_snapshots_and_deltas(local_stores):
    model = EveryDtype().randomize(seed=1)
    service = WeightUpdateSaveService(*local_stores)
    base_id = service.save_model(save_info(model))
    model.randomize(seed=2)
    derived_id = service.save_model(save_info(model, base_model_id=base_id))
    assert "update" in service.model_save_size(derived_id)["recover_info"]
    recovered = WeightUpdateSaveService(*local_stores).recover_model(derived_id, execute_checks=True).model
    assert [buffer.dtype for buffer in recovered.buffers()] == STORABLE_DTYPES
    assert state_dict_equal(recovered.state_dict(), model.state_dict())


def test_a_model_without_parameters_or_buffers_recovers_with_checks_and_verifies(tmp_path):
    store = open_store(str(tmp_path / "store"))
    service = BaselineSaveService(*store)
    model_id = service.save_model(save_info(NoParameters()))
    assert type(service.recover_model(model_id, execute_checks=True).model).__name__ == "NoParameters"
    assert verify(store) == []


def test_extra_state_round_trips_without_pickle(local_stores):
    model = ZOO["extra_state"].build()
    model_id = BaselineSaveService(*local_stores).save_model(save_info(model))
    recovered = BaselineSaveService(*local_stores).recover_model(model_id).model
    assert (recovered.counter.steps, recovered.counter.label) == (3, "tuned")
    assert torch.equal(recovered.calibration.scale, model.calibration.scale)


def test_a_class_of_an_installed_package_is_saved_by_import_path(local_stores):
    model = torch.nn.LSTM(4, 8, num_layers=2)
    service = BaselineSaveService(*local_stores)
    model_id = service.save_model(save_info(model, init_args={"input_size": 4, "hidden_size": 8, "num_layers": 2}))
    snapshot = ModelInfo.load(model_id, *local_stores, "", load_recursive=True).recover_info
    assert (snapshot.model_import, snapshot.model_code) == ("torch.nn.modules.rnn:LSTM", None)
    assert state_dict_equal(service.recover_model(model_id).model.state_dict(), model.state_dict())


def _update_digest(local_stores, model_id: str) -> str:
    return ModelInfo.load(model_id, *local_stores, "", load_recursive=True).recover_info.update.reference_id


@pytest.mark.parametrize("improved", [True, False], ids=["improved", "plain"])
@pytest.mark.parametrize("name", ["tied_decoder_lm", "buffers_and_attributes_bf16", "fp16", "shared_layers"])
def test_a_save_after_recovering_its_base_stores_what_an_uncached_save_stores(local_stores, name, improved):
    entry = ZOO[name]
    model = entry.build()
    first = WeightUpdateSaveService(*local_stores, improved_version=improved)
    base_id = first.save_model(save_info(model))
    fine_tune(model, entry.inputs)
    middle_id = first.save_model(save_info(model, base_model_id=base_id))
    for recovered_id in (base_id, middle_id):
        cached = WeightUpdateSaveService(*local_stores, improved_version=improved)
        recovered = cached.recover_model(recovered_id).model
        fine_tune(recovered, entry.inputs)
        uncached = WeightUpdateSaveService(*local_stores, improved_version=improved, cache_size=0)
        ids = [service.save_model(save_info(recovered, base_model_id=recovered_id)) for service in (cached, uncached)]
        assert _update_digest(local_stores, ids[0]) == _update_digest(local_stores, ids[1])
        assert_same_model(uncached.recover_model(ids[0]).model, recovered, entry.inputs)


def test_a_model_recovered_from_one_store_saves_with_its_code_into_another(tmp_path):
    store_a = open_store(str(tmp_path / "a"))
    store_b = open_store(str(tmp_path / "b"))
    model = ZOO["tied_decoder_lm"].build()
    service_a = BaselineSaveService(*store_a)
    recovered = service_a.recover_model(service_a.save_model(save_info(model))).model
    service_a._restore_dir.cleanup()
    service_b = BaselineSaveService(*store_b)
    model_id = service_b.save_model(save_info(recovered))
    code = ModelInfo.load(model_id, *store_b, "", load_recursive=True).recover_info.model_code
    assert store_b.file_pers_service.blob_exists(split_reference_id(code.reference_id)[0])
    assert_same_model(BaselineSaveService(*store_b).recover_model(model_id).model, model, "tokens")


def test_a_rebuild_that_loses_a_tie_fails_the_check(local_stores, monkeypatch):
    service = BaselineSaveService(*local_stores)
    model_id = service.save_model(save_info(ZOO["tied_decoder_lm"].build()))
    monkeypatch.setattr(model_building, "_restore_layout", lambda model, layout: None)
    with pytest.raises(IntegrityError, match="tied"):
        service.recover_model(model_id, execute_checks=True)


@pytest.mark.parametrize("document", [
    {"buffer_dtypes": [["mask", "os.system"]]}, {"aliases": {"a": "b"}}, {"tied": "a"},
    {"module_metadata": [[{"version": 1}, [3]]]}, {"extra_states": [["a"]]},
], ids=str)
def test_a_damaged_state_layout_is_an_integrity_error(document):
    with pytest.raises(IntegrityError, match="state layout"):
        StateLayout.from_document(document)


def test_a_weights_blob_naming_an_unknown_dtype_is_an_integrity_error():
    sink = io.BytesIO()
    write_state_dict({"z": torch.zeros(2, dtype=torch.complex128)}, sink)
    damaged = sink.getvalue().replace(b"complex128", b"complex999")
    with pytest.raises(IntegrityError):
        read_state_dict(memoryview(bytearray(damaged)))
