"""Wrappers that store how to rebuild the objects a training run uses (dataset, data loader, optimizer, ...).

A wrapper records a class (a stored code file or a plain import command), its JSON constructor arguments,
arguments read from the MMLIB_CONFIG ini file, and the names of objects the caller passes at restore time.
State-file wrappers also store a state file (e.g. optimizer buffers); a state-dict wrapper stores a train
service and, by name, the wrappers of the objects it uses. Nothing is pickled and no metadata string is
executed: classes are imported with importlib after their names are checked.

A provenance version that carries its state from its base's retraining stores a state-dict wrapper
`without_state()`: its state-file wrappers keep their class and arguments but no state, and recovery hands the
state the previous retraining left (`current_state_file`) to the train service through `carried_states`. Inside
`carrying()` a state-file wrapper gets that state however the train code loads it: by name with `load_state_obj`,
or by id with `StateFileRestorableObjectWrapper.load` as the original MMlib's train services do, also lazily in
`train` (`if not wrapper.instance: wrapper.restore_instance(...)`).
"""

import contextlib
import copy
import inspect
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, TypeVar, Union

from mmlib.config import config_value
from mmlib.errors import InvalidSaveInfoError, RestoreError
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, FileReference
from mmlib.schema.schema_obj import IsolatedFileField, ObjectMapField, SchemaObj, ValueField
from mmlib.util.init_from_file import check_class_name, create_object_with_parameters, parse_import_cmd

if TYPE_CHECKING:  # for annotations only: importing mmlib.schema (as `mmlib ls` does) needs no torch
    import torch

logger = logging.getLogger(__name__)

RESTORABLE_OBJECT = "restorable_object"
STATE_DICT_RESTORABLE_OBJECT = "state_dict_restorable_object"

CODE_FILE = "code_file"
STATE_FILE = "state_file"
STATE_DICT = "state_dict"
CLASS_NAME = "class_name"
IMPORT_CMD = "import_cmd"
INIT_ARGS = "init_args"
CONFIG_ARGS = "config_args"
INIT_REF_TYPE_ARGS = "init_ref_type_args"

Wrapper = TypeVar("Wrapper", bound="RestorableObjectWrapper")

# Inside `StateDictRestorableObjectWrapper.carrying`: the carried state of each state object of the version being
# recovered, by the id of its stored (stateless) wrapper document; None where several state objects share that
# document, so only their names tell their states apart.
_CARRIED_BY_ID: ContextVar[Mapping[str, Optional[FileReference]]] = ContextVar("mmlib_carried_states",
                                                                              default=MappingProxyType({}))


