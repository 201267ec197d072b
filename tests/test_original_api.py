"""The public API of the original MMlib, name by name (SPEC sections 1 and 1b).

Code written against the original library must run unchanged. So every public name is looked up at its
original import path; where the SPEC spells out a signature, the parameter names, their order and their
defaults are compared with it (parameters mmlib adds after them must be optional, so old calls still work);
and where the SPEC states what a function returns, that shape is checked on a small SQLite + file-system
store. The MongoDB classes are checked by signature only: no server is started here.
"""

import argparse
import ast
import importlib
import inspect
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mmlib.deterministic import deterministic
from mmlib.equal import blackbox_model_equal, model_equal
from mmlib.persistence import FileReference, open_store
from mmlib.probe import ProbeInfo, ProbeSummary, probe_inference, probe_training
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.save_info import ModelSaveInfo, ProvModelSaveInfo, TrainSaveInfo
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.restorable_object import RestorableObjectWrapper, StateDictRestorableObjectWrapper
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.schema.store_type import ModelStoreType
from mmlib.track_env import compare_env_to_current, track_current_environment
from mmlib.util.dummy_data import imagenet_input, imagenet_target
from mmlib.util.hash import inference_hash, state_dict_hash, tensor_hash
from mmlib.util.init_from_file import create_object, create_object_with_parameters, create_type
from mmlib.util.weight_dict_merkle_tree import (HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH, LEFT, OTHER, RIGHT, THIS,
                                                WeightDictMerkleTree)
from tiny_models import TinyNet, tiny_input

TINY_MODELS_CODE = str(Path(__file__).with_name("tiny_models.py"))

SAVE_SERVICE_METHODS = [("save_model", "save_info"), ("recover_model", "model_id, execute_checks=True"),
                        ("model_save_size", "model_id"), ("all_model_ids", "")]

