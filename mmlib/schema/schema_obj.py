"""Persisted objects: each declares its fields once; persisting, loading and sizing follow from that.

A document holds plain JSON values, blob reference ids and ids of other documents,
never pickles. `persist` writes referenced blobs and documents before its own.
Every document is stored by content, like a git object: its id is a digest of its
fields, which name the digests of its blobs and the ids of the documents it refers to.
An id therefore commits to everything reachable from it, and every read checks that
the document still hashes to its id.
"""

import contextlib
import json
import logging
import os
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from mmlib.constants import ID
from mmlib.errors import DocumentNotFoundError, IntegrityError, MMLibError
from mmlib.persistence.base import (BLOB, DictPersistenceService, FilePersistenceService, FileReference, StoredItem,
                                   split_reference_id)
from mmlib.util.hash import new_hasher

logger = logging.getLogger(__name__)

METADATA_SIZE = "metadata_size"

Obj = TypeVar("Obj", bound="SchemaObj")


def damaged_document(represent_type: str, document_id: str, detail: str) -> IntegrityError:
    """The error for a stored document that cannot be read as its type: malformed or wrongly typed fields."""
    return IntegrityError(f"document {represent_type} {document_id} is damaged ({detail}); restore it from a backup "
                          "or remove the model with `mmlib rm`")


def _stored_id(stored: Any, what: str) -> str:
    """A reference id or document id read from a document; TypeError unless it is a string."""
    if not isinstance(stored, str):
        raise TypeError(f"{what} is a {type(stored).__name__}, not a string")
    return stored


