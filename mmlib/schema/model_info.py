"""The model document: the commit marker of a save, pointing at how to recover the model."""

import time

from mmlib.schema.recover_info import FullModelRecoverInfo, WeightsUpdateRecoverInfo
from mmlib.schema.schema_obj import ObjectField, SchemaObj, ValueField
from mmlib.schema.state_layout import StateLayout
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree

MODEL_INFO = "model_info"
STORE_TYPE = "store_type"
RECOVER_INFO_ID = "recover_info_id"
DERIVED_FROM = "derived_from"
WEIGHTS_HASH_INFO = "weights_hash_info"
CREATED = "created"
STATE_LAYOUT = "state_layout"

RECOVER_INFO_CLASSES = {
    ModelStoreType.FULL_MODEL: FullModelRecoverInfo,
    ModelStoreType.WEIGHT_UPDATES: WeightsUpdateRecoverInfo,
}


def register_recover_info(store_type: ModelStoreType, cls: type) -> None:
    """Tell ModelInfo which recover-info class a store type uses (approach modules register theirs)."""
    RECOVER_INFO_CLASSES[store_type] = cls


def _recover_info_class(document: dict) -> type:
    return RECOVER_INFO_CLASSES[ModelStoreType(document[STORE_TYPE])]


class ModelInfo(SchemaObj):
    """One saved model version: store type, recover info, base model id, the Merkle tree of its weights, and the
    layout of its state (shared tensors, module versions, extra states, ...) that a rebuild restores."""

    _representation_type = MODEL_INFO
    _fields = (
        ValueField("store_type", key=STORE_TYPE, encode=lambda value: value.value, decode=ModelStoreType),
        ObjectField("recover_info", _recover_info_class, key=RECOVER_INFO_ID, size_key="recover_info"),
        ValueField("derived_from", key=DERIVED_FROM),
        ValueField("weights_hash_info", key=WEIGHTS_HASH_INFO, encode=WeightDictMerkleTree.to_python_dict,
                   decode=WeightDictMerkleTree.from_python_dict),
        ValueField("created", key=CREATED),
        ValueField("state_layout", key=STATE_LAYOUT, encode=StateLayout.to_document,
                   decode=StateLayout.from_document),
    )

    def __init__(self, store_type=None, recover_info=None, store_id=None, derived_from_id=None,
                 weights_hash_info=None, created=None, state_layout=None):
        super().__init__(store_id)
        self.store_type = store_type
        self.recover_info = recover_info
        self.derived_from = derived_from_id
        self.weights_hash_info = weights_hash_info
        self.created = created if created is not None else time.time()
        self.state_layout = state_layout
