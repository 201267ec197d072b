"""Provenance against baseline snapshots for ResNet-18: time-to-save and storage per version, with a breakdown.

Run from the repository root: ``python -m benchmarks.provenance``. Each run starts from fresh embedded stores
(SQLite + files), saves a ResNet-18 base in both, then for every version: saves the provenance version (data,
train service, optimizer state, kwargs), trains the live model deterministically, records its weights hash,
saves the trained model as a baseline snapshot, and writes `torch.save(state_dict)` as the anchor. Runs are
repeated per optimizer momentum (momentum buffers are training state, stored only by checkpoint versions, every
`--checkpoint-interval` versions); times are medians over runs. Storage is shown two ways: `size_info` of each
version (the dataset counted in every version) and the bytes the store actually grew by (the dataset, code and
environment stored once), also as a share of the provenance store's base snapshot.
Writes ``bench-results/provenance.json`` (git ignores it; ``benchmarks/results/`` holds the published run).
"""

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, Optional

import torch

from benchmarks.common import RESULTS_DIR, Progress, ratio, total_bytes, write_json
from mmlib.approaches.base import AbstractSaveService
from mmlib.constants import CURRENT_DATA_ROOT, MMLIB_CONFIG, VALUES
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.deterministic import deterministic
from mmlib.models import ResNet18
from mmlib.persistence import FileReference, open_store
from mmlib.save import BaselineSaveService, ProvenanceSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.schema.schema_obj import METADATA_SIZE
from mmlib.track_env import track_current_environment

DEFAULT_OUTPUT = os.path.join(RESULTS_DIR, "provenance.json")

# size_info keys of a provenance version, by what they hold
CATEGORIES = {"raw_data": "dataset", "state_file": "training_state", "code_file": "code", "wrapper_code": "code",
              METADATA_SIZE: "metadata"}


