"""The abstract save service: validation, timing log, snapshots (save and recovery), weights I/O and checks.

Every save writes blobs first, then metadata documents in dependency order, and
the model document last: a model is listed only once all it needs is stored.
"""

import contextlib
import contextvars
import functools
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Optional, Union

import torch

from mmlib.util.concurrency import run_beside
from mmlib.approaches.model_building import CPU, rebuild
from mmlib.approaches.model_source import ModelSource, resolve_model_source
from mmlib.approaches.model_state import (CapturedState, capture, check_rebuildable, module_types, state_device,
                                          state_shapes)
from mmlib.errors import (DeviceUnavailableError, IncompatibleModelError, IntegrityError, InvalidArgumentError,
                          InvalidSaveInfoError, ModelNotFoundError, NotFoundError, StoreUnavailableError)
from mmlib.persistence import _coordination as coordination
from mmlib.persistence.base import BLOB, DictPersistenceService, FilePersistenceService, FileReference
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.environment import Environment
from mmlib.schema.lineage import walk_lineage
from mmlib.schema.model_info import MODEL_INFO, PRUNED, ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.state_layout import StateLayout
from mmlib.schema.store_format import check_store_format
from mmlib.schema.store_type import ModelStoreType
from mmlib.track_env import check_environment, check_package, imported_distributions, track_current_environment
from mmlib.util.init_from_file import check_class_name, create_type, distribution_of, import_object
from mmlib.util.safetensors_io import read_state_dict, write_state_dict
from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree

logger = logging.getLogger(__name__)

PARAMETERS_FILE_NAME = "parameters.safetensors"
# What `recover_model(..., device=...)` takes besides None (see `recovery_device`).
DeviceLike = Union[str, torch.device]
# The original MMlib's timing log: one JSON object per line with these keys.
START_STOP, EVENT_ID, APPROACH, METHOD, EVENT, TIME = "start-stop", "_id", "approach", "method", "event", "time"
START, STOP, ALL_EVENTS = "start", "stop", "all"
_LOGGED_METHODS = ("save_model", "recover_model")
_REBUILDABLE_CACHE_SIZE = 64
_REBUILDABLE: set = set()  # signatures of the architectures `_check_rebuildable` has seen rebuilt in this process
_REBUILDABLE_LOCK = threading.Lock()
# The garbage collection runs the save running in this context saw as it began (see `_saving`).
_GC_RUNS_AT_START: contextvars.ContextVar[coordination.GcRuns] = contextvars.ContextVar("mmlib_gc_runs_at_start")