# Every public name of SPEC section 1 at its import path ("module:attribute"), with the parameters the SPEC
# gives it: "name" when the SPEC states no default, "name=default" when it does, "**kwargs" for keyword
# catch-alls; None where the SPEC names the object without a signature.
PUBLIC_API = [
    # The services override the AbstractSaveService methods, so each override must keep the SPEC's parameters.
    *[(f"mmlib.save:{service}.{method}", parameters)
      for service in ("AbstractSaveService", "BaselineSaveService", "WeightUpdateSaveService",
                      "ProvenanceSaveService")
      for method, parameters in SAVE_SERVICE_METHODS],
    ("mmlib.save:BaselineSaveService", "file_pers_service, dict_pers_service, logging=False"),
    ("mmlib.save:WeightUpdateSaveService",
     "file_pers_service, dict_pers_service, improved_version=True, logging=False"),
    ("mmlib.save:ProvenanceSaveService", "file_pers_service, dict_pers_service, logging=False"),
    ("mmlib.save:ProvenanceSaveService.add_weights_hash_info", "model_id, model"),
    ("mmlib.save_info:ModelSaveInfo", "model, base_model, environment, model_code=None"),
    ("mmlib.save_info:ProvModelSaveInfo", None),
    ("mmlib.save_info:TrainSaveInfo", "train_service_wrapper, train_kwargs"),
    ("mmlib.schema.save_info_builder:ModelSaveInfoBuilder", ""),
    ("mmlib.schema.save_info_builder:ModelSaveInfoBuilder.add_model_info",
     "env, model=None, code=None, base_model_id=None"),
    ("mmlib.schema.save_info_builder:ModelSaveInfoBuilder.add_prov_data",
     "raw_data_path, train_kwargs, train_service_wrapper"),
    ("mmlib.schema.save_info_builder:ModelSaveInfoBuilder.build", ""),
    ("mmlib.schema.schema_obj:SchemaObj.persist", None),
    ("mmlib.schema.schema_obj:SchemaObj.load",
     "obj_id, file_pers_service, dict_pers_service, restore_root, load_recursive=False, load_files=False"),
    ("mmlib.schema.schema_obj:SchemaObj.load_placeholder", None),
    ("mmlib.schema.schema_obj:SchemaObj.load_all_fields", None),
    ("mmlib.schema.schema_obj:SchemaObj.size_info", None),
    ("mmlib.schema.model_info:ModelInfo", None),
    ("mmlib.schema.recover_info:FullModelRecoverInfo", None),
    ("mmlib.schema.recover_info:WeightsUpdateRecoverInfo", None),
    ("mmlib.schema.recover_info:ProvenanceRecoverInfo", None),
    ("mmlib.schema.environment:Environment", None),
    ("mmlib.schema.dataset:Dataset", None),
    ("mmlib.schema.train_info:TrainInfo", None),
    ("mmlib.schema.file_reference:FileReference", "path=None, reference_id=None"),
    ("mmlib.schema.store_type:ModelStoreType", None),
    ("mmlib.schema.restored_model_info:RestoredModelInfo", "model"),
    ("mmlib.schema.restorable_object:RestorableObjectWrapper",
     "c_name, init_args, init_ref_type_args, config_args, code, import_cmd, instance, store_id"),
    ("mmlib.schema.restorable_object:RestorableObjectWrapper.restore_instance", "ref_type_args=None"),
    ("mmlib.schema.restorable_object:StateFileRestorableObject.save_instance_state", "path"),
    ("mmlib.schema.restorable_object:StateFileRestorableObject.restore_instance_state", "path"),
    ("mmlib.schema.restorable_object:StateFileRestorableObjectWrapper.restore_instance", "ref_type_args"),
    ("mmlib.schema.restorable_object:StateDictObj", None),
    ("mmlib.schema.restorable_object:StateDictRestorableObjectWrapper.restore_instance",
     "file_pers_service, dict_pers_service, restore_root"),
    ("mmlib.schema.restorable_object:TrainService.train", "model, **kwargs"),
    ("mmlib.schema.restorable_object:add_params_from_config", None),
    ("mmlib.persistence:DictPersistenceService.generate_id", None),
    ("mmlib.persistence:DictPersistenceService.save_dict", None),
    ("mmlib.persistence:DictPersistenceService.recover_dict", None),
    ("mmlib.persistence:DictPersistenceService.dict_size", None),
    ("mmlib.persistence:DictPersistenceService.id_exists", None),
    ("mmlib.persistence:DictPersistenceService.all_ids_for_type", None),
    ("mmlib.persistence:DictPersistenceService.add_field", None),
    ("mmlib.persistence:FilePersistenceService.save_file", "file_ref"),
    ("mmlib.persistence:FilePersistenceService.recover_file", "file_ref, dst_dir"),
    ("mmlib.persistence:FilePersistenceService.file_size", "file_ref"),
    ("mmlib.persistence:FileSystemPersistenceService", "base_path"),
    ("mmlib.persistence:MongoDictPersistenceService", "host='127.0.0.1', db_name='mmlib'"),
    ("mmlib.probe:ProbeInfo", None),
    ("mmlib.probe:ProbeMode", None),
    ("mmlib.probe:ProbeSummary", "summary_path=None"),
    ("mmlib.probe:ProbeSummary.add_attribute", None),
    ("mmlib.probe:ProbeSummary.print_summary", "info"),
    ("mmlib.probe:ProbeSummary.compare_to", "other, common, compare"),
    ("mmlib.probe:ProbeSummary.save", "path"),
    ("mmlib.probe:ProbeSummary.load", "path"),
    ("mmlib.probe:ProbeSummary.has_layer_key", None),
    ("mmlib.probe:probe_inference", "model, inp, device=None, forward_indices=None"),
    ("mmlib.probe:probe_training", "model, inp, optimizer, loss_func, target, device=None, forward_indices=None"),
    ("mmlib.equal:blackbox_model_equal", "m1, m2, produce_input, device=None"),
    ("mmlib.equal:whitebox_model_equal", None),
    ("mmlib.equal:state_dict_equal", None),
    ("mmlib.equal:model_equal", None),
    ("mmlib.equal:tensor_equal", None),
    ("mmlib.deterministic:set_deterministic", ""),
    ("mmlib.deterministic:deterministic", "func, f_args, f_kwargs"),
    ("mmlib.track_env:track_current_environment", ""),
    ("mmlib.track_env:compare_env_to_current", "env"),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree",
     "hash_value=None, left=None, right=None, layer_key=None, layer_weights_hash=None"),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree.from_state_dict", None),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree.to_python_dict", ""),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree.from_python_dict", None),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree.diff", "other"),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree.get_all_leaves", ""),
    ("mmlib.util.weight_dict_merkle_tree:WeightDictMerkleTree.check_integrity", ""),
    ("mmlib.util.dummy_data:imagenet_input", "batch_size=10"),
    ("mmlib.util.dummy_data:imagenet_target", "inp"),
    ("mmlib.util.hash:state_dict_hash", None),
    ("mmlib.util.hash:tensor_hash", None),
    ("mmlib.util.hash:inference_hash", None),
    ("mmlib.util.init_from_file:create_object", "code, class_name"),
    ("mmlib.util.init_from_file:create_type", "code, type_name"),
    ("mmlib.util.init_from_file:create_object_with_parameters",
     "class_name, init_args, code_file=None, import_cmd=None, init_ref_type_args=None"),
    ("mmlib.util.mongo:MongoService", "host, db_name"),
    *[(f"mmlib.util.mongo:MongoService.{method}", None)
      for method in ("save_dict", "get_ids", "get_dict", "add_attribute", "document_size", "id_exists")],
]

