"""What every save approach shares: validation, snapshots, code lookup, weights I/O and checks.

Every save writes blobs first, then metadata documents in dependency order, and
the model document last: a model is listed only once all it needs is stored.
"""

import concurrent.futures
import contextlib
import functools
import inspect
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch

from mmlib.errors import IncompatibleModelError, IntegrityError, InvalidSaveInfoError, ModelNotFoundError
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, FileReference
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.model_info import MODEL_INFO, ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.track_env import check_environment, check_package
from mmlib.util.init_from_file import check_class_name, create_type, distribution_of, import_object
from mmlib.util.safetensors_io import read_state_dict, write_state_dict
from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree

logger = logging.getLogger(__name__)

PARAMETERS_FILE_NAME = "parameters.safetensors"

# Classes built from stored code remember the code blob they came from, so saving a
# recovered model (whose code lives in a temp dir that may be gone) reuses that blob.
_CODE_OF_RECOVERED_CLASS: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()


def detached_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as detached CPU tensors that own their memory (no two share storage)."""
    state_dict, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(key)
        state_dict[name] = tensor
    return state_dict


def run_beside(background: Callable[[], Any], foreground: Callable[[], Any]) -> tuple[Any, Any]:
    """Run `background` in a thread while `foreground` runs here; returns both results.

    Pays off for hashing beside file I/O: both release the GIL, so they share the cores.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlib") as pool:
        pending = pool.submit(background)
        result = foreground()
        return pending.result(), result


