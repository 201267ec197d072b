"""Storage of the parameter update approach per delta encoding, and time-to-recover along a chain of versions.

Run from the repository root: ``python -m benchmarks.update_storage [--repeats N] [--codec-repeats N] [--no-chain]
[--out PATH]``.

Scenarios (SGD on random 64x64 images as `benchmarks.common.train_steps` does it: lr 1e-3, momentum 0.9):

- ``resnet50_fc``: ResNet-50, only `fc` trained (backbone frozen and in eval mode), 3 steps.
  Target: the update takes at most 2% of the bytes of a baseline snapshot of the same model.
- ``resnet18_all`` / ``resnet50_all``: every layer trained in train mode, 5 steps. Target: at most 59%, and the
  default encoding saves in at most 3x the time of a raw `torch.save` of the state dict.
- ``chain``: ResNet-18, 10 versions, each 2 steps on the one before, saved as updates of their predecessor.
  Target: recovering version 10 takes at most 1.5x as long as recovering version 1 (medians of interleaved runs
  in this process, in-process cache cleared before each).

Each trained model is saved once per encoding by one improved-update service (its encoding switched between
saves, so every save finds the base in the service's cache), recovered with `execute_checks=True` from the store
and compared bit by bit. Storage counts every byte `model_save_size` reports (documents and blobs); the snapshot
is the baseline's save of the same trained model. Codec speed: encoding every changed tensor against its base and
decoding it back, on all cores as the service does (`_parallel_map`), timed as medians of interleaved rounds
together with a raw `torch.save` / `torch.load` of the trained state dict to a file in the same run. Prints the
tables and writes JSON (default ``bench-results/update_storage.json``, which git ignores; ``benchmarks/results/``
holds the published run).
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
from mmlib.approaches.update import _parallel_map
from mmlib.equal import state_dict_equal, tensor_equal
from mmlib.models import ResNet18, ResNet50
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from mmlib.util.delta import DEFAULT_CODEC, DeltaCodec, decode_chain

DEFAULT_OUT = os.path.join(RESULTS_DIR, "update_storage.json")
ENCODINGS = [
    "plain", "plain-shuffle-zstd1",
    "xor-zstd1", "xor-shuffle-zstd1", "xor-shuffle-zstd3", "xor-shuffle-zstd9",
    "sub-shuffle-zstd1", "sub-zigzag-zstd1", "sub-zigzag-shuffle-zstd1", "sub-zigzag-shuffle-zstd3",
    "sub-zigzag-shuffle-zstd9", "xor-planes-zstd1", "sub-zigzag-planes-zstd1", "sub-zigzag-planes-zstd3",
]
CHAIN_ENCODINGS = list(dict.fromkeys([DEFAULT_CODEC, "sub-zigzag-shuffle-zstd1", "sub-zigzag-planes-zstd1",
                                      "xor-shuffle-zstd1", "plain"]))
SAVE_SPEED_TARGET = 3.0  # a full fine-tune's update saves in at most this many times a raw torch.save
CHAIN_VERSIONS = 10
CHAIN_STEPS = 2
CHAIN_TTR_TARGET = 1.5


@dataclass(frozen=True)
class Scenario:
    """A model, how it is fine-tuned, the largest update/snapshot storage ratio allowed, and whether the default
    encoding's save time is held to `SAVE_SPEED_TARGET` times a raw torch.save."""

    name: str
    model_class: type
    steps: int
    partial: bool
    target_ratio: float
    speed_target: bool