# SPEC 1b: schema constructors take these keyword arguments, each optional, plus store_id=None.
SCHEMA_CONSTRUCTOR_KEYWORDS = [
    ("mmlib.schema.model_info:ModelInfo", "store_type, recover_info, derived_from_id, weights_hash_info"),
    ("mmlib.schema.recover_info:FullModelRecoverInfo", "parameters_file, model_code, model_class_name, environment"),
    ("mmlib.schema.recover_info:WeightsUpdateRecoverInfo", "update, update_type"),
    ("mmlib.schema.recover_info:ProvenanceRecoverInfo", "dataset, train_info, environment"),
    ("mmlib.schema.dataset:Dataset", "raw_data"),
    ("mmlib.schema.train_info:TrainInfo", "ts_wrapper, ts_wrapper_code, ts_wrapper_class_name, train_kwargs"),
    ("mmlib.schema.environment:Environment",
     "python_version, pytorch_version, processor_info, gpu_types, pytorch_info, python_platform_info, pip_freeze"),
]

# SPEC 1b public constants: (module, name, value), value None where the SPEC names the constant only.
CONSTANTS = [
    ("mmlib.constants", "MMLIB_CONFIG", "MMLIB_CONFIG"),
    ("mmlib.constants", "CURRENT_DATA_ROOT", "current_data_root"),
    ("mmlib.constants", "VALUES", "VALUES"),
    ("mmlib.constants", "ID", "id"),
    ("mmlib.schema.schema_obj", "METADATA_SIZE", "metadata_size"),
    *[("mmlib.schema.model_info", name, None)
      for name in ("MODEL_INFO", "STORE_TYPE", "RECOVER_INFO_ID", "DERIVED_FROM", "WEIGHTS_HASH_INFO")],
    ("mmlib.schema.recover_info", "RECOVER_INFO", "recover_info"),
    ("mmlib.schema.recover_info", "ENVIRONMENT", "environment"),
    ("mmlib.schema.recover_info", "MODEL_CODE", "model_code"),
    ("mmlib.schema.recover_info", "MODEL_CLASS_NAME", None),
    ("mmlib.schema.recover_info", "PARAMETERS", "parameters"),
    ("mmlib.schema.recover_info", "UPDATE", "update"),
    ("mmlib.schema.recover_info", "UPDATE_TYPE", None),
    ("mmlib.schema.recover_info", "DATASET", "dataset"),
    ("mmlib.schema.recover_info", "TRAIN_INFO", "train_info"),
    ("mmlib.schema.dataset", "RAW_DATA", "raw_data"),
    ("mmlib.schema.dataset", "DATASET", None),
    ("mmlib.schema.train_info", "TRAIN_SERVICE", "train_service"),
    ("mmlib.schema.train_info", "WRAPPER_CODE", "wrapper_code"),
    *[("mmlib.schema.train_info", name, None) for name in ("WRAPPER_CLASS_NAME", "TRAIN_KWARGS", "TRAIN_INFO")],
    ("mmlib.schema.restorable_object", "CODE_FILE", "code_file"),
    ("mmlib.schema.restorable_object", "STATE_FILE", "state_file"),
    ("mmlib.schema.restorable_object", "STATE_DICT", "state_dict"),
    *[("mmlib.schema.restorable_object", name, None)
      for name in ("CLASS_NAME", "IMPORT_CMD", "INIT_ARGS", "CONFIG_ARGS", "INIT_REF_TYPE_ARGS")],
    ("mmlib.util.weight_dict_merkle_tree", "THIS", "this"),
    ("mmlib.util.weight_dict_merkle_tree", "OTHER", "other"),
    ("mmlib.util.weight_dict_merkle_tree", "LEFT", "left"),
    ("mmlib.util.weight_dict_merkle_tree", "RIGHT", "right"),
    ("mmlib.util.weight_dict_merkle_tree", "LAYER_KEY", "layer_key"),
    ("mmlib.util.weight_dict_merkle_tree", "HASH_VALUE", "hash_value"),
    ("mmlib.util.weight_dict_merkle_tree", "LAYER_WEIGHT_HASH", "layer_weight_hash"),
]

