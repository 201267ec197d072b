"""Recovering onto a device: `recover_model(model_id, execute_checks, device)` places every tensor there as it is
rebuilt and checks it there; the default stays the CPU, wherever the model was saved from, which the environment
records. A bad or absent device is refused with a typed error before anything is read. The CUDA tests skip
without CUDA."""

import copy

import pytest
import torch

from mmlib import maintenance
from mmlib.approaches.base import AbstractSaveService, merkle_tree, recorded_environment, recovery_device
from mmlib.approaches.model_building import rebuild
from mmlib.approaches.model_state import capture, move_model, state_device
from mmlib.constants import MMLIB_CONFIG
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.errors import DeviceUnavailableError, InvalidArgumentError
from mmlib.persistence import Store
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.schema.environment import DEVICE, ENVIRONMENT
from mmlib.schema.model_info import ModelInfo
from provenance_helpers import save_trained_version
from save_helpers import perturb, save_info, store_contents
from test_views import ViewsOfAParameter
from tiny_models import TinyNet
from zoo_models import TiedDecoderLM

STORE_PAIRS = [("sqlite", "filesystem")]  # placing tensors does not depend on the backend
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CPU = torch.device("cpu")


def _services(file_service, dict_service) -> list[AbstractSaveService]:
    """One service of each of the four approaches over the same store."""
    return [BaselineSaveService(file_service, dict_service),
            WeightUpdateSaveService(file_service, dict_service, improved_version=False),
            WeightUpdateSaveService(file_service, dict_service, improved_version=True),
            ProvenanceSaveService(file_service, dict_service)]


