"""The software and hardware a model was saved with."""

from mmlib.schema.schema_obj import SchemaObj, ValueField

ENVIRONMENT = "environment"
ENVIRONMENT_FIELDS = ("python_version", "pytorch_version", "processor_info", "gpu_types", "pytorch_info",
                      "python_platform_info", "pip_freeze")


class Environment(SchemaObj):
    """Python, torch, hardware and installed packages; stored by content, so equal environments are stored once."""

    _representation_type = ENVIRONMENT
    _fields = tuple(ValueField(name) for name in ENVIRONMENT_FIELDS)

    def __init__(self, python_version=None, pytorch_version=None, processor_info=None, gpu_types=None,
                 pytorch_info=None, python_platform_info=None, pip_freeze=None, store_id=None):
        super().__init__(store_id)
        self.python_version = python_version
        self.pytorch_version = pytorch_version
        self.processor_info = processor_info
        self.gpu_types = gpu_types
        self.pytorch_info = pytorch_info
        self.python_platform_info = python_platform_info
        self.pip_freeze = pip_freeze

    def as_dict(self) -> dict:
        """The recorded values by field name."""
        return {name: getattr(self, name) for name in ENVIRONMENT_FIELDS}
