"""The provenance approach: store how a version was trained from its base, and re-run that training to recover it.

A provenance version stores its training data (one content-addressed blob, shared by every version trained on
the same data), the train service with the wrappers of the objects it uses (dataset, data loader, optimizer,
...), the train kwargs and the environment. Recovery rebuilds the base (a full snapshot or, recursively, another
provenance version), restores the train service and trains deterministically. Since the trained weights are known
only after the caller trains, `add_weights_hash_info` records their hash; checked recoveries compare against it.
Train the live model after `set_deterministic()` (e.g. `deterministic(train_service.train, [model],
train_kwargs)`), as recovery does, or the check fails.

Each recovery works in a directory of its own, made under `current_data_root` of the MMLIB_CONFIG file (named
`.mmlib-recovery-...`) and removed when it ends, also on errors: the unpacked dataset, the restored train code,
stored and carried state files. While it runs, `config_value("current_data_root")` (which resolves the wrappers'
`config_args`) names the dataset directory in it, for that recovery only; so any number of processes and threads
recover at once, and files of the user's in `current_data_root` are never touched. A recovery killed before it
cleans up leaves its directory behind: delete `.mmlib-recovery-*` directories when no recovery runs. Within one
process, recoveries build models and train one at a time: both draw from torch's process-wide random generator,
which a deterministic training must have to itself.

Training state (the optimizer's momentum buffers, as large as the weights) is stored only by checkpoints: the
first version on a snapshot and every `checkpoint_interval`-th version after it. Recovery retrains every version
since the snapshot anyway, so a version in between starts from the state its base's retraining left (its
document records which state objects are carried, and nothing of their state); the train service gets it however
it loads its state objects (see `StateDictRestorableObjectWrapper.carrying`). This holds when the caller
trains version k with the same live objects that trained version k-1, as recovery does; save a version that
starts fresh objects with a service made with `checkpoint_interval=1`. Checkpoints do not shorten recovery:
without stored weights, it always retrains from the snapshot.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from typing import Any, Iterator, NamedTuple, Optional, TypeGuard, TypeVar, Union

import torch

from mmlib.approaches.base import AbstractSaveService, DeviceLike, check_type, merkle_tree, recorded_environment
from mmlib.approaches.model_building import CPU
from mmlib.approaches.model_state import capture, move_model
from mmlib.config import config_override, ini_value
from mmlib.constants import CURRENT_DATA_ROOT, PROGRESS_LOGGER
from mmlib.deterministic import set_deterministic
from mmlib.errors import (ConfigurationError, IncompatibleModelError, IntegrityError, InvalidSaveInfoError,
                          RestoreError, UnsafeCodeError)
from mmlib.persistence.base import BLOB, DictPersistenceService, FilePersistenceService, FileReference
from mmlib.save_info import ModelSaveInfo, ProvModelSaveInfo
from mmlib.schema.dataset import Dataset
from mmlib.schema.model_info import ModelInfo, record_weights_hash
from mmlib.schema.recover_info import ProvenanceRecoverInfo
from mmlib.schema.restorable_object import (STATE_FILE, StateDictRestorableObjectWrapper,
                                            StateFileRestorableObjectWrapper, check_json_value, source_file)
from mmlib.schema.schema_obj import SchemaObj
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.store_type import ModelStoreType
from mmlib.schema.train_info import TrainInfo
from mmlib.track_env import check_environment
from mmlib.util.init_from_file import check_class_name, create_type

logger = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)

# The name prefix of the directory private to one recovery, made in current_data_root.
RECOVERY_DIR_PREFIX = ".mmlib-recovery-"
# Versions per stored training state: the state a version starts from has been carried through at most this many
# retrainings since it was last read from the store; the versions in between store none.
DEFAULT_CHECKPOINT_INTERVAL = 10

T = TypeVar("T")

# Held while a recovery builds a model or restores and runs a training: torch's random generator is one per
# process, and a deterministic training must draw from it alone (reentrant: a train service may recover a model).
_TRAINING = threading.RLock()


class _ProvenanceInputs(NamedTuple):
    """What a provenance version stores beside its base's id, checked before anything is written."""

    base_id: str
    raw_dataset: Union[str, os.PathLike]
    wrapper: StateDictRestorableObjectWrapper
    train_kwargs: Optional[dict]


