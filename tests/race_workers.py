"""The child side of the removal race tests: derived saves in some processes, `rm` + `gc --grace 0` in another.

Each worker runs until a deadline and writes what happened (counts per outcome) as JSON to `report_path`.
"""

import collections
import json
import random
import time

import torch

from mmlib import maintenance
from mmlib.errors import MMLibError, ModelInUseError, ModelNotFoundError
from mmlib.persistence import open_store
from mmlib.save import WeightUpdateSaveService
from save_helpers import save_info
from tiny_models import TinyNet

# Savers derive from, and the remover removes, one of the newest versions: that is where they collide.
NEWEST = 3


def derive_until(store_dir: str, deadline: float, seed: int, report_path: str) -> None:
    """Save new versions on one of the newest stored versions until `deadline`; a save that fails must fail with
    a typed error (its base or an item was removed meanwhile)."""
    service = WeightUpdateSaveService(*open_store(store_dir))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    outcomes: collections.Counter = collections.Counter()
    while time.time() < deadline:
        base_id = rng.choice(service.all_model_ids()[-NEWEST:])
        try:
            service.save_model(save_info(TinyNet(), base_model_id=base_id))
            outcomes["saved"] += 1
        except MMLibError as error:
            outcomes[type(error).__name__] += 1
    with open(report_path, "w") as report:
        json.dump(outcomes, report)


def remove_until(store_dir: str, deadline: float, seed: int, report_path: str) -> None:
    """Remove one of the newest versions (never the root) and collect garbage with no grace period, until
    `deadline`."""
    store = open_store(store_dir)
    rng = random.Random(seed)
    outcomes: collections.Counter = collections.Counter()
    while time.time() < deadline:
        model_ids = maintenance.all_model_ids(store)
        if len(model_ids) > 1:
            try:
                maintenance.remove_model(store, rng.choice(model_ids[1:][-NEWEST:]))
                outcomes["removed"] += 1
            except (ModelInUseError, ModelNotFoundError) as error:
                outcomes[type(error).__name__] += 1
        outcomes["collected"] += maintenance.collect_garbage(store, grace_seconds=0).count
    with open(report_path, "w") as report:
        json.dump(outcomes, report)