NO_DEFAULT_STATED = object()


def resolve(path: str):
    """The object at "module:attribute.attribute", looked up as user code would import it."""
    module_name, attributes = path.split(":")
    found = importlib.import_module(module_name)
    for attribute in attributes.split("."):
        found = getattr(found, attribute)
    return found


def parse_parameters(spec: str) -> list[tuple[str, object]]:
    """[(name, default)] from "a, b=1, **kwargs"; NO_DEFAULT_STATED where the SPEC gives none."""
    parsed = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, default = item.partition("=")
        parsed.append((name, ast.literal_eval(default) if default else NO_DEFAULT_STATED))
    return parsed


def call_parameters(function) -> list[inspect.Parameter]:
    """The parameters a caller passes: without `self` (classes and class methods already leave out their own)."""
    parameters = list(inspect.signature(function).parameters.values())
    return parameters[1:] if parameters and parameters[0].name == "self" else parameters


def assert_parameters(path: str, spec: str) -> None:
    """The object at `path` takes the `spec` parameters first, in that order; any it adds after them are optional."""
    parameters = call_parameters(resolve(path))
    expected = parse_parameters(spec)
    for position, (name, default) in enumerate(expected):
        assert position < len(parameters), f"{path} lacks parameter {name!r}"
        actual = parameters[position]
        if name.startswith("**"):
            assert actual.kind is inspect.Parameter.VAR_KEYWORD, f"{path}: {actual} is not a **keywords catch-all"
            continue
        assert (actual.name, actual.kind) == (name, inspect.Parameter.POSITIONAL_OR_KEYWORD), \
            f"{path}: parameter {position + 1} is {actual}, expected {name!r} (positional or keyword)"
        if default is not NO_DEFAULT_STATED:
            assert actual.default == default, f"{path}: {name} defaults to {actual.default!r}, not {default!r}"
    for added in parameters[len(expected):]:
        assert (added.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                or added.default is not inspect.Parameter.empty), \
            f"{path}: added parameter {added} must be optional so that original calls keep working"


