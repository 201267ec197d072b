"""How a model version is stored."""

from enum import Enum


class ModelStoreType(Enum):
    """Full snapshot, changed weights relative to a base, or the provenance that reproduces it."""

    FULL_MODEL = "full_model"
    WEIGHT_UPDATES = "weight_updates"
    PROVENANCE = "provenance"
