"""What a name costs: resolving `NAME`, `NAME:vN` and `NAME:ALIAS` in a store with thousands of versions of one name,
a named save against an unnamed one and a named load against a load by id, side by side in one run (medians and
p90 of interleaved rounds).

    python -m benchmarks.name_resolution [--versions 2000] [--rounds 30] [--out bench-results/name_resolution.json]

The versions are snapshots of a tiny model (their weights do not matter here): resolving a name reads only
documents. A load by name is a load by id plus the resolution.
"""

import argparse
import os
import tempfile

import torch

import mmlib
from benchmarks.common import RESULTS_DIR, Progress, median_seconds, write_json
from mmlib import maintenance


class _Tiny(torch.nn.Module):
    """A model of one small layer: the versions' weights do not matter here."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def run(versions: int, rounds: int) -> dict:
    """Fill a fresh embedded store with `versions` versions of one name and time resolutions and loads."""
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="mmlib-names-") as directory:
        store = mmlib.open_store(os.path.join(directory, "store"))
        for number in range(1, versions + 1):
            mmlib.save(_Tiny(), store, name="detector", approach="snapshot", init_args={})
            if number % 200 == 0:
                progress(f"saved {number} of {versions} versions")
        middle = f"detector:v{versions // 2}"
        mmlib.set_alias(store, middle, "production")
        model_id = mmlib.get(middle, store).id
        steps = {
            "resolve id": lambda _: lambda: maintenance.resolve_model_id(store, model_id),
            "resolve NAME (latest)": lambda _: lambda: maintenance.resolve_model_id(store, "detector"),
            "resolve NAME:vN": lambda _: lambda: maintenance.resolve_model_id(store, middle),
            "resolve NAME:ALIAS": lambda _: lambda: maintenance.resolve_model_id(store, "detector:production"),
            "get NAME:ALIAS (metadata)": lambda _: lambda: mmlib.get("detector:production", store),
            "save without a name": lambda _: lambda: mmlib.save(_Tiny(), store, approach="snapshot", init_args={}),
            "save as NAME:vN+1": lambda _: lambda: mmlib.save(_Tiny(), store, name="detector", approach="snapshot",
                                                               init_args={}),
            "load by id": lambda _: lambda: mmlib.load(model_id, store),
            "load by NAME:ALIAS": lambda _: lambda: mmlib.load("detector:production", store),
        }
        timings = median_seconds(steps, rounds)
    return {"versions": versions, "rounds": rounds,
            "steps": {name: {"median_ms": 1000 * result["median_s"], "p90_ms": 1000 * _p90(result["runs_s"])}
                      for name, result in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "name_resolution.json"))
    args = parser.parse_args()
    result = run(args.versions, args.rounds)
    write_json(args.out, result)
    for name, figures in result["steps"].items():
        print(f"{name:24s} median {figures['median_ms']:8.2f} ms   p90 {figures['p90_ms']:8.2f} ms")
    print(f"({result['versions']} versions of one name, {result['rounds']} interleaved rounds; {args.out})")


if __name__ == "__main__":
    main()
