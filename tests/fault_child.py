"""The child side of the fault-injection test: saves a deterministic lineage until it is killed."""

import copy
import functools
import itertools
import logging
import time
from typing import Callable, Iterator

import torch

from mmlib.models import MobileNetV2
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from save_helpers import save_info

MAX_VERSIONS = 6
# Each metadata write waits this long first: saves are fast, and the wait widens the windows between a save's
# blob and document commits so that random kills land in all of them, not only inside the big weights write.
METADATA_DELAY_S = 0.02


def _delayed(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(*args, **kwargs):
        time.sleep(METADATA_DELAY_S)
        return method(*args, **kwargs)
    return call


def lineage(seed: int) -> Iterator[torch.nn.Module]:
    """MAX_VERSIONS versions of a deterministic lineage: a seeded model, then small seeded updates."""
    torch.manual_seed(seed)
    model = MobileNetV2()
    yield model
    for step in range(1, MAX_VERSIONS):
        model = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(seed * 1000 + step)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)
        yield model


def save_until_killed(store_dir: str, log_path: str, seed: int, ready) -> None:
    """Child: save versions (baseline and update saves, alternating) and log each step of each save."""
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    mmlib_logger = logging.getLogger("mmlib")
    mmlib_logger.addHandler(handler)
    mmlib_logger.setLevel(logging.DEBUG)
    store = open_store(store_dir)
    store.dict_pers_service.save_dict = _delayed(store.dict_pers_service.save_dict)
    services = [BaselineSaveService(*store), WeightUpdateSaveService(*store)]
    versions = lineage(seed)
    first = next(versions)
    ready.set()
    base_id = None
    for number, model in enumerate(itertools.chain([first], versions)):
        mmlib_logger.debug("begin save")
        base_id = services[number % 2].save_model(save_info(model, base_model_id=base_id))
        mmlib_logger.debug("save returned")
    mmlib_logger.debug("all saved")