def check_json_value(value: Any, what: str, hint: str = "pass objects by name with init_ref_type_args instead") -> None:
    """Raise InvalidSaveInfoError unless `value` can be stored as JSON (documents hold no pickles); `hint` says how
    to pass what JSON cannot hold."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidSaveInfoError(
            f"{what} must hold only JSON values (str, int, float, bool, None, lists, dicts with str keys): "
            f"{error}; {hint}") from error


def add_params_from_config(init_args: dict, config_args: Optional[dict]) -> dict:
    """Set `init_args[name]` to the MMLIB_CONFIG [VALUES] entry `key` for each `name -> key` of `config_args`."""
    for name, key in (config_args or {}).items():
        init_args[name] = config_value(key)
    return init_args


def _as_file_reference(code: Union[FileReference, str, None]) -> Optional[FileReference]:
    return FileReference(path=code) if isinstance(code, (str, os.PathLike)) else code


def source_file(cls: type) -> Optional[str]:
    """The .py file defining `cls`, or None for classes from `__main__` (scripts, notebooks) or without a file."""
    if cls.__module__ == "__main__":
        return None
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None


class AbstractRestorableObjectWrapper(SchemaObj):
    """A class (code file or import command) and optionally a live `instance` of it.

    Documents are stored by content: a wrapper whose class, arguments and state did not change between
    two saved versions is one document.
    """

    _representation_type = RESTORABLE_OBJECT
    _fields: tuple[ValueField, ...] = (
        ValueField("class_name", key=CLASS_NAME),
        IsolatedFileField("code", key=CODE_FILE),
        ValueField("import_cmd", key=IMPORT_CMD),
    )

    def __init__(self, c_name: Optional[str] = None, code: Union[FileReference, str, None] = None,
                 import_cmd: Optional[str] = None, instance: Any = None, store_id: Optional[str] = None):
        super().__init__(store_id)
        self.instance = instance
        self.class_name = c_name if c_name is not None or instance is None else type(instance).__name__
        self.import_cmd = import_cmd
        self.code = _as_file_reference(code)
        if self.code is None and import_cmd is None and instance is not None:
            self.code = _as_file_reference(source_file(type(instance)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(class_name={self.class_name!r}, store_id={self.store_id!r})"

    def check(self) -> None:
        """Raise InvalidSaveInfoError or UnsafeCodeError when this wrapper cannot be stored and restored."""
        if self.class_name is None:
            raise InvalidSaveInfoError(f"{type(self).__name__} needs a class name: pass c_name= or instance=")
        check_class_name(self.class_name)
        if self.import_cmd is not None:
            parse_import_cmd(self.import_cmd)
        elif self.code is None or (self.code.reference_id is None and not os.path.isfile(self.code.path or "")):
            raise InvalidSaveInfoError(
                f"cannot find the code of {self.class_name}: pass code= (the .py file defining it) or "
                "import_cmd= ('from package.module import Name'); classes defined in a script's __main__ or "
                "a notebook must move into a module")

    def persist(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService) -> str:
        """Store the wrapper; with a live instance its current state is stored again (unchanged state is deduped)."""
        if self.instance is not None:
            self.store_id = None
        return super().persist(file_pers_service, dict_pers_service)

    def _code_path(self) -> Optional[str]:
        """The restored code file, or None for an import command; RestoreError when it was not restored."""
        if self.import_cmd is not None:
            return None
        if self.code is None or self.code.path is None:
            raise RestoreError(f"the code of {self.class_name} is not restored: load the wrapper with "
                               "load_files=True (Cls.load(id, fps, dps, restore_root, True, True))")
        return self.code.path


class RestorableObjectWrapper(AbstractRestorableObjectWrapper):
    """An object rebuilt from its class, JSON `init_args`, `config_args` and objects passed at restore time."""

    _fields: tuple[ValueField, ...] = AbstractRestorableObjectWrapper._fields + (
        ValueField("init_args", key=INIT_ARGS),
        ValueField("init_ref_type_args", key=INIT_REF_TYPE_ARGS),
        ValueField("config_args", key=CONFIG_ARGS),
    )

    def __init__(self, c_name: Optional[str] = None, init_args: Optional[dict] = None,
                 init_ref_type_args: Optional[list] = None, config_args: Optional[dict] = None,
                 code: Union[FileReference, str, None] = None, import_cmd: Optional[str] = None,
                 instance: Any = None, store_id: Optional[str] = None):
        super().__init__(c_name, code, import_cmd, instance, store_id)
        self.init_args = init_args
        self.init_ref_type_args = init_ref_type_args
        self.config_args = config_args

    def check(self) -> None:
        super().check()
        check_json_value(self.init_args, f"init_args of {self.class_name}")
        if not all(isinstance(name, str) for name in self.init_ref_type_args or ()):
            raise InvalidSaveInfoError(f"init_ref_type_args of {self.class_name} must be a list of argument names")
        if not all(isinstance(key, str) and isinstance(value, str) for key, value in (self.config_args or {}).items()):
            raise InvalidSaveInfoError(f"config_args of {self.class_name} must map argument names to keys of the "
                                       "MMLIB_CONFIG [VALUES] section")

    def restore_instance(self, ref_type_args: Optional[dict] = None) -> Any:
        """Build `self.instance`; `ref_type_args` must name exactly the stored `init_ref_type_args`."""
        ref_type_args = dict(ref_type_args or {})
        expected = set(self.init_ref_type_args or ())
        if set(ref_type_args) != expected:
            raise RestoreError(f"{self.class_name} is restored with the objects {sorted(expected)} passed as "
                               f"ref_type_args, got {sorted(ref_type_args)}")
        init_args = add_params_from_config(dict(self.init_args or {}), self.config_args)
        self.instance = create_object_with_parameters(check_class_name(self.class_name), init_args,
                                                      code_file=self._code_path(),
                                                      import_cmd=self.import_cmd, init_ref_type_args=ref_type_args)
        return self.instance


class StateFileRestorableObject(ABC):
    """An object that writes its state to a file and reads it back (e.g. an optimizer's buffers)."""

    @abstractmethod
    def save_instance_state(self, path: str) -> None:
        """Write the state to `path` (tensors with torch.save, so it is read back with weights_only=True)."""

    @abstractmethod
    def restore_instance_state(self, path: str) -> None:
        """Read the state written by `save_instance_state`; must not unpickle arbitrary objects."""


class StateFileRestorableObjectWrapper(RestorableObjectWrapper):
    """A RestorableObjectWrapper that also stores the state file its `StateFileRestorableObject` writes."""

    _fields = RestorableObjectWrapper._fields + (IsolatedFileField("state_file", key=STATE_FILE),)

    def __init__(self, c_name: Optional[str] = None, init_args: Optional[dict] = None,
                 init_ref_type_args: Optional[list] = None, config_args: Optional[dict] = None,
                 code: Union[FileReference, str, None] = None, import_cmd: Optional[str] = None,
                 instance: Any = None, store_id: Optional[str] = None, state_file: Optional[FileReference] = None):
        super().__init__(c_name, init_args, init_ref_type_args, config_args, code, import_cmd, instance, store_id)
        self.state_file = state_file

    def check(self) -> None:
        super().check()
        if self.instance is None and self.state_file is None:
            raise InvalidSaveInfoError(f"{type(self).__name__} of {self.class_name} needs instance= (whose state "
                                       "is written at save) or state_file=")
        if self.instance is not None and not isinstance(self.instance, StateFileRestorableObject):
            raise InvalidSaveInfoError(f"{type(self.instance).__name__} must subclass StateFileRestorableObject "
                                       "(save_instance_state / restore_instance_state) to be stored with its state")

    def without_state(self) -> RestorableObjectWrapper:
        """The class and arguments of this object without its state: its document depends on nothing the live
        instance holds (stored for a version whose state is carried from its base's retraining)."""
        return RestorableObjectWrapper(self.class_name, self.init_args, self.init_ref_type_args, self.config_args,
                                       self.code, self.import_cmd)

    def current_state_file(self, path: str) -> FileReference:
        """The state as it is now: the live instance's, written to `path`; without one, the restored state file
        (nothing rebuilt the object, so its state did not change)."""
        if isinstance(self.instance, StateFileRestorableObject):
            self.instance.save_instance_state(path)
            return FileReference(path=path)
        if self.instance is None and self.state_file is not None and self.state_file.path is not None:
            return FileReference(path=self.state_file.path)
        raise RestoreError(f"{self.class_name} has neither a StateFileRestorableObject instance nor a restored state "
                           "file, so it has no state to store or carry")

    @contextlib.contextmanager
    def _current_state_file(self) -> Iterator[None]:
        """While persisting, `state_file` is a temporary file holding the live instance's current state."""
        if self.instance is None:
            yield
            return
        with tempfile.TemporaryDirectory(prefix="mmlib-state-") as directory:
            self.state_file = self.current_state_file(os.path.join(directory, STATE_FILE))
            yield

    def _document(self, fps: FilePersistenceService, dps: DictPersistenceService) -> dict:
        with self._current_state_file():
            return super()._document(fps, dps)

    def load_all_fields(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                        restore_root: str, load_recursive: bool = False, load_files: bool = False) -> None:
        """Fill the fields from the stored document; one stored without state whose state a recovery carries (see
        `StateDictRestorableObjectWrapper.carrying`) gets the carried state file."""
        super().load_all_fields(file_pers_service, dict_pers_service, restore_root, load_recursive, load_files)
        if self.state_file is None:
            self.state_file = _CARRIED_BY_ID.get().get(self.stored_id())

    def restore_instance(self, ref_type_args: Optional[dict] = None) -> Any:
        """Build the instance as RestorableObjectWrapper does, then load its stored state into it."""
        if self.state_file is None and self.store_id in _CARRIED_BY_ID.get():
            raise RestoreError(
                f"the state of {self.class_name} is carried from the base version's retraining, but several state "
                "objects share its stored wrapper, so its id does not tell which state is its: load it by name "
                "with load_state_obj(name, ...) in the train wrapper's restore_instance")
        if self.state_file is None or self.state_file.path is None:
            raise RestoreError(f"the state file of {self.class_name} is not restored: load the wrapper with "
                               "StateFileRestorableObjectWrapper.load(id, fps, dps, restore_root, True, True)")
        instance = super().restore_instance(ref_type_args)
        if not isinstance(instance, StateFileRestorableObject):
            raise RestoreError(f"{type(instance).__name__} is not a StateFileRestorableObject, so its stored "
                               "state cannot be loaded; restore it with RestorableObjectWrapper instead")
        instance.restore_instance_state(self.state_file.path)
        return instance


class StateDictObj:
    """An object that holds named restorable objects (`state_objs`: name -> wrapper)."""

    def __init__(self, state_objs: Optional[dict] = None):
        self.state_objs: dict = state_objs if state_objs is not None else {}


class TrainService(StateDictObj, ABC):
    """Trains a model with the objects in `state_objs`; re-running it after restore reproduces the training."""

    @abstractmethod
    def train(self, model: "torch.nn.Module", **kwargs: Any) -> None:
        """Train `model` in place; `kwargs` are the train kwargs stored with the model version."""


class StateDictRestorableObjectWrapper(AbstractRestorableObjectWrapper):
    """A train service: its code and class name, and `state_objs` (name -> wrapper of an object it uses).

    Saving stores each wrapper in `state_objs` (default: the instance's `state_objs`). After loading,
    `state_objs` maps each name to the stored id of that wrapper. Subclasses implement `restore_instance`:
    load each wrapper (see `load_state_obj`), restore it, build the train service and set its `state_objs`.
    `carried_states` (name -> state file, set before `restore_instance`) gives state-file wrappers stored without
    state the state to restore, inside `carrying()` (however they are loaded). The service's code file is not
    reported by `size_info` (it is the train code, see TrainInfo).
    """

    _representation_type = STATE_DICT_RESTORABLE_OBJECT
    _fields = (
        ValueField("class_name", key=CLASS_NAME),
        IsolatedFileField("code", key=CODE_FILE, sized=False),
        ValueField("import_cmd", key=IMPORT_CMD),
        ObjectMapField("state_objs", StateFileRestorableObjectWrapper, key=STATE_DICT, size_key=STATE_DICT),
    )

    def __init__(self, c_name: Optional[str] = None, code: Union[FileReference, str, None] = None,
                 import_cmd: Optional[str] = None, instance: Any = None, store_id: Optional[str] = None,
                 state_objs: Optional[dict] = None):
        super().__init__(c_name, code, import_cmd, instance, store_id)
        self._state_objs = state_objs
        self.carried_states: dict[str, FileReference] = {}

    @property
    def state_objs(self) -> Optional[dict]:
        """Name -> wrapper (before saving; default: the instance's) or name -> stored id (after loading)."""
        if self._state_objs is None and self.instance is not None:
            return getattr(self.instance, "state_objs", None)
        return self._state_objs

    @state_objs.setter
    def state_objs(self, value: Optional[dict]) -> None:
        self._state_objs = value

    def check(self) -> None:
        super().check()
        state_objs = self.state_objs
        if not isinstance(state_objs, dict):
            raise InvalidSaveInfoError(f"the train service {self.class_name} has no state_objs: set "
                                       "instance.state_objs (name -> RestorableObjectWrapper)")
        for name, wrapper in state_objs.items():
            if not isinstance(name, str) or not isinstance(wrapper, (RestorableObjectWrapper, str)):
                raise InvalidSaveInfoError(
                    f"state_objs of {self.class_name} must map names to RestorableObjectWrapper or "
                    f"StateFileRestorableObjectWrapper objects; {name!r} maps to {type(wrapper).__name__}")
            if isinstance(wrapper, RestorableObjectWrapper):
                wrapper.check()

    def stateful_names(self) -> list[str]:
        """The names of the state objects stored with their state (state-file wrappers, e.g. the optimizer)."""
        return sorted(name for name, wrapper in (self.state_objs or {}).items()
                      if isinstance(wrapper, StateFileRestorableObjectWrapper))

    def without_state(self) -> "StateDictRestorableObjectWrapper":
        """A copy whose state-file wrappers store their class and arguments but not their state."""
        stateless = copy.copy(self)
        stateless.state_objs = {name: wrapper.without_state() if isinstance(wrapper, StateFileRestorableObjectWrapper)
                                else wrapper for name, wrapper in (self.state_objs or {}).items()}
        return stateless

    def load_state_obj(self, name: str, cls: type[Wrapper], file_pers_service: FilePersistenceService,
                       dict_pers_service: DictPersistenceService, restore_root: str) -> Wrapper:
        """Load the stored wrapper `name` of `state_objs` as `cls`, with its files restored (a state-file wrapper
        with a carried state gets that as its state file)."""
        state_objs = self.state_objs or {}
        if name not in state_objs:
            raise RestoreError(f"the stored train service {self.class_name} has no state object {name!r}; "
                               f"it has {sorted(state_objs)}")
        wrapper = cls.load(state_objs[name], file_pers_service, dict_pers_service, restore_root,
                           load_recursive=True, load_files=True)
        if name in self.carried_states and isinstance(wrapper, StateFileRestorableObjectWrapper):
            wrapper.state_file = self.carried_states[name]
        return wrapper

    @contextlib.contextmanager
    def carrying(self) -> Iterator[None]:
        """While the block runs, in this thread or task, a StateFileRestorableObjectWrapper loaded from the stored
        wrapper of a state object named in `carried_states` gets that state file, however the train code loads it:
        with `load_state_obj`, or with `StateFileRestorableObjectWrapper.load(id, ...)` (in `restore_instance`,
        or lazily in `train`)."""
        by_id: dict[str, Optional[FileReference]] = {}
        for name, state in self.carried_states.items():
            wrapper_id = (self.state_objs or {}).get(name)
            if isinstance(wrapper_id, str):
                by_id[wrapper_id] = None if wrapper_id in by_id else state
        token = _CARRIED_BY_ID.set(MappingProxyType(by_id))
        try:
            yield
        finally:
            _CARRIED_BY_ID.reset(token)

    def restore_instance(self, file_pers_service: FilePersistenceService,
                         dict_pers_service: DictPersistenceService, restore_root: str) -> None:
        """Rebuild the train service into `self.instance`, with its `state_objs` restored wrappers."""
        raise NotImplementedError(f"{type(self).__name__} must implement restore_instance(file_pers_service, "
                                  "dict_pers_service, restore_root) to rebuild its train service")