class AbstractSaveService(ABC):
    """Saves model versions into a blob store plus a document store and recovers them exactly."""

    _approach = ""

    def __init__(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                 logging: bool = False, strict_env: bool = False):
        check_type(file_pers_service, FilePersistenceService, "file_pers_service", "the blob half of open_store(...)")
        check_type(dict_pers_service, DictPersistenceService, "dict_pers_service",
                   "the document half of open_store(...)")
        self._file_pers_service = file_pers_service
        self._dict_pers_service = dict_pers_service
        self.logging = logging
        self.strict_env = strict_env
        self._restore_dir = tempfile.TemporaryDirectory(prefix="mmlib-restore-")
        self._store_format_recorded = False
        self._logged_method: Optional[str] = None

    @property
    def approach(self) -> str:
        """The approach's name in timing logs, as the original MMlib writes it."""
        return self._approach

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._file_pers_service!r}, {self._dict_pers_service!r})"

    @property
    def _restore_root(self) -> str:
        return self._restore_dir.name

    @contextlib.contextmanager
    def _timed(self, event: str, model_id: Optional[str] = None) -> Iterator[None]:
        """With `logging` on, print the original MMlib's JSON start/stop events of `event` on stdout and log them.

        `save_model` and `recover_model` are logged as methods (event `all`); other events as steps of the
        method running them. Each start/stop pair shares an `_id`; times are `time.time_ns()`.
        """
        if not self.logging:
            yield
            return
        method, step = (event, ALL_EVENTS) if event in _LOGGED_METHODS else (self._logged_method, event)
        outer, self._logged_method = self._logged_method, method
        record = {START_STOP: START, EVENT_ID: uuid.uuid4().hex, APPROACH: self.approach, METHOD: method,
                  EVENT: step, TIME: time.time_ns()}
        _emit(record, model_id)
        try:
            yield
        finally:
            self._logged_method = outer
        _emit({**record, START_STOP: STOP, TIME: time.time_ns()}, model_id)

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Time a save and hold a save lease while it runs, so that garbage collection keeps what it writes."""
        with self._timed("save_model"), coordination.save_lease(self._dict_pers_service) as gc_runs:
            token = _GC_RUNS_AT_START.set(gc_runs)
            try:
                yield
            finally:
                _GC_RUNS_AT_START.reset(token)

    @contextlib.contextmanager
    def _recovering(self, model_id: str, execute_checks: bool, device: object = None) -> Iterator[torch.device]:
        """Time a recovery and name the model in any integrity error raised while recovering it; gives the checked
        device to recover to (see `recovery_device`)."""
        if not isinstance(model_id, str):
            raise _unknown_model(model_id)
        check_type(execute_checks, bool, "execute_checks", "True or False")
        self._refuse_pruned(model_id)
        target = recovery_device(device)
        try:
            with self._timed("recover_model", model_id):
                yield target
        except IntegrityError as error:
            if str(model_id) in str(error):
                raise
            raise IntegrityError(f"while recovering model {model_id}: {error}") from error

    @abstractmethod
    def save_model(self, save_info: ModelSaveInfo) -> str:
        """Store the model described by `save_info`; returns its model id."""

    @abstractmethod
    def recover_model(self, model_id: str, execute_checks: bool = True,
                      device: Optional[DeviceLike] = None) -> RestoredModelInfo:
        """Rebuild a stored model on `device` (default: the CPU, wherever it was saved from); with `execute_checks`
        its weights are verified there against the stored hashes."""

    def model_save_size(self, model_id: str) -> dict:
        """Bytes the model's own documents and blobs take, as a nested dict with `metadata_size` at every level."""
        self._require_model(model_id)
        return ModelInfo.load_placeholder(model_id).size_info(self._file_pers_service, self._dict_pers_service)

    def all_model_ids(self) -> list[str]:
        """Ids of every stored model, oldest first."""
        self._check_store_format()
        return self._dict_pers_service.all_ids_for_type(MODEL_INFO)

    def _check_store_format(self, record: bool = False) -> None:
        """StoreFormatError unless the store is in the format this mmlib reads; `record` writes it into an empty
        store (once it is recorded, nothing is read again)."""
        if not self._store_format_recorded:
            self._store_format_recorded = check_store_format(self._dict_pers_service, record)

    def _persist_model(self, model_info: ModelInfo) -> str:
        """Store a model document (after everything it references) in a store that records its format; its id.

        Then confirm the commit against removals and garbage collection that ran beside the save (see
        `mmlib.persistence._coordination`): a model whose base or items went meanwhile is withdrawn, and the save
        raises, so no listed model lacks what it needs.
        """
        self._check_store_format(record=True)
        model_id = model_info.persist(self._file_pers_service, self._dict_pers_service)
        try:
            self._confirm_commit(model_id, model_info.derived_from)
        except BaseException:
            with contextlib.suppress(StoreUnavailableError):
                self._dict_pers_service.delete_dict(model_id, MODEL_INFO)
            raise
        return model_id

    def _confirm_commit(self, model_id: str, base_id: Optional[str]) -> None:
        """Raise unless the just written model `model_id` keeps its base and every item it references."""
        dps = self._dict_pers_service
        if base_id is not None and (coordination.removal_pending(dps, base_id) or dps.id_exists(base_id, PRUNED)
                                    or not dps.id_exists(base_id, MODEL_INFO)):
            raise ModelNotFoundError(f"base model {base_id} was removed while model {model_id} was being saved on "
                                     "it; nothing was saved: save it on another base")
        gc_runs = _GC_RUNS_AT_START.get(None)
        if gc_runs is None or not coordination.gc_overlapped(dps, gc_runs) or not dps.id_exists(model_id, MODEL_INFO):
            return  # no gc ran beside the save, or an `rm` has removed the committed model since
        try:
            missing = [f"{item.kind} {item.item_id}" for item in ModelInfo.load_placeholder(model_id).stored_items(dps)
                       if not (self._file_pers_service.blob_exists(item.item_id) if item.kind == BLOB
                               else dps.id_exists(item.item_id, item.kind))]
        except NotFoundError as error:
            missing = [str(error)]
        if missing and dps.id_exists(model_id, MODEL_INFO):
            raise StoreUnavailableError(
                f"garbage collection removed {missing[0]} while model {model_id} was being saved; nothing was "
                "saved: save it again (and give gc a grace period longer than a save takes)")

    def _require_model(self, model_id: str) -> None:
        self._check_store_format()
        if not isinstance(model_id, str) or not self._dict_pers_service.id_exists(model_id, MODEL_INFO):
            raise _unknown_model(model_id)

    def _refuse_pruned(self, model_id: str) -> None:
        """ModelNotFoundError for a model a retention policy pruned (its record stays, its weights may not)."""
        if self._dict_pers_service.id_exists(model_id, PRUNED):
            raise ModelNotFoundError(f"model {model_id} was pruned by a retention policy (mmlib.Checkpointer or "
                                     "`mmlib prune`): its weights are gone; recover a version that was kept")

    def _load_model_info(self, model_id: str) -> ModelInfo:
        self._require_model(model_id)
        return ModelInfo.load(model_id, self._file_pers_service, self._dict_pers_service, self._restore_root,
                              load_recursive=True)

    def _validate(self, save_info: ModelSaveInfo, model_required: bool = True) -> None:
        """Reject a save request before anything is written (`model_required=False`: the model may be absent)."""
        self._check_store_format()
        if not isinstance(save_info, ModelSaveInfo):
            raise InvalidSaveInfoError(
                f"save_model expects a ModelSaveInfo, got {type(save_info).__name__}; build one with "
                "ModelSaveInfoBuilder")
        if save_info.model is not None or model_required:
            model_to_save(save_info)
        if save_info.base_model is not None:
            self._require_model(save_info.base_model)
            self._refuse_pruned(save_info.base_model)

    def _model_source(self, save_info: ModelSaveInfo,
                      base_snapshot: Optional[Callable[[str], FullModelRecoverInfo]] = None) -> ModelSource:
        """How a snapshot of the model will be rebuilt (see `resolve_model_source` for the sources it tries);
        `base_snapshot` gives the base's snapshot where the caller knows it (default: found by walking the
        base's lineage)."""
        return resolve_model_source(save_info, base_snapshot or self._root_snapshot, self._import_target,
                                    os.path.join(self._restore_root, "recovered-code"))

    def _check_rebuildable(self, model: torch.nn.Module, source: ModelSource, captured: CapturedState) -> None:
        """Refuse, before anything is written, a model that `source` would not rebuild (checked once per architecture
        in this process, not per service: `mmlib.save` opens new services each call, and building ResNet-50 to
        check it cost each of its saves 7 ms)."""
        modules = module_types(model)
        signature = (source.target, json.dumps(source.init_args, sort_keys=True), tuple(modules.items()),
                     json.dumps(state_shapes(captured.named_values())))
        with _REBUILDABLE_LOCK:
            if signature in _REBUILDABLE:
                return
        arguments = ", ".join(f"{name}={value!r}" for name, value in (source.init_args or {}).items())
        describe = f"{getattr(source.target, '__qualname__', source.target)}({arguments})"
        check_rebuildable(functools.partial(source.target, **(source.init_args or {})), captured, modules, describe)
        with _REBUILDABLE_LOCK:
            if len(_REBUILDABLE) >= _REBUILDABLE_CACHE_SIZE:
                _REBUILDABLE.clear()
            _REBUILDABLE.add(signature)

    def _lineage(self, model_id: str, stop: Callable[[ModelInfo], bool],
                 load: Optional[Callable[[str], ModelInfo]] = None) -> list[ModelInfo]:
        """The model infos of `model_id`, its base, ... up to the root or the first that `stop` accepts, each checked
        against its id as it is loaded (with `load`, default `_load_model_info`); `walk_lineage` raises
        IntegrityError for a loop or a missing base."""
        return walk_lineage(model_id, load or self._load_model_info, lambda info: info.derived_from, stop)

    def _lineage_to_snapshot(self, model_id: str,
                             load: Optional[Callable[[str], ModelInfo]] = None) -> list[ModelInfo]:
        """The model infos from `model_id` back to the nearest full snapshot: a recovery refuses an edit anywhere in
        this lineage."""
        return self._lineage(model_id, lambda info: info.store_type == ModelStoreType.FULL_MODEL, load)

    def _root_snapshot(self, model_id: str) -> FullModelRecoverInfo:
        """The nearest full snapshot in a model's lineage (where its code and class name live)."""
        root = self._lineage_to_snapshot(model_id)[-1]
        if root.store_type != ModelStoreType.FULL_MODEL:
            raise IntegrityError(f"the lineage of model {model_id} ends at {root.store_id}, which is stored as "
                                 f"{root.store_type.value}, not as a full snapshot; the metadata was changed, run "
                                 "`mmlib verify`")
        return root.recover_info

    def _save_snapshot(self, save_info: ModelSaveInfo, captured: Optional[CapturedState] = None) -> str:
        """Store a full snapshot: weights, code, class name and environment; the model document last."""
        model = model_to_save(save_info)
        class_name = check_class_name(type(model).__name__)
        source = self._model_source(save_info)
        captured = captured if captured is not None else capture(model)
        self._check_rebuildable(model, source, captured)
        with self._timed("save_weights"):
            weights_hash_info, parameters = run_beside(lambda: merkle_tree(captured),
                                                       lambda: self._save_weights(captured.tensors))
        recover_info = FullModelRecoverInfo(parameters_file=parameters, model_code=source.code,
                                            model_class_name=class_name, environment=recorded_environment(save_info),
                                            model_import=source.model_import, model_init_args=source.init_args,
                                            model_package=source.package)
        model_info = ModelInfo(store_type=ModelStoreType.FULL_MODEL, recover_info=recover_info,
                               derived_from_id=save_info.base_model,
                               weights_hash_info=weights_hash_info, state_layout=captured.layout)
        return self._persist_model(model_info)

    def _save_weights(self, state_dict: dict[str, torch.Tensor]) -> FileReference:
        digest = self._file_pers_service.write_stream(lambda sink: write_state_dict(state_dict, sink))
        return FileReference(reference_id=f"{digest}/{PARAMETERS_FILE_NAME}")

    def _read_weights(self, reference: FileReference) -> dict[str, torch.Tensor]:
        return read_state_dict(memoryview(self._file_pers_service.read_bytes(reference.stored_id())))

    def _import_target(self, snapshot: FullModelRecoverInfo) -> Callable[..., Any]:
        """The class or factory a snapshot names by import path, after checking the installed package version."""
        check_package(snapshot.model_package, distribution_of(snapshot.model_import),
                      f"model class {snapshot.model_import}", self.strict_env)
        try:
            return import_object(snapshot.model_import)
        except (ImportError, AttributeError) as error:
            raise IncompatibleModelError(f"cannot import {snapshot.model_import!r} to rebuild the model: {error}; "
                                         f"install {snapshot.model_package or 'the package that provides it'}") \
                from error

    def _restored_code(self, snapshot: FullModelRecoverInfo) -> Optional[str]:
        """The snapshot's stored code file, restored (checked against its digest); None for an import path."""
        if snapshot.model_import is not None:
            return None
        code = FileReference(reference_id=snapshot.model_code.reference_id)
        self._file_pers_service.recover_file(code, os.path.join(self._restore_root, code.stored_id()[:16]))
        return code.path

    def _model_factory(self, snapshot: FullModelRecoverInfo, code_path: Optional[str]) -> Callable[[], torch.nn.Module]:
        """Builds the snapshot's model: its class from the restored code file (imported under a name unique to the
        code) or its installed import path, called with the recorded constructor arguments."""
        if code_path is None:
            target = self._import_target(snapshot)
        else:
            target = create_type(code_path, snapshot.model_class_name)
        return functools.partial(target, **(snapshot.model_init_args or {}))

    def _recover_snapshot(self, model_info: ModelInfo, execute_checks: bool,
                          device: torch.device = CPU) -> tuple[torch.nn.Module, dict]:
        """The model a full snapshot stores, built on `device`, and the stored tensors (on the CPU) it was given."""
        if model_info.store_type != ModelStoreType.FULL_MODEL:
            raise IncompatibleModelError(
                f"model {model_info.store_id} is stored as {model_info.store_type.value}, not as a full snapshot; "
                "recover it with the save service that stored it (e.g. WeightUpdateSaveService)")
        tensors = self._read_weights(model_info.recover_info.parameters_file)
        return self._rebuild(model_info, model_info.recover_info, tensors, execute_checks, device), tensors

    def _rebuild(self, model_info: ModelInfo, snapshot: FullModelRecoverInfo, tensors: dict[str, torch.Tensor],
                 execute_checks: bool, device: torch.device = CPU) -> torch.nn.Module:
        """Build `model_info`'s model on `device` with the code of `snapshot` and the stored tensors; checked there
        when asked (the environment too: Python, torch, numpy and the packages the stored code imports; the model's
        own package for an import path is compared whenever it is imported)."""
        code_path = self._restored_code(snapshot)
        if execute_checks:
            check_environment(snapshot.environment, f"model {model_info.store_id}", self.strict_env,
                              packages=imported_distributions(code_path) if code_path else ())
        model = rebuild(self._model_factory(snapshot, code_path), tensors, model_info.state_layout or StateLayout(),
                        device)
        if execute_checks:
            self._check_model(model_info, model)
        return model

    def _check_model(self, model_info: ModelInfo, model: torch.nn.Module) -> None:
        """Raise IntegrityError unless the rebuilt model's state dict hashes to the Merkle tree stored at save
        time and its tensors are shared, typed and frozen as they were saved (on any device: each tensor is copied
        to the CPU on its own to be hashed)."""
        stored = model_info.weights_hash_info
        captured = capture(model, to_cpu=False)
        if stored is None or not stored.check_integrity() or merkle_tree(captured) != stored:
            raise IntegrityError(
                f"the recovered weights of model {model_info.store_id} do not match the hashes stored when it was "
                "saved; run `mmlib verify` and restore the store from a backup")
        if model_info.state_layout is not None:
            differences = captured.layout.differences(model_info.state_layout)
            if differences:
                raise IntegrityError(
                    f"the recovered model {model_info.store_id} differs from the saved one in {differences} (tied "
                    "tensors, views of one memory, buffer dtypes, frozen parameters or train/eval modes); its code may have changed: "
                    "run `mmlib verify`")


