"""The store format: recorded with the first save, checked before a store is read or written.

Format 1 (mmlib 0.1) gave models random ids; format 2 ids are digests that commit to the whole record.
A store in a format this mmlib does not read is refused with a `StoreFormatError` that says what to do,
never misread.
"""

from mmlib.constants import ID
from mmlib.errors import StoreFormatError
from mmlib.persistence.base import DictPersistenceService
from mmlib.schema.model_info import MODEL_INFO

STORE_FORMAT = "store_format"
FORMAT_DOCUMENT_ID = "mmlib"
FORMAT_VERSION = "format_version"
CURRENT_FORMAT = 2


def check_store_format(dict_pers_service: DictPersistenceService, record: bool = False) -> bool:
    """Raise StoreFormatError unless the store is in the current format (or empty); returns whether the format
    is recorded. With `record`, a store without a recorded format gets the current one."""
    if dict_pers_service.id_exists(FORMAT_DOCUMENT_ID, STORE_FORMAT):
        version = dict_pers_service.recover_dict(FORMAT_DOCUMENT_ID, STORE_FORMAT).get(FORMAT_VERSION)
        if version == CURRENT_FORMAT:
            return True
        if isinstance(version, int) and version > CURRENT_FORMAT:
            raise StoreFormatError(f"this store is in format {version}, newer than the format {CURRENT_FORMAT} this "
                                   "mmlib reads; upgrade mmlib to use it")
        raise StoreFormatError(f"this store records format {version!r}, which no mmlib writes (this one writes "
                               f"{CURRENT_FORMAT}); its {STORE_FORMAT} document was changed: restore it from a "
                               "backup")
    if dict_pers_service.all_ids_for_type(MODEL_INFO):
        if dict_pers_service.id_exists(FORMAT_DOCUMENT_ID, STORE_FORMAT):
            # A first save beside this check recorded the format, then its model, between the two reads above: a
            # format-2 store records its format before its first model, so only a store whose models predate any
            # recorded format is one of mmlib 0.1.
            return check_store_format(dict_pers_service, record)
        raise StoreFormatError(
            f"this store was written by mmlib 0.1 (format 1: model ids did not commit to their content), which this "
            f"mmlib (format {CURRENT_FORMAT}) does not read; recover its models with mmlib 0.1 and save them into a "
            "new store with this version")
    if record:
        dict_pers_service.save_dict({ID: FORMAT_DOCUMENT_ID, FORMAT_VERSION: CURRENT_FORMAT}, STORE_FORMAT)
    return record
