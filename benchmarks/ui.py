"""How fast the web view (`mmlib ui`) renders a large store: the models page and the lineage of a 200-version name,
each request served by a fresh app on a freshly opened store (median and p90 of several requests).

    python -m benchmarks.ui STORE_DIR [--versions 2000] [--chain 200] [--requests 15] [--out bench-results/ui.json]

STORE_DIR caches the store between runs: when it holds no store yet, it is filled first (tiny models, a few
minutes): one name of `--chain` versions (updates, with a snapshot on its base every 25th) and names of 20
versions each up to `--versions` in all, with tags, metrics and aliases. Targets: models page <= 1 s, lineage
<= 2 s.
"""

import argparse
import os
import statistics
import time

import torch

import mmlib
from mmlib.persistence.store import Store
from benchmarks.common import RESULTS_DIR, Progress, write_json

CHAIN_NAME = "chain"
OTHER_VERSIONS_EACH = 20
SNAPSHOT_EVERY = 25
# The figures the issue asks for, and two heavier variants: the table sorted by bytes added (every row sized), and
# the version tree of one of the chain's models (found among every model of the store).
TARGETS_S = {"models page": 1.0, "lineage page": 2.0, "models by size": 1.0, "version tree": 2.0}


class TinyNet(torch.nn.Module):
    """A model of two small layers: the versions' weights do not matter here."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 2)


def _save_name(store: Store, name: str, versions: int, model: TinyNet) -> None:
    """Save `versions` versions of `name`: updates of the latest, a snapshot on its base every SNAPSHOT_EVERY-th."""
    for number in range(1, versions + 1):
        with torch.no_grad():
            model.out.weight.add_(0.01)
        snapshot = number > 1 and number % SNAPSHOT_EVERY == 0
        mmlib.save(model, store, name, base=f"{name}:latest" if snapshot else None,
                   approach="snapshot" if snapshot else None, init_args={},
                   tags={"team": f"t{number % 3}", "data": "synthetic"},
                   metrics={"val_loss": round(1.0 / number, 6), "step": number})
    mmlib.set_alias(store, f"{name}:v{max(1, versions // 2)}", "production")


def build(directory: str, versions: int, chain: int, progress: Progress) -> None:
    """Fill the store at `directory` with `versions` versions, `chain` of them under CHAIN_NAME."""
    store = mmlib.open_store(directory)
    torch.manual_seed(0)
    _save_name(store, CHAIN_NAME, chain, TinyNet())
    saved, index = chain, 0
    while saved < versions:
        count = min(OTHER_VERSIONS_EACH, versions - saved)
        _save_name(store, f"model-{index:03d}", count, TinyNet())
        saved += count
        index += 1
        if saved % 200 == 0 or saved == versions:
            progress(f"saved {saved} of {versions} versions")


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def measure(directory: str, requests: int) -> dict:
    """Median and p90 seconds of GET requests to each page of TARGETS_S, each by a fresh app on a freshly opened
    store (one untimed warm-up round first, for imports)."""
    from starlette.testclient import TestClient

    from mmlib.ui import create_app

    pages = {"models page": "/", "lineage page": f"/names/{CHAIN_NAME}", "models by size": "/?sort=-size",
             "version tree": f"/lineage/{mmlib.get(f'{CHAIN_NAME}:v{SNAPSHOT_EVERY - 1}', directory).id}"}
    runs: dict[str, list[float]] = {page: [] for page in pages}
    for round_index in range(requests + 1):
        for page, path in pages.items():
            client = TestClient(create_app(mmlib.open_store(directory)))
            start = time.perf_counter()
            response = client.get(path)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
            if round_index:
                runs[page].append(elapsed)
    return {page: {"median_s": statistics.median(times), "p90_s": _p90(times), "runs_s": times,
                   "target_s": TARGETS_S[page]} for page, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", metavar="STORE_DIR", help="where the store is cached (filled when empty)")
    parser.add_argument("--versions", type=int, default=2000)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "ui.json"))
    args = parser.parse_args()
    progress = Progress()
    if not os.path.isfile(os.path.join(args.store, "metadata.sqlite")):
        build(args.store, args.versions, args.chain, progress)
    result = {"versions": len(mmlib.find(args.store)), "requests": args.requests,
              "pages": measure(args.store, args.requests)}
    write_json(args.out, result)
    for page, figures in result["pages"].items():
        verdict = "ok" if figures["p90_s"] <= figures["target_s"] else "OVER TARGET"
        print(f"{page:15s} median {1000 * figures['median_s']:8.1f} ms   p90 {1000 * figures['p90_s']:8.1f} ms   "
              f"(target {figures['target_s']:g} s: {verdict})")
    print(f"({result['versions']} named versions, {args.requests} requests each, a fresh app per request; {args.out})")


if __name__ == "__main__":
    main()
