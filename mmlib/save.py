"""Save services: the approaches mmlib offers to store and recover model versions.

Every save writes blobs first, then metadata documents in dependency order, and
the model document last: a model is listed only once all it needs is stored.
"""

from mmlib.approaches.base import AbstractSaveService
from mmlib.approaches.baseline import BaselineSaveService
from mmlib.approaches.provenance import ProvenanceSaveService
from mmlib.approaches.update import WeightUpdateSaveService

__all__ = ["AbstractSaveService", "BaselineSaveService", "ProvenanceSaveService", "WeightUpdateSaveService"]