def _has_provenance(save_info: ModelSaveInfo) -> TypeGuard[ProvModelSaveInfo]:
    return isinstance(save_info, ProvModelSaveInfo) and (
        save_info.train_info is not None or save_info.raw_dataset is not None)


def _recorded(value: Optional[T], what: str, document: SchemaObj) -> T:
    """`value`, the `what` that the loaded `document` names; IntegrityError when its stored document lacks it."""
    if value is None:
        raise IntegrityError(f"{document!r} has no {what}; the metadata was changed, run `mmlib verify` and restore "
                             "the store from a backup")
    return value


def _carried_state(model_info: ModelInfo) -> Optional[list[str]]:
    """The state objects a version takes from its base's retraining; None for a checkpoint or a snapshot."""
    if model_info.store_type != ModelStoreType.PROVENANCE:
        return None
    return model_info.recover_info.train_info.carried_state


class _RecoveryDir:
    """The directory private to one recovery: the dataset its training reads, one restore directory per version."""

    def __init__(self, root: str):
        self.root = root
        self.data = os.path.join(root, "data")
        self.dataset: Optional[str] = None  # the reference id of the dataset unpacked in `data`

    def restore_dir(self, model_info: ModelInfo) -> str:
        """Where the train code and state files of `model_info`'s training are restored."""
        return os.path.join(self.root, "restore", model_info.stored_id())


@contextlib.contextmanager
def _private_recovery_dir() -> Iterator[_RecoveryDir]:
    """A new directory under `current_data_root` of the MMLIB_CONFIG file, removed afterwards (also on errors);
    inside the block `config_value(current_data_root)` names its dataset directory, in this thread or task only."""
    data_root = os.path.abspath(ini_value(CURRENT_DATA_ROOT))
    if os.path.lexists(data_root) and not os.path.isdir(data_root):
        raise ConfigurationError(f"{CURRENT_DATA_ROOT} {data_root!r} is not a directory; point it at a directory "
                                 "(provenance recovery unpacks datasets into new directories inside it)")
    try:
        os.makedirs(data_root, exist_ok=True)
        root = tempfile.mkdtemp(dir=data_root, prefix=RECOVERY_DIR_PREFIX)
    except OSError as error:
        raise ConfigurationError(f"cannot make a recovery directory in {CURRENT_DATA_ROOT} {data_root!r}: {error}; "
                                 "point it at a directory this process may write") from error
    try:
        recovery_dir = _RecoveryDir(root)
        with config_override(CURRENT_DATA_ROOT, recovery_dir.data):
            yield recovery_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if os.path.lexists(root):
            logger.warning("could not remove the recovery directory %s; delete it when no recovery runs", root)


