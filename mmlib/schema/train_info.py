"""How a provenance version was trained: the train service wrapper, the code of its class, train kwargs, and which
state objects start from the state its base's retraining left instead of a stored state."""

from typing import Optional

from mmlib.persistence.base import FileReference
from mmlib.schema.restorable_object import StateDictRestorableObjectWrapper
from mmlib.schema.schema_obj import IsolatedFileField, ObjectField, SchemaObj, ValueField

TRAIN_INFO = "train_info"
TRAIN_SERVICE = "train_service"
WRAPPER_CODE = "wrapper_code"
WRAPPER_CLASS_NAME = "wrapper_class_name"
TRAIN_KWARGS = "train_kwargs"
CARRIED_STATE = "carried_state"


def _state_names(stored: object) -> list[str]:
    """The stored `carried_state`: a list of state object names (ValueError otherwise: a damaged document)."""
    if not isinstance(stored, list) or not all(isinstance(name, str) for name in stored):
        raise ValueError(f"{CARRIED_STATE} must be a list of state object names, got {stored!r}")
    return stored


class TrainInfo(SchemaObj):
    """The train service (a StateDictRestorableObjectWrapper subclass, named by code and class) and its kwargs.

    Loading gives `ts_wrapper` as a StateDictRestorableObjectWrapper; recovery loads it again as the stored
    subclass (`ts_wrapper_class_name` from `ts_wrapper_code`), whose `restore_instance` rebuilds the service.
    `carried_state` names the state objects (e.g. `["optimizer"]`) stored without state because recovery carries
    their state from the retraining of the base version; None when every state is stored (a checkpoint). It is
    part of the document, so the id commits to where the state comes from.
    """

    _representation_type = TRAIN_INFO
    _fields = (
        ObjectField("ts_wrapper", StateDictRestorableObjectWrapper, key=TRAIN_SERVICE, size_key=TRAIN_SERVICE),
        IsolatedFileField("ts_wrapper_code", key=WRAPPER_CODE),
        ValueField("ts_wrapper_class_name", key=WRAPPER_CLASS_NAME),
        ValueField("train_kwargs", key=TRAIN_KWARGS),
        ValueField("carried_state", key=CARRIED_STATE, decode=_state_names),
    )

    def __init__(self, ts_wrapper: Optional[StateDictRestorableObjectWrapper] = None,
                 ts_wrapper_code: Optional[FileReference] = None, ts_wrapper_class_name: Optional[str] = None,
                 train_kwargs: Optional[dict] = None, store_id: Optional[str] = None,
                 carried_state: Optional[list[str]] = None):
        super().__init__(store_id)
        self.ts_wrapper = ts_wrapper
        self.ts_wrapper_code = ts_wrapper_code
        self.ts_wrapper_class_name = ts_wrapper_class_name
        self.train_kwargs = train_kwargs
        self.carried_state = carried_state
