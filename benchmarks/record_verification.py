"""What checking a model's record costs a recovery, next to raw torch.load of the same model.

Run from the repository root: ``python -m benchmarks.record_verification [--model resnet50] [--repeats 7]``.
A recovery, with checks on or off, checks every document it reads against the id that names it (a digest of the
document's fields) and every blob against its digest, before it imports code or builds anything. This times
(medians, rounds interleaved, SQLite + files in a temporary directory) those two checks beside the same reads
without them, and the whole unchecked and checked recovery beside the anchor, ``torch.load`` + construct +
``load_state_dict`` of the same weights from one ``torch.save`` file. An update recovery also checks every
version back to its snapshot: the last rows time that walk for the tip of a chain of `--chain` versions
(version 1 the full snapshot, each later one the classifier changed) next to the tip's whole recovery.
Prints a markdown table.
"""

import argparse
import os
import tempfile

import torch

from benchmarks.common import MODEL_LABELS, classifier_head, median_seconds, raw_load, ratio
from mmlib.models import REFERENCE_MODELS
from mmlib.persistence import open_store
from mmlib.persistence.base import BLOB, split_reference_id
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.model_info import ModelInfo
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from mmlib.util.hash import new_hasher

ANCHOR = "anchor: torch.load + construct + load_state_dict"


def _read_unchecked(store, digest: str, size: int) -> bytearray:
    """The blob's bytes as `read_bytes` reads them, minus the digest check (through the backend's reader hook)."""
    buffer = bytearray(size)
    with store.file_pers_service._open_blob_reader(digest) as source:
        source.readinto(buffer)
    return buffer


def _save(service, model, base_id=None) -> str:
    info = ModelSaveInfoBuilder().add_model_info(env=track_current_environment(), model=model,
                                                 base_model_id=base_id).build()
    return service.save_model(info)


def _update_chain(store, model: torch.nn.Module, length: int) -> list[str]:
    """A snapshot and `length - 1` updates of it, each with the classifier changed."""
    service = WeightUpdateSaveService(*store)
    ids = [_save(service, model)]
    for _ in range(length - 1):
        with torch.no_grad():
            for parameter in classifier_head(model).parameters():
                parameter.add_(1e-3)
        ids.append(_save(service, model, ids[-1]))
    return ids


def measure(model_key: str, repeats: int, chain: int) -> list[tuple[str, float, str]]:
    """(step, median milliseconds, ratio to the anchor) for every step."""
    cls = REFERENCE_MODELS[model_key]
    model = cls()
    with tempfile.TemporaryDirectory(prefix="mmlib-record-") as directory:
        path = os.path.join(directory, "anchor.pt")
        torch.save(model.state_dict(), path)
        store = open_store(os.path.join(directory, "store"))
        service = BaselineSaveService(*store)
        model_id = _save(service, model)
        chain_ids = _update_chain(store, cls(), chain)
        updates = WeightUpdateSaveService(*store, cache_size=0)
        items = list(ModelInfo.load_placeholder(model_id).stored_items(store.dict_pers_service))
        documents = [item for item in items if item.kind != BLOB]
        weights_ref = service._load_model_info(model_id).recover_info.parameters_file
        store.file_pers_service.file_size(weights_ref)
        weights, size = split_reference_id(weights_ref.reference_id)[0], weights_ref.size
        payload = bytes(_read_unchecked(store, weights, size))
        steps = {
            ANCHOR: lambda _: lambda: raw_load(cls, path),
            f"documents: read {len(documents)} unchecked": lambda _: lambda: [
                store.dict_pers_service.recover_dict(item.item_id, item.kind) for item in documents],
            f"documents: read {len(documents)} and check against their ids": lambda _: lambda: ModelInfo.load(
                model_id, *store, restore_root=directory, load_recursive=True),
            "weights blob: read unchecked": lambda _: lambda: _read_unchecked(store, weights, size),
            "weights blob: read and check its digest (read_bytes)":
                lambda _: lambda: store.file_pers_service.read_bytes(weights_ref.reference_id),
            "weights blob: BLAKE3 alone, one thread": lambda _: lambda: new_hasher().update(payload).hexdigest(),
            "recover_model(execute_checks=False)": lambda _: lambda: service.recover_model(model_id, False),
            "recover_model(execute_checks=True)": lambda _: lambda: service.recover_model(model_id, True),
            f"update chain of {chain}: load and check the {chain} model documents back to the snapshot":
                lambda _: lambda: [ModelInfo.load(chain_id, *store, restore_root=directory, load_recursive=True)
                                   for chain_id in chain_ids],
            f"update chain of {chain}: recover_model(tip, execute_checks=False)":
                lambda _: lambda: updates.recover_model(chain_ids[-1], False),
        }
        medians = {name: result["median_s"] for name, result in median_seconds(steps, repeats).items()}
    return [(name, seconds * 1e3, f"{ratio(seconds, medians[ANCHOR]):.3f}") for name, seconds in medians.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chain", type=int, default=10)
    arguments = parser.parse_args()
    print(f"## Record verification at recovery, {MODEL_LABELS.get(arguments.model, arguments.model)}\n")
    print("| step | median ms | ratio to the anchor |\n|---|---|---|")
    for name, milliseconds, share in measure(arguments.model, arguments.repeats, arguments.chain):
        print(f"| {name} | {milliseconds:.1f} | {share} |")


if __name__ == "__main__":
    main()
