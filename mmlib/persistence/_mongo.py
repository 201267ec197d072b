"""Document store in MongoDB: one collection per document type, for many nodes sharing one server."""

from mmlib.constants import ID
from mmlib.persistence.base import DictPersistenceService, document_id, missing_document
from mmlib.util.mongo import MongoBacked


class MongoDictPersistenceService(MongoBacked, DictPersistenceService):
    """Documents in MongoDB; `host` is a host name, `host:port` or a full `mongodb://` URI.

    `mongo_service` shares an open connection instead of opening one for `host` and `db_name` (which are then
    not used): `open_store` gives the documents and the GridFS blobs of one URI one client.
    """

    def save_dict(self, insert_dict: dict, represent_type: str) -> str:
        return self._mongo_service.save_dict(insert_dict, represent_type, document_id(insert_dict, self.generate_id))

    def insert_dict(self, insert_dict: dict, represent_type: str) -> bool:
        return self._mongo_service.insert_new(insert_dict, represent_type, str(insert_dict[ID]))

    def recover_dict(self, dict_id: str, represent_type: str) -> dict:
        document = self._mongo_service.get_dict(str(dict_id), represent_type)
        if document is None:
            raise missing_document(dict_id, represent_type)
        return document

    def dict_size(self, dict_id: str, represent_type: str) -> int:
        size = self._mongo_service.document_size(str(dict_id), represent_type)
        if size is None:
            raise missing_document(dict_id, represent_type)
        return size

    def id_exists(self, dict_id: str, represent_type: str) -> bool:
        return self._mongo_service.id_exists(str(dict_id), represent_type)

    def all_ids_for_type(self, represent_type: str) -> list[str]:
        return self._mongo_service.get_ids(represent_type)

    def document_times(self, represent_type: str) -> dict[str, float]:
        return self._mongo_service.created_times(represent_type)

    def add_field(self, dict_id: str, represent_type: str, field: str, value) -> None:
        if not self.id_exists(dict_id, represent_type):
            raise missing_document(dict_id, represent_type)
        self._mongo_service.add_attribute(str(dict_id), {field: value}, represent_type)

    def delete_dict(self, dict_id: str, represent_type: str) -> None:
        self._mongo_service.delete(str(dict_id), represent_type)

    def all_types(self) -> list[str]:
        return [name for name in self._mongo_service.collections() if not name.startswith("fs.")]
