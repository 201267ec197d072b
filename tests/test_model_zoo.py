"""Every zoo model comes back exactly, by every approach, on the embedded store and on MongoDB + GridFS.

Exactly means: the same state-dict names, every tensor bit-exact with its dtype, the same sharing (tied
weights are one Parameter object again), the same non-persistent buffers, frozen parameters and train/eval
modes, and equal forward outputs on a fixed input. A derived version (a few fine-tuning steps) too.
"""

import copy
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from mmlib.constants import MMLIB_CONFIG
from mmlib.deterministic import deterministic
from mmlib.equal import tensor_equal
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.save_info import unwrap_compiled
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from zoo_models import (INPUTS, BuffersAndAttributes, ComplexLayer, Encoder, MixedPrecisionMLP, NoParameters,
                        Normalized, Parametrized, Recurrent, SharedLayers, TiedDecoderLM, Versioned, WithExtraState,
                        loss_of, model_input, output_tensors, tiny_bert, tiny_gpt2, zoo_train_wrapper)


@dataclass
class ZooEntry:
    """A zoo model: how to build it as it is saved, how to save it, and its input."""

    build: Callable[[], torch.nn.Module]
    inputs: str = "features"
    save_options: dict = field(default_factory=dict)
    trainable: bool = True


def _trained_norms() -> Normalized:
    model = Normalized()
    with torch.no_grad():
        model(INPUTS["features"](1))
    return model


def _frozen_encoder_in_eval() -> Encoder:
    model = Encoder()
    model.encoder.layers[0].requires_grad_(False)
    model.encoder.eval()
    return model


def _with_extra_state() -> WithExtraState:
    model = WithExtraState()
    model.counter.steps, model.counter.label = 3, "tuned"
    model.calibration.scale = torch.linspace(0.5, 2.0, 6)
    return model


def _compiled() -> torch.nn.Module:
    return torch.compile(MixedPrecisionMLP())


ZOO = {
    "tied_decoder_lm": ZooEntry(TiedDecoderLM, "tokens"),
    "gpt2": ZooEntry(tiny_gpt2, "tokens", {"model_import": "zoo_models:tiny_gpt2", "init_args": {"layers": 2}}),
    "bert": ZooEntry(tiny_bert, "tokens", {"model_import": "zoo_models:tiny_bert", "init_args": {"width": 16}}),
    "lstm": ZooEntry(lambda: Recurrent("lstm"), "sequences", {"init_args": {"cell": "lstm"}}),
    "gru": ZooEntry(lambda: Recurrent("gru"), "sequences", {"init_args": {"cell": "gru"}}),
    "transformer_encoder": ZooEntry(Encoder, "encoder_sequences"),
    "frozen_and_eval": ZooEntry(_frozen_encoder_in_eval, "encoder_sequences"),
    "parametrizations": ZooEntry(Parametrized),
    "batch_and_group_norm": ZooEntry(_trained_norms),
    "buffers_and_attributes_fp64": ZooEntry(lambda: BuffersAndAttributes().to(torch.float64)),
    "buffers_and_attributes_bf16": ZooEntry(lambda: BuffersAndAttributes().to(torch.bfloat16)),
    "complex": ZooEntry(ComplexLayer),
    "extra_state": ZooEntry(_with_extra_state),
    "no_parameters": ZooEntry(lambda: NoParameters(temperature=3.0), save_options={"init_args": {"temperature": 3.0}},
                              trainable=False),
    "shared_layers": ZooEntry(SharedLayers),
    "module_versions": ZooEntry(Versioned),
    "torch_compile": ZooEntry(_compiled),
    "fp16": ZooEntry(lambda: MixedPrecisionMLP().half()),
    "bf16": ZooEntry(lambda: MixedPrecisionMLP().to(torch.bfloat16)),
}
TRAINABLE = [name for name, entry in ZOO.items() if entry.trainable]
APPROACHES = {
    "baseline": BaselineSaveService,
    "update": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=False),
    "update_improved": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=True),
}


STORE_PAIRS = [("sqlite", "filesystem"), ("mongo", "gridfs")]  # the zoo is large: one pair per document store


def build_save_info(model, entry: ZooEntry, base_model_id=None):
    return ModelSaveInfoBuilder().add_model_info(model=model, base_model_id=base_model_id,
                                                 env=track_current_environment(), **entry.save_options).build()


