"""How a provenance version was trained: the train service wrapper, the code of its class, and train kwargs."""

from typing import Optional

from mmlib.persistence.base import FileReference
from mmlib.schema.restorable_object import StateDictRestorableObjectWrapper
from mmlib.schema.schema_obj import IsolatedFileField, ObjectField, SchemaObj, ValueField

TRAIN_INFO = "train_info"
TRAIN_SERVICE = "train_service"
WRAPPER_CODE = "wrapper_code"
WRAPPER_CLASS_NAME = "wrapper_class_name"
TRAIN_KWARGS = "train_kwargs"


class TrainInfo(SchemaObj):
    """The train service (a StateDictRestorableObjectWrapper subclass, named by code and class) and its kwargs.

    Loading gives `ts_wrapper` as a StateDictRestorableObjectWrapper; recovery loads it again as the stored
    subclass (`ts_wrapper_class_name` from `ts_wrapper_code`), whose `restore_instance` rebuilds the service.
    """

    _representation_type = TRAIN_INFO
    _fields = (
        ObjectField("ts_wrapper", StateDictRestorableObjectWrapper, key=TRAIN_SERVICE, size_key=TRAIN_SERVICE),
        IsolatedFileField("ts_wrapper_code", key=WRAPPER_CODE),
        ValueField("ts_wrapper_class_name", key=WRAPPER_CLASS_NAME),
        ValueField("train_kwargs", key=TRAIN_KWARGS),
    )

    def __init__(self, ts_wrapper: Optional[StateDictRestorableObjectWrapper] = None,
                 ts_wrapper_code: Optional[FileReference] = None, ts_wrapper_class_name: Optional[str] = None,
                 train_kwargs: Optional[dict] = None, store_id: Optional[str] = None):
        super().__init__(store_id)
        self.ts_wrapper = ts_wrapper
        self.ts_wrapper_code = ts_wrapper_code
        self.ts_wrapper_class_name = ts_wrapper_class_name
        self.train_kwargs = train_kwargs
