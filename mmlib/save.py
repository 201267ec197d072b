"""Save services: the approaches mmlib offers to store and recover model versions.

Every save writes blobs first, then metadata documents in dependency order, and
the model document last: a model is listed only once all it needs is stored.

This module is also the one-line `mmlib.save(model, store, name=...)`: once it is imported, `mmlib.save` names it
rather than the function, so calling the module calls `mmlib.api.save`. The original import paths
(`from mmlib.save import BaselineSaveService`) are unchanged.
"""

import sys
import types
from typing import Any

from mmlib.approaches.base import AbstractSaveService
from mmlib.approaches.baseline import BaselineSaveService
from mmlib.approaches.provenance import ProvenanceSaveService
from mmlib.approaches.update import WeightUpdateSaveService

__all__ = ["AbstractSaveService", "BaselineSaveService", "ProvenanceSaveService", "WeightUpdateSaveService"]


class _CallableModule(types.ModuleType):
    """This module, callable as `mmlib.save(model, store, ...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mmlib.api import save  # mmlib.api imports this module
        return save(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