@pytest.mark.parametrize("path, spec", PUBLIC_API, ids=[path for path, _ in PUBLIC_API])
def test_public_name_exists_with_spec_signature(path, spec):
    assert callable(resolve(path))
    if spec is not None:
        assert_parameters(path, spec)


@pytest.mark.parametrize("path, keywords", SCHEMA_CONSTRUCTOR_KEYWORDS, ids=[p for p, _ in SCHEMA_CONSTRUCTOR_KEYWORDS])
def test_schema_constructor_takes_optional_keywords(path, keywords):
    parameters = {parameter.name: parameter for parameter in call_parameters(resolve(path))}
    for name in [*keywords.split(", "), "store_id"]:
        assert name in parameters, f"{path} lacks keyword {name!r}"
        assert parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY
        assert parameters[name].default is None, f"{path}: {name} must default to None"


@pytest.mark.parametrize("module_name, name, value", CONSTANTS, ids=[f"{m}.{n}" for m, n, _ in CONSTANTS])
def test_public_constant(module_name, name, value):
    constant = getattr(importlib.import_module(module_name), name)
    assert isinstance(constant, str)
    if value is not None:
        assert constant == value


def test_enum_members():
    assert {member.name for member in ModelStoreType} == {"FULL_MODEL", "WEIGHT_UPDATES", "PROVENANCE"}
    assert {member.name for member in ProbeInfo} == {
        "LAYER_ID", "FORWARD_INDEX", "BACKWARD_INDEX", "LAYER_NAME", "INPUT_SHAPE", "INPUT_TENSOR", "OUTPUT_SHAPE",
        "OUTPUT_TENSOR", "GRAD_INPUT_SHAPE", "GRAD_INPUT_TENSOR", "GRAD_OUTPUT_SHAPE", "GRAD_OUTPUT_TENSOR"}


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


def assert_size_layout(sizes: dict, layout: dict) -> None:
    """`sizes` has exactly the keys of `layout`: byte counts where `layout` holds None, nested dicts where it
    holds a dict (each of which has its own `metadata_size`)."""
    assert sizes.keys() == layout.keys()
    for key, nested in layout.items():
        if nested is None:
            assert isinstance(sizes[key], int) and sizes[key] > 0, f"{key}: {sizes[key]!r}"
        else:
            assert_size_layout(sizes[key], nested)


FULL_MODEL_SIZES = {"metadata_size": None, "recover_info": {
    "metadata_size": None, "environment": {"metadata_size": None}, "model_code": None, "parameters": None}}
UPDATE_SIZES = {"metadata_size": None, "recover_info": {"metadata_size": None, "update": None}}

SERVICE_FACTORIES = {
    "baseline": BaselineSaveService,
    "update": WeightUpdateSaveService,
    "update-not-improved": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=False),
    "provenance": ProvenanceSaveService,
}


@pytest.mark.parametrize("service_name", SERVICE_FACTORIES)
def test_first_save_is_a_full_snapshot_with_spec_return_shapes(store, tmp_path, service_name):
    file_service, dict_service = store
    service = SERVICE_FACTORIES[service_name](file_service, dict_service)
    model = TinyNet()
    model_id = service.save_model(ModelSaveInfo(model, None, track_current_environment(), TINY_MODELS_CODE))

    assert isinstance(model_id, str)
    assert service.all_model_ids() == [model_id]
    assert_size_layout(service.model_save_size(model_id), FULL_MODEL_SIZES)
    model_info = ModelInfo.load(model_id, file_service, dict_service, str(tmp_path / "restore"),
                                load_recursive=True)
    assert model_info.store_type is ModelStoreType.FULL_MODEL
    parameters_file = model_info.recover_info.parameters_file
    assert isinstance(parameters_file, FileReference)
    file_service.file_size(parameters_file)
    assert parameters_file.size > 0
    restored = service.recover_model(model_id)
    assert isinstance(restored, RestoredModelInfo)
    assert model_equal(restored.model, model, tiny_input)


