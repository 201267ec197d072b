"""Small helpers the save-service tests share: building save infos, changing weights, comparing models."""

import threading

import torch

from mmlib.cli import main
from mmlib.constants import ID
from mmlib.equal import model_equal
from mmlib.errors import IntegrityError
from mmlib.schema.model_info import MODEL_INFO, RECOVER_INFO_ID, ModelInfo
from mmlib.schema.recover_info import RECOVER_INFO, AbstractRecoverInfo
from mmlib.save import WeightUpdateSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from tiny_models import TinyNet

WALK_TIMEOUT_S = 60


def small_input() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64)


def save_info(model, base_model_id=None, code=None, init_args=None, model_import=None):
    return ModelSaveInfoBuilder().add_model_info(env=track_current_environment(), model=model, code=code,
                                                 base_model_id=base_model_id, init_args=init_args,
                                                 model_import=model_import).build()


def perturb(model: torch.nn.Module, scale: float = 1e-3, only: str = "") -> torch.nn.Module:
    """Change the model's float parameters (those whose name starts with `only`) in place."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(only):
                parameter.add_(torch.randn_like(parameter) * scale)
    return model


def equal(model1, model2) -> bool:
    return model_equal(model1, model2, small_input)


def same_state(actual, expected) -> bool:
    """Whether two nested state dicts (dicts, lists, tuples of tensors and values) are equal, tensors bit for bit and
    dtype included."""
    if isinstance(expected, torch.Tensor):
        return isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype and torch.equal(actual, expected)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            same_state(actual[key], expected[key]) for key in expected)
    if isinstance(expected, (list, tuple)):
        return type(actual) is type(expected) and len(actual) == len(expected) and all(
            same_state(item, other) for item, other in zip(actual, expected))
    return actual == expected


def sizes_positive(sizes: dict) -> bool:
    """True when every byte count at every level of a size dict is a positive int."""
    return all(sizes_positive(value) if isinstance(value, dict) else isinstance(value, int) and value > 0
               for value in sizes.values()) and "metadata_size" in sizes


def store_contents(file_service, dict_service) -> tuple:
    """Everything a store holds (blob digests and every document), to show an operation changed nothing (a type
    with no documents, such as the collection MongoDB keeps after a save's lease is removed, holds nothing)."""
    documents = {kind: sorted((doc_id, repr(dict_service.recover_dict(doc_id, kind)))
                              for doc_id in dict_service.all_ids_for_type(kind))
                 for kind in dict_service.all_types()}
    return sorted(file_service.blob_digests()), {kind: found for kind, found in documents.items() if found}


def save_update_chain(stores, length: int) -> tuple[list[str], torch.nn.Module]:
    """A TinyNet snapshot and `length - 1` perturbed updates of it (WeightUpdateSaveService); the ids and the
    last model."""
    service = WeightUpdateSaveService(*stores)
    model = TinyNet()
    ids = [service.save_model(save_info(model))]
    for _ in range(length - 1):
        perturb(model)
        ids.append(service.save_model(save_info(model, base_model_id=ids[-1])))
    return ids, model


def forge_record(dict_service, model_id: str, model_fields: dict = None, **recover_info_fields) -> str:
    """What an editor of the metadata who recomputes digests can do: store a new, self-consistent model record like
    `model_id`'s but with edited model-document and recover-info fields. Returns the new record's model id (the
    old record is unchanged)."""
    model_document = {**dict_service.recover_dict(model_id, MODEL_INFO), **(model_fields or {})}
    if recover_info_fields:
        recover_document = dict_service.recover_dict(model_document[RECOVER_INFO_ID], RECOVER_INFO)
        recover_document.update(recover_info_fields)
        model_document[RECOVER_INFO_ID] = _store_rehashed(dict_service, recover_document, RECOVER_INFO,
                                                          AbstractRecoverInfo)
    return _store_rehashed(dict_service, model_document, MODEL_INFO, ModelInfo)


def _store_rehashed(dict_service, document: dict, kind: str, schema_class) -> str:
    fields = {key: value for key, value in document.items() if key != ID}
    new_id = schema_class._content_id(fields)
    dict_service.save_dict({**fields, ID: new_id}, kind)
    return new_id


def promptly(action) -> dict:
    """{'value': what `action` returned} or {'error': the IntegrityError it raised}; it must end within
    WALK_TIMEOUT_S (a lineage that loops must not be walked forever)."""
    outcome = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except IntegrityError as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(WALK_TIMEOUT_S)
    assert not worker.is_alive(), "the lineage walk did not end"
    return outcome


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the `mmlib` command in this process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
