"""Persisted objects of mmlib (documents that reference blobs and each other)."""

from mmlib.persistence.base import FileReference
from mmlib.schema.dataset import Dataset
from mmlib.schema.environment import Environment
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.recover_info import FullModelRecoverInfo, ProvenanceRecoverInfo, WeightsUpdateRecoverInfo
from mmlib.schema.restored_model_info import RestoredModelInfo
from mmlib.schema.schema_obj import SchemaObj
from mmlib.schema.store_type import ModelStoreType
from mmlib.schema.train_info import TrainInfo

__all__ = [
    "Dataset",
    "Environment",
    "FileReference",
    "FullModelRecoverInfo",
    "ModelInfo",
    "ModelStoreType",
    "ProvenanceRecoverInfo",
    "RestoredModelInfo",
    "SchemaObj",
    "TrainInfo",
    "WeightsUpdateRecoverInfo",
]