class ProvenanceSaveService(AbstractSaveService):
    """Stores a derived model as the provenance of its training; a model without base or provenance as a snapshot."""

    _approach = "provenance"

    def __init__(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                 logging: bool = False, strict_env: bool = False, *,
                 checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL):
        """`checkpoint_interval`: a version stores its training state when its base is a snapshot or the last
        version that stored it is this many versions back; 1 stores it with every version."""
        if isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int) or checkpoint_interval < 1:
            raise InvalidSaveInfoError(
                f"checkpoint_interval must be a positive int (versions per stored training state; default "
                f"{DEFAULT_CHECKPOINT_INTERVAL}, 1 stores it with every version), got {checkpoint_interval!r}")
        super().__init__(file_pers_service, dict_pers_service, logging, strict_env)
        self.checkpoint_interval = checkpoint_interval

    def save_model(self, save_info: ModelSaveInfo) -> str:
        provenance = self._checked_provenance(save_info)
        with self._saving():
            if provenance is None:
                model_id = self._save_snapshot(save_info)
                logger.debug("saved model %s as a full snapshot", model_id)
            else:
                model_id = self._save_provenance(save_info, provenance)
                logger.debug("saved model %s as the provenance of training %s", model_id, provenance.base_id)
        return model_id

    def add_weights_hash_info(self, model_id: str, model: torch.nn.Module) -> None:
        """Record the hash of the weights the stored training produced (call it after training `model`)."""
        self._require_model(model_id)
        check_type(model, torch.nn.Module, "model", "the model trained as the version's provenance records")
        model_info = ModelInfo.load(model_id, self._file_pers_service, self._dict_pers_service, self._restore_root)
        tree = merkle_tree(capture(model))
        if model_info.store_type != ModelStoreType.PROVENANCE:
            if model_info.weights_hash_info != tree:
                raise InvalidSaveInfoError(
                    f"model {model_id} is a {model_info.store_type.value} whose weights hash was recorded when it "
                    "was saved, and the given model differs from it; add_weights_hash_info is for provenance "
                    "versions (saved with a base model and add_prov_data)")
            return
        record_weights_hash(model_id, tree, self._dict_pers_service)

    def recover_model(self, model_id: str, execute_checks: bool = True,
                      device: Optional[DeviceLike] = None) -> RestoredModelInfo:
        """Rebuild a stored version on `device` (default: the CPU). A snapshot is built there directly; a
        provenance version is retrained on the CPU, where its recorded training is deterministic, each version
        checked there, and the result is then moved to `device` (and checked there again)."""
        with self._recovering(model_id, execute_checks, device) as target:
            chain = self._retraining_chain(model_id)
            self._verify_retraining_inputs(chain[1:])
            if len(chain) > 1:
                model = move_model(self._retrain_chain(chain, execute_checks), target)
                if execute_checks and target != CPU:
                    self._check_model(chain[-1], model)
            else:
                with _TRAINING:
                    model, _ = self._recover_snapshot(chain[0], execute_checks, target)
        return RestoredModelInfo(model=model, model_id=model_id)

    def _retrain_chain(self, chain: list[ModelInfo], execute_checks: bool) -> torch.nn.Module:
        """The last version of `chain` (a snapshot, then provenance versions), rebuilt from the snapshot by
        retraining each version in turn inside a directory private to this recovery."""
        with _private_recovery_dir() as recovery_dir:
            with _TRAINING:
                model, _ = self._recover_snapshot(chain[0], execute_checks)
            state_objs = None
            for position, model_info in enumerate(chain[1:], start=1):
                progress.info("retraining model %s (%d of %d) from its base %s", model_info.store_id, position,
                              len(chain) - 1, model_info.derived_from)
                state_objs = self._retrain(model, model_info, recovery_dir, execute_checks, state_objs)
        return model

    def _verify_retraining_inputs(self, versions: list[ModelInfo]) -> None:
        """Check every document and blob that retraining `versions` reads (data, train code, stored objects) against
        the ids that name them, before any code runs: a recovery builds nothing from an edited record."""
        checked: set[str] = set()
        for model_info in versions:
            for item in model_info.stored_items(self._dict_pers_service):
                if item.kind == BLOB and item.item_id not in checked:
                    self._file_pers_service.verify_blob(item.item_id)
                    checked.add(item.item_id)

    def _checked_provenance(self, save_info: ModelSaveInfo) -> Optional[_ProvenanceInputs]:
        """Reject a save before anything is written; what a provenance version stores, None for a snapshot.

        A provenance version needs no model (the original's flow: save it, then train the live model and call
        `add_weights_hash_info`): its code and class are its base's.
        """
        if not _has_provenance(save_info) or save_info.base_model is None:
            self._validate(save_info)
            return None
        base_id = save_info.base_model
        self._validate(save_info, model_required=False)
        raw_dataset, train_info = save_info.raw_dataset, save_info.train_info
        if not isinstance(raw_dataset, (str, os.PathLike)) or not os.path.exists(raw_dataset):
            raise InvalidSaveInfoError(f"the provenance dataset {raw_dataset!r} does not exist; pass the directory "
                                       "(or file) holding the training data to add_prov_data(raw_data_path=...)")
        wrapper = train_info.train_service_wrapper if train_info is not None else None
        if train_info is None or not isinstance(wrapper, StateDictRestorableObjectWrapper):
            raise InvalidSaveInfoError(
                f"the train service wrapper must be a StateDictRestorableObjectWrapper subclass, got "
                f"{type(wrapper).__name__}; pass it to add_prov_data(train_service_wrapper=...)")
        wrapper.check()
        self._wrapper_code(wrapper)
        if not isinstance(train_info.train_kwargs, (dict, type(None))):
            raise InvalidSaveInfoError("train_kwargs must be a dict of keyword arguments of train()")
        check_json_value(train_info.train_kwargs, "train_kwargs")
        base_type = ModelInfo.load(base_id, self._file_pers_service, self._dict_pers_service,
                                   self._restore_root).store_type
        if base_type not in (ModelStoreType.FULL_MODEL, ModelStoreType.PROVENANCE):
            raise IncompatibleModelError(
                f"base model {base_id} is stored as {base_type.value}, which ProvenanceSaveService "
                "cannot recover; derive provenance versions from full snapshots or provenance versions")
        return _ProvenanceInputs(base_id, raw_dataset, wrapper, train_info.train_kwargs)

    @staticmethod
    def _wrapper_code(wrapper: StateDictRestorableObjectWrapper) -> FileReference:
        """The file defining the wrapper's class (recovery imports the subclass from it)."""
        source = source_file(type(wrapper))
        if source is None:
            raise InvalidSaveInfoError(
                f"cannot find the source file of {type(wrapper).__qualname__}; define the train service wrapper "
                "in a .py module (not in __main__ or a notebook)")
        return FileReference(path=source)

    def _save_provenance(self, save_info: ModelSaveInfo, provenance: _ProvenanceInputs) -> str:
        """Store data, train service and environment; the model document last (its weights hash comes later)."""
        wrapper = provenance.wrapper
        with self._timed("save_dataset"):
            dataset = Dataset(raw_data=FileReference(path=os.fspath(provenance.raw_dataset)))
            dataset.persist(self._file_pers_service, self._dict_pers_service)
        carried = self._carried_names(provenance.base_id, wrapper)
        train_info = TrainInfo(ts_wrapper=wrapper.without_state() if carried else wrapper,
                               ts_wrapper_code=self._wrapper_code(wrapper),
                               ts_wrapper_class_name=check_class_name(type(wrapper).__name__),
                               train_kwargs=dict(provenance.train_kwargs or {}), carried_state=carried)
        recover_info = ProvenanceRecoverInfo(dataset=dataset, train_info=train_info,
                                             environment=recorded_environment(save_info))
        model_info = ModelInfo(store_type=ModelStoreType.PROVENANCE, recover_info=recover_info,
                               derived_from_id=provenance.base_id)
        with self._timed("save_provenance"):
            return self._persist_model(model_info)

    def _carried_names(self, base_id: str, wrapper: StateDictRestorableObjectWrapper) -> Optional[list[str]]:
        """The state objects whose state a new version on `base_id` leaves to recovery to carry from the base's
        retraining, or None when the version is a checkpoint and stores them: its base is a snapshot, the last
        checkpoint is `checkpoint_interval` versions back, or the base's training had no state under a name."""
        names = wrapper.stateful_names()
        since_checkpoint = self._lineage(base_id, stop=lambda info: not _carried_state(info))
        if (not names or since_checkpoint[-1].store_type != ModelStoreType.PROVENANCE
                or len(since_checkpoint) >= self.checkpoint_interval
                or not set(names) <= self._stateful_names(since_checkpoint[0])):
            return None
        return names

    def _stateful_names(self, model_info: ModelInfo) -> set[str]:
        """The state objects of a provenance version's training that have a state (stored or carried)."""
        train_info = model_info.recover_info.train_info
        if train_info.carried_state:
            return set(train_info.carried_state)
        return {name for name, wrapper_id in (train_info.ts_wrapper.state_objs or {}).items()
                if StateFileRestorableObjectWrapper.load_placeholder(wrapper_id).stored_document(
                    self._dict_pers_service).get(STATE_FILE) is not None}

    def _retraining_chain(self, model_id: str) -> list[ModelInfo]:
        """The model infos from the full snapshot at the root up to `model_id`: the snapshot, then the provenance
        versions that recovery retrains in order."""
        chain = self._lineage(model_id, stop=lambda info: info.store_type != ModelStoreType.PROVENANCE)[::-1]
        if chain[0].store_type != ModelStoreType.FULL_MODEL:
            raise IncompatibleModelError(
                f"model {chain[0].store_id} in the lineage of {model_id} is stored as {chain[0].store_type.value}; "
                "recover it with the save service that stored it (e.g. WeightUpdateSaveService)")
        return chain

    def _retrain(self, model: torch.nn.Module, model_info: ModelInfo, recovery_dir: _RecoveryDir,
                 execute_checks: bool, base_state_objs: Optional[dict[str, Any]]) -> dict[str, Any]:
        """Turn the recovered base `model` into `model_info`'s version by re-running its training inside
        `recovery_dir`; returns the trained service's state objects, whose state the next version may carry
        (`base_state_objs` are those of the base's retraining, None when the base is a snapshot)."""
        recover_info = model_info.recover_info
        if execute_checks:
            if model_info.weights_hash_info is None:
                raise IntegrityError(
                    f"model {model_info.store_id} has no weights hash to check the retrained model against: call "
                    "add_weights_hash_info(model_id, model) after training it, or recover with execute_checks=False")
            check_environment(recover_info.environment, f"model {model_info.store_id}", self.strict_env)
        with self._timed("restore_dataset", model_info.store_id):
            self._unpack_dataset(recover_info.dataset, recovery_dir)
        restore_dir = recovery_dir.restore_dir(model_info)
        with _TRAINING, contextlib.ExitStack() as carrying:
            with self._timed("restore_train_service", model_info.store_id):
                wrapper = self._train_wrapper(recover_info.train_info, restore_dir)
                wrapper.carried_states = self._carried_states(model_info, base_state_objs, restore_dir)
                carrying.enter_context(wrapper.carrying())
                train_service = self._restored_train_service(wrapper, restore_dir)
            set_deterministic()
            with self._timed("train", model_info.store_id):
                train_service.train(model, **(recover_info.train_info.train_kwargs or {}))
        if execute_checks:
            self._check_retrained(model_info, model)
        return dict(getattr(train_service, "state_objs", None) or {})

    @staticmethod
    def _carried_states(model_info: ModelInfo, base_state_objs: Optional[dict[str, Any]],
                        restore_dir: str) -> dict[str, FileReference]:
        """The state each carried state object of `model_info` starts from: what the base's retraining left, written
        under `restore_dir`."""
        names = model_info.recover_info.train_info.carried_state or []
        if not names:
            return {}
        if base_state_objs is None:
            raise IntegrityError(
                f"model {model_info.store_id} carries the state of {names} from the retraining of its base "
                f"{model_info.derived_from}, which is not a provenance version; the metadata was changed, run "
                "`mmlib verify` and restore the store from a backup")
        states = {}
        for index, name in enumerate(names):
            wrapper = base_state_objs.get(name)
            if not isinstance(wrapper, StateFileRestorableObjectWrapper):
                raise RestoreError(
                    f"model {model_info.store_id} carries the state of {name!r} from the retraining of its base "
                    f"{model_info.derived_from}, whose train service holds no StateFileRestorableObjectWrapper "
                    f"{name!r} (it holds {sorted(base_state_objs)}); restore_instance must set every state object")
            directory = os.path.join(restore_dir, f"carried-{index}")
            os.makedirs(directory, exist_ok=True)
            states[name] = wrapper.current_state_file(os.path.join(directory, STATE_FILE))
        return states

    def _check_retrained(self, model_info: ModelInfo, model: torch.nn.Module) -> None:
        try:
            self._check_model(model_info, model)
        except IntegrityError as error:
            raise IntegrityError(
                f"re-running the recorded training of model {model_info.store_id} did not reproduce the weights "
                "recorded with add_weights_hash_info: the training is not deterministic (unseeded randomness, "
                "multi-worker loading, ...) or its data, code or train kwargs changed in the store; run "
                "`mmlib verify`, or recover with execute_checks=False to get the retrained model unchecked") \
                from error

    def _unpack_dataset(self, dataset: Dataset, recovery_dir: _RecoveryDir) -> None:
        """Put the stored data at `recovery_dir.data` (a directory's contents, or a file inside it), replacing the
        data an earlier version of the chain was trained on."""
        reference_id = _recorded(dataset.raw_data, "raw data", dataset).stored_id()
        if recovery_dir.dataset == reference_id:
            logger.debug("dataset %s is already unpacked in %s", reference_id, recovery_dir.data)
            return
        staging = tempfile.mkdtemp(dir=recovery_dir.root, prefix="staging-")
        ref = FileReference(reference_id=reference_id)
        self._file_pers_service.recover_file(ref, staging)
        unpacked = ref.path if ref.path is not None and os.path.isdir(ref.path) else staging
        if os.path.isdir(recovery_dir.data):
            shutil.rmtree(recovery_dir.data)
        os.replace(unpacked, recovery_dir.data)
        shutil.rmtree(staging, ignore_errors=True)
        recovery_dir.dataset = reference_id
        logger.debug("unpacked dataset %s into %s", reference_id, recovery_dir.data)

    def _train_wrapper(self, train_info: TrainInfo, restore_dir: str) -> StateDictRestorableObjectWrapper:
        """The stored train service wrapper of a version, loaded as the stored subclass from its restored code."""
        train_info = TrainInfo.load(train_info.stored_id(), self._file_pers_service, self._dict_pers_service,
                                    restore_dir, load_recursive=False, load_files=True)
        wrapper_cls = create_type(_recorded(train_info.ts_wrapper_code, "train code", train_info).path,
                                  train_info.ts_wrapper_class_name)
        if not (isinstance(wrapper_cls, type) and issubclass(wrapper_cls, StateDictRestorableObjectWrapper)):
            raise UnsafeCodeError(
                f"{train_info.ts_wrapper_class_name} in the stored train code is not a "
                "StateDictRestorableObjectWrapper subclass; the metadata may have been changed, run `mmlib verify`")
        return wrapper_cls.load(_recorded(train_info.ts_wrapper, "train service", train_info).stored_id(),
                                self._file_pers_service, self._dict_pers_service, restore_dir,
                                load_recursive=True, load_files=True)

    def _restored_train_service(self, wrapper: StateDictRestorableObjectWrapper, restore_dir: str) -> Any:
        """The train service `wrapper.restore_instance` rebuilds from the stored objects (state objects named in
        its `carried_states` from that state instead of a stored one)."""
        wrapper.restore_instance(self._file_pers_service, self._dict_pers_service, restore_dir)
        if not callable(getattr(wrapper.instance, "train", None)):
            raise RestoreError(f"{type(wrapper).__name__}.restore_instance must set self.instance to a TrainService "
                               f"(with a train(model, **kwargs) method), got {type(wrapper.instance).__name__}")
        return wrapper.instance