def test_update_save_sizes_and_update_reference(store, tmp_path):
    file_service, dict_service = store
    service = WeightUpdateSaveService(file_service, dict_service)
    base = TinyNet()
    base_id = service.save_model(ModelSaveInfo(base, None, track_current_environment(), TINY_MODELS_CODE))
    derived = service.recover_model(base_id).model
    with torch.no_grad():
        derived.fc.weight.add_(1.0)
    derived_id = service.save_model(ModelSaveInfo(derived, base_id, track_current_environment()))

    assert sorted(service.all_model_ids()) == sorted([base_id, derived_id])
    assert_size_layout(service.model_save_size(derived_id), UPDATE_SIZES)
    model_info = ModelInfo.load(derived_id, file_service, dict_service, str(tmp_path / "restore"),
                                load_recursive=True)
    assert model_info.store_type is ModelStoreType.WEIGHT_UPDATES
    assert model_info.derived_from == base_id
    assert_size_layout(model_info.size_info(file_service, dict_service), UPDATE_SIZES)
    file_service.file_size(model_info.recover_info.update)
    assert model_info.recover_info.update.size > 0


@pytest.mark.parametrize("service_class", [BaselineSaveService, WeightUpdateSaveService])
def test_derived_save_reuses_base_code_when_the_code_file_is_gone(store, tmp_path, service_class):
    code_dir = tmp_path / "recovered"
    code_dir.mkdir()
    code_file = shutil.copy(TINY_MODELS_CODE, code_dir / "tiny_models.py")
    model = create_object(str(code_file), "TinyNet")
    service = service_class(*store)
    base_id = service.save_model(ModelSaveInfoBuilder().add_model_info(
        track_current_environment(), model=model, code=str(code_file)).build())
    shutil.rmtree(code_dir)

    derived_id = service.save_model(ModelSaveInfoBuilder().add_model_info(
        track_current_environment(), model=model, base_model_id=base_id).build())
    assert model_equal(service.recover_model(derived_id).model, model, tiny_input)


def test_builder_chains_and_builds_save_infos():
    env = track_current_environment()
    model = TinyNet()
    builder = ModelSaveInfoBuilder()
    assert builder.add_model_info(env, model, TINY_MODELS_CODE, "base-id") is builder
    save_info = builder.build()
    assert type(save_info) is ModelSaveInfo
    assert (save_info.model, save_info.base_model, save_info.environment, save_info.model_code) == (
        model, "base-id", env, TINY_MODELS_CODE)

    wrapper = StateDictRestorableObjectWrapper()
    provenance = (ModelSaveInfoBuilder().add_model_info(env=env, base_model_id="base-id")
                  .add_prov_data(raw_data_path="/data", train_kwargs={"epochs": 1}, train_service_wrapper=wrapper)
                  .build())
    assert isinstance(provenance, ProvModelSaveInfo) and provenance.model is None
    assert (provenance.base_model, provenance.raw_dataset) == ("base-id", "/data")
    assert isinstance(provenance.train_info, TrainSaveInfo)
    assert (provenance.train_info.train_service_wrapper, provenance.train_info.train_kwargs) == (
        wrapper, {"epochs": 1})


def test_file_persistence_sets_reference_id_path_and_size(store, tmp_path):
    file_service, _ = store
    reference = FileReference(path=TINY_MODELS_CODE)
    assert reference.size is None
    file_service.save_file(reference)
    assert isinstance(reference.reference_id, str)

    recovered = FileReference(reference_id=reference.reference_id)
    file_service.recover_file(recovered, str(tmp_path / "out"))
    assert recovered.path == str(tmp_path / "out" / "tiny_models.py")
    assert Path(recovered.path).read_bytes() == Path(TINY_MODELS_CODE).read_bytes()
    file_service.file_size(recovered)
    assert recovered.size == os.path.getsize(TINY_MODELS_CODE)