def content_digest(document: dict) -> str:
    """The BLAKE3 digest (64 hex digits) of a JSON document, independent of key order."""
    hasher = new_hasher()
    hasher.update(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    return hasher.hexdigest()


class ValueField:
    """A JSON value stored in the document; `encode`/`decode` convert to and from the attribute's type.

    With `types`, a stored value of another type is damage (TypeError, which loading reports as IntegrityError).
    """

    def __init__(self, attr: str, key: Optional[str] = None, encode: Optional[Callable] = None,
                 decode: Optional[Callable] = None, types: tuple[type, ...] = ()):
        self.attr = attr
        self.key = key or attr
        self.size_key = self.key
        self._encode = encode or (lambda value: value)
        self._decode = decode or (lambda value: value)
        self._types = types

    def persist(self, obj: "SchemaObj", fps: FilePersistenceService, dps: DictPersistenceService) -> Any:
        value = getattr(obj, self.attr)
        return None if value is None else self._encode(value)

    def load(self, document: dict, fps, dps, restore_root, load_recursive, load_files) -> Any:
        stored = document.get(self.key)
        if stored is None:
            return None
        if self._types and (not isinstance(stored, self._types) or isinstance(stored, bool) and bool not in
                            self._types):
            raise TypeError(f"it is a {type(stored).__name__}, not a {' or '.join(t.__name__ for t in self._types)}")
        return self._decode(stored)

    def size(self, document: dict, fps, dps) -> Optional[Union[int, dict]]:
        """Stored bytes this field adds beyond the document itself (None: nothing to report)."""
        return None

    def references(self, document: dict, dps) -> Iterator[StoredItem]:
        """The blobs and documents this field points at (for garbage collection and verification)."""
        return iter(())


class FileField(ValueField):
    """A `FileReference`: the blob is stored first, the document keeps its reference id."""

    def persist(self, obj, fps, dps) -> Optional[str]:
        ref = getattr(obj, self.attr)
        if ref is None:
            return None
        if ref.reference_id is None:
            fps.save_file(ref)
        return ref.reference_id

    def load(self, document, fps, dps, restore_root, load_recursive, load_files) -> Optional[FileReference]:
        stored = document.get(self.key)
        if stored is None:
            return None
        ref = FileReference(reference_id=_stored_id(stored, "its reference id"))
        if load_files:
            fps.recover_file(ref, restore_root)
        return ref

    def size(self, document, fps, dps) -> Optional[int]:
        stored = document.get(self.key)
        if stored is None:
            return None
        ref = FileReference(reference_id=_stored_id(stored, "its reference id"))
        fps.file_size(ref)
        return ref.size

    def references(self, document, dps) -> Iterator[StoredItem]:
        stored = document.get(self.key)
        if stored is not None:
            yield StoredItem(BLOB, split_reference_id(_stored_id(stored, "its reference id"))[0])


class ObjectField(ValueField):
    """Another schema object, persisted before this one; the document keeps its id.

    `cls` is the class, or a function of the stored document that picks it (polymorphic references).
    """

    def __init__(self, attr: str, cls: Union[type["SchemaObj"], Callable[[dict], type["SchemaObj"]]],
                 key: Optional[str] = None, size_key: Optional[str] = None):
        super().__init__(attr, key)
        self.size_key = size_key or attr
        self._cls = cls

    def resolve(self, document: dict) -> type["SchemaObj"]:
        return self._cls if isinstance(self._cls, type) else self._cls(document)

    def persist(self, obj, fps, dps) -> Optional[str]:
        value = getattr(obj, self.attr)
        return None if value is None else value.persist(fps, dps)

    def load(self, document, fps, dps, restore_root, load_recursive, load_files):
        stored = document.get(self.key)
        if stored is None:
            return None
        cls, obj_id = self.resolve(document), _stored_id(stored, "its document id")
        if load_recursive:
            return cls.load(obj_id, fps, dps, restore_root, load_recursive, load_files)
        return cls.load_placeholder(obj_id)

    def size(self, document, fps, dps) -> Optional[dict]:
        stored = document.get(self.key)
        if stored is None:
            return None
        return self.resolve(document).load_placeholder(_stored_id(stored, "its document id")).size_info(fps, dps)

    def references(self, document, dps) -> Iterator[StoredItem]:
        stored = document.get(self.key)
        if stored is not None:
            yield from self.resolve(document).load_placeholder(_stored_id(stored, "its document id")).stored_items(dps)


class IsolatedFileField(FileField):
    """A `FileReference` restored into its own directory named after the blob's digest.

    Files that share a name (two `state_file`s, two `train.py`s) then never overwrite each other under one
    restore root. With `sized=False` the blob is listed for garbage collection but left out of `size_info`.
    """

    def __init__(self, attr: str, key: Optional[str] = None, sized: bool = True):
        super().__init__(attr, key)
        self._sized = sized

    def load(self, document, fps, dps, restore_root, load_recursive, load_files) -> Optional[FileReference]:
        stored = document.get(self.key)
        if stored is not None:
            digest = split_reference_id(_stored_id(stored, "its reference id"))[0]
            restore_root = os.path.join(restore_root, digest[:16])
        return super().load(document, fps, dps, restore_root, load_recursive, load_files)

    def size(self, document, fps, dps) -> Optional[int]:
        return super().size(document, fps, dps) if self._sized else None


class ObjectMapField(ValueField):
    """A dict of name -> schema object, each persisted before this one; the document keeps name -> id.

    Loading gives name -> id (the caller picks each object's class when restoring it); entries that are
    already ids are stored as they are. `cls` sizes and traverses the referenced documents.
    """

    def __init__(self, attr: str, cls: type["SchemaObj"], key: Optional[str] = None,
                 size_key: Optional[str] = None):
        super().__init__(attr, key)
        self.size_key = size_key or attr
        self._cls = cls

    def persist(self, obj, fps, dps) -> Optional[dict]:
        value = getattr(obj, self.attr)
        if value is None:
            return None
        return {name: item if isinstance(item, str) else item.persist(fps, dps) for name, item in value.items()}

    def _stored_ids(self, document: dict) -> Optional[dict[str, str]]:
        """The stored name -> document id map; TypeError unless it is one."""
        stored = document.get(self.key)
        if stored is None:
            return None
        if not isinstance(stored, dict):
            raise TypeError(f"it is a {type(stored).__name__}, not a map of names to document ids")
        return {name: _stored_id(obj_id, f"the document id of {name!r}") for name, obj_id in stored.items()}

    def load(self, document, fps, dps, restore_root, load_recursive, load_files) -> Optional[dict]:
        return self._stored_ids(document)

    def size(self, document, fps, dps) -> Optional[dict]:
        stored = self._stored_ids(document)
        if stored is None:
            return None
        return {name: self._cls.load_placeholder(obj_id).size_info(fps, dps) for name, obj_id in stored.items()}

    def references(self, document, dps) -> Iterator[StoredItem]:
        for obj_id in (self._stored_ids(document) or {}).values():
            yield from self._cls.load_placeholder(obj_id).stored_items(dps)


class SchemaObj:
    """Base of every persisted object; subclasses set `_representation_type` and `_fields`."""

    _representation_type: str = ""
    _fields: tuple[ValueField, ...] = ()

    def __init__(self, store_id: Optional[str] = None):
        self.store_id = store_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store_id={self.store_id!r})"

    def stored_id(self) -> str:
        """`store_id` of a stored object; DocumentNotFoundError when the object was never stored (it has none)."""
        if self.store_id is None:
            raise DocumentNotFoundError(f"{self!r} names no stored {self._representation_type} document (it has no "
                                        "store_id); store it with persist")
        return self.store_id

    def _document(self, fps: FilePersistenceService, dps: DictPersistenceService) -> dict:
        """Persist referenced blobs and objects, then return this object's document (without id)."""
        return {field.key: field.persist(self, fps, dps) for field in self._fields}

    def persist(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService) -> str:
        """Store this object (and everything it references, first) and return its id, a digest of its content.

        A document that is stored already is saved again: that refreshes its time, so garbage collection
        running meanwhile keeps it for this save.
        """
        document = self._document(file_pers_service, dict_pers_service)
        self.store_id = self._content_id(document)
        document[ID] = self.store_id
        dict_pers_service.save_dict(document, self._representation_type)
        logger.debug("stored %s document %s", self._representation_type, self.store_id)
        return self.store_id

    @classmethod
    def _content_id(cls, document: dict) -> str:
        """The id of a document: its type and the BLAKE3 digest of its fields."""
        return f"{cls._representation_type}-{content_digest(document)}"

    @classmethod
    def load_placeholder(cls: type[Obj], obj_id: str) -> Obj:
        """An object that knows only its id; `load_all_fields` fills it in."""
        return cls(store_id=obj_id)

    @classmethod
    def load(cls: type[Obj], obj_id: str, file_pers_service: FilePersistenceService,
             dict_pers_service: DictPersistenceService, restore_root: str,
             load_recursive: bool = False, load_files: bool = False) -> Obj:
        """Load a stored object; referenced objects fully when `load_recursive`, files restored when `load_files`."""
        obj = cls.load_placeholder(obj_id)
        obj.load_all_fields(file_pers_service, dict_pers_service, restore_root, load_recursive, load_files)
        return obj

    def load_all_fields(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService,
                        restore_root: str, load_recursive: bool = False, load_files: bool = False) -> None:
        """Fill every field of a placeholder from its stored document (content-addressed ones re-hashed first)."""
        document = self.stored_document(dict_pers_service)
        for field in self._fields:
            with self._reading(field):
                value = field.load(document, file_pers_service, dict_pers_service, restore_root, load_recursive,
                                   load_files)
            setattr(self, field.attr, value)

    @contextlib.contextmanager
    def _reading(self, field: ValueField) -> Iterator[None]:
        """Turn what a wrongly typed `field` makes Python raise into IntegrityError naming this document."""
        try:
            yield
        except MMLibError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise damaged_document(self._representation_type, str(self.store_id),
                                   f"field {field.key!r}: {error}") from error

    def _recover_document(self, dict_pers_service: DictPersistenceService) -> dict:
        """The stored document as it is (not checked against its id); IntegrityError unless it is a JSON object."""
        document = dict_pers_service.recover_dict(self.stored_id(), self._representation_type)
        if not isinstance(document, dict):
            raise damaged_document(self._representation_type, self.stored_id(),
                                   f"it is a {type(document).__name__}, not an object")
        return document

    def stored_document(self, dict_pers_service: DictPersistenceService) -> dict:
        """The stored document of this object; IntegrityError when it no longer hashes to its id."""
        document = self._recover_document(dict_pers_service)
        fields = {key: value for key, value in document.items() if key != ID}
        if self._content_id(fields) != self.store_id:
            raise IntegrityError(
                f"{self._representation_type} document {self.store_id} was changed after it was stored (its "
                "fields no longer hash to its id); run `mmlib verify` and restore the store from a backup")
        return document

    def stored_items(self, dict_pers_service: DictPersistenceService) -> Iterator[StoredItem]:
        """This object's document and every blob and document it references, recursively (each document checked
        against its id)."""
        document = self.stored_document(dict_pers_service)
        yield StoredItem(self._representation_type, self.stored_id())
        for field in self._fields:
            with self._reading(field):
                yield from field.references(document, dict_pers_service)

    def size_info(self, file_pers_service: FilePersistenceService, dict_pers_service: DictPersistenceService) -> dict:
        """Stored bytes of this object: its own document (`metadata_size`) and each referenced blob and object."""
        document = self._recover_document(dict_pers_service)
        sizes: dict = {METADATA_SIZE: dict_pers_service.dict_size(self.stored_id(), self._representation_type)}
        for field in self._fields:
            with self._reading(field):
                size = field.size(document, file_pers_service, dict_pers_service)
            if size is not None:
                sizes[field.size_key] = size
        return sizes
