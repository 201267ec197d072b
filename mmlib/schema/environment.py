"""The software and hardware a model was saved with."""

from typing import Optional

from mmlib.persistence.base import DictPersistenceService, FilePersistenceService
from mmlib.schema.schema_obj import SchemaObj, ValueField

ENVIRONMENT = "environment"
ENVIRONMENT_FIELDS = ("python_version", "pytorch_version", "processor_info", "gpu_types", "pytorch_info",
                      "python_platform_info", "pip_freeze")
DEVICE = "device"


class Environment(SchemaObj):
    """Python, torch, hardware and installed packages; stored by content, so equal environments are stored once.

    `device` is where the saved model's state lay (e.g. "cuda:0"); None means the CPU, or a save made before it
    was recorded. It is stored only when set, so an environment saved from the CPU keeps the id it had before.
    """

    _representation_type = ENVIRONMENT
    _fields = (*(ValueField(name) for name in ENVIRONMENT_FIELDS), ValueField(DEVICE, types=(str,)))

    def __init__(self, python_version=None, pytorch_version=None, processor_info=None, gpu_types=None,
                 pytorch_info=None, python_platform_info=None, pip_freeze=None, store_id=None,
                 device: Optional[str] = None):
        super().__init__(store_id)
        self.python_version = python_version
        self.pytorch_version = pytorch_version
        self.processor_info = processor_info
        self.gpu_types = gpu_types
        self.pytorch_info = pytorch_info
        self.python_platform_info = python_platform_info
        self.pip_freeze = pip_freeze
        self.device = device

    def as_dict(self) -> dict:
        """The recorded values by field name (the device aside)."""
        return {name: getattr(self, name) for name in ENVIRONMENT_FIELDS}

    def _document(self, fps: FilePersistenceService, dps: DictPersistenceService) -> dict:
        """The fields, without a device that is not set (the document, and its id, of an older save)."""
        document = super()._document(fps, dps)
        if document[DEVICE] is None:
            del document[DEVICE]
        return document