def test_dict_persistence_ids_work_everywhere(store):
    _, dict_service = store
    assert isinstance(dict_service.generate_id(), str)
    dict_id = dict_service.save_dict({"layers": 3}, "notes")
    assert isinstance(dict_id, str)
    assert dict_service.recover_dict(dict_id, "notes")["layers"] == 3
    assert isinstance(dict_service.dict_size(dict_id, "notes"), int) and dict_service.dict_size(dict_id, "notes") > 0
    assert dict_service.id_exists(dict_id, "notes") is True
    assert dict_service.id_exists(dict_service.generate_id(), "notes") is False
    assert dict_service.all_ids_for_type("notes") == [dict_id]
    dict_service.add_field(dict_id, "notes", "author", "node-1")
    assert dict_service.recover_dict(dict_id, "notes")["author"] == "node-1"


def test_compare_env_to_current():
    current = track_current_environment()
    assert compare_env_to_current(current) is True
    other = track_current_environment()
    other.pytorch_version = "0.0.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_env_to_current(other) is False


def test_hash_functions_return_equal_strings_for_equal_inputs():
    model = TinyNet()
    copy = TinyNet()
    copy.load_state_dict(model.state_dict())
    fixed_input = tiny_input()
    for hash_of in (lambda m: state_dict_hash(m.state_dict()), lambda m: tensor_hash(m.fc.weight),
                    lambda m: inference_hash(m, lambda: fixed_input)):
        assert isinstance(hash_of(model), str) and hash_of(model) == hash_of(copy)


class Block(torch.nn.Module):
    """A module with a child that is not a container, so the probe records it as well as its child."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.linear(x))


class ProbedNet(torch.nn.Module):
    """Leaves inside Sequential and ModuleList containers, and a Block."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        self.block = Block()
        self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 2)])

    def forward(self, x):
        return self.heads[0](self.block(self.stem(x)))


@pytest.fixture
def quiet_probe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_probe_inference_summary_shape(tmp_path, capsys, quiet_probe):
    model = TinyNet().train()
    inp = tiny_input()
    summary = probe_inference(model, inp)

    assert not model.training
    assert list(summary.summary) == ["conv", "bn", "fc"]
    conv = summary.summary["conv"]
    assert conv[ProbeInfo.LAYER_NAME] == "Conv2d"
    assert conv[ProbeInfo.FORWARD_INDEX] == 1
    assert conv[ProbeInfo.INPUT_SHAPE] == [[2, 3, 8, 8]] and conv[ProbeInfo.OUTPUT_SHAPE] == [[2, 4, 8, 8]]
    assert isinstance(conv[ProbeInfo.OUTPUT_TENSOR], tuple) and torch.is_tensor(conv[ProbeInfo.OUTPUT_TENSOR][0])
    assert summary.has_layer_key("fc") and not summary.has_layer_key("missing")
    assert summary == probe_inference(model, inp)
    assert summary != probe_inference(model, tiny_input())
    assert summary != "not a summary"

    summary.save(str(tmp_path / "summary"))
    assert ProbeSummary(summary_path=str(tmp_path / "summary")) == summary
    loaded = ProbeSummary()
    loaded.load(str(tmp_path / "summary"))
    assert loaded == summary

    summary.print_summary([ProbeInfo.LAYER_NAME, ProbeInfo.OUTPUT_SHAPE])
    summary.compare_to(loaded, [ProbeInfo.LAYER_NAME], [ProbeInfo.OUTPUT_TENSOR])
    printed = capsys.readouterr().out
    assert "BatchNorm2d" in printed and "same" in printed


def test_probe_records_every_non_container_module_and_counts_from_one(quiet_probe):
    model = ProbedNet()
    summary = probe_inference(model, torch.rand(2, 3))
    assert {key: info[ProbeInfo.FORWARD_INDEX] for key, info in summary.summary.items()} == {
        "stem.0": 1, "stem.1": 2, "block.linear": 3, "block": 4, "heads.0": 5}
    assert list(probe_inference(model, torch.rand(2, 3), forward_indices=[2]).summary) == ["stem.1"]

    model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = probe_training(model, torch.rand(2, 3), optimizer, torch.nn.CrossEntropyLoss(), torch.tensor([0, 1]))
    assert model.training
    assert sorted(info[ProbeInfo.BACKWARD_INDEX] for info in trained.summary.values()) == [1, 2, 3, 4, 5]
    assert trained.summary["heads.0"][ProbeInfo.GRAD_OUTPUT_SHAPE] == [[2, 2]]