def _saved_versions(service: AbstractSaveService) -> list[tuple[str, torch.nn.Module]]:
    """A TinyNet saved as a snapshot and, for the update approach, a perturbed update of it: (id, model saved)."""
    model = TinyNet()
    model_id = service.save_model(save_info(model))
    if not isinstance(service, WeightUpdateSaveService):
        return [(model_id, model)]
    update = perturb(copy.deepcopy(model), only="fc")
    return [(model_id, model), (service.save_model(save_info(update, base_model_id=model_id)), update)]


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of the model, shared ones under each name."""
    return [tensor for _, tensor in (*model.named_parameters(remove_duplicate=False),
                                     *model.named_buffers(remove_duplicate=False))]


def _same_state(recovered: torch.nn.Module, saved: torch.nn.Module) -> bool:
    """Equal state dicts (names, dtypes, values), compared on the CPU."""
    ours, theirs = recovered.state_dict(), saved.state_dict()
    return list(ours) == list(theirs) and all(
        ours[name].dtype == theirs[name].dtype and torch.equal(ours[name].cpu(), theirs[name].cpu()) for name in ours)


@pytest.fixture
def checked_models(monkeypatch) -> list[torch.nn.Module]:
    """The models recoveries check, in order."""
    checked: list[torch.nn.Module] = []
    original = AbstractSaveService._check_model

    def recording(self, model_info, model):
        checked.append(model)
        return original(self, model_info, model)
    monkeypatch.setattr(AbstractSaveService, "_check_model", recording)
    return checked


@pytest.mark.parametrize("device", ["cpu", CPU, None], ids=["str", "torch.device", "none"])
def test_every_approach_recovers_onto_the_device_asked_for_and_checks_the_model_there(stores, device,
                                                                                      checked_models):
    for service in _services(*stores):
        for model_id, model in _saved_versions(service):
            checked_models.clear()
            recovered = service.recover_model(model_id, execute_checks=True, device=device).model
            assert all(tensor.device == CPU for tensor in _tensors(recovered))
            assert checked_models and checked_models[-1] is recovered and _same_state(recovered, model)


def test_the_original_positional_calls_still_recover(stores):
    for service in _services(*stores):
        for model_id, model in _saved_versions(service):
            assert _same_state(service.recover_model(model_id, True).model, model)
            assert _same_state(service.recover_model(model_id, False).model, model)
        assert _same_state(maintenance.recover_model(Store(*stores), model_id, True), model)
        assert _same_state(maintenance.recover_model(Store(*stores), model_id, device="cpu"), model)


def test_tied_weights_come_back_on_the_device_as_one_tensor(stores):
    for service in _services(*stores):
        model = TiedDecoderLM()
        model_id = service.save_model(save_info(model))
        recovered = service.recover_model(model_id, device=CPU).model
        assert recovered.head.weight is recovered.token_embedding.weight
        assert all(tensor.device == CPU for tensor in _tensors(recovered))
        assert _same_state(recovered, model)


@pytest.mark.parametrize("device", ["meta", torch.device("meta"), "gpu", "cuda:x", "", 0, 1.5, b"cpu", ["cpu"]],
                         ids=["meta", "meta-device", "unknown-name", "bad-index", "empty", "int", "float", "bytes",
                              "list"])
def test_what_names_no_usable_device_is_refused_with_a_typed_error_before_anything_is_read(stores, device):
    for service in _services(*stores):
        model_id = service.save_model(save_info(TinyNet()))
        before = store_contents(*stores)
        with pytest.raises(InvalidArgumentError, match="device"):
            service.recover_model(model_id, True, device)
        assert store_contents(*stores) == before
    with pytest.raises(InvalidArgumentError, match="device"):
        maintenance.recover_model(Store(*stores), model_id, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused_with_a_typed_error_saying_what_to_do(stores):
    for service in _services(*stores):
        model_id = service.save_model(save_info(TinyNet()))
        for device in ("cuda", "cuda:0", torch.device("cuda", 0)):
            with pytest.raises(DeviceUnavailableError, match="device='cpu'"):
                service.recover_model(model_id, device=device)


def test_a_device_index_beyond_the_machines_devices_is_refused(stores):
    service = BaselineSaveService(*stores)
    model_id = service.save_model(save_info(TinyNet()))
    with pytest.raises(DeviceUnavailableError, match="cuda:99"):
        service.recover_model(model_id, device="cuda:99")


def test_the_device_argument_is_resolved_to_a_concrete_device():
    assert recovery_device(None) == CPU
    assert recovery_device("cpu") == CPU
    assert recovery_device(torch.device("cpu", 0)) == CPU
    if torch.cuda.is_available():
        assert recovery_device("cuda") == torch.device("cuda", torch.cuda.current_device())


class SharedMask(torch.nn.Module):
    """A non-persistent buffer that two submodules share (the constructor makes it; the store does not hold it)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        mask = torch.linspace(0.5, 1.5, 4)
        self.first.register_buffer("mask", mask, persistent=False)
        self.second.register_buffer("mask", mask, persistent=False)


@pytest.mark.parametrize("model_class", [TiedDecoderLM, SharedMask])
def test_a_rebuild_places_every_tensor_on_the_device_and_keeps_shared_ones_shared(model_class):
    """The meta device stands in for an accelerator here: the tensors are placed as they would be on a GPU."""
    meta = torch.device("meta")
    captured = capture(model_class())
    recovered = rebuild(model_class, captured.tensors, captured.layout, meta)
    assert all(tensor.device == meta for tensor in _tensors(recovered))
    if model_class is TiedDecoderLM:
        assert recovered.head.weight is recovered.token_embedding.weight
    else:
        assert recovered.first.mask is recovered.second.mask
    assert all(tensor.is_cpu for tensor in captured.tensors.values())


def test_moving_a_model_keeps_tied_weights_tied():
    model = TiedDecoderLM()
    assert move_model(model, CPU) is model
    moved = move_model(model, torch.device("meta"))
    assert all(tensor.device.type == "meta" for tensor in _tensors(moved))
    assert moved.head.weight is moved.token_embedding.weight


