"""Storage of the parameter update approach per delta encoding, and time-to-recover along a chain of versions.

Run from the repository root: ``python -m benchmarks.update_storage [--repeats N] [--out PATH]``.

Scenarios (SGD on random 64x64 images as `benchmarks.common.train_steps` does it: lr 1e-3, momentum 0.9):

- ``resnet50_fc``: ResNet-50, only `fc` trained (backbone frozen and in eval mode), 3 steps.
  Target: the update takes at most 3% of the bytes of a baseline snapshot of the same model.
- ``resnet18_all`` / ``resnet50_all``: every layer trained in train mode, 5 steps. Target: at most 62%.
- ``chain``: ResNet-18, 10 versions, each 2 steps on the one before, saved as updates of their predecessor.
  Target: recovering version 10 takes at most 1.5x as long as recovering version 1 (medians of interleaved runs
  in this process, in-process cache cleared before each).

Each trained model is saved once per encoding by one improved-update service (its encoding switched between
saves, so every save finds the base in the service's cache), recovered with `execute_checks=True` from the store
and compared bit by bit. Storage counts every byte `model_save_size` reports (documents and blobs); the snapshot
is the baseline's save of the same trained model. Prints a table and writes JSON (default
``bench-results/update_storage.json``, which git ignores; ``benchmarks/results/`` holds the published run).
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from benchmarks.common import RESULTS_DIR, Progress, median_seconds, total_bytes, train_steps, write_json
from mmlib.equal import state_dict_equal
from mmlib.models import ResNet18, ResNet50
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from mmlib.util.delta import DEFAULT_CODEC, DeltaCodec

DEFAULT_OUT = os.path.join(RESULTS_DIR, "update_storage.json")
ENCODINGS = [
    "plain", "plain-shuffle-zstd1",
    "xor-zstd1", "xor-shuffle-zstd1", "xor-shuffle-zstd3", "xor-shuffle-zstd9",
    "sub-shuffle-zstd1", "sub-zigzag-zstd1", "sub-zigzag-shuffle-zstd1", "sub-zigzag-shuffle-zstd3",
    "sub-zigzag-shuffle-zstd9",
]
CHAIN_ENCODINGS = [DEFAULT_CODEC, "xor-shuffle-zstd1", "plain"]
CHAIN_VERSIONS = 10
CHAIN_STEPS = 2
CHAIN_TTR_TARGET = 1.5


@dataclass(frozen=True)
class Scenario:
    """A model, how it is fine-tuned, and the largest update/snapshot storage ratio allowed."""

    name: str
    model_class: type
    steps: int
    partial: bool
    target_ratio: float


SCENARIOS = [
    Scenario("resnet50_fc", ResNet50, 3, True, 0.03),
    Scenario("resnet18_all", ResNet18, 5, False, 0.62),
    Scenario("resnet50_all", ResNet50, 5, False, 0.62),
]


def _save_info(model: torch.nn.Module, base_model_id=None):
    return ModelSaveInfoBuilder().add_model_info(env=track_current_environment(), model=model,
                                                 base_model_id=base_model_id).build()


def _state(model: torch.nn.Module) -> dict:
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


def _timed(action):
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def storage_scenario(scenario: Scenario, stores: tuple, progress: Progress) -> dict:
    """Save one fine-tuned model as an update in every encoding; sizes, times and bit-exactness of each."""
    torch.manual_seed(0)
    model = scenario.model_class()
    service = WeightUpdateSaveService(*stores)
    base_id = service.save_model(_save_info(model))
    progress(f"{scenario.name}: training {scenario.steps} steps ({'fc only' if scenario.partial else 'all layers'})")
    train_steps(model, scenario.steps, seed=1, partial=scenario.partial)
    trained = _state(model)
    baseline = BaselineSaveService(*stores)
    snapshot_bytes = total_bytes(baseline.model_save_size(baseline.save_model(_save_info(model, base_id))))
    results, update_ids = {}, {}
    for encoding in ENCODINGS:
        service.codec = DeltaCodec.from_name(encoding)
        update_ids[encoding], save_s = _timed(lambda: service.save_model(_save_info(model, base_id)))
        sizes = service.model_save_size(update_ids[encoding])
        update_bytes = total_bytes(sizes)
        results[encoding] = {"update_bytes": update_bytes, "update_blob_bytes": sizes["recover_info"]["update"],
                             "ratio": update_bytes / snapshot_bytes, "save_s": save_s}
        progress(f"{scenario.name}: {encoding:26} {update_bytes / 1e6:8.2f} MB  "
                 f"{100 * update_bytes / snapshot_bytes:6.2f}% of the snapshot  saved in {save_s:.2f} s")
    for encoding, update_id in update_ids.items():
        service.clear_cache()
        restored, recover_s = _timed(lambda: service.recover_model(update_id, execute_checks=True).model)
        results[encoding].update(recover_s=recover_s,
                                 bit_exact=state_dict_equal(restored.state_dict(), trained))
    progress(f"{scenario.name}: recovered every encoding, bit-exact: "
             f"{all(result['bit_exact'] for result in results.values())}")
    default = results[DEFAULT_CODEC]
    return {"model": scenario.model_class.__name__, "steps": scenario.steps,
            "trained": "fc only" if scenario.partial else "all layers", "snapshot_bytes": snapshot_bytes,
            "encodings": results, "best_encoding": min(results, key=lambda name: results[name]["update_bytes"]),
            "target_ratio": scenario.target_ratio,
            "target_met": default["ratio"] <= scenario.target_ratio and default["bit_exact"]}


def chain_scenario(stores: tuple, repeats: int, progress: Progress) -> dict:
    """Ten fine-tuned versions of ResNet-18 saved as a chain per encoding; time to recover version 1 and 10."""
    torch.manual_seed(0)
    model = ResNet18()
    services = {encoding: WeightUpdateSaveService(*stores, codec=encoding) for encoding in CHAIN_ENCODINGS}
    ids = {encoding: [service.save_model(_save_info(model))] for encoding, service in services.items()}
    states = {0: _state(model)}
    for version in range(1, CHAIN_VERSIONS + 1):
        train_steps(model, CHAIN_STEPS, seed=100 + version, partial=False)
        for encoding, service in services.items():
            ids[encoding].append(service.save_model(_save_info(model, ids[encoding][-1])))
        if version in (1, CHAIN_VERSIONS):
            states[version] = _state(model)
        progress(f"chain: version {version} trained ({CHAIN_STEPS} steps) and saved in every encoding")
    results = {}
    for encoding, service in services.items():
        def recover(version: int, service=service, encoding=encoding):
            def prepare(_: int):
                service.clear_cache()
                return lambda: service.recover_model(ids[encoding][version], execute_checks=True)
            return prepare

        timings = median_seconds({f"v{version}": recover(version) for version in (1, CHAIN_VERSIONS)}, repeats)
        exact = all(state_dict_equal(service.recover_model(ids[encoding][version]).model.state_dict(),
                                     states[version]) for version in (1, CHAIN_VERSIONS))
        first, last = timings["v1"]["median_s"], timings[f"v{CHAIN_VERSIONS}"]["median_s"]
        chain_bytes = sum(total_bytes(service.model_save_size(model_id)) for model_id in ids[encoding][1:])
        results[encoding] = {"ttr_v1_s": first, f"ttr_v{CHAIN_VERSIONS}_s": last, "ttr_ratio": last / first,
                             "runs_v1_s": timings["v1"]["runs_s"],
                             f"runs_v{CHAIN_VERSIONS}_s": timings[f"v{CHAIN_VERSIONS}"]["runs_s"],
                             "chain_update_bytes": chain_bytes, "bit_exact": exact}
        progress(f"chain: {encoding:26} TTR v1 {first:.3f} s, v{CHAIN_VERSIONS} {last:.3f} s "
                 f"(x{last / first:.2f}), bit-exact: {exact}")
    snapshot = BaselineSaveService(*stores)
    snapshot_bytes = total_bytes(snapshot.model_save_size(snapshot.save_model(_save_info(model))))
    default = results[DEFAULT_CODEC]
    return {"model": "ResNet18", "versions": CHAIN_VERSIONS, "steps_per_version": CHAIN_STEPS,
            "keyframe_interval": services[DEFAULT_CODEC].keyframe_interval, "repeats": repeats,
            "snapshot_bytes": snapshot_bytes, "encodings": results, "target_ttr_ratio": CHAIN_TTR_TARGET,
            "target_met": default["ttr_ratio"] <= CHAIN_TTR_TARGET and default["bit_exact"]}


def print_report(result: dict) -> None:
    """The storage table (one row per encoding, one column per scenario) and the chain figures."""
    scenarios = result["scenarios"]
    print(f"\nUpdate storage, % of a baseline snapshot (default encoding: {DEFAULT_CODEC})")
    print(f"{'encoding':26}" + "".join(f"{name:>24}" for name in scenarios))
    for encoding in ENCODINGS:
        cells = []
        for scenario in scenarios.values():
            entry = scenario["encodings"][encoding]
            mark = "" if entry["bit_exact"] else " NOT EXACT"
            cells.append(f"{entry['update_bytes'] / 1e6:10.2f} MB {100 * entry['ratio']:6.2f}%{mark}")
        print(f"{encoding:26}" + "".join(f"{cell:>24}" for cell in cells))
    snapshots = (scenario["snapshot_bytes"] for scenario in scenarios.values())
    print(f"{'snapshot':26}" + "".join(f"{size / 1e6:21.2f} MB" for size in snapshots))
    for name, scenario in scenarios.items():
        default = scenario["encodings"][DEFAULT_CODEC]
        print(f"target {name}: default {100 * default['ratio']:.2f}% <= {100 * scenario['target_ratio']:.0f}%, "
              f"bit-exact: {'met' if scenario['target_met'] else 'NOT MET'} (best: {scenario['best_encoding']})")
    chain = result["chain"]
    last = f"ttr_v{chain['versions']}_s"
    print(f"\nChain of {chain['versions']} ResNet-18 versions ({chain['steps_per_version']} SGD steps each, keyframe "
          f"every {chain['keyframe_interval']} deltas), median of {chain['repeats']} recoveries")
    print(f"{'encoding':26}{'TTR v1':>10}{'TTR v' + str(chain['versions']):>10}{'ratio':>8}{'chain storage':>16}")
    for encoding, entry in chain["encodings"].items():
        print(f"{encoding:26}{entry['ttr_v1_s']:9.3f}s{entry[last]:9.3f}s{entry['ttr_ratio']:8.2f}"
              f"{100 * entry['chain_update_bytes'] / (chain['versions'] * chain['snapshot_bytes']):14.1f}%")
    default = chain["encodings"][DEFAULT_CODEC]
    print(f"target chain: TTR v{chain['versions']} / v1 = {default['ttr_ratio']:.2f} <= {CHAIN_TTR_TARGET}, "
          f"bit-exact: {'met' if chain['target_met'] else 'NOT MET'}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed recoveries per chain version (median)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"where to write the JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="mmlib-update-bench-") as root:
        stores = (FileSystemPersistenceService(os.path.join(root, "blobs")),
                  SQLiteDictPersistenceService(os.path.join(root, "metadata.sqlite")))
        result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                  "default_encoding": DEFAULT_CODEC, "encodings": ENCODINGS,
                  "scenarios": {scenario.name: storage_scenario(scenario, stores, progress)
                                for scenario in SCENARIOS},
                  "chain": chain_scenario(stores, args.repeats, progress)}
    result["all_targets_met"] = (all(scenario["target_met"] for scenario in result["scenarios"].values())
                                 and result["chain"]["target_met"])
    result["seconds"] = progress.elapsed
    write_json(args.out, result)
    print_report(result)
    print(f"\nwrote {args.out} after {progress.elapsed:.0f} s", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
