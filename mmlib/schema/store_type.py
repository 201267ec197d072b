"""How a model version is stored."""

from enum import Enum


class ModelStoreType(Enum):
    """Full snapshot, changed weights relative to a base, or the provenance that reproduces it."""

    FULL_MODEL = "full_model"
    WEIGHT_UPDATES = "weight_updates"
    PROVENANCE = "provenance"


# What the one-line API and the web view call each store type.
SNAPSHOT, UPDATE, PROVENANCE = "snapshot", "update", "provenance"
APPROACHES = {ModelStoreType.FULL_MODEL.value: SNAPSHOT, ModelStoreType.WEIGHT_UPDATES.value: UPDATE,
              ModelStoreType.PROVENANCE.value: PROVENANCE}