def test_a_cpu_save_records_no_device_so_its_environment_keeps_its_old_id(stores):
    service = BaselineSaveService(*stores)
    model = TinyNet()
    model_id = service.save_model(save_info(model))
    environment = ModelInfo.load(model_id, *stores, restore_root="/nonexistent", load_recursive=True) \
        .recover_info.environment
    assert environment.device is None
    assert DEVICE not in stores[1].recover_dict(environment.store_id, ENVIRONMENT)
    assert state_device(model) is None
    with torch.device("meta"):
        assert state_device(TinyNet()) == "meta"


@pytest.fixture
def raw_data(tmp_path, monkeypatch):
    """A small image dataset, and an MMLIB_CONFIG whose data root is a fresh directory."""
    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\ncurrent_data_root = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))
    return generate_image_dataset(str(tmp_path / "images"), images_per_class=4)


def test_a_provenance_version_is_retrained_and_checked_then_recovered_onto_the_device(stores, raw_data,
                                                                                     checked_models):
    from provenance_helpers import TinyNet as TrainableNet
    service = ProvenanceSaveService(*stores)
    model = TrainableNet()
    base_id = service.save_model(save_info(model))
    version_id = save_trained_version(service, model, base_id, raw_data,
                                      image_classification_train_wrapper(model, raw_data))
    for device in ("cpu", CPU):
        recovered = service.recover_model(version_id, True, device).model
        assert all(tensor.device == CPU for tensor in _tensors(recovered))
        assert _same_state(recovered, model) and checked_models[-1] is recovered


@CUDA
@pytest.mark.parametrize("model_class", [TinyNet, TiedDecoderLM, ViewsOfAParameter])
def test_a_model_saved_on_cuda_recovers_exactly_onto_cuda_and_onto_the_cpu(stores, model_class, checked_models):
    cuda = torch.device("cuda", 0)
    for service in _services(*stores):
        with cuda:  # built there, so views of one memory stay views (model.to would copy each on its own)
            model = model_class()
        saved_tree = merkle_tree(capture(model))
        assert merkle_tree(capture(model, to_cpu=False)) == saved_tree
        model_id = service.save_model(save_info(model))
        assert recorded_environment(save_info(model)).device == "cuda:0"
        for device, expected in (("cuda:0", cuda), ("cuda", cuda), (None, CPU), ("cpu", CPU)):
            recovered = service.recover_model(model_id, True, device).model
            assert all(tensor.device == expected for tensor in _tensors(recovered))
            assert checked_models[-1] is recovered and _same_state(recovered, model)
            assert merkle_tree(capture(recovered, to_cpu=False)) == saved_tree
            if model_class is TiedDecoderLM:
                assert recovered.head.weight is recovered.token_embedding.weight
            if model_class is ViewsOfAParameter:
                assert recovered.rows.data_ptr() == recovered.linear.weight.data_ptr() + 6 * 4
        environment = ModelInfo.load(model_id, *stores, restore_root="/nonexistent", load_recursive=True) \
            .recover_info.environment
        assert environment.device == "cuda:0"
        moved = move_model(model, CPU)
        assert all(tensor.device == CPU for tensor in _tensors(moved))
        assert capture(moved).layout == capture(recovered).layout and merkle_tree(capture(moved)) == saved_tree


@CUDA
def test_an_update_saved_on_cuda_recovers_onto_cuda(stores):
    cuda = torch.device("cuda", 0)
    service = WeightUpdateSaveService(*stores)
    model = TinyNet().to(cuda)
    base_id = service.save_model(save_info(model))
    update_id = service.save_model(save_info(perturb(model, only="fc"), base_model_id=base_id))
    for fresh in (service, WeightUpdateSaveService(*stores)):
        recovered = fresh.recover_model(update_id, device=cuda).model
        assert all(tensor.device == cuda for tensor in _tensors(recovered))
        assert _same_state(recovered, model)
