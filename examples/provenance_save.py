"""The paper's provenance flow on the embedded store, end to end, with ResNet-18 and a generated image dataset.

1. save a ResNet-18 as a full snapshot (the base);
2. save version 1 as provenance (training data, train service with dataset, data loader and SGD optimizer,
   train kwargs), train the live model the same way and record its weights hash;
3. recover version 1 (the base is recovered and retrained deterministically) and check it equals the live model;
4. the same for version 2 on top of version 1.

Run: .venv/bin/python examples/provenance_save.py [--store DIR] [--workdir DIR]
The dataset, the MMLIB_CONFIG ini file and the directory recovery unpacks data into go to --workdir
(a temporary directory by default); an MMLIB_CONFIG already set is respected.
"""

import argparse
import logging
import os
import tempfile
import time

import torch

from mmlib.constants import CURRENT_DATA_ROOT, MMLIB_CONFIG, VALUES
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.deterministic import deterministic
from mmlib.equal import model_equal
from mmlib.models import ResNet18
from mmlib.persistence import open_store
from mmlib.save import ProvenanceSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment

TRAIN_KWARGS = {"number_batches": 2}


def _equal(model1: torch.nn.Module, model2: torch.nn.Module) -> bool:
    return model_equal(model1, model2, lambda: torch.rand(2, 3, 64, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="mmlib-store", help="store directory (default: ./mmlib-store)")
    parser.add_argument("--workdir", default=None, help="directory for data and config (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    workdir = args.workdir or tempfile.mkdtemp(prefix="mmlib-provenance-")
    raw_data = generate_image_dataset(os.path.join(workdir, "raw-data"))
    if not os.environ.get(MMLIB_CONFIG):
        config = os.path.join(workdir, "mmlib.ini")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"[{VALUES}]\n{CURRENT_DATA_ROOT} = {os.path.join(workdir, 'data-root')}\n")
        os.environ[MMLIB_CONFIG] = config

    service = ProvenanceSaveService(*open_store(args.store))
    env = track_current_environment()
    model = ResNet18()
    base_id = service.save_model(ModelSaveInfoBuilder().add_model_info(env=env, model=model).build())
    wrapper = image_classification_train_wrapper(model, raw_data, batch_size=4)

    parent_id, all_equal, previous = base_id, True, None
    for version in (1, 2):
        save_info = (ModelSaveInfoBuilder().add_model_info(env=env, model=model, base_model_id=parent_id)
                     .add_prov_data(raw_data_path=raw_data, train_kwargs=TRAIN_KWARGS, train_service_wrapper=wrapper)
                     .build())
        start = time.perf_counter()
        model_id = service.save_model(save_info)
        save_seconds = time.perf_counter() - start
        deterministic(wrapper.instance.train, [model], TRAIN_KWARGS)
        service.add_weights_hash_info(model_id, model)
        start = time.perf_counter()
        recovered = service.recover_model(model_id, execute_checks=True).model
        recover_seconds = time.perf_counter() - start
        equal = _equal(model, recovered) and (previous is None or not _equal(previous, recovered))
        all_equal = all_equal and equal
        recover_info = service.model_save_size(model_id)["recover_info"]
        state = recover_info["train_info"]["train_service"]["state_dict"]["optimizer"].get("state_file", 0)
        print(f"version {version}: {model_id} (base {parent_id})")
        print(f"  time to save:    {save_seconds * 1000:.0f} ms")
        print(f"  time to recover: {recover_seconds * 1000:.0f} ms (base recovered and retrained, with checks)")
        print(f"  dataset:         {recover_info['dataset']['raw_data']:,} bytes (stored once for all versions)")
        print(f"  optimizer state: {state:,} bytes (0: carried over from the base's retraining)")
        print(f"  recovered model equal to the trained one: {equal}")
        parent_id, previous = model_id, recovered
    if not all_equal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