def test_merkle_tree_equality_diff_and_python_dict():
    state = TinyNet().state_dict()
    tree = WeightDictMerkleTree.from_state_dict(state)
    assert tree == WeightDictMerkleTree.from_state_dict(state)
    for not_a_tree in (None, "tree", 5, object()):
        assert (tree == not_a_tree) is False
    assert tree.check_integrity()
    assert sorted(leaf.layer_key for leaf in tree.get_all_leaves()) == sorted(state)

    changed = {key: value.clone() for key, value in state.items() if key != "bn.bias"}
    changed["fc.weight"] += 1
    changed["extra.weight"] = torch.zeros(1)
    assert tree.diff(WeightDictMerkleTree.from_state_dict(changed)) == (
        {"fc.weight"}, {THIS: {"bn.bias"}, OTHER: {"extra.weight"}})

    python_dict = tree.to_python_dict()
    assert python_dict.keys() == {HASH_VALUE, LEFT, RIGHT}
    leaf = python_dict
    while LEFT in leaf:
        leaf = leaf[LEFT]
    assert leaf.keys() == {HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH}
    assert WeightDictMerkleTree.from_python_dict(python_dict) == tree
    for field, edited in ((LAYER_KEY, "renamed"), (LAYER_WEIGHT_HASH, "0" * 64)):
        original = leaf[field]
        leaf[field] = edited
        with pytest.raises(ValueError):
            WeightDictMerkleTree.from_python_dict(python_dict)
        leaf[field] = original


def test_equal_and_deterministic():
    model = TinyNet()
    assert blackbox_model_equal(m1=model, m2=model, produce_input=tiny_input, device=None)
    assert torch.equal(deterministic(torch.rand, [3], {}), deterministic(torch.rand, [3], {}))


def test_dummy_data_shapes():
    assert imagenet_input().shape == (10, 3, 224, 224)
    batch = imagenet_input(batch_size=2)
    assert batch.shape == (2, 3, 224, 224)
    assert imagenet_target(batch).shape == (2,)


def test_init_from_file():
    assert create_type(TINY_MODELS_CODE, "TinyNet").__name__ == "TinyNet"
    assert isinstance(create_object(code=TINY_MODELS_CODE, class_name="TinyNet"), torch.nn.Module)
    created = create_object_with_parameters("Namespace", {"name": "7", "count": 7, "flags": [True]},
                                            import_cmd="from argparse import Namespace")
    assert vars(created) == {"name": "7", "count": 7, "flags": [True]}


def test_restorable_object_wrapper_positional_order_and_restore(tmp_path, monkeypatch):
    config = tmp_path / "mmlib.ini"
    config.write_text("[VALUES]\ncurrent_data_root = /data/here\n")
    monkeypatch.setenv("MMLIB_CONFIG", str(config))
    dataset = object()
    wrapper = RestorableObjectWrapper("Namespace", {"batch_size": 2}, ["dataset"], {"root": "current_data_root"},
                                      None, "from argparse import Namespace", None, "wrapper-id")
    assert (wrapper.class_name, wrapper.init_args, wrapper.init_ref_type_args, wrapper.config_args, wrapper.code,
            wrapper.import_cmd, wrapper.instance, wrapper.store_id) == (
        "Namespace", {"batch_size": 2}, ["dataset"], {"root": "current_data_root"}, None,
        "from argparse import Namespace", None, "wrapper-id")
    restored = wrapper.restore_instance({"dataset": dataset})
    assert restored is wrapper.instance
    assert vars(restored) == {"batch_size": 2, "root": "/data/here", "dataset": dataset}
    assert isinstance(restored, argparse.Namespace)