def _timed(func: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def store_bytes(service: AbstractSaveService) -> int:
    """Bytes of every blob and document in the service's store (what the store physically holds)."""
    fps, dps = service._file_pers_service, service._dict_pers_service
    blobs = 0
    for digest in fps.blob_digests():
        ref = FileReference(reference_id=f"{digest}/blob")
        fps.file_size(ref)
        blobs += ref.size
    documents = sum(dps.dict_size(doc_id, doc_type) for doc_type in dps.all_types()
                    for doc_id in dps.all_ids_for_type(doc_type))
    return blobs + documents


def breakdown(sizes: Mapping[str, Any], totals: Optional[dict] = None) -> dict[str, int]:
    """Bytes of a provenance version's size_info per category (dataset, training state, code, metadata)."""
    totals = totals if totals is not None else dict.fromkeys(sorted(set(CATEGORIES.values())), 0)
    for key, value in sizes.items():
        if isinstance(value, Mapping):
            breakdown(value, totals)
        else:
            totals[CATEGORIES[key]] += int(value)
    return totals


def growth_shares(growth_bytes: list[int], snapshot_bytes: int) -> dict[str, Any]:
    """What each version after the first adds to the store as a share of one snapshot, and the largest share
    (the first version also stores the dataset and the train code)."""
    shares = [ratio(growth, snapshot_bytes) for growth in growth_bytes[1:]]
    return {"growth_share_after_first": shares, "max_growth_share_after_first": max(shares, default=None)}


def run_once(workdir: str, raw_data: str, momentum: float, versions: int, batch_size: int,
             number_batches: int, service_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """One fresh run: a base in both stores, then `versions` versions saved both ways. Times in seconds."""
    baseline = BaselineSaveService(*open_store(os.path.join(workdir, "baseline-store")))
    provenance = ProvenanceSaveService(*open_store(os.path.join(workdir, "provenance-store")), **service_kwargs)
    env = track_current_environment()
    train_kwargs = {"number_batches": number_batches}

    def snapshot_info(model: torch.nn.Module, base_id: Optional[str]):
        return ModelSaveInfoBuilder().add_model_info(env=env, model=model, base_model_id=base_id).build()

    torch.manual_seed(0)
    model = ResNet18()
    baseline_parent = baseline.save_model(snapshot_info(model, None))
    prov_before = store_bytes(provenance)
    provenance_parent = provenance.save_model(snapshot_info(model, None))
    snapshot_bytes = store_bytes(provenance) - prov_before
    wrapper = image_classification_train_wrapper(model, raw_data, batch_size=batch_size, momentum=momentum)
    rows = []
    for version in range(1, versions + 1):
        prov_info = (ModelSaveInfoBuilder().add_model_info(env=env, model=model, base_model_id=provenance_parent)
                     .add_prov_data(raw_data_path=raw_data, train_kwargs=train_kwargs, train_service_wrapper=wrapper)
                     .build())
        prov_before = store_bytes(provenance)
        prov_save_s, provenance_parent = _timed(lambda: provenance.save_model(prov_info))
        deterministic(wrapper.instance.train, [model], train_kwargs)
        prov_hash_s, _ = _timed(lambda: provenance.add_weights_hash_info(provenance_parent, model))
        prov_growth = store_bytes(provenance) - prov_before

        base_before = store_bytes(baseline)
        base_save_s, baseline_parent = _timed(lambda: baseline.save_model(snapshot_info(model, baseline_parent)))
        base_growth = store_bytes(baseline) - base_before

        anchor_path = os.path.join(workdir, f"anchor-v{version}.pt")
        anchor_s, _ = _timed(lambda: torch.save(model.state_dict(), anchor_path))

        prov_sizes = provenance.model_save_size(provenance_parent)
        rows.append({
            "version": version,
            "anchor": {"tts_s": anchor_s, "bytes": os.path.getsize(anchor_path)},
            "baseline": {"tts_s": base_save_s, "size_info_bytes": total_bytes(baseline.model_save_size(
                baseline_parent)), "store_growth_bytes": base_growth},
            "provenance": {"tts_s": prov_save_s + prov_hash_s, "save_model_s": prov_save_s,
                           "add_weights_hash_info_s": prov_hash_s, "size_info_bytes": total_bytes(prov_sizes),
                           "store_growth_bytes": prov_growth, "store_growth_share_of_snapshot": ratio(
                               prov_growth, snapshot_bytes), "breakdown": breakdown(prov_sizes)},
        })
    baseline_ttr_s, _ = _timed(lambda: baseline.recover_model(baseline_parent, execute_checks=True))
    provenance_ttr_s, _ = _timed(lambda: provenance.recover_model(provenance_parent, execute_checks=True))
    return {"versions": rows, "ttr_last_version_s": {"baseline": baseline_ttr_s, "provenance": provenance_ttr_s},
            "provenance_snapshot_bytes": snapshot_bytes, "checkpoint_interval": provenance.checkpoint_interval,
            **growth_shares([row["provenance"]["store_growth_bytes"] for row in rows], snapshot_bytes)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median times over runs, storage from the last run, and reductions of provenance against the baseline."""
    last = runs[-1]
    versions = []
    for index, row in enumerate(last["versions"]):
        def median(approach: str, key: str = "tts_s") -> float:
            return statistics.median(run["versions"][index][approach][key] for run in runs)

        versions.append({**row, "anchor": {**row["anchor"], "tts_s": median("anchor")},
                         "baseline": {**row["baseline"], "tts_s": median("baseline")},
                         "provenance": {**row["provenance"], "tts_s": median("provenance"),
                                        "save_model_s": median("provenance", "save_model_s"),
                                        "add_weights_hash_info_s": median("provenance", "add_weights_hash_info_s")}})
    base_tts = sum(v["baseline"]["tts_s"] for v in versions)
    prov_tts = sum(v["provenance"]["tts_s"] for v in versions)
    base_growth = sum(v["baseline"]["store_growth_bytes"] for v in versions)
    prov_growth = sum(v["provenance"]["store_growth_bytes"] for v in versions)
    return {
        "versions": versions,
        **{key: last[key] for key in ("provenance_snapshot_bytes", "checkpoint_interval", "growth_share_after_first",
                                      "max_growth_share_after_first")},
        "ttr_last_version_s": {name: statistics.median(run["ttr_last_version_s"][name] for run in runs)
                               for name in ("baseline", "provenance")},
        "all_versions": {
            "baseline_tts_s": base_tts, "provenance_tts_s": prov_tts,
            "tts_reduction_pct": 100 * (1 - prov_tts / base_tts),
            "baseline_store_growth_bytes": base_growth, "provenance_store_growth_bytes": prov_growth,
            "storage_reduction_pct": 100 * (1 - prov_growth / base_growth),
            "provenance_size_info_bytes": sum(v["provenance"]["size_info_bytes"] for v in versions),
        },
    }


def print_table(momentum: float, summary: dict[str, Any]) -> None:
    print(f"\nResNet-18, SGD momentum {momentum}, training state stored every {summary['checkpoint_interval']} "
          "versions: TTS (median) and storage per version")
    print(f"{'version / approach':<28}{'TTS ms':>10}{'size_info MB':>15}{'store growth MB':>17}")
    for row in summary["versions"]:
        anchor, base, prov = row["anchor"], row["baseline"], row["provenance"]
        print(f"v{row['version']} torch.save (anchor)      {anchor['tts_s'] * 1000:>10.0f}"
              f"{anchor['bytes'] / 1e6:>15.2f}")
        print(f"v{row['version']} baseline snapshot       {base['tts_s'] * 1000:>10.0f}"
              f"{base['size_info_bytes'] / 1e6:>15.2f}{base['store_growth_bytes'] / 1e6:>17.2f}")
        print(f"v{row['version']} provenance (save+hash)  {prov['tts_s'] * 1000:>10.0f}"
              f"{prov['size_info_bytes'] / 1e6:>15.2f}{prov['store_growth_bytes'] / 1e6:>17.2f}")
        parts = ", ".join(f"{name} {value:,} B" for name, value in prov["breakdown"].items())
        print(f"   provenance breakdown: {parts}; store growth {prov['store_growth_share_of_snapshot']:.2%} of a "
              f"{summary['provenance_snapshot_bytes'] / 1e6:.2f} MB snapshot")
    totals = summary["all_versions"]
    print(f"all versions: TTS baseline {totals['baseline_tts_s'] * 1000:.0f} ms, provenance "
          f"{totals['provenance_tts_s'] * 1000:.0f} ms (reduction {totals['tts_reduction_pct']:+.1f}%); store "
          f"growth baseline {totals['baseline_store_growth_bytes'] / 1e6:.2f} MB, provenance "
          f"{totals['provenance_store_growth_bytes'] / 1e6:.2f} MB (reduction {totals['storage_reduction_pct']:+.1f}%, "
          f"dataset counted once)")
    if summary["growth_share_after_first"]:
        shares = ", ".join(f"v{index} {share:.2%}"
                           for index, share in enumerate(summary["growth_share_after_first"], start=2))
        print(f"store growth per version after the first, as a share of a snapshot: {shares} (max "
              f"{summary['max_growth_share_after_first']:.2%})")
    ttr = summary["ttr_last_version_s"]
    print(f"time to recover the last version (with checks): baseline {ttr['baseline'] * 1000:.0f} ms, "
          f"provenance {ttr['provenance'] * 1000:.0f} ms (recovers the base and retrains every version)")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=2, help="provenance versions per run (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="fresh runs per momentum; times are medians")
    parser.add_argument("--momentum", type=float, nargs="+", default=[0.9, 0.0],
                        help="SGD momentum values to measure (default: 0.9 0.0)")
    parser.add_argument("--checkpoint-interval", type=int, default=None,
                        help="versions per stored training state (default: ProvenanceSaveService's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--number-batches", type=int, default=2, help="train kwarg number_batches per version")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 suits these tiny batches on a busy host)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"JSON file to write the results to (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    progress = Progress()

    with tempfile.TemporaryDirectory(prefix="mmlib-bench-provenance-") as workdir:
        raw_data = generate_image_dataset(os.path.join(workdir, "raw-data"), args.classes, args.images_per_class,
                                          args.image_size)
        config = os.path.join(workdir, "mmlib.ini")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"[{VALUES}]\n{CURRENT_DATA_ROOT} = {os.path.join(workdir, 'data-root')}\n")
        os.environ[MMLIB_CONFIG] = config
        service_kwargs = {} if args.checkpoint_interval is None else {"checkpoint_interval": args.checkpoint_interval}
        results = []
        for momentum in args.momentum:
            runs = []
            for run in range(args.runs):
                progress(f"momentum {momentum}: run {run + 1}/{args.runs}")
                run_dir = tempfile.mkdtemp(dir=workdir, prefix="run-")
                runs.append(run_once(run_dir, raw_data, momentum, args.versions, args.batch_size,
                                     args.number_batches, service_kwargs))
            summary = summarize(runs)
            print_table(momentum, summary)
            results.append({"momentum": momentum, **summary, "runs": runs})

    output = {
        "model": "ResNet18", "store": "embedded (SQLite + files)", "runs": args.runs, "versions": args.versions,
        "dataset": {"classes": args.classes, "images_per_class": args.images_per_class,
                    "image_size": args.image_size, "format": "JPEG"},
        "train": {"batch_size": args.batch_size, "number_batches": args.number_batches, "optimizer": "SGD"},
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "results": results,
    }
    write_json(args.output, output)
    print(f"\nresults written to {args.output}")


if __name__ == "__main__":
    main()
