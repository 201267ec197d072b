"""What the coordination of saves with `rm` and gc costs a save: a ResNet-18 snapshot saved with its save lease and
commit check (as always) and without them (patched out for the measurement), interleaved, medians and p90.

    python -m benchmarks.coordination_overhead [--saves 24]
"""

import argparse
import contextlib
import statistics
import tempfile
import time
from typing import Iterator

import torch

from mmlib.approaches import base
from mmlib.models import ResNet18
from mmlib.persistence import _coordination, open_store
from mmlib.save import BaselineSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment


@contextlib.contextmanager
def _no_lease(dps: object) -> Iterator[_coordination.GcRuns]:
    yield _coordination.GcRuns(frozenset(), frozenset())


def run(saves: int) -> dict[str, list[float]]:
    """Seconds of each save with and without coordination, alternating, the first of each left out (warm-up)."""
    real_lease, real_confirm = _coordination.save_lease, base.AbstractSaveService._confirm_commit
    times: dict[str, list[float]] = {"with coordination": [], "without": []}
    environment = track_current_environment()
    model = ResNet18()
    with tempfile.TemporaryDirectory(prefix="mmlib-coordination-") as directory:
        service = BaselineSaveService(*open_store(directory))
        try:
            for index in range(saves):
                coordinated = index % 2 == 0
                _coordination.save_lease = real_lease if coordinated else _no_lease
                base.AbstractSaveService._confirm_commit = real_confirm if coordinated else (lambda *_: None)
                with torch.no_grad():
                    next(model.parameters()).add_(1e-3)  # new weights every save
                info = ModelSaveInfoBuilder().add_model_info(env=environment, model=model).build()
                start = time.perf_counter()
                service.save_model(info)
                times["with coordination" if coordinated else "without"].append(time.perf_counter() - start)
        finally:
            _coordination.save_lease, base.AbstractSaveService._confirm_commit = real_lease, real_confirm
    return {name: values[1:] for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=24)
    for name, values in run(parser.parse_args().saves).items():
        ordered = sorted(values)
        print(f"{name:18s} median {1000 * statistics.median(ordered):7.1f} ms   "
              f"p90 {1000 * ordered[int(0.9 * (len(ordered) - 1))]:7.1f} ms   (n={len(ordered)})")


if __name__ == "__main__":
    main()