def check_type(value: object, expected: type, name: str, hint: str) -> None:
    """InvalidArgumentError unless `value` is an instance of `expected` (`hint` says what to pass)."""
    if not isinstance(value, expected):
        raise InvalidArgumentError(f"{name} must be a {expected.__name__} ({hint}), got {type(value).__name__}")


def recovery_device(device: object) -> torch.device:
    """The device a recovery places the model on: None means the CPU; else a device name ("cuda:0") or a
    torch.device that exists here (not "meta", which holds no values), with an index where it has devices."""
    if device is None:
        return CPU
    if not isinstance(device, (str, torch.device)):
        raise InvalidArgumentError(f"device must be None, a str or a torch.device (e.g. 'cpu' or 'cuda:0'), got "
                                   f"{type(device).__name__}")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise InvalidArgumentError(f"device {device!r} names no device ({error}); pass e.g. 'cpu' or 'cuda:0'") \
            from error
    if resolved.type == "meta":
        raise InvalidArgumentError("device 'meta' holds no values, so no recovered model can live there; pass "
                                   "'cpu' or an accelerator such as 'cuda:0'")
    if resolved.type == "cpu":
        return CPU
    backend = getattr(torch, resolved.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        raise DeviceUnavailableError(f"device {device!r} is not available here (this torch {torch.__version__} "
                                     f"finds no {resolved.type} device); recover with device='cpu' (the default) "
                                     f"or on a machine with one")
    count = getattr(backend, "device_count", lambda: 1)()
    index = resolved.index if resolved.index is not None else getattr(backend, "current_device", lambda: 0)()
    if index >= count:
        raise DeviceUnavailableError(f"device {device!r} does not exist here: this machine has {count} "
                                     f"{resolved.type} device(s), numbered from 0; pass one of those or 'cpu'")
    return torch.device(resolved.type, index)


def _unknown_model(model_id: object) -> ModelNotFoundError:
    """The error for an id (of any type) that names no stored model."""
    return ModelNotFoundError(
        f"no model with id {model_id!r} in this store; list stored models with `mmlib ls` or all_model_ids()")


def model_to_save(save_info: ModelSaveInfo) -> torch.nn.Module:
    """The model of a save request; InvalidSaveInfoError when it is not a torch.nn.Module."""
    if not isinstance(save_info.model, torch.nn.Module):
        raise InvalidSaveInfoError(
            f"the model to save must be a torch.nn.Module, got {type(save_info.model).__name__}; pass the "
            "model with ModelSaveInfoBuilder.add_model_info(model=...)")
    return save_info.model


def recorded_environment(save_info: ModelSaveInfo) -> Environment:
    """The environment a save records: the one given, or this process's when none was (recovery needs one), with the
    device the model's state lies on (see `state_device`; the given environment is copied, not changed)."""
    environment = save_info.environment if save_info.environment is not None else track_current_environment()
    device = state_device(save_info.model) if isinstance(save_info.model, torch.nn.Module) else None
    if device == environment.device:
        return environment
    return Environment(**environment.as_dict(), device=device)


def _emit(record: dict, model_id: Optional[str]) -> None:
    """Print one timing event as the original MMlib does (a JSON line on stdout) and log it with the model id."""
    print(json.dumps(record), flush=True)
    logger.info(json.dumps({**record, "model_id": model_id}))


def merkle_tree(captured: CapturedState) -> WeightDictMerkleTree:
    """The Merkle tree of a model's whole state dict (every name, extra states too), each shared tensor hashed once."""
    return WeightDictMerkleTree.from_state_dict(captured.named_values())
