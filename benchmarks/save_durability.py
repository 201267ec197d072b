"""Baseline time-to-save, durable and not, next to raw torch.save with and without fsync of the same model.

Run from the repository root: ``python -m benchmarks.save_durability [--model resnet50] [--repeats 7]
[--work-dir DIR]``. A durable save is compared with the durable anchor (``torch.save`` of the state dict, then
``fsync`` of the file and of its directory): both survive a power failure. ``open_store(..., durable=False)``
is compared with plain ``torch.save``: neither flushes. Each save writes a new model version (a new store per
contender, in the work directory, on the same disk as the anchor files); rounds interleave the contenders after
one untimed warm-up round, with pending writes flushed (untimed) before each run. Prints a markdown table.
"""

import argparse
import os
import tempfile
from typing import Any, Callable

import torch

from benchmarks.common import MODEL_LABELS, median_seconds, ratio
from mmlib.models import REFERENCE_MODELS
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment

PLAIN_ANCHOR = "anchor: torch.save"
DURABLE_ANCHOR = "anchor: torch.save + fsync (file and directory)"
DURABLE_SAVE = "baseline save_model (durable, the default)"
SCRATCH_SAVE = "baseline save_model, open_store(durable=False)"


def durable_torch_save(state_dict: dict, path: str) -> None:
    """What a careful user does for a checkpoint that must survive a power failure."""
    with open(path, "wb") as handle:
        torch.save(state_dict, handle)
        handle.flush()
        os.fsync(handle.fileno())
    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def measure(model_key: str, repeats: int, work_dir: str) -> list[tuple[str, float, str]]:
    """(contender, median milliseconds, ratio to its anchor) for every contender."""
    model = REFERENCE_MODELS[model_key]()
    env = track_current_environment()
    services = {durable: BaselineSaveService(*open_store(os.path.join(work_dir, f"store-durable-{durable}"),
                                                         durable=durable)) for durable in (True, False)}

    def anchor(save: Callable[[dict, str], Any], name: str):
        return lambda round_index: lambda: save(model.state_dict(), os.path.join(work_dir, f"{name}-{round_index}.pt"))

    def mmlib_save(durable: bool):
        def prepare(_round_index: int) -> Callable[[], Any]:
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
            info = ModelSaveInfoBuilder().add_model_info(env=env, model=model).build()
            return lambda: services[durable].save_model(info)
        return prepare

    steps = {PLAIN_ANCHOR: anchor(torch.save, "plain"), DURABLE_ANCHOR: anchor(durable_torch_save, "durable"),
             DURABLE_SAVE: mmlib_save(True), SCRATCH_SAVE: mmlib_save(False)}
    medians = {name: result["median_s"] for name, result in median_seconds(steps, repeats).items()}
    anchors = {PLAIN_ANCHOR: PLAIN_ANCHOR, DURABLE_ANCHOR: DURABLE_ANCHOR, DURABLE_SAVE: DURABLE_ANCHOR,
               SCRATCH_SAVE: PLAIN_ANCHOR}
    return [(name, seconds * 1e3, f"{ratio(seconds, medians[anchors[name]]):.3f} (to {anchors[name]})")
            for name, seconds in medians.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work-dir", help="where stores and anchor files are written (default: system temp)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmlib-durability-", dir=arguments.work_dir) as work_dir:
        rows = measure(arguments.model, arguments.repeats, work_dir)
    print(f"## Baseline save and durability, {MODEL_LABELS.get(arguments.model, arguments.model)}\n")
    print("| contender | median ms | ratio |\n|---|---|---|")
    for name, milliseconds, share in rows:
        print(f"| {name} | {milliseconds:.1f} | {share} |")


if __name__ == "__main__":
    main()