_INIT_FUNCTION_NAMES = [name for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")]
_INIT_PATCH_LOCK = threading.Lock()


def _skip_on_meta(init_function):
    def init_unless_meta(tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return init_function(tensor, *args, **kwargs)
    return init_unless_meta


@contextlib.contextmanager
def _meta_construction() -> Iterator[None]:
    """Build modules on the meta device with torch.nn.init skipped for meta tensors.

    Initialising a meta tensor has no effect but is slow (the first call imports torch's reference kernels).
    """
    with _INIT_PATCH_LOCK:
        originals = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTION_NAMES}
        for name, function in originals.items():
            setattr(torch.nn.init, name, _skip_on_meta(function))
        try:
            with torch.device("meta"):
                yield
        finally:
            for name, function in originals.items():
                setattr(torch.nn.init, name, function)


def build_model(factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the model without paying for random init (meta device + assign) where it allows, else normally."""
    try:
        with _meta_construction():
            model = factory()
        model.load_state_dict(state_dict, assign=True)
        tensors = list(model.parameters()) + list(model.buffers())
        if not any(tensor.is_meta for tensor in tensors):
            return model
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
        logger.debug("meta-device construction of %r failed (%s); building it normally", factory, error)
    model = factory()
    model.load_state_dict(state_dict)
    return model


def _source_file(cls: type) -> Optional[str]:
    """The .py file defining `cls`, or None for classes from `__main__` (scripts, notebooks) or without a file."""
    if cls.__module__ == "__main__":
        return None
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None


class ModelSource(NamedTuple):
    """How a snapshot rebuilds its model: a code file or an import path, plus JSON constructor arguments."""

    code: Optional[FileReference]
    model_import: Optional[str]
    init_args: Optional[dict]
    package: Optional[dict]


class AbstractSaveService(ABC):
    """Saves model versions into a blob store plus a document store and recovers them exactly."""

    def __init__(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                 logging: bool = False, strict_env: bool = False):
        self._file_pers_service = file_pers_service
        self._dict_pers_service = dict_pers_service
        self.logging = logging
        self.strict_env = strict_env
        self._restore_dir = tempfile.TemporaryDirectory(prefix="mmlib-restore-")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._file_pers_service!r}, {self._dict_pers_service!r})"

    @property
    def _restore_root(self) -> str:
        return self._restore_dir.name

    @contextlib.contextmanager
    def _timed(self, event: str, model_id: Optional[str] = None) -> Iterator[None]:
        """Log JSON start/stop events (the original's timing log) when `logging` is on."""
        if not self.logging:
            yield
            return
        logger.info(json.dumps({"event": event, "type": "start", "model_id": model_id, "time": time.time_ns()}))
        yield
        logger.info(json.dumps({"event": event, "type": "stop", "model_id": model_id, "time": time.time_ns()}))

    @contextlib.contextmanager
    def _recovering(self, model_id: str) -> Iterator[None]:
        """Time a recovery and name the model in any integrity error raised while recovering it."""
        try:
            with self._timed("recover_model", model_id):
                yield
        except IntegrityError as error:
            if str(model_id) in str(error):
                raise
            raise IntegrityError(f"while recovering model {model_id}: {error}") from error

    @abstractmethod
    def save_model(self, save_info: ModelSaveInfo) -> str:
        """Store the model described by `save_info`; returns its model id."""

    @abstractmethod
    def recover_model(self, model_id: str, execute_checks: bool = True) -> RestoredModelInfo:
        """Rebuild a stored model; with `execute_checks` its weights are verified against the stored hashes."""

    def model_save_size(self, model_id: str) -> dict:
        """Bytes the model's own documents and blobs take, as a nested dict with `metadata_size` at every level."""
        self._require_model(model_id)
        return ModelInfo.load_placeholder(model_id).size_info(self._file_pers_service, self._dict_pers_service)

    def all_model_ids(self) -> list[str]:
        """Ids of every stored model, oldest first."""
        return self._dict_pers_service.all_ids_for_type(MODEL_INFO)

    def _require_model(self, model_id: str) -> None:
        if not isinstance(model_id, str) or not self._dict_pers_service.id_exists(model_id, MODEL_INFO):
            raise ModelNotFoundError(
                f"no model with id {model_id!r} in this store; list stored models with `mmlib ls` or all_model_ids()")

    def _load_model_info(self, model_id: str) -> ModelInfo:
        self._require_model(model_id)
        return ModelInfo.load(model_id, self._file_pers_service, self._dict_pers_service, self._restore_root,
                              load_recursive=True)

    def _validate(self, save_info: ModelSaveInfo) -> None:
        """Reject a save request before anything is written."""
        if not isinstance(save_info, ModelSaveInfo):
            raise InvalidSaveInfoError(
                f"save_model expects a ModelSaveInfo, got {type(save_info).__name__}; build one with "
                "ModelSaveInfoBuilder")
        if not isinstance(save_info.model, torch.nn.Module):
            raise InvalidSaveInfoError(
                f"the model to save must be a torch.nn.Module, got {type(save_info.model).__name__}; pass the "
                "model with ModelSaveInfoBuilder.add_model_info(model=...)")
        if save_info.base_model is not None:
            self._require_model(save_info.base_model)

    def _model_code(self, save_info: ModelSaveInfo) -> FileReference:
        """The code file that defines the model's class: given, its source file, or the base model's code."""
        cls = type(save_info.model)
        if save_info.model_code is not None:
            if not os.path.isfile(save_info.model_code):
                raise InvalidSaveInfoError(f"model code file {save_info.model_code!r} does not exist; pass the .py "
                                           f"file that defines {cls.__name__}")
            return FileReference(path=save_info.model_code)
        if cls in _CODE_OF_RECOVERED_CLASS:
            return FileReference(reference_id=_CODE_OF_RECOVERED_CLASS[cls])
        source = _source_file(cls)
        if source and os.path.isfile(source):
            return FileReference(path=source)
        if save_info.base_model is not None:
            return FileReference(reference_id=self._root_snapshot(save_info.base_model).model_code.reference_id)
        raise InvalidSaveInfoError(
            f"cannot find the source file of {cls.__qualname__} (defined in {cls.__module__!r}, e.g. a notebook); "
            "move the class into a .py module or pass its file with add_model_info(code=...)")

    def _model_source(self, save_info: ModelSaveInfo) -> ModelSource:
        """How the snapshot will rebuild the model: given import path or code, else what its base used."""
        init_args = save_info.init_args
        try:
            json.dumps(init_args)
        except (TypeError, ValueError) as error:
            raise InvalidSaveInfoError(f"init_args must be JSON values (numbers, strings, lists, dicts): {error}; "
                                       "pass objects the constructor needs through a factory function instead") \
                from error
        if save_info.model_import is not None:
            try:
                import_object(save_info.model_import)
            except (ImportError, AttributeError) as error:
                raise InvalidSaveInfoError(f"cannot import {save_info.model_import!r}: {error}; give an import path "
                                           "'package.module:ClassOrFactory' of an installed package") from error
            return ModelSource(None, save_info.model_import, init_args, distribution_of(save_info.model_import))
        if save_info.model_code is None and save_info.base_model is not None:
            root = self._root_snapshot(save_info.base_model)
            init_args = init_args if init_args is not None else root.model_init_args
            if root.model_import is not None and root.model_class_name == type(save_info.model).__name__:
                return ModelSource(None, root.model_import, init_args, root.model_package)
        return ModelSource(self._model_code(save_info), None, init_args, None)

    def _root_snapshot(self, model_id: str) -> FullModelRecoverInfo:
        """The full snapshot at the root of a model's lineage (where its code and class name live)."""
        model_info = self._load_model_info(model_id)
        while model_info.store_type != ModelStoreType.FULL_MODEL:
            model_info = self._load_model_info(model_info.derived_from)
        return model_info.recover_info

    def _save_snapshot(self, save_info: ModelSaveInfo) -> str:
        """Store a full snapshot: weights, code, class name and environment; the model document last."""
        model = save_info.model
        class_name = check_class_name(type(model).__name__)
        source = self._model_source(save_info)
        state_dict = detached_state_dict(model)
        with self._timed("save_weights"):
            weights_hash_info, parameters = run_beside(lambda: WeightDictMerkleTree.from_state_dict(state_dict),
                                                       lambda: self._save_weights(state_dict))
        recover_info = FullModelRecoverInfo(parameters_file=parameters, model_code=source.code,
                                            model_class_name=class_name, environment=save_info.environment,
                                            model_import=source.model_import, model_init_args=source.init_args,
                                            model_package=source.package)
        model_info = ModelInfo(store_type=ModelStoreType.FULL_MODEL, recover_info=recover_info,
                               derived_from_id=save_info.base_model,
                               weights_hash_info=weights_hash_info)
        return model_info.persist(self._file_pers_service, self._dict_pers_service)

    def _save_weights(self, state_dict: dict[str, torch.Tensor]) -> FileReference:
        digest = self._file_pers_service.write_stream(lambda sink: write_state_dict(state_dict, sink))
        return FileReference(reference_id=f"{digest}/{PARAMETERS_FILE_NAME}")

    def _read_weights(self, reference: FileReference) -> dict[str, torch.Tensor]:
        return read_state_dict(memoryview(self._file_pers_service.read_bytes(reference.reference_id)))

    def _model_factory(self, snapshot: FullModelRecoverInfo) -> Callable[[], torch.nn.Module]:
        """Builds the snapshot's model: its class from stored code (imported under a name unique to the code) or
        its installed import path, called with the recorded constructor arguments."""
        if snapshot.model_import is not None:
            check_package(snapshot.model_package, distribution_of(snapshot.model_import),
                          f"model class {snapshot.model_import}", self.strict_env)
            try:
                target = import_object(snapshot.model_import)
            except (ImportError, AttributeError) as error:
                raise IncompatibleModelError(f"cannot import {snapshot.model_import!r} to rebuild the model: {error}; "
                                             f"install {snapshot.model_package or 'the package that provides it'}") \
                    from error
        else:
            code = FileReference(reference_id=snapshot.model_code.reference_id)
            self._file_pers_service.recover_file(code, os.path.join(self._restore_root, code.reference_id[:16]))
            target = create_type(code.path, snapshot.model_class_name)
            _CODE_OF_RECOVERED_CLASS[target] = code.reference_id
        return functools.partial(target, **(snapshot.model_init_args or {}))

    def _recover_snapshot(self, model_info: ModelInfo, execute_checks: bool) -> torch.nn.Module:
        if model_info.store_type != ModelStoreType.FULL_MODEL:
            raise IncompatibleModelError(
                f"model {model_info.store_id} is stored as {model_info.store_type.value}, not as a full snapshot; "
                "recover it with the save service that stored it (e.g. WeightUpdateSaveService)")
        snapshot = model_info.recover_info
        state_dict = self._read_weights(snapshot.parameters_file)
        if execute_checks:
            self._check_weights(model_info, state_dict)
            check_environment(snapshot.environment, f"model {model_info.store_id}", self.strict_env)
        return build_model(self._model_factory(snapshot), state_dict)

    def _check_weights(self, model_info: ModelInfo, state_dict: dict[str, torch.Tensor]) -> None:
        """Raise IntegrityError unless the weights hash to the Merkle tree stored at save time."""
        stored = model_info.weights_hash_info
        if stored is None or not stored.check_integrity() or WeightDictMerkleTree.from_state_dict(state_dict) != stored:
            raise IntegrityError(
                f"the recovered weights of model {model_info.store_id} do not match the hashes stored when it was "
                "saved; run `mmlib verify` and restore the store from a backup")