SCENARIOS = [
    Scenario("resnet50_fc", ResNet50, 3, True, 0.02, False),
    Scenario("resnet18_all", ResNet18, 5, False, 0.59, True),
    Scenario("resnet50_all", ResNet50, 5, False, 0.59, True),
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


def codec_speed(base: dict, trained: dict, directory: str, repeats: int) -> dict[str, dict]:
    """Median seconds to encode the changed tensors of `trained` against `base` and decode them back, per encoding,
    and of a raw torch.save / torch.load of `trained`; interleaved rounds, so every contender sees the same load."""
    changed = [key for key in trained if not tensor_equal(trained[key], base[key])]
    raw_path = os.path.join(directory, "raw_state_dict.pt")
    steps = {"torch.save": lambda _: lambda: torch.save(trained, raw_path),
             "torch.load": lambda _: lambda: torch.load(raw_path, weights_only=True)}
    payloads = {}

    def decode_all(codec: DeltaCodec, encoding: str) -> list[torch.Tensor]:
        return _parallel_map(lambda item: decode_chain(base[item[0]], [(codec, item[1])], trained[item[0]].dtype,
                                                       trained[item[0]].shape), list(zip(changed, payloads[encoding])))

    for encoding in ENCODINGS:
        codec = DeltaCodec.from_name(encoding)

        def encode(_: int, codec=codec, encoding=encoding):
            def run():
                payloads[encoding] = _parallel_map(lambda key: codec.encode(trained[key], base[key]), changed)
            return run

        steps[f"encode {encoding}"] = encode
        steps[f"decode {encoding}"] = lambda _, codec=codec, encoding=encoding: lambda: decode_all(codec, encoding)
    timings = median_seconds(steps, repeats)
    for encoding in ENCODINGS:
        decoded = decode_all(DeltaCodec.from_name(encoding), encoding)
        if not all(tensor_equal(value, trained[key]) for key, value in zip(changed, decoded)):
            raise AssertionError(f"{encoding} did not decode the changed tensors bit-exactly")
    return {name: {"median_s": timing["median_s"], "runs_s": timing["runs_s"]} for name, timing in timings.items()}


def storage_scenario(scenario: Scenario, stores: tuple, directory: str, codec_repeats: int,
                     progress: Progress) -> dict:
    """Save one fine-tuned model as an update in every encoding; sizes, times and bit-exactness of each."""
    torch.manual_seed(0)
    model = scenario.model_class()
    service = WeightUpdateSaveService(*stores)
    base_id = service.save_model(_save_info(model))
    base = _state(model)
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
    speed = codec_speed(base, trained, directory, codec_repeats)
    for encoding, result in results.items():
        result.update(encode_s=speed[f"encode {encoding}"]["median_s"],
                      decode_s=speed[f"decode {encoding}"]["median_s"])
    torch_save_s, torch_load_s = speed["torch.save"]["median_s"], speed["torch.load"]["median_s"]
    progress(f"{scenario.name}: codec speed measured ({codec_repeats} interleaved rounds); torch.save "
             f"{1e3 * torch_save_s:.0f} ms, torch.load {1e3 * torch_load_s:.0f} ms")
    default = results[DEFAULT_CODEC]
    speed_met = not scenario.speed_target or default["save_s"] <= SAVE_SPEED_TARGET * torch_save_s
    return {"model": scenario.model_class.__name__, "steps": scenario.steps,
            "trained": "fc only" if scenario.partial else "all layers", "snapshot_bytes": snapshot_bytes,
            "torch_save_s": torch_save_s, "torch_load_s": torch_load_s, "codec_repeats": codec_repeats,
            "encodings": results, "best_encoding": min(results, key=lambda name: results[name]["update_bytes"]),
            "target_ratio": scenario.target_ratio, "speed_target": SAVE_SPEED_TARGET if scenario.speed_target else None,
            "speed_target_met": speed_met,
            "target_met": default["ratio"] <= scenario.target_ratio and default["bit_exact"] and speed_met}


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
        speed = (f", save {default['save_s'] / scenario['torch_save_s']:.2f}x torch.save <= "
                 f"{scenario['speed_target']:.0f}x" if scenario["speed_target"] else "")
        print(f"target {name}: default {100 * default['ratio']:.2f}% <= {100 * scenario['target_ratio']:.0f}%{speed}, "
              f"bit-exact: {'met' if scenario['target_met'] else 'NOT MET'} (best: {scenario['best_encoding']})")
    for name, scenario in scenarios.items():
        print(f"\nSpeed, {name}: medians of {scenario['codec_repeats']} interleaved rounds; torch.save "
              f"{1e3 * scenario['torch_save_s']:.1f} ms, torch.load {1e3 * scenario['torch_load_s']:.1f} ms")
        print(f"{'encoding':26}{'% snapshot':>11}{'encode ms':>11}{'decode ms':>11}{'save ms':>9}{'recover ms':>12}"
              f"{'save/torch.save':>17}")
        for encoding in ENCODINGS:
            entry = scenario["encodings"][encoding]
            print(f"{encoding:26}{100 * entry['ratio']:10.2f}%{1e3 * entry['encode_s']:11.1f}"
                  f"{1e3 * entry['decode_s']:11.1f}{1e3 * entry['save_s']:9.0f}{1e3 * entry['recover_s']:12.0f}"
                  f"{entry['save_s'] / scenario['torch_save_s']:16.2f}x")
    chain = result.get("chain")
    if chain is None:
        return
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
    parser.add_argument("--codec-repeats", type=int, default=5,
                        help="interleaved rounds timing each encoding's encode and decode and torch.save/load (median)")
    parser.add_argument("--no-chain", action="store_true", help="skip the chain of versions (storage and speed only)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"where to write the JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="mmlib-update-bench-") as root:
        stores = (FileSystemPersistenceService(os.path.join(root, "blobs")),
                  SQLiteDictPersistenceService(os.path.join(root, "metadata.sqlite")))
        result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                  "default_encoding": DEFAULT_CODEC, "encodings": ENCODINGS,
                  "scenarios": {scenario.name: storage_scenario(scenario, stores, root, args.codec_repeats, progress)
                                for scenario in SCENARIOS}}
        if not args.no_chain:
            result["chain"] = chain_scenario(stores, args.repeats, progress)
    result["all_targets_met"] = (all(scenario["target_met"] for scenario in result["scenarios"].values())
                                 and result.get("chain", {"target_met": True})["target_met"])
    result["seconds"] = progress.elapsed
    write_json(args.out, result)
    print_report(result)
    print(f"\nwrote {args.out} after {progress.elapsed:.0f} s", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
