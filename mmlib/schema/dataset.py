"""The training data of a provenance version: one blob (a file, or a directory as a reproducible tar)."""

from typing import Optional

from mmlib.persistence.base import FileReference
from mmlib.schema.schema_obj import FileField, SchemaObj

DATASET = "dataset"
RAW_DATA = "raw_data"


class Dataset(SchemaObj):
    """Raw training data; stored by content, so versions trained on the same data share one blob and document."""

    _representation_type = DATASET
    _fields = (FileField("raw_data", key=RAW_DATA),)

    def __init__(self, raw_data: Optional[FileReference] = None, store_id: Optional[str] = None):
        super().__init__(store_id)
        self.raw_data = raw_data
