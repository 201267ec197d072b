"""The main example: save a ResNet-18 with the baseline approach on the embedded store, recover it and check it.

It ships inside the package so that it runs wherever mmlib is installed, from a wheel as well as from a source
checkout. The store (SQLite + files) needs no server; by default it is ./mmlib-store.

Run: python -m mmlib.demo.baseline [--store DIR]
"""

import argparse
import logging
import time
from typing import Optional, Sequence

import torch

from mmlib.equal import model_equal
from mmlib.models import ResNet18
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Save, recover with checks and compare one model; print times and sizes; exit 1 if the model differs."""
    parser = argparse.ArgumentParser(prog="python -m mmlib.demo.baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="mmlib-store", help="store directory (default: ./mmlib-store)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    service = BaselineSaveService(*open_store(args.store))
    model = ResNet18()
    save_info = ModelSaveInfoBuilder().add_model_info(env=track_current_environment(), model=model).build()

    start = time.perf_counter()
    model_id = service.save_model(save_info)
    save_seconds = time.perf_counter() - start
    start = time.perf_counter()
    recovered = service.recover_model(model_id, execute_checks=True).model
    recover_seconds = time.perf_counter() - start

    equal = recovered is not None and model_equal(model, recovered, lambda: torch.rand(2, 3, 224, 224))
    sizes = service.model_save_size(model_id)
    print(f"model id:        {model_id}")
    print(f"store:           {args.store} (SQLite + files)")
    print(f"time to save:    {save_seconds * 1000:.0f} ms")
    print(f"time to recover: {recover_seconds * 1000:.0f} ms (with checks)")
    print(f"weights:         {sizes['recover_info']['parameters']:,} bytes")
    print(f"code:            {sizes['recover_info']['model_code']:,} bytes")
    print(f"metadata:        {sizes['metadata_size'] + sizes['recover_info']['metadata_size']:,} bytes")
    print(f"recovered model equal to the saved one: {equal}")
    if not equal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
