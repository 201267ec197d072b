"""The model document: the commit marker of a save, pointing at how to recover the model.

A model id is the digest of its model document, which names the digests of everything the model needs (its
recover-info document, environment, code and weight blobs) and its base's id: like a git commit id, it commits
to the whole record, so a recovery can check every piece before it uses any.
"""

import time
from typing import TYPE_CHECKING, Iterator, Optional

from mmlib.constants import ID
from mmlib.errors import IntegrityError
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService, StoredItem
from mmlib.schema.recover_info import FullModelRecoverInfo, ProvenanceRecoverInfo, WeightsUpdateRecoverInfo
from mmlib.schema.schema_obj import METADATA_SIZE, ObjectField, SchemaObj, ValueField, content_digest
from mmlib.schema.state_layout import StateLayout
from mmlib.schema.store_type import ModelStoreType

if TYPE_CHECKING:  # imported by `_decoded_tree`: it imports torch, which listing a store does without
    from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree

MODEL_INFO = "model_info"
# Marks a model pruned by a retention policy: its record stays, its weights go where nothing reads them
# (`mmlib.pruning`).
PRUNED = "pruned_model"
STORE_TYPE = "store_type"
RECOVER_INFO_ID = "recover_info_id"
DERIVED_FROM = "derived_from"
WEIGHTS_HASH_INFO = "weights_hash_info"
CREATED = "created"
STATE_LAYOUT = "state_layout"
# Document type of the weights hash a provenance version gets after its save (its id is the model id).
RECORDED_WEIGHTS_HASH = "recorded_weights_hash"
MODEL_ID = "model_id"

RECOVER_INFO_CLASSES = {
    ModelStoreType.FULL_MODEL: FullModelRecoverInfo,
    ModelStoreType.WEIGHT_UPDATES: WeightsUpdateRecoverInfo,
    ModelStoreType.PROVENANCE: ProvenanceRecoverInfo,
}


def _recover_info_class(document: dict) -> type:
    return RECOVER_INFO_CLASSES[ModelStoreType(document[STORE_TYPE])]


def _decoded_tree(stored: object) -> "WeightDictMerkleTree":
    """A stored weights hash tree, checked and decoded; its module is imported here, on first use, since it imports
    torch and listing or sizing models reads no tree."""
    from mmlib.util.weight_dict_merkle_tree import WeightDictMerkleTree

    return WeightDictMerkleTree.from_document(stored)


class ModelInfo(SchemaObj):
    """One saved model version: store type, recover info, base model id, the Merkle tree of its weights, and the
    layout of its state (shared tensors, module versions, extra states, ...) that a rebuild restores.

    A provenance version's weights are known only after its save; their hash lives in a document of its own
    (`record_weights_hash`), which loading attaches as `weights_hash_info`.
    """

    _representation_type = MODEL_INFO
    _weights_hash: Optional["WeightDictMerkleTree"]  # set through `weights_hash_info`
    _fields = (
        ValueField("store_type", key=STORE_TYPE, encode=lambda value: value.value, decode=ModelStoreType),
        ObjectField("recover_info", _recover_info_class, key=RECOVER_INFO_ID, size_key="recover_info"),
        ValueField("derived_from", key=DERIVED_FROM, types=(str,)),
        ValueField("weights_hash_document", key=WEIGHTS_HASH_INFO, types=(dict,)),
        ValueField("created", key=CREATED, types=(int, float)),
        ValueField("state_layout", key=STATE_LAYOUT, encode=StateLayout.to_document,
                   decode=StateLayout.from_document),
    )

    def __init__(self, store_type=None, recover_info=None, store_id=None, derived_from_id=None,
                 weights_hash_info=None, created=None, state_layout=None):
        super().__init__(store_id)
        self.store_type = store_type
        self.recover_info = recover_info
        self.derived_from = derived_from_id
        self.weights_hash_document: Optional[dict] = None
        self.weights_hash_info = weights_hash_info
        self.created = created if created is not None else time.time()
        self.state_layout = state_layout

    @property
    def weights_hash_info(self) -> Optional["WeightDictMerkleTree"]:
        """The Merkle tree of the model's weights, checked and decoded on first use: a recovery walks many versions'
        documents but needs few of their trees."""
        if self._weights_hash is None and self.weights_hash_document is not None:
            self._weights_hash = _decoded_tree(self.weights_hash_document)
        return self._weights_hash

    @weights_hash_info.setter
    def weights_hash_info(self, tree: Optional["WeightDictMerkleTree"]) -> None:
        self._weights_hash = tree
        self.weights_hash_document = None if tree is None else tree.to_document()

    @classmethod
    def _content_id(cls, document: dict) -> str:
        """Model ids are the plain digest of the model document (64 hex digits), as git's commit ids are."""
        return content_digest(document)

    def load_all_fields(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                        restore_root: str, load_recursive: bool = False, load_files: bool = False) -> None:
        super().load_all_fields(file_pers_service, dict_pers_service, restore_root, load_recursive, load_files)
        if self.store_type == ModelStoreType.PROVENANCE and self.weights_hash_info is None:
            self.weights_hash_info = recorded_weights_hash(self.stored_id(), dict_pers_service)

    def stored_items(self, dict_pers_service: DictPersistenceService) -> Iterator[StoredItem]:
        yield from super().stored_items(dict_pers_service)
        if dict_pers_service.id_exists(self.stored_id(), RECORDED_WEIGHTS_HASH):
            yield StoredItem(RECORDED_WEIGHTS_HASH, self.stored_id())

    def size_info(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService) -> dict:
        sizes = super().size_info(file_pers_service, dict_pers_service)
        if dict_pers_service.id_exists(self.stored_id(), RECORDED_WEIGHTS_HASH):
            sizes[WEIGHTS_HASH_INFO] = {
                METADATA_SIZE: dict_pers_service.dict_size(self.stored_id(), RECORDED_WEIGHTS_HASH)}
        return sizes


def record_weights_hash(model_id: str, tree: "WeightDictMerkleTree", dict_pers_service: DictPersistenceService) -> None:
    """Store the hash of the weights a provenance version's training produced, in a document named after it."""
    dict_pers_service.save_dict({ID: model_id, MODEL_ID: model_id, WEIGHTS_HASH_INFO: tree.to_document()},
                                RECORDED_WEIGHTS_HASH)


def recorded_weights_hash(model_id: str, dict_pers_service: DictPersistenceService
                          ) -> Optional["WeightDictMerkleTree"]:
    """The weights hash recorded for a provenance version after its save, or None when none was recorded.

    The document is checked against the model id it must name and its tree against its own root hash.
    """
    if not dict_pers_service.id_exists(model_id, RECORDED_WEIGHTS_HASH):
        return None
    document = dict_pers_service.recover_dict(model_id, RECORDED_WEIGHTS_HASH)
    try:
        tree = _decoded_tree(document[WEIGHTS_HASH_INFO])
        consistent = document.get(MODEL_ID) == model_id and tree.check_integrity()
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise IntegrityError(f"the weights hash recorded for model {model_id} is damaged ({error!r}); record it again "
                             "with add_weights_hash_info, or restore the store from a backup") from error
    if not consistent:
        raise IntegrityError(f"the weights hash recorded for model {model_id} was changed (it names another model "
                             "or its tree does not add up); record it again with add_weights_hash_info, or restore "
                             "the store from a backup")
    return tree