def sharing_groups(model: torch.nn.Module, key: Callable[[torch.Tensor], object]) -> list[list[str]]:
    """Names of parameters and buffers grouped by `key` (the memory they view, or the object they are)."""
    groups = defaultdict(list)
    named = itertools.chain(model.named_parameters(remove_duplicate=False),
                            model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if tensor.numel():
            groups[key(tensor)].append(name)
    return sorted(sorted(names) for names in groups.values())


def _memory(tensor: torch.Tensor) -> tuple:
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def _equal_values(first, second) -> bool:
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and tensor_equal(first, second)
    return first == second


def forward_outputs(model: torch.nn.Module, inputs: str) -> list[torch.Tensor]:
    """Outputs in eval mode on a fixed input, computed on a copy (forward may update running statistics)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        return output_tensors(model(model_input(model, INPUTS[inputs](7))))


def assert_same_model(recovered: torch.nn.Module, original: torch.nn.Module, inputs: str) -> None:
    original = unwrap_compiled(original)
    assert type(recovered).__name__ == type(original).__name__
    saved, rebuilt = original.state_dict(keep_vars=True), recovered.state_dict(keep_vars=True)
    assert list(rebuilt) == list(saved)
    for name, value in saved.items():
        assert _equal_values(rebuilt[name], value), name
    assert sharing_groups(recovered, _memory) == sharing_groups(original, _memory)
    assert sharing_groups(recovered, id) == sharing_groups(original, id)
    assert len(list(recovered.parameters())) == len(list(original.parameters()))
    original_buffers = dict(original.named_buffers(remove_duplicate=False))
    for name, buffer in recovered.named_buffers(remove_duplicate=False):
        assert tensor_equal(buffer, original_buffers[name]), name
    assert ({name: p.requires_grad for name, p in recovered.named_parameters()}
            == {name: p.requires_grad for name, p in original.named_parameters()})
    assert ({name: m.training for name, m in recovered.named_modules()}
            == {name: m.training for name, m in original.named_modules()})
    outputs, expected = forward_outputs(recovered, inputs), forward_outputs(original, inputs)
    assert len(outputs) == len(expected) > 0
    assert all(tensor_equal(output, wanted) for output, wanted in zip(outputs, expected))
    assert not any(tensor.is_meta for module in recovered.modules() for tensor in vars(module).values()
                   if isinstance(tensor, torch.Tensor))


def fine_tune(model: torch.nn.Module, inputs: str, steps: int = 2) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        optimizer.zero_grad()
        loss_of(model, INPUTS[inputs](100 + step)).backward()
        optimizer.step()


@pytest.mark.parametrize("approach", list(APPROACHES))
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_and_a_derived_version_come_back_exactly(stores, approach, name):
    entry = ZOO[name]
    model = entry.build()
    service = APPROACHES[approach](*stores)
    base_id = service.save_model(build_save_info(model, entry))
    assert_same_model(service.recover_model(base_id, execute_checks=True).model, model, entry.inputs)
    if not entry.trainable:
        return
    fine_tune(unwrap_compiled(model), entry.inputs)
    derived_id = service.save_model(build_save_info(model, entry, base_model_id=base_id))
    if approach != "baseline":
        assert "update" in service.model_save_size(derived_id)["recover_info"]
    for recovering in (service, APPROACHES[approach](*stores)):
        assert_same_model(recovering.recover_model(derived_id, execute_checks=True).model, model, entry.inputs)


@pytest.fixture
def mmlib_config(tmp_path, monkeypatch):
    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\ncurrent_data_root = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))


@pytest.mark.parametrize("name", TRAINABLE)
def test_zoo_model_provenance_version_comes_back_exactly(stores, tmp_path, mmlib_config, name):
    entry = ZOO[name]
    model = entry.build()
    service = ProvenanceSaveService(*stores)
    base_id = service.save_model(build_save_info(model, entry))
    raw_data = tmp_path / "raw"
    raw_data.mkdir()
    (raw_data / "seed.txt").write_text("inputs are generated from seeds")
    wrapper = zoo_train_wrapper(unwrap_compiled(model))
    train_kwargs = {"inputs": entry.inputs, "steps": 2}
    info = (ModelSaveInfoBuilder()
            .add_model_info(model=model, base_model_id=base_id, env=track_current_environment(), **entry.save_options)
            .add_prov_data(raw_data_path=str(raw_data), train_kwargs=train_kwargs, train_service_wrapper=wrapper)
            .build())
    version_id = service.save_model(info)
    deterministic(wrapper.instance.train, [unwrap_compiled(model)], train_kwargs)
    service.add_weights_hash_info(version_id, model)
    recovered = ProvenanceSaveService(*stores).recover_model(version_id, execute_checks=True).model
    assert_same_model(recovered, model, entry.inputs)
