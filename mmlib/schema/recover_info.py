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
UPDATE = "update"
UPDATE_TYPE = "update_type"
DATASET = "dataset"
TRAIN_INFO = "train_info"


class AbstractRecoverInfo(SchemaObj):
    """Base of the per-approach recover information (all share one document type)."""

    _representation_type = RECOVER_INFO


class FullModelRecoverInfo(AbstractRecoverInfo):
    """A full snapshot: weights (safetensors), the model's code file and class name, and the environment."""

    _fields = (
        FileField("parameters_file", key=PARAMETERS),
        FileField("model_code", key=MODEL_CODE),
        ValueField("model_class_name", key=MODEL_CLASS_NAME),
        ObjectField("environment", Environment, key=ENVIRONMENT),
    )

    def __init__(self, parameters_file=None, model_code=None, model_class_name=None, environment=None,
                 store_id=None):
        super().__init__(store_id)
        self.parameters_file = parameters_file
        self.model_code = model_code
        self.model_class_name = model_class_name
        self.environment = environment


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
