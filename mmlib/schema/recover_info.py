"""What each approach stores to recover a model: a snapshot or an update."""

from mmlib.schema.dataset import Dataset
from mmlib.schema.environment import Environment
from mmlib.schema.schema_obj import FileField, ObjectField, SchemaObj, ValueField
from mmlib.schema.train_info import TrainInfo

RECOVER_INFO = "recover_info"
ENVIRONMENT = "environment"
MODEL_CODE = "model_code"
MODEL_CLASS_NAME = "model_class_name"
PARAMETERS = "parameters"
MODEL_IMPORT = "model_import"
MODEL_INIT_ARGS = "model_init_args"
MODEL_PACKAGE = "model_package"
UPDATE = "update"
UPDATE_TYPE = "update_type"
DATASET = "dataset"
TRAIN_INFO = "train_info"


class AbstractRecoverInfo(SchemaObj):
    """Base of the per-approach recover information (all share one document type)."""

    _representation_type = RECOVER_INFO


class FullModelRecoverInfo(AbstractRecoverInfo):
    """A full snapshot: weights (safetensors), how to build the model, and the environment.

    The model is built from its stored code file and class name, or, for classes from installed packages,
    from an import path (`package.module:ClassOrFactory`) checked against the recorded package version;
    either way with the recorded JSON constructor arguments.
    """

    _fields = (
        FileField("parameters_file", key=PARAMETERS),
        FileField("model_code", key=MODEL_CODE),
        ValueField("model_class_name", key=MODEL_CLASS_NAME),
        ObjectField("environment", Environment, key=ENVIRONMENT),
        ValueField("model_import", key=MODEL_IMPORT),
        ValueField("model_init_args", key=MODEL_INIT_ARGS),
        ValueField("model_package", key=MODEL_PACKAGE),
    )

    def __init__(self, parameters_file=None, model_code=None, model_class_name=None, environment=None,
                 store_id=None, model_import=None, model_init_args=None, model_package=None):
        super().__init__(store_id)
        self.parameters_file = parameters_file
        self.model_code = model_code
        self.model_class_name = model_class_name
        self.environment = environment
        self.model_import = model_import
        self.model_init_args = model_init_args
        self.model_package = model_package


class WeightsUpdateRecoverInfo(AbstractRecoverInfo):
    """The weights that changed relative to the base model, and how they are encoded."""

    _fields = (
        FileField("update", key=UPDATE),
        ValueField("update_type", key=UPDATE_TYPE),
    )

    def __init__(self, update=None, update_type=None, store_id=None):
        super().__init__(store_id)
        self.update = update
        self.update_type = update_type


class ProvenanceRecoverInfo(AbstractRecoverInfo):
    """How to reproduce a model from its base: the training data, the train service and kwargs, the environment."""

    _fields = (
        ObjectField("dataset", Dataset, key=DATASET),
        ObjectField("train_info", TrainInfo, key=TRAIN_INFO),
        ObjectField("environment", Environment, key=ENVIRONMENT),
    )

    def __init__(self, dataset=None, train_info=None, environment=None, store_id=None):
        super().__init__(store_id)
        self.dataset = dataset
        self.train_info = train_info
        self.environment = environment
